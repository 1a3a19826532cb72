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
pub mod types;

pub use applied::{AppliedState, GrantWatch, StateNotice};

/// gRPC metadata key of a peer's refusal of a sender whose id a membership
/// change retired (FAILED_PRECONDITION); the value is the sender's id. Both
/// engines' peer services send it, and a node that receives it knows it
/// was removed.
pub const RETIRED_METADATA: &str = "quorumlock-retired-node";
pub use config::EngineConfig;
pub use engine::ConsensusEngine;
pub use error::EngineError;
pub use types::{
    CommandResult, EngineKind, EngineStatus, LeaderInfo, Leadership, Member, MemberState, MembershipChange,
    NodeId,
};
