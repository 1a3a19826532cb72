//! What a command changed, as watchers see it: every grant, wait, end of a
//! hold or a wait, and fenced write, in the order the state machine made
//! them. Replicas that applied the same commands record the same changes in
//! the same order, so a watcher may resume on any replica.

use super::command::{Fence, FencingToken, LockMode, SessionId};

/// Why a hold or a wait ended.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Cause {
    /// The holder released the lock.
    Released,
    /// The waiter cancelled its wait (it gave up, or its wait passed).
    Cancelled,
    /// The session closed.
    SessionClosed,
    /// The session expired.
    SessionExpired,
    /// An administrator freed the grant.
    Forced {
        /// The administrator's identity.
        by: String,
    },
    /// The grant's maximum hold time passed.
    MaxHold,
}

impl Cause {
    /// The cause's name in messages.
    pub fn as_str(&self) -> &'static str {
        match self {
            Cause::Released => "released",
            Cause::Cancelled => "cancelled",
            Cause::SessionClosed => "session closed",
            Cause::SessionExpired => "session expired",
            Cause::Forced { .. } => "forced",
            Cause::MaxHold => "maximum hold time passed",
        }
    }
}

/// One change a command made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// `session` was granted `lock` in `mode` (with `permits` of a
    /// semaphore, 0 for a lock) under `token`.
    Granted {
        /// The lock.
        lock: String,
        /// The new holder.
        session: SessionId,
        /// The grant's token.
        token: FencingToken,
        /// The mode granted (shared for a semaphore).
        mode: LockMode,
        /// Permits of a semaphore; 0 for a lock.
        permits: u32,
    },
    /// `session` joined the queue of `lock`.
    Queued {
        /// The lock.
        lock: String,
        /// The waiter.
        session: SessionId,
        /// The mode asked for (shared for a semaphore).
        mode: LockMode,
        /// Permits asked for, of a semaphore; 0 for a lock.
        permits: u32,
    },
    /// `session` left the queue of `lock` without being granted it.
    Left {
        /// The lock.
        lock: String,
        /// The waiter that left.
        session: SessionId,
        /// Why: cancelled, or its session closed or expired.
        cause: Cause,
    },
    /// `session` stopped holding `lock`, which it held under `token`.
    Freed {
        /// The lock.
        lock: String,
        /// The former holder.
        session: SessionId,
        /// The token it held.
        token: FencingToken,
        /// Why: released, its session closed or expired, forced, or its
        /// maximum hold time passed.
        cause: Cause,
    },
    /// A lock-delay began on `lock`: nobody is granted it for `ms` (from
    /// when the leader sees it), because a grant ended without a release.
    DelayBegun {
        /// The lock.
        lock: String,
        /// The delay's length.
        ms: u32,
    },
    /// The lock-delay of `lock` passed; waiters may be granted again.
    DelayEnded {
        /// The lock.
        lock: String,
    },
    /// A fenced write stored `value` under `key`.
    Put {
        /// The key.
        key: String,
        /// The value stored.
        value: Vec<u8>,
        /// The fence it was written under.
        fence: Fence,
    },
    /// A fenced delete removed `key`, which existed.
    Deleted {
        /// The key.
        key: String,
        /// The fence it was deleted under.
        fence: Fence,
    },
}

/// Which names a change is about, for a watch's filter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Subject<'a> {
    /// A lock (or semaphore) name.
    Lock(&'a str),
    /// A key of the fenced store.
    Key(&'a str),
}

impl Change {
    /// The lock or key the change is about.
    pub fn subject(&self) -> Subject<'_> {
        match self {
            Change::Granted { lock, .. }
            | Change::Queued { lock, .. }
            | Change::Left { lock, .. }
            | Change::Freed { lock, .. }
            | Change::DelayBegun { lock, .. }
            | Change::DelayEnded { lock } => Subject::Lock(lock),
            Change::Put { key, .. } | Change::Deleted { key, .. } => Subject::Key(key),
        }
    }

    /// About how many bytes the change keeps in memory: what retention
    /// bounds are counted in.
    pub fn footprint(&self) -> usize {
        const FIXED: usize = std::mem::size_of::<Change>();
        FIXED
            + match self {
                Change::Granted { lock, .. }
                | Change::Queued { lock, .. }
                | Change::Left { lock, .. }
                | Change::DelayBegun { lock, .. }
                | Change::DelayEnded { lock } => lock.len(),
                Change::Freed { lock, cause, .. } => {
                    lock.len()
                        + match cause {
                            Cause::Forced { by } => by.len(),
                            _ => 0,
                        }
                }
                Change::Put { key, value, fence } => key.len() + value.len() + fence.lock.len(),
                Change::Deleted { key, fence } => key.len() + fence.lock.len(),
            }
    }
}
