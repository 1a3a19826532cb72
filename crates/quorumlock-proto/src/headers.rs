//! gRPC metadata keys of the public API.

/// Response metadata naming the leader (`id@addr`) on UNAVAILABLE.
pub const LEADER_HINT_HEADER: &str = "x-quorumlock-leader";
/// Request metadata marking a request a follower forwarded to the leader; a
/// request carrying it is never forwarded again.
pub const FORWARDED_HEADER: &str = "x-quorumlock-forwarded";
/// Request metadata (binary, so any UTF-8 identity fits) in which a member
/// forwarding a call names the caller it authenticated. A node honours it
/// only on a connection whose client certificate names a member, and
/// refuses every other request that carries it.
pub const IDENTITY_HEADER: &str = "x-quorumlock-identity-bin";
/// Request metadata carrying a bearer token: `authorization: Bearer TOKEN`.
pub const AUTHORIZATION_HEADER: &str = "authorization";
