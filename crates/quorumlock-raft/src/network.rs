//! Node-to-node transport of the openraft engine over tonic.
//!
//! openraft does not bound RPCs itself, so every call here carries a timeout
//! (openraft's hard TTL for the RPC). Payloads are openraft's own types in
//! bincode; the response carries the remote `Result` so remote Raft errors
//! reach openraft unchanged.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use prometheus_client::metrics::histogram::Histogram;

use openraft::error::{InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::BasicNode;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tonic::transport::{Channel, Endpoint};

use super::retirement::{Retirement, RETIRED_METADATA};
use super::types::TypeConfig;
use quorumlock_core::consensus::incarnation::{Incarnations, INCARNATION_HEADER, INCARNATION_OF_METADATA};
use quorumlock_core::consensus::{EngineTelemetry, NodeId};
use quorumlock_proto::raft::raft_peer_client::RaftPeerClient;
use quorumlock_proto::raft::RaftPayload;
use quorumlock_tls::{node_name, Dialer};

/// Largest peer message, in bytes: big enough for a batch of maximal values
/// and for a whole snapshot sent in one message.
pub const PEER_MESSAGE_BYTES_MAX: usize = 256 << 20;
/// How long a removal notice may take.
pub const REMOVAL_NOTICE_TIMEOUT: Duration = Duration::from_secs(2);
/// How long to wait for a TCP connection to a peer.
pub const PEER_CONNECT_TIMEOUT: Duration = Duration::from_millis(500);

/// Hands openraft a client per target over one cached HTTP/2 channel per
/// peer address.
///
/// openraft asks for a new client whenever it starts talking to a target
/// anew (each election, each read barrier's heartbeat round). A fresh
/// channel each time would need a new TCP and HTTP/2 handshake inside a
/// heartbeat interval, which a loaded machine misses; tonic channels
/// multiplex and reconnect by themselves, so one per peer serves every call.
#[derive(Clone)]
pub struct PeerNetwork {
    channels: Arc<Mutex<HashMap<NodeId, (String, Channel)>>>,
    dialer: Dialer,
    retirement: Arc<Retirement>,
    incarnations: Arc<Incarnations>,
    telemetry: Arc<EngineTelemetry>,
}

impl PeerNetwork {
    /// Dials peers with `dialer`: over TLS, a peer's certificate must name
    /// it ([`quorumlock_tls::node_name`]). A peer's refusal of this node as
    /// retired is told to `retirement`. Every request names both ends'
    /// incarnations from `incarnations`, which learns a peer's from its
    /// introduction. Each answered call's time is recorded in `telemetry`.
    pub fn new(
        dialer: Dialer,
        retirement: Arc<Retirement>,
        incarnations: Arc<Incarnations>,
        telemetry: Arc<EngineTelemetry>,
    ) -> PeerNetwork {
        PeerNetwork {
            channels: Arc::default(),
            dialer,
            retirement,
            incarnations,
            telemetry,
        }
    }

    fn channel(&self, target: NodeId, addr: &str) -> Result<Channel, String> {
        let mut channels = self.channels.lock();
        if let Some((cached_addr, channel)) = channels.get(&target) {
            if cached_addr == addr {
                return Ok(channel.clone());
            }
        }
        let endpoint = Endpoint::from_shared(format!("http://{addr}"))
            .map_err(|error| format!("bad address {addr:?} for node {target}: {error}"))?
            .connect_timeout(PEER_CONNECT_TIMEOUT)
            .tcp_nodelay(true);
        let channel = self
            .dialer
            .channel(&endpoint, &node_name(target.get()))
            .map_err(|error| format!("node {target}: {error}"))?;
        channels.insert(target, (addr.to_string(), channel.clone()));
        Ok(channel)
    }
}

impl PeerNetwork {
    /// Tells node `id` at `addr` that its removal was committed; best
    /// effort (a node that is down hears it from nobody, and one that runs
    /// again as a voter learns it from the members' refusals).
    pub async fn notify_removed(&self, id: NodeId, addr: &str) {
        let channel = match self.channel(id, addr) {
            Ok(channel) => channel,
            Err(error) => {
                tracing::info!(node = %id, %error, "could not tell a removed node of its removal");
                return;
            }
        };
        let data = match bincode::serialize(&id.get()) {
            Ok(data) => data,
            Err(error) => {
                tracing::error!(%error, "could not encode a removal notice");
                return;
            }
        };
        let mut client = RaftPeerClient::new(channel);
        let deadline = tokio::time::Instant::now() + REMOVAL_NOTICE_TIMEOUT;
        // A node removed right after it was added may not have introduced
        // itself yet: it refuses with its introduction, and the notice goes
        // again, once, naming it.
        let mut again = true;
        loop {
            let call = client.removed(request_to(
                &self.incarnations,
                id,
                RaftPayload { data: data.clone() },
            ));
            match tokio::time::timeout_at(deadline, call).await {
                Ok(Ok(_)) => tracing::info!(node = %id, "told the removed node of its removal"),
                Ok(Err(status)) if again && learn_introduction(&self.incarnations, id, &status) => {
                    again = false;
                    continue;
                }
                Ok(Err(status)) => {
                    tracing::info!(node = %id, %status, "a removed node did not take the notice")
                }
                Err(_) => tracing::info!(node = %id, "a removed node did not answer the notice in time"),
            }
            return;
        }
    }
}

/// Learns `peer`'s incarnation from the introduction a refusal carries;
/// whether it is known now.
fn learn_introduction(incarnations: &Incarnations, peer: NodeId, status: &tonic::Status) -> bool {
    let Some(introduction) = status.metadata().get(INCARNATION_OF_METADATA) else {
        return false;
    };
    introduction
        .to_str()
        .map_err(|error| error.to_string())
        .and_then(|text| incarnations.learn(peer, text))
        .map(|_| incarnations.known(peer).is_some())
        .unwrap_or_else(|error| {
            tracing::warn!(%peer, %error, "a peer's introduction was not taken");
            false
        })
}

impl RaftNetworkFactory<TypeConfig> for PeerNetwork {
    type Network = PeerConnection;

    async fn new_client(&mut self, target: NodeId, node: &BasicNode) -> PeerConnection {
        let client = self.channel(target, &node.addr).map(|channel| {
            RaftPeerClient::new(channel)
                .max_decoding_message_size(PEER_MESSAGE_BYTES_MAX)
                .max_encoding_message_size(PEER_MESSAGE_BYTES_MAX)
        });
        PeerConnection {
            target,
            client,
            retirement: self.retirement.clone(),
            incarnations: self.incarnations.clone(),
            round_trip: self.telemetry.peer_round_trip(target),
            telemetry: self.telemetry.clone(),
        }
    }
}

/// A connection to one peer.
#[derive(Clone)]
pub struct PeerConnection {
    target: NodeId,
    client: Result<RaftPeerClient<Channel>, String>,
    retirement: Arc<Retirement>,
    incarnations: Arc<Incarnations>,
    telemetry: Arc<EngineTelemetry>,
    round_trip: Histogram,
}

/// A peer request to `to` naming both ends' incarnations.
fn request_to<T>(incarnations: &Incarnations, to: NodeId, message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    if let Ok(value) = incarnations.header_to(to).parse() {
        request.metadata_mut().insert(INCARNATION_HEADER, value);
    }
    request
}

#[derive(Clone, Copy)]
enum PeerRpc {
    AppendEntries,
    Vote,
    InstallSnapshot,
}

impl PeerConnection {
    /// Sends one request and decodes the remote result.
    async fn call<Req, Resp, E>(
        &mut self,
        rpc: PeerRpc,
        request: &Req,
        timeout: Duration,
    ) -> Result<Resp, RPCError<NodeId, BasicNode, RaftError<NodeId, E>>>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let client = match &mut self.client {
            Ok(client) => client,
            Err(message) => {
                return Err(RPCError::Unreachable(Unreachable::new(&std::io::Error::other(
                    message.clone(),
                ))))
            }
        };
        let data = bincode::serialize(request).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        // A peer that does not know its incarnation is known refuses with
        // it; the request then goes again, once, naming it.
        let mut retry = self
            .incarnations
            .known(self.target)
            .is_none()
            .then(|| data.clone());
        let mut payload = request_to(&self.incarnations, self.target, RaftPayload { data });
        let deadline = tokio::time::Instant::now() + timeout;
        let response = loop {
            let call = async {
                match rpc {
                    PeerRpc::AppendEntries => client.append_entries(payload).await,
                    PeerRpc::Vote => client.vote(payload).await,
                    PeerRpc::InstallSnapshot => client.install_snapshot(payload).await,
                }
            };
            let sent = std::time::Instant::now();
            match tokio::time::timeout_at(deadline, call).await {
                Err(_) => {
                    let error = std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        format!("peer RPC timed out after {timeout:?}"),
                    );
                    return Err(RPCError::Network(NetworkError::new(&error)));
                }
                Ok(Err(status)) if status.code() == tonic::Code::Unavailable => {
                    return Err(RPCError::Unreachable(Unreachable::new(&status)));
                }
                Ok(Err(status)) => {
                    if status.metadata().get(RETIRED_METADATA).is_some() {
                        self.retirement.refused_by(self.target);
                    }
                    // Known now, from this introduction or from a request
                    // of the peer's that crossed this one.
                    let learned = learn_introduction(&self.incarnations, self.target, &status);
                    match (learned, retry.take()) {
                        (true, Some(data)) => {
                            payload = request_to(&self.incarnations, self.target, RaftPayload { data });
                        }
                        // A peer that refused (another incarnation, retired,
                        // not ready) refuses the next request too: reported
                        // as unreachable, replication to it backs off instead
                        // of sending again at once, which would keep both
                        // nodes busy refusing and answering.
                        _ => return Err(RPCError::Unreachable(Unreachable::new(&status))),
                    }
                }
                Ok(Ok(response)) => {
                    self.round_trip.observe(sent.elapsed().as_secs_f64());
                    if matches!(rpc, PeerRpc::InstallSnapshot) {
                        self.telemetry.snapshot_sent();
                    }
                    break response.into_inner();
                }
            }
        };
        let result: Result<Resp, RaftError<NodeId, E>> =
            bincode::deserialize(&response.data).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        result.map_err(|error| RPCError::RemoteError(RemoteError::new(self.target, error)))
    }
}

impl RaftNetwork<TypeConfig> for PeerConnection {
    async fn append_entries(
        &mut self,
        request: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        self.call(PeerRpc::AppendEntries, &request, option.hard_ttl())
            .await
    }

    async fn install_snapshot(
        &mut self,
        request: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<NodeId>,
        RPCError<NodeId, BasicNode, RaftError<NodeId, InstallSnapshotError>>,
    > {
        self.call(PeerRpc::InstallSnapshot, &request, option.hard_ttl())
            .await
    }

    async fn vote(
        &mut self,
        request: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        self.call(PeerRpc::Vote, &request, option.hard_ttl()).await
    }
}
