//! The sans-I/O Multi-Paxos replica: every node is acceptor, learner and
//! (when elected) proposer. It changes only memory; time arrives as
//! [`Replica::tick`], messages as [`Replica::step`], and the effects it wants
//! executed are drained with [`Replica::take_ready`] and confirmed durable
//! with [`Replica::on_persisted`] (the contract is in [`ready`]).
//!
//! The roles' handlers live in one file each: `acceptor.rs`, `proposer.rs`
//! (the leader), `learner.rs` and `election.rs`.

mod acceptor;
mod election;
mod learner;
pub mod message;
mod proposer;
pub mod ready;
pub mod types;

#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use self::message::{Envelope, Message};
use self::ready::{Ready, ReadyNumber, Refusal};
use self::types::{Accepted, Ballot, Command, Proposal, ReadId, Slot, Value};
use quorumlock_core::consensus::NodeId;

/// Settings of one replica. Times are in ticks of the driver's interval.
#[derive(Debug, Clone)]
pub struct ReplicaConfig {
    /// This node.
    pub id: NodeId,
    /// Every voting member, this node included.
    pub members: BTreeSet<NodeId>,
    /// A leader sends a heartbeat round (and retransmits unanswered
    /// accepts) this often.
    pub heartbeat_ticks: u64,
    /// Minimum election timeout; each wait is drawn from `[min, 2·min)`.
    pub election_ticks: u64,
    /// Most commands one slot carries.
    pub batch_proposals_max: usize,
    /// Most encoded bytes one slot carries (a single larger command still
    /// gets a slot of its own).
    pub slot_bytes_max: usize,
    /// Most encoded bytes of values one `Accept` or `Chosen` message carries
    /// (a single larger value still travels alone).
    pub message_bytes_max: usize,
    /// Most slots a leader has in flight (accepted by itself, not yet chosen).
    pub inflight_slots_max: usize,
    /// Most proposals queued at the leader waiting for a slot.
    pub queued_proposals_max: usize,
    /// Most chosen values one `Chosen` message carries.
    pub learn_batch_max: usize,
    /// Seed of the replica's randomness (election timeouts only).
    pub seed: u64,
}

impl ReplicaConfig {
    /// Defaults for `members`, with time settings left to the caller.
    pub fn new(id: NodeId, members: BTreeSet<NodeId>, heartbeat_ticks: u64, election_ticks: u64) -> Self {
        ReplicaConfig {
            id,
            members,
            heartbeat_ticks,
            election_ticks,
            batch_proposals_max: 256,
            slot_bytes_max: 4 << 20,
            message_bytes_max: 16 << 20,
            inflight_slots_max: 64,
            queued_proposals_max: 65_536,
            learn_batch_max: 512,
            seed: id.get(),
        }
    }
}

/// What a replica recovers from its durable storage at start-up.
#[derive(Debug, Clone)]
pub struct DurableState<C> {
    /// The highest ballot ever promised.
    pub promised: Ballot,
    /// Accepted records above the snapshot.
    pub accepted: BTreeMap<Slot, Accepted<C>>,
    /// The latest state-machine snapshot and the slot it covers.
    pub snapshot: Option<(Slot, Arc<Vec<u8>>)>,
}

impl<C> Default for DurableState<C> {
    fn default() -> Self {
        DurableState {
            promised: Ballot::ZERO,
            accepted: BTreeMap::new(),
            snapshot: None,
        }
    }
}

/// A promise: the promiser's chosen prefix and the values it accepted above.
type PromiseOf<C> = (Slot, Vec<(Slot, Accepted<C>)>);

/// A would-be leader's phase 1 in progress.
#[derive(Debug)]
struct Preparing<C> {
    ballot: Ballot,
    /// Promises so far, by promiser.
    promises: BTreeMap<NodeId, PromiseOf<C>>,
    /// This node's own promise, which counts once the Ready that persists it
    /// is durable.
    own_promise: Option<(ReadyNumber, PromiseOf<C>)>,
    /// Give up (and back off) at this tick.
    deadline: u64,
}

/// A slot the leader proposed and is collecting votes for.
#[derive(Debug)]
struct InFlight<C> {
    value: Value<C>,
    votes: BTreeSet<NodeId>,
    /// The leader's own vote counts once this Ready is durable.
    own_vote_after: Option<ReadyNumber>,
}

/// A read waiting for a heartbeat round that began after it.
#[derive(Debug)]
struct PendingRead {
    id: ReadId,
    /// The round whose quorum confirms this read.
    round: u64,
    /// Everything proposed before the read began lies at or below this slot.
    index: Slot,
    /// Confirmed by a quorum; waiting for apply to reach `index`.
    confirmed: bool,
}

/// The active leader's state.
#[derive(Debug)]
struct Leading<C> {
    ballot: Ballot,
    /// Next slot to assign.
    next_slot: Slot,
    inflight: BTreeMap<Slot, InFlight<C>>,
    queue: VecDeque<Proposal<C>>,
    /// Sequence number of the latest heartbeat round sent.
    round: u64,
    /// Whether a round was sent for reads and not yet confirmed.
    round_for_reads: Option<u64>,
    /// Highest round each peer acknowledged.
    acked_round: BTreeMap<NodeId, u64>,
    /// Last tick each peer answered anything at this ballot.
    heard_at: BTreeMap<NodeId, u64>,
    reads: Vec<PendingRead>,
    next_heartbeat_at: u64,
    next_quorum_check_at: u64,
    /// The chosen prefix when it last grew, and the tick it did: a leader
    /// that cannot learn the slots phase 1 reported chosen steps down.
    learn_progress: (Slot, u64),
}

/// A replica's role.
#[derive(Debug)]
enum Role<C> {
    /// Follows the leader it last heard, if any.
    Follower,
    /// Asking peers whether a phase 1 would be welcome.
    Probing {
        ballot: Ballot,
        granted: BTreeSet<NodeId>,
        deadline: u64,
    },
    /// Running phase 1.
    Preparing(Preparing<C>),
    /// Leading: phase 2 only.
    Leading(Box<Leading<C>>),
}

impl<C> Role<C> {
    /// The ballot this node probes, prepares or leads at, if any.
    fn ballot(&self) -> Option<Ballot> {
        match self {
            Role::Follower => None,
            Role::Probing { ballot, .. } => Some(*ballot),
            Role::Preparing(preparing) => Some(preparing.ballot),
            Role::Leading(leading) => Some(leading.ballot),
        }
    }
}

/// One Multi-Paxos replica, ordering commands of type `C`.
pub struct Replica<C> {
    config: ReplicaConfig,
    rng: StdRng,
    now: u64,
    ready: Ready<C>,
    role: Role<C>,
    /// Every Ready up to here is durable.
    durable_through: ReadyNumber,

    // Acceptor.
    promised: Ballot,
    accepted: BTreeMap<Slot, Accepted<C>>,

    // Learner.
    /// Slots up to here are covered by the snapshot and forgotten.
    compacted: Slot,
    snapshot: Option<Arc<Vec<u8>>>,
    /// Values known chosen above `compacted`, kept to serve `Learn`.
    chosen: BTreeMap<Slot, Value<C>>,
    /// Every slot up to here is known chosen.
    chosen_upto: Slot,
    /// Every slot up to here was handed to the driver to apply.
    applied: Slot,
    /// The highest chosen prefix a leader announced.
    leader_chosen_upto: Slot,
    /// The ballot of the last leader commit observed, and the slot up to
    /// which this acceptor's records at that ballot were then taken as
    /// chosen: the next commit of the same ballot looks only above it.
    commit_scanned: Option<(Ballot, Slot)>,
    /// When this node last asked for chosen values.
    learn_asked_at: Option<u64>,
    /// Whom to ask for chosen values.
    learn_source: Option<NodeId>,
    /// The snapshot slot last sent to each peer, and when.
    snapshot_sent: BTreeMap<NodeId, (Slot, u64)>,

    // Election.
    /// The leader this node follows and its ballot.
    leader: Option<Ballot>,
    /// Last tick a message from the followed leader arrived.
    leader_heard_at: u64,
    /// Start an election when no leader was heard by this tick.
    election_at: u64,
    /// Elections lost in a row, for backoff.
    failed_elections: u32,
    /// Highest ballot seen anywhere.
    max_seen: Ballot,
    /// The first report that a slot known chosen was chosen with another
    /// value: Paxos rules it out, so it means a bug or a corrupted peer.
    agreement_breach: Option<String>,
}

impl<C: Command> Replica<C> {
    /// A replica resuming from `durable` (empty for a fresh node).
    pub fn new(config: ReplicaConfig, durable: DurableState<C>) -> Replica<C> {
        assert!(
            config.members.contains(&config.id),
            "node {} must be one of the members",
            config.id
        );
        assert!(config.heartbeat_ticks > 0 && config.election_ticks > config.heartbeat_ticks);
        let (compacted, snapshot) = match durable.snapshot {
            Some((slot, data)) => (slot, Some(data)),
            None => (Slot::ZERO, None),
        };
        let mut accepted = durable.accepted;
        accepted.retain(|slot, _| *slot > compacted);
        let mut replica = Replica {
            rng: StdRng::seed_from_u64(config.seed),
            config,
            now: 0,
            ready: Ready::numbered(1),
            role: Role::Follower,
            durable_through: 0,
            promised: durable.promised,
            accepted,
            compacted,
            snapshot,
            chosen: BTreeMap::new(),
            chosen_upto: compacted,
            applied: compacted,
            leader_chosen_upto: compacted,
            commit_scanned: None,
            learn_asked_at: None,
            learn_source: None,
            snapshot_sent: BTreeMap::new(),
            leader: None,
            leader_heard_at: 0,
            election_at: 0,
            failed_elections: 0,
            max_seen: durable.promised,
            agreement_breach: None,
        };
        replica.reset_election_timer();
        replica
    }

    /// This node's id.
    pub fn id(&self) -> NodeId {
        self.config.id
    }

    /// The settings this replica runs with.
    pub fn config(&self) -> &ReplicaConfig {
        &self.config
    }

    /// Handles one message from a peer.
    pub fn step(&mut self, from: NodeId, message: Message<C>) {
        if from == self.config.id || !self.config.members.contains(&from) {
            return;
        }
        match message {
            Message::Probe { ballot } => self.on_probe(from, ballot),
            Message::ProbeReply { ballot, granted } => self.on_probe_reply(from, ballot, granted),
            Message::Prepare { ballot, from_slot } => self.on_prepare(from, ballot, from_slot),
            Message::Promise {
                ballot,
                chosen_upto,
                accepted,
            } => self.on_promise(from, ballot, chosen_upto, accepted),
            Message::Accept {
                ballot,
                entries,
                chosen_upto,
            } => self.on_accept(from, ballot, entries, chosen_upto),
            Message::Accepted { ballot, slots } => self.on_accepted(from, ballot, slots),
            Message::Nack { ballot, promised } => self.on_nack(from, ballot, promised),
            Message::Heartbeat {
                ballot,
                chosen_upto,
                seq,
            } => self.on_heartbeat(from, ballot, chosen_upto, seq),
            Message::HeartbeatAck { ballot, seq } => self.on_heartbeat_ack(from, ballot, seq),
            Message::Learn { from_slot } => self.on_learn(from, from_slot),
            Message::Chosen { entries } => self.on_chosen(entries),
            Message::Snapshot { slot, data } => self.on_snapshot(slot, data),
        }
    }

    /// Advances time by one tick.
    pub fn tick(&mut self) {
        self.now += 1;
        self.tick_role();
        self.tick_learner();
    }

    /// Queues a client command. Refused at once unless this node is the
    /// active leader; otherwise it is batched into a slot when the driver
    /// next takes [`Ready`].
    pub fn propose(&mut self, proposal: Proposal<C>) {
        let refusal = match &mut self.role {
            Role::Leading(leading) if leading.queue.len() < self.config.queued_proposals_max => {
                leading.queue.push_back(proposal);
                return;
            }
            Role::Leading(_) => Refusal::Overloaded,
            _ => Refusal::NotLeader {
                leader: self.leader_id(),
            },
        };
        self.ready.refused.push((proposal.id, refusal));
    }

    /// Starts a linearizable read barrier; its id comes back in
    /// [`Ready::reads_ready`] or [`Ready::reads_failed`].
    pub fn read(&mut self, id: ReadId) {
        self.start_read(id);
    }

    /// The driver took a snapshot of its state machine covering every slot
    /// up to `slot` (which it has applied): the replica forgets those slots,
    /// serves the snapshot to peers that need them, and persists it in its
    /// next Ready, deleting the acceptor records it covers.
    pub fn compact(&mut self, slot: Slot, data: Arc<Vec<u8>>) {
        assert!(
            slot <= self.applied,
            "a snapshot at slot {slot} cannot cover unapplied slots (applied {})",
            self.applied
        );
        if slot <= self.compacted {
            return;
        }
        self.forget_upto(slot);
        self.snapshot = Some(data.clone());
        self.ready.persist.push(ready::Persist::Snapshot { slot, data });
    }

    /// Whether a Ready is waiting, first cutting queued proposals into
    /// slots.
    pub fn has_ready(&mut self) -> bool {
        self.flush_proposals();
        !self.ready.is_empty()
    }

    /// Drains the effects accumulated so far, first cutting queued proposals
    /// into slots. Each call numbers its Ready one above the last.
    pub fn take_ready(&mut self) -> Ready<C> {
        self.flush_proposals();
        let next = Ready::numbered(self.ready.number + 1);
        std::mem::replace(&mut self.ready, next)
    }

    /// The driver made every Ready up to `number` durable: messages held for
    /// them may leave (the driver sends them), and the votes and promises
    /// this node gave itself in them now count.
    pub fn on_persisted(&mut self, number: ReadyNumber) {
        assert!(
            number < self.ready.number,
            "Ready {number} is durable, but only Readys below {} were handed out",
            self.ready.number
        );
        if number <= self.durable_through {
            return;
        }
        self.durable_through = number;
        self.count_own_votes();
        self.count_own_promise();
    }

    /// Every Ready up to here is durable.
    pub fn durable_through(&self) -> ReadyNumber {
        self.durable_through
    }

    /// The leader this node knows of (itself when leading).
    pub fn leader_id(&self) -> Option<NodeId> {
        match &self.role {
            Role::Leading(_) => Some(self.config.id),
            _ => self.leader.map(|ballot| ballot.node),
        }
    }

    /// Whether this node is the active leader (phase 1 done).
    pub fn is_leader(&self) -> bool {
        matches!(self.role, Role::Leading(_))
    }

    /// The round of the ballot this node leads or follows.
    pub fn term(&self) -> u64 {
        match &self.role {
            Role::Leading(leading) => leading.ballot.round,
            _ => self.leader.unwrap_or(self.promised).round,
        }
    }

    /// The promised ballot.
    pub fn promised(&self) -> Ballot {
        self.promised
    }

    /// Every slot up to here is known chosen.
    pub fn chosen_upto(&self) -> Slot {
        self.chosen_upto
    }

    /// Every slot up to here was handed out to apply.
    pub fn applied(&self) -> Slot {
        self.applied
    }

    /// Slots up to here are covered by the latest snapshot.
    pub fn compacted(&self) -> Slot {
        self.compacted
    }

    /// The chosen value of `slot`, if this replica still holds it.
    /// The first report of a second value chosen for a slot, if any. The
    /// simulations require `None` after every step; a node keeps the value
    /// it knew first and logs the report once, since a peer's message
    /// must never be able to crash it.
    pub fn agreement_breach(&self) -> Option<&str> {
        self.agreement_breach.as_deref()
    }

    /// The value known chosen for `slot`, if it is still kept.
    pub fn chosen_value(&self, slot: Slot) -> Option<&Value<C>> {
        self.chosen.get(&slot)
    }

    /// The acceptor's record for `slot`.
    pub fn accepted_at(&self, slot: Slot) -> Option<&Accepted<C>> {
        self.accepted.get(&slot)
    }

    fn majority(&self) -> usize {
        self.config.members.len() / 2 + 1
    }

    fn peers(&self) -> impl Iterator<Item = NodeId> + '_ {
        let id = self.config.id;
        self.config
            .members
            .iter()
            .copied()
            .filter(move |member| *member != id)
    }

    /// Sends a message that reports no state this node has yet to make
    /// durable: it may leave at once.
    fn send(&mut self, to: NodeId, message: Message<C>) {
        assert_ne!(to, self.config.id, "a replica never messages itself");
        self.ready.messages.push(Envelope {
            from: self.config.id,
            to,
            message,
        });
    }

    /// Sends a message that may leave only once everything persisted so far
    /// is durable: a promise, an acceptance, a prepare for a new ballot.
    fn send_after_persist(&mut self, to: NodeId, message: Message<C>) {
        assert_ne!(to, self.config.id, "a replica never messages itself");
        self.ready.persisted_messages.push(Envelope {
            from: self.config.id,
            to,
            message,
        });
    }

    fn broadcast(&mut self, message: Message<C>) {
        let peers: Vec<NodeId> = self.peers().collect();
        for peer in peers {
            self.send(peer, message.clone());
        }
    }

    fn broadcast_after_persist(&mut self, message: Message<C>) {
        let peers: Vec<NodeId> = self.peers().collect();
        for peer in peers {
            self.send_after_persist(peer, message.clone());
        }
    }

    /// The number the Ready being accumulated will carry.
    fn current_ready(&self) -> ReadyNumber {
        self.ready.number
    }

    /// A fresh randomized election deadline, longer after lost elections.
    fn reset_election_timer(&mut self) {
        let base = self.config.election_ticks;
        let backoff = 1u64 << self.failed_elections.min(3);
        let wait = self.rng.gen_range(base..2 * base) * backoff;
        self.election_at = self.now + wait;
    }
}
