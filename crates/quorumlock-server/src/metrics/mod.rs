//! What a node tells Prometheus and its operators: the metrics registry,
//! the figures it holds, and the listener that serves `/metrics`,
//! `/health`, the status page and its JSON (`serve --metrics-listen`).
//!
//! Figures come from four places:
//! - the replicated state: its [`Totals`] (sessions expired, locks lost,
//!   grants, ...) and what it holds now (sessions, locks, queues), read at
//!   each scrape, so counters agree on every replica at the same applied
//!   index and survive restarts;
//! - the apply path ([`LockObserver`]): how long each lock was waited for
//!   and held, timed on this replica's clock as it applies, and the stale
//!   writes it refused (a refusal changes nothing in the replicated state);
//! - the engine: leadership, proposals ([`MeteredEngine`]), fsyncs, peer
//!   round trips and snapshots ([`EngineTelemetry`]);
//! - the gRPC server ([`GrpcMetricsLayer`]).

mod engine;
mod grpc;
mod http;
mod locks;
mod series;

use std::sync::Arc;

use parking_lot::Mutex;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio::sync::watch;

pub use engine::{MeteredEngine, ProposalMetrics};
pub use grpc::{GrpcMetrics, GrpcMetricsLayer};
pub use http::{serve, HttpAccess, MetricsServer, STATUS_PATH};
pub use locks::{LockObserver, Recent, RecentEvent};
pub use series::{Point, Series, SAMPLES_KEPT, SAMPLE_EVERY};

use quorumlock_core::consensus::{
    ConsensusEngine, EngineKind, EngineStatus, EngineTelemetry, Leadership, NodeId,
};
use quorumlock_core::lock::{Queues, Totals};

/// Locks whose queue depth is exported with the lock's name as a label:
/// the deepest ones, so the number of series stays bounded whatever the
/// number of locks.
pub const QUEUES_EXPORTED_MAX: usize = 10;

/// The label of a per-lock series.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LockLabel {
    /// The lock's name.
    pub lock: String,
}

/// Counters read from the replicated state's [`Totals`].
#[derive(Debug, Default)]
struct TotalCounters {
    sessions_opened: Counter,
    sessions_expired: Counter,
    grants: Counter,
    releases: Counter,
    locks_lost: Counter,
    fenced_writes: Counter,
    queue_joins: Counter,
}

impl TotalCounters {
    /// Raises every counter to `totals`. Totals only grow along the log (a
    /// snapshot installed from the leader is further along it), so each
    /// counter moves by the difference from its own value; the caller
    /// serializes refreshes.
    fn raise_to(&self, totals: Totals) {
        for (counter, now) in [
            (&self.sessions_opened, totals.sessions_opened),
            (&self.sessions_expired, totals.sessions_expired),
            (&self.grants, totals.grants),
            (&self.releases, totals.releases),
            (&self.locks_lost, totals.locks_lost),
            (&self.fenced_writes, totals.fenced_writes),
            (&self.queue_joins, totals.queue_joins),
        ] {
            counter.inc_by(now.saturating_sub(counter.get()));
        }
    }
}

/// Leadership as this node sees it.
#[derive(Debug, Default)]
struct LeadershipGauges {
    has_leader: Gauge,
    is_leader: Gauge,
    leader_changes: Counter,
    term: Gauge,
}

/// What the state holds now and how far this replica got.
#[derive(Debug, Default)]
struct StateGauges {
    sessions_active: Gauge,
    locks_held: Gauge,
    lock_waiters: Gauge,
    queue_depth: Family<LockLabel, Gauge>,
    commit_index: Gauge,
    applied_index: Gauge,
}

/// What one refresh read, together.
#[derive(Debug)]
pub struct Refreshed {
    /// The engine's status.
    pub status: EngineStatus,
    /// The replicated state's totals.
    pub totals: Totals,
    /// Waiters and the longest queues.
    pub queues: Queues,
    /// Open sessions.
    pub sessions: usize,
}

/// One node's metrics.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    node: NodeId,
    engine_kind: EngineKind,
    /// Where the engine records fsyncs, peer round trips and snapshots.
    pub telemetry: Arc<EngineTelemetry>,
    /// Proposals ordered through this node's engine.
    pub proposals: Arc<ProposalMetrics>,
    /// Calls served by this node's gRPC server.
    pub grpc: Arc<GrpcMetrics>,
    /// Waits and holds, timed as this replica applies.
    pub locks: Arc<LockObserver>,
    /// Recent leader changes and expiries, for the status page.
    pub recent: Arc<Recent>,
    /// The last minutes of a few figures, for the status page's charts.
    pub series: Arc<Series>,
    leadership: LeadershipGauges,
    state: StateGauges,
    totals: TotalCounters,
    /// Serializes scrapes: each one raises the counters once.
    refreshing: Mutex<()>,
}

impl Metrics {
    /// The metrics of node `node` running `engine_kind`, every series
    /// labelled with the engine.
    pub fn new(node: NodeId, engine_kind: EngineKind) -> Metrics {
        let mut registry = Registry::with_prefix_and_labels(
            "quorumlock",
            [("engine".into(), engine_kind.as_str().into())].into_iter(),
        );
        let telemetry = Arc::new(EngineTelemetry::default());
        let proposals = Arc::new(ProposalMetrics::default());
        let grpc = Arc::new(GrpcMetrics::default());
        let recent = Arc::new(Recent::default());
        let locks = Arc::new(LockObserver::new(recent.clone()));
        let metrics = Metrics {
            registry: Registry::default(),
            node,
            engine_kind,
            telemetry,
            proposals,
            grpc,
            locks,
            recent,
            series: Arc::default(),
            leadership: LeadershipGauges::default(),
            state: StateGauges::default(),
            totals: TotalCounters::default(),
            refreshing: Mutex::new(()),
        };
        metrics.register(&mut registry);
        Metrics { registry, ..metrics }
    }

    fn register(&self, registry: &mut Registry) {
        let leadership = &self.leadership;
        registry.register(
            "server_has_leader",
            "Whether this node knows a leader (1) or not (0)",
            leadership.has_leader.clone(),
        );
        registry.register(
            "server_is_leader",
            "Whether this node is the leader (1) or not (0)",
            leadership.is_leader.clone(),
        );
        registry.register(
            "server_leader_changes_seen",
            "Leader changes this node has seen since it started (a first leader counts)",
            leadership.leader_changes.clone(),
        );
        registry.register(
            "server_term",
            "The term (raft) or ballot round (paxos) this node is in",
            leadership.term.clone(),
        );
        let state = &self.state;
        registry.register(
            "server_commit_index",
            "The last log index (raft) or slot (paxos) this node knows committed",
            state.commit_index.clone(),
        );
        registry.register(
            "server_applied_index",
            "The last log index (raft) or slot (paxos) this node applied",
            state.applied_index.clone(),
        );
        self.proposals.register(registry);
        self.telemetry.register(registry);
        self.grpc.register(registry);
        registry.register(
            "sessions_active",
            "Sessions open in the replicated state",
            state.sessions_active.clone(),
        );
        registry.register(
            "locks_held",
            "Locks held in the replicated state",
            state.locks_held.clone(),
        );
        registry.register(
            "lock_waiters",
            "Sessions waiting in lock queues, once per lock waited for",
            state.lock_waiters.clone(),
        );
        registry.register(
            "lock_queue_depth",
            "Sessions waiting for the lock, for the locks with the longest queues only (at most 10 series)",
            state.queue_depth.clone(),
        );
        let totals = &self.totals;
        let replicated =
            "; counted in the replicated state, so equal on every replica at the same applied index";
        registry.register(
            "sessions_opened",
            format!("Sessions opened since the cluster began{replicated}"),
            totals.sessions_opened.clone(),
        );
        registry.register(
            "session_expired",
            format!("Sessions expired by the leader because their lease ran out{replicated}"),
            totals.sessions_expired.clone(),
        );
        registry.register(
            "lock_grants",
            format!("Locks granted, each with a new fencing token, directly or from a queue{replicated}"),
            totals.grants.clone(),
        );
        registry.register(
            "lock_releases",
            format!("Locks released by their holders{replicated}"),
            totals.releases.clone(),
        );
        registry.register(
            "lock_queue_joins",
            format!("Acquires that joined a lock's queue{replicated}"),
            totals.queue_joins.clone(),
        );
        registry.register(
            "lock_lost",
            format!("Held locks freed because their holder's session expired{replicated}"),
            totals.locks_lost.clone(),
        );
        registry.register(
            "fenced_writes",
            format!("Fenced puts and deletes applied{replicated}"),
            totals.fenced_writes.clone(),
        );
        self.locks.register(registry);
    }

    /// This node's id.
    pub fn node(&self) -> NodeId {
        self.node
    }

    /// The engine this node runs.
    pub fn engine_kind(&self) -> EngineKind {
        self.engine_kind
    }

    /// Reads the replicated state and the engine's status into the gauges
    /// and counters; returns what it read.
    pub fn refresh(&self, engine: &dyn ConsensusEngine) -> Refreshed {
        let _one_at_a_time = self.refreshing.lock();
        let status = engine.status();
        self.state.commit_index.set(gauge_value(status.commit_index));
        self.state.applied_index.set(gauge_value(status.applied_index));
        self.leadership.term.set(gauge_value(status.leadership.term));
        let (totals, queues, sessions) = engine.state().read(|state| {
            (
                state.totals(),
                state.queues(QUEUES_EXPORTED_MAX),
                state.session_count(),
            )
        });
        self.totals.raise_to(totals);
        self.state.sessions_active.set(gauge_value(sessions as u64));
        self.state.locks_held.set(gauge_value(queues.held as u64));
        self.state.lock_waiters.set(gauge_value(queues.waiters as u64));
        self.state.queue_depth.clear();
        for queue in &queues.deepest {
            self.state
                .queue_depth
                .get_or_create(&LockLabel {
                    lock: queue.lock.clone(),
                })
                .set(gauge_value(queue.depth as u64));
        }
        Refreshed {
            status,
            totals,
            queues,
            sessions,
        }
    }

    /// The registry in the OpenMetrics text format, after a refresh.
    pub fn encode(&self, engine: &dyn ConsensusEngine) -> String {
        self.refresh(engine);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry)
            .expect("writing to a String does not fail");
        text
    }

    /// Follows `leadership` until it closes: the leader gauges, the count
    /// of changes and the recent-events list.
    pub async fn follow_leadership(self: Arc<Self>, mut leadership: watch::Receiver<Leadership>) {
        let mut last_leader: Option<NodeId> = None;
        loop {
            let view = leadership.borrow_and_update().clone();
            self.observe_leadership(&view, &mut last_leader);
            if leadership.changed().await.is_err() {
                return;
            }
        }
    }

    fn observe_leadership(&self, view: &Leadership, last_leader: &mut Option<NodeId>) {
        let leader = view.leader.as_ref().map(|leader| leader.id);
        self.leadership.has_leader.set(i64::from(leader.is_some()));
        self.leadership.is_leader.set(i64::from(view.is_self));
        self.leadership.term.set(gauge_value(view.term));
        if let Some(leader) = leader {
            if *last_leader != Some(leader) {
                self.leadership.leader_changes.inc();
                self.recent.push(RecentEvent::leader(leader, view.term));
                *last_leader = Some(leader);
            }
        }
    }
}

/// A gauge's value for a count or index (gauges are signed).
fn gauge_value(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}
