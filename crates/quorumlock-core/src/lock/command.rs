//! What goes into the replicated log and what comes out of applying it.

use serde::{Deserialize, Serialize};

use super::credential::Credential;
use super::error::LockError;

pub use quorumlock_proto::{FencingToken, NodeId, SessionId};

/// A lock name together with a token that claims to be its current one.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Fence {
    /// The lock that guards the write.
    pub lock: String,
    /// The token the writer was granted.
    pub token: FencingToken,
}

/// How a lock is held or asked for.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum LockMode {
    /// One holder at a time; its token fences writes (and reads).
    #[default]
    Exclusive,
    /// Any number of holders at once and no exclusive one; their tokens
    /// fence reads only.
    Shared,
}

impl LockMode {
    /// The mode's name in messages: `exclusive` or `shared`.
    pub fn as_str(self) -> &'static str {
        match self {
            LockMode::Exclusive => "exclusive",
            LockMode::Shared => "shared",
        }
    }
}

impl std::fmt::Display for LockMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a grant asks of the cluster besides the lock itself. Both are
/// kept with the grant (and with a waiter until it is granted); 0 is none.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct HoldTerms {
    /// When the grant ends because its session expired or its maximum
    /// hold time passed (not by a release), nobody is granted the lock for
    /// this long: its holder may still be at work and unaware. 0 to
    /// [`super::limits::LOCK_DELAY_MS_MAX`].
    pub lock_delay_ms: u32,
    /// The leader ends the grant once it has been held this long, even
    /// while its session renews. 0 (none) or
    /// [`super::limits::MAX_HOLD_MS_MIN`] to [`super::limits::MAX_HOLD_MS_MAX`].
    pub max_hold_ms: u32,
}

impl HoldTerms {
    /// Whether the terms ask for nothing.
    pub fn is_none(&self) -> bool {
        *self == HoldTerms::default()
    }
}

/// A command of the lock state machine. Every replica applies the same
/// commands in the same order; nothing here depends on a clock.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// Opens a session with the given TTL; the state machine picks its id.
    OpenSession {
        /// Lease length the leader grants on every keepalive.
        ttl_ms: u64,
        /// Who may use the session: the digest of the secret the proposing
        /// node drew, and the identity that asked, if authenticated.
        owner: Credential,
    },
    /// Closes a session at its client's request, releasing what it holds.
    CloseSession {
        /// The session to close.
        session: SessionId,
        /// The caller, who must be the session's owner.
        by: Credential,
    },
    /// Expires a session whose lease the leader saw run out.
    ExpireSession {
        /// The session to expire.
        session: SessionId,
    },
    /// Records how much lease each listed session had left on the leader's
    /// clock, so that a later leader does not hand a silent session a fresh TTL.
    CheckpointSessions {
        /// `(session, remaining_ms)` pairs; unknown sessions are skipped.
        remaining: Vec<(SessionId, u64)>,
    },
    /// Acquires a lock, or joins its FIFO queue when `wait` is set.
    Acquire {
        /// The session that wants the lock.
        session: SessionId,
        /// The lock's name.
        lock: String,
        /// Join the queue instead of failing when the lock is held.
        wait: bool,
        /// The caller, who must be the session's owner.
        by: Credential,
    },
    /// Leaves a lock's queue (a waiter gave up). Holding the lock is not affected.
    CancelWait {
        /// The waiting session.
        session: SessionId,
        /// The lock's name.
        lock: String,
        /// The caller, who must be the session's owner.
        by: Credential,
    },
    /// Releases a held lock; the next waiter is granted in the same command.
    Release {
        /// The holder.
        session: SessionId,
        /// The lock's name.
        lock: String,
        /// The token the holder was granted.
        token: FencingToken,
        /// The caller, who must be the session's owner.
        by: Credential,
    },
    /// Writes a key if the fence's token is its lock's current token and
    /// the writer is the session that holds the lock under that token.
    Put {
        /// The key.
        key: String,
        /// The value, at most [`super::limits::VALUE_BYTES_MAX`] bytes.
        value: Vec<u8>,
        /// The lock and token that authorise the write.
        fence: Fence,
        /// The session that holds the fence's lock.
        session: SessionId,
        /// The caller, who must be that session's owner.
        by: Credential,
    },
    /// Deletes a key under the same conditions as [`Command::Put`].
    Delete {
        /// The key.
        key: String,
        /// The lock and token that authorise the delete.
        fence: Fence,
        /// The session that holds the fence's lock.
        session: SessionId,
        /// The caller, who must be that session's owner.
        by: Credential,
    },
    /// Marks `node` as under repair, before a membership change takes it
    /// out of the voters: an engine that drops it from its configuration
    /// to take it back as a new learner (raft) does not retire its id.
    /// [`Command::RecordRepair`] ends the mark.
    BeginRepair {
        /// The node under repair.
        node: NodeId,
    },
    /// Records that `node` came back from a repair under a new incarnation
    /// (README, "Storage faults"). Only the leader proposes it, once `node`
    /// is a learner; every replica then knows the node by this incarnation.
    RecordRepair {
        /// The repaired node.
        node: NodeId,
        /// Its incarnation since the repair; never 0.
        incarnation: u64,
    },
    /// Acquires a lock in shared mode, or joins its FIFO queue when `wait`
    /// is set. [`Command::Acquire`] is the exclusive acquire; a separate
    /// variant keeps the log entries written before shared locks readable.
    AcquireShared {
        /// The session that wants the lock.
        session: SessionId,
        /// The lock's name.
        lock: String,
        /// Join the queue instead of failing when the lock is not free for
        /// a reader.
        wait: bool,
        /// The caller, who must be the session's owner.
        by: Credential,
    },
    /// Acquires `permits` of the semaphore `semaphore`, which has `limit`
    /// permits, or joins its FIFO queue when `wait` is set. A semaphore's
    /// limit is fixed while anyone holds or awaits it.
    AcquirePermits {
        /// The session that wants the permits.
        session: SessionId,
        /// The semaphore's name (lock names and semaphore names are one
        /// namespace).
        semaphore: String,
        /// How many permits: 1 to `limit`.
        permits: u32,
        /// The semaphore's number of permits.
        limit: u32,
        /// Join the queue instead of failing when too few permits are free.
        wait: bool,
        /// The caller, who must be the session's owner.
        by: Credential,
    },
    /// Frees the grant of `lock` made under `token`, whichever session
    /// holds it, at an administrator's request; the waiters it admits are
    /// granted in the same command. Naming the token makes a repeat
    /// harmless: it never frees a later grant.
    ForceRelease {
        /// The lock.
        lock: String,
        /// The token of the grant to free.
        token: FencingToken,
        /// Who asked: the administrator's identity, kept in the log.
        by: String,
    },
    /// An acquire with [`HoldTerms`]: [`Command::Acquire`],
    /// [`Command::AcquireShared`] or [`Command::AcquirePermits`] with a
    /// lock-delay or a maximum hold time. Those variants stay for log
    /// entries written before terms existed and for acquires without terms.
    AcquireWithTerms {
        /// The session that wants the lock.
        session: SessionId,
        /// The lock's (or semaphore's) name.
        lock: String,
        /// Join the queue instead of failing when the lock is not free.
        wait: bool,
        /// The mode asked for (shared for a semaphore).
        mode: LockMode,
        /// `(permits, limit)` for a semaphore; `None` for a lock.
        semaphore: Option<(u32, u32)>,
        /// The grant's lock-delay and maximum hold time.
        terms: HoldTerms,
        /// The caller, who must be the session's owner.
        by: Credential,
    },
    /// Ends the grant of `lock` under `token` because its maximum hold time
    /// passed on the leader's clock. Only the leader proposes it; a grant
    /// already gone makes it a no-op.
    EndHold {
        /// The lock.
        lock: String,
        /// The token of the grant to end.
        token: FencingToken,
    },
    /// Ends the lock-delay numbered `delay` of `lock` once it passed on the
    /// leader's clock, and grants the waiters it held back. Only the leader
    /// proposes it; a delay already over, or replaced by a later one, makes
    /// it a no-op.
    EndLockDelay {
        /// The lock.
        lock: String,
        /// The delay's number (see [`Outcome::HoldEnded`] and `Lock::delay`).
        delay: u64,
    },
}

impl Command {
    /// An acquire of `lock` by `session` in `mode`.
    pub fn acquire(session: SessionId, lock: String, wait: bool, mode: LockMode, by: Credential) -> Command {
        match mode {
            LockMode::Exclusive => Command::Acquire {
                session,
                lock,
                wait,
                by,
            },
            LockMode::Shared => Command::AcquireShared {
                session,
                lock,
                wait,
                by,
            },
        }
    }
}

/// A lock handed to a session, either directly or from its queue.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Grant {
    /// The lock's name.
    pub lock: String,
    /// The new holder.
    pub session: SessionId,
    /// The token of this grant.
    pub token: FencingToken,
}

/// Something observers of the applied stream care about besides the response
/// to the command itself: waiters are woken by these.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Event {
    /// A lock was granted.
    Granted(Grant),
    /// A session ended (closed or expired); its waits are over.
    SessionEnded {
        /// The session that ended.
        session: SessionId,
    },
}

/// The successful result of a command.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    /// A session was opened.
    SessionOpened {
        /// Its id.
        session: SessionId,
        /// Its TTL.
        ttl_ms: u64,
    },
    /// A session was closed or expired; it held these locks.
    SessionEnded {
        /// Locks it held, released by this command.
        released: Vec<String>,
    },
    /// The checkpoint was recorded for this many sessions.
    Checkpointed {
        /// Sessions whose checkpoint was updated.
        sessions: usize,
    },
    /// The session holds the lock with this token (new grant or a retry).
    Acquired {
        /// The current token.
        token: FencingToken,
    },
    /// The lock is held by another session and the caller did not ask to wait.
    Busy {
        /// The holder's token.
        holder_token: FencingToken,
    },
    /// The session waits in the lock's queue at this position (0 is next).
    Queued {
        /// How many sessions are ahead of it.
        position: usize,
    },
    /// A wait was cancelled; `was_waiting` says whether the session was queued.
    WaitCancelled {
        /// Whether the session was in the queue.
        was_waiting: bool,
    },
    /// The lock was released; `next` is the grant made to the first waiter
    /// (the events list every grant: several readers may be granted at once).
    Released {
        /// The first waiter granted the lock, if any.
        next: Option<Grant>,
    },
    /// An administrator freed `session`'s grant; `next` is the first
    /// waiter granted the lock, if any.
    ForceReleased {
        /// The session that held the grant.
        session: SessionId,
        /// The first waiter granted the lock, if any.
        next: Option<Grant>,
    },
    /// A grant's maximum hold time passed: `session` held it (`None` when
    /// the grant was already gone); `next` is the first waiter granted.
    HoldEnded {
        /// The session whose grant ended.
        session: Option<SessionId>,
        /// The first waiter granted the lock, if any.
        next: Option<Grant>,
    },
    /// A lock-delay passed: `ended` says whether it was still the lock's
    /// delay; `next` is the first waiter granted.
    LockDelayEnded {
        /// Whether the delay named was the lock's current one.
        ended: bool,
        /// The first waiter granted the lock, if any.
        next: Option<Grant>,
    },
    /// A fenced write or delete was applied.
    Written {
        /// For a delete, whether the key existed; always true for a put.
        existed: bool,
    },
    /// A node is marked as under repair.
    RepairBegun,
    /// A repair was recorded; the node has been repaired this many times.
    RepairRecorded {
        /// Repairs of the node so far, this one included.
        repairs: u64,
    },
}

/// What applying one command produced: the answer for its proposer and the
/// events for everyone watching.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Applied {
    /// The proposer's answer.
    pub result: Result<Outcome, LockError>,
    /// Grants and session ends, in the order they happened.
    pub events: Vec<Event>,
}
