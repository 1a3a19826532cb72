//! Test tooling of quorumlock, kept out of the product's libraries:
//!
//! - [`cluster`]: local clusters of `quorumlock serve` processes (kill,
//!   pause, restart), for the demo, the benchmarks and chaos runs;
//! - [`chaos`]: the chaos runner — faults against a process cluster, client
//!   workers as processes, and the checks of the recorded history;
//! - `sim` (tests only): the deterministic simulation of the whole lock
//!   service on both engines.

pub mod chaos;
pub mod cluster;
#[cfg(test)]
mod sim;
