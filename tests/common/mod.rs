//! The harness of the end-to-end suite.
//!
//! A [`Cluster`] runs real `quorumlock serve` processes of the built binary on
//! 127.0.0.1, each with its own port, data directory and log file, and talks
//! to them over gRPC. Every RPC the suite makes is bounded by a timeout, so a
//! server that hangs fails the test instead of stalling CI; every wait is a
//! polling loop with a bounded total, never a fixed sleep used as an
//! assertion. When a test panics, the cluster prints the tail of every node's
//! log as it is dropped, so the failure can be diagnosed from the test output.
//!
//! Nodes are addressed by index `0..n`; node index `i` has node id `i + 1`.

#![allow(dead_code)]

pub mod pki;

use std::fmt::Debug;
use std::fs::OpenOptions;
use std::future::Future;
use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use quorumlock_proto::v1::cluster_client::ClusterClient;
use quorumlock_proto::v1::lock_client::LockClient;
use quorumlock_proto::v1::{
    AcquireRequest, AcquireResponse, CheckTokenRequest, CheckTokenResponse, CloseSessionRequest,
    CloseSessionResponse, DeleteRequest, DeleteResponse, DescribeRequest, DescribeResponse, Fence,
    GetRequest, GetResponse, Holder, KeepAliveRequest, KeepAliveResponse, LockMode, OpenSessionRequest,
    OpenSessionResponse, PutRequest, ReleaseRequest, ReleaseResponse, StatusRequest, StatusResponse,
};
use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinHandle;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Status};

/// Bound on one ordinary RPC (not counting a lock wait).
pub const RPC_TIMEOUT: Duration = Duration::from_secs(20);
/// Bound on one `Cluster/Status` probe; kept short so polling loops progress.
pub const STATUS_TIMEOUT: Duration = Duration::from_secs(5);
/// Bound on opening a TCP/HTTP2 connection to a node.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Bound on waiting for the running nodes to agree on a leader.
pub const LEADER_WAIT: Duration = Duration::from_secs(60);
/// Bound on retrying a call that was answered UNAVAILABLE (for example just
/// after a leader change).
pub const UNAVAILABLE_RETRY_TOTAL: Duration = Duration::from_secs(30);
/// Bound on the ordinary "wait until the cluster shows X" loops.
pub const CONDITION_WAIT: Duration = Duration::from_secs(60);
/// Heartbeat interval passed to every node.
pub const HEARTBEAT_MS: u64 = 100;
/// Election timeout passed to every node. Larger than the server's default so
/// that a loaded two-core machine running several clusters does not see
/// spurious elections.
pub const ELECTION_TIMEOUT_MS: u64 = 1_000;
/// A lock wait long enough that it never passes during a test.
pub const LONG_WAIT_MS: u64 = 600_000;
/// A session TTL long enough that it never runs out during a test, so the
/// session needs no keepalive.
pub const LONG_TTL_MS: u64 = 3_600_000;

const POLL_INTERVAL: Duration = Duration::from_millis(100);
const KEEPALIVE_RECONNECT_PAUSE: Duration = Duration::from_millis(100);
const LOG_TAIL_LINES: usize = 60;
const START_ATTEMPTS_MAX: usize = 3;
const CLUSTERS_AT_ONCE_DEFAULT: usize = 2;
const CLUSTERS_AT_ONCE_VARIABLE: &str = "QUORUMLOCK_TEST_CLUSTERS_MAX";

/// Generates one `#[tokio::test]` per engine for every listed property check.
///
/// Each check is an `async fn check_<property>(engine: &str)` in the test
/// file; the macro wraps it in a module named for the engine, so the test for
/// Raft is `raft::check_<property>`. Adding an engine is one line here.
#[macro_export]
macro_rules! engine_tests {
    ($($check:ident),+ $(,)?) => {
        $crate::engine_tests!(@engine raft: $($check),+);
        $crate::engine_tests!(@engine paxos: $($check),+);
    };
    (@engine $engine:ident: $($check:ident),+) => {
        mod $engine {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $check() {
                    super::$check(stringify!($engine)).await;
                }
            )+
        }
    };
}

/// Limits how many clusters one test binary runs at once.
///
/// Tests in one file run in parallel threads; three server processes per test
/// on a two-core machine quickly starve heartbeats, so clusters take a slot
/// from this semaphore for their lifetime. The bound can be raised with the
/// `QUORUMLOCK_TEST_CLUSTERS_MAX` environment variable.
fn cluster_slots() -> Arc<Semaphore> {
    static SLOTS: OnceLock<Arc<Semaphore>> = OnceLock::new();
    SLOTS
        .get_or_init(|| {
            let clusters_max = std::env::var(CLUSTERS_AT_ONCE_VARIABLE)
                .ok()
                .and_then(|value| value.parse::<usize>().ok())
                .filter(|&value| value > 0)
                .unwrap_or(CLUSTERS_AT_ONCE_DEFAULT);
            Arc::new(Semaphore::new(clusters_max))
        })
        .clone()
}

/// A cluster slot for a cluster the test starts by other means; hold it
/// for the cluster's lifetime.
pub async fn cluster_slot() -> OwnedSemaphorePermit {
    cluster_slots()
        .acquire_owned()
        .await
        .expect("the slots are never closed")
}

/// A path inside the repository.
pub fn repo_path(relative: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(relative)
}

/// The pip packages the Python client check needs.
pub const PYTHON_REQUIREMENTS: &str = "tests/python/requirements.txt";

/// Fails the test, naming what to install, unless python3 can import grpcio,
/// grpcio-tools and grpcio-status.
pub fn require_python_packages() {
    let probe = std::process::Command::new("python3")
        .args(["-c", "import grpc, grpc_tools, grpc_status"])
        .output();
    match probe {
        Err(error) => panic!(
            "python3 is required to run the Python client check ({error}); install Python 3 and then \
             `pip install -r {PYTHON_REQUIREMENTS}` (grpcio, grpcio-tools, grpcio-status)"
        ),
        Ok(output) if !output.status.success() => panic!(
            "python3 cannot import the pip packages grpcio, grpcio-tools and grpcio-status; run \
             `pip install -r {PYTHON_REQUIREMENTS}` (as ./x test does): {}",
            String::from_utf8_lossy(&output.stderr).trim()
        ),
        Ok(_) => {}
    }
}

/// One server process slot: fixed id, address and data directory, and the
/// child process while it runs.
struct Node {
    id: u64,
    addr: SocketAddr,
    /// Where its metrics listener binds (`--metrics-listen`), if it has one.
    metrics_addr: Option<SocketAddr>,
    data_dir: PathBuf,
    log_path: PathBuf,
    child: Mutex<Option<Child>>,
    starts: Mutex<usize>,
}

impl Node {
    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

/// Why the running nodes did not agree on a leader.
enum LeaderWait {
    /// A node's process exited by itself.
    Exited { index: usize, status: ExitStatus },
    /// The bounded wait passed; the last observation says why.
    TimedOut { last: String },
}

/// A cluster of real server processes on 127.0.0.1.
pub struct Cluster {
    engine: String,
    extra_args: Vec<String>,
    peers: String,
    nodes: Vec<Node>,
    dir: tempfile::TempDir,
    _slot: OwnedSemaphorePermit,
}

impl Cluster {
    /// Starts `nodes` fresh nodes of `engine` and waits until every node
    /// reports the same leader.
    ///
    /// Ports are picked by binding port 0 and releasing it; if another process
    /// takes one of them before the node binds it, the cluster is started
    /// again on fresh ports.
    pub async fn start(engine: &str, nodes: usize) -> Cluster {
        Cluster::start_with_args(engine, nodes, &[]).await
    }

    /// Like [`Cluster::start`], passing `extra_args` to every `quorumlock serve`.
    pub async fn start_with_args(engine: &str, nodes: usize, extra_args: &[&str]) -> Cluster {
        Cluster::start_prepared(engine, nodes, extra_args, &|_, _, _| {}).await
    }

    /// Like [`Cluster::start_with_args`], calling `prepare(id, data_dir,
    /// peers)` for every node before its first start (on every start
    /// attempt), e.g. to restore a backup into its data directory.
    pub async fn start_prepared(
        engine: &str,
        nodes: usize,
        extra_args: &[&str],
        prepare: &dyn Fn(u64, &std::path::Path, &str),
    ) -> Cluster {
        Cluster::start_full(engine, nodes, extra_args, false, prepare).await
    }

    /// Like [`Cluster::start_with_args`], with every node serving its
    /// metrics listener on a port of its own ([`Cluster::metrics_addr`]).
    pub async fn start_with_metrics(engine: &str, nodes: usize, extra_args: &[&str]) -> Cluster {
        Cluster::start_full(engine, nodes, extra_args, true, &|_, _, _| {}).await
    }

    async fn start_full(
        engine: &str,
        nodes: usize,
        extra_args: &[&str],
        metrics: bool,
        prepare: &dyn Fn(u64, &std::path::Path, &str),
    ) -> Cluster {
        assert!(nodes >= 1, "a cluster needs at least one node");
        for attempt in 1..=START_ATTEMPTS_MAX {
            let slot = cluster_slots()
                .acquire_owned()
                .await
                .expect("the cluster semaphore is never closed");
            let cluster = Cluster::launch(engine, nodes, extra_args, metrics, slot, prepare);
            match cluster.poll_leader(LEADER_WAIT).await {
                Ok(_) => return cluster,
                Err(LeaderWait::Exited { index, status })
                    if attempt < START_ATTEMPTS_MAX && cluster.port_was_taken(index) =>
                {
                    eprintln!(
                        "node {} could not bind {} ({status}); starting the cluster again on fresh ports",
                        cluster.node_id(index),
                        cluster.nodes[index].addr
                    );
                }
                Err(LeaderWait::Exited { index, status }) => panic!(
                    "node {} exited during cluster start ({status}); its log is printed below",
                    cluster.node_id(index)
                ),
                Err(LeaderWait::TimedOut { last }) => panic!(
                    "the {nodes}-node {engine} cluster elected no agreed leader within {LEADER_WAIT:?}: {last}"
                ),
            }
        }
        unreachable!("the last start attempt either returns or panics")
    }

    fn launch(
        engine: &str,
        nodes: usize,
        extra_args: &[&str],
        metrics: bool,
        slot: OwnedSemaphorePermit,
        prepare: &dyn Fn(u64, &std::path::Path, &str),
    ) -> Cluster {
        let dir = tempfile::Builder::new()
            .prefix("quorumlock-test-")
            .tempdir()
            .expect("create the cluster's temporary directory");
        let ports_each = if metrics { 2 } else { 1 };
        let mut addrs: Vec<SocketAddr> = quorumlock_testkit::cluster::free_ports(nodes * ports_each)
            .expect("free ports on 127.0.0.1")
            .into_iter()
            .map(|port| SocketAddr::from(([127, 0, 0, 1], port)))
            .collect();
        let metrics_addrs: Vec<Option<SocketAddr>> = match metrics {
            true => addrs.split_off(nodes).into_iter().map(Some).collect(),
            false => vec![None; nodes],
        };
        let peers = addrs
            .iter()
            .enumerate()
            .map(|(index, addr)| format!("{}={addr}", index + 1))
            .collect::<Vec<_>>()
            .join(",");
        let nodes = addrs
            .into_iter()
            .enumerate()
            .map(|(index, addr)| {
                let id = index as u64 + 1;
                Node {
                    id,
                    addr,
                    metrics_addr: metrics_addrs[index],
                    data_dir: dir.path().join(format!("node-{id}")),
                    log_path: dir.path().join(format!("node-{id}.log")),
                    child: Mutex::new(None),
                    starts: Mutex::new(0),
                }
            })
            .collect();
        let cluster = Cluster {
            engine: engine.to_string(),
            extra_args: extra_args.iter().map(|arg| arg.to_string()).collect(),
            peers,
            nodes,
            dir,
            _slot: slot,
        };
        for node in &cluster.nodes {
            prepare(node.id, &node.data_dir, &cluster.peers);
        }
        for index in 0..cluster.len() {
            cluster.spawn(index);
        }
        cluster
    }

    fn spawn(&self, index: usize) {
        self.spawn_with(index, &[]);
    }

    fn spawn_with(&self, index: usize, more_args: &[&str]) {
        let node = &self.nodes[index];
        let mut child_slot = node.child.lock().expect("node mutex poisoned");
        assert!(child_slot.is_none(), "node {} is already running", node.id);
        let starts = {
            let mut starts = node.starts.lock().expect("node mutex poisoned");
            *starts += 1;
            *starts
        };
        let mut log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&node.log_path)
            .expect("open the node's log file");
        writeln!(
            log,
            "===== harness: start #{starts} of node {} on {} =====",
            node.id, node.addr
        )
        .expect("write the node's log file");
        let stdout = log.try_clone().expect("clone the log file handle");
        let mut command = Command::new(env!("CARGO_BIN_EXE_quorumlock"));
        command
            .arg("serve")
            .arg("--id")
            .arg(node.id.to_string())
            .arg("--listen")
            .arg(node.addr.to_string())
            .arg("--peers")
            .arg(&self.peers)
            .arg("--data-dir")
            .arg(&node.data_dir)
            .arg("--engine")
            .arg(&self.engine)
            .arg("--heartbeat-ms")
            .arg(HEARTBEAT_MS.to_string())
            .arg("--election-timeout-ms")
            .arg(ELECTION_TIMEOUT_MS.to_string())
            .args(
                node.metrics_addr
                    .map(|addr| vec!["--metrics-listen".to_string(), addr.to_string()])
                    .unwrap_or_default(),
            )
            .args(&self.extra_args)
            .args(more_args)
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(log);
        let child = command
            .spawn()
            .unwrap_or_else(|error| panic!("spawn node {}: {error}", node.id));
        *child_slot = Some(child);
    }

    fn port_was_taken(&self, index: usize) -> bool {
        let log = std::fs::read(&self.nodes[index].log_path).unwrap_or_default();
        let log = String::from_utf8_lossy(&log).to_lowercase();
        log.contains("address already in use") || log.contains("addrinuse")
    }

    /// Where node `index` serves its metrics listener, if it has one.
    pub fn metrics_addr(&self, index: usize) -> Option<SocketAddr> {
        self.nodes[index].metrics_addr
    }

    /// The engine the nodes run.
    pub fn engine(&self) -> &str {
        &self.engine
    }

    /// The number of nodes, running or not.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// The node id of node index `index`.
    pub fn node_id(&self, index: usize) -> u64 {
        self.nodes[index].id
    }

    /// The address node index `index` listens on.
    pub fn addr(&self, index: usize) -> SocketAddr {
        self.nodes[index].addr
    }

    /// The `http://` URL of node index `index`.
    pub fn url(&self, index: usize) -> String {
        self.nodes[index].url()
    }

    /// The URLs of every node, running or not.
    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(Node::url).collect()
    }

    /// The URLs of every node, node index `first`'s first: a client given
    /// them talks to that node until it fails.
    pub fn urls_first(&self, first: usize) -> Vec<String> {
        std::iter::once(first)
            .chain((0..self.len()).filter(|&index| index != first))
            .map(|index| self.url(index))
            .collect()
    }

    /// Whether node index `index` has a process (it may have crashed since).
    pub fn is_running(&self, index: usize) -> bool {
        self.nodes[index]
            .child
            .lock()
            .expect("node mutex poisoned")
            .is_some()
    }

    /// The indexes of the nodes that have a process.
    pub fn running(&self) -> Vec<usize> {
        (0..self.len()).filter(|&index| self.is_running(index)).collect()
    }

    /// Kills node index `index` with SIGKILL and reaps it. Panics if the node
    /// had already exited by itself, since that is a crash worth reporting.
    pub fn kill(&self, index: usize) {
        let node = &self.nodes[index];
        let Some(mut child) = node.child.lock().expect("node mutex poisoned").take() else {
            return;
        };
        if let Ok(Some(status)) = child.try_wait() {
            panic!(
                "node {} had already exited by itself ({status}) when the test meant to kill it",
                node.id
            );
        }
        // SIGKILL: the node gets no chance to flush anything it has not synced.
        let _ = child.kill();
        let _ = child.wait();
    }

    /// Sends SIGTERM to node index `index` and waits up to `limit` for it to
    /// exit; returns how it exited. A node that does not exit in time is
    /// killed, and the test fails naming it.
    pub async fn terminate(&self, index: usize, limit: Duration) -> ExitStatus {
        self.signal(index, nix::sys::signal::Signal::SIGTERM);
        match self.wait_for_exit(index, limit).await {
            Some(status) => status,
            None => {
                self.kill(index);
                panic!(
                    "node {} did not exit within {limit:?} of SIGTERM",
                    self.nodes[index].id
                );
            }
        }
    }

    /// Freezes node index `index` with SIGSTOP, as a long stop-the-world
    /// pause would: its sockets stay open and it answers nothing, PINGs
    /// included, until [`Cluster::resume`]. Dropping the cluster kills it
    /// frozen or not.
    pub fn pause(&self, index: usize) {
        self.signal(index, nix::sys::signal::Signal::SIGSTOP);
    }

    /// Lets a node frozen by [`Cluster::pause`] run again.
    pub fn resume(&self, index: usize) {
        self.signal(index, nix::sys::signal::Signal::SIGCONT);
    }

    /// Sends `signal` to node index `index`, which must be running.
    fn signal(&self, index: usize, signal: nix::sys::signal::Signal) {
        let node = &self.nodes[index];
        let pid = {
            let child = node.child.lock().expect("node mutex poisoned");
            child
                .as_ref()
                .unwrap_or_else(|| panic!("node {} is not running", node.id))
                .id()
        };
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), signal)
            .unwrap_or_else(|error| panic!("{signal} to node {}: {error}", node.id));
    }

    /// Waits up to `limit` for node index `index` to exit by itself, then
    /// reaps it and returns how it exited; `None` if it still runs.
    pub async fn wait_for_exit(&self, index: usize, limit: Duration) -> Option<ExitStatus> {
        let node = &self.nodes[index];
        let deadline = Instant::now() + limit;
        loop {
            {
                let mut slot = node.child.lock().expect("node mutex poisoned");
                let child = slot
                    .as_mut()
                    .unwrap_or_else(|| panic!("node {} is not running", node.id));
                if let Some(status) = child.try_wait().expect("poll the node process") {
                    slot.take();
                    return Some(status);
                }
            }
            if Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The data directory of node index `index`.
    pub fn data_dir(&self, index: usize) -> &std::path::Path {
        &self.nodes[index].data_dir
    }

    /// Starts node index `index`, which must not be running. Does not wait
    /// for it.
    pub fn start_node(&self, index: usize) {
        self.spawn(index);
    }

    /// Starts node index `index`, which must not be running, with
    /// `more_args` after the cluster's own. Does not wait for it.
    pub fn start_node_with(&self, index: usize, more_args: &[&str]) {
        self.spawn_with(index, more_args);
    }

    /// Kills every node.
    pub fn stop_all(&self) {
        for index in 0..self.len() {
            self.kill(index);
        }
    }

    /// Starts node index `index` again with the same id, port and data
    /// directory, killing it first if it still runs. Does not wait for it.
    pub fn restart(&self, index: usize) {
        self.kill(index);
        self.spawn(index);
    }

    /// Opens a gRPC channel to node index `index`.
    pub async fn channel(&self, index: usize) -> Channel {
        let url = self.url(index);
        connect(&url)
            .await
            .unwrap_or_else(|error| panic!("connect to node {} at {url}: {error:#}", self.node_id(index)))
    }

    /// A `Lock` client connected to node index `index`.
    pub async fn client(&self, index: usize) -> LockClient<Channel> {
        LockClient::new(self.channel(index).await)
    }

    /// A `Lock` client connected to the first running node.
    pub async fn any_client(&self) -> LockClient<Channel> {
        let index = *self
            .running()
            .first()
            .expect("no node is running, so no client can connect");
        self.client(index).await
    }

    /// A `Lock` client connected to the current leader.
    pub async fn leader_client(&self) -> LockClient<Channel> {
        let index = self.wait_for_leader().await;
        self.client(index).await
    }

    /// One `Cluster/Status` probe of node index `index`.
    pub async fn status(&self, index: usize) -> anyhow::Result<StatusResponse> {
        self.status_request(index, false).await
    }

    /// `Cluster/Status` of node index `index` with its state digest.
    pub async fn status_with_digest(&self, index: usize) -> anyhow::Result<StatusResponse> {
        self.status_request(index, true).await
    }

    /// Waits until every node has applied the same index with the same
    /// state digest, and returns that index.
    pub async fn wait_for_one_state(&self, what: &str) -> u64 {
        wait_until(what, CONDITION_WAIT, || async {
            let mut seen = Vec::new();
            for index in 0..self.len() {
                let status = self
                    .status_with_digest(index)
                    .await
                    .map_err(|error| format!("{error:#}"))?;
                seen.push((status.applied_index, status.state_digest));
            }
            let first = &seen[0];
            if first.1.len() == 32 && seen.iter().all(|other| other == first) {
                Ok(first.0)
            } else {
                Err(format!(
                    "(applied index, digest length) per node: {:?}",
                    seen.iter()
                        .map(|(index, digest)| (*index, digest.len()))
                        .collect::<Vec<_>>()
                ))
            }
        })
        .await
    }

    async fn status_request(
        &self,
        index: usize,
        include_state_digest: bool,
    ) -> anyhow::Result<StatusResponse> {
        let mut client = ClusterClient::new(connect(&self.url(index)).await?);
        let request = StatusRequest { include_state_digest };
        let response = tokio::time::timeout(STATUS_TIMEOUT, client.status(request))
            .await
            .map_err(|_| anyhow::anyhow!("Status gave no answer within {STATUS_TIMEOUT:?}"))??;
        Ok(response.into_inner())
    }

    /// The index of the leader the running nodes agree on (see
    /// [`Cluster::wait_for_leader`]).
    pub async fn leader_index(&self) -> usize {
        self.wait_for_leader().await
    }

    /// A running node that is not the leader.
    pub async fn follower_index(&self) -> usize {
        let leader = self.wait_for_leader().await;
        self.running()
            .into_iter()
            .find(|&index| index != leader)
            .expect("no running follower")
    }

    /// Waits until every running node reports the same nonzero leader, that
    /// leader is itself running and says it leads, and returns its index.
    /// Panics after [`LEADER_WAIT`], or when a node exits by itself.
    pub async fn wait_for_leader(&self) -> usize {
        match self.poll_leader(LEADER_WAIT).await {
            Ok(index) => index,
            Err(LeaderWait::Exited { index, status }) => panic!(
                "node {} exited by itself ({status}) while the test waited for a leader",
                self.node_id(index)
            ),
            Err(LeaderWait::TimedOut { last }) => panic!(
                "the running nodes {:?} agreed on no leader within {LEADER_WAIT:?}: {last}",
                self.running_ids()
            ),
        }
    }

    fn running_ids(&self) -> Vec<u64> {
        self.running()
            .into_iter()
            .map(|index| self.node_id(index))
            .collect()
    }

    async fn poll_leader(&self, limit: Duration) -> Result<usize, LeaderWait> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some((index, status)) = self.exited_node() {
                return Err(LeaderWait::Exited { index, status });
            }
            let last = match self.agreed_leader().await {
                Ok(index) => return Ok(index),
                Err(why) => why,
            };
            if Instant::now() >= deadline {
                return Err(LeaderWait::TimedOut { last });
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }

    /// A node whose process exited by itself, if any. The process is left in
    /// place so that [`Cluster::kill`] can report it too.
    fn exited_node(&self) -> Option<(usize, ExitStatus)> {
        (0..self.len()).find_map(|index| {
            let mut child = self.nodes[index].child.lock().expect("node mutex poisoned");
            let status = child.as_mut()?.try_wait().ok()??;
            Some((index, status))
        })
    }

    async fn agreed_leader(&self) -> Result<usize, String> {
        let running = self.running();
        if running.is_empty() {
            return Err("no node is running".to_string());
        }
        let mut statuses = Vec::with_capacity(running.len());
        for &index in &running {
            let status = self
                .status(index)
                .await
                .map_err(|error| format!("node {}: {error:#}", self.node_id(index)))?;
            assert_eq!(
                status.node_id,
                self.node_id(index),
                "node index {index} reports the wrong node id"
            );
            statuses.push((index, status));
        }
        let leader_ids: Vec<u64> = statuses.iter().map(|(_, status)| status.leader_id).collect();
        let leader_id = leader_ids[0];
        if leader_id == 0 || leader_ids.iter().any(|&id| id != leader_id) {
            return Err(format!(
                "running nodes {:?} report leaders {leader_ids:?}",
                self.running_ids()
            ));
        }
        let Some((leader_index, leader_status)) = statuses
            .iter()
            .find(|(index, _)| self.node_id(*index) == leader_id)
        else {
            return Err(format!(
                "running nodes {:?} follow node {leader_id}, which is not running",
                self.running_ids()
            ));
        };
        if !leader_status.is_leader {
            return Err(format!(
                "the nodes follow node {leader_id}, but it does not say it leads"
            ));
        }
        Ok(*leader_index)
    }

    /// Opens a session of `ttl_ms` through a running node, retrying while the
    /// cluster answers UNAVAILABLE, and keeps it alive from a background task
    /// that sends a keepalive every `ttl_ms / 3` and reconnects to another
    /// node when its stream breaks.
    pub async fn session(&self, ttl_ms: u64) -> Session {
        let key = self.open_session_key(ttl_ms).await;
        Session {
            id: key.id,
            key,
            ttl_ms,
            keepalive: Some(KeepAlive::spawn(self.urls(), key, ttl_ms)),
        }
    }

    /// Opens a session of `ttl_ms` through a running node, retrying while the
    /// cluster answers UNAVAILABLE, without any keepalive.
    pub async fn open_session_key(&self, ttl_ms: u64) -> Key {
        let client = self.any_client().await;
        let opened = retry_unavailable("OpenSession", || open_session(&client, ttl_ms))
            .await
            .unwrap_or_else(|status| panic!("OpenSession(ttl_ms = {ttl_ms}) failed: {status:?}"));
        assert_eq!(opened.ttl_ms, ttl_ms, "OpenSession granted a different TTL");
        assert_ne!(opened.session_id, 0, "OpenSession returned session id 0");
        Key::of(&opened)
    }

    /// The whole log of node index `index` so far.
    pub fn log(&self, index: usize) -> String {
        let log = std::fs::read(&self.nodes[index].log_path).unwrap_or_default();
        String::from_utf8_lossy(&log).into_owned()
    }

    /// What node index `index` logged since it was last started.
    pub fn this_start(&self, index: usize) -> String {
        self.log(index)
            .rsplit("===== harness: start #")
            .next()
            .unwrap_or_default()
            .to_string()
    }

    /// The last lines of every node's log, for failure reports.
    pub fn log_tails(&self) -> String {
        let mut out = format!("cluster directory: {}\n", self.dir.path().display());
        for node in &self.nodes {
            let log = std::fs::read(&node.log_path).unwrap_or_default();
            let log = String::from_utf8_lossy(&log);
            let lines: Vec<&str> = log.lines().collect();
            let from = lines.len().saturating_sub(LOG_TAIL_LINES);
            out.push_str(&format!(
                "----- node {} ({}), last {} of {} log lines -----\n",
                node.id,
                node.addr,
                lines.len() - from,
                lines.len()
            ));
            for line in &lines[from..] {
                out.push_str(line);
                out.push('\n');
            }
        }
        out
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for node in &self.nodes {
            let child = node.child.lock().map(|mut child| child.take());
            if let Ok(Some(mut child)) = child {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        if std::thread::panicking() {
            eprintln!("{}", self.log_tails());
        }
    }
}

/// Opens a gRPC channel to `url` with bounded connect time.
pub async fn connect(url: &str) -> anyhow::Result<Channel> {
    let endpoint = Endpoint::from_shared(url.to_string())?
        .connect_timeout(CONNECT_TIMEOUT)
        .tcp_nodelay(true);
    let channel = tokio::time::timeout(CONNECT_TIMEOUT * 2, endpoint.connect())
        .await
        .map_err(|_| anyhow::anyhow!("connecting to {url} took longer than {:?}", CONNECT_TIMEOUT * 2))??;
    Ok(channel)
}

/// What a call on a session presents: its id and the secret `OpenSession`
/// returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Key {
    /// The session id.
    pub id: u64,
    /// Its secret.
    pub secret: [u8; 32],
}

/// A key prints as its session id: the secret stays out of messages.
impl std::fmt::Display for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.id)
    }
}

impl Key {
    /// The key `OpenSession` answered with.
    pub fn of(opened: &OpenSessionResponse) -> Key {
        Key {
            id: opened.session_id,
            secret: opened.session_secret.as_slice().try_into().unwrap_or_else(|_| {
                panic!(
                    "OpenSession returned a secret of {} bytes",
                    opened.session_secret.len()
                )
            }),
        }
    }

    /// The same id with another secret: an impostor's key.
    pub fn forged(self) -> Key {
        let mut secret = self.secret;
        secret[0] ^= 0x5a;
        Key { secret, ..self }
    }
}

/// A session opened by the test, with its optional keepalive task.
pub struct Session {
    /// The session id the cluster assigned.
    pub id: u64,
    /// The id and secret that calls on it present.
    pub key: Key,
    /// The TTL it was opened with.
    pub ttl_ms: u64,
    keepalive: Option<KeepAlive>,
}

impl Session {
    /// Stops sending keepalives, as a client that died would. The session
    /// then expires one TTL after the last keepalive reached the leader.
    /// Returns how the keepalive task ended.
    pub async fn stop_keepalive(&mut self) -> Option<KeepAliveEnd> {
        match self.keepalive.take() {
            Some(keepalive) => Some(keepalive.stop().await),
            None => None,
        }
    }

    /// Whether the keepalive task has ended by itself (the session is gone).
    pub fn keepalive_ended(&self) -> bool {
        self.keepalive
            .as_ref()
            .is_some_and(|keepalive| keepalive.is_finished())
    }
}

/// How a keepalive task ended.
#[derive(Debug)]
pub enum KeepAliveEnd {
    /// The test stopped it.
    Stopped,
    /// A node answered NOT_FOUND: the session is gone.
    SessionGone(Status),
}

/// A background task that keeps one session alive.
pub struct KeepAlive {
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<KeepAliveEnd>>,
}

impl KeepAlive {
    /// Starts keeping `session_id` alive, sending a renewal every
    /// `ttl_ms / 3` over a KeepAlive stream to one of `urls`; when a stream
    /// breaks it moves on to the next URL.
    pub fn spawn(urls: Vec<String>, session_id: Key, ttl_ms: u64) -> KeepAlive {
        assert!(!urls.is_empty(), "a keepalive needs at least one node");
        let (stop_sender, stop_receiver) = oneshot::channel();
        let period = Duration::from_millis((ttl_ms / 3).max(1));
        let task = tokio::spawn(keepalive_loop(urls, session_id, period, stop_receiver));
        KeepAlive {
            stop: Some(stop_sender),
            task: Some(task),
        }
    }

    /// Stops the task (dropping its stream, as a crashed client would) and
    /// returns how it ended.
    pub async fn stop(mut self) -> KeepAliveEnd {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let task = self.task.take().expect("the task is present until stopped");
        match tokio::time::timeout(RPC_TIMEOUT, task).await {
            Ok(Ok(end)) => end,
            Ok(Err(error)) => panic!("the keepalive task failed: {error}"),
            Err(_) => panic!("the keepalive task did not stop within {RPC_TIMEOUT:?}"),
        }
    }

    /// Whether the task has ended by itself.
    pub fn is_finished(&self) -> bool {
        self.task.as_ref().is_some_and(JoinHandle::is_finished)
    }
}

impl Drop for KeepAlive {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

async fn keepalive_loop(
    urls: Vec<String>,
    session_id: Key,
    period: Duration,
    mut stop: oneshot::Receiver<()>,
) -> KeepAliveEnd {
    let mut attempt = 0usize;
    loop {
        let url = &urls[attempt % urls.len()];
        attempt += 1;
        tokio::select! {
            _ = &mut stop => return KeepAliveEnd::Stopped,
            gone = keepalive_stream(url, session_id, period) => {
                if let Some(status) = gone {
                    return KeepAliveEnd::SessionGone(status);
                }
            }
        }
        tokio::select! {
            _ = &mut stop => return KeepAliveEnd::Stopped,
            _ = tokio::time::sleep(KEEPALIVE_RECONNECT_PAUSE) => {}
        }
    }
}

/// Runs one KeepAlive stream against `url` until it breaks. Returns the
/// NOT_FOUND status when the session is gone, or `None` when the stream broke
/// for another reason and should be opened again elsewhere.
async fn keepalive_stream(url: &str, session: Key, period: Duration) -> Option<Status> {
    let channel = connect(url).await.ok()?;
    let mut client = LockClient::new(channel);
    let request = KeepAliveRequest {
        session_id: session.id,
        session_secret: session.secret.to_vec(),
    };
    let (sender, receiver) = mpsc::channel(4);
    sender.try_send(request.clone()).ok()?;
    let mut responses =
        match tokio::time::timeout(RPC_TIMEOUT, client.keep_alive(ReceiverStream::new(receiver))).await {
            Ok(Ok(response)) => response.into_inner(),
            Ok(Err(status)) if status.code() == Code::NotFound => return Some(status),
            Ok(Err(_)) | Err(_) => return None,
        };
    let mut ticker = tokio::time::interval(period);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The first tick completes at once; the first renewal was already sent.
    ticker.tick().await;
    let mut last_answer = Instant::now();
    loop {
        tokio::select! {
            _ = ticker.tick() => {
                // A stream that stopped answering is abandoned for another
                // node before the lease could run out.
                if last_answer.elapsed() > period * 2 {
                    return None;
                }
                // A full buffer means the node is not reading; skipping a
                // renewal is then better than blocking the loop.
                if let Err(mpsc::error::TrySendError::Closed(_)) = sender.try_send(request.clone()) {
                    return None;
                }
            }
            message = responses.message() => match message {
                Ok(Some(_)) => last_answer = Instant::now(),
                Ok(None) => return None,
                Err(status) if status.code() == Code::NotFound => return Some(status),
                Err(_) => return None,
            }
        }
    }
}

/// Awaits one RPC, panicking if it gives no answer within `limit`.
pub async fn call<T, F>(what: &str, limit: Duration, rpc: F) -> Result<T, Status>
where
    F: Future<Output = Result<tonic::Response<T>, Status>>,
{
    match tokio::time::timeout(limit, rpc).await {
        Ok(result) => result.map(tonic::Response::into_inner),
        Err(_) => panic!("{what} gave no answer within {limit:?}"),
    }
}

/// Repeats `attempt` while it is answered UNAVAILABLE, for at most
/// [`UNAVAILABLE_RETRY_TOTAL`]; returns the first other outcome, or the last
/// UNAVAILABLE. Only for calls that are safe to repeat.
pub async fn retry_unavailable<T, F, Fut>(what: &str, mut attempt: F) -> Result<T, Status>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, Status>>,
{
    let deadline = Instant::now() + UNAVAILABLE_RETRY_TOTAL;
    loop {
        match attempt().await {
            Err(status) if status.code() == Code::Unavailable && Instant::now() < deadline => {
                eprintln!("{what}: UNAVAILABLE ({}); retrying", status.message());
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            outcome => return outcome,
        }
    }
}

/// Polls `probe` until it returns `Ok`, for at most `limit`; panics with the
/// last reason it gave otherwise.
pub async fn wait_until<T, F, Fut>(what: &str, limit: Duration, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, String>>,
{
    let deadline = Instant::now() + limit;
    loop {
        let last = match probe().await {
            Ok(value) => return value,
            Err(why) => why,
        };
        if Instant::now() >= deadline {
            panic!("waited {limit:?} for {what}; last observation: {last}");
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

/// Asserts that `result` is an error with exactly `code`, and returns it.
pub fn expect_code<T: Debug>(what: &str, result: Result<T, Status>, code: Code) -> Status {
    match result {
        Err(status) if status.code() == code => status,
        Err(status) => panic!(
            "{what}: expected {code:?}, got {:?}: {}",
            status.code(),
            status.message()
        ),
        Ok(value) => panic!("{what}: expected {code:?}, got OK: {value:?}"),
    }
}

/// The decimal numbers that appear in `text`.
pub fn numbers_in(text: &str) -> Vec<u64> {
    text.split(|c: char| !c.is_ascii_digit())
        .filter(|part| !part.is_empty())
        .filter_map(|part| part.parse().ok())
        .collect()
}

/// Asserts that a status message names every one of `tokens`.
pub fn assert_names_tokens(what: &str, status: &Status, tokens: &[u64]) {
    let numbers = numbers_in(status.message());
    for token in tokens {
        assert!(
            numbers.contains(token),
            "{what}: the message {:?} does not name token {token}",
            status.message()
        );
    }
}

/// Fails unless `result` is an error with `code` whose typed detail (the
/// status details every refusal carries) has `reason`; returns the detail.
pub fn expect_refusal<T: Debug>(
    what: &str,
    result: Result<T, Status>,
    code: Code,
    reason: quorumlock_proto::v1::ErrorReason,
) -> quorumlock_proto::v1::ErrorDetail {
    let status = expect_code(what, result, code);
    let detail = quorumlock_proto::details::detail(&status)
        .unwrap_or_else(|| panic!("{what}: the refusal carries no typed detail: {status:?}"));
    assert_eq!(
        detail.reason(),
        reason,
        "{what}: the detail's reason is {:?}, not {reason:?}: {detail:?}",
        detail.reason()
    );
    detail
}

/// A fence naming `lock` and `token`.
pub fn fence(lock: &str, token: u64) -> Option<Fence> {
    Some(Fence {
        lock: lock.as_bytes().to_vec(),
        token,
    })
}

/// `OpenSession`.
pub async fn open_session(client: &LockClient<Channel>, ttl_ms: u64) -> Result<OpenSessionResponse, Status> {
    let mut client = client.clone();
    call(
        "OpenSession",
        RPC_TIMEOUT,
        client.open_session(OpenSessionRequest { ttl_ms }),
    )
    .await
}

/// `CloseSession`.
pub async fn close_session(
    client: &LockClient<Channel>,
    session: Key,
) -> Result<CloseSessionResponse, Status> {
    let mut client = client.clone();
    let request = CloseSessionRequest {
        session_id: session.id,
        session_secret: session.secret.to_vec(),
    };
    call("CloseSession", RPC_TIMEOUT, client.close_session(request)).await
}

/// Opens a KeepAlive stream, sends one renewal and reads one answer.
/// `Ok(None)` means the stream ended cleanly without an answer.
pub async fn keep_alive_once(
    client: &LockClient<Channel>,
    session: Key,
) -> Result<Option<KeepAliveResponse>, Status> {
    let mut client = client.clone();
    let (sender, receiver) = mpsc::channel(1);
    sender
        .try_send(KeepAliveRequest {
            session_id: session.id,
            session_secret: session.secret.to_vec(),
        })
        .expect("a fresh channel has room");
    let exchange = async {
        let mut responses = client
            .keep_alive(ReceiverStream::new(receiver))
            .await?
            .into_inner();
        responses.message().await
    };
    let outcome = match tokio::time::timeout(RPC_TIMEOUT, exchange).await {
        Ok(outcome) => outcome,
        Err(_) => panic!("KeepAlive gave no answer within {RPC_TIMEOUT:?}"),
    };
    // The request stream stays open until the answer arrived.
    drop(sender);
    outcome
}

/// `Acquire`; the RPC bound covers the lock wait.
pub async fn acquire(
    client: &LockClient<Channel>,
    session: Key,
    name: impl AsRef<[u8]>,
    wait_ms: u64,
) -> Result<AcquireResponse, Status> {
    let request = AcquireRequest {
        session_id: session.id,
        name: name.as_ref().to_vec(),
        wait_ms,
        session_secret: session.secret.to_vec(),
        ..AcquireRequest::default()
    };
    acquire_with(client, request).await
}

/// `Acquire` of any request (a mode, permits); the RPC bound covers the
/// lock wait.
pub async fn acquire_with(
    client: &LockClient<Channel>,
    request: AcquireRequest,
) -> Result<AcquireResponse, Status> {
    let mut client = client.clone();
    let limit = RPC_TIMEOUT + Duration::from_millis(request.wait_ms);
    call("Acquire", limit, client.acquire(request)).await
}

/// `Acquire` that must grant: panics unless the answer is OK with
/// `acquired = true`, and returns the token.
pub async fn acquire_granted(client: &LockClient<Channel>, session: Key, name: &str, wait_ms: u64) -> u64 {
    let session_id = session.id;
    let granted = acquire(client, session, name, wait_ms)
        .await
        .unwrap_or_else(|status| panic!("Acquire({name:?}) by session {session_id}: {status:?}"));
    assert!(
        granted.acquired,
        "Acquire({name:?}) by session {session_id} was not granted: {granted:?}"
    );
    assert_ne!(granted.token, 0, "a grant carries a nonzero token");
    granted.token
}

/// `Release`.
pub async fn release(
    client: &LockClient<Channel>,
    session: Key,
    name: impl AsRef<[u8]>,
    token: u64,
) -> Result<ReleaseResponse, Status> {
    let mut client = client.clone();
    let request = ReleaseRequest {
        session_id: session.id,
        name: name.as_ref().to_vec(),
        token,
        session_secret: session.secret.to_vec(),
    };
    call("Release", RPC_TIMEOUT, client.release(request)).await
}

/// `Describe`.
pub async fn describe(
    client: &LockClient<Channel>,
    name: impl AsRef<[u8]>,
) -> Result<DescribeResponse, Status> {
    let mut client = client.clone();
    let request = DescribeRequest {
        name: name.as_ref().to_vec(),
    };
    call("Describe", RPC_TIMEOUT, client.describe(request)).await
}

/// `Describe` that must succeed. A read is safe to repeat, so one answered
/// UNAVAILABLE (a leader change under load: the node asked stopped leading
/// between routing the call and reading) is retried, as README tells clients.
pub async fn describe_ok(client: &LockClient<Channel>, name: &str) -> DescribeResponse {
    retry_unavailable(&format!("Describe({name:?})"), || describe(client, name))
        .await
        .unwrap_or_else(|status| panic!("Describe({name:?}): {status:?}"))
}

/// Polls `Describe` until the lock's queue has `queue_length` waiters.
pub async fn wait_for_queue_length(client: &LockClient<Channel>, name: &str, queue_length: u64) {
    wait_until(
        &format!("lock {name:?} to have {queue_length} waiters"),
        CONDITION_WAIT,
        || async {
            let described = describe(client, name)
                .await
                .map_err(|status| format!("Describe failed: {status:?}"))?;
            if described.queue_length == queue_length {
                Ok(())
            } else {
                Err(format!("Describe says {described:?}"))
            }
        },
    )
    .await
}

/// `Put`.
/// `Put` by `session`, which must hold the fence's lock.
pub async fn put(
    client: &LockClient<Channel>,
    key: impl AsRef<[u8]>,
    value: impl AsRef<[u8]>,
    fence: Option<Fence>,
    session: Key,
) -> Result<(), Status> {
    let mut client = client.clone();
    let request = PutRequest {
        key: key.as_ref().to_vec(),
        value: value.as_ref().to_vec(),
        fence,
        session_id: session.id,
        session_secret: session.secret.to_vec(),
    };
    call("Put", RPC_TIMEOUT, client.put(request)).await.map(|_| ())
}

/// `Get`.
pub async fn get(client: &LockClient<Channel>, key: impl AsRef<[u8]>) -> Result<GetResponse, Status> {
    let mut client = client.clone();
    let request = GetRequest {
        key: key.as_ref().to_vec(),
        fence: None,
    };
    call("Get", RPC_TIMEOUT, client.get(request)).await
}

/// `Delete`.
/// `Delete` by `session`, which must hold the fence's lock.
pub async fn delete(
    client: &LockClient<Channel>,
    key: impl AsRef<[u8]>,
    fence: Option<Fence>,
    session: Key,
) -> Result<DeleteResponse, Status> {
    let mut client = client.clone();
    let request = DeleteRequest {
        key: key.as_ref().to_vec(),
        fence,
        session_id: session.id,
        session_secret: session.secret.to_vec(),
    };
    call("Delete", RPC_TIMEOUT, client.delete(request)).await
}

/// `CheckToken`.
pub async fn check_token(
    client: &LockClient<Channel>,
    lock: impl AsRef<[u8]>,
    token: u64,
) -> Result<CheckTokenResponse, Status> {
    let mut client = client.clone();
    let request = CheckTokenRequest {
        lock: lock.as_ref().to_vec(),
        token,
        ..CheckTokenRequest::default()
    };
    call("CheckToken", RPC_TIMEOUT, client.check_token(request)).await
}

/// Asserts that `Describe` shows `holder` holding `lock` with `token` and
/// `queue_length` waiters.
pub async fn assert_held(
    client: &LockClient<Channel>,
    lock: &str,
    holder: u64,
    token: u64,
    queue_length: u64,
) {
    let described = describe_ok(client, lock).await;
    let expected = DescribeResponse {
        held: true,
        holder_session_id: holder,
        token,
        queue_length,
        mode: LockMode::Exclusive.into(),
        holders: vec![Holder {
            session_id: holder,
            token,
            permits: 0,
            ..Holder::default()
        }],
        waiters: described.waiters.clone(),
        ..DescribeResponse::default()
    };
    assert_eq!(described, expected, "Describe({lock:?})");
    assert_eq!(
        described.waiters.len() as u64,
        queue_length,
        "Describe({lock:?}) lists every waiter"
    );
}

/// Asserts that `Describe` shows `lock` free with no waiters.
pub async fn assert_free(client: &LockClient<Channel>, lock: &str) {
    let described = describe_ok(client, lock).await;
    assert!(
        !described.held && described.holder_session_id == 0 && described.queue_length == 0,
        "Describe({lock:?}) should show a free lock, got {described:?}"
    );
}

/// The largest file of `dir` whose name ends with `suffix`.
pub fn largest_file(dir: &std::path::Path, suffix: &str) -> std::path::PathBuf {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.is_file() && path.to_string_lossy().ends_with(suffix))
        .max_by_key(|path| std::fs::metadata(path).unwrap().len())
        .unwrap_or_else(|| panic!("no {suffix} file in {}", dir.display()))
}

/// Inverts `len` bytes in the middle of `file`.
pub fn flip_middle(file: &std::path::Path, len: usize) {
    let mut bytes = std::fs::read(file).unwrap();
    assert!(
        bytes.len() > 2 * len,
        "{} has {} bytes",
        file.display(),
        bytes.len()
    );
    let at = bytes.len() / 2;
    for byte in &mut bytes[at..at + len] {
        *byte = !*byte;
    }
    std::fs::write(file, bytes).unwrap();
}

/// A new session of `ttl_ms` (kept alive) takes `<prefix>/held` and writes
/// 100 keys `<prefix>/key/<n>` of 300 bytes `n` under its token; returns
/// the session and the token once every node applied the writes.
pub async fn hold_and_write(cluster: &Cluster, ttl_ms: u64, prefix: &str) -> (Session, u64) {
    let holder = cluster.session(ttl_ms).await;
    let client = cluster.leader_client().await;
    let lock = format!("{prefix}/held");
    let token = acquire_granted(&client, holder.key, &lock, 0).await;
    for n in 0..100 {
        put(
            &client,
            format!("{prefix}/key/{n}"),
            vec![n as u8; 300],
            fence(&lock, token),
            holder.key,
        )
        .await
        .expect("a fenced put");
    }
    cluster
        .wait_for_one_state("all three nodes applied the writes")
        .await;
    (holder, token)
}
