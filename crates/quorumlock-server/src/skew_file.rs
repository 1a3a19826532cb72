//! Fault injection for chaos runs: a lease clock that follows a skew file.
//!
//! `serve --clock-skew-file PATH` (hidden) makes the node's lease keeper read
//! a [`SkewedClock`] whose skew is the `OFFSET_MS RATE` the file holds (see
//! [`Skew::parse`]), read again every [`SKEW_REREAD_INTERVAL`]; the chaos
//! runner rewrites the file to jump the clock forward and back and change its
//! rate. A missing or unreadable file means no skew, and a malformed one
//! keeps the last good skew (a half-written file must not stop the node).
//! Not for production: safety never depends on this clock, but availability
//! does.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use quorumlock_core::time::{Clock, RealTime, Skew, SkewedClock};

/// How often the file is read again.
pub const SKEW_REREAD_INTERVAL: Duration = Duration::from_millis(50);

/// The lease clock of a node under clock-skew injection.
pub struct SkewFileClock {
    path: PathBuf,
    clock: SkewedClock<RealTime>,
    /// When the file was last read, on the true clock.
    last_read: Mutex<Instant>,
}

impl SkewFileClock {
    /// A clock that follows the skew in `path`.
    pub fn new(path: impl Into<PathBuf>) -> SkewFileClock {
        let clock = SkewFileClock {
            path: path.into(),
            clock: SkewedClock::new(RealTime::default()),
            last_read: Mutex::new(Instant::now()),
        };
        clock.reread();
        clock
    }

    fn reread(&self) {
        let skew = match std::fs::read_to_string(&self.path) {
            Ok(text) => match Skew::parse(&text) {
                Ok(skew) => skew,
                Err(error) => {
                    tracing::warn!(path = %self.path.display(), %error, "ignoring a malformed clock skew file");
                    return;
                }
            },
            Err(_) => Skew::NONE,
        };
        if skew != self.clock.skew() {
            tracing::info!(offset_ms = skew.offset_ms, rate = skew.rate, "clock skew changed");
            // Parsed skews are within bounds, so this cannot be refused.
            let _ = self.clock.set_skew(skew);
        }
    }
}

impl Clock for SkewFileClock {
    fn now(&self) -> Instant {
        let real = Instant::now();
        {
            let mut last_read = self.last_read.lock();
            if real.saturating_duration_since(*last_read) >= SKEW_REREAD_INTERVAL {
                *last_read = real;
                self.reread();
            }
        }
        self.clock.now()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_clock_jumps_forward_and_back_as_its_file_says() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("skew");
        let clock = SkewFileClock::new(&path);
        let (real_start, start) = (Instant::now(), clock.now());
        let elapsed_true = || real_start.elapsed();

        std::fs::write(&path, "60000 1").unwrap();
        std::thread::sleep(SKEW_REREAD_INTERVAL * 2);
        let ahead = clock.now();
        assert!(
            ahead - start >= elapsed_true() + Duration::from_secs(59),
            "jumped forward a minute"
        );

        std::fs::write(&path, "-60000 1").unwrap();
        std::thread::sleep(SKEW_REREAD_INTERVAL * 2);
        assert!(clock.now() < ahead, "jumped back");

        std::fs::write(&path, "garbage").unwrap();
        std::thread::sleep(SKEW_REREAD_INTERVAL * 2);
        let kept = clock.now();
        assert!(kept < ahead, "a malformed file keeps the last skew");

        std::fs::remove_file(&path).unwrap();
        std::thread::sleep(SKEW_REREAD_INTERVAL * 2);
        assert!(
            clock.now() > kept + Duration::from_secs(59),
            "no file means no skew"
        );
    }
}
