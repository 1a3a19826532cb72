//! The one driver of the Multi-Paxos core: it runs a [`Replica`] over a
//! [`Storage`], a [`Transport`] and a [`StateMachine`], executing every
//! [`Ready`] by the contract of [`crate::core::ready`] — messages that may
//! leave at once leave, records go to storage, what storage has made durable
//! releases the messages held for it and counts this node's own votes,
//! chosen commands are applied in slot order and their proposers answered.
//!
//! The same code runs in production (RocksDB storage that syncs on a thread
//! of its own, the gRPC transport, the lock state machine; see
//! [`crate::engine`]) and in both simulations (a simulated disk and network
//! that lose, delay and crash; see [`crate::sim`]). Time enters only as
//! [`Driver::tick`], so whoever owns the driver owns its clock.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

use quorumlock_core::consensus::NodeId;

use crate::core::message::{Envelope, Message};
use crate::core::ready::{Apply, Persist, Ready, ReadyNumber, ReceivedSnapshot, Refusal};
use crate::core::types::{Command, Proposal, ProposalId, ReadId, Slot};
use crate::core::Replica;

/// Where a replica's records become durable.
///
/// Records are handed over one Ready at a time and must become durable in
/// that order (a crash may lose a suffix of what was handed over, never a
/// record while keeping a later one).
pub trait Storage<C> {
    /// Starts making the records of Ready `number` durable, after those of
    /// every earlier call.
    fn persist(&mut self, number: ReadyNumber, records: Vec<Persist<C>>) -> Result<(), StorageFailure>;

    /// The highest Ready number whose records are durable (0 before any);
    /// a failure of an earlier write is reported here.
    fn durable_through(&mut self) -> Result<ReadyNumber, StorageFailure>;
}

/// Where a replica's messages go. Sending never blocks and may lose the
/// message: the protocol retransmits what matters.
pub trait Transport<C> {
    /// Sends one message to its recipient.
    fn send(&mut self, envelope: Envelope<C>);
}

/// What chosen commands are applied to.
pub trait StateMachine<C> {
    /// The answer to a command's proposer.
    type Output;
    /// A snapshot decoded and checked, ready to install.
    type Snapshot;

    /// Applies one command of the value chosen for `slot` (its proposal id
    /// says who proposed it, for checkers).
    fn apply(&mut self, slot: Slot, proposal: &Proposal<C>) -> Self::Output;

    /// Every command of `slot` is applied.
    fn slot_applied(&mut self, _slot: Slot) {}

    /// Applies every command of the value chosen for `slot`, in order, and
    /// then says the slot is applied; one output per proposal.
    fn apply_slot(&mut self, slot: Slot, proposals: &[Proposal<C>]) -> Vec<Self::Output> {
        let outputs = proposals
            .iter()
            .map(|proposal| self.apply(slot, proposal))
            .collect();
        self.slot_applied(slot);
        outputs
    }

    /// Serializes the whole state (for compaction).
    fn snapshot(&self) -> Vec<u8>;

    /// Starts serializing the whole state as it is now, for compaction.
    /// A machine that can do it off the caller's thread returns a running
    /// job; the driver applies nothing until the job is done, so the
    /// serializer sees the state of one slot. By default the state is
    /// serialized at once.
    fn start_snapshot(&mut self) -> SnapshotJob {
        SnapshotJob::Done(self.snapshot())
    }

    /// Decodes and checks a snapshot a peer sent, before the replica may
    /// forget the slots it covers.
    fn decode_snapshot(&self, data: &[u8]) -> Result<Self::Snapshot, String>;

    /// Starts decoding a snapshot a peer sent, as [`Self::decode_snapshot`]
    /// does. A machine that can do it off the caller's thread returns a
    /// running job; the replica goes on meanwhile. By default the snapshot
    /// is decoded at once.
    fn start_decode_snapshot(&mut self, data: Arc<Vec<u8>>) -> DecodeJob<Self::Snapshot> {
        Job::Done(self.decode_snapshot(&data))
    }

    /// Replaces the state with a decoded snapshot covering every slot up to
    /// `slot`.
    fn install_snapshot(&mut self, slot: Slot, snapshot: Self::Snapshot);
}

/// Work on the state machine that may run off the driver's task.
pub enum Job<T> {
    /// Done.
    Done(T),
    /// Running elsewhere; the result arrives on the channel (a closed
    /// channel means the worker died).
    Running(std::sync::mpsc::Receiver<T>),
}

/// A snapshot being taken for compaction.
pub type SnapshotJob = Job<Vec<u8>>;

/// A peer's snapshot being decoded.
pub type DecodeJob<S> = Job<Result<S, String>>;

impl<T> Job<T> {
    /// The result if the job is done, or the job still running.
    fn poll(self) -> Result<T, Job<T>> {
        match self {
            Job::Done(result) => Ok(result),
            Job::Running(result) => match result.try_recv() {
                Ok(result) => Ok(result),
                Err(std::sync::mpsc::TryRecvError::Empty) => Err(Job::Running(result)),
                Err(std::sync::mpsc::TryRecvError::Disconnected) => {
                    panic!("a state machine's worker never dies")
                }
            },
        }
    }
}

/// The result of the job in `running`, with what it was started for, once
/// it is done; a job still running stays in place.
fn take_done<K, T>(running: &mut Option<(K, Job<T>)>) -> Option<(K, T)> {
    let (started_for, job) = running.take()?;
    match job.poll() {
        Ok(result) => Some((started_for, result)),
        Err(job) => {
            *running = Some((started_for, job));
            None
        }
    }
}

/// Which snapshots are taken on the driver's task.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Inline {
    /// Only a node's first (the state machine decides for the others).
    First,
    /// This one (the snapshot that starts a new epoch).
    Always,
}

/// What the driver still has to do, in order, with the state machine.
enum Pending<C> {
    Apply(Apply<C>),
    ReadReady(ReadId),
}

/// Storage could not make records durable: the replica's durable state is
/// unknown, so it must stop rather than answer from memory its disk does not
/// back.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("storage failure: {0}")]
pub struct StorageFailure(pub String);

/// Why the driver stopped.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DriverError {
    /// Storage failed.
    #[error(transparent)]
    Storage(#[from] StorageFailure),
    /// A snapshot the replica installed could not be decoded after all.
    #[error("the snapshot of slot {slot} cannot be installed: {reason}")]
    Snapshot {
        /// The slot it covers.
        slot: Slot,
        /// Why it was refused.
        reason: String,
    },
}

/// What became of a proposal or a read, for whoever waits on `reply`.
#[derive(Debug)]
pub enum Answer<R, O> {
    /// The command was chosen and applied here; `output` is the state
    /// machine's answer.
    Applied {
        /// Who waits.
        reply: R,
        /// The answer.
        output: O,
    },
    /// The command never entered the log.
    Refused {
        /// Who waits.
        reply: R,
        /// Why.
        refusal: Refusal,
    },
    /// This node stopped leading while the command was in flight: it may
    /// or may not be chosen later.
    Abandoned {
        /// Who waits.
        reply: R,
    },
    /// A linearizable read may now read the state machine.
    ReadReady {
        /// Who waits.
        reply: R,
    },
    /// A read could not be confirmed: this node does not lead.
    ReadFailed {
        /// Who waits.
        reply: R,
    },
}

/// Messages held until a Ready is durable.
struct Held<C> {
    number: ReadyNumber,
    /// Whether the Ready handed records to storage (otherwise it is durable
    /// as soon as every earlier one is).
    persisted: bool,
    messages: Vec<Envelope<C>>,
}

/// How large, as a fraction `(n + node id mod 4) / d` of the latest
/// snapshot, the log applied since must be before the next snapshot: half
/// to seven eighths of it (see `Driver::maybe_compact`).
pub const LOG_TO_SNAPSHOT_BYTES: (u64, u64) = (4, 8);

/// Runs one replica.
pub struct Driver<C, S, T, M: StateMachine<C>, R> {
    replica: Replica<C>,
    storage: S,
    transport: T,
    machine: M,
    boot: u64,
    next_seq: u64,
    next_read: ReadId,
    /// Ordered maps, so that whatever the driver reports is in an order the
    /// simulations can replay.
    proposals: BTreeMap<ProposalId, R>,
    reads: BTreeMap<ReadId, R>,
    held: VecDeque<Held<C>>,
    /// The last slot applied to the state machine (the replica may have
    /// handed out more, in a Ready not yet executed).
    applied: Slot,
    snapshot_every_entries: u64,
    /// Encoded bytes of the values applied since the latest snapshot.
    log_bytes_since_snapshot: u64,
    /// A peer's snapshot being decoded.
    decoding: Option<(ReceivedSnapshot, DecodeJob<M::Snapshot>)>,
    /// A peer's snapshot decoded, kept for its install.
    verified_snapshot: Option<(Slot, M::Snapshot)>,
    /// The snapshot being taken at a slot; applying waits for it.
    snapshotting: Option<(Slot, SnapshotJob)>,
    /// Chosen slots, installs and confirmed reads waiting for a snapshot
    /// to be taken, in the order the replica handed them out.
    pending: VecDeque<Pending<C>>,
}

impl<C, S, T, M, R> Driver<C, S, T, M, R>
where
    C: Command,
    S: Storage<C>,
    T: Transport<C>,
    M: StateMachine<C>,
{
    /// Drives `replica`, whose node's boot counter is `boot`, snapshotting
    /// `machine` every `snapshot_every_entries` applied slots.
    pub fn new(
        replica: Replica<C>,
        storage: S,
        transport: T,
        machine: M,
        boot: u64,
        snapshot_every_entries: u64,
    ) -> Self {
        assert!(snapshot_every_entries > 0, "snapshots need a positive interval");
        let applied = replica.applied();
        Driver {
            replica,
            storage,
            transport,
            machine,
            boot,
            next_seq: 0,
            next_read: 0,
            proposals: BTreeMap::new(),
            reads: BTreeMap::new(),
            held: VecDeque::new(),
            applied,
            snapshot_every_entries,
            log_bytes_since_snapshot: 0,
            decoding: None,
            verified_snapshot: None,
            snapshotting: None,
            pending: VecDeque::new(),
        }
    }

    /// The replica.
    pub fn replica(&self) -> &Replica<C> {
        &self.replica
    }

    /// The replica, to propose membership changes and report a removal.
    pub fn replica_mut(&mut self) -> &mut Replica<C> {
        &mut self.replica
    }

    /// The state machine.
    pub fn machine(&self) -> &M {
        &self.machine
    }

    /// The state machine, to change what it observes (simulations).
    pub fn machine_mut(&mut self) -> &mut M {
        &mut self.machine
    }

    /// The storage.
    pub fn storage_mut(&mut self) -> &mut S {
        &mut self.storage
    }

    /// The transport.
    pub fn transport_mut(&mut self) -> &mut T {
        &mut self.transport
    }

    /// The boot counter proposals of this life carry.
    pub fn boot(&self) -> u64 {
        self.boot
    }

    /// Proposals and reads still waiting for an answer.
    pub fn waiting(&self) -> usize {
        self.proposals.len() + self.reads.len()
    }

    /// Whether something is waiting to be executed: a Ready, messages
    /// held for storage, a snapshot being taken and what waits for it, or
    /// a peer's snapshot being decoded.
    pub fn has_work(&mut self) -> bool {
        !self.held.is_empty()
            || self.snapshotting.is_some()
            || self.decoding.is_some()
            || self.replica.has_ready()
    }

    /// Whether a snapshot is being taken (and applying waits for it).
    pub fn is_snapshotting(&self) -> bool {
        self.snapshotting.is_some()
    }

    /// Queues a command; its answer comes out of a later
    /// [`Driver::advance`]. Returns the id it is proposed under.
    pub fn propose(&mut self, command: C, reply: R) -> ProposalId {
        self.next_seq += 1;
        let id = ProposalId {
            node: self.replica.id(),
            boot: self.boot,
            seq: self.next_seq,
        };
        self.proposals.insert(id, reply);
        self.replica.propose(Proposal { id, command });
        id
    }

    /// Starts a linearizable read barrier.
    pub fn read(&mut self, reply: R) {
        self.next_read += 1;
        self.reads.insert(self.next_read, reply);
        self.replica.read(self.next_read);
    }

    /// Hands a peer's message to the replica.
    pub fn step(&mut self, from: NodeId, message: Message<C>) {
        self.replica.step(from, message);
    }

    /// Advances the replica's time by one tick.
    pub fn tick(&mut self) {
        self.replica.tick();
    }

    /// Executes everything the replica asked for and storage finished, until
    /// nothing is left; returns the answers to hand out.
    pub fn advance(&mut self) -> Result<Vec<Answer<R, M::Output>>, DriverError> {
        let mut answers = Vec::new();
        loop {
            self.release_durable()?;
            self.finish_snapshot();
            self.finish_decode();
            self.apply_pending(&mut answers)?;
            if self.replica.epoch_snapshot_due() {
                // A stop-sign was handed out: the new epoch starts from a
                // snapshot of it, persisted before anything of that epoch.
                // While a snapshot is being taken, the stop-sign waits to be
                // applied and no further Ready is taken.
                if self.snapshotting.is_some() {
                    return Ok(answers);
                }
                // Everything handed out is applied, the stop-sign included
                // (unless it is in a Ready not taken yet).
                if self.applied == self.replica.applied() {
                    self.start_snapshot(Inline::Always);
                    assert!(
                        !self.replica.epoch_snapshot_due(),
                        "the snapshot covers the stop-sign"
                    );
                }
            }
            if !self.replica.has_ready() {
                return Ok(answers);
            }
            let ready = self.replica.take_ready();
            self.execute(ready, &mut answers)?;
            if !self.replica.epoch_snapshot_due() {
                self.maybe_compact();
            }
        }
    }

    /// Executes one Ready by the contract.
    fn execute(
        &mut self,
        ready: Ready<C>,
        answers: &mut Vec<Answer<R, M::Output>>,
    ) -> Result<(), DriverError> {
        let Ready {
            number,
            messages,
            persist,
            persisted_messages,
            apply,
            reads_ready,
            reads_failed,
            refused,
            abandoned,
            snapshot_received,
        } = ready;
        for envelope in messages {
            self.transport.send(envelope);
        }
        let persisted = !persist.is_empty();
        if persisted {
            self.storage.persist(number, persist)?;
        }
        self.held.push_back(Held {
            number,
            persisted,
            messages: persisted_messages,
        });
        self.pending.extend(apply.into_iter().map(Pending::Apply));
        self.pending
            .extend(reads_ready.into_iter().map(Pending::ReadReady));
        for (id, refusal) in refused {
            if let Some(reply) = self.proposals.remove(&id) {
                answers.push(Answer::Refused { reply, refusal });
            }
        }
        for id in abandoned {
            if let Some(reply) = self.proposals.remove(&id) {
                answers.push(Answer::Abandoned { reply });
            }
        }
        for id in reads_failed {
            if let Some(reply) = self.reads.remove(&id) {
                answers.push(Answer::ReadFailed { reply });
            }
        }
        if let Some(received) = snapshot_received {
            assert!(
                self.decoding.is_none(),
                "a replica receives one snapshot at a time"
            );
            let job = self.machine.start_decode_snapshot(received.data.clone());
            self.decoding = Some((received, job));
            self.finish_decode();
        }
        self.apply_pending(answers)
    }

    /// Hands the replica a peer's snapshot once it is decoded: it installs
    /// it, or asks again if the snapshot was undecodable (corrupt, or from
    /// an incompatible version), which it never installs.
    fn finish_decode(&mut self) {
        let Some((received, decoded)) = take_done(&mut self.decoding) else {
            return;
        };
        let ReceivedSnapshot { slot, data, config } = received;
        match decoded {
            Ok(snapshot) => {
                if slot > self.replica.applied() {
                    self.verified_snapshot = Some((slot, snapshot));
                }
                self.replica.install_snapshot(slot, data, config);
            }
            Err(error) => {
                tracing::warn!(%slot, %error, "undecodable snapshot from a peer ignored");
                self.replica.snapshot_undecodable(slot);
            }
        }
    }

    /// Applies what the replica handed out, in order, unless a snapshot is
    /// being taken; answers the proposals and reads it settles.
    fn apply_pending(&mut self, answers: &mut Vec<Answer<R, M::Output>>) -> Result<(), DriverError> {
        if self.snapshotting.is_some() {
            return Ok(());
        }
        while let Some(next) = self.pending.pop_front() {
            let step = match next {
                Pending::Apply(step) => step,
                Pending::ReadReady(id) => {
                    if let Some(reply) = self.reads.remove(&id) {
                        answers.push(Answer::ReadReady { reply });
                    }
                    continue;
                }
            };
            match step {
                Apply::Chosen(chosen) => {
                    assert_eq!(chosen.slot, self.applied + 1, "slots are applied in order");
                    self.log_bytes_since_snapshot += chosen.value.encoded_bytes() as u64;
                    let proposals = chosen.value.proposals();
                    let outputs = self.machine.apply_slot(chosen.slot, proposals);
                    assert_eq!(outputs.len(), proposals.len(), "one output per proposal");
                    for (proposal, output) in proposals.iter().zip(outputs) {
                        if let Some(reply) = self.proposals.remove(&proposal.id) {
                            answers.push(Answer::Applied { reply, output });
                        }
                    }
                    self.applied = chosen.slot;
                }
                Apply::Snapshot { slot, data } => {
                    let snapshot = match self.verified_snapshot.take() {
                        Some((verified, snapshot)) if verified == slot => snapshot,
                        _ => self
                            .machine
                            .decode_snapshot(&data)
                            .map_err(|reason| DriverError::Snapshot { slot, reason })?,
                    };
                    assert!(
                        slot > self.applied,
                        "a snapshot installed is ahead of what was applied"
                    );
                    self.applied = slot;
                    self.machine.install_snapshot(slot, snapshot);
                    self.log_bytes_since_snapshot = 0;
                    tracing::info!(%slot, bytes = data.len(), "installed snapshot from a peer");
                }
            }
        }
        Ok(())
    }

    /// Sends the messages of every Ready storage has made durable, in Ready
    /// order, and tells the replica.
    fn release_durable(&mut self) -> Result<(), DriverError> {
        let durable = self.storage.durable_through()?;
        let mut released = None;
        while let Some(front) = self.held.front() {
            // A Ready that persisted nothing is durable once every earlier
            // one is, which it is when it reaches the front.
            if front.persisted && front.number > durable {
                break;
            }
            let held = self.held.pop_front().expect("checked above");
            for envelope in held.messages {
                self.transport.send(envelope);
            }
            released = Some(held.number);
        }
        if let Some(number) = released {
            self.replica.on_persisted(number);
        }
        Ok(())
    }

    /// Snapshots the state machine once `snapshot_every_entries` slots were
    /// applied since the last snapshot *and* their values, encoded, add up
    /// to [`LOG_TO_SNAPSHOT_BYTES`] of that snapshot's size; the replica
    /// persists it and forgets those slots.
    ///
    /// A snapshot is taken on the driver's task and costs time in
    /// proportion to the whole state. With a fixed interval alone, a large
    /// state (a million held locks is about 100 MB) was serialized every
    /// few seconds, each time stalling every member at once for longer
    /// than an election timeout. Tied to the snapshot's size, the work per
    /// applied byte stays bounded however large the state grows, and the
    /// log kept in memory and replayed at start-up stays below a fraction
    /// of the snapshot. The fraction differs by node id so that the members
    /// of a cluster do not all stall at the same slot.
    fn maybe_compact(&mut self) {
        if self.applied.since(self.replica.compacted()) < self.snapshot_every_entries {
            return;
        }
        let (numerator, denominator) = LOG_TO_SNAPSHOT_BYTES;
        let stagger = self.replica.id().get() % 4;
        let wanted = (self.replica.snapshot_bytes() as u64).saturating_mul(numerator + stagger) / denominator;
        if self.log_bytes_since_snapshot < wanted {
            return;
        }
        self.start_snapshot(Inline::First);
    }

    /// Starts a snapshot of the state machine at the last slot it applied,
    /// unless one is being taken or that slot is compacted already; one
    /// taken on this task is handed to the replica at once.
    fn start_snapshot(&mut self, inline: Inline) {
        let slot = self.applied;
        if self.snapshotting.is_none() && slot > self.replica.compacted() {
            self.log_bytes_since_snapshot = 0;
            // A node's first snapshot is taken on this task: until it is
            // persisted, a learner keeps nothing of what it learned on disk
            // (it does not accept, and chosen values are not persisted), and
            // one that restarts empty knows no member to learn from again.
            let job = if inline == Inline::Always || self.replica.compacted() == Slot::ZERO {
                SnapshotJob::Done(self.machine.snapshot())
            } else {
                self.machine.start_snapshot()
            };
            self.snapshotting = Some((slot, job));
            self.finish_snapshot();
        }
    }

    /// Hands the replica the snapshot being taken if it is done, so it
    /// persists it and forgets what it covers.
    fn finish_snapshot(&mut self) {
        let Some((slot, data)) = take_done(&mut self.snapshotting) else {
            return;
        };
        tracing::debug!(%slot, bytes = data.len(), "snapshot taken; log truncated");
        // A peer's snapshot installed meanwhile may cover it already; the
        // replica then ignores it.
        self.replica.compact(slot, Arc::new(data));
    }

    /// Starts a snapshot of the state machine at the last slot it applied,
    /// which lets the replica forget what that covers once it is taken,
    /// whatever the interval (simulations draw when); nothing if one is
    /// being taken.
    pub fn compact_now(&mut self) {
        self.start_snapshot(Inline::First);
    }

    /// Hands back everyone still waiting, proposals first (the driver is
    /// stopping or its node crashed).
    pub fn drain_waiting(&mut self) -> Vec<R> {
        let proposals = std::mem::take(&mut self.proposals).into_values();
        let reads = std::mem::take(&mut self.reads).into_values();
        proposals.chain(reads).collect()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::sync::atomic::AtomicU64;

    use super::*;
    use crate::core::ReplicaConfig;
    use crate::sim::SimDisk;

    /// Sends nothing: a single-voter cluster has no peers.
    struct NoPeers;

    impl Transport<u64> for NoPeers {
        fn send(&mut self, _envelope: Envelope<u64>) {}
    }

    /// A state machine whose snapshot is `snapshot_bytes` long whatever it
    /// applied, so that the test sets the size of the state.
    #[derive(Default)]
    struct SizedState {
        snapshot_bytes: usize,
        /// The last slot applied.
        applied: Slot,
        /// Whether snapshots are taken "elsewhere", done when the test
        /// sends the bytes on `serializer`.
        background: bool,
        serializer: Option<std::sync::mpsc::SyncSender<Vec<u8>>>,
    }

    impl StateMachine<u64> for SizedState {
        type Output = ();
        type Snapshot = ();

        fn apply(&mut self, slot: Slot, _proposal: &Proposal<u64>) {
            assert!(
                self.serializer.is_none(),
                "nothing is applied while a snapshot is taken"
            );
            self.applied = slot;
        }

        fn snapshot(&self) -> Vec<u8> {
            vec![0; self.snapshot_bytes]
        }

        fn start_snapshot(&mut self) -> SnapshotJob {
            if !self.background {
                return SnapshotJob::Done(self.snapshot());
            }
            let (bytes_tx, bytes) = std::sync::mpsc::sync_channel(1);
            self.serializer = Some(bytes_tx);
            SnapshotJob::Running(bytes)
        }

        fn decode_snapshot(&self, _data: &[u8]) -> Result<(), String> {
            Ok(())
        }

        fn install_snapshot(&mut self, _slot: Slot, _snapshot: ()) {}
    }

    type TestDriver = Driver<u64, SimDisk<u64>, NoPeers, SizedState, ()>;

    /// A single-voter driver of node `id` snapshotting every `every` slots,
    /// leading, with its disk.
    fn leading_driver(id: u64, every: u64, snapshot_bytes: usize) -> (TestDriver, SimDisk<u64>) {
        leading_driver_of(
            id,
            every,
            SizedState {
                snapshot_bytes,
                ..SizedState::default()
            },
        )
    }

    fn leading_driver_of(id: u64, every: u64, machine: SizedState) -> (TestDriver, SimDisk<u64>) {
        let node = NodeId::new(id);
        let disk = SimDisk::new(id, 0, Arc::new(AtomicU64::new(0)));
        let config = ReplicaConfig::new(node, BTreeSet::from([node]), 1, 3);
        let replica = Replica::new(config, disk.image().durable_state());
        let mut driver = Driver::new(replica, disk.clone(), NoPeers, machine, 1, every);
        for _ in 0..100 {
            if driver.replica().is_leader() {
                break;
            }
            driver.tick();
            run(&mut driver, &disk);
        }
        assert!(driver.replica().is_leader(), "a single voter elects itself");
        (driver, disk)
    }

    fn run(driver: &mut TestDriver, disk: &SimDisk<u64>) {
        for _ in 0..100 {
            driver.advance().expect("the simulated disk does not fail");
            if !disk.sync_due() && !driver.has_work() {
                return;
            }
        }
        // A snapshot being taken elsewhere keeps the driver busy until the
        // test hands it over.
        assert!(driver.is_snapshotting(), "the driver kept finding work");
    }

    /// Proposes one command per slot until the driver compacts; returns the
    /// slots it took and the log bytes applied since the last snapshot
    /// just before the slot that brought the compaction.
    fn propose_until_compacted(driver: &mut TestDriver, disk: &SimDisk<u64>) -> (u64, u64) {
        let compacted = driver.replica().compacted();
        let mut log_bytes_before = 0;
        for command in 0..100_000 {
            log_bytes_before = driver.log_bytes_since_snapshot;
            driver.propose(command, ());
            run(driver, disk);
            if driver.replica().compacted() > compacted {
                return (driver.replica().compacted().since(compacted), log_bytes_before);
            }
        }
        panic!("no compaction after 100,000 slots ({log_bytes_before} bytes of log)");
    }

    #[test]
    fn a_large_state_is_snapshotted_once_the_log_reaches_a_staggered_fraction_of_it() {
        let every = 10;
        let snapshot_bytes = 20_000;
        // One slot of one command is far smaller than this.
        let slot_bytes_max = 200;
        for id in 1..=4 {
            let (mut driver, disk) = leading_driver(id, every, snapshot_bytes);
            let (slots, _) = propose_until_compacted(&mut driver, &disk);
            assert!(
                slots >= every,
                "node {id}: the first snapshot waits for the interval"
            );
            assert_eq!(driver.replica().snapshot_bytes(), snapshot_bytes);
            let (slots, log_bytes_before) = propose_until_compacted(&mut driver, &disk);
            let wanted = snapshot_bytes as u64 * (4 + id % 4) / 8;
            assert!(
                log_bytes_before < wanted && log_bytes_before + slot_bytes_max >= wanted,
                "node {id} compacted with {log_bytes_before} bytes of log (+ one slot), wanted {wanted}"
            );
            assert!(
                slots > every,
                "node {id}: the log, not the interval, decided ({slots} slots)"
            );
        }
    }

    #[test]
    fn a_small_state_is_snapshotted_every_interval() {
        let every = 10;
        let (mut driver, disk) = leading_driver(1, every, 8);
        for round in 0..3 {
            let (slots, _) = propose_until_compacted(&mut driver, &disk);
            assert!(
                (every..every + 3).contains(&slots),
                "round {round}: compacted after {slots} slots, every {every}"
            );
        }
    }

    #[test]
    fn applying_waits_for_a_snapshot_being_taken_while_slots_are_still_chosen() {
        let every = 10;
        let machine = SizedState {
            snapshot_bytes: 8,
            background: true,
            ..SizedState::default()
        };
        let (mut driver, disk) = leading_driver_of(1, every, machine);
        // The first snapshot is taken at once, the next one elsewhere.
        propose_until_compacted(&mut driver, &disk);
        assert!(!driver.is_snapshotting());
        let compacted = driver.replica().compacted();
        let mut command = 0;
        while !driver.is_snapshotting() {
            command += 1;
            assert!(command < 1_000, "no second snapshot started");
            driver.propose(command, ());
            run(&mut driver, &disk);
        }
        let snapshot_slot = driver.machine().applied;
        assert_eq!(driver.waiting(), 0, "what came before the snapshot is answered");
        for _ in 0..5 {
            command += 1;
            driver.propose(command, ());
            run(&mut driver, &disk);
        }
        assert_eq!(driver.waiting(), 5, "nothing applied, nobody answered");
        assert_eq!(driver.machine().applied, snapshot_slot);
        assert_eq!(driver.replica().compacted(), compacted);
        assert!(
            driver.replica().applied() > snapshot_slot,
            "slots are still chosen meanwhile"
        );

        let serializer = driver
            .machine_mut()
            .serializer
            .take()
            .expect("a snapshot is being taken");
        serializer.send(vec![0; 8]).expect("the driver waits for it");
        run(&mut driver, &disk);
        assert!(!driver.is_snapshotting());
        assert_eq!(
            driver.replica().compacted(),
            snapshot_slot,
            "the snapshot is of its slot"
        );
        assert_eq!(
            driver.waiting(),
            0,
            "everything chosen meanwhile is applied and answered"
        );
        assert_eq!(driver.machine().applied, driver.replica().applied());
    }
}
