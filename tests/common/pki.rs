//! Certificates for TLS clusters, made by `quorumlock certs` as an operator
//! would: one CA with three nodes and named clients, and another CA with a
//! client `mallory`; the channels, CLI runs and configs that use them; and
//! waiting for a process cluster's node to log a line (as a reload does).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use quorumlock_client::{ClientConfig, ClientTls, ClientTlsFiles};
use quorumlock_testkit::cluster::ProcessCluster;
use quorumlock_tls::Dialer;
use tonic::transport::{Channel, Endpoint};

/// Bound on one CLI or Python run.
pub const RUN_TIME_MAX: Duration = Duration::from_secs(120);
/// Bound on waiting for a node's log to show a line.
pub const LOG_WAIT_MAX: Duration = Duration::from_secs(30);

/// The binary under test.
pub fn exe() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_quorumlock"))
}

/// Runs `quorumlock certs --dir dir ARGS` and returns its output.
pub fn certs(dir: &Path, args: &[&str]) -> String {
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

/// The certificates of one cluster: its CA, three nodes and the clients
/// named; and another CA with a client `mallory`.
pub struct Pki {
    dir: tempfile::TempDir,
}

impl Pki {
    /// Nodes 1 to 3 on 127.0.0.1 and clients `clients` of our CA.
    pub fn new(clients: &[&str]) -> Pki {
        let dir = tempfile::tempdir().unwrap();
        let pki = Pki { dir };
        let mut args = vec![
            "--node",
            "1=127.0.0.1",
            "--node",
            "2=127.0.0.1",
            "--node",
            "3=127.0.0.1",
        ];
        for client in clients {
            args.extend(["--client", client]);
        }
        let made = certs(&pki.ours(), &args);
        assert!(made.contains("made a CA"), "{made}");
        certs(&pki.others(), &["--client", "mallory"]);
        pki
    }

    /// The directory of our CA's files.
    pub fn ours(&self) -> PathBuf {
        self.dir.path().join("ours")
    }

    /// The directory of the other CA's files.
    pub fn others(&self) -> PathBuf {
        self.dir.path().join("others")
    }

    /// Our CA certificate.
    pub fn ca(&self) -> PathBuf {
        self.ours().join("ca.pem")
    }

    /// The certificate and key of client `name` of the CA in `dir`.
    pub fn client_files(&self, dir: &Path, name: &str) -> (PathBuf, PathBuf) {
        (
            dir.join(format!("client-{name}.pem")),
            dir.join(format!("client-{name}-key.pem")),
        )
    }

    /// A TLS config trusting `ca` with client `name` of the CA in `dir`.
    pub fn tls(&self, ca: &Path, identity: Option<(&Path, &str)>) -> ClientTls {
        ClientTls::load(ClientTlsFiles {
            ca: ca.to_path_buf(),
            identity: identity.map(|(dir, name)| self.client_files(dir, name)),
        })
        .expect("load the client's TLS files")
    }

    /// Our client `name`.
    pub fn client(&self, name: &str) -> ClientTls {
        self.tls(&self.ca(), Some((&self.ours(), name)))
    }

    /// The `serve` flags of the nodes' certificates (`{id}` is each node's id).
    pub fn serve_flags(&self) -> Vec<String> {
        let ours = self.ours().display().to_string();
        vec![
            "--cert".into(),
            format!("{ours}/node-{{id}}.pem"),
            "--key".into(),
            format!("{ours}/node-{{id}}-key.pem"),
            "--ca".into(),
            format!("{ours}/ca.pem"),
        ]
    }

    /// The CLI flags of client `name`.
    pub fn cli_flags(&self, name: &str) -> Vec<String> {
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

/// A client config that waits for a connection long enough on a loaded machine.
pub fn client_config(tls: Option<ClientTls>) -> ClientConfig {
    ClientConfig {
        connect_wait_max: Duration::from_secs(10),
        tls,
        ..ClientConfig::default()
    }
}

/// A channel to `addr` over TLS as `tls`'s client.
pub fn tls_channel(addr: &str, tls: ClientTls) -> Channel {
    let endpoint = Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect_timeout(Duration::from_secs(5))
        .timeout(super::RPC_TIMEOUT);
    Dialer::tls(tls).channel(&endpoint, "127.0.0.1").unwrap()
}

/// Runs `command` to its end (bounded by [`RUN_TIME_MAX`]); whether it
/// succeeded, and its stdout and stderr.
pub async fn run(command: &mut tokio::process::Command) -> (bool, String) {
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

/// The ids, in order, that `quorumlock member list` (or the listing a
/// membership change prints) shows with `role` (voter or learner).
pub fn ids_with_role(listing: &str, role: &str) -> Vec<u64> {
    let mut ids: Vec<u64> = listing
        .lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            match fields.as_slice() {
                [id, _, shown, ..] if *shown == role => id.parse().ok(),
                _ => None,
            }
        })
        .collect();
    ids.sort_unstable();
    ids
}

/// Polls until node `index`'s log has `count` lines containing `needle`
/// (a reload is confirmed by its log line), and returns the log.
pub async fn wait_for_log_lines(
    cluster: &ProcessCluster,
    index: usize,
    needle: &str,
    count: usize,
) -> String {
    super::wait_until(
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

/// Runs `quorumlock token --identity NAME`: the token, and the policy entry.
pub async fn new_token(identity: &str) -> (String, String) {
    let output = tokio::process::Command::new(exe())
        .args(["token", "--identity", identity])
        .output()
        .await
        .expect("run quorumlock token");
    assert!(output.status.success(), "{output:?}");
    let token = String::from_utf8(output.stdout).unwrap().trim().to_string();
    let entry = String::from_utf8(output.stderr).unwrap();
    assert!(
        !entry.contains(&token),
        "the policy entry must not hold the token itself"
    );
    let entry = entry[entry.find("[[tokens]]").expect("the entry is printed")..].to_string();
    (token, entry)
}
