//! t57: restoring a backup through the real path. A 3-process cluster of one
//! engine holds a held lock with a queued waiter and a fenced value, and
//! serves a background lock workload while `quorumlock snapshot save` runs;
//! the cluster is then killed, and `quorumlock snapshot restore` writes the
//! data directories of a new 3-process cluster of the *other* engine. The
//! new cluster starts with exactly the backup's state (sessions, holders,
//! queues, values, counters; only the session budgets are reset to a full
//! TTL), its grants carry larger tokens than any in the backup, and the old
//! holder, reconnecting with its id and secret within its TTL, still holds
//! its lock and can write under it. A damaged file and a used data
//! directory are refused, writing nothing.

mod common;

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::pki::{exe, run};
use common::{acquire, acquire_granted, assert_held, fence, get, put, release, Cluster, KeepAlive};
use quorumlock_core::backup::read_backup;
use quorumlock_core::lock::LockState;
use tokio::process::Command;

engine_tests!(check_a_backup_restored_into_the_other_engine_serves_the_same_locks_and_values,);

/// Long enough for the source to be killed, the restore to run and the new
/// cluster to elect a leader before the holder reconnects.
const TTL_MS: u64 = 30_000;
const LOCK: &str = "jobs/nightly";
const VALUE_KEY: &str = "jobs/nightly/state";

fn other_engine(engine: &str) -> &'static str {
    match engine {
        "raft" => "paxos",
        "paxos" => "raft",
        other => panic!("unknown engine {other}"),
    }
}

/// `quorumlock snapshot restore`, run synchronously (it runs before a node
/// of the new cluster starts).
fn restore(file: &Path, engine: &str, id: u64, data_dir: &Path, peers: &str) -> (bool, String) {
    let output = std::process::Command::new(exe())
        .args(["snapshot", "restore"])
        .arg(file)
        .arg("--data-dir")
        .arg(data_dir)
        .args(["--id", &id.to_string(), "--peers", peers, "--engine", engine])
        .output()
        .expect("run quorumlock snapshot restore");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), text)
}

async fn save(cluster: &Cluster, file: &Path) -> Vec<u8> {
    let (saved, output) = run(Command::new(exe())
        .arg("snapshot")
        .arg("save")
        .arg(file)
        .args(["--endpoints", &cluster.urls().join(",")]))
    .await;
    assert!(saved, "snapshot save failed: {output}");
    std::fs::read(file).unwrap()
}

/// A workload on locks other than [`LOCK`] until `stop` is set: each round
/// opens a session, takes a lock, writes under it and releases it.
fn background_load(
    urls: Vec<String>,
    stop: Arc<AtomicBool>,
    done: Arc<AtomicU64>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut round = 0u64;
        while !stop.load(Ordering::Relaxed) {
            round += 1;
            let url = &urls[round as usize % urls.len()];
            let Ok(channel) = common::connect(url).await else {
                continue;
            };
            let client = quorumlock_proto::v1::lock_client::LockClient::new(channel);
            let Ok(opened) = common::open_session(&client, TTL_MS).await else {
                continue;
            };
            let key = common::Key::of(&opened);
            let lock = format!("load/{}", round % 4);
            let Ok(granted) = acquire(&client, key, &lock, 0).await else {
                continue;
            };
            if granted.acquired {
                let _ = put(
                    &client,
                    format!("{lock}/n"),
                    round.to_string(),
                    fence(&lock, granted.token),
                    key,
                )
                .await;
                let _ = release(&client, key, &lock, granted.token).await;
                done.fetch_add(1, Ordering::Relaxed);
            }
        }
    })
}

async fn check_a_backup_restored_into_the_other_engine_serves_the_same_locks_and_values(engine: &str) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("backup.qlsnap");

    // The source cluster: a holder with a fenced value, a queued waiter, and
    // a workload that keeps committing while the backup is taken.
    let source = Cluster::start(engine, 3).await;
    let mut holder = source.session(TTL_MS).await;
    let mut waiter = source.session(TTL_MS).await;
    let client = source.leader_client().await;
    let token = acquire_granted(&client, holder.key, LOCK, 0).await;
    put(&client, VALUE_KEY, "running", fence(LOCK, token), holder.key)
        .await
        .unwrap();
    let queued = {
        let client = client.clone();
        let key = waiter.key;
        tokio::spawn(async move { acquire(&client, key, LOCK, 120_000).await })
    };
    common::wait_for_queue_length(&client, LOCK, 1).await;
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let load = background_load(source.urls(), stop.clone(), done.clone());
    common::wait_until("the workload to commit", Duration::from_secs(30), || async {
        match done.load(Ordering::Relaxed) {
            0 => Err("no round yet".to_string()),
            _ => Ok(()),
        }
    })
    .await;
    let bytes = save(&source, &file).await;
    let rounds_before_save_returned = done.load(Ordering::Relaxed);
    stop.store(true, Ordering::Relaxed);
    load.await.unwrap();
    assert!(rounds_before_save_returned > 0);

    let (header, mut saved) = read_backup(&bytes).expect("the saved backup checks out");
    assert_eq!(header.engine, engine);
    let view = saved.describe(LOCK);
    assert_eq!(
        view.holder.map(|(session, held)| (session.get(), held.get())),
        Some((holder.id, token))
    );
    assert_eq!(view.queue_len, 1);

    // The old cluster is gone; nothing of it is reused but the file.
    holder.stop_keepalive().await;
    waiter.stop_keepalive().await;
    source.stop_all();
    queued.abort();
    drop(source);

    // Refusals first: a damaged file and a used directory write nothing.
    let damaged = dir.path().join("damaged.qlsnap");
    let mut flipped = bytes.clone();
    let middle = bytes.len() - (header.body_bytes as usize) / 2;
    flipped[middle] ^= 0x01;
    std::fs::write(&damaged, &flipped).unwrap();
    let target = dir.path().join("never-written");
    let peers = "1=127.0.0.1:1,2=127.0.0.1:2,3=127.0.0.1:3";
    let (restored, output) = restore(&damaged, other_engine(engine), 1, &target, peers);
    assert!(!restored, "a damaged backup was restored: {output}");
    assert!(
        output.contains("refused") && output.contains("damaged"),
        "{output}"
    );
    assert!(!target.exists(), "a refused restore created {}", target.display());
    let used = dir.path().join("used");
    std::fs::create_dir(&used).unwrap();
    std::fs::write(used.join("keep"), b"an operator's file").unwrap();
    let (restored, output) = restore(&file, other_engine(engine), 1, &used, peers);
    assert!(!restored, "a restore wrote into a used directory: {output}");
    assert!(output.contains("not empty"), "{output}");
    assert_eq!(
        std::fs::read_dir(&used).unwrap().count(),
        1,
        "the used directory is untouched"
    );

    // The new cluster, of the other engine, from the same file.
    let new_engine = other_engine(engine);
    let restored = Cluster::start_prepared(new_engine, 3, &[], &|id, data_dir, peers| {
        let (restored, output) = restore(&file, new_engine, id, data_dir, peers);
        assert!(restored, "restore of node {id} failed: {output}");
        assert!(
            output.contains(&format!("tokens continue from {}", header.next_token)),
            "{output}"
        );
    })
    .await;

    // Exactly the backup's state, with full budgets.
    let again = save(&restored, &dir.path().join("restored.qlsnap")).await;
    let (restored_header, mut restored_state) = read_backup(&again).unwrap();
    assert_eq!(restored_header.engine, new_engine);
    assert!(
        restored_header.index >= header.index,
        "{restored_header:?} after {header:?}"
    );
    saved.restore_full_budgets();
    restored_state.restore_full_budgets();
    assert!(
        restored_state == saved,
        "the restored cluster's state differs from the backup's: {:?} vs {:?}",
        summary(&restored_state),
        summary(&saved)
    );

    // The old holder reconnects with its id and secret and still holds.
    let client = restored.leader_client().await;
    let keepalive = KeepAlive::spawn(restored.urls(), holder.key, TTL_MS);
    assert_held(&client, LOCK, holder.id, token, 1).await;
    let value = get(&client, VALUE_KEY).await.unwrap();
    assert_eq!(value.value, b"running");
    put(&client, VALUE_KEY, "resumed", fence(LOCK, token), holder.key)
        .await
        .expect("the holder writes under its lock after the restore");

    // Grants after the restore carry tokens above every token in the backup.
    let newcomer = restored.session(TTL_MS).await;
    let fresh = acquire_granted(&client, newcomer.key, "jobs/other", 0).await;
    assert!(
        fresh >= header.next_token,
        "token {fresh} after a backup whose next token is {}",
        header.next_token
    );
    assert!(fresh > token);
    // The holder's release hands the lock to the queued waiter of the old
    // cluster with a larger token still.
    release(&client, holder.key, LOCK, token).await.unwrap();
    let described = common::describe_ok(&client, LOCK).await;
    assert!(described.held, "{described:?}");
    assert_eq!(described.holder_session_id, waiter.id);
    assert!(described.token > fresh, "{described:?} after token {fresh}");
    keepalive.stop().await;
}

/// A short description of a state for failure messages.
fn summary(state: &LockState) -> String {
    format!(
        "{} sessions, next token {:?}, {:?}",
        state.session_count(),
        state.next_token(),
        state.describe(LOCK)
    )
}
