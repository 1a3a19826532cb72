//! Carries Multi-Paxos messages between nodes over tonic.
//!
//! Each peer has a bounded outbox drained by one task that sends whatever
//! accumulated as one `Deliver` batch: while a batch is in flight the next
//! one fills, so the transport batches under load without waiting when idle.
//! A full outbox drops the message and a failed call drops its batch: the
//! protocol retransmits what matters, so the transport never blocks the
//! replica.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tonic::metadata::MetadataValue;

use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tonic::transport::Endpoint;
use tonic::{Request, Response, Status};

use crate::core::message::{Envelope, Message};
use crate::core::types::{Command, Configuration};
use crate::driver::Transport;
use prometheus_client::metrics::histogram::Histogram;
use quorumlock_core::consensus::incarnation::{Incarnations, INCARNATION_HEADER, INCARNATION_OF_METADATA};
use quorumlock_core::consensus::{EngineTelemetry, NodeId, RETIRED_METADATA};
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

/// One peer's outbox and the task that drains it.
struct Outbox<C> {
    addr: String,
    sender: mpsc::Sender<Message<C>>,
    task: JoinHandle<()>,
}

/// The sending side: one outbox and sender task per peer. The peers follow
/// the configuration in force ([`Outboxes::sync`]).
pub struct Outboxes<C> {
    from: NodeId,
    dialer: Dialer,
    outboxes: BTreeMap<NodeId, Outbox<C>>,
    /// Sender tasks of peers that left the configuration, finishing what
    /// was queued for them before they left (the last messages a removed
    /// node is sent tell it of its removal).
    departing: Vec<JoinHandle<()>>,
    /// Set once a peer refused this node's messages because a membership
    /// change retired its id ([`RETIRED_METADATA`]); the value names the peer.
    refused_as_retired: Arc<Mutex<Option<NodeId>>>,
    /// Both ends' incarnations, which every batch names.
    incarnations: Arc<Incarnations>,
    /// Where each answered batch's round trip is recorded.
    telemetry: Arc<EngineTelemetry>,
}

impl<C: Command> Outboxes<C> {
    /// Starts a sender task for every peer in `peers` (id → address),
    /// dialing with `dialer`: over TLS, a peer's certificate must name it
    /// ([`quorumlock_tls::node_name`]). Every batch names both ends'
    /// incarnations from `incarnations`, which learns a peer's from its
    /// introduction. Each answered batch's round trip is recorded in
    /// `telemetry`.
    pub fn start(
        from: NodeId,
        peers: &BTreeMap<NodeId, String>,
        dialer: &Dialer,
        incarnations: Arc<Incarnations>,
        telemetry: Arc<EngineTelemetry>,
    ) -> anyhow::Result<Outboxes<C>> {
        let mut outboxes = Outboxes {
            from,
            dialer: dialer.clone(),
            outboxes: BTreeMap::new(),
            departing: Vec::new(),
            refused_as_retired: Arc::new(Mutex::new(None)),
            incarnations,
            telemetry,
        };
        for (id, addr) in peers {
            outboxes.open(*id, addr)?;
        }
        Ok(outboxes)
    }

    fn open(&mut self, id: NodeId, addr: &str) -> anyhow::Result<()> {
        let endpoint = Endpoint::from_shared(format!("http://{addr}"))
            .map_err(|error| anyhow::anyhow!("bad address {addr:?} for node {id}: {error}"))?
            .connect_timeout(PEER_CONNECT_TIMEOUT)
            .tcp_nodelay(true);
        let channel = self
            .dialer
            .channel(&endpoint, &node_name(id.get()))
            .map_err(|error| anyhow::anyhow!("node {id}: {error}"))?;
        let client = PaxosPeerClient::new(channel)
            .max_decoding_message_size(PEER_MESSAGE_BYTES_MAX)
            .max_encoding_message_size(PEER_MESSAGE_BYTES_MAX);
        let (sender, receiver) = mpsc::channel(OUTBOX_MESSAGES_MAX);
        let task = tokio::spawn(send_loop(
            self.from,
            id,
            client,
            receiver,
            self.refused_as_retired.clone(),
            self.incarnations.clone(),
            self.telemetry.clone(),
        ));
        self.outboxes.insert(
            id,
            Outbox {
                addr: addr.to_string(),
                sender,
                task,
            },
        );
        Ok(())
    }

    /// Makes the peers exactly `peers` (id → address): opens outboxes for
    /// new ones and for moved addresses, and stops those of departed ones.
    /// A bad address is logged and its peer left out (the configuration
    /// was checked when the change was made).
    pub fn sync(&mut self, peers: &BTreeMap<NodeId, String>) {
        let gone: Vec<NodeId> = self
            .outboxes
            .iter()
            .filter(|(id, outbox)| peers.get(id) != Some(&outbox.addr))
            .map(|(id, _)| *id)
            .collect();
        self.departing.retain(|task| !task.is_finished());
        for id in gone {
            if let Some(outbox) = self.outboxes.remove(&id) {
                // Closing the outbox lets its task send what is queued and
                // end: each batch is bounded by the delivery timeout, and a
                // failed one is not retried.
                drop(outbox.sender);
                self.departing.push(outbox.task);
            }
        }
        for (id, addr) in peers {
            if *id != self.from && !self.outboxes.contains_key(id) {
                if let Err(error) = self.open(*id, addr) {
                    tracing::error!(node = %id, %addr, "cannot reach a member: {error:#}");
                }
            }
        }
    }

    /// The peer that refused this node's messages as those of a removed
    /// node, once one did.
    pub fn refused_as_retired(&self) -> Option<NodeId> {
        *self.refused_as_retired.lock()
    }

    /// Queues `message` for `to`; drops it when the outbox is full.
    pub fn send(&self, to: NodeId, message: Message<C>) {
        let Some(outbox) = self.outboxes.get(&to) else {
            tracing::debug!(%to, kind = message.kind(), "message for a node that is not a peer dropped");
            return;
        };
        if let Err(mpsc::error::TrySendError::Full(message)) = outbox.sender.try_send(message) {
            tracing::debug!(%to, kind = message.kind(), "peer outbox full; message dropped");
        }
    }
}

impl<C> Outboxes<C> {
    /// Stops every sender task and waits until they are gone.
    pub async fn stop(&mut self) {
        let departing = std::mem::take(&mut self.departing);
        let tasks = std::mem::take(&mut self.outboxes)
            .into_values()
            .map(|outbox| outbox.task)
            .chain(departing);
        for task in tasks {
            task.abort();
            let _ = task.await;
        }
    }
}

impl<C> Drop for Outboxes<C> {
    fn drop(&mut self) {
        for task in self
            .outboxes
            .values()
            .map(|outbox| &outbox.task)
            .chain(&self.departing)
        {
            task.abort();
        }
    }
}

impl<C: Command> Transport<C> for Outboxes<C> {
    fn send(&mut self, envelope: Envelope<C>) {
        Outboxes::send(self, envelope.to, envelope.message);
    }
}

/// Encodes `message` as [`encode`] does, counting the snapshots sent.
fn encode_counted<C: Serialize>(
    to: NodeId,
    message: &Message<C>,
    telemetry: &EngineTelemetry,
) -> Option<Vec<u8>> {
    if matches!(message, Message::Snapshot { .. }) {
        telemetry.snapshot_sent();
    }
    encode(to, message)
}

async fn send_loop<C: Serialize>(
    from: NodeId,
    to: NodeId,
    mut client: PaxosPeerClient<tonic::transport::Channel>,
    mut outbox: mpsc::Receiver<Message<C>>,
    refused_as_retired: Arc<Mutex<Option<NodeId>>>,
    incarnations: Arc<Incarnations>,
    telemetry: Arc<EngineTelemetry>,
) {
    let round_trip = telemetry.peer_round_trip(to);
    let mut failures: u32 = 0;
    // A message taken from the outbox that did not fit the previous batch.
    let mut carried: Option<Vec<u8>> = None;
    loop {
        let first = match carried.take() {
            Some(encoded) => encoded,
            None => match outbox.recv().await {
                Some(message) => match encode_counted(to, &message, &telemetry) {
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
            let Some(encoded) = encode_counted(to, &message, &telemetry) else {
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
        if incarnations.known(to).is_none() {
            // A peer that does not know it is known refuses batches until
            // it is: an empty batch first learns its incarnation, so this
            // one is not lost.
            let empty = PaxosBatch {
                from: from.get(),
                messages: 0u64.to_le_bytes().to_vec(),
            };
            let _ = deliver(
                &mut client,
                to,
                empty,
                PEER_RPC_TIMEOUT,
                &incarnations,
                &refused_as_retired,
                &round_trip,
            )
            .await;
        }
        // Big batches (snapshots) get time to travel at a modest rate.
        let timeout =
            PEER_RPC_TIMEOUT + Duration::from_millis((messages.len() / PEER_BYTES_PER_MS_MIN) as u64);
        let batch = PaxosBatch {
            from: from.get(),
            messages,
        };
        match deliver(
            &mut client,
            to,
            batch,
            timeout,
            &incarnations,
            &refused_as_retired,
            &round_trip,
        )
        .await
        {
            true => failures = 0,
            false => failures += 1,
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

/// Sends one batch to `to`; whether it was taken. A refusal that retires
/// this node is told to `refused_as_retired`, and one that carries the
/// peer's incarnation teaches it to `incarnations`.
async fn deliver(
    client: &mut PaxosPeerClient<tonic::transport::Channel>,
    to: NodeId,
    batch: PaxosBatch,
    timeout: Duration,
    incarnations: &Incarnations,
    refused_as_retired: &Mutex<Option<NodeId>>,
    round_trip: &Histogram,
) -> bool {
    let mut request = Request::new(batch);
    request.set_timeout(timeout);
    if let Ok(value) = incarnations.header_to(to).parse() {
        request.metadata_mut().insert(INCARNATION_HEADER, value);
    }
    let sent = std::time::Instant::now();
    match tokio::time::timeout(timeout, client.deliver(request)).await {
        Ok(Ok(_)) => {
            round_trip.observe(sent.elapsed().as_secs_f64());
            true
        }
        Ok(Err(status)) => {
            if status.metadata().get(RETIRED_METADATA).is_some() {
                refused_as_retired.lock().get_or_insert(to);
            }
            if let Some(introduction) = status.metadata().get(INCARNATION_OF_METADATA) {
                let learned = introduction
                    .to_str()
                    .map_err(|error| error.to_string())
                    .and_then(|text| incarnations.learn(to, text));
                if let Err(error) = learned {
                    tracing::warn!(%to, %error, "a peer's introduction was not taken");
                }
            }
            tracing::debug!(%to, code = ?status.code(), message = status.message(), "paxos delivery failed");
            false
        }
        Err(_) => {
            tracing::debug!(%to, "paxos delivery timed out");
            false
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

/// Whom the peer service takes batches from: the configuration's members,
/// or anyone not retired while this node joins and knows no configuration
/// yet.
#[derive(Debug, Clone, Default)]
pub struct Admission {
    /// Voters and learners of the configuration in force.
    pub members: BTreeSet<NodeId>,
    /// Ids a membership change removed: refused with [`RETIRED_METADATA`].
    pub retired: BTreeSet<NodeId>,
    /// This node knows no configuration (it joins): any id not retired is
    /// admitted, so the leader can hand it the cluster's state.
    pub joining: bool,
}

impl Admission {
    /// The admission a configuration in force gives.
    pub fn of(config: &Configuration) -> Admission {
        Admission {
            members: config.voters.iter().chain(&config.learners).copied().collect(),
            retired: config.retired.clone(),
            joining: config.voters.is_empty(),
        }
    }
}

/// The receiving side: `quorumlock.paxos.v1.PaxosPeer`.
pub struct PaxosPeerService<C> {
    admission: Arc<Mutex<Admission>>,
    inbox: mpsc::Sender<Inbound<C>>,
}

impl<C> PaxosPeerService<C> {
    /// Hands batches from admitted senders to the replica's driver through
    /// `inbox`; the engine keeps `admission` in step with the configuration.
    pub fn new(admission: Arc<Mutex<Admission>>, inbox: mpsc::Sender<Inbound<C>>) -> Self {
        PaxosPeerService { admission, inbox }
    }
}

#[tonic::async_trait]
impl<C: Command> PaxosPeer for PaxosPeerService<C> {
    async fn deliver(&self, request: Request<PaxosBatch>) -> Result<Response<PaxosAck>, Status> {
        let PaxosBatch { from, messages } = request.into_inner();
        let from = NodeId::new(from);
        {
            let admission = self.admission.lock();
            if admission.retired.contains(&from) {
                let mut status = Status::failed_precondition(format!(
                    "node {from} was removed from this cluster; its id is retired and its messages are refused"
                ));
                status
                    .metadata_mut()
                    .insert(RETIRED_METADATA, MetadataValue::from(from.get()));
                return Err(status);
            }
            if !admission.joining && !admission.members.contains(&from) {
                return Err(Status::permission_denied(format!(
                    "node {from} is not a member of this cluster"
                )));
            }
        }
        let messages = decode_batch(&messages)
            .map_err(|error| Status::invalid_argument(format!("undecodable paxos messages: {error}")))?;
        if messages.is_empty() {
            // An introduction: the peer guard judged its incarnations.
            return Ok(Response::new(PaxosAck {}));
        }
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
                    epoch: 0,
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
