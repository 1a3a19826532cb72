//! `quorumlock demo` as a user runs it: against its own cluster (with the
//! leader kill) and against a running one (as docker compose's `demo`
//! profile does), exiting 0 only when every expectation held.

mod common;

use std::process::Output;
use std::time::Duration;

use common::Cluster;
use tokio::process::Command;

/// Bound on one demo run, cluster start included.
const DEMO_MAX: Duration = Duration::from_secs(240);

/// Runs `demo ARGS`; a demo that starts its own cluster holds a cluster
/// slot while it runs, as the tests' own clusters do.
async fn demo(args: &[&str]) -> Output {
    let _slot = match args.contains(&"--endpoints") {
        true => None,
        false => Some(common::cluster_slot().await),
    };
    let mut command = Command::new(env!("CARGO_BIN_EXE_quorumlock"));
    command.arg("demo").args(args).kill_on_drop(true);
    tokio::time::timeout(DEMO_MAX, command.output())
        .await
        .unwrap_or_else(|_| panic!("demo {args:?} did not finish within {DEMO_MAX:?}"))
        .expect("run quorumlock demo")
}

fn assert_passed(output: &Output) -> String {
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "demo failed ({}):\n{stdout}\n{stderr}",
        output.status
    );
    for expected in [
        "client A freezes: SIGSTOP",
        "the cluster refused A's write: FAILED_PRECONDITION",
        "client A's own lost-lock signal fired",
        "storage still holds B's value",
        "demo passed",
    ] {
        assert!(
            stdout.contains(expected),
            "the demo never said {expected:?}:\n{stdout}"
        );
    }
    stdout
}

/// The tokens the last line names: A's < B's < C's.
fn tokens(stdout: &str) -> Vec<u64> {
    let line = stdout
        .lines()
        .find(|line| line.starts_with("demo passed"))
        .expect("a closing line");
    let inside = line.split("(tokens ").nth(1).expect("tokens are listed");
    inside
        .split(';')
        .next()
        .unwrap()
        .split(" < ")
        .map(|token| token.trim().parse().expect("a token"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_on_its_own_raft_cluster_refuses_the_paused_write_and_survives_the_leader_kill() {
    let output = demo(&["--engine", "raft"]).await;
    let stdout = assert_passed(&output);
    assert!(stdout.contains("killed the leader"), "{stdout}");
    assert!(stdout.contains("is the new leader"), "{stdout}");
    let tokens = tokens(&stdout);
    assert_eq!(tokens.len(), 3, "{stdout}");
    assert!(tokens.windows(2).all(|pair| pair[0] < pair[1]), "{tokens:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_against_a_running_cluster_plays_every_step_but_the_leader_kill() {
    let cluster = Cluster::start("raft", 3).await;
    let endpoints = (0..cluster.len())
        .map(|index| cluster.addr(index).to_string())
        .collect::<Vec<_>>()
        .join(",");
    let output = demo(&["--endpoints", &endpoints]).await;
    let stdout = assert_passed(&output);
    assert!(stdout.contains("skipping the leader kill"), "{stdout}");
    assert!(!stdout.contains("killed the leader"), "{stdout}");
    assert_eq!(
        cluster.running().len(),
        3,
        "the demo leaves a cluster it does not own alone"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_with_tls_plays_on_its_own_paxos_cluster_over_mutual_tls_and_plaintext_is_turned_away() {
    let output = demo(&["--tls", "--engine", "paxos"]).await;
    let stdout = assert_passed(&output);
    assert!(stdout.contains("over mutual TLS"), "{stdout}");
    assert!(
        stdout.contains("a plaintext client is turned away"),
        "the demo's own check that its cluster refuses plaintext: {stdout}"
    );
    assert!(stdout.contains("is the new leader"), "{stdout}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_tls_flags_are_refused_where_they_cannot_apply() {
    for args in [
        &["--tls", "--endpoints", "127.0.0.1:1"][..],
        &["--cacert", "ca.pem"][..],
        &["--endpoints", "127.0.0.1:1", "--cert", "c.pem", "--key", "k.pem"][..],
    ] {
        let output = demo(args).await;
        assert!(!output.status.success(), "demo {args:?} ran");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            stderr.contains("cannot be used with") || stderr.contains("required arguments were not provided"),
            "demo {args:?} says which flags clash: {stderr}"
        );
    }
}
