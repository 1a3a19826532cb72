//! t63: a node whose data directory is damaged or lost repairs from its
//! peers (`serve --repair`), and refuses when no repair is safe.
//!
//! Real processes on both engines, after fenced writes under a held lock
//! (which must read back intact after the repairs, with later tokens above
//! theirs):
//! - a follower whose WAL has 64 bytes flipped starts with `--repair`: its
//!   damaged files are kept under `damaged-<time>/`, it comes back as a
//!   learner under a new incarnation, catches up and is promoted; every node
//!   ends with the same state digest, the cluster records one repair, and
//!   the repaired node stops and starts again as any member does;
//! - the leader, killed and its whole directory deleted, is refused by its
//!   peers when restarted as it was (exit 6, naming `--repair`), and
//!   repairs when restarted with `--repair` (the other two elect a leader
//!   and serve meanwhile);
//! - two of three nodes lost at once: no leader can record a repair, and
//!   both refuse (exit 6), saying that a majority lost is not repairable
//!   from peers.

mod common;

use std::time::Duration;

use common::*;
use quorumlock_proto::v1::cluster_client::ClusterClient;
use quorumlock_proto::v1::ListMembersRequest;

engine_tests!(check_a_damaged_follower_and_a_lost_leader_repair_and_a_lost_majority_refuses);

/// The exit status of `serve` refusing its data directory.
const EXIT_DATA_DIR_REFUSED: i32 = 6;
/// Longest time a clean stop may take.
const STOP_WAIT_MAX: Duration = Duration::from_secs(30);
/// Longest time a repair may take here: a leader change, a stop-sign or
/// joint configuration, a catch-up and a promotion, on a loaded machine.
const REPAIR_WAIT_MAX: Duration = Duration::from_secs(90);
/// A repairing node looks for a leader for 30 election timeouts (30 s
/// here) before it refuses; this leaves it time to start and stop.
const REFUSAL_WAIT_MAX: Duration = Duration::from_secs(90);

async fn check_a_damaged_follower_and_a_lost_leader_repair_and_a_lost_majority_refuses(engine: &str) {
    let cluster = Cluster::start(engine, 3).await;
    let (_holder, token) = hold_and_write(&cluster, 9_000, "t63").await;

    // A follower's WAL damaged: refused without --repair, repaired with it.
    let follower = cluster.follower_index().await;
    let status = cluster.terminate(follower, STOP_WAIT_MAX).await;
    assert!(status.success(), "the follower stopped cleanly: {status}");
    let wal = largest_file(&cluster.data_dir(follower).join(engine), ".log");
    flip_middle(&wal, 64);
    cluster.start_node(follower);
    let status = cluster
        .wait_for_exit(follower, REFUSAL_WAIT_MAX)
        .await
        .expect("the damaged follower exits");
    assert_eq!(status.code(), Some(EXIT_DATA_DIR_REFUSED));
    assert!(
        cluster.this_start(follower).contains("--repair"),
        "the refusal names --repair:\n{}",
        cluster.this_start(follower)
    );
    cluster.start_node_with(follower, &["--repair"]);
    wait_repaired(&cluster, follower, 1).await;
    let kept = quarantined(&cluster, follower);
    assert!(
        kept.join(engine).join(wal.file_name().unwrap()).exists(),
        "the damaged WAL is kept under {}",
        kept.display()
    );
    still_serves(&cluster, "t63/after-follower-repair").await;
    // A repaired node stops and starts as any member does.
    let status = cluster.terminate(follower, STOP_WAIT_MAX).await;
    assert!(
        status.success(),
        "the repaired follower stopped cleanly: {status}"
    );
    cluster.start_node(follower);
    cluster
        .wait_for_one_state("the repaired follower restarted and caught up")
        .await;

    // The leader's whole directory lost: restarted as it was, the node is
    // refused by its peers; with --repair, it repairs.
    let leader = cluster.leader_index().await;
    cluster.kill(leader);
    std::fs::remove_dir_all(cluster.data_dir(leader)).unwrap();
    still_serves(&cluster, "t63/while-leader-lost").await;
    cluster.start_node(leader);
    let status = cluster
        .wait_for_exit(leader, REFUSAL_WAIT_MAX)
        .await
        .expect("the node restarted on an emptied directory exits");
    let said = cluster.this_start(leader);
    assert_eq!(status.code(), Some(EXIT_DATA_DIR_REFUSED), "{said}");
    assert!(
        said.contains("state was lost") && said.contains("--repair"),
        "{said}"
    );
    assert!(cluster.data_dir(leader).join("LOST").exists());
    cluster.start_node_with(leader, &["--repair"]);
    wait_repaired(&cluster, leader, 1).await;
    // What was written before either repair is intact everywhere, and a new
    // grant's token is above the first. (The holder's session itself may
    // have expired meanwhile: each paxos repair moves leadership twice, and
    // sessions with no renewal recorded across four takeovers expire.)
    let client = cluster.leader_client().await;
    for n in [0u8, 50, 99] {
        let read = get(&client, format!("t63/key/{n}")).await.expect("a read");
        assert!(
            read.found && read.value == vec![n; 300],
            "key {n} is intact: {read:?}"
        );
        assert_eq!(read.written_by.map(|fence| fence.token), Some(token));
    }
    let after = cluster.session(9_000).await;
    let newer = acquire_granted(&client, after.key, "t63/after-repairs", 0).await;
    assert!(
        newer > token,
        "tokens only rise across repairs: {newer} after {token}"
    );
    cluster
        .wait_for_one_state("every node applied the same state after the repairs")
        .await;

    // A majority lost at once: nobody can record a repair.
    let survivor = cluster.leader_index().await;
    let lost: Vec<usize> = (0..cluster.len()).filter(|&index| index != survivor).collect();
    for &index in &lost {
        cluster.kill(index);
        std::fs::remove_dir_all(cluster.data_dir(index)).unwrap();
    }
    for &index in &lost {
        cluster.start_node_with(index, &["--repair"]);
    }
    for &index in &lost {
        let status = match cluster.wait_for_exit(index, REFUSAL_WAIT_MAX).await {
            Some(status) => status,
            None => {
                cluster.stop_all();
                panic!(
                    "node {} still runs {REFUSAL_WAIT_MAX:?} after a repair no leader can record:\n{}",
                    cluster.node_id(index),
                    cluster.log(index)
                );
            }
        };
        let said = cluster.this_start(index);
        assert_eq!(status.code(), Some(EXIT_DATA_DIR_REFUSED), "{said}");
        for needle in ["no leader recorded the repair", "restore a backup"] {
            assert!(said.contains(needle), "the refusal says {needle:?}:\n{said}");
        }
        assert!(
            cluster.data_dir(index).join("REPAIR").exists(),
            "the repair stays pending for the next start"
        );
    }
}

/// Waits until node `index` finished its repair number `repairs` and is a
/// voter, and every node applied the same state.
async fn wait_repaired(cluster: &Cluster, index: usize, repairs: u64) {
    let id = cluster.node_id(index);
    wait_until(
        &format!("node {id} finishes its repair"),
        REPAIR_WAIT_MAX,
        || async {
            let log = cluster.this_start(index);
            if !cluster.is_running(index) {
                return Err(format!("node {id} exited:\n{log}"));
            }
            match log.contains("repair finished") {
                true => Ok(()),
                false => Err("no \"repair finished\" yet".to_string()),
            }
        },
    )
    .await;
    assert!(
        !cluster.data_dir(index).join("REPAIR").exists(),
        "a finished repair is no longer pending"
    );
    let leader = cluster.leader_index().await;
    let mut members = ClusterClient::new(cluster.channel(leader).await);
    let listed = members
        .list_members(ListMembersRequest {})
        .await
        .expect("member list")
        .into_inner();
    let voters: Vec<u64> = listed
        .members
        .iter()
        .filter(|member| member.voter)
        .map(|member| member.id)
        .collect();
    assert_eq!(voters.len(), 3, "all three nodes vote again: {listed:?}");
    let recorded = cluster.log(leader);
    assert!(
        all_logs(cluster).contains(&format!("repairs={repairs}")),
        "the repair is counted:\n{recorded}"
    );
    cluster
        .wait_for_one_state(&format!("node {id} caught up after its repair"))
        .await;
}

fn all_logs(cluster: &Cluster) -> String {
    (0..cluster.len()).map(|index| cluster.log(index)).collect()
}

/// The one quarantine directory in node `index`'s data directory.
fn quarantined(cluster: &Cluster, index: usize) -> std::path::PathBuf {
    let found: Vec<_> = std::fs::read_dir(cluster.data_dir(index))
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| {
            path.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("damaged-")
        })
        .collect();
    assert_eq!(found.len(), 1, "one quarantine: {found:?}");
    found[0].clone()
}

/// The running nodes still grant a new lock, to a new session.
async fn still_serves(cluster: &Cluster, lock: &str) {
    let session = cluster.open_session_key(9_000).await;
    let client = cluster.leader_client().await;
    let token = acquire_granted(&client, session, lock, 0).await;
    release(&client, session, lock, token).await.expect("release");
}
