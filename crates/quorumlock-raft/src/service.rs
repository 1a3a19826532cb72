//! The receiving side of the peer transport: decodes openraft requests,
//! hands them to the local node, and returns its `Result` as bincode.

use std::future::Future;

use serde::de::DeserializeOwned;
use serde::Serialize;
use tonic::{Request, Response, Status};

use super::types::Raft;
use quorumlock_proto::raft::raft_peer_server::RaftPeer;
use quorumlock_proto::raft::RaftPayload;

/// Serves `quorumlock.raft.v1.RaftPeer` for one node.
pub struct RaftPeerService {
    raft: Raft,
}

impl RaftPeerService {
    /// Serves requests for `raft`.
    pub fn new(raft: Raft) -> Self {
        RaftPeerService { raft }
    }
}

async fn handle<Req, Res, Fut>(
    request: Request<RaftPayload>,
    handler: impl FnOnce(Req) -> Fut,
) -> Result<Response<RaftPayload>, Status>
where
    Req: DeserializeOwned,
    Res: Serialize,
    Fut: Future<Output = Res>,
{
    let request: Req = bincode::deserialize(&request.into_inner().data)
        .map_err(|error| Status::invalid_argument(format!("undecodable raft request: {error}")))?;
    let result = handler(request).await;
    let data = bincode::serialize(&result)
        .map_err(|error| Status::internal(format!("unencodable raft response: {error}")))?;
    Ok(Response::new(RaftPayload { data }))
}

#[tonic::async_trait]
impl RaftPeer for RaftPeerService {
    async fn append_entries(&self, request: Request<RaftPayload>) -> Result<Response<RaftPayload>, Status> {
        handle(request, |rpc| self.raft.append_entries(rpc)).await
    }

    async fn vote(&self, request: Request<RaftPayload>) -> Result<Response<RaftPayload>, Status> {
        handle(request, |rpc| self.raft.vote(rpc)).await
    }

    async fn install_snapshot(&self, request: Request<RaftPayload>) -> Result<Response<RaftPayload>, Status> {
        handle(request, |rpc| self.raft.install_snapshot(rpc)).await
    }
}
