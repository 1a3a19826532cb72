//! The learner: which slots are chosen, the in-order hand-off to apply,
//! catch-up from peers (chosen values, or a snapshot when they were
//! compacted), and compaction.

use std::collections::btree_map::Entry;
use std::sync::Arc;

use super::message::Message;
use super::ready::{Apply, Persist};
use super::types::{Ballot, Chosen, Command, Configuration, Slot, Value};
use super::{Replica, Role};
use quorumlock_core::consensus::NodeId;

impl<C: Command> Replica<C> {
    /// The leader at `ballot` says every slot up to `upto` is chosen. A slot
    /// this acceptor accepted *at that ballot* holds the chosen value (a
    /// leader proposes one value per slot per ballot, and announces a slot
    /// only once it is chosen); other slots must be learned.
    ///
    /// Each slot is looked at once per ballot: a replica with a gap below
    /// its chosen prefix (waiting for a snapshot or for chosen values)
    /// keeps accepting, and rescanning everything it accepted above the gap
    /// at every commit made its work per message grow with the gap, until
    /// it could no longer keep up and never caught up. A record that
    /// arrives after the commit that covered its slot is learned instead.
    pub(super) fn observe_leader_commit(&mut self, ballot: Ballot, upto: Slot) {
        if upto <= self.chosen_upto {
            return;
        }
        self.leader_chosen_upto = self.leader_chosen_upto.max(upto);
        self.learn_source = Some(ballot.node);
        let from = match self.commit_scanned {
            Some((scanned_ballot, scanned)) if scanned_ballot == ballot => scanned.max(self.chosen_upto) + 1,
            _ => self.chosen_upto + 1,
        };
        let mut known: Vec<(Slot, Value<C>)> = Vec::new();
        // `range` panics on a range whose start is past its end.
        if from <= upto {
            self.commit_scanned = Some((ballot, upto));
            known = self
                .accepted
                .range(from..=upto)
                .filter(|(_, record)| record.ballot == ballot)
                .map(|(slot, record)| (*slot, record.value.clone()))
                .collect();
        }
        for (slot, value) in known {
            self.record_chosen(slot, value);
        }
        self.advance();
        if self.chosen_upto < self.leader_chosen_upto && self.learn_asked_at.is_none() {
            self.ask_learn();
        }
    }

    /// Notes `value` as chosen for `slot`. Agreement: a slot is chosen
    /// once, with one value, so whoever tells of it again (the leader's
    /// commit, a peer's answer, this node's own count of votes) must bring
    /// the same value. A different one is kept out and reported (see
    /// [`Replica::agreement_breach`]).
    pub(super) fn record_chosen(&mut self, slot: Slot, value: Value<C>) {
        match self.chosen.entry(slot) {
            Entry::Vacant(vacant) => {
                vacant.insert(value);
            }
            Entry::Occupied(known) if *known.get() == value => {}
            Entry::Occupied(_) => {
                if self.agreement_breach.is_none() {
                    let breach = format!("slot {slot} was reported chosen with two different values");
                    tracing::error!(node = %self.config.id, %slot, "agreement breach: {breach}");
                    self.agreement_breach = Some(breach);
                }
            }
        }
    }

    /// Extends the chosen prefix over contiguous known-chosen slots and hands
    /// the newly covered values to apply.
    pub(super) fn advance(&mut self) {
        while let Some(value) = self.chosen.get(&(self.chosen_upto + 1)) {
            self.chosen_upto += 1;
            if let Value::Reconfigure(next) = value {
                let next = next.clone();
                self.on_configuration_chosen(self.chosen_upto, next);
            }
        }
        let chosen_upto = self.chosen_upto;
        if let Role::Leading(leading) = &mut self.role {
            // The change this leader proposed is chosen (in force or stale):
            // the next one may come, and slots may follow it again.
            if leading
                .reconfiguring_at
                .is_some_and(|(slot, _)| slot <= chosen_upto)
            {
                leading.reconfiguring_at = None;
            }
        }
        if self.chosen_upto >= self.leader_chosen_upto {
            self.learn_asked_at = None;
        }
        while self.applied < self.chosen_upto {
            self.applied += 1;
            assert!(
                self.applied > self.compacted,
                "a compacted slot is never applied again"
            );
            let value = self.chosen[&self.applied].clone();
            self.ready.apply.push(Apply::Chosen(Chosen {
                slot: self.applied,
                value,
            }));
        }
        self.confirm_reads();
    }

    pub(super) fn tick_learner(&mut self) {
        self.tick_snapshot_transfer();
        let retry_ticks = 2 * self.config.heartbeat_ticks;
        if self.chosen_upto < self.leader_chosen_upto
            && self
                .learn_asked_at
                .is_none_or(|asked| self.now - asked >= retry_ticks)
        {
            self.ask_learn();
        }
    }

    /// Asks for the chosen values after the prefix: from the leader, or (for
    /// a new leader catching up, or when the first answer never came) from
    /// a peer.
    pub(super) fn ask_learn(&mut self) {
        let retry = self.learn_asked_at.is_some();
        self.learn_asked_at = Some(self.now);
        if self.receiving_snapshot() {
            return;
        }
        let mut source = match &self.role {
            Role::Leading(_) => self.learn_source,
            _ => self.leader.map(|ballot| ballot.node).or(self.learn_source),
        };
        if retry || source.is_none() || source == Some(self.config.id) {
            let peers: Vec<NodeId> = self.peers().collect();
            if peers.is_empty() {
                return;
            }
            use rand::Rng;
            source = Some(peers[self.rng.gen_range(0..peers.len())]);
        }
        let from_slot = self.chosen_upto + 1;
        if let Some(source) = source {
            self.send(source, Message::Learn { from_slot });
        }
    }

    /// Serves `from` the chosen values from `from_slot` on, or starts a
    /// transfer of the snapshot when they were compacted away (see
    /// `snapshot_transfer.rs`); returns the last slot served.
    pub(super) fn on_learn(&mut self, from: NodeId, from_slot: Slot) -> Option<Slot> {
        if from_slot <= self.compacted {
            return self.serve_snapshot(from);
        }
        // A peer may be ahead of this node (a new leader asks a random peer,
        // or a lagging one): there is nothing to serve, and an empty range
        // must not reach `BTreeMap::range`, which panics on start > end.
        if from_slot > self.chosen_upto {
            return None;
        }
        let mut entries: Vec<Chosen<C>> = Vec::new();
        let mut bytes = 0;
        for (slot, value) in self
            .chosen
            .range(from_slot..=self.chosen_upto)
            .take(self.config.learn_batch_max)
        {
            let value_bytes = value.encoded_bytes();
            if !entries.is_empty() && bytes + value_bytes > self.config.message_bytes_max {
                break;
            }
            bytes += value_bytes;
            entries.push(Chosen {
                slot: *slot,
                value: value.clone(),
            });
        }
        let last = entries.last().map(|entry| entry.slot);
        if !entries.is_empty() {
            self.send(from, Message::Chosen { entries });
        }
        last
    }

    pub(super) fn on_chosen(&mut self, entries: Vec<Chosen<C>>) {
        let mut learned = false;
        for Chosen { slot, value } in entries {
            if slot <= self.chosen_upto {
                continue;
            }
            if let Role::Leading(leading) = &mut self.role {
                // A newer leader may have chosen another value for a slot this
                // (stale) leader proposed: its commands will never apply here.
                if let Some(inflight) = leading.inflight.remove(&slot) {
                    if inflight.value != value {
                        self.ready
                            .abandoned
                            .extend(inflight.value.proposals().iter().map(|proposal| proposal.id));
                    }
                }
            }
            self.leader_chosen_upto = self.leader_chosen_upto.max(slot);
            self.record_chosen(slot, value);
            learned = true;
        }
        if learned {
            self.advance();
            if self.chosen_upto < self.leader_chosen_upto {
                self.learn_asked_at = None;
                self.ask_learn();
            }
        }
    }

    /// Installs a peer's snapshot, decoded, when it is ahead of what this
    /// replica applied.
    pub(super) fn on_snapshot(&mut self, slot: Slot, data: Arc<Vec<u8>>, config: Arc<Configuration>) {
        if slot <= self.applied {
            return;
        }
        let ended = self.configuration().clone();
        if let Role::Leading(leading) = &mut self.role {
            let kept = leading.inflight.split_off(&(slot + 1));
            for (_, inflight) in std::mem::replace(&mut leading.inflight, kept) {
                self.ready
                    .abandoned
                    .extend(inflight.value.proposals().iter().map(|proposal| proposal.id));
            }
        }
        // This node's own commands known chosen but not yet applied are
        // covered by the snapshot and will never be applied here one by one:
        // their callers must hear that the outcome is unknown to this node.
        let overtaken: Vec<Value<C>> = self
            .chosen
            .range(self.applied + 1..=slot)
            .map(|(_, value)| value.clone())
            .collect();
        self.abandon_own(overtaken.iter());
        self.forget_upto(slot);
        self.snapshot = Some(data.clone());
        self.chosen_upto = self.chosen_upto.max(slot);
        self.applied = slot;
        self.leader_chosen_upto = self.leader_chosen_upto.max(slot);
        self.configs = vec![(slot, config.clone())];
        self.ready.persist.push(Persist::Snapshot {
            slot,
            data: data.clone(),
            config: config.clone(),
        });
        self.ready.apply.push(Apply::Snapshot { slot, data });
        self.learn_asked_at = None;
        if config.epoch > ended.epoch {
            // The snapshot covers a stop-sign: what this node knew chosen
            // after it came from the ended configuration, and its role there
            // is over.
            let void = self.chosen.split_off(&slot.next());
            self.abandon_own(void.values());
            self.chosen_upto = slot;
            self.leader_chosen_upto = slot;
            self.commit_scanned = None;
            self.step_down();
        }
        self.note_if_removed();
        self.advance();
    }

    /// This node's own commands in `values`, known chosen, will never be
    /// applied here one by one (a snapshot covers them, or they were
    /// decided after a stop-sign, by a configuration that had ended): their
    /// callers must hear that the outcome is unknown to this node.
    pub(super) fn abandon_own<'a>(&mut self, values: impl Iterator<Item = &'a Value<C>>)
    where
        C: 'a,
    {
        let own = self.config.id;
        let ids = values
            .flat_map(|value| value.proposals())
            .filter(|proposal| proposal.id.node == own)
            .map(|proposal| proposal.id);
        self.ready.abandoned.extend(ids);
    }

    /// Drops every record at or below `slot`, which a snapshot now covers.
    pub(super) fn forget_upto(&mut self, slot: Slot) {
        self.forget_configurations_upto(slot);
        self.compacted = slot;
        self.accepted = self.accepted.split_off(&(slot + 1));
        self.chosen = self.chosen.split_off(&(slot + 1));
    }
}
