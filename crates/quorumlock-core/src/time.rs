//! Time as the server edge sees it. The lock state machine never reads a
//! clock; only the leader's lease keeper does, through [`Clock`], so tests,
//! simulations and fault injection can substitute their own time.

use std::time::{Duration, Instant};

use parking_lot::Mutex;

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

/// Largest offset a skew may have, either way.
pub const SKEW_OFFSET_MS_MAX: i64 = 3_600_000;
/// Largest rate a skew may have; the smallest is its inverse.
pub const SKEW_RATE_MAX: f64 = 100.0;

/// An offset and a rate applied on top of a clock's true time.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Skew {
    /// Added to the clock, in milliseconds; negative values move it back.
    pub offset_ms: i64,
    /// How fast the clock runs relative to true time (1.0 = true time).
    pub rate: f64,
}

impl Skew {
    /// No skew at all.
    pub const NONE: Skew = Skew {
        offset_ms: 0,
        rate: 1.0,
    };

    /// Parses `OFFSET_MS RATE` (for example `-3000 1.5`), the format of the
    /// skew files of fault injection; an empty text is no skew.
    pub fn parse(text: &str) -> Result<Skew, String> {
        let fields: Vec<&str> = text.split_whitespace().collect();
        let (offset, rate) = match fields.as_slice() {
            [] => return Ok(Skew::NONE),
            [offset] => (*offset, "1"),
            [offset, rate] => (*offset, *rate),
            _ => return Err(format!("expected `OFFSET_MS RATE`, got {text:?}")),
        };
        let offset_ms: i64 = offset
            .parse()
            .map_err(|_| format!("offset {offset:?} is not a whole number of milliseconds"))?;
        let rate: f64 = rate
            .parse()
            .map_err(|_| format!("rate {rate:?} is not a number"))?;
        let skew = Skew { offset_ms, rate };
        skew.check()?;
        Ok(skew)
    }

    /// The text [`Skew::parse`] reads back as this skew.
    pub fn to_text(&self) -> String {
        format!("{} {}\n", self.offset_ms, self.rate)
    }

    fn check(&self) -> Result<(), String> {
        if self.offset_ms.abs() > SKEW_OFFSET_MS_MAX {
            return Err(format!(
                "offset {} ms exceeds ±{SKEW_OFFSET_MS_MAX} ms",
                self.offset_ms
            ));
        }
        if !(self.rate.is_finite() && (1.0 / SKEW_RATE_MAX..=SKEW_RATE_MAX).contains(&self.rate)) {
            return Err(format!(
                "rate {} is outside {} to {SKEW_RATE_MAX}",
                self.rate,
                1.0 / SKEW_RATE_MAX
            ));
        }
        Ok(())
    }
}

/// Where a [`SkewedClock`]'s true time comes from.
pub trait TimeSource: Send + Sync + 'static {
    /// Time elapsed since the source began; never goes backwards.
    fn elapsed(&self) -> Duration;
}

/// The operating system's monotonic time, from when it was created.
#[derive(Debug, Clone, Copy)]
pub struct RealTime {
    start: Instant,
}

impl Default for RealTime {
    fn default() -> Self {
        RealTime {
            start: Instant::now(),
        }
    }
}

impl TimeSource for RealTime {
    fn elapsed(&self) -> Duration {
        self.start.elapsed()
    }
}

/// A clock that a fault can skew: its source's true time at a rate, plus an
/// offset that jumps — as a node's clock does when its oscillator drifts or
/// an NTP daemon steps it. Fault injection on a live node (a file the
/// server follows) and the simulations (which step it from their seed) skew
/// this same clock. Safety must not depend on it: only lease expiry reads it.
///
/// Readings start [`SKEW_OFFSET_MS_MAX`] after the clock's origin, so that an
/// offset back by as much as that never reaches before an instant that
/// exists.
pub struct SkewedClock<S: TimeSource = RealTime> {
    origin: Instant,
    source: S,
    skew: Mutex<Skew>,
}

impl<S: TimeSource> SkewedClock<S> {
    /// A clock that keeps pace with `source` until skewed.
    pub fn new(source: S) -> SkewedClock<S> {
        SkewedClock {
            origin: Instant::now(),
            source,
            skew: Mutex::new(Skew::NONE),
        }
    }

    /// The skew in force.
    pub fn skew(&self) -> Skew {
        *self.skew.lock()
    }

    /// Replaces the skew, moving the reading at once (a jump when the
    /// offset changes). A skew outside the bounds is refused.
    pub fn set_skew(&self, skew: Skew) -> Result<(), String> {
        skew.check()?;
        *self.skew.lock() = skew;
        Ok(())
    }

    /// Steps the clock by `delta_ms` (negative steps it back), keeping the
    /// offset within ±[`SKEW_OFFSET_MS_MAX`].
    pub fn jump(&self, delta_ms: i64) {
        let mut skew = self.skew.lock();
        skew.offset_ms = (skew.offset_ms + delta_ms).clamp(-SKEW_OFFSET_MS_MAX, SKEW_OFFSET_MS_MAX);
    }

    /// Changes the rate without moving the current reading.
    pub fn set_rate(&self, rate: f64) {
        let rate = rate.clamp(1.0 / SKEW_RATE_MAX, SKEW_RATE_MAX);
        let elapsed_ms = self.source.elapsed().as_secs_f64() * 1_000.0;
        let mut skew = self.skew.lock();
        // Keep the reading continuous: offset + elapsed·old = offset' + elapsed·new.
        let shift = (elapsed_ms * (skew.rate - rate)).round() as i64;
        skew.offset_ms = (skew.offset_ms + shift).clamp(-SKEW_OFFSET_MS_MAX, SKEW_OFFSET_MS_MAX);
        skew.rate = rate;
    }

    /// Back to true pace, without moving the current reading.
    pub fn heal(&self) {
        self.set_rate(1.0);
    }

    /// The reading, as time since the clock's origin.
    pub fn reading(&self) -> Duration {
        let skew = *self.skew.lock();
        let elapsed_ms = self.source.elapsed().as_secs_f64() * 1_000.0;
        let reading_ms = SKEW_OFFSET_MS_MAX as f64 + elapsed_ms * skew.rate + skew.offset_ms as f64;
        Duration::from_secs_f64(reading_ms.max(0.0) / 1_000.0)
    }
}

impl<S: TimeSource> Clock for SkewedClock<S> {
    fn now(&self) -> Instant {
        self.origin + self.reading()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;

    use super::*;

    /// Time that a test sets by hand.
    #[derive(Clone, Default)]
    struct HandTime(Arc<AtomicU64>);

    impl HandTime {
        fn set_ms(&self, ms: u64) {
            self.0.store(ms, Ordering::Relaxed);
        }
    }

    impl TimeSource for HandTime {
        fn elapsed(&self) -> Duration {
            Duration::from_millis(self.0.load(Ordering::Relaxed))
        }
    }

    #[test]
    fn skew_texts_parse_and_bad_ones_say_why() {
        assert_eq!(Skew::parse(""), Ok(Skew::NONE));
        assert_eq!(
            Skew::parse("-3000 1.5\n"),
            Ok(Skew {
                offset_ms: -3000,
                rate: 1.5
            })
        );
        assert_eq!(Skew::parse("250").unwrap().rate, 1.0);
        assert!(Skew::parse("soon").unwrap_err().contains("milliseconds"));
        assert!(Skew::parse("0 fast").unwrap_err().contains("not a number"));
        assert!(Skew::parse("0 0").unwrap_err().contains("outside"));
        assert!(Skew::parse("99999999 1").unwrap_err().contains("exceeds"));
        assert!(Skew::parse("1 2 3").unwrap_err().contains("expected"));
        let skew = Skew {
            offset_ms: -42,
            rate: 0.5,
        };
        assert_eq!(Skew::parse(&skew.to_text()), Ok(skew));
    }

    #[test]
    fn a_rate_scales_true_time_and_an_offset_shifts_it() {
        let time = HandTime::default();
        let clock = SkewedClock::new(time.clone());
        let start = clock.now();
        time.set_ms(10_000);
        assert_eq!(clock.now() - start, Duration::from_secs(10));
        clock
            .set_skew(Skew {
                offset_ms: 0,
                rate: 2.0,
            })
            .unwrap();
        assert_eq!(clock.now() - start, Duration::from_secs(20));
        clock
            .set_skew(Skew {
                offset_ms: -5_000,
                rate: 1.0,
            })
            .unwrap();
        assert_eq!(clock.now() - start, Duration::from_secs(5));
        assert!(clock
            .set_skew(Skew {
                offset_ms: 0,
                rate: 0.0
            })
            .is_err());
    }

    #[test]
    fn jumps_move_the_reading_and_rate_changes_keep_it_continuous() {
        let time = HandTime::default();
        let clock = SkewedClock::new(time.clone());
        time.set_ms(1_000);
        let before = clock.reading();
        clock.set_rate(4.0);
        assert_eq!(clock.reading(), before, "a rate change does not jump");
        time.set_ms(2_000);
        assert_eq!(clock.reading() - before, Duration::from_secs(4));
        clock.jump(-1_500);
        assert_eq!(clock.reading() - before, Duration::from_millis(2_500));
        let healed_at = clock.reading();
        clock.heal();
        assert_eq!(clock.reading(), healed_at);
        time.set_ms(3_000);
        assert_eq!(clock.reading() - healed_at, Duration::from_secs(1));
    }

    #[test]
    fn a_backward_offset_as_large_as_allowed_still_reads_an_instant() {
        let clock = SkewedClock::new(HandTime::default());
        clock.jump(-10 * SKEW_OFFSET_MS_MAX);
        assert_eq!(clock.skew().offset_ms, -SKEW_OFFSET_MS_MAX);
        assert_eq!(clock.reading(), Duration::ZERO);
    }
}
