//! The `quorumlock` client subcommands, run as processes against a real
//! cluster: the scripting round trip, `lock -- CMD` with its environment and
//! exit code, `lock` stopping its command when the lock is lost to a real
//! pause, and readable errors for bad endpoints and bad flags.

mod common;

use std::path::Path;
use std::process::Output;
use std::time::Duration;

use common::{wait_until, Cluster, CONDITION_WAIT};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use quorumlock_client::Client;
use tokio::process::Command;

/// Bound on one CLI run; a hang fails the test.
const RUN_MAX: Duration = Duration::from_secs(90);
/// Exit code for "the answer is no" (not acquired, not found).
const EXIT_NO: i32 = 3;
/// Exit code of `lock` when the lock was lost.
const EXIT_LOCK_LOST: i32 = 4;

fn quorumlock(cluster: &Cluster) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_quorumlock"));
    command
        .env("QUORUMLOCK_ENDPOINTS", cluster.urls().join(","))
        .env_remove("QUORUMLOCK_LOCK")
        .env_remove("QUORUMLOCK_TOKEN")
        .env_remove("QUORUMLOCK_SESSION")
        .env_remove("QUORUMLOCK_SESSION_SECRET")
        .env_remove("RUST_LOG")
        .kill_on_drop(true);
    command
}

async fn run(command: &mut Command) -> Output {
    let output = tokio::time::timeout(RUN_MAX, command.output())
        .await
        .unwrap_or_else(|_| panic!("{command:?} did not finish within {RUN_MAX:?}"))
        .expect("run quorumlock");
    assert_no_crash(&output);
    output
}

/// Errors must be sentences, never panics or debug dumps.
fn assert_no_crash(output: &Output) {
    let stderr = String::from_utf8_lossy(&output.stderr);
    for marker in ["panicked", "RUST_BACKTRACE", "Status {", "Error {", "code: "] {
        assert!(!stderr.contains(marker), "stderr shows {marker:?}: {stderr}");
    }
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn assert_exit(what: &str, output: &Output, code: i32) {
    assert_eq!(
        output.status.code(),
        Some(code),
        "{what}: exit status {}; stdout: {}; stderr: {}",
        output.status,
        stdout(output),
        stderr(output)
    );
}

/// The value of `name=` in a `key=value` line.
fn field(line: &str, name: &str) -> u64 {
    text_field(line, name)
        .parse()
        .unwrap_or_else(|_| panic!("{name}= is not a number in {line:?}"))
}

/// The text after `name=` in a `key=value` line.
fn text_field(line: &str, name: &str) -> String {
    line.split_whitespace()
        .find_map(|part| part.strip_prefix(&format!("{name}=")))
        .unwrap_or_else(|| panic!("no {name}= in {line:?}"))
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scripting_commands_round_trip_acquire_describe_put_get_release_and_status() {
    let cluster = Cluster::start("raft", 3).await;

    let acquired = run(quorumlock(&cluster).args(["acquire", "job", "--ttl", "30s"])).await;
    assert_exit("acquire", &acquired, 0);
    let line = stdout(&acquired);
    let (session, token) = (field(&line, "session"), field(&line, "token"));
    let secret = text_field(&line, "secret");
    assert_eq!(secret.len(), 64, "the secret is 32 bytes in hex: {line:?}");
    let session_text = session.to_string();

    let described = run(quorumlock(&cluster).args(["describe", "job"])).await;
    assert_exit("describe", &described, 0);
    assert_eq!(
        stdout(&described).trim(),
        format!("held=true session={session} token={token} queue_length=0")
    );

    let refused = run(quorumlock(&cluster).args(["acquire", "job", "--wait", "0s"])).await;
    assert_exit("a second acquire while held", &refused, EXIT_NO);
    assert!(
        stderr(&refused).contains(&format!("held by session {session} with token {token}")),
        "{}",
        stderr(&refused)
    );

    let token_text = token.to_string();
    // The session's secret goes in the environment, not on the command line.
    let put = run(quorumlock(&cluster)
        .args(["put", "report", "v1", "--lock", "job", "--token", &token_text])
        .args(["--session", &session_text])
        .env("QUORUMLOCK_SESSION_SECRET", &secret))
    .await;
    assert_exit("put", &put, 0);

    // Someone who read the session and the token from `describe` but has
    // not the secret can neither write under the lock nor release it.
    let guessed = "0".repeat(64);
    let hijack = run(quorumlock(&cluster)
        .args([
            "put",
            "report",
            "hijacked",
            "--lock",
            "job",
            "--token",
            &token_text,
        ])
        .args(["--session", &session_text, "--session-secret", &guessed]))
    .await;
    assert_exit("put with a guessed secret", &hijack, 1);
    assert!(
        stderr(&hijack).contains("PERMISSION_DENIED") && stderr(&hijack).contains("not the owner of session"),
        "{}",
        stderr(&hijack)
    );
    assert!(
        !stderr(&hijack).contains(&secret),
        "the secret stays out of errors"
    );
    let hijack = run(quorumlock(&cluster)
        .args(["release", "job", "--token", &token_text])
        .args(["--session", &session_text, "--session-secret", &guessed]))
    .await;
    assert_exit("release with a guessed secret", &hijack, 1);
    assert!(
        stderr(&hijack).contains("PERMISSION_DENIED"),
        "{}",
        stderr(&hijack)
    );
    let malformed = run(quorumlock(&cluster)
        .args(["release", "job", "--token", &token_text])
        .args(["--session", &session_text, "--session-secret", "not-hex"]))
    .await;
    assert_exit("release with a malformed secret", &malformed, 2);
    assert!(
        stderr(&malformed).contains("64 hex digits"),
        "{}",
        stderr(&malformed)
    );
    let got = run(quorumlock(&cluster).args(["get", "report"])).await;
    assert_exit("get", &got, 0);
    assert_eq!(stdout(&got), "v1", "get prints the value exactly");
    let fence = run(quorumlock(&cluster).args(["get", "report", "--fence"])).await;
    assert_eq!(stdout(&fence).trim(), format!("lock=job token={token}"));

    let stale = (token + 1000).to_string();
    let refused = run(quorumlock(&cluster)
        .args(["put", "report", "v2", "--lock", "job", "--token", &stale])
        .args(["--session", &session_text])
        .env("QUORUMLOCK_SESSION_SECRET", &secret))
    .await;
    assert_exit("put with a wrong token", &refused, 1);
    let error = stderr(&refused);
    assert!(
        error.contains("FAILED_PRECONDITION") && error.contains(&stale),
        "{error}"
    );
    assert!(
        cluster
            .urls()
            .iter()
            .any(|url| error.contains(url.trim_start_matches("http://"))),
        "the error names the endpoint: {error}"
    );

    let released = run(quorumlock(&cluster)
        .args([
            "release",
            "job",
            "--session",
            &session_text,
            "--token",
            &token_text,
        ])
        .env("QUORUMLOCK_SESSION_SECRET", &secret))
    .await;
    assert_exit("release", &released, 0);
    assert_eq!(stdout(&released).trim(), "released job");
    let described = run(quorumlock(&cluster).args(["describe", "job"])).await;
    assert_eq!(stdout(&described).trim(), "held=false queue_length=0");
    // release closed the session acquire opened.
    let closed = run(quorumlock(&cluster).args([
        "acquire",
        "job",
        "--session",
        &session_text,
        "--session-secret",
        &secret,
    ]))
    .await;
    assert_exit("acquire under a closed session", &closed, 1);
    assert!(stderr(&closed).contains("NOT_FOUND"), "{}", stderr(&closed));

    // The token exported by `lock` guards writes through the environment.
    let again = run(quorumlock(&cluster).args(["acquire", "job"])).await;
    let new_token = field(&stdout(&again), "token");
    assert!(new_token > token, "tokens increase");
    let deleted = run(quorumlock(&cluster)
        .args(["delete", "report"])
        .env("QUORUMLOCK_LOCK", "job")
        .env("QUORUMLOCK_TOKEN", new_token.to_string())
        .env("QUORUMLOCK_SESSION", text_field(&stdout(&again), "session"))
        .env("QUORUMLOCK_SESSION_SECRET", text_field(&stdout(&again), "secret")))
    .await;
    assert_exit("delete", &deleted, 0);
    assert_eq!(stdout(&deleted).trim(), "existed=true");
    let missing = run(quorumlock(&cluster).args(["get", "report"])).await;
    assert_exit("get of a deleted key", &missing, EXIT_NO);
    assert!(stderr(&missing).contains("not found"), "{}", stderr(&missing));

    let status = run(quorumlock(&cluster).arg("status")).await;
    assert_exit("status", &status, 0);
    let table = stdout(&status);
    let lines: Vec<&str> = table.lines().collect();
    assert!(
        lines[0].starts_with("ID") && lines[0].contains("APPLIED"),
        "{table}"
    );
    let member_rows: Vec<&&str> = lines.iter().filter(|line| line.contains("127.0.0.1:")).collect();
    assert_eq!(member_rows.len(), 4, "three members and the leader line: {table}");
    assert_eq!(
        member_rows
            .iter()
            .filter(|line| line.contains(" leader "))
            .count(),
        1,
        "{table}"
    );
    let leader = cluster.wait_for_leader().await;
    assert!(
        table.contains(&format!(
            "leader: node {} at {}",
            cluster.node_id(leader),
            cluster.addr(leader)
        )),
        "{table}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lock_runs_the_command_with_the_token_in_its_environment_and_passes_on_its_exit_code() {
    let cluster = Cluster::start("raft", 3).await;
    // The command writes under the lock with what `lock` exported.
    let ran = run(quorumlock(&cluster)
        .args([
            "lock",
            "build",
            "--",
            "sh",
            "-c",
            "\"$QUORUMLOCK_BIN\" put build/out \"from the command\" || exit 9; \
             echo \"$QUORUMLOCK_LOCK $QUORUMLOCK_TOKEN\"; exit 7",
        ])
        .env("QUORUMLOCK_BIN", env!("CARGO_BIN_EXE_quorumlock")))
    .await;
    assert_exit("lock -- sh", &ran, 7);
    let line = stdout(&ran);
    let mut words = line.split_whitespace();
    assert_eq!(words.next(), Some("build"), "{line}");
    let token: u64 = words
        .next()
        .and_then(|token| token.parse().ok())
        .unwrap_or_else(|| panic!("no token in {line:?}"));
    assert!(token > 0);

    // The lock was released when the command exited.
    let client = Client::connect(cluster.urls()).await.expect("connect");
    let written = client
        .get("build/out")
        .await
        .expect("get")
        .expect("the command's write is stored");
    assert_eq!(written.value, b"from the command");
    assert_eq!(
        written.written_by.token.get(),
        token,
        "written under the lock's token"
    );
    let described = client.describe("build").await.expect("describe");
    assert_eq!(described.holder, None, "lock released after the command");

    // A command that cannot get the lock in time is not run.
    let session = client.session(Duration::from_secs(30)).await.expect("session");
    let _held = session.lock("build").await.expect("lock");
    let marker = tempfile::tempdir().unwrap();
    let ran_marker = marker.path().join("ran");
    let script = format!("touch {}", ran_marker.display());
    let waited =
        run(quorumlock(&cluster).args(["lock", "build", "--wait", "300ms", "--", "sh", "-c", &script])).await;
    assert_exit("lock with a short wait on a held lock", &waited, EXIT_NO);
    assert!(stderr(&waited).contains("not acquired"), "{}", stderr(&waited));
    assert!(!ran_marker.exists(), "the command must not run without the lock");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lock_stops_its_command_and_fails_when_a_real_pause_loses_the_lock() {
    let cluster = Cluster::start("raft", 3).await;
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("marker");
    let script = run_until_terminated(&marker);
    let mut lock = quorumlock(&cluster);
    lock.args([
        "lock", "paused", "--ttl", "2s", "--grace", "10s", "--", "sh", "-c", &script,
    ])
    .stdout(std::process::Stdio::piped())
    .stderr(std::process::Stdio::piped());
    let child = lock.spawn().expect("start quorumlock lock");
    let pid = Pid::from_raw(child.id().expect("running") as i32);
    wait_for_marker(&marker, "started").await;

    // Freeze the `lock` process (not its command) past its TTL: the cluster
    // expires its session, and another client gets the lock.
    kill(pid, Signal::SIGSTOP).expect("SIGSTOP");
    let client = Client::connect(cluster.urls()).await.expect("connect");
    let other = client.session(Duration::from_secs(30)).await.expect("session");
    let taken = other
        .lock_timeout("paused", Duration::from_secs(60))
        .await
        .expect("lock_timeout")
        .expect("the lock passes to another client once the paused session expires");
    assert_eq!(
        std::fs::read_to_string(&marker).unwrap().trim(),
        "started",
        "the command kept running while `lock` was frozen"
    );
    kill(pid, Signal::SIGCONT).expect("SIGCONT");

    let output = tokio::time::timeout(RUN_MAX, child.wait_with_output())
        .await
        .expect("lock exits after losing the lock")
        .expect("wait for lock");
    assert_no_crash(&output);
    assert_exit("lock after losing the lock", &output, EXIT_LOCK_LOST);
    assert!(stderr(&output).contains("lost"), "{}", stderr(&output));
    assert_eq!(
        std::fs::read_to_string(&marker).unwrap().trim(),
        "terminated",
        "the command got SIGTERM"
    );
    let described = client.describe("paused").await.expect("describe");
    assert_eq!(
        described.holder.map(|holder| holder.token),
        Some(taken.token()),
        "the new holder keeps the lock"
    );
}

/// A shell script that writes `started` to `marker`, runs until SIGTERM,
/// and then writes `terminated` there and exits 0.
fn run_until_terminated(marker: &Path) -> String {
    format!(
        "trap 'echo terminated > {m}; exit 0' TERM; echo started > {m}; while true; do sleep 0.1; done",
        m = marker.display()
    )
}

async fn wait_for_marker(path: &Path, content: &str) {
    wait_until(
        &format!("{} to say {content:?}", path.display()),
        CONDITION_WAIT,
        || async {
            match std::fs::read_to_string(path) {
                Ok(text) if text.trim() == content => Ok(()),
                other => Err(format!("{other:?}")),
            }
        },
    )
    .await
}

#[tokio::test]
async fn bad_endpoints_and_bad_flags_give_readable_errors_and_nonzero_exits() {
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead_addr = dead.local_addr().unwrap().to_string();
    drop(dead);
    let cli = || {
        let mut command = Command::new(env!("CARGO_BIN_EXE_quorumlock"));
        command.env_remove("QUORUMLOCK_ENDPOINTS").kill_on_drop(true);
        command
    };

    let output = run(cli().args(["status", "--endpoints", &dead_addr, "--connect-wait", "200ms"])).await;
    assert_exit("status against nothing", &output, 1);
    let error = stderr(&output);
    assert!(error.starts_with("quorumlock: "), "{error}");
    assert!(
        error.contains(&dead_addr) && error.contains("UNAVAILABLE"),
        "{error}"
    );

    let output = run(cli()
        .args(["describe", "x", "--connect-wait", "200ms"])
        .env("QUORUMLOCK_ENDPOINTS", &dead_addr))
    .await;
    assert_exit("the environment names the endpoints", &output, 1);
    assert!(stderr(&output).contains(&dead_addr), "{}", stderr(&output));

    let output = run(cli().args(["describe", "x", "--endpoints", "no-port-here"])).await;
    assert_exit("a malformed endpoint", &output, 1);
    assert!(
        stderr(&output).contains("invalid endpoint \"no-port-here\""),
        "{}",
        stderr(&output)
    );

    let output = run(cli().args(["acquire", "x", "--ttl", "ten seconds"])).await;
    assert_exit("a malformed duration", &output, 2);
    assert!(
        stderr(&output).contains("expected a duration"),
        "{}",
        stderr(&output)
    );

    let output = run(cli().args(["lock", "x"])).await;
    assert_exit("lock without a command", &output, 2);
}

/// Whether process `pid` has ended (gone, or a zombie nobody reaped yet).
fn has_ended(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the parenthesized command name.
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
        Err(_) => true,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_lock_process_takes_its_command_with_it() {
    let cluster = Cluster::start("raft", 3).await;
    let dir = tempfile::tempdir().unwrap();
    let pid_file = dir.path().join("pid");
    let script = format!(
        "echo $$ > {p}.tmp; mv {p}.tmp {p}; while true; do sleep 0.1; done",
        p = pid_file.display()
    );
    let mut lock = quorumlock(&cluster);
    lock.args(["lock", "orphan", "--ttl", "30s", "--", "sh", "-c", &script])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    let mut child = lock.spawn().expect("start quorumlock lock");
    let lock_pid = Pid::from_raw(child.id().expect("running") as i32);
    let command_pid: i32 = wait_until("the command to start", CONDITION_WAIT, || async {
        match std::fs::read_to_string(&pid_file) {
            Ok(text) => text.trim().parse::<i32>().map_err(|error| error.to_string()),
            Err(error) => Err(error.to_string()),
        }
    })
    .await;
    assert!(!has_ended(command_pid), "the command runs while `lock` does");

    // SIGKILL gives `lock` no chance to stop the command itself.
    kill(lock_pid, Signal::SIGKILL).expect("SIGKILL");
    child.wait().await.expect("reap lock");
    wait_until("the command to end with `lock`", CONDITION_WAIT, || async {
        if has_ended(command_pid) {
            Ok(())
        } else {
            Err(format!("process {command_pid} still runs"))
        }
    })
    .await;
}

/// `acquire --shared` twice holds the lock together, `describe` lists both
/// holders, a writer's try is refused, `get --lock --token` reads under a
/// hold and is refused once the hold is released, and `lock --shared` runs
/// its command beside the readers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_acquires_hold_together_and_fence_reads() {
    let cluster = Cluster::start("paxos", 3).await;
    let mut readers = Vec::new();
    for _ in 0..2 {
        let acquired =
            run(quorumlock(&cluster).args(["acquire", "catalog", "--shared", "--ttl", "30s"])).await;
        assert_exit("acquire --shared", &acquired, 0);
        let line = stdout(&acquired);
        readers.push((
            field(&line, "session"),
            field(&line, "token"),
            text_field(&line, "secret"),
        ));
    }
    let described = run(quorumlock(&cluster).args(["describe", "catalog"])).await;
    assert_exit("describe", &described, 0);
    assert_eq!(
        stdout(&described).trim(),
        format!(
            "held=true mode=shared holders={}:{},{}:{} queue_length=0",
            readers[0].0, readers[0].1, readers[1].0, readers[1].1
        )
    );
    let refused = run(quorumlock(&cluster).args(["acquire", "catalog", "--wait", "0s"])).await;
    assert_exit("a writer's try while readers hold", &refused, EXIT_NO);
    assert!(
        stderr(&refused).contains("held shared by 2 session(s)"),
        "{}",
        stderr(&refused)
    );
    let alongside =
        run(quorumlock(&cluster).args(["lock", "catalog", "--shared", "--wait", "5s", "--", "true"])).await;
    assert_exit("lock --shared beside readers", &alongside, 0);

    let (session, token, secret) = &readers[0];
    let token_text = token.to_string();
    let read = run(quorumlock(&cluster).args([
        "get",
        "catalog/items",
        "--lock",
        "catalog",
        "--token",
        &token_text,
    ]))
    .await;
    assert_exit("a fenced read of a missing key", &read, EXIT_NO);
    let released = run(quorumlock(&cluster)
        .args(["release", "catalog", "--token", &token_text])
        .args(["--session", &session.to_string()])
        .env("QUORUMLOCK_SESSION_SECRET", secret))
    .await;
    assert_exit("release", &released, 0);
    let stale = run(quorumlock(&cluster).args([
        "get",
        "catalog/items",
        "--lock",
        "catalog",
        "--token",
        &token_text,
    ]))
    .await;
    assert_exit("a fenced read after the release", &stale, 1);
    assert!(
        stderr(&stale).contains("FAILED_PRECONDITION")
            && stderr(&stale).contains(&format!("presented {token}")),
        "{}",
        stderr(&stale)
    );
}

/// `acquire --permits K --of N` takes permits of a semaphore while they
/// fit, refuses (exit 3) an ask that does not and says why, `describe`
/// lists the holders with their permits, and another `--of` is an error
/// naming the semaphore's limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn semaphore_permits_are_taken_while_they_fit() {
    let cluster = Cluster::start("raft", 3).await;
    let first =
        run(quorumlock(&cluster).args(["acquire", "pool", "--permits", "2", "--of", "3", "--ttl", "30s"]))
            .await;
    assert_exit("acquire --permits 2 --of 3", &first, 0);
    let line = stdout(&first);
    let (session, token) = (field(&line, "session"), field(&line, "token"));
    let refused =
        run(quorumlock(&cluster).args(["acquire", "pool", "--permits", "2", "--of", "3", "--wait", "0s"]))
            .await;
    assert_exit("2 more of 3", &refused, EXIT_NO);
    assert!(
        stderr(&refused).contains("a semaphore with 2 of its 3 permits held by 1 session(s)"),
        "{}",
        stderr(&refused)
    );
    let second =
        run(quorumlock(&cluster).args(["acquire", "pool", "--permits", "1", "--of", "3", "--wait", "0s"]))
            .await;
    assert_exit("1 more of 3", &second, 0);
    let line = stdout(&second);
    let (other, other_token) = (field(&line, "session"), field(&line, "token"));
    let described = run(quorumlock(&cluster).args(["describe", "pool"])).await;
    assert_exit("describe", &described, 0);
    assert_eq!(
        stdout(&described).trim(),
        format!("held=true mode=semaphore limit=3 holders={session}:{token}:2,{other}:{other_token}:1 queue_length=0")
    );
    let mismatch =
        run(quorumlock(&cluster).args(["acquire", "pool", "--permits", "1", "--of", "5", "--wait", "0s"]))
            .await;
    assert_exit("another limit", &mismatch, 1);
    assert!(
        stderr(&mismatch).contains("FAILED_PRECONDITION") && stderr(&mismatch).contains("has 3 permits"),
        "{}",
        stderr(&mismatch)
    );
    let bad = run(quorumlock(&cluster).args(["acquire", "pool", "--permits", "4", "--of", "3"])).await;
    assert_exit("more permits than the semaphore has", &bad, 1);
    assert!(
        stderr(&bad).contains("4 permits asked of a semaphore of 3"),
        "{}",
        stderr(&bad)
    );
}

/// `watch PREFIX --from 1 --count N` prints where it starts and then one
/// line per event of the names under the prefix, in revision order, with
/// the fields of each kind; names elsewhere do not appear.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_prints_the_events_under_a_prefix_as_lines() {
    let cluster = Cluster::start("raft", 3).await;
    let acquired = run(quorumlock(&cluster).args(["acquire", "jobs/a", "--ttl", "30s"])).await;
    assert_exit("acquire", &acquired, 0);
    let line = stdout(&acquired);
    let (session, token, secret) = (
        field(&line, "session").to_string(),
        field(&line, "token").to_string(),
        text_field(&line, "secret"),
    );
    let elsewhere = run(quorumlock(&cluster).args(["acquire", "other", "--ttl", "30s"])).await;
    assert_exit("acquire elsewhere", &elsewhere, 0);
    let put = run(quorumlock(&cluster)
        .args([
            "put",
            "jobs/a/out",
            "all done",
            "--lock",
            "jobs/a",
            "--token",
            &token,
        ])
        .args(["--session", &session])
        .env("QUORUMLOCK_SESSION_SECRET", &secret))
    .await;
    assert_exit("put", &put, 0);
    let released = run(quorumlock(&cluster)
        .args(["release", "jobs/a", "--token", &token])
        .args(["--session", &session])
        .env("QUORUMLOCK_SESSION_SECRET", &secret))
    .await;
    assert_exit("release", &released, 0);

    let watched = run(quorumlock(&cluster).args(["watch", "jobs/", "--from", "1", "--count", "3"])).await;
    assert_exit("watch", &watched, 0);
    let printed = stdout(&watched);
    let lines: Vec<&str> = printed.lines().collect();
    assert_eq!(lines.len(), 4, "{printed}");
    assert_eq!(lines[0], "watching from=1");
    let shapes: Vec<String> = lines[1..]
        .iter()
        .map(|line| line.split_once(' ').expect("rev= first").1.to_string())
        .collect();
    assert_eq!(
        shapes,
        [
            format!("granted lock=jobs/a session={session} token={token} mode=exclusive"),
            format!("put key=jobs/a/out lock=jobs/a token={token} value=\"all done\""),
            format!("released lock=jobs/a session={session} token={token} cause=released"),
        ],
        "{printed}"
    );
    let revisions: Vec<u64> = lines[1..].iter().map(|line| field(line, "rev")).collect();
    assert!(revisions.windows(2).all(|pair| pair[0] < pair[1]), "{printed}");

    let only_keys =
        run(quorumlock(&cluster).args(["watch", "jobs/", "--from", "1", "--only", "keys", "--count", "1"]))
            .await;
    assert_exit("watch --only keys", &only_keys, 0);
    assert!(stdout(&only_keys)
        .lines()
        .nth(1)
        .is_some_and(|line| line.contains(" put key=jobs/a/out ")));
}

/// `force-release NAME --token N` frees the grant `describe` names and
/// says whose it was; a second time it fails naming the stale token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn force_release_frees_the_grant_describe_names() {
    let cluster = Cluster::start("paxos", 3).await;
    let acquired = run(quorumlock(&cluster).args(["acquire", "stuck", "--ttl", "60s"])).await;
    assert_exit("acquire", &acquired, 0);
    let line = stdout(&acquired);
    let (session, token) = (field(&line, "session"), field(&line, "token"));
    let token_text = token.to_string();
    let forced = run(quorumlock(&cluster).args(["force-release", "stuck", "--token", &token_text])).await;
    assert_exit("force-release", &forced, 0);
    assert_eq!(
        stdout(&forced).trim(),
        format!("forced stuck free from session {session}")
    );
    let described = run(quorumlock(&cluster).args(["describe", "stuck"])).await;
    assert_eq!(stdout(&described).trim(), "held=false queue_length=0");
    let again = run(quorumlock(&cluster).args(["force-release", "stuck", "--token", &token_text])).await;
    assert_exit("force-release again", &again, 1);
    assert!(
        stderr(&again).contains("FAILED_PRECONDITION")
            && stderr(&again).contains(&format!("presented {token}")),
        "{}",
        stderr(&again)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lock_with_a_max_hold_stops_its_command_before_the_cluster_ends_the_grant() {
    let cluster = Cluster::start("raft", 3).await;
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("marker");
    let script = run_until_terminated(&marker);
    let started = std::time::Instant::now();
    let output = run(quorumlock(&cluster).args([
        "lock",
        "bounded",
        "--ttl",
        "30s",
        "--max-hold",
        "3s",
        "--grace",
        "1s",
        "--",
        "sh",
        "-c",
        &script,
    ]))
    .await;
    assert_exit("lock past its maximum hold", &output, EXIT_LOCK_LOST);
    assert!(stderr(&output).contains("maximum hold"), "{}", stderr(&output));
    assert_eq!(std::fs::read_to_string(&marker).unwrap().trim(), "terminated");
    assert!(
        started.elapsed() >= Duration::from_secs(2),
        "the command ran until a grace before its 3 s maximum hold"
    );
    // `lock` closed its session: the lock is free, with no lock-delay.
    let described = run(quorumlock(&cluster).args(["describe", "bounded"])).await;
    assert_eq!(stdout(&described).trim(), "held=false queue_length=0");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn describe_shows_a_lock_delay_after_the_holders_session_expires() {
    let cluster = Cluster::start("paxos", 3).await;
    let acquired =
        run(quorumlock(&cluster).args(["acquire", "delayed", "--ttl", "1s", "--lock-delay", "60s"])).await;
    assert_exit("acquire with a lock-delay", &acquired, 0);
    // Nothing renews the session `acquire` opened: it expires after its TTL
    // and the lock enters its lock-delay.
    let line = wait_until("the lock-delay to begin", CONDITION_WAIT, || async {
        let described = run(quorumlock(&cluster).args(["describe", "delayed"])).await;
        let line = stdout(&described);
        match line.contains("lock_delay=") {
            true => Ok(line),
            false => Err(line),
        }
    })
    .await;
    assert!(
        line.starts_with("held=false queue_length=0 lock_delay=60000ms left="),
        "{line}"
    );
    let left: u64 = text_field(&line, "left")
        .trim_end_matches("ms")
        .parse()
        .unwrap_or_else(|_| panic!("left= is not a duration in ms: {line:?}"));
    assert!(left <= 60_000, "{line}");
    let refused = run(quorumlock(&cluster).args(["acquire", "delayed", "--wait", "0s"])).await;
    assert_exit("acquire during the lock-delay", &refused, 1);
    assert!(
        stderr(&refused).contains("FAILED_PRECONDITION") && stderr(&refused).contains("lock-delay"),
        "{}",
        stderr(&refused)
    );
    let bad = run(quorumlock(&cluster).args(["acquire", "x", "--max-hold", "500ms"])).await;
    assert_exit("a maximum hold below 1 s", &bad, 1);
    assert!(stderr(&bad).contains("maximum hold"), "{}", stderr(&bad));
}
