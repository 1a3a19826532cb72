//! The leader's lease keeper: answers keepalives from memory and drives
//! expiry and checkpoints through the log.
//!
//! Only the leader keeps leases, and only after it has confirmed its
//! leadership and caught up with the log (a read barrier); a follower refuses
//! keepalives so that the client moves to the leader. Expiry is a proposed
//! `ExpireSession` command: the state machine never looks at time.

use std::sync::Arc;
use std::time::Duration;

use super::clock::Clock;
use super::lease::{LeaseTracker, RenewRefused};
use crate::consensus::{ConsensusEngine, EngineError};
use crate::lock::limits::CHECKPOINT_ENTRIES_MAX;
use crate::lock::{Command, LockError, SessionId};
use parking_lot::Mutex;

/// Most `ExpireSession` proposals started per tick.
pub const EXPIRIES_PER_TICK_MAX: usize = 1_000;

/// Settings of the lease keeper.
#[derive(Debug, Clone)]
pub struct LeaseConfig {
    /// How often deadlines are examined.
    pub tick: Duration,
    /// How often checkpoints are considered.
    pub checkpoint_interval: Duration,
    /// Extra time every lease gets at a takeover: one election timeout.
    pub takeover_grace: Duration,
    /// Longest wait for one proposal or read barrier of the keeper.
    pub proposal_timeout: Duration,
}

/// Why a keepalive was not answered with a renewal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RenewError {
    /// This node does not keep leases now (not leader, or still taking over).
    NotLeader,
    /// The session does not exist or its lease already ran out.
    NotFound,
}

struct Active {
    term: u64,
    tracker: LeaseTracker,
}

/// Shared between the keepalive handlers and the driver task.
pub struct Leases {
    engine: Arc<dyn ConsensusEngine>,
    clock: Arc<dyn Clock>,
    config: LeaseConfig,
    active: Mutex<Option<Active>>,
}

impl Leases {
    /// Creates the keeper; call [`Leases::run`] to drive it.
    pub fn new(engine: Arc<dyn ConsensusEngine>, clock: Arc<dyn Clock>, config: LeaseConfig) -> Arc<Self> {
        Arc::new(Leases {
            engine,
            clock,
            config,
            active: Mutex::new(None),
        })
    }

    /// Renews a session's lease; returns its TTL.
    pub fn renew(&self, session: SessionId) -> Result<Duration, RenewError> {
        let now = self.clock.now();
        let mut active = self.active.lock();
        let active = active.as_mut().ok_or(RenewError::NotLeader)?;
        match active.tracker.renew(session, now) {
            Ok(ttl) => Ok(ttl),
            Err(RenewRefused::Expired) => Err(RenewError::NotFound),
            Err(RenewRefused::Unknown) => {
                // Opened by a command this tracker has not seen yet.
                let ttl_ms = self
                    .engine
                    .state()
                    .read(|state| state.session(session).map(|s| s.ttl_ms))
                    .ok_or(RenewError::NotFound)?;
                let ttl = Duration::from_millis(ttl_ms);
                active.tracker.track(session, ttl, now);
                Ok(ttl)
            }
        }
    }

    /// Starts tracking a session just opened through this node.
    pub fn opened(&self, session: SessionId, ttl: Duration) {
        let now = self.clock.now();
        if let Some(active) = self.active.lock().as_mut() {
            active.tracker.track(session, ttl, now);
        }
    }

    /// Stops tracking a session that was closed.
    pub fn closed(&self, session: SessionId) {
        if let Some(active) = self.active.lock().as_mut() {
            active.tracker.forget(session);
        }
    }

    /// Drives takeovers, expiries and checkpoints until the engine's
    /// leadership channel closes.
    pub async fn run(self: Arc<Self>) {
        let mut leadership = self.engine.leadership();
        let mut tick = tokio::time::interval(self.config.tick);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_checkpoint = self.clock.now();
        loop {
            tokio::select! {
                changed = leadership.changed() => {
                    if changed.is_err() {
                        return;
                    }
                }
                _ = tick.tick() => {}
            }
            let view = leadership.borrow().clone();
            if !view.is_self {
                if self.active.lock().take().is_some() {
                    tracing::info!(
                        term = view.term,
                        "lost leadership; leases are no longer kept here"
                    );
                }
                continue;
            }
            let current = self.active.lock().as_ref().map(|active| active.term);
            if current != Some(view.term) {
                self.take_over(view.term).await;
                continue;
            }
            self.expire_due().await;
            let now = self.clock.now();
            if now.duration_since(last_checkpoint) >= self.config.checkpoint_interval {
                last_checkpoint = now;
                self.checkpoint().await;
            }
        }
    }

    async fn take_over(&self, term: u64) {
        // Catch up with everything committed before leases are judged.
        let barrier = tokio::time::timeout(self.config.proposal_timeout, self.engine.read_barrier());
        if let Err(error) = barrier.await.unwrap_or_else(|_| Err(timed_out())) {
            tracing::debug!(%error, "takeover waits for a read barrier");
            return;
        }
        let now = self.clock.now();
        let (tracker, charges) = self
            .engine
            .state()
            .read(|state| LeaseTracker::take_over(now, self.config.takeover_grace, state.sessions()));
        tracing::info!(term, sessions = tracker.len(), "took over session leases");
        *self.active.lock() = Some(Active { term, tracker });
        for chunk in charges.chunks(CHECKPOINT_ENTRIES_MAX) {
            let command = Command::CheckpointSessions {
                remaining: chunk.to_vec(),
            };
            if let Err(error) = self.propose(command).await {
                log_engine_error("takeover lease charge", &error);
                return;
            }
        }
    }

    async fn expire_due(&self) {
        let now = self.clock.now();
        let due = match self.active.lock().as_mut() {
            Some(active) => active.tracker.take_expired(now, EXPIRIES_PER_TICK_MAX),
            None => return,
        };
        let proposals = due.into_iter().map(|session| async move {
            let result = self.propose(Command::ExpireSession { session }).await;
            (session, result)
        });
        for (session, result) in futures::future::join_all(proposals).await {
            let mut active = self.active.lock();
            let Some(active) = active.as_mut() else { return };
            match result {
                Ok(Ok(_)) => {
                    tracing::info!(session, "session expired");
                    active.tracker.forget(session);
                }
                Ok(Err(LockError::SessionNotFound { .. })) => active.tracker.forget(session),
                Ok(Err(error)) => {
                    tracing::error!(session, %error, "expiry refused");
                    active.tracker.forget(session);
                }
                Err(error) => {
                    log_engine_error("expiry", &error);
                    active.tracker.retry_expiry(session);
                }
            }
        }
    }

    async fn checkpoint(&self) {
        let now = self.clock.now();
        let entries = match self.active.lock().as_mut() {
            Some(active) => active.tracker.take_checkpoints(now, CHECKPOINT_ENTRIES_MAX),
            None => return,
        };
        if entries.is_empty() {
            return;
        }
        if let Err(error) = self
            .propose(Command::CheckpointSessions { remaining: entries })
            .await
        {
            log_engine_error("lease checkpoint", &error);
        }
    }
}

impl Leases {
    async fn propose(&self, command: Command) -> Result<crate::consensus::CommandResult, EngineError> {
        tokio::time::timeout(self.config.proposal_timeout, self.engine.propose(command))
            .await
            .unwrap_or_else(|_| Err(timed_out()))
    }
}

fn timed_out() -> EngineError {
    EngineError::Unavailable("lease keeper proposal timed out".to_string())
}

fn log_engine_error(what: &str, error: &EngineError) {
    match error {
        EngineError::NotLeader { .. } | EngineError::ShuttingDown => {
            tracing::debug!(%error, "{what} not proposed")
        }
        _ => tracing::warn!(%error, "{what} not proposed"),
    }
}
