//! The whole lock service on the Multi-Paxos core, stepped deterministically.
//!
//! A node is the sans-I/O [`Replica`], a simulated disk (promise, accepted
//! records, snapshot), the real [`AppliedState`] applying every chosen
//! command to the real lock state machine, and a lease keeper that decides
//! expiry with the real [`LeaseTracker`] on the node's [`SkewedClock`] and
//! proposes `CheckpointSessions`/`ExpireSession` through the log, as
//! `server::leases` does on a live node. The driver contract (persist, then
//! send, then apply) is the one `paxos::engine` follows; RocksDB and tonic
//! are replaced by the simulated disk and network.
//!
//! One step is one millisecond of global time. Nothing reads a real clock
//! (the clocks' origin `Instant` is only ever compared with itself), iterates
//! a hash map or depends on thread timing, so a seed replays exactly.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::sync::broadcast;

use super::checker::Checker;
use super::clock::{SimTime, SkewedClock};
use super::workload::{Client, ANSWER_MS_MAX, TTL_MS_MAX};
use super::{fingerprint, RunSummary, Violation};
use crate::consensus::{AppliedState, CommandResult, NodeId, StateNotice};
use crate::lock::limits::CHECKPOINT_ENTRIES_MAX;
use crate::lock::{Command, Event, LockError, LockState, Outcome, SessionId};
use crate::paxos::{
    Accepted, Apply, Ballot, DurableState, Envelope, Persist, Proposal, ProposalId, ReadId, Ready, Refusal,
    Replica, ReplicaConfig, Slot, Value,
};
use crate::server::clock::Clock;
use crate::server::lease::{LeaseTracker, RenewRefused};
use crate::server::leases::{RenewError, EXPIRIES_PER_TICK_MAX};

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
/// Largest forward clock jump.
const JUMP_FORWARD_MS_MAX: i64 = 2_000;
/// Largest backward clock jump.
const JUMP_BACKWARD_MS_MAX: i64 = 1_000;

/// What one node keeps across crashes.
#[derive(Debug, Clone, Default)]
struct Disk {
    promised: Ballot,
    accepted: BTreeMap<Slot, Accepted>,
    snapshot: Option<(Slot, Arc<Vec<u8>>)>,
    boot: u64,
}

/// Who waits for a proposal's outcome.
#[derive(Debug, Clone, Copy)]
enum Waiter {
    /// A client command, identified by the client and its command serial.
    Client { client: usize, serial: u64 },
    /// The lease keeper's expiry of a session.
    Expire(SessionId),
    /// A checkpoint the keeper proposed; nobody needs its answer.
    Checkpoint,
}

/// The lease keeper of one node: `server::leases::Leases` without tokio.
#[derive(Default)]
struct Keeper {
    active: Option<(u64, LeaseTracker)>,
    /// The read barrier a takeover waits on, and the term it is for.
    barrier: Option<(ReadId, u64)>,
    last_checkpoint: Option<Instant>,
}

struct Node {
    id: NodeId,
    replica: Option<Replica>,
    disk: Disk,
    dirty: bool,
    state: AppliedState,
    notices: broadcast::Receiver<StateNotice>,
    applied_slot: Slot,
    next_seq: u64,
    next_read: ReadId,
    waiting: BTreeMap<ProposalId, Waiter>,
    restart_at: u64,
    tick_phase: u64,
    clock: Arc<SkewedClock>,
    keeper: Keeper,
}

impl Node {
    /// Replaces the in-memory state (restart or snapshot install).
    fn reset_state(&mut self, state: LockState) {
        self.state = AppliedState::new(state);
        self.notices = self.state.subscribe();
    }
}

#[derive(Debug, Clone, Copy)]
struct Faults {
    drop: f64,
    duplicate: f64,
    delay_ms_max: u64,
    crash: f64,
    crash_after_persist: f64,
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
    network: BTreeMap<(u64, u64), Envelope>,
    message_seq: u64,
    partition: Option<(Vec<u8>, u64)>,
    faults: Faults,
    counts: FaultCounts,
    clients: Vec<Client>,
    /// Serial of each client's command in flight.
    client_serial: Vec<u64>,
    /// The value applied at each slot (index `slot - 1`), as first applied.
    history: Vec<Value>,
    checker: Checker,
    /// Clients send commands (false once the run winds down).
    clients_active: bool,
    /// Answers each client received.
    client_answers: Vec<u64>,
}

impl PaxosSim {
    /// A run of `size` replicas and a few clients, all drawn from `seed`.
    pub fn new(seed: u64, size: u64) -> PaxosSim {
        let mut rng = StdRng::seed_from_u64(seed ^ (size << 56) ^ 0x5157_494d);
        let calm = rng.gen_bool(0.1);
        let faulty = |rng: &mut StdRng, max: f64| if calm { 0.0 } else { rng.gen_range(0.0..max) };
        let faults = Faults {
            drop: faulty(&mut rng, 0.15),
            duplicate: faulty(&mut rng, 0.1),
            delay_ms_max: *[3, 15, DELAY_MS_MAX].get(rng.gen_range(0..3)).expect("in range"),
            crash: faulty(&mut rng, 0.001),
            crash_after_persist: faulty(&mut rng, 0.005),
            partition: faulty(&mut rng, 0.001),
            clock_jump: faulty(&mut rng, 0.001),
            clock_rate: faulty(&mut rng, 0.0005),
            client_pause: faulty(&mut rng, 0.001),
            flush: rng.gen_range(0.3..1.0),
            compact: rng.gen_range(0.0..0.01),
        };
        let now = Arc::new(AtomicU64::new(0));
        let origin = Instant::now();
        let members: BTreeSet<NodeId> = (1..=size).collect();
        let mut nodes = Vec::new();
        for id in 1..=size {
            let state = AppliedState::default();
            let notices = state.subscribe();
            let mut config = ReplicaConfig::new(id, members.clone(), HEARTBEAT_TICKS, ELECTION_TICKS);
            config.seed = rng.gen();
            nodes.push(Node {
                id,
                replica: Some(Replica::new(config, DurableState::default())),
                disk: Disk::default(),
                dirty: true,
                state,
                notices,
                applied_slot: 0,
                next_seq: 0,
                next_read: 0,
                waiting: BTreeMap::new(),
                restart_at: 0,
                tick_phase: rng.gen_range(0..STEPS_PER_TICK),
                clock: SkewedClock::new(origin, SimTime::Shared(now.clone())),
                keeper: Keeper::default(),
            });
        }
        let client_count = rng.gen_range(2..=5);
        let clients = (0..client_count)
            .map(|id| {
                let target = rng.gen_range(1..=size);
                Client::new(id, target, &mut rng)
            })
            .collect();
        PaxosSim {
            rng,
            trace: std::env::var_os("QUORUMLOCK_WSIM_TRACE").is_some(),
            now,
            nodes,
            network: BTreeMap::new(),
            message_seq: 0,
            partition: None,
            faults,
            counts: FaultCounts::default(),
            clients,
            client_serial: vec![0; client_count],
            history: Vec::new(),
            checker: Checker::default(),
            clients_active: true,
            client_answers: vec![0; client_count],
        }
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
            self.restart(i);
        }
        self.converge("after every node restarted")?;
        self.checker.check_realtime_fencing();
        for node in &self.nodes {
            let state = node.state.read(LockState::clone);
            self.checker.check_durability(node.id, &state);
            if let Err(broken) = state.check_invariants() {
                self.checker
                    .violation(format!("state invariants: node {}: {broken}", node.id));
            }
        }
        self.check()?;
        let final_state = self.nodes[0].state.snapshot();
        Ok(RunSummary {
            steps: self.now_ms(),
            slots: self.history.len() as u64,
            acked_writes: self.checker.acked_writes() as u64,
            answers: self.client_answers.iter().sum(),
            crashes: self.counts.crashes,
            partitions: self.counts.partitions,
            clock_skews: self.counts.clock_skews,
            pauses: self.counts.pauses,
            stale_refusals: self.clients.iter().map(|client| client.stale_refusals).sum(),
            fingerprint: fingerprint(&final_state, self.now_ms(), self.history.len()),
        })
    }

    /// Steps until every node is up, idle and has applied the whole history
    /// under a leader whose keeper has taken over.
    fn converge(&mut self, when: &str) -> Result<(), Violation> {
        let deadline = self.now_ms() + CONVERGENCE_MS_MAX;
        while !self.converged() {
            if self.now_ms() >= deadline {
                let applied: Vec<Slot> = self.nodes.iter().map(|node| node.applied_slot).collect();
                return Err(format!(
                    "convergence {when}: replicas applied {applied:?} of {} slots within \
                     {CONVERGENCE_MS_MAX} ms (leaders: {:?}; waiting proposals: {:?})",
                    self.history.len(),
                    self.leaders(),
                    self.nodes
                        .iter()
                        .map(|node| node.waiting.len())
                        .collect::<Vec<_>>()
                ));
            }
            self.advance()?;
        }
        Ok(())
    }

    fn converged(&self) -> bool {
        let slots = self.history.len() as Slot;
        let keeper_ready = self.nodes.iter().any(|node| {
            node.replica.as_ref().is_some_and(|replica| {
                replica.is_leader()
                    && node.keeper.active.as_ref().map(|(term, _)| *term) == Some(replica.term())
            })
        });
        keeper_ready
            && self.clients.iter().all(|client| client.in_flight().is_none())
            && self.nodes.iter().all(|node| {
                node.replica.is_some() && !node.dirty && node.applied_slot == slots && node.waiting.is_empty()
            })
    }

    fn leaders(&self) -> Vec<NodeId> {
        self.nodes
            .iter()
            .filter(|node| node.replica.as_ref().is_some_and(Replica::is_leader))
            .map(|node| node.id)
            .collect()
    }

    fn heal(&mut self) {
        self.log(|| "heal".to_string());
        self.partition = None;
        self.faults = Faults {
            drop: 0.0,
            duplicate: 0.0,
            crash: 0.0,
            crash_after_persist: 0.0,
            partition: 0.0,
            clock_jump: 0.0,
            clock_rate: 0.0,
            client_pause: 0.0,
            ..self.faults
        };
        for i in 0..self.nodes.len() {
            self.nodes[i].clock.heal();
            if self.nodes[i].replica.is_none() {
                self.restart(i);
            }
        }
        let now = self.now_ms();
        for client in &mut self.clients {
            client.resume(now);
        }
    }

    /// One millisecond: deliver due messages, tick, run clients and lease
    /// keepers, execute effects, then check.
    fn advance(&mut self) -> Result<(), Violation> {
        let now = self.now_ms() + 1;
        self.now.store(now, Ordering::Relaxed);
        while let Some(entry) = self.network.first_entry() {
            if entry.key().0 > now {
                break;
            }
            let envelope = entry.remove();
            self.deliver(envelope);
        }
        for i in 0..self.nodes.len() {
            if (now + self.nodes[i].tick_phase) % STEPS_PER_TICK == 0 {
                if let Some(replica) = self.nodes[i].replica.as_mut() {
                    replica.tick();
                    self.nodes[i].dirty = true;
                    self.keeper_tick(i);
                }
            }
        }
        self.client_work();
        for i in 0..self.nodes.len() {
            if self.nodes[i].dirty && self.rng.gen_bool(self.faults.flush) {
                self.flush(i)?;
            }
            if self.nodes[i].replica.is_none() && now >= self.nodes[i].restart_at {
                self.restart(i);
            }
        }
        self.check()
    }

    fn partitioned(&self, from: NodeId, to: NodeId) -> bool {
        self.partition
            .as_ref()
            .is_some_and(|(sides, _)| sides[(from - 1) as usize] != sides[(to - 1) as usize])
    }

    fn deliver(&mut self, envelope: Envelope) {
        if self.partitioned(envelope.from, envelope.to) {
            return;
        }
        let to = (envelope.to - 1) as usize;
        let Some(replica) = self.nodes[to].replica.as_mut() else {
            return;
        };
        replica.step(envelope.from, envelope.message);
        self.nodes[to].dirty = true;
    }

    fn send(&mut self, envelope: Envelope) {
        if self.partitioned(envelope.from, envelope.to) || self.rng.gen_bool(self.faults.drop) {
            return;
        }
        let copies = if self.rng.gen_bool(self.faults.duplicate) {
            2
        } else {
            1
        };
        for _ in 0..copies {
            let delay = self.rng.gen_range(1..=self.faults.delay_ms_max);
            self.message_seq += 1;
            self.network
                .insert((self.now_ms() + delay, self.message_seq), envelope.clone());
        }
    }

    /// Executes one `Ready` in the driver's order: persist, send, apply,
    /// then reads and refusals.
    fn flush(&mut self, i: usize) -> Result<(), Violation> {
        let Some(replica) = self.nodes[i].replica.as_mut() else {
            return Ok(());
        };
        let ready: Ready = replica.take_ready();
        self.nodes[i].dirty = false;
        for persist in ready.persist {
            let disk = &mut self.nodes[i].disk;
            match persist {
                Persist::Promise(ballot) => disk.promised = ballot,
                Persist::Accept { slot, accepted } => {
                    disk.accepted.insert(slot, accepted);
                }
            }
        }
        if self.rng.gen_bool(self.faults.crash_after_persist) {
            // Durable, but never sent.
            let downtime = self.rng.gen_range(1..=600);
            self.crash(i, downtime);
            return Ok(());
        }
        for envelope in ready.messages {
            self.send(envelope);
        }
        for apply in ready.apply {
            match apply {
                Apply::Chosen(chosen) => self.apply_chosen(i, chosen.slot, chosen.value)?,
                Apply::Snapshot { slot, data } => self.install_snapshot(i, slot, &data)?,
            }
        }
        for read in ready.reads_ready {
            self.barrier_passed(i, read);
        }
        for read in ready.reads_failed {
            if self.nodes[i].keeper.barrier.is_some_and(|(id, _)| id == read) {
                self.nodes[i].keeper.barrier = None;
            }
        }
        for (proposal, refusal) in ready.refused {
            let leader = match refusal {
                Refusal::NotLeader { leader } => leader,
                Refusal::Overloaded => None,
            };
            match self.nodes[i].waiting.remove(&proposal) {
                Some(Waiter::Client { client, serial }) if self.client_serial[client] == serial => {
                    let now = self.now_ms();
                    self.clients[client].refused(now, leader, &mut self.rng);
                }
                Some(Waiter::Expire(session)) => self.retry_expiry(i, session),
                _ => {}
            }
        }
        for proposal in ready.abandoned {
            match self.nodes[i].waiting.remove(&proposal) {
                Some(Waiter::Client { client, serial }) => self.client_unknown(client, serial),
                Some(Waiter::Expire(session)) => self.retry_expiry(i, session),
                _ => {}
            }
        }
        Ok(())
    }

    fn apply_chosen(&mut self, i: usize, slot: Slot, value: Value) -> Result<(), Violation> {
        let id = self.nodes[i].id;
        if slot != self.nodes[i].applied_slot + 1 {
            return Err(format!(
                "apply order: node {id} applied slot {slot} after slot {}",
                self.nodes[i].applied_slot
            ));
        }
        match self.history.get(slot as usize - 1) {
            Some(known) if *known != value => {
                return Err(format!(
                    "agreement: node {id} applied {value:?} at slot {slot}, but {known:?} before"
                ))
            }
            Some(_) => {}
            None => self.history.push(value.clone()),
        }
        let boot = self.nodes[i].disk.boot;
        for proposal in value.proposals() {
            let result = self.nodes[i].state.apply(&proposal.command);
            self.observe_apply(i, &proposal.command, &result);
            if proposal.id.node == id && proposal.id.boot == boot {
                if let Some(waiter) = self.nodes[i].waiting.remove(&proposal.id) {
                    self.answer(i, waiter, &proposal.command, &result);
                }
            }
        }
        self.nodes[i].applied_slot = slot;
        let bytes = self.nodes[i].state.snapshot();
        self.checker.applied_state(id, slot, bytes);
        Ok(())
    }

    /// Feeds the checker what applying one command did on node `i`.
    fn observe_apply(&mut self, i: usize, command: &Command, result: &CommandResult) {
        let id = self.nodes[i].id;
        while let Ok(notice) = self.nodes[i].notices.try_recv() {
            if let StateNotice::Event(Event::Granted(grant)) = notice {
                self.checker.granted(id, &grant);
            }
        }
        if let (Command::Put { fence, .. }, Ok(Outcome::Written { .. })) = (command, result) {
            self.checker.put_accepted(id, fence);
        }
    }

    fn answer(&mut self, i: usize, waiter: Waiter, command: &Command, result: &CommandResult) {
        match waiter {
            Waiter::Client { client, serial } if self.client_serial[client] == serial => {
                let now = self.now_ms();
                self.client_answers[client] += 1;
                if let Some(write) = self.clients[client].answered(now, result, &mut self.rng) {
                    self.checker.put_acked(write);
                }
                // The RPC layer tells the keeper about sessions opened here.
                if let (Command::OpenSession { .. }, Ok(Outcome::SessionOpened { session, ttl_ms })) =
                    (command, result)
                {
                    let now = self.nodes[i].clock.now();
                    if let Some((_, tracker)) = self.nodes[i].keeper.active.as_mut() {
                        tracker.track(*session, Duration::from_millis(*ttl_ms), now);
                    }
                }
            }
            Waiter::Client { .. } | Waiter::Checkpoint => {}
            Waiter::Expire(session) => {
                // Expired, already gone, or refused: stop tracking either way.
                if !matches!(result, Ok(_) | Err(LockError::SessionNotFound { .. })) {
                    self.log(|| format!("expiry of session {session} refused: {result:?}"));
                }
                if let Some((_, tracker)) = self.nodes[i].keeper.active.as_mut() {
                    tracker.forget(session);
                }
            }
        }
    }

    fn install_snapshot(&mut self, i: usize, slot: Slot, data: &Arc<Vec<u8>>) -> Result<(), Violation> {
        let id = self.nodes[i].id;
        if slot <= self.nodes[i].applied_slot {
            return Err(format!(
                "snapshot: node {id} installed slot {slot} over applied slot {}",
                self.nodes[i].applied_slot
            ));
        }
        let state = LockState::restore(data).map_err(|error| format!("snapshot of slot {slot}: {error}"))?;
        self.checker.restored(id, &state);
        self.nodes[i].state.restore(state);
        // The restore notice replaces what was observed; nothing to check.
        while self.nodes[i].notices.try_recv().is_ok() {}
        self.nodes[i].applied_slot = slot;
        let disk = &mut self.nodes[i].disk;
        disk.accepted = disk.accepted.split_off(&(slot + 1));
        disk.snapshot = Some((slot, data.clone()));
        self.checker.applied_state(id, slot, data.to_vec());
        Ok(())
    }

    fn crash(&mut self, i: usize, downtime_ms: u64) {
        self.counts.crashes += 1;
        self.log(|| format!("crash node {} for {downtime_ms} ms", i + 1));
        let now = self.now_ms();
        let node = &mut self.nodes[i];
        node.replica = None;
        node.dirty = false;
        node.keeper = Keeper::default();
        node.restart_at = now + downtime_ms;
        for (_, waiter) in std::mem::take(&mut node.waiting) {
            if let Waiter::Client { client, serial } = waiter {
                self.client_unknown(client, serial);
            }
        }
    }

    fn restart(&mut self, i: usize) {
        self.log(|| format!("restart node {}", i + 1));
        let members: BTreeSet<NodeId> = (1..=self.nodes.len() as NodeId).collect();
        let mut config = ReplicaConfig::new(self.nodes[i].id, members, HEARTBEAT_TICKS, ELECTION_TICKS);
        config.seed = self.rng.gen();
        let node = &mut self.nodes[i];
        node.disk.boot += 1;
        let (slot, state) = match &node.disk.snapshot {
            Some((slot, data)) => (
                *slot,
                LockState::restore(data).expect("the disk keeps snapshots whole"),
            ),
            None => (0, LockState::default()),
        };
        self.checker.restored(node.id, &state);
        node.reset_state(state);
        node.applied_slot = slot;
        node.next_seq = 0;
        let durable = DurableState {
            promised: node.disk.promised,
            accepted: node.disk.accepted.clone(),
            snapshot: node.disk.snapshot.clone(),
        };
        node.replica = Some(Replica::new(config, durable));
        node.dirty = true;
    }

    fn compact(&mut self, i: usize) {
        let node = &mut self.nodes[i];
        let slot = node.applied_slot;
        let data = Arc::new(node.state.snapshot());
        node.disk.accepted = node.disk.accepted.split_off(&(slot + 1));
        node.disk.snapshot = Some((slot, data.clone()));
        node.replica
            .as_mut()
            .expect("only live nodes compact")
            .compact(slot, data);
    }

    fn inject_faults(&mut self) {
        let size = self.nodes.len();
        let now = self.now_ms();
        for i in 0..size {
            if self.nodes[i].replica.is_some() && self.rng.gen_bool(self.faults.crash) {
                let downtime = self.rng.gen_range(1..=600);
                self.crash(i, downtime);
            }
        }
        match &self.partition {
            Some((_, until)) if now >= *until => {
                self.log(|| "partition heals".to_string());
                self.partition = None;
            }
            Some(_) => {}
            None if self.rng.gen_bool(self.faults.partition) => {
                let until = now + self.rng.gen_range(50..=1_000);
                let leaders = self.leaders();
                let sides: Vec<u8> = if !leaders.is_empty() && self.rng.gen_bool(0.5) {
                    let leader = leaders[self.rng.gen_range(0..leaders.len())];
                    (1..=size as NodeId).map(|id| u8::from(id == leader)).collect()
                } else {
                    (0..size).map(|_| self.rng.gen_range(0..2)).collect()
                };
                self.log(|| format!("partition {sides:?} until {until} ms"));
                self.counts.partitions += 1;
                self.partition = Some((sides, until));
            }
            None => {}
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
            self.nodes[i].clock.set_rate(rate);
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
            let snapshot_slot = self.nodes[i].disk.snapshot.as_ref().map_or(0, |(slot, _)| *slot);
            if self.nodes[i].replica.is_some()
                && self.nodes[i].applied_slot > snapshot_slot
                && self.rng.gen_bool(self.faults.compact)
            {
                self.compact(i);
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
                let target = (self.clients[client].target - 1) as usize;
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
            let target = (self.clients[client].target - 1) as usize;
            let node = &mut self.nodes[target];
            let Some(replica) = node.replica.as_mut() else {
                let leader = self.leader_hint(target);
                self.clients[client].refused(now, leader, &mut self.rng);
                continue;
            };
            let id = ProposalId {
                node: node.id,
                boot: node.disk.boot,
                seq: node.next_seq,
            };
            node.next_seq += 1;
            node.waiting.insert(id, Waiter::Client { client, serial });
            replica.propose(Proposal { id, command });
            node.dirty = true;
        }
    }

    /// Where to send a client refused by node `i`: its leader if it knows
    /// one, else a node drawn at random.
    fn leader_hint(&mut self, i: usize) -> Option<NodeId> {
        let known = self.nodes[i].replica.as_ref().and_then(Replica::leader_id);
        Some(known.unwrap_or_else(|| self.rng.gen_range(1..=self.nodes.len() as NodeId)))
    }

    /// A keepalive, answered from the keeper's memory as
    /// `server::leases::Leases::renew` does.
    fn renew(&mut self, i: usize, session: SessionId) -> Result<(), RenewError> {
        let node = &mut self.nodes[i];
        if node.replica.is_none() {
            return Err(RenewError::NotLeader);
        }
        let now = node.clock.now();
        let (_, tracker) = node.keeper.active.as_mut().ok_or(RenewError::NotLeader)?;
        match tracker.renew(session, now) {
            Ok(_) => Ok(()),
            Err(RenewRefused::Expired) => Err(RenewError::NotFound),
            Err(RenewRefused::Unknown) => {
                let ttl_ms = node
                    .state
                    .read(|state| state.session(session).map(|session| session.ttl_ms))
                    .ok_or(RenewError::NotFound)?;
                tracker.track(session, Duration::from_millis(ttl_ms), now);
                Ok(())
            }
        }
    }

    /// One tick of the lease keeper, as `Leases::run` does on each interval.
    fn keeper_tick(&mut self, i: usize) {
        let node = &mut self.nodes[i];
        let replica = node.replica.as_mut().expect("only live nodes tick");
        if !replica.is_leader() {
            node.keeper.active = None;
            node.keeper.barrier = None;
            return;
        }
        let term = replica.term();
        if node.keeper.active.as_ref().map(|(active, _)| *active) != Some(term) {
            // Take over only after a read barrier: leases are judged on a
            // state that includes everything committed before.
            if node.keeper.barrier.map(|(_, barrier)| barrier) != Some(term) {
                let read = node.next_read;
                node.next_read += 1;
                node.keeper.barrier = Some((read, term));
                replica.read(read);
            }
            return;
        }
        let now = node.clock.now();
        let (_, tracker) = node.keeper.active.as_mut().expect("checked above");
        let due = tracker.take_expired(now, EXPIRIES_PER_TICK_MAX);
        let checkpoint_due = node.keeper.last_checkpoint.map_or(true, |last| {
            now.duration_since(last) >= Duration::from_millis(CHECKPOINT_INTERVAL_MS)
        });
        let mut commands: Vec<(Command, Waiter)> = due
            .into_iter()
            .map(|session| (Command::ExpireSession { session }, Waiter::Expire(session)))
            .collect();
        if checkpoint_due {
            node.keeper.last_checkpoint = Some(now);
            let (_, tracker) = node.keeper.active.as_mut().expect("checked above");
            let entries = tracker.take_checkpoints(now, CHECKPOINT_ENTRIES_MAX);
            if !entries.is_empty() {
                commands.push((
                    Command::CheckpointSessions { remaining: entries },
                    Waiter::Checkpoint,
                ));
            }
        }
        for (command, waiter) in commands {
            self.keeper_propose(i, command, waiter);
        }
    }

    fn barrier_passed(&mut self, i: usize, read: ReadId) {
        let node = &mut self.nodes[i];
        let Some((barrier, term)) = node.keeper.barrier else {
            return;
        };
        if barrier != read {
            return;
        }
        node.keeper.barrier = None;
        let replica = node.replica.as_ref().expect("only live nodes answer reads");
        if !replica.is_leader() || replica.term() != term {
            return;
        }
        let now = node.clock.now();
        let grace = Duration::from_millis(TAKEOVER_GRACE_MS);
        let (tracker, charges) = node
            .state
            .read(|state| LeaseTracker::take_over(now, grace, state.sessions()));
        node.keeper.active = Some((term, tracker));
        node.keeper.last_checkpoint = Some(now);
        self.log(|| format!("node {} takes over leases in term {term}", i + 1));
        for chunk in charges.chunks(CHECKPOINT_ENTRIES_MAX) {
            let command = Command::CheckpointSessions {
                remaining: chunk.to_vec(),
            };
            self.keeper_propose(i, command, Waiter::Checkpoint);
        }
    }

    fn keeper_propose(&mut self, i: usize, command: Command, waiter: Waiter) {
        let node = &mut self.nodes[i];
        let replica = node.replica.as_mut().expect("only live nodes propose");
        let id = ProposalId {
            node: node.id,
            boot: node.disk.boot,
            seq: node.next_seq,
        };
        node.next_seq += 1;
        node.waiting.insert(id, waiter);
        replica.propose(Proposal { id, command });
        node.dirty = true;
    }

    fn retry_expiry(&mut self, i: usize, session: SessionId) {
        if let Some((_, tracker)) = self.nodes[i].keeper.active.as_mut() {
            tracker.retry_expiry(session);
        }
    }
}
