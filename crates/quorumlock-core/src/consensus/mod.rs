//! The seam between the lock service and a consensus engine.
//!
//! The lock service, the lease driver and the gRPC layer use only
//! [`ConsensusEngine`] and [`AppliedState`]; an engine owns ordering and
//! durability, and applies committed commands through [`AppliedState`] so that
//! both engines run the identical state machine.

pub mod applied;
pub mod config;
pub mod engine;
pub mod error;
pub mod history;
pub mod incarnation;
pub mod telemetry;
pub mod types;

pub use applied::{AppliedState, ApplyObserver, GrantWatch, StateNotice};

pub use quorumlock_proto::headers::{retired_sender_refused, RETIRED_METADATA};

/// The membership a node knows, as its peer guard reads it: who may speak
/// the peer protocol to it, vouch for a forwarded call or assert a
/// caller's identity. Engines publish it on every change
/// ([`ConsensusEngine::known_membership`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KnownMembership {
    /// The voters and learners of the configuration this node knows
    /// (every configuration of a joint one), this node included.
    pub members: std::collections::BTreeSet<NodeId>,
    /// The ids membership changes removed, as far as this node applied
    /// them: never members again.
    pub retired: std::collections::BTreeSet<NodeId>,
    /// Whether this node knows a configuration at all; false only on a
    /// node that joins (`serve --join`) before the leader first reached it.
    pub configured: bool,
}

impl KnownMembership {
    /// Whether `id` is a member and not retired.
    pub fn admits(&self, id: NodeId) -> bool {
        self.members.contains(&id) && !self.retired.contains(&id)
    }
}
pub use config::EngineConfig;
pub use engine::ConsensusEngine;
pub use error::EngineError;
pub use history::{Compacted, HistoryLimits, Revision, Since};
pub use telemetry::EngineTelemetry;
pub use types::{
    CommandResult, EngineKind, EngineStatus, LeaderInfo, Leadership, Member, MemberState, MembershipChange,
    NodeId,
};
