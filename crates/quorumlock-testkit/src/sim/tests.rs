//! The simulation's tests: the properties under faults for each engine,
//! exact replay, and checkers that do fail on broken histories.

use super::checker::{AckedWrite, Checker};
use super::paxos::PaxosSim;
use super::raft::RaftSim;
use super::*;
use quorumlock_core::consensus::NodeId;
use quorumlock_core::lock::{Change, Fence, FencingToken, Grant, LockMode, LockState, SessionId};

fn run_paxos(seed: u64) -> Result<RunSummary, Violation> {
    PaxosSim::new(seed, size_of(seed)).run()
}

/// Grant agreement, token monotonicity, fencing, state agreement,
/// durability after a full restart and liveness after healing hold for the
/// lock service on Multi-Paxos under every fault the simulation injects.
#[test]
fn paxos_lock_service_keeps_every_property_under_faults() {
    run_seeds(
        "paxos",
        &seeds("QUORUMLOCK_WSIM_PAXOS_SEEDS", PAXOS_SEEDS_DEFAULT),
        run_paxos,
    );
}

/// A Paxos seed replays exactly: two runs give the same summary, down to
/// the digest of the final state and the step count.
#[test]
fn paxos_seed_replays_exactly() {
    for seed in [1, 7] {
        let first = run_paxos(seed).expect("the seed passes");
        let second = run_paxos(seed).expect("the seed passes");
        assert_eq!(first, second, "seed {seed} replayed differently");
    }
}

fn run_raft(seed: u64) -> Result<RunSummary, Violation> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .expect("a runtime");
    runtime.block_on(async { RaftSim::new(seed, size_of(seed)).await.run().await })
}

/// The same properties for the lock service on openraft with its RocksDB
/// stores, under the same kinds of faults.
#[test]
fn raft_lock_service_keeps_every_property_under_faults() {
    let seeds = seeds("QUORUMLOCK_WSIM_RAFT_SEEDS", RAFT_SEEDS_DEFAULT);
    let totals = run_seeds("raft", &seeds, run_raft);
    // A quarter of the runs lose a disk.
    if seeds.len() >= 100 {
        assert!(totals.repairs > 0, "no run repaired a lost disk");
    }
}

/// A Raft seed replays the same faults and client decisions, but openraft's
/// own election timeouts and tokio's polling order are not seeded: this
/// reports how many replays end in the same state, and requires only that
/// every replay keeps the properties.
#[test]
fn raft_seed_replays_keep_the_properties() {
    let seeds = 0..quorumlock_simkit::env_u64("QUORUMLOCK_WSIM_RAFT_REPLAYS").unwrap_or(4);
    let count = seeds.end;
    let mut identical = 0;
    for seed in seeds {
        let first = run_seed("raft", seed, run_raft).unwrap_or_else(|failure| panic!("{failure}"));
        let second = run_seed("raft", seed, run_raft).unwrap_or_else(|failure| panic!("{failure}"));
        if first == second {
            identical += 1;
        }
    }
    eprintln!("raft replay: {identical} of {count} seeds replayed to an identical summary");
}

/// Paxos seeds the test of maximum holds and lock-delays runs.
const TIMED_PAXOS_SEEDS: u64 = 40;
/// Raft seeds it runs.
const TIMED_RAFT_SEEDS: u64 = 20;

/// Grants with a maximum hold time are ended by `EndHold` and lock-delays
/// are begun and ended by `EndLockDelay`, proposed by the leaders' hold
/// timers and applied through the log, on both engines; every property
/// (no grant during a lock-delay among them) holds meanwhile. The counts
/// show the paths are taken, so the properties do not hold vacuously.
#[test]
fn maximum_holds_and_lock_delays_end_through_the_log_under_faults_on_both_engines() {
    let paxos: Vec<u64> = (0..TIMED_PAXOS_SEEDS).collect();
    let raft: Vec<u64> = (0..TIMED_RAFT_SEEDS).collect();
    let totals = [
        ("paxos", run_seeds("paxos", &paxos, run_paxos)),
        ("raft", run_seeds("raft", &raft, run_raft)),
    ];
    for (engine, totals) in totals {
        assert!(
            totals.holds_ended > 0,
            "{engine}: no grant ended at its maximum hold"
        );
        assert!(totals.delays_begun > 0, "{engine}: no lock-delay began");
        assert!(totals.delays_ended > 0, "{engine}: no lock-delay ended");
    }
}

fn grant(lock: &str, session: u64, token: u64) -> Grant {
    Grant {
        lock: lock.to_string(),
        session: SessionId::new(session),
        token: FencingToken::new(token),
    }
}

/// The checker reports a token that does not increase on a replica, and a
/// token two replicas granted differently.
#[test]
fn checker_reports_token_regressions_and_disagreements() {
    let mut checker = Checker::default();
    checker.granted(NodeId::new(1), &grant("a", 1, 5));
    checker.granted(NodeId::new(1), &grant("a", 2, 4));
    assert!(checker
        .first_violation()
        .is_some_and(|v| v.starts_with("token monotonicity")));

    let mut checker = Checker::default();
    checker.granted(NodeId::new(1), &grant("a", 1, 5));
    checker.granted(NodeId::new(2), &grant("a", 2, 5));
    assert!(checker
        .first_violation()
        .is_some_and(|v| v.starts_with("grant agreement")));

    // After a restore the replica's order starts again, above the floor.
    let mut checker = Checker::default();
    checker.granted(NodeId::new(1), &grant("a", 1, 5));
    checker.restored(NodeId::new(1), &LockState::default());
    checker.granted(NodeId::new(1), &grant("a", 1, 5));
    assert!(checker.first_violation().is_none());
}

fn write(client: usize, token: u64, value: &str, invoked_ms: u64, completed_ms: u64) -> AckedWrite {
    AckedWrite {
        client,
        key: "record/a".to_string(),
        value: value.as_bytes().to_vec(),
        fence: Fence {
            lock: "a".to_string(),
            token: FencingToken::new(token),
        },
        invoked_ms,
        completed_ms,
    }
}

/// The checker reports a store that accepted a lower token after a higher
/// one, in apply order and as clients saw it, and a lost acknowledged write.
#[test]
fn checker_reports_stale_fenced_writes_and_lost_writes() {
    let fence = |token| Fence {
        lock: "a".to_string(),
        token,
    };
    let mut checker = Checker::default();
    checker.put_accepted(NodeId::new(1), &fence(FencingToken::new(3)));
    checker.put_accepted(NodeId::new(1), &fence(FencingToken::new(2)));
    assert!(checker
        .first_violation()
        .is_some_and(|v| v.starts_with("fencing")));

    let mut checker = Checker::default();
    checker.put_acked(write(0, 3, "x", 0, 10));
    checker.put_acked(write(1, 2, "y", 20, 30));
    checker.check_realtime_fencing();
    assert!(checker
        .first_violation()
        .is_some_and(|v| v.starts_with("fencing")));

    let mut checker = Checker::default();
    checker.put_acked(write(0, 3, "x", 0, 10));
    checker.check_durability(NodeId::new(1), &LockState::default());
    assert!(checker
        .first_violation()
        .is_some_and(|v| v.starts_with("durability")));

    let mut checker = Checker::default();
    checker.applied_state(NodeId::new(1), 4, vec![1]);
    checker.applied_state(NodeId::new(2), 4, vec![2]);
    assert!(checker
        .first_violation()
        .is_some_and(|v| v.starts_with("state agreement")));
}

fn granted(lock: &str, session: u64, token: u64) -> Change {
    Change::Granted {
        lock: lock.to_string(),
        session: SessionId::new(session),
        token: FencingToken::new(token),
        mode: LockMode::Exclusive,
        permits: 0,
    }
}

/// The checker reports a replica that grants a lock while its state has
/// the lock in a lock-delay, and accepts a grant after the delay ended,
/// in the same revision or a later one; it counts the delays and the
/// holds ended once per revision, however many replicas applied it.
#[test]
fn checker_reports_a_grant_during_a_lock_delay() {
    let begun = [Change::DelayBegun {
        lock: "a".to_string(),
        ms: 300,
    }];
    let ended = Change::DelayEnded {
        lock: "a".to_string(),
    };
    let mut checker = Checker::default();
    checker.applied_changes(NodeId::new(1), 5, &begun);
    checker.applied_changes(NodeId::new(1), 6, &[granted("a", 2, 7)]);
    assert!(checker
        .first_violation()
        .is_some_and(|v| v.starts_with("lock-delay")));

    let mut checker = Checker::default();
    for node in [NodeId::new(1), NodeId::new(2)] {
        checker.applied_changes(node, 5, &begun);
        checker.applied_changes(node, 6, &[granted("b", 2, 7)]);
        checker.applied_changes(node, 8, &[ended.clone(), granted("a", 3, 8)]);
    }
    assert!(checker.first_violation().is_none());
    let counts = checker.timed_ends();
    assert_eq!((counts.delays_begun, counts.delays_ended), (1, 1));
}
