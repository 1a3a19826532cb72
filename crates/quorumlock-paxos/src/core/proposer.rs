//! The leader (distinguished proposer): finishes phase 1 by re-proposing
//! what it recovered, then runs phase 2 only — batching queued commands into
//! slots, keeping many slots in flight, counting votes, heartbeating, and
//! confirming read barriers with a quorum.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;

use super::message::Message;
use super::ready::Persist;
use super::types::{Accepted, Ballot, Command, ReadId, Slot, Value};
use super::{InFlight, Leading, PendingRead, Preparing, Replica, Role};
use quorumlock_core::consensus::NodeId;

/// Most slots one `Accept` message carries (recovery can re-propose many).
pub const ACCEPT_ENTRIES_MAX: usize = 512;

impl<C: Command> Replica<C> {
    /// Phase 1 succeeded at `preparing.ballot`: recover every slot above the
    /// highest chosen prefix any promiser reported, fill holes with no-ops,
    /// and start leading.
    pub(super) fn become_leader(&mut self, preparing: Preparing<C>) {
        let ballot = preparing.ballot;
        assert_eq!(self.promised, ballot, "a leader holds its own promise");

        // Slots up to the best chosen prefix are chosen: learn them, never
        // re-propose them (their records may be compacted on some promisers).
        let (max_chosen, source) = preparing
            .promises
            .iter()
            .map(|(node, (chosen_upto, _))| (*chosen_upto, *node))
            .max()
            .expect("a quorum is never empty");
        // This node may have learned past its own promise's prefix during
        // phase 1, and then resent Prepare with a later `from_slot`:
        // acceptors answering that omit every slot below it, so those slots
        // must count as chosen here or they would be filled with no-ops.
        let max_chosen = max_chosen.max(self.chosen_upto);
        let mut recovered: BTreeMap<Slot, Accepted<C>> = BTreeMap::new();
        for (_, accepted) in preparing.promises.into_values() {
            for (slot, record) in accepted {
                // A record of an earlier epoch lies after that epoch's
                // stop-sign (every slot up to it is chosen here): void.
                if slot <= max_chosen || record.ballot.epoch != ballot.epoch {
                    continue;
                }
                match recovered.get(&slot) {
                    Some(existing) if existing.ballot >= record.ballot => {}
                    _ => {
                        recovered.insert(slot, record);
                    }
                }
            }
        }
        let last = recovered
            .last_key_value()
            .map_or(Slot::ZERO, |(slot, _)| *slot)
            .max(max_chosen)
            .max(self.chosen_upto);

        // A change recovered here may be chosen: like its proposer, this
        // leader assigns no slot after a stop-sign until it is decided. A
        // leader that has yet to learn the chosen prefix may not know the
        // configuration the change was made from, so it takes any change
        // for a stop-sign: a slot it assigned after a real one would be
        // void, and its commands never applied.
        let current = self.configuration().clone();
        let behind = max_chosen > self.chosen_upto;
        let reconfiguring_at = recovered
            .iter()
            .rev()
            .find_map(|(slot, record)| match &record.value {
                Value::Reconfigure(next) => Some((*slot, behind || current.ends_with(next))),
                _ => None,
            });
        self.leader = Some(ballot);
        self.failed_elections = 0;
        let heard_at = self.peers().map(|peer| (peer, self.now)).collect();
        self.role = Role::Leading(Box::new(Leading {
            ballot,
            next_slot: last.next(),
            inflight: BTreeMap::new(),
            queue: VecDeque::new(),
            round: 0,
            round_for_reads: None,
            acked_round: BTreeMap::new(),
            heard_at,
            reads: Vec::new(),
            next_heartbeat_at: self.now + self.config.heartbeat_ticks,
            next_quorum_check_at: self.now + self.config.election_ticks,
            learn_progress: (self.chosen_upto, self.now),
            matched: BTreeMap::new(),
            acked_at: BTreeMap::new(),
            elected_at: self.now,
            pushed: BTreeMap::new(),
            reconfigure: None,
            reconfiguring_at,
        }));

        if max_chosen > self.chosen_upto {
            self.leader_chosen_upto = self.leader_chosen_upto.max(max_chosen);
            self.learn_source = Some(source);
            self.ask_learn();
        }
        let mut entries = Vec::new();
        for slot in max_chosen.after_through(last) {
            let value = recovered.remove(&slot).map_or(Value::Noop, |record| record.value);
            self.accept_own(slot, value.clone());
            entries.push((slot, value));
        }
        self.broadcast_accepts(ballot, entries);
        self.send_round();
        self.check_chosen();
    }

    /// Cuts queued proposals into slots while the pipeline has room.
    pub(super) fn flush_proposals(&mut self) {
        let (batch_max, bytes_max, inflight_max) = (
            self.config.batch_proposals_max,
            self.config.slot_bytes_max,
            self.config.inflight_slots_max,
        );
        let reconfiguration = self.take_reconfiguration_slot();
        let Role::Leading(leading) = &mut self.role else {
            return;
        };
        let ballot = leading.ballot;
        let mut new_slots: Vec<(Slot, Value<C>)> = reconfiguration.into_iter().collect();
        // Nothing follows a stop-sign of this epoch: the queue waits, and is
        // refused (to be retried at the next leader) once it is chosen.
        let stopped = leading.reconfiguring_at.is_some_and(|(_, ends)| ends);
        // The slots cut here enter `inflight` only below, so count them too.
        while !stopped && !leading.queue.is_empty() && leading.inflight.len() + new_slots.len() < inflight_max
        {
            let mut batch = Vec::new();
            let mut bytes = 0;
            while let Some(next) = leading.queue.front() {
                let next_bytes = next.encoded_bytes();
                if batch.len() == batch_max || (!batch.is_empty() && bytes + next_bytes > bytes_max) {
                    break;
                }
                bytes += next_bytes;
                batch.extend(leading.queue.pop_front());
            }
            let slot = leading.next_slot;
            leading.next_slot += 1;
            new_slots.push((slot, Value::Batch(Arc::new(batch))));
        }
        if new_slots.is_empty() {
            return;
        }
        for (slot, value) in &new_slots {
            self.accept_own(*slot, value.clone());
        }
        self.broadcast_accepts(ballot, new_slots);
        self.check_chosen();
    }

    /// The leader's own acceptance of its proposal: persisted in the Ready
    /// being accumulated, and counted as a vote once that Ready is durable.
    fn accept_own(&mut self, slot: Slot, value: Value<C>) {
        let own_vote_after = self.current_ready();
        let Role::Leading(leading) = &mut self.role else {
            unreachable!("only a leader proposes");
        };
        let ballot = leading.ballot;
        assert!(
            slot > self.chosen_upto,
            "slot {slot} is proposed though slots up to {} are chosen",
            self.chosen_upto
        );
        let replaced = leading.inflight.insert(
            slot,
            InFlight {
                value: value.clone(),
                votes: BTreeSet::new(),
                own_vote_after: Some(own_vote_after),
            },
        );
        assert!(
            replaced.is_none(),
            "slot {slot} is proposed twice at ballot {ballot}"
        );
        let record = Accepted { ballot, value };
        self.ready.persist.push(Persist::Accept {
            slot,
            accepted: record.clone(),
        });
        self.accepted.insert(slot, record);
    }

    /// Counts the leader's own votes whose records are durable.
    pub(super) fn count_own_votes(&mut self) {
        let (id, durable_through) = (self.config.id, self.durable_through);
        let Role::Leading(leading) = &mut self.role else {
            return;
        };
        let mut counted = false;
        for inflight in leading.inflight.values_mut() {
            if inflight
                .own_vote_after
                .is_some_and(|number| number <= durable_through)
            {
                inflight.own_vote_after = None;
                inflight.votes.insert(id);
                counted = true;
            }
        }
        if counted {
            self.check_chosen();
        }
    }

    fn broadcast_accepts(&mut self, ballot: Ballot, entries: Vec<(Slot, Value<C>)>) {
        for chunk in chunk_entries(entries, self.config.message_bytes_max) {
            self.broadcast(Message::Accept {
                ballot,
                entries: chunk,
                chosen_upto: self.chosen_upto,
            });
        }
    }

    /// The leader's state when this node leads at `ballot`, having noted
    /// that `from` answered it; `None` for an answer to another ballot.
    fn answered_at(&mut self, from: NodeId, ballot: Ballot) -> Option<&mut Leading<C>> {
        let now = self.now;
        match &mut self.role {
            Role::Leading(leading) if leading.ballot == ballot => {
                leading.heard_at.insert(from, now);
                Some(leading)
            }
            _ => None,
        }
    }

    pub(super) fn on_accepted(&mut self, from: NodeId, ballot: Ballot, slots: Vec<Slot>) {
        let Some(leading) = self.answered_at(from, ballot) else {
            return;
        };
        for slot in slots {
            if let Some(inflight) = leading.inflight.get_mut(&slot) {
                inflight.votes.insert(from);
            }
        }
        self.check_chosen();
    }

    /// Moves every slot with a quorum of votes to chosen.
    fn check_chosen(&mut self) {
        let majority = self.majority();
        let Role::Leading(leading) = &mut self.role else {
            return;
        };
        let done: Vec<Slot> = leading
            .inflight
            .iter()
            .filter(|(_, inflight)| inflight.votes.len() >= majority)
            .map(|(slot, _)| *slot)
            .collect();
        if done.is_empty() {
            return;
        }
        let chosen: Vec<(Slot, Value<C>)> = done
            .into_iter()
            .map(|slot| (slot, leading.inflight.remove(&slot).expect("listed above").value))
            .collect();
        for (slot, value) in chosen {
            self.record_chosen(slot, value);
        }
        self.advance();
    }

    pub(super) fn tick_leader(&mut self) {
        let now = self.now;
        let (heartbeat_ticks, election_ticks, majority) = (
            self.config.heartbeat_ticks,
            self.config.election_ticks,
            self.majority(),
        );
        let Role::Leading(leading) = &mut self.role else {
            return;
        };
        if now >= leading.next_quorum_check_at {
            // Check quorum: a leader that heard from no majority within an
            // election timeout steps down so that clients look elsewhere.
            let since = now.saturating_sub(election_ticks);
            let heard = leading.heard_at.values().filter(|at| **at >= since).count() + 1;
            leading.next_quorum_check_at = now + election_ticks;
            if heard < majority {
                tracing::warn!(
                    node = %self.config.id,
                    heard,
                    "leader lost touch with a quorum; stepping down"
                );
                self.step_down();
                return;
            }
        }
        if self.chosen_upto != leading.learn_progress.0 {
            leading.learn_progress = (self.chosen_upto, now);
        } else if self.chosen_upto < self.leader_chosen_upto
            && now - leading.learn_progress.1 >= election_ticks
        {
            // Phase 1 reported slots chosen that no peer can serve any more:
            // the promiser that knew them restarted, and knowing a slot chosen
            // is not durable (its accepted records are). A fresh phase 1 asks
            // the acceptors again and re-proposes those slots from their
            // records, which a leader may not do at its current ballot
            // because its promises omitted them.
            tracing::warn!(
                node = %self.config.id,
                chosen_upto = %self.chosen_upto,
                reported = %self.leader_chosen_upto,
                "leader cannot learn slots reported chosen; stepping down"
            );
            self.step_down();
            return;
        }
        if now >= leading.next_heartbeat_at {
            leading.next_heartbeat_at = now + heartbeat_ticks;
            // Accepts and their answers may be lost: resend what each peer
            // has not voted for.
            let ballot = leading.ballot;
            let mut resend: BTreeMap<NodeId, Vec<(Slot, Value<C>)>> = BTreeMap::new();
            let id = self.config.id;
            let voters = self.configs.last().expect("never empty").1.clone();
            for (slot, inflight) in &leading.inflight {
                for peer in voters
                    .voters
                    .iter()
                    .filter(|peer| **peer != id && !inflight.votes.contains(peer))
                {
                    resend
                        .entry(*peer)
                        .or_default()
                        .push((*slot, inflight.value.clone()));
                }
            }
            let chosen_upto = self.chosen_upto;
            for (peer, entries) in resend {
                for chunk in chunk_entries(entries, self.config.message_bytes_max) {
                    self.send(
                        peer,
                        Message::Accept {
                            ballot,
                            entries: chunk,
                            chosen_upto,
                        },
                    );
                }
            }
            self.send_round();
            self.push_to_new_learners();
        }
    }

    /// Sends a heartbeat round; its quorum of acknowledgements confirms
    /// leadership for reads that began before it.
    fn send_round(&mut self) {
        let Role::Leading(leading) = &mut self.role else {
            return;
        };
        leading.round += 1;
        let message = Message::Heartbeat {
            ballot: leading.ballot,
            chosen_upto: self.chosen_upto,
            seq: leading.round,
        };
        // Learners hear every round too: it is how they learn the chosen
        // prefix and report how far they have caught up.
        let learners: Vec<NodeId> = self.configuration().learners.iter().copied().collect();
        for learner in learners {
            self.send(learner, message.clone());
        }
        self.broadcast(message);
        self.confirm_reads();
    }

    pub(super) fn on_heartbeat_ack(&mut self, from: NodeId, ballot: Ballot, seq: u64, chosen_upto: Slot) {
        let voter = self.configuration().voters.contains(&from);
        match &mut self.role {
            Role::Leading(leading) if leading.ballot == ballot => {
                leading.matched.insert(from, chosen_upto);
                leading.acked_at.insert(from, self.now);
            }
            _ => return,
        }
        // A learner's answer confirms nothing: only voters make a quorum.
        if !voter {
            return;
        }
        let Some(leading) = self.answered_at(from, ballot) else {
            return;
        };
        let acked = leading.acked_round.entry(from).or_insert(0);
        *acked = (*acked).max(seq);
        self.confirm_reads();
    }

    /// A read barrier: its index is every slot assigned so far (which covers
    /// every command acknowledged before the read began, including those
    /// recovered in phase 1); it waits for a heartbeat round sent after it
    /// began to reach a quorum, then for apply to reach the index.
    pub(super) fn start_read(&mut self, id: ReadId) {
        let Role::Leading(leading) = &mut self.role else {
            self.ready.reads_failed.push(id);
            return;
        };
        let index = leading.next_slot.prev();
        let start_round = leading.round_for_reads.is_none();
        // A round already in flight began before this read: wait for the next.
        let round = leading.round + 1;
        leading.reads.push(PendingRead {
            id,
            round,
            index,
            confirmed: false,
        });
        if start_round {
            leading.round_for_reads = Some(round);
            self.send_round();
        }
    }

    /// Confirms reads whose round reached a quorum and releases those
    /// whose index is applied; starts the next round for reads still waiting.
    pub(super) fn confirm_reads(&mut self) {
        let majority = self.majority();
        let applied = self.applied;
        let Role::Leading(leading) = &mut self.role else {
            return;
        };
        if leading.reads.is_empty() {
            leading.round_for_reads = None;
            return;
        }
        // The highest round acknowledged by a quorum (this node acknowledges
        // every round it sent).
        let mut acked: Vec<u64> = leading.acked_round.values().copied().collect();
        acked.push(leading.round);
        acked.sort_unstable_by(|a, b| b.cmp(a));
        let quorum_round = acked.get(majority - 1).copied().unwrap_or(0);
        for read in &mut leading.reads {
            if read.round <= quorum_round {
                read.confirmed = true;
            }
        }
        let ready = &mut self.ready.reads_ready;
        leading.reads.retain(|read| {
            let done = read.confirmed && read.index <= applied;
            if done {
                ready.push(read.id);
            }
            !done
        });
        if leading.round_for_reads.is_some_and(|round| round <= quorum_round) {
            leading.round_for_reads = None;
        }
        let waiting = leading.reads.iter().any(|read| !read.confirmed);
        if waiting && leading.round_for_reads.is_none() {
            leading.round_for_reads = Some(leading.round + 1);
            self.send_round();
        }
    }
}

/// Splits a run of slots into messages of at most [`ACCEPT_ENTRIES_MAX`]
/// entries and `bytes_max` bytes of values; a value larger than `bytes_max`
/// travels alone.
fn chunk_entries<C: Command>(entries: Vec<(Slot, Value<C>)>, bytes_max: usize) -> Vec<Vec<(Slot, Value<C>)>> {
    let mut chunks = Vec::new();
    let mut chunk = Vec::new();
    let mut bytes = 0;
    for (slot, value) in entries {
        let value_bytes = value.encoded_bytes();
        if chunk.len() == ACCEPT_ENTRIES_MAX || (!chunk.is_empty() && bytes + value_bytes > bytes_max) {
            chunks.push(std::mem::take(&mut chunk));
            bytes = 0;
        }
        bytes += value_bytes;
        chunk.push((slot, value));
    }
    if !chunk.is_empty() {
        chunks.push(chunk);
    }
    chunks
}
