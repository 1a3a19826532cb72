//! The sans-I/O Multi-Paxos replica: every node is acceptor, learner and
//! (when elected) proposer. It changes only memory; time arrives as
//! [`Replica::tick`], messages as [`Replica::step`], and the effects it wants
//! executed are drained with [`Replica::take_ready`].
//!
//! The roles' handlers live in one file each: `acceptor.rs`, `proposer.rs`
//! (the leader), `learner.rs` and `election.rs`.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::effects::{Ready, Refusal};
use super::message::{Envelope, Message};
use super::types::{Accepted, Ballot, Proposal, ReadId, Slot, Value};
use crate::consensus::NodeId;

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
            seed: id,
        }
    }
}

/// What a replica recovers from its durable storage at start-up.
#[derive(Debug, Clone, Default)]
pub struct DurableState {
    /// The highest ballot ever promised.
    pub promised: Ballot,
    /// Accepted records above the snapshot.
    pub accepted: BTreeMap<Slot, Accepted>,
    /// The latest state-machine snapshot and the slot it covers.
    pub snapshot: Option<(Slot, Arc<Vec<u8>>)>,
}

/// A would-be leader's phase 1 in progress.
#[derive(Debug)]
pub(super) struct Preparing {
    pub(super) ballot: Ballot,
    /// Promises so far: who, their chosen prefix, and their accepted values.
    pub(super) promises: BTreeMap<NodeId, (Slot, Vec<(Slot, Accepted)>)>,
    /// Give up (and back off) at this tick.
    pub(super) deadline: u64,
}

/// A slot the leader proposed and is collecting votes for.
#[derive(Debug)]
pub(super) struct InFlight {
    pub(super) value: Value,
    pub(super) votes: BTreeSet<NodeId>,
}

/// A read waiting for a heartbeat round that began after it.
#[derive(Debug)]
pub(super) struct PendingRead {
    pub(super) id: ReadId,
    /// The round whose quorum confirms this read.
    pub(super) round: u64,
    /// Everything proposed before the read began lies at or below this slot.
    pub(super) index: Slot,
    /// Confirmed by a quorum; waiting for apply to reach `index`.
    pub(super) confirmed: bool,
}

/// The active leader's state.
#[derive(Debug)]
pub(super) struct Leading {
    pub(super) ballot: Ballot,
    /// Next slot to assign.
    pub(super) next_slot: Slot,
    pub(super) inflight: BTreeMap<Slot, InFlight>,
    pub(super) queue: VecDeque<Proposal>,
    /// Sequence number of the latest heartbeat round sent.
    pub(super) round: u64,
    /// Whether a round was sent for reads and not yet confirmed.
    pub(super) round_for_reads: Option<u64>,
    /// Highest round each peer acknowledged.
    pub(super) acked_round: BTreeMap<NodeId, u64>,
    /// Last tick each peer answered anything at this ballot.
    pub(super) heard_at: BTreeMap<NodeId, u64>,
    pub(super) reads: Vec<PendingRead>,
    pub(super) next_heartbeat_at: u64,
    pub(super) next_quorum_check_at: u64,
    /// The chosen prefix when it last grew, and the tick it did: a leader
    /// that cannot learn the slots phase 1 reported chosen steps down.
    pub(super) learn_progress: (Slot, u64),
}

/// A replica's role.
#[derive(Debug)]
pub(super) enum Role {
    /// Follows the leader it last heard, if any.
    Follower,
    /// Asking peers whether a phase 1 would be welcome.
    Probing {
        ballot: Ballot,
        granted: BTreeSet<NodeId>,
        deadline: u64,
    },
    /// Running phase 1.
    Preparing(Preparing),
    /// Leading: phase 2 only.
    Leading(Box<Leading>),
}

impl Role {
    /// The ballot this node probes, prepares or leads at, if any.
    pub(super) fn ballot(&self) -> Option<Ballot> {
        match self {
            Role::Follower => None,
            Role::Probing { ballot, .. } => Some(*ballot),
            Role::Preparing(preparing) => Some(preparing.ballot),
            Role::Leading(leading) => Some(leading.ballot),
        }
    }
}

/// One Multi-Paxos replica.
pub struct Replica {
    pub(super) config: ReplicaConfig,
    pub(super) rng: StdRng,
    pub(super) now: u64,
    pub(super) ready: Ready,
    pub(super) role: Role,

    // Acceptor.
    pub(super) promised: Ballot,
    pub(super) accepted: BTreeMap<Slot, Accepted>,

    // Learner.
    /// Slots up to here are covered by the snapshot and forgotten.
    pub(super) compacted: Slot,
    pub(super) snapshot: Option<Arc<Vec<u8>>>,
    /// Values known chosen above `compacted`, kept to serve `Learn`.
    pub(super) chosen: BTreeMap<Slot, Value>,
    /// Every slot up to here is known chosen.
    pub(super) chosen_upto: Slot,
    /// Every slot up to here was handed to the driver to apply.
    pub(super) applied: Slot,
    /// The highest chosen prefix a leader announced.
    pub(super) leader_chosen_upto: Slot,
    /// When this node last asked for chosen values.
    pub(super) learn_asked_at: Option<u64>,
    /// Whom to ask for chosen values.
    pub(super) learn_source: Option<NodeId>,
    /// The snapshot slot last sent to each peer, and when.
    pub(super) snapshot_sent: BTreeMap<NodeId, (Slot, u64)>,

    // Election.
    /// The leader this node follows and its ballot.
    pub(super) leader: Option<Ballot>,
    /// Last tick a message from the followed leader arrived.
    pub(super) leader_heard_at: u64,
    /// Start an election when no leader was heard by this tick.
    pub(super) election_at: u64,
    /// Elections lost in a row, for backoff.
    pub(super) failed_elections: u32,
    /// Highest ballot seen anywhere.
    pub(super) max_seen: Ballot,
}

impl Replica {
    /// A replica resuming from `durable` (empty for a fresh node).
    pub fn new(config: ReplicaConfig, durable: DurableState) -> Replica {
        assert!(
            config.members.contains(&config.id),
            "node {} must be one of the members",
            config.id
        );
        assert!(config.heartbeat_ticks > 0 && config.election_ticks > config.heartbeat_ticks);
        let (compacted, snapshot) = match durable.snapshot {
            Some((slot, data)) => (slot, Some(data)),
            None => (0, None),
        };
        let mut accepted = durable.accepted;
        accepted.retain(|slot, _| *slot > compacted);
        let mut replica = Replica {
            rng: StdRng::seed_from_u64(config.seed),
            config,
            now: 0,
            ready: Ready::default(),
            role: Role::Follower,
            promised: durable.promised,
            accepted,
            compacted,
            snapshot,
            chosen: BTreeMap::new(),
            chosen_upto: compacted,
            applied: compacted,
            leader_chosen_upto: compacted,
            learn_asked_at: None,
            learn_source: None,
            snapshot_sent: BTreeMap::new(),
            leader: None,
            leader_heard_at: 0,
            election_at: 0,
            failed_elections: 0,
            max_seen: durable.promised,
        };
        replica.reset_election_timer();
        replica
    }

    /// This node's id.
    pub fn id(&self) -> NodeId {
        self.config.id
    }

    /// Handles one message from a peer.
    pub fn step(&mut self, from: NodeId, message: Message) {
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
    pub fn propose(&mut self, proposal: Proposal) {
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

    /// Records that the driver persisted a snapshot covering every slot up
    /// to `slot` (which it has applied): the replica forgets those slots and
    /// serves the snapshot to peers that need them. The driver deletes the
    /// matching acceptor records from storage.
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
        self.snapshot = Some(data);
    }

    /// Drains the effects accumulated so far, first cutting queued proposals
    /// into slots.
    pub fn take_ready(&mut self) -> Ready {
        self.flush_proposals();
        std::mem::take(&mut self.ready)
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
    pub fn chosen_value(&self, slot: Slot) -> Option<&Value> {
        self.chosen.get(&slot)
    }

    /// The acceptor's record for `slot`.
    pub fn accepted_at(&self, slot: Slot) -> Option<&Accepted> {
        self.accepted.get(&slot)
    }

    pub(super) fn majority(&self) -> usize {
        self.config.members.len() / 2 + 1
    }

    pub(super) fn peers(&self) -> impl Iterator<Item = NodeId> + '_ {
        let id = self.config.id;
        self.config
            .members
            .iter()
            .copied()
            .filter(move |member| *member != id)
    }

    pub(super) fn send(&mut self, to: NodeId, message: Message) {
        debug_assert_ne!(to, self.config.id, "a replica never messages itself");
        self.ready.messages.push(Envelope {
            from: self.config.id,
            to,
            message,
        });
    }

    pub(super) fn broadcast(&mut self, message: Message) {
        let peers: Vec<NodeId> = self.peers().collect();
        for peer in peers {
            self.send(peer, message.clone());
        }
    }

    /// A fresh randomized election deadline, longer after lost elections.
    pub(super) fn reset_election_timer(&mut self) {
        let base = self.config.election_ticks;
        let backoff = 1u64 << self.failed_elections.min(3);
        let wait = self.rng.gen_range(base..2 * base) * backoff;
        self.election_at = self.now + wait;
    }
}
