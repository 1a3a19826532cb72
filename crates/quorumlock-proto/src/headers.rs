//! gRPC metadata keys of the public API and of the peer protocols.

use crate::NodeId;

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

/// Response metadata of a peer's refusal of a sender whose id a membership
/// change retired (FAILED_PRECONDITION); the value is the sender's id. Both
/// engines' peer services send it, and a node that receives it knows it was
/// removed.
pub const RETIRED_METADATA: &str = "quorumlock-retired-node";

/// The refusal of every message from `id`, a node a membership change
/// removed: FAILED_PRECONDITION with [`RETIRED_METADATA`] naming it.
pub fn retired_sender_refused(id: NodeId) -> tonic::Status {
    let mut status = tonic::Status::failed_precondition(format!(
        "node {id} was removed from this cluster; its id is retired and its messages are refused"
    ));
    status
        .metadata_mut()
        .insert(RETIRED_METADATA, tonic::metadata::MetadataValue::from(id.get()));
    status
}
