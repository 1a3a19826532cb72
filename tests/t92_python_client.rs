//! t92: the API serves other languages.
//!
//! Runs `tests/python/lock_client_check.py` as a process against a real
//! cluster. The script generates its stubs from `crates/quorumlock-proto/proto/` with grpcio-tools
//! at run time and plays the fencing scenario (acquire, write with the token,
//! read back, a stale token refused with FAILED_PRECONDITION, release, close).
//! The test asserts the script's exit status and its output, then checks from
//! Rust that the cluster holds what the script says it wrote.
//!
//! The test fails, naming the pip packages, when python3, grpcio,
//! grpcio-tools or grpcio-status is missing: `./x test` installs them, so a skip would
//! only hide a broken setup.

mod common;

use std::process::Stdio;
use std::time::Duration;

use common::*;

/// Bound on the whole script, stub generation included.
const SCRIPT_TIME_MAX: Duration = Duration::from_secs(120);
const LOCK: &str = "t92/python-lock";
const KEY: &str = "t92/python-key";

engine_tests!(check_python_client_is_fenced_like_any_client);

/// The number after `prefix` on the output line that starts with `line_start`.
fn number_after(output: &str, line_start: &str, prefix: &str) -> u64 {
    let line = output
        .lines()
        .find(|line| line.starts_with(line_start))
        .unwrap_or_else(|| panic!("the script printed no line starting {line_start:?}:\n{output}"));
    let rest = &line[line
        .find(prefix)
        .unwrap_or_else(|| panic!("{line:?} has no {prefix:?}"))
        + prefix.len()..];
    numbers_in(rest)
        .first()
        .copied()
        .unwrap_or_else(|| panic!("no number after {prefix:?} in {line:?}"))
}

async fn check_python_client_is_fenced_like_any_client(engine: &str) {
    require_python_packages();
    let cluster = Cluster::start(engine, 3).await;
    let endpoints = (0..cluster.len())
        .map(|index| cluster.addr(index).to_string())
        .collect::<Vec<_>>()
        .join(",");

    let script = repo_path("tests/python/lock_client_check.py");
    let child = tokio::process::Command::new("python3")
        .arg(&script)
        .args(["--endpoints", &endpoints, "--lock", LOCK, "--fenced-key", KEY])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|error| panic!("spawn python3 {}: {error}", script.display()));
    let output = tokio::time::timeout(SCRIPT_TIME_MAX, child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("the Python client check ran longer than {SCRIPT_TIME_MAX:?}"))
        .expect("wait for the Python client check");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    println!("--- the Python client check's output ---\n{stdout}");
    assert!(
        output.status.success(),
        "the Python client check failed ({}):\n--- stdout ---\n{stdout}\n--- stderr ---\n{stderr}",
        output.status
    );

    for expected in [
        "generated Python stubs from ",
        "A renewed its session over KeepAlive",
        "refused: FAILED_PRECONDITION",
        "Release on A's session with a guessed secret refused: PERMISSION_DENIED",
        "Put on A's session with a guessed secret refused: PERMISSION_DENIED",
        "CloseSession on A's session with a guessed secret refused: PERMISSION_DENIED",
        "CloseSession of A without a secret refused: UNAUTHENTICATED",
        "session A closed",
        "session B closed",
        "OK: ",
    ] {
        assert!(
            stdout.contains(expected),
            "the output names {expected:?}:\n{stdout}"
        );
    }
    let token_a = number_after(&stdout, "A acquired", "token=");
    let token_b = number_after(&stdout, "B acquired", "token=");
    assert!(token_b > token_a, "B's token {token_b} exceeds A's {token_a}");

    // What the script reports is what the cluster holds.
    let client = cluster.any_client().await;
    let stored = retry_unavailable("Get", || get(&client, KEY))
        .await
        .expect("Get the key the script wrote");
    assert!(stored.found, "the script's key exists");
    assert_eq!(stored.value, b"written by B", "B's write survived A's stale one");
    assert_eq!(
        stored.written_by.map(|fence| fence.token),
        Some(token_b),
        "the stored fence is B's token"
    );
    assert_free(&client, LOCK).await;
}
