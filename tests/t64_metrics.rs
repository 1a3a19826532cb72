//! t64: metrics, health and the status page of real processes.
//!
//! Each node runs with `--metrics-listen`. `/metrics` is fetched and parsed
//! by the Prometheus project's own Python parser
//! (`tests/python/metrics_check.py`, prometheus_client's OpenMetrics
//! parser), never by string matching here; the status page is loaded in
//! headless Chromium, which runs its script against the live cluster.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use common::pki::{exe, new_token, Pki};
use common::*;
use quorumlock_client::ClientTls;
use quorumlock_testkit::cluster::{ClusterSpec, ProcessCluster};
use serde_json::Value;

engine_tests!(
    counters_follow_a_known_workload_and_agree_on_every_replica,
    leader_changes_are_seen_and_has_leader_returns_after_a_leader_kill,
    status_page_shows_the_members_and_a_held_lock_with_its_queue,
);

/// Every metric the README lists, with its type as the parser names it
/// (a counter's family name is without `_total`).
const EXPECTED: &[(&str, &str)] = &[
    ("quorumlock_server_has_leader", "gauge"),
    ("quorumlock_server_is_leader", "gauge"),
    ("quorumlock_server_leader_changes_seen", "counter"),
    ("quorumlock_server_term", "gauge"),
    ("quorumlock_server_commit_index", "gauge"),
    ("quorumlock_server_applied_index", "gauge"),
    ("quorumlock_server_proposals_committed", "counter"),
    ("quorumlock_server_proposals_applied", "counter"),
    ("quorumlock_server_proposals_pending", "gauge"),
    ("quorumlock_server_proposals_failed", "counter"),
    ("quorumlock_disk_sync_duration_seconds", "histogram"),
    ("quorumlock_network_peer_round_trip_time_seconds", "histogram"),
    ("quorumlock_grpc_requests", "counter"),
    ("quorumlock_grpc_request_duration_seconds", "histogram"),
    ("quorumlock_snapshot_saved", "counter"),
    ("quorumlock_snapshot_save_duration_seconds", "histogram"),
    ("quorumlock_snapshot_size_bytes", "gauge"),
    ("quorumlock_snapshot_sent", "counter"),
    ("quorumlock_snapshot_installed", "counter"),
    ("quorumlock_sessions_active", "gauge"),
    ("quorumlock_sessions_opened", "counter"),
    ("quorumlock_session_expired", "counter"),
    ("quorumlock_locks_held", "gauge"),
    ("quorumlock_lock_waiters", "gauge"),
    ("quorumlock_lock_grants", "counter"),
    ("quorumlock_lock_releases", "counter"),
    ("quorumlock_lock_queue_joins", "counter"),
    ("quorumlock_lock_acquire_wait_seconds", "histogram"),
    ("quorumlock_lock_hold_seconds", "histogram"),
    ("quorumlock_lock_lost", "counter"),
    ("quorumlock_fenced_writes", "counter"),
    ("quorumlock_fence_refused", "counter"),
];

/// Bound on one fetch and parse, Python's start included.
const FETCH_TIME_MAX: Duration = Duration::from_secs(60);

/// What `metrics_check.py` answered.
struct Fetched {
    status: u64,
    json: Value,
}

/// Runs `tests/python/metrics_check.py URL ARGS...`.
async fn fetch(url: &str, args: &[&str]) -> Fetched {
    require_prometheus_parser();
    let run = tokio::process::Command::new("python3")
        .arg(repo_path("tests/python/metrics_check.py"))
        .arg(url)
        .args(args)
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(FETCH_TIME_MAX, run)
        .await
        .unwrap_or_else(|_| panic!("fetching {url} took over {FETCH_TIME_MAX:?}"))
        .expect("run python3");
    assert!(
        output.status.success(),
        "metrics_check.py {url} failed ({}): {}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    let json: Value = serde_json::from_slice(&output.stdout).expect("metrics_check.py prints JSON");
    Fetched {
        status: json["status"].as_u64().expect("a status"),
        json,
    }
}

fn require_prometheus_parser() {
    static PROBED: std::sync::Once = std::sync::Once::new();
    PROBED.call_once(probe_prometheus_parser);
}

fn probe_prometheus_parser() {
    let probe = std::process::Command::new("python3")
        .args(["-c", "import prometheus_client.openmetrics.parser"])
        .output()
        .expect("python3 runs");
    assert!(
        probe.status.success(),
        "python3 cannot import prometheus_client; run `pip install -r {PYTHON_REQUIREMENTS}` (as ./x test does): {}",
        String::from_utf8_lossy(&probe.stderr).trim()
    );
}

/// The families of node `index`'s `/metrics`, parsed.
async fn scrape(cluster: &Cluster, index: usize) -> BTreeMap<String, Value> {
    let addr = cluster.metrics_addr(index).expect("a metrics listener");
    let fetched = fetch(&format!("http://{addr}/metrics"), &[]).await;
    assert_eq!(fetched.status, 200, "{}", fetched.json);
    assert!(
        fetched.json["content_type"]
            .as_str()
            .is_some_and(|kind| kind.starts_with("application/openmetrics-text")),
        "{}",
        fetched.json["content_type"]
    );
    serde_json::from_value(fetched.json["families"].clone()).expect("families")
}

/// The value of the sample named `sample` whose labels include `labels`
/// (the `engine` label is on every sample); 0 if there is none.
fn value(families: &BTreeMap<String, Value>, family: &str, sample: &str, labels: &[(&str, &str)]) -> f64 {
    let samples = families
        .get(family)
        .unwrap_or_else(|| panic!("no family {family}"))["samples"]
        .as_array()
        .expect("samples");
    samples
        .iter()
        .filter(|entry| entry[0] == sample)
        .filter(|entry| labels.iter().all(|(key, want)| entry[1][key] == *want))
        .map(|entry| entry[2].as_f64().expect("a number"))
        .sum()
}

/// A counter's `_total` sample.
fn total(families: &BTreeMap<String, Value>, family: &str) -> f64 {
    value(families, family, &format!("{family}_total"), &[])
}

/// A gauge's sample.
fn gauge(families: &BTreeMap<String, Value>, family: &str) -> f64 {
    value(families, family, family, &[])
}

async fn counters_follow_a_known_workload_and_agree_on_every_replica(engine: &str) {
    let cluster = Cluster::start_with_metrics(engine, 3, &[]).await;
    let leader = cluster.wait_for_leader().await;

    // Every metric is there with its help and type, on every node.
    for index in 0..cluster.len() {
        let families = scrape(&cluster, index).await;
        for (name, kind) in EXPECTED {
            let family = families
                .get(*name)
                .unwrap_or_else(|| panic!("node {}: no metric {name}", cluster.node_id(index)));
            assert_eq!(family["type"], *kind, "{name}");
            assert!(
                family["help"].as_str().is_some_and(|help| help.len() > 10),
                "{name} has no help: {family}"
            );
            let samples = family["samples"].as_array().expect("samples");
            assert!(
                samples.iter().all(|sample| sample[1]["engine"] == engine),
                "{name}: every sample is labelled engine={engine}: {samples:?}"
            );
        }
    }
    let before = scrape(&cluster, leader).await;

    // N acquires and releases, one stale write, one expiry.
    const N: usize = 20;
    let client = cluster.leader_client().await;
    let worker = cluster.session(10_000).await;
    for n in 0..N {
        let lock = format!("t64/{n}");
        let token = acquire_granted(&client, worker.key, &lock, 0).await;
        release(&client, worker.key, &lock, token)
            .await
            .unwrap_or_else(|status| panic!("release {lock}: {status:?}"));
    }
    let token = acquire_granted(&client, worker.key, "t64/fenced", 0).await;
    put(
        &client,
        "t64/key",
        "current",
        fence("t64/fenced", token),
        worker.key,
    )
    .await
    .expect("a write under the current token");
    let stale = put(
        &client,
        "t64/key",
        "stale",
        fence("t64/fenced", token + 1_000),
        worker.key,
    )
    .await;
    expect_code(
        "a write under a token that is not current",
        stale,
        tonic::Code::FailedPrecondition,
    );
    let mut doomed = cluster.session(1_000).await;
    acquire_granted(&client, doomed.key, "t64/doomed", 0).await;
    doomed.stop_keepalive().await;

    // The expiry is decided by the leader and applied everywhere: wait until
    // every replica counts it.
    let after = wait_until(
        "every replica counts the lost lock",
        Duration::from_secs(30),
        || async {
            let mut scraped = Vec::new();
            for index in 0..cluster.len() {
                let families = scrape(&cluster, index).await;
                let lost = total(&families, "quorumlock_lock_lost") - total(&before, "quorumlock_lock_lost");
                if lost < 1.0 {
                    return Err(format!(
                        "node {} counts {lost} lost locks",
                        cluster.node_id(index)
                    ));
                }
                scraped.push(families);
            }
            Ok(scraped)
        },
    )
    .await;

    let on_leader = &after[leader];
    let moved = |family: &str| total(on_leader, family) - total(&before, family);
    assert!(
        moved("quorumlock_server_proposals_committed") >= N as f64 * 2.0,
        "{N} acquires and {N} releases were committed through the leader: {}",
        moved("quorumlock_server_proposals_committed")
    );
    assert_eq!(moved("quorumlock_fence_refused"), 1.0, "one stale write refused");
    assert_eq!(moved("quorumlock_fenced_writes"), 1.0, "one fenced write applied");
    assert_eq!(
        moved("quorumlock_lock_lost"),
        1.0,
        "one held lock lost to its session's expiry"
    );
    assert_eq!(moved("quorumlock_session_expired"), 1.0, "one session expired");
    assert!(moved("quorumlock_lock_grants") >= N as f64 + 2.0);
    assert!(
        value(
            on_leader,
            "quorumlock_lock_hold_seconds",
            "quorumlock_lock_hold_seconds_count",
            &[("ended", "expired")]
        ) >= 1.0,
        "the lost lock's hold is timed as ended by expiry"
    );
    assert!(
        value(
            on_leader,
            "quorumlock_grpc_requests",
            "quorumlock_grpc_requests_total",
            &[
                ("method", "quorumlock.v1.Lock/Put"),
                ("code", "FailedPrecondition")
            ]
        ) >= 1.0,
        "the refused Put is counted by method and code"
    );
    assert!(
        value(
            on_leader,
            "quorumlock_disk_sync_duration_seconds",
            "quorumlock_disk_sync_duration_seconds_count",
            &[]
        ) >= 1.0,
        "the leader's fsyncs are timed"
    );
    // Counters that come from applied commands agree on every replica.
    let replicated = [
        "quorumlock_sessions_opened",
        "quorumlock_session_expired",
        "quorumlock_lock_grants",
        "quorumlock_lock_releases",
        "quorumlock_lock_lost",
        "quorumlock_fenced_writes",
    ];
    for family in replicated {
        let values: Vec<f64> = after.iter().map(|families| total(families, family)).collect();
        assert!(
            values.iter().all(|value| *value == values[0]),
            "{family} agrees on every replica: {values:?}"
        );
    }
    for (index, families) in after.iter().enumerate() {
        // Refusals change nothing in the replicated state; each replica
        // counts the ones it applies.
        assert_eq!(
            total(families, "quorumlock_fence_refused") - total(&before, "quorumlock_fence_refused"),
            1.0,
            "node {} applied the refused write",
            cluster.node_id(index)
        );
        assert!(
            total(families, "quorumlock_server_proposals_applied") >= N as f64 * 2.0,
            "node {} applied every command",
            cluster.node_id(index)
        );
        assert_eq!(gauge(families, "quorumlock_server_has_leader"), 1.0);
        assert_eq!(
            gauge(families, "quorumlock_server_is_leader"),
            f64::from(index == leader)
        );
    }
}

async fn leader_changes_are_seen_and_has_leader_returns_after_a_leader_kill(engine: &str) {
    let cluster = Cluster::start_with_metrics(engine, 3, &[]).await;
    let leader = cluster.wait_for_leader().await;
    let watcher = (leader + 1) % cluster.len();
    let before = scrape(&cluster, watcher).await;
    assert_eq!(gauge(&before, "quorumlock_server_has_leader"), 1.0);
    let changes_before = total(&before, "quorumlock_server_leader_changes_seen");
    assert!(changes_before >= 1.0, "the first leader counts as a change");

    cluster.kill(leader);
    let new_leader = cluster.wait_for_leader().await;
    assert_ne!(new_leader, leader);
    let after = wait_until(
        "the watcher sees the new leader",
        Duration::from_secs(30),
        || async {
            let families = scrape(&cluster, watcher).await;
            let has_leader = gauge(&families, "quorumlock_server_has_leader");
            let changes = total(&families, "quorumlock_server_leader_changes_seen");
            match has_leader == 1.0 && changes > changes_before {
                true => Ok(families),
                false => Err(format!("has_leader {has_leader}, {changes} leader changes seen")),
            }
        },
    )
    .await;
    assert_eq!(
        gauge(&after, "quorumlock_server_is_leader"),
        f64::from(watcher == new_leader)
    );
    let on_new_leader = scrape(&cluster, new_leader).await;
    assert_eq!(gauge(&on_new_leader, "quorumlock_server_is_leader"), 1.0);
    // /health answers like etcd's: 200 with {"health":"true"} while serving.
    let health = fetch(
        &format!("http://{}/health", cluster.metrics_addr(new_leader).unwrap()),
        &["--raw"],
    )
    .await;
    assert_eq!(health.status, 200, "{}", health.json);
    let body: Value = serde_json::from_str(health.json["body"].as_str().unwrap()).unwrap();
    assert_eq!(body["health"], "true");
}

/// Runs headless Chromium with `args` on `url`; returns its stdout.
async fn chromium(profile: &Path, url: &str, args: &[String]) -> String {
    let run = tokio::process::Command::new(CHROMIUM)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--hide-scrollbars",
            "--window-size=1280,1000",
            // Lets the page's script fetch its data and render before the
            // DOM is dumped or the screenshot taken.
            "--virtual-time-budget=8000",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(args)
        .arg(url)
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(Duration::from_secs(120), run)
        .await
        .expect("chromium finished within 120 s")
        .unwrap_or_else(|error| {
            panic!("{CHROMIUM} could not run ({error}); ./x test installs Debian's chromium")
        });
    assert!(
        output.status.success(),
        "chromium failed ({}): {}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Debian's Chromium, which `./x test` installs.
const CHROMIUM: &str = "/usr/bin/chromium";

async fn status_page_shows_the_members_and_a_held_lock_with_its_queue(engine: &str) {
    let cluster = Cluster::start_with_metrics(engine, 3, &[]).await;
    let leader = cluster.wait_for_leader().await;
    let client = cluster.leader_client().await;
    let holder = cluster.session(10_000).await;
    let token = acquire_granted(&client, holder.key, "t64/page-lock", 0).await;
    // Two waiters join the queue and stay there.
    let mut waiters = Vec::new();
    for _ in 0..2 {
        let waiter = cluster.session(10_000).await;
        let client = client.clone();
        waiters.push(tokio::spawn(async move {
            let _ = acquire(&client, waiter.key, "t64/page-lock", 60_000).await;
            waiter
        }));
    }
    wait_for_queue_length(&client, "t64/page-lock", 2).await;

    // The JSON endpoint, from a follower: every member with its own figures.
    // The leader's Describe saw both waiters; the follower shows its own
    // applied state, which may be a commit behind until its next apply.
    let follower = (leader + 1) % cluster.len();
    let addr = cluster.metrics_addr(follower).unwrap();
    let body = wait_until(
        "the follower's status page to list both waiters",
        CONDITION_WAIT,
        || async {
            let status = fetch(&format!("http://{addr}/api/status"), &["--raw"]).await;
            assert_eq!(status.status, 200, "{}", status.json);
            let body: Value = serde_json::from_str(status.json["body"].as_str().unwrap()).unwrap();
            let depth = body["queues"].as_array().and_then(|queues| {
                queues
                    .iter()
                    .find(|queue| queue["lock"] == "t64/page-lock")
                    .map(|queue| queue["depth"].clone())
            });
            if depth == Some(Value::from(2)) {
                Ok(body)
            } else {
                Err(format!("the page's queues: {}", body["queues"]))
            }
        },
    )
    .await;
    assert_eq!(body["node"], cluster.node_id(follower));
    assert_eq!(body["engine"], engine);
    let members = body["members"].as_array().expect("members");
    assert_eq!(members.len(), 3, "{members:?}");
    for member in members {
        assert!(member["error"].is_null(), "every member answered: {member}");
        let expected = if member["id"] == cluster.node_id(leader) {
            "leader"
        } else {
            "follower"
        };
        assert_eq!(member["role"], expected, "{member}");
        assert!(member["applied_index"].as_u64().is_some_and(|index| index > 0));
    }
    let queues = body["queues"].as_array().expect("queues");
    let queue = queues
        .iter()
        .find(|queue| queue["lock"] == "t64/page-lock")
        .unwrap_or_else(|| panic!("the held lock's queue is listed: {queues:?}"));
    assert_eq!(queue["depth"], 2);
    assert_eq!(queue["token"], token);
    assert_eq!(queue["holder_session"], holder.id);
    assert!(body["locks_held"].as_u64().is_some_and(|held| held >= 1));
    assert!(body["waiters"].as_u64().is_some_and(|waiting| waiting >= 2));
    // The deepest queues are series of their own, labelled with the lock.
    let families = scrape(&cluster, follower).await;
    assert_eq!(families["quorumlock_lock_queue_depth"]["type"], "gauge");
    assert_eq!(
        value(
            &families,
            "quorumlock_lock_queue_depth",
            "quorumlock_lock_queue_depth",
            &[("lock", "t64/page-lock")]
        ),
        2.0
    );
    assert!(gauge(&families, "quorumlock_lock_waiters") >= 2.0);

    // The page itself, in a real browser: its script reads the same data.
    let profile = tempfile::tempdir().unwrap();
    let url = format!("http://{addr}/");
    let dom = chromium(profile.path(), &url, &["--dump-dom".to_string()]).await;
    assert!(
        dom.contains("data-loaded=\"true\""),
        "the page rendered its data:\n{dom}"
    );
    for index in 0..cluster.len() {
        let member_row = format!(
            "<td>{}</td><td class=\"name\">{}</td>",
            cluster.node_id(index),
            cluster.addr(index)
        );
        assert!(
            dom.contains(&member_row),
            "the page lists member {member_row}:\n{dom}"
        );
    }
    let queue_row = format!(
        "<td class=\"name\">t64/page-lock</td><td>{}</td><td>{token}</td><td>2</td>",
        holder.id
    );
    assert!(
        dom.contains(&queue_row),
        "the page lists the held lock and its queue:\n{dom}"
    );
    let screenshot: PathBuf =
        PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("status-page-{engine}.png"));
    let _ = std::fs::remove_file(&screenshot);
    chromium(
        profile.path(),
        &url,
        &[format!("--screenshot={}", screenshot.display())],
    )
    .await;
    let png = std::fs::read(&screenshot).expect("chromium wrote the screenshot");
    assert!(
        png.starts_with(b"\x89PNG") && png.len() > 10_000,
        "a real PNG at {}",
        screenshot.display()
    );
    eprintln!("screenshot of the status page: {}", screenshot.display());

    release(&client, holder.key, "t64/page-lock", token)
        .await
        .unwrap();
    for waiter in waiters {
        waiter.abort();
    }
}

/// A 3-node `engine` cluster started with `extra_args` and a metrics
/// listener on a port of the system's choosing; once it has a leader, the
/// address node 1's listener took.
async fn access_cluster(
    engine: &str,
    extra_args: Vec<String>,
    tls: Option<ClientTls>,
) -> (ProcessCluster, String) {
    let mut spec = ClusterSpec::new(exe(), engine, 3);
    spec.heartbeat_ms = HEARTBEAT_MS;
    spec.election_timeout_ms = ELECTION_TIMEOUT_MS;
    spec.extra_args = extra_args;
    spec.extra_args
        .extend(["--metrics-listen".to_string(), "127.0.0.1:0".to_string()]);
    spec.client_tls = tls;
    let mut cluster = ProcessCluster::start(spec)
        .await
        .expect("start a cluster with an access policy");
    cluster.wait_for_leader().await.unwrap();
    let addr = wait_until(
        "node 1 logs its metrics address",
        Duration::from_secs(30),
        || async {
            cluster
                .node(0)
                .metrics_addr()
                .ok_or_else(|| "not yet".to_string())
        },
    )
    .await;
    (cluster, addr)
}

/// With TLS and an access policy, the listener is HTTPS with the node's
/// certificate, `/metrics` and the page's data need the admin role, and
/// `/health` and the page itself are open. The engine does not matter here.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_over_tls_need_the_admin_role_when_access_control_is_on() {
    let pki = Pki::new(&["alice", "bob"]);
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("policy.toml");
    std::fs::write(
        &policy,
        "[roles.jobs]\nlocks = [\"jobs/\"]\n\n[roles.operator]\nadmin = true\n\n[identities]\nalice = [\"jobs\"]\nbob = [\"operator\"]\n",
    )
    .unwrap();
    let _slot = cluster_slot().await;
    let mut args = pki.serve_flags();
    args.extend(["--auth-policy".to_string(), policy.display().to_string()]);
    let (cluster, addr) = access_cluster("raft", args, Some(pki.client("bob"))).await;
    assert!(
        cluster.node(0).log().contains("metrics at https://"),
        "a TLS node serves its metrics over TLS"
    );
    let url = |path: &str| format!("https://{addr}{path}");
    // `metrics_check.py` arguments: `--raw` or not, then client `name`'s files.
    let as_client = |name: &str, raw: bool| {
        let (cert, key) = pki.client_files(&pki.ours(), name);
        let mut args = vec![
            "--ca".to_string(),
            pki.ca().display().to_string(),
            "--cert".to_string(),
            cert.display().to_string(),
            "--key".to_string(),
            key.display().to_string(),
        ];
        if raw {
            args.insert(0, "--raw".to_string());
        }
        args
    };
    let fetch_as = |path: &str, name: &str, raw: bool| {
        let (url, args) = (url(path), as_client(name, raw));
        async move {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            fetch(&url, &args).await
        }
    };

    let admin = fetch_as("/metrics", "bob", false).await;
    assert_eq!(admin.status, 200, "the admin reads the metrics: {}", admin.json);
    assert!(admin.json["families"]["quorumlock_server_has_leader"].is_object());

    let other = fetch_as("/metrics", "alice", true).await;
    assert_eq!(other.status, 403, "{}", other.json);
    let why = other.json["body"].as_str().unwrap();
    assert!(why.contains("metrics refused") && why.contains("alice"), "{why}");
    let data = fetch_as("/api/status", "alice", true).await;
    assert_eq!(
        data.status, 403,
        "the page's data needs the admin role too: {}",
        data.json
    );

    let data = fetch_as("/api/status", "bob", true).await;
    assert_eq!(data.status, 200, "{}", data.json);
    let body: Value = serde_json::from_str(data.json["body"].as_str().unwrap()).unwrap();
    let members = body["members"].as_array().expect("members");
    assert_eq!(members.len(), 3);
    assert!(
        members
            .iter()
            .all(|member| member["error"].is_null() && member["role"].is_string()),
        "members answer each other's status over mutual TLS: {members:?}"
    );

    let health = fetch_as("/health", "alice", true).await;
    assert_eq!(
        health.status, 200,
        "health is open to every verified client: {}",
        health.json
    );
    let page = fetch_as("/", "alice", true).await;
    assert_eq!(page.status, 200);
    assert!(page.json["body"]
        .as_str()
        .unwrap()
        .contains("<title>quorumlock status</title>"));
}

/// On a plaintext cluster with an access policy, `/metrics` answers 401
/// (with `WWW-Authenticate: Bearer`) without a token or with one the
/// policy does not list, 403 to a token without the admin role, and the
/// metrics to an admin's token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_ask_plaintext_callers_for_an_admin_bearer_token() {
    let (admin, admin_entry) = new_token("prometheus").await;
    let (worker, worker_entry) = new_token("worker").await;
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("policy.toml");
    std::fs::write(
        &policy,
        format!(
            "[roles.jobs]\nlocks = [\"jobs/\"]\n\n[roles.monitoring]\nadmin = true\n\n[identities]\n\
             prometheus = [\"monitoring\"]\nworker = [\"jobs\"]\n\n{admin_entry}\n{worker_entry}"
        ),
    )
    .unwrap();
    let _slot = cluster_slot().await;
    let args = vec!["--auth-policy".to_string(), policy.display().to_string()];
    let (cluster, addr) = access_cluster("paxos", args, None).await;
    let url = format!("http://{addr}/metrics");

    for (what, args) in [
        ("no token", vec!["--raw"]),
        (
            "a token the policy does not list",
            vec!["--raw", "--token", "qlt_not-a-listed-token"],
        ),
    ] {
        let refused = fetch(&url, &args).await;
        assert_eq!(refused.status, 401, "{what}: {}", refused.json);
        let why = refused.json["body"].as_str().unwrap();
        assert!(why.starts_with("metrics refused:"), "{what}: {why}");
    }
    let refused = fetch(&url, &["--raw", "--token", &worker]).await;
    assert_eq!(refused.status, 403, "{}", refused.json);
    let why = refused.json["body"].as_str().unwrap();
    assert!(
        why.contains("\"worker\"") || why.contains("worker"),
        "the refusal names the identity: {why}"
    );
    let allowed = fetch(&url, &["--token", &admin]).await;
    assert_eq!(allowed.status, 200, "{}", allowed.json);
    assert!(allowed.json["families"]["quorumlock_server_has_leader"].is_object());
    let log = cluster.node(0).log();
    assert!(
        !log.contains(&admin) && !log.contains(&worker),
        "tokens never reach the log"
    );
}
