//! `quorumlock.v1.Cluster`: this node's view of the cluster.

use std::sync::Arc;

use sha2::{Digest, Sha256};
use tonic::{Code, Request, Response, Status};

use crate::auth::rate::DigestRefused;
use crate::auth::{Access, Action, DIGESTS_BURST, DIGESTS_PER_SECOND};
use quorumlock_core::consensus::ConsensusEngine;
use quorumlock_proto::details::{self, reason};
use quorumlock_proto::v1::{self as pb, ErrorReason};

/// Serves `quorumlock.v1.Cluster` on one node.
pub struct ClusterService {
    engine: Arc<dyn ConsensusEngine>,
    access: Arc<Access>,
}

impl ClusterService {
    /// Reports on `engine`; the state digest only to whom `access` lets
    /// through.
    pub fn new(engine: Arc<dyn ConsensusEngine>, access: Arc<Access>) -> Self {
        ClusterService { engine, access }
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
