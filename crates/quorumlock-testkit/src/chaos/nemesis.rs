//! The nemesis: seeded rounds of faults against the cluster and the
//! workers, each logged with its time and healed before the next.
//!
//! Kinds of fault, taken in a seeded order that covers every kind once
//! before any repeats:
//! - `kill`: SIGKILL the leader (a follower one time in four), restart it on
//!   its data directory after a delay;
//! - `pause_node`: SIGSTOP a node (the leader half the time) for longer than
//!   the session TTL, then SIGCONT;
//! - `pause_client`: SIGSTOP a worker process past its session's TTL, the
//!   GC pause of Kleppmann's example: its lock passes on, and its writes
//!   with the old token must be refused when it wakes;
//! - `partition_isolate`: cut the leader off from every other node;
//! - `partition_split`: split the nodes into a minority and a majority
//!   (1/2 of 3, 1/3 of 4, 2/3 of 5) at random;
//! - `clock_skew`: step a node's lease clock forward, then back, with a
//!   changed rate (the NTP example), then restore it;
//! - `disk` (with `--disk-faults`): crash a node (the leader half the
//!   time), damage its data directory, start it, and check that it
//!   refuses the directory ([`super::disk`]).
//!
//! The faults hit the members whose data is whole ([`Targets::nodes`]);
//! with `--membership` the runner alternates these rounds with changes of
//! membership ([`super::membership`]).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::Rng;

use super::history::{now_us, Fault};
use super::proxy::Network;
use crate::cluster::ProcessCluster;
use quorumlock_client::{node_status, ClientConfig};
use quorumlock_core::time::Skew;

/// The kinds of fault, as the summary names them.
pub const FAULT_KINDS: [&str; 6] = [
    "kill",
    "pause_node",
    "pause_client",
    "partition_isolate",
    "partition_split",
    "clock_skew",
];

/// Shortest time a fault lasts (a kill's restart delay, a partition).
pub const FAULT_HOLD_MIN: Duration = Duration::from_millis(1_500);
/// Longest time a fault lasts, not counting pauses, which last past the TTL.
pub const FAULT_HOLD_MAX: Duration = Duration::from_millis(3_000);
/// How much longer than the session TTL a pause lasts, at least and at most.
pub const PAUSE_PAST_TTL_MIN: Duration = Duration::from_millis(500);
/// See [`PAUSE_PAST_TTL_MIN`].
pub const PAUSE_PAST_TTL_MAX: Duration = Duration::from_millis(1_500);
/// Quiet time after a heal before the next fault, at least and at most.
pub const SETTLE_MIN: Duration = Duration::from_millis(500);
/// See [`SETTLE_MIN`].
pub const SETTLE_MAX: Duration = Duration::from_millis(1_000);
/// Largest clock step, either way.
pub const SKEW_STEP_MAX: Duration = Duration::from_secs(10);
const PROBE_TIMEOUT: Duration = Duration::from_millis(500);

/// The skew file of node index `index`; `{id}` in the flag given to every
/// node expands to the same path.
pub fn skew_file(dir: &std::path::Path, index: usize) -> PathBuf {
    dir.join(format!("skew-{}", index + 1))
}

/// Writes a node's skew file.
pub fn write_skew(dir: &std::path::Path, index: usize, skew: Skew) -> anyhow::Result<()> {
    let path = skew_file(dir, index);
    // Written aside and renamed, so that the node never reads half a file.
    let partial = path.with_extension("partial");
    std::fs::write(&partial, skew.to_text()).with_context(|| format!("writing {}", partial.display()))?;
    std::fs::rename(&partial, &path).with_context(|| format!("renaming to {}", path.display()))
}

/// The fault kind `--disk-faults` adds.
pub const DISK_KIND: &str = "disk";

/// What the nemesis acts on.
pub struct Targets<'a> {
    /// The nodes.
    pub cluster: &'a mut ProcessCluster,
    /// The indices of the nodes faults may hit: the members whose data is
    /// whole (a removed node, or a voter whose data directory was deleted
    /// and whose removal is pending, is left alone).
    pub nodes: &'a [usize],
    /// The proxies on the peer links.
    pub network: &'a Network,
    /// The process ids of the workers.
    pub workers: &'a [u32],
    /// Where the skew files are.
    pub skew_dir: &'a std::path::Path,
    /// The session TTL of the workers.
    pub ttl: Duration,
}

/// The nemesis's state: its random source and its log.
pub struct Nemesis {
    rng: StdRng,
    kinds: Vec<&'static str>,
    order: Vec<&'static str>,
    /// Every fault injected so far.
    pub faults: Vec<Fault>,
    /// Disk faults a node did not refuse: what it did instead.
    pub unrefused: Vec<String>,
    /// Repairs that did not finish (see [`super::disk`]).
    pub unrepaired: Vec<String>,
}

impl Nemesis {
    /// A nemesis drawing from `rng`; `disk_faults` adds the `disk` kind.
    pub fn new(rng: StdRng, disk_faults: bool) -> Nemesis {
        let mut kinds = FAULT_KINDS.to_vec();
        if disk_faults {
            kinds.push(DISK_KIND);
        }
        Nemesis {
            rng,
            kinds,
            order: Vec::new(),
            faults: Vec::new(),
            unrefused: Vec::new(),
            unrepaired: Vec::new(),
        }
    }

    fn hold(&mut self) -> Duration {
        self.rng.gen_range(FAULT_HOLD_MIN..=FAULT_HOLD_MAX)
    }

    fn pause_length(&mut self, ttl: Duration) -> Duration {
        ttl + self.rng.gen_range(PAUSE_PAST_TTL_MIN..=PAUSE_PAST_TTL_MAX)
    }

    /// Quiet time before the next round.
    pub fn settle(&mut self) -> Duration {
        self.rng.gen_range(SETTLE_MIN..=SETTLE_MAX)
    }

    fn next_kind(&mut self) -> &'static str {
        if self.order.is_empty() {
            self.order = self.kinds.clone();
            self.order.shuffle(&mut self.rng);
        }
        self.order.pop().expect("refilled above")
    }

    /// Injects one fault, waits, heals it, and logs it.
    pub async fn round(&mut self, targets: &mut Targets<'_>) -> anyhow::Result<()> {
        let kind = self.next_kind();
        let start_us = now_us();
        let detail = match kind {
            "kill" => self.kill(targets).await?,
            "pause_node" => self.pause_node(targets).await?,
            "pause_client" => self.pause_client(targets).await?,
            "partition_isolate" => self.isolate(targets).await?,
            "partition_split" => self.split(targets).await?,
            "clock_skew" => self.skew(targets).await?,
            DISK_KIND => self.disk(targets).await?,
            other => unreachable!("unknown fault kind {other}"),
        };
        let fault = Fault::ended_now(kind, detail, start_us, None);
        fault.log();
        self.faults.push(fault);
        Ok(())
    }

    /// The index of the node among `nodes` that says it leads with the
    /// highest term, if any answers.
    async fn leader(&self, cluster: &ProcessCluster, nodes: &[usize]) -> Option<usize> {
        let config = ClientConfig {
            rpc_timeout: PROBE_TIMEOUT,
            connect_timeout: PROBE_TIMEOUT,
            ..ClientConfig::default()
        };
        let mut best: Option<(u64, usize)> = None;
        for &index in nodes {
            let node = cluster.node(index);
            if !node.is_running() || node.is_paused() {
                continue;
            }
            if let Ok(status) = node_status(node.addr(), &config).await {
                if status.is_leader && best.is_none_or(|(term, _)| status.term > term) {
                    best = Some((status.term, index));
                }
            }
        }
        best.map(|(_, index)| index)
    }

    /// Among `targets.nodes`, the leader with probability `leader_odds`,
    /// else another node.
    async fn pick_node(&mut self, targets: &Targets<'_>, leader_odds: f64) -> (usize, &'static str) {
        let nodes = targets.nodes;
        assert!(nodes.len() >= 2, "faults need two nodes at least");
        let leader = self.leader(&*targets.cluster, nodes).await;
        match leader {
            Some(leader) if self.rng.gen_bool(leader_odds) => (leader, "leader"),
            Some(leader) => {
                let others: Vec<usize> = nodes.iter().copied().filter(|&index| index != leader).collect();
                (
                    *others.choose(&mut self.rng).expect("two nodes at least"),
                    "follower",
                )
            }
            None => (
                *nodes.choose(&mut self.rng).expect("two nodes at least"),
                "node (no leader known)",
            ),
        }
    }

    async fn kill(&mut self, targets: &mut Targets<'_>) -> anyhow::Result<String> {
        let (index, role) = self.pick_node(targets, 0.75).await;
        let delay = self.hold();
        targets.cluster.node_mut(index).kill()?;
        tokio::time::sleep(delay).await;
        targets.cluster.node_mut(index).start()?;
        Ok(format!(
            "SIGKILL {role} node {}, restarted after {:.1}s",
            index + 1,
            delay.as_secs_f64()
        ))
    }

    async fn disk(&mut self, targets: &mut Targets<'_>) -> anyhow::Result<String> {
        let (index, role) = self.pick_node(targets, 0.5).await;
        let fault = super::disk::damage(&mut self.rng, targets.cluster, index, role).await?;
        self.unrefused.extend(fault.unrefused);
        self.unrepaired.extend(fault.unrepaired);
        Ok(fault.detail)
    }

    async fn pause_node(&mut self, targets: &mut Targets<'_>) -> anyhow::Result<String> {
        let (index, role) = self.pick_node(targets, 0.5).await;
        let length = self.pause_length(targets.ttl);
        targets.cluster.node_mut(index).pause()?;
        tokio::time::sleep(length).await;
        targets.cluster.node_mut(index).resume()?;
        Ok(format!(
            "SIGSTOP {role} node {} for {:.1}s",
            index + 1,
            length.as_secs_f64()
        ))
    }

    async fn pause_client(&mut self, targets: &mut Targets<'_>) -> anyhow::Result<String> {
        let worker = self.rng.gen_range(0..targets.workers.len());
        let pid = Pid::from_raw(i32::try_from(targets.workers[worker]).context("process id out of range")?);
        let length = self.pause_length(targets.ttl);
        // A worker that already exited cannot be paused; that is no fault.
        if kill(pid, Signal::SIGSTOP).is_err() {
            return Ok(format!("worker {} had exited", worker + 1));
        }
        tokio::time::sleep(length).await;
        kill(pid, Signal::SIGCONT).with_context(|| format!("resuming worker {}", worker + 1))?;
        Ok(format!(
            "SIGSTOP worker {} for {:.1}s",
            worker + 1,
            length.as_secs_f64()
        ))
    }

    async fn isolate(&mut self, targets: &mut Targets<'_>) -> anyhow::Result<String> {
        let (index, role) = self.pick_node(targets, 1.0).await;
        let others: Vec<usize> = targets
            .nodes
            .iter()
            .copied()
            .filter(|&other| other != index)
            .collect();
        let hold = self.hold();
        targets.network.split(&[index], &others);
        tokio::time::sleep(hold).await;
        targets.network.heal();
        Ok(format!(
            "isolated {role} node {} for {:.1}s",
            index + 1,
            hold.as_secs_f64()
        ))
    }

    async fn split(&mut self, targets: &mut Targets<'_>) -> anyhow::Result<String> {
        let mut nodes: Vec<usize> = targets.nodes.to_vec();
        nodes.shuffle(&mut self.rng);
        // Fewer than half on the minority side, also when a change of
        // membership left an even number of nodes.
        let (minority, majority) = nodes.split_at((nodes.len() - 1) / 2);
        let hold = self.hold();
        targets.network.split(minority, majority);
        tokio::time::sleep(hold).await;
        targets.network.heal();
        let ids = |group: &[usize]| {
            group
                .iter()
                .map(|index| (index + 1).to_string())
                .collect::<Vec<_>>()
                .join(",")
        };
        Ok(format!(
            "split {{{}}} from {{{}}} for {:.1}s",
            ids(minority),
            ids(majority),
            hold.as_secs_f64()
        ))
    }

    async fn skew(&mut self, targets: &mut Targets<'_>) -> anyhow::Result<String> {
        let (index, role) = self.pick_node(targets, 0.5).await;
        let step_ms = i64::try_from(self.rng.gen_range(1_000..=SKEW_STEP_MAX.as_millis() as u64))?;
        let rate = *[0.5, 2.0, 4.0].choose(&mut self.rng).expect("not empty");
        let hold = self.hold();
        let forward = Skew {
            offset_ms: step_ms,
            rate: 1.0,
        };
        let back = Skew {
            offset_ms: -step_ms,
            rate,
        };
        write_skew(targets.skew_dir, index, forward)?;
        tokio::time::sleep(hold / 2).await;
        write_skew(targets.skew_dir, index, back)?;
        tokio::time::sleep(hold / 2).await;
        write_skew(targets.skew_dir, index, Skew::NONE)?;
        Ok(format!(
            "{role} node {} clock +{step_ms}ms, then -{step_ms}ms at rate {rate}, for {:.1}s",
            index + 1,
            hold.as_secs_f64()
        ))
    }
}
