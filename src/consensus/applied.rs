//! The lock state machine as an engine applies it: one writer (the engine's
//! apply loop), many readers, and a broadcast of what each command did.

use parking_lot::RwLock;
use tokio::sync::broadcast;

use super::CommandResult;
use crate::lock::{Command, Event, LockState};

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

/// The applied lock state of one replica.
#[derive(Debug)]
pub struct AppliedState {
    state: RwLock<LockState>,
    notices: broadcast::Sender<StateNotice>,
}

impl Default for AppliedState {
    fn default() -> Self {
        Self::new(LockState::default())
    }
}

impl AppliedState {
    /// Wraps a state, e.g. one restored from a snapshot at start-up.
    pub fn new(state: LockState) -> Self {
        let (notices, _) = broadcast::channel(NOTICE_CHANNEL_CAPACITY);
        AppliedState {
            state: RwLock::new(state),
            notices,
        }
    }

    /// Applies one committed command and publishes its events. Only the
    /// engine's apply path calls this, in log order.
    pub fn apply(&self, command: &Command) -> CommandResult {
        let applied = self.state.write().apply(command);
        for event in applied.events {
            // Nobody listening is fine: notices only wake waiters.
            let _ = self.notices.send(StateNotice::Event(event));
        }
        applied.result
    }

    /// Replaces the state wholesale (snapshot install).
    pub fn restore(&self, state: LockState) {
        *self.state.write() = state;
        let _ = self.notices.send(StateNotice::Restored);
    }

    /// Serializes the current state.
    pub fn snapshot(&self) -> Vec<u8> {
        self.state.read().snapshot()
    }

    /// Runs `read` against the current state.
    pub fn read<R>(&self, read: impl FnOnce(&LockState) -> R) -> R {
        read(&self.state.read())
    }

    /// Subscribes to notices of everything applied from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<StateNotice> {
        self.notices.subscribe()
    }
}
