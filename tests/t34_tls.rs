//! TLS on every link, through real processes: a cluster of three
//! `quorumlock serve` processes whose certificates `quorumlock certs` made
//! serves the Rust client, the CLI and the Python client over mutual TLS;
//! connections that cannot prove who they are, or that prove they are a
//! client, are refused the API and the member-only parts; node
//! certificates rotate under load, one SIGHUP at a time, with no session
//! lost; and a dead node is replaced by one that joins with its own
//! certificate, while the removed node's certificate is refused.

mod common;

use std::time::Duration;

use common::pki::{certs, client_config, exe, ids_with_role, run, tls_channel, wait_for_log_lines, Pki};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use quorumlock_client::{Client, ClientConfig, ClientError, ClientTls, ClientTlsFiles, Fence};
use quorumlock_core::consensus::RETIRED_METADATA;
use quorumlock_proto::headers::FORWARDED_HEADER;
use quorumlock_proto::paxos::paxos_peer_client::PaxosPeerClient;
use quorumlock_proto::paxos::PaxosBatch;
use quorumlock_proto::raft::raft_peer_client::RaftPeerClient;
use quorumlock_proto::raft::RaftPayload;
use quorumlock_proto::v1::lock_client::LockClient;
use quorumlock_proto::v1::OpenSessionRequest;
use quorumlock_testkit::cluster::{ClusterSpec, ProcessCluster};
use tonic::Code;

engine_tests!(
    check_a_tls_cluster_serves_the_rust_client_the_cli_and_python,
    check_connections_that_cannot_prove_who_they_are_or_prove_they_are_clients_are_refused,
    check_node_certificates_rotate_under_load_without_losing_a_session,
    check_a_dead_node_of_a_tls_cluster_is_replaced_and_its_certificate_refused,
);

/// A TLS cluster, and the slot it holds among the test binary's clusters.
async fn tls_cluster(engine: &str, pki: &Pki) -> (ProcessCluster, tokio::sync::OwnedSemaphorePermit) {
    let slot = common::cluster_slot().await;
    let mut spec = ClusterSpec::new(exe(), engine, 3);
    spec.heartbeat_ms = common::HEARTBEAT_MS;
    spec.election_timeout_ms = common::ELECTION_TIMEOUT_MS;
    spec.extra_args = pki.serve_flags();
    spec.client_tls = Some(pki.client("alice"));
    let cluster = ProcessCluster::start(spec).await.expect("start a TLS cluster");
    (cluster, slot)
}

async fn check_a_tls_cluster_serves_the_rust_client_the_cli_and_python(engine: &str) {
    let pki = Pki::new(&["alice", "bob"]);
    let (mut cluster, _slot) = tls_cluster(engine, &pki).await;
    let leader = cluster.wait_for_leader().await.unwrap();
    let follower = cluster.endpoints()[(leader.index + 1) % 3].clone();

    // The Rust client through a follower alone, so every call is forwarded
    // to the leader over the members' own mutual TLS.
    let client = Client::connect_with(
        [format!("https://{follower}")],
        client_config(Some(pki.client("alice"))),
    )
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
    let pki = Pki::new(&["alice", "bob"]);
    let (mut cluster, _slot) = tls_cluster(engine, &pki).await;
    let leader = cluster.wait_for_leader().await.unwrap();
    let endpoints = cluster.endpoints();
    let quick = |tls| ClientConfig {
        connect_wait_max: Duration::from_secs(2),
        ..client_config(tls)
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
            "raft" => RaftPeerClient::new(tls_channel(addr, pki.client("alice")))
                .vote(RaftPayload::default())
                .await
                .map(|_| ())
                .unwrap_err(),
            _ => PaxosPeerClient::new(tls_channel(addr, pki.client("alice")))
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
        let mut api = LockClient::new(tls_channel(addr, pki.client("alice")));
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
    let pki = Pki::new(&["alice", "bob"]);
    let (mut cluster, _slot) = tls_cluster(engine, &pki).await;
    cluster.wait_for_leader().await.unwrap();
    let endpoints = cluster.endpoints();

    // Two holders renewing short leases (one renewal every second) and
    // writing under their locks all through the rotation.
    let client = Client::connect_with(&endpoints, client_config(Some(pki.client("alice"))))
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
        let fresh = Client::connect_with([endpoint.as_str()], client_config(Some(pki.client("alice"))))
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

/// Membership changes over mutual TLS, through the real path: a dead
/// node of a TLS cluster is replaced by a new one that joins with its own
/// node certificate, the cluster survives one more loss with the lock,
/// its token and the fenced value intact, and the removed node's
/// certificate no longer opens the peer protocol.
async fn check_a_dead_node_of_a_tls_cluster_is_replaced_and_its_certificate_refused(engine: &str) {
    const LOCK: &str = "jobs/nightly";
    const VALUE_KEY: &str = "jobs/nightly/state";
    let pki = Pki::new(&["alice"]);
    // Node 4's certificate, from the same CA.
    certs(&pki.ours(), &["--node", "4=127.0.0.1"]);
    let (mut cluster, _slot) = tls_cluster(engine, &pki).await;
    let endpoints = cluster.endpoints();
    let lock_client = |addr: &str| LockClient::new(tls_channel(addr, pki.client("alice")));
    let member = |args: &[&str], endpoints: &[String]| {
        let mut command = tokio::process::Command::new(exe());
        command
            .arg("member")
            .args(args)
            .args(["--endpoints", &endpoints.join(",")])
            .args(pki.cli_flags("alice"));
        command
    };

    // A holder with a lock and a value written under it; its session
    // outlives the test, so it needs no keepalive across the changes.
    let client = lock_client(&endpoints[0]);
    let opened = common::retry_unavailable("OpenSession", || {
        common::open_session(&client, common::LONG_TTL_MS)
    })
    .await
    .unwrap();
    let holder = common::Key::of(&opened);
    let token = common::acquire_granted(&client, holder, LOCK, 0).await;
    common::put(&client, VALUE_KEY, "running", common::fence(LOCK, token), holder)
        .await
        .unwrap();

    // Node 3 dies with its disk.
    cluster.node_mut(2).kill().unwrap();
    std::fs::remove_dir_all(cluster.data_dir(2)).unwrap();

    // Node 4 joins with an empty data directory and its own certificate.
    let port = quorumlock_testkit::cluster::free_ports(1).unwrap()[0];
    let addr4 = format!("127.0.0.1:{port}");
    cluster
        .join(4, &addr4, &endpoints[..1])
        .expect("start node 4 with serve --join over TLS");
    let survivors = vec![endpoints[0].clone(), endpoints[1].clone()];
    let (added, output) = run(&mut member(&["add", "--id", "4", "--addr", &addr4], &survivors)).await;
    assert!(added, "member add over TLS failed: {output}");
    assert_eq!(ids_with_role(&output, "learner"), vec![4], "{output}");

    // Promote once node 4 caught up: the leader reached it over TLS.
    let admin = Client::connect_with(survivors.clone(), client_config(Some(pki.client("alice"))))
        .await
        .unwrap();
    common::wait_until("node 4 to catch up", common::CONDITION_WAIT, || async {
        let listed = admin.list_members().await.map_err(|error| error.to_string())?;
        match listed.members.iter().find(|member| member.id == 4) {
            Some(member) if member.matched_index > 0 && member.lag <= 1_000 => Ok(()),
            other => Err(format!("node 4 is {other:?}")),
        }
    })
    .await;
    let (promoted, output) = run(&mut member(&["promote", "--id", "4"], &survivors)).await;
    assert!(promoted, "member promote over TLS failed: {output}");
    let (removed, output) = run(&mut member(&["remove", "--id", "3"], &survivors)).await;
    assert!(removed, "member remove over TLS failed: {output}");
    assert_eq!(ids_with_role(&output, "voter"), vec![1, 2, 4], "{output}");
    assert!(ids_with_role(&output, "learner").is_empty(), "{output}");

    // The new node serves, and one more loss is survived: node 1 goes, and
    // nodes 2 and 4 are the quorum.
    let (listed, output) = run(&mut member(&["list"], std::slice::from_ref(&addr4))).await;
    assert!(listed, "member list through node 4 failed: {output}");
    cluster.node_mut(0).kill().unwrap();
    let remaining = vec![endpoints[1].clone(), addr4.clone()];
    let client = common::wait_until("a leader among nodes 2 and 4", common::CONDITION_WAIT, || async {
        for addr in &remaining {
            let client = lock_client(addr);
            if common::describe(&client, LOCK).await.is_ok() {
                return Ok(client);
            }
        }
        Err("neither answers Describe".to_string())
    })
    .await;
    common::assert_held(&client, LOCK, holder.id, token, 0).await;
    assert_eq!(common::get(&client, VALUE_KEY).await.unwrap().value, b"running");
    let newcomer = common::retry_unavailable("OpenSession", || {
        common::open_session(&client, common::LONG_TTL_MS)
    })
    .await
    .unwrap();
    let fresh = common::acquire_granted(&client, common::Key::of(&newcomer), "jobs/other", 0).await;
    assert!(fresh > token, "token {fresh} after {token}");
    common::put(
        &client,
        VALUE_KEY,
        "still mine",
        common::fence(LOCK, token),
        holder,
    )
    .await
    .expect("the holder writes under its lock after the changes");

    // Node 3's certificate, valid and signed by the cluster's CA, no longer
    // opens the peer protocol: its id is retired.
    let node3 = ClientTls::load(ClientTlsFiles {
        ca: pki.ca(),
        identity: Some((pki.ours().join("node-3.pem"), pki.ours().join("node-3-key.pem"))),
    })
    .expect("load node 3's files");
    for addr in &remaining {
        let status = common::wait_until(
            &format!("{addr} to refuse node 3's certificate"),
            common::CONDITION_WAIT,
            || async {
                let channel = tls_channel(addr, node3.clone());
                let answer = match engine {
                    "raft" => RaftPeerClient::new(channel)
                        .vote(RaftPayload::default())
                        .await
                        .map(|_| ()),
                    _ => PaxosPeerClient::new(channel)
                        .deliver(PaxosBatch::default())
                        .await
                        .map(|_| ()),
                };
                match answer {
                    Err(status) if status.code() == Code::PermissionDenied => Ok(status),
                    other => Err(format!("answered {other:?}")),
                }
            },
        )
        .await;
        assert!(
            status.message().contains("cluster members only")
                && status.message().contains("node 3 was removed from this cluster"),
            "the refusal names why: {status:?}"
        );
        assert_eq!(
            status
                .metadata()
                .get(RETIRED_METADATA)
                .and_then(|value| value.to_str().ok()),
            Some("3"),
            "the refusal tells a removed node it was removed: {status:?}"
        );
    }
}
