//! The lease driver: runs this node's [`LeaseKeeper`] against its engine.
//!
//! It ticks the keeper on an interval and at every leadership change, and
//! carries out what the keeper asks — the read barrier before a takeover,
//! `ExpireSession` and `CheckpointSessions` proposals — reporting each
//! outcome back. Keepalive handlers renew leases through
//! [`LeaseDriver::renew`], answered from the keeper's memory. On the same
//! ticks it times grants' maximum hold times and lock-delays
//! ([`HoldTimers`]) and proposes their ends.

use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use quorumlock_core::consensus::{CommandResult, ConsensusEngine, EngineError};
use quorumlock_core::lease::{
    HoldTimers, KeeperAction, KeeperConfig, LeaseKeeper, LeaseTracker, ProposalPurpose, RenewError,
};
use quorumlock_core::lock::{Command, SessionId};
use quorumlock_core::time::Clock;

/// Settings of the lease driver.
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

/// Shared between the keepalive handlers and the driver task.
pub struct LeaseDriver {
    engine: Arc<dyn ConsensusEngine>,
    clock: Arc<dyn Clock>,
    config: LeaseConfig,
    keeper: Mutex<LeaseKeeper>,
    holds: Mutex<HoldTimers>,
}

impl LeaseDriver {
    /// Creates the driver; call [`LeaseDriver::run`] to drive it.
    pub fn new(engine: Arc<dyn ConsensusEngine>, clock: Arc<dyn Clock>, config: LeaseConfig) -> Arc<Self> {
        let keeper = LeaseKeeper::new(KeeperConfig {
            checkpoint_interval: config.checkpoint_interval,
            takeover_grace: config.takeover_grace,
        });
        Arc::new(LeaseDriver {
            engine,
            clock,
            config,
            keeper: Mutex::new(keeper),
            holds: Mutex::new(HoldTimers::new()),
        })
    }

    /// Renews a session's lease; returns its TTL.
    pub fn renew(&self, session: SessionId) -> Result<Duration, RenewError> {
        let now = self.clock.now();
        let state = self.engine.state();
        // Lock order: the keeper, then the applied state (as at a takeover).
        self.keeper.lock().renew(session, now, || {
            state.read(|state| state.session(session).map(|session| session.ttl_ms))
        })
    }

    /// Starts tracking a session just opened through this node.
    pub fn opened(&self, session: SessionId, ttl: Duration) {
        let now = self.clock.now();
        self.keeper.lock().opened(session, ttl, now);
    }

    /// Stops tracking a session that was closed.
    pub fn closed(&self, session: SessionId) {
        self.keeper.lock().closed(session);
    }

    /// About how much of the lock-delay of `lock` is left, if this node
    /// leads and times one.
    pub fn delay_left(&self, lock: &str) -> Option<Duration> {
        let now = self.clock.now();
        self.holds.lock().delay_left(lock, now)
    }

    /// Drives takeovers, expiries, checkpoints and the ends of holds and
    /// lock-delays until the engine's leadership channel closes.
    pub async fn run(self: Arc<Self>) {
        let mut leadership = self.engine.leadership();
        let mut tick = tokio::time::interval(self.config.tick);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
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
            let actions = self.keeper.lock().tick(&view, self.clock.now());
            self.carry_out(actions).await;
            self.end_holds().await;
        }
    }

    /// Times the holds and lock-delays the applied state has, while this
    /// node leads, and proposes the ends that are due, all at once.
    async fn end_holds(&self) {
        let view = self.engine.leadership().borrow().clone();
        let leading = view.is_self.then_some(view.term);
        let timed = match leading {
            Some(_) => self.engine.state().read(|state| state.timed()),
            None => Vec::new(),
        };
        let ends = self.holds.lock().tick(leading, self.clock.now(), timed);
        let proposals = ends.into_iter().map(|command| async move {
            let what = format!("{command:?}");
            match self.propose(command).await {
                Ok(_) => tracing::debug!(command = %what, "ended a hold or lock-delay"),
                Err(
                    error @ (EngineError::NotLeader { .. }
                    | EngineError::QuorumSilent { .. }
                    | EngineError::ShuttingDown),
                ) => {
                    tracing::debug!(%error, command = %what, "end of a hold or lock-delay not ordered")
                }
                Err(error) => {
                    tracing::warn!(%error, command = %what, "end of a hold or lock-delay not ordered; retried")
                }
            }
        });
        futures::future::join_all(proposals).await;
    }

    /// Carries out the keeper's actions of one tick: a takeover's barrier
    /// and then its charges in order (stopping at the first that fails: the
    /// next takeover charges again), and the expiries all at once.
    async fn carry_out(&self, actions: Vec<KeeperAction>) {
        let mut expiries = Vec::new();
        for action in actions {
            match action {
                KeeperAction::ReadBarrier { term } => {
                    let charges = self.take_over(term).await;
                    for (command, purpose) in charges {
                        if !self.propose_and_report(command, purpose).await {
                            break;
                        }
                    }
                }
                KeeperAction::Propose {
                    command,
                    purpose: purpose @ ProposalPurpose::Expire(_),
                } => expiries.push(self.propose_and_report(command, purpose)),
                KeeperAction::Propose { command, purpose } => {
                    self.propose_and_report(command, purpose).await;
                }
            }
        }
        futures::future::join_all(expiries).await;
    }

    /// Waits for the takeover's read barrier and installs the new lease
    /// table; returns the charges to propose.
    async fn take_over(&self, term: u64) -> Vec<(Command, ProposalPurpose)> {
        let barrier = tokio::time::timeout(self.config.proposal_timeout, self.engine.read_barrier());
        if let Err(error) = barrier.await.unwrap_or_else(|_| Err(timed_out())) {
            tracing::debug!(%error, "takeover waits for a read barrier");
            self.keeper.lock().barrier_failed(term);
            return Vec::new();
        }
        // The table is built without holding the keeper, which keepalive
        // handlers need meanwhile (it is a pass over every session).
        let now = self.clock.now();
        let grace = self.keeper.lock().takeover_grace();
        let taken = self
            .engine
            .state()
            .read(|state| LeaseTracker::take_over(now, grace, state.sessions()));
        // Leadership may have moved on while the barrier ran.
        let view = self.engine.leadership().borrow().clone();
        let actions = self.keeper.lock().install(term, &view, now, taken);
        actions
            .into_iter()
            .filter_map(|action| match action {
                KeeperAction::Propose { command, purpose } => Some((command, purpose)),
                KeeperAction::ReadBarrier { .. } => None,
            })
            .collect()
    }

    /// Proposes one of the keeper's commands and reports the outcome;
    /// returns whether it was ordered.
    async fn propose_and_report(&self, command: Command, purpose: ProposalPurpose) -> bool {
        let outcome = self.propose(command).await;
        if let Err(error) = &outcome {
            log_engine_error(purpose, error);
        }
        self.keeper.lock().proposal_done(purpose, outcome.as_ref().ok());
        outcome.is_ok()
    }

    async fn propose(&self, command: Command) -> Result<CommandResult, EngineError> {
        tokio::time::timeout(self.config.proposal_timeout, self.engine.propose(command))
            .await
            .unwrap_or_else(|_| Err(timed_out()))
    }
}

fn timed_out() -> EngineError {
    EngineError::Unavailable("lease keeper proposal timed out".to_string())
}

fn log_engine_error(purpose: ProposalPurpose, error: &EngineError) {
    match error {
        EngineError::NotLeader { .. } | EngineError::QuorumSilent { .. } | EngineError::ShuttingDown => {
            tracing::debug!(%error, ?purpose, "lease keeper proposal not ordered")
        }
        _ => tracing::warn!(%error, ?purpose, "lease keeper proposal not ordered"),
    }
}
