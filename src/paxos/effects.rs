//! What the core asks its driver to do. The driver must execute a [`Ready`]
//! in field order: persist (synced) before sending, since a promise or an
//! acceptance may not leave the node before it is durable; then apply; then
//! answer reads and proposals. The one exception is a leader's `Accept`
//! (see [`super::Message::may_precede_persist`]), which may be sent while
//! the persist runs.

use std::sync::Arc;

use super::message::Envelope;
use super::types::{Accepted, Ballot, Chosen, ProposalId, ReadId, Slot};
use crate::consensus::NodeId;

/// A durable acceptor record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Persist {
    /// The promised ballot rose to this.
    Promise(Ballot),
    /// A value was accepted for a slot (replacing any earlier record there).
    Accept {
        /// The slot.
        slot: Slot,
        /// The record.
        accepted: Accepted,
    },
}

/// A step of the applied sequence, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Apply {
    /// Apply this chosen value's commands.
    Chosen(Chosen),
    /// Replace the state machine with this snapshot (it covers every slot up
    /// to `slot`), persist it, and drop acceptor records up to `slot`.
    Snapshot {
        /// Last slot the snapshot covers.
        slot: Slot,
        /// The serialized lock state.
        data: Arc<Vec<u8>>,
    },
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
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Ready {
    /// Records to write, synced, before anything else.
    pub persist: Vec<Persist>,
    /// Messages to send once `persist` is durable (those for which
    /// [`super::Message::may_precede_persist`] holds may go before).
    pub messages: Vec<Envelope>,
    /// The applied sequence's next steps.
    pub apply: Vec<Apply>,
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
}

impl Ready {
    /// True when there is nothing to do.
    pub fn is_empty(&self) -> bool {
        self.persist.is_empty()
            && self.messages.is_empty()
            && self.apply.is_empty()
            && self.reads_ready.is_empty()
            && self.reads_failed.is_empty()
            && self.refused.is_empty()
            && self.abandoned.is_empty()
    }
}
