//! quorumlock clusters (either engine) as a [`LockSystem`], through the Rust
//! client; plaintext, or over mutual TLS with certificates made by
//! `quorumlock certs`, to measure what TLS costs.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use async_trait::async_trait;
use futures::stream::{BoxStream, StreamExt};
use parking_lot::Mutex;
use quorumlock_client::{node_status, Client, ClientConfig, ClientTls, ClientTlsFiles, Session};
use quorumlock_proto::v1 as pb;
use quorumlock_proto::v1::lock_client::LockClient as LockStub;
use quorumlock_testkit::cluster::{ClusterSpec, ProcessCluster, ProcessUsage};
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Channel, Endpoint};

use super::idle::{open_each, Answer, IdleGroup, KeepAliveStream};
use super::systems::{Held, HeldInner, LockClient, LockSession, LockSystem};

const POLL_INTERVAL: Duration = Duration::from_millis(50);
/// How the name of a system over TLS ends: `quorumlock-raft+tls`.
pub const TLS_SUFFIX: &str = "+tls";
/// How the name of a system with metrics on ends: `quorumlock-raft+metrics`.
pub const METRICS_SUFFIX: &str = "+metrics";
/// How often the benchmark scrapes each node's `/metrics` when metrics are
/// on: more often than Prometheus's default of 15 s, so that the cost of
/// scraping is not understated.
const SCRAPE_EVERY: Duration = Duration::from_secs(1);

/// A 3-node (or `nodes`-node) quorumlock cluster of one engine.
pub struct QuorumlockSystem {
    engine: String,
    cluster: ProcessCluster,
    /// The client side of mutual TLS, when the cluster serves it.
    tls: Option<ClientTls>,
    /// The scrapers of the nodes' `/metrics`, when metrics are on.
    scrapers: Vec<tokio::task::JoinHandle<()>>,
    // Held for its lifetime: the certificates' directory.
    _certs: Option<tempfile::TempDir>,
}

/// The name of the client certificate the benchmark's clients present.
const BENCH_CLIENT: &str = "bench";

/// Makes a CA, node certificates for 127.0.0.1 and a client certificate
/// with `quorumlock certs`, as an operator would; the `serve` flags and the
/// client's config that use them.
fn make_certs(dir: &std::path::Path, nodes: usize) -> anyhow::Result<(Vec<String>, ClientTls)> {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_quorumlock"));
    command.arg("certs").arg("--dir").arg(dir);
    for id in 1..=nodes {
        command.args(["--node", &format!("{id}=127.0.0.1")]);
    }
    command.args(["--client", BENCH_CLIENT]);
    let output = command.output().context("running quorumlock certs")?;
    anyhow::ensure!(
        output.status.success(),
        "quorumlock certs failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let path = |name: String| dir.join(name).display().to_string();
    let flags = vec![
        "--cert".to_string(),
        path("node-{id}.pem".to_string()),
        "--key".to_string(),
        path("node-{id}-key.pem".to_string()),
        "--ca".to_string(),
        path("ca.pem".to_string()),
    ];
    let tls = ClientTls::load(ClientTlsFiles {
        ca: dir.join("ca.pem"),
        identity: Some((
            dir.join(format!("client-{BENCH_CLIENT}.pem")),
            dir.join(format!("client-{BENCH_CLIENT}-key.pem")),
        )),
    })?;
    Ok((flags, tls))
}

impl QuorumlockSystem {
    /// Starts `nodes` nodes of `engine` with the given timings, over
    /// mutual TLS if `tls`, with metrics on (and scraped every
    /// [`SCRAPE_EVERY`]) if `metrics`, and waits for a leader.
    pub async fn start(
        engine: &str,
        nodes: usize,
        heartbeat_ms: u64,
        election_timeout_ms: u64,
        tls: bool,
        metrics: bool,
    ) -> anyhow::Result<QuorumlockSystem> {
        let mut spec = ClusterSpec::new(env!("CARGO_BIN_EXE_quorumlock"), engine, nodes);
        spec.heartbeat_ms = heartbeat_ms;
        spec.election_timeout_ms = election_timeout_ms;
        spec.env.push(("RUST_LOG".to_string(), "warn".to_string()));
        let mut certs = None;
        if tls {
            let dir = tempfile::Builder::new()
                .prefix("quorumlock-bench-tls-")
                .tempdir()
                .context("creating a directory for certificates")?;
            let (flags, client_tls) = make_certs(dir.path(), nodes)?;
            spec.extra_args = flags;
            spec.client_tls = Some(client_tls);
            certs = Some(dir);
        }
        if metrics {
            spec.extra_args
                .extend(["--metrics-listen".to_string(), "127.0.0.1:0".to_string()]);
            // The line that names the metrics address is an INFO line.
            spec.env.retain(|(name, _)| name != "RUST_LOG");
            spec.env.push((
                "RUST_LOG".to_string(),
                "warn,quorumlock_server::node=info".to_string(),
            ));
        }
        let tls = spec.client_tls.clone();
        let mut cluster = ProcessCluster::start(spec)
            .await
            .with_context(|| format!("starting a quorumlock {engine} cluster"))?;
        let mut scrapers = Vec::new();
        if metrics {
            cluster.wait_for_leader().await?;
            for index in 0..cluster.len() {
                let addr = cluster
                    .node(index)
                    .metrics_addr()
                    .with_context(|| format!("node {} logged no metrics address", index + 1))?;
                scrapers.push(tokio::spawn(scrape_forever(addr)));
            }
        }
        Ok(QuorumlockSystem {
            engine: engine.to_string(),
            cluster,
            tls,
            scrapers,
            _certs: certs,
        })
    }

    fn probe_config(&self) -> ClientConfig {
        ClientConfig {
            rpc_timeout: Duration::from_secs(2),
            connect_timeout: Duration::from_secs(2),
            tls: self.tls.clone(),
            ..ClientConfig::default()
        }
    }
}

#[async_trait]
impl LockSystem for QuorumlockSystem {
    fn name(&self) -> String {
        match (&self.tls, self.scrapers.is_empty()) {
            (Some(_), _) => format!("quorumlock-{}{TLS_SUFFIX}", self.engine),
            (None, false) => format!("quorumlock-{}{METRICS_SUFFIX}", self.engine),
            (None, true) => format!("quorumlock-{}", self.engine),
        }
    }

    async fn connect(&self) -> anyhow::Result<Arc<dyn LockClient>> {
        let config = ClientConfig {
            tls: self.tls.clone(),
            ..ClientConfig::default()
        };
        let client = Client::connect_with(self.cluster.endpoints(), config)
            .await
            .context("connecting to quorumlock")?;
        Ok(Arc::new(QuorumlockClient { client }))
    }

    fn nodes(&self) -> usize {
        self.cluster.len()
    }

    async fn leader(&mut self) -> anyhow::Result<usize> {
        Ok(self.cluster.wait_for_leader().await?.index)
    }

    async fn term(&mut self) -> anyhow::Result<Option<u64>> {
        Ok(Some(self.cluster.wait_for_leader().await?.term))
    }

    fn usage(&self, index: usize) -> Option<ProcessUsage> {
        self.cluster.node(index).usage()
    }

    fn data_dir(&self, index: usize) -> PathBuf {
        self.cluster.data_dir(index)
    }

    fn replicated(&self) -> bool {
        self.cluster.len() > 1
    }

    fn kill(&mut self, index: usize) -> anyhow::Result<()> {
        self.cluster.node_mut(index).kill()
    }

    fn restart(&mut self, index: usize) -> anyhow::Result<()> {
        self.cluster.node_mut(index).start()
    }

    fn repair_from_empty(&mut self, index: usize) -> anyhow::Result<bool> {
        self.cluster.node_mut(index).kill()?;
        let data_dir = self.cluster.data_dir(index);
        std::fs::remove_dir_all(&data_dir).with_context(|| format!("deleting {}", data_dir.display()))?;
        self.cluster.node_mut(index).start_with(&["--repair"])?;
        Ok(true)
    }

    fn pid(&self, index: usize) -> Option<u32> {
        self.cluster.node(index).pid()
    }

    async fn wait_caught_up(&mut self, index: usize, limit: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + limit;
        let config = self.probe_config();
        let leader = self.cluster.wait_for_leader_within(limit).await?;
        let target = node_status(self.cluster.node(leader.index).addr(), &config)
            .await?
            .commit_index;
        let addr = self.cluster.node(index).addr().to_string();
        loop {
            if let Ok(status) = node_status(&addr, &config).await {
                if status.applied_index >= target && status.leader.is_some() {
                    return Ok(());
                }
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "node {} did not catch up to index {target} within {limit:?}",
                index + 1
            );
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }

    async fn idle_sessions(&self, leader: usize, count: usize, ttl: Duration) -> anyhow::Result<IdleGroup> {
        anyhow::ensure!(self.tls.is_none(), "idle sessions are opened over plaintext only");
        let addr = self.cluster.node(leader).addr();
        let channel = Endpoint::from_shared(format!("http://{addr}"))?
            .tcp_nodelay(true)
            .connect()
            .await
            .with_context(|| format!("connecting to {addr}"))?;
        let stub = LockStub::new(channel);
        let ttl_ms = u64::try_from(ttl.as_millis())?;
        let sessions = open_each(count, || {
            let mut stub = stub.clone();
            async move {
                let opened = stub
                    .open_session(pb::OpenSessionRequest { ttl_ms })
                    .await?
                    .into_inner();
                Ok::<_, tonic::Status>((opened.session_id, opened.session_secret))
            }
        })
        .await
        .context("opening a session")?;
        Ok(IdleGroup::start(QuorumlockKeepAlive { stub, sessions }, ttl))
    }
}

/// quorumlock's `KeepAlive` for a group of idle sessions: each message
/// renews the session it names.
struct QuorumlockKeepAlive {
    stub: LockStub<Channel>,
    /// (id, secret) of each session of the group.
    sessions: Vec<(u64, Vec<u8>)>,
}

#[async_trait]
impl KeepAliveStream for QuorumlockKeepAlive {
    type Request = pb::KeepAliveRequest;

    fn sessions(&self) -> usize {
        self.sessions.len()
    }

    fn id(&self, slot: usize) -> u64 {
        self.sessions[slot].0
    }

    fn request(&self, slot: usize) -> pb::KeepAliveRequest {
        let (session_id, secret) = &self.sessions[slot];
        pb::KeepAliveRequest {
            session_id: *session_id,
            session_secret: secret.clone(),
        }
    }

    async fn open(
        &self,
        requests: ReceiverStream<pb::KeepAliveRequest>,
    ) -> Result<BoxStream<'static, Result<Answer, tonic::Status>>, tonic::Status> {
        let answers = self.stub.clone().keep_alive(requests).await?.into_inner();
        Ok(answers
            .map(|answer| answer.map(|renewed| Answer::Renewed(renewed.session_id)))
            .boxed())
    }

    fn refused_by(&self, status: &tonic::Status) -> Option<u64> {
        if status.code() != tonic::Code::NotFound {
            return None;
        }
        quorumlock_proto::details::detail(status)
            .map(|detail| detail.session_id)
            .filter(|session_id| *session_id != 0)
    }

    async fn close(&self, slot: usize) {
        let (session_id, session_secret) = self.sessions[slot].clone();
        let request = pb::CloseSessionRequest {
            session_id,
            session_secret,
        };
        let _ = self.stub.clone().close_session(request).await;
    }
}

impl Drop for QuorumlockSystem {
    fn drop(&mut self) {
        for scraper in &self.scrapers {
            scraper.abort();
        }
    }
}

/// Fetches `http://addr/metrics` every [`SCRAPE_EVERY`] with a plain
/// HTTP/1.1 GET, as a scraper would, reading the whole answer.
async fn scrape_forever(addr: String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut ticks = tokio::time::interval(SCRAPE_EVERY);
    loop {
        ticks.tick().await;
        let Ok(mut stream) = tokio::net::TcpStream::connect(&addr).await else {
            continue;
        };
        let request = format!("GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
        if stream.write_all(request.as_bytes()).await.is_err() {
            continue;
        }
        let mut answer = Vec::new();
        let _ = stream.read_to_end(&mut answer).await;
    }
}

struct QuorumlockClient {
    client: Client,
}

#[async_trait]
impl LockClient for QuorumlockClient {
    async fn session(&self, ttl: Duration) -> anyhow::Result<Box<dyn LockSession>> {
        let session = self.client.session(ttl).await?;
        Ok(Box::new(QuorumlockSession {
            client: self.client.clone(),
            session: Mutex::new(Some(Arc::new(session))),
        }))
    }
}

/// The session sits behind a lock only so that [`LockSession::close`] can
/// take it out and close it properly (guards dropped later then know it is
/// gone and send nothing).
struct QuorumlockSession {
    client: Client,
    session: Mutex<Option<Arc<Session>>>,
}

impl QuorumlockSession {
    fn session(&self) -> anyhow::Result<Arc<Session>> {
        self.session.lock().clone().context("the session was closed")
    }
}

#[async_trait]
impl LockSession for QuorumlockSession {
    async fn acquire(&self, name: &str) -> anyhow::Result<Held> {
        let guard = self.session()?.lock(name).await?;
        Ok(Held {
            token: guard.token().get(),
            inner: HeldInner::Quorumlock(guard),
        })
    }

    async fn release(&self, held: Held) -> anyhow::Result<()> {
        match held.inner {
            HeldInner::Quorumlock(guard) => {
                guard.release().await?;
                Ok(())
            }
            _ => anyhow::bail!("not a quorumlock lock"),
        }
    }

    async fn fenced_put(&self, held: &Held, key: &str, value: &[u8]) -> anyhow::Result<()> {
        match &held.inner {
            HeldInner::Quorumlock(guard) => {
                self.client.put(key, value.to_vec(), guard).await?;
                Ok(())
            }
            _ => anyhow::bail!("not a quorumlock lock"),
        }
    }

    fn is_lost(&self) -> bool {
        self.session().map_or(true, |session| session.is_lost())
    }

    async fn close(&self) -> anyhow::Result<()> {
        let Some(session) = self.session.lock().take() else {
            return Ok(());
        };
        match Arc::try_unwrap(session) {
            Ok(session) => {
                session.close().await?;
            }
            // An operation still runs on it: close by id instead.
            Err(session) => {
                self.client.close_session(session.key()).await?;
            }
        }
        Ok(())
    }
}
