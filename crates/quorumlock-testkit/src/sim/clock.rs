//! Simulated time as each node's lease keeper reads it.
//!
//! The simulation owns one global time (milliseconds since the run began).
//! Each node sees it through its own [`SkewedClock`] (the one fault
//! injection skews on live nodes): a rate (its oscillator runs fast or slow)
//! and an offset that the run jumps forward and back, as an NTP step would.
//! Leases are decided on this clock, so skew and jumps can only make
//! sessions expire early or late; the checkers verify that safety does not
//! depend on it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use quorumlock_core::time::TimeSource;

/// Where the global simulated time comes from.
#[derive(Clone)]
pub enum SimTime {
    /// Milliseconds the step-driven simulation sets.
    Shared(Arc<AtomicU64>),
    /// tokio's (paused) clock, measured from the run's start.
    Tokio(tokio::time::Instant),
}

impl TimeSource for SimTime {
    fn elapsed(&self) -> Duration {
        match self {
            SimTime::Shared(ms) => Duration::from_millis(ms.load(Ordering::Relaxed)),
            SimTime::Tokio(start) => tokio::time::Instant::now().duration_since(*start),
        }
    }
}
