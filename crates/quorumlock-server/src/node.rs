//! Assembles a node: engine, lease keeper, and the gRPC server with the lock
//! API, the peer transport, health checking and server reflection.

use std::sync::Arc;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;
use tonic::service::Routes;

use quorumlock_core::consensus::incarnation::Incarnations;
use quorumlock_core::consensus::{ConsensusEngine, EngineConfig, EngineKind, HistoryLimits};
use quorumlock_core::time::{Clock, MonotonicClock};
use quorumlock_paxos::PaxosEngine;
use quorumlock_proto::limits::API_MESSAGE_BYTES_MAX;
use quorumlock_proto::v1::cluster_server::ClusterServer;
use quorumlock_proto::v1::lock_server::LockServer;
use quorumlock_proto::FILE_DESCRIPTOR_SET;
use quorumlock_raft::RaftEngine;
use quorumlock_tls::{ClientCerts, Dialer, NodeTls};

use crate::auth::Access;
use crate::config::NodeConfig;
use crate::health::{HealthConfig, HealthKeeper};
use crate::identity::{self, Found};
use crate::lease_driver::{LeaseConfig, LeaseDriver};
use crate::metrics::{self, GrpcMetricsLayer, HttpAccess, MeteredEngine, Metrics, MetricsServer};
use crate::repair::{self, Repair};
use crate::rpc::peer_guard::{PeerGuardLayer, PeerPolicy};
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
    incarnations: Arc<Incarnations>,
    repair_refusal: watch::Receiver<Option<String>>,
    addr: std::net::SocketAddr,
    tls: Option<NodeTls>,
    access: Arc<Access>,
    stop: Option<oneshot::Sender<()>>,
    stopping: watch::Sender<bool>,
    health: Option<HealthKeeper>,
    leases: JoinHandle<()>,
    server: JoinHandle<Result<(), tonic::transport::Error>>,
    metrics_server: Option<MetricsServer>,
}

/// Starts the engine on `config`'s data directory as `found` it, under the
/// directory's incarnation (a new one for a fresh directory); a repairing
/// node starts as a joining one.
async fn start_engine(
    config: &NodeConfig,
    found: Found,
    repairing: bool,
    dialer: &Dialer,
    metrics: Option<&Arc<Metrics>>,
    stopping: &watch::Receiver<bool>,
) -> anyhow::Result<(Arc<dyn ConsensusEngine>, Routes, Arc<Incarnations>)> {
    let own_incarnation = match found {
        Found::Recorded(identity) => identity.incarnation,
        Found::Fresh | Found::Unrecorded => identity::new_incarnation(),
    };
    let peers_dir = config.data_dir.clone();
    let incarnations = Arc::new(Incarnations::new(
        config.id,
        own_incarnation,
        identity::read_peers(&config.data_dir)?,
        Box::new(move |known| identity::write_peers(&peers_dir, known)),
    ));
    incarnations.set_repairing(repairing);
    // Each engine brings its own peer transport as routes on the node's server.
    let engine_config = EngineConfig {
        node_id: config.id,
        members: match repairing {
            true => [(config.id, config.listen.to_string())].into(),
            false => config.peers.clone(),
        },
        join: config.join || repairing,
        data_dir: config.data_dir.clone(),
        heartbeat: config.heartbeat,
        election_timeout: config.election_timeout,
        snapshot_every_entries: config.snapshot_every_entries,
        incarnations: incarnations.clone(),
        telemetry: metrics.map_or_else(Arc::default, |metrics| metrics.telemetry.clone()),
        watch_history: HistoryLimits {
            changes: config.watch_history,
            ..HistoryLimits::default()
        },
        stopping: stopping.clone(),
    };
    let (engine, routes): (Arc<dyn ConsensusEngine>, Routes) = match config.engine {
        EngineKind::Raft => {
            let (engine, routes) = RaftEngine::start(engine_config, dialer.clone()).await?;
            (engine, routes)
        }
        EngineKind::Paxos => {
            let (engine, routes) = PaxosEngine::start(engine_config, dialer.clone()).await?;
            (engine, routes)
        }
    };
    Ok((engine, routes, incarnations))
}

/// The first reason `reasons` publishes; never resolves if none comes.
async fn first_reason(mut reasons: watch::Receiver<Option<String>>) -> String {
    let reason = match reasons.wait_for(Option::is_some).await {
        Ok(reason) => reason.clone(),
        Err(_) => None,
    };
    match reason {
        Some(reason) => reason,
        None => std::future::pending().await,
    }
}

impl Node {
    /// Starts a node with the operating system's clock.
    pub async fn start(config: NodeConfig) -> anyhow::Result<Node> {
        Self::start_with_clock(config, Arc::new(MonotonicClock)).await
    }

    /// Starts a node whose lease keeper reads `clock`.
    pub async fn start_with_clock(config: NodeConfig, clock: Arc<dyn Clock>) -> anyhow::Result<Node> {
        config.validate()?;
        // Refused before anything is bound or opened, unless a repair is
        // asked for and the directory is lost or damaged.
        let mut found = match identity::check(&config.data_dir, config.id, config.engine) {
            Err(error) if config.repair && error.is_lost_or_damaged() => {
                repair::quarantine(&config.data_dir, &error.to_string())?;
                Found::Fresh
            }
            Ok(_) if config.repair && repair::marked_lost(&config.data_dir) => {
                repair::quarantine(
                    &config.data_dir,
                    "a peer knew this node under an earlier incarnation",
                )?;
                Found::Fresh
            }
            checked => checked?,
        };
        let mut repairing = repair::pending(&config.data_dir);
        if config.repair && !repairing && found == Found::Fresh {
            repair::begin(
                &config.data_dir,
                "the node started with --repair on an empty data directory",
            )?;
            repairing = true;
        }
        let tls = match &config.tls {
            Some(files) => Some(NodeTls::load(config.id.get(), files.clone())?),
            None => None,
        };
        let dialer = tls.as_ref().map_or_else(Dialer::plaintext, NodeTls::dialer);
        let access = Arc::new(Access::load(config.auth_policy.clone())?);
        let listener = TcpListener::bind(config.listen)
            .await
            .with_context(|| format!("binding {}", config.listen))?;
        let addr = listener.local_addr()?;
        let metrics_listener = match config.metrics_listen {
            Some(listen) => Some(
                TcpListener::bind(listen)
                    .await
                    .with_context(|| format!("binding the metrics listener {listen}"))?,
            ),
            None => None,
        };
        let metrics = metrics_listener
            .as_ref()
            .map(|_| Arc::new(Metrics::new(config.id, config.engine)));
        if let Some(metrics) = &metrics {
            for peer in config.peers.keys().filter(|peer| **peer != config.id) {
                // Each configured peer's series exists before its first call.
                let _ = metrics.telemetry.peer_round_trip(*peer);
            }
        }

        // Set as the node begins to stop: keepalive streams, grant waits and
        // the engine's peer streams end then, before the server drains.
        let (stopping, stopping_rx) = watch::channel(false);
        let started = start_engine(&config, found, repairing, &dialer, metrics.as_ref(), &stopping_rx).await;
        let (engine, peer_routes, incarnations) = match started {
            Err(error) if config.repair && !repairing && quorumlock_storage::is_damaged(&error) => {
                repair::quarantine(&config.data_dir, &format!("{error:#}"))?;
                found = Found::Fresh;
                repairing = true;
                start_engine(&config, found, repairing, &dialer, metrics.as_ref(), &stopping_rx).await?
            }
            started => started?,
        };
        // Every proposal, from the API, the lease driver and the cluster
        // service, is counted; waits and holds are timed as they apply.
        let engine = match &metrics {
            Some(metrics) => {
                if engine.state().observe(metrics.locks.clone()).is_err() {
                    anyhow::bail!("the engine's state already has an observer");
                }
                tokio::spawn(metrics.clone().follow_leadership(engine.leadership()));
                tokio::spawn(metrics.series.clone().sample(metrics.clone(), engine.clone()));
                MeteredEngine::wrap(engine, metrics.proposals.clone())
            }
            None => engine,
        };
        let own_incarnation = incarnations.own_incarnation();

        match found {
            Found::Recorded(identity) => tracing::info!(
                node = %config.id, engine = %config.engine, incarnation = %format!("{:016x}", identity.incarnation),
                "data directory's identity checked"
            ),
            Found::Fresh | Found::Unrecorded => {
                let identity = identity::record(&config.data_dir, config.id, config.engine, own_incarnation)?;
                tracing::info!(
                    node = %config.id, engine = %config.engine, incarnation = %format!("{:016x}", identity.incarnation),
                    fresh = found == Found::Fresh, "data directory's identity recorded"
                );
            }
        }

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

        let lock_service = LockService::new(
            engine.clone(),
            leases,
            LockServiceConfig {
                request_timeout: config.request_timeout,
            },
            stopping_rx.clone(),
            dialer.clone(),
            access.clone(),
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
        let incoming = quorumlock_tls::incoming(listener, tls.as_ref().map(|tls| tls.server().clone()));
        // The guard follows the membership the engine publishes, so members
        // added or removed while the node runs are admitted or refused.
        let peer_guard = PeerGuardLayer::new(PeerPolicy {
            tls: tls.is_some(),
            membership: engine.known_membership(),
            incarnations: Some(incarnations.clone()),
            reported: Arc::default(),
        });
        let server = tonic::transport::Server::builder()
            .max_concurrent_streams(Some(STREAMS_PER_CONNECTION_MAX))
            .layer(GrpcMetricsLayer::new(
                metrics.as_ref().map(|metrics| metrics.grpc.clone()),
            ))
            .layer(peer_guard)
            .add_routes(peer_routes)
            .add_service(health_service)
            .add_service(reflection_v1)
            .add_service(reflection_v1alpha)
            .add_service(
                LockServer::new(lock_service)
                    .max_decoding_message_size(API_MESSAGE_BYTES_MAX)
                    .max_encoding_message_size(API_MESSAGE_BYTES_MAX),
            )
            .add_service(ClusterServer::new(ClusterService::new(
                engine.clone(),
                access.clone(),
            )))
            .serve_with_incoming_shutdown(incoming, async {
                let _ = stopped.await;
            });
        let server = tokio::spawn(server);
        match &tls {
            Some(tls) => {
                let served = tls.server().served();
                let client_certs = match tls.server().files().client_certs {
                    ClientCerts::Required => "client certificates required",
                    ClientCerts::Optional => "client certificates optional (callers may use bearer tokens)",
                };
                tracing::info!(
                    node = %config.id, %addr, engine = %config.engine,
                    subject = %served.subject, serial = %served.serial, not_after = %served.not_after,
                    "node serving over TLS; {client_certs}"
                );
            }
            None if addr.ip().is_loopback() => {
                tracing::info!(node = %config.id, %addr, engine = %config.engine, "node serving (plaintext, loopback)");
            }
            None => tracing::warn!(
                node = %config.id, %addr, engine = %config.engine,
                "node serving PLAINTEXT on a non-loopback address: anyone who can reach it can read the traffic, \
                 speak the peer protocol and pass calls off as forwarded; start it with --cert, --key and --ca"
            ),
        }
        let metrics_server = match (metrics_listener, &metrics) {
            (Some(listener), Some(metrics)) => {
                let served = metrics::serve(
                    listener,
                    tls.as_ref().map(|tls| tls.server().clone()),
                    metrics.clone(),
                    engine.clone(),
                    HttpAccess {
                        access: access.clone(),
                        dialer: dialer.clone(),
                        serving: health.serving(),
                    },
                )?;
                let scheme = if tls.is_some() { "https" } else { "http" };
                tracing::info!(
                    node = %config.id, addr = %served.addr(),
                    "metrics at {scheme}://{0}/metrics, status page at {scheme}://{0}/, health at {scheme}://{0}/health{1}",
                    served.addr(),
                    if access.summary().is_some() { " (metrics and the page's data need the admin role)" } else { "" }
                );
                Some(served)
            }
            _ => None,
        };
        // Every replica knows repaired peers by the incarnation the
        // replicated state records for them.
        tokio::spawn(repair::follow_records(
            engine.clone(),
            incarnations.clone(),
            stopping.subscribe(),
            config.heartbeat,
        ));
        let (repair_refused, repair_refusal) = watch::channel(None);
        if repairing {
            let repair = Repair {
                node: config.id,
                dir: config.data_dir.clone(),
                peers: config
                    .peers
                    .iter()
                    .map(|(id, addr)| (*id, addr.clone()))
                    .collect(),
                addr: config
                    .peers
                    .get(&config.id)
                    .cloned()
                    .unwrap_or_else(|| config.listen.to_string()),
                dialer,
                engine: engine.clone(),
                incarnations: incarnations.clone(),
                election_timeout: config.election_timeout,
            };
            tokio::spawn(repair.run(repair_refused));
        }
        match access.summary() {
            Some(summary) => tracing::info!(
                node = %config.id, "access control on: {summary} from {}",
                config.auth_policy.as_deref().map(|path| path.display().to_string()).unwrap_or_default()
            ),
            None => {
                tracing::info!(node = %config.id, "access control off: a session's secret alone proves its owner")
            }
        }
        Ok(Node {
            engine,
            incarnations,
            repair_refusal,
            addr,
            tls,
            access,
            stop: Some(stop),
            stopping,
            health: Some(health),
            leases: lease_task,
            server,
            metrics_server,
        })
    }

    /// The address the metrics listener is bound to, if it runs.
    pub fn metrics_addr(&self) -> Option<std::net::SocketAddr> {
        self.metrics_server.as_ref().map(MetricsServer::addr)
    }

    /// The address the server is bound to.
    pub fn addr(&self) -> std::net::SocketAddr {
        self.addr
    }

    /// The node's engine.
    pub fn engine(&self) -> &Arc<dyn ConsensusEngine> {
        &self.engine
    }

    /// Re-reads the certificate, key and CA files and the access policy
    /// (on SIGHUP), and logs what each now is. New connections, in and out,
    /// use the new certificates and established ones keep theirs, so no
    /// call or session is cut; calls that start afterwards are judged by
    /// the new policy. Each is replaced only if it loads whole: on error the
    /// one in use stays, and the error is returned.
    pub fn reload(&self) -> anyhow::Result<()> {
        let mut failed = Vec::new();
        match &self.tls {
            None => tracing::info!("reload: no TLS files"),
            Some(tls) => match tls.reload() {
                Ok(served) => tracing::info!(
                    subject = %served.subject, serial = %served.serial, not_after = %served.not_after,
                    "TLS files reloaded; new connections get this certificate"
                ),
                Err(error) => {
                    tracing::error!(%error, "TLS files not reloaded; the ones in use stay");
                    failed.push(format!("TLS: {error}"));
                }
            },
        }
        match self.access.reload() {
            Ok(None) => tracing::info!("reload: no access policy"),
            Ok(Some(summary)) => tracing::info!("access policy reloaded: {summary}"),
            Err(error) => {
                tracing::error!("access policy not reloaded, the one in force stays: {error:#}");
                failed.push(format!("access policy: {error:#}"));
            }
        }
        match failed.is_empty() {
            true => Ok(()),
            false => anyhow::bail!("{}", failed.join("; ")),
        }
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

    /// Resolves with the reason once a peer showed that this node's state
    /// was lost (it knows this node under another incarnation: the data
    /// directory was emptied or replaced since); never otherwise.
    pub async fn forgotten(&self) -> String {
        first_reason(self.incarnations.forgotten()).await
    }

    /// Resolves with the reason once a repair from peers cannot go on
    /// (see [`crate::repair`]); never otherwise.
    pub async fn repair_refused(&self) -> String {
        first_reason(self.repair_refusal.clone()).await
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
        if let Some(metrics) = self.metrics_server.take() {
            metrics.stop().await;
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
