//! [`ConsensusEngine`] on the Multi-Paxos [`Replica`]: a driver task owns the
//! replica and executes its effects — RocksDB writes synced before any
//! message that depends on them, sends through per-peer outboxes, chosen
//! commands applied in slot order, answers to proposers and readers — and
//! ticks it on an interval.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use parking_lot::Mutex;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tonic::service::Routes;

use super::effects::{Apply, Ready, Refusal};
use super::replica::{Replica, ReplicaConfig};
use super::storage::PaxosStore;
use super::transport::{Inbound, Outboxes, PaxosPeerService, INBOX_BATCHES_MAX, PEER_MESSAGE_BYTES_MAX};
use super::types::{Proposal, ProposalId, ReadId};
use crate::consensus::{
    AppliedState, CommandResult, ConsensusEngine, EngineConfig, EngineError, EngineKind, EngineStatus,
    LeaderInfo, Leadership, Member, NodeId,
};
use crate::lock::{Command, LockState};
use crate::rpc::pb::paxos::paxos_peer_server::PaxosPeerServer;

/// Client requests queued for the driver before callers wait.
pub const INPUT_QUEUE_MAX: usize = 16_384;
/// Most inputs or inbound batches the driver takes before executing effects,
/// so that one burst cannot starve ticks.
pub const DRAIN_MAX: usize = 1_024;

enum Input {
    Propose {
        command: Command,
        reply: oneshot::Sender<Result<CommandResult, EngineError>>,
    },
    Read {
        reply: oneshot::Sender<Result<(), EngineError>>,
    },
}

/// The Multi-Paxos engine.
pub struct PaxosEngine {
    node_id: NodeId,
    members: BTreeMap<NodeId, String>,
    state: Arc<AppliedState>,
    inputs: mpsc::Sender<Input>,
    leadership: watch::Receiver<Leadership>,
    chosen_upto: Arc<AtomicU64>,
    applied: Arc<AtomicU64>,
    stop: watch::Sender<bool>,
    driver: Mutex<Option<JoinHandle<()>>>,
    /// Why the driver stopped by itself (a storage failure), if it did.
    fatal: Arc<Mutex<Option<String>>>,
}

impl PaxosEngine {
    /// The error for a request the driver can no longer take.
    fn stopped(&self) -> EngineError {
        match self.fatal.lock().clone() {
            Some(reason) => EngineError::Fatal(reason),
            None => EngineError::ShuttingDown,
        }
    }

    /// Opens storage, restores the snapshot and the acceptor's records, and
    /// starts the driver. Returns the engine and the routes of its peer
    /// service, to mount on the node's gRPC server.
    pub async fn start(config: EngineConfig) -> anyhow::Result<(Arc<Self>, Routes)> {
        config.validate()?;
        // The driver syncs RocksDB writes with `block_in_place`, which needs
        // worker threads to hand its other tasks to.
        anyhow::ensure!(
            tokio::runtime::Handle::current().runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread,
            "the paxos engine needs a multi-threaded tokio runtime"
        );
        let tick = (config.heartbeat / 2).max(Duration::from_millis(1));
        let heartbeat_ticks = 2;
        let election_ticks = (config.election_timeout.as_millis() / tick.as_millis()).max(4) as u64;

        let store = PaxosStore::open(&config.data_dir)?;
        let boot = store.next_boot()?;
        let durable = store.load()?;
        let state = match &durable.snapshot {
            Some((slot, data)) => {
                let restored = LockState::restore(data)
                    .map_err(|error| anyhow::anyhow!("restoring the snapshot at slot {slot}: {error}"))?;
                Arc::new(AppliedState::new(restored))
            }
            None => Arc::new(AppliedState::default()),
        };
        let members: BTreeSet<NodeId> = config.members.keys().copied().collect();
        let mut replica_config =
            ReplicaConfig::new(config.node_id, members.clone(), heartbeat_ticks, election_ticks);
        replica_config.seed = rand::random();
        let replica = Replica::new(replica_config, durable);
        tracing::info!(
            node = config.node_id,
            boot,
            promised = %replica.promised(),
            snapshot_slot = replica.compacted(),
            "paxos replica restored"
        );

        let peers: BTreeMap<NodeId, String> = config
            .members
            .iter()
            .filter(|(id, _)| **id != config.node_id)
            .map(|(id, addr)| (*id, addr.clone()))
            .collect();
        let outboxes = Outboxes::start(config.node_id, &peers)?;
        let (inbox_tx, inbox) = mpsc::channel(INBOX_BATCHES_MAX);
        let (inputs, input_rx) = mpsc::channel(INPUT_QUEUE_MAX);
        let (leadership_tx, leadership) = watch::channel(Leadership::default());
        let (stop, stop_rx) = watch::channel(false);
        let chosen_upto = Arc::new(AtomicU64::new(replica.chosen_upto()));
        let applied = Arc::new(AtomicU64::new(replica.applied()));
        let fatal = Arc::new(Mutex::new(None));

        let driver = Driver {
            replica,
            store,
            state: state.clone(),
            members: config.members.clone(),
            outboxes,
            boot,
            next_seq: 0,
            next_read: 0,
            proposals: HashMap::new(),
            reads: HashMap::new(),
            leadership: leadership_tx,
            chosen_upto: chosen_upto.clone(),
            applied: applied.clone(),
            snapshot_every_entries: config.snapshot_every_entries,
            verified_snapshot: None,
            fatal: fatal.clone(),
        };
        let driver = tokio::spawn(driver.run(tick, inbox, input_rx, stop_rx));
        let engine = Arc::new(PaxosEngine {
            node_id: config.node_id,
            members: config.members,
            state,
            inputs,
            leadership,
            chosen_upto,
            applied,
            stop,
            driver: Mutex::new(Some(driver)),
            fatal,
        });
        let service = PaxosPeerServer::new(PaxosPeerService::new(members.into_iter().collect(), inbox_tx))
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

    fn status(&self) -> EngineStatus {
        EngineStatus {
            node_id: self.node_id,
            engine: EngineKind::Paxos,
            leadership: self.leadership.borrow().clone(),
            commit_index: self.chosen_upto.load(Ordering::Relaxed),
            applied_index: self.applied.load(Ordering::Relaxed),
            members: self
                .members
                .iter()
                .map(|(id, addr)| Member {
                    id: *id,
                    addr: addr.clone(),
                })
                .collect(),
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
        match self.fatal.lock().clone() {
            Some(reason) => Err(EngineError::Fatal(reason)),
            None => Ok(()),
        }
    }
}

/// Owns the replica and executes its effects.
struct Driver {
    replica: Replica,
    store: PaxosStore,
    state: Arc<AppliedState>,
    members: BTreeMap<NodeId, String>,
    outboxes: Outboxes,
    boot: u64,
    next_seq: u64,
    next_read: ReadId,
    proposals: HashMap<ProposalId, oneshot::Sender<Result<CommandResult, EngineError>>>,
    reads: HashMap<ReadId, oneshot::Sender<Result<(), EngineError>>>,
    leadership: watch::Sender<Leadership>,
    chosen_upto: Arc<AtomicU64>,
    applied: Arc<AtomicU64>,
    snapshot_every_entries: u64,
    /// A peer's snapshot decoded when it arrived, kept for its install.
    verified_snapshot: Option<(super::types::Slot, LockState)>,
    fatal: Arc<Mutex<Option<String>>>,
}

impl Driver {
    async fn run(
        mut self,
        tick: Duration,
        mut inbox: mpsc::Receiver<Inbound>,
        mut inputs: mpsc::Receiver<Input>,
        mut stop: watch::Receiver<bool>,
    ) {
        let mut ticker = tokio::time::interval(tick);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stop.changed() => break,
                _ = ticker.tick() => self.replica.tick(),
                Some((from, messages)) = inbox.recv() => {
                    self.step(from, messages);
                    // Take what else arrived, so one Ready (one fsync) covers it.
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
            if let Err(error) = self.execute() {
                // The replica's durable state is unknown: stop rather than
                // risk answering from memory that disk does not back.
                tracing::error!(%error, "paxos storage failed; the engine stops");
                let reason = format!("storage failure: {error:#}");
                *self.fatal.lock() = Some(reason.clone());
                // No longer anyone's leader: the services stop serving.
                self.leadership.send_replace(Leadership::default());
                self.fail_all(EngineError::Fatal(reason));
                return;
            }
        }
        self.fail_all(EngineError::ShuttingDown);
    }

    fn step(&mut self, from: NodeId, messages: Vec<super::message::Message>) {
        for message in messages {
            // A snapshot is decoded before the replica sees it: the replica
            // forgets the slots it covers at once, so an undecodable one
            // (corrupt, or from an incompatible version) must never get there.
            if let super::message::Message::Snapshot { slot, data } = &message {
                if *slot <= self.replica.applied() {
                    continue;
                }
                match LockState::restore(data) {
                    Ok(state) => self.verified_snapshot = Some((*slot, state)),
                    Err(error) => {
                        tracing::warn!(from, slot, %error, "undecodable snapshot from a peer ignored");
                        continue;
                    }
                }
            }
            self.replica.step(from, message);
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
                self.next_seq += 1;
                let id = ProposalId {
                    node: self.replica.id(),
                    boot: self.boot,
                    seq: self.next_seq,
                };
                self.proposals.insert(id, reply);
                self.replica.propose(Proposal { id, command });
            }
            Input::Read { reply } => {
                self.next_read += 1;
                self.reads.insert(self.next_read, reply);
                self.replica.read(self.next_read);
            }
        }
    }

    /// Executes one Ready in the order the core requires.
    fn execute(&mut self) -> anyhow::Result<()> {
        let Ready {
            persist,
            messages,
            apply,
            reads_ready,
            reads_failed,
            refused,
            abandoned,
        } = self.replica.take_ready();
        // Accepts travel while the local write syncs: the followers' fsyncs
        // overlap the leader's instead of following it.
        let (early, after_persist): (Vec<_>, Vec<_>) = messages
            .into_iter()
            .partition(|envelope| envelope.message.may_precede_persist());
        for envelope in early {
            self.outboxes.send(envelope.to, envelope.message);
        }
        if !persist.is_empty() {
            let store = &self.store;
            tokio::task::block_in_place(|| store.persist(&persist))?;
        }
        for envelope in after_persist {
            self.outboxes.send(envelope.to, envelope.message);
        }
        let mut snapshot_installed = false;
        for step in apply {
            match step {
                Apply::Chosen(chosen) => {
                    for proposal in chosen.value.proposals() {
                        let result = self.state.apply(&proposal.command);
                        if let Some(reply) = self.proposals.remove(&proposal.id) {
                            let _ = reply.send(Ok(result));
                        }
                    }
                }
                Apply::Snapshot { slot, data } => {
                    let restored = match self.verified_snapshot.take() {
                        Some((verified, state)) if verified == slot => state,
                        _ => LockState::restore(&data)
                            .map_err(|error| anyhow::anyhow!("a peer's snapshot at slot {slot}: {error}"))?,
                    };
                    let store = &self.store;
                    tokio::task::block_in_place(|| store.save_snapshot(slot, &data))?;
                    self.state.restore(restored);
                    snapshot_installed = true;
                    tracing::info!(slot, bytes = data.len(), "installed snapshot from a peer");
                }
            }
        }
        for id in reads_ready {
            if let Some(reply) = self.reads.remove(&id) {
                let _ = reply.send(Ok(()));
            }
        }
        let leader = self.leader_info();
        for id in reads_failed {
            if let Some(reply) = self.reads.remove(&id) {
                let _ = reply.send(Err(EngineError::NotLeader {
                    leader: leader.clone(),
                }));
            }
        }
        for (id, refusal) in refused {
            if let Some(reply) = self.proposals.remove(&id) {
                let error = match refusal {
                    Refusal::NotLeader { .. } => EngineError::NotLeader {
                        leader: leader.clone(),
                    },
                    Refusal::Overloaded => EngineError::Overloaded {
                        queued_max: self.replica.config.queued_proposals_max,
                    },
                };
                let _ = reply.send(Err(error));
            }
        }
        for id in abandoned {
            if let Some(reply) = self.proposals.remove(&id) {
                let _ = reply.send(Err(EngineError::Unavailable(
                    "leadership changed before the command was chosen; it may still take effect".to_string(),
                )));
            }
        }
        self.chosen_upto
            .store(self.replica.chosen_upto(), Ordering::Relaxed);
        self.applied.store(self.replica.applied(), Ordering::Relaxed);
        self.publish_leadership();
        if !snapshot_installed {
            self.maybe_snapshot()?;
        }
        Ok(())
    }

    /// Snapshots the state machine once enough slots were applied since the
    /// last one, then lets the replica forget (and storage delete) them.
    fn maybe_snapshot(&mut self) -> anyhow::Result<()> {
        let applied = self.replica.applied();
        if applied - self.replica.compacted() < self.snapshot_every_entries {
            return Ok(());
        }
        let data = self.state.snapshot();
        let store = &self.store;
        tokio::task::block_in_place(|| store.save_snapshot(applied, &data))?;
        tracing::debug!(
            slot = applied,
            bytes = data.len(),
            "snapshot taken; log truncated"
        );
        self.replica.compact(applied, Arc::new(data));
        Ok(())
    }

    fn leader_info(&self) -> Option<LeaderInfo> {
        self.replica.leader_id().and_then(|id| {
            self.members.get(&id).map(|addr| LeaderInfo {
                id,
                addr: addr.clone(),
            })
        })
    }

    fn publish_leadership(&self) {
        let view = Leadership {
            term: self.replica.term(),
            leader: self.leader_info(),
            is_self: self.replica.is_leader(),
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

    fn fail_all(&mut self, error: EngineError) {
        for (_, reply) in self.proposals.drain() {
            let _ = reply.send(Err(error.clone()));
        }
        for (_, reply) in self.reads.drain() {
            let _ = reply.send(Err(error.clone()));
        }
    }
}
