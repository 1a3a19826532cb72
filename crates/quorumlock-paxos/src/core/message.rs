//! Messages between replicas. Every message may be lost, duplicated, delayed
//! or reordered by the network; each handler is idempotent and checks the
//! ballot it carries.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::types::{Accepted, Ballot, Chosen, Configuration, Slot, Value};
use quorumlock_core::consensus::NodeId;

/// A message with its sender and recipient.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope<C> {
    /// Sender.
    pub from: NodeId,
    /// Recipient.
    pub to: NodeId,
    /// Payload.
    pub message: Message<C>,
}

/// The protocol's messages, carrying commands of type `C`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Message<C> {
    /// Pre-vote: "would you join a phase 1 at `ballot`?" Changes no state, so
    /// a node cut off from the leader cannot disturb it by raising ballots.
    Probe {
        /// The ballot the sender would prepare.
        ballot: Ballot,
    },
    /// Answer to [`Message::Probe`].
    ProbeReply {
        /// The probed ballot.
        ballot: Ballot,
        /// True when the sender has not heard a live leader lately and has
        /// promised nothing higher.
        granted: bool,
    },
    /// Phase 1a, for every slot from `from_slot` on.
    Prepare {
        /// The would-be leader's ballot.
        ballot: Ballot,
        /// The first slot the sender does not know to be chosen.
        from_slot: Slot,
    },
    /// Phase 1b: the promise, with every value accepted above the slots the
    /// acceptor knows chosen.
    Promise {
        /// The promised ballot.
        ballot: Ballot,
        /// The acceptor knows every slot up to here chosen; the leader must
        /// learn those rather than re-propose them (they may be compacted).
        chosen_upto: Slot,
        /// Accepted values in slots above `max(from_slot - 1, chosen_upto)`.
        accepted: Vec<(Slot, Accepted<C>)>,
    },
    /// Phase 2a, for a run of slots.
    Accept {
        /// The leader's ballot.
        ballot: Ballot,
        /// Slots and values, ascending.
        entries: Vec<(Slot, Value<C>)>,
        /// The leader's chosen prefix, piggybacked.
        chosen_upto: Slot,
    },
    /// Phase 2b.
    Accepted {
        /// The ballot accepted at.
        ballot: Ballot,
        /// The slots accepted.
        slots: Vec<Slot>,
    },
    /// A refusal: the sender promised `promised`, above `ballot`.
    Nack {
        /// The refused ballot.
        ballot: Ballot,
        /// The sender's promise.
        promised: Ballot,
    },
    /// The leader is alive; carries its chosen prefix and a sequence number
    /// that read barriers wait on.
    Heartbeat {
        /// The leader's ballot.
        ballot: Ballot,
        /// The leader's chosen prefix.
        chosen_upto: Slot,
        /// Increases with every heartbeat round of this leader.
        seq: u64,
    },
    /// Answer to [`Message::Heartbeat`].
    HeartbeatAck {
        /// The heartbeat's ballot.
        ballot: Ballot,
        /// The heartbeat's sequence number.
        seq: u64,
        /// The sender's chosen prefix, so the leader knows how far each
        /// member (learners too) has caught up.
        chosen_upto: Slot,
    },
    /// "Send me the chosen values from `from_slot` on."
    Learn {
        /// First slot wanted.
        from_slot: Slot,
    },
    /// Chosen values, ascending and contiguous.
    Chosen {
        /// The values.
        entries: Vec<Chosen<C>>,
    },
    /// One chunk of the sender's state-machine snapshot, because the slots
    /// asked for were compacted away. The first answers a `Learn`; the
    /// receiver pulls each next one with [`Message::SnapshotPull`], so at
    /// most one chunk per receiver is on the way and a slow receiver sets
    /// the pace.
    SnapshotChunk {
        /// The snapshot covers every slot up to here.
        slot: Slot,
        /// Where in the serialized snapshot `data` starts.
        offset: u64,
        /// The serialized snapshot's length in bytes.
        total: u64,
        /// The snapshot's bytes from `offset` on; empty only for an empty
        /// snapshot.
        data: Vec<u8>,
        /// The configuration in force after `slot`.
        config: Arc<Configuration>,
    },
    /// "Send me the chunk of your snapshot at `slot` that starts at
    /// `offset`."
    SnapshotPull {
        /// The snapshot being received.
        slot: Slot,
        /// The bytes received so far.
        offset: u64,
    },
    /// "The ballot you sent is of an epoch that ended here": the recipient
    /// is behind a configuration change and must learn the chosen values
    /// (the stop-sign among them) before it takes part again.
    EpochEnded {
        /// The sender's epoch.
        epoch: u64,
    },
}

impl<C> Message<C> {
    /// A short name for logs and counters.
    pub fn kind(&self) -> &'static str {
        match self {
            Message::Probe { .. } => "probe",
            Message::ProbeReply { .. } => "probe_reply",
            Message::Prepare { .. } => "prepare",
            Message::Promise { .. } => "promise",
            Message::Accept { .. } => "accept",
            Message::Accepted { .. } => "accepted",
            Message::Nack { .. } => "nack",
            Message::Heartbeat { .. } => "heartbeat",
            Message::HeartbeatAck { .. } => "heartbeat_ack",
            Message::Learn { .. } => "learn",
            Message::Chosen { .. } => "chosen",
            Message::SnapshotChunk { .. } => "snapshot_chunk",
            Message::SnapshotPull { .. } => "snapshot_pull",
            Message::EpochEnded { .. } => "epoch_ended",
        }
    }

    /// The ballot of a message of the protocol proper (election, phases 1
    /// and 2, heartbeats); `None` for catch-up messages, which any
    /// configuration serves.
    pub fn ballot(&self) -> Option<Ballot> {
        match self {
            Message::Probe { ballot }
            | Message::ProbeReply { ballot, .. }
            | Message::Prepare { ballot, .. }
            | Message::Promise { ballot, .. }
            | Message::Accept { ballot, .. }
            | Message::Accepted { ballot, .. }
            | Message::Nack { ballot, .. }
            | Message::Heartbeat { ballot, .. }
            | Message::HeartbeatAck { ballot, .. } => Some(*ballot),
            Message::Learn { .. }
            | Message::Chosen { .. }
            | Message::SnapshotChunk { .. }
            | Message::SnapshotPull { .. }
            | Message::EpochEnded { .. } => None,
        }
    }
}
