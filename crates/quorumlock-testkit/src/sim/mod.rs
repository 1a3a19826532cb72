//! Deterministic simulation of the whole lock service on both engines.
//!
//! Real lock commands go through each engine to the real lock state machine
//! ([`quorumlock_core::consensus::AppliedState`]), with sessions kept alive by clients
//! and expired by the leader's lease keeper on a skewed, jumping simulated
//! clock, which also ends grants past their maximum hold time and
//! lock-delays through the log; the network drops, delays, duplicates and
//! partitions; nodes crash and restart from what they made durable. After
//! every run [`checker`] verifies grant agreement and token monotonicity per
//! replica, that no replica grants a lock during its lock-delay, fencing in
//! apply order and as clients saw it, state agreement per applied index,
//! durability of every acknowledged write after a final restart of every
//! node, and liveness after healing.
//!
//! - [`paxos`] steps the sans-I/O Multi-Paxos replica; a seed replays
//!   exactly.
//! - [`raft`] runs openraft nodes with their RocksDB stores in one paused
//!   tokio runtime over [`network`]; openraft draws its own election
//!   timeouts, so a seed replays the same faults but not bit-exactly. Half
//!   the raft seeds also change membership while the faults go on: a spare
//!   node joins as a learner, is promoted through a joint configuration,
//!   and one of the first members (the leader as likely as any) is removed
//!   and stopped for good; the checks then cover the members that remain.
//!
//! Environment:
//! - `QUORUMLOCK_WSIM_PAXOS_SEEDS=N`, `QUORUMLOCK_WSIM_RAFT_SEEDS=N`: seeds
//!   per engine (defaults [`PAXOS_SEEDS_DEFAULT`], [`RAFT_SEEDS_DEFAULT`]);
//! - `QUORUMLOCK_WSIM_FIRST_SEED=F`: start from seed F instead of 0 (for
//!   long runs over fresh seeds);
//! - `QUORUMLOCK_WSIM_SEED=S`: run seed S only;
//! - `QUORUMLOCK_WSIM_RAFT_REPLAYS=N`: seeds `raft_seed_replays_keep_the_properties`
//!   runs twice (default 4);
//! - `QUORUMLOCK_WSIM_TRACE=1`: print the run's events to stderr.

pub mod checker;
pub mod clock;
pub mod network;
pub mod paxos;
pub mod raft;
pub mod workload;

use std::time::Instant;

/// Paxos seeds a plain `cargo test` runs.
pub const PAXOS_SEEDS_DEFAULT: u64 = 20_000;
/// Raft seeds a plain `cargo test` runs.
pub const RAFT_SEEDS_DEFAULT: u64 = 1_000;

/// A broken property, described by the values that broke it.
pub type Violation = String;

/// What one run did, for reports and for comparing replays.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunSummary {
    /// Simulated milliseconds the run lasted.
    pub steps: u64,
    /// Log slots or indices applied.
    pub slots: u64,
    /// Fenced writes clients saw acknowledged.
    pub acked_writes: u64,
    /// Answers clients received.
    pub answers: u64,
    /// Crashes injected.
    pub crashes: u64,
    /// Partitions injected.
    pub partitions: u64,
    /// Clock jumps and rate changes injected.
    pub clock_skews: u64,
    /// Client pauses injected.
    pub pauses: u64,
    /// Fenced writes and releases refused for a stale token.
    pub stale_refusals: u64,
    /// Nodes whose disk was lost and that were repaired.
    pub repairs: u64,
    /// Grants ended through the log because their maximum hold time passed.
    pub holds_ended: u64,
    /// Lock-delays begun (a grant with one ended by expiry or maximum hold).
    pub delays_begun: u64,
    /// Lock-delays ended through the log.
    pub delays_ended: u64,
    /// Try-acquires refused because the lock was in a lock-delay.
    pub delayed_refusals: u64,
    /// Grants clients found gone at their next write or release.
    pub lost_grants: u64,
    /// Digest of the final state and the run's length.
    pub fingerprint: u64,
}

/// A digest of a run's outcome: equal digests for two runs of one seed show
/// the replay was exact.
pub fn fingerprint(state: &[u8], steps: u64, slots: usize) -> u64 {
    use std::hash::{Hash, Hasher};
    // SipHash with fixed keys: the same bytes give the same digest anywhere.
    #[allow(deprecated)]
    let mut hasher = std::hash::SipHasher::new();
    state.hash(&mut hasher);
    steps.hash(&mut hasher);
    slots.hash(&mut hasher);
    hasher.finish()
}

/// Runs one seed; a broken property or a panic becomes an error naming the
/// seed and how to replay it.
pub fn run_seed(
    engine: &str,
    seed: u64,
    run: impl FnOnce(u64) -> Result<RunSummary, Violation>,
) -> Result<RunSummary, String> {
    let replay = format!(
        "QUORUMLOCK_WSIM_SEED={seed} cargo test --release -p quorumlock-testkit --lib sim::tests::{engine}"
    );
    quorumlock_simkit::run_seed(engine, seed, &replay, run)
}

/// The seeds to run: the replayed one (`QUORUMLOCK_WSIM_SEED`), or
/// `count_var` many (default `default_count`) from
/// `QUORUMLOCK_WSIM_FIRST_SEED` (default 0).
pub fn seeds(count_var: &str, default_count: u64) -> Vec<u64> {
    quorumlock_simkit::seeds_from_env("QUORUMLOCK_WSIM", count_var, default_count)
}

/// Runs every seed, prints totals and the rate, and fails listing the
/// first broken seeds.
pub fn run_seeds(
    engine: &str,
    seeds: &[u64],
    mut run: impl FnMut(u64) -> Result<RunSummary, Violation>,
) -> RunSummary {
    let started = Instant::now();
    let mut failures = Vec::new();
    let mut totals = RunSummary {
        steps: 0,
        slots: 0,
        acked_writes: 0,
        answers: 0,
        crashes: 0,
        partitions: 0,
        clock_skews: 0,
        pauses: 0,
        stale_refusals: 0,
        repairs: 0,
        holds_ended: 0,
        delays_begun: 0,
        delays_ended: 0,
        delayed_refusals: 0,
        lost_grants: 0,
        fingerprint: 0,
    };
    for seed in seeds {
        match run_seed(engine, *seed, &mut run) {
            Ok(summary) => {
                totals.steps += summary.steps;
                totals.slots += summary.slots;
                totals.acked_writes += summary.acked_writes;
                totals.answers += summary.answers;
                totals.crashes += summary.crashes;
                totals.partitions += summary.partitions;
                totals.clock_skews += summary.clock_skews;
                totals.pauses += summary.pauses;
                totals.stale_refusals += summary.stale_refusals;
                totals.repairs += summary.repairs;
                totals.holds_ended += summary.holds_ended;
                totals.delays_begun += summary.delays_begun;
                totals.delays_ended += summary.delays_ended;
                totals.delayed_refusals += summary.delayed_refusals;
                totals.lost_grants += summary.lost_grants;
            }
            Err(failure) => {
                eprintln!("{failure}");
                failures.push(failure);
                if failures.len() >= 10 {
                    break;
                }
            }
        }
    }
    let elapsed = started.elapsed();
    eprintln!(
        "whole-service simulation, {engine}: {} seeds in {elapsed:.1?} ({:.1} seeds/s); simulated {} s, \
         {} slots, {} answers, {} acknowledged writes; injected {} crashes, {} partitions, {} clock \
         skews, {} client pauses, {} lost disks (each repaired); {} stale writes refused, {} grants \
         found lost; {} holds ended at their maximum, {} lock-delays begun and {} ended, {} acquires \
         refused in a lock-delay; {} failed",
        seeds.len(),
        seeds.len() as f64 / elapsed.as_secs_f64(),
        totals.steps / 1_000,
        totals.slots,
        totals.answers,
        totals.acked_writes,
        totals.crashes,
        totals.partitions,
        totals.clock_skews,
        totals.pauses,
        totals.repairs,
        totals.stale_refusals,
        totals.lost_grants,
        totals.holds_ended,
        totals.delays_begun,
        totals.delays_ended,
        totals.delayed_refusals,
        failures.len()
    );
    assert!(
        failures.is_empty(),
        "{} seeds failed; first: {}",
        failures.len(),
        failures[0]
    );
    totals
}

/// Cluster size of a seed: mostly 3, every fourth 5.
pub fn size_of(seed: u64) -> u64 {
    if seed % 4 == 3 {
        5
    } else {
        3
    }
}

#[cfg(test)]
mod tests;
