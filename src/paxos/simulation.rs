//! A deterministic simulation of 3 and 5 replicas under a hostile network.
//!
//! One seed drives everything: the network (delays, drops, duplicates,
//! reordering, partitions that split the cluster or isolate the leader),
//! crashes that keep only what the simulated disk holds, the driver's
//! snapshots, and many clients proposing at random nodes. Invariants are
//! checked after every step, so a violation is reported at the step that
//! caused it, and a failing seed replays exactly: nothing here reads a clock,
//! iterates a hash map or depends on thread timing.
//!
//! - `QUORUMLOCK_SIM_SEEDS=N` runs N seeds of 3 replicas and N/2 of 5
//!   (default [`SEEDS_3_DEFAULT`] and [`SEEDS_5_DEFAULT`]).
//! - `QUORUMLOCK_SIM_SEED=S` replays seed S only.
//! - `QUORUMLOCK_SIM_TRACE=1` prints every event of the run to stderr.

use std::cell::Cell;
use std::collections::{BTreeMap, BTreeSet};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Arc, Once};
use std::time::Instant;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::{
    Accepted, Apply, Ballot, DurableState, Envelope, Persist, Proposal, ProposalId, Ready, Refusal, Replica,
    ReplicaConfig, Slot, Value,
};
use crate::consensus::NodeId;
use crate::lock::Command;

/// Seeds of 3 replicas a plain `cargo test` runs.
const SEEDS_3_DEFAULT: u64 = 2_000;
/// Seeds of 5 replicas a plain `cargo test` runs.
const SEEDS_5_DEFAULT: u64 = 1_000;

/// Simulation steps per replica tick: messages arrive between ticks.
const STEPS_PER_TICK: u64 = 10;
/// The replicas' heartbeat interval.
const HEARTBEAT_TICKS: u64 = 2;
/// The replicas' minimum election timeout.
const ELECTION_TICKS: u64 = 10;
/// Length of the faulty phase of a run.
const FAULT_TICKS: u64 = 300;
/// After healing, a leader must have had a new proposal chosen within this
/// plus the time to drain what the leader had queued (see
/// [`Sim::round_trip_ticks`]). Generous because a node may be backing off
/// after up to three lost elections (8 × 2 × [`ELECTION_TICKS`]) when the
/// faults end.
const LIVENESS_TICKS_BASE: u64 = 250;
/// After the liveness proposal, every replica must have applied the same
/// sequence and every client must have its answer within this plus the time
/// to get the open commands through the pipeline.
const CONVERGENCE_TICKS_BASE: u64 = 200;
/// Most client commands one run submits.
const CLIENT_OPS_MAX: u64 = 300;
/// Longest delay of a message, in steps, when the run draws long delays.
const DELAY_STEPS_MAX: u64 = 80;

/// What one simulated node keeps across crashes.
#[derive(Debug, Clone, Default)]
struct Disk {
    promised: Ballot,
    accepted: BTreeMap<Slot, Accepted>,
    snapshot: Option<(Slot, Arc<Vec<u8>>)>,
    boot: u64,
}

impl Disk {
    /// Saves a snapshot and drops the acceptor records it covers, as the
    /// driver contract for `Apply::Snapshot` and `Replica::compact` says.
    fn save_snapshot(&mut self, slot: Slot, data: Arc<Vec<u8>>) {
        self.accepted = self.accepted.split_off(&(slot + 1));
        self.snapshot = Some((slot, data));
    }
}

/// One simulated node: the replica (absent while crashed), its disk, and the
/// driver's state machine, which is the applied sequence of client ops.
struct Node {
    id: NodeId,
    replica: Option<Replica>,
    disk: Disk,
    /// Effects were produced that the driver has not executed yet.
    dirty: bool,
    /// The state machine: client ops in apply order, up to `applied_slot`.
    applied_ops: Vec<u64>,
    applied_slot: Slot,
    next_seq: u64,
    /// Proposals this boot submitted and whose clients wait for the answer.
    waiting: BTreeMap<ProposalId, u64>,
    /// Step at which a crashed node restarts.
    restart_at: u64,
    /// This node ticks when `(step + tick_phase) % STEPS_PER_TICK == 0`.
    tick_phase: u64,
}

/// Where a client's command is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum OpState {
    /// Submitted to a node that has not answered.
    Waiting,
    /// Refused; resubmit (to `node` if given) at `at`.
    Retry { at: u64, node: Option<NodeId> },
    /// Applied on the node that proposed it: the client saw success.
    Acked,
    /// The node crashed or abandoned it: it may or may not be chosen.
    Unknown,
}

/// The one sequence every replica's applied sequence must be a prefix of.
#[derive(Default)]
struct History {
    /// The value applied for each slot (index `slot - 1`).
    values: Vec<Value>,
    /// `ends[s]`: length of the op sequence once slots up to `s` are applied.
    ends: Vec<usize>,
    ops: Vec<u64>,
    seen_ops: BTreeSet<u64>,
    seen_proposals: BTreeSet<ProposalId>,
}

/// Fault settings of one run, drawn from its seed.
#[derive(Debug, Clone, Copy)]
struct Faults {
    drop: f64,
    duplicate: f64,
    delay_steps_max: u64,
    crash: f64,
    crash_after_persist: f64,
    crash_before_persist: f64,
    partition: f64,
    flush: f64,
    propose: f64,
    read: f64,
    compact: f64,
}

/// The part of a run, which decides what the clients do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Faults are injected and clients submit new commands.
    Faults,
    /// Healed: only this one command is (re)submitted, to measure liveness.
    Liveness(u64),
    /// Every refused command is resubmitted until all are answered.
    Convergence,
}

/// A broken invariant, described by the property and the values that broke it.
type Violation = String;

struct Sim {
    rng: StdRng,
    trace: bool,
    step: u64,
    nodes: Vec<Node>,
    network: BTreeMap<(u64, u64), Envelope>,
    message_seq: u64,
    /// Side of each node while partitioned; messages between sides are lost.
    partition: Option<(Vec<u8>, u64)>,
    faults: Faults,
    /// Batching and pipelining limits of the run, for the liveness bounds.
    batch_proposals_max: usize,
    inflight_slots_max: usize,
    queued_proposals_max: usize,
    learn_batch_max: usize,
    history: History,
    ops: Vec<OpState>,
    /// Pending reads: node, boot, and how many ops were acknowledged before
    /// the read began (the read must see at least that many).
    reads: BTreeMap<u64, (NodeId, u64, usize)>,
    next_read: u64,
    /// Length of the history prefix that covers every acknowledged op.
    acked_len: usize,
}

impl Sim {
    fn new(seed: u64, size: u64) -> Sim {
        let mut rng = StdRng::seed_from_u64(seed ^ (size << 56));
        let calm = rng.gen_bool(0.2);
        let faults = Faults {
            drop: if calm { 0.0 } else { rng.gen_range(0.0..0.2) },
            duplicate: if calm { 0.0 } else { rng.gen_range(0.0..0.1) },
            delay_steps_max: *[3, 15, DELAY_STEPS_MAX]
                .get(rng.gen_range(0..3))
                .expect("in range"),
            crash: if calm { 0.0 } else { rng.gen_range(0.0..0.002) },
            crash_after_persist: if calm { 0.0 } else { rng.gen_range(0.0..0.01) },
            crash_before_persist: if calm { 0.0 } else { rng.gen_range(0.0..0.01) },
            partition: if calm { 0.0 } else { rng.gen_range(0.0..0.002) },
            flush: rng.gen_range(0.3..1.0),
            propose: rng.gen_range(0.02..0.3),
            read: rng.gen_range(0.0..0.05),
            compact: rng.gen_range(0.0..0.02),
        };
        let members: BTreeSet<NodeId> = (1..=size).collect();
        let batch_proposals_max = rng.gen_range(1..=4);
        let inflight_slots_max = rng.gen_range(1..=6);
        let queued_proposals_max = rng.gen_range(2..=32);
        let learn_batch_max = rng.gen_range(1..=6);
        let nodes = members
            .iter()
            .map(|id| {
                let mut node = Node {
                    id: *id,
                    replica: None,
                    disk: Disk::default(),
                    dirty: false,
                    applied_ops: Vec::new(),
                    applied_slot: 0,
                    next_seq: 0,
                    waiting: BTreeMap::new(),
                    restart_at: 0,
                    tick_phase: rng.gen_range(0..STEPS_PER_TICK),
                };
                let mut config = ReplicaConfig::new(*id, members.clone(), HEARTBEAT_TICKS, ELECTION_TICKS);
                config.batch_proposals_max = batch_proposals_max;
                config.inflight_slots_max = inflight_slots_max;
                config.queued_proposals_max = queued_proposals_max;
                config.learn_batch_max = learn_batch_max;
                config.seed = rng.gen();
                node.replica = Some(Replica::new(config, DurableState::default()));
                node
            })
            .collect();
        let mut history = History::default();
        history.ends.push(0);
        Sim {
            rng,
            trace: std::env::var_os("QUORUMLOCK_SIM_TRACE").is_some(),
            step: 0,
            nodes,
            network: BTreeMap::new(),
            message_seq: 0,
            partition: None,
            faults,
            batch_proposals_max,
            inflight_slots_max,
            queued_proposals_max,
            learn_batch_max,
            history,
            ops: Vec::new(),
            reads: BTreeMap::new(),
            next_read: 0,
            acked_len: 0,
        }
    }

    fn log(&self, event: impl FnOnce() -> String) {
        if self.trace {
            eprintln!("[step {}] {}", self.step, event());
        }
    }

    fn index(&self, id: NodeId) -> usize {
        usize::try_from(id - 1).expect("node ids are small")
    }

    fn config_of(&self, i: usize) -> ReplicaConfig {
        let members: BTreeSet<NodeId> = (1..=self.nodes.len() as u64).collect();
        ReplicaConfig::new(self.nodes[i].id, members, HEARTBEAT_TICKS, ELECTION_TICKS)
    }

    /// Runs the faulty phase, heals, and checks liveness and convergence.
    fn run(&mut self) -> Result<(), Violation> {
        let fault_steps = FAULT_TICKS * STEPS_PER_TICK;
        while self.step < fault_steps {
            self.inject_faults();
            self.client_work(Phase::Faults);
            self.advance_step()?;
        }
        self.heal();
        let healed_at = self.step;

        // Liveness: a leader emerges and a new proposal is chosen.
        let mut liveness_op = self.new_op();
        self.ops[liveness_op as usize] = OpState::Retry {
            at: self.step,
            node: None,
        };
        // What a leader had queued goes first; the other clients wait.
        let backlog_slots = self.queued_proposals_max.div_ceil(self.batch_proposals_max);
        let backlog_rounds = backlog_slots.div_ceil(self.inflight_slots_max) as u64 + 1;
        let liveness_ticks_max = LIVENESS_TICKS_BASE + backlog_rounds * self.round_trip_ticks();
        let liveness_deadline = healed_at + liveness_ticks_max * STEPS_PER_TICK;
        while self.ops[liveness_op as usize] != OpState::Acked {
            if self.step >= liveness_deadline {
                return Err(format!(
                    "liveness: no proposal was chosen within {liveness_ticks_max} ticks after healing \
                     (leaders: {:?})",
                    self.leaders()
                ));
            }
            if self.ops[liveness_op as usize] == OpState::Unknown {
                // Abandoned by a leader that stepped down, so it may still be
                // chosen: the client asks again with a new command.
                liveness_op = self.new_op();
                self.ops[liveness_op as usize] = OpState::Retry {
                    at: self.step,
                    node: None,
                };
            }
            self.client_work(Phase::Liveness(liveness_op));
            self.advance_step()?;
        }

        // Convergence: every replica applies the same sequence, and every
        // client gets its answer.
        let open_ops = self
            .ops
            .iter()
            .filter(|state| matches!(state, OpState::Waiting | OpState::Retry { .. }))
            .count();
        let open_rounds = open_ops.div_ceil(self.batch_proposals_max * self.inflight_slots_max) as u64 + 1;
        // A replica that lagged catches up one `Chosen` message per round
        // trip (unless a snapshot covers the gap).
        let catch_up_rounds = (self.history.values.len() / self.learn_batch_max) as u64 + 1;
        // Twice the pipeline's pace: a retry may first meet a full queue.
        let convergence_ticks_max =
            CONVERGENCE_TICKS_BASE + (2 * open_rounds + catch_up_rounds) * self.round_trip_ticks();
        let converge_deadline = self.step + convergence_ticks_max * STEPS_PER_TICK;
        while !self.converged() {
            if self.step >= converge_deadline {
                let applied: Vec<Slot> = self.nodes.iter().map(|node| node.applied_slot).collect();
                return Err(format!(
                    "convergence: replicas did not all apply the history of {} slots within \
                     {convergence_ticks_max} ticks (applied: {applied:?}; leaders: {:?}; waiting \
                     clients per node: {:?}; clients to retry: {})",
                    self.history.values.len(),
                    self.leaders(),
                    self.nodes
                        .iter()
                        .map(|node| node.waiting.len())
                        .collect::<Vec<_>>(),
                    self.ops
                        .iter()
                        .filter(|state| matches!(state, OpState::Retry { .. }))
                        .count()
                ));
            }
            self.client_work(Phase::Convergence);
            self.advance_step()?;
        }
        for (op, state) in self.ops.iter().enumerate() {
            if *state == OpState::Acked && !self.history.seen_ops.contains(&(op as u64)) {
                return Err(format!(
                    "durability: acknowledged op {op} is not in the final sequence"
                ));
            }
        }
        Ok(())
    }

    /// Ticks from a leader's accept to its learning the slot chosen, on the
    /// healed network: two message delays, a retransmission interval, and
    /// slack for drivers that execute their effects late.
    fn round_trip_ticks(&self) -> u64 {
        2 * self.faults.delay_steps_max.div_ceil(STEPS_PER_TICK) + HEARTBEAT_TICKS + 2
    }

    fn converged(&self) -> bool {
        let slots = self.history.values.len() as Slot;
        self.nodes.iter().all(|node| {
            node.replica.is_some() && !node.dirty && node.applied_slot == slots && node.waiting.is_empty()
        }) && self
            .ops
            .iter()
            .all(|state| matches!(state, OpState::Acked | OpState::Unknown))
    }

    fn leaders(&self) -> Vec<NodeId> {
        self.nodes
            .iter()
            .filter(|node| node.replica.as_ref().is_some_and(Replica::is_leader))
            .map(|node| node.id)
            .collect()
    }

    /// Ends every fault: the partition heals, crashed nodes restart, and
    /// the network stops losing and duplicating messages.
    fn heal(&mut self) {
        self.log(|| "heal".to_string());
        self.partition = None;
        self.faults.drop = 0.0;
        self.faults.duplicate = 0.0;
        self.faults.crash = 0.0;
        self.faults.crash_after_persist = 0.0;
        self.faults.crash_before_persist = 0.0;
        self.faults.partition = 0.0;
        for i in 0..self.nodes.len() {
            if self.nodes[i].replica.is_none() {
                self.restart(i);
            }
        }
    }

    /// One step: deliver due messages, tick the nodes whose tick is due,
    /// let the drivers execute their effects, then check the invariants.
    fn advance_step(&mut self) -> Result<(), Violation> {
        self.step += 1;
        while let Some(entry) = self.network.first_entry() {
            if entry.key().0 > self.step {
                break;
            }
            let envelope = entry.remove();
            self.deliver(envelope);
        }
        for i in 0..self.nodes.len() {
            if (self.step + self.nodes[i].tick_phase) % STEPS_PER_TICK == 0 {
                if let Some(replica) = self.nodes[i].replica.as_mut() {
                    replica.tick();
                    self.nodes[i].dirty = true;
                }
            }
        }
        for i in 0..self.nodes.len() {
            if self.nodes[i].dirty && self.rng.gen_bool(self.faults.flush) {
                self.flush(i)?;
            }
            if self.nodes[i].replica.is_none() && self.step >= self.nodes[i].restart_at {
                self.restart(i);
            }
        }
        self.check_step()
    }

    fn partitioned(&self, from: NodeId, to: NodeId) -> bool {
        self.partition
            .as_ref()
            .is_some_and(|(sides, _)| sides[self.index(from)] != sides[self.index(to)])
    }

    fn deliver(&mut self, envelope: Envelope) {
        let to = self.index(envelope.to);
        if self.partitioned(envelope.from, envelope.to) {
            return;
        }
        let Some(replica) = self.nodes[to].replica.as_mut() else {
            return;
        };
        if self.trace {
            eprintln!(
                "[step {}] {} -> {}: {:?}",
                self.step, envelope.from, envelope.to, envelope.message
            );
        }
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
            let delay = self.rng.gen_range(1..=self.faults.delay_steps_max);
            self.message_seq += 1;
            self.network
                .insert((self.step + delay, self.message_seq), envelope.clone());
        }
    }

    /// The driver executes one `Ready` in contract order: persist, then
    /// send, then apply, then answer reads and clients.
    fn flush(&mut self, i: usize) -> Result<(), Violation> {
        let Some(replica) = self.nodes[i].replica.as_mut() else {
            return Ok(());
        };
        let ready: Ready = replica.take_ready();
        self.nodes[i].dirty = false;
        let id = self.nodes[i].id;
        self.log(|| {
            format!(
                "node {id} ready: persist {:?}, apply {:?}, refused {:?}, abandoned {:?}",
                ready.persist, ready.apply, ready.refused, ready.abandoned
            )
        });
        // Accepts may leave before the records are durable, as the driver
        // sends them; a crash here loses the records but not the messages.
        let (early, after_persist): (Vec<_>, Vec<_>) = ready
            .messages
            .into_iter()
            .partition(|envelope| envelope.message.may_precede_persist());
        for envelope in early {
            self.send(envelope);
        }
        if self.rng.gen_bool(self.faults.crash_before_persist) {
            self.crash(i);
            return Ok(());
        }
        for persist in ready.persist {
            let disk = &mut self.nodes[i].disk;
            match persist {
                Persist::Promise(ballot) => {
                    if ballot <= disk.promised {
                        return Err(format!(
                            "durable promise: node {id} persisted promise {ballot} not above {}",
                            disk.promised
                        ));
                    }
                    disk.promised = ballot;
                }
                Persist::Accept { slot, accepted } => {
                    if accepted.ballot < disk.promised {
                        return Err(format!(
                            "acceptor: node {id} accepted slot {slot} at {} below its promise {}",
                            accepted.ballot, disk.promised
                        ));
                    }
                    disk.accepted.insert(slot, accepted);
                }
            }
        }
        if self.rng.gen_bool(self.faults.crash_after_persist) {
            // The records are durable; the messages were never sent.
            self.crash(i);
            return Ok(());
        }
        for envelope in after_persist {
            self.send(envelope);
        }
        for apply in ready.apply {
            match apply {
                Apply::Chosen(chosen) => self.apply_chosen(i, chosen.slot, chosen.value)?,
                Apply::Snapshot { slot, data } => self.apply_snapshot(i, slot, data)?,
            }
        }
        for read in ready.reads_ready {
            let (node, boot, needed) = self.reads.remove(&read).expect("reads are answered once");
            if node != id || boot != self.nodes[i].disk.boot {
                return Err(format!("read {read} was answered by node {id}, not by {node}"));
            }
            if self.nodes[i].applied_ops.len() < needed {
                return Err(format!(
                    "linearizable read: read {read} on node {id} sees {} ops, but {needed} were \
                     acknowledged before it began",
                    self.nodes[i].applied_ops.len()
                ));
            }
        }
        for read in ready.reads_failed {
            self.reads.remove(&read);
        }
        for (proposal, refusal) in ready.refused {
            let op = self.nodes[i]
                .waiting
                .remove(&proposal)
                .ok_or_else(|| format!("node {id} refused {proposal:?}, which no client is waiting on"))?;
            let node = match refusal {
                Refusal::NotLeader { leader } => leader.filter(|_| self.rng.gen_bool(0.7)),
                Refusal::Overloaded => None,
            };
            let at = self.step + self.rng.gen_range(1..=3 * STEPS_PER_TICK);
            self.ops[op as usize] = OpState::Retry { at, node };
        }
        for proposal in ready.abandoned {
            // A chosen proposal may be reported abandoned when the leader
            // learned its slot from elsewhere; the client then never knew.
            if let Some(op) = self.nodes[i].waiting.remove(&proposal) {
                self.ops[op as usize] = OpState::Unknown;
            }
        }
        Ok(())
    }

    fn apply_chosen(&mut self, i: usize, slot: Slot, value: Value) -> Result<(), Violation> {
        let node = &mut self.nodes[i];
        let id = node.id;
        if slot != node.applied_slot + 1 {
            return Err(format!(
                "apply order: node {id} applied slot {slot} after slot {}",
                node.applied_slot
            ));
        }
        let history = &mut self.history;
        if let Some(known) = history.values.get(slot as usize - 1) {
            if *known != value {
                return Err(format!(
                    "agreement: node {id} applied {value:?} at slot {slot}, but {known:?} was applied \
                     there before"
                ));
            }
        } else {
            // The first replica to apply this slot extends the history (the
            // history has no gaps: that replica applied every earlier slot).
            assert_eq!(history.values.len() as Slot, slot - 1, "the history has no gaps");
            for proposal in value.proposals() {
                let op = op_of(&proposal.command);
                if !history.seen_proposals.insert(proposal.id) {
                    return Err(format!(
                        "at most once: proposal {:?} is chosen a second time, at slot {slot}",
                        proposal.id
                    ));
                }
                if !history.seen_ops.insert(op) {
                    return Err(format!(
                        "at most once: client op {op} (refused elsewhere, then retried) is chosen a \
                         second time, at slot {slot}"
                    ));
                }
                history.ops.push(op);
            }
            history.values.push(value.clone());
            history.ends.push(history.ops.len());
        }
        node.applied_ops
            .extend(value.proposals().iter().map(|proposal| op_of(&proposal.command)));
        node.applied_slot = slot;
        let boot = node.disk.boot;
        for proposal in value.proposals() {
            if proposal.id.node == id && proposal.id.boot == boot {
                if let Some(op) = node.waiting.remove(&proposal.id) {
                    self.ops[op as usize] = OpState::Acked;
                    let end = self.history.ends[slot as usize];
                    self.acked_len = self.acked_len.max(end);
                }
            }
        }
        Ok(())
    }

    fn apply_snapshot(&mut self, i: usize, slot: Slot, data: Arc<Vec<u8>>) -> Result<(), Violation> {
        let id = self.nodes[i].id;
        let (snapshot_slot, ops) = decode_snapshot(&data);
        if snapshot_slot != slot {
            return Err(format!(
                "snapshot: node {id} got a snapshot of slot {snapshot_slot} labelled {slot}"
            ));
        }
        if slot <= self.nodes[i].applied_slot {
            return Err(format!(
                "snapshot: node {id} installed slot {slot} over its applied slot {}",
                self.nodes[i].applied_slot
            ));
        }
        let Some(end) = self.history.ends.get(slot as usize).copied() else {
            return Err(format!(
                "snapshot: slot {slot} is beyond the history of {} slots",
                self.history.values.len()
            ));
        };
        if ops[..] != self.history.ops[..end] {
            return Err(format!(
                "prefix: snapshot of slot {slot} installed on node {id} differs from the history"
            ));
        }
        let node = &mut self.nodes[i];
        node.applied_ops = ops;
        node.applied_slot = slot;
        node.disk.save_snapshot(slot, data);
        Ok(())
    }

    /// Invariants that must hold between any two steps.
    fn check_step(&self) -> Result<(), Violation> {
        for node in &self.nodes {
            let Some(replica) = &node.replica else {
                continue;
            };
            let end = self.history.ends[node.applied_slot as usize];
            if node.applied_ops.len() != end || node.applied_ops[..] != self.history.ops[..end] {
                return Err(format!(
                    "prefix: node {}'s applied sequence is not a prefix of the history",
                    node.id
                ));
            }
            if node.applied_slot > replica.applied() {
                return Err(format!(
                    "apply: node {} applied slot {} beyond the replica's {}",
                    node.id,
                    node.applied_slot,
                    replica.applied()
                ));
            }
            if !node.dirty {
                if node.applied_slot != replica.applied() {
                    return Err(format!(
                        "apply: node {} has nothing pending yet applied slot {} of {}",
                        node.id,
                        node.applied_slot,
                        replica.applied()
                    ));
                }
                if node.disk.promised != replica.promised() {
                    return Err(format!(
                        "durable promise: node {} promised {} in memory but {} on disk",
                        node.id,
                        replica.promised(),
                        node.disk.promised
                    ));
                }
            }
            if replica.chosen_upto() < replica.applied() || replica.compacted() > replica.applied() {
                return Err(format!(
                    "learner: node {} has compacted {} ≤ applied {} ≤ chosen {} broken",
                    node.id,
                    replica.compacted(),
                    replica.applied(),
                    replica.chosen_upto()
                ));
            }
        }
        Ok(())
    }

    fn crash(&mut self, i: usize) {
        let downtime = self.rng.gen_range(1..=60 * STEPS_PER_TICK);
        self.log(|| format!("crash node {} for {downtime} steps", i + 1));
        let node = &mut self.nodes[i];
        node.replica = None;
        node.dirty = false;
        node.restart_at = self.step + downtime;
        for (_, op) in std::mem::take(&mut node.waiting) {
            self.ops[op as usize] = OpState::Unknown;
        }
    }

    /// Restarts a node from its disk alone.
    fn restart(&mut self, i: usize) {
        self.log(|| format!("restart node {}", i + 1));
        let mut config = self.config_of(i);
        config.seed = self.rng.gen();
        let node = &mut self.nodes[i];
        node.disk.boot += 1;
        let (applied_slot, applied_ops) = match &node.disk.snapshot {
            Some((slot, data)) => {
                let (snapshot_slot, ops) = decode_snapshot(data);
                assert_eq!(snapshot_slot, *slot, "the disk keeps snapshots whole");
                (*slot, ops)
            }
            None => (0, Vec::new()),
        };
        node.applied_slot = applied_slot;
        node.applied_ops = applied_ops;
        node.next_seq = 0;
        let durable = DurableState {
            promised: node.disk.promised,
            accepted: node.disk.accepted.clone(),
            snapshot: node.disk.snapshot.clone(),
        };
        node.replica = Some(Replica::new(config, durable));
        node.dirty = true;
    }

    fn inject_faults(&mut self) {
        let size = self.nodes.len();
        for i in 0..size {
            if self.nodes[i].replica.is_some() && self.rng.gen_bool(self.faults.crash) {
                self.crash(i);
            }
        }
        match &self.partition {
            Some((_, until)) if self.step >= *until => {
                self.log(|| "partition heals".to_string());
                self.partition = None;
            }
            Some(_) => {}
            None if self.rng.gen_bool(self.faults.partition) => {
                let until = self.step + self.rng.gen_range(50..=1_000);
                let leaders = self.leaders();
                let sides: Vec<u8> = if !leaders.is_empty() && self.rng.gen_bool(0.5) {
                    // Isolate a leader.
                    let leader = leaders[self.rng.gen_range(0..leaders.len())];
                    (1..=size as NodeId).map(|id| u8::from(id == leader)).collect()
                } else {
                    (0..size).map(|_| self.rng.gen_range(0..2)).collect()
                };
                self.log(|| format!("partition {sides:?} until step {until}"));
                self.partition = Some((sides, until));
            }
            None => {}
        }
        for i in 0..size {
            if self.nodes[i].replica.is_some()
                && self.nodes[i].applied_slot > self.nodes[i].disk.snapshot.as_ref().map_or(0, |(s, _)| *s)
                && self.rng.gen_bool(self.faults.compact)
            {
                self.compact(i);
            }
        }
    }

    /// The driver snapshots its state machine and compacts the replica.
    fn compact(&mut self, i: usize) {
        let node = &mut self.nodes[i];
        let slot = node.applied_slot;
        let data = Arc::new(encode_snapshot(slot, &node.applied_ops));
        node.disk.save_snapshot(slot, data.clone());
        node.replica
            .as_mut()
            .expect("only live nodes compact")
            .compact(slot, data);
        self.log(|| format!("node {} compacts up to slot {slot}", i + 1));
    }

    fn new_op(&mut self) -> u64 {
        self.ops.push(OpState::Unknown);
        self.ops.len() as u64 - 1
    }

    /// Clients submit new commands (while faults last) and resubmit refused
    /// ones; reads begin at random nodes.
    fn client_work(&mut self, phase: Phase) {
        let size = self.nodes.len();
        let new = phase == Phase::Faults;
        if new && (self.ops.len() as u64) < CLIENT_OPS_MAX && self.rng.gen_bool(self.faults.propose) {
            let op = self.new_op();
            let node = self.rng.gen_range(0..size);
            self.submit(op, node);
        }
        for op in 0..self.ops.len() {
            if let OpState::Retry { at, node } = self.ops[op] {
                let paused = matches!(phase, Phase::Liveness(liveness) if liveness != op as u64);
                if at <= self.step && !paused {
                    let i = match node {
                        Some(id) => self.index(id),
                        None => self.rng.gen_range(0..size),
                    };
                    self.submit(op as u64, i);
                }
            }
        }
        if new && self.rng.gen_bool(self.faults.read) {
            let i = self.rng.gen_range(0..size);
            let boot = self.nodes[i].disk.boot;
            let id = self.nodes[i].id;
            if let Some(replica) = self.nodes[i].replica.as_mut() {
                let read = self.next_read;
                self.next_read += 1;
                self.reads.insert(read, (id, boot, self.acked_len));
                replica.read(read);
                self.nodes[i].dirty = true;
            }
        }
    }

    fn submit(&mut self, op: u64, i: usize) {
        let node = &mut self.nodes[i];
        let Some(replica) = node.replica.as_mut() else {
            let at = self.step + self.rng.gen_range(1..=3 * STEPS_PER_TICK);
            self.ops[op as usize] = OpState::Retry { at, node: None };
            return;
        };
        let id = ProposalId {
            node: node.id,
            boot: node.disk.boot,
            seq: node.next_seq,
        };
        node.next_seq += 1;
        node.waiting.insert(id, op);
        if self.trace {
            eprintln!(
                "[step {}] client op {op} submitted to node {} as {id:?}",
                self.step, id.node
            );
        }
        replica.propose(Proposal {
            id,
            command: Command::OpenSession { ttl_ms: op },
        });
        node.dirty = true;
        self.ops[op as usize] = OpState::Waiting;
    }
}

/// The client op a command stands for (its TTL field carries the number).
fn op_of(command: &Command) -> u64 {
    match command {
        Command::OpenSession { ttl_ms } => *ttl_ms,
        other => panic!("the simulation proposes only OpenSession, not {other:?}"),
    }
}

fn encode_snapshot(slot: Slot, ops: &[u64]) -> Vec<u8> {
    bincode::serialize(&(slot, ops)).expect("a vector of numbers serializes")
}

fn decode_snapshot(data: &[u8]) -> (Slot, Vec<u64>) {
    bincode::deserialize(data).expect("the simulation wrote this snapshot")
}

thread_local! {
    /// Set while a seed runs, so that the panic hook stays quiet about a
    /// panic that [`run_seed`] catches and reports with its seed.
    static IN_SEED: Cell<bool> = const { Cell::new(false) };
}

/// Installs (once) a panic hook that defers to the default one except
/// inside [`run_seed`].
fn quiet_panics_in_seeds() {
    static INSTALL: Once = Once::new();
    INSTALL.call_once(|| {
        let default_hook = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if !IN_SEED.with(Cell::get) {
                default_hook(info);
            }
        }));
    });
}

/// Runs one seed; a broken invariant or a panic inside the core becomes an
/// error naming the seed.
fn run_seed(seed: u64, size: u64) -> Result<(), String> {
    quiet_panics_in_seeds();
    IN_SEED.with(|flag| flag.set(true));
    let outcome = catch_unwind(AssertUnwindSafe(|| {
        let mut sim = Sim::new(seed, size);
        let result = sim.run();
        result.map_err(|violation| format!("at step {}: {violation}", sim.step))
    }));
    IN_SEED.with(|flag| flag.set(false));
    let replay = format!("replay: QUORUMLOCK_SIM_SEED={seed} cargo test --release --lib paxos::simulation");
    match outcome {
        Ok(Ok(())) => Ok(()),
        Ok(Err(violation)) => Err(format!("seed {seed}, {size} replicas, {violation} ({replay})")),
        Err(panic) => {
            let message = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            Err(format!(
                "seed {seed}, {size} replicas: the core panicked: {message} ({replay})"
            ))
        }
    }
}

fn env_u64(name: &str) -> Option<u64> {
    let value = std::env::var(name).ok()?;
    Some(
        value
            .parse()
            .unwrap_or_else(|_| panic!("{name} must be a number, not {value:?}")),
    )
}

/// Runs the configured seeds for clusters of `size`, failing on the first
/// broken invariant.
fn run_seeds(size: u64, default_seeds: u64) {
    let seeds: Vec<u64> = match (env_u64("QUORUMLOCK_SIM_SEED"), env_u64("QUORUMLOCK_SIM_SEEDS")) {
        (Some(seed), _) => vec![seed],
        (None, Some(count)) => (0..if size == 3 { count } else { count / 2 }).collect(),
        (None, None) => (0..default_seeds).collect(),
    };
    let started = Instant::now();
    let mut failures = Vec::new();
    for seed in &seeds {
        if let Err(failure) = run_seed(*seed, size) {
            eprintln!("{failure}");
            failures.push(failure);
            if failures.len() >= 10 {
                break;
            }
        }
    }
    eprintln!(
        "simulation: {} seeds of {size} replicas in {:.1?}",
        seeds.len(),
        started.elapsed()
    );
    assert!(
        failures.is_empty(),
        "{} seeds failed; first: {}",
        failures.len(),
        failures[0]
    );
}

/// Agreement, prefix, at-most-once, durability, read and liveness properties
/// hold for 3 replicas under every fault the simulation injects.
#[test]
fn three_replicas_keep_every_invariant_under_faults() {
    run_seeds(3, SEEDS_3_DEFAULT);
}

/// The same properties for 5 replicas, where a minority of two may fail.
#[test]
fn five_replicas_keep_every_invariant_under_faults() {
    run_seeds(5, SEEDS_5_DEFAULT);
}
