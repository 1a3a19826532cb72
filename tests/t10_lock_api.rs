//! t10: the lock API on a healthy three-node cluster.
//!
//! Proves that an acquire/release round trip works and yields tokens that go
//! up; that a try-lock (wait_ms = 0) on a held lock is answered OK with
//! acquired = false and changes nothing; that a holder re-acquiring its own
//! lock gets the same token back; that Describe reports holder, token and
//! queue length and that Release hands the lock to the first waiter; and that
//! every node, leader or follower, answers the same and reports a consistent
//! Cluster/Status.

mod common;

use common::*;

engine_tests!(
    check_acquire_release_roundtrip,
    check_try_lock_refused_while_held,
    check_reacquire_by_holder_returns_same_token,
    check_describe_reports_holder_token_and_queue,
    check_every_node_answers_alike,
);

/// Acquire grants a free lock with a nonzero token, Describe and CheckToken
/// show the grant, Release frees it, and the next grant has a higher token.
async fn check_acquire_release_roundtrip(engine: &str) {
    let cluster = Cluster::start(engine, 3).await;
    let client = cluster.any_client().await;
    let session = cluster.session(30_000).await;
    let lock = "t10/roundtrip";

    assert_free(&client, lock).await;
    let first = acquire_granted(&client, session.key, lock, 0).await;
    assert_held(&client, lock, session.id, first, 0).await;
    let checked = check_token(&client, lock, first).await.expect("CheckToken");
    assert!(checked.current, "the granted token is current: {checked:?}");
    assert_eq!(checked.current_token, first);

    let released = release(&client, session.key, lock, first)
        .await
        .expect("Release by the holder");
    assert_eq!(
        (released.next_session_id, released.next_token),
        (0, 0),
        "nobody waited, so nobody is granted next"
    );
    assert_free(&client, lock).await;
    let checked = check_token(&client, lock, first).await.expect("CheckToken");
    assert!(!checked.current, "a released token is not current");
    assert_eq!(checked.current_token, 0, "a free lock has no current token");

    let second = acquire_granted(&client, session.key, lock, 0).await;
    assert!(
        second > first,
        "tokens strictly increase across grants: {first} then {second}"
    );
    release(&client, session.key, lock, second)
        .await
        .expect("second Release");
    assert_free(&client, lock).await;
}

/// A try-lock by another session on a held lock is answered OK with
/// acquired = false, does not join the queue and does not disturb the holder.
async fn check_try_lock_refused_while_held(engine: &str) {
    let cluster = Cluster::start(engine, 3).await;
    let client = cluster.any_client().await;
    let holder = cluster.session(30_000).await;
    let other = cluster.session(30_000).await;
    let lock = "t10/try-lock";

    let token = acquire_granted(&client, holder.key, lock, 0).await;
    for attempt in 0..3 {
        let refused = acquire(&client, other.key, lock, 0)
            .await
            .expect("a try-lock on a held lock is answered OK");
        assert!(
            !refused.acquired,
            "try-lock #{attempt} on a held lock must not be granted: {refused:?}"
        );
    }
    assert_held(&client, lock, holder.id, token, 0).await;

    release(&client, holder.key, lock, token)
        .await
        .expect("Release by the holder");
    let granted = acquire_granted(&client, other.key, lock, 0).await;
    assert!(
        granted > token,
        "the next grant has a higher token: {token} then {granted}"
    );
    assert_held(&client, lock, other.id, granted, 0).await;
}

/// A holder that acquires its own lock again, with or without a wait, is
/// granted at once with the same token, and nothing is queued.
async fn check_reacquire_by_holder_returns_same_token(engine: &str) {
    let cluster = Cluster::start(engine, 3).await;
    let client = cluster.any_client().await;
    let session = cluster.session(30_000).await;
    let lock = "t10/reacquire";

    let token = acquire_granted(&client, session.key, lock, 0).await;
    let again = acquire_granted(&client, session.key, lock, 0).await;
    assert_eq!(again, token, "a try-lock by the holder returns its token");
    // A waiting re-acquire must not queue behind the session itself.
    let waited = acquire_granted(&client, session.key, lock, 5_000).await;
    assert_eq!(
        waited, token,
        "a waiting re-acquire by the holder returns its token"
    );
    assert_held(&client, lock, session.id, token, 0).await;
}

/// Describe shows the holder, its token and the number of waiters as the
/// queue grows, and each Release grants the first waiter with a higher token
/// and says so in its response.
async fn check_describe_reports_holder_token_and_queue(engine: &str) {
    let cluster = Cluster::start(engine, 3).await;
    let client = cluster.any_client().await;
    let first = cluster.session(30_000).await;
    let second = cluster.session(30_000).await;
    let third = cluster.session(30_000).await;
    let lock = "t10/describe";

    let first_token = acquire_granted(&client, first.key, lock, 0).await;
    assert_held(&client, lock, first.id, first_token, 0).await;

    let second_wait = {
        let client = client.clone();
        let session_id = second.key;
        tokio::spawn(async move { acquire(&client, session_id, lock, LONG_WAIT_MS).await })
    };
    wait_for_queue_length(&client, lock, 1).await;
    assert_held(&client, lock, first.id, first_token, 1).await;

    let third_wait = {
        let client = client.clone();
        let session_id = third.key;
        tokio::spawn(async move { acquire(&client, session_id, lock, LONG_WAIT_MS).await })
    };
    wait_for_queue_length(&client, lock, 2).await;
    assert_held(&client, lock, first.id, first_token, 2).await;

    let handed = release(&client, first.key, lock, first_token)
        .await
        .expect("Release by the first holder");
    assert_eq!(
        handed.next_session_id, second.id,
        "Release grants the first waiter"
    );
    assert!(
        handed.next_token > first_token,
        "the next grant has a higher token: {first_token} then {}",
        handed.next_token
    );
    let second_granted = second_wait
        .await
        .expect("the second waiter's task")
        .expect("the second waiter's Acquire");
    assert!(second_granted.acquired, "the second waiter is granted");
    assert_eq!(second_granted.token, handed.next_token);
    assert_held(&client, lock, second.id, handed.next_token, 1).await;

    let handed_again = release(&client, second.key, lock, second_granted.token)
        .await
        .expect("Release by the second holder");
    assert_eq!(handed_again.next_session_id, third.id);
    assert!(handed_again.next_token > second_granted.token);
    let third_granted = third_wait
        .await
        .expect("the third waiter's task")
        .expect("the third waiter's Acquire");
    assert!(third_granted.acquired, "the third waiter is granted");
    assert_eq!(third_granted.token, handed_again.next_token);
    assert_held(&client, lock, third.id, third_granted.token, 0).await;

    let last = release(&client, third.key, lock, third_granted.token)
        .await
        .expect("Release by the third holder");
    assert_eq!((last.next_session_id, last.next_token), (0, 0));
    assert_free(&client, lock).await;
}

/// Requests sent to followers are answered like requests sent to the leader,
/// and every node's Cluster/Status agrees on engine, members and leader.
async fn check_every_node_answers_alike(engine: &str) {
    let cluster = Cluster::start(engine, 3).await;
    let leader = cluster.wait_for_leader().await;
    let follower = cluster.follower_index().await;
    let lock = "t10/every-node";

    for index in 0..cluster.len() {
        let status = cluster.status(index).await.expect("Status");
        assert_eq!(status.node_id, cluster.node_id(index));
        assert_eq!(status.engine, engine, "Status names the engine");
        assert_eq!(status.leader_id, cluster.node_id(leader));
        assert_eq!(
            bare_addr(&status.leader_addr),
            cluster.addr(leader).to_string(),
            "Status names the leader's address"
        );
        assert_eq!(status.is_leader, index == leader);
        assert!(status.term > 0, "an elected leader has a nonzero term");
        assert!(
            status.applied_index <= status.commit_index,
            "a node applies only committed entries: {status:?}"
        );
        let mut members: Vec<(u64, String)> = status
            .members
            .iter()
            .map(|member| (member.id, bare_addr(&member.addr)))
            .collect();
        members.sort();
        let expected: Vec<(u64, String)> = (0..cluster.len())
            .map(|member| (cluster.node_id(member), cluster.addr(member).to_string()))
            .collect();
        assert_eq!(
            members, expected,
            "Status of node {} lists the members",
            status.node_id
        );
    }

    let session = cluster.session(30_000).await;
    let through_follower = cluster.client(follower).await;
    let token = acquire_granted(&through_follower, session.key, lock, 0).await;
    for index in 0..cluster.len() {
        let client = cluster.client(index).await;
        assert_held(&client, lock, session.id, token, 0).await;
        let checked = check_token(&client, lock, token).await.expect("CheckToken");
        assert!(checked.current, "node {} sees the token as current", index + 1);
    }
    let other_follower = (0..cluster.len())
        .find(|&index| index != leader && index != follower)
        .expect("three nodes have two followers");
    let through_other = cluster.client(other_follower).await;
    release(&through_other, session.key, lock, token)
        .await
        .expect("Release through the other follower");
    for index in 0..cluster.len() {
        assert_free(&cluster.client(index).await, lock).await;
    }
}

/// An address without a URL scheme, so that `127.0.0.1:1234` and
/// `http://127.0.0.1:1234` compare equal.
fn bare_addr(addr: &str) -> String {
    addr.trim_start_matches("http://").to_string()
}
