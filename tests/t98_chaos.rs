//! `quorumlock chaos` as a user runs it: a short round per engine against a
//! real process cluster, with every kind of fault injected (data
//! directories damaged too, `--disk-faults`), no violation found by any
//! checker — every damaged directory refused — and the exit code saying
//! so; and a round per engine with `--membership`, in which nodes are
//! added, promoted, removed and replaced between the faults.

use std::process::{Command, Output};
use std::sync::Mutex;
use std::time::Duration;

/// Long enough for the nemesis to play every kind of fault once (seven
/// kinds; each round lasts at most about 4 s with a 1 s TTL, but a disk
/// fault that repairs from peers takes a few seconds more).
const ROUND: &str = "40s";
/// Long enough for the membership nemesis to make every kind of change at
/// least once: its turns alternate with the faults, and a change that
/// starts a node takes a few seconds.
const MEMBERSHIP_ROUND: &str = "60s";
/// Bound on one whole run: start, the round, the final restart and checks.
const RUN_MAX: Duration = Duration::from_secs(150);
/// Bound on a run with `--membership`: a change refused while another is
/// in progress is retried for up to 20 s.
const MEMBERSHIP_RUN_MAX: Duration = Duration::from_secs(360);
/// One run at a time: two clusters under faults on two cores would mostly
/// test the machine's scheduler.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn chaos(args: &[&str]) -> (Output, String) {
    chaos_within(args, RUN_MAX)
}

fn chaos_within(args: &[&str], run_max: Duration) -> (Output, String) {
    let _turn = ONE_AT_A_TIME
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let mut child = Command::new(env!("CARGO_BIN_EXE_quorumlock"))
        .arg("chaos")
        .args(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start quorumlock chaos");
    let pid = child.id();
    // A watchdog, so a hung run fails the test instead of stalling CI.
    let (done, finished) = std::sync::mpsc::channel::<()>();
    let watchdog = std::thread::spawn(move || {
        if finished.recv_timeout(run_max).is_err() {
            let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
        }
    });
    let output = {
        let stdout = child.stdout.take().unwrap();
        let stderr = child.stderr.take().unwrap();
        let reader = std::thread::spawn(move || std::io::read_to_string(stderr).unwrap_or_default());
        let out = std::io::read_to_string(stdout).unwrap_or_default();
        let err = reader.join().unwrap();
        let status = child.wait().expect("wait for quorumlock chaos");
        Output {
            status,
            stdout: out.into_bytes(),
            stderr: err.into_bytes(),
        }
    };
    let _ = done.send(());
    watchdog.join().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    (output, stdout)
}

/// The count the summary's `faults:` line gives each kind.
fn faults(stdout: &str) -> Vec<(String, u64)> {
    let line = stdout
        .lines()
        .find_map(|line| line.strip_prefix("faults: "))
        .unwrap_or_else(|| panic!("no faults line in:\n{stdout}"));
    line.split_whitespace()
        .filter_map(|field| field.split_once('='))
        .map(|(kind, count)| (kind.to_string(), count.parse().expect("a count")))
        .collect()
}

/// Asserts that the run `what` exited 0 and its summary ends with no
/// violation; its stderr.
fn assert_no_violation(what: &str, output: &Output, stdout: &str) -> String {
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(
        output.status.success(),
        "{what} failed ({}):\n{stdout}\n{stderr}",
        output.status
    );
    assert_eq!(
        stdout.lines().last(),
        Some("violations: 0"),
        "the summary ends with the violation count:\n{stdout}"
    );
    stderr
}

fn assert_clean_round(engine: &str, nodes: &str, seed: &str) {
    let (output, stdout) = chaos(&[
        "--engine",
        engine,
        "--nodes",
        nodes,
        "--duration",
        ROUND,
        "--seed",
        seed,
        "--ttl",
        "1s",
        "--disk-faults",
    ]);
    let stderr = assert_no_violation(&format!("chaos {engine} with {nodes} nodes"), &output, &stdout);
    let injected = faults(&stdout);
    let kinds = quorumlock_testkit::chaos::nemesis::FAULT_KINDS
        .into_iter()
        .chain([quorumlock_testkit::chaos::nemesis::DISK_KIND]);
    for kind in kinds {
        assert!(
            count_of(&injected, kind) >= 1,
            "no {kind} fault was injected:\n{stdout}\n{stderr}"
        );
    }
    assert!(
        stdout.contains(&format!("seed: {seed}")),
        "the seed is reported:\n{stdout}"
    );
    let ops_line = stdout
        .lines()
        .find(|line| line.starts_with("ops: "))
        .expect("an ops line");
    let ok: u64 = ops_line
        .split("(ok ")
        .nth(1)
        .and_then(|rest| rest.split(',').next())
        .and_then(|count| count.parse().ok())
        .expect("an ok count");
    assert!(ok > 0, "the workers got operations through: {ops_line}");
}

/// The count of `kind` on the summary's `faults:` line.
fn count_of(injected: &[(String, u64)], kind: &str) -> u64 {
    injected
        .iter()
        .find(|(name, _)| name == kind)
        .map_or(0, |(_, count)| *count)
}

fn assert_clean_membership_round(engine: &str, seed: &str) {
    let (output, stdout) = chaos_within(
        &[
            "--engine",
            engine,
            "--nodes",
            "3",
            "--duration",
            MEMBERSHIP_ROUND,
            "--seed",
            seed,
            "--ttl",
            "1s",
            "--membership",
        ],
        MEMBERSHIP_RUN_MAX,
    );
    let stderr = assert_no_violation(&format!("chaos {engine} --membership"), &output, &stdout);
    let injected = faults(&stdout);
    for kind in quorumlock_testkit::chaos::membership::MEMBERSHIP_KINDS {
        assert!(
            count_of(&injected, kind) >= 1,
            "no {kind} change was logged:\n{stdout}\n{stderr}"
        );
    }
    // Logged is not enough: each kind of change was also made.
    let made = stdout
        .lines()
        .find_map(|line| line.strip_prefix("membership changes made/tried: "))
        .unwrap_or_else(|| panic!("no membership line in:\n{stdout}"));
    for field in made.split_whitespace() {
        let (kind, counts) = field.split_once('=').expect("kind=made/tried");
        let (done, _) = counts.split_once('/').expect("made/tried");
        assert!(
            done.parse::<u64>().expect("a count") >= 1,
            "no {kind} change was made ({made}):\n{stdout}\n{stderr}"
        );
    }
}

#[test]
fn raft_survives_every_kind_of_fault_with_no_violation() {
    assert_clean_round("raft", "3", "98");
}

#[test]
fn paxos_survives_every_kind_of_fault_with_no_violation() {
    assert_clean_round("paxos", "3", "98");
}

#[test]
fn raft_changes_membership_under_faults_with_no_violation() {
    assert_clean_membership_round("raft", "59");
}

#[test]
fn paxos_changes_membership_under_faults_with_no_violation() {
    assert_clean_membership_round("paxos", "59");
}

#[test]
fn a_bad_flag_is_refused_before_anything_starts() {
    let (output, _) = chaos(&["--nodes", "4", "--duration", "5s"]);
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("--nodes must be 3 or 5"), "{stderr}");
}
