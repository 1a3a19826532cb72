//! The lock state machine as an engine applies it: one writer (the engine's
//! apply loop), many readers, a broadcast of what each command did, and a
//! registry that wakes only the waiter a grant is for.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};

use parking_lot::{Mutex, RwLock};
use tokio::sync::{broadcast, Notify};

use super::history::{Compacted, History, HistoryLimits, Since};
use super::CommandResult;
use crate::lock::{Applied, Command, Event, LockState, SessionId};

/// Capacity of the notice channel; a receiver that falls further behind sees
/// `Lagged` and must re-read the state instead of relying on notices.
pub const NOTICE_CHANNEL_CAPACITY: usize = 4_096;

/// What observers of the applied stream are told.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StateNotice {
    /// An applied command produced this event.
    Event(Event),
    /// The whole state was replaced from a snapshot; re-read it.
    Restored,
}

/// Told of every command as it is applied, in log order, after the state
/// changed: for figures that need the time of an apply (how long a lock
/// was waited for or held), which the clock-free state cannot keep.
pub trait ApplyObserver: Send + Sync + std::fmt::Debug + 'static {
    /// `command` was applied with this result and these events.
    fn applied(&self, command: &Command, applied: &Applied);
    /// The whole state was replaced from a snapshot.
    fn restored(&self);
}

/// The applied lock state of one replica.
#[derive(Debug)]
pub struct AppliedState {
    state: RwLock<Indexed>,
    notices: broadcast::Sender<StateNotice>,
    /// Only session ends and restores: keepalive streams listen here, so a
    /// busy cluster's grants do not wake every stream.
    session_ends: broadcast::Sender<StateNotice>,
    waiters: Mutex<HashMap<SessionId, HashMap<String, Waiter>>>,
    observer: OnceLock<Arc<dyn ApplyObserver>>,
    /// What recent entries changed, for watchers; recorded in log order
    /// by the one apply path.
    history: Mutex<History>,
    /// Woken after every entry that changed something, and on a restore.
    history_changed: Notify,
}

/// The state and the index (log index or slot) of the last entry whose
/// commands it holds, changed together under one lock so that a reader sees
/// every command of an entry or none of them.
#[derive(Debug)]
struct Indexed {
    state: LockState,
    index: u64,
}

/// The wake-up shared by every wait of one session on one lock.
#[derive(Debug)]
struct Waiter {
    notify: Arc<Notify>,
    watches: usize,
}

/// A registered interest in one session's grant of one lock (or the end of
/// the session). Waking is a hint: after each wake the waiter re-reads the
/// state. Dropping it unregisters.
///
/// With a broadcast, every queued request would wake on every applied
/// event, so a lock with N waiters cost O(N) wake-ups per handoff; here a
/// grant wakes its one waiter.
#[derive(Debug)]
pub struct GrantWatch {
    state: Arc<AppliedState>,
    session: SessionId,
    lock: String,
    notify: Arc<Notify>,
}

impl GrantWatch {
    /// Resolves on the next wake after it was created; create it (and
    /// `enable` it) before reading the state, so no wake is missed.
    pub fn notified(&self) -> tokio::sync::futures::Notified<'_> {
        self.notify.notified()
    }
}

impl Drop for GrantWatch {
    fn drop(&mut self) {
        let mut waiters = self.state.waiters.lock();
        if let Some(locks) = waiters.get_mut(&self.session) {
            if let Some(waiter) = locks.get_mut(&self.lock) {
                waiter.watches -= 1;
                if waiter.watches == 0 {
                    locks.remove(&self.lock);
                }
            }
            if locks.is_empty() {
                waiters.remove(&self.session);
            }
        }
    }
}

impl Default for AppliedState {
    fn default() -> Self {
        Self::new(LockState::default())
    }
}

impl AppliedState {
    /// Wraps a state with nothing applied yet.
    pub fn new(state: LockState) -> Self {
        Self::at(state, 0)
    }

    /// Wraps a state that holds every entry up to `index`, e.g. one
    /// restored from a snapshot at start-up.
    pub fn at(state: LockState, index: u64) -> Self {
        let (notices, _) = broadcast::channel(NOTICE_CHANNEL_CAPACITY);
        let (session_ends, _) = broadcast::channel(NOTICE_CHANNEL_CAPACITY);
        AppliedState {
            state: RwLock::new(Indexed { state, index }),
            notices,
            session_ends,
            waiters: Mutex::new(HashMap::new()),
            observer: OnceLock::new(),
            history: Mutex::new(History::new(HistoryLimits::default(), index)),
            history_changed: Notify::new(),
        }
    }

    /// Tells `observer` of every command applied from now on. There is one
    /// observer; a second is refused and returned.
    pub fn observe(&self, observer: Arc<dyn ApplyObserver>) -> Result<(), Arc<dyn ApplyObserver>> {
        self.observer.set(observer)
    }

    /// Applies the commands of the committed entry `index` (a log index
    /// or slot), all under one write lock, and publishes their events. Only
    /// the engine's apply path calls this, in log order; an entry may be
    /// applied in parts that share its index.
    pub fn apply_entry<'a>(
        &self,
        index: u64,
        commands: impl IntoIterator<Item = &'a Command>,
    ) -> Vec<CommandResult> {
        let observer = self.observer.get();
        let mut observed = Vec::new();
        let mut changes = Vec::new();
        let applied: Vec<_> = {
            let mut indexed = self.state.write();
            assert!(
                index >= indexed.index,
                "entry {index} applied after entry {}",
                indexed.index
            );
            indexed.index = index;
            commands
                .into_iter()
                .map(|command| {
                    let applied = indexed.state.apply_recording(command, Some(&mut changes));
                    if observer.is_some() {
                        observed.push(command);
                    }
                    applied
                })
                .collect()
        };
        let changed = !changes.is_empty();
        self.history.lock().record(index, changes);
        if changed {
            self.history_changed.notify_waiters();
        }
        // Told after the lock is released, so readers never wait on it; the
        // one apply path calls this in log order, so the observer sees the
        // commands in that order too.
        if let Some(observer) = observer {
            for (command, applied) in observed.into_iter().zip(&applied) {
                observer.applied(command, applied);
            }
        }
        applied
            .into_iter()
            .map(|applied| {
                if !applied.events.is_empty() {
                    self.wake_waiters(&applied.events);
                }
                for event in applied.events {
                    if matches!(event, Event::SessionEnded { .. }) {
                        let _ = self.session_ends.send(StateNotice::Event(event.clone()));
                    }
                    // Nobody listening is fine: notices only wake waiters.
                    let _ = self.notices.send(StateNotice::Event(event));
                }
                applied.result
            })
            .collect()
    }

    /// Records that entry `index` carried no command (a blank or membership
    /// entry, a no-op slot).
    pub fn advance(&self, index: u64) {
        self.apply_entry(index, []);
    }

    /// Replaces the state wholesale with one that holds every entry up to
    /// `index` (snapshot install).
    pub fn restore(&self, state: LockState, index: u64) {
        *self.state.write() = Indexed { state, index };
        self.history.lock().reset(index);
        self.history_changed.notify_waiters();
        if let Some(observer) = self.observer.get() {
            observer.restored();
        }
        for locks in self.waiters.lock().values() {
            for waiter in locks.values() {
                waiter.notify.notify_waiters();
            }
        }
        let _ = self.session_ends.send(StateNotice::Restored);
        let _ = self.notices.send(StateNotice::Restored);
    }

    /// Keeps at most what `limits` allow of the recent changes.
    pub fn limit_history(&self, limits: HistoryLimits) {
        self.history.lock().set_limits(limits);
    }

    /// The recent changes from revision `from` on, at most `most`
    /// revisions of them; refused if `from` is older than what is kept.
    pub fn changes_since(&self, from: u64, most: usize) -> Result<Since, Compacted> {
        self.history.lock().since(from, most)
    }

    /// The oldest revision [`AppliedState::changes_since`] answers from,
    /// and the last revision applied.
    pub fn history_span(&self) -> (u64, u64) {
        let history = self.history.lock();
        (history.oldest(), history.last())
    }

    /// Resolves after the next entry that changes something is recorded
    /// (or the state is restored); create and `enable` it before reading
    /// the history, so no change is missed.
    pub fn history_changed(&self) -> tokio::sync::futures::Notified<'_> {
        self.history_changed.notified()
    }

    /// Subscribes to session ends (and restores) applied from now on.
    pub fn subscribe_session_ends(&self) -> broadcast::Receiver<StateNotice> {
        self.session_ends.subscribe()
    }

    /// Registers a wait for `session`'s grant of `lock`: woken when it is
    /// granted, when the session ends, and when the state is restored.
    pub fn watch_grant(self: &Arc<Self>, session: SessionId, lock: &str) -> GrantWatch {
        let mut waiters = self.waiters.lock();
        let waiter = waiters
            .entry(session)
            .or_default()
            .entry(lock.to_string())
            .or_insert_with(|| Waiter {
                notify: Arc::new(Notify::new()),
                watches: 0,
            });
        waiter.watches += 1;
        GrantWatch {
            state: self.clone(),
            session,
            lock: lock.to_string(),
            notify: waiter.notify.clone(),
        }
    }

    fn wake_waiters(&self, events: &[Event]) {
        let waiters = self.waiters.lock();
        if waiters.is_empty() {
            return;
        }
        for event in events {
            match event {
                Event::Granted(grant) => {
                    if let Some(waiter) = waiters
                        .get(&grant.session)
                        .and_then(|locks| locks.get(&grant.lock))
                    {
                        waiter.notify.notify_waiters();
                    }
                }
                Event::SessionEnded { session } => {
                    for waiter in waiters.get(session).into_iter().flat_map(HashMap::values) {
                        waiter.notify.notify_waiters();
                    }
                }
            }
        }
    }

    /// Serializes the current state.
    pub fn snapshot(&self) -> Vec<u8> {
        self.state.read().state.snapshot()
    }

    /// Runs `read` against the current state and the index of the last
    /// entry it holds, read together.
    pub fn read_indexed<R>(&self, read: impl FnOnce(&LockState, u64) -> R) -> R {
        let indexed = self.state.read();
        read(&indexed.state, indexed.index)
    }

    /// Runs `read` against the current state.
    pub fn read<R>(&self, read: impl FnOnce(&LockState) -> R) -> R {
        read(&self.state.read().state)
    }

    /// Subscribes to notices of everything applied from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<StateNotice> {
        self.notices.subscribe()
    }
}
