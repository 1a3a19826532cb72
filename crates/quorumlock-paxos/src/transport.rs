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

use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tonic::transport::Endpoint;
use tonic::{Request, Response, Status};

use crate::core::message::{Envelope, Message};
use crate::core::types::Command;
use crate::driver::Transport;
use quorumlock_core::consensus::NodeId;
use quorumlock_proto::paxos::paxos_peer_client::PaxosPeerClient;
use quorumlock_proto::paxos::paxos_peer_server::PaxosPeer;
use quorumlock_proto::paxos::{PaxosAck, PaxosBatch};
use quorumlock_tls::{node_name, Dialer};

/// Largest peer message, in bytes: a snapshot travels in one message.
pub const PEER_MESSAGE_BYTES_MAX: usize = 256 << 20;
/// Messages waiting for one peer before new ones are dropped.
pub const OUTBOX_MESSAGES_MAX: usize = 16_384;
/// Most messages in one `Deliver` call.
pub const BATCH_MESSAGES_MAX: usize = 1_024;
/// Most bytes one `Deliver` call gathers from several messages (a single
/// larger message, such as a snapshot, travels alone).
pub const BATCH_BYTES_MAX: usize = 16 << 20;
/// The slowest transfer rate a batch's timeout allows for, in bytes per
/// millisecond (about 10 MB/s).
pub const PEER_BYTES_PER_MS_MIN: usize = 10_000;
/// Batches received and not yet stepped before senders are slowed down.
pub const INBOX_BATCHES_MAX: usize = 1_024;
/// How long one `Deliver` call may take.
pub const PEER_RPC_TIMEOUT: Duration = Duration::from_secs(2);
/// How long to wait for a TCP connection to a peer.
pub const PEER_CONNECT_TIMEOUT: Duration = Duration::from_millis(500);
/// Longest pause after failed calls before trying a peer again.
pub const PEER_RETRY_PAUSE_MAX: Duration = Duration::from_millis(500);

/// Messages received from one peer.
pub type Inbound<C> = (NodeId, Vec<Message<C>>);

/// The sending side: one outbox and sender task per peer.
pub struct Outboxes<C> {
    outboxes: BTreeMap<NodeId, mpsc::Sender<Message<C>>>,
    tasks: Vec<JoinHandle<()>>,
}

impl<C: Command> Outboxes<C> {
    /// Starts a sender task for every peer in `peers` (id → address),
    /// dialing with `dialer`: over TLS, a peer's certificate must name it
    /// ([`quorumlock_tls::node_name`]).
    pub fn start(
        from: NodeId,
        peers: &BTreeMap<NodeId, String>,
        dialer: &Dialer,
    ) -> anyhow::Result<Outboxes<C>> {
        let mut outboxes = BTreeMap::new();
        let mut tasks = Vec::new();
        for (id, addr) in peers {
            let endpoint = Endpoint::from_shared(format!("http://{addr}"))
                .map_err(|error| anyhow::anyhow!("bad address {addr:?} for node {id}: {error}"))?
                .connect_timeout(PEER_CONNECT_TIMEOUT)
                .tcp_nodelay(true);
            let channel = dialer
                .channel(&endpoint, &node_name(id.get()))
                .map_err(|error| anyhow::anyhow!("node {id}: {error}"))?;
            let client = PaxosPeerClient::new(channel)
                .max_decoding_message_size(PEER_MESSAGE_BYTES_MAX)
                .max_encoding_message_size(PEER_MESSAGE_BYTES_MAX);
            let (sender, receiver) = mpsc::channel(OUTBOX_MESSAGES_MAX);
            tasks.push(tokio::spawn(send_loop(from, *id, client, receiver)));
            outboxes.insert(*id, sender);
        }
        Ok(Outboxes { outboxes, tasks })
    }

    /// Queues `message` for `to`; drops it when the outbox is full.
    pub fn send(&self, to: NodeId, message: Message<C>) {
        let Some(outbox) = self.outboxes.get(&to) else {
            tracing::error!(%to, "message for a node that is not a peer dropped");
            return;
        };
        if let Err(mpsc::error::TrySendError::Full(message)) = outbox.try_send(message) {
            tracing::debug!(%to, kind = message.kind(), "peer outbox full; message dropped");
        }
    }
}

impl<C> Outboxes<C> {
    /// Stops every sender task and waits until they are gone.
    pub async fn stop(&mut self) {
        self.outboxes.clear();
        for task in self.tasks.drain(..) {
            task.abort();
            let _ = task.await;
        }
    }
}

impl<C> Drop for Outboxes<C> {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

impl<C: Command> Transport<C> for Outboxes<C> {
    fn send(&mut self, envelope: Envelope<C>) {
        Outboxes::send(self, envelope.to, envelope.message);
    }
}

async fn send_loop<C: Serialize>(
    from: NodeId,
    to: NodeId,
    mut client: PaxosPeerClient<tonic::transport::Channel>,
    mut outbox: mpsc::Receiver<Message<C>>,
) {
    let mut failures: u32 = 0;
    // A message taken from the outbox that did not fit the previous batch.
    let mut carried: Option<Vec<u8>> = None;
    loop {
        let first = match carried.take() {
            Some(encoded) => encoded,
            None => match outbox.recv().await {
                Some(message) => match encode(to, &message) {
                    Some(encoded) => encoded,
                    None => continue,
                },
                None => return,
            },
        };
        // bincode encodes a Vec as its u64 length then its elements, so a
        // batch is assembled from messages encoded once each.
        let mut count: u64 = 1;
        let mut messages = Vec::with_capacity(8 + first.len());
        messages.extend_from_slice(&[0; 8]);
        messages.extend_from_slice(&first);
        while count < BATCH_MESSAGES_MAX as u64 {
            let Ok(message) = outbox.try_recv() else {
                break;
            };
            let Some(encoded) = encode(to, &message) else {
                continue;
            };
            if messages.len() + encoded.len() > BATCH_BYTES_MAX {
                carried = Some(encoded);
                break;
            }
            messages.extend_from_slice(&encoded);
            count += 1;
        }
        messages[..8].copy_from_slice(&count.to_le_bytes());
        // Big batches (snapshots) get time to travel at a modest rate.
        let timeout =
            PEER_RPC_TIMEOUT + Duration::from_millis((messages.len() / PEER_BYTES_PER_MS_MIN) as u64);
        let mut request = Request::new(PaxosBatch {
            from: from.get(),
            messages,
        });
        request.set_timeout(timeout);
        match tokio::time::timeout(timeout, client.deliver(request)).await {
            Ok(Ok(_)) => failures = 0,
            Ok(Err(status)) => {
                failures += 1;
                tracing::debug!(%to, code = ?status.code(), message = status.message(), "paxos delivery failed");
            }
            Err(_) => {
                failures += 1;
                tracing::debug!(%to, "paxos delivery timed out");
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

/// Encodes one message; drops (and logs) one that no peer could accept.
fn encode<C: Serialize>(to: NodeId, message: &Message<C>) -> Option<Vec<u8>> {
    match bincode::serialize(message) {
        Ok(encoded) if encoded.len() + 8 <= PEER_MESSAGE_BYTES_MAX => Some(encoded),
        Ok(encoded) => {
            tracing::error!(
                %to,
                kind = message.kind(),
                bytes = encoded.len(),
                "paxos message exceeds the peer message limit; dropped"
            );
            None
        }
        Err(error) => {
            tracing::error!(%to, %error, "unencodable paxos message dropped");
            None
        }
    }
}

/// Decodes the messages of one `Deliver` batch. The bytes come from the
/// network, so any input must give messages or an error, never a panic or an
/// allocation the input does not pay for.
pub fn decode_batch<C: DeserializeOwned>(bytes: &[u8]) -> Result<Vec<Message<C>>, bincode::Error> {
    bincode::deserialize(bytes)
}

/// The receiving side: `quorumlock.paxos.v1.PaxosPeer`.
pub struct PaxosPeerService<C> {
    members: Vec<NodeId>,
    inbox: mpsc::Sender<Inbound<C>>,
}

impl<C> PaxosPeerService<C> {
    /// Hands batches from `members` to the replica's driver through `inbox`.
    pub fn new(members: Vec<NodeId>, inbox: mpsc::Sender<Inbound<C>>) -> Self {
        PaxosPeerService { members, inbox }
    }
}

#[tonic::async_trait]
impl<C: Command> PaxosPeer for PaxosPeerService<C> {
    async fn deliver(&self, request: Request<PaxosBatch>) -> Result<Response<PaxosAck>, Status> {
        let PaxosBatch { from, messages } = request.into_inner();
        let from = NodeId::new(from);
        if !self.members.contains(&from) {
            return Err(Status::permission_denied(format!(
                "node {from} is not a member of this cluster"
            )));
        }
        let messages = decode_batch(&messages)
            .map_err(|error| Status::invalid_argument(format!("undecodable paxos messages: {error}")))?;
        self.inbox
            .send((from, messages))
            .await
            .map_err(|_| Status::unavailable("the paxos engine is stopping"))?;
        Ok(Response::new(PaxosAck {}))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::types::{Ballot, Slot};

    #[test]
    fn a_batch_assembled_from_single_encodings_decodes_as_the_message_list() {
        let messages: Vec<Message<u64>> = vec![
            Message::Probe {
                ballot: Ballot {
                    round: 1,
                    node: NodeId::new(2),
                },
            },
            Message::Learn {
                from_slot: Slot::new(42),
            },
        ];
        let mut assembled = (messages.len() as u64).to_le_bytes().to_vec();
        for message in &messages {
            assembled.extend(encode(NodeId::new(1), message).expect("small messages encode"));
        }
        let decoded: Vec<Message<u64>> = bincode::deserialize(&assembled).expect("the batch decodes");
        assert_eq!(decoded, messages);
    }
}
