//! openraft's type configuration for quorumlock.

use std::io::Cursor;

use quorumlock_core::consensus::{CommandResult, NodeId};
use quorumlock_core::lock::Command;

openraft::declare_raft_types!(
    /// Types of the openraft engine: a batch of lock commands in (see
    /// `super::batcher`), their results out, in order.
    pub TypeConfig:
        D = Vec<Command>,
        // Blank and membership entries have no lock results.
        R = Vec<CommandResult>,
        NodeId = NodeId,
        Node = openraft::BasicNode,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = Cursor<Vec<u8>>,
);

/// A running openraft node.
pub type Raft = openraft::Raft<TypeConfig>;
/// A log id of this engine.
pub type LogId = openraft::LogId<NodeId>;
/// A log entry of this engine.
pub type Entry = openraft::Entry<TypeConfig>;
/// A storage error of this engine.
pub type StorageError = openraft::StorageError<NodeId>;
/// Snapshot metadata of this engine.
pub type SnapshotMeta = openraft::SnapshotMeta<NodeId, openraft::BasicNode>;
/// Membership as stored with its log id.
pub type StoredMembership = openraft::StoredMembership<NodeId, openraft::BasicNode>;
