//! t55: snapshots, log compaction and snapshot transfer.
//!
//! Proves that with a short snapshot interval the leader compacts its log,
//! that a follower that was down while the log moved past the compaction
//! point is brought back by a snapshot installed from the leader, and that
//! afterwards all three replicas hold byte-identical lock state (equal
//! SHA-256 digests of their snapshots at equal applied indexes) — the
//! determinism of apply, observed through the real path. The values
//! written make the state larger than one snapshot chunk (1 MiB), so the
//! transfer takes several; a follower whose data directory is lost then
//! repairs from its peers through such a transfer.

mod common;

use common::*;

engine_tests!(check_lagging_follower_catches_up_by_snapshot_to_identical_state);

/// Entries between snapshots for this test: small, so that a few hundred
/// commands compact the log several times.
const SNAPSHOT_EVERY_ENTRIES: &str = "40";

/// Longest time the repair of an emptied follower may take: a leader
/// change, a configuration change, the transfer and a promotion, on a
/// loaded machine.
const REPAIR_WAIT_MAX: std::time::Duration = std::time::Duration::from_secs(90);

/// Bytes of each value written: 60 of them make about 2.4 MiB of state.
const VALUE_BYTES: usize = 40 << 10;

/// The value written in `round`: its number, padded to [`VALUE_BYTES`].
fn value(round: usize) -> Vec<u8> {
    let mut value = format!("value {round} ").into_bytes();
    value.resize(VALUE_BYTES, b'.');
    value
}

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
            value(round),
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
    let log = cluster.log(lagging);
    assert!(
        log.contains("installed snapshot from"),
        "the lagging follower caught up through a snapshot transfer, not the log"
    );
    if engine == "paxos" {
        let chunks = most_chunks(&log);
        assert!(
            chunks.is_some_and(|chunks| chunks >= 2),
            "a snapshot over 1 MiB travelled in several chunks: {chunks:?}"
        );
    }

    // A follower whose data directory is lost repairs from its peers. It
    // knows no configuration, so no address, until a snapshot installed
    // gives it one: it pulls the chunks from the sender the snapshot's own
    // configuration names.
    let repaired = (lagging + 1) % cluster.len();
    cluster.kill(repaired);
    std::fs::remove_dir_all(cluster.data_dir(repaired)).expect("deleting the follower's data directory");
    cluster.start_node_with(repaired, &["--repair"]);
    wait_until(
        "the emptied follower finishes its repair",
        REPAIR_WAIT_MAX,
        || async {
            match cluster.this_start(repaired).contains("repair finished") {
                true => Ok(()),
                false => Err(format!(
                    "no \"repair finished\" yet:\n{}",
                    cluster.this_start(repaired)
                )),
            }
        },
    )
    .await;
    cluster
        .wait_for_one_state("the repaired follower at the others' applied index and state digest")
        .await;
    if engine == "paxos" {
        assert!(
            most_chunks(&cluster.this_start(repaired)).is_some_and(|chunks| chunks >= 2),
            "the repaired follower pulled a snapshot of several chunks:\n{}",
            cluster.this_start(repaired)
        );
    }

    // The caught-up follower serves the same answers once it forwards to the leader.
    let lagging_client = cluster.client(lagging).await;
    let read = retry_unavailable("Get through the caught-up follower", || {
        get(&lagging_client, "t55/key-59")
    })
    .await
    .expect("Get through the caught-up follower");
    assert_eq!(read.value, value(59));
}

/// The most chunks a snapshot received took, from a paxos node's `log` (it
/// logs each snapshot it received whole, with its chunks).
fn most_chunks(log: &str) -> Option<u64> {
    log.lines()
        .filter(|line| line.contains("snapshot received from a peer"))
        .filter_map(|line| line.split("chunks=").nth(1))
        .filter_map(|rest| rest.split_whitespace().next()?.parse::<u64>().ok())
        .max()
}
