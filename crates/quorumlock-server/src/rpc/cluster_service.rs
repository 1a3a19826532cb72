//! `quorumlock.v1.Cluster`: this node's view of the cluster.

use std::sync::Arc;

use sha2::{Digest, Sha256};
use tonic::{Request, Response, Status};

use quorumlock_core::consensus::ConsensusEngine;
use quorumlock_proto::v1 as pb;

/// Serves `quorumlock.v1.Cluster` on one node.
pub struct ClusterService {
    engine: Arc<dyn ConsensusEngine>,
}

impl ClusterService {
    /// Reports on `engine`.
    pub fn new(engine: Arc<dyn ConsensusEngine>) -> Self {
        ClusterService { engine }
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
            Sha256::digest(self.engine.state().snapshot()).to_vec()
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
