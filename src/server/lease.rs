//! Session leases as the leader tracks them: deadlines on the leader's
//! monotonic clock, never in the replicated state.
//!
//! A new leader cannot know when each session last renewed with the old one,
//! so it grants every session its recorded budget plus a grace (one maximal
//! election timeout). To stop repeated elections from keeping a dead session
//! alive for ever (etcd #9888), budgets are checkpointed through the log:
//! each takeover records every session's budget reduced by a quarter TTL, a
//! lease that decays well below its record is recorded as it is, and only a
//! real renewal raises the record again. A session that never renews has
//! spent its budget after four takeovers, and the fifth leader grants it no
//! grace: it expires at once, however short-lived the leaders were. A live
//! client loses its session this way only if four leaders in a row each fell
//! before it could renew with them. Live clients renew every third of their
//! TTL, so in steady state neither rule writes to the log for them.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use crate::lock::{Session, SessionId};

/// One tracked lease.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Lease {
    ttl: Duration,
    deadline: Instant,
    /// Budget last recorded in the log (the session's full TTL if none).
    recorded: Duration,
    renewed_since_checkpoint: bool,
    /// An `ExpireSession` for it is in flight.
    expiring: bool,
}

/// Why a renewal was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RenewRefused {
    /// The lease is not tracked here.
    Unknown,
    /// The lease ran out before this renewal arrived.
    Expired,
}

/// The leader's lease table. Pure: time is passed in.
#[derive(Debug, Clone)]
pub struct LeaseTracker {
    grace: Duration,
    leases: BTreeMap<SessionId, Lease>,
}

fn ms(duration: Duration) -> u64 {
    duration.as_millis().min(u64::MAX as u128) as u64
}

impl LeaseTracker {
    /// Starts tracking at a takeover: every session gets its recorded budget
    /// (capped at its TTL) plus `grace`. Returns the tracker and the
    /// checkpoint entries to propose, which charge this takeover against each
    /// session's budget.
    pub fn take_over<'a>(
        now: Instant,
        grace: Duration,
        sessions: impl IntoIterator<Item = (SessionId, &'a Session)>,
    ) -> (LeaseTracker, Vec<(SessionId, u64)>) {
        let mut leases = BTreeMap::new();
        let mut charges = Vec::new();
        for (id, session) in sessions {
            let ttl = Duration::from_millis(session.ttl_ms);
            let budget = session
                .checkpoint_remaining_ms
                .map(Duration::from_millis)
                .unwrap_or(ttl)
                .min(ttl);
            let charged = budget.saturating_sub(ttl / 4);
            if charged != budget {
                charges.push((id, ms(charged)));
            }
            // A session whose budget is spent has gone four takeovers without
            // a recorded renewal; granting it the grace again would let
            // leaders that live shorter than the grace keep it alive for ever.
            let grace = if budget.is_zero() { Duration::ZERO } else { grace };
            leases.insert(
                id,
                Lease {
                    ttl,
                    deadline: now + budget + grace,
                    recorded: charged,
                    renewed_since_checkpoint: false,
                    expiring: false,
                },
            );
        }
        (LeaseTracker { grace, leases }, charges)
    }

    /// Tracks a session opened while this tracker is active.
    pub fn track(&mut self, session: SessionId, ttl: Duration, now: Instant) {
        self.leases.entry(session).or_insert(Lease {
            ttl,
            deadline: now + ttl,
            recorded: ttl,
            renewed_since_checkpoint: false,
            expiring: false,
        });
    }

    /// Renews a lease for a full TTL from `now`.
    pub fn renew(&mut self, session: SessionId, now: Instant) -> Result<Duration, RenewRefused> {
        let lease = self.leases.get_mut(&session).ok_or(RenewRefused::Unknown)?;
        if lease.expiring || now >= lease.deadline {
            return Err(RenewRefused::Expired);
        }
        lease.deadline = now + lease.ttl;
        lease.renewed_since_checkpoint = true;
        Ok(lease.ttl)
    }

    /// Stops tracking a session that ended.
    pub fn forget(&mut self, session: SessionId) {
        self.leases.remove(&session);
    }

    /// Whether a session is tracked.
    pub fn contains(&self, session: SessionId) -> bool {
        self.leases.contains_key(&session)
    }

    /// Number of tracked sessions.
    pub fn len(&self) -> usize {
        self.leases.len()
    }

    /// Whether nothing is tracked.
    pub fn is_empty(&self) -> bool {
        self.leases.is_empty()
    }

    /// The grace a takeover adds to every lease.
    pub fn grace(&self) -> Duration {
        self.grace
    }

    /// Up to `max` sessions whose deadline has passed and whose expiry is not
    /// yet in flight; marks them in flight.
    pub fn take_expired(&mut self, now: Instant, max: usize) -> Vec<SessionId> {
        let mut expired = Vec::new();
        for (id, lease) in self.leases.iter_mut() {
            if expired.len() == max {
                break;
            }
            if !lease.expiring && now >= lease.deadline {
                lease.expiring = true;
                expired.push(*id);
            }
        }
        expired
    }

    /// Makes a session's expiry eligible again after its proposal failed.
    pub fn retry_expiry(&mut self, session: SessionId) {
        if let Some(lease) = self.leases.get_mut(&session) {
            lease.expiring = false;
        }
    }

    /// Up to `max` checkpoint entries worth recording now: leases that decayed
    /// half a TTL below their record (a client renewing every third of its
    /// TTL never does), and renewed leases whose record is below their full
    /// TTL, which are recorded at the full TTL. Marks them recorded.
    pub fn take_checkpoints(&mut self, now: Instant, max: usize) -> Vec<(SessionId, u64)> {
        let mut entries = Vec::new();
        for (id, lease) in self.leases.iter_mut() {
            if entries.len() == max {
                break;
            }
            let remaining = lease.deadline.saturating_duration_since(now).min(lease.ttl);
            let record = if remaining + lease.ttl / 2 < lease.recorded {
                remaining
            } else if lease.renewed_since_checkpoint && lease.recorded < lease.ttl {
                lease.ttl
            } else {
                continue;
            };
            lease.recorded = record;
            lease.renewed_since_checkpoint = false;
            entries.push((*id, ms(record)));
        }
        entries
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    fn session(ttl_ms: u64, checkpoint: Option<u64>) -> Session {
        Session {
            ttl_ms,
            checkpoint_remaining_ms: checkpoint,
            held: BTreeSet::new(),
            waiting: BTreeSet::new(),
        }
    }

    const GRACE: Duration = Duration::from_millis(500);

    #[test]
    fn takeover_grants_full_ttl_plus_grace_to_unrecorded_sessions() {
        let now = Instant::now();
        let sessions = [(1, session(4_000, None))];
        let (mut tracker, charges) =
            LeaseTracker::take_over(now, GRACE, sessions.iter().map(|(id, s)| (*id, s)));
        assert_eq!(charges, vec![(1, 3_000)]);
        let just_before = now + Duration::from_millis(4_499);
        assert!(tracker.take_expired(just_before, 10).is_empty());
        assert_eq!(
            tracker.take_expired(now + Duration::from_millis(4_500), 10),
            vec![1]
        );
    }

    #[test]
    fn renewal_extends_by_ttl_and_expired_lease_cannot_renew() {
        let now = Instant::now();
        let mut tracker = LeaseTracker::take_over(now, GRACE, std::iter::empty()).0;
        tracker.track(7, Duration::from_secs(2), now);
        assert_eq!(
            tracker.renew(7, now + Duration::from_millis(1_900)),
            Ok(Duration::from_secs(2))
        );
        assert!(tracker
            .take_expired(now + Duration::from_millis(3_800), 10)
            .is_empty());
        assert_eq!(
            tracker.renew(7, now + Duration::from_millis(3_900)),
            Err(RenewRefused::Expired)
        );
        assert_eq!(tracker.renew(8, now), Err(RenewRefused::Unknown));
    }

    #[test]
    fn expiry_in_flight_is_not_reported_twice_until_retried() {
        let now = Instant::now();
        let mut tracker = LeaseTracker::take_over(now, GRACE, std::iter::empty()).0;
        tracker.track(1, Duration::from_secs(1), now);
        let later = now + Duration::from_secs(2);
        assert_eq!(tracker.take_expired(later, 10), vec![1]);
        assert!(tracker.take_expired(later, 10).is_empty());
        tracker.retry_expiry(1);
        assert_eq!(tracker.take_expired(later, 10), vec![1]);
    }

    #[test]
    fn live_session_renewing_at_a_third_of_ttl_is_never_checkpointed_down() {
        let start = Instant::now();
        let ttl = Duration::from_secs(3);
        let mut tracker = LeaseTracker::take_over(start, GRACE, std::iter::empty()).0;
        tracker.track(1, ttl, start);
        for step in 1..=30u32 {
            let now = start + ttl / 3 * step;
            // Checkpoints are examined just before each renewal, at the lowest remaining lease.
            assert!(tracker.take_checkpoints(now, 10).is_empty(), "step {step}");
            tracker.renew(1, now).unwrap();
        }
    }

    /// The etcd #9888 property: however often leadership changes, a session
    /// that never renews is expired once its recorded budget is spent.
    #[test]
    fn repeated_takeovers_cannot_keep_a_dead_session_alive() {
        let ttl_ms = 8_000;
        let mut recorded: Option<u64> = None;
        let mut now = Instant::now();
        for takeover in 0..10 {
            let sessions = [(1, session(ttl_ms, recorded))];
            let (mut tracker, charges) =
                LeaseTracker::take_over(now, GRACE, sessions.iter().map(|(id, s)| (*id, s)));
            for (id, remaining) in charges {
                assert_eq!(id, 1);
                recorded = Some(remaining);
            }
            // Each leader lives only half a grace period before the next election.
            now += GRACE / 2;
            if !tracker.take_expired(now, 10).is_empty() {
                assert!(takeover >= 4, "expired too early, after {takeover} takeovers");
                return;
            }
            for (_, remaining) in tracker.take_checkpoints(now, 10) {
                recorded = Some(remaining);
            }
        }
        panic!("a session that never renewed survived 10 takeovers");
    }

    #[test]
    fn spent_budget_gets_no_grace_so_leaders_shorter_than_the_grace_cannot_keep_it_alive() {
        let now = Instant::now();
        let sessions = [(1, session(4_000, Some(0)))];
        let (mut tracker, charges) =
            LeaseTracker::take_over(now, GRACE, sessions.iter().map(|(id, s)| (*id, s)));
        assert!(charges.is_empty(), "nothing is left to charge");
        assert_eq!(tracker.take_expired(now, 10), vec![1]);
    }

    #[test]
    fn renewal_after_a_low_record_checkpoints_the_budget_back_up() {
        let now = Instant::now();
        let sessions = [(1, session(4_000, Some(1_000)))];
        let (mut tracker, charges) =
            LeaseTracker::take_over(now, GRACE, sessions.iter().map(|(id, s)| (*id, s)));
        assert_eq!(charges, vec![(1, 0)]);
        tracker.renew(1, now).unwrap();
        assert_eq!(tracker.take_checkpoints(now, 10), vec![(1, 4_000)]);
        assert!(tracker.take_checkpoints(now, 10).is_empty());
    }

    #[test]
    fn checkpoints_and_expiries_respect_their_batch_bound() {
        let now = Instant::now();
        let mut tracker = LeaseTracker::take_over(now, GRACE, std::iter::empty()).0;
        for id in 0..10 {
            tracker.track(id, Duration::from_secs(1), now);
        }
        let later = now + Duration::from_secs(5);
        assert_eq!(
            tracker
                .take_checkpoints(now + Duration::from_millis(700), 3)
                .len(),
            3
        );
        assert_eq!(tracker.take_expired(later, 4).len(), 4);
    }
}
