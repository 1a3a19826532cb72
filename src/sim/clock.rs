//! Simulated time as each node's lease keeper reads it.
//!
//! The simulation owns one global time (milliseconds since the run began).
//! Each node sees it through a [`SkewedClock`]: a rate (its oscillator runs
//! fast or slow) and an offset that the run jumps forward and back, as an
//! NTP step would. Leases are decided on this clock, so skew and jumps can
//! only make sessions expire early or late; the checkers verify that safety
//! does not depend on it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use crate::server::clock::Clock;

/// Headroom below a node's starting reading, so that backward jumps never
/// reach before the origin `Instant`.
const BACKWARD_HEADROOM_MS: i64 = 3_600_000;

/// Where the global simulated time comes from.
#[derive(Clone)]
pub enum SimTime {
    /// Milliseconds the step-driven simulation sets.
    Shared(Arc<AtomicU64>),
    /// tokio's (paused) clock, measured from the run's start.
    Tokio(tokio::time::Instant),
}

impl SimTime {
    /// Milliseconds since the run began.
    pub fn now_ms(&self) -> u64 {
        match self {
            SimTime::Shared(ms) => ms.load(Ordering::Relaxed),
            SimTime::Tokio(start) => tokio::time::Instant::now().duration_since(*start).as_millis() as u64,
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Skew {
    /// Reading at global time zero, before headroom.
    offset_ms: i64,
    /// Clock rate in thousandths: 1_000 keeps pace with global time.
    rate_permille: i64,
}

/// One node's clock: global time at a rate, plus an offset that jumps.
pub struct SkewedClock {
    origin: Instant,
    time: SimTime,
    skew: Mutex<Skew>,
}

impl SkewedClock {
    /// A clock that keeps pace with `time` until skewed.
    pub fn new(origin: Instant, time: SimTime) -> Arc<SkewedClock> {
        Arc::new(SkewedClock {
            origin,
            time,
            skew: Mutex::new(Skew {
                offset_ms: 0,
                rate_permille: 1_000,
            }),
        })
    }

    /// Milliseconds this clock reads now (relative to its origin).
    pub fn reading_ms(&self) -> i64 {
        let skew = *self.skew.lock();
        let global = self.time.now_ms() as i64;
        (BACKWARD_HEADROOM_MS + skew.offset_ms + global * skew.rate_permille / 1_000).max(0)
    }

    /// Steps the clock by `delta_ms` (negative steps it back).
    pub fn jump(&self, delta_ms: i64) {
        let mut skew = self.skew.lock();
        skew.offset_ms = (skew.offset_ms + delta_ms).clamp(-BACKWARD_HEADROOM_MS / 2, BACKWARD_HEADROOM_MS);
    }

    /// Changes the rate without moving the current reading.
    pub fn set_rate(&self, rate_permille: i64) {
        let global = self.time.now_ms() as i64;
        let mut skew = self.skew.lock();
        // Keep reading continuous: offset + global·old = offset' + global·new.
        skew.offset_ms += global * (skew.rate_permille - rate_permille) / 1_000;
        skew.rate_permille = rate_permille;
    }

    /// Back to global pace with no offset change (used when healing).
    pub fn heal(&self) {
        self.set_rate(1_000);
    }
}

impl Clock for SkewedClock {
    fn now(&self) -> Instant {
        self.origin + Duration::from_millis(self.reading_ms() as u64)
    }
}
