//! t30: fencing tokens guard the key-value store.
//!
//! Proves that after a holder's session expires and the lock passes to the
//! next waiter, a write carrying the old token is refused FAILED_PRECONDITION
//! with a message naming both the presented and the current token, has no
//! effect, while the new holder's write is accepted and read back with its
//! fence; that CheckToken calls the old token stale and the new one current;
//! and that the fence follows every release and re-grant, even to the same
//! session.

mod common;

use common::*;
use tonic::Code;

engine_tests!(
    check_stale_token_fenced_after_expiry_handover,
    check_fence_follows_release_and_regrant,
);

/// The old holder of an expired session is fenced off; the new holder writes.
async fn check_stale_token_fenced_after_expiry_handover(engine: &str) {
    let cluster = Cluster::start(engine, 3).await;
    let client = cluster.any_client().await;
    let mut old_holder = cluster.session(2_000).await;
    let new_holder = cluster.session(30_000).await;
    let lock = "t30/fenced";
    let key = "t30/fenced-key";

    let old_token = acquire_granted(&client, old_holder.key, lock, 0).await;
    put(
        &client,
        key,
        "from the old holder",
        fence(lock, old_token),
        old_holder.key,
    )
    .await
    .expect("Put by the current holder");

    let waiting = {
        let client = client.clone();
        let session_id = new_holder.key;
        tokio::spawn(async move { acquire(&client, session_id, lock, LONG_WAIT_MS).await })
    };
    wait_for_queue_length(&client, lock, 1).await;
    old_holder.stop_keepalive().await;
    let granted = tokio::time::timeout(CONDITION_WAIT, waiting)
        .await
        .expect("the waiter is granted once the old holder's session expires")
        .expect("the waiter's task")
        .expect("the waiter's Acquire");
    assert!(granted.acquired, "the waiter is granted: {granted:?}");
    let new_token = granted.token;
    assert!(
        new_token > old_token,
        "the new token {new_token} is above the old {old_token}"
    );

    // The old holder, unaware it lost the lock, writes with its old token.
    let stale = put(
        &client,
        key,
        "stale write",
        fence(lock, old_token),
        old_holder.key,
    )
    .await;
    let status = expect_code("Put with the old token", stale, Code::FailedPrecondition);
    assert_names_tokens("Put with the old token", &status, &[old_token, new_token]);
    let read = get(&client, key).await.expect("Get");
    assert!(read.found);
    assert_eq!(
        read.value, b"from the old holder",
        "the refused write had no effect"
    );
    assert_eq!(read.written_by, fence(lock, old_token));

    put(
        &client,
        key,
        "from the new holder",
        fence(lock, new_token),
        new_holder.key,
    )
    .await
    .expect("Put by the new holder");
    let read = get(&client, key).await.expect("Get");
    assert!(read.found);
    assert_eq!(read.value, b"from the new holder");
    assert_eq!(
        read.written_by,
        fence(lock, new_token),
        "Get names the fence of the write that stored the value"
    );

    let old_check = check_token(&client, lock, old_token)
        .await
        .expect("CheckToken of the old token");
    assert!(!old_check.current, "the old token is stale: {old_check:?}");
    assert_eq!(old_check.current_token, new_token);
    let new_check = check_token(&client, lock, new_token)
        .await
        .expect("CheckToken of the new token");
    assert!(new_check.current, "the new token is current: {new_check:?}");
    assert_eq!(new_check.current_token, new_token);

    let stale_delete = delete(&client, key, fence(lock, old_token), old_holder.key).await;
    let status = expect_code(
        "Delete with the old token",
        stale_delete,
        Code::FailedPrecondition,
    );
    assert_names_tokens("Delete with the old token", &status, &[old_token, new_token]);
    assert!(get(&client, key).await.expect("Get").found);
    let deleted = delete(&client, key, fence(lock, new_token), new_holder.key)
        .await
        .expect("Delete by the new holder");
    assert!(deleted.existed, "the key existed before the Delete");
    let read = get(&client, key).await.expect("Get");
    assert!(!read.found, "a deleted key is not found: {read:?}");
    let deleted_again = delete(&client, key, fence(lock, new_token), new_holder.key)
        .await
        .expect("a second Delete by the holder");
    assert!(!deleted_again.existed, "the key was already deleted");
}

/// The current token changes on every grant, even when the same session
/// acquires again, and a released lock fences every token.
async fn check_fence_follows_release_and_regrant(engine: &str) {
    let cluster = Cluster::start(engine, 3).await;
    let client = cluster.any_client().await;
    let session = cluster.session(30_000).await;
    let lock = "t30/regrant";
    let key = "t30/regrant-key";

    let missing = get(&client, "t30/never-written").await.expect("Get");
    assert!(!missing.found, "a key never written is not found: {missing:?}");

    let first = acquire_granted(&client, session.key, lock, 0).await;
    put(&client, key, "first", fence(lock, first), session.key)
        .await
        .expect("Put with the current token");
    release(&client, session.key, lock, first).await.expect("Release");

    let free_check = check_token(&client, lock, first).await.expect("CheckToken");
    assert!(!free_check.current);
    assert_eq!(free_check.current_token, 0, "a free lock has no current token");
    let on_free = put(&client, key, "after release", fence(lock, first), session.key).await;
    let status = expect_code(
        "Put with the token of a released lock",
        on_free,
        Code::FailedPrecondition,
    );
    assert_names_tokens("Put on a released lock", &status, &[first]);

    let second = acquire_granted(&client, session.key, lock, 0).await;
    assert!(
        second > first,
        "a re-grant to the same session gets a new, higher token"
    );
    let stale = put(&client, key, "stale", fence(lock, first), session.key).await;
    let status = expect_code(
        "Put with the previous grant's token",
        stale,
        Code::FailedPrecondition,
    );
    assert_names_tokens("Put with the previous grant's token", &status, &[first, second]);
    put(&client, key, "second", fence(lock, second), session.key)
        .await
        .expect("Put with the current token");
    let read = get(&client, key).await.expect("Get");
    assert_eq!(read.value, b"second");
    assert_eq!(read.written_by, fence(lock, second));
}
