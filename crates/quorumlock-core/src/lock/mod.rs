//! The lock state machine: pure, deterministic, and shared by both engines.
//!
//! Commands go in, [`Applied`] results come out. Time never enters: a session
//! expires only when an [`Command::ExpireSession`] is applied.

pub mod change;
pub mod command;
pub mod credential;
pub mod error;
pub mod holders;
pub mod limits;
pub mod state;
pub mod validate;

pub use change::{Cause, Change, Subject};
pub use command::{
    Applied, Command, Event, Fence, FencingToken, Grant, HoldTerms, LockMode, Outcome, SessionId,
};
pub use credential::{Credential, SecretDigest, IDENTITY_BYTES_MAX};
pub use error::LockError;
pub use holders::HolderTokens;
pub use state::{
    KvEntry, Lock, LockDelay, LockState, LockView, QueueView, Queues, Repaired, Session, Timed, Totals,
    Waiter,
};

#[cfg(test)]
mod proptests;
#[cfg(test)]
mod tests;
