//! [`ConsensusEngine`] on the Multi-Paxos [`Driver`]: one task owns the
//! driver and feeds it ticks, peer messages, proposals, reads and storage
//! progress; RocksDB writes sync on the persister's thread, messages leave
//! through per-peer outboxes, and answers go back to the callers.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use parking_lot::Mutex;
use tokio::sync::{mpsc, oneshot, watch, Notify};
use tokio::task::JoinHandle;
use tonic::service::Routes;

use crate::core::ready::Refusal;
use crate::core::types::{Configuration, Proposal, Slot};
use crate::core::{ConfigurationChange, ReconfigurationRefused, Replica, ReplicaConfig};
use crate::driver::{Answer, DecodeJob, Driver, Job, SnapshotJob, StateMachine};
use crate::store::{PaxosStore, Persister};
use crate::transport::{
    Admission, Inbound, Outboxes, PaxosPeerService, INBOX_BATCHES_MAX, PEER_MESSAGE_BYTES_MAX,
};
use quorumlock_core::consensus::{
    AppliedState, CommandResult, ConsensusEngine, EngineConfig, EngineError, EngineKind, EngineStatus,
    EngineTelemetry, KnownMembership, LeaderInfo, Leadership, Member, MemberState, MembershipChange, NodeId,
};
use quorumlock_core::lock::{Command, LockState};
use quorumlock_proto::paxos::paxos_peer_server::PaxosPeerServer;
use quorumlock_tls::Dialer;

/// Client requests queued for the driver before callers wait.
pub const INPUT_QUEUE_MAX: usize = 16_384;
/// Most inputs or inbound batches the driver takes before executing effects,
/// so that one burst cannot starve ticks.
pub const DRAIN_MAX: usize = 1_024;
/// How long a membership change waits to be chosen before the call answers
/// UNAVAILABLE (the change may still take effect).
pub const MEMBERSHIP_CHANGE_WAIT_MAX: Duration = Duration::from_secs(30);

enum Input {
    Propose {
        command: Command,
        reply: oneshot::Sender<Result<CommandResult, EngineError>>,
    },
    Read {
        reply: oneshot::Sender<Result<(), EngineError>>,
    },
    Reconfigure {
        change: ConfigurationChange,
        reply: oneshot::Sender<Result<Arc<Configuration>, ReconfigurationRefused>>,
    },
}

/// The membership as the driver last published it.
#[derive(Debug, Clone)]
struct MembershipView {
    config: Arc<Configuration>,
    /// On the leader: the chosen prefix each member last reported.
    progress: BTreeMap<NodeId, Slot>,
    /// Why this node no longer belongs to the cluster, once it learned so.
    removed: Option<String>,
}

/// Who waits for an answer of the driver.
enum Reply {
    Propose(oneshot::Sender<Result<CommandResult, EngineError>>),
    Read(oneshot::Sender<Result<(), EngineError>>),
}

impl Reply {
    fn fail(self, error: EngineError) {
        match self {
            Reply::Propose(reply) => {
                let _ = reply.send(Err(error));
            }
            Reply::Read(reply) => {
                let _ = reply.send(Err(error));
            }
        }
    }
}

/// The lock state machine as the driver applies it.
pub struct LockMachine {
    state: Arc<AppliedState>,
    telemetry: Arc<EngineTelemetry>,
    /// Woken when a snapshot serialized off the driver's task is done.
    wake: Arc<Notify>,
}

impl LockMachine {
    /// Applies to `state`; snapshots taken and installed are recorded in
    /// `telemetry`; `wake` is notified when a snapshot taken on a thread of
    /// its own is done.
    pub fn new(state: Arc<AppliedState>, telemetry: Arc<EngineTelemetry>, wake: Arc<Notify>) -> Self {
        LockMachine {
            state,
            telemetry,
            wake,
        }
    }
}

impl StateMachine<Command> for LockMachine {
    type Output = CommandResult;
    type Snapshot = LockState;

    fn apply(&mut self, slot: Slot, proposal: &Proposal<Command>) -> CommandResult {
        self.state
            .apply_entry(slot.get(), [&proposal.command])
            .pop()
            .expect("one command gives one result")
    }

    fn apply_slot(&mut self, slot: Slot, proposals: &[Proposal<Command>]) -> Vec<CommandResult> {
        // The whole slot at once: a reader of the state and its index sees
        // every command of the slot or none.
        self.state
            .apply_entry(slot.get(), proposals.iter().map(|proposal| &proposal.command))
    }

    fn snapshot(&self) -> Vec<u8> {
        serialize(&self.state, &self.telemetry)
    }

    /// Serializes on a thread of its own: at a million held locks that
    /// takes longer than an election timeout, which on the driver's task
    /// would stop heartbeats and votes with it. The driver applies nothing
    /// meanwhile; readers of the state go on.
    fn start_snapshot(&mut self) -> SnapshotJob {
        let (bytes_tx, bytes) = std::sync::mpsc::sync_channel(1);
        let (state, telemetry, wake) = (self.state.clone(), self.telemetry.clone(), self.wake.clone());
        let serializer = move || {
            // The driver stopped if nobody receives: nothing to hand over.
            let _ = bytes_tx.send(serialize(&state, &telemetry));
            wake.notify_one();
        };
        match std::thread::Builder::new()
            .name("paxos-snapshot".to_string())
            .spawn(serializer)
        {
            Ok(_) => SnapshotJob::Running(bytes),
            Err(error) => {
                tracing::warn!(%error, "no thread for the snapshot; serializing on the driver's task");
                SnapshotJob::Done(self.snapshot())
            }
        }
    }

    fn decode_snapshot(&self, data: &[u8]) -> Result<LockState, String> {
        LockState::restore(data)
    }

    /// Decodes on a thread of its own: at a million held locks that takes
    /// longer than an election timeout, and the driver's task keeps
    /// heartbeats, votes and this node's part in the log going meanwhile.
    fn start_decode_snapshot(&mut self, data: Arc<Vec<u8>>) -> DecodeJob<LockState> {
        let (decoded_tx, decoded) = std::sync::mpsc::sync_channel(1);
        let (bytes, wake) = (data.clone(), self.wake.clone());
        let decoder = move || {
            // The driver stopped if nobody receives: nothing to hand over.
            let _ = decoded_tx.send(LockState::restore(&bytes));
            wake.notify_one();
        };
        match std::thread::Builder::new()
            .name("paxos-snapshot-decode".to_string())
            .spawn(decoder)
        {
            Ok(_) => Job::Running(decoded),
            Err(error) => {
                tracing::warn!(%error, "no thread to decode the snapshot; decoding on the driver's task");
                Job::Done(self.decode_snapshot(&data))
            }
        }
    }

    fn install_snapshot(&mut self, slot: Slot, snapshot: LockState) {
        self.state.restore(snapshot, slot.get());
        self.telemetry.snapshot_installed();
    }
}

/// Serializes `state`, recording the snapshot's size and time.
fn serialize(state: &AppliedState, telemetry: &EngineTelemetry) -> Vec<u8> {
    let started = std::time::Instant::now();
    let snapshot = state.snapshot();
    telemetry.snapshot_saved(snapshot.len(), started.elapsed());
    snapshot
}

type LockDriver = Driver<Command, Persister<Command>, Outboxes<Command>, LockMachine, Reply>;

/// The Multi-Paxos engine.
pub struct PaxosEngine {
    node_id: NodeId,
    membership: watch::Receiver<MembershipView>,
    /// Held while a membership change runs: one at a time.
    membership_change: tokio::sync::Mutex<()>,
    state: Arc<AppliedState>,
    inputs: mpsc::Sender<Input>,
    leadership: watch::Receiver<Leadership>,
    chosen_upto: Arc<AtomicU64>,
    applied: Arc<AtomicU64>,
    stop: watch::Sender<bool>,
    driver: Mutex<Option<JoinHandle<()>>>,
    /// Why the driver stopped by itself (a storage failure), once it did.
    failed: watch::Receiver<Option<String>>,
    /// The members and retired ids of the configuration in force.
    known_membership: watch::Receiver<KnownMembership>,
}

/// The first boot counter of a store created under `incarnation`: its
/// random high 32 bits, so that a node repaired under a new incarnation
/// (whose store starts again) proposes under ids no earlier life of it
/// used, as proposal ids name the proposing node and its boot.
pub fn first_boot(incarnation: u64) -> u64 {
    ((incarnation >> 32).max(1) << 32) + 1
}

impl PaxosEngine {
    /// The error for a request the driver can no longer take.
    fn stopped(&self) -> EngineError {
        match self.failed.borrow().clone() {
            Some(reason) => EngineError::Fatal(reason),
            None => EngineError::ShuttingDown,
        }
    }

    /// Opens storage, restores the snapshot and the acceptor's records, and
    /// starts the driver. Returns the engine and the routes of its peer
    /// service, to mount on the node's gRPC server.
    pub async fn start(config: EngineConfig, dialer: Dialer) -> anyhow::Result<(Arc<Self>, Routes)> {
        config.validate()?;
        let tick = (config.heartbeat / 2).max(Duration::from_millis(1));
        let heartbeat_ticks = 2;
        let election_ticks = (config.election_timeout.as_millis() / tick.as_millis()).max(4) as u64;

        let store = PaxosStore::open(&config.data_dir)?.with_telemetry(config.telemetry.clone());
        let boot = store.next_boot(first_boot(config.incarnations.own_incarnation()))?;
        let durable = store.load::<Command>()?;
        let state = match &durable.snapshot {
            Some((slot, data)) => {
                let restored = LockState::restore(data)
                    .map_err(|error| anyhow::anyhow!("restoring the snapshot at slot {slot}: {error}"))?;
                Arc::new(AppliedState::at(restored, slot.get()))
            }
            None => Arc::new(AppliedState::default()),
        };
        state.limit_history(config.watch_history);
        // A joining node knows no configuration: it learns the cluster's
        // from the leader that adds it.
        let (members, addresses): (BTreeSet<NodeId>, BTreeMap<NodeId, String>) = if config.join {
            (BTreeSet::new(), BTreeMap::new())
        } else {
            (config.members.keys().copied().collect(), config.members.clone())
        };
        let mut replica_config = ReplicaConfig::new(config.node_id, members, heartbeat_ticks, election_ticks);
        replica_config.addresses = addresses;
        replica_config.seed = rand::random();
        let replica = Replica::new(replica_config, durable);
        let in_force = replica.configuration().clone();
        tracing::info!(
            node = %config.node_id,
            boot,
            promised = %replica.promised(),
            snapshot_slot = %replica.compacted(),
            epoch = in_force.epoch,
            voters = ?in_force.voters,
            "paxos replica restored"
        );

        let outboxes = Outboxes::start(
            config.node_id,
            &peers_of(&in_force, config.node_id),
            &dialer,
            config.incarnations.clone(),
            config.telemetry.clone(),
        )?;
        let admission = Arc::new(Mutex::new(Admission::of(&in_force)));
        let (known_membership_tx, known_membership) = watch::channel(known_membership_of(&in_force));
        let (membership_tx, membership) = watch::channel(MembershipView {
            config: in_force,
            progress: BTreeMap::new(),
            removed: replica.removed().map(str::to_string),
        });
        let wake = Arc::new(Notify::new());
        let persister = Persister::start(store, wake.clone())?;
        let (inbox_tx, inbox) = mpsc::channel(INBOX_BATCHES_MAX);
        let (inputs, input_rx) = mpsc::channel(INPUT_QUEUE_MAX);
        let (leadership_tx, leadership) = watch::channel(Leadership::default());
        let (stop, stop_rx) = watch::channel(false);
        let (failed_tx, failed) = watch::channel(None);
        let chosen_upto = Arc::new(AtomicU64::new(replica.chosen_upto().get()));
        let applied = Arc::new(AtomicU64::new(replica.applied().get()));

        let shell = Shell {
            driver: Driver::new(
                replica,
                persister,
                outboxes,
                LockMachine::new(state.clone(), config.telemetry.clone(), wake.clone()),
                boot,
                config.snapshot_every_entries,
            ),
            membership: membership_tx,
            admission: admission.clone(),
            known_membership: known_membership_tx,
            leadership: leadership_tx,
            chosen_upto: chosen_upto.clone(),
            applied: applied.clone(),
            snapshot_source: None,
            failed: failed_tx,
        };
        let driver = tokio::spawn(shell.run(tick, wake, inbox, input_rx, stop_rx));
        let engine = Arc::new(PaxosEngine {
            node_id: config.node_id,
            membership,
            membership_change: tokio::sync::Mutex::new(()),
            state,
            inputs,
            leadership,
            chosen_upto,
            applied,
            stop,
            driver: Mutex::new(Some(driver)),
            failed,
            known_membership,
        });
        let service = PaxosPeerServer::new(PaxosPeerService::new(
            admission,
            inbox_tx,
            config.stopping.clone(),
        ))
        .max_decoding_message_size(PEER_MESSAGE_BYTES_MAX)
        .max_encoding_message_size(PEER_MESSAGE_BYTES_MAX);
        Ok((engine, Routes::new(service)))
    }
}

#[async_trait]
impl ConsensusEngine for PaxosEngine {
    async fn propose(&self, command: Command) -> Result<CommandResult, EngineError> {
        let (reply, answer) = oneshot::channel();
        self.inputs
            .send(Input::Propose { command, reply })
            .await
            .map_err(|_| self.stopped())?;
        answer.await.map_err(|_| self.stopped())?
    }

    async fn read_barrier(&self) -> Result<(), EngineError> {
        let (reply, answer) = oneshot::channel();
        self.inputs
            .send(Input::Read { reply })
            .await
            .map_err(|_| self.stopped())?;
        answer.await.map_err(|_| self.stopped())?
    }

    fn state(&self) -> &Arc<AppliedState> {
        &self.state
    }

    fn leadership(&self) -> watch::Receiver<Leadership> {
        self.leadership.clone()
    }

    fn failed(&self) -> watch::Receiver<Option<String>> {
        self.failed.clone()
    }

    fn status(&self) -> EngineStatus {
        let config = self.membership.borrow().config.clone();
        EngineStatus {
            node_id: self.node_id,
            engine: EngineKind::Paxos,
            leadership: self.leadership.borrow().clone(),
            commit_index: self.chosen_upto.load(Ordering::Relaxed),
            applied_index: self.applied.load(Ordering::Relaxed),
            members: config
                .voters
                .iter()
                .map(|id| Member {
                    id: *id,
                    addr: config.addresses.get(id).cloned().unwrap_or_default(),
                })
                .collect(),
        }
    }

    fn removed(&self) -> Option<String> {
        self.membership.borrow().removed.clone()
    }

    fn known_membership(&self) -> watch::Receiver<KnownMembership> {
        self.known_membership.clone()
    }

    fn members(&self) -> Vec<MemberState> {
        let view = self.membership.borrow().clone();
        let config = &view.config;
        config
            .voters
            .iter()
            .map(|id| (*id, true))
            .chain(config.learners.iter().map(|id| (*id, false)))
            .map(|(id, voter)| MemberState {
                id,
                addr: config.addresses.get(&id).cloned().unwrap_or_default(),
                voter,
                matched_index: if id == self.node_id && self.leadership.borrow().is_self {
                    Some(self.chosen_upto.load(Ordering::Relaxed))
                } else {
                    view.progress.get(&id).map(|slot| slot.get())
                },
            })
            .collect()
    }

    /// Proposes the change as a slot of its own on the leader and waits
    /// until it is chosen and in force here. A change of voters is a
    /// stop-sign: the configuration that decides it decides nothing after
    /// it, and the next one (one epoch higher) elects a leader of its own.
    async fn change_membership(&self, change: MembershipChange) -> Result<(), EngineError> {
        let Ok(_one_at_a_time) = self.membership_change.try_lock() else {
            return Err(EngineError::MembershipRefused(
                "another membership change is in progress; run one change at a time".to_string(),
            ));
        };
        let change = match change {
            MembershipChange::AddLearner { id, addr } => ConfigurationChange::AddLearner { id, addr },
            MembershipChange::Promote { id } => ConfigurationChange::Promote { id },
            MembershipChange::Remove { id } => ConfigurationChange::Remove { id },
            MembershipChange::Demote { id } => ConfigurationChange::Demote { id },
        };
        // Whether a later configuration still shows the change made (the
        // proposed one may have been chosen and then changed further, or
        // been chosen stale, as a no-op, after another one).
        let shown = {
            let change = change.clone();
            move |config: &Configuration| match &change {
                ConfigurationChange::AddLearner { id, .. } => config.has(*id) || config.retired.contains(id),
                ConfigurationChange::Promote { id } => {
                    config.voters.contains(id) || config.retired.contains(id)
                }
                ConfigurationChange::Remove { id } => config.retired.contains(id),
                ConfigurationChange::Demote { id } => !config.voters.contains(id),
            }
        };
        let (reply, answer) = oneshot::channel();
        self.inputs
            .send(Input::Reconfigure { change, reply })
            .await
            .map_err(|_| self.stopped())?;
        let target = match answer.await.map_err(|_| self.stopped())? {
            Ok(target) => target,
            Err(ReconfigurationRefused::NotLeader { leader }) => {
                let config = self.membership.borrow().config.clone();
                return Err(EngineError::NotLeader {
                    leader: leader.and_then(|id| {
                        config.addresses.get(&id).map(|addr| LeaderInfo {
                            id,
                            addr: addr.clone(),
                        })
                    }),
                });
            }
            Err(ReconfigurationRefused::Refused(why)) => return Err(EngineError::MembershipRefused(why)),
        };
        let mut membership = self.membership.clone();
        let outcome = tokio::time::timeout(
            MEMBERSHIP_CHANGE_WAIT_MAX,
            membership.wait_for(|view| view.config.version >= target.version),
        )
        .await;
        match outcome {
            Ok(Ok(view)) if *view.config == *target || shown(&view.config) => Ok(()),
            Ok(Ok(_)) => Err(EngineError::Unavailable(
                "another membership change took effect first; check `member list` and retry".to_string(),
            )),
            Ok(Err(_)) => Err(self.stopped()),
            Err(_) => Err(EngineError::Unavailable(format!(
                "the membership change was not chosen within {MEMBERSHIP_CHANGE_WAIT_MAX:?}; it may still complete"
            ))),
        }
    }

    async fn shutdown(&self) -> Result<(), EngineError> {
        let _ = self.stop.send(true);
        let driver = self.driver.lock().take();
        if let Some(driver) = driver {
            driver.await.map_err(|error| {
                EngineError::Fatal(format!("paxos driver failed while stopping: {error}"))
            })?;
        }
        match self.failed.borrow().clone() {
            Some(reason) => Err(EngineError::Fatal(reason)),
            None => Ok(()),
        }
    }
}

/// The task around the driver: its inputs, its answers, and what the rest
/// of the node sees of it.
struct Shell {
    driver: LockDriver,
    membership: watch::Sender<MembershipView>,
    admission: Arc<Mutex<Admission>>,
    known_membership: watch::Sender<KnownMembership>,
    leadership: watch::Sender<Leadership>,
    chosen_upto: Arc<AtomicU64>,
    applied: Arc<AtomicU64>,
    failed: watch::Sender<Option<String>>,
    /// The node a snapshot is being received from, and its address, while
    /// the transport reaches it for that alone (see
    /// [`Replica::snapshot_source`]).
    snapshot_source: Option<(NodeId, String)>,
}

impl Shell {
    async fn run(
        mut self,
        tick: Duration,
        wake: Arc<Notify>,
        mut inbox: mpsc::Receiver<Inbound<Command>>,
        mut inputs: mpsc::Receiver<Input>,
        mut stop: watch::Receiver<bool>,
    ) {
        let mut ticker = tokio::time::interval(tick);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stop.changed() => break,
                _ = ticker.tick() => self.driver.tick(),
                // More Readys are durable (or storage failed).
                () = wake.notified() => {}
                Some((from, messages)) = inbox.recv() => {
                    self.step(from, messages);
                    // Take what else arrived, so that one Ready covers it.
                    for _ in 1..DRAIN_MAX {
                        match inbox.try_recv() {
                            Ok((from, messages)) => self.step(from, messages),
                            Err(_) => break,
                        }
                    }
                    self.drain_inputs(&mut inputs);
                }
                Some(input) = inputs.recv() => {
                    self.input(input);
                    self.drain_inputs(&mut inputs);
                }
            }
            match self.driver.advance() {
                Ok(answers) => self.answer(answers),
                Err(error) => {
                    // The replica's durable state is unknown: stop rather than
                    // risk answering from memory that disk does not back.
                    // The node reports the reason, once, and exits.
                    let reason = error.to_string();
                    // No longer anyone's leader: the services stop serving.
                    self.leadership.send_replace(Leadership::default());
                    self.stop_driver(EngineError::Fatal(reason.clone())).await;
                    self.failed.send_replace(Some(reason));
                    return;
                }
            }
            self.publish();
        }
        self.stop_driver(EngineError::ShuttingDown).await;
    }

    /// Fails every waiting caller, then stops the persister's thread and the
    /// outboxes' tasks, so nothing of the driver touches storage or the
    /// network afterwards.
    async fn stop_driver(&mut self, error: EngineError) {
        for reply in self.driver.drain_waiting() {
            reply.fail(error.clone());
        }
        self.driver.storage_mut().stop();
        self.driver.transport_mut().stop().await;
    }

    fn step(&mut self, from: NodeId, messages: Vec<crate::core::message::Message<Command>>) {
        for message in messages {
            self.driver.step(from, message);
        }
    }

    fn drain_inputs(&mut self, inputs: &mut mpsc::Receiver<Input>) {
        for _ in 0..DRAIN_MAX {
            match inputs.try_recv() {
                Ok(input) => self.input(input),
                Err(_) => break,
            }
        }
    }

    fn input(&mut self, input: Input) {
        match input {
            Input::Propose { command, reply } => {
                self.driver.propose(command, Reply::Propose(reply));
            }
            Input::Read { reply } => self.driver.read(Reply::Read(reply)),
            Input::Reconfigure { change, reply } => {
                let _ = reply.send(self.driver.replica_mut().propose_reconfiguration(change));
            }
        }
    }

    fn answer(&self, answers: Vec<Answer<Reply, CommandResult>>) {
        for answer in answers {
            match answer {
                Answer::Applied {
                    reply: Reply::Propose(reply),
                    output,
                } => {
                    let _ = reply.send(Ok(output));
                }
                Answer::ReadReady {
                    reply: Reply::Read(reply),
                } => {
                    let _ = reply.send(Ok(()));
                }
                Answer::Refused { reply, refusal } => reply.fail(match refusal {
                    Refusal::NotLeader { .. } => EngineError::NotLeader {
                        leader: self.leader_info(),
                    },
                    Refusal::Overloaded => EngineError::Overloaded {
                        queued_max: self.driver.replica().config().queued_proposals_max,
                    },
                }),
                Answer::Abandoned { reply } => reply.fail(EngineError::Unavailable(
                    "leadership changed before the command was chosen; it may still take effect".to_string(),
                )),
                Answer::ReadFailed { reply } => reply.fail(EngineError::NotLeader {
                    leader: self.leader_info(),
                }),
                Answer::Applied { .. } | Answer::ReadReady { .. } => {
                    unreachable!("the driver answers proposals as applied and reads as ready")
                }
            }
        }
    }

    fn leader_info(&self) -> Option<LeaderInfo> {
        let replica = self.driver.replica();
        let config = replica.configuration();
        replica.leader_id().and_then(|id| {
            config.addresses.get(&id).map(|addr| LeaderInfo {
                id,
                addr: addr.clone(),
            })
        })
    }

    /// Keeps the transport, the peer service's admission and the published
    /// membership in step with the configuration in force.
    fn follow_configuration(&mut self) {
        if let Some(peer) = self.driver.transport_mut().refused_as_retired() {
            let id = self.driver.replica().id();
            self.driver.replica_mut().note_removed(format!(
                "node {id} was removed from the cluster: member {peer} refuses its messages as those of a removed node"
            ));
        }
        let replica = self.driver.replica();
        let config = replica.configuration().clone();
        let removed = replica.removed().map(str::to_string);
        let progress: BTreeMap<NodeId, Slot> = replica.member_progress().into_iter().collect();
        let source = replica
            .snapshot_source()
            .map(|(from, addr)| (from, addr.to_string()));
        let id = replica.id();
        let changed = {
            let view = self.membership.borrow();
            !Arc::ptr_eq(&view.config, &config) || view.removed != removed
        };
        if changed {
            *self.admission.lock() = Admission::of(&config);
            self.known_membership.send_if_modified(|known| {
                let now = known_membership_of(&config);
                let modified = *known != now;
                *known = now;
                modified
            });
        }
        if changed || source != self.snapshot_source {
            // A node that knows no configuration yet (it joins, or
            // repairs) pulls a snapshot's chunks from a sender it has no
            // address for but the one the snapshot's configuration gives.
            let mut peers = peers_of(&config, id);
            if let Some((from, addr)) = &source {
                peers.entry(*from).or_insert_with(|| addr.clone());
            }
            self.driver.transport_mut().sync(&peers);
            self.snapshot_source = source;
        }
        self.membership.send_if_modified(|view| {
            let modified = changed || view.progress != progress;
            view.config = config;
            view.progress = progress;
            view.removed = removed;
            modified
        });
    }

    fn publish(&mut self) {
        self.follow_configuration();
        let replica = self.driver.replica();
        self.chosen_upto
            .store(replica.chosen_upto().get(), Ordering::Relaxed);
        self.applied.store(replica.applied().get(), Ordering::Relaxed);
        let view = Leadership {
            term: replica.term(),
            leader: self.leader_info(),
            is_self: replica.is_leader(),
        };
        self.leadership.send_if_modified(|current| {
            let changed = *current != view;
            if changed {
                tracing::info!(leader = ?view.leader.as_ref().map(|l| l.id), term = view.term, "paxos leadership changed");
                *current = view;
            }
            changed
        });
    }
}

/// The membership a configuration in force gives: the same voters,
/// learners and retired ids as the peer service's [`Admission`].
fn known_membership_of(config: &Configuration) -> KnownMembership {
    KnownMembership {
        members: config.voters.iter().chain(&config.learners).copied().collect(),
        retired: config.retired.clone(),
        configured: !config.voters.is_empty(),
    }
}

/// The members other than `id`, with their addresses.
fn peers_of(config: &Configuration, id: NodeId) -> BTreeMap<NodeId, String> {
    config
        .addresses
        .iter()
        .filter(|(member, _)| **member != id && config.has(**member))
        .map(|(member, addr)| (*member, addr.clone()))
        .collect()
}
