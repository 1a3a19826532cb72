//! The receiving side of the peer transport: decodes openraft requests,
//! hands them to the local node, and returns its `Result` as bincode.
//! Messages from a node whose id a membership change retired are refused
//! ([`retired_sender_refused`]), so a removed node that still runs cannot
//! disturb the cluster, and learns that it was removed.

use std::future::Future;
use std::sync::Arc;

use openraft::raft::{AppendEntriesRequest, InstallSnapshotRequest, VoteRequest};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tonic::{Request, Response, Status};

use super::retirement::Retirement;
use super::types::{Raft, TypeConfig};
use quorumlock_core::consensus::{retired_sender_refused, NodeId};
use quorumlock_proto::raft::raft_peer_server::RaftPeer;
use quorumlock_proto::raft::RaftPayload;

/// Serves `quorumlock.raft.v1.RaftPeer` for one node.
pub struct RaftPeerService {
    raft: Raft,
    retirement: Arc<Retirement>,
}

impl RaftPeerService {
    /// Serves requests for `raft`, refusing the ids `retirement` holds.
    pub fn new(raft: Raft, retirement: Arc<Retirement>) -> Self {
        RaftPeerService { raft, retirement }
    }

    async fn handle<Req, Res, Fut>(
        &self,
        request: Request<RaftPayload>,
        sender: impl FnOnce(&Req) -> Option<NodeId>,
        handler: impl FnOnce(Req) -> Fut,
    ) -> Result<Response<RaftPayload>, Status>
    where
        Req: DeserializeOwned,
        Res: Serialize,
        Fut: Future<Output = Res>,
    {
        let request: Req = bincode::deserialize(&request.into_inner().data)
            .map_err(|error| Status::invalid_argument(format!("undecodable raft request: {error}")))?;
        if let Some(id) = sender(&request).filter(|id| self.retirement.is_retired(*id)) {
            return Err(retired_sender_refused(id));
        }
        let result = handler(request).await;
        let data = bincode::serialize(&result)
            .map_err(|error| Status::internal(format!("unencodable raft response: {error}")))?;
        Ok(Response::new(RaftPayload { data }))
    }
}

#[tonic::async_trait]
impl RaftPeer for RaftPeerService {
    async fn append_entries(&self, request: Request<RaftPayload>) -> Result<Response<RaftPayload>, Status> {
        self.handle(
            request,
            |rpc: &AppendEntriesRequest<TypeConfig>| rpc.vote.leader_id().voted_for(),
            |rpc| self.raft.append_entries(rpc),
        )
        .await
    }

    async fn vote(&self, request: Request<RaftPayload>) -> Result<Response<RaftPayload>, Status> {
        self.handle(
            request,
            |rpc: &VoteRequest<NodeId>| rpc.vote.leader_id().voted_for(),
            |rpc| self.raft.vote(rpc),
        )
        .await
    }

    async fn removed(&self, request: Request<RaftPayload>) -> Result<Response<RaftPayload>, Status> {
        let id: u64 = bincode::deserialize(&request.into_inner().data)
            .map_err(|error| Status::invalid_argument(format!("undecodable removal notice: {error}")))?;
        if id != self.retirement.node_id().get() {
            return Err(Status::invalid_argument(format!(
                "the removal notice names node {id}, not this node ({})",
                self.retirement.node_id()
            )));
        }
        self.retirement.told_by_leader();
        Ok(Response::new(RaftPayload { data: Vec::new() }))
    }

    async fn install_snapshot(&self, request: Request<RaftPayload>) -> Result<Response<RaftPayload>, Status> {
        self.handle(
            request,
            |rpc: &InstallSnapshotRequest<TypeConfig>| rpc.vote.leader_id().voted_for(),
            |rpc| self.raft.install_snapshot(rpc),
        )
        .await
    }
}
