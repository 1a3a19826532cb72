//! Carries Multi-Paxos messages between nodes over tonic.
//!
//! Each peer has a bounded outbox drained by one task that sends whatever
//! accumulated as one `Deliver` batch: while a batch is in flight the next
//! one fills, so the transport batches under load without waiting when idle.
//! A full outbox drops the message and a failed call drops its batch: the
//! protocol retransmits what matters, so the transport never blocks the
//! replica.

use std::collections::BTreeMap;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tonic::transport::Endpoint;
use tonic::{Request, Response, Status};

use super::message::Message;
use crate::consensus::NodeId;
use crate::rpc::pb::paxos::paxos_peer_client::PaxosPeerClient;
use crate::rpc::pb::paxos::paxos_peer_server::PaxosPeer;
use crate::rpc::pb::paxos::{PaxosAck, PaxosBatch};

/// Largest peer message, in bytes: a snapshot travels in one message.
pub const PEER_MESSAGE_BYTES_MAX: usize = 256 << 20;
/// Messages waiting for one peer before new ones are dropped.
pub const OUTBOX_MESSAGES_MAX: usize = 16_384;
/// Most messages in one `Deliver` call.
pub const BATCH_MESSAGES_MAX: usize = 1_024;
/// Batches received and not yet stepped before senders are slowed down.
pub const INBOX_BATCHES_MAX: usize = 1_024;
/// How long one `Deliver` call may take.
pub const PEER_RPC_TIMEOUT: Duration = Duration::from_secs(2);
/// How long to wait for a TCP connection to a peer.
pub const PEER_CONNECT_TIMEOUT: Duration = Duration::from_millis(500);
/// Longest pause after failed calls before trying a peer again.
pub const PEER_RETRY_PAUSE_MAX: Duration = Duration::from_millis(500);

/// Messages received from one peer.
pub type Inbound = (NodeId, Vec<Message>);

/// The sending side: one outbox and sender task per peer.
pub struct Outboxes {
    outboxes: BTreeMap<NodeId, mpsc::Sender<Message>>,
    tasks: Vec<JoinHandle<()>>,
}

impl Outboxes {
    /// Starts a sender task for every peer in `peers` (id → address).
    pub fn start(from: NodeId, peers: &BTreeMap<NodeId, String>) -> anyhow::Result<Outboxes> {
        let mut outboxes = BTreeMap::new();
        let mut tasks = Vec::new();
        for (id, addr) in peers {
            let endpoint = Endpoint::from_shared(format!("http://{addr}"))
                .map_err(|error| anyhow::anyhow!("bad address {addr:?} for node {id}: {error}"))?
                .connect_timeout(PEER_CONNECT_TIMEOUT)
                .tcp_nodelay(true);
            let client = PaxosPeerClient::new(endpoint.connect_lazy())
                .max_decoding_message_size(PEER_MESSAGE_BYTES_MAX)
                .max_encoding_message_size(PEER_MESSAGE_BYTES_MAX);
            let (sender, receiver) = mpsc::channel(OUTBOX_MESSAGES_MAX);
            tasks.push(tokio::spawn(send_loop(from, *id, client, receiver)));
            outboxes.insert(*id, sender);
        }
        Ok(Outboxes { outboxes, tasks })
    }

    /// Queues `message` for `to`; drops it when the outbox is full.
    pub fn send(&self, to: NodeId, message: Message) {
        let Some(outbox) = self.outboxes.get(&to) else {
            tracing::error!(to, "message for a node that is not a peer dropped");
            return;
        };
        if let Err(mpsc::error::TrySendError::Full(message)) = outbox.try_send(message) {
            tracing::debug!(to, kind = message.kind(), "peer outbox full; message dropped");
        }
    }
}

impl Drop for Outboxes {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

async fn send_loop(
    from: NodeId,
    to: NodeId,
    mut client: PaxosPeerClient<tonic::transport::Channel>,
    mut outbox: mpsc::Receiver<Message>,
) {
    let mut failures: u32 = 0;
    while let Some(first) = outbox.recv().await {
        let mut batch = vec![first];
        while batch.len() < BATCH_MESSAGES_MAX {
            match outbox.try_recv() {
                Ok(message) => batch.push(message),
                Err(_) => break,
            }
        }
        let messages = match bincode::serialize(&batch) {
            Ok(bytes) => bytes,
            Err(error) => {
                tracing::error!(to, %error, "unencodable paxos messages dropped");
                continue;
            }
        };
        let mut request = Request::new(PaxosBatch { from, messages });
        request.set_timeout(PEER_RPC_TIMEOUT);
        match tokio::time::timeout(PEER_RPC_TIMEOUT, client.deliver(request)).await {
            Ok(Ok(_)) => failures = 0,
            Ok(Err(status)) => {
                failures += 1;
                tracing::debug!(to, code = ?status.code(), message = status.message(), "paxos delivery failed");
            }
            Err(_) => {
                failures += 1;
                tracing::debug!(to, "paxos delivery timed out");
            }
        }
        if failures > 0 {
            // A dead peer: pause (growing to a bound) rather than spin.
            // Messages queued meanwhile go with the next attempt, or are
            // dropped once the outbox fills; the protocol resends.
            let pause = Duration::from_millis(10 << failures.min(6)).min(PEER_RETRY_PAUSE_MAX);
            tokio::time::sleep(pause).await;
        }
    }
}

/// The receiving side: `quorumlock.paxos.v1.PaxosPeer`.
pub struct PaxosPeerService {
    members: Vec<NodeId>,
    inbox: mpsc::Sender<Inbound>,
}

impl PaxosPeerService {
    /// Hands batches from `members` to the replica's driver through `inbox`.
    pub fn new(members: Vec<NodeId>, inbox: mpsc::Sender<Inbound>) -> Self {
        PaxosPeerService { members, inbox }
    }
}

#[tonic::async_trait]
impl PaxosPeer for PaxosPeerService {
    async fn deliver(&self, request: Request<PaxosBatch>) -> Result<Response<PaxosAck>, Status> {
        let PaxosBatch { from, messages } = request.into_inner();
        if !self.members.contains(&from) {
            return Err(Status::permission_denied(format!(
                "node {from} is not a member of this cluster"
            )));
        }
        let messages: Vec<Message> = bincode::deserialize(&messages)
            .map_err(|error| Status::invalid_argument(format!("undecodable paxos messages: {error}")))?;
        self.inbox
            .send((from, messages))
            .await
            .map_err(|_| Status::unavailable("the paxos engine is stopping"))?;
        Ok(Response::new(PaxosAck {}))
    }
}
