//! The sans-I/O Multi-Paxos replica: every node is acceptor, learner and
//! (when elected) proposer. It changes only memory; time arrives as
//! [`Replica::tick`], messages as [`Replica::step`], and the effects it wants
//! executed are drained with [`Replica::take_ready`] and confirmed durable
//! with [`Replica::on_persisted`] (the contract is in [`ready`]).
//!
//! The roles' handlers live in one file each: `acceptor.rs`, `proposer.rs`
//! (the leader), `learner.rs`, `election.rs`, and `reconfiguration.rs`
//! (membership changes by stop-sign).

mod acceptor;
mod election;
mod learner;
pub mod message;
mod proposer;
pub mod ready;
mod reconfiguration;
mod snapshot_transfer;
pub mod types;

pub use reconfiguration::{ConfigurationChange, ReconfigurationRefused};

#[cfg(test)]
mod reconfiguration_tests;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use self::message::{Envelope, Message};
use self::ready::{Ready, ReadyNumber, Refusal};
use self::types::{Accepted, Ballot, Command, Configuration, Proposal, ReadId, Slot, Value};
use quorumlock_core::consensus::NodeId;

/// Settings of one replica. Times are in ticks of the driver's interval.
#[derive(Debug, Clone)]
pub struct ReplicaConfig {
    /// This node.
    pub id: NodeId,
    /// The voters of the cluster's first configuration, this node included;
    /// empty for a node that joins a running cluster (it learns the
    /// configuration from the cluster). A snapshot's configuration, once
    /// one was taken or received, takes precedence.
    pub members: BTreeSet<NodeId>,
    /// Where the first configuration's members serve.
    pub addresses: BTreeMap<NodeId, String>,
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
    /// Most snapshot bytes one `SnapshotChunk` carries.
    pub snapshot_chunk_bytes: usize,
    /// Largest snapshot taken from a peer; a larger one is refused.
    pub snapshot_bytes_max: u64,
    /// Seed of the replica's randomness (election timeouts only).
    pub seed: u64,
}

impl ReplicaConfig {
    /// Defaults for `members`, with time settings left to the caller.
    pub fn new(id: NodeId, members: BTreeSet<NodeId>, heartbeat_ticks: u64, election_ticks: u64) -> Self {
        ReplicaConfig {
            id,
            members,
            addresses: BTreeMap::new(),
            heartbeat_ticks,
            election_ticks,
            batch_proposals_max: 256,
            slot_bytes_max: 4 << 20,
            message_bytes_max: 16 << 20,
            inflight_slots_max: 64,
            queued_proposals_max: 65_536,
            learn_batch_max: 512,
            snapshot_chunk_bytes: 1 << 20,
            snapshot_bytes_max: 4 << 30,
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
    /// The configuration in force after the snapshot's slot (`None` for a
    /// snapshot stored before configurations were recorded, or none taken:
    /// the first configuration then applies).
    pub snapshot_config: Option<Arc<Configuration>>,
}

impl<C> Default for DurableState<C> {
    fn default() -> Self {
        DurableState {
            promised: Ballot::ZERO,
            accepted: BTreeMap::new(),
            snapshot: None,
            snapshot_config: None,
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
    /// The chosen prefix each voter and learner last reported.
    matched: BTreeMap<NodeId, Slot>,
    /// When each member last acknowledged a heartbeat.
    acked_at: BTreeMap<NodeId, u64>,
    /// When this leader was elected.
    elected_at: u64,
    /// The last slot pushed to each member that cannot ask (see
    /// `push_to_new_learners`).
    pushed: BTreeMap<NodeId, Slot>,
    /// A configuration change waiting for its slot.
    reconfigure: Option<Arc<Configuration>>,
    /// The slot of the configuration change this leader proposed and has
    /// not seen chosen; after a stop-sign it assigns no further slot.
    reconfiguring_at: Option<(Slot, bool)>,
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

    // Configuration.
    /// The configuration in force after each slot where it changed, from
    /// the one in force at `compacted` on.
    configs: Vec<(Slot, Arc<Configuration>)>,
    /// Why this node no longer belongs to the cluster, once it learned so.
    removed: Option<String>,
    /// When this node last asked a peer of a later epoch for chosen values.
    epoch_catch_up_at: Option<u64>,
    /// The stop-sign that started this node's epoch, until a snapshot
    /// covers it: the node takes part in the new epoch only after, so that
    /// a promise of the new epoch is never durable without the state it
    /// starts from (see [`Replica::epoch_snapshot_due`]).
    epoch_started_at: Option<Slot>,

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
    /// Snapshot transfers this node serves, by receiver.
    snapshot_serving: BTreeMap<NodeId, snapshot_transfer::Serving>,
    /// The snapshot this node is receiving, chunk by chunk.
    snapshot_incoming: Option<snapshot_transfer::Incoming>,
    /// The slot of a snapshot received whole and handed to the driver to
    /// decode, until it comes back.
    snapshot_decoding: Option<Slot>,

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
            config.members.is_empty() || config.members.contains(&config.id),
            "node {} must be one of the members",
            config.id
        );
        assert!(config.heartbeat_ticks > 0 && config.election_ticks > config.heartbeat_ticks);
        let (compacted, snapshot) = match durable.snapshot {
            Some((slot, data)) => (slot, Some(data)),
            None => (Slot::ZERO, None),
        };
        let initial = durable.snapshot_config.unwrap_or_else(|| {
            Arc::new(Configuration::initial(
                config.members.clone(),
                config.addresses.clone(),
            ))
        });
        let mut accepted = durable.accepted;
        accepted.retain(|slot, _| *slot > compacted);
        let mut replica = Replica {
            rng: StdRng::seed_from_u64(config.seed),
            config,
            now: 0,
            ready: Ready::numbered(1),
            role: Role::Follower,
            durable_through: 0,
            configs: vec![(compacted, initial)],
            removed: None,
            epoch_catch_up_at: None,
            epoch_started_at: None,
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
            snapshot_serving: BTreeMap::new(),
            snapshot_incoming: None,
            snapshot_decoding: None,
            leader: None,
            leader_heard_at: 0,
            election_at: 0,
            failed_elections: 0,
            max_seen: durable.promised,
            agreement_breach: None,
        };
        replica.reset_election_timer();
        replica.note_if_removed();
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
    ///
    /// Messages of the protocol proper are taken only from this
    /// configuration's voters and only at its epoch (a learner's heartbeat
    /// acknowledgement excepted): one of a later epoch makes this node catch
    /// up with its sender, one of an earlier epoch is answered with
    /// [`Message::EpochEnded`]. Catch-up messages (learn, chosen values,
    /// snapshots) are served to and taken from anyone the transport admits.
    pub fn step(&mut self, from: NodeId, message: Message<C>) {
        if from == self.config.id {
            return;
        }
        if self.removed.is_some() {
            self.step_removed(from, message);
            return;
        }
        if let Some(ballot) = message.ballot() {
            if self.epoch_snapshot_due() {
                // Its sender sends again.
                return;
            }
            let epoch = self.configuration().epoch;
            if ballot.epoch > epoch {
                self.catch_up_with(from);
                return;
            }
            if ballot.epoch < epoch {
                if self.configuration().has(from) {
                    self.send(from, Message::EpochEnded { epoch });
                }
                return;
            }
            let config = self.configuration();
            let admitted = config.voters.contains(&from)
                || (matches!(message, Message::HeartbeatAck { .. }) && config.learners.contains(&from))
                // A node that does not vote yet (or joins and knows no
                // configuration) learns from whoever leads.
                || (matches!(message, Message::Heartbeat { .. }) && !config.voters.contains(&self.config.id));
            if !admitted {
                return;
            }
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
            Message::HeartbeatAck {
                ballot,
                seq,
                chosen_upto,
            } => self.on_heartbeat_ack(from, ballot, seq, chosen_upto),
            Message::Learn { from_slot } => {
                self.on_learn(from, from_slot);
            }
            Message::Chosen { entries } => self.on_chosen(entries),
            Message::SnapshotChunk {
                slot,
                offset,
                total,
                data,
                config,
            } => self.on_snapshot_chunk(from, slot, offset, total, data, config),
            Message::SnapshotPull { slot, offset } => self.on_snapshot_pull(from, slot, offset),
            Message::EpochEnded { epoch } => {
                if epoch > self.configuration().epoch {
                    self.catch_up_with(from);
                }
            }
        }
    }

    /// Advances time by one tick.
    pub fn tick(&mut self) {
        self.now += 1;
        if self.removed.is_some() {
            return;
        }
        if !self.epoch_snapshot_due() {
            self.tick_role();
        }
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
        let config = self.configuration_at(slot);
        self.ready
            .persist
            .push(ready::Persist::Snapshot { slot, data, config });
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

    /// The term ([`Ballot::term`]) of the ballot this node leads or
    /// follows: the epoch and the round, so that a leader of a later
    /// configuration never shows the term of an earlier leader.
    pub fn term(&self) -> u64 {
        match &self.role {
            Role::Leading(leading) => leading.ballot.term(),
            _ => self.leader.unwrap_or(self.promised).term(),
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

    /// The size of the latest snapshot in bytes; 0 when there is none.
    pub fn snapshot_bytes(&self) -> usize {
        self.snapshot.as_ref().map_or(0, |data| data.len())
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

    /// The configuration in force after the highest chosen slot.
    pub fn configuration(&self) -> &Arc<Configuration> {
        &self
            .configs
            .last()
            .expect("a replica always has a configuration")
            .1
    }

    /// The configuration in force after `slot` (at or after the compacted
    /// prefix).
    pub fn configuration_at(&self, slot: Slot) -> Arc<Configuration> {
        self.configs
            .iter()
            .rev()
            .find(|(since, _)| *since <= slot)
            .unwrap_or(&self.configs[0])
            .1
            .clone()
    }

    /// Why this node no longer belongs to the cluster, once it learned that
    /// a configuration change removed it; it then takes part in nothing.
    pub fn removed(&self) -> Option<&str> {
        self.removed.as_deref()
    }

    /// Whether the driver must snapshot its state machine now: a stop-sign
    /// it applied started a new epoch, and until a snapshot covers that
    /// slot this node takes no part in the new epoch.
    ///
    /// After a restart a node knows only what its snapshot covers as
    /// chosen. Without this, a node could restart holding a promise of the
    /// new epoch but the configuration of the old one; it would refuse
    /// every ballot of the old epoch, and if every node that knew the
    /// stop-sign chosen had restarted too, nobody could choose again the
    /// slots before it, nor lead the new epoch. Persisting the snapshot
    /// before any later record makes every durable promise of an epoch
    /// come with that epoch's configuration and the state it starts from.
    pub fn epoch_snapshot_due(&self) -> bool {
        self.epoch_started_at.is_some_and(|slot| self.compacted < slot)
    }

    /// Whether this node votes in the configuration in force.
    pub fn is_voter(&self) -> bool {
        self.configuration().voters.contains(&self.config.id)
    }

    fn majority(&self) -> usize {
        self.configuration().voters.len() / 2 + 1
    }

    /// The other voters of the configuration in force.
    fn peers(&self) -> impl Iterator<Item = NodeId> + '_ {
        let id = self.config.id;
        self.configuration()
            .voters
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
    /// How long a probe or a phase 1 waits for a majority: an election
    /// timeout, doubled with each election lost in a row (up to 8×), as the
    /// election timer backs off. A fixed wait would never let a round trip
    /// longer than the election timeout (a slow disk on each side, a long
    /// network delay) finish an election, which a configuration of two
    /// voters, where one peer must answer, meets at once.
    fn phase_ticks(&self) -> u64 {
        self.config.election_ticks << self.failed_elections.min(3)
    }

    fn reset_election_timer(&mut self) {
        let base = self.config.election_ticks;
        let backoff = 1u64 << self.failed_elections.min(3);
        let wait = self.rng.gen_range(base..2 * base) * backoff;
        self.election_at = self.now + wait;
    }
}
