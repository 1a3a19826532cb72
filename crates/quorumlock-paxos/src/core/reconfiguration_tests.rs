//! Tests of membership changes by stop-sign, one property per test.
//!
//! They run several replicas on [`Net`], a loss-free network with instant
//! disks that delivers every message in send order, so each test states a
//! scenario and its outcome rather than one Ready at a time (the exact
//! Readys of the protocol proper are in `tests.rs`).

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;

use super::message::{Envelope, Message};
use super::ready::{Apply, Refusal};
use super::types::{Ballot, Chosen, Configuration, Proposal, ProposalId, Slot, Value};
use super::{ConfigurationChange, DurableState, ReconfigurationRefused, Replica, ReplicaConfig};
use quorumlock_core::consensus::NodeId;

type Replica1 = Replica<u64>;

const HEARTBEAT_TICKS: u64 = 2;
const ELECTION_TICKS: u64 = 10;
/// Ticks any scenario step gets to happen.
const TICKS_MAX: u64 = 400;

fn n(id: u64) -> NodeId {
    NodeId::new(id)
}

/// Replicas on a loss-free network; nodes in `down` neither tick nor
/// receive.
struct Net {
    replicas: BTreeMap<u64, Replica1>,
    down: BTreeSet<u64>,
    /// What each node applied: slot, and the commands of the slot.
    applied: BTreeMap<u64, Vec<(Slot, Vec<u64>)>>,
    /// Refusals each node reported, by proposal sequence number.
    refused: BTreeMap<u64, Vec<(u64, Refusal)>>,
    seq: u64,
}

impl Net {
    /// Nodes `1..=size` of a new cluster.
    fn new(size: u64) -> Net {
        let mut net = Net {
            replicas: BTreeMap::new(),
            down: BTreeSet::new(),
            applied: BTreeMap::new(),
            refused: BTreeMap::new(),
            seq: 0,
        };
        let members: BTreeSet<NodeId> = (1..=size).map(n).collect();
        for id in 1..=size {
            let config = ReplicaConfig::new(n(id), members.clone(), HEARTBEAT_TICKS, ELECTION_TICKS);
            net.replicas
                .insert(id, Replica::new(config, DurableState::default()));
        }
        net
    }

    /// Starts node `id` with an empty disk and no configuration, as a node
    /// that joins a running cluster.
    fn join(&mut self, id: u64) {
        let config = ReplicaConfig::new(n(id), BTreeSet::new(), HEARTBEAT_TICKS, ELECTION_TICKS);
        self.replicas
            .insert(id, Replica::new(config, DurableState::default()));
    }

    fn replica(&self, id: u64) -> &Replica1 {
        &self.replicas[&id]
    }

    /// Executes every Ready and delivers every message until all is quiet.
    fn settle(&mut self) {
        let mut queue: VecDeque<Envelope<u64>> = VecDeque::new();
        loop {
            for (id, replica) in &mut self.replicas {
                if self.down.contains(id) {
                    continue;
                }
                while replica.has_ready() {
                    let ready = replica.take_ready();
                    replica.on_persisted(ready.number);
                    queue.extend(ready.messages);
                    queue.extend(ready.persisted_messages);
                    for step in ready.apply {
                        if let Apply::Chosen(chosen) = step {
                            let commands = chosen.value.proposals().iter().map(|p| p.command).collect();
                            self.applied.entry(*id).or_default().push((chosen.slot, commands));
                        }
                    }
                    for (proposal, refusal) in ready.refused {
                        self.refused.entry(*id).or_default().push((proposal.seq, refusal));
                    }
                    if let Some(received) = ready.snapshot_received {
                        // As the driver does once it decoded it.
                        replica.install_snapshot(received.slot, received.data, received.config);
                    }
                    if replica.epoch_snapshot_due() {
                        // As the driver does: the new epoch starts from a
                        // snapshot of the stop-sign (its bytes do not
                        // matter here).
                        let applied = replica.applied();
                        replica.compact(applied, Arc::new(Vec::new()));
                    }
                }
            }
            let Some(envelope) = queue.pop_front() else {
                return;
            };
            let to = envelope.to.get();
            if self.down.contains(&to) || self.down.contains(&envelope.from.get()) {
                continue;
            }
            if let Some(replica) = self.replicas.get_mut(&to) {
                replica.step(envelope.from, envelope.message);
            }
        }
    }

    fn tick(&mut self) {
        for (id, replica) in &mut self.replicas {
            if !self.down.contains(id) {
                replica.tick();
            }
        }
        self.settle();
    }

    /// Ticks until `done` holds; panics naming `what` when it never does.
    fn until(&mut self, what: &str, done: impl Fn(&Net) -> bool) {
        for _ in 0..TICKS_MAX {
            if done(self) {
                return;
            }
            self.tick();
        }
        panic!("{what}: not within {TICKS_MAX} ticks");
    }

    fn leader(&self) -> Option<u64> {
        self.replicas
            .iter()
            .find(|(id, replica)| !self.down.contains(id) && replica.is_leader())
            .map(|(id, _)| *id)
    }

    fn elected(&mut self) -> u64 {
        self.until("a leader is elected", |net| net.leader().is_some());
        self.leader().expect("checked")
    }

    /// Proposes the next client command on `node`; returns its command.
    fn propose(&mut self, node: u64) -> u64 {
        self.seq += 1;
        let command = 1_000 + self.seq;
        self.replicas
            .get_mut(&node)
            .expect("a node of the net")
            .propose(Proposal {
                id: ProposalId {
                    node: n(node),
                    boot: 0,
                    seq: self.seq,
                },
                command,
            });
        self.settle();
        command
    }

    /// Proposes a command on the leader and waits until `node` applied it.
    fn commit(&mut self, node: u64) -> u64 {
        let leader = self.elected();
        let command = self.propose(leader);
        self.until("the command is applied", |net| net.has_applied(node, command));
        command
    }

    fn has_applied(&self, node: u64, command: u64) -> bool {
        self.applied
            .get(&node)
            .is_some_and(|slots| slots.iter().any(|(_, commands)| commands.contains(&command)))
    }

    /// Asks the leader for `change` and waits until every running member
    /// of the resulting configuration has it in force.
    fn change(&mut self, change: ConfigurationChange) -> Arc<Configuration> {
        if let ConfigurationChange::Promote { id } = change {
            // The leader promotes a learner that acknowledged its progress.
            self.until("the learner reports its progress", |net| {
                net.leader().is_some_and(|leader| {
                    net.replica(leader)
                        .member_progress()
                        .iter()
                        .any(|(member, _)| *member == id)
                })
            });
        }
        let leader = self.elected();
        let next = self
            .replicas
            .get_mut(&leader)
            .expect("the leader runs")
            .propose_reconfiguration(change)
            .expect("the change is accepted for proposal");
        self.settle();
        let version = next.version;
        let members: Vec<u64> = next
            .voters
            .iter()
            .chain(&next.learners)
            .map(|id| id.get())
            .filter(|id| !self.down.contains(id))
            .collect();
        self.until("the change is in force on every member", |net| {
            members
                .iter()
                .all(|id| net.replica(*id).configuration().version >= version)
        });
        next
    }

    fn refusal(&mut self, node: u64, change: ConfigurationChange) -> String {
        match self
            .replicas
            .get_mut(&node)
            .expect("a node of the net")
            .propose_reconfiguration(change)
        {
            Ok(next) => panic!("the change was accepted: {next:?}"),
            Err(ReconfigurationRefused::Refused(why)) => why,
            Err(not_leader) => panic!("refused as {not_leader:?}"),
        }
    }
}

fn ids(ids: &[u64]) -> BTreeSet<NodeId> {
    ids.iter().copied().map(n).collect()
}

#[test]
fn a_joining_node_catches_up_as_a_learner_and_votes_once_promoted() {
    let mut net = Net::new(3);
    let before: Vec<u64> = (0..5).map(|_| net.commit(1)).collect();
    net.join(4);
    let added = net.change(ConfigurationChange::AddLearner {
        id: n(4),
        addr: "node-4".to_string(),
    });
    assert_eq!((added.epoch, added.learners.clone()), (0, ids(&[4])));
    net.until("the learner applied what was chosen before it joined", |net| {
        before.iter().all(|command| net.has_applied(4, *command))
    });
    assert!(!net.replica(4).is_voter());

    let promoted = net.change(ConfigurationChange::Promote { id: n(4) });
    assert_eq!((promoted.epoch, promoted.voters.clone()), (1, ids(&[1, 2, 3, 4])));
    assert!(net.replica(4).is_voter());
    // Remove node 3 and stop node 2: the two voters left of {1, 2, 4} are a
    // majority only because node 4 votes.
    net.change(ConfigurationChange::Remove { id: n(3) });
    net.down.insert(2);
    let after = net.commit(4);
    assert!(net.has_applied(1, after));
    assert_eq!(net.replica(1).configuration().voters, ids(&[1, 2, 4]));
}

#[test]
fn a_demoted_voter_counts_toward_no_quorum_until_promoted_again() {
    let mut net = Net::new(3);
    net.commit(1);
    let leader = net.elected();
    let victim = if leader == 3 { 2 } else { 3 };
    let other = (1..=3).find(|id| *id != leader && *id != victim).unwrap();
    // The victim lost its disk: it comes back empty, as a joining node.
    net.down.insert(victim);
    let demoted = net.change(ConfigurationChange::Demote { id: n(victim) });
    assert_eq!(demoted.epoch, 1, "a demotion is a stop-sign");
    assert!(demoted.learners.contains(&n(victim)) && !demoted.voters.contains(&n(victim)));
    assert!(!demoted.retired.contains(&n(victim)), "its id is not retired");
    net.join(victim);
    net.down.remove(&victim);
    let after = net.commit(leader);
    net.until("the demoted node caught up as a learner", |net| {
        net.has_applied(victim, after)
    });
    assert!(!net.replica(victim).is_voter());
    // With the other voter down, the leader and the learner are no quorum.
    net.down.insert(other);
    let pending = net.propose(leader);
    for _ in 0..ELECTION_TICKS {
        net.tick();
    }
    assert!(
        (1..=3).all(|id| !net.has_applied(id, pending)),
        "a learner's acknowledgment chooses nothing"
    );
    net.down.remove(&other);
    net.until("the pending command is chosen once the voter is back", |net| {
        net.has_applied(other, pending)
    });
    let promoted = net.change(ConfigurationChange::Promote { id: n(victim) });
    assert_eq!(promoted.voters, ids(&[1, 2, 3]));
    // With the other voter down, a command is chosen only because the
    // promoted node accepts it: 2 of 3.
    net.down.insert(other);
    let last = net.commit(victim);
    assert!(net.has_applied(victim, last));
}

#[test]
fn a_voter_only_is_demoted_and_never_the_last_one() {
    let mut net = Net::new(1);
    net.commit(1);
    assert_eq!(
        net.refusal(1, ConfigurationChange::Demote { id: n(1) }),
        "node 1 is the last voter"
    );
    net.join(2);
    net.change(ConfigurationChange::AddLearner {
        id: n(2),
        addr: "node-2".to_string(),
    });
    assert_eq!(
        net.refusal(1, ConfigurationChange::Demote { id: n(2) }),
        "node 2 is not a voter"
    );
}

#[test]
fn every_replica_applies_the_same_slots_across_a_change_of_voters() {
    let mut net = Net::new(3);
    for _ in 0..3 {
        net.commit(1);
    }
    net.join(4);
    net.change(ConfigurationChange::AddLearner {
        id: n(4),
        addr: "node-4".to_string(),
    });
    net.change(ConfigurationChange::Promote { id: n(4) });
    let last = net.commit(1);
    net.until("every node applied the last command", |net| {
        (1..=4).all(|id| net.has_applied(id, last))
    });
    // Whatever slot two nodes applied one by one (a node may skip some
    // under a snapshot), they applied the same commands there.
    let mut seen: BTreeMap<Slot, (u64, &Vec<u64>)> = BTreeMap::new();
    for (id, applied) in &net.applied {
        for (slot, commands) in applied {
            let (first, known) = *seen.entry(*slot).or_insert((*id, commands));
            assert_eq!(
                known, commands,
                "nodes {first} and {id} applied other commands at slot {slot}"
            );
        }
    }
}

#[test]
fn a_removed_voter_learns_its_removal_and_takes_part_in_nothing() {
    let mut net = Net::new(3);
    net.commit(1);
    let leader = net.elected();
    let victim = if leader == 3 { 2 } else { 3 };
    let next = net.change(ConfigurationChange::Remove { id: n(victim) });
    assert!(next.retired.contains(&n(victim)));
    net.until("the removed node learns the stop-sign", |net| {
        net.replica(victim).removed().is_some()
    });
    let why = net.replica(victim).removed().expect("checked").to_string();
    assert!(why.contains(&format!("node {victim} was removed")), "{why}");
    // It neither elects nor answers any more.
    let replica = net.replicas.get_mut(&victim).expect("still running");
    for _ in 0..8 * ELECTION_TICKS {
        replica.tick();
        let ready = replica.take_ready();
        assert!(ready.messages.is_empty() && ready.persisted_messages.is_empty());
        replica.on_persisted(ready.number);
    }
    replica.step(
        n(leader),
        Message::Heartbeat {
            ballot: Ballot::ZERO.next_for(next.epoch, n(leader)),
            chosen_upto: Slot::new(1),
            seq: 99,
        },
    );
    assert!(replica.take_ready().is_empty());
    // The two voters left go on alone.
    let command = net.commit(leader);
    let other = (1..=3)
        .find(|id| *id != leader && *id != victim)
        .expect("three nodes");
    net.until("the remaining voter applied it", |net| {
        net.has_applied(other, command)
    });
    assert!(!net.has_applied(victim, command));
}

#[test]
fn the_leader_can_remove_itself_and_the_rest_elect_a_new_one() {
    let mut net = Net::new(3);
    net.commit(1);
    let leader = net.elected();
    net.change(ConfigurationChange::Remove { id: n(leader) });
    assert!(net.replica(leader).removed().is_some());
    let next = net.elected();
    assert_ne!(next, leader);
    assert_eq!(net.replica(next).configuration().epoch, 1);
    net.commit(next);
}

#[test]
fn a_second_change_while_one_is_in_flight_is_refused() {
    let mut net = Net::new(3);
    let leader = net.elected();
    net.join(4);
    net.down.insert(4);
    let replica = net.replicas.get_mut(&leader).expect("the leader runs");
    replica
        .propose_reconfiguration(ConfigurationChange::AddLearner {
            id: n(4),
            addr: "node-4".to_string(),
        })
        .expect("the first change is proposed");
    let why = net.refusal(leader, ConfigurationChange::Remove { id: n(2) });
    assert!(why.contains("another membership change is in progress"), "{why}");
}

#[test]
fn changes_that_cannot_be_made_are_refused_naming_why() {
    let mut net = Net::new(3);
    net.commit(1);
    let leader = net.elected();
    let follower = (1..=3).find(|id| *id != leader).expect("three nodes");
    match net
        .replicas
        .get_mut(&follower)
        .expect("runs")
        .propose_reconfiguration(ConfigurationChange::Remove { id: n(leader) })
    {
        Err(ReconfigurationRefused::NotLeader { leader: named }) => assert_eq!(named, Some(n(leader))),
        other => panic!("a follower proposed a change: {other:?}"),
    }
    let why = net.refusal(
        leader,
        ConfigurationChange::AddLearner {
            id: n(follower),
            addr: "x".to_string(),
        },
    );
    assert!(why.contains("already a member"), "{why}");
    let why = net.refusal(leader, ConfigurationChange::Promote { id: n(7) });
    assert!(why.contains("not a learner"), "{why}");
    let why = net.refusal(leader, ConfigurationChange::Promote { id: n(follower) });
    assert!(why.contains("already a voter"), "{why}");
    let why = net.refusal(leader, ConfigurationChange::Remove { id: n(7) });
    assert!(why.contains("not a member"), "{why}");

    // A learner that never answered is not promoted.
    net.down.insert(5);
    net.join(5);
    net.change(ConfigurationChange::AddLearner {
        id: n(5),
        addr: "node-5".to_string(),
    });
    let leader = net.elected();
    let why = net.refusal(leader, ConfigurationChange::Promote { id: n(5) });
    assert!(why.contains("has not acknowledged any entry"), "{why}");

    // A removed id is never reused.
    net.change(ConfigurationChange::Remove { id: n(5) });
    let leader = net.elected();
    let why = net.refusal(
        leader,
        ConfigurationChange::AddLearner {
            id: n(5),
            addr: "node-5".to_string(),
        },
    );
    assert!(why.contains("never reused"), "{why}");
}

#[test]
fn the_last_voter_is_not_removed() {
    let mut net = Net::new(1);
    let leader = net.elected();
    let why = net.refusal(leader, ConfigurationChange::Remove { id: n(1) });
    assert!(why.contains("last voter"), "{why}");
}

/// The configuration of version 1 that adds learner `id`.
fn adding(id: u64) -> Arc<Configuration> {
    let mut next = Configuration::initial(ids(&[1, 2, 3]), BTreeMap::new());
    next.version = 1;
    next.learners.insert(n(id));
    next.addresses.insert(n(id), format!("node-{id}"));
    Arc::new(next)
}

fn chosen(slot: u64, value: Value<u64>) -> Chosen<u64> {
    Chosen {
        slot: Slot::new(slot),
        value,
    }
}

#[test]
fn a_stale_change_chosen_after_another_one_has_no_effect() {
    let mut net = Net::new(3);
    // Two leaders each proposed a change from version 0; both were chosen,
    // at slots 1 and 2.
    let follower = net.replicas.get_mut(&2).expect("runs");
    follower.step(
        n(1),
        Message::Chosen {
            entries: vec![
                chosen(1, Value::Reconfigure(adding(4))),
                chosen(2, Value::Reconfigure(adding(5))),
            ],
        },
    );
    assert_eq!(follower.chosen_upto(), Slot::new(2));
    let config = follower.configuration();
    assert_eq!((config.version, config.learners.clone()), (1, ids(&[4])));
}

#[test]
fn a_stop_sign_is_the_last_slot_its_configuration_decides() {
    let mut net = Net::new(3);
    let mut promote = Configuration::initial(ids(&[1, 2, 3]), BTreeMap::new());
    promote.version = 1;
    promote.epoch = 1;
    promote.voters.insert(n(4));
    let follower = net.replicas.get_mut(&2).expect("runs");
    // A value told chosen after the stop-sign is the old configuration's
    // and void; the slot is decided again by the new epoch.
    let batch = Value::Batch(Arc::new(vec![Proposal {
        id: ProposalId {
            node: n(1),
            boot: 0,
            seq: 1,
        },
        command: 7,
    }]));
    follower.step(
        n(1),
        Message::Chosen {
            entries: vec![chosen(1, Value::Reconfigure(Arc::new(promote))), chosen(2, batch)],
        },
    );
    assert_eq!(follower.chosen_upto(), Slot::new(1));
    assert_eq!(follower.configuration().epoch, 1);
    let ready = follower.take_ready();
    assert!(
        ready
            .apply
            .iter()
            .all(|step| matches!(step, Apply::Chosen(chosen) if chosen.slot == Slot::new(1))),
        "applied beyond the stop-sign: {:?}",
        ready.apply
    );
}

#[test]
fn a_member_of_an_ended_epoch_is_told_so_and_its_ballots_are_refused() {
    let mut net = Net::new(3);
    net.commit(1);
    net.join(4);
    net.change(ConfigurationChange::AddLearner {
        id: n(4),
        addr: "node-4".to_string(),
    });
    net.change(ConfigurationChange::Promote { id: n(4) });
    let epoch = net.replica(1).configuration().epoch;
    assert_eq!(epoch, 1);
    // A prepare at any round of epoch 0, as from a member that slept
    // through the stop-sign, is answered with the epoch that ended it.
    let replica = net.replicas.get_mut(&1).expect("runs");
    replica.take_ready();
    let old = Ballot {
        epoch: 0,
        round: 1_000,
        node: n(2),
    };
    replica.step(
        n(2),
        Message::Prepare {
            ballot: old,
            from_slot: Slot::new(1),
        },
    );
    let ready = replica.take_ready();
    assert!(
        ready.persist.is_empty(),
        "promised an ended epoch: {:?}",
        ready.persist
    );
    assert_eq!(
        ready.messages,
        vec![Envelope {
            from: n(1),
            to: n(2),
            message: Message::EpochEnded { epoch },
        }]
    );
}

#[test]
fn a_nodes_terms_rise_across_epochs_although_rounds_start_again() {
    let node = NodeId::new(2);
    let old_epoch = Ballot {
        epoch: 0,
        round: 7,
        node,
    };
    // The round starts again at 1 in the next epoch; the term must not
    // repeat or fall, or a lease keeper could take the new leadership
    // period for the old one.
    let mut ballot = old_epoch.next_for(1, node);
    assert_eq!(ballot.round, 1);
    assert!(ballot.term() > old_epoch.term());
    for _ in 0..3 {
        let next = ballot.next_for(1, node);
        assert!(next.term() > ballot.term(), "{next} after {ballot}");
        ballot = next;
    }
    assert_eq!(old_epoch.term(), 7, "epoch 0 terms are the rounds");
}
