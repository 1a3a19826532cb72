//! t95: docker/compose.yml runs the commands the tests run.
//!
//! Docker cannot run in CI, so this test does what Compose would do with the
//! file, on loopback: it reads `docker/compose.yml`, applies YAML merge keys,
//! picks the services a layout enables (no profile, or an active one),
//! interpolates `${VAR:-default}` from the layout's env file, and runs each
//! node service's command as a real process of our binary, with every
//! `service:port` address mapped to `127.0.0.1:<free port>` and the data
//! directory moved into a temporary directory. The cluster must form: every
//! node reports the same leader and all members, and a lock can be taken.
//!
//! Layouts: the default (three nodes, no env file), the `five` profile
//! with `docker/five.env`, and mutual TLS with `docker/tls.env` (its `certs`
//! service runs first, and the cluster is probed over TLS). Alongside, static checks keep the file coherent:
//! each node publishes its port and keeps its data in a named volume, the
//! `five` profile's extra nodes refuse to start without the five-node env
//! file, and the `demo` client targets the node services' ports.
//! (`.ci/run` validates the file against the Compose specification's JSON
//! schema with check-jsonschema before the tests run.)

mod common;
mod process;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::*;
use process::{free_ports, ServerProcess};
use quorumlock_client::{ClientTls, ClientTlsFiles};
use quorumlock_proto::v1::cluster_client::ClusterClient;
use quorumlock_proto::v1::{StatusRequest, StatusResponse};
use serde_yaml_ng::Value;
use tokio::sync::Semaphore;

const COMPOSE_FILE: &str = "docker/compose.yml";
const FIVE_ENV_FILE: &str = "docker/five.env";
const TLS_ENV_FILE: &str = "docker/tls.env";
/// The client certificate the TLS layout issues for the host's operator,
/// which this test probes the cluster with.
const OPERATOR_CLIENT: &str = "operator";
/// Bound on a misconfigured node's exit.
const REFUSAL_WAIT: Duration = Duration::from_secs(30);
/// How long the compose demo client may take (it pauses a client past a TTL).
const DEMO_WAIT: Duration = Duration::from_secs(120);
/// Pause between probes of the forming cluster.
const POLL_INTERVAL: Duration = Duration::from_millis(100);

/// One layout's cluster at a time: five plus three processes at once would
/// starve heartbeats on a two-core machine.
static LAYOUT_RUNS: Semaphore = Semaphore::const_new(1);

fn repo_path(relative: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(relative)
}

/// The compose file with merge keys (`<<: *node`) applied, as Compose does.
fn compose_file() -> Value {
    let path = repo_path(COMPOSE_FILE);
    let text =
        std::fs::read_to_string(&path).unwrap_or_else(|error| panic!("read {}: {error}", path.display()));
    let mut value: Value =
        serde_yaml_ng::from_str(&text).unwrap_or_else(|error| panic!("parse {}: {error}", path.display()));
    value
        .apply_merge()
        .unwrap_or_else(|error| panic!("apply the merge keys of {}: {error}", path.display()));
    value
}

/// `KEY=VALUE` lines of a Compose env file; `#` starts a comment line.
fn env_file(relative: &str) -> BTreeMap<String, String> {
    let path = repo_path(relative);
    let text =
        std::fs::read_to_string(&path).unwrap_or_else(|error| panic!("read {}: {error}", path.display()));
    text.lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .map(|line| {
            let (key, value) = line
                .split_once('=')
                .unwrap_or_else(|| panic!("{relative}: {line:?} is not KEY=VALUE"));
            (key.trim().to_string(), value.trim().to_string())
        })
        .collect()
}

/// Compose's interpolation for the forms the file uses: `${NAME}`,
/// `${NAME:-default}` (default when unset or empty) and
/// `${NAME:+replacement}` (replacement when set and not empty, otherwise
/// nothing). Any other use of `$`
/// fails the test, so the file cannot drift into syntax this test does not
/// reproduce.
fn interpolate(text: &str, env: &BTreeMap<String, String>) -> String {
    let mut out = String::new();
    let mut rest = text;
    while let Some(start) = rest.find('$') {
        out.push_str(&rest[..start]);
        let after = &rest[start..];
        assert!(after.starts_with("${"), "unsupported interpolation in {text:?}");
        let end = after
            .find('}')
            .unwrap_or_else(|| panic!("unterminated ${{ in {text:?}"));
        let expression = &after[2..end];
        let (name, default, replacement) = match (expression.split_once(":-"), expression.split_once(":+")) {
            (Some((name, default)), _) => (name, Some(default), None),
            (None, Some((name, replacement))) => (name, None, Some(replacement)),
            (None, None) => (expression, None, None),
        };
        assert!(
            !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
            "unsupported interpolation ${{{expression}}} in {text:?}"
        );
        let value = env.get(name).filter(|value| !value.is_empty());
        match (value, default, replacement) {
            (Some(_), _, Some(replacement)) => out.push_str(replacement),
            (None, _, Some(_)) => {}
            (Some(value), _, None) => out.push_str(value),
            (None, Some(default), None) => out.push_str(default),
            (None, None, None) => panic!("${{{name}}} in {text:?} is unset and has no default"),
        }
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    out
}

/// A layout: the env file Compose is given and the profiles enabled.
struct Layout {
    env: BTreeMap<String, String>,
    profiles: BTreeSet<String>,
}

impl Layout {
    fn three() -> Layout {
        Layout {
            env: BTreeMap::new(),
            profiles: BTreeSet::new(),
        }
    }

    fn five() -> Layout {
        Layout::from_env_file(FIVE_ENV_FILE, "five")
    }

    fn tls() -> Layout {
        Layout::from_env_file(TLS_ENV_FILE, "tls")
    }

    /// The layout of an env file whose README command passes `--profile
    /// profile`; the env file enables it too.
    fn from_env_file(file: &str, profile: &str) -> Layout {
        let env = env_file(file);
        let mut profiles: BTreeSet<String> = [profile.to_string()].into();
        if let Some(listed) = env.get("COMPOSE_PROFILES") {
            profiles.extend(listed.split(',').map(|profile| profile.trim().to_string()));
        }
        Layout { env, profiles }
    }

    fn with_profile(mut self, profile: &str) -> Layout {
        self.profiles.insert(profile.to_string());
        self
    }
}

/// A service as this test needs it, after interpolation.
#[derive(Debug, Clone)]
struct Service {
    name: String,
    args: Vec<String>,
    ports: Vec<String>,
    /// `(source, target)` of each volume mount.
    volumes: Vec<(String, String)>,
}

fn string_list(value: Option<&Value>, what: &str) -> Vec<String> {
    match value {
        None => Vec::new(),
        Some(Value::Sequence(items)) => items
            .iter()
            .map(|item| {
                item.as_str()
                    .unwrap_or_else(|| panic!("{what}: {item:?} is not a string"))
                    .to_string()
            })
            .collect(),
        Some(other) => panic!("{what} is not a list: {other:?}"),
    }
}

/// The services `layout` enables, in file order.
fn enabled_services(compose: &Value, layout: &Layout) -> Vec<Service> {
    let services = compose
        .get("services")
        .and_then(Value::as_mapping)
        .expect("the compose file has services");
    let mut enabled = Vec::new();
    for (name, service) in services {
        let name = name.as_str().expect("service names are strings").to_string();
        let profiles = string_list(service.get("profiles"), &format!("{name}.profiles"));
        if !profiles.is_empty() && !profiles.iter().any(|profile| layout.profiles.contains(profile)) {
            continue;
        }
        let command = service
            .get("command")
            .and_then(Value::as_str)
            .unwrap_or_else(|| panic!("{name}.command is a string"));
        let command = interpolate(command, &layout.env);
        assert!(
            !command.contains(['"', '\'', '\\']),
            "{name}.command must need no shell quoting: {command:?}"
        );
        let volumes = string_list(service.get("volumes"), &format!("{name}.volumes"))
            .iter()
            .map(|mount| {
                let mut parts = mount.split(':');
                let source = parts.next().unwrap_or_default().to_string();
                let target = parts
                    .next()
                    .unwrap_or_else(|| panic!("{name}: volume {mount:?} has no target"))
                    .to_string();
                (source, target)
            })
            .collect();
        enabled.push(Service {
            args: command.split_whitespace().map(str::to_string).collect(),
            ports: string_list(service.get("ports"), &format!("{name}.ports")),
            volumes,
            name,
        });
    }
    enabled
}

fn flag<'a>(service: &'a Service, name: &str) -> &'a str {
    let position = service
        .args
        .iter()
        .position(|arg| arg == name)
        .unwrap_or_else(|| panic!("{} has no {name}: {:?}", service.name, service.args));
    service
        .args
        .get(position + 1)
        .unwrap_or_else(|| panic!("{} has {name} without a value", service.name))
}

fn port_of(addr: &str) -> u16 {
    let (_, port) = addr
        .rsplit_once(':')
        .unwrap_or_else(|| panic!("{addr:?} is not HOST:PORT"));
    port.parse()
        .unwrap_or_else(|_| panic!("{addr:?} has no numeric port"))
}

/// The node services (`quorumlock serve`) of a layout.
fn node_services(compose: &Value, layout: &Layout) -> Vec<Service> {
    enabled_services(compose, layout)
        .into_iter()
        .filter(|service| service.args.first().map(String::as_str) == Some("serve"))
        .collect()
}

/// Maps the layout's `service:port` addresses onto 127.0.0.1 and free ports.
struct Loopback {
    hosts: BTreeSet<String>,
    ports: BTreeMap<u16, u16>,
    data_root: PathBuf,
}

impl Loopback {
    fn new(compose: &Value, nodes: &[Service], data_root: &Path) -> Loopback {
        let listen_ports: BTreeSet<u16> = nodes.iter().map(|node| port_of(flag(node, "--listen"))).collect();
        assert_eq!(
            listen_ports.len(),
            nodes.len(),
            "every node has a port of its own"
        );
        let free = free_ports(listen_ports.len());
        let all_services = compose
            .get("services")
            .and_then(Value::as_mapping)
            .expect("the compose file has services");
        Loopback {
            hosts: all_services
                .keys()
                .map(|name| name.as_str().expect("service names are strings").to_string())
                .collect(),
            ports: listen_ports.into_iter().zip(free).collect(),
            data_root: data_root.to_path_buf(),
        }
    }

    fn addr(&self, addr: &str) -> String {
        let (host, _) = addr.rsplit_once(':').expect("HOST:PORT");
        assert!(
            host == "0.0.0.0" || self.hosts.contains(host),
            "{addr:?} names neither a service nor 0.0.0.0"
        );
        let port = port_of(addr);
        let mapped = self
            .ports
            .get(&port)
            .unwrap_or_else(|| panic!("{addr:?}: no node of this layout listens on port {port}"));
        format!("127.0.0.1:{mapped}")
    }

    fn peers(&self, peers: &str) -> String {
        peers
            .split(',')
            .map(|peer| {
                let (id, addr) = peer
                    .split_once('=')
                    .unwrap_or_else(|| panic!("peer {peer:?} is not ID=HOST:PORT"));
                format!("{id}={}", self.addr(addr))
            })
            .collect::<Vec<_>>()
            .join(",")
    }

    fn endpoints(&self, endpoints: &str) -> String {
        endpoints
            .split(',')
            .map(|endpoint| self.addr(endpoint))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The service's command on loopback; every file or directory it names
    /// must lie in one of the service's volumes, or a container would not
    /// see it (or lose it on removal).
    fn command(&self, node: &Service) -> Vec<String> {
        let mut args = Vec::new();
        let mut given = node.args.iter();
        while let Some(arg) = given.next() {
            args.push(arg.clone());
            let rewrite: fn(&Loopback, &Service, &str) -> String = match arg.as_str() {
                "--listen" => |loopback, _, value| loopback.addr(value),
                "--peers" => |loopback, _, value| loopback.peers(value),
                "--endpoints" => |loopback, _, value| loopback.endpoints(value),
                "--data-dir" | "--dir" | "--cert" | "--key" | "--ca" | "--cacert" => {
                    |loopback, node, value| loopback.path(node, value)
                }
                _ => continue,
            };
            let value = given
                .next()
                .unwrap_or_else(|| panic!("{}: {arg} has no value", node.name));
            args.push(rewrite(self, node, value));
        }
        args
    }

    /// A path in one of the service's named volumes, as a path under the
    /// test's directory of that volume (shared by the services mounting it).
    fn path(&self, node: &Service, path: &str) -> String {
        let (source, target) = node
            .volumes
            .iter()
            .find(|(_, target)| Path::new(path).starts_with(target))
            .unwrap_or_else(|| panic!("{}: {path} is in none of its volumes", node.name));
        assert!(
            !source.starts_with(['.', '/']),
            "{}: the volume {source:?} is a named volume, not a bind mount",
            node.name
        );
        let relative = Path::new(path).strip_prefix(target).expect("checked above");
        self.data_root.join(source).join(relative).display().to_string()
    }
}

/// A channel to `addr`, over TLS as `tls`'s client when the layout is TLS.
async fn channel(addr: &str, tls: Option<&ClientTls>) -> Result<tonic::transport::Channel, String> {
    match tls {
        Some(tls) => Ok(common::pki::tls_channel(addr, tls.clone())),
        None => connect(&format!("http://{addr}"))
            .await
            .map_err(|error| format!("connect to {addr}: {error:#}")),
    }
}

async fn status(addr: &str, tls: Option<&ClientTls>) -> Result<StatusResponse, String> {
    let channel = channel(addr, tls).await?;
    let mut client = ClusterClient::new(channel);
    match tokio::time::timeout(
        STATUS_TIMEOUT,
        client.status(StatusRequest {
            include_state_digest: false,
        }),
    )
    .await
    {
        Ok(Ok(response)) => Ok(response.into_inner()),
        Ok(Err(status)) => Err(format!("Status on {addr}: {status:?}")),
        Err(_) => Err(format!(
            "Status on {addr} gave no answer within {STATUS_TIMEOUT:?}"
        )),
    }
}

/// The leader every node names, once all list exactly `members_expected`.
async fn agreed_leader(
    members_expected: &BTreeMap<u64, String>,
    tls: Option<&ClientTls>,
) -> Result<u64, String> {
    let mut leaders = BTreeSet::new();
    for (id, addr) in members_expected {
        let status = status(addr, tls).await?;
        let members: BTreeMap<u64, String> = status
            .members
            .iter()
            .map(|member| (member.id, member.addr.clone()))
            .collect();
        if &members != members_expected {
            return Err(format!("node {id} lists members {members:?}"));
        }
        if status.leader_id == 0 {
            return Err(format!("node {id} knows no leader"));
        }
        leaders.insert(status.leader_id);
    }
    match leaders.into_iter().collect::<Vec<_>>()[..] {
        [leader] => Ok(leader),
        ref several => Err(format!("the nodes name different leaders {several:?}")),
    }
}

/// Runs the layout's node commands on loopback and checks the cluster forms.
async fn check_layout_forms_a_cluster(layout: Layout, expected_nodes: &[&str]) {
    let _turn = LAYOUT_RUNS
        .acquire()
        .await
        .expect("the semaphore is never closed");
    let compose = compose_file();
    let nodes = node_services(&compose, &layout);
    let names: Vec<&str> = nodes.iter().map(|node| node.name.as_str()).collect();
    assert_eq!(names, expected_nodes, "the layout's node services");

    let dir = tempfile::Builder::new()
        .prefix("quorumlock-compose-")
        .tempdir()
        .expect("create a temporary directory");
    let loopback = Loopback::new(&compose, &nodes, dir.path());
    let services = enabled_services(&compose, &layout);

    // Services that make files (the TLS layout's certificates) run to
    // completion first, as the nodes' `depends_on` has Compose do.
    let mut client_tls = None;
    for certs in services
        .iter()
        .filter(|service| service.args.first().map(String::as_str) == Some("certs"))
    {
        let args = loopback.command(certs);
        let mut process = ServerProcess::spawn(
            &certs.name,
            &args,
            &dir.path().join(format!("{}.log", certs.name)),
        );
        let status = tokio::task::block_in_place(|| process.wait_exit(REFUSAL_WAIT));
        assert!(
            status.success(),
            "{} failed ({status}):\n{}",
            certs.name,
            process.log()
        );
        let made = PathBuf::from(loopback.path(certs, flag(certs, "--dir")));
        client_tls = Some(
            ClientTls::load(ClientTlsFiles {
                ca: made.join("ca.pem"),
                identity: Some((
                    made.join(format!("client-{OPERATOR_CLIENT}.pem")),
                    made.join(format!("client-{OPERATOR_CLIENT}-key.pem")),
                )),
            })
            .expect("the operator's client certificate the certs service made"),
        );
    }
    assert_eq!(
        client_tls.is_some(),
        nodes.iter().all(|node| node.args.contains(&"--cert".to_string())),
        "the nodes serve TLS exactly when the layout makes certificates"
    );

    let mut members_expected = BTreeMap::new();
    let mut processes = Vec::new();
    for node in &nodes {
        let listen_port = port_of(flag(node, "--listen"));
        assert!(
            node.ports
                .contains(&format!("127.0.0.1:{listen_port}:{listen_port}")),
            "{} publishes its port {listen_port} on the host's loopback: {:?}",
            node.name,
            node.ports
        );
        let args = loopback.command(node);
        let id: u64 = flag(node, "--id").parse().expect("a numeric --id");
        members_expected.insert(id, loopback.addr(flag(node, "--listen")));
        processes.push(ServerProcess::spawn(
            &node.name,
            &args,
            &dir.path().join(format!("{}.log", node.name)),
        ));
    }
    let addrs: Vec<String> = members_expected.values().cloned().collect();

    let deadline = Instant::now() + LEADER_WAIT;
    loop {
        for process in &mut processes {
            if let Some(status) = process.try_exit() {
                panic!(
                    "{} exited ({status}); its log:\n{}",
                    process.name(),
                    process.log()
                );
            }
        }
        let why = match agreed_leader(&members_expected, client_tls.as_ref()).await {
            Ok(_) => break,
            Err(why) => why,
        };
        assert!(
            Instant::now() < deadline,
            "the {}-node compose cluster agreed on no leader within {LEADER_WAIT:?}: {why}",
            nodes.len()
        );
        tokio::time::sleep(POLL_INTERVAL).await;
    }

    // The cluster serves: a session on the last node takes a lock.
    let client = quorumlock_proto::v1::lock_client::LockClient::new(
        channel(addrs.last().expect("a node"), client_tls.as_ref())
            .await
            .expect("connect to the last node"),
    );
    let opened = retry_unavailable("OpenSession", || open_session(&client, LONG_TTL_MS))
        .await
        .expect("OpenSession on the compose cluster");
    let session = Key::of(&opened);
    acquire_granted(&client, session, "t95/compose", 0).await;

    // With the demo profile, its client runs exactly the compose command
    // (service names and volumes mapped to loopback) against the cluster
    // and must pass.
    let demo = services.iter().find(|service| service.name == "demo");
    assert_eq!(
        demo.is_some(),
        layout.profiles.contains("demo"),
        "the demo service runs exactly when its profile is enabled"
    );
    if let Some(demo) = demo {
        assert!(
            demo.args.contains(&"--endpoints".to_string()),
            "the demo names its endpoints"
        );
        let args = loopback.command(demo);
        let mut process = ServerProcess::spawn("demo", &args, &dir.path().join("demo.log"));
        let status = tokio::task::block_in_place(|| process.wait_exit(DEMO_WAIT));
        assert!(
            status.success(),
            "the compose demo failed ({status}); its output:\n{}",
            process.log()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn default_layout_runs_three_nodes_that_form_a_cluster_and_the_demo_profile_passes() {
    check_layout_forms_a_cluster(Layout::three().with_profile("demo"), &["node1", "node2", "node3"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_layout_makes_certificates_first_and_its_nodes_form_a_mutual_tls_cluster_the_demo_passes() {
    check_layout_forms_a_cluster(Layout::tls().with_profile("demo"), &["node1", "node2", "node3"]).await;
}

/// Without the TLS layout, no service makes certificates and no command
/// names one; with it, every node waits for them and holds one named for
/// its service, so peers dial each other by name under Compose.
#[test]
fn tls_layout_issues_each_node_a_certificate_for_its_service_name_before_it_starts() {
    let compose = compose_file();
    let plain = enabled_services(&compose, &Layout::three().with_profile("demo"));
    assert!(plain
        .iter()
        .all(|service| service.args.first().map(String::as_str) != Some("certs")));
    assert!(
        plain
            .iter()
            .all(|service| !service.args.iter().any(|arg| arg.starts_with("--ca"))),
        "a plaintext layout's commands name no certificate"
    );

    let layout = Layout::tls().with_profile("demo");
    let services = enabled_services(&compose, &layout);
    let certs = services
        .iter()
        .find(|service| service.args.first().map(String::as_str) == Some("certs"))
        .expect("the tls profile enables a certs service");
    let issued: Vec<&str> = certs
        .args
        .iter()
        .zip(certs.args.iter().skip(1))
        .filter(|(flag, _)| *flag == "--node")
        .map(|(_, spec)| spec.as_str())
        .collect();
    let clients: Vec<&str> = certs
        .args
        .iter()
        .zip(certs.args.iter().skip(1))
        .filter(|(flag, _)| *flag == "--client")
        .map(|(_, name)| name.as_str())
        .collect();
    assert!(clients.contains(&OPERATOR_CLIENT), "{clients:?}");
    let all_services = compose
        .get("services")
        .and_then(Value::as_mapping)
        .expect("services");
    for node in services
        .iter()
        .filter(|service| service.args.first().map(String::as_str) == Some("serve"))
    {
        let id = flag(node, "--id");
        let spec = issued
            .iter()
            .find(|spec| spec.split_once('=').map(|(issued_id, _)| issued_id) == Some(id))
            .unwrap_or_else(|| panic!("no certificate is issued for node {id}: {issued:?}"));
        let hosts: Vec<&str> = spec.split_once('=').expect("ID=HOSTS").1.split(',').collect();
        assert!(
            hosts.contains(&node.name.as_str()) && hosts.contains(&"127.0.0.1"),
            "node {id}'s certificate names its service and the host's loopback: {spec}"
        );
        assert!(
            flag(node, "--cert").ends_with(&format!("/node-{id}.pem")),
            "{:?}",
            node.args
        );
        assert!(
            flag(node, "--key").ends_with(&format!("/node-{id}-key.pem")),
            "{:?}",
            node.args
        );
        let depends = all_services
            .get(node.name.as_str())
            .and_then(|service| service.get("depends_on"))
            .and_then(|depends| depends.get(certs.name.as_str()))
            .unwrap_or_else(|| panic!("{} does not depend on {}", node.name, certs.name));
        assert_eq!(
            depends.get("condition").and_then(Value::as_str),
            Some("service_completed_successfully"),
            "{} starts only once its certificates exist",
            node.name
        );
        assert_eq!(
            depends.get("required").and_then(Value::as_bool),
            Some(false),
            "{}: the plaintext layouts, without the certs service, must still start",
            node.name
        );
    }
    let demo = services
        .iter()
        .find(|service| service.name == "demo")
        .expect("the demo service");
    assert!(flag(demo, "--cacert").ends_with("/ca.pem"), "{:?}", demo.args);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_profile_runs_five_nodes_that_form_a_cluster() {
    check_layout_forms_a_cluster(Layout::five(), &["node1", "node2", "node3", "node4", "node5"]).await;
}

/// Without docker/five.env the peers stay the three-node list, which node4
/// and node5 are not on: they must refuse to start rather than initialize a
/// membership of their own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_profile_without_its_env_file_refuses_to_start_the_extra_nodes() {
    let compose = compose_file();
    let layout = Layout::three().with_profile("five");
    let nodes = node_services(&compose, &layout);
    let dir = tempfile::tempdir().expect("create a temporary directory");
    let loopback = Loopback::new(&compose, &nodes, dir.path());
    for name in ["node4", "node5"] {
        let node = nodes
            .iter()
            .find(|node| node.name == name)
            .unwrap_or_else(|| panic!("the five profile enables {name}"));
        let mut process = ServerProcess::spawn(
            name,
            &loopback.command(node),
            &dir.path().join(format!("{name}.log")),
        );
        let status = process.wait_exit(REFUSAL_WAIT);
        assert!(!status.success(), "{name} started with peers that omit it");
        let log = process.log();
        assert!(
            log.contains("is not among --peers"),
            "{name} says why it refuses: {log}"
        );
    }
}

#[test]
fn demo_profile_runs_the_demo_against_the_node_services() {
    let compose = compose_file();
    let plain: Vec<String> = enabled_services(&compose, &Layout::three())
        .into_iter()
        .map(|service| service.name)
        .collect();
    assert!(
        !plain.contains(&"demo".to_string()),
        "demo runs only in its profile"
    );

    let layout = Layout::three().with_profile("demo");
    let services = enabled_services(&compose, &layout);
    let demo = services
        .iter()
        .find(|service| service.name == "demo")
        .expect("the demo profile enables the demo service");
    assert_eq!(
        demo.args.first().map(String::as_str),
        Some("demo"),
        "{:?}",
        demo.args
    );
    let listen: BTreeMap<&str, u16> = services
        .iter()
        .filter(|service| service.args.first().map(String::as_str) == Some("serve"))
        .map(|node| (node.name.as_str(), port_of(flag(node, "--listen"))))
        .collect();
    let endpoints = flag(demo, "--endpoints");
    for endpoint in endpoints.split(',') {
        let (host, _) = endpoint.rsplit_once(':').expect("HOST:PORT");
        assert_eq!(
            listen.get(host),
            Some(&port_of(endpoint)),
            "demo endpoint {endpoint} is a node service on its listen port"
        );
    }
}
