//! What quorumlock's deterministic simulations share: one seed runner and one
//! fault model.
//!
//! - [`seeds`]: which seeds to run (from the environment), running one with
//!   its panics caught and reported with the seed and how to replay it;
//! - [`faults`]: the faults a run draws from its seed (message loss,
//!   duplication and delay, crashes, partitions, late drivers), and a
//!   simulated network that applies them to messages between nodes.
//!
//! Nothing here reads a clock or iterates a hash map: the same seed gives the
//! same run.

pub mod faults;
pub mod seeds;

pub use faults::{LinkFaults, Network, Partition};
pub use seeds::{env_u64, run_seed, seeds_from_env};
