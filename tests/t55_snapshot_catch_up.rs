//! t55: snapshots, log compaction and snapshot transfer.
//!
//! Proves that with a short snapshot interval the leader compacts its log,
//! that a follower that was down while the log moved past the compaction
//! point is brought back by a snapshot installed from the leader, and that
//! afterwards all three replicas hold byte-identical lock state (equal
//! SHA-256 digests of their snapshots at equal applied indexes) — the
//! determinism of apply, observed through the real path.

mod common;

use common::*;

engine_tests!(check_lagging_follower_catches_up_by_snapshot_to_identical_state);

/// Entries between snapshots for this test: small, so that a few hundred
/// commands compact the log several times.
const SNAPSHOT_EVERY_ENTRIES: &str = "40";

async fn check_lagging_follower_catches_up_by_snapshot_to_identical_state(engine: &str) {
    let cluster =
        Cluster::start_with_args(engine, 3, &["--snapshot-every-entries", SNAPSHOT_EVERY_ENTRIES]).await;
    let lagging = cluster.follower_index().await;
    cluster.kill(lagging);

    let client = cluster.leader_client().await;
    let holder = cluster.session(60_000).await;
    let mut last_token = 0;
    for round in 0..60 {
        // Every third grant stays held, on a lock of its own; the others are
        // released and their locks reused.
        let keep = round % 3 == 0;
        let lock = if keep {
            format!("t55/held-{round}")
        } else {
            format!("t55/lock-{}", round % 7)
        };
        let token = acquire_granted(&client, holder.key, &lock, 0).await;
        assert!(token > last_token, "tokens increase: {token} after {last_token}");
        last_token = token;
        put(
            &client,
            format!("t55/key-{round}"),
            format!("value {round}"),
            fence(&lock, token),
            holder.key,
        )
        .await
        .expect("fenced Put by the holder");
        if !keep {
            release(&client, holder.key, &lock, token)
                .await
                .expect("Release by the holder");
        }
    }

    cluster.restart(lagging);
    let applied = cluster
        .wait_for_one_state("all replicas at one applied index with one state digest")
        .await;
    // 60 acquires, 60 puts and 40 releases, besides sessions and blank entries.
    assert!(
        applied >= 160,
        "the replicas applied the whole workload: {applied}"
    );
    assert!(
        cluster.log(lagging).contains("installed snapshot from"),
        "the lagging follower caught up through a snapshot transfer, not the log"
    );

    // The caught-up follower serves the same answers once it forwards to the leader.
    let lagging_client = cluster.client(lagging).await;
    let read = retry_unavailable("Get through the caught-up follower", || {
        get(&lagging_client, "t55/key-59")
    })
    .await
    .expect("Get through the caught-up follower");
    assert_eq!(read.value, b"value 59");
}
