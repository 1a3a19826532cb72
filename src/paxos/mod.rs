//! quorumlock's own Multi-Paxos engine.
//!
//! - [`Replica`] is the sans-I/O protocol core: acceptor, learner and
//!   (elected) proposer in one struct, with handlers split by role.
//! - `storage` keeps the acceptor's promise and records, and snapshots, in
//!   RocksDB; `transport` carries messages over tonic; `engine` is the driver
//!   that executes the core's effects and implements
//!   [`crate::consensus::ConsensusEngine`].
//! - `tests` asserts the exact effects of each step; `simulation` runs 3 and
//!   5 replicas under seeded faults and checks agreement, prefix, durability
//!   and liveness after every step (see its docs for replaying a seed).

mod acceptor;
pub mod effects;
mod election;
pub mod engine;
mod learner;
pub mod message;
mod proposer;
pub mod replica;
pub mod storage;
pub mod transport;
pub mod types;

pub use effects::{Apply, Persist, Ready, Refusal};
pub use engine::PaxosEngine;
pub use message::{Envelope, Message};
pub use replica::{DurableState, Replica, ReplicaConfig};
pub use types::{Accepted, Ballot, Chosen, Proposal, ProposalId, ReadId, Slot, Value};

#[cfg(test)]
mod simulation;
#[cfg(test)]
mod tests;
