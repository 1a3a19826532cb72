//! Microbenchmarks of the Multi-Paxos core (`Replica`): the CPU cost of one
//! replicated batch on each side, without I/O.
//!
//! A three-replica cluster elects a leader over an in-memory network once;
//! then every iteration runs one slot through phase 2 and times one part of
//! it: the leader proposing a batch and flushing it into an Accept
//! (`take_ready`), a follower handling that Accept, and the leader handling
//! the Accepted that completes its quorum and emitting the Apply. The
//! replicas compact what they applied every so often, as the driver does
//! after a snapshot, so memory stays flat however long criterion runs.
//!
//! Run with `cargo bench --bench paxos_step`.

use std::collections::{BTreeSet, VecDeque};
use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use quorumlock_core::consensus::NodeId;
use quorumlock_core::lock::{Command, Credential, SessionId};
use quorumlock_paxos::{Apply, DurableState, ProposalId, ReplicaConfig};

type Envelope = quorumlock_paxos::Envelope<Command>;
type Message = quorumlock_paxos::Message<Command>;
type Proposal = quorumlock_paxos::Proposal<Command>;
type Replica = quorumlock_paxos::Replica<Command>;

/// Takes a replica's Ready, reports it durable at once (an instant disk),
/// and returns every message it sends.
fn drain(replica: &mut Replica) -> Vec<Envelope> {
    let mut ready = replica.take_ready();
    replica.on_persisted(ready.number);
    ready.messages.append(&mut ready.persisted_messages);
    ready.messages
}

/// Commands per proposed batch.
const BATCH_SIZES: [usize; 3] = [1, 64, 256];
/// Compact applied slots after this many iterations.
const COMPACT_EVERY: u64 = 256;
/// Bound on ticks spent electing the first leader.
const ELECTION_TICKS_MAX: usize = 10_000;

/// Three replicas, replica index 0 leading.
struct Cluster {
    replicas: Vec<Replica>,
    seq: u64,
    iterations: u64,
}

impl Cluster {
    fn elect() -> Cluster {
        let members: BTreeSet<NodeId> = [1, 2, 3].into_iter().map(NodeId::new).collect();
        let mut replicas: Vec<Replica> = (1..=3)
            .map(|id| {
                let mut config = ReplicaConfig::new(NodeId::new(id), members.clone(), 1, 10);
                config.seed = id * 7;
                Replica::new(config, DurableState::default())
            })
            .collect();
        let mut network: VecDeque<Envelope> = VecDeque::new();
        for _ in 0..ELECTION_TICKS_MAX {
            for replica in replicas.iter_mut() {
                replica.tick();
                network.extend(drain(replica));
            }
            while let Some(envelope) = network.pop_front() {
                let replica = &mut replicas[(envelope.to.get() - 1) as usize];
                replica.step(envelope.from, envelope.message);
                network.extend(drain(replica));
            }
            if let Some(leader) = replicas.iter().position(Replica::is_leader) {
                replicas.swap(0, leader);
                return Cluster {
                    replicas,
                    seq: 0,
                    iterations: 0,
                };
            }
        }
        panic!("no leader within {ELECTION_TICKS_MAX} ticks");
    }

    fn leader_id(&self) -> NodeId {
        self.replicas[0].id()
    }

    fn proposals(&mut self, count: usize) -> Vec<Proposal> {
        (0..count)
            .map(|index| {
                self.seq += 1;
                Proposal {
                    id: ProposalId {
                        node: self.leader_id(),
                        boot: 1,
                        seq: self.seq,
                    },
                    command: Command::Acquire {
                        session: SessionId::new(1 + index as u64),
                        lock: format!("bench/{index}"),
                        wait: false,
                        by: Credential::of_secret(&[7; 32]),
                    },
                }
            })
            .collect()
    }

    /// Runs one batch through phase 2 and returns the time of each part:
    /// (propose and flush, follower handles Accept, leader handles the
    /// quorum's Accepted and emits Apply).
    fn round(&mut self, batch: usize) -> (Duration, Duration, Duration) {
        let proposals = self.proposals(batch);
        let leader_id = self.leader_id();

        let start = Instant::now();
        for proposal in proposals {
            self.replicas[0].propose(proposal);
        }
        let ready = black_box(self.replicas[0].take_ready());
        let propose = start.elapsed();
        // The leader's own record is durable before the quorum answers.
        self.replicas[0].on_persisted(ready.number);

        let accept = ready
            .messages
            .into_iter()
            .find(|envelope| matches!(envelope.message, Message::Accept { .. }))
            .expect("the leader broadcasts an Accept");
        let follower_id = accept.to;
        let follower = self
            .replicas
            .iter_mut()
            .find(|replica| replica.id() == follower_id)
            .expect("the Accept names a member");
        let start = Instant::now();
        follower.step(leader_id, accept.message);
        let ready = black_box(follower.take_ready());
        let on_accept = start.elapsed();
        follower.on_persisted(ready.number);

        let accepted = ready
            .persisted_messages
            .into_iter()
            .find(|envelope| matches!(envelope.message, Message::Accepted { .. }))
            .expect("the follower answers Accepted");
        let start = Instant::now();
        self.replicas[0].step(follower_id, accepted.message);
        let ready = black_box(self.replicas[0].take_ready());
        let on_accepted = start.elapsed();
        self.replicas[0].on_persisted(ready.number);
        assert!(
            ready.apply.iter().any(|step| matches!(step, Apply::Chosen(_))),
            "a quorum of Accepted emits Apply"
        );

        self.iterations += 1;
        if self.iterations % COMPACT_EVERY == 0 {
            self.compact();
        }
        (propose, on_accept, on_accepted)
    }

    /// Lets every replica forget what it applied, as after a snapshot; a
    /// heartbeat round first tells the followers what is chosen.
    fn compact(&mut self) {
        for _ in 0..2 {
            self.replicas[0].tick();
        }
        let messages = drain(&mut self.replicas[0]);
        for envelope in messages {
            let replica = self
                .replicas
                .iter_mut()
                .find(|replica| replica.id() == envelope.to)
                .expect("a member");
            replica.step(envelope.from, envelope.message);
            drain(replica);
        }
        for replica in self.replicas.iter_mut() {
            let applied = replica.applied();
            if applied > replica.compacted() {
                replica.compact(applied, Arc::new(Vec::new()));
            }
        }
    }
}

/// Runs `iterations` rounds of `batch` and sums the part `pick` selects.
fn measure(
    cluster: &mut Cluster,
    batch: usize,
    iterations: u64,
    pick: fn((Duration, Duration, Duration)) -> Duration,
) -> Duration {
    (0..iterations).map(|_| pick(cluster.round(batch))).sum()
}

fn bench_phase_two(c: &mut Criterion) {
    let mut group = c.benchmark_group("paxos");
    let mut cluster = Cluster::elect();
    for batch in BATCH_SIZES {
        group.bench_function(BenchmarkId::new("leader_propose_and_flush", batch), |b| {
            b.iter_custom(|iterations| measure(&mut cluster, batch, iterations, |parts| parts.0))
        });
        group.bench_function(BenchmarkId::new("follower_on_accept", batch), |b| {
            b.iter_custom(|iterations| measure(&mut cluster, batch, iterations, |parts| parts.1))
        });
        group.bench_function(
            BenchmarkId::new("leader_on_quorum_accepted_emits_apply", batch),
            |b| b.iter_custom(|iterations| measure(&mut cluster, batch, iterations, |parts| parts.2)),
        );
    }
    group.bench_function("take_ready_idle", |b| {
        b.iter(|| {
            let ready = black_box(cluster.replicas[0].take_ready());
            cluster.replicas[0].on_persisted(ready.number);
        })
    });
    group.finish();
}

criterion_group!(benches, bench_phase_two);
criterion_main!(benches);
