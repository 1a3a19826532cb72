//! The lock state machine: sessions, locks with FIFO queues and fencing
//! tokens, and a fenced key-value store.
//!
//! It is a pure function of the commands applied to it: no clock, no I/O, no
//! randomness, and only ordered maps, so two replicas that applied the same
//! commands serialize to the same bytes.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use bincode::Options;
use serde::{Deserialize, Serialize};

use super::change::{Cause, Change};
use super::command::{
    Applied, Command, Event, Fence, FencingToken, Grant, HoldTerms, LockMode, NodeId, Outcome, SessionId,
};
use super::credential::Credential;
use super::error::LockError;
use super::holders::HolderTokens;
use super::limits::{CHECKPOINT_ENTRIES_MAX, COUNTER_VALUE_MAX, SESSIONS_MAX, WAITERS_PER_LOCK_MAX};
use super::validate;

/// What applying a command produces besides its result: the events, and
/// the changes when the caller records them.
struct Effects<'a> {
    events: Vec<Event>,
    changes: Option<&'a mut Vec<Change>>,
}

impl Effects<'_> {
    /// Records the change `change` builds, if changes are recorded.
    fn record(&mut self, change: impl FnOnce() -> Change) {
        if let Some(changes) = self.changes.as_deref_mut() {
            changes.push(change());
        }
    }
}

/// A session as the replicated state knows it. Its deadline is not here: only
/// the leader tracks deadlines, on its own monotonic clock.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Session {
    /// Who may use it: the digest of its secret and the identity that
    /// opened it, if authenticated.
    pub owner: Credential,
    /// Lease length granted on each keepalive.
    pub ttl_ms: u64,
    /// Lease left at the last checkpoint, if one was recorded.
    pub checkpoint_remaining_ms: Option<u64>,
    /// Locks this session holds.
    pub held: BTreeSet<String>,
    /// Locks whose queue this session waits in.
    pub waiting: BTreeSet<String>,
}

/// One lock: its holders, its queue and its lock-delay. A lock with none
/// of them is removed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lock {
    /// The mode the lock is held in.
    pub mode: LockMode,
    /// The holding sessions and the tokens of their grants: exactly one in
    /// exclusive mode, one or more in shared mode.
    pub holders: HolderTokens,
    /// Waiting sessions and the mode each asked for, first in line at the
    /// front. The first waiter is never one the holders would admit: a
    /// waiter is granted as soon as it is first and compatible.
    pub queue: VecDeque<Waiter>,
    /// For a semaphore: its permits and each holder's. A semaphore is held
    /// in shared mode (its holders hold together; their tokens fence reads).
    /// Boxed: few locks are semaphores, and every lock pays for this field.
    pub semaphore: Option<Box<Permits>>,
    /// The terms of the holders' grants that have any, by session.
    pub terms: BTreeMap<SessionId, HoldTerms>,
    /// The lock-delay in force: nobody is granted the lock until
    /// [`Command::EndLockDelay`] ends it.
    pub delay: Option<LockDelay>,
}

/// A lock-delay in force.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct LockDelay {
    /// Its number, unique in the cluster's history:
    /// [`Command::EndLockDelay`] names it, so a late end never cuts a
    /// later delay short.
    pub id: u64,
    /// How long it lasts, from when the leader first sees it.
    pub ms: u32,
}

/// A deadline the leader keeps on its own clock and ends through the log.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Timed {
    /// The grant of `lock` under `token` ends `max_hold_ms` after it began.
    Hold {
        /// The lock.
        lock: String,
        /// The grant's token.
        token: FencingToken,
        /// Its maximum hold time.
        max_hold_ms: u32,
    },
    /// The lock-delay `delay` of `lock` ends `ms` after it began.
    Delay {
        /// The lock.
        lock: String,
        /// The delay's number.
        delay: u64,
        /// Its length.
        ms: u32,
    },
}

/// A semaphore's permits.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Permits {
    /// How many there are, fixed while the semaphore exists (anyone holds
    /// or awaits it).
    pub limit: u32,
    /// How many each holder has.
    pub held: BTreeMap<SessionId, u32>,
}

impl Permits {
    /// Permits held, all holders together.
    pub fn used(&self) -> u64 {
        self.held.values().map(|permits| u64::from(*permits)).sum()
    }
}

/// A session in a lock's queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Waiter {
    /// The waiting session.
    pub session: SessionId,
    /// The mode it asked for (shared for a semaphore).
    pub mode: LockMode,
    /// The permits it asked for, for a semaphore; 0 for a lock.
    pub permits: u32,
    /// The terms its grant will have.
    pub terms: HoldTerms,
}

/// What an acquire asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ask {
    /// A lock in a mode.
    Lock(LockMode),
    /// Permits of a semaphore that has `limit`.
    Permits { permits: u32, limit: u32 },
}

impl Ask {
    fn mode(self) -> LockMode {
        match self {
            Ask::Lock(mode) => mode,
            Ask::Permits { .. } => LockMode::Shared,
        }
    }

    fn permits(self) -> u32 {
        match self {
            Ask::Lock(_) => 0,
            Ask::Permits { permits, .. } => permits,
        }
    }

    fn describe(self) -> String {
        match self {
            Ask::Lock(mode) => format!("the lock in {mode} mode"),
            Ask::Permits { permits, .. } => format!("{permits} permits"),
        }
    }
}

impl Lock {
    /// The exclusive holder and its token, if the lock is held exclusively.
    pub fn exclusive_holder(&self) -> Option<(SessionId, FencingToken)> {
        match self.mode {
            LockMode::Exclusive => self
                .holders
                .iter()
                .next()
                .map(|(session, token)| (*session, *token)),
            LockMode::Shared => None,
        }
    }

    /// The newest holder's token: the exclusive holder's, or the highest
    /// of the shared holders'.
    pub fn newest_token(&self) -> Option<FencingToken> {
        self.holders.values().max().copied()
    }

    /// Whether a session asking for `mode` (and `permits` of a semaphore)
    /// may be granted now, queue aside: never during a lock-delay.
    fn admits(&self, mode: LockMode, permits: u32) -> bool {
        if self.delay.is_some() {
            return false;
        }
        match &self.semaphore {
            Some(semaphore) => semaphore.used() + u64::from(permits) <= u64::from(semaphore.limit),
            None => self.holders.is_empty() || (self.mode == LockMode::Shared && mode == LockMode::Shared),
        }
    }

    /// Whether the leader keeps a deadline for the lock: a lock-delay, or
    /// a grant with a maximum hold time.
    fn is_timed(&self) -> bool {
        self.delay.is_some() || self.terms.values().any(|terms| terms.max_hold_ms > 0)
    }

    fn queued_at(&self, session: SessionId) -> Option<(usize, Waiter)> {
        self.queue
            .iter()
            .position(|waiter| waiter.session == session)
            .map(|position| (position, self.queue[position]))
    }

    /// What `session` holds, as an ask, if it holds the lock.
    fn held_as(&self, session: SessionId) -> Option<Ask> {
        self.holders.get(&session)?;
        Some(match &self.semaphore {
            Some(semaphore) => Ask::Permits {
                permits: semaphore.held.get(&session).copied().unwrap_or(0),
                limit: semaphore.limit,
            },
            None => Ask::Lock(self.mode),
        })
    }
}

/// A value of the fenced store and the fence that wrote it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KvEntry {
    /// The stored bytes.
    pub value: Vec<u8>,
    /// The lock and token of the write that stored them.
    pub written_by: Fence,
}

/// A read-only view of one lock, for `Describe`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LockView {
    /// The mode it is held in (exclusive when free).
    pub mode: LockMode,
    /// The exclusive holder and its token, if held exclusively.
    pub holder: Option<(SessionId, FencingToken)>,
    /// The shared holders and their tokens, in session order, if held shared.
    pub shared: Vec<(SessionId, FencingToken)>,
    /// How many sessions wait.
    pub queue_len: usize,
    /// The terms of the holders' grants that have any.
    pub terms: BTreeMap<SessionId, HoldTerms>,
    /// The lock-delay in force, if any.
    pub delay: Option<LockDelay>,
}

impl LockView {
    /// Whether anyone holds the lock, in either mode.
    pub fn held(&self) -> bool {
        self.holder.is_some() || !self.shared.is_empty()
    }
}

/// Waiters and the longest queues, for metrics and the status page.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Queues {
    /// Sessions waiting, counted once per lock they wait for.
    pub waiters: usize,
    /// Locks held (a lock in its lock-delay may have no holder).
    pub held: usize,
    /// The longest queues, longest first.
    pub deepest: Vec<QueueView>,
}

/// One lock's queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueView {
    /// The lock's name.
    pub lock: String,
    /// The mode it is held in.
    pub mode: LockMode,
    /// Its holder and the holder's token; in shared mode, the holder of
    /// the oldest grant (the lowest token).
    pub holder: Option<(SessionId, FencingToken)>,
    /// How many sessions hold it.
    pub holders: usize,
    /// How many sessions wait for it.
    pub depth: usize,
}

/// A node's repairs as the replicated state records them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Repaired {
    /// The node's incarnation since its last repair.
    pub incarnation: u64,
    /// How many times it was repaired.
    pub repairs: u64,
}

/// The whole replicated state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LockState {
    next_session: SessionId,
    next_token: FencingToken,
    sessions: BTreeMap<SessionId, Session>,
    locks: BTreeMap<String, Lock>,
    kv: BTreeMap<String, KvEntry>,
    /// Nodes that came back from a repair, by id: the cluster's, not the
    /// locks' state, kept here so that it travels in snapshots.
    repaired: BTreeMap<NodeId, Repaired>,
    /// Nodes under repair whose new incarnation is not recorded yet.
    repairs_pending: BTreeSet<NodeId>,
    /// What applied commands did, counted since the cluster began.
    totals: Totals,
    /// Lock-delays begun since the cluster began: the last one's number.
    delays_begun: u64,
    /// The locks with a grant that has a maximum hold time or with a
    /// lock-delay: what [`LockState::timed`] looks at. Derived from the
    /// locks, so not in snapshots; rebuilt on restore.
    #[serde(skip)]
    timed: BTreeSet<String>,
}

/// Counts of what applied commands did, since the cluster's first command.
/// Refused commands change nothing, so they are not counted here.
/// They are part of the replicated state, so every replica holds the same
/// figures at the same index, and they survive restarts, snapshots and
/// leader changes (the metrics export them as counters).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Totals {
    /// Sessions opened.
    pub sessions_opened: u64,
    /// Sessions closed by their clients.
    pub sessions_closed: u64,
    /// Sessions expired by the leader.
    pub sessions_expired: u64,
    /// Grants: each is a new fencing token, direct or from a queue.
    pub grants: u64,
    /// Locks released by their holders.
    pub releases: u64,
    /// Held locks freed because their holder's session expired.
    pub locks_lost: u64,
    /// Held locks freed because their holder closed its session.
    pub locks_closed: u64,
    /// Acquires that joined a queue.
    pub queue_joins: u64,
    /// Fenced writes and deletes applied.
    pub fenced_writes: u64,
}

/// Opens every snapshot [`LockState::snapshot`] writes. Snapshots without
/// it were written before repairs were recorded, in the layout of
/// [`LockStateWithoutRepairs`]; read as one, these bytes would be a
/// session counter of about 3.6 × 10^18, which no cluster reaches (one new
/// session a nanosecond for a century is 3.2 × 10^18).
const SNAPSHOT_MAGIC: &[u8; 8] = b"QLSTATE5";

/// Opens snapshots written before hold terms, in the layout of
/// [`LockStateBeforeTerms`]: no grant has terms and no lock a delay.
const SNAPSHOT_MAGIC_BEFORE_TERMS: &[u8; 8] = b"QLSTATE4";

/// A lock as snapshots before hold terms stored it.
#[derive(Deserialize)]
#[cfg_attr(test, derive(Serialize))]
struct LockBeforeTerms {
    mode: LockMode,
    holders: HolderTokens,
    queue: VecDeque<WaiterBeforeTerms>,
    semaphore: Option<Permits>,
}

/// A waiter as snapshots before hold terms stored it.
#[derive(Deserialize)]
#[cfg_attr(test, derive(Serialize))]
struct WaiterBeforeTerms {
    session: SessionId,
    mode: LockMode,
    permits: u32,
}

impl From<LockBeforeTerms> for Lock {
    fn from(old: LockBeforeTerms) -> Lock {
        Lock {
            mode: old.mode,
            holders: old.holders,
            queue: old
                .queue
                .into_iter()
                .map(|waiter| Waiter {
                    session: waiter.session,
                    mode: waiter.mode,
                    permits: waiter.permits,
                    terms: HoldTerms::default(),
                })
                .collect(),
            semaphore: old.semaphore.map(Box::new),
            terms: BTreeMap::new(),
            delay: None,
        }
    }
}

/// The layout of [`LockState`] from when totals were kept until hold
/// terms, with locks as each of those snapshots stored them (`L`).
#[derive(Deserialize)]
#[cfg_attr(test, derive(Serialize))]
struct LockStateWithTotals<L> {
    next_session: SessionId,
    next_token: FencingToken,
    sessions: BTreeMap<SessionId, Session>,
    locks: BTreeMap<String, L>,
    kv: BTreeMap<String, KvEntry>,
    repaired: BTreeMap<NodeId, Repaired>,
    repairs_pending: BTreeSet<NodeId>,
    totals: Totals,
}

impl<L: Into<Lock>> From<LockStateWithTotals<L>> for LockState {
    fn from(old: LockStateWithTotals<L>) -> LockState {
        LockState {
            next_session: old.next_session,
            next_token: old.next_token,
            sessions: old.sessions,
            locks: old
                .locks
                .into_iter()
                .map(|(name, lock)| (name, lock.into()))
                .collect(),
            kv: old.kv,
            repaired: old.repaired,
            repairs_pending: old.repairs_pending,
            totals: old.totals,
            ..LockState::default()
        }
    }
}

/// The layout of [`LockState`] before hold terms.
type LockStateBeforeTerms = LockStateWithTotals<LockBeforeTerms>;

/// Opens snapshots written before shared locks, in the layout of
/// [`LockStateBeforeModes`]; every lock in them is exclusive.
const SNAPSHOT_MAGIC_BEFORE_MODES: &[u8; 8] = b"QLSTATE3";

/// A lock as snapshots before shared locks stored it.
#[derive(Deserialize)]
#[cfg_attr(test, derive(Serialize))]
struct LockBeforeModes {
    holder: Option<(SessionId, FencingToken)>,
    queue: VecDeque<SessionId>,
}

impl From<LockBeforeModes> for Lock {
    fn from(old: LockBeforeModes) -> Lock {
        Lock {
            mode: LockMode::Exclusive,
            holders: old.holder.into_iter().collect(),
            queue: old
                .queue
                .into_iter()
                .map(|session| Waiter {
                    session,
                    mode: LockMode::Exclusive,
                    permits: 0,
                    terms: HoldTerms::default(),
                })
                .collect(),
            semaphore: None,
            terms: BTreeMap::new(),
            delay: None,
        }
    }
}

fn locks_before_modes(old: BTreeMap<String, LockBeforeModes>) -> BTreeMap<String, Lock> {
    old.into_iter().map(|(name, lock)| (name, lock.into())).collect()
}

/// The layout of [`LockState`] before shared locks.
type LockStateBeforeModes = LockStateWithTotals<LockBeforeModes>;

/// Opened snapshots written before [`Totals`] were kept, in the layout of
/// [`LockStateWithoutTotals`]; they restore with every total at 0.
const SNAPSHOT_MAGIC_WITHOUT_TOTALS: &[u8; 8] = b"QLSTATE2";

/// The layout of [`LockState`] before [`Totals`] were kept.
#[derive(Deserialize)]
struct LockStateWithoutTotals {
    next_session: SessionId,
    next_token: FencingToken,
    sessions: BTreeMap<SessionId, Session>,
    locks: BTreeMap<String, LockBeforeModes>,
    kv: BTreeMap<String, KvEntry>,
    repaired: BTreeMap<NodeId, Repaired>,
    repairs_pending: BTreeSet<NodeId>,
}

/// The layout of [`LockState`] before repairs were recorded, still read
/// from snapshots written then.
#[derive(Deserialize)]
struct LockStateWithoutRepairs {
    next_session: SessionId,
    next_token: FencingToken,
    sessions: BTreeMap<SessionId, Session>,
    locks: BTreeMap<String, LockBeforeModes>,
    kv: BTreeMap<String, KvEntry>,
}

impl Default for LockState {
    fn default() -> Self {
        // Ids and tokens start at 1 so that 0 can mean "none" on the wire.
        LockState {
            next_session: SessionId::new(1),
            next_token: FencingToken::new(1),
            sessions: BTreeMap::new(),
            locks: BTreeMap::new(),
            kv: BTreeMap::new(),
            repaired: BTreeMap::new(),
            repairs_pending: BTreeSet::new(),
            totals: Totals::default(),
            delays_begun: 0,
            timed: BTreeSet::new(),
        }
    }
}

impl LockState {
    /// Applies one command. Refusals are returned in `result` and leave the
    /// state unchanged.
    pub fn apply(&mut self, command: &Command) -> Applied {
        self.apply_recording(command, None)
    }

    /// Applies one command as [`LockState::apply`] does and appends what it
    /// changed to `changes`, in the order it made the changes (a refusal
    /// changes nothing and appends nothing).
    pub fn apply_recording(&mut self, command: &Command, changes: Option<&mut Vec<Change>>) -> Applied {
        let recorded = changes.as_ref().map_or(0, |changes| changes.len());
        let mut out = Effects {
            events: Vec::new(),
            changes,
        };
        let result = match command {
            Command::OpenSession { ttl_ms, owner } => self.open_session(*ttl_ms, owner),
            Command::CloseSession { session, by } => self
                .check_owner(*session, by)
                .and_then(|()| self.end_session(*session, &Cause::SessionClosed, &mut out)),
            Command::ExpireSession { session } => {
                self.end_session(*session, &Cause::SessionExpired, &mut out)
            }
            Command::CheckpointSessions { remaining } => self.checkpoint(remaining),
            Command::Acquire {
                session,
                lock,
                wait,
                by,
            } => self.check_lock_call(*session, lock, by).and_then(|()| {
                let ask = Ask::Lock(LockMode::Exclusive);
                self.acquire(*session, lock, *wait, ask, HoldTerms::default(), &mut out)
            }),
            Command::AcquireShared {
                session,
                lock,
                wait,
                by,
            } => self.check_lock_call(*session, lock, by).and_then(|()| {
                let ask = Ask::Lock(LockMode::Shared);
                self.acquire(*session, lock, *wait, ask, HoldTerms::default(), &mut out)
            }),
            Command::AcquirePermits {
                session,
                semaphore,
                permits,
                limit,
                wait,
                by,
            } => validate::permits(*permits, *limit)
                .and_then(|()| self.check_lock_call(*session, semaphore, by))
                .and_then(|()| {
                    let ask = Ask::Permits {
                        permits: *permits,
                        limit: *limit,
                    };
                    self.acquire(*session, semaphore, *wait, ask, HoldTerms::default(), &mut out)
                }),
            Command::AcquireWithTerms {
                session,
                lock,
                wait,
                mode,
                semaphore,
                terms,
                by,
            } => validate::terms(terms)
                .and_then(|()| match semaphore {
                    Some((permits, limit)) if *mode == LockMode::Shared => {
                        validate::permits(*permits, *limit).map(|()| Ask::Permits {
                            permits: *permits,
                            limit: *limit,
                        })
                    }
                    Some(_) => Err(LockError::InvalidArgument(
                        "a semaphore is acquired in shared mode".to_string(),
                    )),
                    None => Ok(Ask::Lock(*mode)),
                })
                .and_then(|ask| {
                    self.check_lock_call(*session, lock, by)?;
                    self.acquire(*session, lock, *wait, ask, *terms, &mut out)
                }),
            Command::CancelWait { session, lock, by } => self
                .check_lock_call(*session, lock, by)
                .and_then(|()| self.cancel_wait(*session, lock, &mut out)),
            Command::Release {
                session,
                lock,
                token,
                by,
            } => self
                .check_lock_call(*session, lock, by)
                .and_then(|()| self.release(*session, lock, *token, &mut out)),
            Command::Put {
                key,
                value,
                fence,
                session,
                by,
            } => validate::key(key)
                .and_then(|()| validate::value(value))
                .and_then(|()| self.check_writer(fence, *session, by))
                .map(|()| self.put(key, value, fence, &mut out)),
            Command::Delete {
                key,
                fence,
                session,
                by,
            } => validate::key(key)
                .and_then(|()| self.check_writer(fence, *session, by))
                .map(|()| self.delete(key, fence, &mut out)),
            Command::BeginRepair { node } => {
                self.repairs_pending.insert(*node);
                Ok(Outcome::RepairBegun)
            }
            Command::RecordRepair { node, incarnation } => self.record_repair(*node, *incarnation),
            Command::ForceRelease { lock, token, by } => {
                validate::lock_name(lock).and_then(|()| self.force_release(lock, *token, by, &mut out))
            }
            Command::EndHold { lock, token } => {
                validate::lock_name(lock).map(|()| self.end_hold(lock, *token, &mut out))
            }
            Command::EndLockDelay { lock, delay } => {
                validate::lock_name(lock).map(|()| self.end_lock_delay(lock, *delay, &mut out))
            }
        };
        let applied = Applied {
            result,
            events: out.events,
        };
        if applied.result.is_err() {
            assert!(
                out.changes.is_none_or(|changes| changes.len() == recorded),
                "a refused command recorded changes"
            );
        }
        self.count(command, &applied);
        self.assert_applied(command, &applied);
        applied
    }

    /// Adds what `command` did to the totals.
    fn count(&mut self, command: &Command, applied: &Applied) {
        let totals = &mut self.totals;
        match (command, &applied.result) {
            (Command::OpenSession { .. }, Ok(_)) => totals.sessions_opened += 1,
            (Command::CloseSession { .. }, Ok(Outcome::SessionEnded { released })) => {
                totals.sessions_closed += 1;
                totals.locks_closed += released.len() as u64;
            }
            (Command::ExpireSession { .. }, Ok(Outcome::SessionEnded { released })) => {
                totals.sessions_expired += 1;
                totals.locks_lost += released.len() as u64;
            }
            (Command::Release { .. } | Command::ForceRelease { .. }, Ok(_)) => totals.releases += 1,
            (Command::EndHold { .. }, Ok(Outcome::HoldEnded { session: Some(_), .. })) => {
                totals.releases += 1
            }
            (Command::Put { .. } | Command::Delete { .. }, Ok(_)) => totals.fenced_writes += 1,
            // A refused command changes nothing, its count included: refusals
            // are counted by each replica as it applies (the metrics).
            _ => {}
        }
    }

    /// Postconditions of one applied command, checked on every apply: each
    /// costs O(log n) for what the command touched, so they stay on in
    /// production, as TigerBeetle's do. The full cross-check of every
    /// session and lock is [`LockState::check_invariants`], which tests and
    /// simulations run after every command they apply.
    fn assert_applied(&self, command: &Command, applied: &Applied) {
        let mut last_token: Option<FencingToken> = None;
        for event in &applied.events {
            match event {
                Event::Granted(grant) => {
                    assert!(
                        grant.token < self.next_token && last_token.is_none_or(|last| grant.token > last),
                        "tokens only rise: grant {grant:?} after token {last_token:?}, counter {}",
                        self.next_token
                    );
                    last_token = Some(grant.token);
                }
                Event::SessionEnded { session } => assert!(
                    !self.sessions.contains_key(session),
                    "an ended session {session} is gone"
                ),
            }
        }
        // Every grant of this command that still stands is recorded both ways.
        for event in &applied.events {
            if let Event::Granted(grant) = event {
                if self
                    .locks
                    .get(&grant.lock)
                    .and_then(|lock| lock.holders.get(&grant.session))
                    == Some(&grant.token)
                {
                    assert!(
                        self.sessions
                            .get(&grant.session)
                            .is_some_and(|session| session.held.contains(&grant.lock)),
                        "the holder of {grant:?} lists the lock as held"
                    );
                }
            }
        }
        let (mode, permits) = match command {
            Command::AcquireShared { .. } => (LockMode::Shared, 0),
            Command::AcquirePermits { permits, .. } => (LockMode::Shared, *permits),
            Command::AcquireWithTerms { mode, semaphore, .. } => {
                (*mode, semaphore.map_or(0, |(permits, _)| permits))
            }
            _ => (LockMode::Exclusive, 0),
        };
        match (command, &applied.result) {
            (
                Command::Acquire { session, lock, .. }
                | Command::AcquireShared { session, lock, .. }
                | Command::AcquireWithTerms { session, lock, .. }
                | Command::AcquirePermits {
                    session,
                    semaphore: lock,
                    ..
                },
                Ok(Outcome::Acquired { token }),
            ) => assert!(
                self.locks.get(lock).is_some_and(|found| found.mode == mode
                    && found.holders.get(session) == Some(token)
                    && found
                        .semaphore
                        .as_ref()
                        .map_or(0, |semaphore| semaphore.held[session])
                        == permits)
                    && self.sessions[session].held.contains(lock),
                "session {session} holds lock {lock:?} in {mode} mode ({permits} permits) with token {token} after acquiring it"
            ),
            (
                Command::Acquire { session, lock, .. }
                | Command::AcquireShared { session, lock, .. }
                | Command::AcquireWithTerms { session, lock, .. }
                | Command::AcquirePermits {
                    session,
                    semaphore: lock,
                    ..
                },
                Ok(Outcome::Queued { position }),
            ) => assert!(
                self.locks.get(lock).is_some_and(|found| (!found.holders.is_empty()
                    || found.delay.is_some())
                    && found.queue.get(*position).is_some_and(|waiter| {
                        // A retried wait keeps the terms it queued with.
                        (waiter.session, waiter.mode, waiter.permits) == (*session, mode, permits)
                    }))
                    && self.sessions[session].waiting.contains(lock),
                "session {session} waits in {mode} mode ({permits} permits) at position {position} of held lock {lock:?}"
            ),
            (Command::ForceRelease { lock, token, .. }, Ok(Outcome::ForceReleased { session, .. })) => assert!(
                !self.sessions[session].held.contains(lock)
                    && !self
                        .locks
                        .get(lock)
                        .is_some_and(|found| found.holders.values().any(|held| held == token)),
                "the grant of lock {lock:?} under token {token} is gone after it was forced free"
            ),
            (Command::EndHold { lock, token }, Ok(Outcome::HoldEnded { session: Some(session), .. })) => assert!(
                !self.sessions[session].held.contains(lock)
                    && !self
                        .locks
                        .get(lock)
                        .is_some_and(|found| found.holders.values().any(|held| held == token)),
                "the grant of lock {lock:?} under token {token} is gone after its maximum hold passed"
            ),
            (Command::EndLockDelay { lock, delay }, Ok(_)) => assert!(
                self.locks
                    .get(lock)
                    .is_none_or(|found| found.delay.is_none_or(|current| current.id != *delay)),
                "lock-delay {delay} of lock {lock:?} is over once ended"
            ),
            (Command::Release { session, lock, .. }, Ok(Outcome::Released { .. })) => assert!(
                self.sessions
                    .get(session)
                    .is_some_and(|found| !found.held.contains(lock))
                    && !self
                        .locks
                        .get(lock)
                        .is_some_and(|found| found.holders.contains_key(session)),
                "session {session} no longer holds lock {lock:?} after releasing it"
            ),
            (Command::CancelWait { session, lock, .. }, Ok(_)) => assert!(
                self.sessions
                    .get(session)
                    .is_some_and(|found| !found.waiting.contains(lock)),
                "session {session} no longer waits for lock {lock:?}"
            ),
            _ => {}
        }
    }

    /// Admits a session-scoped command only from the session's owner. A
    /// session that does not exist is reported as such first: its id says
    /// nothing about anyone's secret.
    fn check_owner(&self, session: SessionId, by: &Credential) -> Result<(), LockError> {
        let found = self
            .sessions
            .get(&session)
            .ok_or(LockError::SessionNotFound { session })?;
        if !found.owner.admits(by) {
            return Err(LockError::NotSessionOwner {
                session,
                caller: by.identity.clone(),
            });
        }
        Ok(())
    }

    /// Admits a call by `session` on lock `lock`: a valid name (checked
    /// first, whatever the session) from the session's owner.
    fn check_lock_call(&self, session: SessionId, lock: &str, by: &Credential) -> Result<(), LockError> {
        validate::lock_name(lock)?;
        self.check_owner(session, by)
    }

    /// Admits a fenced write only from the owner of the session that holds
    /// the fence's lock under the fence's token. The token alone is public
    /// (`Describe` shows it): it proves the write is current, not who sent it.
    fn check_writer(&self, fence: &Fence, session: SessionId, by: &Credential) -> Result<(), LockError> {
        self.check_fence(fence)?;
        self.check_owner(session, by)?;
        match self.locks.get(&fence.lock).and_then(Lock::exclusive_holder) {
            Some((holder, _)) if holder == session => Ok(()),
            _ => Err(LockError::NotHolder {
                lock: fence.lock.clone(),
                session,
            }),
        }
    }

    fn open_session(&mut self, ttl_ms: u64, owner: &Credential) -> Result<Outcome, LockError> {
        validate::ttl_ms(ttl_ms)?;
        if let Some(identity) = &owner.identity {
            validate::identity(identity)?;
        }
        if self.sessions.len() >= SESSIONS_MAX {
            return Err(LockError::TooManySessions { max: SESSIONS_MAX });
        }
        let session = self.next_session;
        self.next_session = session.next();
        self.sessions.insert(
            session,
            Session {
                owner: owner.clone(),
                ttl_ms,
                checkpoint_remaining_ms: None,
                held: BTreeSet::new(),
                waiting: BTreeSet::new(),
            },
        );
        Ok(Outcome::SessionOpened { session, ttl_ms })
    }

    fn end_session(
        &mut self,
        session: SessionId,
        cause: &Cause,
        out: &mut Effects<'_>,
    ) -> Result<Outcome, LockError> {
        let ended = self
            .sessions
            .remove(&session)
            .ok_or(LockError::SessionNotFound { session })?;
        // Leave every queue first, so that releasing a held lock below can
        // never hand it back to the session that is ending.
        for name in &ended.waiting {
            self.leave_queue(name, session, cause, out);
        }
        let released: Vec<String> = ended.held.into_iter().collect();
        for name in &released {
            self.let_go(name, session, cause, out);
        }
        out.events.push(Event::SessionEnded { session });
        Ok(Outcome::SessionEnded { released })
    }

    fn checkpoint(&mut self, remaining: &[(SessionId, u64)]) -> Result<Outcome, LockError> {
        if remaining.len() > CHECKPOINT_ENTRIES_MAX {
            return Err(LockError::InvalidArgument(format!(
                "checkpoint has {} entries, more than {CHECKPOINT_ENTRIES_MAX}",
                remaining.len()
            )));
        }
        let mut sessions = 0;
        for (id, remaining_ms) in remaining {
            if let Some(session) = self.sessions.get_mut(id) {
                session.checkpoint_remaining_ms = Some((*remaining_ms).min(session.ttl_ms));
                sessions += 1;
            }
        }
        Ok(Outcome::Checkpointed { sessions })
    }

    fn acquire(
        &mut self,
        session: SessionId,
        name: &str,
        wait: bool,
        ask: Ask,
        terms: HoldTerms,
        out: &mut Effects<'_>,
    ) -> Result<Outcome, LockError> {
        // Checked before the entry exists, so that a refusal leaves no trace.
        if let Some(lock) = self.locks.get(name) {
            match (&lock.semaphore, ask) {
                (Some(semaphore), Ask::Permits { limit, .. }) if semaphore.limit != limit => {
                    return Err(LockError::SemaphoreLimit {
                        semaphore: name.to_string(),
                        limit: semaphore.limit,
                        asked: limit,
                    });
                }
                (Some(semaphore), Ask::Lock(mode)) => {
                    return Err(LockError::WrongMode {
                        lock: name.to_string(),
                        what: format!(
                            "it is a semaphore of {} permits, not a lock; asked for it in {mode} mode",
                            semaphore.limit
                        ),
                    });
                }
                (None, Ask::Permits { .. }) => {
                    return Err(LockError::WrongMode {
                        lock: name.to_string(),
                        what: format!("it is a lock held in {} mode, not a semaphore", lock.mode),
                    });
                }
                _ => {}
            }
        }
        let lock = self.locks.entry(name.to_string()).or_insert_with(|| Lock {
            mode: ask.mode(),
            semaphore: match ask {
                Ask::Permits { limit, .. } => Some(Box::new(Permits {
                    limit,
                    held: BTreeMap::new(),
                })),
                Ask::Lock(_) => None,
            },
            ..Lock::default()
        });
        // A retried acquire by a holder gets the same token back; a waiter's,
        // its place. Neither changes what it holds or asks in place: a reader
        // that became a writer while others read could deadlock with a
        // second one.
        if let Some(held) = lock.held_as(session) {
            let token = lock.holders[&session];
            if held != ask {
                return Err(LockError::WrongMode {
                    lock: name.to_string(),
                    what: format!(
                        "session {session} holds {} and asked for {}; release it first",
                        held.describe(),
                        ask.describe()
                    ),
                });
            }
            return Ok(Outcome::Acquired { token });
        }
        if let Some((position, queued)) = lock.queued_at(session) {
            if (queued.mode, queued.permits) != (ask.mode(), ask.permits()) {
                let queued_ask = match lock.semaphore {
                    Some(_) => format!("{} permits", queued.permits),
                    None => format!("the lock in {} mode", queued.mode),
                };
                return Err(LockError::WrongMode {
                    lock: name.to_string(),
                    what: format!(
                        "session {session} waits for {queued_ask} and asked for {}; cancel the wait first",
                        ask.describe()
                    ),
                });
            }
            return Ok(Outcome::Queued { position });
        }
        // FIFO across modes: a reader that arrives behind a queued writer
        // waits behind it, so writers are never starved by readers; and a
        // small ask never passes a large one waiting for a semaphore.
        if lock.admits(ask.mode(), ask.permits()) && lock.queue.is_empty() {
            let token = self.grant(name, session, ask.mode(), ask.permits(), terms, out);
            return Ok(Outcome::Acquired { token });
        }
        // During a lock-delay a try-acquire is refused with the delay's
        // length (the leader says how much is left); a waiting one queues.
        if let Some(delay) = lock.delay {
            if !wait {
                return Err(LockError::LockDelayed {
                    lock: name.to_string(),
                    delay_ms: delay.ms,
                });
            }
        } else if !wait {
            let holder_token = lock
                .newest_token()
                .expect("a lock that admits nobody and has no delay is held");
            return Ok(Outcome::Busy { holder_token });
        }
        if lock.queue.len() >= WAITERS_PER_LOCK_MAX {
            return Err(LockError::QueueFull {
                lock: name.to_string(),
                max: WAITERS_PER_LOCK_MAX,
            });
        }
        lock.queue.push_back(Waiter {
            session,
            mode: ask.mode(),
            permits: ask.permits(),
            terms,
        });
        let position = lock.queue.len() - 1;
        out.record(|| Change::Queued {
            lock: name.to_string(),
            session,
            mode: ask.mode(),
            permits: ask.permits(),
        });
        self.session_mut(session).waiting.insert(name.to_string());
        self.totals.queue_joins += 1;
        Ok(Outcome::Queued { position })
    }

    fn cancel_wait(
        &mut self,
        session: SessionId,
        name: &str,
        out: &mut Effects<'_>,
    ) -> Result<Outcome, LockError> {
        let state = self
            .sessions
            .get_mut(&session)
            .ok_or(LockError::SessionNotFound { session })?;
        let was_waiting = state.waiting.remove(name);
        if was_waiting {
            self.leave_queue(name, session, &Cause::Cancelled, out);
        }
        Ok(Outcome::WaitCancelled { was_waiting })
    }

    fn release(
        &mut self,
        session: SessionId,
        name: &str,
        token: FencingToken,
        out: &mut Effects<'_>,
    ) -> Result<Outcome, LockError> {
        match self.locks.get(name).and_then(|lock| lock.holders.get(&session)) {
            Some(held_token) if *held_token == token => {}
            Some(held_token) => {
                return Err(LockError::StaleToken {
                    lock: name.to_string(),
                    presented: token,
                    current: Some(*held_token),
                })
            }
            None => {
                return Err(LockError::NotHolder {
                    lock: name.to_string(),
                    session,
                })
            }
        }
        self.session_mut(session).held.remove(name);
        let next = self.let_go(name, session, &Cause::Released, out);
        Ok(Outcome::Released { next })
    }

    /// The session holding `name` under `token`, if any.
    fn holder_of(&self, name: &str, token: FencingToken) -> Option<SessionId> {
        self.locks.get(name).and_then(|lock| {
            lock.holders
                .iter()
                .find(|(_, held)| **held == token)
                .map(|(session, _)| *session)
        })
    }

    /// Ends the grant of `name` under `token` once its maximum hold time
    /// passed; a grant already gone, or one without a maximum hold, is
    /// left alone.
    fn end_hold(&mut self, name: &str, token: FencingToken, out: &mut Effects<'_>) -> Outcome {
        let timed = self.holder_of(name, token).filter(|session| {
            self.locks[name]
                .terms
                .get(session)
                .is_some_and(|terms| terms.max_hold_ms > 0)
        });
        let Some(session) = timed else {
            return Outcome::HoldEnded {
                session: None,
                next: None,
            };
        };
        self.session_mut(session).held.remove(name);
        let next = self.let_go(name, session, &Cause::MaxHold, out);
        Outcome::HoldEnded {
            session: Some(session),
            next,
        }
    }

    /// Ends lock-delay `delay` of `name` if it is still in force, and
    /// grants the waiters it held back.
    fn end_lock_delay(&mut self, name: &str, delay: u64, out: &mut Effects<'_>) -> Outcome {
        let Some(lock) = self.locks.get_mut(name) else {
            return Outcome::LockDelayEnded {
                ended: false,
                next: None,
            };
        };
        if lock.delay.is_none_or(|current| current.id != delay) {
            return Outcome::LockDelayEnded {
                ended: false,
                next: None,
            };
        }
        lock.delay = None;
        out.record(|| Change::DelayEnded {
            lock: name.to_string(),
        });
        let next = self.grant_waiters(name, out);
        Outcome::LockDelayEnded { ended: true, next }
    }

    /// Frees the grant of `name` under `token` for an administrator.
    fn force_release(
        &mut self,
        name: &str,
        token: FencingToken,
        by: &str,
        out: &mut Effects<'_>,
    ) -> Result<Outcome, LockError> {
        let Some(session) = self.holder_of(name, token) else {
            return Err(LockError::StaleToken {
                lock: name.to_string(),
                presented: token,
                current: self.current_token(name),
            });
        };
        self.session_mut(session).held.remove(name);
        let cause = Cause::Forced { by: by.to_string() };
        let next = self.let_go(name, session, &cause, out);
        Ok(Outcome::ForceReleased { session, next })
    }

    /// Stores a value; the caller checked the writer.
    fn put(&mut self, key: &str, value: &[u8], fence: &Fence, out: &mut Effects<'_>) -> Outcome {
        out.record(|| Change::Put {
            key: key.to_string(),
            value: value.to_vec(),
            fence: fence.clone(),
        });
        self.kv.insert(
            key.to_string(),
            KvEntry {
                value: value.to_vec(),
                written_by: fence.clone(),
            },
        );
        Outcome::Written { existed: true }
    }

    /// Deletes a value; the caller checked the writer.
    fn delete(&mut self, key: &str, fence: &Fence, out: &mut Effects<'_>) -> Outcome {
        let existed = self.kv.remove(key).is_some();
        if existed {
            out.record(|| Change::Deleted {
                key: key.to_string(),
                fence: fence.clone(),
            });
        }
        Outcome::Written { existed }
    }

    /// Accepts a fence for a write only if its token is the token of the
    /// lock's exclusive holder. A shared hold's token is refused as such.
    pub fn check_fence(&self, fence: &Fence) -> Result<(), LockError> {
        validate::lock_name(&fence.lock)?;
        if self.token_is_current(&fence.lock, fence.token, LockMode::Exclusive) {
            return Ok(());
        }
        // Not any holder's token: stale. A holder's, but not exclusive:
        // a reader's or a semaphore holder's.
        self.check_read_fence(fence)?;
        let kind = match self
            .locks
            .get(&fence.lock)
            .and_then(|lock| lock.semaphore.as_ref())
        {
            Some(_) => "semaphore holder's",
            None => "shared hold's",
        };
        Err(LockError::WrongMode {
            lock: fence.lock.clone(),
            what: format!(
                "token {} is a {kind}; a fenced write needs the exclusive holder's token",
                fence.token
            ),
        })
    }

    /// Accepts a fence for a read if its token is any current holder's,
    /// shared or exclusive: the reader still holds the lock.
    pub fn check_read_fence(&self, fence: &Fence) -> Result<(), LockError> {
        validate::lock_name(&fence.lock)?;
        if self.token_is_current(&fence.lock, fence.token, LockMode::Shared) {
            return Ok(());
        }
        Err(LockError::StaleToken {
            lock: fence.lock.clone(),
            presented: fence.token,
            current: self.current_token(&fence.lock),
        })
    }

    /// Grants `name` to `session` in `mode` (with `permits` of a
    /// semaphore) with a fresh token; the caller checked that the lock
    /// admits it.
    fn grant(
        &mut self,
        name: &str,
        session: SessionId,
        mode: LockMode,
        permits: u32,
        terms: HoldTerms,
        out: &mut Effects<'_>,
    ) -> FencingToken {
        let token = self.next_token;
        self.next_token = token.next();
        self.totals.grants += 1;
        let lock = self.locks.get_mut(name).expect("granting an existing lock");
        assert!(
            lock.admits(mode, permits),
            "granting lock {name:?} in {mode} mode ({permits} permits), which its holders exclude"
        );
        lock.mode = mode;
        lock.holders.insert(session, token);
        if let Some(semaphore) = &mut lock.semaphore {
            assert!(permits > 0, "a semaphore grant of no permits");
            semaphore.held.insert(session, permits);
        }
        if !terms.is_none() {
            lock.terms.insert(session, terms);
        }
        // A lock enters the index of timed locks only here and when a
        // lock-delay begins; `remove_if_idle` takes it out.
        if terms.max_hold_ms > 0 && !self.timed.contains(name) {
            self.timed.insert(name.to_string());
        }
        self.session_mut(session).held.insert(name.to_string());
        out.record(|| Change::Granted {
            lock: name.to_string(),
            session,
            token,
            mode,
            permits,
        });
        out.events.push(Event::Granted(Grant {
            lock: name.to_string(),
            session,
            token,
        }));
        token
    }

    /// Takes `session` off the holders of `name` and grants what its
    /// leaving admits; the first of those grants.
    fn let_go(
        &mut self,
        name: &str,
        session: SessionId,
        cause: &Cause,
        out: &mut Effects<'_>,
    ) -> Option<Grant> {
        let lock = self.locks.get_mut(name).expect("letting go of an existing lock");
        let Some(token) = lock.holders.remove(&session) else {
            panic!("session {session} let go of lock {name:?}, which it did not hold");
        };
        let terms = lock.terms.remove(&session).unwrap_or_default();
        out.record(|| Change::Freed {
            lock: name.to_string(),
            session,
            token,
            cause: cause.clone(),
        });
        if let Some(semaphore) = &mut lock.semaphore {
            semaphore.held.remove(&session);
        }
        // A grant that ended without its holder's say (its session expired,
        // or it held too long) may have a holder still at work: nobody is
        // granted the lock for the grant's lock-delay. A later delay takes
        // the place of one in force, lasting at least as long.
        if matches!(cause, Cause::SessionExpired | Cause::MaxHold) && terms.lock_delay_ms > 0 {
            self.delays_begun += 1;
            let lock = self.locks.get_mut(name).expect("the lock let go of is kept");
            let ms = lock
                .delay
                .map_or(terms.lock_delay_ms, |current| current.ms.max(terms.lock_delay_ms));
            lock.delay = Some(LockDelay {
                id: self.delays_begun,
                ms,
            });
            out.record(|| Change::DelayBegun {
                lock: name.to_string(),
                ms,
            });
            if !self.timed.contains(name) {
                self.timed.insert(name.to_string());
            }
        }
        self.grant_waiters(name, out)
    }

    /// Takes `session` out of the queue of `name` and grants what its
    /// leaving admits (readers behind a writer that gave up).
    fn leave_queue(&mut self, name: &str, session: SessionId, cause: &Cause, out: &mut Effects<'_>) {
        let lock = self.locks.get_mut(name).expect("waiting implies the lock exists");
        lock.queue.retain(|waiter| waiter.session != session);
        out.record(|| Change::Left {
            lock: name.to_string(),
            session,
            cause: cause.clone(),
        });
        self.grant_waiters(name, out);
    }

    /// Grants the lock to waiters from the front of its queue for as long
    /// as the holders admit them: one writer, or every reader up to the
    /// next writer, or semaphore waiters while their permits are free.
    /// Removes the lock if it is left idle. The first grant.
    fn grant_waiters(&mut self, name: &str, out: &mut Effects<'_>) -> Option<Grant> {
        let mut first = None;
        loop {
            let lock = self
                .locks
                .get_mut(name)
                .expect("granting waiters of an existing lock");
            let Some(waiter) = lock.queue.front().copied() else {
                break;
            };
            if !lock.admits(waiter.mode, waiter.permits) {
                break;
            }
            lock.queue.pop_front();
            self.session_mut(waiter.session).waiting.remove(name);
            let token = self.grant(
                name,
                waiter.session,
                waiter.mode,
                waiter.permits,
                waiter.terms,
                out,
            );
            first.get_or_insert(Grant {
                lock: name.to_string(),
                session: waiter.session,
                token,
            });
        }
        self.remove_if_idle(name);
        first
    }

    fn remove_if_idle(&mut self, name: &str) {
        if let Some(lock) = self.locks.get(name) {
            if lock.holders.is_empty() && lock.queue.is_empty() && lock.delay.is_none() {
                self.locks.remove(name);
            }
        }
        // Whatever ended here may have been the lock's last deadline.
        if self.timed.contains(name) && !self.locks.get(name).is_some_and(Lock::is_timed) {
            self.timed.remove(name);
        }
    }

    /// The deadlines the leader keeps: every grant with a maximum hold
    /// time and every lock-delay in force. Costs a pass over the locks that
    /// have one, not over every lock.
    pub fn timed(&self) -> Vec<Timed> {
        let mut timed = Vec::new();
        for name in &self.timed {
            let lock = &self.locks[name];
            if let Some(delay) = lock.delay {
                timed.push(Timed::Delay {
                    lock: name.clone(),
                    delay: delay.id,
                    ms: delay.ms,
                });
            }
            for (session, terms) in &lock.terms {
                if terms.max_hold_ms > 0 {
                    timed.push(Timed::Hold {
                        lock: name.clone(),
                        token: lock.holders[session],
                        max_hold_ms: terms.max_hold_ms,
                    });
                }
            }
        }
        timed
    }

    fn session_mut(&mut self, session: SessionId) -> &mut Session {
        self.sessions
            .get_mut(&session)
            .expect("session checked to exist before")
    }

    /// The lock's current token: its exclusive holder's, or in shared mode
    /// the newest shared holder's; `None` when it is free.
    pub fn current_token(&self, name: &str) -> Option<FencingToken> {
        self.locks.get(name).and_then(Lock::newest_token)
    }

    /// Whether `token` is current for `name` in `mode`: the exclusive
    /// holder's token for exclusive; any holder's token for shared (an
    /// exclusive holder may read too).
    pub fn token_is_current(&self, name: &str, token: FencingToken, mode: LockMode) -> bool {
        self.locks.get(name).is_some_and(|lock| match mode {
            LockMode::Exclusive => lock.exclusive_holder().map(|(_, held)| held) == Some(token),
            LockMode::Shared => lock.holders.values().any(|held| *held == token),
        })
    }

    /// Holders, mode and queue length of a lock.
    pub fn describe(&self, name: &str) -> LockView {
        match self.locks.get(name) {
            Some(lock) => LockView {
                mode: lock.mode,
                holder: lock.exclusive_holder(),
                shared: match lock.mode {
                    LockMode::Shared => lock.holders.iter().map(|(s, t)| (*s, *t)).collect(),
                    LockMode::Exclusive => Vec::new(),
                },
                queue_len: lock.queue.len(),
                terms: lock.terms.clone(),
                delay: lock.delay,
            },
            None => LockView {
                mode: LockMode::Exclusive,
                holder: None,
                shared: Vec::new(),
                queue_len: 0,
                terms: BTreeMap::new(),
                delay: None,
            },
        }
    }

    /// A lock's record, if it is held or awaited.
    pub fn lock(&self, name: &str) -> Option<&Lock> {
        self.locks.get(name)
    }

    /// A session's replicated record.
    pub fn session(&self, session: SessionId) -> Option<&Session> {
        self.sessions.get(&session)
    }

    /// All sessions, in id order.
    pub fn sessions(&self) -> impl Iterator<Item = (SessionId, &Session)> {
        self.sessions.iter().map(|(id, session)| (*id, session))
    }

    /// A value of the fenced store.
    pub fn get(&self, key: &str) -> Option<&KvEntry> {
        self.kv.get(key)
    }

    /// The token the next grant will carry.
    pub fn next_token(&self) -> FencingToken {
        self.next_token
    }

    /// Number of locks that are held or have waiters.
    pub fn lock_count(&self) -> usize {
        self.locks.len()
    }

    /// The id the next session will get.
    pub fn next_session(&self) -> SessionId {
        self.next_session
    }

    /// Number of live sessions.
    pub fn session_count(&self) -> usize {
        self.sessions.len()
    }

    /// Number of keys in the fenced store.
    pub fn key_count(&self) -> usize {
        self.kv.len()
    }

    /// Gives every session its full TTL back, forgetting the budgets that
    /// checkpoints and takeovers recorded. For a state restored from a
    /// backup into a new cluster: its sessions get one full TTL (plus the
    /// first leader's takeover grace) to reconnect.
    pub fn restore_full_budgets(&mut self) {
        for session in self.sessions.values_mut() {
            session.checkpoint_remaining_ms = None;
        }
    }

    /// Records a repair of `node`, now of `incarnation`.
    fn record_repair(&mut self, node: NodeId, incarnation: u64) -> Result<Outcome, LockError> {
        if incarnation == 0 {
            return Err(LockError::InvalidArgument(
                "a repaired node's incarnation is never 0".to_string(),
            ));
        }
        let entry = self.repaired.entry(node).or_insert(Repaired {
            incarnation,
            repairs: 0,
        });
        // A repeated record of the same repair (a retried proposal) counts once.
        if entry.repairs == 0 || entry.incarnation != incarnation {
            entry.repairs += 1;
        }
        entry.incarnation = incarnation;
        let repairs = entry.repairs;
        self.repairs_pending.remove(&node);
        Ok(Outcome::RepairRecorded { repairs })
    }

    /// Whether `node` is under repair (see [`Command::BeginRepair`]).
    pub fn repair_pending(&self, node: NodeId) -> bool {
        self.repairs_pending.contains(&node)
    }

    /// What applied commands did since the cluster began.
    pub fn totals(&self) -> Totals {
        self.totals
    }

    /// How many lock-delays were begun since the cluster began.
    pub fn delays_begun(&self) -> u64 {
        self.delays_begun
    }

    /// The waiters of every lock together, and the `top` locks with the
    /// longest queues (longest first, then by name) with their holders.
    /// Costs one pass over the sessions and their waits.
    pub fn queues(&self, top: usize) -> Queues {
        let mut depths: BTreeMap<&str, usize> = BTreeMap::new();
        let mut waiters = 0;
        for session in self.sessions.values() {
            waiters += session.waiting.len();
            for name in &session.waiting {
                *depths.entry(name.as_str()).or_default() += 1;
            }
        }
        let mut deepest: Vec<(&str, usize)> = depths.into_iter().collect();
        deepest.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(b.0)));
        deepest.truncate(top);
        Queues {
            waiters,
            held: self.locks.len()
                - self
                    .timed
                    .iter()
                    .filter(|name| self.locks[*name].holders.is_empty())
                    .count(),
            deepest: deepest
                .into_iter()
                .map(|(name, depth)| {
                    let lock = self.locks.get(name);
                    QueueView {
                        lock: name.to_string(),
                        mode: lock.map_or(LockMode::Exclusive, |lock| lock.mode),
                        holder: lock.and_then(|lock| {
                            lock.holders
                                .iter()
                                .min_by_key(|(_, token)| **token)
                                .map(|(session, token)| (*session, *token))
                        }),
                        holders: lock.map_or(0, |lock| lock.holders.len()),
                        depth,
                    }
                })
                .collect(),
        }
    }

    /// Nodes that came back from a repair, with their incarnations.
    pub fn repaired(&self) -> &BTreeMap<NodeId, Repaired> {
        &self.repaired
    }

    /// Forgets every recorded repair: for a state restored from a backup
    /// into a new cluster, whose nodes start with new directories.
    pub fn forget_repairs(&mut self) {
        self.repaired.clear();
        self.repairs_pending.clear();
    }

    /// Serializes the whole state. Equal states give equal bytes.
    pub fn snapshot(&self) -> Vec<u8> {
        let mut bytes = SNAPSHOT_MAGIC.to_vec();
        bincode::serialize_into(&mut bytes, self).expect("the lock state always serializes");
        bytes
    }

    /// The body of a snapshot in the layout before shared locks (after its
    /// `QLSTATE3` magic), for tests of restoring older snapshots. Every
    /// lock must be exclusive: that layout has no other kind.
    #[cfg(test)]
    pub(crate) fn snapshot_body_before_modes(&self) -> Vec<u8> {
        let old = LockStateBeforeModes {
            next_session: self.next_session,
            next_token: self.next_token,
            sessions: self.sessions.clone(),
            locks: self
                .locks
                .iter()
                .map(|(name, lock)| {
                    assert_eq!(
                        lock.mode,
                        LockMode::Exclusive,
                        "the old layout has only exclusive locks"
                    );
                    let old = LockBeforeModes {
                        holder: lock.exclusive_holder(),
                        queue: lock.queue.iter().map(|waiter| waiter.session).collect(),
                    };
                    (name.clone(), old)
                })
                .collect(),
            kv: self.kv.clone(),
            repaired: self.repaired.clone(),
            repairs_pending: self.repairs_pending.clone(),
            totals: self.totals,
        };
        bincode::serialize(&old).expect("the old layout serializes")
    }

    /// The body of a snapshot in the layout before hold terms (after its
    /// `QLSTATE4` magic), for tests of restoring older snapshots. No grant
    /// or waiter may have terms and no lock a delay: that layout has none.
    #[cfg(test)]
    pub(crate) fn snapshot_body_before_terms(&self) -> Vec<u8> {
        assert_eq!(self.delays_begun, 0, "the old layout has no lock-delays");
        let old = LockStateBeforeTerms {
            next_session: self.next_session,
            next_token: self.next_token,
            sessions: self.sessions.clone(),
            locks: self
                .locks
                .iter()
                .map(|(name, lock)| {
                    assert!(lock.terms.is_empty(), "the old layout has no hold terms");
                    let old = LockBeforeTerms {
                        mode: lock.mode,
                        holders: lock.holders.clone(),
                        queue: lock
                            .queue
                            .iter()
                            .map(|waiter| {
                                assert!(waiter.terms.is_none(), "the old layout has no hold terms");
                                WaiterBeforeTerms {
                                    session: waiter.session,
                                    mode: waiter.mode,
                                    permits: waiter.permits,
                                }
                            })
                            .collect(),
                        semaphore: lock.semaphore.as_deref().cloned(),
                    };
                    (name.clone(), old)
                })
                .collect(),
            kv: self.kv.clone(),
            repaired: self.repaired.clone(),
            repairs_pending: self.repairs_pending.clone(),
            totals: self.totals,
        };
        bincode::serialize(&old).expect("the old layout serializes")
    }

    /// Restores a state written by [`LockState::snapshot`], checking its invariants.
    pub fn restore(bytes: &[u8]) -> Result<LockState, String> {
        // The same encoding as `bincode::serialize`, except that bytes left
        // over after the state are refused: a snapshot followed by anything
        // is not one `snapshot` wrote.
        let options = || {
            bincode::DefaultOptions::new()
                .with_fixint_encoding()
                .reject_trailing_bytes()
        };
        let bad = |error: bincode::Error| format!("bad lock snapshot: {error}");
        let mut state: LockState = if let Some(body) = bytes.strip_prefix(SNAPSHOT_MAGIC.as_slice()) {
            options().deserialize(body).map_err(bad)?
        } else if let Some(body) = bytes.strip_prefix(SNAPSHOT_MAGIC_BEFORE_TERMS.as_slice()) {
            options()
                .deserialize::<LockStateBeforeTerms>(body)
                .map_err(bad)?
                .into()
        } else if let Some(body) = bytes.strip_prefix(SNAPSHOT_MAGIC_BEFORE_MODES.as_slice()) {
            options()
                .deserialize::<LockStateBeforeModes>(body)
                .map_err(bad)?
                .into()
        } else if let Some(body) = bytes.strip_prefix(SNAPSHOT_MAGIC_WITHOUT_TOTALS.as_slice()) {
            let old: LockStateWithoutTotals = options().deserialize(body).map_err(bad)?;
            LockState {
                next_session: old.next_session,
                next_token: old.next_token,
                sessions: old.sessions,
                locks: locks_before_modes(old.locks),
                kv: old.kv,
                repaired: old.repaired,
                repairs_pending: old.repairs_pending,
                totals: Totals::default(),
                ..LockState::default()
            }
        } else {
            let old: LockStateWithoutRepairs = options().deserialize(bytes).map_err(bad)?;
            LockState {
                next_session: old.next_session,
                next_token: old.next_token,
                sessions: old.sessions,
                locks: locks_before_modes(old.locks),
                kv: old.kv,
                repaired: BTreeMap::new(),
                repairs_pending: BTreeSet::new(),
                totals: Totals::default(),
                ..LockState::default()
            }
        };
        // Ids and tokens start at 1 (0 means "none" on the wire), and a
        // counter near the top of u64 would overflow on a later grant and
        // hand out tokens that are not larger than the earlier ones.
        for (counter, value) in [
            ("session", state.next_session.get()),
            ("token", state.next_token.get()),
        ] {
            if !(1..=COUNTER_VALUE_MAX).contains(&value) {
                return Err(format!(
                    "bad lock snapshot: next {counter} counter {value} is outside 1..={COUNTER_VALUE_MAX}"
                ));
            }
        }
        state.timed = state
            .locks
            .iter()
            .filter(|(_, lock)| lock.is_timed())
            .map(|(name, _)| name.clone())
            .collect();
        state.check_invariants()?;
        Ok(state)
    }

    /// Checks the cross-references that must always hold: holders and waiters
    /// are live sessions that list the lock back, nobody waits for a lock it
    /// holds, no idle lock is kept, and every token is below the counter.
    pub fn check_invariants(&self) -> Result<(), String> {
        for (name, lock) in &self.locks {
            if lock.holders.is_empty() && lock.delay.is_none() {
                return Err(format!("lock {name:?} has waiters or exists but no holder"));
            }
            if let Some(delay) = lock.delay {
                if delay.id == 0 || delay.id > self.delays_begun || delay.ms == 0 {
                    return Err(format!(
                        "lock {name:?} has lock-delay {} of {} ms; {} were begun",
                        delay.id, delay.ms, self.delays_begun
                    ));
                }
            }
            if lock
                .terms
                .keys()
                .any(|session| !lock.holders.contains_key(session))
                || lock
                    .terms
                    .values()
                    .any(|terms| terms.is_none() || validate::terms(terms).is_err())
            {
                return Err(format!(
                    "lock {name:?} keeps terms of non-holders, or empty or invalid terms"
                ));
            }
            if lock
                .queue
                .iter()
                .any(|waiter| validate::terms(&waiter.terms).is_err())
            {
                return Err(format!("lock {name:?} queues a waiter with invalid terms"));
            }
            if lock.is_timed() != self.timed.contains(name) {
                return Err(format!("lock {name:?} is misfiled in the index of timed locks"));
            }
            if let Some(semaphore) = &lock.semaphore {
                if lock.mode != LockMode::Shared {
                    return Err(format!("semaphore {name:?} is held in {} mode", lock.mode));
                }
                if semaphore.used() > u64::from(semaphore.limit) {
                    return Err(format!(
                        "semaphore {name:?} has {} of its {} permits held",
                        semaphore.used(),
                        semaphore.limit
                    ));
                }
                let holders: Vec<&SessionId> = lock.holders.keys().collect();
                let counted: Vec<&SessionId> = semaphore.held.keys().collect();
                if holders != counted || semaphore.held.values().any(|permits| *permits == 0) {
                    return Err(format!(
                        "semaphore {name:?} counts permits of other sessions than its holders"
                    ));
                }
                if lock
                    .queue
                    .iter()
                    .any(|waiter| waiter.permits == 0 || waiter.permits > semaphore.limit)
                {
                    return Err(format!(
                        "semaphore {name:?} queues a waiter for no or too many permits"
                    ));
                }
            } else if lock.queue.iter().any(|waiter| waiter.permits != 0) {
                return Err(format!("lock {name:?} queues a waiter for permits"));
            }
            if lock.mode == LockMode::Exclusive && lock.holders.len() > 1 {
                return Err(format!(
                    "lock {name:?} is exclusive with {} holders",
                    lock.holders.len()
                ));
            }
            for (holder, token) in &lock.holders {
                if *token >= self.next_token {
                    return Err(format!("lock {name:?} token {token} not below the counter"));
                }
                match self.sessions.get(holder) {
                    Some(session) if session.held.contains(name) => {}
                    _ => return Err(format!("lock {name:?} holder {holder} does not list it")),
                }
            }
            let distinct: BTreeSet<FencingToken> = lock.holders.values().copied().collect();
            if distinct.len() != lock.holders.len() {
                return Err(format!("lock {name:?} has two holders with one token"));
            }
            if let Some(first) = lock.queue.front() {
                if lock.admits(first.mode, first.permits) {
                    return Err(format!(
                        "lock {name:?} keeps session {} waiting in {} mode, which its holders admit",
                        first.session, first.mode
                    ));
                }
            }
            let mut seen = BTreeSet::new();
            for waiter in &lock.queue {
                let waiter = waiter.session;
                if !seen.insert(waiter) {
                    return Err(format!("lock {name:?} queues session {waiter} twice"));
                }
                if lock.holders.contains_key(&waiter) {
                    return Err(format!("lock {name:?} holder {waiter} also waits"));
                }
                match self.sessions.get(&waiter) {
                    Some(session) if session.waiting.contains(name) => {}
                    _ => return Err(format!("lock {name:?} waiter {waiter} does not list it")),
                }
            }
        }
        if let Some(name) = self.timed.iter().find(|name| !self.locks.contains_key(*name)) {
            return Err(format!("the index of timed locks names {name:?}, which is gone"));
        }
        for (id, session) in &self.sessions {
            if *id >= self.next_session {
                return Err(format!("session {id} not below the counter"));
            }
            for name in &session.held {
                if !self.locks.get(name).is_some_and(|l| l.holders.contains_key(id)) {
                    return Err(format!("session {id} lists {name:?} as held but is not holder"));
                }
            }
            for name in &session.waiting {
                if self.locks.get(name).is_none_or(|l| l.queued_at(*id).is_none()) {
                    return Err(format!("session {id} lists {name:?} as waited but is not queued"));
                }
            }
        }
        Ok(())
    }
}
