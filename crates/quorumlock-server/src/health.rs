//! gRPC health checking (`grpc.health.v1.Health`) driven by the consensus
//! engine's view of leadership.
//!
//! A load balancer asks a node "can you serve?". Every node answers every
//! lock RPC, but a follower only forwards writes and linearizable reads to the
//! leader, so a node that knows no leader, or a leader that no longer hears
//! from a quorum, would only answer `UNAVAILABLE`. Like etcd's `/health`,
//! which fails without a leader, this module reports the lock API as
//! `NOT_SERVING` then:
//!
//! - `""` (the whole server) and `quorumlock.v1.Lock`: `SERVING` while this
//!   node knows a leader; when this node is the leader, only while a read
//!   barrier (a round trip to a quorum) succeeds within
//!   [`HealthConfig::probe_timeout`]. A leader cut off from the majority keeps
//!   its role in the engine until it hears of a newer term, so leadership
//!   alone would call it healthy; the probe does not.
//! - `quorumlock.v1.Cluster`: `SERVING` as long as the process serves, since
//!   `Cluster/Status` answers from local state and is exactly what an operator
//!   needs on a node that has lost its quorum.
//! - Everything: `NOT_SERVING` from the moment the node starts stopping, so
//!   watchers drain it before its connections close.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;
use tonic::server::NamedService;
use tonic_health::server::HealthReporter;
use tonic_health::ServingStatus;

use crate::rpc::{ClusterService, LockService};
use quorumlock_core::consensus::{ConsensusEngine, Leadership, NodeId};
use quorumlock_proto::v1::cluster_server::ClusterServer;
use quorumlock_proto::v1::lock_server::LockServer;

/// The health service name that stands for the whole server.
pub const SERVER_HEALTH_NAME: &str = "";
/// The health service name of the lock API.
pub const LOCK_HEALTH_NAME: &str = <LockServer<LockService> as NamedService>::NAME;
/// The health service name of the cluster API.
pub const CLUSTER_HEALTH_NAME: &str = <ClusterServer<ClusterService> as NamedService>::NAME;

/// How the health keeper probes.
#[derive(Debug, Clone)]
pub struct HealthConfig {
    /// This node's id, for the log.
    pub node_id: NodeId,
    /// How often a leader re-confirms its quorum (a follower is re-evaluated
    /// at the same pace and at every leadership change).
    pub probe_interval: Duration,
    /// Longest wait for the leader's read barrier; past it the leader counts
    /// as cut off from its quorum.
    pub probe_timeout: Duration,
}

/// Whether the lock API can be served, given this node's view of leadership
/// and, for a leader, whether its quorum answered the last probe.
pub fn lock_api_serving(view: &Leadership, quorum_confirmed: bool) -> bool {
    match &view.leader {
        None => false,
        Some(_) if view.is_self => quorum_confirmed,
        Some(_) => true,
    }
}

fn status_of(serving: bool) -> ServingStatus {
    if serving {
        ServingStatus::Serving
    } else {
        ServingStatus::NotServing
    }
}

/// Keeps the health statuses of one node up to date.
pub struct HealthKeeper {
    reporter: HealthReporter,
    task: JoinHandle<()>,
    serving: watch::Sender<bool>,
}

impl HealthKeeper {
    /// Publishes the initial statuses (lock API `NOT_SERVING` until a leader
    /// is known) and starts following `engine`.
    pub async fn start(
        engine: Arc<dyn ConsensusEngine>,
        mut reporter: HealthReporter,
        config: HealthConfig,
    ) -> HealthKeeper {
        reporter
            .set_service_status(CLUSTER_HEALTH_NAME, ServingStatus::Serving)
            .await;
        set_lock_api(&mut reporter, ServingStatus::NotServing).await;
        let (serving, _) = watch::channel(false);
        let task = tokio::spawn(follow(engine, reporter.clone(), config, serving.clone()));
        HealthKeeper {
            reporter,
            task,
            serving,
        }
    }

    /// Whether the lock API is `SERVING`, as the health service last said.
    pub fn serving(&self) -> watch::Receiver<bool> {
        self.serving.subscribe()
    }

    /// Reports every service `NOT_SERVING` for good: the node is stopping.
    pub async fn stop(mut self) {
        // The follower task must not flip a status back after this point.
        self.task.abort();
        let _ = (&mut self.task).await;
        self.serving.send_replace(false);
        set_lock_api(&mut self.reporter, ServingStatus::NotServing).await;
        self.reporter
            .set_service_status(CLUSTER_HEALTH_NAME, ServingStatus::NotServing)
            .await;
    }
}

async fn set_lock_api(reporter: &mut HealthReporter, status: ServingStatus) {
    reporter.set_service_status(SERVER_HEALTH_NAME, status).await;
    reporter.set_service_status(LOCK_HEALTH_NAME, status).await;
}

/// Re-evaluates the lock API's health at every leadership change and every
/// probe interval, until the engine's leadership channel closes.
async fn follow(
    engine: Arc<dyn ConsensusEngine>,
    mut reporter: HealthReporter,
    config: HealthConfig,
    published_to: watch::Sender<bool>,
) {
    let mut leadership = engine.leadership();
    let mut published: Option<bool> = None;
    loop {
        let view = leadership.borrow_and_update().clone();
        let quorum_confirmed = view.is_self
            && matches!(
                tokio::time::timeout(config.probe_timeout, engine.read_barrier()).await,
                Ok(Ok(()))
            );
        let serving = lock_api_serving(&view, quorum_confirmed);
        // Watchers get one message per change, not one per probe.
        if published != Some(serving) {
            tracing::info!(
                node = %config.node_id,
                serving,
                term = view.term,
                leader = ?view.leader.as_ref().map(|leader| leader.id),
                is_leader = view.is_self,
                "lock API health changed"
            );
            set_lock_api(&mut reporter, status_of(serving)).await;
            published_to.send_replace(serving);
            published = Some(serving);
        }
        tokio::select! {
            changed = leadership.changed() => {
                if changed.is_err() {
                    published_to.send_replace(false);
                    set_lock_api(&mut reporter, ServingStatus::NotServing).await;
                    return;
                }
            }
            _ = tokio::time::sleep(config.probe_interval) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use quorumlock_core::consensus::LeaderInfo;

    fn view(leader: Option<u64>, is_self: bool) -> Leadership {
        Leadership {
            term: 3,
            leader: leader.map(|id| LeaderInfo {
                id: NodeId::new(id),
                addr: format!("127.0.0.1:700{id}"),
            }),
            is_self,
        }
    }

    #[test]
    fn lock_api_needs_a_known_leader_and_a_leader_needs_its_quorum() {
        assert!(!lock_api_serving(&view(None, false), false), "no leader known");
        assert!(!lock_api_serving(&view(None, false), true), "no leader known");
        assert!(
            lock_api_serving(&view(Some(2), false), false),
            "follower of a known leader"
        );
        assert!(
            lock_api_serving(&view(Some(1), true), true),
            "leader with its quorum"
        );
        assert!(
            !lock_api_serving(&view(Some(1), true), false),
            "leader cut off from its quorum"
        );
    }

    #[test]
    fn health_names_are_the_grpc_service_names() {
        assert_eq!(LOCK_HEALTH_NAME, "quorumlock.v1.Lock");
        assert_eq!(CLUSTER_HEALTH_NAME, "quorumlock.v1.Cluster");
    }
}
