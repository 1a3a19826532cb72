//! The whole lock service on the Multi-Paxos engine, stepped
//! deterministically.
//!
//! A node is the production [`Driver`] running the replica over a
//! [`SimDisk`] (writes durable late, a prefix kept on a crash) and a
//! [`SimTransport`] through the fault model's network, applying every chosen
//! command to the real [`AppliedState`]; and the real [`LeaseKeeper`],
//! deciding expiry on the node's [`SkewedClock`] and proposing
//! `CheckpointSessions`/`ExpireSession` through the log, beside the real
//! [`HoldTimers`], timing grants' maximum hold times and lock-delays on the
//! same clock and proposing `EndHold`/`EndLockDelay`, as the server's lease
//! driver does on a live node. RocksDB, tonic and tokio are replaced by the
//! simulated disk, network and steps; nothing else is.
//!
//! One step is one millisecond of global time. Nothing reads a real clock
//! (the clocks' origin `Instant`s are only ever compared with themselves),
//! iterates a hash map or depends on thread timing, so a seed replays
//! exactly.

use std::cell::RefCell;
use std::collections::BTreeSet;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use quorumlock_core::consensus::{AppliedState, CommandResult, LeaderInfo, Leadership, NodeId, StateNotice};
use quorumlock_core::lease::{
    HoldTimers, KeeperAction, KeeperConfig, LeaseKeeper, ProposalPurpose, RenewError,
};
use quorumlock_core::lock::{Command, Event, Fence, Grant, LockState, Outcome, SessionId};
use quorumlock_core::time::{Clock, SkewedClock};
use quorumlock_paxos::sim::{Links, SimDisk, SimTransport};
use quorumlock_paxos::{Answer, Driver, Proposal, Refusal, Replica, ReplicaConfig, Slot, StateMachine};
use quorumlock_simkit::{LinkFaults, Partition};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::sync::broadcast;

use super::checker::Checker;
use super::clock::SimTime;
use super::workload::{Client, ANSWER_MS_MAX, TTL_MS_MAX};
use super::{fingerprint, RunSummary, Violation};

/// Steps (milliseconds) per replica tick.
const STEPS_PER_TICK: u64 = 10;
/// The replicas' heartbeat interval.
const HEARTBEAT_TICKS: u64 = 2;
/// The replicas' minimum election timeout.
const ELECTION_TICKS: u64 = 10;
/// Extra lease a takeover grants: one maximal election timeout.
const TAKEOVER_GRACE_MS: u64 = 2 * ELECTION_TICKS * STEPS_PER_TICK;
/// How often the keeper considers checkpoints, on its own clock.
const CHECKPOINT_INTERVAL_MS: u64 = 500;
/// Length of the faulty phase.
const FAULT_MS: u64 = 4_000;
/// After healing, some client must have a fenced write acknowledged, and
/// every client an answer, within this. It covers elections with backoff, a
/// session TTL plus takeover grace for locks held by abandoned sessions,
/// and the clock offsets the faults left (jumps are bounded below).
const LIVENESS_MS_MAX: u64 = 10_000;
/// After clients stop (and again after the final restart), every replica
/// must have applied the whole history within this.
const CONVERGENCE_MS_MAX: u64 = 10_000;
/// Longest message delay a run may draw.
const DELAY_MS_MAX: u64 = 80;
/// Longest time a run's disks may take to make a write durable.
const DISK_LATENCY_MS_MAX: u64 = 15;
/// Largest forward clock jump.
const JUMP_FORWARD_MS_MAX: i64 = 2_000;
/// Largest backward clock jump.
const JUMP_BACKWARD_MS_MAX: i64 = 1_000;

/// Who waits for a driver's answer.
#[derive(Debug, Clone, Copy)]
enum Waiter {
    /// A client command, identified by the client and its command serial.
    Client { client: usize, serial: u64 },
    /// A proposal of the lease keeper.
    Keeper(ProposalPurpose),
    /// The read barrier of a takeover in this term.
    Barrier { term: u64 },
    /// An end of a hold or lock-delay the hold timers proposed. Its answer
    /// is not needed: while the end is due and still in the applied state,
    /// the timers propose it again.
    Holds,
}

/// What applying told the checker, drained after each advance.
enum Observation {
    Granted(Grant),
    PutAccepted(Fence),
    /// The state after every command of this slot.
    State(Slot, Vec<u8>),
    /// The state was replaced from a snapshot.
    Restored(LockState),
}

/// The real lock state machine, observed.
struct ObservedLocks {
    state: AppliedState,
    notices: broadcast::Receiver<StateNotice>,
    slot: Slot,
    observations: Vec<Observation>,
}

impl ObservedLocks {
    fn new(state: LockState, slot: Slot) -> ObservedLocks {
        let state = AppliedState::new(state);
        let notices = state.subscribe();
        ObservedLocks {
            state,
            notices,
            slot,
            observations: Vec::new(),
        }
    }
}

impl StateMachine<Command> for ObservedLocks {
    type Output = CommandResult;
    type Snapshot = LockState;

    fn apply(&mut self, slot: Slot, proposal: &Proposal<Command>) -> CommandResult {
        let result = self
            .state
            .apply_entry(slot.get(), [&proposal.command])
            .pop()
            .expect("one command gives one result");
        while let Ok(notice) = self.notices.try_recv() {
            if let StateNotice::Event(Event::Granted(grant)) = notice {
                self.observations.push(Observation::Granted(grant));
            }
        }
        if let (Command::Put { fence, .. }, Ok(Outcome::Written { .. })) = (&proposal.command, &result) {
            self.observations.push(Observation::PutAccepted(fence.clone()));
        }
        result
    }

    fn slot_applied(&mut self, slot: Slot) {
        self.slot = slot;
        self.observations
            .push(Observation::State(slot, self.state.snapshot()));
    }

    fn snapshot(&self) -> Vec<u8> {
        self.state.snapshot()
    }

    fn decode_snapshot(&self, data: &[u8]) -> Result<LockState, String> {
        LockState::restore(data)
    }

    fn install_snapshot(&mut self, slot: Slot, snapshot: LockState) {
        self.observations.push(Observation::Restored(snapshot.clone()));
        self.state.restore(snapshot, slot.get());
        // The restore notice replaces what was observed; nothing to check.
        while self.notices.try_recv().is_ok() {}
        self.slot = slot;
        self.observations
            .push(Observation::State(slot, self.state.snapshot()));
    }
}

type LockDriver = Driver<Command, SimDisk<Command>, SimTransport<Command>, ObservedLocks, Waiter>;

struct Node {
    id: NodeId,
    driver: Option<LockDriver>,
    disk: SimDisk<Command>,
    restart_at: u64,
    tick_phase: u64,
    clock: Arc<SkewedClock<SimTime>>,
    keeper: LeaseKeeper,
    holds: HoldTimers,
    /// The revision of its applied state's history the checker has read
    /// through; `None` until the checker first reads its state.
    changes_read: Option<u64>,
}

impl Node {
    /// Leadership as the node's services see it.
    fn leadership(&self) -> Leadership {
        let Some(driver) = &self.driver else {
            return Leadership::default();
        };
        let replica = driver.replica();
        Leadership {
            term: replica.term(),
            leader: replica.leader_id().map(|id| LeaderInfo {
                id,
                addr: format!("node-{id}"),
            }),
            is_self: replica.is_leader(),
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Faults {
    crash: f64,
    partition: f64,
    clock_jump: f64,
    clock_rate: f64,
    client_pause: f64,
    flush: f64,
    compact: f64,
}

/// Counts of injected faults, for the summary.
#[derive(Debug, Default, Clone, Copy)]
pub struct FaultCounts {
    /// Node crashes (with restart from the simulated disk).
    pub crashes: u64,
    /// Partitions started.
    pub partitions: u64,
    /// Clock jumps and rate changes.
    pub clock_skews: u64,
    /// Client pauses past their TTL.
    pub pauses: u64,
}

/// One run of one seed.
pub struct PaxosSim {
    rng: StdRng,
    trace: bool,
    now: Arc<AtomicU64>,
    nodes: Vec<Node>,
    links: Rc<RefCell<Links<Command>>>,
    faults: Faults,
    counts: FaultCounts,
    clients: Vec<Client>,
    /// Serial of each client's command in flight.
    client_serial: Vec<u64>,
    checker: Checker,
    /// Clients send commands (false once the run winds down).
    clients_active: bool,
    /// Answers each client received.
    client_answers: Vec<u64>,
}

fn keeper() -> LeaseKeeper {
    LeaseKeeper::new(KeeperConfig {
        checkpoint_interval: Duration::from_millis(CHECKPOINT_INTERVAL_MS),
        takeover_grace: Duration::from_millis(TAKEOVER_GRACE_MS),
    })
}

impl PaxosSim {
    /// A run of `size` replicas and a few clients, all drawn from `seed`.
    pub fn new(seed: u64, size: u64) -> PaxosSim {
        let mut rng = StdRng::seed_from_u64(seed ^ (size << 56) ^ 0x5157_494d);
        let calm = rng.gen_bool(0.1);
        let faulty = |rng: &mut StdRng, max: f64| if calm { 0.0 } else { rng.gen_range(0.0..max) };
        let links = LinkFaults {
            drop: faulty(&mut rng, 0.15),
            duplicate: faulty(&mut rng, 0.1),
            delay_max: [3, 15, DELAY_MS_MAX][rng.gen_range(0..3)],
        };
        let faults = Faults {
            crash: faulty(&mut rng, 0.001),
            partition: faulty(&mut rng, 0.001),
            clock_jump: faulty(&mut rng, 0.001),
            clock_rate: faulty(&mut rng, 0.0005),
            client_pause: faulty(&mut rng, 0.001),
            flush: rng.gen_range(0.3..1.0),
            compact: rng.gen_range(0.0..0.01),
        };
        let disk_latency_ms_max = [0, 3, DISK_LATENCY_MS_MAX][rng.gen_range(0..3)];
        let now = Arc::new(AtomicU64::new(0));
        let links = Links::new(rng.gen(), links, now.clone());
        let mut nodes = Vec::new();
        for id in 1..=size {
            nodes.push(Node {
                id: NodeId::new(id),
                driver: None,
                disk: SimDisk::new(rng.gen(), disk_latency_ms_max, now.clone()),
                restart_at: 0,
                tick_phase: rng.gen_range(0..STEPS_PER_TICK),
                clock: Arc::new(SkewedClock::new(SimTime::Shared(now.clone()))),
                keeper: keeper(),
                holds: HoldTimers::new(),
                changes_read: None,
            });
        }
        let client_count = rng.gen_range(2..=5);
        let clients = (0..client_count)
            .map(|id| {
                let target = rng.gen_range(1..=size);
                Client::new(id, NodeId::new(target), &mut rng)
            })
            .collect();
        let mut sim = PaxosSim {
            rng,
            trace: std::env::var_os("QUORUMLOCK_WSIM_TRACE").is_some(),
            now,
            nodes,
            links,
            faults,
            counts: FaultCounts::default(),
            clients,
            client_serial: vec![0; client_count],
            checker: Checker::default(),
            clients_active: true,
            client_answers: vec![0; client_count],
        };
        for i in 0..sim.nodes.len() {
            sim.start(i);
        }
        sim
    }

    fn now_ms(&self) -> u64 {
        self.now.load(Ordering::Relaxed)
    }

    fn log(&self, event: impl FnOnce() -> String) {
        if self.trace {
            eprintln!("[{} ms] {}", self.now_ms(), event());
        }
    }

    fn check(&self) -> Result<(), Violation> {
        match self.checker.first_violation() {
            Some(violation) => Err(violation.clone()),
            None => Ok(()),
        }
    }

    /// Faults, heal, liveness, wind-down, a restart of every node from its
    /// disk, and the final checks.
    pub fn run(&mut self) -> Result<RunSummary, Violation> {
        while self.now_ms() < FAULT_MS {
            self.inject_faults();
            self.advance()?;
        }
        self.heal();

        // Liveness: a write is acknowledged and every client is answered.
        let healed_at = self.now_ms();
        let acked_at_heal = self.checker.acked_writes();
        let answers_at_heal = self.client_answers.clone();
        loop {
            let answered: Vec<bool> = self
                .client_answers
                .iter()
                .zip(&answers_at_heal)
                .map(|(now, then)| now > then)
                .collect();
            if self.checker.acked_writes() > acked_at_heal && answered.iter().all(|seen| *seen) {
                break;
            }
            if self.now_ms() >= healed_at + LIVENESS_MS_MAX {
                return Err(format!(
                    "liveness: {LIVENESS_MS_MAX} ms after healing, writes acknowledged since: {}, \
                     clients answered: {answered:?} (leaders: {:?})",
                    self.checker.acked_writes() - acked_at_heal,
                    self.leaders()
                ));
            }
            self.advance()?;
        }

        // Wind down: clients stop, every replica applies the whole history.
        self.clients_active = false;
        self.converge("after the clients stopped")?;

        // Every node crashes and restarts from its disk alone; everything
        // acknowledged must still be there once they agree again.
        for i in 0..self.nodes.len() {
            self.crash(i, 0);
        }
        self.counts.crashes -= self.nodes.len() as u64;
        for i in 0..self.nodes.len() {
            self.start(i);
        }
        self.converge("after every node restarted")?;
        self.checker.check_realtime_fencing();
        for node in &self.nodes {
            let state = node
                .driver
                .as_ref()
                .expect("every node runs after convergence")
                .machine()
                .state
                .read(LockState::clone);
            self.checker.check_durability(node.id, &state);
            if let Err(broken) = state.check_invariants() {
                self.checker
                    .violation(format!("state invariants: node {}: {broken}", node.id));
            }
        }
        self.check()?;
        let final_state = self.nodes[0]
            .driver
            .as_ref()
            .expect("every node runs after convergence")
            .machine()
            .state
            .snapshot();
        let slots = self.applied_slots().into_iter().max().unwrap_or(Slot::ZERO).get();
        let timed_ends = self.checker.timed_ends();
        Ok(RunSummary {
            steps: self.now_ms(),
            slots,
            acked_writes: self.checker.acked_writes() as u64,
            answers: self.client_answers.iter().sum(),
            crashes: self.counts.crashes,
            partitions: self.counts.partitions,
            clock_skews: self.counts.clock_skews,
            pauses: self.counts.pauses,
            stale_refusals: self.clients.iter().map(|client| client.stale_refusals).sum(),
            // Storage faults and repairs are simulated on the paxos core
            // (quorumlock-paxos's simulation) and on raft.
            repairs: 0,
            holds_ended: timed_ends.holds_ended,
            delays_begun: timed_ends.delays_begun,
            delays_ended: timed_ends.delays_ended,
            delayed_refusals: self.clients.iter().map(|client| client.delayed_refusals).sum(),
            lost_grants: self.clients.iter().map(|client| client.lost_grants).sum(),
            fingerprint: fingerprint(&final_state, self.now_ms(), slots as usize),
        })
    }

    fn applied_slots(&self) -> Vec<Slot> {
        self.nodes
            .iter()
            .map(|node| {
                node.driver
                    .as_ref()
                    .map_or(Slot::ZERO, |driver| driver.machine().slot)
            })
            .collect()
    }

    /// Steps until every node is up, idle and has applied the whole history
    /// under a leader whose keeper has taken over.
    fn converge(&mut self, when: &str) -> Result<(), Violation> {
        let deadline = self.now_ms() + CONVERGENCE_MS_MAX;
        while !self.converged() {
            if self.now_ms() >= deadline {
                return Err(format!(
                    "convergence {when}: replicas applied {:?} within {CONVERGENCE_MS_MAX} ms \
                     (leaders: {:?}; waiting proposals: {:?})",
                    self.applied_slots(),
                    self.leaders(),
                    self.nodes
                        .iter()
                        .map(|node| node.driver.as_ref().map_or(0, |driver| driver.waiting()))
                        .collect::<Vec<_>>()
                ));
            }
            self.advance()?;
        }
        Ok(())
    }

    fn converged(&mut self) -> bool {
        let keeper_ready = self.nodes.iter().any(|node| {
            node.driver.as_ref().is_some_and(|driver| {
                driver.replica().is_leader() && node.keeper.active_term() == Some(driver.replica().term())
            })
        });
        let slots = self.applied_slots();
        let chosen = self
            .nodes
            .iter()
            .filter_map(|node| node.driver.as_ref().map(|driver| driver.replica().chosen_upto()))
            .max()
            .unwrap_or(Slot::ZERO);
        keeper_ready
            && self.clients.iter().all(|client| client.in_flight().is_none())
            && slots.iter().all(|slot| *slot == chosen)
            && self.nodes.iter_mut().all(|node| {
                let disk_idle = !node.disk.has_pending();
                node.driver
                    .as_mut()
                    .is_some_and(|driver| !driver.has_work() && driver.waiting() == 0)
                    && disk_idle
            })
    }

    fn leaders(&self) -> Vec<NodeId> {
        self.nodes
            .iter()
            .filter(|node| {
                node.driver
                    .as_ref()
                    .is_some_and(|driver| driver.replica().is_leader())
            })
            .map(|node| node.id)
            .collect()
    }

    fn heal(&mut self) {
        self.log(|| "heal".to_string());
        let mut links = self.links.borrow_mut();
        links.network.partition = None;
        links.faults = links.faults.healed();
        drop(links);
        self.faults = Faults {
            crash: 0.0,
            partition: 0.0,
            clock_jump: 0.0,
            clock_rate: 0.0,
            client_pause: 0.0,
            ..self.faults
        };
        for i in 0..self.nodes.len() {
            self.nodes[i].clock.heal();
            if self.nodes[i].driver.is_none() {
                self.start(i);
            }
        }
        let now = self.now_ms();
        for client in &mut self.clients {
            client.resume(now);
        }
    }

    /// One millisecond: deliver due messages, tick, run clients and lease
    /// keepers, let the disks and (now and then) the drivers make progress,
    /// then check.
    fn advance(&mut self) -> Result<(), Violation> {
        let now = self.now_ms() + 1;
        self.now.store(now, Ordering::Relaxed);
        loop {
            let next = self.links.borrow_mut().deliver_due();
            let Some(envelope) = next else { break };
            let to = (envelope.to.get() - 1) as usize;
            if let Some(driver) = self.nodes[to].driver.as_mut() {
                driver.step(envelope.from, envelope.message);
            }
        }
        for i in 0..self.nodes.len() {
            if (now + self.nodes[i].tick_phase) % STEPS_PER_TICK == 0 {
                if let Some(driver) = self.nodes[i].driver.as_mut() {
                    driver.tick();
                    self.keeper_tick(i);
                }
            }
        }
        self.client_work();
        for i in 0..self.nodes.len() {
            if self.nodes[i].driver.is_some() {
                self.nodes[i].disk.sync_due();
                if self.rng.gen_bool(self.faults.flush) {
                    self.flush(i)?;
                }
            } else if now >= self.nodes[i].restart_at {
                self.start(i);
            }
        }
        for node in &self.nodes {
            if let Some(violation) = node.disk.violation() {
                return Err(format!("node {}: {violation}", node.id));
            }
            if let Some(breach) = node
                .driver
                .as_ref()
                .and_then(|driver| driver.replica().agreement_breach())
            {
                return Err(format!("agreement: node {}: {breach}", node.id));
            }
        }
        self.check()
    }

    /// The driver of node `i` executes what it has; answers go to clients
    /// and to the keeper, observations and the changes it applied to the
    /// checker.
    fn flush(&mut self, i: usize) -> Result<(), Violation> {
        let node = &mut self.nodes[i];
        let id = node.id;
        let Some(driver) = node.driver.as_mut() else {
            return Ok(());
        };
        let answers = driver
            .advance()
            .map_err(|error| format!("driver: node {id} stopped: {error}"))?;
        let observations = std::mem::take(&mut driver.machine_mut().observations);
        for observation in observations {
            match observation {
                Observation::Granted(grant) => self.checker.granted(id, &grant),
                Observation::PutAccepted(fence) => self.checker.put_accepted(id, &fence),
                Observation::State(slot, bytes) => self.checker.applied_state(id, slot.get(), bytes),
                Observation::Restored(state) => self.checker.restored(id, &state),
            }
        }
        let read = self
            .checker
            .follow(id, &driver.machine().state, node.changes_read);
        node.changes_read = Some(read);
        for answer in answers {
            self.answer(i, answer);
        }
        Ok(())
    }

    fn answer(&mut self, i: usize, answer: Answer<Waiter, CommandResult>) {
        let now = self.now_ms();
        match answer {
            Answer::Applied {
                reply: Waiter::Client { client, serial },
                output,
            } => {
                if self.client_serial[client] != serial {
                    return;
                }
                self.client_answers[client] += 1;
                if let Some(write) = self.clients[client].answered(now, &output, &mut self.rng) {
                    self.checker.put_acked(write);
                }
                // The RPC layer tells the keeper about sessions opened here.
                if let Ok(Outcome::SessionOpened { session, ttl_ms }) = output {
                    let node = &mut self.nodes[i];
                    let now = node.clock.now();
                    node.keeper.opened(session, Duration::from_millis(ttl_ms), now);
                }
            }
            Answer::Applied {
                reply: Waiter::Keeper(purpose),
                output,
            } => {
                if let (ProposalPurpose::Expire(session), Err(error)) = (purpose, &output) {
                    self.log(|| format!("expiry of session {session} refused: {error}"));
                }
                self.nodes[i].keeper.proposal_done(purpose, Some(&output));
            }
            Answer::ReadReady {
                reply: Waiter::Barrier { term },
            } => self.barrier_passed(i, term),
            Answer::ReadFailed {
                reply: Waiter::Barrier { term },
            } => self.nodes[i].keeper.barrier_failed(term),
            Answer::Refused {
                reply: Waiter::Client { client, serial },
                refusal,
            } => {
                if self.client_serial[client] == serial {
                    let leader = match refusal {
                        Refusal::NotLeader { leader } => leader,
                        Refusal::Overloaded => None,
                    };
                    self.clients[client].refused(now, leader, &mut self.rng);
                }
            }
            Answer::Abandoned {
                reply: Waiter::Client { client, serial },
            } => self.client_unknown(client, serial),
            Answer::Refused {
                reply: Waiter::Keeper(purpose),
                ..
            }
            | Answer::Abandoned {
                reply: Waiter::Keeper(purpose),
            } => self.nodes[i].keeper.proposal_done(purpose, None),
            Answer::Applied {
                reply: Waiter::Holds,
                output,
            } => self.log(|| format!("node {} ended a hold or lock-delay: {output:?}", i + 1)),
            Answer::Refused {
                reply: Waiter::Holds, ..
            }
            | Answer::Abandoned { reply: Waiter::Holds } => {}
            other => panic!("node {} answered {other:?}", i + 1),
        }
    }

    /// Node `i` crashes: its disk keeps a prefix of what was pending, its
    /// keeper and hold timers forget everything, its callers learn nothing
    /// more.
    fn crash(&mut self, i: usize, downtime_ms: u64) {
        self.counts.crashes += 1;
        self.log(|| format!("crash node {} for {downtime_ms} ms", i + 1));
        let now = self.now_ms();
        let node = &mut self.nodes[i];
        let waiting = node
            .driver
            .take()
            .map(|mut driver| driver.drain_waiting())
            .unwrap_or_default();
        node.disk.crash();
        node.keeper = keeper();
        node.holds = HoldTimers::new();
        node.changes_read = None;
        node.restart_at = now + downtime_ms;
        for waiter in waiting {
            if let Waiter::Client { client, serial } = waiter {
                self.client_unknown(client, serial);
            }
        }
    }

    /// Starts node `i` from its disk alone.
    fn start(&mut self, i: usize) {
        self.log(|| format!("start node {}", i + 1));
        let members: BTreeSet<NodeId> = (1..=self.nodes.len() as u64).map(NodeId::new).collect();
        let mut config = ReplicaConfig::new(self.nodes[i].id, members, HEARTBEAT_TICKS, ELECTION_TICKS);
        config.seed = self.rng.gen();
        let node = &mut self.nodes[i];
        let image = node.disk.image();
        let (slot, state) = match &image.snapshot {
            Some((slot, data)) => (
                *slot,
                LockState::restore(data).expect("the simulated disk keeps snapshots whole"),
            ),
            None => (Slot::ZERO, LockState::default()),
        };
        self.checker.restored(node.id, &state);
        node.changes_read = None;
        let replica = Replica::new(config, image.durable_state());
        node.driver = Some(Driver::new(
            replica,
            node.disk.clone(),
            SimTransport::new(self.links.clone()),
            ObservedLocks::new(state, slot),
            image.boot,
            u64::MAX / 2,
        ));
    }

    fn inject_faults(&mut self) {
        let size = self.nodes.len();
        let now = self.now_ms();
        for i in 0..size {
            if self.nodes[i].driver.is_some() && self.rng.gen_bool(self.faults.crash) {
                let downtime = self.rng.gen_range(1..=600);
                self.crash(i, downtime);
            }
        }
        if self.links.borrow_mut().network.heal_partition_due(now) {
            self.log(|| "partition heals".to_string());
        }
        if self.links.borrow().network.partition.is_none() && self.rng.gen_bool(self.faults.partition) {
            let length = self.rng.gen_range(50..=1_000);
            let leaders = self.leaders();
            let leaders: Vec<u64> = leaders.into_iter().map(NodeId::get).collect();
            let partition = Partition::draw(&mut self.rng, size, &leaders, now, length);
            self.log(|| format!("partition {partition:?}"));
            self.counts.partitions += 1;
            self.links.borrow_mut().network.partition = Some(partition);
        }
        if self.rng.gen_bool(self.faults.clock_jump) {
            let i = self.rng.gen_range(0..size);
            let delta = self.rng.gen_range(-JUMP_BACKWARD_MS_MAX..=JUMP_FORWARD_MS_MAX);
            self.log(|| format!("clock of node {} jumps {delta} ms", i + 1));
            self.counts.clock_skews += 1;
            self.nodes[i].clock.jump(delta);
        }
        if self.rng.gen_bool(self.faults.clock_rate) {
            let i = self.rng.gen_range(0..size);
            let rate = self.rng.gen_range(500..=2_000);
            self.log(|| format!("clock of node {} runs at {rate}‰", i + 1));
            self.counts.clock_skews += 1;
            self.nodes[i].clock.set_rate(rate as f64 / 1_000.0);
        }
        if self.rng.gen_bool(self.faults.client_pause) {
            let client = self.rng.gen_range(0..self.clients.len());
            let length = self.rng.gen_range(TTL_MS_MAX..=3 * TTL_MS_MAX);
            self.counts.pauses += 1;
            if self.rng.gen_bool(0.7) {
                self.log(|| format!("client {client} will pause {length} ms after its next grant"));
                self.clients[client].pause_after_grant(length);
            } else {
                self.log(|| format!("client {client} pauses {length} ms"));
                self.clients[client].pause(now + length);
            }
        }
        for i in 0..size {
            if self.rng.gen_bool(self.faults.compact) {
                if let Some(driver) = self.nodes[i].driver.as_mut() {
                    driver.compact_now();
                }
            }
        }
    }

    fn client_unknown(&mut self, client: usize, serial: u64) {
        if self.client_serial[client] == serial && self.clients[client].in_flight().is_some() {
            let now = self.now_ms();
            self.clients[client].unknown(now, &mut self.rng);
        }
    }

    /// Clients renew their sessions, give up on old commands, and send new
    /// ones to the node they believe leads.
    fn client_work(&mut self) {
        let now = self.now_ms();
        for client in 0..self.clients.len() {
            if let Some(session) = self.clients[client].renewal_due(now) {
                let target = (self.clients[client].target.get() - 1) as usize;
                let result = self.renew(target, session);
                let leader = match result {
                    Err(RenewError::NotLeader) => self.leader_hint(target),
                    _ => None,
                };
                self.clients[client].renewed(now, result, leader);
            }
            if let Some((_, invoked)) = self.clients[client].in_flight() {
                if now >= invoked + ANSWER_MS_MAX {
                    let serial = self.client_serial[client];
                    self.client_unknown(client, serial);
                }
            }
            if !self.clients_active {
                continue;
            }
            let Some(command) = self.clients[client].next_command(now, &mut self.rng) else {
                continue;
            };
            self.client_serial[client] += 1;
            let serial = self.client_serial[client];
            let target = (self.clients[client].target.get() - 1) as usize;
            match self.nodes[target].driver.as_mut() {
                Some(driver) => {
                    driver.propose(command, Waiter::Client { client, serial });
                }
                None => {
                    let leader = self.leader_hint(target);
                    self.clients[client].refused(now, leader, &mut self.rng);
                }
            }
        }
    }

    /// Where to send a client refused by node `i`: its leader if it knows
    /// one, else a node drawn at random.
    fn leader_hint(&mut self, i: usize) -> Option<NodeId> {
        let known = self.nodes[i]
            .driver
            .as_ref()
            .and_then(|driver| driver.replica().leader_id());
        Some(known.unwrap_or_else(|| NodeId::new(self.rng.gen_range(1..=self.nodes.len() as u64))))
    }

    /// A keepalive, answered from the keeper's memory as the server's lease
    /// driver does.
    fn renew(&mut self, i: usize, session: SessionId) -> Result<(), RenewError> {
        let node = &mut self.nodes[i];
        let Some(driver) = node.driver.as_ref() else {
            return Err(RenewError::NotLeader);
        };
        let now = node.clock.now();
        let state = &driver.machine().state;
        node.keeper
            .renew(session, now, || {
                state.read(|state| state.session(session).map(|found| found.ttl_ms))
            })
            .map(|_| ())
    }

    /// One tick of the lease keeper and then of the hold timers, as the
    /// lease driver does on each interval.
    fn keeper_tick(&mut self, i: usize) {
        let view = self.nodes[i].leadership();
        let now = self.nodes[i].clock.now();
        let actions = self.nodes[i].keeper.tick(&view, now);
        self.carry_out(i, actions);
        self.end_holds(i);
    }

    /// Times the holds and lock-delays of node `i`'s applied state while
    /// it leads, and proposes the ends that are due.
    fn end_holds(&mut self, i: usize) {
        let view = self.nodes[i].leadership();
        let leading = view.is_self.then_some(view.term);
        let node = &mut self.nodes[i];
        let now = node.clock.now();
        let Some(driver) = node.driver.as_mut() else {
            return;
        };
        let timed = match leading {
            Some(_) => driver.machine().state.read(|state| state.timed()),
            None => Vec::new(),
        };
        let ends = node.holds.tick(leading, now, timed);
        for command in ends {
            driver.propose(command, Waiter::Holds);
        }
    }

    fn barrier_passed(&mut self, i: usize, term: u64) {
        let view = self.nodes[i].leadership();
        let node = &mut self.nodes[i];
        let now = node.clock.now();
        let Some(driver) = node.driver.as_ref() else {
            return;
        };
        let keeper = &mut node.keeper;
        let actions = driver
            .machine()
            .state
            .read(|state| keeper.barrier_passed(term, &view, now, state.sessions()));
        if node.keeper.active_term() == Some(term) {
            self.log(|| format!("node {} takes over leases in term {term}", i + 1));
        }
        self.carry_out(i, actions);
    }

    fn carry_out(&mut self, i: usize, actions: Vec<KeeperAction>) {
        let node = &mut self.nodes[i];
        let Some(driver) = node.driver.as_mut() else {
            return;
        };
        for action in actions {
            match action {
                KeeperAction::ReadBarrier { term } => driver.read(Waiter::Barrier { term }),
                KeeperAction::Propose { command, purpose } => {
                    driver.propose(command, Waiter::Keeper(purpose));
                }
            }
        }
    }
}
