//! Carries Multi-Paxos messages between nodes over tonic.
//!
//! Each peer has a bounded outbox drained by one task. The task keeps one
//! long-lived `Stream` call open to the peer and sends whatever accumulated
//! as one batch on it; the peer answers each batch in order. Up to
//! [`STREAM_BATCHES_IN_FLIGHT_MAX`] batches travel unanswered, so the
//! transport batches under load without waiting when idle, and a message
//! costs a frame on an open stream rather than a call of its own. A peer
//! that serves no streams (an older version) gets one `Deliver` call per
//! batch. A full outbox drops the message, and a failed stream or call
//! drops its unanswered batches: the protocol retransmits what matters, so
//! the transport never blocks the replica.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::Stream;
use tonic::transport::{Channel, Endpoint};
use tonic::{Request, Response, Status, Streaming};

use crate::core::message::{Envelope, Message};
use crate::core::types::{Command, Configuration};
use crate::driver::Transport;
use prometheus_client::metrics::histogram::Histogram;
use quorumlock_core::consensus::incarnation::{Incarnations, INCARNATION_HEADER, INCARNATION_OF_METADATA};
use quorumlock_core::consensus::{retired_sender_refused, EngineTelemetry, NodeId, RETIRED_METADATA};
use quorumlock_proto::paxos::paxos_peer_client::PaxosPeerClient;
use quorumlock_proto::paxos::paxos_peer_server::PaxosPeer;
use quorumlock_proto::paxos::{PaxosAck, PaxosBatch};
use quorumlock_tls::{node_name, Dialer};

/// Largest peer message, in bytes: a batch gathers at most
/// [`BATCH_BYTES_MAX`], an `Accept` or `Chosen` carries at most the
/// replica's `message_bytes_max` (16 MiB) of values besides one larger
/// slot, and a snapshot travels in chunks of 1 MiB.
pub const PEER_MESSAGE_BYTES_MAX: usize = 32 << 20;
/// Messages waiting for one peer before new ones are dropped.
pub const OUTBOX_MESSAGES_MAX: usize = 16_384;
/// Most messages in one batch.
pub const BATCH_MESSAGES_MAX: usize = 1_024;
/// Batches sent on a peer's stream and not yet answered; past this the
/// sender takes nothing more from the outbox until answers come.
pub const STREAM_BATCHES_IN_FLIGHT_MAX: usize = 64;
/// Most bytes one batch gathers from several messages (a single
/// larger message travels alone).
pub const BATCH_BYTES_MAX: usize = 16 << 20;
/// The slowest transfer rate a batch's timeout allows for, in bytes per
/// millisecond (about 10 MB/s).
pub const PEER_BYTES_PER_MS_MIN: usize = 10_000;
/// Batches received and not yet stepped before senders are slowed down.
pub const INBOX_BATCHES_MAX: usize = 1_024;
/// How long one `Deliver` call, the opening of a stream, or the answer
/// to a batch on it may take.
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

/// Encodes `message` as [`encode`] does, counting the snapshot transfers
/// started (their first chunks sent).
fn encode_counted<C: Serialize>(
    to: NodeId,
    message: &Message<C>,
    telemetry: &EngineTelemetry,
) -> Option<Vec<u8>> {
    if matches!(message, Message::SnapshotChunk { offset: 0, .. }) {
        telemetry.snapshot_sent();
    }
    encode(to, message)
}

/// The sending side of one peer's link: who sends to whom, and what a
/// refusal teaches.
struct Peer {
    to: NodeId,
    refused_as_retired: Arc<Mutex<Option<NodeId>>>,
    incarnations: Arc<Incarnations>,
    round_trip: Histogram,
}

impl Peer {
    /// Learns what a refusal says: that this node's id was retired, or the
    /// peer's incarnation.
    fn refused(&self, status: &Status) {
        if status.metadata().get(RETIRED_METADATA).is_some() {
            self.refused_as_retired.lock().get_or_insert(self.to);
        }
        if let Some(introduction) = status.metadata().get(INCARNATION_OF_METADATA) {
            let learned = introduction
                .to_str()
                .map_err(|error| error.to_string())
                .and_then(|text| self.incarnations.learn(self.to, text));
            if let Err(error) = learned {
                tracing::warn!(to = %self.to, %error, "a peer's introduction was not taken");
            }
        }
        tracing::debug!(to = %self.to, code = ?status.code(), message = status.message(), "paxos delivery failed");
    }

    /// Learns what a failed stream's refusal says, if the peer gave one
    /// (a broken stream or a late answer gives none).
    fn stream_failed(&self, status: Option<Status>) {
        if let Some(status) = status {
            self.refused(&status);
        }
    }
}

/// One open `Stream` call and the batches it has not had answered yet.
struct StreamLink {
    /// `None` once the sending half is closed.
    requests: Option<mpsc::Sender<PaxosBatch>>,
    answers: Streaming<PaxosAck>,
    /// When each unanswered batch was sent and when its answer is due.
    unanswered: VecDeque<(Instant, Instant)>,
}

/// What a sender waits for.
enum Event<M> {
    /// A message from the outbox, or `None` once it is closed.
    Message(Option<M>),
    /// The oldest unanswered batch was answered.
    Answered,
    /// The stream ended: refused (with why) or broken, or an answer was
    /// not in time.
    Failed(Option<Status>),
}

impl StreamLink {
    /// Opens a `Stream` call to `peer`.
    async fn open(client: &mut PaxosPeerClient<Channel>, peer: &Peer) -> Result<StreamLink, Status> {
        let (requests, outgoing) = mpsc::channel(STREAM_BATCHES_IN_FLIGHT_MAX);
        // No deadline on the call itself: it lives as long as the link.
        let mut request = Request::new(ReceiverStream::new(outgoing));
        if let Ok(value) = peer.incarnations.header_to(peer.to).parse() {
            request.metadata_mut().insert(INCARNATION_HEADER, value);
        }
        match tokio::time::timeout(PEER_RPC_TIMEOUT, client.stream(request)).await {
            Ok(Ok(response)) => Ok(StreamLink {
                requests: Some(requests),
                answers: response.into_inner(),
                unanswered: VecDeque::new(),
            }),
            Ok(Err(status)) => Err(status),
            Err(_) => Err(Status::deadline_exceeded(format!(
                "no answer to opening a paxos stream within {PEER_RPC_TIMEOUT:?}"
            ))),
        }
    }

    /// Waits for the next answer; the failure of the stream (refused,
    /// with why, or broken, or the answer not in time) otherwise.
    async fn answer(&mut self, round_trip: &Histogram) -> Result<(), Option<Status>> {
        let due = self.unanswered.front().map_or_else(Instant::now, |(_, due)| *due);
        tokio::select! {
            answer = self.answers.message() => match answer {
                Ok(Some(PaxosAck {})) => match self.unanswered.pop_front() {
                    Some((sent, _)) => {
                        round_trip.observe(sent.elapsed().as_secs_f64());
                        Ok(())
                    }
                    None => Err(Some(Status::internal("the peer answered a batch it was not sent"))),
                },
                Ok(None) => Err(None),
                Err(status) => Err(Some(status)),
            },
            () = tokio::time::sleep_until(due.into()), if !self.unanswered.is_empty() => {
                tracing::debug!("a paxos batch was not answered in time; the stream is dropped");
                Err(None)
            }
        }
    }

    /// The next answer, failure or message from `outbox`; messages are
    /// taken only while fewer than [`STREAM_BATCHES_IN_FLIGHT_MAX`] batches
    /// wait for an answer.
    async fn next<M>(&mut self, outbox: &mut mpsc::Receiver<M>, round_trip: &Histogram) -> Event<M> {
        let room = self.unanswered.len() < STREAM_BATCHES_IN_FLIGHT_MAX;
        tokio::select! {
            biased;
            answer = self.answer(round_trip) => match answer {
                Ok(()) => Event::Answered,
                Err(status) => Event::Failed(status),
            },
            message = outbox.recv(), if room => Event::Message(message),
        }
    }

    /// Sends `batch`, whose answer is due within `timeout`; false if the
    /// stream is gone.
    fn send(&mut self, batch: PaxosBatch, timeout: Duration) -> bool {
        let now = Instant::now();
        let Some(requests) = &self.requests else {
            return false;
        };
        match requests.try_send(batch) {
            Ok(()) => {
                self.unanswered.push_back((now, now + timeout));
                true
            }
            Err(_) => false,
        }
    }

    /// Closes the sending half and waits for the answers still due, so
    /// that the last batches (a departing peer's news of its removal)
    /// arrive.
    async fn finish(mut self, round_trip: &Histogram) {
        self.requests = None;
        while !self.unanswered.is_empty() {
            if self.answer(round_trip).await.is_err() {
                return;
            }
        }
    }
}

/// The pause after `failures` failed attempts in a row: growing, bounded.
fn retry_pause(failures: u32) -> Duration {
    Duration::from_millis(10 << failures.min(6)).min(PEER_RETRY_PAUSE_MAX)
}

async fn send_loop<C: Serialize>(
    from: NodeId,
    to: NodeId,
    mut client: PaxosPeerClient<Channel>,
    mut outbox: mpsc::Receiver<Message<C>>,
    refused_as_retired: Arc<Mutex<Option<NodeId>>>,
    incarnations: Arc<Incarnations>,
    telemetry: Arc<EngineTelemetry>,
) {
    let peer = Peer {
        to,
        refused_as_retired,
        incarnations,
        round_trip: telemetry.peer_round_trip(to),
    };
    let mut failures: u32 = 0;
    // A message taken from the outbox that did not fit the previous batch.
    let mut carried: Option<Vec<u8>> = None;
    let mut link: Option<StreamLink> = None;
    // A peer that does not serve `Stream` (an older version) is sent one
    // `Deliver` call per batch instead.
    let mut streams = true;
    loop {
        let first = match carried.take() {
            Some(encoded) => encoded,
            None => {
                let event = match link.as_mut() {
                    Some(open) => open.next(&mut outbox, &peer.round_trip).await,
                    None => Event::Message(outbox.recv().await),
                };
                match event {
                    Event::Message(Some(message)) => match encode_counted(to, &message, &telemetry) {
                        Some(encoded) => encoded,
                        None => continue,
                    },
                    Event::Message(None) => {
                        if let Some(open) = link.take() {
                            open.finish(&peer.round_trip).await;
                        }
                        return;
                    }
                    Event::Answered => {
                        failures = 0;
                        continue;
                    }
                    Event::Failed(status) => {
                        peer.stream_failed(status);
                        // Unanswered batches are lost with the stream; the
                        // protocol resends what matters.
                        link = None;
                        back_off(&mut failures).await;
                        continue;
                    }
                }
            }
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
        // Big batches (snapshots) get time to travel at a modest rate.
        let timeout =
            PEER_RPC_TIMEOUT + Duration::from_millis((messages.len() / PEER_BYTES_PER_MS_MIN) as u64);
        let batch = PaxosBatch {
            from: from.get(),
            messages,
        };
        if link.is_none() && peer.incarnations.known(to).is_none() {
            // A peer that does not know it is known refuses batches until
            // it is: an empty batch first learns its incarnation, so this
            // one is not lost.
            let empty = PaxosBatch {
                from: from.get(),
                messages: 0u64.to_le_bytes().to_vec(),
            };
            let _ = deliver(&mut client, &peer, empty, PEER_RPC_TIMEOUT).await;
        }
        if streams && link.is_none() {
            match StreamLink::open(&mut client, &peer).await {
                Ok(open) => link = Some(open),
                Err(status) if status.code() == tonic::Code::Unimplemented => {
                    tracing::info!(%to, "the peer serves no paxos streams (an older version); sending it one call per batch");
                    streams = false;
                }
                Err(status) => {
                    peer.refused(&status);
                    back_off(&mut failures).await;
                    continue;
                }
            }
        }
        let sent = match link.as_mut() {
            Some(open) => {
                // Room was checked before the batch's first message was
                // taken, except for a carried one: wait for it.
                let mut room = true;
                while open.unanswered.len() >= STREAM_BATCHES_IN_FLIGHT_MAX {
                    if let Err(status) = open.answer(&peer.round_trip).await {
                        peer.stream_failed(status);
                        room = false;
                        break;
                    }
                }
                let sent = room && open.send(batch, timeout);
                if !sent {
                    link = None;
                }
                sent
            }
            None => deliver(&mut client, &peer, batch, timeout).await,
        };
        match sent {
            // A stream's success is counted when the batch is answered.
            true if link.is_none() => failures = 0,
            true => {}
            false => back_off(&mut failures).await,
        }
    }
}

/// Counts one more failure in a row and pauses for it (growing to a bound),
/// so that a dead peer is not spun on. Messages queued meanwhile go with the
/// next attempt, or are dropped once the outbox fills; the protocol resends.
async fn back_off(failures: &mut u32) {
    *failures += 1;
    tokio::time::sleep(retry_pause(*failures)).await;
}

/// Sends one batch to `to` in a `Deliver` call; whether it was taken.
async fn deliver(
    client: &mut PaxosPeerClient<Channel>,
    peer: &Peer,
    batch: PaxosBatch,
    timeout: Duration,
) -> bool {
    let mut request = Request::new(batch);
    request.set_timeout(timeout);
    if let Ok(value) = peer.incarnations.header_to(peer.to).parse() {
        request.metadata_mut().insert(INCARNATION_HEADER, value);
    }
    let sent = Instant::now();
    match tokio::time::timeout(timeout, client.deliver(request)).await {
        Ok(Ok(_)) => {
            peer.round_trip.observe(sent.elapsed().as_secs_f64());
            true
        }
        Ok(Err(status)) => {
            peer.refused(&status);
            false
        }
        Err(_) => {
            tracing::debug!(to = %peer.to, "paxos delivery timed out");
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

/// Decodes the messages of one batch. The bytes come from the
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
    stopping: watch::Receiver<bool>,
}

impl<C> PaxosPeerService<C> {
    /// Hands batches from admitted senders to the replica's driver through
    /// `inbox`; the engine keeps `admission` in step with the configuration.
    /// Streams end once `stopping` turns true.
    pub fn new(
        admission: Arc<Mutex<Admission>>,
        inbox: mpsc::Sender<Inbound<C>>,
        stopping: watch::Receiver<bool>,
    ) -> Self {
        PaxosPeerService {
            admission,
            inbox,
            stopping,
        }
    }
}

/// Takes one batch: refuses a retired or unknown sender and undecodable
/// bytes, and queues the messages for the driver (waiting for room).
async fn take_batch<C: Command>(
    admission: &Mutex<Admission>,
    inbox: &mpsc::Sender<Inbound<C>>,
    batch: PaxosBatch,
) -> Result<PaxosAck, Status> {
    let PaxosBatch { from, messages } = batch;
    let from = NodeId::new(from);
    {
        let admission = admission.lock();
        if admission.retired.contains(&from) {
            return Err(retired_sender_refused(from));
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
        return Ok(PaxosAck {});
    }
    inbox
        .send((from, messages))
        .await
        .map_err(|_| Status::unavailable("the paxos engine is stopping"))?;
    Ok(PaxosAck {})
}

/// Returns once `stopping` is true; never if its sender is gone first.
async fn stopped(mut stopping: watch::Receiver<bool>) {
    if stopping.wait_for(|stopping| *stopping).await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// Takes the batches of one stream in order, answering each, until the
/// sender closes it, a batch is refused, or the node stops.
async fn serve_stream<C: Command>(
    admission: Arc<Mutex<Admission>>,
    inbox: mpsc::Sender<Inbound<C>>,
    stopping: watch::Receiver<bool>,
    mut batches: Streaming<PaxosBatch>,
    acks: mpsc::Sender<Result<PaxosAck, Status>>,
) {
    let stop = stopped(stopping);
    tokio::pin!(stop);
    let mut sender: Option<u64> = None;
    loop {
        let batch = tokio::select! {
            () = &mut stop => {
                let _ = acks.send(Err(Status::unavailable("the node is stopping"))).await;
                return;
            }
            batch = batches.message() => match batch {
                Ok(Some(batch)) => batch,
                // Closed by the sender, or broken: nobody reads an answer.
                Ok(None) | Err(_) => return,
            },
        };
        let from = *sender.get_or_insert(batch.from);
        let ack = if batch.from == from {
            take_batch(&admission, &inbox, batch).await
        } else {
            Err(Status::invalid_argument(format!(
                "a paxos stream carries one sender's batches: it began as node {from}'s, and this batch names node {}",
                batch.from
            )))
        };
        let last = ack.is_err();
        if acks.send(ack).await.is_err() || last {
            return;
        }
    }
}

/// The answers of one stream, as tonic sends them.
pub type AckStream = std::pin::Pin<Box<dyn Stream<Item = Result<PaxosAck, Status>> + Send>>;

#[tonic::async_trait]
impl<C: Command> PaxosPeer for PaxosPeerService<C> {
    async fn deliver(&self, request: Request<PaxosBatch>) -> Result<Response<PaxosAck>, Status> {
        take_batch(&self.admission, &self.inbox, request.into_inner())
            .await
            .map(Response::new)
    }

    type StreamStream = AckStream;

    async fn stream(
        &self,
        request: Request<Streaming<PaxosBatch>>,
    ) -> Result<Response<Self::StreamStream>, Status> {
        let (acks, answers) = mpsc::channel(STREAM_BATCHES_IN_FLIGHT_MAX);
        tokio::spawn(serve_stream(
            self.admission.clone(),
            self.inbox.clone(),
            self.stopping.clone(),
            request.into_inner(),
            acks,
        ));
        Ok(Response::new(Box::pin(ReceiverStream::new(answers))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::types::{Ballot, Slot};
    use quorumlock_proto::paxos::paxos_peer_server::PaxosPeerServer;
    use tokio::net::TcpListener;
    use tonic::transport::server::TcpIncoming;

    fn incoming(listener: TcpListener) -> TcpIncoming {
        TcpIncoming::from_listener(listener, true, None).expect("a listener")
    }

    /// Node 1's view of node 2 on loopback: node 2's peer service, what it
    /// queued for its driver, and node 1's outbox to it.
    struct Pair {
        inbox: mpsc::Receiver<Inbound<u64>>,
        outboxes: Outboxes<u64>,
        stopping: watch::Sender<bool>,
        shutdown: Option<tokio::sync::oneshot::Sender<()>>,
        server: JoinHandle<Result<(), tonic::transport::Error>>,
    }

    /// Serves `service` (built from the admission, the inbox and the
    /// stopping signal) as node 2 and points node 1's outboxes at it.
    async fn pair<S>(
        service: impl FnOnce(Arc<Mutex<Admission>>, mpsc::Sender<Inbound<u64>>, watch::Receiver<bool>) -> S,
    ) -> Pair
    where
        S: PaxosPeer,
    {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("local address");
        let admission = Arc::new(Mutex::new(Admission {
            members: [NodeId::new(1), NodeId::new(2)].into(),
            ..Admission::default()
        }));
        let (inbox_tx, inbox) = mpsc::channel(INBOX_BATCHES_MAX);
        let (stopping, stopping_rx) = watch::channel(false);
        let (shutdown, shut) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(PaxosPeerServer::new(service(admission, inbox_tx, stopping_rx)))
                .serve_with_incoming_shutdown(incoming(listener), async {
                    let _ = shut.await;
                }),
        );
        let outboxes = Outboxes::start(
            NodeId::new(1),
            &[(NodeId::new(2), addr.to_string())].into(),
            &Dialer::plaintext(),
            Arc::new(Incarnations::in_memory(NodeId::new(1), 11)),
            Arc::default(),
        )
        .expect("outboxes");
        Pair {
            inbox,
            outboxes,
            stopping,
            shutdown: Some(shutdown),
            server,
        }
    }

    fn learn(slot: u64) -> Message<u64> {
        Message::Learn {
            from_slot: Slot::new(slot),
        }
    }

    /// Receives messages from node 1 until `count` arrived, in order.
    async fn received(inbox: &mut mpsc::Receiver<Inbound<u64>>, count: usize) -> Vec<Message<u64>> {
        let mut messages = Vec::new();
        while messages.len() < count {
            let (from, batch) = tokio::time::timeout(Duration::from_secs(30), inbox.recv())
                .await
                .expect("messages arrive")
                .expect("the inbox stays open");
            assert_eq!(from, NodeId::new(1));
            messages.extend(batch);
        }
        messages
    }

    #[tokio::test]
    async fn a_stream_carries_every_message_in_send_order() {
        let mut pair = pair(PaxosPeerService::new).await;
        let sent: Vec<Message<u64>> = (1..=5_000).map(learn).collect();
        for message in &sent {
            pair.outboxes.send(NodeId::new(2), message.clone());
            // Some go alone, most in batches.
            if message == &learn(10) {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        assert_eq!(received(&mut pair.inbox, sent.len()).await, sent);
        pair.outboxes.stop().await;
    }

    /// A peer of an older version: no `Stream`, only `Deliver`.
    struct DeliverOnly(PaxosPeerService<u64>);

    #[tonic::async_trait]
    impl PaxosPeer for DeliverOnly {
        async fn deliver(&self, request: Request<PaxosBatch>) -> Result<Response<PaxosAck>, Status> {
            self.0.deliver(request).await
        }

        type StreamStream = AckStream;

        async fn stream(
            &self,
            _request: Request<Streaming<PaxosBatch>>,
        ) -> Result<Response<Self::StreamStream>, Status> {
            Err(Status::unimplemented("no streams here"))
        }
    }

    #[tokio::test]
    async fn a_peer_that_serves_no_streams_is_sent_one_call_per_batch() {
        let mut pair =
            pair(|admission, inbox, stopping| DeliverOnly(PaxosPeerService::new(admission, inbox, stopping)))
                .await;
        let sent: Vec<Message<u64>> = (1..=100).map(learn).collect();
        for message in &sent {
            pair.outboxes.send(NodeId::new(2), message.clone());
        }
        assert_eq!(received(&mut pair.inbox, sent.len()).await, sent);
        pair.outboxes.stop().await;
    }

    #[tokio::test]
    async fn a_stopping_node_ends_the_streams_it_serves_so_its_server_drains() {
        let mut pair = pair(PaxosPeerService::new).await;
        pair.outboxes.send(NodeId::new(2), learn(1));
        assert_eq!(received(&mut pair.inbox, 1).await, vec![learn(1)]);
        // Node 1 keeps its stream open; node 2 stops.
        pair.stopping.send_replace(true);
        let _ = pair.shutdown.take().expect("once").send(());
        tokio::time::timeout(Duration::from_secs(30), &mut pair.server)
            .await
            .expect("the server drains although node 1 never closed its stream")
            .expect("the server task")
            .expect("the server");
        pair.outboxes.stop().await;
    }

    #[tokio::test]
    async fn a_stream_that_names_a_second_sender_is_refused() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("local address");
        let admission = Arc::new(Mutex::new(Admission {
            members: [NodeId::new(1), NodeId::new(2), NodeId::new(3)].into(),
            ..Admission::default()
        }));
        let (inbox_tx, mut inbox) = mpsc::channel::<Inbound<u64>>(INBOX_BATCHES_MAX);
        let (_stopping, stopping_rx) = watch::channel(false);
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(PaxosPeerServer::new(PaxosPeerService::new(
                    admission,
                    inbox_tx,
                    stopping_rx,
                )))
                .serve_with_incoming(incoming(listener)),
        );
        let mut client = PaxosPeerClient::connect(format!("http://{addr}"))
            .await
            .expect("connect");
        let batch = |from: u64, slot: u64| {
            let mut messages = 1u64.to_le_bytes().to_vec();
            messages.extend(encode(NodeId::new(2), &learn(slot)).expect("encodes"));
            PaxosBatch { from, messages }
        };
        let (requests, outgoing) = mpsc::channel(4);
        let mut answers = client
            .stream(Request::new(ReceiverStream::new(outgoing)))
            .await
            .expect("the stream opens")
            .into_inner();
        requests.send(batch(1, 7)).await.expect("sent");
        answers.message().await.expect("answered").expect("an ack");
        assert_eq!(
            inbox.recv().await.expect("queued"),
            (NodeId::new(1), vec![learn(7)])
        );
        requests.send(batch(3, 8)).await.expect("sent");
        let refusal = answers.message().await.expect_err("a second sender is refused");
        assert_eq!(refusal.code(), tonic::Code::InvalidArgument);
        assert!(
            refusal.message().contains("node 1") && refusal.message().contains("node 3"),
            "{}",
            refusal.message()
        );
        assert!(
            inbox.try_recv().is_err(),
            "nothing of the refused batch was queued"
        );
    }

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
