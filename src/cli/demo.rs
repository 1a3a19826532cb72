//! `demo`: the scenario of Martin Kleppmann's "How to do distributed
//! locking" played with real processes, and its hidden helper `demo-client`
//! (client A, run as its own process so that it can really be frozen).

use std::process::Stdio;
use std::time::Duration;

use anyhow::{bail, ensure, Context};
use clap::Args;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use quorumlock_client::{
    code_name, Client, ClientConfig, ClientError, ClientTls, ClientTlsFiles, FencingToken,
};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};
use tokio::time::Instant;

use super::certs::DevTls;
use super::{parse_duration, EXIT_ERROR};
use quorumlock_testkit::cluster::{ClusterSpec, ProcessCluster};

/// Nodes of the demo's own cluster.
pub const DEMO_NODES: usize = 3;
/// TTL of the sessions of clients B and C, long enough to ride out the
/// leader kill.
pub const OTHER_CLIENTS_TTL: Duration = Duration::from_secs(15);
/// Longest wait for any one step: a grant, an answer from client A.
pub const STEP_WAIT_MAX: Duration = Duration::from_secs(60);
/// How long the demo looks for a live endpoint of a given cluster, which
/// may still be starting (as under docker compose).
pub const CONNECT_WAIT_MAX: Duration = Duration::from_secs(60);
/// How long the plaintext probe of a TLS cluster looks for an answer
/// before the demo counts it refused.
pub const PLAINTEXT_PROBE_WAIT: Duration = Duration::from_secs(2);

/// Flags of `demo`.
#[derive(Args)]
pub struct DemoArgs {
    /// Consensus engine of the demo's own cluster: raft or paxos.
    #[arg(long, default_value = "raft", conflicts_with = "endpoints")]
    engine: String,
    /// Play against this running cluster (comma-separated host:port)
    /// instead of starting one; the leader-kill step is then skipped.
    #[arg(long)]
    endpoints: Option<String>,
    /// TTL of client A's session: how long a frozen A keeps the lock.
    #[arg(long, value_parser = parse_duration, default_value = "2s")]
    ttl: Duration,
    /// Run the demo's own cluster over mutual TLS, with a throwaway CA and
    /// certificates made in a temporary directory (deleted at the end).
    #[arg(long, conflicts_with = "endpoints")]
    tls: bool,
    #[command(flatten)]
    client_tls: DemoTlsArgs,
}

/// TLS flags of a demo client against a running cluster (as the CLI's).
#[derive(Args, Clone, Default)]
pub struct DemoTlsArgs {
    /// With --endpoints: the CA certificate (PEM) the nodes' certificates
    /// chain to; turns TLS on.
    #[arg(long, requires = "endpoints")]
    cacert: Option<std::path::PathBuf>,
    /// With --cacert: the clients' certificate (PEM), for clusters that
    /// require one.
    #[arg(long = "cert", id = "demo_cert", requires = "cacert", requires = "demo_key")]
    cert: Option<std::path::PathBuf>,
    /// The private key (PEM) of --cert.
    #[arg(long = "key", id = "demo_key", requires = "demo_cert")]
    key: Option<std::path::PathBuf>,
}

impl DemoTlsArgs {
    /// The client TLS config these flags give, if any.
    fn load(&self) -> anyhow::Result<Option<ClientTls>> {
        let Some(ca) = &self.cacert else {
            return Ok(None);
        };
        let files = ClientTlsFiles {
            ca: ca.clone(),
            identity: self.cert.clone().zip(self.key.clone()),
        };
        Ok(Some(ClientTls::load(files)?))
    }

    /// The same flags for client A's command line.
    fn to_args(&self) -> Vec<std::ffi::OsString> {
        let mut args = Vec::new();
        for (flag, path) in [
            ("--cacert", &self.cacert),
            ("--cert", &self.cert),
            ("--key", &self.key),
        ] {
            if let Some(path) = path {
                args.push(flag.into());
                args.push(path.clone().into_os_string());
            }
        }
        args
    }
}

/// Flags of the hidden `demo-client`.
#[derive(Args)]
pub struct DemoClientArgs {
    /// The cluster's endpoints.
    #[arg(long)]
    endpoints: String,
    /// The lock to take.
    #[arg(long)]
    lock: String,
    /// The session's TTL.
    #[arg(long, value_parser = parse_duration)]
    ttl: Duration,
    #[command(flatten)]
    tls: DemoTlsArgs,
}

/// Numbers and prints the steps as they happen.
struct Steps {
    next: usize,
}

impl Steps {
    fn say(&mut self, text: impl AsRef<str>) {
        self.next += 1;
        println!("[{}] {}", self.next, text.as_ref());
    }
}

/// Runs the demo; exits 0 only if every expectation held.
pub async fn demo(args: DemoArgs) -> anyhow::Result<i32> {
    println!("quorumlock demo: a paused lock holder cannot corrupt storage guarded by fencing tokens");
    println!("(the scenario of Martin Kleppmann's \"How to do distributed locking\", with real processes)");
    println!();
    let outcome = tokio::select! {
        outcome = play(args) => outcome,
        _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted")),
    };
    match outcome {
        Ok(()) => Ok(0),
        Err(error) => {
            println!();
            println!("demo FAILED: {error:#}");
            Ok(EXIT_ERROR)
        }
    }
}

async fn play(args: DemoArgs) -> anyhow::Result<()> {
    let mut steps = Steps { next: 0 };
    let mut cluster = None;
    // Held until the end: the throwaway certificates of a --tls cluster.
    let mut _certs_dir = None;
    let mut client_tls = args.client_tls.clone();
    let endpoints = match &args.endpoints {
        Some(endpoints) => {
            let over = match client_tls.cacert {
                Some(_) => " over TLS",
                None => "",
            };
            steps.say(format!("using the running cluster at {endpoints}{over}"));
            endpoints.clone()
        }
        None => {
            let exe = std::env::current_exe().context("finding the quorumlock executable")?;
            let mut spec = ClusterSpec::new(exe, &args.engine, DEMO_NODES);
            if args.tls {
                let dir = tempfile::Builder::new()
                    .prefix("quorumlock-demo-tls-")
                    .tempdir()
                    .context("creating a directory for the demo's certificates")?;
                let certs = DevTls::prepare(dir.path(), DEMO_NODES as u64)?;
                let tls_dir = dir.path().display().to_string();
                spec.extra_args = vec![
                    "--cert".into(),
                    format!("{tls_dir}/node-{{id}}.pem"),
                    "--key".into(),
                    format!("{tls_dir}/node-{{id}}-key.pem"),
                    "--ca".into(),
                    certs.ca.display().to_string(),
                ];
                client_tls = DemoTlsArgs {
                    cacert: Some(certs.ca.clone()),
                    cert: Some(certs.client.cert.clone()),
                    key: Some(certs.client.key.clone()),
                };
                spec.client_tls = client_tls.load()?;
                _certs_dir = Some(dir);
            }
            let mut local = ProcessCluster::start(spec).await?;
            let leader = local.wait_for_leader().await?;
            let endpoints = local.endpoints().join(",");
            let over = match args.tls {
                true => " over mutual TLS (a throwaway CA; clients and peers show certificates)",
                false => "",
            };
            steps.say(format!(
                "started a {DEMO_NODES}-node {} cluster on {endpoints}{over}; node {} leads",
                args.engine, leader.id
            ));
            if args.tls {
                let plaintext = ClientConfig {
                    connect_wait_max: PLAINTEXT_PROBE_WAIT,
                    ..ClientConfig::default()
                };
                match Client::connect_with([endpoints.as_str()], plaintext).await {
                    Ok(_) => bail!("expectation failed: a plaintext client reached the TLS cluster"),
                    Err(error) => {
                        // Every node refuses alike; the first one says enough.
                        let error = error.to_string();
                        let first = error.split("; ").next().unwrap_or_default();
                        steps.say(format!("a plaintext client is turned away: {first}"));
                    }
                }
            }
            cluster = Some(local);
            endpoints
        }
    };
    let config = ClientConfig {
        connect_wait_max: CONNECT_WAIT_MAX,
        tls: client_tls.load()?,
        ..ClientConfig::default()
    };
    let client = Client::connect_with([endpoints.as_str()], config).await?;
    let unique = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|since| since.as_millis())
        .unwrap_or_default();
    let lock = format!("demo-{}-{unique}", std::process::id());
    let key = format!("{lock}/file");

    // Client A takes the lock in its own process.
    let mut a = ClientA::spawn(&endpoints, &client_tls, &lock, args.ttl)?;
    let acquired = a.read_line().await?;
    let (a_session, a_token) = parse_acquired(&acquired)?;
    steps.say(format!(
        "client A (process {}) acquired lock {lock:?}: fencing token {a_token} (session {a_session}, TTL {})",
        a.pid,
        humantime::format_duration(args.ttl)
    ));

    // A freezes for real: the kernel stops the whole process, keepalives too.
    a.signal(Signal::SIGSTOP)?;
    steps.say(format!(
        "client A freezes: SIGSTOP to process {} (think of a long GC pause); its keepalives stop too",
        a.pid
    ));

    // B queues for the lock and gets it once A's session expires.
    let b_session = client.session(OTHER_CLIENTS_TTL).await?;
    let waiting_since = Instant::now();
    let b = b_session
        .lock_timeout(&lock, STEP_WAIT_MAX)
        .await?
        .with_context(|| {
            format!("expectation failed: client B was not granted the lock within {STEP_WAIT_MAX:?}, although A stopped renewing")
        })?;
    ensure!(
        b.token() > FencingToken::new(a_token),
        "expectation failed: B's token {} is not larger than A's {a_token}",
        b.token()
    );
    steps.say(format!(
        "client B waited {:.1?} in the lock's queue and was granted it when A's session expired: token {} > {a_token}",
        waiting_since.elapsed(),
        b.token()
    ));
    client
        .put(&key, "written by B", &b)
        .await
        .context("expectation failed: B's write with the current token was refused")?;
    steps.say(format!(
        "client B writes {key:?} with token {}: accepted",
        b.token()
    ));

    // A wakes, still believing it holds the lock, and writes.
    a.signal(Signal::SIGCONT)?;
    a.send_line(&format!("write {key} written-by-A")).await?;
    steps.say(format!(
        "client A wakes (SIGCONT), still believing it holds the lock, and writes with token {a_token}"
    ));
    let answer = a.read_line().await?;
    match answer.strip_prefix("refused ") {
        Some(refusal) if refusal.starts_with("FAILED_PRECONDITION") => {
            steps.say(format!("the cluster refused A's write: {refusal}"));
        }
        Some(refusal) => bail!("expectation failed: A's write was refused for another reason: {refusal}"),
        None => bail!("expectation failed: A's write with stale token {a_token} was not refused: {answer}"),
    }
    let lost = a.read_line().await?;
    match lost.strip_prefix("lost ") {
        Some(reason) => steps.say(format!("client A's own lost-lock signal fired too: {reason}")),
        None => bail!("expectation failed: client A never learned that its session was lost: {lost}"),
    }
    let entry = client
        .get(&key)
        .await?
        .context("expectation failed: B's value is missing")?;
    ensure!(
        entry.value == b"written by B" && entry.written_by.token == b.token(),
        "expectation failed: storage holds {:?} written with token {}, not B's write",
        String::from_utf8_lossy(&entry.value),
        entry.written_by.token
    );
    steps.say(format!(
        "storage still holds B's value {:?}, written with token {}",
        String::from_utf8_lossy(&entry.value),
        entry.written_by.token
    ));
    a.finish().await;

    // The cluster survives losing its leader.
    match cluster.as_mut() {
        Some(local) => {
            let leader = local.wait_for_leader().await?;
            let pid = local.node(leader.index).pid().unwrap_or_default();
            local.node_mut(leader.index).kill()?;
            steps.say(format!(
                "killed the leader, node {} (process {pid}), with SIGKILL",
                leader.id
            ));
            let new_leader = local.wait_for_leader().await?;
            ensure!(
                new_leader.id != leader.id,
                "expectation failed: node {} still leads after being killed",
                leader.id
            );
            steps.say(format!(
                "node {} is the new leader (term {} > {})",
                new_leader.id, new_leader.term, leader.term
            ));
        }
        None => steps.say(format!(
            "skipping the leader kill: the cluster at {endpoints} is not this demo's to kill (--endpoints given)"
        )),
    }

    let b_token = b.token();
    b.release()
        .await
        .context("expectation failed: B could not release after the failover")?;
    let c_session = client.session(OTHER_CLIENTS_TTL).await?;
    let c = c_session
        .lock_timeout(&lock, STEP_WAIT_MAX)
        .await?
        .with_context(|| {
            format!("expectation failed: client C was not granted the free lock within {STEP_WAIT_MAX:?}")
        })?;
    ensure!(
        c.token() > b_token,
        "expectation failed: C's token {} is not larger than B's {b_token}",
        c.token()
    );
    client
        .put(&key, "written by C", &c)
        .await
        .context("expectation failed: C's write with the current token was refused")?;
    steps.say(format!(
        "client B released; client C acquired the lock with token {} > {b_token} and its write was accepted",
        c.token()
    ));
    let c_token = c.token();
    // Leave nothing behind in a cluster the demo may not own.
    client.delete(&key, &c).await?;
    c.release().await?;
    c_session.close().await?;
    b_session.close().await?;
    println!();
    println!(
        "demo passed: every expectation held (tokens {a_token} < {b_token} < {c_token}; the paused client's write was refused)"
    );
    Ok(())
}

/// Parses `acquired session=<id> token=<n>`.
fn parse_acquired(line: &str) -> anyhow::Result<(u64, u64)> {
    let mut session = None;
    let mut token = None;
    for part in line
        .strip_prefix("acquired ")
        .unwrap_or_default()
        .split_whitespace()
    {
        match part.split_once('=') {
            Some(("session", value)) => session = value.parse().ok(),
            Some(("token", value)) => token = value.parse().ok(),
            _ => {}
        }
    }
    match (session, token) {
        (Some(session), Some(token)) => Ok((session, token)),
        _ => bail!("client A said {line:?} instead of acquiring the lock"),
    }
}

/// Client A: a `demo-client` child process driven over its stdin/stdout.
struct ClientA {
    child: Child,
    pid: u32,
    stdin: Option<ChildStdin>,
    stdout: Lines<BufReader<ChildStdout>>,
}

impl ClientA {
    fn spawn(endpoints: &str, tls: &DemoTlsArgs, lock: &str, ttl: Duration) -> anyhow::Result<ClientA> {
        let exe = std::env::current_exe().context("finding the quorumlock executable")?;
        let mut child = Command::new(exe)
            .arg("demo-client")
            .args(["--endpoints", endpoints, "--lock", lock])
            .args(["--ttl", &humantime::format_duration(ttl).to_string()])
            .args(tls.to_args())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .context("starting client A")?;
        let pid = child.id().context("client A exited at once")?;
        let stdin = child.stdin.take();
        let stdout = BufReader::new(child.stdout.take().context("client A's stdout")?).lines();
        Ok(ClientA {
            child,
            pid,
            stdin,
            stdout,
        })
    }

    fn signal(&self, signal: Signal) -> anyhow::Result<()> {
        let pid = i32::try_from(self.pid).context("process id out of range")?;
        kill(Pid::from_raw(pid), signal).with_context(|| format!("sending {signal} to client A"))
    }

    async fn read_line(&mut self) -> anyhow::Result<String> {
        match tokio::time::timeout(STEP_WAIT_MAX, self.stdout.next_line()).await {
            Ok(Ok(Some(line))) => Ok(line),
            Ok(Ok(None)) => {
                let status = self.child.wait().await?;
                bail!("client A exited ({status}) without answering")
            }
            Ok(Err(error)) => Err(error).context("reading from client A"),
            Err(_) => bail!("client A did not answer within {STEP_WAIT_MAX:?}"),
        }
    }

    async fn send_line(&mut self, line: &str) -> anyhow::Result<()> {
        let stdin = self.stdin.as_mut().context("client A's stdin is closed")?;
        stdin.write_all(format!("{line}\n").as_bytes()).await?;
        stdin.flush().await.context("writing to client A")
    }

    /// Closes A's input so that it exits; kills it if it does not.
    async fn finish(mut self) {
        drop(self.stdin.take());
        if tokio::time::timeout(STEP_WAIT_MAX, self.child.wait())
            .await
            .is_err()
        {
            let _ = self.child.kill().await;
        }
    }
}

/// Client A: takes the lock, reports its token, then writes what it is told
/// to with that token, never checking whether it still holds the lock (as a
/// client that was paused cannot know), and reports whether its session was
/// lost.
pub async fn demo_client(args: DemoClientArgs) -> anyhow::Result<i32> {
    let config = ClientConfig {
        connect_wait_max: CONNECT_WAIT_MAX,
        tls: args.tls.load()?,
        ..ClientConfig::default()
    };
    let client = Client::connect_with([args.endpoints.as_str()], config).await?;
    let session = client.session(args.ttl).await?;
    let guard = session.lock(&args.lock).await?;
    println!("acquired session={} token={}", session.id(), guard.token());
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    while let Some(line) = lines.next_line().await? {
        let Some((key, value)) = line.strip_prefix("write ").and_then(|rest| rest.split_once(' ')) else {
            bail!("unknown instruction {line:?}");
        };
        match client.put(key, value, &guard).await {
            Ok(()) => println!("accepted"),
            Err(ClientError::Rpc {
                endpoint,
                code,
                message,
                ..
            }) => println!("refused {} from {endpoint}: {message}", code_name(code)),
            Err(error) => println!("error {error}"),
        }
        match tokio::time::timeout(args.ttl, session.lost()).await {
            Ok(reason) => println!("lost {reason}"),
            Err(_) => println!("alive"),
        }
    }
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_a_reports_are_parsed_or_refused_clearly() {
        assert_eq!(parse_acquired("acquired session=7 token=12").unwrap(), (7, 12));
        let error = parse_acquired("error: no endpoint answered").unwrap_err();
        assert!(error.to_string().contains("instead of acquiring"), "{error}");
        assert!(parse_acquired("acquired session=7").is_err());
    }
}
