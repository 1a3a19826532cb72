//! quorumlock's wire protocol: the code tonic-build generates from `proto/`
//! (the public API and both engines' peer transports), and what every side
//! of the wire must agree on — the identifiers, the documented limits, the
//! metadata headers.
//!
//! It is the leaf of the workspace: the client depends on it alone, and so
//! does everything that speaks gRPC.

pub mod details;
pub mod headers;
pub mod hex;
pub mod ids;
pub mod limits;

pub use ids::{FencingToken, NodeId, SessionId};

/// The public API, package `quorumlock.v1`.
pub mod v1 {
    #![allow(missing_docs, clippy::all)]
    tonic::include_proto!("quorumlock.v1");
}

/// The openraft engine's peer transport, package `quorumlock.raft.v1`.
pub mod raft {
    #![allow(missing_docs, clippy::all)]
    tonic::include_proto!("quorumlock.raft.v1");
}

/// The Multi-Paxos engine's peer transport, package `quorumlock.paxos.v1`.
pub mod paxos {
    #![allow(missing_docs, clippy::all)]
    tonic::include_proto!("quorumlock.paxos.v1");
}

/// The encoded file descriptor set of every proto file, for server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("quorumlock_descriptor");
