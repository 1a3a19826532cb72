//! Local clusters of `quorumlock serve` processes on 127.0.0.1.
//!
//! The demo, the benchmarks and the chaos runner all need the same thing: a
//! few real node processes, each with its own RocksDB directory, that can be
//! killed with SIGKILL, frozen with SIGSTOP, restarted on the same directory,
//! and asked who leads. [`ProcessCluster`] is that. Every process it started
//! and still runs is killed when it is dropped; it signals only processes it
//! started.
//!
//! Peers can be routed: [`ClusterSpec::route`] chooses the address node `a`
//! uses to reach node `b`, so a fault-injecting proxy can sit on every link.
//! A node can also join a running cluster later ([`ProcessCluster::join`]),
//! with `serve --join` and an empty data directory.

mod process;

use std::collections::BTreeMap;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use tokio::time::Instant;

pub use process::{process_usage, NodeProcess, ProcessUsage, LOG_TAIL_LINES};
use quorumlock_client::{node_status, ClientConfig, ClientTls};

/// Attempts at starting the cluster when a picked port was taken meanwhile.
pub const START_ATTEMPTS_MAX: usize = 3;
/// Longest wait for the nodes to agree on a leader.
pub const LEADER_WAIT_MAX: Duration = Duration::from_secs(60);
const POLL_INTERVAL: Duration = Duration::from_millis(50);
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// Chooses the address node index `from` dials to reach node index `to`,
/// and for `from == to` the address a node names itself by in its
/// `--peers`; the default is `to`'s own listen address.
pub type Route = Arc<dyn Fn(usize, usize) -> String + Send + Sync>;

/// What to start.
#[derive(Clone)]
pub struct ClusterSpec {
    /// The `quorumlock` executable.
    pub exe: PathBuf,
    /// `raft` or `paxos`.
    pub engine: String,
    /// Number of nodes, 1 to 9.
    pub nodes: usize,
    /// `--heartbeat-ms`.
    pub heartbeat_ms: u64,
    /// `--election-timeout-ms`.
    pub election_timeout_ms: u64,
    /// Flags added to every node's command line; `{id}` in them is replaced
    /// by the node's id, for per-node files.
    pub extra_args: Vec<String>,
    /// Environment variables set for every node (e.g. `RUST_LOG`).
    pub env: Vec<(String, String)>,
    /// Parent of the nodes' data directories and logs; a temporary
    /// directory, deleted on drop, when `None`.
    pub dir: Option<PathBuf>,
    /// Listen ports; free ones are picked when `None`.
    pub ports: Option<Vec<u16>>,
    /// Peer routing; direct when `None`.
    pub route: Option<Route>,
    /// The TLS config the harness's own probes use, for a cluster whose
    /// `extra_args` turn TLS on; plaintext when `None`.
    pub client_tls: Option<ClientTls>,
}

impl ClusterSpec {
    /// `nodes` nodes of `engine` from `exe`, with the demo's timings.
    pub fn new(exe: impl Into<PathBuf>, engine: &str, nodes: usize) -> ClusterSpec {
        ClusterSpec {
            exe: exe.into(),
            engine: engine.to_string(),
            nodes,
            heartbeat_ms: 100,
            election_timeout_ms: 1_000,
            extra_args: Vec::new(),
            env: Vec::new(),
            dir: None,
            ports: None,
            route: None,
            client_tls: None,
        }
    }
}

/// The leader the running nodes agree on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Leader {
    /// Index of the leader in [`ProcessCluster::endpoints`].
    pub index: usize,
    /// Its node id (index + 1).
    pub id: u64,
    /// Its term or ballot round.
    pub term: u64,
}

/// Running node processes.
pub struct ProcessCluster {
    spec: ClusterSpec,
    nodes: Vec<NodeProcess>,
    root: PathBuf,
    // Held for its lifetime: the directory is deleted on drop.
    _temp: Option<tempfile::TempDir>,
}

impl ProcessCluster {
    /// Starts the cluster and waits until its nodes agree on a leader;
    /// retries on fresh ports if a picked port was taken meanwhile.
    pub async fn start(spec: ClusterSpec) -> anyhow::Result<ProcessCluster> {
        anyhow::ensure!((1..=9).contains(&spec.nodes), "a cluster has 1 to 9 nodes");
        for attempt in 1..=START_ATTEMPTS_MAX {
            let mut cluster = ProcessCluster::launch(spec.clone())?;
            match cluster.wait_for_leader().await {
                Ok(_) => return Ok(cluster),
                Err(error)
                    if attempt < START_ATTEMPTS_MAX && spec.ports.is_none() && cluster.port_was_taken() =>
                {
                    tracing::warn!(%error, "a port was taken; starting the cluster again on fresh ports");
                }
                Err(error) => return Err(error),
            }
        }
        unreachable!("the last attempt returns")
    }

    /// Starts the processes without waiting for a leader.
    pub fn launch(spec: ClusterSpec) -> anyhow::Result<ProcessCluster> {
        let (root, temp) = match &spec.dir {
            Some(dir) => {
                std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
                (dir.clone(), None)
            }
            None => {
                let temp = tempfile::Builder::new()
                    .prefix("quorumlock-cluster-")
                    .tempdir()
                    .context("creating a temporary directory")?;
                (temp.path().to_path_buf(), Some(temp))
            }
        };
        let ports = match &spec.ports {
            Some(ports) => {
                anyhow::ensure!(ports.len() == spec.nodes, "one port per node");
                ports.clone()
            }
            None => free_ports(spec.nodes)?,
        };
        let addrs: Vec<String> = ports.iter().map(|port| format!("127.0.0.1:{port}")).collect();
        let mut nodes = Vec::with_capacity(spec.nodes);
        for (index, addr) in addrs.iter().enumerate() {
            let id = index as u64 + 1;
            let peers = (0..spec.nodes)
                .map(|to| {
                    let dialed = match &spec.route {
                        Some(route) => route(index, to),
                        None => addrs[to].clone(),
                    };
                    format!("{}={dialed}", to + 1)
                })
                .collect::<Vec<_>>()
                .join(",");
            let mut args = serve_args(&spec, &root, id, addr);
            args.extend(["--peers".to_string(), peers]);
            let mut node = node_process(&spec, &root, id, addr, args);
            node.start()?;
            nodes.push(node);
        }
        Ok(ProcessCluster {
            spec,
            nodes,
            root,
            _temp: temp,
        })
    }

    /// Starts node `id`, which must be the next id (`len() + 1`, so that a
    /// node's index stays its id minus one), with `serve --join members`
    /// and an empty data directory, listening on `addr`. It serves once the
    /// leader added it; its restarts keep `--join` and find their data.
    pub fn join(&mut self, id: u64, addr: &str, members: &[String]) -> anyhow::Result<usize> {
        anyhow::ensure!(
            id == self.nodes.len() as u64 + 1,
            "node {id} cannot join as node {}",
            self.nodes.len() + 1
        );
        anyhow::ensure!(!members.is_empty(), "a joining node needs a member to name");
        let data_dir = self.root.join(format!("node-{id}"));
        anyhow::ensure!(
            !data_dir.exists(),
            "{} exists: a joining node starts empty",
            data_dir.display()
        );
        let mut args = serve_args(&self.spec, &self.root, id, addr);
        args.extend(["--join".to_string(), members.join(",")]);
        let mut node = node_process(&self.spec, &self.root, id, addr, args);
        node.start()?;
        self.nodes.push(node);
        Ok(self.nodes.len() - 1)
    }

    /// The spec the cluster was started from.
    pub fn spec(&self) -> &ClusterSpec {
        &self.spec
    }

    /// Number of nodes, running or not.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Whether the cluster has no nodes (never, once started).
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// Every node's listen address, running or not.
    pub fn endpoints(&self) -> Vec<String> {
        self.nodes.iter().map(|node| node.addr().to_string()).collect()
    }

    /// Node `index`.
    pub fn node(&self, index: usize) -> &NodeProcess {
        &self.nodes[index]
    }

    /// Node `index`, to signal or restart it.
    pub fn node_mut(&mut self, index: usize) -> &mut NodeProcess {
        &mut self.nodes[index]
    }

    /// Node `index`'s data directory.
    pub fn data_dir(&self, index: usize) -> PathBuf {
        self.root.join(format!("node-{}", index + 1))
    }

    /// The directory holding data directories and logs.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Waits until every running, unpaused node names the same leader, which
    /// says it leads. Fails if a node exits by itself, quoting its log.
    pub async fn wait_for_leader(&mut self) -> anyhow::Result<Leader> {
        self.wait_for_leader_within(LEADER_WAIT_MAX).await
    }

    /// [`ProcessCluster::wait_for_leader`] with a chosen limit.
    pub async fn wait_for_leader_within(&mut self, limit: Duration) -> anyhow::Result<Leader> {
        let deadline = Instant::now() + limit;
        loop {
            self.check_exits()?;
            let last = match self.agreed_leader().await {
                Ok(leader) => return Ok(leader),
                Err(why) => why,
            };
            if Instant::now() >= deadline {
                bail!("the nodes agreed on no leader within {limit:?}: {last}");
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }

    async fn agreed_leader(&self) -> Result<Leader, String> {
        let config = ClientConfig {
            rpc_timeout: PROBE_TIMEOUT,
            connect_timeout: PROBE_TIMEOUT,
            tls: self.spec.client_tls.clone(),
            ..ClientConfig::default()
        };
        let mut named: BTreeMap<usize, u64> = BTreeMap::new();
        let mut leader: Option<Leader> = None;
        for (index, node) in self.nodes.iter().enumerate() {
            if !node.is_running() || node.is_paused() {
                continue;
            }
            let status = node_status(node.addr(), &config)
                .await
                .map_err(|error| error.to_string())?;
            named.insert(index, status.leader.as_ref().map_or(0, |(id, _)| (*id).get()));
            if status.is_leader {
                leader = Some(Leader {
                    index,
                    id: status.node_id.get(),
                    term: status.term,
                });
            }
        }
        match leader {
            Some(leader) if named.values().all(|&id| id == leader.id) => Ok(leader),
            _ => Err(format!("the running nodes name leaders {named:?}")),
        }
    }

    fn check_exits(&mut self) -> anyhow::Result<()> {
        for node in &mut self.nodes {
            if let Some(status) = node.reap()? {
                bail!(
                    "node {} exited by itself ({status}); the end of its log:\n{}",
                    node.id(),
                    node.log_tail(process::LOG_TAIL_LINES)
                );
            }
        }
        Ok(())
    }

    fn port_was_taken(&self) -> bool {
        self.nodes
            .iter()
            .any(|node| node.log().to_lowercase().contains("address already in use"))
    }
}

/// The flags of `serve` shared by every node, without `--peers` or `--join`.
fn serve_args(spec: &ClusterSpec, root: &Path, id: u64, addr: &str) -> Vec<String> {
    let mut args = vec![
        "serve".to_string(),
        "--id".to_string(),
        id.to_string(),
        "--listen".to_string(),
        addr.to_string(),
        "--data-dir".to_string(),
        root.join(format!("node-{id}")).display().to_string(),
        "--engine".to_string(),
        spec.engine.clone(),
        "--heartbeat-ms".to_string(),
        spec.heartbeat_ms.to_string(),
        "--election-timeout-ms".to_string(),
        spec.election_timeout_ms.to_string(),
    ];
    args.extend(
        spec.extra_args
            .iter()
            .map(|arg| arg.replace("{id}", &id.to_string())),
    );
    args
}

fn node_process(spec: &ClusterSpec, root: &Path, id: u64, addr: &str, args: Vec<String>) -> NodeProcess {
    NodeProcess::new(
        id,
        addr.to_string(),
        spec.exe.clone(),
        args,
        spec.env.clone(),
        root.join(format!("node-{id}.log")),
    )
}

/// Lowest port [`free_ports`] picks.
const PICKED_PORT_MIN: u16 = 10_000;
/// Ports [`free_ports`] tries before it gives up.
const PORT_TRIES_MAX: usize = 10_000;

/// Picks `count` distinct free ports on 127.0.0.1, at random below the
/// kernel's ephemeral range. A port the kernel handed out (a bind to port
/// 0) comes from that range, as does the source port of every outgoing
/// connection, so once released it may be taken by any connection on the
/// machine before the node binds it; below the range only another picker
/// can take it. Every listener is held until all are picked, so the ports
/// differ from each other.
pub fn free_ports(count: usize) -> anyhow::Result<Vec<u16>> {
    use rand::Rng;
    let ephemeral_min = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| range.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32_768);
    let mut listeners = Vec::with_capacity(count);
    if ephemeral_min > PICKED_PORT_MIN + 1_000 {
        let mut rng = rand::thread_rng();
        for _ in 0..PORT_TRIES_MAX {
            if listeners.len() == count {
                break;
            }
            let port = rng.gen_range(PICKED_PORT_MIN..ephemeral_min);
            if let Ok(listener) = TcpListener::bind(("127.0.0.1", port)) {
                listeners.push(listener);
            }
        }
    }
    // A machine whose ephemeral range leaves too little room below it.
    while listeners.len() < count {
        listeners.push(TcpListener::bind("127.0.0.1:0").context("finding free ports on 127.0.0.1")?);
    }
    listeners
        .iter()
        .map(|listener| Ok(listener.local_addr()?.port()))
        .collect()
}
