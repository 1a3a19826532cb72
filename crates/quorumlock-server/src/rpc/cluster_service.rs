//! `quorumlock.v1.Cluster`: this node's view of the cluster, and backups.

use std::pin::Pin;
use std::sync::Arc;

use futures::Stream;
use sha2::{Digest, Sha256};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tonic::{Code, Request, Response, Status};

use super::status::from_engine_error;
use crate::auth::rate::DigestRefused;
use crate::auth::{Access, Action, DIGESTS_BURST, DIGESTS_PER_SECOND};
use quorumlock_core::backup::{encode_backup, BackupHeader};
use quorumlock_core::consensus::{ConsensusEngine, EngineError, MemberState, MembershipChange, NodeId};
use quorumlock_core::lock::{Command, Outcome};
use quorumlock_proto::details::{self, reason};
use quorumlock_proto::v1::{self as pb, ErrorReason};

/// Largest `data` of one `SnapshotChunk`, well under gRPC's default 4 MiB
/// message limit.
pub const SNAPSHOT_CHUNK_BYTES_MAX: usize = 1 << 20;

/// Serves `quorumlock.v1.Cluster` on one node.
pub struct ClusterService {
    engine: Arc<dyn ConsensusEngine>,
    access: Arc<Access>,
    /// One snapshot save at a time: each holds a copy of the whole state.
    saves: Arc<Semaphore>,
}

type SnapshotStream = Pin<Box<dyn Stream<Item = Result<pb::SnapshotChunk, Status>> + Send>>;

impl ClusterService {
    /// Every member as this node knows it, and this node's last log index
    /// (how far the leader's own log reaches; 0 on a follower).
    fn members_now(&self) -> (Vec<pb::MemberStatus>, u64) {
        let node = self.engine.status().node_id;
        let members = self.engine.members();
        let last_log_index = members
            .iter()
            .find(|member| member.id == node)
            .and_then(|member| member.matched_index)
            .unwrap_or(0);
        (member_statuses(members, last_log_index), last_log_index)
    }

    /// Proposes `command` and fails unless the state machine took it.
    async fn propose_checked(&self, command: Command) -> Result<Outcome, Status> {
        match self.engine.propose(command).await.map_err(from_engine_error)? {
            Ok(outcome) => Ok(outcome),
            Err(error) => Err(Status::internal(format!("the state machine refused: {error}"))),
        }
    }

    /// Reports on `engine`; the state digest and backups only to whom
    /// `access` lets through.
    pub fn new(engine: Arc<dyn ConsensusEngine>, access: Arc<Access>) -> Self {
        ClusterService {
            engine,
            access,
            saves: Arc::new(Semaphore::new(1)),
        }
    }

    /// The backup file of the applied state after a read barrier, and the
    /// permit that keeps other saves out until it is sent.
    async fn backup(
        &self,
        request: &Request<pb::SaveSnapshotRequest>,
    ) -> Result<(Vec<u8>, OwnedSemaphorePermit), Status> {
        let caller = self.access.caller(request)?;
        self.access.allow(&caller, Action::Admin("snapshot save"))?;
        self.not_removed()?;
        let permit = self.saves.clone().try_acquire_owned().map_err(|_| {
            details::status(
                Code::ResourceExhausted,
                "another snapshot is being saved from this node; one runs at a time",
                reason(ErrorReason::RateLimited),
            )
        })?;
        self.engine.read_barrier().await.map_err(from_engine_error)?;
        let engine = self.engine.status().engine.to_string();
        let created_unix_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |since| since.as_millis() as u64);
        let file = self.engine.state().read_indexed(|state, index| {
            let body = state.snapshot();
            let header = BackupHeader::describe(state, &body, &engine, index, created_unix_ms);
            encode_backup(&header, &body)
        });
        tracing::info!(bytes = file.len(), "saving a snapshot for a backup");
        Ok((file, permit))
    }

    /// The state digest, for an admin and within the rate.
    fn state_digest(&self, request: &Request<pb::StatusRequest>) -> Result<Vec<u8>, Status> {
        let caller = self.access.caller(request)?;
        self.access.allow(&caller, Action::Admin("state digest"))?;
        let _permit = self
            .access
            .digests
            .try_take(std::time::Instant::now())
            .map_err(|refused| {
                let (message, retry_after) = match refused {
                    DigestRefused::Busy => (
                        "another state digest is being computed on this node; one runs at a time".to_string(),
                        0,
                    ),
                    DigestRefused::Rate(wait) => (
                        format!(
                            "state digests are limited to {DIGESTS_PER_SECOND} per second per node \
                             (bursts of {DIGESTS_BURST}); retry in {} ms",
                            wait.as_millis().max(1)
                        ),
                        wait.as_millis().max(1) as u64,
                    ),
                };
                details::status(
                    Code::ResourceExhausted,
                    message,
                    pb::ErrorDetail {
                        retry_after_ms: retry_after,
                        ..reason(ErrorReason::RateLimited)
                    },
                )
            })?;
        Ok(Sha256::digest(self.engine.state().snapshot()).to_vec())
    }
}

/// The members as the API reports them; `last_log_index` is the leader's.
fn member_statuses(members: Vec<MemberState>, last_log_index: u64) -> Vec<pb::MemberStatus> {
    members
        .into_iter()
        .map(|member| pb::MemberStatus {
            id: member.id.get(),
            addr: member.addr,
            voter: member.voter,
            matched_index: member.matched_index.unwrap_or(0),
            lag: member
                .matched_index
                .map_or(0, |matched| last_log_index.saturating_sub(matched)),
        })
        .collect()
}

/// A node id from a request: 0 is no id.
fn requested_id(id: u64) -> Result<NodeId, Status> {
    match id {
        0 => Err(details::status(
            Code::InvalidArgument,
            "id must be a node id (1 or more)",
            reason(ErrorReason::InvalidArgument),
        )),
        id => Ok(NodeId::new(id)),
    }
}

impl ClusterService {
    /// UNAVAILABLE on a node removed from the cluster: its view of the
    /// members and its state are no longer the cluster's.
    fn not_removed(&self) -> Result<(), Status> {
        match self.engine.removed() {
            Some(why) => Err(from_engine_error(EngineError::Removed(why))),
            None => Ok(()),
        }
    }

    /// Runs one membership change for an admin and reports the result.
    async fn change(
        &self,
        caller: Result<crate::auth::Caller, Status>,
        what: &'static str,
        change: MembershipChange,
    ) -> Result<Response<pb::MembershipChangeResponse>, Status> {
        self.access.allow(&caller?, Action::Admin(what))?;
        self.not_removed()?;
        tracing::info!(?change, "membership change asked for");
        self.engine
            .change_membership(change)
            .await
            .map_err(from_engine_error)?;
        Ok(Response::new(pb::MembershipChangeResponse {
            members: self.members_now().0,
        }))
    }
}

#[tonic::async_trait]
impl pb::cluster_server::Cluster for ClusterService {
    async fn list_members(
        &self,
        request: Request<pb::ListMembersRequest>,
    ) -> Result<Response<pb::ListMembersResponse>, Status> {
        let caller = self.access.caller(&request)?;
        self.access.allow(&caller, Action::Admin("member list"))?;
        self.not_removed()?;
        let status = self.engine.status();
        let from_leader = status.leadership.is_self;
        if let (false, Some(leader)) = (from_leader, &status.leadership.leader) {
            // Only the leader knows how far each member caught up.
            return Err(super::status::not_leader(
                "this node is not the leader, which lists the members with their lag",
                Some(leader),
            ));
        }
        let (members, last_log_index) = self.members_now();
        Ok(Response::new(pb::ListMembersResponse {
            members,
            from_leader,
            last_log_index,
            joint: self.engine.membership_in_transition(),
        }))
    }

    async fn add_member(
        &self,
        request: Request<pb::AddMemberRequest>,
    ) -> Result<Response<pb::MembershipChangeResponse>, Status> {
        let caller = self.access.caller(&request);
        let id = requested_id(request.get_ref().id)?;
        let addr = request.get_ref().addr.trim().to_string();
        let host_port = addr
            .rsplit_once(':')
            .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok_and(|port| port > 0));
        if !host_port {
            return Err(details::status(
                Code::InvalidArgument,
                format!("addr {addr:?} is not HOST:PORT"),
                reason(ErrorReason::InvalidArgument),
            ));
        }
        self.change(caller, "member add", MembershipChange::AddLearner { id, addr })
            .await
    }

    async fn promote_member(
        &self,
        request: Request<pb::PromoteMemberRequest>,
    ) -> Result<Response<pb::MembershipChangeResponse>, Status> {
        let caller = self.access.caller(&request);
        let id = requested_id(request.get_ref().id)?;
        self.change(caller, "member promote", MembershipChange::Promote { id })
            .await
    }

    async fn remove_member(
        &self,
        request: Request<pb::RemoveMemberRequest>,
    ) -> Result<Response<pb::MembershipChangeResponse>, Status> {
        let caller = self.access.caller(&request);
        let id = requested_id(request.get_ref().id)?;
        self.change(caller, "member remove", MembershipChange::Remove { id })
            .await
    }

    async fn repair_member(
        &self,
        request: Request<pb::RepairMemberRequest>,
    ) -> Result<Response<pb::RepairMemberResponse>, Status> {
        let caller = self.access.caller(&request)?;
        self.access.allow(&caller, Action::Admin("member repair"))?;
        self.not_removed()?;
        let id = requested_id(request.get_ref().id)?;
        let incarnation = request.get_ref().incarnation;
        let refused = |why: String| Err(from_engine_error(EngineError::MembershipRefused(why)));
        if incarnation == 0 {
            return Err(details::status(
                Code::InvalidArgument,
                "a repaired node's incarnation is never 0",
                reason(ErrorReason::InvalidArgument),
            ));
        }
        let status = self.engine.status();
        if !status.leadership.is_self {
            return Err(super::status::not_leader(
                "this node is not the leader, which records repairs",
                status.leadership.leader.as_ref(),
            ));
        }
        let addr = request.get_ref().addr.trim().to_string();
        let pending = self.engine.state().read(|state| state.repair_pending(id));
        let member = self.engine.members().into_iter().find(|member| member.id == id);
        tracing::warn!(node = %id, incarnation = %format_args!("{incarnation:016x}"),
            voter = member.as_ref().map(|member| member.voter), pending,
            "repair asked for: the node lost or damaged its state");
        // A node that forgot its votes or promises must neither vote nor
        // accept until it is a member again through a configuration
        // change: first it stops counting (a learner), then the cluster
        // learns its new incarnation, and only a promotion makes it vote.
        match member {
            Some(member) if member.voter => {
                self.propose_checked(Command::BeginRepair { node: id }).await?;
                self.engine
                    .change_membership(MembershipChange::Demote { id })
                    .await
                    .map_err(from_engine_error)?;
            }
            Some(_) => {}
            // Out of the configuration with its repair begun: a crash
            // interrupted it before the node was added back.
            None if pending && !addr.is_empty() => {
                self.engine
                    .change_membership(MembershipChange::AddLearner { id, addr })
                    .await
                    .map_err(from_engine_error)?;
            }
            None => {
                return refused(format!(
                    "node {id} is not a member of this cluster; a removed id is never taken back, \
                     so start the node under a new id and add it (member add)"
                ))
            }
        }
        let outcome = self
            .engine
            .propose(Command::RecordRepair {
                node: id,
                incarnation,
            })
            .await
            .map_err(from_engine_error)?;
        let repairs = match outcome {
            Ok(Outcome::RepairRecorded { repairs }) => repairs,
            Ok(other) => {
                return Err(Status::internal(format!(
                    "recording the repair of node {id} answered {other:?}"
                )))
            }
            Err(error) => return refused(format!("recording the repair of node {id}: {error}")),
        };
        tracing::warn!(node = %id, incarnation = %format_args!("{incarnation:016x}"), repairs,
            "repair recorded: the node is a learner under its new incarnation until it is promoted");
        Ok(Response::new(pb::RepairMemberResponse {
            members: self.members_now().0,
            repairs,
        }))
    }

    type SaveSnapshotStream = SnapshotStream;

    async fn save_snapshot(
        &self,
        request: Request<pb::SaveSnapshotRequest>,
    ) -> Result<Response<Self::SaveSnapshotStream>, Status> {
        let (file, permit) = self.backup(&request).await?;
        // Chunks are cut as the client reads them; the permit goes with the
        // last one.
        let chunks = futures::stream::unfold(
            (file, 0usize, Some(permit)),
            |(file, offset, permit)| async move {
                if offset >= file.len() {
                    drop(permit);
                    return None;
                }
                let end = (offset + SNAPSHOT_CHUNK_BYTES_MAX).min(file.len());
                let chunk = pb::SnapshotChunk {
                    data: file[offset..end].to_vec(),
                };
                Some((Ok(chunk), (file, end, permit)))
            },
        );
        Ok(Response::new(Box::pin(chunks)))
    }

    async fn status(
        &self,
        request: Request<pb::StatusRequest>,
    ) -> Result<Response<pb::StatusResponse>, Status> {
        let status = self.engine.status();
        let state_digest = if request.get_ref().include_state_digest {
            self.state_digest(&request)?
        } else {
            Vec::new()
        };
        let leader = status.leadership.leader.clone();
        Ok(Response::new(pb::StatusResponse {
            node_id: status.node_id.get(),
            engine: status.engine.to_string(),
            leader_id: leader.as_ref().map_or(0, |leader| leader.id.get()),
            leader_addr: leader.map(|leader| leader.addr).unwrap_or_default(),
            term: status.leadership.term,
            commit_index: status.commit_index,
            applied_index: status.applied_index,
            members: status
                .members
                .into_iter()
                .map(|member| pb::Member {
                    id: member.id.get(),
                    addr: member.addr,
                })
                .collect(),
            is_leader: status.leadership.is_self,
            state_digest,
        }))
    }
}
