//! t75: hostile requests at a live cluster, over real gRPC.
//!
//! t70 proves the status code of each kind of bad request; this file proves
//! that abuse is answered precisely and survives: every refusal carries its
//! exact code *and* a message naming the problem, requests far over the gRPC
//! message cap and bytes that are not protobuf at all are refused by the
//! transport, garbage sent to the peer transport is refused without
//! disturbing the engine, floods of sessions and of waiters on one lock stay
//! within their bounds (the waiters admitted are served in FIFO order or time
//! out cleanly), and afterwards every node still answers while the state
//! written before the abuse — a held lock with its token, fenced values — is
//! exactly as it was.

mod common;

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use futures::stream::{self, StreamExt};
use prost::bytes::{Buf, BufMut};
use quorumlock_proto::v1::lock_client::LockClient;
use quorumlock_proto::v1::{GetResponse, OpenSessionRequest, ReleaseResponse};
use rand::Rng;
use tokio::sync::Mutex;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::codegen::http::uri::PathAndQuery;
use tonic::transport::Channel;
use tonic::{Code, Status};

engine_tests!(
    check_hostile_requests_get_precise_statuses_and_change_nothing,
    check_session_and_waiter_floods_stay_bounded_and_fifo,
);

const NAME_BYTES_MAX: usize = 512;
const KEY_BYTES_MAX: usize = 1_024;
const VALUE_BYTES_MAX: usize = 1 << 20;
const TTL_MS_MIN: u64 = 1_000;
const TTL_MS_MAX: u64 = 3_600_000;
const WAIT_MS_MAX: u64 = 3_600_000;
/// The node's cap on one API message (a maximal value plus 64 KiB).
const API_MESSAGE_BYTES_MAX: usize = VALUE_BYTES_MAX + 64 * 1024;
/// Far over the API message cap: what a hostile or broken client might send.
const FAR_OVER_CAP_BYTES: usize = 8 << 20;
const WAITERS_PER_LOCK_MAX: usize = 10_000;
/// A session id no test ever opens.
const NEVER_OPENED: Key = Key {
    id: 424_242_424_242,
    secret: [7; 32],
};

/// Sessions opened at once by the flood.
const SESSION_FLOOD: usize = 20_000;
/// Enqueue attempts on one lock, counting the refused ones.
const ENQUEUE_ATTEMPTS: usize = 100_000;
/// Waiters queued one at a time at the head of the queue, whose grants must
/// come in exactly their order.
const ORDERED_WAITERS: usize = 20;
/// How long each waiter of the bulk waits before giving up.
const BULK_WAIT_MS: u64 = 15_000;
/// A bulk waiter refused as overloaded waits up to this long (at random)
/// before its next try, and doubles it after every refusal.
const OVERLOADED_BACKOFF_FIRST: Duration = Duration::from_millis(500);
/// Longest pause between a bulk waiter's tries.
const OVERLOADED_BACKOFF_MAX: Duration = Duration::from_secs(5);
/// Concurrent calls while opening sessions.
const OPEN_CONCURRENCY: usize = 256;
/// Channels to the leader; each carries at most a few hundred concurrent
/// streams.
const CHANNELS: usize = 64;
/// Bound on each phase of the flood test.
const PHASE_WAIT: Duration = Duration::from_secs(300);

/// The flood checks of the two engines run one after the other: together
/// they would measure the machine, not the bounds.
static FLOOD: Mutex<()> = Mutex::const_new(());

/// `Describe` while the leader is flooded. A read that cannot confirm
/// leadership in time is refused UNAVAILABLE, and, as a client should, the
/// watcher asks again ([`retry_unavailable`]); any other error, or refusals
/// past its bound, fail the check.
async fn describe_under_flood(
    client: &LockClient<Channel>,
    name: &str,
) -> quorumlock_proto::v1::DescribeResponse {
    retry_unavailable("Describe under the flood", || describe(client, name))
        .await
        .unwrap_or_else(|status| panic!("Describe({name:?}) under the flood: {status:?}"))
}

/// Asserts that `result` is refused with `code` and a message containing
/// every one of `fragments`.
fn refused<T: std::fmt::Debug>(what: &str, result: Result<T, Status>, code: Code, fragments: &[&str]) {
    let status = expect_code(what, result, code);
    for fragment in fragments {
        assert!(
            status.message().contains(fragment),
            "{what}: the {code:?} message {:?} does not say {fragment:?}",
            status.message()
        );
    }
}

/// State written before the abuse, to compare with afterwards.
struct Precious {
    holder: Key,
    lock: &'static str,
    token: u64,
    /// An earlier grant of the same lock: stale now.
    stale_token: u64,
    keys: Vec<(&'static str, GetResponse)>,
}

impl Precious {
    /// Takes a lock twice (so that one token is stale), and writes a small
    /// and a maximal value fenced by the current token.
    async fn write(cluster: &Cluster, client: &LockClient<Channel>, lock: &'static str) -> Precious {
        let holder = cluster.open_session_key(LONG_TTL_MS).await;
        let stale_token = acquire_granted(client, holder, lock, 0).await;
        release(client, holder, lock, stale_token)
            .await
            .expect("release of the first grant");
        let token = acquire_granted(client, holder, lock, 0).await;
        let mut keys = Vec::new();
        for (key, value) in [
            ("t75/small", b"precious".to_vec()),
            ("t75/largest", vec![0x5a; VALUE_BYTES_MAX]),
        ] {
            put(client, key, &value, fence(lock, token), holder)
                .await
                .unwrap_or_else(|status| panic!("Put {key:?} before the abuse: {status:?}"));
            let read = get(client, key).await.expect("Get before the abuse");
            assert!(read.found && read.value == value, "{key:?} reads back as written");
            keys.push((key, read));
        }
        Precious {
            holder,
            lock,
            token,
            stale_token,
            keys,
        }
    }

    /// Every node still answers Cluster/Status and agrees on a leader, and
    /// the lock, its token and the fenced values are unchanged; the holder
    /// can still write with its token.
    async fn assert_intact(&self, cluster: &Cluster) {
        cluster.wait_for_leader().await;
        for index in 0..cluster.len() {
            let status = cluster.status(index).await.unwrap_or_else(|error| {
                panic!("node {} no longer answers: {error:#}", cluster.node_id(index))
            });
            assert_eq!(status.engine, cluster.engine());
        }
        for index in 0..cluster.len() {
            let client = cluster.client(index).await;
            let described = describe_ok(&client, self.lock).await;
            assert!(
                described.held
                    && described.holder_session_id == self.holder.id
                    && described.token == self.token,
                "node {}: the lock held before the abuse changed: {described:?}",
                cluster.node_id(index)
            );
            let checked = check_token(&client, self.lock, self.token)
                .await
                .expect("CheckToken after the abuse");
            assert!(
                checked.current,
                "the holder's token is still current: {checked:?}"
            );
            for (key, before) in &self.keys {
                let after = get(&client, key).await.expect("Get after the abuse");
                assert!(
                    after == *before,
                    "node {}: {key:?} changed during the abuse (found {}, {} bytes, written by {:?})",
                    cluster.node_id(index),
                    after.found,
                    after.value.len(),
                    after.written_by
                );
            }
        }
        let client = cluster.any_client().await;
        put(
            &client,
            "t75/after",
            "still fenced",
            fence(self.lock, self.token),
            self.holder,
        )
        .await
        .expect("the holder still writes with its token after the abuse");
    }
}

/// Passes raw bytes through gRPC unchanged, so that a test can send what no
/// generated client would: bytes that are not protobuf, or a field of the
/// wrong wire type.
#[derive(Debug, Clone, Copy, Default)]
struct RawCodec;

impl Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = RawCodec;
    type Decoder = RawCodec;

    fn encoder(&mut self) -> Self::Encoder {
        RawCodec
    }

    fn decoder(&mut self) -> Self::Decoder {
        RawCodec
    }
}

impl Encoder for RawCodec {
    type Item = Vec<u8>;
    type Error = Status;

    fn encode(&mut self, item: Vec<u8>, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

impl Decoder for RawCodec {
    type Item = Vec<u8>;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Vec<u8>>, Status> {
        let bytes = src.copy_to_bytes(src.remaining());
        Ok(Some(bytes.to_vec()))
    }
}

/// Sends `body` as the request message of `method` (a full gRPC path).
async fn raw_call(channel: Channel, method: &'static str, body: Vec<u8>) -> Result<Vec<u8>, Status> {
    let mut grpc = tonic::client::Grpc::new(channel);
    let exchange = async {
        grpc.ready()
            .await
            .map_err(|error| Status::unavailable(format!("channel not ready: {error}")))?;
        grpc.unary(
            tonic::Request::new(body),
            PathAndQuery::from_static(method),
            RawCodec,
        )
        .await
    };
    call(method, RPC_TIMEOUT, exchange).await
}

/// Protobuf's encoding of a varint.
fn varint(mut value: u64, out: &mut Vec<u8>) {
    while value >= 0x80 {
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

/// Throws every kind of hostile single request at the leader and at a
/// follower (which validates before forwarding), checking each answer's
/// code and message, then checks that the nodes are up and the state written
/// before the abuse is unchanged.
async fn check_hostile_requests_get_precise_statuses_and_change_nothing(engine: &str) {
    let cluster = Cluster::start(engine, 3).await;
    let leader = cluster.wait_for_leader().await;
    let follower = cluster.follower_index().await;
    let leader_client = cluster.client(leader).await;
    let precious = Precious::write(&cluster, &leader_client, "t75/precious").await;
    let other = cluster.open_session_key(LONG_TTL_MS).await;
    let other_lock = "t75/other";
    let other_token = acquire_granted(&leader_client, other, other_lock, 0).await;
    let expired = cluster.open_session_key(TTL_MS_MIN).await;
    let closed = cluster.open_session_key(LONG_TTL_MS).await;
    close_session(&leader_client, closed).await.expect("CloseSession");

    for index in [leader, follower] {
        let node = cluster.node_id(index);
        let client = cluster.client(index).await;
        let at = |what: &str| format!("{what} at node {node}");
        let lock = precious.lock;
        let token = precious.token;

        // Sizes just over each limit are refused by the service, naming the
        // size and the limit.
        let name = vec![b'n'; NAME_BYTES_MAX + 1];
        refused(
            &at("Acquire of a 513-byte name"),
            acquire(&client, precious.holder, &name, 0).await,
            Code::InvalidArgument,
            &["lock name is 513 bytes", "512-byte limit"],
        );
        let key = vec![b'k'; KEY_BYTES_MAX + 1];
        refused(
            &at("Put of a 1025-byte key"),
            put(&client, &key, "value", fence(lock, token), precious.holder).await,
            Code::InvalidArgument,
            &["key is 1025 bytes", "1024-byte limit"],
        );
        let value = vec![1u8; VALUE_BYTES_MAX + 1];
        refused(
            &at("Put of a value one byte over 1 MiB"),
            put(&client, "t75/small", &value, fence(lock, token), precious.holder).await,
            Code::InvalidArgument,
            &["value is 1048577 bytes", "1048576-byte limit"],
        );
        refused(
            &at("Describe of an empty name"),
            describe(&client, b"").await,
            Code::InvalidArgument,
            &["lock name is empty"],
        );
        refused(
            &at("Get of an empty key"),
            get(&client, b"").await,
            Code::InvalidArgument,
            &["key is empty"],
        );
        refused(
            &at("Acquire of a non-UTF-8 name"),
            acquire(&client, precious.holder, b"t75/\xff\xfe", 0).await,
            Code::InvalidArgument,
            &["lock name is not valid UTF-8"],
        );
        refused(
            &at("Put fenced by a non-UTF-8 lock name"),
            put(
                &client,
                "t75/small",
                "value",
                Some(quorumlock_proto::v1::Fence {
                    lock: b"t75/\xc3\x28".to_vec(),
                    token,
                }),
                precious.holder,
            )
            .await,
            Code::InvalidArgument,
            &["lock name is not valid UTF-8"],
        );
        refused(
            &at("Delete of a non-UTF-8 key"),
            delete(&client, b"\xed\xa0\x80", fence(lock, token), precious.holder).await,
            Code::InvalidArgument,
            &["key is not valid UTF-8"],
        );

        // Far over the message cap: the transport refuses the message from
        // its length prefix, before reading it.
        let cap = format!("the limit is: {API_MESSAGE_BYTES_MAX} bytes");
        let huge = vec![b'x'; FAR_OVER_CAP_BYTES];
        refused(
            &at("Acquire of an 8 MiB name"),
            acquire(&client, precious.holder, &huge, 0).await,
            Code::OutOfRange,
            &["message length too large", &cap],
        );
        refused(
            &at("Get of an 8 MiB key"),
            get(&client, &huge).await,
            Code::OutOfRange,
            &["message length too large", &cap],
        );
        refused(
            &at("Put of an 8 MiB value"),
            put(&client, "t75/small", &huge, fence(lock, token), precious.holder).await,
            Code::OutOfRange,
            &["message length too large", &cap],
        );

        // TTLs and waits out of range.
        for ttl_ms in [0, TTL_MS_MIN - 1, TTL_MS_MAX + 1, u64::MAX] {
            refused(
                &at(&format!("OpenSession with a TTL of {ttl_ms} ms")),
                open_session(&client, ttl_ms).await,
                Code::InvalidArgument,
                &[&format!("session TTL {ttl_ms} ms is outside 1000..=3600000 ms")],
            );
        }
        refused(
            &at("Acquire waiting longer than an hour"),
            acquire(&client, precious.holder, "t75/long-wait", WAIT_MS_MAX + 1).await,
            Code::InvalidArgument,
            &["wait_ms 3600001 is more than the 3600000 ms limit"],
        );

        // Sessions never opened and closed ones, on every RPC naming one.
        for (label, session) in [("never-opened", NEVER_OPENED), ("closed", closed)] {
            let gone = format!("session {session} not found");
            refused(
                &at(&format!("Acquire by a {label} session")),
                acquire(&client, session, lock, 0).await,
                Code::NotFound,
                &[&gone],
            );
            refused(
                &at(&format!("waiting Acquire by a {label} session")),
                acquire(&client, session, "t75/free", 1_000).await,
                Code::NotFound,
                &[&gone],
            );
            refused(
                &at(&format!("Release by a {label} session")),
                release(&client, session, lock, token).await,
                Code::NotFound,
                &[&gone],
            );
            refused(
                &at(&format!("KeepAlive of a {label} session")),
                keep_alive_once(&client, session).await,
                Code::NotFound,
                &[&gone],
            );
            refused(
                &at(&format!("CloseSession of a {label} session")),
                close_session(&client, session).await,
                Code::NotFound,
                &[&gone],
            );
        }

        // Another session's token, a stale token, and tokens of no grant.
        refused(
            &at("Release by another session with the holder's token"),
            release(&client, other, lock, token).await,
            Code::FailedPrecondition,
            &[&format!("session {other} does not hold lock \"{lock}\"")],
        );
        refused(
            &at("Release by the holder of a lock it does not hold"),
            release(&client, precious.holder, other_lock, other_token).await,
            Code::FailedPrecondition,
            &[&format!(
                "session {} does not hold lock \"{other_lock}\"",
                precious.holder
            )],
        );
        for presented in [precious.stale_token, other_token, 0, u64::MAX] {
            let stale =
                format!("stale fencing token for lock \"{lock}\": presented {presented}, current {token}");
            refused(
                &at(&format!("Release by the holder with token {presented}")),
                release(&client, precious.holder, lock, presented).await,
                Code::FailedPrecondition,
                &[&stale],
            );
            refused(
                &at(&format!("Put with token {presented}")),
                put(
                    &client,
                    "t75/small",
                    "overwritten",
                    fence(lock, presented),
                    precious.holder,
                )
                .await,
                Code::FailedPrecondition,
                &[&stale],
            );
            refused(
                &at(&format!("Delete with token {presented}")),
                delete(&client, "t75/largest", fence(lock, presented), precious.holder).await,
                Code::FailedPrecondition,
                &[&stale],
            );
        }
        refused(
            &at("Put fenced by a lock nobody holds"),
            put(
                &client,
                "t75/small",
                "overwritten",
                fence("t75/free", token),
                precious.holder,
            )
            .await,
            Code::FailedPrecondition,
            &[&format!("presented {token}, current none (lock is free)")],
        );

        // Bytes that are not the request message at all.
        let channel = cluster.channel(index).await;
        refused(
            &at("Acquire whose body is not protobuf"),
            raw_call(channel.clone(), "/quorumlock.v1.Lock/Acquire", vec![0xff; 64]).await,
            Code::Internal,
            &["failed to decode Protobuf message"],
        );
        // Field 2 (the name) as a varint instead of length-delimited bytes.
        let mut wrong_wire_type = vec![0x08];
        varint(precious.holder.id, &mut wrong_wire_type);
        wrong_wire_type.extend_from_slice(&[0x10, 0x01]);
        refused(
            &at("Acquire whose name has the wrong wire type"),
            raw_call(channel.clone(), "/quorumlock.v1.Lock/Acquire", wrong_wire_type).await,
            Code::Internal,
            &["failed to decode Protobuf message", "invalid wire type"],
        );
        // A name whose length prefix claims far more bytes than follow.
        let mut truncated = vec![0x12];
        varint(1 << 40, &mut truncated);
        truncated.extend_from_slice(b"short");
        refused(
            &at("Acquire whose name is cut short"),
            raw_call(channel.clone(), "/quorumlock.v1.Lock/Acquire", truncated).await,
            Code::Internal,
            &["failed to decode Protobuf message"],
        );
        refused(
            &at("a method the service does not have"),
            raw_call(channel.clone(), "/quorumlock.v1.Lock/Steal", Vec::new()).await,
            Code::Unimplemented,
            &[],
        );

        // Garbage at the peer transport, as anyone who can reach the port
        // could send it: refused, and the engine never sees it.
        // A peer this node surely knows by incarnation: the leader for a
        // follower (it sent appends), a follower for the leader (it
        // learned the follower's to send them).
        let known_peer = if index == leader { follower } else { leader };
        hostile_peer_requests(&cluster, channel, index, known_peer).await;
    }

    // The session opened with the shortest TTL and never renewed expires;
    // afterwards it is NOT_FOUND like any other.
    wait_until("the unrenewed session to expire", CONDITION_WAIT, || async {
        match acquire(&leader_client, expired, "t75/free", 0).await {
            Err(status) if status.code() == Code::NotFound => Ok(()),
            other => Err(format!("Acquire by the expiring session: {other:?}")),
        }
    })
    .await;
    let gone = format!("session {expired} not found");
    refused(
        "Release by an expired session",
        release(&leader_client, expired, precious.lock, precious.token).await,
        Code::NotFound,
        &[&gone],
    );
    refused(
        "KeepAlive of an expired session",
        keep_alive_once(&leader_client, expired).await,
        Code::NotFound,
        &[&gone, "expired, closed or never opened"],
    );

    precious.assert_intact(&cluster).await;
    assert_held(&leader_client, other_lock, other.id, other_token, 0).await;
}

/// The incarnation the data directory of node index `index` records.
fn incarnation_of(cluster: &Cluster, index: usize) -> String {
    let identity = std::fs::read_to_string(cluster.data_dir(index).join("IDENTITY")).expect("read IDENTITY");
    identity
        .lines()
        .find_map(|line| line.strip_prefix("incarnation "))
        .expect("an incarnation line")
        .to_string()
}

/// `message` with the incarnation header `header`.
fn with_header<T>(message: T, header: &str) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.metadata_mut().insert(
        "x-quorumlock-incarnation",
        header.parse().expect("an ASCII header"),
    );
    request
}

/// Garbage and spoofed senders at the engine's own peer service. The peer
/// guard refuses requests that name no incarnations, name a sender that is
/// not a member, or name a member under another incarnation than the one
/// the node knows it by. Incarnations are no secret (they travel in every
/// request), so garbage from someone who names them right reaches the
/// engine's decoders, which refuse it.
async fn hostile_peer_requests(cluster: &Cluster, channel: Channel, index: usize, sender_index: usize) {
    use quorumlock_proto::paxos::paxos_peer_client::PaxosPeerClient;
    use quorumlock_proto::paxos::PaxosBatch;
    use quorumlock_proto::raft::raft_peer_client::RaftPeerClient;
    use quorumlock_proto::raft::RaftPayload;

    let node = cluster.node_id(index);
    let sender = cluster.node_id(sender_index);
    let receiver_incarnation = incarnation_of(cluster, index);
    let spoofed = format!(
        "{sender}:{}>{node}:{receiver_incarnation}",
        incarnation_of(cluster, sender_index)
    );
    let forgotten = format!("{sender}:00000000000000aa>{node}:{receiver_incarnation}");
    let outsider = format!("99:00000000000000aa>{node}:{receiver_incarnation}");
    let at = |what: &str| format!("{what} at node {node}");
    match cluster.engine() {
        "paxos" => {
            let mut peer = PaxosPeerClient::new(channel);
            let batch = |from: u64, messages: Vec<u8>| PaxosBatch { from, messages };
            refused(
                &at("Deliver naming no incarnations"),
                call("Deliver", RPC_TIMEOUT, peer.deliver(batch(sender, Vec::new()))).await,
                Code::InvalidArgument,
                &["x-quorumlock-incarnation", "missing"],
            );
            refused(
                &at("Deliver from a node outside the cluster"),
                call(
                    "Deliver",
                    RPC_TIMEOUT,
                    peer.deliver(with_header(batch(99, Vec::new()), &outsider)),
                )
                .await,
                Code::PermissionDenied,
                &["node 99 is not a member of this cluster"],
            );
            refused(
                &at("Deliver from a member under another incarnation"),
                call(
                    "Deliver",
                    RPC_TIMEOUT,
                    peer.deliver(with_header(batch(sender, Vec::new()), &forgotten)),
                )
                .await,
                Code::FailedPrecondition,
                &["emptied or replaced"],
            );
            // A message count of 2^62 with nothing after it must not
            // allocate for the count, and an unknown variant must not pass.
            let mut huge_count = (1u64 << 62).to_le_bytes().to_vec();
            huge_count.push(0);
            let mut unknown_variant = 1u64.to_le_bytes().to_vec();
            unknown_variant.extend_from_slice(&250u32.to_le_bytes());
            for (label, messages) in [
                ("garbage", vec![0xa5; 100]),
                ("a huge message count", huge_count),
                ("an unknown message kind", unknown_variant),
            ] {
                refused(
                    &at(&format!("Deliver of {label}")),
                    call(
                        "Deliver",
                        RPC_TIMEOUT,
                        peer.deliver(with_header(batch(sender, messages), &spoofed)),
                    )
                    .await,
                    Code::InvalidArgument,
                    &["undecodable paxos messages"],
                );
            }
            // A well-formed snapshot, whole in one chunk, whose state is
            // garbage, from a spoofed member: accepted by the transport,
            // and then ignored by the engine because it does not decode as
            // a lock state.
            let snapshot = quorumlock_paxos::Message::<quorumlock_core::lock::Command>::SnapshotChunk {
                slot: quorumlock_paxos::Slot::new(1 << 40),
                offset: 0,
                total: 256,
                data: vec![0xee; 256],
                config: Arc::new(quorumlock_paxos::Configuration::default()),
            };
            let messages = bincode::serialize(&vec![snapshot]).expect("a message encodes");
            call(
                "Deliver",
                RPC_TIMEOUT,
                peer.deliver(with_header(batch(sender, messages), &spoofed)),
            )
            .await
            .expect("a decodable batch is accepted by the transport");
        }
        "raft" => {
            let mut peer = RaftPeerClient::new(channel);
            let empty = || RaftPayload { data: Vec::new() };
            refused(
                &at("Vote naming no incarnations"),
                call("Vote", RPC_TIMEOUT, peer.vote(empty())).await,
                Code::InvalidArgument,
                &["x-quorumlock-incarnation", "missing"],
            );
            refused(
                &at("Vote from a member under another incarnation"),
                call("Vote", RPC_TIMEOUT, peer.vote(with_header(empty(), &forgotten))).await,
                Code::FailedPrecondition,
                &["emptied or replaced"],
            );
            for (label, data) in [
                ("garbage", vec![0xa5; 100]),
                ("a huge length prefix", (1u64 << 62).to_le_bytes().to_vec()),
                ("nothing", Vec::new()),
            ] {
                let payload = || RaftPayload { data: data.clone() };
                refused(
                    &at(&format!("AppendEntries of {label}")),
                    call(
                        "AppendEntries",
                        RPC_TIMEOUT,
                        peer.append_entries(with_header(payload(), &spoofed)),
                    )
                    .await,
                    Code::InvalidArgument,
                    &["undecodable raft request"],
                );
                refused(
                    &at(&format!("Vote of {label}")),
                    call("Vote", RPC_TIMEOUT, peer.vote(with_header(payload(), &spoofed))).await,
                    Code::InvalidArgument,
                    &["undecodable raft request"],
                );
                refused(
                    &at(&format!("InstallSnapshot of {label}")),
                    call(
                        "InstallSnapshot",
                        RPC_TIMEOUT,
                        peer.install_snapshot(with_header(payload(), &spoofed)),
                    )
                    .await,
                    Code::InvalidArgument,
                    &["undecodable raft request"],
                );
            }
        }
        other => panic!("no peer abuse defined for engine {other:?}"),
    }
}

/// How one waiter's attempts ended.
#[derive(Debug)]
enum WaiterEnd {
    /// Granted with this token (then released at once).
    Granted { token: u64 },
    /// The wait passed and the call answered OK without a grant.
    TimedOut,
    /// Every attempt it made was refused, and the test stopped it once the
    /// attempts were spent.
    NeverAdmitted,
}

/// One bulk waiter's attempts and how they ended.
#[derive(Debug)]
struct BulkWaiter {
    /// Attempts refused RESOURCE_EXHAUSTED because the queue was full.
    queue_full: usize,
    /// Attempts refused UNAVAILABLE because the leader could not commit them
    /// in time under the flood.
    overloaded: usize,
    end: WaiterEnd,
}

/// Makes enqueue attempts for `session` on `lock` until it is admitted or
/// `attempts` reaches [`ENQUEUE_ATTEMPTS`]. Every refusal must name its
/// cause.
async fn bulk_waiter(
    client: LockClient<Channel>,
    session: Key,
    lock: &'static str,
    attempts: Arc<AtomicUsize>,
) -> BulkWaiter {
    let mut waiter = BulkWaiter {
        queue_full: 0,
        overloaded: 0,
        end: WaiterEnd::NeverAdmitted,
    };
    let full = format!("wait queue of lock \"{lock}\" is full ({WAITERS_PER_LOCK_MAX} waiters)");
    let mut outcome_unknown = false;
    let mut backoff = OVERLOADED_BACKOFF_FIRST;
    loop {
        if attempts.fetch_add(1, Ordering::Relaxed) >= ENQUEUE_ATTEMPTS {
            if outcome_unknown {
                // The last attempt may have queued the session, and may yet
                // grant it the lock: as the API asks of a client giving up
                // on an ambiguous Acquire, close the session.
                close_giving_up(&client, session).await;
            }
            return waiter;
        }
        outcome_unknown = false;
        match acquire(&client, session, lock, BULK_WAIT_MS).await {
            Ok(answer) if answer.acquired => {
                release_under_flood(&client, session, lock, answer.token)
                    .await
                    .unwrap_or_else(|status| panic!("release by bulk waiter {session}: {status:?}"));
                waiter.end = WaiterEnd::Granted { token: answer.token };
                return waiter;
            }
            Ok(_) => {
                waiter.end = WaiterEnd::TimedOut;
                return waiter;
            }
            Err(status) if status.code() == Code::ResourceExhausted => {
                refused(
                    "an Acquire beyond the queue bound",
                    Err::<(), _>(status),
                    Code::ResourceExhausted,
                    &[&full],
                );
                waiter.queue_full += 1;
            }
            Err(status) => {
                refused(
                    "an Acquire the flooded leader could not commit",
                    Err::<(), _>(status),
                    Code::Unavailable,
                    &["overloaded"],
                );
                waiter.overloaded += 1;
                outcome_unknown = true;
                // As clients should: back off, with jitter, before the next try.
                let pause = rand::thread_rng().gen_range(Duration::ZERO..=backoff);
                tokio::time::sleep(pause).await;
                backoff = (backoff * 2).min(OVERLOADED_BACKOFF_MAX);
            }
        }
    }
}

/// `Release`, repeated while the flooded leader cannot order it in time.
/// `None` when a repeat is refused because an earlier attempt released the
/// lock after all (its answer, naming the next holder, was lost).
async fn release_under_flood(
    client: &LockClient<Channel>,
    session: Key,
    lock: &str,
    token: u64,
) -> Result<Option<ReleaseResponse>, Status> {
    let deadline = Instant::now() + PHASE_WAIT;
    let mut repeated = false;
    loop {
        match release(client, session, lock, token).await {
            Ok(answer) => return Ok(Some(answer)),
            Err(status) if status.code() == Code::Unavailable && Instant::now() < deadline => {
                repeated = true;
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(status) if repeated && status.code() == Code::FailedPrecondition => {
                refused(
                    "a repeated Release after an earlier attempt released",
                    Err::<(), _>(status),
                    Code::FailedPrecondition,
                    &["does not hold"],
                );
                return Ok(None);
            }
            Err(status) => return Err(status),
        }
    }
}

/// Closes `session`, repeating while the leader is too busy to order it.
async fn close_giving_up(client: &LockClient<Channel>, session: Key) {
    let deadline = Instant::now() + PHASE_WAIT;
    loop {
        match close_session(client, session).await {
            Ok(_) => return,
            Err(status) if status.code() == Code::NotFound => return,
            Err(status) if status.code() == Code::Unavailable && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(status) => panic!("CloseSession of bulk waiter {session} giving up: {status:?}"),
        }
    }
}

/// Opens 20,000 sessions at once, then makes 100,000 enqueue attempts on one
/// held lock from them. The queue never exceeds its bound, every attempt
/// beyond it is RESOURCE_EXHAUSTED naming the lock and the bound, and when
/// the lock is released the admitted waiters are granted in FIFO order —
/// those queued one by one exactly in their order, the bulk after them — or
/// time out cleanly. The nodes stay up and the earlier state is intact.
async fn check_session_and_waiter_floods_stay_bounded_and_fifo(engine: &str) {
    let _alone = FLOOD.lock().await;
    let cluster = Cluster::start(engine, 3).await;
    let leader = cluster.wait_for_leader().await;
    let mut channels = Vec::with_capacity(CHANNELS);
    for _ in 0..CHANNELS {
        channels.push(cluster.client(leader).await);
    }
    let watcher = channels[0].clone();
    let precious = Precious::write(&cluster, &watcher, "t75/precious").await;
    let hot = "t75/hot";
    let hot_holder = cluster.open_session_key(LONG_TTL_MS).await;
    let hot_token = acquire_granted(&watcher, hot_holder, hot, 0).await;

    // The session flood: every open is answered, each with its own id.
    let started = Instant::now();
    let opened: Vec<Key> = tokio::time::timeout(
        PHASE_WAIT,
        stream::iter(0..SESSION_FLOOD)
            .map(|index| {
                let mut client = channels[index % CHANNELS].clone();
                async move {
                    let request = OpenSessionRequest { ttl_ms: LONG_TTL_MS };
                    let opened = call("OpenSession", RPC_TIMEOUT, client.open_session(request))
                        .await
                        .unwrap_or_else(|status| panic!("OpenSession #{index} of the flood: {status:?}"));
                    Key::of(&opened)
                }
            })
            .buffer_unordered(OPEN_CONCURRENCY)
            .collect(),
    )
    .await
    .unwrap_or_else(|_| panic!("opening {SESSION_FLOOD} sessions took over {PHASE_WAIT:?}"));
    let distinct: BTreeSet<u64> = opened.iter().map(|key| key.id).collect();
    assert_eq!(
        distinct.len(),
        SESSION_FLOOD,
        "every opened session has its own id"
    );
    eprintln!(
        "{engine}: opened {SESSION_FLOOD} sessions in {:?}",
        started.elapsed()
    );

    // The head of the queue, enqueued one at a time so its order is known.
    let (ordered, bulk) = opened.split_at(ORDERED_WAITERS);
    let mut ordered_tasks = Vec::with_capacity(ORDERED_WAITERS);
    for (position, &session) in ordered.iter().enumerate() {
        let client = watcher.clone();
        ordered_tasks.push(tokio::spawn(async move {
            let token = acquire_granted(&client, session, hot, LONG_WAIT_MS).await;
            release_under_flood(&client, session, hot, token)
                .await
                .unwrap_or_else(|status| panic!("release by ordered waiter {position}: {status:?}"));
            token
        }));
        wait_for_queue_length(&watcher, hot, position as u64 + 1).await;
    }

    // The bulk: every other session tries to enqueue at once, and those
    // refused try again at once, until the attempts are spent.
    let started = Instant::now();
    let attempts = Arc::new(AtomicUsize::new(ORDERED_WAITERS));
    let bulk_tasks: Vec<_> = bulk
        .iter()
        .enumerate()
        .map(|(index, &session)| {
            let client = channels[index % CHANNELS].clone();
            tokio::spawn(bulk_waiter(client, session, hot, attempts.clone()))
        })
        .collect();
    // While the attempts run, the queue never exceeds its bound.
    let mut queue_length_max = 0;
    tokio::time::timeout(PHASE_WAIT, async {
        while attempts.load(Ordering::Relaxed) < ENQUEUE_ATTEMPTS {
            let described = describe_under_flood(&watcher, hot).await;
            assert!(
                described.queue_length <= WAITERS_PER_LOCK_MAX as u64,
                "the queue grew past its bound: {described:?}"
            );
            assert!(
                described.held
                    && described.holder_session_id == hot_holder.id
                    && described.token == hot_token,
                "the hot lock changed hands while held: {described:?}"
            );
            queue_length_max = queue_length_max.max(described.queue_length);
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
    .await
    .unwrap_or_else(|_| {
        panic!(
            "{ENQUEUE_ATTEMPTS} enqueue attempts took over {PHASE_WAIT:?}: {} sent",
            attempts.load(Ordering::Relaxed)
        )
    });
    eprintln!(
        "{engine}: {ENQUEUE_ATTEMPTS} enqueue attempts sent in {:?}; queue at most {queue_length_max}",
        started.elapsed()
    );
    assert_eq!(
        queue_length_max, WAITERS_PER_LOCK_MAX as u64,
        "the attempts filled the queue to its bound"
    );

    // Release: the queue drains in FIFO order.
    let started = Instant::now();
    let handed = release_under_flood(&watcher, hot_holder, hot, hot_token)
        .await
        .expect("release of the hot lock");
    if let Some(handed) = handed {
        assert_eq!(
            handed.next_session_id, ordered[0].id,
            "the release hands the lock to the first waiter in line"
        );
    }
    let mut last_ordered_token = hot_token;
    for (position, task) in ordered_tasks.into_iter().enumerate() {
        let token = tokio::time::timeout(PHASE_WAIT, task)
            .await
            .unwrap_or_else(|_| panic!("ordered waiter {position} was never served"))
            .expect("ordered waiter task");
        assert!(
            token > last_ordered_token,
            "ordered waiter {position} was granted token {token}, not after {last_ordered_token}: FIFO order broken"
        );
        last_ordered_token = token;
    }
    let (mut granted, mut timed_out, mut never_admitted) = (0, 0, 0);
    let (mut queue_full, mut overloaded) = (0, 0);
    for task in bulk_tasks {
        let waiter = tokio::time::timeout(PHASE_WAIT, task)
            .await
            .expect("a bulk waiter answered within its wait")
            .expect("bulk waiter task");
        queue_full += waiter.queue_full;
        overloaded += waiter.overloaded;
        match waiter.end {
            WaiterEnd::Granted { token } => {
                assert!(
                    token > last_ordered_token,
                    "a bulk waiter was granted token {token} before the ordered head finished ({last_ordered_token})"
                );
                granted += 1;
            }
            WaiterEnd::TimedOut => timed_out += 1,
            WaiterEnd::NeverAdmitted => never_admitted += 1,
        }
    }
    let admitted = ORDERED_WAITERS + granted + timed_out;
    eprintln!(
        "{engine}: drained in {:?}; attempts: {admitted} admitted ({ORDERED_WAITERS} ordered and {granted} bulk granted, {timed_out} timed out), \
         {queue_full} refused as the queue was full, {overloaded} refused as the leader was overloaded; {never_admitted} sessions never admitted",
        started.elapsed()
    );
    assert_eq!(
        admitted + queue_full + overloaded,
        ENQUEUE_ATTEMPTS,
        "every attempt was answered exactly once"
    );
    assert!(
        queue_full > 0,
        "attempts made while the queue was full were refused RESOURCE_EXHAUSTED"
    );
    wait_until(
        "the hot lock to be free with an empty queue",
        CONDITION_WAIT,
        || async {
            let described = describe_under_flood(&watcher, hot).await;
            if !described.held && described.queue_length == 0 {
                Ok(())
            } else {
                Err(format!("{described:?}"))
            }
        },
    )
    .await;
    precious.assert_intact(&cluster).await;
}
