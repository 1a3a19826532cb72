//! Proposals as the node's services make them: an engine wrapper that
//! counts what it orders, what waits, and what fails and why.

use std::sync::Arc;

use async_trait::async_trait;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio::sync::watch;

use quorumlock_core::consensus::{
    AppliedState, CommandResult, ConsensusEngine, EngineError, EngineStatus, KnownMembership, Leadership,
    MemberState, MembershipChange,
};
use quorumlock_core::lock::Command;

/// Why a proposal failed.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FailedLabel {
    /// `not_leader`, `unavailable`, `overloaded`, `stopping`, `removed`,
    /// `fatal`, `abandoned` (the caller stopped waiting: its deadline
    /// passed) or `other`.
    pub reason: &'static str,
}

/// Every reason a proposal can fail for, so that each series exists (at 0)
/// from the start.
const FAILED_REASONS: [&str; 8] = [
    "not_leader",
    "unavailable",
    "overloaded",
    "stopping",
    "removed",
    "fatal",
    "abandoned",
    "other",
];

/// Counts of the proposals made through one node's engine.
#[derive(Debug)]
pub struct ProposalMetrics {
    committed: Counter,
    pending: Gauge,
    failed: Family<FailedLabel, Counter>,
}

impl Default for ProposalMetrics {
    fn default() -> Self {
        let failed = Family::default();
        for reason in FAILED_REASONS {
            let _ = failed.get_or_create(&FailedLabel { reason });
        }
        ProposalMetrics {
            committed: Counter::default(),
            pending: Gauge::default(),
            failed,
        }
    }
}

impl ProposalMetrics {
    /// Registers the proposal figures.
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "server_proposals_committed",
            "Commands this node proposed that were committed and applied (leader only: followers forward)",
            self.committed.clone(),
        );
        registry.register(
            "server_proposals_pending",
            "Commands this node proposed that wait to be committed (leader only)",
            self.pending.clone(),
        );
        registry.register(
            "server_proposals_failed",
            "Commands this node proposed that were not committed, by reason (leader only)",
            self.failed.clone(),
        );
    }

    fn failed(&self, reason: &'static str) {
        self.failed.get_or_create(&FailedLabel { reason }).inc();
    }
}

/// The reason label of an engine error.
fn reason_of(error: &EngineError) -> &'static str {
    match error {
        EngineError::NotLeader { .. } | EngineError::QuorumSilent { .. } => "not_leader",
        EngineError::Unavailable(_) => "unavailable",
        EngineError::Overloaded { .. } => "overloaded",
        EngineError::ShuttingDown => "stopping",
        EngineError::Removed(_) => "removed",
        EngineError::Fatal(_) => "fatal",
        EngineError::MembershipRefused(_) | EngineError::Unsupported(_) => "other",
    }
}

/// Marks one proposal pending until it ends; one dropped before its
/// answer (its caller's deadline passed) counts as abandoned.
struct Pending<'a> {
    metrics: &'a ProposalMetrics,
    answered: bool,
}

impl Drop for Pending<'_> {
    fn drop(&mut self) {
        self.metrics.pending.dec();
        if !self.answered {
            self.metrics.failed("abandoned");
        }
    }
}

/// An engine whose proposals are counted; everything else passes through.
pub struct MeteredEngine {
    inner: Arc<dyn ConsensusEngine>,
    metrics: Arc<ProposalMetrics>,
}

impl MeteredEngine {
    /// Counts `inner`'s proposals in `metrics`.
    pub fn wrap(inner: Arc<dyn ConsensusEngine>, metrics: Arc<ProposalMetrics>) -> Arc<dyn ConsensusEngine> {
        Arc::new(MeteredEngine { inner, metrics })
    }
}

#[async_trait]
impl ConsensusEngine for MeteredEngine {
    async fn propose(&self, command: Command) -> Result<CommandResult, EngineError> {
        self.metrics.pending.inc();
        let mut pending = Pending {
            metrics: &self.metrics,
            answered: false,
        };
        let result = self.inner.propose(command).await;
        pending.answered = true;
        match &result {
            Ok(_) => {
                self.metrics.committed.inc();
            }
            Err(error) => self.metrics.failed(reason_of(error)),
        }
        result
    }

    async fn read_barrier(&self) -> Result<(), EngineError> {
        self.inner.read_barrier().await
    }

    fn state(&self) -> &Arc<AppliedState> {
        self.inner.state()
    }

    fn leadership(&self) -> watch::Receiver<Leadership> {
        self.inner.leadership()
    }

    fn failed(&self) -> watch::Receiver<Option<String>> {
        self.inner.failed()
    }

    fn removed(&self) -> Option<String> {
        self.inner.removed()
    }

    fn status(&self) -> EngineStatus {
        self.inner.status()
    }

    fn members(&self) -> Vec<MemberState> {
        self.inner.members()
    }

    fn known_membership(&self) -> watch::Receiver<KnownMembership> {
        self.inner.known_membership()
    }

    fn membership_in_transition(&self) -> bool {
        self.inner.membership_in_transition()
    }

    async fn change_membership(&self, change: MembershipChange) -> Result<(), EngineError> {
        self.inner.change_membership(change).await
    }

    async fn shutdown(&self) -> Result<(), EngineError> {
        self.inner.shutdown().await
    }
}
