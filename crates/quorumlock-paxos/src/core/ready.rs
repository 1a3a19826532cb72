//! What the core asks its driver to do, as a contract the types hold.
//!
//! Each [`Ready`] carries a number, rising by one from 1 in every life of a
//! replica. A driver executes a Ready this way:
//!
//! 1. sends [`Ready::messages`] at once: none of them reports state this
//!    node has yet to make durable;
//! 2. hands [`Ready::persist`] to storage, which makes the records of every
//!    Ready durable (synced) in Ready order;
//! 3. applies [`Ready::apply`] and answers reads and proposals at once: a
//!    chosen value is chosen whatever this node's disk holds;
//! 4. holds [`Ready::persisted_messages`] until every Ready up to this one
//!    is durable, then sends them and reports it with
//!    [`super::Replica::on_persisted`];
//! 5. decodes [`Ready::snapshot_received`], if any, and hands it back (see
//!    [`ReceivedSnapshot`]); the replica goes on meanwhile.
//!
//! Messages that depend on durable state (a `Promise`, an `Accepted`, a
//! `Prepare` for the ballot just promised) are `persisted_messages`, so an
//! acceptor never promises or accepts out loud before its disk does, and a
//! proposer's ballot cannot be reused after a crash. The leader's own vote
//! for a slot counts only from [`super::Replica::on_persisted`], so a slot
//! is chosen only once a majority holds it durably — while the leader's
//! `Accept`s travel as its own write syncs, and its disk need not be faster
//! than its followers'.

use std::sync::Arc;

use super::message::Envelope;
use super::types::{Accepted, Ballot, Chosen, Configuration, ProposalId, ReadId, Slot};
use quorumlock_core::consensus::NodeId;

/// Numbers the Readys of one replica's life, from 1.
pub type ReadyNumber = u64;

/// A durable record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Persist<C> {
    /// The promised ballot rose to this.
    Promise(Ballot),
    /// A value was accepted for a slot (replacing any earlier record there).
    Accept {
        /// The slot.
        slot: Slot,
        /// The record.
        accepted: Accepted<C>,
    },
    /// A state-machine snapshot covering every slot up to `slot`; the
    /// acceptor records it covers are deleted in the same write.
    Snapshot {
        /// Last slot the snapshot covers.
        slot: Slot,
        /// The serialized state.
        data: Arc<Vec<u8>>,
        /// The configuration in force after `slot`.
        config: Arc<Configuration>,
    },
}

/// A step of the applied sequence, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Apply<C> {
    /// Apply this chosen value's commands.
    Chosen(Chosen<C>),
    /// Replace the state machine with this snapshot (it covers every slot up
    /// to `slot`); the same Ready persists it.
    Snapshot {
        /// Last slot the snapshot covers.
        slot: Slot,
        /// The serialized state.
        data: Arc<Vec<u8>>,
    },
}

/// A peer's snapshot, received whole: the driver decodes and checks it
/// (off its task where it can, as it may be large) and hands it back with
/// [`super::Replica::install_snapshot`], or reports it undecodable with
/// [`super::Replica::snapshot_undecodable`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReceivedSnapshot {
    /// Last slot the snapshot covers.
    pub slot: Slot,
    /// The serialized state.
    pub data: Arc<Vec<u8>>,
    /// The configuration in force after `slot`.
    pub config: Arc<Configuration>,
}

/// Why a proposal was refused before it entered the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// This node is not the active leader; `leader` is the one it follows.
    NotLeader {
        /// The leader this node follows, if any.
        leader: Option<NodeId>,
    },
    /// The leader's queue of unbatched proposals is full.
    Overloaded,
}

/// Effects accumulated since the last [`super::Replica::take_ready`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ready<C> {
    /// This Ready's place in the replica's sequence of Readys.
    pub number: ReadyNumber,
    /// Messages that may leave at once.
    pub messages: Vec<Envelope<C>>,
    /// Records to make durable, after those of every earlier Ready.
    pub persist: Vec<Persist<C>>,
    /// Messages that may leave only once every Ready up to this one is
    /// durable.
    pub persisted_messages: Vec<Envelope<C>>,
    /// The applied sequence's next steps.
    pub apply: Vec<Apply<C>>,
    /// Reads whose barrier passed: every command committed before they began
    /// is applied once `apply` is.
    pub reads_ready: Vec<ReadId>,
    /// Reads that cannot be confirmed because leadership was lost.
    pub reads_failed: Vec<ReadId>,
    /// Proposals that never entered the log.
    pub refused: Vec<(ProposalId, Refusal)>,
    /// Proposals that were in flight when this node stopped leading: they
    /// may or may not be chosen later.
    pub abandoned: Vec<ProposalId>,
    /// A peer's snapshot to decode before it is installed.
    pub snapshot_received: Option<ReceivedSnapshot>,
}

impl<C> Default for Ready<C> {
    /// An empty Ready numbered 0, which no replica hands out.
    fn default() -> Self {
        Ready::numbered(0)
    }
}

impl<C> Ready<C> {
    /// An empty Ready with this number.
    pub fn numbered(number: ReadyNumber) -> Ready<C> {
        Ready {
            number,
            messages: Vec::new(),
            persist: Vec::new(),
            persisted_messages: Vec::new(),
            apply: Vec::new(),
            reads_ready: Vec::new(),
            reads_failed: Vec::new(),
            refused: Vec::new(),
            abandoned: Vec::new(),
            snapshot_received: None,
        }
    }

    /// True when there is nothing to do.
    pub fn is_empty(&self) -> bool {
        self.messages.is_empty()
            && self.persist.is_empty()
            && self.persisted_messages.is_empty()
            && self.apply.is_empty()
            && self.reads_ready.is_empty()
            && self.reads_failed.is_empty()
            && self.refused.is_empty()
            && self.abandoned.is_empty()
            && self.snapshot_received.is_none()
    }
}
