//! A throwaway local cluster of `quorumlock serve` child processes, for the
//! demo: free ports on 127.0.0.1, a temporary data directory, and processes
//! that can be killed with SIGKILL.

use std::fs::File;
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context};
use quorumlock::client::{node_status, ClientConfig};
use tokio::time::Instant;

/// Heartbeat of the demo's nodes.
pub const HEARTBEAT_MS: u64 = 100;
/// Election timeout of the demo's nodes; generous so that a loaded machine
/// sees no spurious elections.
pub const ELECTION_TIMEOUT_MS: u64 = 1_000;
/// Longest wait for the nodes to agree on a leader.
pub const LEADER_WAIT_MAX: Duration = Duration::from_secs(60);
/// Attempts at starting the cluster when a picked port was taken meanwhile.
pub const START_ATTEMPTS_MAX: usize = 3;
/// Log lines shown from a node that failed.
const LOG_TAIL_LINES: usize = 20;
const POLL_INTERVAL: Duration = Duration::from_millis(100);
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

struct LocalNode {
    id: u64,
    addr: String,
    log_path: PathBuf,
    child: Option<Child>,
}

/// Running nodes; every one still running is killed on drop.
pub struct LocalCluster {
    nodes: Vec<LocalNode>,
    // Kept for its lifetime: the directory is deleted on drop.
    dir: tempfile::TempDir,
}

/// The leader the nodes agree on.
pub struct Leader {
    /// Index of the leader in [`LocalCluster::endpoints`].
    pub index: usize,
    /// Its node id.
    pub id: u64,
    /// Its term.
    pub term: u64,
}

impl LocalCluster {
    /// Starts `size` nodes of `engine` and waits until they agree on a
    /// leader.
    pub async fn start(engine: &str, size: usize) -> anyhow::Result<LocalCluster> {
        for attempt in 1..=START_ATTEMPTS_MAX {
            let mut cluster = LocalCluster::launch(engine, size)?;
            match cluster.wait_for_leader().await {
                Ok(_) => return Ok(cluster),
                Err(error) if attempt < START_ATTEMPTS_MAX && cluster.port_was_taken() => {
                    tracing::warn!(%error, "a port was taken; starting the cluster again on fresh ports");
                }
                Err(error) => return Err(error),
            }
        }
        unreachable!("the last attempt returns")
    }

    fn launch(engine: &str, size: usize) -> anyhow::Result<LocalCluster> {
        let dir = tempfile::Builder::new()
            .prefix("quorumlock-demo-")
            .tempdir()
            .context("creating a temporary directory")?;
        let exe = std::env::current_exe().context("finding the quorumlock executable")?;
        // Ports are found by binding port 0; all listeners are held until
        // every port is picked so that they differ.
        let listeners = (0..size)
            .map(|_| TcpListener::bind("127.0.0.1:0"))
            .collect::<Result<Vec<_>, _>>()
            .context("finding free ports on 127.0.0.1")?;
        let addrs = listeners
            .iter()
            .map(|listener| listener.local_addr().map(|addr| addr.to_string()))
            .collect::<Result<Vec<_>, _>>()?;
        drop(listeners);
        let peers = addrs
            .iter()
            .enumerate()
            .map(|(index, addr)| format!("{}={addr}", index + 1))
            .collect::<Vec<_>>()
            .join(",");
        let mut cluster = LocalCluster {
            nodes: Vec::new(),
            dir,
        };
        for (index, addr) in addrs.into_iter().enumerate() {
            let id = index as u64 + 1;
            let log_path = cluster.dir.path().join(format!("node-{id}.log"));
            let log = File::create(&log_path).with_context(|| format!("creating {}", log_path.display()))?;
            let child = Command::new(&exe)
                .arg("serve")
                .args(["--id", &id.to_string(), "--listen", &addr, "--peers", &peers])
                .arg("--data-dir")
                .arg(cluster.dir.path().join(format!("node-{id}")))
                .args(["--engine", engine])
                .args(["--heartbeat-ms", &HEARTBEAT_MS.to_string()])
                .args(["--election-timeout-ms", &ELECTION_TIMEOUT_MS.to_string()])
                .stdin(Stdio::null())
                .stdout(log.try_clone()?)
                .stderr(log)
                .spawn()
                .with_context(|| format!("starting node {id} from {}", exe.display()))?;
            cluster.nodes.push(LocalNode {
                id,
                addr,
                log_path,
                child: Some(child),
            });
        }
        Ok(cluster)
    }

    fn port_was_taken(&self) -> bool {
        self.nodes.iter().any(|node| {
            let log = std::fs::read_to_string(&node.log_path).unwrap_or_default();
            log.to_lowercase().contains("address already in use")
        })
    }

    /// Every node's `host:port`, running or not.
    pub fn endpoints(&self) -> Vec<String> {
        self.nodes.iter().map(|node| node.addr.clone()).collect()
    }

    /// The process id of node index `index`, while it runs.
    pub fn pid(&self, index: usize) -> Option<u32> {
        self.nodes[index].child.as_ref().map(Child::id)
    }

    /// Kills node index `index` with SIGKILL and reaps it.
    pub fn kill(&mut self, index: usize) -> anyhow::Result<()> {
        if let Some(mut child) = self.nodes[index].child.take() {
            child
                .kill()
                .with_context(|| format!("killing node {}", self.nodes[index].id))?;
            child.wait()?;
        }
        Ok(())
    }

    /// Waits until every running node names the same leader, which runs and
    /// says it leads. Fails if a node exits by itself, showing its log.
    pub async fn wait_for_leader(&mut self) -> anyhow::Result<Leader> {
        let deadline = Instant::now() + LEADER_WAIT_MAX;
        loop {
            self.check_exits()?;
            let last = match self.agreed_leader().await {
                Ok(leader) => return Ok(leader),
                Err(why) => why,
            };
            if Instant::now() >= deadline {
                bail!("the nodes agreed on no leader within {LEADER_WAIT_MAX:?}: {last}");
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }

    async fn agreed_leader(&self) -> Result<Leader, String> {
        let config = ClientConfig {
            rpc_timeout: PROBE_TIMEOUT,
            connect_timeout: PROBE_TIMEOUT,
            ..ClientConfig::default()
        };
        let mut leader_ids = Vec::new();
        let mut leader: Option<Leader> = None;
        for (index, node) in self.nodes.iter().enumerate() {
            if node.child.is_none() {
                continue;
            }
            let status = node_status(&node.addr, &config)
                .await
                .map_err(|error| error.to_string())?;
            leader_ids.push(status.leader.as_ref().map_or(0, |(id, _)| *id));
            if status.is_leader {
                leader = Some(Leader {
                    index,
                    id: status.node_id,
                    term: status.term,
                });
            }
        }
        match leader {
            Some(leader) if leader_ids.iter().all(|&id| id == leader.id) => Ok(leader),
            _ => Err(format!("the running nodes name leaders {leader_ids:?}")),
        }
    }

    fn check_exits(&mut self) -> anyhow::Result<()> {
        for node in &mut self.nodes {
            let Some(child) = node.child.as_mut() else {
                continue;
            };
            if let Some(status) = child.try_wait()? {
                node.child = None;
                bail!(
                    "node {} exited by itself ({status}); the end of its log:\n{}",
                    node.id,
                    log_tail(&node.log_path)
                );
            }
        }
        Ok(())
    }
}

fn log_tail(path: &PathBuf) -> String {
    let log = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(LOG_TAIL_LINES)..].join("\n")
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            if let Some(mut child) = node.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}
