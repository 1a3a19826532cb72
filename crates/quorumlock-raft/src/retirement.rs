//! Retired node ids: every id a committed membership change removed.
//!
//! The set is part of the replicated state: the state machine adds to it
//! when it applies a membership entry that drops a node, and it travels in
//! every snapshot, so each member knows it after a restart or a snapshot
//! install. Three things follow from it:
//!
//! - `member add` refuses a retired id: a node that was removed may still
//!   run with the old id's log and vote, and a new node under the same id
//!   would be confused with it.
//! - A member refuses every peer message from a retired id
//!   ([`RETIRED_METADATA`] names it), so a removed node that keeps running
//!   cannot disrupt the cluster with elections.
//! - A node that applies its own removal, or is refused by a peer as
//!   retired, knows it was removed: it stops serving the API.

use std::collections::BTreeSet;

use parking_lot::Mutex;
use tokio::sync::watch;

use quorumlock_core::consensus::NodeId;

pub use quorumlock_core::consensus::RETIRED_METADATA;

/// The retired ids as this node applied them, and whether it is one.
#[derive(Debug)]
pub struct Retirement {
    node_id: NodeId,
    retired: Mutex<BTreeSet<NodeId>>,
    /// Why this node knows it was removed, once it does.
    removed: watch::Sender<Option<String>>,
}

impl Retirement {
    /// Nothing retired yet, for node `node_id`.
    pub fn new(node_id: NodeId) -> Retirement {
        Retirement {
            node_id,
            retired: Mutex::default(),
            removed: watch::Sender::new(None),
        }
    }

    /// This node's id.
    pub fn node_id(&self) -> NodeId {
        self.node_id
    }

    /// Whether `id` was removed from the cluster.
    pub fn is_retired(&self, id: NodeId) -> bool {
        self.retired.lock().contains(&id)
    }

    /// The retired ids, for a snapshot.
    pub fn retired(&self) -> BTreeSet<NodeId> {
        self.retired.lock().clone()
    }

    /// Applies a membership entry at `index` that dropped `ids`.
    pub fn retire(&self, ids: impl IntoIterator<Item = NodeId>, index: u64) {
        for id in ids {
            tracing::info!(node = %id, index, "node id retired by a membership change");
            self.retired.lock().insert(id);
            if id == self.node_id {
                self.learned(format!(
                    "node {id} was removed from the cluster by the membership change at index {index}"
                ));
            }
        }
    }

    /// Replaces the set with a snapshot's.
    pub fn restore(&self, retired: BTreeSet<NodeId>) {
        let removed = retired.contains(&self.node_id);
        *self.retired.lock() = retired;
        if removed {
            self.learned(format!(
                "node {} was removed from the cluster (its id is retired in the snapshot it holds)",
                self.node_id
            ));
        }
    }

    /// A peer refused a message from this node because its id is retired.
    pub fn refused_by(&self, peer: NodeId) {
        self.learned(format!(
            "node {} was removed from the cluster (node {peer} refuses it as retired)",
            self.node_id
        ));
    }

    /// The leader said it committed this node's removal.
    pub fn told_by_leader(&self) {
        self.learned(format!(
            "node {} was removed from the cluster (the leader committed its removal)",
            self.node_id
        ));
    }

    /// Records the first way this node learned of its removal.
    fn learned(&self, why: String) {
        self.removed.send_if_modified(|removed| match removed {
            Some(_) => false,
            None => {
                tracing::warn!(node = %self.node_id, reason = %why, "this node stops serving");
                *removed = Some(why);
                true
            }
        });
    }

    /// Why this node stopped serving, once it knows it was removed.
    pub fn removed(&self) -> Option<String> {
        self.removed.borrow().clone()
    }

    /// Watches [`Retirement::removed`].
    pub fn subscribe(&self) -> watch::Receiver<Option<String>> {
        self.removed.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_node_learns_its_own_removal_from_the_applied_entry_or_a_peer() {
        let me = NodeId::new(3);
        let applied = Retirement::new(me);
        applied.retire([NodeId::new(5)], 10);
        assert!(applied.removed().is_none());
        assert!(applied.is_retired(NodeId::new(5)));
        applied.retire([me], 12);
        assert!(applied.removed().unwrap().contains("index 12"));

        let told = Retirement::new(me);
        told.refused_by(NodeId::new(1));
        assert!(told.removed().unwrap().contains("node 1 refuses"));
        assert!(
            !told.is_retired(me),
            "a peer's word does not change the replicated set"
        );

        let restored = Retirement::new(me);
        restored.restore([me].into());
        assert!(restored.removed().is_some());
    }
}
