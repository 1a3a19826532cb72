//! t56: backups through the real path. A 3-process cluster holds sessions,
//! a held lock with a queued waiter, and a fenced value; `quorumlock
//! snapshot save`, pointed at a follower first, finds the leader and writes
//! a backup file whose state is exactly that (holder, token, queue, value,
//! counters); `snapshot inspect` prints and checks it; and a damaged or
//! truncated file is refused naming what is wrong, as is saving over an
//! existing file.

mod common;

use std::path::Path;
use std::time::Duration;

use common::pki::{exe, run};
use common::Cluster;
use quorumlock_client::{node_status, Client, ClientConfig};
use quorumlock_core::backup::read_backup;
use tokio::process::Command;

engine_tests!(check_a_saved_snapshot_holds_exactly_the_clusters_locks_queues_and_values,);

/// How long the queued waiter may wait; it is never granted in the test.
const WAITER_WAIT: Duration = Duration::from_secs(120);

fn cli(args: &[&str], endpoints: &str) -> Command {
    let mut command = Command::new(exe());
    command.args(args).args(["--endpoints", endpoints]);
    command
}

async fn inspect(file: &Path) -> (bool, String) {
    run(Command::new(exe()).arg("snapshot").arg("inspect").arg(file)).await
}

async fn check_a_saved_snapshot_holds_exactly_the_clusters_locks_queues_and_values(engine: &str) {
    let cluster = Cluster::start(engine, 3).await;
    let config = ClientConfig {
        connect_wait_max: Duration::from_secs(10),
        ..ClientConfig::default()
    };
    let client = Client::connect_with(cluster.urls(), config.clone())
        .await
        .unwrap();
    let holder = client.session(Duration::from_secs(60)).await.unwrap();
    let guard = holder.lock("jobs/nightly").await.unwrap();
    client.put("jobs/nightly/state", "running", &guard).await.unwrap();
    let waiter = client.session(Duration::from_secs(60)).await.unwrap();
    let waiter_id = waiter.id();
    let waiting = tokio::spawn(async move {
        let granted = waiter.lock_timeout("jobs/nightly", WAITER_WAIT).await;
        (waiter, granted)
    });
    let lock_client =
        quorumlock_proto::v1::lock_client::LockClient::new(common::connect(&cluster.url(0)).await.unwrap());
    common::wait_for_queue_length(&lock_client, "jobs/nightly", 1).await;

    // A follower first: the CLI follows its hint to the leader.
    let mut follower_first = Vec::new();
    for index in 0..cluster.len() {
        let status = node_status(&cluster.url(index), &config).await.unwrap();
        match status.is_leader {
            true => follower_first.push(cluster.url(index)),
            false => follower_first.insert(0, cluster.url(index)),
        }
    }
    let endpoints = follower_first.join(",");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("backup.qlsnap");
    let file_arg = file.display().to_string();
    let (saved, output) = run(&mut cli(&["snapshot", "save", &file_arg], &endpoints)).await;
    assert!(saved, "snapshot save failed: {output}");
    assert!(output.contains("saved"), "{output}");
    assert!(
        !dir.path().join("backup.qlsnap.part").exists(),
        "the partial file is gone"
    );

    let bytes = std::fs::read(&file).unwrap();
    let (header, state) = read_backup(&bytes).expect("the saved file checks out");
    assert_eq!(header.engine, engine);
    assert!(header.index > 0, "{header:?}");
    let view = state.describe("jobs/nightly");
    assert_eq!(
        view.holder,
        Some((holder.id(), guard.token())),
        "the holder and its token"
    );
    assert_eq!(view.queue_len, 1, "the waiter is queued");
    assert!(
        state
            .session(waiter_id)
            .is_some_and(|session| session.waiting.contains("jobs/nightly")),
        "the waiter's place is the waiter's"
    );
    let entry = state.get("jobs/nightly/state").expect("the fenced value");
    assert_eq!(entry.value, b"running");
    assert_eq!(entry.written_by.token, guard.token());
    assert_eq!(header.sessions, 2);
    assert_eq!(header.next_token, guard.token().get() + 1);

    let (checked, printed) = inspect(&file).await;
    assert!(checked, "inspect refused a good file: {printed}");
    for expected in [
        "sessions           2",
        "locks              1",
        "keys               1",
        "checked:",
    ] {
        assert!(
            printed.contains(expected),
            "inspect never printed {expected:?}:\n{printed}"
        );
    }

    // Saving over a file is refused and leaves it alone.
    let (again, output) = run(&mut cli(&["snapshot", "save", &file_arg], &endpoints)).await;
    assert!(!again, "a save replaced an existing file: {output}");
    assert!(output.contains("exists"), "{output}");
    assert_eq!(std::fs::read(&file).unwrap(), bytes);

    // A damaged byte in the body, and a cut file, are refused by name.
    let damaged = dir.path().join("damaged.qlsnap");
    let mut flipped = bytes.clone();
    let middle = bytes.len() - (header.body_bytes as usize) / 2;
    flipped[middle] ^= 0x40;
    std::fs::write(&damaged, &flipped).unwrap();
    let (accepted, printed) = inspect(&damaged).await;
    assert!(!accepted, "a damaged backup was accepted");
    assert!(printed.contains("body is damaged"), "{printed}");
    let cut = dir.path().join("cut.qlsnap");
    std::fs::write(&cut, &bytes[..bytes.len() - 10]).unwrap();
    let (accepted, printed) = inspect(&cut).await;
    assert!(!accepted, "a truncated backup was accepted");
    assert!(printed.contains("truncated"), "{printed}");

    // The cluster served on, untouched: the holder still holds.
    assert!(!guard.is_lost());
    let held_token = guard.token();
    guard.release().await.unwrap();
    let (waiter, granted) = waiting.await.unwrap();
    let granted = granted
        .unwrap()
        .expect("the waiter is granted once the holder releases");
    assert!(granted.token() > held_token, "tokens keep rising after a backup");
    drop(granted);
    waiter.close().await.unwrap();
    holder.close().await.unwrap();
}
