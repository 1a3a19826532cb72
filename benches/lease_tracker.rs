//! Microbenchmarks of the leader's lease tracker at many sessions: the
//! periodic tick that looks for expired leases and for checkpoints to
//! record, when nothing is due (the steady state of live clients), and one
//! renewal. A tick's cost must not grow with the number of sessions: the
//! tracker keeps deadlines and checkpoint triggers in ordered indexes, so a
//! tick examines only the leases that are due.
//!
//! Run with `cargo bench --bench lease_tracker`.

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use quorumlock_core::lease::LeaseTracker;
use quorumlock_core::lock::SessionId;

/// The numbers of tracked sessions measured; a million is the state
/// machine's session limit.
const SESSION_COUNTS: [u64; 3] = [10_000, 100_000, 1_000_000];
const TTL: Duration = Duration::from_secs(10);
const GRACE: Duration = Duration::from_secs(1);
/// What the lease driver asks of one tick, at most.
const PER_TICK_MAX: usize = 256;

fn tracker(sessions: u64, now: Instant) -> LeaseTracker {
    let (mut tracker, charges) = LeaseTracker::take_over(now, GRACE, std::iter::empty());
    assert!(charges.is_empty());
    for id in 1..=sessions {
        tracker.track(SessionId::new(id), TTL, now);
    }
    tracker
}

fn bench_tracker(c: &mut Criterion) {
    let mut group = c.benchmark_group("lease_tracker");
    group.sample_size(20);
    group.measurement_time(Duration::from_secs(3));
    for sessions in SESSION_COUNTS {
        let now = Instant::now();
        let mut tracker = tracker(sessions, now);
        group.bench_with_input(BenchmarkId::new("idle_tick", sessions), &sessions, |b, _| {
            b.iter(|| {
                let expired = tracker.take_expired(black_box(now), PER_TICK_MAX);
                let checkpoints = tracker.take_checkpoints(black_box(now), PER_TICK_MAX);
                assert!(expired.is_empty() && checkpoints.is_empty(), "nothing is due");
            })
        });
        let mut next = 0;
        group.bench_with_input(BenchmarkId::new("renew", sessions), &sessions, |b, _| {
            b.iter(|| {
                next = next % sessions + 1;
                tracker
                    .renew(SessionId::new(next), black_box(now))
                    .expect("every tracked lease is live")
            })
        });
    }
    group.finish();
}

criterion_group!(benches, bench_tracker);
criterion_main!(benches);
