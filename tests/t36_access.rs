//! Access control through real processes: clusters of three `quorumlock
//! serve` processes with an access policy. Each identity (a client
//! certificate's name, or a bearer token's) gets exactly what its roles
//! grant, through the leader and through a follower that forwards; a
//! refusal names the identity, the operation and the resource, and is an
//! audit line; the state digest is for admins only and rate-limited; a
//! policy reloaded with SIGHUP applies at once, without a restart; and no
//! client can claim another identity or the forwarded mark by setting
//! metadata itself.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::pki::{client_config, exe, new_token, run, tls_channel, wait_for_log_lines, Pki};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use quorumlock_client::{BearerToken, Client, ClientError, ClientTls, ClientTlsFiles};
use quorumlock_proto::details;
use quorumlock_proto::headers::{FORWARDED_HEADER, IDENTITY_HEADER};
use quorumlock_proto::v1::cluster_client::ClusterClient;
use quorumlock_proto::v1::lock_client::LockClient;
use quorumlock_proto::v1::{
    AcquireRequest, CloseSessionRequest, DescribeRequest, ErrorReason, Fence, ForceReleaseRequest,
    GetRequest, OpenSessionRequest, PutRequest, ReleaseRequest, SaveSnapshotRequest, StatusRequest,
};
use quorumlock_testkit::cluster::{ClusterSpec, ProcessCluster};
use tonic::metadata::{BinaryMetadataValue, MetadataValue};
use tonic::transport::Channel;
use tonic::{Code, Request, Status};

engine_tests!(
    check_each_identity_gets_what_its_roles_grant_and_a_reloaded_policy_applies_at_once,
    check_bearer_tokens_identify_callers_of_a_plaintext_cluster,
    check_no_client_can_claim_another_identity_or_the_forwarded_mark,
);

/// A policy with jobs and billing teams and an operator.
const TEAMS: &str = r#"
[roles.jobs]
locks = ["jobs/"]
keys_read_write = ["jobs/"]

[roles.billing]
locks = ["billing/"]
keys_read_write = ["billing/"]

[roles.operator]
admin = true

[identities]
alice = ["jobs"]
bob = ["billing", "operator"]
carol = []
"#;

/// Starts a cluster with `policy` as its access policy and `args` besides.
async fn policy_cluster(
    engine: &str,
    policy: &Path,
    args: Vec<String>,
    client_tls: Option<ClientTls>,
) -> (ProcessCluster, tokio::sync::OwnedSemaphorePermit) {
    let slot = common::cluster_slot().await;
    let mut spec = ClusterSpec::new(exe(), engine, 3);
    spec.heartbeat_ms = common::HEARTBEAT_MS;
    spec.election_timeout_ms = common::ELECTION_TIMEOUT_MS;
    spec.extra_args = args;
    spec.extra_args
        .extend(["--auth-policy".to_string(), policy.display().to_string()]);
    spec.client_tls = client_tls;
    let cluster = ProcessCluster::start(spec)
        .await
        .expect("start a cluster with an access policy");
    (cluster, slot)
}

fn write_policy(dir: &Path, text: &str) -> PathBuf {
    let path = dir.join("policy.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// A session opened by whoever `api` authenticates as: its id and secret.
async fn open(
    api: &LockClient<Channel>,
    with: impl Fn(Request<OpenSessionRequest>) -> Request<OpenSessionRequest>,
) -> (u64, Vec<u8>) {
    let opened = common::retry_unavailable("OpenSession", || {
        let mut api = api.clone();
        let request = with(Request::new(OpenSessionRequest {
            ttl_ms: common::LONG_TTL_MS,
        }));
        async move { api.open_session(request).await }
    })
    .await
    .expect("the session opens")
    .into_inner();
    (opened.session_id, opened.session_secret)
}

fn no_metadata<T>(request: Request<T>) -> Request<T> {
    request
}

/// Asserts a refusal with `code` whose typed detail has `reason` and whose
/// message names every one of `names`.
fn assert_refused<T: std::fmt::Debug>(
    what: &str,
    result: Result<T, Status>,
    code: Code,
    reason: ErrorReason,
    names: &[&str],
) {
    let status = common::expect_code(what, result, code);
    let detail = details::detail(&status).unwrap_or_else(|| panic!("{what}: no typed detail in {status:?}"));
    assert_eq!(detail.reason, reason as i32, "{what}: {status:?}");
    for name in names {
        assert!(
            status.message().contains(name),
            "{what}: the refusal does not name {name}: {status:?}"
        );
    }
}

async fn acquire(api: &LockClient<Channel>, session: (u64, &[u8]), name: &str) -> Result<u64, Status> {
    let mut api = api.clone();
    let response = api
        .acquire(AcquireRequest {
            session_id: session.0,
            name: name.into(),
            wait_ms: 0,
            session_secret: session.1.to_vec(),
            ..AcquireRequest::default()
        })
        .await?
        .into_inner();
    assert!(response.acquired, "{name} was free, so the acquire takes it");
    Ok(response.token)
}

async fn put(
    api: &LockClient<Channel>,
    session: (u64, &[u8]),
    key: &str,
    fence: (&str, u64),
) -> Result<(), Status> {
    let mut api = api.clone();
    api.put(PutRequest {
        key: key.into(),
        value: b"v".to_vec(),
        fence: Some(Fence {
            lock: fence.0.into(),
            token: fence.1,
        }),
        session_id: session.0,
        session_secret: session.1.to_vec(),
    })
    .await
    .map(|_| ())
}

async fn digest(
    channel: Channel,
    with: impl Fn(Request<StatusRequest>) -> Request<StatusRequest>,
) -> Result<Vec<u8>, Status> {
    let request = with(Request::new(StatusRequest {
        include_state_digest: true,
    }));
    Ok(ClusterClient::new(channel)
        .status(request)
        .await?
        .into_inner()
        .state_digest)
}

/// `Cluster/SaveSnapshot`: the whole file, or the refusal.
async fn save_snapshot(channel: Channel) -> Result<Vec<u8>, Status> {
    let mut chunks = ClusterClient::new(channel)
        .save_snapshot(SaveSnapshotRequest {})
        .await?
        .into_inner();
    let mut file = Vec::new();
    while let Some(chunk) = chunks.message().await? {
        file.extend_from_slice(&chunk.data);
    }
    Ok(file)
}

/// Sends SIGHUP to every node and waits until each logs the reload of its
/// policy for the `count`th time; the nodes' pids stay the same.
async fn reload_everywhere(cluster: &ProcessCluster, count: usize) {
    for index in 0..cluster.endpoints().len() {
        let pid = cluster.node(index).pid().expect("the node runs");
        kill(Pid::from_raw(pid as i32), Signal::SIGHUP).unwrap();
        wait_for_log_lines(cluster, index, "access policy reloaded", count).await;
        assert_eq!(cluster.node(index).pid(), Some(pid), "the node did not restart");
    }
}

async fn check_each_identity_gets_what_its_roles_grant_and_a_reloaded_policy_applies_at_once(engine: &str) {
    let pki = Pki::new(&["alice", "bob", "carol"]);
    let dir = tempfile::tempdir().unwrap();
    let policy = write_policy(dir.path(), TEAMS);
    let (mut cluster, _slot) =
        policy_cluster(engine, &policy, pki.serve_flags(), Some(pki.client("alice"))).await;
    let leader = cluster.wait_for_leader().await.unwrap();
    let endpoints = cluster.endpoints();
    let leader_addr = endpoints[leader.index].clone();
    let follower_addr = endpoints[(leader.index + 1) % 3].clone();

    for (place, addr) in [("follower", &follower_addr), ("leader", &leader_addr)] {
        let alice = LockClient::new(tls_channel(addr, pki.client("alice")));
        let bob = LockClient::new(tls_channel(addr, pki.client("bob")));
        let (session, secret) = open(&alice, no_metadata).await;
        let mine = (session, secret.as_slice());
        let lock = format!("jobs/{place}");
        let token = acquire(&alice, mine, &lock)
            .await
            .expect("alice takes a jobs/ lock");
        put(&alice, mine, &format!("jobs/{place}-out"), (&lock, token))
            .await
            .expect("alice writes a jobs/ key under it");

        let billing = format!("billing/{place}");
        assert_refused(
            "alice acquires a billing/ lock",
            acquire(&alice, mine, &billing).await,
            Code::PermissionDenied,
            ErrorReason::AccessDenied,
            &["\"alice\"", "acquire", &billing],
        );
        assert_refused(
            "alice writes a billing/ key",
            put(&alice, mine, &billing, (&lock, token)).await,
            Code::PermissionDenied,
            ErrorReason::AccessDenied,
            &["\"alice\"", "put", &billing],
        );
        assert_refused(
            "alice reads a billing/ key",
            alice
                .clone()
                .get(GetRequest {
                    key: billing.clone().into(),
                    fence: None,
                })
                .await,
            Code::PermissionDenied,
            ErrorReason::AccessDenied,
            &["\"alice\"", "get", &billing],
        );

        // Bob holds alice's session id and secret: the session is still
        // hers alone, since bob is not the identity that opened it.
        assert_refused(
            "bob closes alice's session with her secret",
            bob.clone()
                .close_session(CloseSessionRequest {
                    session_id: session,
                    session_secret: secret.clone(),
                })
                .await,
            Code::PermissionDenied,
            ErrorReason::NotSessionOwner,
            &[],
        );
        let held = alice
            .clone()
            .describe(DescribeRequest {
                name: lock.clone().into(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            (held.holder_session_id, held.token),
            (session, token),
            "alice's lock is intact"
        );

        // Forcing a grant free is for admins: alice may not, even her own;
        // bob, an operator, may.
        let stuck_lock = format!("jobs/{place}-stuck");
        let stuck = acquire(&alice, mine, &stuck_lock)
            .await
            .expect("alice takes another lock");
        let force = |client: &LockClient<Channel>| {
            let mut client = client.clone();
            let request = ForceReleaseRequest {
                name: stuck_lock.clone().into(),
                token: stuck,
            };
            async move { client.force_release(request).await }
        };
        assert_refused(
            "alice forces a lock free",
            force(&alice).await,
            Code::PermissionDenied,
            ErrorReason::AccessDenied,
            &["\"alice\"", "force_release"],
        );
        let forced = force(&bob)
            .await
            .expect("an operator forces a lock free")
            .into_inner();
        assert_eq!(forced.session_id, session, "alice's grant was the one freed");

        // Carol is in the policy with no role: she can do nothing.
        let carol = LockClient::new(tls_channel(addr, pki.client("carol")));
        assert_refused(
            "carol opens a session",
            carol
                .clone()
                .open_session(OpenSessionRequest { ttl_ms: 10_000 })
                .await,
            Code::PermissionDenied,
            ErrorReason::AccessDenied,
            &["\"carol\"", "no role"],
        );

        alice
            .clone()
            .release(ReleaseRequest {
                session_id: session,
                name: lock.into(),
                token,
                session_secret: secret,
            })
            .await
            .expect("alice releases");
    }

    // The state digest: refused to a non-admin, served to an admin, and
    // refused once the rate is used up.
    assert_refused(
        "alice asks for the state digest",
        digest(tls_channel(&follower_addr, pki.client("alice")), no_metadata).await,
        Code::PermissionDenied,
        ErrorReason::AccessDenied,
        &["\"alice\"", "state digest", "admin"],
    );
    let bob_status = tls_channel(&follower_addr, pki.client("bob"));
    let served = digest(bob_status.clone(), no_metadata)
        .await
        .expect("bob is an admin");
    assert_eq!(served.len(), 32);
    let mut limited = None;
    for _ in 0..500 {
        if let Err(status) = digest(bob_status.clone(), no_metadata).await {
            limited = Some(status);
            break;
        }
    }
    let status = limited.expect("500 digests in a row hit the rate limit");
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    let detail = details::detail(&status).expect("a typed detail");
    assert_eq!(detail.reason, ErrorReason::RateLimited as i32, "{status:?}");
    assert!(detail.retry_after_ms > 0, "{status:?}");

    // A backup is an admin call too: refused to alice wherever she asks,
    // sent to bob by the leader, and a follower points bob there.
    assert_refused(
        "alice asks for a snapshot",
        save_snapshot(tls_channel(&leader_addr, pki.client("alice"))).await,
        Code::PermissionDenied,
        ErrorReason::AccessDenied,
        &["\"alice\"", "snapshot save", "admin"],
    );
    let file = save_snapshot(tls_channel(&leader_addr, pki.client("bob")))
        .await
        .expect("bob is an admin");
    let (header, _) = quorumlock_core::backup::read_backup(&file).expect("the leader's backup checks out");
    assert!(header.index > 0, "{header:?}");
    assert_refused(
        "bob asks a follower for a snapshot",
        save_snapshot(tls_channel(&follower_addr, pki.client("bob"))).await,
        Code::Unavailable,
        ErrorReason::NotLeader,
        &["leader"],
    );

    // Every refusal is an audit line on the node that judged it.
    let log = std::fs::read_to_string(cluster.node(leader.index).log_path()).unwrap();
    let audit: Vec<&str> = log
        .lines()
        .filter(|line| line.contains("quorumlock::audit"))
        .collect();
    assert!(
        audit
            .iter()
            .any(|line| line.contains("denied") && line.contains("billing/leader") && line.contains("alice")),
        "no audit line of alice's refusal:\n{}",
        audit.join("\n")
    );
    let follower_log = std::fs::read_to_string(cluster.node((leader.index + 1) % 3).log_path()).unwrap();
    assert!(
        follower_log
            .lines()
            .any(|line| line.contains("quorumlock::audit") && line.contains("admin call")),
        "the follower logged no audit line of bob's digest"
    );

    // Billing is given to alice too; after SIGHUP, without a restart, she
    // takes a billing/ lock through the follower.
    write_policy(
        dir.path(),
        &TEAMS.replace("alice = [\"jobs\"]", "alice = [\"jobs\", \"billing\"]"),
    );
    reload_everywhere(&cluster, 1).await;
    let alice = LockClient::new(tls_channel(&follower_addr, pki.client("alice")));
    let (session, secret) = open(&alice, no_metadata).await;
    acquire(&alice, (session, &secret), "billing/after-reload")
        .await
        .expect("the reloaded policy lets alice take billing/ locks");

    // A broken policy is refused on reload and the one in force stays.
    write_policy(dir.path(), "[identities]\nalice = [\"no-such-role\"]\n");
    for index in 0..3 {
        let pid = cluster.node(index).pid().unwrap();
        kill(Pid::from_raw(pid as i32), Signal::SIGHUP).unwrap();
        wait_for_log_lines(&cluster, index, "access policy not reloaded", 1).await;
    }
    acquire(&alice, (session, &secret), "billing/after-bad-reload")
        .await
        .expect("the policy in force stays after a broken one is refused");
}

fn token_config(token: &str, tls: Option<ClientTls>) -> quorumlock_client::ClientConfig {
    quorumlock_client::ClientConfig {
        token: Some(BearerToken::new(token).unwrap()),
        ..client_config(tls)
    }
}

fn code_of(error: &ClientError) -> Option<Code> {
    match error {
        ClientError::Rpc { code, .. } => Some(*code),
        _ => None,
    }
}

async fn check_bearer_tokens_identify_callers_of_a_plaintext_cluster(engine: &str) {
    let dir = tempfile::tempdir().unwrap();
    let (ci, ci_entry) = new_token("ci").await;
    let (python, python_entry) = new_token("python").await;
    let text = format!(
        "[roles.jobs]\nlocks = [\"jobs/\"]\nkeys_read_write = [\"jobs/\"]\n\n[identities]\nci = [\"jobs\"]\npython = [\"jobs\"]\n\n{ci_entry}\n{python_entry}"
    );
    let policy = write_policy(dir.path(), &text);
    let (mut cluster, _slot) = policy_cluster(engine, &policy, Vec::new(), None).await;
    let leader = cluster.wait_for_leader().await.unwrap();
    let endpoints = cluster.endpoints();
    let follower = endpoints[(leader.index + 1) % 3].clone();

    // The Rust client with a token, through a follower alone: the follower
    // passes the token on and the leader checks it itself.
    let client = Client::connect_with([follower.as_str()], token_config(&ci, None))
        .await
        .unwrap();
    let session = client
        .session(Duration::from_secs(10))
        .await
        .expect("ci opens a session");
    let guard = session.lock("jobs/token").await.expect("ci takes a jobs/ lock");
    client.put("jobs/token-out", "by token", &guard).await.unwrap();
    assert_eq!(
        client.get("jobs/token-out").await.unwrap().unwrap().value,
        b"by token"
    );
    let refused = match session.try_lock("billing/token").await {
        Ok(_) => panic!("ci took a billing/ lock its roles do not grant"),
        Err(error) => error,
    };
    assert_eq!(code_of(&refused), Some(Code::PermissionDenied), "{refused}");
    assert!(refused.to_string().contains("\"ci\""), "{refused}");
    guard.release().await.unwrap();
    session.close().await.unwrap();

    // A watch needs a grant covering everything it selects: jobs/ is ci's,
    // the whole keyspace and billing/ are not.
    let mut watch = client
        .watch(quorumlock_client::WatchOptions::prefix("jobs/").from_revision(1))
        .await
        .expect("ci watches jobs/");
    let first = watch.next().await.expect("ci's own events");
    assert!(first.lock.starts_with("jobs/"), "{first:?}");
    for prefix in ["", "billing/", "job"] {
        let refused = match client
            .watch(quorumlock_client::WatchOptions::prefix(prefix))
            .await
        {
            Ok(_) => panic!("ci watched {prefix:?}, which its roles do not cover"),
            Err(error) => error,
        };
        assert_eq!(
            code_of(&refused),
            Some(Code::PermissionDenied),
            "{prefix:?}: {refused}"
        );
        assert!(refused.to_string().contains("may not watch"), "{refused}");
    }

    // A token the policy does not list, and no token at all: UNAUTHENTICATED.
    for (what, config) in [
        ("an unknown token", token_config("qlt_not-a-listed-token", None)),
        ("no token", client_config(None)),
    ] {
        let client = Client::connect_with([follower.as_str()], config).await.unwrap();
        let error = client
            .session(Duration::from_secs(10))
            .await
            .map(|_| ())
            .unwrap_err();
        assert_eq!(code_of(&error), Some(Code::Unauthenticated), "{what}: {error}");
    }

    // The CLI with the token in the environment, and without it.
    let endpoint_list = endpoints.join(",");
    let (ok, out) = run(tokio::process::Command::new(exe())
        .args([
            "acquire",
            "jobs/cli",
            "--ttl",
            "60s",
            "--endpoints",
            &endpoint_list,
        ])
        .env("QUORUMLOCK_AUTH_TOKEN", &ci))
    .await;
    assert!(ok, "acquire with a token failed: {out}");
    assert!(out.contains("session=") && !out.contains(&ci), "{out}");
    let (ok, out) = run(tokio::process::Command::new(exe())
        .args([
            "acquire",
            "jobs/cli-anonymous",
            "--ttl",
            "60s",
            "--endpoints",
            &endpoint_list,
        ])
        .env_remove("QUORUMLOCK_AUTH_TOKEN"))
    .await;
    assert!(!ok && out.contains("UNAUTHENTICATED"), "{out}");

    // The Python client with its own token.
    common::require_python_packages();
    let (ok, out) = run(tokio::process::Command::new("python3")
        .arg(common::repo_path("tests/python/lock_client_check.py"))
        .args([
            "--endpoints",
            &endpoint_list,
            "--lock",
            "jobs/python",
            "--fenced-key",
            "jobs/python-key",
            "--token-env",
            "QUORUMLOCK_CHECK_TOKEN",
        ])
        .env("QUORUMLOCK_CHECK_TOKEN", &python))
    .await;
    assert!(ok, "the Python client check with a token failed:\n{out}");

    // Nobody asserts an identity to a plaintext node, at the leader or a
    // follower, even with the forwarded mark and a valid token.
    for addr in [&endpoints[leader.index], &follower] {
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect_lazy();
        let mut api = LockClient::new(channel);
        let mut forged = Request::new(OpenSessionRequest { ttl_ms: 10_000 });
        forged
            .metadata_mut()
            .insert_bin(IDENTITY_HEADER, BinaryMetadataValue::from_bytes(b"ci"));
        forged
            .metadata_mut()
            .insert(FORWARDED_HEADER, MetadataValue::from_static("1"));
        forged
            .metadata_mut()
            .insert("authorization", format!("Bearer {python}").parse().unwrap());
        let status = api.open_session(forged).await.unwrap_err();
        assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
        assert!(status.message().contains("identity"), "{status:?}");
    }
}

async fn check_no_client_can_claim_another_identity_or_the_forwarded_mark(engine: &str) {
    let pki = Pki::new(&["alice"]);
    let dir = tempfile::tempdir().unwrap();
    let (ops, ops_entry) = new_token("ops").await;
    let text = format!(
        "[roles.jobs]\nlocks = [\"jobs/\"]\n\n[roles.operator]\nadmin = true\n\n[identities]\nalice = [\"jobs\"]\nops = [\"jobs\", \"operator\"]\n\n{ops_entry}"
    );
    let policy = write_policy(dir.path(), &text);
    let mut args = pki.serve_flags();
    args.extend(["--client-certs".to_string(), "optional".to_string()]);
    let (mut cluster, _slot) = policy_cluster(engine, &policy, args, Some(pki.client("alice"))).await;
    let leader = cluster.wait_for_leader().await.unwrap();
    let endpoints = cluster.endpoints();
    let leader_addr = endpoints[leader.index].clone();
    let follower_addr = endpoints[(leader.index + 1) % 3].clone();
    let ca_only = ClientTls::load(ClientTlsFiles {
        ca: pki.ca(),
        identity: None,
    })
    .unwrap();

    // The operator comes with a token and no certificate, through a
    // follower, which vouches for it to the leader over the members' TLS.
    let as_ops = |request: Request<OpenSessionRequest>| {
        let mut request = request;
        request
            .metadata_mut()
            .insert("authorization", format!("Bearer {ops}").parse().unwrap());
        request
    };
    let ops_api = LockClient::new(tls_channel(&follower_addr, ca_only.clone()));
    let (session, secret) = open(&ops_api, as_ops).await;
    let client = Client::connect_with(
        [format!("https://{follower_addr}")],
        token_config(&ops, Some(ca_only.clone())),
    )
    .await
    .unwrap();
    let ops_session = client
        .session(Duration::from_secs(10))
        .await
        .expect("ops over TLS with a token");
    let guard = ops_session.lock("jobs/ops").await.unwrap();

    for addr in [&leader_addr, &follower_addr] {
        let alice = LockClient::new(tls_channel(addr, pki.client("alice")));
        // Alice claims to be the operator, with and without the forwarded
        // mark, on the lock API and on the admin-only digest.
        for mark in [false, true] {
            let mut forged = Request::new(AcquireRequest {
                session_id: session,
                name: "jobs/claimed".into(),
                wait_ms: 0,
                session_secret: secret.clone(),
                ..AcquireRequest::default()
            });
            forged
                .metadata_mut()
                .insert_bin(IDENTITY_HEADER, BinaryMetadataValue::from_bytes(b"ops"));
            if mark {
                forged
                    .metadata_mut()
                    .insert(FORWARDED_HEADER, MetadataValue::from_static("1"));
            }
            let status = alice.clone().acquire(forged).await.unwrap_err();
            assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
            assert!(
                status.message().contains("CN=alice"),
                "the refusal names who: {status:?}"
            );
        }
        let claim_ops = |mut request: Request<StatusRequest>| {
            request
                .metadata_mut()
                .insert_bin(IDENTITY_HEADER, BinaryMetadataValue::from_bytes(b"ops"));
            request
        };
        let status = digest(tls_channel(addr, pki.client("alice")), claim_ops)
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");

        // Alice with the operator's session id and secret is still not its owner.
        assert_refused(
            "alice acquires with the operator's session",
            acquire(&alice, (session, &secret), "jobs/stolen").await,
            Code::PermissionDenied,
            ErrorReason::NotSessionOwner,
            &[],
        );

        // Neither a certificate nor a token: UNAUTHENTICATED.
        let anonymous = LockClient::new(tls_channel(addr, ca_only.clone()));
        let status = anonymous
            .clone()
            .open_session(OpenSessionRequest { ttl_ms: 10_000 })
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
        assert!(status.message().contains("bearer token"), "{status:?}");

        // The operator's digest, with its token and no certificate.
        let as_ops_status = |mut request: Request<StatusRequest>| {
            request
                .metadata_mut()
                .insert("authorization", format!("Bearer {ops}").parse().unwrap());
            request
        };
        let served = common::retry_unavailable("digest", || {
            digest(tls_channel(addr, ca_only.clone()), as_ops_status)
        })
        .await
        .expect("the operator's token is an admin's");
        assert_eq!(served.len(), 32);
    }

    // Through it all the operator's lock stayed its own.
    let held = client.describe("jobs/ops").await.unwrap();
    assert_eq!(
        held.holder.map(|holder| holder.session_id),
        Some(ops_session.id())
    );
    guard.release().await.unwrap();
}
