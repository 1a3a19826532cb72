//! The leader's lease keeper as a state machine: the driver reports
//! leadership, time, read barriers and proposal outcomes; the keeper answers
//! with what to do next.
//!
//! A driver calls [`LeaseKeeper::tick`] on every tick and leadership change
//! and carries out the [`KeeperAction`]s it returns: a read barrier before a
//! takeover (reported back with [`LeaseKeeper::barrier_passed`] or
//! [`LeaseKeeper::barrier_failed`]), and proposals of `ExpireSession` and
//! `CheckpointSessions` (reported back with [`LeaseKeeper::proposal_done`]).
//! Keepalives are answered by [`LeaseKeeper::renew`] from memory.

use std::time::{Duration, Instant};

use super::tracker::{LeaseTracker, RenewRefused};
use crate::consensus::{CommandResult, Leadership};
use crate::lock::limits::CHECKPOINT_ENTRIES_MAX;
use crate::lock::{Command, LockError, Session, SessionId};

/// Most `ExpireSession` proposals started per tick.
pub const EXPIRIES_PER_TICK_MAX: usize = 1_000;

/// Settings of the lease keeper.
#[derive(Debug, Clone)]
pub struct KeeperConfig {
    /// How often checkpoints are considered.
    pub checkpoint_interval: Duration,
    /// Extra time every lease gets at a takeover: one maximal election
    /// timeout, so a failover does not expire a live client.
    pub takeover_grace: Duration,
}

/// Why a keepalive was not answered with a renewal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RenewError {
    /// This node does not keep leases now (not leader, or still taking over).
    NotLeader,
    /// The session does not exist or its lease already ran out.
    NotFound,
}

/// What a proposal of the keeper was for, so its outcome can be reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProposalPurpose {
    /// The expiry of a session whose lease ran out.
    Expire(SessionId),
    /// A checkpoint of decayed or renewed budgets.
    Checkpoint,
    /// The charge a takeover in this term makes against every budget.
    TakeoverCharge {
        /// The term of the takeover.
        term: u64,
    },
}

/// Something the keeper asks its driver to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeeperAction {
    /// Confirm leadership and catch up with the log (a read barrier), then
    /// report [`LeaseKeeper::barrier_passed`] or
    /// [`LeaseKeeper::barrier_failed`] for `term`.
    ReadBarrier {
        /// The term the takeover is for.
        term: u64,
    },
    /// Propose `command`, then report its outcome with
    /// [`LeaseKeeper::proposal_done`]. A driver may stop proposing the rest
    /// of a takeover's charges after one fails: the next takeover charges
    /// again.
    Propose {
        /// The command.
        command: Command,
        /// What it is for.
        purpose: ProposalPurpose,
    },
}

#[derive(Debug)]
struct Active {
    term: u64,
    tracker: LeaseTracker,
}

/// The lease keeper of one node.
#[derive(Debug)]
pub struct LeaseKeeper {
    config: KeeperConfig,
    active: Option<Active>,
    /// The term whose takeover waits for a read barrier.
    barrier: Option<u64>,
    last_checkpoint: Option<Instant>,
}

impl LeaseKeeper {
    /// A keeper that keeps no leases until its node leads.
    pub fn new(config: KeeperConfig) -> LeaseKeeper {
        LeaseKeeper {
            config,
            active: None,
            barrier: None,
            last_checkpoint: None,
        }
    }

    /// The term whose leases this keeper keeps, if it keeps any.
    pub fn active_term(&self) -> Option<u64> {
        self.active.as_ref().map(|active| active.term)
    }

    /// Number of leases kept.
    pub fn len(&self) -> usize {
        self.active.as_ref().map_or(0, |active| active.tracker.len())
    }

    /// Whether no leases are kept.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Leadership and time as they are now: takes over, gives up, or finds
    /// the expiries and checkpoints that are due.
    pub fn tick(&mut self, view: &Leadership, now: Instant) -> Vec<KeeperAction> {
        if !view.is_self {
            self.barrier = None;
            if self.active.take().is_some() {
                tracing::info!(
                    term = view.term,
                    "lost leadership; leases are no longer kept here"
                );
            }
            return Vec::new();
        }
        let active = match self.active.as_mut() {
            Some(active) if active.term == view.term => active,
            _ => {
                // A new term: leases are judged only on a state that includes
                // everything committed before, so a barrier comes first.
                self.active = None;
                if self.barrier == Some(view.term) {
                    return Vec::new();
                }
                self.barrier = Some(view.term);
                return vec![KeeperAction::ReadBarrier { term: view.term }];
            }
        };
        let mut actions: Vec<KeeperAction> = active
            .tracker
            .take_expired(now, EXPIRIES_PER_TICK_MAX)
            .into_iter()
            .map(|session| KeeperAction::Propose {
                command: Command::ExpireSession { session },
                purpose: ProposalPurpose::Expire(session),
            })
            .collect();
        let checkpoint_due = self
            .last_checkpoint
            .is_none_or(|last| now.saturating_duration_since(last) >= self.config.checkpoint_interval);
        if checkpoint_due {
            self.last_checkpoint = Some(now);
            let remaining = active.tracker.take_checkpoints(now, CHECKPOINT_ENTRIES_MAX);
            if !remaining.is_empty() {
                actions.push(KeeperAction::Propose {
                    command: Command::CheckpointSessions { remaining },
                    purpose: ProposalPurpose::Checkpoint,
                });
            }
        }
        actions
    }

    /// The read barrier for the takeover in `term` passed; `sessions` are
    /// those of the applied state now. Starts keeping leases (if this node
    /// still leads in `term`) and returns the proposals that charge the
    /// takeover against every budget.
    pub fn barrier_passed<'a>(
        &mut self,
        term: u64,
        view: &Leadership,
        now: Instant,
        sessions: impl IntoIterator<Item = (SessionId, &'a Session)>,
    ) -> Vec<KeeperAction> {
        if !self.takes_over(term, view) {
            self.barrier_failed(term);
            return Vec::new();
        }
        let taken = LeaseTracker::take_over(now, self.config.takeover_grace, sessions);
        self.install(term, view, now, taken)
    }

    /// Whether a barrier for `term` that passed now would start a takeover.
    pub fn takes_over(&self, term: u64, view: &Leadership) -> bool {
        self.barrier == Some(term) && view.is_self && view.term == term
    }

    /// The takeover grace leases get (for a driver that builds the tracker
    /// itself, see [`LeaseKeeper::install`]).
    pub fn takeover_grace(&self) -> Duration {
        self.config.takeover_grace
    }

    /// Like [`LeaseKeeper::barrier_passed`], with the tracker and its
    /// charges already built by [`LeaseTracker::take_over`]: a driver that
    /// shares the keeper with keepalive handlers builds it (a pass over every
    /// session) without holding the keeper.
    pub fn install(
        &mut self,
        term: u64,
        view: &Leadership,
        now: Instant,
        (tracker, charges): (LeaseTracker, Vec<(SessionId, u64)>),
    ) -> Vec<KeeperAction> {
        if !self.takes_over(term, view) {
            self.barrier_failed(term);
            return Vec::new();
        }
        self.barrier = None;
        tracing::info!(term, sessions = tracker.len(), "took over session leases");
        self.active = Some(Active { term, tracker });
        self.last_checkpoint = Some(now);
        charges
            .chunks(CHECKPOINT_ENTRIES_MAX)
            .map(|chunk| KeeperAction::Propose {
                command: Command::CheckpointSessions {
                    remaining: chunk.to_vec(),
                },
                purpose: ProposalPurpose::TakeoverCharge { term },
            })
            .collect()
    }

    /// The read barrier for `term` failed or timed out: the next tick asks
    /// for another while this node still leads.
    pub fn barrier_failed(&mut self, term: u64) {
        if self.barrier == Some(term) {
            self.barrier = None;
        }
    }

    /// The outcome of a proposal: the state machine's answer, or `None` when
    /// the engine could not order it (it may still be applied later).
    pub fn proposal_done(&mut self, purpose: ProposalPurpose, outcome: Option<&CommandResult>) {
        let ProposalPurpose::Expire(session) = purpose else {
            return;
        };
        let Some(active) = self.active.as_mut() else {
            return;
        };
        match outcome {
            Some(Ok(_)) => {
                tracing::info!(%session, "session expired");
                active.tracker.forget(session);
            }
            Some(Err(LockError::SessionNotFound { .. })) => active.tracker.forget(session),
            Some(Err(error)) => {
                tracing::error!(%session, %error, "expiry refused");
                active.tracker.forget(session);
            }
            None => active.tracker.retry_expiry(session),
        }
    }

    /// Renews a session's lease; returns its TTL. `ttl_ms` looks the
    /// session up in the applied state, for one opened by a command this
    /// keeper has not seen.
    pub fn renew(
        &mut self,
        session: SessionId,
        now: Instant,
        ttl_ms: impl FnOnce() -> Option<u64>,
    ) -> Result<Duration, RenewError> {
        let active = self.active.as_mut().ok_or(RenewError::NotLeader)?;
        match active.tracker.renew(session, now) {
            Ok(ttl) => Ok(ttl),
            Err(RenewRefused::Expired) => Err(RenewError::NotFound),
            Err(RenewRefused::Unknown) => {
                let ttl = Duration::from_millis(ttl_ms().ok_or(RenewError::NotFound)?);
                active.tracker.track(session, ttl, now);
                Ok(ttl)
            }
        }
    }

    /// Starts tracking a session just opened through this node.
    pub fn opened(&mut self, session: SessionId, ttl: Duration, now: Instant) {
        if let Some(active) = self.active.as_mut() {
            active.tracker.track(session, ttl, now);
        }
    }

    /// Stops tracking a session that was closed.
    pub fn closed(&mut self, session: SessionId) {
        if let Some(active) = self.active.as_mut() {
            active.tracker.forget(session);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;
    use crate::consensus::{LeaderInfo, NodeId};

    fn leading(term: u64) -> Leadership {
        Leadership {
            term,
            leader: Some(LeaderInfo {
                id: NodeId::new(1),
                addr: "127.0.0.1:7001".to_string(),
            }),
            is_self: true,
        }
    }

    fn keeper() -> LeaseKeeper {
        LeaseKeeper::new(KeeperConfig {
            checkpoint_interval: Duration::from_millis(500),
            takeover_grace: Duration::from_millis(300),
        })
    }

    fn session(ttl_ms: u64) -> Session {
        Session {
            owner: crate::lock::Credential::of_secret(b"a lease test's session"),
            ttl_ms,
            checkpoint_remaining_ms: None,
            held: BTreeSet::new(),
            waiting: BTreeSet::new(),
        }
    }

    #[test]
    fn leases_are_kept_only_after_a_barrier_in_the_current_term() {
        let mut keeper = keeper();
        let now = Instant::now();
        let view = leading(3);
        assert_eq!(
            keeper.tick(&view, now),
            vec![KeeperAction::ReadBarrier { term: 3 }]
        );
        assert!(keeper.tick(&view, now).is_empty(), "one barrier at a time");
        assert_eq!(
            keeper.renew(SessionId::new(1), now, || Some(1_000)),
            Err(RenewError::NotLeader)
        );
        let sessions = [(SessionId::new(1), session(4_000))];
        let charges = keeper.barrier_passed(3, &view, now, sessions.iter().map(|(id, s)| (*id, s)));
        assert_eq!(
            charges,
            vec![KeeperAction::Propose {
                command: Command::CheckpointSessions {
                    remaining: vec![(SessionId::new(1), 3_000)]
                },
                purpose: ProposalPurpose::TakeoverCharge { term: 3 },
            }]
        );
        assert_eq!(keeper.active_term(), Some(3));
        assert_eq!(
            keeper.renew(SessionId::new(1), now, || None),
            Ok(Duration::from_millis(4_000))
        );
    }

    #[test]
    fn a_barrier_from_an_older_term_or_after_losing_leadership_takes_nothing_over() {
        let mut keeper = keeper();
        let now = Instant::now();
        keeper.tick(&leading(3), now);
        let later = leading(4);
        assert!(keeper
            .barrier_passed(3, &later, now, std::iter::empty())
            .is_empty());
        assert_eq!(keeper.active_term(), None);
        assert_eq!(
            keeper.tick(&later, now),
            vec![KeeperAction::ReadBarrier { term: 4 }]
        );
        keeper.barrier_failed(4);
        assert_eq!(
            keeper.tick(&later, now),
            vec![KeeperAction::ReadBarrier { term: 4 }],
            "a failed barrier is asked for again"
        );
        let follower = Leadership {
            is_self: false,
            ..later.clone()
        };
        assert!(keeper.tick(&follower, now).is_empty());
        assert!(keeper
            .barrier_passed(4, &later, now, std::iter::empty())
            .is_empty());
        assert_eq!(keeper.active_term(), None);
    }

    #[test]
    fn a_silent_session_is_expired_through_a_proposal_retried_until_it_is_ordered() {
        let mut keeper = keeper();
        let start = Instant::now();
        let view = leading(1);
        keeper.tick(&view, start);
        keeper.barrier_passed(1, &view, start, std::iter::empty());
        keeper.opened(SessionId::new(9), Duration::from_secs(1), start);
        let expire = KeeperAction::Propose {
            command: Command::ExpireSession {
                session: SessionId::new(9),
            },
            purpose: ProposalPurpose::Expire(SessionId::new(9)),
        };
        let late = start + Duration::from_millis(1_200);
        assert!(keeper.tick(&view, late).contains(&expire));
        assert!(
            !keeper.tick(&view, late).contains(&expire),
            "one expiry in flight"
        );
        keeper.proposal_done(ProposalPurpose::Expire(SessionId::new(9)), None);
        assert!(
            keeper.tick(&view, late).contains(&expire),
            "retried after a failure"
        );
        keeper.proposal_done(
            ProposalPurpose::Expire(SessionId::new(9)),
            Some(&Ok(crate::lock::Outcome::SessionEnded { released: vec![] })),
        );
        assert!(keeper.is_empty());
        assert_eq!(
            keeper.renew(SessionId::new(9), late, || None),
            Err(RenewError::NotFound)
        );
    }
}
