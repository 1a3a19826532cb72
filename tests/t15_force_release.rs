//! t15: an administrator's forced release through the public gRPC API on a
//! real three-node cluster of each engine.
//!
//! Proves that `ForceRelease` (sent to a follower, which forwards it) frees
//! the grant named by its token and grants the next waiter in the same
//! command; that the former holder keeps its session but its writes and its
//! release under the old token are refused; that a repeat of the same
//! request, or a token nobody holds, is FAILED_PRECONDITION / STALE_TOKEN
//! and frees nothing; that every node agrees on the new holder; and that a
//! watch sees REVOKED (cause FORCED, naming who) and the grant, in one
//! revision.

mod common;

use common::*;
use quorumlock_proto::v1::lock_client::LockClient;
use quorumlock_proto::v1::{
    ErrorReason, ForceReleaseRequest, ForceReleaseResponse, WatchEventCause, WatchEventKind, WatchRequest,
    WatchTarget,
};
use tonic::transport::Channel;
use tonic::{Code, Status};

engine_tests!(check_a_forced_release_frees_the_named_grant_and_hands_the_lock_on,);

async fn force_release(
    client: &LockClient<Channel>,
    name: &str,
    token: u64,
) -> Result<ForceReleaseResponse, Status> {
    let mut client = client.clone();
    let request = ForceReleaseRequest {
        name: name.as_bytes().to_vec(),
        token,
    };
    call("ForceRelease", RPC_TIMEOUT, client.force_release(request)).await
}

async fn check_a_forced_release_frees_the_named_grant_and_hands_the_lock_on(engine: &str) {
    let cluster = Cluster::start(engine, 3).await;
    let leader = cluster.wait_for_leader().await;
    let follower = cluster.client((leader + 1) % cluster.len()).await;
    let client = cluster.client(leader).await;
    let (stuck, next) = (cluster.session(30_000).await, cluster.session(30_000).await);
    let lock = "t15/job";

    let mut watcher = follower.clone();
    let mut events = call(
        "Watch",
        RPC_TIMEOUT,
        watcher.watch(WatchRequest {
            name: lock.as_bytes().to_vec(),
            prefix: false,
            from_revision: 0,
            target: WatchTarget::Locks.into(),
        }),
    )
    .await
    .expect("Watch");
    let created = events.message().await.expect("Watch").expect("created");
    assert!(created.created);

    let token = acquire_granted(&client, stuck.key, lock, 0).await;
    let waiting = {
        let client = client.clone();
        let key = next.key;
        tokio::spawn(async move { acquire(&client, key, lock, 20_000).await })
    };
    wait_for_queue_length(&client, lock, 1).await;

    let forced = force_release(&follower, lock, token)
        .await
        .expect("ForceRelease through a follower");
    assert_eq!(forced.session_id, stuck.id, "the holder whose grant was freed");
    assert_eq!(
        forced.next_session_id, next.id,
        "the waiter is granted in the same command"
    );
    let granted = waiting.await.unwrap().expect("the waiter's Acquire is answered");
    assert!(granted.acquired);
    assert_eq!(granted.token, forced.next_token);
    assert!(granted.token > token);
    for index in 0..cluster.len() {
        let node = cluster.client(index).await;
        assert_held(&node, lock, next.id, granted.token, 0).await;
    }

    // The former holder's session lives on, but not its grant.
    let late = put(&client, "t15/out", "late", fence(lock, token), stuck.key).await;
    let detail = expect_refusal(
        "a write under the freed token",
        late,
        Code::FailedPrecondition,
        ErrorReason::StaleToken,
    );
    assert_eq!(
        (detail.presented_token, detail.current_token),
        (token, granted.token)
    );
    let released = release(&client, stuck.key, lock, token).await;
    expect_refusal(
        "a release of the freed grant",
        released,
        Code::FailedPrecondition,
        ErrorReason::NotHolder,
    );
    let again = acquire(&client, stuck.key, lock, 0)
        .await
        .expect("the session still works");
    assert!(!again.acquired, "the lock is the next holder's now");

    // A repeat, and a token nobody holds: refused, nothing freed.
    let repeat = force_release(&client, lock, token).await;
    let detail = expect_refusal(
        "a repeated ForceRelease",
        repeat,
        Code::FailedPrecondition,
        ErrorReason::StaleToken,
    );
    assert_eq!(detail.current_token, granted.token);
    assert_names_tokens(
        "a repeated ForceRelease",
        &force_release(&client, lock, token).await.unwrap_err(),
        &[token, granted.token],
    );
    let nobody = force_release(&client, "t15/free", 5).await;
    expect_refusal(
        "ForceRelease of a free lock",
        nobody,
        Code::FailedPrecondition,
        ErrorReason::StaleToken,
    );
    assert_held(&client, lock, next.id, granted.token, 0).await;
    let bad = force_release(&client, "", 1).await;
    expect_refusal(
        "ForceRelease of an empty name",
        bad,
        Code::InvalidArgument,
        ErrorReason::InvalidArgument,
    );

    // The watch: granted, queued, then REVOKED and the hand-over in one
    // revision.
    let mut seen = Vec::new();
    while seen.len() < 4 {
        let message = tokio::time::timeout(RPC_TIMEOUT, events.message())
            .await
            .expect("watch events come")
            .expect("the watch goes on")
            .expect("the stream does not end");
        seen.extend(message.events);
    }
    let kinds: Vec<WatchEventKind> = seen.iter().map(|event| event.kind()).collect();
    assert_eq!(
        kinds,
        [
            WatchEventKind::Granted,
            WatchEventKind::Queued,
            WatchEventKind::Revoked,
            WatchEventKind::Granted
        ],
        "{seen:#?}"
    );
    let revoked = &seen[2];
    assert_eq!((revoked.session_id, revoked.token), (stuck.id, token));
    assert_eq!(revoked.cause(), WatchEventCause::Forced);
    assert_eq!(revoked.by, "anonymous", "access control is off: nobody is named");
    assert_eq!(revoked.revision, seen[3].revision);
}
