//! TLS on every link, through real processes: a cluster of three
//! `quorumlock serve` processes whose certificates `quorumlock certs` made
//! serves the Rust client, the CLI and the Python client over mutual TLS;
//! connections that cannot prove who they are, or that prove they are a
//! client, are refused the API and the member-only parts; and node
//! certificates rotate under load, one SIGHUP at a time, with no session lost.

mod common;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use quorumlock_client::{Client, ClientConfig, ClientError, ClientTls, ClientTlsFiles, Fence};
use quorumlock_proto::headers::FORWARDED_HEADER;
use quorumlock_proto::paxos::paxos_peer_client::PaxosPeerClient;
use quorumlock_proto::paxos::PaxosBatch;
use quorumlock_proto::raft::raft_peer_client::RaftPeerClient;
use quorumlock_proto::raft::RaftPayload;
use quorumlock_proto::v1::lock_client::LockClient;
use quorumlock_proto::v1::OpenSessionRequest;
use quorumlock_testkit::cluster::{ClusterSpec, ProcessCluster};
use quorumlock_tls::Dialer;
use tonic::transport::{Channel, Endpoint};
use tonic::Code;

engine_tests!(
    check_a_tls_cluster_serves_the_rust_client_the_cli_and_python,
    check_connections_that_cannot_prove_who_they_are_or_prove_they_are_clients_are_refused,
    check_node_certificates_rotate_under_load_without_losing_a_session,
);

/// Bound on one CLI or Python run.
const RUN_TIME_MAX: Duration = Duration::from_secs(120);
/// Bound on waiting for a node's log to show a line.
const LOG_WAIT_MAX: Duration = Duration::from_secs(30);

fn exe() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_quorumlock"))
}

/// Runs `quorumlock certs --dir dir ARGS` and returns its output.
fn certs(dir: &Path, args: &[&str]) -> String {
    let output = std::process::Command::new(exe())
        .arg("certs")
        .arg("--dir")
        .arg(dir)
        .args(args)
        .output()
        .expect("run quorumlock certs");
    let stdout = String::from_utf8_lossy(&output.stdout).to_string();
    assert!(
        output.status.success(),
        "quorumlock certs {args:?} failed: {stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

/// The certificates of one cluster: its CA, three nodes, clients `alice`
/// and `bob`; and another CA with a client `mallory`.
struct Pki {
    dir: tempfile::TempDir,
}

impl Pki {
    fn new() -> Pki {
        let dir = tempfile::tempdir().unwrap();
        let pki = Pki { dir };
        let made = certs(
            &pki.ours(),
            &[
                "--node",
                "1=127.0.0.1",
                "--node",
                "2=127.0.0.1",
                "--node",
                "3=127.0.0.1",
                "--client",
                "alice",
                "--client",
                "bob",
            ],
        );
        assert!(made.contains("made a CA"), "{made}");
        certs(&pki.others(), &["--client", "mallory"]);
        pki
    }

    fn ours(&self) -> PathBuf {
        self.dir.path().join("ours")
    }

    fn others(&self) -> PathBuf {
        self.dir.path().join("others")
    }

    fn ca(&self) -> PathBuf {
        self.ours().join("ca.pem")
    }

    fn client_files(&self, dir: &Path, name: &str) -> (PathBuf, PathBuf) {
        (
            dir.join(format!("client-{name}.pem")),
            dir.join(format!("client-{name}-key.pem")),
        )
    }

    /// A TLS config trusting `ca` with client `name` of the CA in `dir`.
    fn tls(&self, ca: &Path, identity: Option<(&Path, &str)>) -> ClientTls {
        ClientTls::load(ClientTlsFiles {
            ca: ca.to_path_buf(),
            identity: identity.map(|(dir, name)| self.client_files(dir, name)),
        })
        .expect("load the client's TLS files")
    }

    fn alice(&self) -> ClientTls {
        self.tls(&self.ca(), Some((&self.ours(), "alice")))
    }

    /// The CLI flags of client `name`.
    fn cli_flags(&self, name: &str) -> Vec<String> {
        let (cert, key) = self.client_files(&self.ours(), name);
        vec![
            "--cacert".into(),
            self.ca().display().to_string(),
            "--cert".into(),
            cert.display().to_string(),
            "--key".into(),
            key.display().to_string(),
        ]
    }
}

/// A TLS cluster, and the slot it holds among the test binary's clusters.
async fn tls_cluster(engine: &str, pki: &Pki) -> (ProcessCluster, tokio::sync::OwnedSemaphorePermit) {
    let slot = common::cluster_slot().await;
    let ours = pki.ours().display().to_string();
    let mut spec = ClusterSpec::new(exe(), engine, 3);
    spec.heartbeat_ms = common::HEARTBEAT_MS;
    spec.election_timeout_ms = common::ELECTION_TIMEOUT_MS;
    spec.extra_args = vec![
        "--cert".into(),
        format!("{ours}/node-{{id}}.pem"),
        "--key".into(),
        format!("{ours}/node-{{id}}-key.pem"),
        "--ca".into(),
        format!("{ours}/ca.pem"),
    ];
    spec.client_tls = Some(pki.alice());
    let cluster = ProcessCluster::start(spec).await.expect("start a TLS cluster");
    (cluster, slot)
}

fn config(tls: Option<ClientTls>) -> ClientConfig {
    ClientConfig {
        connect_wait_max: Duration::from_secs(10),
        tls,
        ..ClientConfig::default()
    }
}

/// A channel to `addr` over TLS as `tls`'s client.
fn channel(addr: &str, tls: ClientTls) -> Channel {
    let endpoint = Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect_timeout(Duration::from_secs(5))
        .timeout(common::RPC_TIMEOUT);
    Dialer::tls(tls).channel(&endpoint, "127.0.0.1").unwrap()
}

async fn run(command: &mut tokio::process::Command) -> (bool, String) {
    let child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn");
    let output = tokio::time::timeout(RUN_TIME_MAX, child.wait_with_output())
        .await
        .expect("the command ran too long")
        .expect("wait for the command");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), text)
}

async fn check_a_tls_cluster_serves_the_rust_client_the_cli_and_python(engine: &str) {
    let pki = Pki::new();
    let (mut cluster, _slot) = tls_cluster(engine, &pki).await;
    let leader = cluster.wait_for_leader().await.unwrap();
    let follower = cluster.endpoints()[(leader.index + 1) % 3].clone();

    // The Rust client through a follower alone, so every call is forwarded
    // to the leader over the members' own mutual TLS.
    let client = Client::connect_with([format!("https://{follower}")], config(Some(pki.alice())))
        .await
        .expect("connect over TLS through a follower");
    let session = client.session(Duration::from_secs(10)).await.unwrap();
    let guard = session.lock("jobs/tls").await.unwrap();
    client
        .put("jobs/tls-output", "written over TLS", &guard)
        .await
        .unwrap();
    let entry = client
        .get("jobs/tls-output")
        .await
        .unwrap()
        .expect("the key exists");
    assert_eq!(entry.value, b"written over TLS");
    assert_eq!(entry.written_by, guard.fence());
    guard.release().await.unwrap();
    session.close().await.unwrap();

    // The CLI, with flags and with the environment.
    let endpoints = cluster.endpoints().join(",");
    let (ok, out) = run(tokio::process::Command::new(exe())
        .args(["acquire", "jobs/cli", "--ttl", "60s", "--endpoints", &endpoints])
        .args(pki.cli_flags("bob")))
    .await;
    assert!(ok, "acquire over TLS failed: {out}");
    assert!(out.contains("session=") && out.contains("token="), "{out}");
    let (cert, key) = pki.client_files(&pki.ours(), "bob");
    let (ok, out) = run(tokio::process::Command::new(exe())
        .args(["describe", "jobs/cli", "--endpoints", &endpoints])
        .env("QUORUMLOCK_CACERT", pki.ca())
        .env("QUORUMLOCK_CERT", &cert)
        .env("QUORUMLOCK_KEY", &key))
    .await;
    assert!(ok, "describe over TLS failed: {out}");
    assert!(out.contains("held"), "{out}");

    // The Python client, grpcio with TLS credentials.
    common::require_python_packages();
    let (alice_cert, alice_key) = pki.client_files(&pki.ours(), "alice");
    let script = common::repo_path("tests/python/lock_client_check.py");
    let (ok, out) = run(tokio::process::Command::new("python3")
        .arg(&script)
        .args([
            "--endpoints",
            &endpoints,
            "--lock",
            "t34/python",
            "--fenced-key",
            "t34/python-key",
        ])
        .arg("--cacert")
        .arg(pki.ca())
        .arg("--cert")
        .arg(&alice_cert)
        .arg("--key")
        .arg(&alice_key))
    .await;
    assert!(ok, "the Python client check over TLS failed:\n{out}");
    assert!(out.contains("OK: "), "{out}");
}

async fn check_connections_that_cannot_prove_who_they_are_or_prove_they_are_clients_are_refused(
    engine: &str,
) {
    let pki = Pki::new();
    let (mut cluster, _slot) = tls_cluster(engine, &pki).await;
    let leader = cluster.wait_for_leader().await.unwrap();
    let endpoints = cluster.endpoints();
    let quick = |tls| ClientConfig {
        connect_wait_max: Duration::from_secs(2),
        ..config(tls)
    };
    let refused = |what: &str, result: Result<Client, ClientError>| match result {
        Ok(_) => panic!("{what} was served"),
        Err(error) => error.to_string(),
    };

    let plaintext = refused(
        "a plaintext client",
        Client::connect_with(&endpoints, quick(None)).await,
    );
    let anonymous = refused(
        "a client without a certificate",
        Client::connect_with(&endpoints, quick(Some(pki.tls(&pki.ca(), None)))).await,
    );
    let foreign = refused(
        "a client whose certificate another CA signed",
        Client::connect_with(
            &endpoints,
            quick(Some(pki.tls(&pki.ca(), Some((&pki.others(), "mallory"))))),
        )
        .await,
    );
    let misled = refused(
        "a client that trusts another CA",
        Client::connect_with(
            &endpoints,
            quick(Some(
                pki.tls(&pki.others().join("ca.pem"), Some((&pki.ours(), "alice"))),
            )),
        )
        .await,
    );
    println!("plaintext: {plaintext}\nanonymous: {anonymous}\nforeign: {foreign}\nmisled: {misled}");
    // The nodes say whom they refused, and why.
    let log = std::fs::read_to_string(cluster.node(leader.index).log_path()).unwrap();
    assert!(
        log.contains("TLS handshake refused"),
        "the leader logged no refused handshake:\n{log}"
    );

    // A valid client certificate cannot speak the peer protocol...
    let leader_addr = endpoints[leader.index].clone();
    let follower_addr = endpoints[(leader.index + 1) % 3].clone();
    for addr in [&leader_addr, &follower_addr] {
        let status = match engine {
            "raft" => RaftPeerClient::new(channel(addr, pki.alice()))
                .vote(RaftPayload::default())
                .await
                .map(|_| ())
                .unwrap_err(),
            _ => PaxosPeerClient::new(channel(addr, pki.alice()))
                .deliver(PaxosBatch::default())
                .await
                .map(|_| ())
                .unwrap_err(),
        };
        assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
        assert!(status.message().contains("cluster members only"), "{status:?}");
        assert!(
            status.message().contains("CN=alice"),
            "the refusal names who: {status:?}"
        );
    }

    // ...nor pass a call off as forwarded, at the leader or at a follower;
    // the same call without the claim is served.
    for addr in [&leader_addr, &follower_addr] {
        let mut api = LockClient::new(channel(addr, pki.alice()));
        let mut forged = tonic::Request::new(OpenSessionRequest { ttl_ms: 10_000 });
        forged
            .metadata_mut()
            .insert(FORWARDED_HEADER, "1".parse().unwrap());
        let status = api.open_session(forged).await.unwrap_err();
        assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
        assert!(status.message().contains("forwarded"), "{status:?}");
        common::retry_unavailable("OpenSession", || {
            let mut api = api.clone();
            async move { api.open_session(OpenSessionRequest { ttl_ms: 10_000 }).await }
        })
        .await
        .expect("the honest call is served");
    }

    // A process holding a client certificate cannot start as a member.
    let (alice_cert, alice_key) = pki.client_files(&pki.ours(), "alice");
    let data = tempfile::tempdir().unwrap();
    let (ok, out) = run(tokio::process::Command::new(exe())
        .args([
            "serve",
            "--id",
            "4",
            "--listen",
            "127.0.0.1:0",
            "--peers",
            "4=127.0.0.1:1",
        ])
        .arg("--data-dir")
        .arg(data.path())
        .arg("--cert")
        .arg(&alice_cert)
        .arg("--key")
        .arg(&alice_key)
        .arg("--ca")
        .arg(pki.ca()))
    .await;
    assert!(!ok, "a node started with a client certificate: {out}");
    assert!(out.contains("does not carry this node's name"), "{out}");
}

/// Polls until node `index`'s log has `count` lines containing `needle`.
async fn wait_for_log_lines(cluster: &ProcessCluster, index: usize, needle: &str, count: usize) -> String {
    common::wait_until(
        &format!("node {} logs {count} x {needle:?}", index + 1),
        LOG_WAIT_MAX,
        || {
            let log = std::fs::read_to_string(cluster.node(index).log_path()).unwrap_or_default();
            async move {
                let seen = log.matches(needle).count();
                if seen >= count {
                    Ok(log)
                } else {
                    Err(format!("{seen} so far"))
                }
            }
        },
    )
    .await
}

/// The `serial=` value on the last log line containing `needle`.
fn last_serial(log: &str, needle: &str) -> String {
    let line = log
        .lines()
        .rev()
        .find(|line| line.contains(needle))
        .expect("a matching line");
    let start = line.find("serial=").expect("the line names a serial") + "serial=".len();
    line[start..].split_whitespace().next().unwrap().to_string()
}

async fn check_node_certificates_rotate_under_load_without_losing_a_session(engine: &str) {
    let pki = Pki::new();
    let (mut cluster, _slot) = tls_cluster(engine, &pki).await;
    cluster.wait_for_leader().await.unwrap();
    let endpoints = cluster.endpoints();

    // Two holders renewing short leases (one renewal every second) and
    // writing under their locks all through the rotation.
    let client = Client::connect_with(&endpoints, config(Some(pki.alice())))
        .await
        .unwrap();
    let mut holders = Vec::new();
    for name in ["jobs/rotate-a", "jobs/rotate-b"] {
        let session = client.session(Duration::from_secs(3)).await.unwrap();
        let guard = session.lock(name).await.unwrap();
        holders.push((session, guard));
    }
    let (stop_writes, stopped) = tokio::sync::watch::channel(false);
    let writer = {
        let client = client.clone();
        let fences: Vec<(Fence, _)> = holders
            .iter()
            .map(|(_, guard)| (guard.fence(), guard.session_key().clone()))
            .collect();
        tokio::spawn(async move {
            let mut writes = 0u64;
            while !*stopped.borrow() {
                for (fence, key) in &fences {
                    client
                        .put_fenced(&format!("{}-out", fence.lock), writes.to_string(), fence, key)
                        .await
                        .expect("a fenced write during the rotation");
                    writes += 1;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            writes
        })
    };

    for (index, endpoint) in endpoints.iter().enumerate() {
        let id = index + 1;
        let started = wait_for_log_lines(&cluster, index, "node serving over TLS", 1).await;
        let old_serial = last_serial(&started, "node serving over TLS");
        certs(&pki.ours(), &["--node", &format!("{id}=127.0.0.1")]);
        let pid = cluster.node(index).pid().expect("the node runs");
        kill(Pid::from_raw(pid as i32), Signal::SIGHUP).unwrap();
        let log = wait_for_log_lines(&cluster, index, "TLS files reloaded", 1).await;
        let new_serial = last_serial(&log, "TLS files reloaded");
        assert_ne!(
            new_serial, old_serial,
            "node {id} still serves its old certificate"
        );
        // A new connection to the node gets, and accepts, the new certificate.
        let fresh = Client::connect_with([endpoint.as_str()], config(Some(pki.alice())))
            .await
            .expect("a new connection after the rotation");
        fresh.status().await.expect("Status over the new certificate");
    }

    // Let every lease renew a few times over the rotated nodes.
    tokio::time::sleep(Duration::from_secs(4)).await;
    stop_writes.send_replace(true);
    let writes = writer.await.expect("the writer finished");
    assert!(writes > 0, "no write was made during the rotation");
    for (session, guard) in &holders {
        assert!(
            !session.is_lost(),
            "session {} was lost: {:?}",
            session.id(),
            session.lost_reason()
        );
        let held = client.describe(guard.name()).await.unwrap();
        assert_eq!(
            held.holder.map(|holder| holder.session_id),
            Some(session.id()),
            "{} changed hands during the rotation",
            guard.name()
        );
    }
    println!("{writes} fenced writes during the rotation; both sessions and locks intact");
}
