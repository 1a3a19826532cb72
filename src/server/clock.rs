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

/// How often a [`SkewedClock`] looks at its file again.
pub const SKEW_REREAD_INTERVAL: std::time::Duration = std::time::Duration::from_millis(50);
/// Largest offset a skew file may give, either way.
pub const SKEW_OFFSET_MS_MAX: i64 = 3_600_000;
/// Largest rate a skew file may give; the smallest is its inverse.
pub const SKEW_RATE_MAX: f64 = 100.0;

/// An offset and a rate applied on top of the monotonic clock.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Skew {
    /// Added to the clock, in milliseconds; negative values move it back.
    pub offset_ms: i64,
    /// How fast the clock runs relative to the real one (1.0 = real time).
    pub rate: f64,
}

impl Skew {
    /// No skew at all.
    pub const NONE: Skew = Skew {
        offset_ms: 0,
        rate: 1.0,
    };

    /// Parses `OFFSET_MS RATE` (for example `-3000 1.5`); an empty text is
    /// no skew.
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
        if offset_ms.abs() > SKEW_OFFSET_MS_MAX {
            return Err(format!("offset {offset_ms} ms exceeds ±{SKEW_OFFSET_MS_MAX} ms"));
        }
        if !(rate.is_finite() && (1.0 / SKEW_RATE_MAX..=SKEW_RATE_MAX).contains(&rate)) {
            return Err(format!(
                "rate {rate} is outside {} to {SKEW_RATE_MAX}",
                1.0 / SKEW_RATE_MAX
            ));
        }
        Ok(Skew { offset_ms, rate })
    }

    /// The skewed reading of `real`, for a clock that started at `origin`:
    /// `origin + (real - origin) * rate + offset`.
    pub fn apply(&self, origin: Instant, real: Instant) -> Instant {
        let scaled = real.saturating_duration_since(origin).mul_f64(self.rate);
        let base = origin + scaled;
        let offset = std::time::Duration::from_millis(self.offset_ms.unsigned_abs());
        if self.offset_ms >= 0 {
            base + offset
        } else {
            // An instant before the clock's origin may not exist on every
            // platform; the origin is then the earliest reading.
            base.checked_sub(offset).unwrap_or(origin)
        }
    }
}

/// A clock for fault injection: the monotonic clock with an offset and a
/// rate read from a file, which may change at any time, so the lease keeper
/// sees time jump forward and back and run fast or slow — as a node whose
/// clock an NTP daemon steps would. The file holds `OFFSET_MS RATE` (see
/// [`Skew::parse`]) and is read again every [`SKEW_REREAD_INTERVAL`]; a
/// missing or unreadable file means no skew, and a malformed one keeps the
/// last good skew (a half-written file must not stop the node). Safety must
/// not depend on this clock: only lease expiry reads it.
pub struct SkewedClock {
    path: std::path::PathBuf,
    origin: Instant,
    current: parking_lot::Mutex<(Instant, Skew)>,
}

impl SkewedClock {
    /// A clock that follows the skew in `path`.
    pub fn new(path: impl Into<std::path::PathBuf>) -> SkewedClock {
        let origin = Instant::now();
        let clock = SkewedClock {
            path: path.into(),
            origin,
            current: parking_lot::Mutex::new((origin, Skew::NONE)),
        };
        let skew = clock.read_skew(Skew::NONE);
        *clock.current.lock() = (origin, skew);
        clock
    }

    fn read_skew(&self, last: Skew) -> Skew {
        match std::fs::read_to_string(&self.path) {
            Ok(text) => match Skew::parse(&text) {
                Ok(skew) => skew,
                Err(error) => {
                    tracing::warn!(path = %self.path.display(), %error, "ignoring a malformed clock skew file");
                    last
                }
            },
            Err(_) => Skew::NONE,
        }
    }
}

impl Clock for SkewedClock {
    fn now(&self) -> Instant {
        let real = Instant::now();
        let mut current = self.current.lock();
        if real.saturating_duration_since(current.0) >= SKEW_REREAD_INTERVAL {
            let skew = self.read_skew(current.1);
            if skew != current.1 {
                tracing::info!(offset_ms = skew.offset_ms, rate = skew.rate, "clock skew changed");
            }
            *current = (real, skew);
        }
        current.1.apply(self.origin, real)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn skew_files_parse_and_bad_ones_say_why() {
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
    }

    #[test]
    fn a_skewed_clock_jumps_forward_and_back_as_its_file_says() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("skew");
        let clock = SkewedClock::new(&path);
        let before = Instant::now();
        let plain = clock.now();
        assert!(
            plain >= before && plain <= Instant::now(),
            "no file means no skew"
        );

        std::fs::write(&path, "60000 1").unwrap();
        std::thread::sleep(SKEW_REREAD_INTERVAL * 2);
        let ahead = clock.now();
        assert!(
            ahead >= Instant::now() + Duration::from_secs(59),
            "jumped forward a minute"
        );

        std::fs::write(&path, "-60000 1").unwrap();
        std::thread::sleep(SKEW_REREAD_INTERVAL * 2);
        assert!(clock.now() < ahead, "jumped back");

        std::fs::write(&path, "garbage").unwrap();
        std::thread::sleep(SKEW_REREAD_INTERVAL * 2);
        assert!(
            clock.now() < Instant::now(),
            "a malformed file keeps the last skew"
        );
    }

    #[test]
    fn a_rate_scales_elapsed_time_from_the_origin() {
        let origin = Instant::now();
        let later = origin + Duration::from_secs(10);
        let fast = Skew {
            offset_ms: 0,
            rate: 2.0,
        };
        assert_eq!(fast.apply(origin, later), origin + Duration::from_secs(20));
        let behind = Skew {
            offset_ms: -5_000,
            rate: 1.0,
        };
        assert_eq!(behind.apply(origin, later), origin + Duration::from_secs(5));
    }
}
