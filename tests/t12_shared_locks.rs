//! t12: shared (reader-writer) locks through the public gRPC API on a real
//! three-node cluster of each engine.
//!
//! Proves that readers hold a lock together, each with its own rising
//! token, while a writer waits; that a reader arriving behind a queued
//! writer waits behind it (no writer starvation); that the writer's release
//! grants every consecutive queued reader at once; that a shared token
//! fences reads (Get with a fence, CheckToken in shared mode) and is
//! refused for writes with FAILED_PRECONDITION / WRONG_MODE; that a reader
//! that let go is refused a fenced read; that an acquire in the other mode
//! by a holder and an unknown mode value are refused with precise
//! statuses; and that every node answers Describe alike.

mod common;

use common::*;
use quorumlock_proto::v1::{
    AcquireRequest, AcquireResponse, CheckTokenRequest, ErrorReason, GetRequest, GetResponse, Holder,
    LockMode,
};
use tonic::transport::Channel;
use tonic::Code;

use quorumlock_proto::v1::lock_client::LockClient;

engine_tests!(
    check_readers_share_and_a_writer_waits_for_them_all,
    check_readers_behind_a_queued_writer_wait_and_are_granted_together,
    check_a_shared_token_fences_reads_never_writes,
    check_mode_mistakes_are_refused_precisely,
);

/// `Acquire` in `mode`.
async fn acquire_in(
    client: &LockClient<Channel>,
    session: Key,
    name: &str,
    wait_ms: u64,
    mode: LockMode,
) -> Result<AcquireResponse, tonic::Status> {
    let request = AcquireRequest {
        session_id: session.id,
        name: name.as_bytes().to_vec(),
        wait_ms,
        session_secret: session.secret.to_vec(),
        mode: mode.into(),
        ..AcquireRequest::default()
    };
    acquire_with(client, request).await
}

/// A shared acquire that must grant; its token.
async fn shared_granted(client: &LockClient<Channel>, session: Key, name: &str, wait_ms: u64) -> u64 {
    let granted = acquire_in(client, session, name, wait_ms, LockMode::Shared)
        .await
        .unwrap_or_else(|status| panic!("shared Acquire({name:?}) by {}: {status:?}", session.id));
    assert!(
        granted.acquired,
        "shared Acquire({name:?}) by {} not granted",
        session.id
    );
    assert_ne!(granted.token, 0);
    granted.token
}

/// `Get` under a fence.
async fn get_fenced(
    client: &LockClient<Channel>,
    key: &str,
    lock: &str,
    token: u64,
) -> Result<GetResponse, tonic::Status> {
    let mut client = client.clone();
    let request = GetRequest {
        key: key.as_bytes().to_vec(),
        fence: fence(lock, token),
    };
    call("Get", RPC_TIMEOUT, client.get(request)).await
}

/// `CheckToken` in `mode`: whether the token is current.
async fn current_in(client: &LockClient<Channel>, lock: &str, token: u64, mode: LockMode) -> bool {
    let mut client = client.clone();
    let request = CheckTokenRequest {
        lock: lock.as_bytes().to_vec(),
        token,
        mode: mode.into(),
    };
    call("CheckToken", RPC_TIMEOUT, client.check_token(request))
        .await
        .expect("CheckToken")
        .current
}

fn holders(pairs: &[(u64, u64)]) -> Vec<Holder> {
    pairs
        .iter()
        .map(|&(session_id, token)| Holder {
            session_id,
            token,
            permits: 0,
            ..Holder::default()
        })
        .collect()
}

/// Two readers hold at once with rising tokens; a writer's try-lock is
/// refused and its wait is granted only after both released.
async fn check_readers_share_and_a_writer_waits_for_them_all(engine: &str) {
    let cluster = Cluster::start(engine, 3).await;
    let client = cluster.any_client().await;
    let (one, two, writer) = (
        cluster.session(30_000).await,
        cluster.session(30_000).await,
        cluster.session(30_000).await,
    );
    let lock = "t12/share";
    let first = shared_granted(&client, one.key, lock, 0).await;
    let second = shared_granted(&client, two.key, lock, 0).await;
    assert!(second > first, "every grant gets a new, larger token");
    let described = describe_ok(&client, lock).await;
    assert!(described.held);
    assert_eq!(described.mode(), LockMode::Shared);
    assert_eq!(
        (described.holder_session_id, described.token),
        (0, 0),
        "no exclusive holder"
    );
    assert_eq!(described.holders, holders(&[(one.id, first), (two.id, second)]));

    let refused = acquire(&client, writer.key, lock, 0)
        .await
        .expect("a try-lock is answered");
    assert!(!refused.acquired, "a writer is not granted beside readers");
    let waiting = {
        let client = client.clone();
        let key = writer.key;
        tokio::spawn(async move { acquire(&client, key, lock, 20_000).await })
    };
    wait_for_queue_length(&client, lock, 1).await;
    let released = release(&client, one.key, lock, first)
        .await
        .expect("first reader releases");
    assert_eq!(
        released.next_session_id, 0,
        "a reader still holds: nobody is granted"
    );
    assert_eq!(describe_ok(&client, lock).await.queue_length, 1);
    let released = release(&client, two.key, lock, second)
        .await
        .expect("second reader releases");
    assert_eq!(
        released.next_session_id, writer.id,
        "the last reader hands over to the writer"
    );
    let granted = waiting.await.unwrap().expect("the writer's wait is answered");
    assert!(granted.acquired && granted.token > second);
    assert_held(&client, lock, writer.id, granted.token, 0).await;
    // Every node answers alike.
    for index in 0..cluster.len() {
        let described = describe_ok(&cluster.client(index).await, lock).await;
        assert_eq!(
            described.holders,
            holders(&[(writer.id, granted.token)]),
            "node {index}"
        );
        assert_eq!(described.mode(), LockMode::Exclusive, "node {index}");
    }
}

/// FIFO across modes: with a reader holding and a writer queued, a new
/// reader queues behind the writer; when the writer's turn ends, the readers
/// queued behind it are granted together, up to the next writer.
async fn check_readers_behind_a_queued_writer_wait_and_are_granted_together(engine: &str) {
    let cluster = Cluster::start(engine, 3).await;
    let client = cluster.any_client().await;
    let reader = cluster.session(30_000).await;
    let writer = cluster.session(30_000).await;
    let late = [cluster.session(30_000).await, cluster.session(30_000).await];
    let last_writer = cluster.session(30_000).await;
    let lock = "t12/fifo";

    let read_token = shared_granted(&client, reader.key, lock, 0).await;
    let writer_wait = {
        let client = client.clone();
        let key = writer.key;
        tokio::spawn(async move { acquire(&client, key, lock, 20_000).await })
    };
    wait_for_queue_length(&client, lock, 1).await;
    let refused = acquire_in(&client, late[0].key, lock, 0, LockMode::Shared)
        .await
        .expect("a try-lock is answered");
    assert!(!refused.acquired, "a reader behind a queued writer is not let in");
    let mut late_waits = Vec::new();
    for (queued, session) in late.iter().enumerate() {
        let waiter = client.clone();
        let key = session.key;
        late_waits.push(tokio::spawn(async move {
            acquire_in(&waiter, key, lock, 20_000, LockMode::Shared).await
        }));
        wait_for_queue_length(&client, lock, 2 + queued as u64).await;
    }
    let last_wait = {
        let client = client.clone();
        let key = last_writer.key;
        tokio::spawn(async move { acquire(&client, key, lock, 20_000).await })
    };
    wait_for_queue_length(&client, lock, 4).await;

    release(&client, reader.key, lock, read_token)
        .await
        .expect("the reader releases");
    let write_token = writer_wait.await.unwrap().expect("the writer's wait").token;
    assert!(write_token > read_token);
    assert_held(&client, lock, writer.id, write_token, 3).await;
    let released = release(&client, writer.key, lock, write_token)
        .await
        .expect("the writer releases");
    assert_eq!(
        released.next_session_id, late[0].id,
        "the first queued reader is named"
    );
    let mut tokens = Vec::new();
    for wait in late_waits {
        let granted = wait.await.unwrap().expect("a late reader's wait");
        assert!(granted.acquired, "readers queued together are granted together");
        tokens.push(granted.token);
    }
    let described = describe_ok(&client, lock).await;
    assert_eq!(
        described.holders,
        holders(&[(late[0].id, tokens[0]), (late[1].id, tokens[1])])
    );
    assert_eq!(described.queue_length, 1, "the last writer still waits");
    for (session, token) in late.iter().zip(&tokens) {
        release(&client, session.key, lock, *token)
            .await
            .expect("a late reader releases");
    }
    let last = last_wait.await.unwrap().expect("the last writer's wait");
    assert!(last.acquired && last.token > tokens[1]);
}

/// A shared token fences reads and is refused for writes; an exclusive
/// token fences both; a reader that let go is refused a fenced read.
async fn check_a_shared_token_fences_reads_never_writes(engine: &str) {
    let cluster = Cluster::start(engine, 3).await;
    let client = cluster.any_client().await;
    let writer = cluster.session(30_000).await;
    let reader = cluster.session(30_000).await;
    let lock = "t12/fence";
    let key = "t12/fence/doc";

    let write_token = acquire_granted(&client, writer.key, lock, 0).await;
    put(&client, key, b"v1", fence(lock, write_token), writer.key)
        .await
        .expect("a write under the exclusive token");
    assert!(current_in(&client, lock, write_token, LockMode::Exclusive).await);
    assert!(current_in(&client, lock, write_token, LockMode::Shared).await);
    let read = get_fenced(&client, key, lock, write_token)
        .await
        .expect("the writer reads");
    assert_eq!(read.value, b"v1");
    release(&client, writer.key, lock, write_token)
        .await
        .expect("release");

    let read_token = shared_granted(&client, reader.key, lock, 0).await;
    let read = get_fenced(&client, key, lock, read_token)
        .await
        .expect("a fenced read");
    assert!(read.found);
    assert_eq!(read.value, b"v1");
    assert_eq!(read.written_by, fence(lock, write_token));
    assert!(current_in(&client, lock, read_token, LockMode::Shared).await);
    assert!(!current_in(&client, lock, read_token, LockMode::Exclusive).await);
    let status = expect_code(
        "a write under a shared token",
        put(&client, key, b"v2", fence(lock, read_token), reader.key).await,
        Code::FailedPrecondition,
    );
    assert_eq!(
        quorumlock_proto::details::detail(&status).map(|detail| detail.reason()),
        Some(ErrorReason::WrongMode),
        "{status:?}"
    );
    assert!(
        status.message().contains("shared"),
        "the refusal says why: {status:?}"
    );
    assert_eq!(
        get(&client, key).await.expect("Get").value,
        b"v1",
        "nothing was written"
    );

    release(&client, reader.key, lock, read_token)
        .await
        .expect("the reader releases");
    let status = expect_code(
        "a fenced read by a reader that let go",
        get_fenced(&client, key, lock, read_token).await,
        Code::FailedPrecondition,
    );
    assert_eq!(
        quorumlock_proto::details::detail(&status).map(|detail| detail.reason()),
        Some(ErrorReason::StaleToken),
        "{status:?}"
    );
    assert!(!current_in(&client, lock, read_token, LockMode::Shared).await);
}

/// An acquire in the other mode by a holder is refused with WRONG_MODE and
/// changes nothing; an unknown mode value is INVALID_ARGUMENT naming `mode`.
async fn check_mode_mistakes_are_refused_precisely(engine: &str) {
    let cluster = Cluster::start(engine, 3).await;
    let client = cluster.any_client().await;
    let reader = cluster.session(30_000).await;
    let lock = "t12/mistakes";

    let token = shared_granted(&client, reader.key, lock, 0).await;
    let status = expect_code(
        "an exclusive acquire by a shared holder",
        acquire(&client, reader.key, lock, 1_000).await,
        Code::FailedPrecondition,
    );
    let detail = quorumlock_proto::details::detail(&status).expect("a detail");
    assert_eq!(detail.reason(), ErrorReason::WrongMode);
    assert_eq!(detail.lock, lock.as_bytes());
    assert!(status.message().contains("release it first"), "{status:?}");
    let described = describe_ok(&client, lock).await;
    assert_eq!(described.holders, holders(&[(reader.id, token)]));
    assert_eq!(described.queue_length, 0, "the refused acquire did not queue");

    let request = AcquireRequest {
        session_id: reader.key.id,
        name: lock.as_bytes().to_vec(),
        wait_ms: 0,
        session_secret: reader.key.secret.to_vec(),
        mode: 7,
        ..AcquireRequest::default()
    };
    let status = expect_code(
        "an unknown mode",
        acquire_with(&client, request).await,
        Code::InvalidArgument,
    );
    let detail = quorumlock_proto::details::detail(&status).expect("a detail");
    assert_eq!(detail.field, "mode");
    assert!(status.message().contains("LOCK_MODE_SHARED"), "{status:?}");
}
