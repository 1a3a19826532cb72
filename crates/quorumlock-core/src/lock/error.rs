//! Typed refusals of the lock state machine.
//!
//! These are operating errors: the command was applied (it is in the log and
//! every replica refused it the same way) but had no effect. The RPC layer
//! maps each variant to one precise gRPC status.

use serde::{Deserialize, Serialize};

use super::command::{FencingToken, SessionId};

/// Why the state machine refused a command or a query.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum LockError {
    /// A name, key, value or TTL is outside the documented limits.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// The session does not exist: never opened, closed, or expired.
    #[error("session {session} not found (closed, expired or never opened)")]
    SessionNotFound {
        /// The session the command named.
        session: SessionId,
    },
    /// The caller is not the session's owner: the secret it presented (or
    /// its identity) is not the one the session was opened with.
    #[error(
        "{} is not the owner of session {session}: the session secret or identity presented is not the one it was opened with",
        fmt_caller(.caller)
    )]
    NotSessionOwner {
        /// The session the command named.
        session: SessionId,
        /// The caller's authenticated identity, if it had one.
        caller: Option<String>,
    },
    /// A release or fenced write named a lock the session does not hold.
    #[error("session {session} does not hold lock {lock:?}")]
    NotHolder {
        /// The lock the command named.
        lock: String,
        /// The session that tried to release it.
        session: SessionId,
    },
    /// A release or fenced write carried a token that is not the lock's current one.
    #[error("stale fencing token for lock {lock:?}: presented {presented}, current {}", fmt_token(.current))]
    StaleToken {
        /// The lock the fence named.
        lock: String,
        /// The token the client presented.
        presented: FencingToken,
        /// The lock's current token, or `None` when nobody holds it.
        current: Option<FencingToken>,
    },
    /// The lock's wait queue is at its bound.
    #[error("wait queue of lock {lock:?} is full ({max} waiters)")]
    QueueFull {
        /// The lock whose queue is full.
        lock: String,
        /// The bound that was hit.
        max: usize,
    },
    /// The call needs the lock in one mode and it is held or asked for in
    /// the other: a fenced write under a shared hold's token, or an acquire
    /// in one mode by a session that holds or awaits the lock in the other
    /// (a hold is never upgraded or downgraded in place: release first).
    #[error("lock {lock:?}: {what}")]
    WrongMode {
        /// The lock the command named.
        lock: String,
        /// What was refused and why, in words.
        what: String,
    },
    /// An acquire named a semaphore's limit other than the one it has.
    #[error("semaphore {semaphore:?} has {limit} permits; the acquire named {asked}")]
    SemaphoreLimit {
        /// The semaphore.
        semaphore: String,
        /// Its number of permits.
        limit: u32,
        /// The number the acquire named.
        asked: u32,
    },
    /// A try-acquire named a lock in its lock-delay: its last holder's
    /// session expired (or its maximum hold passed) and nobody is granted
    /// it until the delay passes on the leader's clock.
    #[error("lock {lock:?} is in its {delay_ms} ms lock-delay: its holder's grant ended without a release and it may still be at work; nobody is granted the lock until the delay passes")]
    LockDelayed {
        /// The lock.
        lock: String,
        /// The delay's length.
        delay_ms: u32,
    },
    /// The cluster holds as many sessions as it allows.
    #[error("too many open sessions ({max})")]
    TooManySessions {
        /// The bound that was hit.
        max: usize,
    },
}

fn fmt_caller(caller: &Option<String>) -> String {
    match caller {
        Some(identity) => format!("caller {identity:?}"),
        None => "the caller".to_string(),
    }
}

fn fmt_token(token: &Option<FencingToken>) -> String {
    match token {
        Some(token) => token.to_string(),
        None => "none (lock is free)".to_string(),
    }
}
