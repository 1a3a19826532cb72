//! The whole lock service on openraft, in one paused tokio runtime.
//!
//! A node is the real [`RaftEngine`] (openraft with the RocksDB log and
//! state-machine stores in a temporary directory) over the in-memory
//! [`Hub`], and the real lease keeper ([`LeaseDriver`]) reading a
//! [`SkewedClock`]: it expires sessions, and on the same ticks times grants'
//! maximum hold times and lock-delays and proposes their ends. A crash shuts the engine down and drops it; a restart
//! reopens the same RocksDB directory. The runtime's clock is paused, so
//! timers (openraft's heartbeats and elections, network delays, the
//! keeper's ticks) advance only when every task waits, and a run of seconds
//! takes milliseconds.
//!
//! Replay: the seed fixes every fault and client decision, but openraft
//! draws election timeouts from its own unseeded generator and tokio's
//! `select!` polls branches in random order, so a replayed seed follows the
//! same script without being bit-exact (`raft_seed_replays` measures it).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::sync::{broadcast, mpsc};
use tokio::task::JoinHandle;

use super::checker::Checker;
use super::clock::SimTime;
use super::network::{Hub, NetworkFaults};
use super::workload::{key_of, lock_name, Client, ANSWER_MS_MAX, LOCKS, TTL_MS_MAX};
use super::{fingerprint, RunSummary, Violation};
use quorumlock_core::consensus::incarnation::Incarnations;
use quorumlock_core::consensus::{
    AppliedState, CommandResult, ConsensusEngine, EngineConfig, EngineError, MembershipChange, NodeId,
    StateNotice,
};
use quorumlock_core::lease::RenewError;
use quorumlock_core::lock::{Command, Event, LockState, Outcome};
use quorumlock_core::time::SkewedClock;
use quorumlock_raft::wal_sync::WalSync;
use quorumlock_raft::RaftEngine;
use quorumlock_server::lease_driver::{LeaseConfig, LeaseDriver};
use quorumlock_simkit::{LinkFaults, Partition};

/// Leader heartbeat period.
const HEARTBEAT_MS: u64 = 50;
/// Minimum election timeout (openraft draws from `[min, 2·min)`).
const ELECTION_MS: u64 = 150;
/// Length of the faulty phase.
const FAULT_MS: u64 = 4_000;
/// After healing, some client must have a fenced write acknowledged, and
/// every client an answer, within this (elections, one TTL plus grace for
/// locks of abandoned sessions, clock offsets the faults left).
const LIVENESS_MS_MAX: u64 = 10_000;
/// After clients stop (and after the final restart), every node must have
/// applied the same index within this.
const CONVERGENCE_MS_MAX: u64 = 10_000;
/// The driver's step: how often clients act and faults are drawn. Fault
/// chances are per step.
const DRIVER_STEP_MS: u64 = 5;
/// How often replicas' states are compared.
const SAMPLE_EVERY_MS: u64 = 50;
/// Longest message delay a run may draw.
const DELAY_MS_MAX: u64 = 40;
/// Largest forward clock jump.
const JUMP_FORWARD_MS_MAX: i64 = 2_000;
/// Largest backward clock jump.
const JUMP_BACKWARD_MS_MAX: i64 = 1_000;
/// Attempts to reopen a node's RocksDB while its last instance closes.
const REOPEN_ATTEMPTS_MAX: u32 = 100;

/// Where a node stands in the cluster's membership.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Standing {
    /// A member: it runs unless crashed.
    Member,
    /// A spare that joins when the membership script adds it; not started.
    Spare,
    /// Removed by a membership change: stopped for good, as an operator
    /// would, and left out of the final checks.
    Retired,
    /// Its disk was lost: it stays stopped, taking no part, until the
    /// repair made it a learner; then it starts again from an empty
    /// directory as a joining node.
    Damaged,
}

/// The membership script of a run: add the spare as a learner, promote it
/// once caught up, then remove one of the first members (the leader, as
/// likely as any), all while the faults go on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Script {
    /// Not yet: starts at `at_ms`.
    Waiting { at_ms: u64 },
    /// A step is proposed on a leader and its answer awaited.
    Running(Step),
    /// The next step is tried at `at_ms` (after a refusal or a failure).
    Retry { step: Step, at_ms: u64 },
    /// At `at_ms`, one voter loses its disk and is repaired as `serve
    /// --repair` does it: made a learner while stopped, started again from
    /// an empty directory as a joining node, and promoted once it caught up.
    DamageAt { at_ms: u64 },
    /// Every step committed (or the run has no script).
    Done,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    Add,
    Promote,
    Remove(NodeId),
    /// Make the damaged voter a learner.
    Demote(NodeId),
    /// Promote the repaired node again.
    Repromote(NodeId),
}

struct Node {
    id: NodeId,
    standing: Standing,
    /// It starts knowing only itself: the spare, or a repaired node.
    joins: bool,
    dir: PathBuf,
    engine: Option<Arc<RaftEngine>>,
    leases: Option<Arc<LeaseDriver>>,
    tasks: Vec<JoinHandle<()>>,
    clock: Arc<SkewedClock<SimTime>>,
    restart_at_ms: u64,
    /// The revision of its applied state's history the checker has read
    /// through; `None` until the checker first reads this engine's state.
    changes_read: Option<u64>,
}

#[derive(Debug, Clone, Copy)]
struct Faults {
    crash: f64,
    partition: f64,
    clock_jump: f64,
    clock_rate: f64,
    client_pause: f64,
}

type Answer = (usize, u64, NodeId, Result<CommandResult, EngineError>);

/// One run of one seed.
pub struct RaftSim {
    rng: StdRng,
    trace: bool,
    start: tokio::time::Instant,
    hub: Hub,
    network: NetworkFaults,
    nodes: Vec<Node>,
    _dir: tempfile::TempDir,
    faults: Faults,
    snapshot_every_entries: u64,
    crashes: u64,
    partitions: u64,
    clock_skews: u64,
    pauses: u64,
    clients: Vec<Client>,
    client_serial: Vec<u64>,
    client_answers: Vec<u64>,
    clients_active: bool,
    checker: Arc<Mutex<Checker>>,
    answers_tx: mpsc::UnboundedSender<Answer>,
    answers: mpsc::UnboundedReceiver<Answer>,
    next_sample_ms: u64,
    script: Script,
    /// Draws the script's choices apart from `rng`, so a run with a script
    /// draws the same faults as one without.
    script_rng: StdRng,
    script_answer: Option<tokio::task::JoinHandle<Result<(), EngineError>>>,
    membership_changes: u64,
    /// Damaged nodes repaired.
    repairs: u64,
    /// How many nodes the cluster started with (ids 1 to this).
    first_size: usize,
}

/// Where the nodes' RocksDB directories go: memory if the machine has a
/// tmpfs, so synced writes cost no disk flushes.
fn scratch_dir() -> tempfile::TempDir {
    let shm = std::path::Path::new("/dev/shm");
    if shm.is_dir() {
        if let Ok(dir) = tempfile::Builder::new().prefix("quorumlock-wsim").tempdir_in(shm) {
            return dir;
        }
    }
    tempfile::Builder::new()
        .prefix("quorumlock-wsim")
        .tempdir()
        .expect("a temporary directory")
}

impl RaftSim {
    /// A run of `size` nodes and a few clients; call inside a current-thread
    /// runtime with its clock paused.
    pub async fn new(seed: u64, size: u64) -> RaftSim {
        let mut rng = StdRng::seed_from_u64(seed ^ (size << 56) ^ 0x5241_4654);
        let calm = rng.gen_bool(0.1);
        let faulty = |rng: &mut StdRng, max: f64| if calm { 0.0 } else { rng.gen_range(0.0..max) };
        let network = NetworkFaults {
            links: LinkFaults {
                drop: faulty(&mut rng, 0.15),
                duplicate: faulty(&mut rng, 0.1),
                delay_max: [2, 10, DELAY_MS_MAX][rng.gen_range(0..3)],
            },
            partition: None,
        };
        let faults = Faults {
            crash: faulty(&mut rng, 0.0005 * DRIVER_STEP_MS as f64),
            partition: faulty(&mut rng, 0.001 * DRIVER_STEP_MS as f64),
            clock_jump: faulty(&mut rng, 0.001 * DRIVER_STEP_MS as f64),
            clock_rate: faulty(&mut rng, 0.0005 * DRIVER_STEP_MS as f64),
            client_pause: faulty(&mut rng, 0.001 * DRIVER_STEP_MS as f64),
        };
        let snapshot_every_entries = *[20, 100, 10_000].get(rng.gen_range(0..3)).expect("in range");
        let hub = Hub::new(rng.gen());
        hub.set_faults(network.clone());
        let start = tokio::time::Instant::now();
        let dir = scratch_dir();
        let mut script_rng = StdRng::seed_from_u64(seed ^ 0x4d45_4d42);
        let scripted = script_rng.gen_bool(0.5);
        let script = match scripted {
            true => Script::Waiting {
                at_ms: script_rng.gen_range(200..FAULT_MS / 2),
            },
            false if script_rng.gen_bool(0.5) => Script::DamageAt {
                at_ms: script_rng.gen_range(200..FAULT_MS / 2),
            },
            false => Script::Done,
        };
        let nodes = (1..=size + u64::from(scripted))
            .map(|id| Node {
                id: NodeId::new(id),
                joins: id > size,
                standing: if id <= size {
                    Standing::Member
                } else {
                    Standing::Spare
                },
                dir: dir.path().join(format!("node-{id}")),
                engine: None,
                leases: None,
                tasks: Vec::new(),
                clock: Arc::new(SkewedClock::new(SimTime::Tokio(start))),
                restart_at_ms: 0,
                changes_read: None,
            })
            .collect();
        let client_count = rng.gen_range(2..=5);
        let clients = (0..client_count)
            .map(|id| {
                let target = rng.gen_range(1..=size);
                Client::new(id, NodeId::new(target), &mut rng)
            })
            .collect();
        let (answers_tx, answers) = mpsc::unbounded_channel();
        RaftSim {
            rng,
            trace: std::env::var_os("QUORUMLOCK_WSIM_TRACE").is_some(),
            start,
            hub,
            network,
            nodes,
            _dir: dir,
            faults,
            snapshot_every_entries,
            crashes: 0,
            partitions: 0,
            clock_skews: 0,
            pauses: 0,
            clients,
            client_serial: vec![0; client_count],
            client_answers: vec![0; client_count],
            clients_active: true,
            checker: Arc::new(Mutex::new(Checker::default())),
            answers_tx,
            answers,
            next_sample_ms: 0,
            script,
            script_rng,
            script_answer: None,
            membership_changes: 0,
            repairs: 0,
            first_size: size as usize,
        }
    }

    fn now_ms(&self) -> u64 {
        tokio::time::Instant::now().duration_since(self.start).as_millis() as u64
    }

    fn log(&self, event: impl FnOnce() -> String) {
        if self.trace {
            eprintln!("[{} ms] {}", self.now_ms(), event());
        }
    }

    fn check(&self) -> Result<(), Violation> {
        match self.checker.lock().first_violation() {
            Some(violation) => Err(violation.clone()),
            None => Ok(()),
        }
    }

    /// Faults, heal, liveness, wind-down, a restart of every node from its
    /// RocksDB, and the final checks.
    pub async fn run(&mut self) -> Result<RunSummary, Violation> {
        for i in 0..self.nodes.len() {
            if self.nodes[i].standing == Standing::Member {
                self.start_node(i).await?;
            }
        }
        let result = self.phases().await;
        for i in 0..self.nodes.len() {
            self.stop_node(i).await;
        }
        result
    }

    async fn phases(&mut self) -> Result<RunSummary, Violation> {
        while self.now_ms() < FAULT_MS {
            self.inject_faults().await;
            self.advance().await?;
        }
        self.heal().await?;
        let script_deadline = self.now_ms() + LIVENESS_MS_MAX;
        while self.script != Script::Done {
            if self.now_ms() >= script_deadline {
                return Err(format!(
                    "liveness: the membership script is still at {:?} {LIVENESS_MS_MAX} ms after healing \
                     (leaders: {:?})",
                    self.script,
                    self.leaders()
                ));
            }
            self.advance().await?;
        }

        let healed_at = self.now_ms();
        let acked_at_heal = self.checker.lock().acked_writes();
        let answers_at_heal = self.client_answers.clone();
        loop {
            let answered: Vec<bool> = self
                .client_answers
                .iter()
                .zip(&answers_at_heal)
                .map(|(now, then)| now > then)
                .collect();
            let acked = self.checker.lock().acked_writes();
            if acked > acked_at_heal && answered.iter().all(|seen| *seen) {
                break;
            }
            if self.now_ms() >= healed_at + LIVENESS_MS_MAX {
                return Err(format!(
                    "liveness: {LIVENESS_MS_MAX} ms after healing, writes acknowledged since: {}, \
                     clients answered: {answered:?} (leaders: {:?})",
                    acked - acked_at_heal,
                    self.leaders()
                ));
            }
            self.advance().await?;
        }

        self.clients_active = false;
        let index = self.converge("after the clients stopped", 0).await?;
        for i in 0..self.nodes.len() {
            self.stop_node(i).await;
        }
        for i in 0..self.nodes.len() {
            if self.nodes[i].standing == Standing::Member {
                self.start_node(i).await?;
            }
        }
        let index = self.converge("after every node restarted", index).await?;

        let mut checker = self.checker.lock();
        checker.check_realtime_fencing();
        for node in self.nodes.iter().filter(|node| node.standing == Standing::Member) {
            let engine = node.engine.as_ref().expect("every member is up");
            let state = engine.state().read(LockState::clone);
            checker.check_durability(node.id, &state);
            if let Err(broken) = state.check_invariants() {
                checker.violation(format!("state invariants: node {}: {broken}", node.id));
            }
        }
        if let Some(violation) = checker.first_violation() {
            return Err(violation.clone());
        }
        let final_state = self
            .nodes
            .iter()
            .find_map(|node| node.engine.as_ref())
            .expect("a member is up")
            .state()
            .snapshot();
        self.log(|| format!("membership: {} changes committed", self.membership_changes));
        let timed_ends = checker.timed_ends();
        Ok(RunSummary {
            steps: self.now_ms(),
            slots: index,
            acked_writes: checker.acked_writes() as u64,
            answers: self.client_answers.iter().sum(),
            crashes: self.crashes,
            partitions: self.partitions,
            clock_skews: self.clock_skews,
            pauses: self.pauses,
            stale_refusals: self.clients.iter().map(|client| client.stale_refusals).sum(),
            repairs: self.repairs,
            holds_ended: timed_ends.holds_ended,
            delays_begun: timed_ends.delays_begun,
            delays_ended: timed_ends.delays_ended,
            delayed_refusals: self.clients.iter().map(|client| client.delayed_refusals).sum(),
            lost_grants: self.clients.iter().map(|client| client.lost_grants).sum(),
            fingerprint: fingerprint(&final_state, index, self.hub.delivered() as usize),
        })
    }

    /// Runs until every node is up with the same applied index (at least
    /// `floor`) under one leader, twice in a row a sample apart.
    async fn converge(&mut self, when: &str, floor: u64) -> Result<u64, Violation> {
        let deadline = self.now_ms() + CONVERGENCE_MS_MAX;
        let mut previous = None;
        loop {
            let applied: Vec<Option<u64>> = self
                .nodes
                .iter()
                .filter(|node| node.standing == Standing::Member)
                .map(|node| node.engine.as_ref().map(|engine| engine.status().applied_index))
                .collect();
            let agreed = applied
                .first()
                .copied()
                .flatten()
                .filter(|index| *index >= floor && applied.iter().all(|other| *other == Some(*index)));
            let idle = self.clients.iter().all(|client| client.in_flight().is_none());
            if let Some(index) = agreed.filter(|_| idle && self.leaders().len() == 1 && agreed == previous) {
                return Ok(index);
            }
            previous = agreed;
            if self.now_ms() >= deadline {
                // An engine that stopped on a storage error says why.
                let failed: Vec<(NodeId, String)> = self
                    .nodes
                    .iter()
                    .filter_map(|node| {
                        let engine = node.engine.as_ref()?;
                        let reason = engine.failed().borrow().clone()?;
                        Some((node.id, reason))
                    })
                    .collect();
                return Err(format!(
                    "convergence {when}: applied indices {applied:?} (at least {floor}) did not agree \
                     within {CONVERGENCE_MS_MAX} ms (leaders: {:?}; engines stopped: {failed:?})",
                    self.leaders()
                ));
            }
            for _ in 0..SAMPLE_EVERY_MS * 2 / DRIVER_STEP_MS {
                self.advance().await?;
            }
        }
    }

    fn leaders(&self) -> Vec<NodeId> {
        self.nodes
            .iter()
            .filter(|node| {
                node.engine
                    .as_ref()
                    .is_some_and(|engine| engine.leadership().borrow().is_self)
            })
            .map(|node| node.id)
            .collect()
    }

    async fn heal(&mut self) -> Result<(), Violation> {
        self.log(|| "heal".to_string());
        self.faults = Faults {
            crash: 0.0,
            partition: 0.0,
            clock_jump: 0.0,
            clock_rate: 0.0,
            client_pause: 0.0,
        };
        self.network = NetworkFaults {
            links: self.network.links.healed(),
            partition: None,
        };
        self.hub.set_faults(self.network.clone());
        for i in 0..self.nodes.len() {
            self.nodes[i].clock.heal();
            if self.nodes[i].engine.is_none() && self.nodes[i].standing == Standing::Member {
                self.start_node(i).await?;
            }
        }
        let now = self.now_ms();
        for client in &mut self.clients {
            client.resume(now);
        }
        Ok(())
    }

    /// Starts (or restarts) node `i` from its RocksDB directory, with a lease
    /// keeper and an observer feeding the checker.
    async fn start_node(&mut self, i: usize) -> Result<(), Violation> {
        let id = self.nodes[i].id;
        self.log(|| format!("start node {id}"));
        // The first members initialize the cluster; the spare joins it.
        let first = self.nodes.iter();
        let joining = self.nodes[i].joins;
        // A joining node names only itself, as `serve --join` does.
        let members = first
            .filter(|node| match joining {
                true => node.id == id,
                false => node.id.get() as usize <= self.first_size,
            })
            .map(|node| (node.id, format!("sim-{}", node.id)))
            .collect();
        let config = EngineConfig {
            node_id: id,
            members,
            join: joining,
            data_dir: self.nodes[i].dir.clone(),
            heartbeat: Duration::from_millis(HEARTBEAT_MS),
            election_timeout: Duration::from_millis(ELECTION_MS),
            snapshot_every_entries: self.snapshot_every_entries,
            // The simulated network carries no incarnations.
            incarnations: Arc::new(Incarnations::in_memory(id, id.get())),
            telemetry: Arc::default(),
            watch_history: Default::default(),
            // Raft serves no peer streams; nothing here ever stops them.
            stopping: tokio::sync::watch::channel(false).1,
        };
        // The state restarts empty; its notices are watched before the
        // engine restores the snapshot and replays the log into it.
        self.checker.lock().restored(id, &LockState::default());
        let mut attempts = 0;
        let (engine, state) = loop {
            let state = Arc::new(AppliedState::default());
            let notices = state.subscribe();
            match RaftEngine::start_with_network(
                config.clone(),
                self.hub.factory(id),
                state.clone(),
                WalSync::Inline,
                Arc::new(quorumlock_raft::retirement::Retirement::new(id)),
            )
            .await
            {
                Ok(engine) => break (engine, notices),
                // The previous instance's RocksDB may still be closing.
                Err(error) if attempts < REOPEN_ATTEMPTS_MAX => {
                    attempts += 1;
                    self.log(|| format!("node {id} does not start yet: {error:#}"));
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
                Err(error) => return Err(format!("node {id} did not restart: {error:#}")),
            }
        };
        self.hub.attach(id, engine.raft().clone());
        let leases = LeaseDriver::new(
            engine.clone(),
            self.nodes[i].clock.clone(),
            LeaseConfig {
                tick: Duration::from_millis(HEARTBEAT_MS),
                checkpoint_interval: Duration::from_millis(ELECTION_MS),
                takeover_grace: Duration::from_millis(2 * ELECTION_MS),
                proposal_timeout: Duration::from_millis(ANSWER_MS_MAX),
            },
        );
        let keeper = tokio::spawn(leases.clone().run());
        let observer = tokio::spawn(observe(id, state, self.checker.clone()));
        let node = &mut self.nodes[i];
        node.engine = Some(engine);
        node.leases = Some(leases);
        node.tasks = vec![keeper, observer];
        node.changes_read = None;
        Ok(())
    }

    /// Stops node `i` and drops everything it had in memory.
    async fn stop_node(&mut self, i: usize) {
        let node = &mut self.nodes[i];
        let Some(engine) = node.engine.take() else {
            return;
        };
        self.hub.detach(node.id);
        node.leases = None;
        for task in node.tasks.drain(..) {
            task.abort();
        }
        let _ = engine.shutdown().await;
    }

    async fn inject_faults(&mut self) {
        let size = self.nodes.len();
        let now = self.now_ms();
        for i in 0..size {
            if self.nodes[i].engine.is_some() && self.rng.gen_bool(self.faults.crash) {
                let downtime = self.rng.gen_range(1..=600);
                self.log(|| format!("crash node {} for {downtime} ms", i + 1));
                self.crashes += 1;
                self.nodes[i].restart_at_ms = now + downtime;
                self.stop_node(i).await;
            }
        }
        if self
            .network
            .partition
            .as_ref()
            .is_some_and(|partition| now >= partition.until)
        {
            self.log(|| "partition heals".to_string());
            self.network.partition = None;
            self.hub.set_faults(self.network.clone());
        } else if self.network.partition.is_none() && self.rng.gen_bool(self.faults.partition) {
            let length = self.rng.gen_range(50..=1_000);
            let leaders = self.leaders();
            let leaders: Vec<u64> = leaders.into_iter().map(NodeId::get).collect();
            let partition = Partition::draw(&mut self.rng, size, &leaders, now, length);
            self.log(|| format!("partition {:?}", partition.sides));
            self.partitions += 1;
            self.network.partition = Some(partition);
            self.hub.set_faults(self.network.clone());
        }
        if self.rng.gen_bool(self.faults.clock_jump) {
            let i = self.rng.gen_range(0..size);
            let delta = self.rng.gen_range(-JUMP_BACKWARD_MS_MAX..=JUMP_FORWARD_MS_MAX);
            self.log(|| format!("clock of node {} jumps {delta} ms", i + 1));
            self.clock_skews += 1;
            self.nodes[i].clock.jump(delta);
        }
        if self.rng.gen_bool(self.faults.clock_rate) {
            let i = self.rng.gen_range(0..size);
            let rate = self.rng.gen_range(500..=2_000);
            self.log(|| format!("clock of node {} runs at {rate}‰", i + 1));
            self.clock_skews += 1;
            self.nodes[i].clock.set_rate(rate as f64 / 1_000.0);
        }
        if self.rng.gen_bool(self.faults.client_pause) {
            let client = self.rng.gen_range(0..self.clients.len());
            let length = self.rng.gen_range(TTL_MS_MAX..=3 * TTL_MS_MAX);
            self.pauses += 1;
            if self.rng.gen_bool(0.7) {
                self.clients[client].pause_after_grant(length);
            } else {
                self.clients[client].pause(now + length);
            }
        }
    }

    /// One driver step: restarts, answers, client work, state samples and
    /// the changes each node applied since the last sample.
    async fn advance(&mut self) -> Result<(), Violation> {
        tokio::time::sleep(Duration::from_millis(DRIVER_STEP_MS)).await;
        let now = self.now_ms();
        for i in 0..self.nodes.len() {
            if self.nodes[i].engine.is_none()
                && self.nodes[i].standing == Standing::Member
                && now >= self.nodes[i].restart_at_ms
            {
                self.start_node(i).await?;
            }
        }
        self.run_script().await?;
        while let Ok((client, serial, node, result)) = self.answers.try_recv() {
            self.answered(client, serial, node, result);
        }
        self.client_work();
        if now >= self.next_sample_ms {
            self.next_sample_ms = now + SAMPLE_EVERY_MS;
            let mut checker = self.checker.lock();
            for node in &mut self.nodes {
                if let Some(engine) = &node.engine {
                    // Nothing runs between these reads: one thread, no await.
                    let index = engine.status().applied_index;
                    checker.applied_state(node.id, index, engine.state().snapshot());
                    let read = checker.follow(node.id, engine.state(), node.changes_read);
                    node.changes_read = Some(read);
                    // The store's records only move to higher tokens
                    // between samples of one boot.
                    for lock in 0..LOCKS {
                        let key = key_of(&lock_name(lock));
                        if let Some(entry) = engine.state().read(|state| state.get(&key).cloned()) {
                            checker.put_accepted(node.id, &entry.written_by);
                        }
                    }
                }
            }
        }
        self.check()
    }

    fn answered(
        &mut self,
        client: usize,
        serial: u64,
        node: NodeId,
        result: Result<CommandResult, EngineError>,
    ) {
        if self.client_serial[client] != serial {
            return;
        }
        let now = self.now_ms();
        match result {
            Ok(result) => {
                self.client_answers[client] += 1;
                if let Some(write) = self.clients[client].answered(now, &result, &mut self.rng) {
                    self.checker.lock().put_acked(write);
                }
                // The RPC layer tells the keeper about sessions opened here.
                if let Ok(Outcome::SessionOpened { session, ttl_ms }) = result {
                    if let Some(leases) = &self.nodes[(node.get() - 1) as usize].leases {
                        leases.opened(session, Duration::from_millis(ttl_ms));
                    }
                }
            }
            // Not appended: safe to send again.
            Err(EngineError::NotLeader { leader }) => {
                let leader = leader.map(|leader| leader.id).or_else(|| self.random_node());
                self.clients[client].refused(now, leader, &mut self.rng);
            }
            Err(EngineError::QuorumSilent { .. }) => {
                let other = self.random_node();
                self.clients[client].refused(now, other, &mut self.rng);
            }
            Err(_) => {
                self.clients[client].unknown(now, &mut self.rng);
                let target = self.random_node();
                if let Some(target) = target {
                    self.clients[client].target = target;
                }
            }
        }
    }

    fn random_node(&mut self) -> Option<NodeId> {
        Some(NodeId::new(self.rng.gen_range(1..=self.size())))
    }

    /// How many nodes the cluster started with.
    fn size(&self) -> u64 {
        self.first_size as u64
    }

    /// Advances the membership script by at most one step.
    async fn run_script(&mut self) -> Result<(), Violation> {
        let now = self.now_ms();
        let step = match self.script {
            Script::Done => return Ok(()),
            Script::Waiting { at_ms } | Script::DamageAt { at_ms } if now < at_ms => return Ok(()),
            Script::DamageAt { .. } => {
                // A running voter, so that the others are intact.
                let running: Vec<usize> = (0..self.first_size)
                    .filter(|&i| self.nodes[i].engine.is_some() && self.nodes[i].standing == Standing::Member)
                    .collect();
                if running.is_empty() {
                    return Ok(());
                }
                let i = running[self.script_rng.gen_range(0..running.len())];
                let id = self.nodes[i].id;
                self.log(|| format!("damage: node {id} loses its whole directory; it repairs"));
                self.stop_node(i).await;
                self.nodes[i].standing = Standing::Damaged;
                let dir = self.nodes[i].dir.clone();
                // Its RocksDB may still be closing: removed again until gone.
                while dir.exists() {
                    let _ = std::fs::remove_dir_all(&dir);
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
                Step::Demote(id)
            }
            Script::Waiting { .. } => {
                let spare = self.nodes.len() - 1;
                self.nodes[spare].standing = Standing::Member;
                self.log(|| format!("membership: node {} starts and joins", spare + 1));
                self.start_node(spare).await?;
                Step::Add
            }
            Script::Retry { step, at_ms } if now >= at_ms => step,
            Script::Retry { .. } => return Ok(()),
            Script::Running(step) => {
                let finished = self
                    .script_answer
                    .as_ref()
                    .is_some_and(|answer| answer.is_finished());
                if !finished {
                    return Ok(());
                }
                let answer = self.script_answer.take().expect("a running step has an answer");
                let result = answer.await.unwrap_or(Err(EngineError::ShuttingDown));
                self.log(|| format!("membership: {step:?} answered {result:?}"));
                match (step, result) {
                    (_, Ok(())) => self.step_committed(step).await,
                    // An earlier attempt that looked failed committed.
                    (Step::Add, Err(EngineError::MembershipRefused(why)))
                        if why.contains("already a member") =>
                    {
                        self.step_committed(step).await
                    }
                    (Step::Promote | Step::Repromote(_), Err(EngineError::MembershipRefused(why)))
                        if why.contains("already a voter") =>
                    {
                        self.step_committed(step).await
                    }
                    (Step::Demote(id), Err(EngineError::MembershipRefused(why)))
                        if why.contains("not a voter") && self.demoted_by_a_member(id) =>
                    {
                        self.step_committed(step).await
                    }
                    // The leader's view includes changes not yet committed,
                    // which a new leader may drop: a removal counts once
                    // it is applied (the id is retired), and a promotion
                    // refused for want of a learner starts over with the add.
                    (Step::Remove(id), Err(EngineError::MembershipRefused(why)))
                        if why.contains("not a member") && self.retired_by_a_member(id) =>
                    {
                        self.step_committed(step).await
                    }
                    (Step::Promote, Err(EngineError::MembershipRefused(why)))
                        if why.contains("not a learner") =>
                    {
                        self.script = Script::Retry {
                            step: Step::Add,
                            at_ms: now + ELECTION_MS,
                        }
                    }
                    (_, Err(_)) => {
                        self.script = Script::Retry {
                            step,
                            at_ms: now + ELECTION_MS,
                        }
                    }
                }
                return Ok(());
            }
        };
        let Some(leader) = self.leaders().first().copied() else {
            self.script = Script::Retry {
                step,
                at_ms: now + ELECTION_MS,
            };
            return Ok(());
        };
        let engine = self.nodes[(leader.get() - 1) as usize]
            .engine
            .clone()
            .expect("a leader runs");
        let spare = self.nodes[self.nodes.len() - 1].id;
        let change = match step {
            Step::Add => MembershipChange::AddLearner {
                id: spare,
                addr: format!("sim-{spare}"),
            },
            Step::Promote => MembershipChange::Promote { id: spare },
            Step::Remove(id) => MembershipChange::Remove { id },
            Step::Demote(id) => MembershipChange::Demote { id },
            Step::Repromote(id) => MembershipChange::Promote { id },
        };
        self.log(|| format!("membership: node {leader} proposes {change:?}"));
        self.script_answer = Some(tokio::spawn(async move {
            let answer = tokio::time::timeout(Duration::from_millis(ANSWER_MS_MAX.max(5_000)), async {
                // As `Cluster/RepairMember` does: a voter is marked as
                // under repair first, so that leaving the configuration
                // does not retire its id; one that left it already (the
                // leader crashed before adding it back) is added back.
                if let MembershipChange::Demote { id } = &change {
                    let member = engine.members().into_iter().find(|member| member.id == *id);
                    match member {
                        Some(member) if member.voter => {
                            let begun = engine
                                .propose(quorumlock_core::lock::Command::BeginRepair { node: *id })
                                .await?;
                            if let Err(error) = begun {
                                return Err(EngineError::MembershipRefused(error.to_string()));
                            }
                        }
                        Some(_) => return Ok(()),
                        None => {
                            return engine
                                .change_membership(MembershipChange::AddLearner {
                                    id: *id,
                                    addr: format!("sim-{id}"),
                                })
                                .await
                        }
                    }
                }
                engine.change_membership(change).await
            })
            .await;
            drop(engine);
            answer.unwrap_or_else(|_| Err(EngineError::Unavailable("gave up waiting".to_string())))
        }));
        self.script = Script::Running(step);
        Ok(())
    }

    /// Whether a running member applied the removal of `id`.
    fn retired_by_a_member(&self, id: NodeId) -> bool {
        self.nodes
            .iter()
            .filter_map(|node| node.engine.as_ref())
            .any(|engine| engine.is_retired(id))
    }

    /// Whether a running member knows `id` as a learner.
    fn demoted_by_a_member(&self, id: NodeId) -> bool {
        self.nodes
            .iter()
            .filter_map(|node| node.engine.as_ref())
            .any(|engine| {
                engine
                    .members()
                    .iter()
                    .any(|member| member.id == id && !member.voter)
            })
    }

    /// Moves the script past a committed step.
    async fn step_committed(&mut self, step: Step) {
        self.membership_changes += 1;
        self.script = match step {
            Step::Add => Script::Retry {
                step: Step::Promote,
                at_ms: self.now_ms(),
            },
            Step::Promote => {
                let victim = self.script_rng.gen_range(1..=self.first_size as u64);
                Script::Retry {
                    step: Step::Remove(NodeId::new(victim)),
                    at_ms: self.now_ms(),
                }
            }
            Step::Remove(id) => {
                let i = (id.get() - 1) as usize;
                self.log(|| format!("membership: node {id} is retired and stopped"));
                self.nodes[i].standing = Standing::Retired;
                self.stop_node(i).await;
                Script::Done
            }
            Step::Demote(id) => {
                let i = (id.get() - 1) as usize;
                self.log(|| format!("repair: node {id} starts again from an empty directory"));
                self.nodes[i].standing = Standing::Member;
                self.nodes[i].joins = true;
                if let Err(error) = self.start_node(i).await {
                    self.log(|| format!("repair: node {id} did not start: {error}"));
                }
                Script::Retry {
                    step: Step::Repromote(id),
                    at_ms: self.now_ms(),
                }
            }
            Step::Repromote(id) => {
                self.repairs += 1;
                self.log(|| format!("repair: node {id} is a voter again"));
                Script::Done
            }
        };
    }

    fn client_work(&mut self) {
        let now = self.now_ms();
        for client in 0..self.clients.len() {
            if let Some(session) = self.clients[client].renewal_due(now) {
                let target = (self.clients[client].target.get() - 1) as usize;
                let result = match &self.nodes[target].leases {
                    Some(leases) => leases.renew(session).map(|_| ()),
                    None => Err(RenewError::NotLeader),
                };
                let leader = match result {
                    Err(RenewError::NotLeader) => self.nodes[target]
                        .engine
                        .as_ref()
                        .and_then(|engine| engine.leadership().borrow().leader.as_ref().map(|l| l.id))
                        .or_else(|| self.random_node()),
                    _ => None,
                };
                self.clients[client].renewed(now, result, leader);
            }
            if !self.clients_active {
                continue;
            }
            let Some(command) = self.clients[client].next_command(now, &mut self.rng) else {
                continue;
            };
            self.client_serial[client] += 1;
            let serial = self.client_serial[client];
            let target = self.clients[client].target;
            let Some(engine) = self.nodes[(target.get() - 1) as usize].engine.clone() else {
                let leader = self.random_node();
                self.clients[client].refused(now, leader, &mut self.rng);
                continue;
            };
            let answers = self.answers_tx.clone();
            tokio::spawn(propose(engine, command, client, serial, target, answers));
        }
    }
}

async fn propose(
    engine: Arc<RaftEngine>,
    command: Command,
    client: usize,
    serial: u64,
    target: NodeId,
    answers: mpsc::UnboundedSender<Answer>,
) {
    let result = tokio::time::timeout(Duration::from_millis(ANSWER_MS_MAX), engine.propose(command))
        .await
        .unwrap_or_else(|_| Err(EngineError::Unavailable("client gave up waiting".to_string())));
    // Dropping the engine promptly lets a crashed node's RocksDB close.
    drop(engine);
    let _ = answers.send((client, serial, target, result));
}

/// Feeds the checker the grants one node's state machine applies.
async fn observe(node: NodeId, mut notices: broadcast::Receiver<StateNotice>, checker: Arc<Mutex<Checker>>) {
    loop {
        match notices.recv().await {
            Ok(StateNotice::Event(Event::Granted(grant))) => checker.lock().granted(node, &grant),
            Ok(StateNotice::Event(_)) => {}
            // Replaced from a snapshot: the order starts again from there.
            Ok(StateNotice::Restored) | Err(broadcast::error::RecvError::Lagged(_)) => {
                checker.lock().reset(node)
            }
            Err(broadcast::error::RecvError::Closed) => return,
        }
    }
}
