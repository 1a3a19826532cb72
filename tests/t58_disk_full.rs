//! t58: a storage failure is fail-stop.
//!
//! A follower's data directory is moved onto a small tmpfs the test mounts,
//! which is then filled. Under a stream of fenced writes the follower's next
//! synced write fails with "No space left on device": the node must log the
//! cause once and exit with status 5 — never stay up with a dead engine —
//! while the other two nodes keep serving. Once space is freed the node
//! starts again on the same directory, rejoins and ends with the same state
//! as the others.
//!
//! Mounting a tmpfs needs root (as `./x test` runs in CI); without it the
//! test fails and says so rather than pass without checking anything.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::*;

engine_tests!(check_a_full_disk_stops_the_node_which_rejoins_once_space_is_freed);

/// Size of the small filesystem.
const SMALL_FS_BYTES: u64 = 48 << 20;
/// Value written per fenced put while the disk fills.
const VALUE_BYTES: usize = 64 << 10;
/// Longest time the node may keep running once its disk is full.
const EXIT_WAIT_MAX: Duration = Duration::from_secs(90);
/// The exit status of `serve` when the node's storage failed.
const EXIT_STORAGE_FAILED: i32 = 5;

/// A tmpfs mounted for the test, unmounted when dropped.
struct SmallFs {
    path: std::path::PathBuf,
}

impl SmallFs {
    fn mount(path: &Path) -> SmallFs {
        std::fs::create_dir_all(path).expect("create the mount point");
        let output = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={SMALL_FS_BYTES}")])
            .arg("tmpfs")
            .arg(path)
            .output()
            .expect("run mount");
        assert!(
            output.status.success(),
            "mounting a {SMALL_FS_BYTES}-byte tmpfs at {} failed (this test needs root): {}",
            path.display(),
            String::from_utf8_lossy(&output.stderr).trim()
        );
        SmallFs {
            path: path.to_path_buf(),
        }
    }

    /// Writes a file until the filesystem is full.
    fn fill(&self) -> std::path::PathBuf {
        use std::io::Write;
        let filler = self.path.join("filler");
        let mut file = std::fs::File::create(&filler).expect("create the filler");
        let chunk = vec![0u8; 1 << 20];
        loop {
            if file.write_all(&chunk).is_err() {
                break;
            }
        }
        // Whatever is left is smaller than a chunk: fill it byte-wise.
        while file.write_all(&[0u8; 4096]).is_ok() {}
        let _ = file.sync_all();
        filler
    }
}

impl Drop for SmallFs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.path).status();
    }
}

/// Copies a directory tree.
fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("create the copy's directory");
    for entry in std::fs::read_dir(from).expect("read the data directory") {
        let entry = entry.expect("a directory entry");
        let target = to.join(entry.file_name());
        if entry.file_type().expect("an entry's type").is_dir() {
            copy_tree(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).expect("copy a data file");
        }
    }
}

async fn check_a_full_disk_stops_the_node_which_rejoins_once_space_is_freed(engine: &str) {
    let cluster = Cluster::start(engine, 3).await;
    let follower = cluster.follower_index().await;
    let scratch = tempfile::tempdir().expect("a scratch directory");
    let small = SmallFs::mount(&scratch.path().join("small"));

    // The follower's data moves onto the small filesystem; its data
    // directory becomes a link there.
    let status = cluster.terminate(follower, Duration::from_secs(20)).await;
    assert!(status.success(), "a clean stop first: {status}");
    let data_dir = cluster.data_dir(follower).to_path_buf();
    let moved = small.path.join("data");
    copy_tree(&data_dir, &moved);
    std::fs::remove_dir_all(&data_dir).expect("remove the original data directory");
    std::os::unix::fs::symlink(&moved, &data_dir).expect("link the data directory to the small filesystem");
    cluster.start_node(follower);
    wait_until("the moved follower serves", CONDITION_WAIT, || async {
        let status = cluster
            .status(follower)
            .await
            .map_err(|error| format!("{error:#}"))?;
        if status.leader_id != 0 {
            Ok(())
        } else {
            Err("no leader known".to_string())
        }
    })
    .await;

    // Through the leader: the follower's connection ends when it exits.
    let client = cluster.leader_client().await;
    let session = cluster.session(60_000).await;
    let lock = "t58/lock";
    let token = acquire_granted(&client, session.key, lock, 0).await;
    let filler = small.fill();
    let value = vec![7u8; VALUE_BYTES];
    let mut writes = 0u64;
    let deadline = std::time::Instant::now() + EXIT_WAIT_MAX;
    let exit = loop {
        if let Some(status) = cluster.wait_for_exit(follower, Duration::ZERO).await {
            break status;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the follower kept running {EXIT_WAIT_MAX:?} after its disk filled; its log:\n{}",
            cluster.log(follower)
        );
        // The two healthy nodes are a majority: every write succeeds.
        retry_unavailable("Put while the follower's disk is full", || {
            put(
                &client,
                format!("t58/key-{}", writes % 16),
                &value,
                fence(lock, token),
                session.key,
            )
        })
        .await
        .unwrap_or_else(|status| panic!("a write failed while the follower's disk was full: {status:?}"));
        writes += 1;
    };
    let log = cluster.log(follower);
    assert_eq!(
        exit.code(),
        Some(EXIT_STORAGE_FAILED),
        "the follower exits with status {EXIT_STORAGE_FAILED} on a full disk, not {exit}; its log:\n{log}"
    );
    assert!(
        log.to_lowercase().contains("no space left on device"),
        "the log names the cause; its log:\n{log}"
    );
    assert_eq!(
        log.matches("the node's storage failed").count(),
        1,
        "the failure is reported once; its log:\n{log}"
    );

    // The others still serve.
    put(
        &client,
        "t58/after",
        "still served",
        fence(lock, token),
        session.key,
    )
    .await
    .expect("the two healthy nodes still serve");

    // Space is freed: the node starts on the same directory and rejoins.
    std::fs::remove_file(&filler).expect("free the space");
    cluster.start_node(follower);
    let leader = cluster.wait_for_leader().await;
    let committed = cluster
        .status(leader)
        .await
        .expect("the leader's status")
        .commit_index;
    wait_until("the follower rejoins and catches up", CONDITION_WAIT, || async {
        let status = cluster
            .status(follower)
            .await
            .map_err(|error| format!("{error:#}"))?;
        if status.applied_index >= committed {
            Ok(())
        } else {
            Err(format!("applied {} of {committed}", status.applied_index))
        }
    })
    .await;
    cluster
        .wait_for_one_state("every node holds the same state")
        .await;
    let read = get(&client, "t58/after").await.expect("Get");
    assert_eq!(read.value, b"still served");
    assert!(
        writes > 0,
        "the follower's disk filled before any write: nothing was tested"
    );
}
