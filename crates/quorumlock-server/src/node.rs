//! Assembles a node: engine, lease keeper, and the gRPC server with the lock
//! API, the peer transport, health checking and server reflection.

use std::sync::Arc;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;
use tonic::service::Routes;
use tonic::transport::server::TcpIncoming;

use quorumlock_core::consensus::{ConsensusEngine, EngineConfig, EngineKind};
use quorumlock_core::time::{Clock, MonotonicClock};
use quorumlock_paxos::PaxosEngine;
use quorumlock_proto::limits::API_MESSAGE_BYTES_MAX;
use quorumlock_proto::v1::cluster_server::ClusterServer;
use quorumlock_proto::v1::lock_server::LockServer;
use quorumlock_proto::FILE_DESCRIPTOR_SET;
use quorumlock_raft::RaftEngine;

use crate::config::NodeConfig;
use crate::health::{HealthConfig, HealthKeeper};
use crate::lease_driver::{LeaseConfig, LeaseDriver};
use crate::rpc::{ClusterService, LockService, LockServiceConfig};

/// Concurrent calls (HTTP/2 streams) one client connection may have open.
/// Every waiting Acquire and every KeepAlive stream holds one, so hyper's
/// default of 200 would queue the calls of a client with 100 waiting
/// sessions behind each other; this is above a full wait queue (10,000), so
/// one connection, such as a follower forwarding to the leader, can carry
/// every waiter of a lock.
pub const STREAMS_PER_CONNECTION_MAX: u32 = 16_384;

/// How long in-flight calls get to finish when a node stops.
pub const SERVER_STOP_GRACE: std::time::Duration = std::time::Duration::from_secs(2);

/// A running node.
pub struct Node {
    engine: Arc<dyn ConsensusEngine>,
    addr: std::net::SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    stopping: watch::Sender<bool>,
    health: Option<HealthKeeper>,
    leases: JoinHandle<()>,
    server: JoinHandle<Result<(), tonic::transport::Error>>,
}

impl Node {
    /// Starts a node with the operating system's clock.
    pub async fn start(config: NodeConfig) -> anyhow::Result<Node> {
        Self::start_with_clock(config, Arc::new(MonotonicClock)).await
    }

    /// Starts a node whose lease keeper reads `clock`.
    pub async fn start_with_clock(config: NodeConfig, clock: Arc<dyn Clock>) -> anyhow::Result<Node> {
        config.validate()?;
        let listener = TcpListener::bind(config.listen)
            .await
            .with_context(|| format!("binding {}", config.listen))?;
        let addr = listener.local_addr()?;

        // Each engine brings its own peer transport as routes on the node's server.
        let engine_config = EngineConfig {
            node_id: config.id,
            members: config.peers.clone(),
            data_dir: config.data_dir.clone(),
            heartbeat: config.heartbeat,
            election_timeout: config.election_timeout,
            snapshot_every_entries: config.snapshot_every_entries,
        };
        let (engine, peer_routes): (Arc<dyn ConsensusEngine>, Routes) = match config.engine {
            EngineKind::Raft => {
                let (engine, routes) = RaftEngine::start(engine_config).await?;
                (engine, routes)
            }
            EngineKind::Paxos => {
                let (engine, routes) = PaxosEngine::start(engine_config).await?;
                (engine, routes)
            }
        };

        let leases = LeaseDriver::new(
            engine.clone(),
            clock,
            LeaseConfig {
                tick: config.heartbeat,
                checkpoint_interval: config.election_timeout,
                takeover_grace: config.election_timeout * 2,
                proposal_timeout: config.request_timeout,
            },
        );
        let lease_task = tokio::spawn(leases.clone().run());
        // A storage failure is fail-stop: reported here, once, with its
        // cause; `serve` then stops the node and exits non-zero.
        let mut failed = engine.failed();
        let node_id = config.id;
        tokio::spawn(async move {
            if let Ok(reason) = failed.wait_for(Option::is_some).await {
                let reason = reason.clone().unwrap_or_default();
                tracing::error!(node = %node_id, %reason, "the node's storage failed; it stops serving");
            }
        });

        let (stopping, stopping_rx) = watch::channel(false);
        let lock_service = LockService::new(
            engine.clone(),
            leases,
            LockServiceConfig {
                request_timeout: config.request_timeout,
            },
            stopping_rx,
        );

        // Reflection serves the API, the peer transport and the health
        // service, so grpcurl needs no proto files. Both protocol versions
        // are served because clients in the field still ask for v1alpha.
        let reflection = || {
            tonic_reflection::server::Builder::configure()
                .register_encoded_file_descriptor_set(FILE_DESCRIPTOR_SET)
                .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        };
        let reflection_v1 = reflection()
            .build_v1()
            .context("building the v1 reflection service")?;
        let reflection_v1alpha = reflection()
            .build_v1alpha()
            .context("building the v1alpha reflection service")?;

        let (health_reporter, health_service) = tonic_health::server::health_reporter();
        let health = HealthKeeper::start(
            engine.clone(),
            health_reporter,
            HealthConfig {
                node_id: config.id,
                // Each probe is a read barrier, which costs the followers a
                // round trip; one every two election timeouts keeps that cost
                // small while a cut-off leader still turns NOT_SERVING within
                // about four.
                probe_interval: config.election_timeout * 2,
                // A leader that cannot reach a quorum within two election
                // timeouts has been, or is being, replaced by the majority.
                probe_timeout: (config.election_timeout * 2).min(config.request_timeout),
            },
        )
        .await;

        let (stop, stopped) = oneshot::channel::<()>();
        let incoming = accepted_sockets(listener)
            .map_err(|error| anyhow::anyhow!("configuring the listener on {addr}: {error}"))?;
        let server = tonic::transport::Server::builder()
            .max_concurrent_streams(Some(STREAMS_PER_CONNECTION_MAX))
            .add_routes(peer_routes)
            .add_service(health_service)
            .add_service(reflection_v1)
            .add_service(reflection_v1alpha)
            .add_service(
                LockServer::new(lock_service)
                    .max_decoding_message_size(API_MESSAGE_BYTES_MAX)
                    .max_encoding_message_size(API_MESSAGE_BYTES_MAX),
            )
            .add_service(ClusterServer::new(ClusterService::new(engine.clone())))
            .serve_with_incoming_shutdown(incoming, async {
                let _ = stopped.await;
            });
        let server = tokio::spawn(server);
        tracing::info!(node = %config.id, %addr, engine = %config.engine, "node serving");
        Ok(Node {
            engine,
            addr,
            stop: Some(stop),
            stopping,
            health: Some(health),
            leases: lease_task,
            server,
        })
    }

    /// The address the server is bound to.
    pub fn addr(&self) -> std::net::SocketAddr {
        self.addr
    }

    /// The node's engine.
    pub fn engine(&self) -> &Arc<dyn ConsensusEngine> {
        &self.engine
    }

    /// Resolves with the reason once the engine stopped by itself on a
    /// fatal failure (its storage failed); never while it runs.
    pub async fn failed(&self) -> String {
        let mut failed = self.engine.failed();
        loop {
            if let Some(reason) = failed.borrow_and_update().clone() {
                return reason;
            }
            if failed.changed().await.is_err() {
                // The engine is gone without a failure: wait for the caller
                // to stop the node.
                std::future::pending::<()>().await;
            }
        }
    }

    /// Stops in a defined order, so that nothing touches storage once it
    /// closes: health says NOT_SERVING (watchers drain the node first); the
    /// server stops accepting and in-flight calls finish, keepalive streams
    /// and waits ending at once with UNAVAILABLE; the lease driver stops
    /// proposing; the engine stops, joining every task and thread that
    /// writes to its database, and closes it. Returns once all of that is
    /// done; an engine that had failed reports its failure.
    pub async fn shutdown(mut self) -> anyhow::Result<()> {
        if let Some(health) = self.health.take() {
            health.stop().await;
        }
        self.stopping.send_replace(true);
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let drained = tokio::time::timeout(SERVER_STOP_GRACE, &mut self.server).await;
        self.leases.abort();
        let _ = (&mut self.leases).await;
        let engine = self.engine.shutdown().await;
        match drained {
            Ok(served) => served??,
            // Calls still waiting on the engine were answered as it stopped.
            Err(_) => match tokio::time::timeout(SERVER_STOP_GRACE, &mut self.server).await {
                Ok(served) => served??,
                Err(_) => {
                    self.server.abort();
                    let _ = (&mut self.server).await;
                }
            },
        }
        engine?;
        Ok(())
    }
}

/// The connections `listener` accepts, with Nagle's algorithm off.
///
/// `Server::tcp_nodelay` applies only to listeners tonic binds itself; a
/// server fed its own listener sets options per accepted socket here.
/// Without `TCP_NODELAY`, a small response written while an earlier one is
/// still unacknowledged waits for the peer's delayed ACK (40 ms on Linux):
/// a 3-node cluster then stalled 40 ms on one operation in thirty.
fn accepted_sockets(listener: TcpListener) -> Result<TcpIncoming, Box<dyn std::error::Error + Send + Sync>> {
    TcpIncoming::from_listener(listener, true, None)
}

#[cfg(test)]
mod tests {
    use futures::StreamExt;

    use super::*;

    #[tokio::test]
    async fn accepted_sockets_have_nagle_disabled() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut incoming = accepted_sockets(listener).unwrap();
        let _client = tokio::net::TcpStream::connect(addr).await.unwrap();
        let accepted = incoming.next().await.expect("one connection").unwrap();
        assert!(
            accepted.nodelay().unwrap(),
            "an accepted socket still delays small writes"
        );
    }
}
