//! t50: durability across process restarts.
//!
//! Proves that when every node is killed with SIGKILL and all are started
//! again from their data directories, the cluster comes back with every held
//! lock, its holder and token, every stored value and its fence, and that new
//! grants continue above every token granted before; and that a follower
//! killed while the cluster moved on rejoins from its own state, catches up,
//! and counts towards the quorum again.

mod common;

use common::*;

engine_tests!(
    check_full_restart_preserves_state,
    check_restarted_follower_catches_up,
);

/// Stop all nodes and restart them all: state intact, tokens continue above.
async fn check_full_restart_preserves_state(engine: &str) {
    let cluster = Cluster::start(engine, 3).await;
    let client = cluster.any_client().await;
    let holder = cluster.session(60_000).await;
    let other = cluster.session(60_000).await;
    let held_lock = "t50/held";
    let released_lock = "t50/released";

    let held_token = acquire_granted(&client, holder.key, held_lock, 0).await;
    put(
        &client,
        "t50/one",
        "value one",
        fence(held_lock, held_token),
        holder.key,
    )
    .await
    .expect("Put one");
    put(
        &client,
        "t50/two",
        "value two",
        fence(held_lock, held_token),
        holder.key,
    )
    .await
    .expect("Put two");
    let released_token = acquire_granted(&client, other.key, released_lock, 0).await;
    release(&client, other.key, released_lock, released_token)
        .await
        .expect("Release");
    let highest_before = held_token.max(released_token);

    cluster.stop_all();
    for index in 0..cluster.len() {
        cluster.restart(index);
    }
    cluster.wait_for_leader().await;
    let client = cluster.any_client().await;

    let described = retry_unavailable("Describe after restart", || describe(&client, held_lock))
        .await
        .expect("Describe after restart");
    assert_eq!(
        (described.held, described.holder_session_id, described.token),
        (true, holder.id, held_token),
        "the held lock survives a full restart with its holder and token"
    );
    assert_free(&client, released_lock).await;
    for (key, value) in [("t50/one", "value one"), ("t50/two", "value two")] {
        let read = get(&client, key).await.expect("Get after restart");
        assert!(read.found, "{key:?} survives a full restart");
        assert_eq!(read.value, value.as_bytes());
        assert_eq!(read.written_by, fence(held_lock, held_token));
    }
    let checked = check_token(&client, held_lock, held_token)
        .await
        .expect("CheckToken after restart");
    assert!(checked.current, "the held token is still current");

    let fresh = acquire_granted(&client, other.key, "t50/fresh", 0).await;
    assert!(
        fresh > highest_before,
        "a grant after restart ({fresh}) is above every earlier token ({highest_before})"
    );
    release(&client, holder.key, held_lock, held_token)
        .await
        .expect("the pre-restart holder releases");
    let handed = acquire_granted(&client, other.key, held_lock, 0).await;
    assert!(handed > fresh, "tokens keep increasing: {fresh} then {handed}");
    assert!(!holder.keepalive_ended() && !other.keepalive_ended());
}

/// A follower killed while the cluster moved on restarts from its own data
/// directory, applies everything it missed, and then forms the quorum with
/// the leader when the other follower is killed.
async fn check_restarted_follower_catches_up(engine: &str) {
    const GRANTS_WHILE_DOWN: usize = 20;
    let cluster = Cluster::start(engine, 3).await;
    let leader = cluster.wait_for_leader().await;
    let lagging = cluster.follower_index().await;
    let session = cluster.session(60_000).await;
    let lock = "t50/catch-up";
    let key = "t50/catch-up-key";

    cluster.kill(lagging);
    let client = cluster.client(leader).await;
    let mut last_token = 0;
    for grant in 0..GRANTS_WHILE_DOWN {
        let token = acquire_granted(&client, session.key, lock, 0).await;
        put(
            &client,
            key,
            format!("grant {grant}"),
            fence(lock, token),
            session.key,
        )
        .await
        .expect("Put while a follower is down");
        release(&client, session.key, lock, token)
            .await
            .expect("Release while a follower is down");
        last_token = token;
    }
    let target = cluster
        .status(leader)
        .await
        .expect("Status of the leader")
        .commit_index;

    cluster.restart(lagging);
    cluster.wait_for_leader().await;
    wait_until(
        "the restarted follower to apply what it missed",
        CONDITION_WAIT,
        || async {
            let status = cluster
                .status(lagging)
                .await
                .map_err(|error| format!("{error:#}"))?;
            if status.applied_index >= target {
                Ok(())
            } else {
                Err(format!("applied {} of {target}", status.applied_index))
            }
        },
    )
    .await;

    // With the other follower gone, the quorum needs the restarted node.
    let other = (0..cluster.len())
        .find(|&index| index != leader && index != lagging)
        .expect("three nodes have two followers");
    cluster.kill(other);
    let leader = cluster.wait_for_leader().await;
    let client = cluster.client(leader).await;
    let granted = retry_unavailable("Acquire with the restarted node in the quorum", || {
        acquire(&client, session.key, lock, 0)
    })
    .await
    .expect("Acquire with the restarted node in the quorum");
    assert!(granted.acquired);
    assert!(granted.token > last_token, "tokens keep increasing");
    let through_lagging = cluster.client(lagging).await;
    assert_held(&through_lagging, lock, session.id, granted.token, 0).await;
    let read = get(&through_lagging, key).await.expect("Get");
    assert_eq!(read.value, format!("grant {}", GRANTS_WHILE_DOWN - 1).as_bytes());
}
