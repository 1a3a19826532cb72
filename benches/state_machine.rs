//! Microbenchmarks of the lock state machine's apply, so that regressions in
//! the code every replica runs for every command show up.
//!
//! Each command is measured on a state already holding 0, 10,000 and
//! 1,000,000 locks (built once per size), and each measured command is
//! undone outside the timed part, so the state keeps its size. Keepalives
//! are not commands (the leader renews leases on its own clock); what
//! reaches the state machine is the periodic `CheckpointSessions` record,
//! measured here with one entry and with a full checkpoint.
//!
//! Run with `cargo bench --bench state_machine`.

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use quorumlock_core::lock::limits::CHECKPOINT_ENTRIES_MAX;
use quorumlock_core::lock::{Command, Credential, Fence, FencingToken, LockState, Outcome, SessionId};

/// The state sizes measured, in held locks.
const LOCK_COUNTS: [usize; 3] = [0, 10_000, 1_000_000];
/// Locks each background session holds, so that no session's set is huge.
const LOCKS_PER_SESSION: usize = 1_000;
const TTL_MS: u64 = 60_000;

/// The owner of every session of the benchmark, and the caller of every
/// command: the ownership check is part of what is measured.
fn owner() -> Credential {
    Credential::of_secret(&[7; 32])
}

/// A state with `locks` held locks plus one idle session for the benchmark,
/// which holds the lock `bench/held` that fences its writes.
struct Setup {
    state: LockState,
    session: u64,
    held_token: u64,
}

fn open(state: &mut LockState) -> u64 {
    match state
        .apply(&Command::OpenSession {
            ttl_ms: TTL_MS,
            owner: owner(),
        })
        .result
    {
        Ok(Outcome::SessionOpened { session, .. }) => session.get(),
        other => panic!("OpenSession: {other:?}"),
    }
}

fn acquire(state: &mut LockState, session: u64, lock: &str) -> u64 {
    let command = Command::Acquire {
        session: SessionId::new(session),
        lock: lock.to_string(),
        wait: false,
        by: owner(),
    };
    match state.apply(&command).result {
        Ok(Outcome::Acquired { token }) => token.get(),
        other => panic!("Acquire({lock}): {other:?}"),
    }
}

fn setup(locks: usize) -> Setup {
    let mut state = LockState::default();
    let mut owner = 0;
    for index in 0..locks {
        if index % LOCKS_PER_SESSION == 0 {
            owner = open(&mut state);
        }
        acquire(&mut state, owner, &format!("lock/{index:07}"));
    }
    let session = open(&mut state);
    let held_token = acquire(&mut state, session, "bench/held");
    assert_eq!(state.lock_count(), locks + 1);
    Setup {
        state,
        session,
        held_token,
    }
}

/// Times `measured` only, running `undo` after each call outside the timer.
fn timed_with_undo(
    iterations: u64,
    state: &mut LockState,
    measured: &Command,
    undo: impl Fn(&LockState) -> Command,
) -> Duration {
    let mut total = Duration::ZERO;
    for _ in 0..iterations {
        let start = Instant::now();
        black_box(state.apply(black_box(measured)));
        total += start.elapsed();
        let undo = undo(state);
        black_box(state.apply(&undo));
    }
    total
}

fn bench_apply(c: &mut Criterion) {
    let mut group = c.benchmark_group("apply");
    for locks in LOCK_COUNTS {
        let Setup {
            mut state,
            session,
            held_token,
        } = setup(locks);
        let free_lock = "bench/free".to_string();

        let acquire_free = Command::Acquire {
            session: SessionId::new(session),
            lock: free_lock.clone(),
            wait: false,
            by: owner(),
        };
        group.bench_function(BenchmarkId::new("acquire", locks), |b| {
            b.iter_custom(|iterations| {
                timed_with_undo(iterations, &mut state, &acquire_free, |state| Command::Release {
                    session: SessionId::new(session),
                    lock: free_lock.clone(),
                    token: state.current_token(&free_lock).expect("just acquired"),
                    by: owner(),
                })
            })
        });

        group.bench_function(BenchmarkId::new("release", locks), |b| {
            b.iter_custom(|iterations| {
                let mut total = Duration::ZERO;
                for _ in 0..iterations {
                    let token = acquire(&mut state, session, &free_lock);
                    let release = Command::Release {
                        session: SessionId::new(session),
                        lock: free_lock.clone(),
                        token: FencingToken::new(token),
                        by: owner(),
                    };
                    let start = Instant::now();
                    black_box(state.apply(black_box(&release)));
                    total += start.elapsed();
                }
                total
            })
        });

        // A try-lock of a held lock: refused as busy, state unchanged.
        let acquire_busy = Command::Acquire {
            session: SessionId::new(session),
            lock: if locks > 0 {
                "lock/0000000".into()
            } else {
                "bench/held".into()
            },
            wait: false,
            by: owner(),
        };
        let other = open(&mut state);
        let acquire_busy = match acquire_busy {
            Command::Acquire { lock, wait, .. } => Command::Acquire {
                session: SessionId::new(other),
                lock,
                wait,
                by: owner(),
            },
            command => command,
        };
        group.bench_function(BenchmarkId::new("acquire_busy", locks), |b| {
            b.iter(|| black_box(state.apply(black_box(&acquire_busy))))
        });

        let put = Command::Put {
            key: "bench/key".into(),
            value: vec![7; 1_024],
            fence: Fence {
                lock: "bench/held".into(),
                token: FencingToken::new(held_token),
            },
            session: SessionId::new(session),
            by: owner(),
        };
        group.bench_function(BenchmarkId::new("put_with_token_1KiB", locks), |b| {
            b.iter(|| black_box(state.apply(black_box(&put))))
        });

        let stale_put = Command::Put {
            key: "bench/key".into(),
            value: vec![7; 1_024],
            fence: Fence {
                lock: "bench/held".into(),
                token: FencingToken::new(held_token - 1),
            },
            session: SessionId::new(session),
            by: owner(),
        };
        group.bench_function(BenchmarkId::new("put_stale_token_refused", locks), |b| {
            b.iter(|| black_box(state.apply(black_box(&stale_put))))
        });

        let checkpoint_one = Command::CheckpointSessions {
            remaining: vec![(SessionId::new(session), TTL_MS / 2)],
        };
        group.bench_function(BenchmarkId::new("keepalive_checkpoint_1", locks), |b| {
            b.iter(|| black_box(state.apply(black_box(&checkpoint_one))))
        });

        let sessions: Vec<SessionId> = state.sessions().map(|(id, _)| id).collect();
        let checkpoint_full = Command::CheckpointSessions {
            remaining: (0..CHECKPOINT_ENTRIES_MAX)
                .map(|index| (sessions[index % sessions.len()], TTL_MS / 2))
                .collect(),
        };
        group.bench_function(BenchmarkId::new("keepalive_checkpoint_1000", locks), |b| {
            b.iter(|| black_box(state.apply(black_box(&checkpoint_full))))
        });
    }
    group.finish();
}

criterion_group!(benches, bench_apply);
criterion_main!(benches);
