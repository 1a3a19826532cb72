//! Session leases as the leader keeps them, sans I/O.
//!
//! - [`LeaseTracker`]: the table of deadlines and budgets, indexed so that
//!   a tick touches only the leases that are due;
//! - [`LeaseKeeper`]: when to take over, expire and checkpoint, as actions
//!   for a driver to carry out (the server's lease driver on a live node,
//!   the simulations in tests);
//! - [`HoldTimers`]: when grants' maximum hold times and lock-delays end.
//!
//! Only the leader keeps leases, and only after it has confirmed its
//! leadership and caught up with the log (a read barrier); a follower refuses
//! keepalives so that the client moves to the leader. Expiry is a proposed
//! `ExpireSession` command: the state machine never looks at time.

mod holds;
mod keeper;
mod tracker;

pub use holds::{HoldTimers, END_RETRY};
pub use keeper::{
    KeeperAction, KeeperConfig, LeaseKeeper, ProposalPurpose, RenewError, EXPIRIES_PER_TICK_MAX,
};
pub use tracker::{LeaseTracker, RenewRefused};
