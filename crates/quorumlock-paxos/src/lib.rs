//! quorumlock's own Multi-Paxos engine.
//!
//! - [`core`]: the sans-I/O protocol core — a [`Replica`] that is acceptor,
//!   learner and (elected) proposer, with one file per role, generic over
//!   the command type it orders, and the [`Ready`] contract of its effects;
//! - [`driver`]: the one [`Driver`] that executes those effects, generic
//!   over storage, transport and state machine;
//! - [`store`], [`transport`], [`engine`]: RocksDB storage synced on its own
//!   thread, the gRPC peer transport, and the driver's task as a
//!   [`quorumlock_core::consensus::ConsensusEngine`];
//! - [`sim`]: a simulated disk and network for the driver, on which the
//!   core's simulation (in this crate's tests) and the whole-service
//!   simulation run the same driver under faults.

pub mod core;
pub mod driver;
pub mod engine;
pub mod sim;
pub mod store;
pub mod transport;

pub use crate::core::message::{Envelope, Message};
pub use crate::core::ready::{Apply, Persist, Ready, ReadyNumber, ReceivedSnapshot, Refusal};
pub use crate::core::types::{
    Accepted, Ballot, Chosen, Command, Configuration, Proposal, ProposalId, ReadId, Slot, Value,
};
pub use crate::core::{ConfigurationChange, ReconfigurationRefused};
pub use crate::core::{DurableState, Replica, ReplicaConfig};
pub use driver::{Answer, Driver, DriverError, StateMachine, Storage, StorageFailure, Transport};
pub use engine::PaxosEngine;

#[cfg(test)]
mod simulation;
