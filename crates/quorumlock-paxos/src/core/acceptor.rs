//! The acceptor: promises and accepts, each made durable (through
//! [`Persist`]) before the reply that depends on it leaves — the replies go
//! out as persisted messages (see [`super::ready`]).

use super::message::Message;
use super::ready::Persist;
use super::types::{Accepted, Ballot, Command, Slot, Value};
use super::Replica;
use quorumlock_core::consensus::NodeId;

impl<C: Command> Replica<C> {
    /// Phase 1b. A ballot at or above the promise gets a promise (again, if
    /// the Prepare was duplicated) carrying what this acceptor accepted above
    /// the slots it knows chosen; a lower one gets a Nack.
    pub(super) fn on_prepare(&mut self, from: NodeId, ballot: Ballot, from_slot: Slot) {
        if self.refuse_below_promise(from, ballot) {
            return;
        }
        if ballot > self.promised {
            self.raise_promise(ballot);
            // A candidate is at work: give it an election timeout before
            // competing, and stop following the old leader.
            self.leader = None;
            self.reset_election_timer();
        }
        assert!(
            self.promised >= ballot,
            "a promise is never below the ballot it answers"
        );
        let above = from_slot.prev().max(self.chosen_upto);
        let accepted = self
            .accepted
            .range(above.next()..)
            .map(|(slot, record)| (*slot, record.clone()))
            .collect();
        self.send_after_persist(
            from,
            Message::Promise {
                ballot,
                chosen_upto: self.chosen_upto,
                accepted,
            },
        );
    }

    /// Phase 2b for a run of slots; also how a follower learns of its
    /// leader and of the leader's chosen prefix.
    pub(super) fn on_accept(
        &mut self,
        from: NodeId,
        ballot: Ballot,
        entries: Vec<(Slot, Value<C>)>,
        leader_chosen_upto: Slot,
    ) {
        if self.refuse_below_promise(from, ballot) {
            return;
        }
        if ballot > self.promised {
            self.raise_promise(ballot);
        }
        self.follow(ballot);
        let mut slots = Vec::with_capacity(entries.len());
        for (slot, value) in entries {
            slots.push(slot);
            // A slot known chosen keeps its chosen value: the leader's value
            // for it is necessarily the same, so voting needs no record.
            if slot <= self.chosen_upto {
                continue;
            }
            if self
                .accepted
                .get(&slot)
                .is_some_and(|record| record.ballot == ballot)
            {
                // A duplicate of a record already handed to storage; the
                // answer waits for it like any other.
                continue;
            }
            let record = Accepted { ballot, value };
            self.ready.persist.push(Persist::Accept {
                slot,
                accepted: record.clone(),
            });
            self.accepted.insert(slot, record);
        }
        self.send_after_persist(from, Message::Accepted { ballot, slots });
        self.observe_leader_commit(ballot, leader_chosen_upto);
    }

    /// Raises the promise (durably) and gives up any role at a lower ballot.
    pub(super) fn raise_promise(&mut self, ballot: Ballot) {
        assert!(
            ballot > self.promised,
            "promises only rise: {ballot} is not above {}",
            self.promised
        );
        self.promised = ballot;
        self.ready.persist.push(Persist::Promise(ballot));
        if self.role.ballot().is_some_and(|own| own < ballot) {
            self.step_down();
        }
    }

    /// Notes `ballot` as seen and, when it is below the promise, answers
    /// with a Nack carrying the promise. Returns whether it was refused.
    pub(super) fn refuse_below_promise(&mut self, from: NodeId, ballot: Ballot) -> bool {
        self.max_seen = self.max_seen.max(ballot);
        let refused = ballot < self.promised;
        if refused {
            self.nack(from, ballot);
        }
        refused
    }

    /// Tells `to` that `ballot` is below this acceptor's promise. A Nack may
    /// leave before the promise it reports is durable: it only makes a
    /// proposer give up, which is safe whatever this node later remembers.
    pub(super) fn nack(&mut self, to: NodeId, ballot: Ballot) {
        let promised = self.promised;
        self.send(to, Message::Nack { ballot, promised });
    }
}
