//! The leader's deadlines for grants' maximum hold times and for
//! lock-delays, sans I/O.
//!
//! The applied state records which grants have a maximum hold time and
//! which locks are in a lock-delay ([`LockState::timed`]), never when
//! either began: the state machine has no clock. The leader times them on
//! its own monotonic clock from the moment it first sees each one, and ends
//! each through the log ([`Command::EndHold`], [`Command::EndLockDelay`]).
//!
//! A new leader, or a leader in a new term, starts every deadline over from
//! when it first sees it. It sees each no earlier than it began, so a hold
//! lasts at least its maximum and a delay at least its length; a failover
//! can only make either longer, never shorter, which is the safe side for
//! both (a lock-delay protects a holder that may still be at work; a
//! maximum hold bounds how long a lock can be kept, not how short).
//!
//! [`LockState::timed`]: crate::lock::LockState::timed

use std::collections::HashMap;
use std::time::{Duration, Instant};

use crate::lock::{Command, FencingToken, Timed};

/// How long an end proposed once waits before it is proposed again, if
/// the deadline is still in the applied state (the proposal was lost with a
/// leader change or timed out).
pub const END_RETRY: Duration = Duration::from_secs(1);

/// What a deadline ends.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Ends {
    /// The grant of a lock under a token.
    Hold { lock: String, token: FencingToken },
    /// A lock-delay, by its number.
    Delay { lock: String, delay: u64 },
}

impl Ends {
    fn command(&self) -> Command {
        match self {
            Ends::Hold { lock, token } => Command::EndHold {
                lock: lock.clone(),
                token: *token,
            },
            Ends::Delay { lock, delay } => Command::EndLockDelay {
                lock: lock.clone(),
                delay: *delay,
            },
        }
    }
}

/// One deadline: from when this leader first saw it, and for how long.
#[derive(Debug, Clone, Copy)]
struct Deadline {
    seen: Instant,
    length: Duration,
    proposed: Option<Instant>,
}

impl Deadline {
    fn at(&self) -> Instant {
        self.seen + self.length
    }
}

/// The leader's deadlines of one term.
#[derive(Debug, Default)]
pub struct HoldTimers {
    /// The term the deadlines were seen in; `None` while not leading.
    term: Option<u64>,
    deadlines: HashMap<Ends, Deadline>,
}

impl HoldTimers {
    /// Creates an empty table.
    pub fn new() -> Self {
        HoldTimers::default()
    }

    /// One pass at `now`: `leading` is this node's term while it leads and
    /// `None` otherwise; `timed` is what the applied state has to time now.
    /// Starts the deadlines first seen, forgets those gone from the state,
    /// and returns the ends to propose: each passed deadline once, and
    /// again every [`END_RETRY`] while it stays in the state.
    pub fn tick(&mut self, leading: Option<u64>, now: Instant, timed: Vec<Timed>) -> Vec<Command> {
        if leading != self.term {
            // Not leading, or a new term: whatever was seen before may be
            // stale; the next pass starts every deadline over.
            self.deadlines.clear();
            self.term = leading;
        }
        if leading.is_none() {
            return Vec::new();
        }
        let mut deadlines = HashMap::with_capacity(timed.len());
        for item in timed {
            let (ends, length) = match item {
                Timed::Hold {
                    lock,
                    token,
                    max_hold_ms,
                } => (Ends::Hold { lock, token }, max_hold_ms),
                Timed::Delay { lock, delay, ms } => (Ends::Delay { lock, delay }, ms),
            };
            let deadline = self.deadlines.remove(&ends).unwrap_or(Deadline {
                seen: now,
                length: Duration::from_millis(u64::from(length)),
                proposed: None,
            });
            deadlines.insert(ends, deadline);
        }
        self.deadlines = deadlines;
        let mut due: Vec<&Ends> = Vec::new();
        for (ends, deadline) in &mut self.deadlines {
            let retry = deadline
                .proposed
                .is_none_or(|proposed| now >= proposed + END_RETRY);
            if now >= deadline.at() && retry {
                deadline.proposed = Some(now);
                due.push(ends);
            }
        }
        // In a fixed order, so that a run is reproducible.
        due.sort();
        due.into_iter().map(Ends::command).collect()
    }

    /// How much of the lock-delay of `lock` is left on this leader's clock,
    /// if this node times one.
    pub fn delay_left(&self, lock: &str, now: Instant) -> Option<Duration> {
        self.deadlines
            .iter()
            .filter(|(ends, _)| matches!(ends, Ends::Delay { lock: delayed, .. } if delayed == lock))
            .map(|(_, deadline)| deadline.at().saturating_duration_since(now))
            .max()
    }

    /// How many deadlines this node times.
    pub fn len(&self) -> usize {
        self.deadlines.len()
    }

    /// Whether it times none.
    pub fn is_empty(&self) -> bool {
        self.deadlines.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hold(lock: &str, token: u64, max_hold_ms: u32) -> Timed {
        Timed::Hold {
            lock: lock.to_string(),
            token: FencingToken::new(token),
            max_hold_ms,
        }
    }

    fn delay(lock: &str, delay: u64, ms: u32) -> Timed {
        Timed::Delay {
            lock: lock.to_string(),
            delay,
            ms,
        }
    }

    fn end_hold(lock: &str, token: u64) -> Command {
        Command::EndHold {
            lock: lock.to_string(),
            token: FencingToken::new(token),
        }
    }

    #[test]
    fn a_deadline_passes_its_length_after_the_leader_first_sees_it() {
        let start = Instant::now();
        let mut timers = HoldTimers::new();
        assert!(timers.tick(Some(1), start, vec![hold("a", 7, 1_000)]).is_empty());
        let later = start + Duration::from_millis(999);
        assert!(timers.tick(Some(1), later, vec![hold("a", 7, 1_000)]).is_empty());
        let due = start + Duration::from_millis(1_000);
        assert_eq!(
            timers.tick(Some(1), due, vec![hold("a", 7, 1_000)]),
            vec![end_hold("a", 7)]
        );
        // Proposed once; again only after END_RETRY if it is still there.
        let soon = due + Duration::from_millis(10);
        assert!(timers.tick(Some(1), soon, vec![hold("a", 7, 1_000)]).is_empty());
        let retry = due + END_RETRY;
        assert_eq!(
            timers.tick(Some(1), retry, vec![hold("a", 7, 1_000)]),
            vec![end_hold("a", 7)]
        );
        // Gone from the state: forgotten.
        assert!(timers.tick(Some(1), retry, Vec::new()).is_empty());
        assert!(timers.is_empty());
    }

    #[test]
    fn a_new_term_or_a_lost_leadership_starts_every_deadline_over() {
        let start = Instant::now();
        let mut timers = HoldTimers::new();
        timers.tick(Some(1), start, vec![delay("a", 1, 5_000)]);
        let almost = start + Duration::from_millis(4_000);
        // Leadership lost and won again in a later term: the delay counts
        // from the new term's first sight, never from the old one.
        assert!(timers.tick(None, almost, vec![delay("a", 1, 5_000)]).is_empty());
        assert!(timers
            .tick(Some(3), almost, vec![delay("a", 1, 5_000)])
            .is_empty());
        let old_end = start + Duration::from_millis(5_000);
        assert!(timers
            .tick(Some(3), old_end, vec![delay("a", 1, 5_000)])
            .is_empty());
        assert_eq!(
            timers.delay_left("a", old_end),
            Some(Duration::from_millis(4_000))
        );
        let new_end = almost + Duration::from_millis(5_000);
        assert_eq!(
            timers.tick(Some(3), new_end, vec![delay("a", 1, 5_000)]),
            vec![Command::EndLockDelay {
                lock: "a".to_string(),
                delay: 1
            }]
        );
    }

    #[test]
    fn a_delay_that_replaces_another_counts_from_its_own_start() {
        let start = Instant::now();
        let mut timers = HoldTimers::new();
        timers.tick(Some(1), start, vec![delay("a", 1, 5_000)]);
        let second = start + Duration::from_millis(3_000);
        assert!(timers
            .tick(Some(1), second, vec![delay("a", 2, 5_000)])
            .is_empty());
        let first_end = start + Duration::from_millis(5_000);
        assert!(timers
            .tick(Some(1), first_end, vec![delay("a", 2, 5_000)])
            .is_empty());
        assert_eq!(timers.delay_left("b", first_end), None);
        assert_eq!(timers.len(), 1);
    }

    #[test]
    fn ends_due_together_come_in_a_fixed_order() {
        let start = Instant::now();
        let mut timers = HoldTimers::new();
        let timed = vec![hold("b", 2, 1_000), hold("a", 9, 1_000), hold("a", 3, 1_000)];
        timers.tick(Some(1), start, timed.clone());
        let due = timers.tick(Some(1), start + Duration::from_secs(1), timed);
        assert_eq!(due, vec![end_hold("a", 3), end_hold("a", 9), end_hold("b", 2)]);
    }
}
