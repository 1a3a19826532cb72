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
//!
//! Deadlines and checkpoint triggers are kept in ordered indexes, so a tick
//! costs O(k log n) for the k leases it acts on, not a scan of all n: a
//! leader with a million sessions examines only those that are due.

use std::collections::{BTreeMap, BTreeSet};
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

impl Lease {
    /// When the lease will have decayed half a TTL below its record, in
    /// nanoseconds from `epoch` (negative before it): from then on its
    /// remaining time plus half a TTL is at most the record, which
    /// [`LeaseTracker::take_checkpoints`] examines. Signed, because early in
    /// a machine's uptime the instant may lie before any `Instant` that can
    /// be represented.
    fn decays_at(&self, epoch: Instant) -> i128 {
        nanos_from(epoch, self.deadline) + self.ttl.as_nanos() as i128 / 2 - self.recorded.as_nanos() as i128
    }

    /// Whether the lease's record is worth rewriting now, and as what: a
    /// lease that decayed half a TTL below its record is recorded as it is;
    /// a renewed lease recorded below its full TTL is recorded at its TTL.
    fn checkpoint_due(&self, now: Instant) -> Option<Duration> {
        let remaining = self.deadline.saturating_duration_since(now).min(self.ttl);
        if remaining + self.ttl / 2 < self.recorded {
            Some(remaining)
        } else if self.renewed_since_checkpoint && self.recorded < self.ttl {
            Some(self.ttl)
        } else {
            None
        }
    }
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
    /// The instant the decay index counts from.
    epoch: Instant,
    leases: BTreeMap<SessionId, Lease>,
    /// Deadlines of the leases whose expiry is not in flight.
    by_deadline: BTreeSet<(Instant, SessionId)>,
    /// When each lease will have decayed below its record (see
    /// [`Lease::decays_at`]).
    by_decay: BTreeSet<(i128, SessionId)>,
    /// Leases renewed since their record was last written whose record is
    /// below their full TTL.
    renewed_below_ttl: BTreeSet<SessionId>,
}

fn ms(duration: Duration) -> u64 {
    duration.as_millis().min(u64::MAX as u128) as u64
}

/// `at - epoch` in nanoseconds, negative when `at` is earlier.
fn nanos_from(epoch: Instant, at: Instant) -> i128 {
    match at.checked_duration_since(epoch) {
        Some(after) => after.as_nanos() as i128,
        None => -(epoch.duration_since(at).as_nanos() as i128),
    }
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
        let mut tracker = LeaseTracker {
            grace,
            epoch: now,
            leases: BTreeMap::new(),
            by_deadline: BTreeSet::new(),
            by_decay: BTreeSet::new(),
            renewed_below_ttl: BTreeSet::new(),
        };
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
            tracker.insert(
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
        (tracker, charges)
    }

    /// Tracks a session opened while this tracker is active.
    pub fn track(&mut self, session: SessionId, ttl: Duration, now: Instant) {
        if self.leases.contains_key(&session) {
            return;
        }
        self.insert(
            session,
            Lease {
                ttl,
                deadline: now + ttl,
                recorded: ttl,
                renewed_since_checkpoint: false,
                expiring: false,
            },
        );
    }

    /// Renews a lease for a full TTL from `now`.
    pub fn renew(&mut self, session: SessionId, now: Instant) -> Result<Duration, RenewRefused> {
        let lease = self.leases.get(&session).ok_or(RenewRefused::Unknown)?;
        if lease.expiring || now >= lease.deadline {
            return Err(RenewRefused::Expired);
        }
        let ttl = lease.ttl;
        self.update(session, |lease| {
            lease.deadline = now + lease.ttl;
            lease.renewed_since_checkpoint = true;
        });
        Ok(ttl)
    }

    /// Stops tracking a session that ended.
    pub fn forget(&mut self, session: SessionId) {
        if let Some(lease) = self.leases.remove(&session) {
            self.unindex(session, &lease);
        }
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
    /// yet in flight, earliest deadline first; marks them in flight.
    pub fn take_expired(&mut self, now: Instant, max: usize) -> Vec<SessionId> {
        let mut expired = Vec::new();
        while expired.len() < max {
            match self.by_deadline.first() {
                Some((deadline, session)) if *deadline <= now => {
                    let session = *session;
                    self.update(session, |lease| lease.expiring = true);
                    expired.push(session);
                }
                _ => break,
            }
        }
        expired
    }

    /// Makes a session's expiry eligible again after its proposal failed.
    pub fn retry_expiry(&mut self, session: SessionId) {
        if self.leases.contains_key(&session) {
            self.update(session, |lease| lease.expiring = false);
        }
    }

    /// Up to `max` checkpoint entries worth recording now: leases that decayed
    /// half a TTL below their record (a client renewing every third of its
    /// TTL never does), and renewed leases whose record is below their full
    /// TTL, which are recorded at the full TTL. Marks them recorded.
    pub fn take_checkpoints(&mut self, now: Instant, max: usize) -> Vec<(SessionId, u64)> {
        let mut candidates: Vec<SessionId> = Vec::new();
        let now_offset = nanos_from(self.epoch, now);
        for (decays_at, session) in &self.by_decay {
            if *decays_at > now_offset || candidates.len() == max {
                break;
            }
            candidates.push(*session);
        }
        for session in &self.renewed_below_ttl {
            if candidates.len() == max {
                break;
            }
            candidates.push(*session);
        }
        candidates.sort_unstable();
        candidates.dedup();
        let mut entries = Vec::new();
        for session in candidates {
            if entries.len() == max {
                break;
            }
            let due = self
                .leases
                .get(&session)
                .and_then(|lease| lease.checkpoint_due(now));
            match due {
                Some(record) => {
                    self.update(session, |lease| {
                        lease.recorded = record;
                        lease.renewed_since_checkpoint = false;
                    });
                    entries.push((session, ms(record)));
                }
                // Past its deadline a lease decays no further: it leaves the
                // decay index until a renewal or a new record moves it.
                None => {
                    if let Some(lease) = self.leases.get(&session) {
                        if now >= lease.deadline {
                            let key = (lease.decays_at(self.epoch), session);
                            self.by_decay.remove(&key);
                        }
                    }
                }
            }
        }
        entries
    }

    fn insert(&mut self, session: SessionId, lease: Lease) {
        self.index(session, &lease);
        self.leases.insert(session, lease);
    }

    /// Changes one lease and moves it in every index.
    fn update(&mut self, session: SessionId, change: impl FnOnce(&mut Lease)) {
        let Some(mut lease) = self.leases.remove(&session) else {
            return;
        };
        self.unindex(session, &lease);
        change(&mut lease);
        self.insert(session, lease);
    }

    fn index(&mut self, session: SessionId, lease: &Lease) {
        if !lease.expiring {
            self.by_deadline.insert((lease.deadline, session));
        }
        self.by_decay.insert((lease.decays_at(self.epoch), session));
        if lease.renewed_since_checkpoint && lease.recorded < lease.ttl {
            self.renewed_below_ttl.insert(session);
        }
    }

    fn unindex(&mut self, session: SessionId, lease: &Lease) {
        self.by_deadline.remove(&(lease.deadline, session));
        self.by_decay.remove(&(lease.decays_at(self.epoch), session));
        self.renewed_below_ttl.remove(&session);
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    fn session(ttl_ms: u64, checkpoint: Option<u64>) -> Session {
        Session {
            owner: crate::lock::Credential::of_secret(b"a lease test's session"),
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
        let sessions = [(SessionId::new(1), session(4_000, None))];
        let (mut tracker, charges) =
            LeaseTracker::take_over(now, GRACE, sessions.iter().map(|(id, s)| (*id, s)));
        assert_eq!(charges, vec![(SessionId::new(1), 3_000)]);
        let just_before = now + Duration::from_millis(4_499);
        assert!(tracker.take_expired(just_before, 10).is_empty());
        assert_eq!(
            tracker.take_expired(now + Duration::from_millis(4_500), 10),
            vec![SessionId::new(1)]
        );
    }

    #[test]
    fn renewal_extends_by_ttl_and_expired_lease_cannot_renew() {
        let now = Instant::now();
        let mut tracker = LeaseTracker::take_over(now, GRACE, std::iter::empty()).0;
        tracker.track(SessionId::new(7), Duration::from_secs(2), now);
        assert_eq!(
            tracker.renew(SessionId::new(7), now + Duration::from_millis(1_900)),
            Ok(Duration::from_secs(2))
        );
        assert!(tracker
            .take_expired(now + Duration::from_millis(3_800), 10)
            .is_empty());
        assert_eq!(
            tracker.renew(SessionId::new(7), now + Duration::from_millis(3_900)),
            Err(RenewRefused::Expired)
        );
        assert_eq!(tracker.renew(SessionId::new(8), now), Err(RenewRefused::Unknown));
    }

    #[test]
    fn expiry_in_flight_is_not_reported_twice_until_retried() {
        let now = Instant::now();
        let mut tracker = LeaseTracker::take_over(now, GRACE, std::iter::empty()).0;
        tracker.track(SessionId::new(1), Duration::from_secs(1), now);
        let later = now + Duration::from_secs(2);
        assert_eq!(tracker.take_expired(later, 10), vec![SessionId::new(1)]);
        assert!(tracker.take_expired(later, 10).is_empty());
        tracker.retry_expiry(SessionId::new(1));
        assert_eq!(tracker.take_expired(later, 10), vec![SessionId::new(1)]);
    }

    #[test]
    fn live_session_renewing_at_a_third_of_ttl_is_never_checkpointed_down() {
        let start = Instant::now();
        let ttl = Duration::from_secs(3);
        let mut tracker = LeaseTracker::take_over(start, GRACE, std::iter::empty()).0;
        tracker.track(SessionId::new(1), ttl, start);
        for step in 1..=30u32 {
            let now = start + ttl / 3 * step;
            // Checkpoints are examined just before each renewal, at the lowest remaining lease.
            assert!(tracker.take_checkpoints(now, 10).is_empty(), "step {step}");
            tracker.renew(SessionId::new(1), now).unwrap();
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
            let sessions = [(SessionId::new(1), session(ttl_ms, recorded))];
            let (mut tracker, charges) =
                LeaseTracker::take_over(now, GRACE, sessions.iter().map(|(id, s)| (*id, s)));
            for (id, remaining) in charges {
                assert_eq!(id, SessionId::new(1));
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
        let sessions = [(SessionId::new(1), session(4_000, Some(0)))];
        let (mut tracker, charges) =
            LeaseTracker::take_over(now, GRACE, sessions.iter().map(|(id, s)| (*id, s)));
        assert!(charges.is_empty(), "nothing is left to charge");
        assert_eq!(tracker.take_expired(now, 10), vec![SessionId::new(1)]);
    }

    #[test]
    fn renewal_after_a_low_record_checkpoints_the_budget_back_up() {
        let now = Instant::now();
        let sessions = [(SessionId::new(1), session(4_000, Some(1_000)))];
        let (mut tracker, charges) =
            LeaseTracker::take_over(now, GRACE, sessions.iter().map(|(id, s)| (*id, s)));
        assert_eq!(charges, vec![(SessionId::new(1), 0)]);
        tracker.renew(SessionId::new(1), now).unwrap();
        assert_eq!(
            tracker.take_checkpoints(now, 10),
            vec![(SessionId::new(1), 4_000)]
        );
        assert!(tracker.take_checkpoints(now, 10).is_empty());
    }

    #[test]
    fn checkpoints_and_expiries_respect_their_batch_bound() {
        let now = Instant::now();
        let mut tracker = LeaseTracker::take_over(now, GRACE, std::iter::empty()).0;
        for id in 0..10 {
            tracker.track(SessionId::new(id), Duration::from_secs(1), now);
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

    /// The table as a full scan decides it: what the indexed tracker must
    /// agree with, whatever the operations and the time.
    #[derive(Default)]
    struct ScanModel {
        leases: BTreeMap<SessionId, Lease>,
    }

    impl ScanModel {
        fn track(&mut self, session: SessionId, ttl: Duration, now: Instant) {
            self.leases.entry(session).or_insert(Lease {
                ttl,
                deadline: now + ttl,
                recorded: ttl,
                renewed_since_checkpoint: false,
                expiring: false,
            });
        }

        fn renew(&mut self, session: SessionId, now: Instant) -> Result<Duration, RenewRefused> {
            let lease = self.leases.get_mut(&session).ok_or(RenewRefused::Unknown)?;
            if lease.expiring || now >= lease.deadline {
                return Err(RenewRefused::Expired);
            }
            lease.deadline = now + lease.ttl;
            lease.renewed_since_checkpoint = true;
            Ok(lease.ttl)
        }

        fn take_expired(&mut self, now: Instant) -> Vec<SessionId> {
            let mut expired = Vec::new();
            for (id, lease) in self.leases.iter_mut() {
                if !lease.expiring && now >= lease.deadline {
                    lease.expiring = true;
                    expired.push(*id);
                }
            }
            expired
        }

        fn take_checkpoints(&mut self, now: Instant) -> Vec<(SessionId, u64)> {
            let mut entries = Vec::new();
            for (id, lease) in self.leases.iter_mut() {
                if let Some(record) = lease.checkpoint_due(now) {
                    lease.recorded = record;
                    lease.renewed_since_checkpoint = false;
                    entries.push((*id, ms(record)));
                }
            }
            entries
        }
    }

    #[derive(Debug, Clone)]
    enum Op {
        Track(u64, u64),
        Renew(u64),
        Forget(u64),
        RetryExpiry(u64),
        Expire,
        Checkpoint,
        Advance(u64),
    }

    fn op() -> impl proptest::strategy::Strategy<Value = Op> {
        use proptest::prelude::*;
        prop_oneof![
            (0u64..12, 1_000u64..4_000).prop_map(|(id, ttl)| Op::Track(id, ttl)),
            (0u64..12).prop_map(Op::Renew),
            (0u64..12).prop_map(Op::Forget),
            (0u64..12).prop_map(Op::RetryExpiry),
            Just(Op::Expire),
            Just(Op::Checkpoint),
            (0u64..1_500).prop_map(Op::Advance),
        ]
    }

    proptest::proptest! {
        /// The indexed tracker expires and checkpoints exactly the leases a
        /// scan of every lease would, after any sequence of operations.
        #[test]
        fn the_indexes_decide_exactly_what_a_full_scan_decides(ops in proptest::collection::vec(op(), 1..120)) {
            let start = Instant::now();
            let mut now = start;
            let mut tracker = LeaseTracker::take_over(start, GRACE, std::iter::empty()).0;
            let mut model = ScanModel::default();
            for op in ops {
                match op {
                    Op::Track(id, ttl) => {
                        tracker.track(SessionId::new(id), Duration::from_millis(ttl), now);
                        model.track(SessionId::new(id), Duration::from_millis(ttl), now);
                    }
                    Op::Renew(id) => {
                        proptest::prop_assert_eq!(
                            tracker.renew(SessionId::new(id), now),
                            model.renew(SessionId::new(id), now)
                        );
                    }
                    Op::Forget(id) => {
                        tracker.forget(SessionId::new(id));
                        model.leases.remove(&SessionId::new(id));
                    }
                    Op::RetryExpiry(id) => {
                        tracker.retry_expiry(SessionId::new(id));
                        if let Some(lease) = model.leases.get_mut(&SessionId::new(id)) {
                            lease.expiring = false;
                        }
                    }
                    Op::Expire => {
                        let mut indexed = tracker.take_expired(now, usize::MAX);
                        indexed.sort();
                        proptest::prop_assert_eq!(indexed, model.take_expired(now));
                    }
                    Op::Checkpoint => {
                        let mut indexed = tracker.take_checkpoints(now, usize::MAX);
                        indexed.sort();
                        proptest::prop_assert_eq!(indexed, model.take_checkpoints(now));
                    }
                    Op::Advance(ms) => now += Duration::from_millis(ms),
                }
                proptest::prop_assert_eq!(tracker.len(), model.leases.len());
            }
        }
    }
}
