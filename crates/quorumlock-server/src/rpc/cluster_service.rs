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
use quorumlock_core::consensus::ConsensusEngine;
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

#[tonic::async_trait]
impl pb::cluster_server::Cluster for ClusterService {
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
