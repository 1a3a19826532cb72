//! The bound on state digests: each one serializes the whole lock state
//! under the apply lock, so a node computes one at a time and at most
//! [`DIGESTS_PER_SECOND`] on average.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;

/// Average digests per second a node computes.
pub const DIGESTS_PER_SECOND: u32 = 10;
/// Digests a node computes back to back after a quiet spell.
pub const DIGESTS_BURST: u32 = 10;

/// A token bucket refilled at [`DIGESTS_PER_SECOND`] holding at most
/// [`DIGESTS_BURST`], plus a flag that allows one digest at a time. Time is
/// passed in, so tests choose it.
pub struct DigestLimiter {
    bucket: Mutex<Bucket>,
    busy: AtomicBool,
}

struct Bucket {
    /// Whole digests available, times [`DIGESTS_PER_SECOND`] per second of refill.
    available: f64,
    refilled_at: Option<Instant>,
}

/// Why a digest is refused now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DigestRefused {
    /// Another digest is being computed on this node.
    Busy,
    /// The rate is used up; one is available again after this long.
    Rate(Duration),
}

/// The right to compute one digest; the next may start once it is dropped.
pub struct DigestPermit<'a> {
    limiter: &'a DigestLimiter,
}

impl Drop for DigestPermit<'_> {
    fn drop(&mut self) {
        self.limiter.busy.store(false, Ordering::Release);
    }
}

impl Default for DigestLimiter {
    fn default() -> Self {
        DigestLimiter {
            bucket: Mutex::new(Bucket {
                available: f64::from(DIGESTS_BURST),
                refilled_at: None,
            }),
            busy: AtomicBool::new(false),
        }
    }
}

impl DigestLimiter {
    /// A permit for one digest at `now`, or why not.
    pub fn try_take(&self, now: Instant) -> Result<DigestPermit<'_>, DigestRefused> {
        if self
            .busy
            .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
            .is_err()
        {
            return Err(DigestRefused::Busy);
        }
        let permit = DigestPermit { limiter: self };
        let mut bucket = self.bucket.lock();
        if let Some(last) = bucket.refilled_at {
            let elapsed = now.saturating_duration_since(last).as_secs_f64();
            bucket.available =
                (bucket.available + elapsed * f64::from(DIGESTS_PER_SECOND)).min(f64::from(DIGESTS_BURST));
        }
        bucket.refilled_at = Some(now);
        if bucket.available >= 1.0 {
            bucket.available -= 1.0;
            Ok(permit)
        } else {
            let wait = (1.0 - bucket.available) / f64::from(DIGESTS_PER_SECOND);
            Err(DigestRefused::Rate(Duration::from_secs_f64(wait)))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digests_come_one_at_a_time_and_at_the_documented_rate() {
        let limiter = DigestLimiter::default();
        let start = Instant::now();
        let first = limiter.try_take(start).unwrap();
        assert_eq!(limiter.try_take(start).err(), Some(DigestRefused::Busy));
        drop(first);
        for _ in 1..DIGESTS_BURST {
            drop(limiter.try_take(start).unwrap());
        }
        let Err(DigestRefused::Rate(wait)) = limiter.try_take(start) else {
            panic!("the burst is used up");
        };
        assert!(wait <= Duration::from_secs(1) / DIGESTS_PER_SECOND, "{wait:?}");
        let later = start + Duration::from_secs(1) / DIGESTS_PER_SECOND;
        drop(
            limiter
                .try_take(later)
                .expect("one digest refills per 1/rate seconds"),
        );
        assert!(limiter.try_take(later).is_err());
    }
}
