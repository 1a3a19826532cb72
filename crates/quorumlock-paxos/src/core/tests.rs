//! Unit tests of the Multi-Paxos core, one property per test.
//!
//! Each test drives one replica through `step`, `tick`, `propose` or `read`
//! and asserts the exact [`Ready`] it asks its driver to execute: the records
//! to persist, the messages to send at once and those held until the persist
//! is durable, what to apply and whom to answer. A message a test plays
//! "from" a peer is whatever that peer could have sent.
//!
//! Most tests take each Ready with [`take`], which also reports it durable
//! at once, as a driver with an instant disk would; the tests of the
//! durability contract take Readys raw and report them durable by hand.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use super::message::{Envelope, Message};
use super::ready::{Apply, Persist, Ready, ReceivedSnapshot, Refusal};
use super::types::{Accepted, Ballot, Chosen, Configuration, Proposal, ProposalId, Slot, Value};
use super::{DurableState, Replica, ReplicaConfig};
use quorumlock_core::consensus::NodeId;

/// The tests order plain numbers.
type Command = u64;
type Replica1 = Replica<Command>;
type Ready1 = Ready<Command>;

const HEARTBEAT_TICKS: u64 = 2;
const ELECTION_TICKS: u64 = 10;

/// Node `id`.
fn n(id: u64) -> NodeId {
    NodeId::new(id)
}

fn ballot(round: u64, node: u64) -> Ballot {
    Ballot {
        epoch: 0,
        round,
        node: n(node),
    }
}

/// The first configuration of a 3-node cluster.
fn three() -> Arc<Configuration> {
    Arc::new(Configuration::initial((1..=3).map(n).collect(), BTreeMap::new()))
}

fn config(id: u64, size: u64) -> ReplicaConfig {
    let members: BTreeSet<NodeId> = (1..=size).map(n).collect();
    ReplicaConfig::new(n(id), members, HEARTBEAT_TICKS, ELECTION_TICKS)
}

/// Takes the replica's Ready and reports it durable at once; the Ready
/// comes back numbered 0, so that tests compare only its effects.
fn take(replica: &mut Replica1) -> Ready1 {
    let mut ready = replica.take_ready();
    replica.on_persisted(ready.number);
    ready.number = 0;
    ready
}

/// `from`'s whole snapshot at `slot` in one chunk.
fn whole_snapshot(slot: Slot, data: &[u8]) -> Message<Command> {
    Message::SnapshotChunk {
        slot,
        offset: 0,
        total: data.len() as u64,
        data: data.to_vec(),
        config: three(),
    }
}

/// Delivers `from`'s whole snapshot at `slot` in one chunk; the replica
/// hands it out to be decoded, and gets it back decoded as a driver would
/// hand it back.
fn deliver_snapshot(replica: &mut Replica1, from: u64, slot: Slot, data: &Arc<Vec<u8>>) {
    replica.step(n(from), whole_snapshot(slot, data));
    let ready = take(replica);
    assert_eq!(
        ready,
        Ready {
            snapshot_received: Some(ReceivedSnapshot {
                slot,
                data: data.clone(),
                config: three(),
            }),
            ..Ready::default()
        },
        "a whole snapshot is handed out to be decoded, nothing else"
    );
    replica.install_snapshot(slot, data.clone(), three());
}

fn fresh(id: u64) -> Replica1 {
    Replica::new(config(id, 3), DurableState::default())
}

/// A client command of node 1, told apart by `seq`.
fn proposal(seq: u64) -> Proposal<Command> {
    Proposal {
        id: ProposalId {
            node: NodeId::new(1),
            boot: 0,
            seq,
        },
        command: 1_000 + seq,
    }
}

fn batch(seqs: &[u64]) -> Value<Command> {
    Value::Batch(Arc::new(seqs.iter().map(|seq| proposal(*seq)).collect()))
}

fn accepted(at: Ballot, value: Value<Command>) -> Accepted<Command> {
    Accepted { ballot: at, value }
}

fn envelope(from: u64, to: u64, message: Message<Command>) -> Envelope<Command> {
    Envelope {
        from: n(from),
        to: n(to),
        message,
    }
}

/// The same message from `from` to each of `to`, in order.
fn to_each(from: u64, to: &[u64], message: Message<Command>) -> Vec<Envelope<Command>> {
    to.iter()
        .map(|peer| envelope(from, *peer, message.clone()))
        .collect()
}

/// Ticks until the election timeout fires and returns the probe's ready
/// and the number of ticks it took.
fn tick_until_probe(replica: &mut Replica1) -> (Ready1, u64) {
    for ticks in 1..=8 * ELECTION_TICKS {
        replica.tick();
        let ready = take(replica);
        if !ready.is_empty() {
            return (ready, ticks);
        }
    }
    panic!("no election within {} ticks", 8 * ELECTION_TICKS);
}

/// A promise as a peer sends it: sender, chosen prefix, accepted values.
type PromiseFrom = (u64, Slot, Vec<(Slot, Accepted<Command>)>);

/// Makes node 1 of three the leader: it probes, node 2 grants, and the
/// given promises arrive. Returns the ready of the last promise.
fn elect(replica: &mut Replica1, promises: Vec<PromiseFrom>) -> Ready1 {
    let (probe, _) = tick_until_probe(replica);
    let Message::Probe { ballot: probed } = probe.messages[0].message else {
        panic!("the first election message is a probe: {probe:?}");
    };
    replica.step(
        NodeId::new(2),
        Message::ProbeReply {
            ballot: probed,
            granted: true,
        },
    );
    take(replica);
    let mut last = Ready1::default();
    for (from, chosen_upto, accepted) in promises {
        replica.step(
            n(from),
            Message::Promise {
                ballot: replica.promised(),
                chosen_upto,
                accepted,
            },
        );
        last = take(replica);
    }
    last
}

/// Node 1 leading three nodes at ballot 1.1 on an empty log, with the
/// election's effects drained.
fn leader_with(config: ReplicaConfig) -> Replica1 {
    let mut replica = Replica::new(config, DurableState::default());
    elect(&mut replica, vec![(2, Slot::new(0), Vec::new())]);
    assert!(replica.is_leader(), "node 1 won with node 2's promise");
    replica
}

fn leader() -> Replica1 {
    leader_with(config(1, 3))
}

fn accept_message(at: Ballot, entries: Vec<(Slot, Value<Command>)>, chosen_upto: Slot) -> Message<Command> {
    Message::Accept {
        ballot: at,
        entries,
        chosen_upto,
    }
}

fn persist_accepts(at: Ballot, entries: &[(Slot, Value<Command>)]) -> Vec<Persist<Command>> {
    entries
        .iter()
        .map(|(slot, value)| Persist::Accept {
            slot: *slot,
            accepted: accepted(at, value.clone()),
        })
        .collect()
}

fn chosen(slot: Slot, value: Value<Command>) -> Apply<Command> {
    Apply::Chosen(Chosen { slot, value })
}

// ---- Election ----------------------------------------------------------

#[test]
fn election_timeout_probes_every_peer_and_persists_nothing() {
    let mut replica = fresh(1);
    let (ready, ticks) = tick_until_probe(&mut replica);
    assert!(
        (ELECTION_TICKS..2 * ELECTION_TICKS).contains(&ticks),
        "the timeout is drawn from [min, 2·min): took {ticks}"
    );
    assert_eq!(
        ready,
        Ready {
            messages: to_each(1, &[2, 3], Message::Probe { ballot: ballot(1, 1) }),
            ..Ready::default()
        }
    );
    assert_eq!(replica.promised(), Ballot::ZERO, "a probe promises nothing");
}

#[test]
fn a_majority_of_probe_grants_persists_the_promise_before_preparing() {
    let mut replica = fresh(1);
    tick_until_probe(&mut replica);
    replica.step(
        NodeId::new(2),
        Message::ProbeReply {
            ballot: ballot(1, 1),
            granted: true,
        },
    );
    assert_eq!(
        take(&mut replica),
        Ready {
            persist: vec![Persist::Promise(ballot(1, 1))],
            persisted_messages: to_each(
                1,
                &[2, 3],
                Message::Prepare {
                    ballot: ballot(1, 1),
                    from_slot: Slot::new(1),
                }
            ),
            ..Ready::default()
        }
    );
}

#[test]
fn a_refused_probe_starts_no_phase_one() {
    let mut replica = fresh(1);
    tick_until_probe(&mut replica);
    replica.step(
        NodeId::new(2),
        Message::ProbeReply {
            ballot: ballot(1, 1),
            granted: false,
        },
    );
    assert_eq!(take(&mut replica), Ready::default());
    assert_eq!(replica.promised(), Ballot::ZERO);
}

#[test]
fn leader_stickiness_a_probe_is_refused_while_a_live_leader_is_heard() {
    let mut follower = fresh(2);
    follower.step(
        NodeId::new(1),
        Message::Heartbeat {
            ballot: ballot(1, 1),
            chosen_upto: Slot::new(0),
            seq: 1,
        },
    );
    take(&mut follower);
    follower.step(NodeId::new(3), Message::Probe { ballot: ballot(2, 3) });
    assert_eq!(
        take(&mut follower),
        Ready {
            messages: vec![envelope(
                2,
                3,
                Message::ProbeReply {
                    ballot: ballot(2, 3),
                    granted: false,
                }
            )],
            ..Ready::default()
        },
        "a follower that hears its leader does not help depose it"
    );
}

#[test]
fn a_probe_is_granted_once_the_leader_fell_silent() {
    let mut follower = fresh(2);
    follower.step(
        NodeId::new(1),
        Message::Heartbeat {
            ballot: ballot(1, 1),
            chosen_upto: Slot::new(0),
            seq: 1,
        },
    );
    for _ in 0..ELECTION_TICKS {
        follower.tick();
    }
    take(&mut follower);
    follower.step(NodeId::new(3), Message::Probe { ballot: ballot(2, 3) });
    let ready = take(&mut follower);
    assert_eq!(
        ready.messages,
        vec![envelope(
            2,
            3,
            Message::ProbeReply {
                ballot: ballot(2, 3),
                granted: true,
            }
        )]
    );
    assert!(ready.persist.is_empty(), "granting a probe promises nothing");
}

// ---- Acceptor ----------------------------------------------------------

#[test]
fn prepare_below_the_promise_is_nacked_with_the_promise() {
    let mut acceptor = fresh(2);
    acceptor.step(
        NodeId::new(1),
        Message::Prepare {
            ballot: ballot(3, 1),
            from_slot: Slot::new(1),
        },
    );
    take(&mut acceptor);
    acceptor.step(
        NodeId::new(3),
        Message::Prepare {
            ballot: ballot(2, 3),
            from_slot: Slot::new(1),
        },
    );
    assert_eq!(
        take(&mut acceptor),
        Ready {
            messages: vec![envelope(
                2,
                3,
                Message::Nack {
                    ballot: ballot(2, 3),
                    promised: ballot(3, 1),
                }
            )],
            ..Ready::default()
        }
    );
}

#[test]
fn prepare_above_the_promise_persists_it_then_promises_values_above_the_chosen_prefix() {
    let (x, y, z) = (batch(&[1]), batch(&[2]), batch(&[3]));
    let durable = DurableState {
        promised: ballot(1, 1),
        accepted: BTreeMap::from([
            (Slot::new(1), accepted(ballot(1, 1), x.clone())),
            (Slot::new(2), accepted(ballot(1, 1), y.clone())),
            (Slot::new(3), accepted(ballot(1, 1), z.clone())),
        ]),
        snapshot: None,
        snapshot_config: None,
    };
    let mut acceptor = Replica::new(config(2, 3), durable);
    // The leader at 1.1 announces slot 1 chosen: the acceptor holds its value.
    acceptor.step(
        NodeId::new(1),
        Message::Heartbeat {
            ballot: ballot(1, 1),
            chosen_upto: Slot::new(1),
            seq: 1,
        },
    );
    assert_eq!(take(&mut acceptor).apply, vec![chosen(Slot::new(1), x)]);

    acceptor.step(
        NodeId::new(3),
        Message::Prepare {
            ballot: ballot(2, 3),
            from_slot: Slot::new(1),
        },
    );
    assert_eq!(
        take(&mut acceptor),
        Ready {
            persist: vec![Persist::Promise(ballot(2, 3))],
            persisted_messages: vec![envelope(
                2,
                3,
                Message::Promise {
                    ballot: ballot(2, 3),
                    chosen_upto: Slot::new(1),
                    accepted: vec![
                        (Slot::new(2), accepted(ballot(1, 1), y)),
                        (Slot::new(3), accepted(ballot(1, 1), z))
                    ],
                }
            )],
            ..Ready::default()
        }
    );
}

#[test]
fn a_duplicate_prepare_is_promised_again_without_a_second_persist() {
    let mut acceptor = fresh(2);
    let prepare = Message::Prepare {
        ballot: ballot(1, 1),
        from_slot: Slot::new(1),
    };
    acceptor.step(NodeId::new(1), prepare.clone());
    let first = take(&mut acceptor);
    assert_eq!(first.persist, vec![Persist::Promise(ballot(1, 1))]);
    acceptor.step(NodeId::new(1), prepare);
    assert_eq!(
        take(&mut acceptor),
        Ready {
            persisted_messages: first.persisted_messages,
            ..Ready::default()
        }
    );
}

#[test]
fn accept_persists_the_record_before_answering_accepted() {
    let mut acceptor = fresh(2);
    let value = batch(&[1, 2]);
    acceptor.step(
        NodeId::new(1),
        accept_message(ballot(1, 1), vec![(Slot::new(1), value.clone())], Slot::new(0)),
    );
    assert_eq!(
        take(&mut acceptor),
        Ready {
            persist: vec![
                Persist::Promise(ballot(1, 1)),
                Persist::Accept {
                    slot: Slot::new(1),
                    accepted: accepted(ballot(1, 1), value),
                },
            ],
            persisted_messages: vec![envelope(
                2,
                1,
                Message::Accepted {
                    ballot: ballot(1, 1),
                    slots: vec![Slot::new(1)],
                }
            )],
            ..Ready::default()
        }
    );
}

#[test]
fn a_duplicate_accept_is_acknowledged_without_a_second_persist() {
    let mut acceptor = fresh(2);
    let message = accept_message(ballot(1, 1), vec![(Slot::new(1), batch(&[1]))], Slot::new(0));
    acceptor.step(NodeId::new(1), message.clone());
    let first = take(&mut acceptor);
    assert_eq!(first.persist.len(), 2);
    acceptor.step(NodeId::new(1), message);
    assert_eq!(
        take(&mut acceptor),
        Ready {
            persisted_messages: first.persisted_messages,
            ..Ready::default()
        }
    );
}

#[test]
fn accept_below_the_promise_is_nacked_and_not_recorded() {
    let mut acceptor = fresh(2);
    acceptor.step(
        NodeId::new(3),
        Message::Prepare {
            ballot: ballot(2, 3),
            from_slot: Slot::new(1),
        },
    );
    take(&mut acceptor);
    acceptor.step(
        NodeId::new(1),
        accept_message(ballot(1, 1), vec![(Slot::new(1), batch(&[1]))], Slot::new(0)),
    );
    assert_eq!(
        take(&mut acceptor),
        Ready {
            messages: vec![envelope(
                2,
                1,
                Message::Nack {
                    ballot: ballot(1, 1),
                    promised: ballot(2, 3),
                }
            )],
            ..Ready::default()
        }
    );
    assert_eq!(acceptor.accepted_at(Slot::new(1)), None);
}

// ---- Leader: phase 1 recovery, batching, pipelining, commit ------------

#[test]
fn new_leader_reproposes_the_highest_ballot_value_per_slot_and_fills_holes_with_noops() {
    let (old, newer, only) = (batch(&[1]), batch(&[2]), batch(&[3]));
    let durable = DurableState {
        promised: ballot(1, 3),
        accepted: BTreeMap::from([(Slot::new(1), accepted(ballot(1, 2), old))]),
        snapshot: None,
        snapshot_config: None,
    };
    let mut replica = Replica::new(config(1, 3), durable);
    let ready = elect(
        &mut replica,
        vec![(
            2,
            Slot::new(0),
            vec![
                (Slot::new(1), accepted(ballot(1, 3), newer.clone())),
                (Slot::new(3), accepted(ballot(1, 2), only.clone())),
            ],
        )],
    );
    let own = ballot(2, 1);
    let entries = vec![
        (Slot::new(1), newer),
        (Slot::new(2), Value::Noop),
        (Slot::new(3), only),
    ];
    let mut messages = to_each(1, &[2, 3], accept_message(own, entries.clone(), Slot::new(0)));
    messages.extend(to_each(
        1,
        &[2, 3],
        Message::Heartbeat {
            ballot: own,
            chosen_upto: Slot::new(0),
            seq: 1,
        },
    ));
    assert_eq!(
        ready,
        Ready {
            persist: persist_accepts(own, &entries),
            messages,
            ..Ready::default()
        }
    );
    assert!(replica.is_leader());
}

#[test]
fn proposals_batch_into_one_slot_up_to_batch_proposals_max() {
    let mut cfg = config(1, 3);
    cfg.batch_proposals_max = 2;
    let mut leader = leader_with(cfg);
    for seq in 1..=5 {
        leader.propose(proposal(seq));
    }
    let entries = vec![
        (Slot::new(1), batch(&[1, 2])),
        (Slot::new(2), batch(&[3, 4])),
        (Slot::new(3), batch(&[5])),
    ];
    assert_eq!(
        take(&mut leader),
        Ready {
            persist: persist_accepts(ballot(1, 1), &entries),
            messages: to_each(1, &[2, 3], accept_message(ballot(1, 1), entries, Slot::new(0))),
            ..Ready::default()
        }
    );
}

#[test]
fn pipelining_stops_at_inflight_slots_max_and_resumes_when_a_slot_is_chosen() {
    let mut cfg = config(1, 3);
    cfg.batch_proposals_max = 1;
    cfg.inflight_slots_max = 2;
    let mut leader = leader_with(cfg);
    for seq in 1..=4 {
        leader.propose(proposal(seq));
    }
    let first = vec![(Slot::new(1), batch(&[1])), (Slot::new(2), batch(&[2]))];
    assert_eq!(
        take(&mut leader),
        Ready {
            persist: persist_accepts(ballot(1, 1), &first),
            messages: to_each(1, &[2, 3], accept_message(ballot(1, 1), first, Slot::new(0))),
            ..Ready::default()
        }
    );
    leader.step(
        NodeId::new(2),
        Message::Accepted {
            ballot: ballot(1, 1),
            slots: vec![Slot::new(1)],
        },
    );
    let next = vec![(Slot::new(3), batch(&[3]))];
    assert_eq!(
        take(&mut leader),
        Ready {
            persist: persist_accepts(ballot(1, 1), &next),
            messages: to_each(1, &[2, 3], accept_message(ballot(1, 1), next, Slot::new(1))),
            apply: vec![chosen(Slot::new(1), batch(&[1]))],
            ..Ready::default()
        }
    );
}

#[test]
fn chosen_slots_are_applied_in_slot_order_after_a_majority_accepted() {
    let mut leader = leader();
    leader.propose(proposal(1));
    take(&mut leader);
    leader.propose(proposal(2));
    take(&mut leader);
    leader.step(
        NodeId::new(3),
        Message::Accepted {
            ballot: ballot(1, 1),
            slots: vec![Slot::new(2)],
        },
    );
    assert_eq!(take(&mut leader), Ready::default(), "slot 2 waits for slot 1");
    assert_eq!(leader.chosen_upto(), Slot::new(0));
    leader.step(
        NodeId::new(2),
        Message::Accepted {
            ballot: ballot(1, 1),
            slots: vec![Slot::new(1)],
        },
    );
    assert_eq!(
        take(&mut leader),
        Ready {
            apply: vec![
                chosen(Slot::new(1), batch(&[1])),
                chosen(Slot::new(2), batch(&[2]))
            ],
            ..Ready::default()
        }
    );
    assert_eq!(
        (leader.chosen_upto(), leader.applied()),
        (Slot::new(2), Slot::new(2))
    );
}

#[test]
fn accepted_at_another_ballot_is_not_a_vote() {
    let mut leader = leader();
    leader.propose(proposal(1));
    take(&mut leader);
    leader.step(
        NodeId::new(2),
        Message::Accepted {
            ballot: ballot(7, 3),
            slots: vec![Slot::new(1)],
        },
    );
    assert_eq!(take(&mut leader), Ready::default());
    assert_eq!(leader.chosen_upto(), Slot::new(0));
}

#[test]
fn a_follower_refuses_proposals_and_names_its_leader() {
    let mut follower = fresh(2);
    follower.step(
        NodeId::new(1),
        Message::Heartbeat {
            ballot: ballot(1, 1),
            chosen_upto: Slot::new(0),
            seq: 1,
        },
    );
    take(&mut follower);
    let mut command = proposal(1);
    command.id.node = NodeId::new(2);
    follower.propose(command.clone());
    assert_eq!(
        take(&mut follower),
        Ready {
            refused: vec![(
                command.id,
                Refusal::NotLeader {
                    leader: Some(NodeId::new(1))
                }
            )],
            ..Ready::default()
        }
    );
}

#[test]
fn a_full_queue_refuses_as_overloaded() {
    let mut cfg = config(1, 3);
    cfg.queued_proposals_max = 1;
    let mut leader = leader_with(cfg);
    leader.propose(proposal(1));
    leader.propose(proposal(2));
    let ready = take(&mut leader);
    assert_eq!(ready.refused, vec![(proposal(2).id, Refusal::Overloaded)]);
    assert_eq!(
        ready.persist,
        persist_accepts(ballot(1, 1), &[(Slot::new(1), batch(&[1]))])
    );
}

// ---- Learner -----------------------------------------------------------

#[test]
fn a_follower_learns_from_the_heartbeat_only_slots_it_accepted_at_that_ballot() {
    let (x, y) = (batch(&[1]), batch(&[2]));
    let durable = DurableState {
        promised: ballot(1, 3),
        accepted: BTreeMap::from([
            (Slot::new(1), accepted(ballot(1, 3), x.clone())),
            (Slot::new(2), accepted(ballot(1, 2), y)),
        ]),
        snapshot: None,
        snapshot_config: None,
    };
    let mut follower = Replica::new(config(2, 3), durable);
    follower.step(
        NodeId::new(3),
        Message::Heartbeat {
            ballot: ballot(1, 3),
            chosen_upto: Slot::new(2),
            seq: 1,
        },
    );
    assert_eq!(
        take(&mut follower),
        Ready {
            messages: vec![
                envelope(
                    2,
                    3,
                    Message::Learn {
                        from_slot: Slot::new(2)
                    }
                ),
                envelope(
                    2,
                    3,
                    Message::HeartbeatAck {
                        ballot: ballot(1, 3),
                        seq: 1,
                        chosen_upto: Slot::new(1),
                    }
                ),
            ],
            apply: vec![chosen(Slot::new(1), x)],
            ..Ready::default()
        },
        "slot 2 was accepted at 1.2, which the leader at 1.3 may have overridden"
    );
}

#[test]
fn learned_chosen_values_are_applied_in_order() {
    let mut follower = fresh(2);
    follower.step(
        NodeId::new(1),
        Message::Chosen {
            entries: vec![Chosen {
                slot: Slot::new(2),
                value: batch(&[2]),
            }],
        },
    );
    let ready = take(&mut follower);
    assert!(ready.apply.is_empty(), "slot 2 waits for slot 1: {ready:?}");
    follower.step(
        NodeId::new(1),
        Message::Chosen {
            entries: vec![Chosen {
                slot: Slot::new(1),
                value: batch(&[1]),
            }],
        },
    );
    assert_eq!(
        take(&mut follower).apply,
        vec![
            chosen(Slot::new(1), batch(&[1])),
            chosen(Slot::new(2), batch(&[2]))
        ]
    );
}

#[test]
fn a_second_value_told_chosen_for_a_slot_is_kept_out_and_reported_not_applied() {
    let mut follower = fresh(2);
    let told = |follower: &mut Replica1, slot: u64, value: Value<Command>| {
        follower.step(
            NodeId::new(3),
            Message::Chosen {
                entries: vec![Chosen {
                    slot: Slot::new(slot),
                    value,
                }],
            },
        );
        take(follower)
    };
    told(&mut follower, 2, batch(&[2]));
    assert_eq!(follower.agreement_breach(), None, "one value per slot so far");
    told(&mut follower, 2, batch(&[2]));
    assert_eq!(
        follower.agreement_breach(),
        None,
        "the same value again is no breach"
    );
    told(&mut follower, 2, batch(&[9]));
    assert_eq!(
        follower.agreement_breach(),
        Some("slot 2 was reported chosen with two different values")
    );
    assert_eq!(follower.chosen_value(Slot::new(2)), Some(&batch(&[2])));
    assert_eq!(
        told(&mut follower, 1, batch(&[1])).apply,
        vec![
            chosen(Slot::new(1), batch(&[1])),
            chosen(Slot::new(2), batch(&[2]))
        ],
        "the value known first is the one applied"
    );
}

#[test]
fn learn_below_the_compaction_point_is_answered_with_the_snapshot() {
    let data = Arc::new(vec![7, 7, 7]);
    let durable = DurableState {
        snapshot: Some((Slot::new(5), data.clone())),
        ..DurableState::default()
    };
    let mut replica = Replica::new(config(1, 3), durable);
    replica.step(
        NodeId::new(2),
        Message::Learn {
            from_slot: Slot::new(3),
        },
    );
    assert_eq!(
        take(&mut replica),
        Ready {
            messages: vec![envelope(1, 2, whole_snapshot(Slot::new(5), &data))],
            ..Ready::default()
        }
    );
}

#[test]
fn learn_above_the_compaction_point_is_answered_with_chosen_values() {
    let mut cfg = config(1, 3);
    cfg.learn_batch_max = 2;
    let mut leader = leader_with(cfg);
    for seq in 1..=3 {
        leader.propose(proposal(seq));
        take(&mut leader);
        leader.step(
            NodeId::new(2),
            Message::Accepted {
                ballot: ballot(1, 1),
                slots: vec![Slot::new(seq)],
            },
        );
        take(&mut leader);
    }
    leader.compact(Slot::new(1), Arc::new(vec![1]));
    leader.step(
        NodeId::new(3),
        Message::Learn {
            from_slot: Slot::new(2),
        },
    );
    assert_eq!(
        take(&mut leader).messages,
        vec![envelope(
            1,
            3,
            Message::Chosen {
                entries: vec![
                    Chosen {
                        slot: Slot::new(2),
                        value: batch(&[2]),
                    },
                    Chosen {
                        slot: Slot::new(3),
                        value: batch(&[3]),
                    },
                ],
            }
        )],
        "at most learn_batch_max values, from the slot asked for"
    );
}

/// Regression: a `Learn` from a peer ahead of this node made
/// `BTreeMap::range` panic on an inverted range.
#[test]
fn learn_beyond_the_chosen_prefix_is_ignored() {
    let mut leader = leader();
    leader.propose(proposal(1));
    take(&mut leader);
    leader.step(
        NodeId::new(2),
        Message::Accepted {
            ballot: ballot(1, 1),
            slots: vec![Slot::new(1)],
        },
    );
    take(&mut leader);
    // The map of chosen values is not empty, so the range is really built.
    leader.step(
        NodeId::new(2),
        Message::Learn {
            from_slot: Slot::new(2),
        },
    );
    leader.step(
        NodeId::new(2),
        Message::Learn {
            from_slot: Slot::new(9),
        },
    );
    assert_eq!(take(&mut leader), Ready::default());
}

#[test]
fn a_snapshot_ahead_of_apply_replaces_the_applied_prefix() {
    let mut follower = fresh(2);
    let data = Arc::new(vec![1, 2, 3]);
    deliver_snapshot(&mut follower, 1, Slot::new(4), &data);
    assert_eq!(
        take(&mut follower),
        Ready {
            persist: vec![Persist::Snapshot {
                slot: Slot::new(4),
                data: data.clone(),
                config: three()
            }],
            apply: vec![Apply::Snapshot {
                slot: Slot::new(4),
                data
            }],
            ..Ready::default()
        }
    );
    assert_eq!(
        (follower.applied(), follower.compacted()),
        (Slot::new(4), Slot::new(4))
    );
    follower.step(NodeId::new(1), whole_snapshot(Slot::new(3), &[]));
    assert_eq!(
        take(&mut follower),
        Ready::default(),
        "an older snapshot is ignored"
    );
}

// ---- Reads -------------------------------------------------------------

#[test]
fn a_read_is_confirmed_only_by_a_heartbeat_round_sent_after_it_began() {
    let mut leader = leader();
    leader.read(7);
    assert_eq!(
        take(&mut leader),
        Ready {
            messages: to_each(
                1,
                &[2, 3],
                Message::Heartbeat {
                    ballot: ballot(1, 1),
                    chosen_upto: Slot::new(0),
                    seq: 2,
                }
            ),
            ..Ready::default()
        }
    );
    // Round 1 began before the read (at election): its quorum proves nothing.
    leader.step(
        NodeId::new(2),
        Message::HeartbeatAck {
            ballot: ballot(1, 1),
            seq: 1,
            chosen_upto: Slot::ZERO,
        },
    );
    assert_eq!(take(&mut leader), Ready::default());
    leader.step(
        NodeId::new(2),
        Message::HeartbeatAck {
            ballot: ballot(1, 1),
            seq: 2,
            chosen_upto: Slot::ZERO,
        },
    );
    assert_eq!(
        take(&mut leader),
        Ready {
            reads_ready: vec![7],
            ..Ready::default()
        }
    );
}

#[test]
fn a_read_waits_for_apply_to_reach_every_slot_assigned_before_it() {
    let mut leader = leader();
    leader.propose(proposal(1));
    take(&mut leader);
    leader.read(8);
    take(&mut leader);
    leader.step(
        NodeId::new(2),
        Message::HeartbeatAck {
            ballot: ballot(1, 1),
            seq: 2,
            chosen_upto: Slot::ZERO,
        },
    );
    assert_eq!(take(&mut leader), Ready::default(), "slot 1 is not applied yet");
    leader.step(
        NodeId::new(2),
        Message::Accepted {
            ballot: ballot(1, 1),
            slots: vec![Slot::new(1)],
        },
    );
    assert_eq!(
        take(&mut leader),
        Ready {
            apply: vec![chosen(Slot::new(1), batch(&[1]))],
            reads_ready: vec![8],
            ..Ready::default()
        }
    );
}

#[test]
fn a_read_on_a_follower_fails_at_once() {
    let mut follower = fresh(2);
    follower.read(3);
    assert_eq!(
        take(&mut follower),
        Ready {
            reads_failed: vec![3],
            ..Ready::default()
        }
    );
}

// ---- Stepping down -----------------------------------------------------

#[test]
fn a_leader_steps_down_on_a_higher_nack_and_reports_what_it_held() {
    let mut cfg = config(1, 3);
    cfg.batch_proposals_max = 1;
    cfg.inflight_slots_max = 1;
    let mut leader = leader_with(cfg);
    leader.propose(proposal(1));
    leader.propose(proposal(2));
    take(&mut leader);
    leader.read(4);
    take(&mut leader);
    leader.step(
        NodeId::new(2),
        Message::Nack {
            ballot: ballot(1, 1),
            promised: ballot(5, 3),
        },
    );
    assert_eq!(
        take(&mut leader),
        Ready {
            reads_failed: vec![4],
            refused: vec![(proposal(2).id, Refusal::NotLeader { leader: None })],
            abandoned: vec![proposal(1).id],
            ..Ready::default()
        },
        "slot 1 may still be chosen; the queued command never entered the log"
    );
    assert!(!leader.is_leader());
}

#[test]
fn a_nack_for_an_older_ballot_is_ignored() {
    let mut leader = leader();
    leader.step(
        NodeId::new(2),
        Message::Nack {
            ballot: ballot(0, 1),
            promised: ballot(5, 3),
        },
    );
    assert_eq!(take(&mut leader), Ready::default());
    assert!(leader.is_leader());
}

#[test]
fn check_quorum_a_leader_that_hears_no_majority_for_an_election_timeout_steps_down() {
    let mut leader = leader();
    for _ in 0..ELECTION_TICKS {
        assert!(leader.is_leader());
        leader.tick();
    }
    assert!(leader.is_leader(), "peers count as heard at election");
    for _ in 0..ELECTION_TICKS {
        leader.tick();
    }
    assert!(!leader.is_leader());
}

#[test]
fn check_quorum_a_leader_with_acknowledging_peers_stays() {
    let mut leader = leader();
    for tick in 1..=3 * ELECTION_TICKS {
        leader.tick();
        leader.step(
            NodeId::new(2),
            Message::HeartbeatAck {
                ballot: ballot(1, 1),
                seq: tick,
                chosen_upto: Slot::ZERO,
            },
        );
    }
    assert!(leader.is_leader());
}

#[test]
fn a_higher_accept_makes_a_leader_follow() {
    let mut leader = leader();
    leader.propose(proposal(1));
    take(&mut leader);
    leader.step(
        NodeId::new(3),
        accept_message(ballot(2, 3), vec![(Slot::new(1), batch(&[9]))], Slot::new(0)),
    );
    let ready = take(&mut leader);
    assert_eq!(ready.abandoned, vec![proposal(1).id]);
    assert_eq!(
        ready.persist,
        vec![
            Persist::Promise(ballot(2, 3)),
            Persist::Accept {
                slot: Slot::new(1),
                accepted: accepted(ballot(2, 3), batch(&[9])),
            },
        ]
    );
    assert!(!leader.is_leader());
    assert_eq!(leader.leader_id(), Some(n(3)));
}

// ---- Regressions found by the simulation -------------------------------

/// Regression (simulation seed 18774 of 3 replicas): a would-be leader that
/// learned past its own promise's prefix during phase 1 resent Prepare with
/// a later `from_slot`; the answers omitted the slots below it, and the new
/// leader filled those chosen slots with no-ops, breaking agreement.
#[test]
fn a_leader_that_learned_during_phase_one_does_not_refill_chosen_slots() {
    let mut replica = fresh(1);
    tick_until_probe(&mut replica);
    replica.step(
        NodeId::new(2),
        Message::ProbeReply {
            ballot: ballot(1, 1),
            granted: true,
        },
    );
    take(&mut replica);
    // Phase 1 is under way from slot 1 when a snapshot up to slot 5 arrives.
    let data = Arc::new(vec![5]);
    deliver_snapshot(&mut replica, 3, Slot::new(5), &data);
    assert_eq!(
        take(&mut replica).apply,
        vec![Apply::Snapshot {
            slot: Slot::new(5),
            data
        }]
    );
    // Node 2 answers a Prepare resent from slot 6: it omits slots 1..=5.
    replica.step(
        NodeId::new(2),
        Message::Promise {
            ballot: ballot(1, 1),
            chosen_upto: Slot::new(0),
            accepted: Vec::new(),
        },
    );
    let ready = take(&mut replica);
    assert!(replica.is_leader());
    assert_eq!(ready.persist, Vec::new(), "no slot up to 5 is proposed again");
    replica.propose(proposal(1));
    assert_eq!(
        take(&mut replica).persist,
        persist_accepts(ballot(1, 1), &[(Slot::new(6), batch(&[1]))]),
        "new commands go after the known chosen prefix"
    );
}

/// Regression (simulation seed 2755 of 3 replicas): phase 1 reported slots
/// chosen by a promiser that then restarted and forgot it; nobody could
/// serve them and the leader stayed stuck for ever.
#[test]
fn a_leader_that_cannot_learn_slots_reported_chosen_steps_down() {
    let mut replica = fresh(1);
    let ready = elect(&mut replica, vec![(2, Slot::new(3), Vec::new())]);
    assert!(replica.is_leader());
    assert!(
        ready.messages.contains(&envelope(
            1,
            2,
            Message::Learn {
                from_slot: Slot::new(1)
            }
        )),
        "the leader asks the promiser for the slots it reported chosen: {ready:?}"
    );
    for tick in 1..=ELECTION_TICKS {
        assert!(replica.is_leader(), "still trying to learn at tick {tick}");
        replica.tick();
        replica.step(
            NodeId::new(2),
            Message::HeartbeatAck {
                ballot: ballot(1, 1),
                seq: 1,
                chosen_upto: Slot::ZERO,
            },
        );
    }
    assert!(
        !replica.is_leader(),
        "a fresh phase 1 will recover the slots instead"
    );
}

/// The leader keeps leading while catching up makes progress.
#[test]
fn a_leader_that_learns_slowly_keeps_leading() {
    let mut replica = fresh(1);
    elect(&mut replica, vec![(2, Slot::new(3), Vec::new())]);
    for tick in 1..=3 * ELECTION_TICKS {
        replica.tick();
        replica.step(
            NodeId::new(2),
            Message::HeartbeatAck {
                ballot: ballot(1, 1),
                seq: 1,
                chosen_upto: Slot::ZERO,
            },
        );
        if tick % ELECTION_TICKS == ELECTION_TICKS - 1 {
            let slot = tick / ELECTION_TICKS + 1;
            replica.step(
                NodeId::new(2),
                Message::Chosen {
                    entries: vec![Chosen {
                        slot: Slot::new(slot),
                        value: Value::Noop,
                    }],
                },
            );
        }
    }
    assert!(replica.is_leader());
    assert_eq!(replica.chosen_upto(), Slot::new(3));
}

/// Regression (simulation seed 65 of 3 replicas): a stale leader that
/// learned another value for a slot it proposed dropped its commands without
/// reporting them, so their callers waited for ever.
#[test]
fn a_stale_leader_reports_its_commands_abandoned_when_another_value_is_chosen() {
    let mut leader = leader();
    leader.propose(proposal(1));
    take(&mut leader);
    leader.step(
        NodeId::new(3),
        Message::Chosen {
            entries: vec![Chosen {
                slot: Slot::new(1),
                value: Value::Noop,
            }],
        },
    );
    assert_eq!(
        take(&mut leader),
        Ready {
            apply: vec![chosen(Slot::new(1), Value::Noop)],
            abandoned: vec![proposal(1).id],
            ..Ready::default()
        }
    );
}

/// Regression (simulation seed 65 of 3 replicas): commands of this node
/// known chosen but not yet applied when a snapshot covered them were never
/// reported.
#[test]
fn a_snapshot_over_unapplied_own_commands_reports_them_abandoned() {
    let mut cfg = config(1, 3);
    cfg.batch_proposals_max = 1;
    let mut leader = leader_with(cfg);
    leader.propose(proposal(1));
    leader.propose(proposal(2));
    take(&mut leader);
    leader.step(
        NodeId::new(2),
        Message::Accepted {
            ballot: ballot(1, 1),
            slots: vec![Slot::new(2)],
        },
    );
    assert_eq!(
        take(&mut leader),
        Ready::default(),
        "slot 2 is chosen, slot 1 is not"
    );
    let data = Arc::new(vec![2]);
    deliver_snapshot(&mut leader, 3, Slot::new(2), &data);
    assert_eq!(
        take(&mut leader),
        Ready {
            persist: vec![Persist::Snapshot {
                slot: Slot::new(2),
                data: data.clone(),
                config: three()
            }],
            apply: vec![Apply::Snapshot {
                slot: Slot::new(2),
                data
            }],
            abandoned: vec![proposal(1).id, proposal(2).id],
            ..Ready::default()
        }
    );
}

#[test]
fn a_late_heartbeat_from_an_older_leader_does_not_replace_the_newer_one() {
    let mut follower = fresh(2);
    let heartbeat = |at: Ballot| Message::Heartbeat {
        ballot: at,
        chosen_upto: Slot::new(0),
        seq: 1,
    };
    follower.step(NodeId::new(3), heartbeat(ballot(2, 3)));
    follower.step(NodeId::new(1), heartbeat(ballot(1, 1)));
    assert_eq!(
        follower.leader_id(),
        Some(n(3)),
        "the newer ballot stays the followed leader"
    );
}

#[test]
fn slots_and_accept_messages_stay_within_their_byte_bounds() {
    let one = proposal(1).encoded_bytes();
    let mut cfg = config(1, 3);
    // Two commands fit a slot; a message carries the values of two slots.
    cfg.slot_bytes_max = 2 * one;
    cfg.message_bytes_max = 2 * batch(&[1, 2]).encoded_bytes();
    let mut leader = leader_with(cfg);
    for seq in 1..=7 {
        leader.propose(proposal(seq));
    }
    let ready = take(&mut leader);
    let slots = vec![
        (Slot::new(1), batch(&[1, 2])),
        (Slot::new(2), batch(&[3, 4])),
        (Slot::new(3), batch(&[5, 6])),
        (Slot::new(4), batch(&[7])),
    ];
    assert_eq!(ready.persist, persist_accepts(ballot(1, 1), &slots));
    let to_node_2: Vec<&Message<Command>> = ready
        .messages
        .iter()
        .filter(|envelope| envelope.to == NodeId::new(2))
        .map(|envelope| &envelope.message)
        .collect();
    assert_eq!(
        to_node_2,
        vec![
            &accept_message(ballot(1, 1), slots[..2].to_vec(), Slot::new(0)),
            &accept_message(ballot(1, 1), slots[2..].to_vec(), Slot::new(0)),
        ],
        "the run of slots is split where the byte bound falls"
    );
}

#[test]
fn a_snapshot_is_not_resent_to_a_peer_that_asks_again_within_an_election_timeout() {
    let mut leader = leader();
    leader.propose(proposal(1));
    take(&mut leader);
    leader.step(
        NodeId::new(2),
        Message::Accepted {
            ballot: ballot(1, 1),
            slots: vec![Slot::new(1)],
        },
    );
    take(&mut leader);
    leader.compact(Slot::new(1), Arc::new(vec![7]));
    let snapshot = envelope(1, 3, whole_snapshot(Slot::new(1), &[7]));
    leader.step(
        NodeId::new(3),
        Message::Learn {
            from_slot: Slot::new(1),
        },
    );
    assert_eq!(take(&mut leader).messages, vec![snapshot.clone()]);
    leader.step(
        NodeId::new(3),
        Message::Learn {
            from_slot: Slot::new(1),
        },
    );
    assert!(
        !take(&mut leader).messages.contains(&snapshot),
        "a second ask right away gets no second copy"
    );
    for _ in 0..ELECTION_TICKS {
        leader.tick();
    }
    take(&mut leader);
    leader.step(
        NodeId::new(3),
        Message::Learn {
            from_slot: Slot::new(1),
        },
    );
    assert!(
        take(&mut leader).messages.contains(&snapshot),
        "after an election timeout the snapshot is sent again"
    );
}

// ---- Snapshot transfer ---------------------------------------------------

/// Node `id` of three, sending and taking snapshots in chunks of `chunk`
/// bytes.
fn chunked(id: u64, chunk: usize) -> ReplicaConfig {
    let mut config = config(id, 3);
    config.snapshot_chunk_bytes = chunk;
    config
}

/// Node 1 of three, holding a snapshot of `data` at `slot` and serving it in
/// chunks of 4 bytes.
fn serving(slot: Slot, data: &[u8]) -> Replica1 {
    let durable = DurableState {
        snapshot: Some((slot, Arc::new(data.to_vec()))),
        ..DurableState::default()
    };
    Replica::new(chunked(1, 4), durable)
}

/// The one message of `ready`, addressed to `to`.
fn only_message(ready: Ready1, to: u64) -> Message<Command> {
    assert_eq!(ready.messages.len(), 1, "one message: {ready:?}");
    let envelope = ready.messages.into_iter().next().expect("checked above");
    assert_eq!(envelope.to, n(to));
    envelope.message
}

/// Node 2 hears node 1 lead with every slot up to `upto` chosen; it asks
/// node 1 for them.
fn lagging_follower(upto: Slot) -> Replica1 {
    let mut follower = fresh(2);
    follower.step(
        n(1),
        Message::Heartbeat {
            ballot: ballot(1, 1),
            chosen_upto: upto,
            seq: 1,
        },
    );
    let asked = take(&mut follower).messages;
    assert!(
        asked.contains(&envelope(2, 1, learn(1))),
        "the follower asks for what it lacks: {asked:?}"
    );
    follower
}

fn learn(from_slot: u64) -> Message<Command> {
    Message::Learn {
        from_slot: Slot::new(from_slot),
    }
}

/// The messages of `ready`, without their envelopes.
fn sent(ready: Ready1) -> Vec<Message<Command>> {
    ready.messages.into_iter().map(|sent| sent.message).collect()
}

fn pull(slot: u64, offset: u64) -> Message<Command> {
    Message::SnapshotPull {
        slot: Slot::new(slot),
        offset,
    }
}

#[test]
fn a_snapshot_travels_in_bounded_chunks_each_pulled_by_the_receiver() {
    let data: Vec<u8> = (1..=10).collect();
    let mut leader = serving(Slot::new(5), &data);
    let mut follower = lagging_follower(Slot::new(5));
    leader.step(n(2), learn(1));
    let mut message = only_message(take(&mut leader), 2);
    let mut chunks = Vec::new();
    loop {
        let Message::SnapshotChunk {
            offset,
            total,
            data: bytes,
            ..
        } = &message
        else {
            panic!("a snapshot chunk is sent: {message:?}");
        };
        assert!(bytes.len() <= 4, "a chunk carries at most snapshot_chunk_bytes");
        assert_eq!(*total, 10);
        chunks.push((*offset, bytes.len()));
        follower.step(n(1), message);
        let ready = take(&mut follower);
        if let Some(received) = ready.snapshot_received {
            assert_eq!(received.slot, Slot::new(5));
            assert_eq!(*received.data, data, "the chunks make up the snapshot");
            assert!(ready.messages.is_empty(), "nothing more is pulled");
            break;
        }
        // The next chunk is asked for only once this one arrived: one at a
        // time is on the way.
        let asked = only_message(ready, 1);
        leader.step(n(2), asked);
        message = only_message(take(&mut leader), 2);
    }
    assert_eq!(chunks, vec![(0, 4), (4, 4), (8, 2)]);
    follower.install_snapshot(Slot::new(5), Arc::new(data), three());
    assert_eq!(follower.applied(), Slot::new(5));
}

#[test]
fn a_lost_chunk_is_pulled_again_and_duplicates_are_dropped() {
    let data: Vec<u8> = (1..=10).collect();
    let mut leader = serving(Slot::new(5), &data);
    let mut follower = lagging_follower(Slot::new(5));
    leader.step(n(2), learn(1));
    let first = only_message(take(&mut leader), 2);
    follower.step(n(1), first.clone());
    assert_eq!(only_message(take(&mut follower), 1), pull(5, 4));
    // The chunk at 4 is lost on the way; a duplicate of the first arrives.
    follower.step(n(1), first);
    assert_eq!(
        take(&mut follower),
        Ready::default(),
        "a duplicate chunk is dropped"
    );
    for _ in 0..2 * HEARTBEAT_TICKS - 1 {
        follower.tick();
        let ready = take(&mut follower);
        assert!(
            !ready
                .messages
                .iter()
                .any(|sent| matches!(sent.message, Message::Learn { .. } | Message::SnapshotPull { .. })),
            "no pull or learn before the retry pause: {ready:?}"
        );
    }
    follower.tick();
    assert_eq!(
        only_message(take(&mut follower), 1),
        pull(5, 4),
        "the missing chunk is pulled again after two heartbeats"
    );
    leader.step(n(2), pull(5, 4));
    let second = only_message(take(&mut leader), 2);
    follower.step(n(1), second.clone());
    assert_eq!(only_message(take(&mut follower), 1), pull(5, 8));
    follower.step(n(1), second);
    assert_eq!(
        take(&mut follower),
        Ready::default(),
        "a chunk received twice counts once"
    );
}

#[test]
fn a_receiver_asks_for_no_chosen_values_while_a_snapshot_is_on_the_way() {
    let mut leader = serving(Slot::new(5), &[1, 2, 3, 4, 5, 6]);
    let mut follower = lagging_follower(Slot::new(5));
    leader.step(n(2), learn(1));
    follower.step(n(1), only_message(take(&mut leader), 2));
    take(&mut follower);
    // The next chunk is slow; the follower waits less than two election
    // timeouts, pulling again, and never starts over with a Learn.
    for _ in 0..2 * ELECTION_TICKS - 1 {
        follower.tick();
        // (It also stands for election, hearing no leader.)
        for sent in take(&mut follower).messages {
            if matches!(sent.message, Message::Learn { .. } | Message::SnapshotPull { .. }) {
                assert_eq!(sent.message, pull(5, 4), "only the missing chunk is asked for");
            }
        }
    }
    // The sender stayed silent for two election timeouts: the follower
    // gives up on it and asks for what it lacks again.
    follower.tick();
    let asked: Vec<Message<Command>> = sent(take(&mut follower));
    assert!(
        asked.contains(&learn(1)),
        "a stalled transfer is given up: {asked:?}"
    );
}

#[test]
fn a_transfer_under_way_keeps_the_snapshot_it_started_with_when_the_sender_gets_a_newer_one() {
    let old: Vec<u8> = (1..=8).collect();
    let mut sender = serving(Slot::new(5), &old);
    sender.step(n(2), learn(1));
    take(&mut sender);
    // A newer snapshot replaces the old one at the sender.
    deliver_snapshot(&mut sender, 3, Slot::new(9), &Arc::new(vec![9, 9, 9]));
    take(&mut sender);
    assert_eq!(sender.compacted(), Slot::new(9));
    // The pull of the old snapshot is still served from the old bytes.
    sender.step(n(2), pull(5, 4));
    let Message::SnapshotChunk {
        slot, offset, data, ..
    } = only_message(take(&mut sender), 2)
    else {
        panic!("a chunk is sent");
    };
    assert_eq!((slot, offset, data), (Slot::new(5), 4, vec![5, 6, 7, 8]));
    // A pull of a snapshot this node no longer holds for that receiver
    // starts the receiver over with the one it holds.
    sender.step(n(3), pull(5, 4));
    let Message::SnapshotChunk { slot, offset, .. } = only_message(take(&mut sender), 3) else {
        panic!("a chunk is sent");
    };
    assert_eq!((slot, offset), (Slot::new(9), 0));
}

#[test]
fn a_snapshot_larger_than_the_receivers_limit_or_malformed_is_refused() {
    let mut cfg = chunked(2, 4);
    cfg.snapshot_bytes_max = 8;
    let mut follower = Replica::new(cfg, DurableState::default());
    let chunk = |offset: u64, total: u64, data: Vec<u8>| Message::SnapshotChunk {
        slot: Slot::new(5),
        offset,
        total,
        data,
        config: three(),
    };
    follower.step(n(1), chunk(0, 9, vec![1, 2, 3, 4]));
    assert_eq!(
        take(&mut follower),
        Ready::default(),
        "9 bytes are over the limit of 8"
    );
    follower.step(n(1), chunk(0, 3, vec![1, 2, 3, 4]));
    assert_eq!(
        take(&mut follower),
        Ready::default(),
        "a chunk past its total is dropped"
    );
    follower.step(n(1), chunk(0, 4, Vec::new()));
    assert_eq!(
        take(&mut follower),
        Ready::default(),
        "an empty chunk of a non-empty snapshot is dropped"
    );
    follower.step(n(1), chunk(0, 8, vec![1, 2, 3, 4]));
    assert_eq!(
        only_message(take(&mut follower), 1),
        pull(5, 4),
        "8 bytes are taken"
    );
}

#[test]
fn an_undecodable_snapshot_is_not_installed_and_chosen_values_are_asked_for_again() {
    let mut follower = lagging_follower(Slot::new(5));
    follower.step(n(1), whole_snapshot(Slot::new(5), &[0xee]));
    assert!(take(&mut follower).snapshot_received.is_some());
    follower.snapshot_undecodable(Slot::new(5));
    assert_eq!(
        (follower.applied(), follower.compacted()),
        (Slot::ZERO, Slot::ZERO),
        "nothing of it is kept"
    );
    let mut asked = Vec::new();
    for _ in 0..2 * HEARTBEAT_TICKS {
        follower.tick();
        asked.extend(sent(take(&mut follower)));
    }
    assert!(asked.contains(&learn(1)), "the follower asks again: {asked:?}");
}

// ---- The durability contract ---------------------------------------------

#[test]
fn readys_are_numbered_from_one_and_rise_by_one() {
    let mut replica = fresh(1);
    let numbers: Vec<u64> = (0..3).map(|_| replica.take_ready().number).collect();
    assert_eq!(numbers, vec![1, 2, 3]);
}

#[test]
fn a_leader_counts_its_own_vote_only_once_its_record_is_durable() {
    let mut leader = leader();
    leader.propose(proposal(1));
    let proposed = leader.take_ready();
    assert_eq!(
        proposed.persist,
        persist_accepts(ballot(1, 1), &[(Slot::new(1), batch(&[1]))])
    );
    assert!(
        proposed
            .messages
            .iter()
            .all(|envelope| matches!(envelope.message, Message::Accept { .. })),
        "the Accepts leave at once, while the leader's own write syncs"
    );
    leader.step(
        NodeId::new(2),
        Message::Accepted {
            ballot: ballot(1, 1),
            slots: vec![Slot::new(1)],
        },
    );
    let answered = leader.take_ready();
    assert!(
        answered.apply.is_empty(),
        "one durable vote of three is no majority: the leader's own is not durable yet"
    );
    assert_eq!(leader.chosen_upto(), Slot::new(0));
    leader.on_persisted(answered.number);
    assert_eq!(
        leader.take_ready().apply,
        vec![chosen(Slot::new(1), batch(&[1]))],
        "with its own record durable, the leader and node 2 are a majority"
    );
}

#[test]
fn an_acceptor_answers_only_once_everything_before_is_durable() {
    let mut acceptor = fresh(2);
    acceptor.step(
        NodeId::new(1),
        accept_message(ballot(1, 1), vec![(Slot::new(1), batch(&[1]))], Slot::new(0)),
    );
    let first = acceptor.take_ready();
    assert!(first.messages.is_empty(), "nothing leaves before the persist");
    assert_eq!(first.persisted_messages.len(), 1);
    // A duplicate arrives before the first write is durable: its answer is
    // held too, behind the same write.
    acceptor.step(
        NodeId::new(1),
        accept_message(ballot(1, 1), vec![(Slot::new(1), batch(&[1]))], Slot::new(0)),
    );
    let second = acceptor.take_ready();
    assert!(second.persist.is_empty(), "nothing new to write");
    assert!(second.messages.is_empty());
    assert_eq!(
        second.persisted_messages,
        vec![envelope(
            2,
            1,
            Message::Accepted {
                ballot: ballot(1, 1),
                slots: vec![Slot::new(1)],
            }
        )]
    );
    assert!(second.number > first.number);
}

#[test]
fn a_candidate_counts_its_own_promise_only_once_it_is_durable() {
    let mut replica = fresh(1);
    let (probe, _) = tick_until_probe(&mut replica);
    let Message::Probe { ballot: probed } = probe.messages[0].message else {
        panic!("a probe first");
    };
    replica.step(
        NodeId::new(2),
        Message::ProbeReply {
            ballot: probed,
            granted: true,
        },
    );
    let prepare = replica.take_ready();
    assert!(
        prepare.messages.is_empty(),
        "the Prepares wait for the promise to be durable"
    );
    // Without its own durable promise, one peer's promise is no majority.
    replica.step(
        NodeId::new(2),
        Message::Promise {
            ballot: replica.promised(),
            chosen_upto: Slot::new(0),
            accepted: Vec::new(),
        },
    );
    replica.take_ready();
    assert!(!replica.is_leader());
    replica.on_persisted(prepare.number);
    assert!(replica.is_leader(), "its own promise and node 2's are a majority");
}
