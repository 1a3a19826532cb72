//! Lock-level figures timed as this replica applies: how long each grant
//! was waited for and how long each lock was held, and the recent events
//! the status page lists.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use parking_lot::Mutex;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::{Registry, Unit};
use serde::Serialize;

use quorumlock_core::consensus::telemetry::Recorded;
use quorumlock_core::consensus::ApplyObserver;
use quorumlock_core::consensus::NodeId;
use quorumlock_core::lock::{Applied, Command, Event, LockError, Outcome, SessionId};

/// Events the status page keeps.
pub const RECENT_EVENTS_MAX: usize = 50;

/// Buckets of waits and holds: 1 ms to about 9 minutes, doubling.
fn lock_buckets() -> impl Iterator<Item = f64> {
    exponential_buckets(0.001, 2.0, 20)
}

/// How a hold ended.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EndedLabel {
    /// `released` (by its holder), `expired` (the holder's session expired:
    /// the lock was lost) or `closed` (the holder closed its session).
    pub ended: &'static str,
}

/// Something the status page lists.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RecentEvent {
    /// When this node saw it, in milliseconds since the Unix epoch.
    pub at_unix_ms: u64,
    /// `leader` or `expired`.
    pub kind: &'static str,
    /// What happened, in words.
    pub detail: String,
}

impl RecentEvent {
    fn now(kind: &'static str, detail: String) -> RecentEvent {
        let at_unix_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |since| since.as_millis() as u64);
        RecentEvent {
            at_unix_ms,
            kind,
            detail,
        }
    }

    /// Node `leader` became the leader this node knows, in `term`.
    pub fn leader(leader: NodeId, term: u64) -> RecentEvent {
        RecentEvent::now("leader", format!("node {leader} leads (term {term})"))
    }
}

/// The last [`RECENT_EVENTS_MAX`] events, oldest first.
#[derive(Debug, Default)]
pub struct Recent {
    events: Mutex<VecDeque<RecentEvent>>,
}

impl Recent {
    /// Adds an event, forgetting the oldest beyond the bound.
    pub fn push(&self, event: RecentEvent) {
        let mut events = self.events.lock();
        if events.len() == RECENT_EVENTS_MAX {
            events.pop_front();
        }
        events.push_back(event);
    }

    /// The events kept, oldest first.
    pub fn list(&self) -> Vec<RecentEvent> {
        self.events.lock().iter().cloned().collect()
    }
}

/// When each current hold and wait began on this replica's clock.
#[derive(Debug, Default)]
struct Timing {
    /// By lock and holder: a lock held shared has several holds.
    held_since: HashMap<(String, SessionId), Instant>,
    waiting_since: HashMap<SessionId, HashMap<String, Instant>>,
}

impl Timing {
    /// Ends `session`'s wait for `lock`, returning when it began, and
    /// forgets a session left waiting for nothing.
    fn stop_waiting(&mut self, session: SessionId, lock: &str) -> Option<Instant> {
        let waits = self.waiting_since.get_mut(&session)?;
        let since = waits.remove(lock);
        if waits.is_empty() {
            self.waiting_since.remove(&session);
        }
        since
    }
}

/// Times waits and holds as commands are applied.
#[derive(Debug)]
pub struct LockObserver {
    wait: Recorded,
    hold: Family<EndedLabel, Histogram>,
    applied: Counter,
    fence_refused: Counter,
    timing: Mutex<Timing>,
    recent: std::sync::Arc<Recent>,
}

impl LockObserver {
    /// An observer that lists expiries in `recent`.
    pub fn new(recent: std::sync::Arc<Recent>) -> LockObserver {
        let hold: Family<EndedLabel, Histogram> =
            Family::new_with_constructor(|| Histogram::new(lock_buckets()));
        for ended in ["released", "expired", "closed", "forced", "max_hold"] {
            let _ = hold.get_or_create(&EndedLabel { ended });
        }
        LockObserver {
            wait: Recorded::new(lock_buckets()),
            hold,
            applied: Counter::default(),
            fence_refused: Counter::default(),
            timing: Mutex::default(),
            recent,
        }
    }

    /// The waits, readable here for the status page's percentiles.
    pub fn waits(&self) -> &Recorded {
        &self.wait
    }

    /// The longest current wait for each of `locks` that has waiters this
    /// replica saw join; one pass over the waiting sessions.
    pub fn longest_waits<'a>(&self, locks: impl Iterator<Item = &'a str>) -> HashMap<String, Duration> {
        let wanted: std::collections::HashSet<&str> = locks.collect();
        let now = Instant::now();
        let mut longest: HashMap<String, Duration> = HashMap::new();
        for waits in self.timing.lock().waiting_since.values() {
            for (lock, since) in waits {
                if wanted.contains(lock.as_str()) {
                    let waited = now.duration_since(*since);
                    let entry = longest.entry(lock.clone()).or_default();
                    *entry = (*entry).max(waited);
                }
            }
        }
        longest
    }

    /// Fenced writes refused for a stale token since this replica started.
    pub fn fence_refused(&self) -> u64 {
        self.fence_refused.get()
    }

    /// Registers the figures.
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "fence_refused",
            "Fenced puts and deletes refused because their token was not the lock's exclusive holder's (stale, \
             or a shared hold's), counted by \
             this replica as it applied them since it started (every replica applies the same refusals; a \
             refused command changes nothing in the replicated state, so this count is not kept there)",
            self.fence_refused.clone(),
        );
        registry.register(
            "server_proposals_applied",
            "Commands this replica applied since it started (every replica)",
            self.applied.clone(),
        );
        registry.register_with_unit(
            "lock_acquire_wait",
            "Time from joining a lock's queue to its grant (0 for a lock granted at once), timed on each \
             replica as it applies",
            Unit::Seconds,
            self.wait.exported(),
        );
        registry.register_with_unit(
            "lock_hold",
            "Time from a grant to its end, by how it ended (released, expired, closed, forced), timed on each \
             replica as it applies",
            Unit::Seconds,
            self.hold.clone(),
        );
    }

    fn hold_ended(
        &self,
        timing: &mut Timing,
        lock: &str,
        holder: SessionId,
        ended: &'static str,
        now: Instant,
    ) {
        if let Some(since) = timing.held_since.remove(&(lock.to_string(), holder)) {
            self.hold
                .get_or_create(&EndedLabel { ended })
                .observe(now.duration_since(since).as_secs_f64());
        }
    }
}

impl ApplyObserver for LockObserver {
    fn applied(&self, command: &Command, applied: &Applied) {
        self.applied.inc();
        let now = Instant::now();
        let mut timing = self.timing.lock();
        let timing = &mut *timing;
        // What ended first: a release's grant to the next waiter is an event
        // of the same command.
        match (command, &applied.result) {
            (
                Command::Acquire { session, lock, .. }
                | Command::AcquireShared { session, lock, .. }
                | Command::AcquireWithTerms { session, lock, .. }
                | Command::AcquirePermits {
                    session,
                    semaphore: lock,
                    ..
                },
                Ok(Outcome::Queued { .. }),
            ) => {
                timing
                    .waiting_since
                    .entry(*session)
                    .or_default()
                    .entry(lock.clone())
                    .or_insert(now);
            }
            (Command::CancelWait { session, lock, .. }, Ok(_)) => {
                timing.stop_waiting(*session, lock);
            }
            (Command::Release { lock, session, .. }, Ok(_)) => {
                self.hold_ended(timing, lock, *session, "released", now);
            }
            (Command::ForceRelease { lock, .. }, Ok(Outcome::ForceReleased { session, .. })) => {
                self.hold_ended(timing, lock, *session, "forced", now);
            }
            (
                Command::EndHold { lock, .. },
                Ok(Outcome::HoldEnded {
                    session: Some(session),
                    ..
                }),
            ) => {
                self.hold_ended(timing, lock, *session, "max_hold", now);
                self.recent.push(RecentEvent::now(
                    "max_hold",
                    format!("session {session} held {lock} past its maximum hold; ended"),
                ));
            }
            (
                Command::Put { .. } | Command::Delete { .. },
                Err(LockError::StaleToken { .. } | LockError::WrongMode { .. }),
            ) => {
                self.fence_refused.inc();
            }
            (Command::CloseSession { session, .. }, Ok(Outcome::SessionEnded { released })) => {
                timing.waiting_since.remove(session);
                for lock in released {
                    self.hold_ended(timing, lock, *session, "closed", now);
                }
            }
            (Command::ExpireSession { session }, Ok(Outcome::SessionEnded { released })) => {
                timing.waiting_since.remove(session);
                for lock in released {
                    self.hold_ended(timing, lock, *session, "expired", now);
                }
                let detail = match released.len() {
                    0 => format!("session {session} expired"),
                    _ => format!("session {session} expired; lost {}", released.join(", ")),
                };
                self.recent.push(RecentEvent::now("expired", detail));
            }
            _ => {}
        }
        for event in &applied.events {
            if let Event::Granted(grant) = event {
                let waited = timing
                    .stop_waiting(grant.session, &grant.lock)
                    .map_or(0.0, |since| now.duration_since(since).as_secs_f64());
                self.wait.observe(waited);
                timing.held_since.insert((grant.lock.clone(), grant.session), now);
            }
        }
    }

    fn restored(&self) {
        // Holds and waits under way are not timed across a restore.
        *self.timing.lock() = Timing::default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use quorumlock_core::lock::{Credential, LockState};

    fn owner() -> Credential {
        Credential::of_secret(b"metrics tests")
    }

    #[test]
    fn waits_holds_and_expiries_are_timed_from_the_applied_commands() {
        let recent = std::sync::Arc::new(Recent::default());
        let observer = LockObserver::new(recent.clone());
        let mut state = LockState::default();
        let mut apply = |command: Command| {
            let applied = state.apply(&command);
            observer.applied(&command, &applied);
            applied
        };
        let open = Command::OpenSession {
            ttl_ms: 10_000,
            owner: owner(),
        };
        let first = match apply(open.clone()).result {
            Ok(Outcome::SessionOpened { session, .. }) => session,
            other => panic!("{other:?}"),
        };
        let second = match apply(open).result {
            Ok(Outcome::SessionOpened { session, .. }) => session,
            other => panic!("{other:?}"),
        };
        let acquire = |session, wait| Command::Acquire {
            session,
            lock: "job".into(),
            wait,
            by: owner(),
        };
        apply(acquire(first, false));
        apply(acquire(second, true));
        assert_eq!(observer.timing.lock().waiting_since.len(), 1);
        apply(Command::ExpireSession { session: first });
        let timing = observer.timing.lock();
        assert!(timing.waiting_since.is_empty(), "the waiter was granted");
        assert!(
            timing.held_since.contains_key(&("job".to_string(), second)),
            "and holds the lock"
        );
        drop(timing);
        assert_eq!(observer.wait.counts().iter().sum::<u64>(), 2, "two grants timed");
        let events = recent.list();
        assert_eq!(events.len(), 1);
        assert_eq!(events[0].kind, "expired");
        assert!(events[0].detail.contains("lost job"), "{:?}", events[0]);
        assert_eq!(observer.applied.get(), 5);
        let mut text = String::new();
        let mut registry = Registry::default();
        observer.register(&mut registry);
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        assert!(
            text.contains("lock_hold_seconds_count{ended=\"expired\"} 1"),
            "{text}"
        );
    }
}
