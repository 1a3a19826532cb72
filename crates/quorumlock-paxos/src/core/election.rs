//! Leader election: pre-vote probes, phase 1 collection, leader stickiness,
//! and backoff after a lost election.
//!
//! A follower that hears its leader (heartbeats or accepts at a ballot at
//! least its promise) never starts an election. When the leader goes quiet
//! for a randomized timeout, the follower first *probes*: peers grant only if
//! they have not heard a live leader either. Only a majority of grants lets
//! it raise its ballot and run phase 1, so a node cut off from the cluster
//! cannot disturb a healthy leader when it returns.

use std::collections::{BTreeMap, BTreeSet};

use super::message::Message;
use super::ready::Persist;
use super::types::{Accepted, Ballot, Command, Slot};
use super::{Preparing, Replica, Role};
use quorumlock_core::consensus::NodeId;

impl<C: Command> Replica<C> {
    pub(super) fn tick_role(&mut self) {
        match &mut self.role {
            Role::Follower => {
                if self.now >= self.election_at {
                    if self.promised.epoch > self.configuration().epoch {
                        // Promised in a later configuration than it knows
                        // (restarted from an older snapshot): it catches up
                        // before it may stand.
                        self.reset_election_timer();
                        self.leader_chosen_upto = self.leader_chosen_upto.max(self.chosen_upto + 1);
                    } else if self.is_voter() {
                        self.start_probe();
                    }
                }
            }
            Role::Probing { deadline, .. } => {
                if self.now >= *deadline {
                    self.lose_election();
                }
            }
            Role::Preparing(preparing) => {
                if self.now >= preparing.deadline {
                    self.lose_election();
                } else if (preparing.deadline - self.now) % self.config.heartbeat_ticks == 0 {
                    // Prepares and promises may be lost: ask again.
                    let ballot = preparing.ballot;
                    let missing: Vec<NodeId> = self
                        .peers()
                        .filter(|peer| !preparing_has(&self.role, *peer))
                        .collect();
                    let from_slot = self.chosen_upto + 1;
                    for peer in missing {
                        self.send_after_persist(peer, Message::Prepare { ballot, from_slot });
                    }
                }
            }
            Role::Leading(_) => self.tick_leader(),
        }
    }

    /// True when this node has a live leader (itself included).
    pub(super) fn hears_leader(&self) -> bool {
        match self.role {
            Role::Leading(_) => true,
            _ => self.leader.is_some() && self.now - self.leader_heard_at < self.config.election_ticks,
        }
    }

    /// A message from the leader at `ballot` arrived; its ballot is not
    /// below this node's promise (the caller checked).
    pub(super) fn follow(&mut self, ballot: Ballot) {
        assert!(
            ballot >= self.promised,
            "a leader below the promise is refused, not followed"
        );
        match &self.role {
            // Our own leadership or phase 1: promised == own ballot, so an
            // equal ballot is ours and a different one would have been refused.
            Role::Leading(leading) if leading.ballot == ballot => return,
            Role::Preparing(preparing) if preparing.ballot == ballot => return,
            // A late message from a leader older than the one followed
            // changes nothing: the newer ballot is the live one.
            Role::Follower if self.leader.is_some_and(|followed| followed > ballot) => return,
            Role::Follower => {}
            // A live leader makes a probe (which promised nothing) moot, and
            // a higher ballot ends a lower leadership or phase 1.
            _ => self.step_down(),
        }
        self.leader = Some(ballot);
        self.leader_heard_at = self.now;
        self.failed_elections = 0;
        self.reset_election_timer();
    }

    /// Heartbeat from a leader: follow it, acknowledge, and learn its
    /// chosen prefix.
    pub(super) fn on_heartbeat(&mut self, from: NodeId, ballot: Ballot, chosen_upto: Slot, seq: u64) {
        if self.refuse_below_promise(from, ballot) {
            return;
        }
        self.follow(ballot);
        self.observe_leader_commit(ballot, chosen_upto);
        // A node that knows no configuration yet has no address to answer.
        if self.configuration().has(from) {
            let chosen_upto = self.chosen_upto;
            self.send(
                from,
                Message::HeartbeatAck {
                    ballot,
                    seq,
                    chosen_upto,
                },
            );
        }
    }

    pub(super) fn on_probe(&mut self, from: NodeId, ballot: Ballot) {
        self.max_seen = self.max_seen.max(ballot);
        if ballot <= self.promised {
            self.nack(from, ballot);
            return;
        }
        let granted = !self.hears_leader();
        self.send(from, Message::ProbeReply { ballot, granted });
    }

    pub(super) fn on_probe_reply(&mut self, from: NodeId, ballot: Ballot, granted: bool) {
        if let Role::Probing {
            ballot: probing,
            granted: grants,
            ..
        } = &mut self.role
        {
            if *probing == ballot && granted {
                grants.insert(from);
            }
        }
        self.maybe_finish_probe();
    }

    /// A refusal: someone promised a higher ballot than ours.
    pub(super) fn on_nack(&mut self, from: NodeId, ballot: Ballot, promised: Ballot) {
        if promised.epoch > self.configuration().epoch {
            // The acceptor promised in a configuration this node has not
            // reached yet.
            self.catch_up_with(from);
            return;
        }
        self.max_seen = self.max_seen.max(promised);
        if self.role.ballot() == Some(ballot) && promised > ballot {
            let was_leading = matches!(self.role, Role::Leading(_));
            self.step_down();
            if !was_leading {
                self.failed_elections += 1;
                self.reset_election_timer();
            }
        }
    }

    pub(super) fn on_promise(
        &mut self,
        from: NodeId,
        ballot: Ballot,
        chosen_upto: Slot,
        accepted: Vec<(Slot, Accepted<C>)>,
    ) {
        if let Role::Preparing(preparing) = &mut self.role {
            if preparing.ballot == ballot {
                preparing.promises.insert(from, (chosen_upto, accepted));
            }
        }
        self.maybe_finish_prepare();
    }

    fn start_probe(&mut self) {
        let epoch = self.configuration().epoch;
        let ballot = self.max_seen.max(self.promised).next_for(epoch, self.config.id);
        self.leader = None;
        self.role = Role::Probing {
            ballot,
            granted: BTreeSet::from([self.config.id]),
            deadline: self.now + self.phase_ticks(),
        };
        self.broadcast(Message::Probe { ballot });
        self.maybe_finish_probe();
    }

    fn maybe_finish_probe(&mut self) {
        let majority = self.majority();
        if let Role::Probing { granted, .. } = &self.role {
            if granted.len() >= majority {
                self.start_prepare();
            }
        }
    }

    /// Phase 1a. The promise of its own ballot is persisted first: the
    /// Prepares leave only once it is durable, so a restarted node can never
    /// run a second phase 1 at a ballot peers already promised, and its own
    /// promise counts once the same Ready is durable.
    fn start_prepare(&mut self) {
        let epoch = self.configuration().epoch;
        let ballot = self.max_seen.max(self.promised).next_for(epoch, self.config.id);
        assert!(ballot > self.promised, "a new ballot is above every promise");
        self.max_seen = ballot;
        self.promised = ballot;
        self.ready.persist.push(Persist::Promise(ballot));
        let own: Vec<(Slot, Accepted<C>)> = self
            .accepted
            .range(self.chosen_upto + 1..)
            .map(|(slot, record)| (*slot, record.clone()))
            .collect();
        self.role = Role::Preparing(Preparing {
            ballot,
            promises: BTreeMap::new(),
            own_promise: Some((self.current_ready(), (self.chosen_upto, own))),
            deadline: self.now + self.phase_ticks(),
        });
        let from_slot = self.chosen_upto + 1;
        self.broadcast_after_persist(Message::Prepare { ballot, from_slot });
    }

    /// Counts this node's promise of its own ballot once it is durable.
    pub(super) fn count_own_promise(&mut self) {
        let durable_through = self.durable_through;
        let id = self.config.id;
        let Role::Preparing(preparing) = &mut self.role else {
            return;
        };
        if preparing
            .own_promise
            .as_ref()
            .is_some_and(|(number, _)| *number <= durable_through)
        {
            let (_, promise) = preparing.own_promise.take().expect("checked above");
            preparing.promises.insert(id, promise);
            self.maybe_finish_prepare();
        }
    }

    fn maybe_finish_prepare(&mut self) {
        let majority = self.majority();
        let done = matches!(&self.role, Role::Preparing(preparing) if preparing.promises.len() >= majority);
        if done {
            let Role::Preparing(preparing) = std::mem::replace(&mut self.role, Role::Follower) else {
                unreachable!("checked above");
            };
            self.become_leader(preparing);
        }
    }

    fn lose_election(&mut self) {
        self.role = Role::Follower;
        self.failed_elections += 1;
        self.reset_election_timer();
    }

    /// Leaves any role for follower: a leader abandons what it had in
    /// flight, fails its reads and refuses its queue.
    pub(super) fn step_down(&mut self) {
        if let Role::Leading(leading) = std::mem::replace(&mut self.role, Role::Follower) {
            let leading = *leading;
            for (_, inflight) in leading.inflight {
                self.ready
                    .abandoned
                    .extend(inflight.value.proposals().iter().map(|proposal| proposal.id));
            }
            for proposal in leading.queue {
                self.ready
                    .refused
                    .push((proposal.id, super::ready::Refusal::NotLeader { leader: None }));
            }
            self.ready
                .reads_failed
                .extend(leading.reads.into_iter().map(|read| read.id));
        }
        self.leader = None;
        self.reset_election_timer();
    }
}

fn preparing_has<C>(role: &Role<C>, peer: NodeId) -> bool {
    matches!(role, Role::Preparing(preparing) if preparing.promises.contains_key(&peer))
}
