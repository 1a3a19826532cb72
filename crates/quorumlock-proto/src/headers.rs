//! gRPC metadata keys of the public API.

/// Response metadata naming the leader (`id@addr`) on UNAVAILABLE.
pub const LEADER_HINT_HEADER: &str = "x-quorumlock-leader";
/// Request metadata marking a request a follower forwarded to the leader; a
/// request carrying it is never forwarded again.
pub const FORWARDED_HEADER: &str = "x-quorumlock-forwarded";
