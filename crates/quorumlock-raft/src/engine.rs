//! [`ConsensusEngine`] on openraft.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use openraft::error::{CheckIsLeaderError, RaftError};
use openraft::network::RaftNetworkFactory;
use openraft::{BasicNode, Config, RaftMetrics, ServerState, SnapshotPolicy};
use tokio::sync::{watch, Semaphore};
use tonic::service::Routes;

use super::batcher::{leader_of, Batcher};
use super::contact::{Contacted, QuorumContact};
use super::election::{ElectionTiming, LongerLogs};
use super::log_store::{LogStore, CF_LOG, CF_META};
use super::network::PeerNetwork;
use super::retirement::Retirement;
use super::service::RaftPeerService;
use super::state_machine::{StateMachineStore, CF_SNAPSHOT};
use super::types::{Raft, TypeConfig};
use super::wal_sync::WalSync;
use quorumlock_core::consensus::{
    AppliedState, CommandResult, ConsensusEngine, EngineConfig, EngineError, EngineKind, EngineStatus,
    KnownMembership, LeaderInfo, Leadership, Member, MemberState, MembershipChange, NodeId,
};
use quorumlock_core::lock::Command;
use quorumlock_proto::raft::raft_peer_server::RaftPeerServer;
use quorumlock_tls::Dialer;

/// Commands a leader accepts for ordering at once; beyond this `propose`
/// is refused at once as overloaded. openraft queues client writes without
/// bound, so without this a flood would grow memory and every command's
/// latency until all of them time out (and heartbeats and read barriers
/// queue behind them).
pub const PROPOSALS_IN_FLIGHT_MAX: usize = 4_096;

/// How long openraft's tasks get, once its core stopped, to let go of the
/// database before the engine reports that it could not close it.
pub const STORAGE_RELEASE_WAIT_MAX: Duration = Duration::from_secs(10);

/// A learner may be promoted once its log is at most this many entries
/// behind the leader's: a voter that lags further would slow every commit
/// that needs it, or leave the cluster without a quorum until it caught up.
pub const PROMOTE_LAG_MAX: u64 = 1_000;

/// How long a membership change step may take to commit before the call
/// answers UNAVAILABLE (the step may still complete; `member list` tells).
pub const MEMBERSHIP_CHANGE_WAIT_MAX: Duration = Duration::from_secs(30);

/// How long a membership change waits for the leader to apply the newest
/// configuration in its log before refusing to check against it.
pub const MEMBERSHIP_APPLY_WAIT_MAX: Duration = Duration::from_secs(2);

/// The openraft engine.
pub struct RaftEngine {
    raft: Raft,
    in_flight: Semaphore,
    batcher: Batcher,
    node_id: NodeId,
    state: Arc<AppliedState>,
    leadership: watch::Receiver<Leadership>,
    /// While this node leads: how long, in ms, no quorum has answered it,
    /// once that is longer than two election timeouts; `None` otherwise.
    quorum_silent: watch::Receiver<Option<u64>>,
    failed: watch::Receiver<Option<String>>,
    commit_index: Arc<AtomicU64>,
    applied_index: Arc<AtomicU64>,
    /// Pause between two read-barrier rounds (the heartbeat period).
    barrier_retry_pause: Duration,
    /// How long a read barrier keeps trying to hear a quorum.
    barrier_patience: Duration,
    /// The database and the WAL sync thread, closed in order by
    /// [`ConsensusEngine::shutdown`].
    storage: parking_lot::Mutex<Option<OpenStorage>>,
    /// Held while a membership change step runs on this node.
    membership_change: Arc<tokio::sync::Mutex<()>>,
    /// The ids membership changes removed, as applied here.
    retirement: Arc<Retirement>,
    /// Tells removed nodes of their removal (absent over a simulated
    /// network).
    notices: std::sync::OnceLock<PeerNetwork>,
    /// The members and retired ids, republished when either changes.
    known_membership: watch::Receiver<KnownMembership>,
}

/// The engine's database and its WAL sync thread (absent when appends sync
/// inline).
type OpenStorage = (Arc<rocksdb::DB>, Option<std::thread::JoinHandle<()>>);

impl RaftEngine {
    /// Opens storage, starts the node, and forms the cluster if storage is
    /// fresh (every member initializes with the same membership, which
    /// openraft's voting makes safe). Returns the engine and the routes of its
    /// peer service, to mount on the node's gRPC server.
    pub async fn start(config: EngineConfig, dialer: Dialer) -> anyhow::Result<(Arc<Self>, Routes)> {
        let retirement = Arc::new(Retirement::new(config.node_id));
        let network = PeerNetwork::new(
            dialer,
            retirement.clone(),
            config.incarnations.clone(),
            config.telemetry.clone(),
        );
        let state = Arc::new(AppliedState::default());
        state.limit_history(config.watch_history);
        let engine =
            Self::start_with_network(config, network.clone(), state, WalSync::Background, retirement).await?;
        let _ = engine.notices.set(network);
        let service = RaftPeerServer::new(RaftPeerService::new(
            engine.raft.clone(),
            engine.retirement.clone(),
        ))
        .max_decoding_message_size(super::network::PEER_MESSAGE_BYTES_MAX)
        .max_encoding_message_size(super::network::PEER_MESSAGE_BYTES_MAX);
        Ok((engine, Routes::new(service)))
    }

    /// Like [`RaftEngine::start`], but over any peer transport and applying
    /// to a given (empty) state, whose notices the caller may already watch.
    /// The simulation runs nodes this way over an in-memory network; the
    /// caller delivers peer messages to [`RaftEngine::raft`]; `wal` says
    /// where log appends are synced; the state machine keeps the retired
    /// ids in `retirement`, which the transport may share.
    pub async fn start_with_network<N>(
        config: EngineConfig,
        network: N,
        state: Arc<AppliedState>,
        wal: WalSync,
        retirement: Arc<Retirement>,
    ) -> anyhow::Result<Arc<Self>>
    where
        N: RaftNetworkFactory<TypeConfig>,
        N::Network: Clone,
    {
        config.validate()?;
        let patience = config.election_timeout * 2;
        let contact = Arc::new(QuorumContact::default());
        let longer_logs = Arc::new(LongerLogs::default());
        let network = Contacted::new(network, contact.clone(), longer_logs.clone(), patience);
        let (election_min_ms, election_max_ms) =
            openraft_election_timeouts(config.heartbeat, config.election_timeout);
        let raft_config = Config {
            cluster_name: "quorumlock".to_string(),
            heartbeat_interval: config.heartbeat.as_millis() as u64,
            election_timeout_min: election_min_ms,
            election_timeout_max: election_max_ms,
            snapshot_policy: SnapshotPolicy::LogsSinceLast(config.snapshot_every_entries),
            // Keep a tail of the log after a snapshot so a briefly lagging follower
            // catches up from the log rather than a snapshot transfer.
            max_in_snapshot_log_to_keep: config.snapshot_every_entries.min(1_000),
            // Entries carry up to 256 commands and 2 MiB (super::batcher),
            // so one AppendEntries stays under the peer message bound.
            max_payload_entries: 64,
            install_snapshot_timeout: 10_000,
            ..Default::default()
        }
        .validate()?;

        let db = quorumlock_storage::open(&config.data_dir.join("raft"), &[CF_LOG, CF_META, CF_SNAPSHOT])?;
        let commit_index = Arc::new(AtomicU64::new(0));
        let applied_index = Arc::new(AtomicU64::new(0));
        let (log_store, wal_thread) =
            LogStore::new(db.clone(), commit_index.clone(), wal, config.telemetry.clone())?;
        let state_machine = StateMachineStore::open(
            db.clone(),
            state.clone(),
            retirement.clone(),
            applied_index.clone(),
            config.telemetry.clone(),
        )?;
        let raft = Raft::new(
            config.node_id,
            Arc::new(raft_config),
            network,
            log_store,
            state_machine,
        )
        .await?;

        if config.join {
            tracing::info!(node = %config.node_id, "joining: waiting to be added by the cluster's leader");
        } else if !raft.is_initialized().await? {
            let members: BTreeMap<NodeId, BasicNode> = config
                .members
                .iter()
                .map(|(id, addr)| (*id, BasicNode { addr: addr.clone() }))
                .collect();
            match raft.initialize(members).await {
                Ok(()) => tracing::info!(node = %config.node_id, "initialized a fresh cluster membership"),
                // Another member's log reached us first: nothing to do.
                Err(RaftError::APIError(error)) => {
                    tracing::info!(node = %config.node_id, %error, "membership already initialized")
                }
                Err(RaftError::Fatal(error)) => return Err(error.into()),
            }
        }

        // A removed node takes no further part in the protocol: the members
        // refuse its votes and appends anyway. A leader that removed itself
        // goes on for two heartbeats first, so that the followers hear the
        // commit of the configuration without it from it.
        let mut removed = retirement.subscribe();
        let core = raft.clone();
        let linger = config.heartbeat * 2;
        tokio::spawn(async move {
            if removed.wait_for(Option::is_some).await.is_ok() {
                tokio::time::sleep(linger).await;
                tracing::info!("stopping the raft core of a node removed from the cluster");
                if let Err(error) = core.shutdown().await {
                    tracing::error!(%error, "the raft core of a removed node failed while stopping");
                }
            }
        });
        let (leadership_tx, leadership) = watch::channel(Leadership::default());
        let (failed_tx, failed) = watch::channel(None);
        let (quorum_silent_tx, quorum_silent) = watch::channel(None);
        tokio::spawn(publish_leadership(
            raft.metrics(),
            leadership_tx,
            Silence {
                me: config.node_id,
                patience,
                contact,
                leading_since: None,
                silent: quorum_silent_tx,
            },
            failed_tx,
        ));
        let (known_tx, known_membership) =
            watch::channel(known_membership_of(&raft.metrics().borrow(), &retirement));
        tokio::spawn(publish_known_membership(
            raft.metrics(),
            retirement.clone(),
            known_tx,
        ));
        let engine = Arc::new(RaftEngine {
            raft: raft.clone(),
            in_flight: Semaphore::new(PROPOSALS_IN_FLIGHT_MAX),
            batcher: Batcher::start(raft.clone(), PROPOSALS_IN_FLIGHT_MAX),
            node_id: config.node_id,
            state,
            leadership,
            quorum_silent,
            failed,
            commit_index,
            applied_index,
            barrier_retry_pause: config.heartbeat,
            barrier_patience: config.election_timeout,
            storage: parking_lot::Mutex::new(Some((db, wal_thread))),
            membership_change: Arc::new(tokio::sync::Mutex::new(())),
            retirement,
            notices: std::sync::OnceLock::new(),
            known_membership,
        });
        tokio::spawn(super::election::stand_when_overdue(
            raft.clone(),
            config.node_id,
            longer_logs,
            ElectionTiming {
                lease: Duration::from_millis(election_max_ms),
                max: Duration::from_millis(election_max_ms),
            },
        ));
        tokio::spawn(finish_interrupted_changes(
            raft.clone(),
            engine.membership_change.clone(),
            engine.retirement.clone(),
            config.election_timeout,
        ));
        Ok(engine)
    }

    /// Writes the raft storage of `data_dir` for a node of a cluster
    /// restored from a backup: `data` (a lock state snapshot) at `index`,
    /// with `members` as the voters. The directory must hold no raft state.
    pub fn seed_restored(
        data_dir: &std::path::Path,
        index: u64,
        members: &BTreeMap<NodeId, String>,
        data: Vec<u8>,
    ) -> anyhow::Result<()> {
        let db = quorumlock_storage::open(&data_dir.join("raft"), &[CF_LOG, CF_META, CF_SNAPSHOT])?;
        crate::state_machine::seed_restored_snapshot(&db, index, members, data)
    }

    /// Tells node `id`, whose address `membership` names, that its removal
    /// was committed: in the background, best effort.
    fn notify_removed(&self, id: NodeId, membership: &openraft::Membership<NodeId, BasicNode>) {
        let (Some(network), Some(node)) = (self.notices.get(), membership.get_node(&id)) else {
            return;
        };
        if id == self.node_id {
            return;
        }
        let (network, addr) = (network.clone(), node.addr.clone());
        tokio::spawn(async move { network.notify_removed(id, &addr).await });
    }

    /// Whether this node applied a membership change that removed `id`.
    pub fn is_retired(&self, id: NodeId) -> bool {
        self.retirement.is_retired(id)
    }

    /// The openraft node, to which a transport delivers peer messages.
    pub fn raft(&self) -> &Raft {
        &self.raft
    }
}

/// openraft's `(election_timeout_min, election_timeout_max)` for a
/// configured election timeout `t`.
///
/// A follower of an established leader stands only after openraft's leader
/// lease, which is `election_timeout_max`, *plus* a timeout drawn from
/// `[min, max)`; voters also refuse candidates until that lease has passed
/// since they last heard the leader. Mapping `t` to `[t, 2t)` would make a
/// follower wait `3t` to `4t`, and a failover take seconds. With `max = t`
/// and `min = t / 3` a follower stands `4t/3` to `2t` after the leader goes
/// silent, close to the Paxos engine's `t` to `2t`, and voters' leases have
/// passed by then.
pub fn openraft_election_timeouts(heartbeat: Duration, t: Duration) -> (u64, u64) {
    let heartbeat_ms = heartbeat.as_millis() as u64;
    let max = t.as_millis() as u64;
    let min = (max / 3).max(heartbeat_ms + 1).min(max.saturating_sub(1));
    (min, max)
}

/// Mirrors openraft's metrics into the engine-neutral leadership view, and
/// reports the core's end when it was not asked to stop (a storage failure):
/// openraft's core then quits while the process would stay up for good.
/// Completes a membership change that a crash or a lost leadership left in
/// its joint configuration: whenever this node leads a joint configuration
/// and runs no change itself, it proposes the joint's new voters (openraft
/// then commits the uniform configuration). Tried at most once per
/// `pause`, since a quorum of the new voters may be down for a while.
async fn finish_interrupted_changes(
    raft: Raft,
    changing: Arc<tokio::sync::Mutex<()>>,
    retirement: Arc<Retirement>,
    pause: Duration,
) {
    let mut metrics = raft.metrics();
    loop {
        let target = {
            let metrics = metrics.borrow_and_update();
            let joint = metrics.membership_config.membership().get_joint_config();
            match (metrics.state == ServerState::Leader, joint.len() > 1) {
                (true, true) => joint.last().cloned().map(|voters| {
                    let leaving: Vec<NodeId> = joint[0].difference(&voters).copied().collect();
                    (voters, leaving)
                }),
                _ => None,
            }
        };
        if let Some((voters, leaving)) = target {
            if let Ok(_one_at_a_time) = changing.try_lock() {
                tracing::info!(?voters, "completing an interrupted membership change");
                // The joint configuration does not say whether a leaving
                // voter was being removed or made a learner (a repair), so
                // it stays a learner: an interrupted removal then leaves a
                // learner to remove again, and an interrupted repair goes
                // on. Retiring a node is never done on a guess.
                let change = raft.change_membership(openraft::ChangeMembers::ReplaceAllVoters(voters), true);
                match tokio::time::timeout(MEMBERSHIP_CHANGE_WAIT_MAX, change).await {
                    Ok(Ok(_)) => tracing::info!("completed the interrupted membership change"),
                    // A leader that is itself leaving stops its core once it
                    // applies the new configuration, maybe before openraft
                    // answers: the leaving ids retired say it completed.
                    Ok(Err(RaftError::Fatal(_)))
                        if !leaving.is_empty() && leaving.iter().all(|id| retirement.is_retired(*id)) =>
                    {
                        tracing::info!("completed the interrupted membership change")
                    }
                    Ok(Err(error)) => {
                        tracing::warn!(%error, "could not complete the interrupted membership change yet")
                    }
                    Err(_) => {
                        tracing::warn!("the interrupted membership change did not complete in time; retrying")
                    }
                }
            }
            tokio::time::sleep(pause).await;
        }
        if metrics.changed().await.is_err() {
            return;
        }
    }
}

async fn publish_leadership(
    mut metrics: watch::Receiver<RaftMetrics<NodeId, BasicNode>>,
    leadership: watch::Sender<Leadership>,
    mut silence: Silence,
    failed: watch::Sender<Option<String>>,
) {
    // Silence grows while nothing changes, so it is looked at on a tick
    // too, not only when the metrics move.
    let mut tick = tokio::time::interval(silence.patience / 4);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let (view, silent, failure) = {
            let metrics = metrics.borrow_and_update();
            let failure = match &metrics.running_state {
                Err(openraft::error::Fatal::Stopped) | Ok(()) => None,
                Err(fatal) => Some(format!("the raft core stopped: {fatal}")),
            };
            (leadership_of(&metrics), silence.of(&metrics), failure)
        };
        if let Some(reason) = failure {
            leadership.send_replace(Leadership::default());
            silence.silent.send_replace(None);
            failed.send_replace(Some(reason));
            return;
        }
        leadership.send_if_modified(|current| {
            let changed = *current != view;
            *current = view;
            changed
        });
        silence.silent.send_if_modified(|current| {
            let changed = *current != silent;
            *current = silent;
            changed
        });
        tokio::select! {
            changed = metrics.changed() => if changed.is_err() {
                // The core stopped: nobody leads as far as this node knows.
                leadership.send_replace(Leadership::default());
                silence.silent.send_replace(None);
                return;
            },
            _ = tick.tick() => {}
        }
    }
}

/// Tells proposals when this node leads but hears no quorum. openraft 0.9
/// keeps such a leader leading (it has no check-quorum), so without this
/// a leader cut off in a minority, or whose peers froze, would hold every
/// command it is given until the caller's deadline while the majority
/// elects another. Silence is measured from the peers' own answers
/// ([`QuorumContact`]), late ones included, not from openraft's
/// `millis_since_quorum_ack`, which drops answers that take longer than a
/// heartbeat interval and so grows with load while the quorum is there.
struct Silence {
    me: NodeId,
    /// How long a leader may go without hearing a quorum: twice the
    /// election timeout `t`, the latest a follower stands after its last
    /// heartbeat (`4t/3` to `2t`, see `openraft_election_timeouts`).
    /// Refusing before the followers could have stood would only turn away
    /// commands a quorum would have committed.
    patience: Duration,
    contact: Arc<QuorumContact>,
    /// The vote this node leads with and when it was first seen leading.
    leading_since: Option<(openraft::Vote<NodeId>, tokio::time::Instant)>,
    silent: watch::Sender<Option<u64>>,
}

impl Silence {
    fn of(&mut self, metrics: &RaftMetrics<NodeId, BasicNode>) -> Option<u64> {
        if metrics.state != ServerState::Leader {
            self.leading_since = None;
            return None;
        }
        let now = tokio::time::Instant::now();
        let since = match self.leading_since {
            Some((vote, since)) if vote == metrics.vote => since,
            _ => {
                self.leading_since = Some((metrics.vote, now));
                now
            }
        };
        let configs = metrics.membership_config.membership().get_joint_config();
        let silent = self
            .contact
            .silent_for(self.me, &metrics.vote, configs, since, now);
        (silent > self.patience).then_some(silent.as_millis() as u64)
    }
}

/// The membership as the metrics and the applied retirements show it: the
/// nodes of the newest configuration in the log (openraft's effective one,
/// every configuration of a joint one), and the ids retired so far.
fn known_membership_of(metrics: &RaftMetrics<NodeId, BasicNode>, retirement: &Retirement) -> KnownMembership {
    let membership = metrics.membership_config.membership();
    KnownMembership {
        members: membership.nodes().map(|(id, _)| *id).collect(),
        retired: retirement.retired(),
        configured: membership.voter_ids().next().is_some(),
    }
}

/// Republishes the known membership whenever a change of the metrics
/// changed it: a configuration entered the log (or left it, truncated), or
/// the state machine applied a removal or installed a snapshot (each of
/// which changes the metrics after it). Publishing only real changes keeps
/// the readers' side of the channel free of writers on every commit.
async fn publish_known_membership(
    mut metrics: watch::Receiver<RaftMetrics<NodeId, BasicNode>>,
    retirement: Arc<Retirement>,
    known: watch::Sender<KnownMembership>,
) {
    let mut published = known.borrow().clone();
    while metrics.changed().await.is_ok() {
        let now = known_membership_of(&metrics.borrow_and_update(), &retirement);
        if now != published {
            tracing::debug!(members = ?now.members, retired = ?now.retired, "known membership changed");
            known.send_replace(now.clone());
            published = now;
        }
    }
}

fn leadership_of(metrics: &RaftMetrics<NodeId, BasicNode>) -> Leadership {
    let leader = metrics.current_leader.and_then(|id| {
        metrics
            .membership_config
            .membership()
            .get_node(&id)
            .map(|node| LeaderInfo {
                id,
                addr: node.addr.clone(),
            })
    });
    Leadership {
        term: metrics.current_term,
        is_self: metrics.state == ServerState::Leader,
        leader,
    }
}

#[async_trait]
impl ConsensusEngine for RaftEngine {
    async fn propose(&self, command: Command) -> Result<CommandResult, EngineError> {
        let Ok(_permit) = self.in_flight.try_acquire() else {
            return Err(EngineError::Overloaded {
                queued_max: PROPOSALS_IN_FLIGHT_MAX,
            });
        };
        let mut silent = self.quorum_silent.clone();
        if let Some(silent_ms) = *silent.borrow_and_update() {
            return Err(EngineError::QuorumSilent { silent_ms });
        }
        // A command already handed to openraft may still commit once the
        // quorum answers again, so its caller hears that the outcome is open.
        tokio::select! {
            result = self.batcher.propose(command) => result,
            Ok(silence) = silent.wait_for(Option::is_some) => Err(EngineError::Unavailable(format!(
                "the leader has heard from no quorum for {} ms; the command may still commit",
                silence.unwrap_or_default()
            ))),
        }
    }

    /// openraft confirms leadership with one heartbeat round in which each
    /// follower must answer within one heartbeat period; a follower busy
    /// with a burst of appends misses that easily. The barrier therefore
    /// tries again, each round a fresh confirmation, for up to an election
    /// timeout: a leader that cannot hear a quorum for that long is being
    /// replaced, and the read is refused as unavailable.
    async fn read_barrier(&self) -> Result<(), EngineError> {
        let deadline = tokio::time::Instant::now() + self.barrier_patience;
        loop {
            match self.raft.ensure_linearizable().await {
                Ok(_) => return Ok(()),
                Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(forward))) => {
                    return Err(EngineError::NotLeader {
                        leader: leader_of(&forward),
                    })
                }
                Err(RaftError::APIError(CheckIsLeaderError::QuorumNotEnough(error))) => {
                    if tokio::time::Instant::now() + self.barrier_retry_pause >= deadline {
                        return Err(EngineError::Unavailable(error.to_string()));
                    }
                    tokio::time::sleep(self.barrier_retry_pause).await;
                }
                Err(RaftError::Fatal(error)) => return Err(fatal(error)),
            }
        }
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
        let metrics = self.raft.metrics().borrow().clone();
        let members = metrics
            .membership_config
            .membership()
            .nodes()
            .map(|(id, node)| Member {
                id: *id,
                addr: node.addr.clone(),
            })
            .collect();
        EngineStatus {
            node_id: self.node_id,
            engine: EngineKind::Raft,
            // A removed node's last metrics may still say it leads.
            leadership: match self.retirement.removed() {
                Some(_) => Leadership::default(),
                None => leadership_of(&metrics),
            },
            commit_index: self.commit_index.load(Ordering::Relaxed),
            applied_index: self.applied_index.load(Ordering::Relaxed),
            members,
        }
    }

    fn membership_in_transition(&self) -> bool {
        self.raft
            .metrics()
            .borrow()
            .membership_config
            .membership()
            .get_joint_config()
            .len()
            > 1
    }

    fn removed(&self) -> Option<String> {
        self.retirement.removed()
    }

    fn known_membership(&self) -> watch::Receiver<KnownMembership> {
        self.known_membership.clone()
    }

    fn members(&self) -> Vec<MemberState> {
        let metrics = self.raft.metrics().borrow().clone();
        let membership = metrics.membership_config.membership();
        let voters: std::collections::BTreeSet<NodeId> = membership.voter_ids().collect();
        let leading = metrics.state == ServerState::Leader;
        membership
            .nodes()
            .map(|(id, node)| {
                let matched_index = match (leading, *id == self.node_id) {
                    (false, _) => None,
                    (true, true) => metrics.last_log_index,
                    (true, false) => metrics
                        .replication
                        .as_ref()
                        .and_then(|replication| replication.get(id).copied().flatten())
                        .map(|log_id| log_id.index),
                };
                MemberState {
                    id: *id,
                    addr: node.addr.clone(),
                    voter: voters.contains(id),
                    matched_index,
                }
            })
            .collect()
    }

    /// Learners through `add_learner`, voters through `change_membership`
    /// (joint consensus: openraft commits the joint configuration, then the
    /// new one, before answering), each bounded by
    /// [`MEMBERSHIP_CHANGE_WAIT_MAX`].
    async fn change_membership(&self, change: MembershipChange) -> Result<(), EngineError> {
        let Ok(_one_at_a_time) = self.membership_change.try_lock() else {
            return Err(EngineError::MembershipRefused(
                "another membership change is in progress; run one change at a time".to_string(),
            ));
        };
        // The checks below read the newest configuration in the log and the
        // retired ids the state machine applied: they agree once that
        // configuration is applied, which follows its commit closely.
        let latest = self
            .raft
            .metrics()
            .borrow()
            .membership_config
            .log_id()
            .map(|log_id| log_id.index);
        let _ = self
            .raft
            .wait(Some(MEMBERSHIP_APPLY_WAIT_MAX))
            .applied_index_at_least(latest, "the latest membership applied")
            .await;
        let metrics = self.raft.metrics().borrow().clone();
        if metrics.state != ServerState::Leader {
            return Err(EngineError::NotLeader {
                leader: leadership_of(&metrics).leader,
            });
        }
        let membership = metrics.membership_config.membership().clone();
        if membership.get_joint_config().len() > 1 {
            return Err(EngineError::MembershipRefused(
                "the cluster is in a joint configuration left by an interrupted change, which the leader is \
                 completing; retry once `member list` shows no joint configuration"
                    .to_string(),
            ));
        }
        let latest = metrics.membership_config.log_id();
        if latest.is_some() && metrics.last_applied < *latest {
            return Err(EngineError::MembershipRefused(
                "the latest membership change is not applied on the leader yet; retry in a moment"
                    .to_string(),
            ));
        }
        let voters: std::collections::BTreeSet<NodeId> = membership.voter_ids().collect();
        let is_member = |id: &NodeId| membership.get_node(id).is_some();
        let refused = |why: String| Err(EngineError::MembershipRefused(why));
        type Proposed<'a> = std::pin::Pin<
            Box<
                dyn std::future::Future<
                        Output = Result<
                            openraft::raft::ClientWriteResponse<TypeConfig>,
                            RaftError<NodeId, openraft::error::ClientWriteError<NodeId, BasicNode>>,
                        >,
                    > + Send
                    + 'a,
            >,
        >;
        let removing = match change {
            MembershipChange::Remove { id } => Some(id),
            _ => None,
        };
        let proposed: Proposed<'_> = match change {
            MembershipChange::AddLearner { id, addr } => {
                if is_member(&id) {
                    return refused(format!("node {id} is already a member"));
                }
                if self.retirement.is_retired(id) {
                    return refused(format!(
                        "node {id} was removed from this cluster and a removed id is never reused; \
                         give the new node a new id"
                    ));
                }
                tracing::info!(node = %id, %addr, "adding a learner");
                Box::pin(self.raft.add_learner(id, BasicNode { addr }, false))
            }
            MembershipChange::Promote { id } => {
                if voters.contains(&id) {
                    return refused(format!("node {id} is already a voter"));
                }
                if !is_member(&id) {
                    return refused(format!(
                        "node {id} is not a learner of this cluster; add it first"
                    ));
                }
                let leader_last = metrics.last_log_index.unwrap_or(0);
                let matched = metrics
                    .replication
                    .as_ref()
                    .and_then(|replication| replication.get(&id).copied().flatten())
                    .map(|log_id| log_id.index);
                match matched {
                    None => {
                        return refused(format!(
                            "learner {id} has not acknowledged any entry yet; promote it once it caught up"
                        ))
                    }
                    Some(matched) if leader_last.saturating_sub(matched) > PROMOTE_LAG_MAX => {
                        return refused(format!(
                            "learner {id} lags {} entries behind the leader's log (at most {PROMOTE_LAG_MAX}); \
                             promote it once it caught up",
                            leader_last - matched
                        ))
                    }
                    Some(_) => {}
                }
                tracing::info!(node = %id, "promoting a learner to voter");
                Box::pin(
                    self.raft
                        .change_membership(openraft::ChangeMembers::AddVoterIds([id].into()), false),
                )
            }
            MembershipChange::Demote { id } => {
                if !voters.contains(&id) {
                    return refused(format!("node {id} is not a voter"));
                }
                if voters.len() == 1 {
                    return refused(format!("node {id} is the last voter"));
                }
                if !self.state.read(|state| state.repair_pending(id)) {
                    return refused(format!("node {id} is not under repair (BeginRepair comes first)"));
                }
                let Some(node) = membership.get_node(&id).cloned() else {
                    return refused(format!("node {id} has no address"));
                };
                tracing::info!(node = %id, "taking a voter under repair out, to add it back as a new learner");
                // Out of the configuration and back in: the leader then
                // replicates to it from scratch, as to a new node, instead
                // of from where its lost log stood. Its id is not retired
                // while it is under repair.
                let raft = self.raft.clone();
                Box::pin(async move {
                    raft.change_membership(openraft::ChangeMembers::RemoveVoters([id].into()), false)
                        .await?;
                    raft.add_learner(id, node, false).await
                })
            }
            MembershipChange::Remove { id } => {
                if !is_member(&id) {
                    return refused(format!("node {id} is not a member"));
                }
                if voters.contains(&id) {
                    if voters.len() == 1 {
                        return refused(format!("node {id} is the last voter"));
                    }
                    tracing::info!(node = %id, "removing a voter");
                    Box::pin(
                        self.raft
                            .change_membership(openraft::ChangeMembers::RemoveVoters([id].into()), false),
                    )
                } else {
                    tracing::info!(node = %id, "removing a learner");
                    Box::pin(
                        self.raft
                            .change_membership(openraft::ChangeMembers::RemoveNodes([id].into()), false),
                    )
                }
            }
        };
        let result = match tokio::time::timeout(MEMBERSHIP_CHANGE_WAIT_MAX, proposed).await {
            Err(_) => Err(EngineError::Unavailable(format!(
                "the membership change was not committed within {MEMBERSHIP_CHANGE_WAIT_MAX:?}; it may still \
                 complete (see member list)"
            ))),
            Ok(Ok(_)) => Ok(()),
            Ok(Err(RaftError::APIError(openraft::error::ClientWriteError::ForwardToLeader(forward)))) => {
                Err(EngineError::NotLeader {
                    leader: leader_of(&forward),
                })
            }
            Ok(Err(RaftError::APIError(openraft::error::ClientWriteError::ChangeMembershipError(error)))) => {
                Err(EngineError::MembershipRefused(error.to_string()))
            }
            // A leader that removed itself stops its core as soon as it
            // applies the configuration without it, which may be before
            // openraft answers: the id being retired says the removal was
            // committed.
            Ok(Err(RaftError::Fatal(_))) if removing.is_some_and(|id| self.retirement.is_retired(id)) => {
                Ok(())
            }
            Ok(Err(RaftError::Fatal(error))) => Err(fatal(error)),
        };
        if let (Ok(()), Some(id)) = (&result, removing) {
            self.notify_removed(id, &membership);
        }
        result
    }

    /// Stops openraft's core, waits until every task of openraft has let go
    /// of the stores (replication streams end just after the core), joins
    /// the WAL sync thread, and closes the database: when this returns,
    /// nothing of this engine touches storage.
    async fn shutdown(&self) -> Result<(), EngineError> {
        let stopped = self
            .raft
            .shutdown()
            .await
            .map_err(|error| EngineError::Fatal(format!("raft task failed while stopping: {error}")));
        let storage = self.storage.lock().take();
        if let Some((db, wal_thread)) = storage {
            // The WAL thread holds one handle; every other is a store of
            // openraft's, and each store also holds the thread's queue.
            let others = usize::from(wal_thread.is_some());
            let deadline = tokio::time::Instant::now() + STORAGE_RELEASE_WAIT_MAX;
            while Arc::strong_count(&db) > 1 + others {
                if tokio::time::Instant::now() >= deadline {
                    return Err(EngineError::Fatal(format!(
                        "openraft still holds its stores {STORAGE_RELEASE_WAIT_MAX:?} after stopping; \
                         the database is left open"
                    )));
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            tokio::task::spawn_blocking(move || {
                if let Some(thread) = wal_thread {
                    if thread.join().is_err() {
                        tracing::error!("the raft WAL sync thread panicked");
                    }
                }
                // The last handle: RocksDB closes here.
                drop(db);
            })
            .await
            .map_err(|error| EngineError::Fatal(format!("closing the raft database: {error}")))?;
        }
        stopped
    }
}

/// An openraft fatal error as the engine reports it.
pub(super) fn fatal(error: openraft::error::Fatal<NodeId>) -> EngineError {
    match error {
        openraft::error::Fatal::Stopped => EngineError::ShuttingDown,
        other => EngineError::Fatal(other.to_string()),
    }
}
