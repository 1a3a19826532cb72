//! Time as the server edge sees it. The lock state machine never reads a
//! clock; only the leader's lease tracker does, through this trait, so tests
//! and fault injection can substitute their own time.

use std::time::Instant;

/// A monotonic clock.
pub trait Clock: Send + Sync + 'static {
    /// The current instant.
    fn now(&self) -> Instant;
}

/// The operating system's monotonic clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct MonotonicClock;

impl Clock for MonotonicClock {
    fn now(&self) -> Instant {
        Instant::now()
    }
}
