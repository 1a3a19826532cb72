//! Unit tests of the lock state machine, one property per test.
//!
//! Every test asserts the exact [`Applied`] value a command produced (its
//! result and its events), not merely that it succeeded, because observers of
//! the applied stream act on the events.

use std::collections::BTreeMap;

use super::limits::{
    CHECKPOINT_ENTRIES_MAX, KEY_BYTES_MAX, LOCK_NAME_BYTES_MAX, SESSIONS_MAX, SESSION_TTL_MS_MAX,
    SESSION_TTL_MS_MIN, VALUE_BYTES_MAX, WAITERS_PER_LOCK_MAX,
};
use super::{
    validate, Applied, Cause, Change, Command, Credential, Event, Fence, FencingToken, Grant, HoldTerms,
    KvEntry, LockDelay, LockError, LockMode, LockState, LockView, Outcome, SecretDigest, SessionId, Timed,
    Totals,
};

/// A TTL inside the documented bounds.
const TTL_MS: u64 = 10_000;

/// The owner of every session these tests open, and the caller of every
/// command they send, except in the tests of callers that are not owners.
fn owner() -> Credential {
    Credential::of_secret(b"the secret of the tests' sessions")
}

/// An `OpenSession` by [`owner`].
fn open_command(ttl_ms: u64) -> Command {
    Command::OpenSession {
        ttl_ms,
        owner: owner(),
    }
}

/// A `CloseSession` by [`owner`].
fn close(session: SessionId) -> Command {
    Command::CloseSession { session, by: owner() }
}

/// Opens a session and returns its id, failing the test on any other outcome.
fn open(state: &mut LockState) -> SessionId {
    match state.apply(&open_command(TTL_MS)) {
        Applied {
            result: Ok(Outcome::SessionOpened { session, ttl_ms }),
            events,
        } if ttl_ms == TTL_MS && events.is_empty() => session,
        other => panic!("opening a session gave {other:?}"),
    }
}

/// Acquires a free lock and returns its token, failing the test otherwise.
fn take(state: &mut LockState, session: SessionId, lock: &str) -> FencingToken {
    let token = state.next_token();
    assert_eq!(
        state.apply(&acquire(session, lock, false)),
        acquired_fresh(lock, session, token),
        "session {session} should get the free lock {lock:?}"
    );
    token
}

fn acquire(session: SessionId, lock: &str, wait: bool) -> Command {
    Command::Acquire {
        session,
        lock: lock.to_string(),
        wait,
        by: owner(),
    }
}

fn release(session: SessionId, lock: &str, token: FencingToken) -> Command {
    Command::Release {
        session,
        lock: lock.to_string(),
        token,
        by: owner(),
    }
}

fn cancel_wait(session: SessionId, lock: &str) -> Command {
    Command::CancelWait {
        session,
        lock: lock.to_string(),
        by: owner(),
    }
}

/// A fenced put by `session`'s owner.
fn put(session: SessionId, key: &str, value: &[u8], lock: &str, token: FencingToken) -> Command {
    Command::Put {
        key: key.to_string(),
        value: value.to_vec(),
        fence: fence(lock, token),
        session,
        by: owner(),
    }
}

/// A fenced delete by `session`'s owner.
fn delete(session: SessionId, key: &str, lock: &str, token: FencingToken) -> Command {
    Command::Delete {
        key: key.to_string(),
        fence: fence(lock, token),
        session,
        by: owner(),
    }
}

fn fence(lock: &str, token: FencingToken) -> Fence {
    Fence {
        lock: lock.to_string(),
        token,
    }
}

fn grant(lock: &str, session: SessionId, token: FencingToken) -> Grant {
    Grant {
        lock: lock.to_string(),
        session,
        token,
    }
}

/// A successful result without events.
fn quiet(outcome: Outcome) -> Applied {
    Applied {
        result: Ok(outcome),
        events: Vec::new(),
    }
}

/// A refusal; refusals never carry events.
fn refused(error: LockError) -> Applied {
    Applied {
        result: Err(error),
        events: Vec::new(),
    }
}

/// What acquiring a free lock produces: the token and its `Granted` event.
fn acquired_fresh(lock: &str, session: SessionId, token: FencingToken) -> Applied {
    Applied {
        result: Ok(Outcome::Acquired { token }),
        events: vec![Event::Granted(grant(lock, session, token))],
    }
}

fn stale(lock: &str, presented: FencingToken, current: Option<FencingToken>) -> LockError {
    LockError::StaleToken {
        lock: lock.to_string(),
        presented,
        current,
    }
}

fn held_by(session: SessionId, token: FencingToken, queue_len: usize) -> LockView {
    LockView {
        mode: LockMode::Exclusive,
        holder: Some((session, token)),
        shared: Vec::new(),
        queue_len,
        terms: BTreeMap::new(),
        delay: None,
    }
}

fn free() -> LockView {
    LockView {
        mode: LockMode::Exclusive,
        holder: None,
        shared: Vec::new(),
        queue_len: 0,
        terms: BTreeMap::new(),
        delay: None,
    }
}

/// Applies a command that must be refused with `error`, and checks that the
/// refusal left the state byte for byte as it was.
fn assert_refused(state: &mut LockState, command: &Command, error: LockError) {
    let before = state.snapshot();
    assert_eq!(state.apply(command), refused(error), "applying {command:?}");
    assert_eq!(
        state.snapshot(),
        before,
        "a refused {command:?} must leave the state unchanged"
    );
}

/// Applies a command that must be refused as an invalid argument.
fn assert_invalid_argument(state: &mut LockState, command: &Command) {
    let before = state.snapshot();
    let applied = state.apply(command);
    assert!(
        matches!(applied.result, Err(LockError::InvalidArgument(_))),
        "{command:?} should be an invalid argument, got {applied:?}"
    );
    assert!(applied.events.is_empty(), "a refusal has no events");
    assert_eq!(
        state.snapshot(),
        before,
        "a refused {command:?} must leave the state unchanged"
    );
}

// Sessions.

#[test]
fn open_session_assigns_increasing_ids_from_one_and_records_the_ttl() {
    let mut state = LockState::default();
    assert_eq!(
        state.apply(&open_command(TTL_MS)),
        quiet(Outcome::SessionOpened {
            session: SessionId::new(1),
            ttl_ms: TTL_MS
        })
    );
    assert_eq!(
        state.apply(&open_command(SESSION_TTL_MS_MIN)),
        quiet(Outcome::SessionOpened {
            session: SessionId::new(2),
            ttl_ms: SESSION_TTL_MS_MIN
        })
    );
    let first = state.session(SessionId::new(1)).expect("session 1 is open");
    assert_eq!(first.ttl_ms, TTL_MS);
    assert_eq!(first.checkpoint_remaining_ms, None);
    assert!(first.held.is_empty() && first.waiting.is_empty());
    assert_eq!(
        state.sessions().map(|(id, _)| id).collect::<Vec<_>>(),
        vec![SessionId::new(1), SessionId::new(2)]
    );
}

#[test]
fn ttl_out_of_bounds_is_invalid_argument() {
    let mut state = LockState::default();
    for ttl_ms in [0, SESSION_TTL_MS_MIN - 1, SESSION_TTL_MS_MAX + 1, u64::MAX] {
        assert_invalid_argument(&mut state, &open_command(ttl_ms));
    }
    assert_eq!(state.sessions().count(), 0);
    // Both bounds are inclusive, and the refusals consumed no session id.
    for (session, ttl_ms) in [
        (SessionId::new(1), SESSION_TTL_MS_MIN),
        (SessionId::new(2), SESSION_TTL_MS_MAX),
    ] {
        assert_eq!(
            state.apply(&open_command(ttl_ms)),
            quiet(Outcome::SessionOpened { session, ttl_ms })
        );
    }
}

#[test]
#[cfg_attr(
    debug_assertions,
    ignore = "opens a million sessions while every apply re-checks all invariants; run with --release"
)]
fn too_many_sessions_is_refused_at_sessions_max() {
    let mut state = LockState::default();
    for _ in 0..SESSIONS_MAX {
        open(&mut state);
    }
    assert_refused(
        &mut state,
        &open_command(TTL_MS),
        LockError::TooManySessions { max: SESSIONS_MAX },
    );
    // Ending one session makes room for exactly one more.
    assert_eq!(
        state.apply(&close(SessionId::new(1))),
        Applied {
            result: Ok(Outcome::SessionEnded { released: Vec::new() }),
            events: vec![Event::SessionEnded {
                session: SessionId::new(1)
            }],
        }
    );
    assert_eq!(open(&mut state), SessionId::new(SESSIONS_MAX as u64 + 1));
    assert_refused(
        &mut state,
        &open_command(TTL_MS),
        LockError::TooManySessions { max: SESSIONS_MAX },
    );
    assert_eq!(state.check_invariants(), Ok(()));
}

#[test]
fn close_session_releases_held_locks_in_name_order_and_reports_them() {
    let mut state = LockState::default();
    let session = open(&mut state);
    let other = open(&mut state);
    take(&mut state, session, "b");
    take(&mut state, session, "a");
    let kept = take(&mut state, other, "c");
    assert_eq!(
        state.apply(&close(session)),
        Applied {
            result: Ok(Outcome::SessionEnded {
                released: vec!["a".to_string(), "b".to_string()]
            }),
            events: vec![Event::SessionEnded { session }],
        }
    );
    assert_eq!(state.session(session), None);
    assert_eq!(state.describe("a"), free());
    assert_eq!(state.describe("b"), free());
    assert_eq!(state.describe("c"), held_by(other, kept, 0));
    assert_eq!(
        state.lock_count(),
        1,
        "released locks without waiters are dropped"
    );
}

#[test]
fn expire_session_releases_locks_and_drops_queue_entries() {
    let mut state = LockState::default();
    let (first, expiring, third) = (open(&mut state), open(&mut state), open(&mut state));
    let a_token = take(&mut state, first, "a");
    let b_token = take(&mut state, expiring, "b");
    // The expiring session waits on "a", and the third session waits on "b".
    assert_eq!(
        state.apply(&acquire(expiring, "a", true)),
        quiet(Outcome::Queued { position: 0 })
    );
    assert_eq!(
        state.apply(&acquire(third, "a", true)),
        quiet(Outcome::Queued { position: 1 })
    );
    assert_eq!(
        state.apply(&acquire(third, "b", true)),
        quiet(Outcome::Queued { position: 0 })
    );
    let next = state.next_token();
    assert_eq!(
        state.apply(&Command::ExpireSession { session: expiring }),
        Applied {
            result: Ok(Outcome::SessionEnded {
                released: vec!["b".to_string()]
            }),
            events: vec![
                Event::Granted(grant("b", third, next)),
                Event::SessionEnded { session: expiring },
            ],
        }
    );
    assert!(next > b_token);
    assert_eq!(state.describe("b"), held_by(third, next, 0));
    // The expired session left the queue of "a", so the third session is now first.
    assert_eq!(state.describe("a"), held_by(first, a_token, 1));
    assert_eq!(
        state.apply(&acquire(third, "a", true)),
        quiet(Outcome::Queued { position: 0 })
    );
    let third_record = state.session(third).expect("third session is open");
    assert_eq!(
        third_record.held.iter().collect::<Vec<_>>(),
        vec!["b"],
        "the grant is recorded on the new holder"
    );
    assert_eq!(third_record.waiting.iter().collect::<Vec<_>>(), vec!["a"]);
    assert_eq!(
        state.apply(&release(first, "a", a_token)),
        Applied {
            result: Ok(Outcome::Released {
                next: Some(grant("a", third, next + 1))
            }),
            events: vec![Event::Granted(grant("a", third, next + 1))],
        }
    );
    assert_eq!(state.check_invariants(), Ok(()));
}

#[test]
fn ending_a_session_that_holds_and_waits_grants_its_lock_and_leaves_the_other_queue() {
    let mut state = LockState::default();
    let (holder, ending) = (open(&mut state), open(&mut state));
    let a_token = take(&mut state, holder, "a");
    take(&mut state, ending, "b");
    assert_eq!(
        state.apply(&acquire(ending, "a", true)),
        quiet(Outcome::Queued { position: 0 })
    );
    assert_eq!(
        state.apply(&acquire(holder, "b", true)),
        quiet(Outcome::Queued { position: 0 })
    );
    let next = state.next_token();
    assert_eq!(
        state.apply(&close(ending)),
        Applied {
            result: Ok(Outcome::SessionEnded {
                released: vec!["b".to_string()]
            }),
            events: vec![
                Event::Granted(grant("b", holder, next)),
                Event::SessionEnded { session: ending },
            ],
        }
    );
    assert_eq!(state.describe("a"), held_by(holder, a_token, 0));
    assert_eq!(state.describe("b"), held_by(holder, next, 0));
    assert_eq!(state.check_invariants(), Ok(()));
}

#[test]
fn ending_an_unknown_or_ended_session_is_session_not_found() {
    let mut state = LockState::default();
    let session = open(&mut state);
    assert_refused(
        &mut state,
        &close(SessionId::new(7)),
        LockError::SessionNotFound {
            session: SessionId::new(7),
        },
    );
    assert_refused(
        &mut state,
        &Command::ExpireSession {
            session: SessionId::new(0),
        },
        LockError::SessionNotFound {
            session: SessionId::new(0),
        },
    );
    assert_eq!(
        state.apply(&close(session)),
        Applied {
            result: Ok(Outcome::SessionEnded { released: Vec::new() }),
            events: vec![Event::SessionEnded { session }],
        }
    );
    // A close and an expiry can race through the log; the second is refused.
    assert_refused(
        &mut state,
        &Command::ExpireSession { session },
        LockError::SessionNotFound { session },
    );
    assert_refused(
        &mut state,
        &close(session),
        LockError::SessionNotFound { session },
    );
}

#[test]
fn ended_session_ids_are_never_reused() {
    let mut state = LockState::default();
    let first = open(&mut state);
    state.apply(&close(first));
    let second = open(&mut state);
    assert!(second > first, "id {second} reuses or precedes {first}");
    assert_eq!(state.session(first), None);
}

#[test]
fn commands_naming_an_ended_session_are_session_not_found() {
    let mut state = LockState::default();
    let (ended, live) = (open(&mut state), open(&mut state));
    let token = take(&mut state, ended, "a");
    state.apply(&close(ended));
    let not_found = LockError::SessionNotFound { session: ended };
    assert_refused(&mut state, &acquire(ended, "a", false), not_found.clone());
    assert_refused(&mut state, &acquire(ended, "a", true), not_found.clone());
    assert_refused(&mut state, &cancel_wait(ended, "a"), not_found.clone());
    assert_refused(&mut state, &release(ended, "a", token), not_found);
    // The lock it held is free for others.
    take(&mut state, live, "a");
}

// Checkpoints.

#[test]
fn checkpoint_is_bounded_and_skips_unknown_sessions() {
    let mut state = LockState::default();
    let (first, second) = (open(&mut state), open(&mut state));
    assert_eq!(
        state.apply(&Command::CheckpointSessions {
            remaining: vec![(first, 4_000), (SessionId::new(99), 1_000), (second, 0)],
        }),
        quiet(Outcome::Checkpointed { sessions: 2 })
    );
    assert_eq!(
        state.session(SessionId::new(99)),
        None,
        "a checkpoint never creates a session"
    );
    assert_eq!(
        state.session(first).map(|s| s.checkpoint_remaining_ms),
        Some(Some(4_000))
    );
    assert_eq!(
        state.session(second).map(|s| s.checkpoint_remaining_ms),
        Some(Some(0))
    );

    // Exactly the bound is accepted; one more entry is refused as a whole.
    let at_bound = vec![(first, 3_000); CHECKPOINT_ENTRIES_MAX];
    assert_eq!(
        state.apply(&Command::CheckpointSessions { remaining: at_bound }),
        quiet(Outcome::Checkpointed {
            sessions: CHECKPOINT_ENTRIES_MAX
        })
    );
    let over_bound = vec![(second, 2_000); CHECKPOINT_ENTRIES_MAX + 1];
    assert_invalid_argument(
        &mut state,
        &Command::CheckpointSessions {
            remaining: over_bound,
        },
    );
    assert_eq!(
        state.session(second).map(|s| s.checkpoint_remaining_ms),
        Some(Some(0))
    );
    assert_eq!(
        state.apply(&Command::CheckpointSessions {
            remaining: Vec::new()
        }),
        quiet(Outcome::Checkpointed { sessions: 0 })
    );
}

#[test]
fn checkpoint_never_records_more_than_the_session_ttl() {
    let mut state = LockState::default();
    let session = open(&mut state);
    assert_eq!(
        state.apply(&Command::CheckpointSessions {
            remaining: vec![(session, u64::MAX)],
        }),
        quiet(Outcome::Checkpointed { sessions: 1 })
    );
    assert_eq!(
        state.session(session).map(|s| s.checkpoint_remaining_ms),
        Some(Some(TTL_MS))
    );
}

#[test]
fn restoring_full_budgets_touches_only_the_budgets() {
    let mut state = LockState::default();
    let (first, second) = (open(&mut state), open(&mut state));
    state.apply(&Command::CheckpointSessions {
        remaining: vec![(first, 1_000), (second, 0)],
    });
    let mut expected = state.clone();
    state.restore_full_budgets();
    for session in [first, second] {
        assert_eq!(
            state.session(session).map(|s| s.checkpoint_remaining_ms),
            Some(None),
            "session {session} has its full TTL again"
        );
    }
    assert_ne!(state, expected, "the budgets were recorded before");
    expected.restore_full_budgets();
    assert_eq!(state, expected);
    assert_eq!(state.next_session(), SessionId::new(3));
}

// Acquiring.

#[test]
fn acquire_of_free_lock_grants_a_fresh_token_and_emits_granted() {
    let mut state = LockState::default();
    let session = open(&mut state);
    assert_eq!(
        state.next_token(),
        FencingToken::new(1),
        "tokens start at 1; 0 means none"
    );
    assert_eq!(
        state.apply(&acquire(session, "a", false)),
        acquired_fresh("a", session, FencingToken::new(1))
    );
    assert_eq!(state.next_token(), FencingToken::new(2));
    assert_eq!(state.describe("a"), held_by(session, FencingToken::new(1), 0));
    assert_eq!(state.current_token("a"), Some(FencingToken::new(1)));
    assert!(state.session(session).is_some_and(|s| s.held.contains("a")));
    // Waiting makes no difference for a free lock.
    assert_eq!(
        state.apply(&acquire(session, "b", true)),
        acquired_fresh("b", session, FencingToken::new(2))
    );
    assert_eq!(state.lock_count(), 2);
}

#[test]
fn tokens_come_from_one_counter_shared_by_all_locks() {
    let mut state = LockState::default();
    let (first, second) = (open(&mut state), open(&mut state));
    assert_eq!(take(&mut state, first, "a"), FencingToken::new(1));
    assert_eq!(take(&mut state, second, "b"), FencingToken::new(2));
    state.apply(&release(first, "a", FencingToken::new(1)));
    assert_eq!(take(&mut state, second, "a"), FencingToken::new(3));
    assert_eq!(take(&mut state, first, "c"), FencingToken::new(4));
}

#[test]
fn acquire_by_holder_is_idempotent_and_returns_same_token() {
    let mut state = LockState::default();
    let session = open(&mut state);
    let token = take(&mut state, session, "a");
    let before = state.snapshot();
    for wait in [false, true, false] {
        assert_eq!(
            state.apply(&acquire(session, "a", wait)),
            quiet(Outcome::Acquired { token }),
            "a retried acquire (wait: {wait}) returns the same token and grants nothing"
        );
    }
    assert_eq!(state.snapshot(), before, "a retry changes nothing");
    assert_eq!(state.next_token(), token + 1);
}

#[test]
fn try_lock_on_held_lock_is_busy_and_does_not_queue() {
    let mut state = LockState::default();
    let (holder, other) = (open(&mut state), open(&mut state));
    let token = take(&mut state, holder, "a");
    let before = state.snapshot();
    assert_eq!(
        state.apply(&acquire(other, "a", false)),
        quiet(Outcome::Busy { holder_token: token })
    );
    assert_eq!(state.snapshot(), before, "a busy try-lock changes nothing");
    assert_eq!(state.describe("a"), held_by(holder, token, 0));
    assert!(state.session(other).is_some_and(|s| s.waiting.is_empty()));
    // The holder's release therefore grants nobody.
    assert_eq!(
        state.apply(&release(holder, "a", token)),
        quiet(Outcome::Released { next: None })
    );
}

#[test]
fn waiting_acquires_on_held_lock_queue_in_arrival_order() {
    let mut state = LockState::default();
    let holder = open(&mut state);
    let waiters: Vec<SessionId> = (0..3).map(|_| open(&mut state)).collect();
    let token = take(&mut state, holder, "a");
    for (position, waiter) in waiters.iter().enumerate() {
        assert_eq!(
            state.apply(&acquire(*waiter, "a", true)),
            quiet(Outcome::Queued { position })
        );
        assert!(state.session(*waiter).is_some_and(|s| s.waiting.contains("a")));
    }
    assert_eq!(state.describe("a"), held_by(holder, token, 3));
    assert_eq!(state.next_token(), token + 1, "queueing grants no token");
}

#[test]
fn acquire_retry_by_queued_session_reports_its_position_without_requeueing() {
    let mut state = LockState::default();
    let (holder, first, second) = (open(&mut state), open(&mut state), open(&mut state));
    let token = take(&mut state, holder, "a");
    state.apply(&acquire(first, "a", true));
    state.apply(&acquire(second, "a", true));
    let before = state.snapshot();
    // A retry reports the position even without `wait`: the session is queued.
    for wait in [true, false] {
        assert_eq!(
            state.apply(&acquire(second, "a", wait)),
            quiet(Outcome::Queued { position: 1 })
        );
    }
    assert_eq!(state.snapshot(), before, "a retry changes nothing");
    assert_eq!(state.describe("a"), held_by(holder, token, 2));
}

#[test]
#[cfg_attr(
    debug_assertions,
    ignore = "queues ten thousand waiters while every apply re-checks all invariants; run with --release"
)]
fn queue_full_is_refused_at_waiters_per_lock_max() {
    let mut state = LockState::default();
    let holder = open(&mut state);
    let token = take(&mut state, holder, "a");
    let waiters: Vec<SessionId> = (0..WAITERS_PER_LOCK_MAX).map(|_| open(&mut state)).collect();
    for (position, waiter) in waiters.iter().enumerate() {
        assert_eq!(
            state.apply(&acquire(*waiter, "a", true)),
            quiet(Outcome::Queued { position })
        );
    }
    let late = open(&mut state);
    let full = LockError::QueueFull {
        lock: "a".to_string(),
        max: WAITERS_PER_LOCK_MAX,
    };
    assert_refused(&mut state, &acquire(late, "a", true), full);
    // A try-lock is still just busy, and a queued session's retry still
    // learns its position.
    assert_eq!(
        state.apply(&acquire(late, "a", false)),
        quiet(Outcome::Busy { holder_token: token })
    );
    let last = waiters[WAITERS_PER_LOCK_MAX - 1];
    assert_eq!(
        state.apply(&acquire(last, "a", true)),
        quiet(Outcome::Queued {
            position: WAITERS_PER_LOCK_MAX - 1
        })
    );
    // One waiter leaving makes room for exactly one more, at the back.
    assert_eq!(
        state.apply(&cancel_wait(waiters[0], "a")),
        quiet(Outcome::WaitCancelled { was_waiting: true })
    );
    assert_eq!(
        state.apply(&acquire(late, "a", true)),
        quiet(Outcome::Queued {
            position: WAITERS_PER_LOCK_MAX - 1
        })
    );
    assert_eq!(state.describe("a"), held_by(holder, token, WAITERS_PER_LOCK_MAX));
    assert_eq!(state.check_invariants(), Ok(()));
}

#[test]
fn name_empty_or_too_long_is_invalid_argument() {
    let mut state = LockState::default();
    let session = open(&mut state);
    let too_long = "x".repeat(LOCK_NAME_BYTES_MAX + 1);
    // Length is counted in bytes: 257 two-byte characters are 514 bytes.
    let too_long_in_bytes = "é".repeat(LOCK_NAME_BYTES_MAX / 2 + 1);
    for name in ["", too_long.as_str(), too_long_in_bytes.as_str()] {
        assert_invalid_argument(&mut state, &acquire(session, name, false));
        assert_invalid_argument(&mut state, &acquire(session, name, true));
        assert_invalid_argument(&mut state, &cancel_wait(session, name));
        assert_invalid_argument(&mut state, &release(session, name, FencingToken::new(1)));
        assert_invalid_argument(&mut state, &put(session, "k", b"v", name, FencingToken::new(1)));
        assert_invalid_argument(&mut state, &delete(session, "k", name, FencingToken::new(1)));
    }
    // The argument is checked before the session, whatever the session.
    assert_invalid_argument(&mut state, &acquire(SessionId::new(999), "", false));
    assert_eq!(state.lock_count(), 0);
    let longest = "x".repeat(LOCK_NAME_BYTES_MAX);
    let longest_in_bytes = "é".repeat(LOCK_NAME_BYTES_MAX / 2);
    assert_eq!(take(&mut state, session, &longest), FencingToken::new(1));
    assert_eq!(take(&mut state, session, &longest_in_bytes), FencingToken::new(2));
}

// Cancelling a wait.

#[test]
fn cancel_wait_leaves_queue_but_keeps_holder() {
    let mut state = LockState::default();
    let (holder, waiter) = (open(&mut state), open(&mut state));
    let token = take(&mut state, holder, "a");
    state.apply(&acquire(waiter, "a", true));
    assert_eq!(
        state.apply(&cancel_wait(waiter, "a")),
        quiet(Outcome::WaitCancelled { was_waiting: true })
    );
    assert_eq!(state.describe("a"), held_by(holder, token, 0));
    assert!(state.session(waiter).is_some_and(|s| s.waiting.is_empty()));
    // The holder cancelling a wait it never had keeps the lock.
    assert_eq!(
        state.apply(&cancel_wait(holder, "a")),
        quiet(Outcome::WaitCancelled { was_waiting: false })
    );
    assert_eq!(state.describe("a"), held_by(holder, token, 0));
    // With the queue empty, the release grants nobody.
    assert_eq!(
        state.apply(&release(holder, "a", token)),
        quiet(Outcome::Released { next: None })
    );
    assert_eq!(state.lock_count(), 0);
}

#[test]
fn cancel_wait_without_waiting_reports_false_and_creates_no_lock() {
    let mut state = LockState::default();
    let session = open(&mut state);
    let before = state.snapshot();
    assert_eq!(
        state.apply(&cancel_wait(session, "never-held")),
        quiet(Outcome::WaitCancelled { was_waiting: false })
    );
    assert_eq!(state.snapshot(), before);
    assert_eq!(state.lock_count(), 0);
}

#[test]
fn cancelled_waiter_is_skipped_when_the_lock_is_handed_over() {
    let mut state = LockState::default();
    let holder = open(&mut state);
    let (first, cancelled, last) = (open(&mut state), open(&mut state), open(&mut state));
    let token = take(&mut state, holder, "a");
    for waiter in [first, cancelled, last] {
        state.apply(&acquire(waiter, "a", true));
    }
    state.apply(&cancel_wait(cancelled, "a"));
    assert_eq!(
        state.apply(&acquire(last, "a", true)),
        quiet(Outcome::Queued { position: 1 }),
        "the waiters behind the cancelled one move up"
    );
    assert_eq!(
        state.apply(&release(holder, "a", token)),
        Applied {
            result: Ok(Outcome::Released {
                next: Some(grant("a", first, token + 1))
            }),
            events: vec![Event::Granted(grant("a", first, token + 1))],
        }
    );
    assert_eq!(
        state.apply(&release(first, "a", token + 1)),
        Applied {
            result: Ok(Outcome::Released {
                next: Some(grant("a", last, token + 2))
            }),
            events: vec![Event::Granted(grant("a", last, token + 2))],
        }
    );
}

// Releasing.

#[test]
fn release_without_waiters_frees_and_drops_the_lock() {
    let mut state = LockState::default();
    let session = open(&mut state);
    let token = take(&mut state, session, "a");
    assert_eq!(
        state.apply(&release(session, "a", token)),
        quiet(Outcome::Released { next: None })
    );
    assert_eq!(state.describe("a"), free());
    assert_eq!(state.current_token("a"), None);
    assert_eq!(state.lock_count(), 0);
    assert!(state.session(session).is_some_and(|s| s.held.is_empty()));
    assert_eq!(state.next_token(), token + 1, "a release consumes no token");
}

#[test]
fn release_grants_next_waiter_in_same_command_with_higher_token() {
    let mut state = LockState::default();
    let (holder, first, second) = (open(&mut state), open(&mut state), open(&mut state));
    let token = take(&mut state, holder, "a");
    state.apply(&acquire(first, "a", true));
    state.apply(&acquire(second, "a", true));
    let next = grant("a", first, token + 1);
    assert_eq!(
        state.apply(&release(holder, "a", token)),
        Applied {
            result: Ok(Outcome::Released {
                next: Some(next.clone())
            }),
            events: vec![Event::Granted(next)],
        }
    );
    assert_eq!(state.describe("a"), held_by(first, token + 1, 1));
    let first_record = state.session(first).expect("first waiter is open");
    assert!(first_record.held.contains("a") && !first_record.waiting.contains("a"));
    assert!(state.session(holder).is_some_and(|s| s.held.is_empty()));
    // The new holder's retry sees its granted token.
    assert_eq!(
        state.apply(&acquire(first, "a", true)),
        quiet(Outcome::Acquired { token: token + 1 })
    );
    assert_eq!(
        state.apply(&acquire(second, "a", false)),
        quiet(Outcome::Queued { position: 0 })
    );
}

#[test]
fn release_with_wrong_token_is_refused_as_stale() {
    let mut state = LockState::default();
    let (other, holder) = (open(&mut state), open(&mut state));
    let old = take(&mut state, holder, "a");
    state.apply(&release(holder, "a", old));
    take(&mut state, other, "b");
    let token = take(&mut state, holder, "a");
    for presented in [old, token + 1, FencingToken::new(0)] {
        assert_refused(
            &mut state,
            &release(holder, "a", presented),
            stale("a", presented, Some(token)),
        );
    }
    assert_eq!(state.describe("a"), held_by(holder, token, 0));
}

#[test]
fn release_by_a_session_that_does_not_hold_the_lock_is_not_holder() {
    let mut state = LockState::default();
    let (holder, other) = (open(&mut state), open(&mut state));
    let token = take(&mut state, holder, "a");
    state.apply(&acquire(other, "a", true));
    let not_holder = |lock: &str| LockError::NotHolder {
        lock: lock.to_string(),
        session: other,
    };
    // Even the holder's exact token does not let another session release it.
    assert_refused(&mut state, &release(other, "a", token), not_holder("a"));
    assert_refused(
        &mut state,
        &release(other, "free", FencingToken::new(1)),
        not_holder("free"),
    );
    assert_eq!(state.describe("a"), held_by(holder, token, 1));
}

#[test]
fn release_twice_is_not_holder() {
    let mut state = LockState::default();
    let session = open(&mut state);
    let token = take(&mut state, session, "a");
    state.apply(&release(session, "a", token));
    assert_refused(
        &mut state,
        &release(session, "a", token),
        LockError::NotHolder {
            lock: "a".to_string(),
            session,
        },
    );
}

// The fenced key-value store.

#[test]
fn put_with_current_token_is_written_and_records_its_fence() {
    let mut state = LockState::default();
    let session = open(&mut state);
    let token = take(&mut state, session, "a");
    assert_eq!(
        state.apply(&put(session, "k", b"one", "a", token)),
        quiet(Outcome::Written { existed: true })
    );
    assert_eq!(
        state.apply(&put(session, "k", b"two", "a", token)),
        quiet(Outcome::Written { existed: true })
    );
    assert_eq!(
        state.get("k"),
        Some(&KvEntry {
            value: b"two".to_vec(),
            written_by: fence("a", token),
        })
    );
    assert_eq!(state.check_fence(&fence("a", token)), Ok(()));
    // An empty value is a value.
    assert_eq!(
        state.apply(&put(session, "empty", b"", "a", token)),
        quiet(Outcome::Written { existed: true })
    );
    assert_eq!(state.get("empty").map(|e| e.value.len()), Some(0));
}

#[test]
fn fenced_put_with_stale_token_names_presented_and_current() {
    let mut state = LockState::default();
    let (old_holder, new_holder) = (open(&mut state), open(&mut state));
    let old = take(&mut state, old_holder, "a");
    state.apply(&put(old_holder, "k", b"old", "a", old));
    state.apply(&acquire(new_holder, "a", true));
    state.apply(&release(old_holder, "a", old));
    let current = old + 1;
    // The paused old holder wakes up and writes with its old token.
    assert_refused(
        &mut state,
        &put(old_holder, "k", b"late", "a", old),
        stale("a", old, Some(current)),
    );
    assert_eq!(
        state.check_fence(&fence("a", old)),
        Err(stale("a", old, Some(current)))
    );
    // A token from the future is just as stale.
    assert_refused(
        &mut state,
        &put(new_holder, "k", b"early", "a", current + 1),
        stale("a", current + 1, Some(current)),
    );
    assert_eq!(state.get("k").map(|e| e.value.as_slice()), Some(&b"old"[..]));
    assert_eq!(
        state.apply(&put(new_holder, "k", b"new", "a", current)),
        quiet(Outcome::Written { existed: true })
    );
    assert_eq!(state.get("k").map(|e| &e.written_by), Some(&fence("a", current)));
}

#[test]
fn fence_of_another_lock_is_checked_against_that_lock() {
    let mut state = LockState::default();
    let (first, second) = (open(&mut state), open(&mut state));
    let a_token = take(&mut state, first, "a");
    let b_token = take(&mut state, second, "b");
    // A token is only current for the lock that granted it.
    assert_refused(
        &mut state,
        &put(first, "k", b"v", "b", a_token),
        stale("b", a_token, Some(b_token)),
    );
    assert_eq!(
        state.apply(&put(second, "k", b"v", "b", b_token)),
        quiet(Outcome::Written { existed: true })
    );
}

#[test]
fn put_after_release_is_refused() {
    let mut state = LockState::default();
    let session = open(&mut state);
    let token = take(&mut state, session, "a");
    state.apply(&release(session, "a", token));
    assert_refused(
        &mut state,
        &put(session, "k", b"v", "a", token),
        stale("a", token, None),
    );
    assert_refused(
        &mut state,
        &delete(session, "k", "a", token),
        stale("a", token, None),
    );
    // So is a fence on a lock that was never held.
    assert_refused(
        &mut state,
        &put(session, "k", b"v", "never", FencingToken::new(1)),
        stale("never", FencingToken::new(1), None),
    );
    assert_eq!(state.get("k"), None);
}

#[test]
fn put_after_holder_session_ends_is_refused() {
    let mut state = LockState::default();
    let session = open(&mut state);
    let token = take(&mut state, session, "a");
    state.apply(&Command::ExpireSession { session });
    assert_refused(
        &mut state,
        &put(session, "k", b"v", "a", token),
        stale("a", token, None),
    );
}

#[test]
fn delete_reports_whether_the_key_existed_and_is_fenced() {
    let mut state = LockState::default();
    let (first, second) = (open(&mut state), open(&mut state));
    let old = take(&mut state, first, "a");
    state.apply(&put(first, "k", b"v", "a", old));
    state.apply(&acquire(second, "a", true));
    state.apply(&release(first, "a", old));
    let current = old + 1;
    assert_refused(
        &mut state,
        &delete(first, "k", "a", old),
        stale("a", old, Some(current)),
    );
    assert!(state.get("k").is_some(), "a stale delete keeps the key");
    assert_eq!(
        state.apply(&delete(second, "k", "a", current)),
        quiet(Outcome::Written { existed: true })
    );
    assert_eq!(state.get("k"), None);
    assert_eq!(
        state.apply(&delete(second, "k", "a", current)),
        quiet(Outcome::Written { existed: false })
    );
}

#[test]
fn value_over_limit_is_invalid_argument() {
    let mut state = LockState::default();
    let session = open(&mut state);
    let token = take(&mut state, session, "a");
    let too_big = vec![7; VALUE_BYTES_MAX + 1];
    assert_invalid_argument(&mut state, &put(session, "k", &too_big, "a", token));
    // The value is checked before the fence.
    assert_invalid_argument(&mut state, &put(session, "k", &too_big, "a", token + 5));
    assert_eq!(state.get("k"), None);
    let largest = vec![7; VALUE_BYTES_MAX];
    assert_eq!(
        state.apply(&put(session, "k", &largest, "a", token)),
        quiet(Outcome::Written { existed: true })
    );
    assert_eq!(state.get("k").map(|e| e.value.len()), Some(VALUE_BYTES_MAX));
}

#[test]
fn key_empty_or_too_long_is_invalid_argument() {
    let mut state = LockState::default();
    let session = open(&mut state);
    let token = take(&mut state, session, "a");
    let too_long = "k".repeat(KEY_BYTES_MAX + 1);
    for key in ["", too_long.as_str()] {
        assert_invalid_argument(&mut state, &put(session, key, b"v", "a", token));
        assert_invalid_argument(&mut state, &delete(session, key, "a", token));
    }
    let longest = "k".repeat(KEY_BYTES_MAX);
    assert_eq!(
        state.apply(&put(session, &longest, b"v", "a", token)),
        quiet(Outcome::Written { existed: true })
    );
}

// Argument checks shared with the RPC layer.

#[test]
fn utf8_name_rejects_invalid_utf8_and_checks_the_length() {
    assert_eq!(validate::utf8_name("lock name", b"ok", 2), Ok("ok"));
    assert!(matches!(
        validate::utf8_name("lock name", &[0xff, 0xfe], 10),
        Err(LockError::InvalidArgument(message)) if message == "lock name is not valid UTF-8"
    ));
    assert!(matches!(
        validate::utf8_name("key", b"abc", 2),
        Err(LockError::InvalidArgument(_))
    ));
    assert!(matches!(
        validate::utf8_name("key", b"", 2),
        Err(LockError::InvalidArgument(_))
    ));
}

// Snapshots and determinism.

/// Builds a state with sessions, held locks, a queue, a checkpoint, a stored
/// value and a counter that has moved past released tokens.
fn busy_state() -> LockState {
    let mut state = LockState::default();
    let (first, second, third) = (open(&mut state), open(&mut state), open(&mut state));
    let a_token = take(&mut state, first, "a");
    take(&mut state, second, "b");
    state.apply(&acquire(third, "a", true));
    state.apply(&acquire(first, "b", true));
    state.apply(&put(first, "k", b"v", "a", a_token));
    let c_token = take(&mut state, third, "c");
    state.apply(&release(third, "c", c_token));
    state.apply(&Command::CheckpointSessions {
        remaining: vec![(second, 1_234)],
    });
    state
}

#[test]
fn states_that_applied_the_same_commands_snapshot_to_identical_bytes() {
    let (one, other) = (busy_state(), busy_state());
    assert_eq!(one, other);
    assert_eq!(one.snapshot(), other.snapshot());
}

#[test]
fn snapshot_restore_round_trips_and_preserves_token_counter() {
    let mut original = busy_state();
    let bytes = original.snapshot();
    let mut restored = LockState::restore(&bytes).expect("a snapshot restores");
    assert_eq!(restored, original);
    assert_eq!(restored.snapshot(), bytes);
    assert_eq!(restored.next_token(), original.next_token());
    assert_eq!(
        restored.next_token(),
        FencingToken::new(4),
        "three grants were made"
    );
    assert_eq!(restored.describe("a"), original.describe("a"));
    assert_eq!(restored.get("k"), original.get("k"));
    // The restored copy carries on exactly like the original: the next grant
    // gets the next token, never a reused one.
    for command in [
        release(SessionId::new(1), "a", FencingToken::new(1)),
        acquire(SessionId::new(2), "c", false),
        open_command(TTL_MS),
    ] {
        assert_eq!(restored.apply(&command), original.apply(&command));
    }
    assert_eq!(restored.current_token("a"), Some(FencingToken::new(4)));
    assert_eq!(restored.current_token("c"), Some(FencingToken::new(5)));
    assert_eq!(
        restored.session(SessionId::new(4)).map(|s| s.ttl_ms),
        Some(TTL_MS)
    );
    assert_eq!(restored.snapshot(), original.snapshot());
}

#[test]
fn restore_of_an_empty_state_round_trips() {
    let empty = LockState::default();
    let restored = LockState::restore(&empty.snapshot()).expect("an empty snapshot restores");
    assert_eq!(restored, empty);
    assert_eq!(restored.next_token(), FencingToken::new(1));
}

#[test]
fn restore_rejects_garbage_bytes() {
    let bytes = busy_state().snapshot();
    assert!(LockState::restore(&[]).is_err());
    assert!(LockState::restore(&[0xff; 7]).is_err());
    // Every truncation of a real snapshot is refused.
    for length in 0..bytes.len() {
        assert!(
            LockState::restore(&bytes[..length]).is_err(),
            "a snapshot cut to {length} of {} bytes was accepted",
            bytes.len()
        );
    }
    // So are bytes appended to a real snapshot.
    let mut extended = bytes;
    extended.push(0);
    assert!(
        LockState::restore(&extended).is_err(),
        "a snapshot with a trailing byte was accepted"
    );
    // So is pseudo-random noise, from a fixed seed so that a failure replays.
    let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
    for length in [8, 16, 24, 40, 64, 256, 4096] {
        let noise: Vec<u8> = (0..length)
            .map(|_| {
                seed = seed
                    .wrapping_mul(6_364_136_223_846_793_005)
                    .wrapping_add(1_442_695_040_888_963_407);
                (seed >> 56) as u8
            })
            .collect();
        assert!(
            LockState::restore(&noise).is_err(),
            "{length} bytes of noise were accepted"
        );
    }
}

#[test]
fn restore_rejects_a_snapshot_that_breaks_the_invariants() {
    let bytes = busy_state().snapshot();
    // After its 8-byte magic, the snapshot starts with the session counter
    // and then the token counter, each a little-endian u64; winding a
    // counter back below an id or token in use yields bytes that decode
    // but describe an impossible state.
    let mut reused_token = bytes.clone();
    reused_token[16..24].copy_from_slice(&1u64.to_le_bytes());
    let error = LockState::restore(&reused_token).expect_err("a token at the counter");
    assert!(error.contains("not below the counter"), "{error}");
    let mut reused_session = bytes;
    reused_session[8..16].copy_from_slice(&1u64.to_le_bytes());
    let error = LockState::restore(&reused_session).expect_err("a session at the counter");
    assert!(error.contains("not below the counter"), "{error}");
}

// Refusal messages.

#[test]
fn every_refusal_message_names_its_values() {
    let cases = [
        (
            LockError::InvalidArgument("lock name is empty".to_string()),
            "invalid argument: lock name is empty",
        ),
        (
            LockError::SessionNotFound {
                session: SessionId::new(7),
            },
            "session 7 not found (closed, expired or never opened)",
        ),
        (
            LockError::NotHolder {
                lock: "a".to_string(),
                session: SessionId::new(3),
            },
            "session 3 does not hold lock \"a\"",
        ),
        (
            stale("a", FencingToken::new(4), Some(FencingToken::new(9))),
            "stale fencing token for lock \"a\": presented 4, current 9",
        ),
        (
            stale("a", FencingToken::new(4), None),
            "stale fencing token for lock \"a\": presented 4, current none (lock is free)",
        ),
        (
            LockError::QueueFull {
                lock: "a".to_string(),
                max: WAITERS_PER_LOCK_MAX,
            },
            "wait queue of lock \"a\" is full (10000 waiters)",
        ),
        (
            LockError::TooManySessions { max: SESSIONS_MAX },
            "too many open sessions (1000000)",
        ),
    ];
    for (error, message) in cases {
        assert_eq!(error.to_string(), message);
    }
}

// Session ownership.

/// A caller with the id of someone else's session but not its secret.
fn impostor() -> Credential {
    Credential::of_secret(b"a guessed secret")
}

#[test]
fn every_session_scoped_command_from_a_caller_without_the_sessions_secret_is_refused_and_changes_nothing() {
    let mut state = LockState::default();
    let (victim, waiter) = (open(&mut state), open(&mut state));
    let token = take(&mut state, victim, "a");
    state.apply(&acquire(waiter, "a", true));
    state.apply(&put(victim, "k", b"victim's", "a", token));
    let not_owner = |session| LockError::NotSessionOwner {
        session,
        caller: None,
    };
    let by_impostor = [
        Command::CloseSession {
            session: victim,
            by: impostor(),
        },
        Command::Acquire {
            session: victim,
            lock: "b".to_string(),
            wait: false,
            by: impostor(),
        },
        Command::CancelWait {
            session: waiter,
            lock: "a".to_string(),
            by: impostor(),
        },
        Command::Release {
            session: victim,
            lock: "a".to_string(),
            token,
            by: impostor(),
        },
        Command::Put {
            key: "k".to_string(),
            value: b"hijacked".to_vec(),
            fence: fence("a", token),
            session: victim,
            by: impostor(),
        },
        Command::Delete {
            key: "k".to_string(),
            fence: fence("a", token),
            session: victim,
            by: impostor(),
        },
    ];
    for command in &by_impostor {
        let session = match command {
            Command::CancelWait { session, .. } => *session,
            _ => victim,
        };
        assert_refused(&mut state, command, not_owner(session));
    }
    assert_eq!(state.describe("a"), held_by(victim, token, 1));
    assert_eq!(
        state.get("k").map(|entry| entry.value.as_slice()),
        Some(&b"victim's"[..])
    );
    // The owner still can.
    assert_eq!(
        state.apply(&release(victim, "a", token)),
        Applied {
            result: Ok(Outcome::Released {
                next: Some(grant("a", waiter, token + 1))
            }),
            events: vec![Event::Granted(grant("a", waiter, token + 1))],
        }
    );
}

#[test]
fn a_fenced_write_by_a_session_that_read_the_current_token_but_does_not_hold_the_lock_is_refused() {
    let mut state = LockState::default();
    let (holder, other) = (open(&mut state), open(&mut state));
    let token = take(&mut state, holder, "a");
    // The token is public: anyone can read it with `Describe`.
    let seen = state.describe("a").holder.map(|(_, token)| token).expect("held");
    let not_holder = LockError::NotHolder {
        lock: "a".to_string(),
        session: other,
    };
    assert_refused(&mut state, &put(other, "k", b"v", "a", seen), not_holder.clone());
    assert_refused(&mut state, &delete(other, "k", "a", seen), not_holder);
    assert_eq!(
        state.apply(&put(holder, "k", b"v", "a", token)),
        quiet(Outcome::Written { existed: true })
    );
}

#[test]
fn a_session_opened_by_an_identity_admits_only_that_identity_with_the_secret() {
    let mut state = LockState::default();
    let secret = b"drawn by the node";
    let as_identity = |identity: Option<&str>| Credential {
        secret: SecretDigest::of(secret),
        identity: identity.map(str::to_string),
    };
    let opened = state.apply(&Command::OpenSession {
        ttl_ms: TTL_MS,
        owner: as_identity(Some("jobs-worker")),
    });
    let Ok(Outcome::SessionOpened { session, .. }) = opened.result else {
        panic!("opening gave {opened:?}");
    };
    let try_lock = |by: Credential| Command::Acquire {
        session,
        lock: "jobs/1".to_string(),
        wait: false,
        by,
    };
    assert_refused(
        &mut state,
        &try_lock(as_identity(Some("billing"))),
        LockError::NotSessionOwner {
            session,
            caller: Some("billing".to_string()),
        },
    );
    assert_refused(
        &mut state,
        &try_lock(as_identity(None)),
        LockError::NotSessionOwner {
            session,
            caller: None,
        },
    );
    assert_eq!(
        state.apply(&try_lock(as_identity(Some("jobs-worker")))),
        acquired_fresh("jobs/1", session, FencingToken::new(1))
    );
    // An identity longer than the bound is refused when opening.
    assert_invalid_argument(
        &mut state,
        &Command::OpenSession {
            ttl_ms: TTL_MS,
            owner: as_identity(Some(&"x".repeat(super::credential::IDENTITY_BYTES_MAX + 1))),
        },
    );
}

#[test]
fn the_not_owner_refusal_names_the_caller_and_the_session_but_no_secret() {
    let refusal = LockError::NotSessionOwner {
        session: SessionId::new(7),
        caller: Some("jobs".to_string()),
    };
    assert_eq!(
        refusal.to_string(),
        "caller \"jobs\" is not the owner of session 7: the session secret or identity presented \
         is not the one it was opened with"
    );
}

#[test]
fn repairs_are_recorded_counted_once_each_and_travel_in_snapshots() {
    let mut state = LockState::default();
    let node = quorumlock_proto::NodeId::new(2);
    let record = |incarnation| Command::RecordRepair { node, incarnation };
    assert!(matches!(
        state.apply(&record(0)).result,
        Err(LockError::InvalidArgument(_))
    ));
    assert_eq!(
        state.apply(&record(0xc3)).result,
        Ok(Outcome::RepairRecorded { repairs: 1 })
    );
    assert_eq!(
        state.apply(&record(0xc3)).result,
        Ok(Outcome::RepairRecorded { repairs: 1 }),
        "a retried record of the same repair counts once"
    );
    assert_eq!(
        state.apply(&record(0xd4)).result,
        Ok(Outcome::RepairRecorded { repairs: 2 })
    );
    let restored = LockState::restore(&state.snapshot()).unwrap();
    assert_eq!(restored.repaired()[&node].incarnation, 0xd4);
    assert_eq!(restored, state);
    let mut forgotten = restored;
    forgotten.forget_repairs();
    assert!(forgotten.repaired().is_empty());
}

/// Bytes of [`Totals`] at the end of a snapshot: nine u64 counters.
const TOTALS_BYTES: usize = 72;

#[test]
fn a_snapshot_written_before_repairs_were_recorded_still_restores() {
    let mut state = LockState::default();
    let session = open(&mut state);
    take(&mut state, session, "held");
    let current = state.snapshot_body_before_modes();
    // The earliest layout: no leading magic, no repairs (the lengths of
    // the empty map and set of repairs, 8 bytes each) and no totals.
    let earlier = &current[..current.len() - TOTALS_BYTES - 16];
    let restored = LockState::restore(earlier).unwrap();
    assert_eq!(restored.totals(), Totals::default(), "totals start at 0");
    assert_eq!(restored.session_count(), 1);
    assert_eq!(restored.current_token("held"), state.current_token("held"));
    assert!(LockState::restore(&current[..current.len() - 8]).is_err());
}

#[test]
fn a_snapshot_written_before_totals_were_kept_restores_with_zero_totals() {
    let mut state = LockState::default();
    let session = open(&mut state);
    take(&mut state, session, "held");
    let current = state.snapshot_body_before_modes();
    let mut earlier = b"QLSTATE2".to_vec();
    earlier.extend_from_slice(&current[..current.len() - TOTALS_BYTES]);
    let restored = LockState::restore(&earlier).unwrap();
    assert_eq!(restored.totals(), Totals::default());
    let body = restored.snapshot_body_before_modes();
    assert_eq!(
        body[..body.len() - TOTALS_BYTES],
        current[..current.len() - TOTALS_BYTES]
    );
}

#[test]
fn a_snapshot_written_before_shared_locks_restores_every_lock_as_exclusive() {
    let mut state = LockState::default();
    let holder = open(&mut state);
    let waiter = open(&mut state);
    let token = take(&mut state, holder, "held");
    state.apply(&acquire(waiter, "held", true));
    let mut earlier = b"QLSTATE3".to_vec();
    earlier.extend_from_slice(&state.snapshot_body_before_modes());
    let restored = LockState::restore(&earlier).unwrap();
    assert_eq!(restored, state, "the same state, every lock exclusive");
    assert_eq!(restored.describe("held"), held_by(holder, token, 1));
    assert_eq!(restored.totals(), state.totals());
}

#[test]
fn totals_count_what_applied_commands_did_and_travel_in_snapshots() {
    let mut state = LockState::default();
    let holder = open(&mut state);
    let waiter = open(&mut state);
    let token = take(&mut state, holder, "a");
    assert!(matches!(
        state.apply(&acquire(waiter, "a", true)).result,
        Ok(Outcome::Queued { position: 0 })
    ));
    // A retried acquire of a queued session is not a second join.
    state.apply(&acquire(waiter, "a", true));
    assert!(state.apply(&put(holder, "k", b"v", "a", token)).result.is_ok());
    let stale = FencingToken::new(token.get() + 100);
    assert!(matches!(
        state.apply(&put(holder, "k", b"v", "a", stale)).result,
        Err(LockError::StaleToken { .. })
    ));
    // The holder expires: its lock is lost and handed to the waiter.
    state.apply(&Command::ExpireSession { session: holder });
    let totals = state.totals();
    assert_eq!(
        totals,
        Totals {
            sessions_opened: 2,
            sessions_expired: 1,
            grants: 2,
            locks_lost: 1,
            queue_joins: 1,
            fenced_writes: 1,
            ..Totals::default()
        }
    );
    assert_eq!(LockState::restore(&state.snapshot()).unwrap().totals(), totals);
}

#[test]
fn a_repair_is_pending_from_its_begin_until_its_record() {
    let mut state = LockState::default();
    let node = quorumlock_proto::NodeId::new(3);
    assert!(!state.repair_pending(node));
    assert_eq!(
        state.apply(&Command::BeginRepair { node }).result,
        Ok(Outcome::RepairBegun)
    );
    assert!(state.repair_pending(node));
    let restored = LockState::restore(&state.snapshot()).unwrap();
    assert!(restored.repair_pending(node), "the mark travels in snapshots");
    state.apply(&Command::RecordRepair {
        node,
        incarnation: 0xe5,
    });
    assert!(!state.repair_pending(node), "the record ends it");
}

#[test]
fn queues_lists_the_longest_first_with_their_holders_and_counts_every_waiter() {
    let mut state = LockState::default();
    let holder = open(&mut state);
    let short_token = take(&mut state, holder, "short");
    let long_token = take(&mut state, holder, "long");
    take(&mut state, holder, "idle");
    let waiters: Vec<SessionId> = (0..3).map(|_| open(&mut state)).collect();
    for waiter in &waiters {
        state.apply(&acquire(*waiter, "long", true));
    }
    state.apply(&acquire(waiters[0], "short", true));
    let queues = state.queues(10);
    assert_eq!(queues.waiters, 4);
    assert_eq!(queues.held, 3);
    let listed: Vec<&str> = queues.deepest.iter().map(|queue| queue.lock.as_str()).collect();
    assert_eq!(
        listed,
        ["long", "short"],
        "longest first; locks without waiters are not listed"
    );
    assert_eq!(queues.deepest[0].depth, 3);
    assert_eq!(queues.deepest[0].holder, Some((holder, long_token)));
    assert_eq!(queues.deepest[1].depth, 1);
    assert_eq!(queues.deepest[1].holder, Some((holder, short_token)));
    assert_eq!(state.queues(1).deepest.len(), 1, "at most `top` queues");
}

// Shared (reader-writer) locks.

fn acquire_shared(session: SessionId, lock: &str, wait: bool) -> Command {
    Command::AcquireShared {
        session,
        lock: lock.to_string(),
        wait,
        by: owner(),
    }
}

/// Takes `lock` shared with a fresh token, failing the test otherwise.
fn take_shared(state: &mut LockState, session: SessionId, lock: &str) -> FencingToken {
    let token = state.next_token();
    assert_eq!(
        state.apply(&acquire_shared(session, lock, false)),
        acquired_fresh(lock, session, token),
        "session {session} should share lock {lock:?}"
    );
    token
}

fn shared_by(holders: &[(SessionId, FencingToken)], queue_len: usize) -> LockView {
    LockView {
        mode: LockMode::Shared,
        holder: None,
        shared: holders.to_vec(),
        queue_len,
        terms: BTreeMap::new(),
        delay: None,
    }
}

#[test]
fn readers_share_a_lock_each_with_its_own_rising_token() {
    let mut state = LockState::default();
    let (one, two) = (open(&mut state), open(&mut state));
    let first = take_shared(&mut state, one, "doc");
    let second = take_shared(&mut state, two, "doc");
    assert!(second > first);
    assert_eq!(
        state.describe("doc"),
        shared_by(&[(one, first), (two, second)], 0)
    );
    // A retry gives the same token back.
    assert_eq!(
        state.apply(&acquire_shared(one, "doc", false)),
        quiet(Outcome::Acquired { token: first })
    );
    for token in [first, second] {
        assert!(state.token_is_current("doc", token, LockMode::Shared));
        assert!(!state.token_is_current("doc", token, LockMode::Exclusive));
        assert_eq!(state.check_read_fence(&fence("doc", token)), Ok(()));
    }
    assert_eq!(
        state.current_token("doc"),
        Some(second),
        "the newest shared token"
    );
    // A writer is busy; releasing one reader leaves the other holding.
    let writer = open(&mut state);
    assert_eq!(
        state.apply(&acquire(writer, "doc", false)),
        quiet(Outcome::Busy { holder_token: second })
    );
    assert_eq!(
        state.apply(&release(one, "doc", first)),
        quiet(Outcome::Released { next: None })
    );
    assert_eq!(state.describe("doc"), shared_by(&[(two, second)], 0));
    assert!(!state.token_is_current("doc", first, LockMode::Shared));
    assert_eq!(state.check_invariants(), Ok(()));
}

#[test]
fn readers_arriving_behind_a_queued_writer_wait_behind_it() {
    let mut state = LockState::default();
    let (reader, writer, late) = (open(&mut state), open(&mut state), open(&mut state));
    let read_token = take_shared(&mut state, reader, "doc");
    assert_eq!(
        state.apply(&acquire(writer, "doc", true)),
        quiet(Outcome::Queued { position: 0 })
    );
    // The lock is held shared, but a writer waits: a new reader queues.
    assert_eq!(
        state.apply(&acquire_shared(late, "doc", true)),
        quiet(Outcome::Queued { position: 1 })
    );
    assert_eq!(
        state.apply(&acquire_shared(late, "doc", false)),
        quiet(Outcome::Queued { position: 1 }),
        "a retry reports the place"
    );
    let write_token = state.next_token();
    assert_eq!(
        state.apply(&release(reader, "doc", read_token)),
        Applied {
            result: Ok(Outcome::Released {
                next: Some(grant("doc", writer, write_token))
            }),
            events: vec![Event::Granted(grant("doc", writer, write_token))],
        }
    );
    assert_eq!(state.describe("doc"), held_by(writer, write_token, 1));
    assert_eq!(state.check_invariants(), Ok(()));
}

#[test]
fn consecutive_queued_readers_are_granted_together_up_to_the_next_writer() {
    let mut state = LockState::default();
    let writer = open(&mut state);
    let readers = [open(&mut state), open(&mut state)];
    let second_writer = open(&mut state);
    let last_reader = open(&mut state);
    let token = take(&mut state, writer, "doc");
    for session in readers {
        assert!(matches!(
            state.apply(&acquire_shared(session, "doc", true)).result,
            Ok(Outcome::Queued { .. })
        ));
    }
    state.apply(&acquire(second_writer, "doc", true));
    state.apply(&acquire_shared(last_reader, "doc", true));
    let first = state.next_token();
    let second = first.next();
    assert_eq!(
        state.apply(&release(writer, "doc", token)),
        Applied {
            result: Ok(Outcome::Released {
                next: Some(grant("doc", readers[0], first))
            }),
            events: vec![
                Event::Granted(grant("doc", readers[0], first)),
                Event::Granted(grant("doc", readers[1], second)),
            ],
        }
    );
    // The second writer is next; the reader behind it still waits.
    assert_eq!(
        state.describe("doc"),
        shared_by(&[(readers[0], first), (readers[1], second)], 2)
    );
    assert_eq!(state.check_invariants(), Ok(()));
}

#[test]
fn a_writer_that_stops_waiting_lets_the_readers_behind_it_in() {
    for ends in ["cancel", "expire"] {
        let mut state = LockState::default();
        let (reader, writer, late) = (open(&mut state), open(&mut state), open(&mut state));
        let read_token = take_shared(&mut state, reader, "doc");
        state.apply(&acquire(writer, "doc", true));
        state.apply(&acquire_shared(late, "doc", true));
        let late_token = state.next_token();
        let applied = match ends {
            "cancel" => state.apply(&cancel_wait(writer, "doc")),
            _ => state.apply(&Command::ExpireSession { session: writer }),
        };
        assert_eq!(
            applied.events.first(),
            Some(&Event::Granted(grant("doc", late, late_token))),
            "{ends}: the reader behind the writer is granted"
        );
        assert_eq!(
            state.describe("doc"),
            shared_by(&[(reader, read_token), (late, late_token)], 0),
            "{ends}"
        );
        assert_eq!(state.check_invariants(), Ok(()));
    }
}

#[test]
fn a_hold_or_wait_is_never_changed_to_the_other_mode_in_place() {
    let mut state = LockState::default();
    let (reader, writer) = (open(&mut state), open(&mut state));
    let read_token = take_shared(&mut state, reader, "doc");
    let before = state.snapshot();
    let refusal = state.apply(&acquire(reader, "doc", true));
    assert!(
        matches!(&refusal.result, Err(LockError::WrongMode { lock, what })
            if lock == "doc" && what.contains("holds the lock in shared mode and asked for the lock in exclusive mode")),
        "{refusal:?}"
    );
    assert!(refusal.events.is_empty());
    assert_eq!(state.snapshot(), before, "the refusal changed nothing");
    state.apply(&acquire(writer, "doc", true));
    let refusal = state.apply(&acquire_shared(writer, "doc", true));
    assert!(
        matches!(&refusal.result, Err(LockError::WrongMode { what, .. }) if what.contains("waits for the lock in exclusive mode")),
        "{refusal:?}"
    );
    assert_eq!(state.describe("doc"), shared_by(&[(reader, read_token)], 1));
}

#[test]
fn a_shared_token_fences_reads_but_never_writes() {
    let mut state = LockState::default();
    let reader = open(&mut state);
    let token = take_shared(&mut state, reader, "doc");
    assert_refused(
        &mut state,
        &put(reader, "k", b"v", "doc", token),
        LockError::WrongMode {
            lock: "doc".to_string(),
            what: format!(
                "token {token} is a shared hold's; a fenced write needs the exclusive holder's token"
            ),
        },
    );
    assert_eq!(state.check_read_fence(&fence("doc", token)), Ok(()));
    state.apply(&release(reader, "doc", token));
    assert_eq!(
        state.check_read_fence(&fence("doc", token)),
        Err(stale("doc", token, None)),
        "a reader that let go is refused"
    );
    // An exclusive holder's token fences both.
    let writer = open(&mut state);
    let write_token = take(&mut state, writer, "doc");
    assert_eq!(state.check_read_fence(&fence("doc", write_token)), Ok(()));
    assert!(state.token_is_current("doc", write_token, LockMode::Shared));
    assert!(state.token_is_current("doc", write_token, LockMode::Exclusive));
}

// Semaphores.

fn permits(session: SessionId, semaphore: &str, permits: u32, limit: u32, wait: bool) -> Command {
    Command::AcquirePermits {
        session,
        semaphore: semaphore.to_string(),
        permits,
        limit,
        wait,
        by: owner(),
    }
}

fn used(state: &LockState, semaphore: &str) -> u64 {
    state
        .lock(semaphore)
        .and_then(|found| found.semaphore.as_ref())
        .map_or(0, |found| found.used())
}

#[test]
fn permits_are_granted_while_they_fit_and_a_large_ask_is_not_passed_by_smaller_ones() {
    let mut state = LockState::default();
    let (one, two, big, small) = (
        open(&mut state),
        open(&mut state),
        open(&mut state),
        open(&mut state),
    );
    let first = state.next_token();
    assert_eq!(
        state.apply(&permits(one, "pool", 2, 4, false)),
        acquired_fresh("pool", one, first)
    );
    let second = state.next_token();
    assert_eq!(
        state.apply(&permits(two, "pool", 1, 4, false)),
        acquired_fresh("pool", two, second)
    );
    assert_eq!(used(&state, "pool"), 3);
    // 2 do not fit in the 1 left: the ask waits, and a 1 behind it waits too.
    assert_eq!(
        state.apply(&permits(big, "pool", 2, 4, true)),
        quiet(Outcome::Queued { position: 0 })
    );
    assert_eq!(
        state.apply(&permits(small, "pool", 1, 4, false)),
        quiet(Outcome::Busy { holder_token: second }),
        "a try behind a waiter is busy even though a permit is free"
    );
    assert_eq!(
        state.apply(&permits(small, "pool", 1, 4, true)),
        quiet(Outcome::Queued { position: 1 })
    );
    // Two permits free: the large ask fits, the small one behind it waits.
    let big_token = state.next_token();
    assert_eq!(
        state.apply(&release(two, "pool", second)),
        Applied {
            result: Ok(Outcome::Released {
                next: Some(grant("pool", big, big_token))
            }),
            events: vec![Event::Granted(grant("pool", big, big_token))],
        }
    );
    assert_eq!(used(&state, "pool"), 4);
    assert_eq!(state.check_invariants(), Ok(()));
    // Permits return when a holder's session ends, and the next ask fits.
    let small_token = state.next_token();
    let ended = state.apply(&Command::ExpireSession { session: one });
    assert_eq!(
        ended.events.first(),
        Some(&Event::Granted(grant("pool", small, small_token)))
    );
    assert_eq!(used(&state, "pool"), 3);
    for (session, token) in [(big, big_token), (small, small_token)] {
        state.apply(&release(session, "pool", token));
    }
    assert!(state.lock("pool").is_none(), "an idle semaphore is removed");
}

#[test]
fn a_semaphore_refuses_another_limit_lock_asks_and_changes_in_place() {
    let mut state = LockState::default();
    let (holder, other) = (open(&mut state), open(&mut state));
    let token = state.next_token();
    state.apply(&permits(holder, "pool", 1, 3, false));
    assert_refused(
        &mut state,
        &permits(other, "pool", 1, 5, true),
        LockError::SemaphoreLimit {
            semaphore: "pool".to_string(),
            limit: 3,
            asked: 5,
        },
    );
    let refusal = state.apply(&acquire(other, "pool", true));
    assert!(
        matches!(&refusal.result, Err(LockError::WrongMode { what, .. }) if what.contains("is a semaphore of 3 permits, not a lock")),
        "{refusal:?}"
    );
    let refusal = state.apply(&permits(holder, "pool", 2, 3, false));
    assert!(
        matches!(&refusal.result, Err(LockError::WrongMode { what, .. }) if what.contains("holds 1 permits and asked for 2 permits")),
        "{refusal:?}"
    );
    assert_eq!(
        state.apply(&permits(holder, "pool", 1, 3, false)),
        quiet(Outcome::Acquired { token }),
        "a retry gets the same token"
    );
    let lock_token = take(&mut state, other, "plain");
    let refusal = state.apply(&permits(holder, "plain", 1, 3, true));
    assert!(
        matches!(&refusal.result, Err(LockError::WrongMode { what, .. }) if what.contains("not a semaphore")),
        "{refusal:?}"
    );
    // A semaphore token fences reads, never writes.
    assert_eq!(state.check_read_fence(&fence("pool", token)), Ok(()));
    assert!(matches!(
        state.apply(&put(holder, "k", b"v", "pool", token)).result,
        Err(LockError::WrongMode { .. })
    ));
    assert!(state.token_is_current("plain", lock_token, LockMode::Exclusive));
    // After it is gone, the name may be a semaphore of another limit.
    state.apply(&release(holder, "pool", token));
    assert!(state.apply(&permits(other, "pool", 5, 5, false)).result.is_ok());
}

#[test]
fn permit_counts_outside_their_bounds_are_invalid_arguments() {
    let mut state = LockState::default();
    let session = open(&mut state);
    for (asked, limit) in [
        (0, 3),
        (4, 3),
        (1, 0),
        (1, super::limits::SEMAPHORE_PERMITS_MAX + 1),
    ] {
        let refusal = state.apply(&permits(session, "pool", asked, limit, false));
        assert!(
            matches!(refusal.result, Err(LockError::InvalidArgument(_))),
            "{asked} of {limit}: {refusal:?}"
        );
    }
    assert!(state.lock("pool").is_none());
}

// Forced release.

fn force(lock: &str, token: FencingToken) -> Command {
    Command::ForceRelease {
        lock: lock.to_string(),
        token,
        by: "ops".to_string(),
    }
}

#[test]
fn a_forced_release_frees_the_named_grant_and_grants_the_next_waiter_in_the_same_command() {
    let mut state = LockState::default();
    let (holder, waiter) = (open(&mut state), open(&mut state));
    let token = take(&mut state, holder, "a");
    assert_eq!(
        state.apply(&acquire(waiter, "a", true)),
        quiet(Outcome::Queued { position: 0 })
    );
    let mut changes = Vec::new();
    let applied = state.apply_recording(&force("a", token), Some(&mut changes));
    let next = grant("a", waiter, token.next());
    assert_eq!(
        applied,
        Applied {
            result: Ok(Outcome::ForceReleased {
                session: holder,
                next: Some(next.clone()),
            }),
            events: vec![Event::Granted(next)],
        }
    );
    assert_eq!(
        changes[0],
        Change::Freed {
            lock: "a".into(),
            session: holder,
            token,
            cause: Cause::Forced { by: "ops".into() },
        },
        "the change names who forced it"
    );
    assert_eq!(state.describe("a"), held_by(waiter, token.next(), 0));
    // The former holder's session lives on, without the lock: its release
    // and its writes under the old token are refused.
    assert!(state
        .session(holder)
        .is_some_and(|session| session.held.is_empty()));
    assert_refused(
        &mut state,
        &release(holder, "a", token),
        LockError::NotHolder {
            lock: "a".into(),
            session: holder,
        },
    );
    assert_refused(
        &mut state,
        &put(holder, "k", b"late", "a", token),
        stale("a", token, Some(token.next())),
    );
    assert_eq!(state.totals().releases, 1, "a forced release counts as a release");
}

#[test]
fn a_forced_release_of_a_token_not_held_is_stale_and_a_repeat_never_frees_a_later_grant() {
    let mut state = LockState::default();
    let (first, second) = (open(&mut state), open(&mut state));
    let token = take(&mut state, first, "a");
    assert_eq!(state.apply(&force("a", token)).result.map(|_| ()), Ok(()));
    let later = take(&mut state, second, "a");
    // The same request again (its answer was lost): the later grant stays.
    assert_refused(&mut state, &force("a", token), stale("a", token, Some(later)));
    assert_refused(&mut state, &force("free", token), stale("free", token, None));
    assert_eq!(state.describe("a"), held_by(second, later, 0));
}

#[test]
fn a_forced_release_frees_one_shared_holder_and_leaves_the_others() {
    let mut state = LockState::default();
    let (one, two) = (open(&mut state), open(&mut state));
    let reader = |session| Command::acquire(session, "r".into(), false, LockMode::Shared, owner());
    let first = state.next_token();
    state.apply(&reader(one));
    state.apply(&reader(two));
    let applied = state.apply(&force("r", first));
    assert_eq!(
        applied.result,
        Ok(Outcome::ForceReleased {
            session: one,
            next: None
        })
    );
    assert!(state.token_is_current("r", first.next(), LockMode::Shared));
    assert!(!state.token_is_current("r", first, LockMode::Shared));
    assert_eq!(state.check_invariants(), Ok(()));
}

/// Acquires a free lock with hold terms and returns its token, failing
/// the test otherwise.
fn take_with(
    state: &mut LockState,
    session: SessionId,
    lock: &str,
    lock_delay_ms: u32,
    max_hold_ms: u32,
) -> FencingToken {
    let token = state.next_token();
    assert_eq!(
        state.apply(&acquire_with(session, lock, false, lock_delay_ms, max_hold_ms)),
        acquired_fresh(lock, session, token),
        "session {session} should get the free lock {lock:?}"
    );
    token
}

/// An exclusive acquire of `lock` with hold terms.
fn acquire_with(session: SessionId, lock: &str, wait: bool, lock_delay_ms: u32, max_hold_ms: u32) -> Command {
    Command::AcquireWithTerms {
        session,
        lock: lock.to_string(),
        wait,
        mode: LockMode::Exclusive,
        semaphore: None,
        terms: HoldTerms {
            lock_delay_ms,
            max_hold_ms,
        },
        by: owner(),
    }
}

#[test]
fn an_expired_holder_with_a_lock_delay_leaves_the_lock_to_nobody_until_the_delay_ends() {
    let mut state = LockState::default();
    let holder = open(&mut state);
    let waiter = open(&mut state);
    let late = open(&mut state);
    let token = take_with(&mut state, holder, "job", 5_000, 0);
    assert!(matches!(
        state.apply(&acquire(waiter, "job", true)).result,
        Ok(Outcome::Queued { position: 0 })
    ));
    let mut changes = Vec::new();
    let applied = state.apply_recording(&Command::ExpireSession { session: holder }, Some(&mut changes));
    assert_eq!(
        applied,
        Applied {
            result: Ok(Outcome::SessionEnded {
                released: vec!["job".to_string()]
            }),
            events: vec![Event::SessionEnded { session: holder }],
        },
        "the waiter is not granted the lock its holder lost"
    );
    assert_eq!(
        changes,
        vec![
            Change::Freed {
                lock: "job".to_string(),
                session: holder,
                token,
                cause: Cause::SessionExpired,
            },
            Change::DelayBegun {
                lock: "job".to_string(),
                ms: 5_000,
            },
        ]
    );
    let delay = LockDelay { id: 1, ms: 5_000 };
    assert_eq!(state.describe("job").delay, Some(delay));
    assert!(!state.describe("job").held());
    assert_eq!(
        state.timed(),
        vec![Timed::Delay {
            lock: "job".to_string(),
            delay: 1,
            ms: 5_000
        }]
    );
    // A try-acquire is refused with the delay; a waiting one queues.
    assert_refused(
        &mut state,
        &acquire(late, "job", false),
        LockError::LockDelayed {
            lock: "job".to_string(),
            delay_ms: 5_000,
        },
    );
    assert!(matches!(
        state.apply(&acquire(late, "job", true)).result,
        Ok(Outcome::Queued { position: 1 })
    ));
    // A stale end changes nothing; the delay's own end grants the first waiter.
    assert_eq!(
        state.apply(&Command::EndLockDelay {
            lock: "job".to_string(),
            delay: 7
        }),
        quiet(Outcome::LockDelayEnded {
            ended: false,
            next: None
        })
    );
    let next = token.next();
    assert_eq!(
        state.apply(&Command::EndLockDelay {
            lock: "job".to_string(),
            delay: 1
        }),
        Applied {
            result: Ok(Outcome::LockDelayEnded {
                ended: true,
                next: Some(grant("job", waiter, next)),
            }),
            events: vec![Event::Granted(grant("job", waiter, next))],
        }
    );
    assert_eq!(state.describe("job").delay, None);
    assert!(state.timed().is_empty());
    assert_eq!(state.check_invariants(), Ok(()));
}

#[test]
fn a_lock_delay_begins_only_when_a_grant_ends_without_its_holders_say() {
    let mut state = LockState::default();
    let holder = open(&mut state);
    // Released, or its session closed: no delay.
    let token = take_with(&mut state, holder, "a", 5_000, 0);
    state.apply(&release(holder, "a", token)).result.unwrap();
    assert!(state.lock("a").is_none(), "a released lock is gone");
    state
        .apply(&acquire_with(holder, "a", false, 5_000, 0))
        .result
        .unwrap();
    state.apply(&close(holder)).result.unwrap();
    assert!(state.lock("a").is_none(), "a lock its holder closed is gone");
    // Forced free by an administrator: no delay either.
    let holder = open(&mut state);
    let token = take_with(&mut state, holder, "a", 5_000, 0);
    state
        .apply(&Command::ForceRelease {
            lock: "a".to_string(),
            token,
            by: "ops".to_string(),
        })
        .result
        .unwrap();
    assert!(state.lock("a").is_none());
    // An expiry without a delay frees the lock at once.
    take(&mut state, holder, "b");
    state
        .apply(&Command::ExpireSession { session: holder })
        .result
        .unwrap();
    assert!(state.lock("b").is_none());
    assert_eq!(state.delays_begun(), 0);
    assert_eq!(state.check_invariants(), Ok(()));
}

#[test]
fn a_grant_past_its_maximum_hold_ends_through_the_log_and_may_begin_a_lock_delay() {
    let mut state = LockState::default();
    let holder = open(&mut state);
    let waiter = open(&mut state);
    let token = take_with(&mut state, holder, "job", 1_000, 60_000);
    assert_eq!(
        state.timed(),
        vec![Timed::Hold {
            lock: "job".to_string(),
            token,
            max_hold_ms: 60_000
        }]
    );
    state
        .apply(&acquire_with(waiter, "job", true, 0, 30_000))
        .result
        .unwrap();
    let mut changes = Vec::new();
    let end = Command::EndHold {
        lock: "job".to_string(),
        token,
    };
    assert_eq!(
        state.apply_recording(&end, Some(&mut changes)),
        quiet(Outcome::HoldEnded {
            session: Some(holder),
            next: None
        }),
        "the holder may still be at work: a lock-delay, and nobody granted"
    );
    assert_eq!(
        changes[0],
        Change::Freed {
            lock: "job".to_string(),
            session: holder,
            token,
            cause: Cause::MaxHold,
        }
    );
    assert!(
        state.session(holder).unwrap().held.is_empty(),
        "the session lives on without the lock"
    );
    assert_eq!(state.totals().releases, 1);
    // Repeated, it finds the grant gone.
    assert_eq!(
        state.apply(&end),
        quiet(Outcome::HoldEnded {
            session: None,
            next: None
        })
    );
    let next = token.next();
    state
        .apply(&Command::EndLockDelay {
            lock: "job".to_string(),
            delay: 1,
        })
        .result
        .unwrap();
    assert_eq!(state.describe("job").holder, Some((waiter, next)));
    assert_eq!(
        state.describe("job").terms.get(&waiter),
        Some(&HoldTerms {
            lock_delay_ms: 0,
            max_hold_ms: 30_000
        }),
        "the waiter's grant has the terms it queued with"
    );
    assert_eq!(state.check_invariants(), Ok(()));
}

#[test]
fn hold_terms_outside_their_bounds_are_refused() {
    let mut state = LockState::default();
    let session = open(&mut state);
    for (lock_delay_ms, max_hold_ms) in [(60_001, 0), (0, 999), (0, 86_400_001)] {
        assert!(matches!(
            state
                .apply(&acquire_with(session, "a", false, lock_delay_ms, max_hold_ms))
                .result,
            Err(LockError::InvalidArgument(_))
        ));
    }
    assert!(state.lock("a").is_none());
}

#[test]
fn a_snapshot_written_before_hold_terms_restores_with_none() {
    let mut state = LockState::default();
    let holder = open(&mut state);
    let waiter = open(&mut state);
    take(&mut state, holder, "held");
    state.apply(&acquire(waiter, "held", true));
    let mut earlier = b"QLSTATE4".to_vec();
    earlier.extend_from_slice(&state.snapshot_body_before_terms());
    let restored = LockState::restore(&earlier).unwrap();
    assert_eq!(restored, state);
    // And the current layout keeps terms, delays and the timed index.
    let mut state = restored;
    let session = open(&mut state);
    state
        .apply(&acquire_with(session, "timed", false, 2_000, 5_000))
        .result
        .unwrap();
    state.apply(&Command::ExpireSession { session }).result.unwrap();
    let restored = LockState::restore(&state.snapshot()).unwrap();
    assert_eq!(restored, state);
    assert_eq!(restored.timed(), state.timed());
    assert_eq!(restored.timed().len(), 1);
}
