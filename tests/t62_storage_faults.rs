//! t62: a node never serves from a damaged or foreign data directory.
//!
//! Real processes on both engines. A node is stopped cleanly, a copy of its
//! data directory kept, and the directory damaged as a bad disk or a wrong
//! command would: 64 bytes flipped in the middle of the RocksDB WAL (the
//! leader's), in an SST, in the MANIFEST; the directory started under
//! another node's id or the other engine; the engine's state deleted while
//! the identity file stays; the whole directory deleted. Each time the node
//! must refuse — exit status 6, naming what it refused and why — rather
//! than serve with less than it acknowledged, while the other two nodes
//! keep granting locks: at start, or, for the emptied directory, at the
//! first request of a peer that knew the node under its old incarnation.
//! Put back from the copy, the node starts, catches up with what it missed,
//! and every node ends with the same state digest and the held lock.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::*;
use quorumlock_testkit::chaos::disk::copy_dir;

engine_tests!(check_every_damaged_or_foreign_data_directory_is_refused_and_the_good_copy_rejoins);

/// The exit status of `serve` refusing its data directory.
const EXIT_DATA_DIR_REFUSED: i32 = 6;
/// Longest time a refusing node may take to exit: it opens its database
/// and reads it once, then stops.
const REFUSAL_WAIT_MAX: Duration = Duration::from_secs(60);
/// Longest time a clean stop may take.
const STOP_WAIT_MAX: Duration = Duration::from_secs(30);

async fn check_every_damaged_or_foreign_data_directory_is_refused_and_the_good_copy_rejoins(engine: &str) {
    let cluster = Cluster::start(engine, 3).await;
    let (holder, token) = hold_and_write(&cluster, 120_000, "t62").await;

    // The leader's WAL: it holds everything the node acknowledged.
    let leader = cluster.leader_index().await;
    let saved = stop_and_copy(&cluster, leader).await;
    let wal = largest_file(&engine_dir(&cluster, leader), ".log");
    flip_middle(&wal, 64);
    let said = refused_start(&cluster, leader, Refused::AtStart).await;
    assert_names(&said, &["damaged", &file_name(&wal)]);
    still_serves(&cluster, holder.key, "t62/while-leader-refused").await;
    put_back(&cluster, leader, &saved);
    cluster.start_node(leader);
    cluster
        .wait_for_one_state("the leader's good copy caught up")
        .await;

    // A follower restarted once has its log in SST files (recovery
    // flushes the WAL it replayed); damage one, then the MANIFEST.
    let follower = cluster.follower_index().await;
    let _ = stop_and_copy(&cluster, follower).await;
    cluster.start_node(follower);
    cluster
        .wait_for_one_state("the restarted follower caught up")
        .await;
    let saved = stop_and_copy(&cluster, follower).await;
    let sst = largest_file(&engine_dir(&cluster, follower), ".sst");
    flip_middle(&sst, 64);
    let said = refused_start(&cluster, follower, Refused::AtStart).await;
    assert_names(&said, &["damaged", &file_name(&sst)]);
    put_back(&cluster, follower, &saved);

    let manifest = file_starting(&engine_dir(&cluster, follower), "MANIFEST-");
    flip_middle(&manifest, 16);
    let said = refused_start(&cluster, follower, Refused::AtStart).await;
    assert_names(&said, &["damaged"]);
    put_back(&cluster, follower, &saved);

    // The wrong node, the wrong engine, a lost engine state.
    let data_dir = cluster.data_dir(follower).to_path_buf();
    let other_id = cluster.node_id((follower + 1) % cluster.len());
    let said = refused_direct(&cluster, other_id, engine, &data_dir);
    assert_names(
        &said,
        &[&format!(
            "belongs to node {}, not to node {other_id}",
            cluster.node_id(follower)
        )],
    );
    let other_engine = if engine == "raft" { "paxos" } else { "raft" };
    let said = refused_direct(&cluster, cluster.node_id(follower), other_engine, &data_dir);
    assert_names(
        &said,
        &[
            &format!("holds {engine} state"),
            &format!("--engine {other_engine}"),
        ],
    );
    assert!(
        !data_dir.join(other_engine).exists(),
        "a refused start creates no {other_engine} state beside the {engine} state"
    );
    std::fs::remove_dir_all(engine_dir(&cluster, follower)).unwrap();
    let said = refused_start(&cluster, follower, Refused::AtStart).await;
    assert_names(&said, &["is gone", "replace it"]);
    put_back(&cluster, follower, &saved);

    // The whole directory gone: the node starts as a fresh one, and the
    // first request from a peer that knew it shows its state was lost.
    std::fs::remove_dir_all(&data_dir).unwrap();
    let said = refused_start(&cluster, follower, Refused::ByPeers).await;
    assert_names(&said, &["state was lost", "replace it"]);
    let leader = cluster.leader_index().await;
    let leader_said = cluster.log(leader);
    assert!(
        leader_said.contains("recorded a peer's incarnation"),
        "the leader knew the follower by incarnation:\n{leader_said}"
    );
    put_back(&cluster, follower, &saved);

    still_serves(&cluster, holder.key, "t62/while-follower-refused").await;
    cluster.start_node(follower);
    cluster
        .wait_for_one_state("the follower's good copy caught up")
        .await;
    let described = describe_ok(&cluster.leader_client().await, "t62/held").await;
    assert_eq!(
        (described.held, described.token),
        (true, token),
        "the held lock and its token are intact"
    );
}

/// Stops node `index` cleanly and returns a copy of its data directory.
async fn stop_and_copy(cluster: &Cluster, index: usize) -> tempfile::TempDir {
    let status = cluster.terminate(index, STOP_WAIT_MAX).await;
    assert!(
        status.success(),
        "node {} stopped cleanly: {status}",
        cluster.node_id(index)
    );
    let copy = tempfile::tempdir().unwrap();
    copy_dir(cluster.data_dir(index), copy.path()).expect("copy the data directory");
    copy
}

/// Replaces node `index`'s data directory with `saved`.
fn put_back(cluster: &Cluster, index: usize, saved: &tempfile::TempDir) {
    let dir = cluster.data_dir(index);
    std::fs::remove_dir_all(dir).unwrap();
    copy_dir(saved.path(), dir).expect("put the data directory back");
}

fn engine_dir(cluster: &Cluster, index: usize) -> PathBuf {
    cluster.data_dir(index).join(cluster.engine())
}

fn files_of(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.is_file())
        .collect()
}

fn file_name(path: &Path) -> String {
    path.file_name().unwrap().to_string_lossy().into_owned()
}

fn file_starting(dir: &Path, prefix: &str) -> PathBuf {
    files_of(dir)
        .into_iter()
        .find(|path| file_name(path).starts_with(prefix))
        .unwrap_or_else(|| panic!("no {prefix} file in {}", dir.display()))
}

/// When a node refuses its data directory.
#[derive(PartialEq)]
enum Refused {
    /// Before it serves anything.
    AtStart,
    /// Once a peer that knew it shows it lost its state: it serves (no
    /// API, for it has no leader) until the first peer request.
    ByPeers,
}

/// Starts node `index` and expects it to refuse its data directory:
/// returns what it logged on that start.
async fn refused_start(cluster: &Cluster, index: usize, when: Refused) -> String {
    cluster.start_node(index);
    let status = match cluster.wait_for_exit(index, REFUSAL_WAIT_MAX).await {
        Some(status) => status,
        None => {
            cluster.kill(index);
            panic!(
                "node {} still runs {REFUSAL_WAIT_MAX:?} after starting on a damaged directory:\n{}",
                cluster.node_id(index),
                cluster.log(index)
            );
        }
    };
    let log = cluster.log(index);
    let this_start = log
        .rsplit("===== harness: start #")
        .next()
        .unwrap_or_default()
        .to_string();
    assert_eq!(
        status.code(),
        Some(EXIT_DATA_DIR_REFUSED),
        "node {} exits with status {EXIT_DATA_DIR_REFUSED}:\n{this_start}",
        cluster.node_id(index)
    );
    if when == Refused::AtStart {
        assert!(
            !this_start.contains("node serving"),
            "a refused node never serves:\n{this_start}"
        );
    }
    this_start
}

/// Runs `serve` as node `id` of `engine` on `data_dir` and expects it to
/// refuse the directory; returns what it printed.
fn refused_direct(cluster: &Cluster, id: u64, engine: &str, data_dir: &Path) -> String {
    let port = quorumlock_testkit::cluster::free_ports(1).unwrap()[0];
    let peers: Vec<String> = (0..cluster.len())
        .map(|index| match cluster.node_id(index) == id {
            true => format!("{id}=127.0.0.1:{port}"),
            false => format!("{}={}", cluster.node_id(index), cluster.addr(index)),
        })
        .collect();
    let output = Command::new(env!("CARGO_BIN_EXE_quorumlock"))
        .args([
            "serve",
            "--id",
            &id.to_string(),
            "--listen",
            &format!("127.0.0.1:{port}"),
        ])
        .args(["--peers", &peers.join(","), "--engine", engine, "--data-dir"])
        .arg(data_dir)
        .output()
        .expect("run serve");
    let said = String::from_utf8_lossy(&output.stderr).into_owned();
    assert_eq!(
        output.status.code(),
        Some(EXIT_DATA_DIR_REFUSED),
        "serve --id {id} --engine {engine} refuses {}:\n{said}",
        data_dir.display()
    );
    said
}

fn assert_names(said: &str, needles: &[&str]) {
    for needle in needles {
        assert!(said.contains(needle), "the refusal names {needle:?}:\n{said}");
    }
}

/// The two running nodes still grant a new lock.
async fn still_serves(cluster: &Cluster, session: Key, lock: &str) {
    let client = cluster.leader_client().await;
    let token = acquire_granted(&client, session, lock, 0).await;
    release(&client, session, lock, token).await.expect("release");
}
