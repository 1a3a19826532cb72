//! t13: semaphores through the public gRPC API on a real three-node
//! cluster of each engine.
//!
//! Proves that permits are granted while they fit, each grant with its own
//! rising token; that Describe shows the limit, every holder's permits and
//! the queue with what each waiter asked; that the queue is FIFO (a large
//! ask that does not fit is not passed by a smaller one); that permits come
//! back on release and when a holder's session ends, granting the waiters
//! in order; that another limit is refused with FAILED_PRECONDITION
//! (SEMAPHORE_LIMIT, naming the semaphore's limit) while the semaphore
//! exists and accepted once it is gone; that a lock acquire of a semaphore's
//! name is WRONG_MODE; and that permit counts outside their bounds are
//! INVALID_ARGUMENT naming the field.

mod common;

use common::*;
use quorumlock_proto::v1::{AcquireRequest, AcquireResponse, ErrorReason, Holder, LockMode, Waiter};
use tonic::transport::Channel;
use tonic::Code;

use quorumlock_proto::v1::lock_client::LockClient;

engine_tests!(
    check_permits_are_granted_while_they_fit_in_fifo_order,
    check_a_semaphore_refuses_another_limit_and_bad_counts,
);

/// `Acquire` of `permits` of semaphore `name` of `limit` permits.
async fn acquire_permits(
    client: &LockClient<Channel>,
    session: Key,
    name: &str,
    permits: u32,
    limit: u32,
    wait_ms: u64,
) -> Result<AcquireResponse, tonic::Status> {
    let request = AcquireRequest {
        session_id: session.id,
        name: name.as_bytes().to_vec(),
        wait_ms,
        session_secret: session.secret.to_vec(),
        mode: LockMode::Semaphore.into(),
        permits,
        semaphore_limit: limit,
        ..AcquireRequest::default()
    };
    acquire_with(client, request).await
}

fn holder(session_id: u64, token: u64, permits: u32) -> Holder {
    Holder {
        session_id,
        token,
        permits,
        ..Holder::default()
    }
}

fn waiter(session_id: u64, permits: u32) -> Waiter {
    Waiter {
        session_id,
        mode: LockMode::Semaphore.into(),
        permits,
        ..Waiter::default()
    }
}

/// A semaphore of 4: 2 + 1 granted at once; an ask of 2 waits (1 free),
/// and an ask of 1 waits behind it; a release of 1 lets the 2 in, the
/// end of the first holder's session lets the 1 in.
async fn check_permits_are_granted_while_they_fit_in_fifo_order(engine: &str) {
    let cluster = Cluster::start(engine, 3).await;
    let client = cluster.any_client().await;
    let one = cluster.session(30_000).await;
    let two = cluster.session(30_000).await;
    let big = cluster.session(30_000).await;
    let small = cluster.session(30_000).await;
    let name = "t13/pool";

    let first = acquire_permits(&client, one.key, name, 2, 4, 0)
        .await
        .expect("2 of 4");
    let second = acquire_permits(&client, two.key, name, 1, 4, 0)
        .await
        .expect("1 more");
    assert!(first.acquired && second.acquired && second.token > first.token);
    let refused = acquire_permits(&client, big.key, name, 2, 4, 0)
        .await
        .expect("a try");
    assert!(!refused.acquired, "2 permits do not fit in the 1 left");

    let big_wait = {
        let client = client.clone();
        let key = big.key;
        tokio::spawn(async move { acquire_permits(&client, key, name, 2, 4, 20_000).await })
    };
    wait_for_queue_length(&client, name, 1).await;
    let small_wait = {
        let client = client.clone();
        let key = small.key;
        tokio::spawn(async move { acquire_permits(&client, key, name, 1, 4, 20_000).await })
    };
    wait_for_queue_length(&client, name, 2).await;
    let described = describe_ok(&client, name).await;
    assert!(described.held);
    assert_eq!(described.mode(), LockMode::Semaphore);
    assert_eq!(described.semaphore_limit, 4);
    assert_eq!(
        described.holders,
        vec![holder(one.id, first.token, 2), holder(two.id, second.token, 1)]
    );
    assert_eq!(
        described.waiters,
        vec![waiter(big.id, 2), waiter(small.id, 1)],
        "the small ask waits behind the large one although a permit is free"
    );

    let released = release(&client, two.key, name, second.token)
        .await
        .expect("release 1");
    assert_eq!(released.next_session_id, big.id);
    let granted_big = big_wait.await.unwrap().expect("the large ask");
    assert!(granted_big.acquired && granted_big.token > second.token);
    assert_eq!(
        describe_ok(&client, name).await.waiters,
        vec![waiter(small.id, 1)]
    );

    // The first holder's session ends: its 2 permits come back.
    close_session(&client, one.key)
        .await
        .expect("close the first session");
    let granted_small = small_wait.await.unwrap().expect("the small ask");
    assert!(granted_small.acquired && granted_small.token > granted_big.token);
    for index in 0..cluster.len() {
        let described = describe_ok(&cluster.client(index).await, name).await;
        assert_eq!(
            described.holders,
            vec![
                holder(big.id, granted_big.token, 2),
                holder(small.id, granted_small.token, 1)
            ],
            "node {index}"
        );
        assert!(described.waiters.is_empty(), "node {index}");
    }
}

/// Another limit, a lock acquire of the semaphore's name, and counts out
/// of bounds are refused precisely; once the semaphore is gone its name
/// takes a new limit.
async fn check_a_semaphore_refuses_another_limit_and_bad_counts(engine: &str) {
    let cluster = Cluster::start(engine, 3).await;
    let client = cluster.any_client().await;
    let holder_session = cluster.session(30_000).await;
    let other = cluster.session(30_000).await;
    let name = "t13/limits";

    let held = acquire_permits(&client, holder_session.key, name, 1, 3, 0)
        .await
        .expect("1 of 3");
    assert!(held.acquired);
    let status = expect_code(
        "another limit",
        acquire_permits(&client, other.key, name, 1, 5, 1_000).await,
        Code::FailedPrecondition,
    );
    let detail = quorumlock_proto::details::detail(&status).expect("a detail");
    assert_eq!(detail.reason(), ErrorReason::SemaphoreLimit);
    assert_eq!((detail.lock.as_slice(), detail.limit), (name.as_bytes(), 3));
    assert!(
        status.message().contains("has 3 permits; the acquire named 5"),
        "{status:?}"
    );

    let status = expect_code(
        "a lock acquire of a semaphore",
        acquire(&client, other.key, name, 0).await,
        Code::FailedPrecondition,
    );
    assert_eq!(
        quorumlock_proto::details::detail(&status).map(|detail| detail.reason()),
        Some(ErrorReason::WrongMode)
    );
    assert!(status.message().contains("semaphore of 3 permits"), "{status:?}");

    for (permits, limit, field) in [(0, 3, "permits"), (4, 3, "permits"), (1, 0, "semaphore_limit")] {
        let status = expect_code(
            "a count out of bounds",
            acquire_permits(&client, other.key, name, permits, limit, 0).await,
            Code::InvalidArgument,
        );
        let detail = quorumlock_proto::details::detail(&status).expect("a detail");
        assert_eq!(detail.field, field, "{permits} of {limit}: {status:?}");
    }
    let request = AcquireRequest {
        session_id: other.key.id,
        name: b"t13/plain".to_vec(),
        wait_ms: 0,
        session_secret: other.key.secret.to_vec(),
        mode: LockMode::Exclusive.into(),
        permits: 2,
        semaphore_limit: 0,
        ..AcquireRequest::default()
    };
    let status = expect_code(
        "permits on a lock acquire",
        acquire_with(&client, request).await,
        Code::InvalidArgument,
    );
    assert_eq!(
        quorumlock_proto::details::detail(&status).map(|detail| detail.field),
        Some("permits".to_string())
    );

    release(&client, holder_session.key, name, held.token)
        .await
        .expect("release");
    let renewed = acquire_permits(&client, other.key, name, 5, 5, 0)
        .await
        .expect("a new semaphore of the name");
    assert!(renewed.acquired, "once gone, the name takes another limit");
}
