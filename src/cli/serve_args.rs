//! The flags of `serve`, merged over an optional TOML file into a
//! [`NodeConfig`].

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use quorumlock_core::consensus::history::HISTORY_CHANGES_DEFAULT;
use quorumlock_core::consensus::{EngineKind, NodeId};
use quorumlock_server::config::{parse_client_certs, parse_peers, tls_files, FileConfig};
use quorumlock_server::NodeConfig;

/// Flags of `serve`; each overrides the same setting from `--config`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// TOML file with any of the settings below.
    #[arg(long)]
    config: Option<PathBuf>,
    /// This node's id (1, 2, ...).
    #[arg(long)]
    id: Option<NodeId>,
    /// Address to serve on, e.g. 127.0.0.1:7001.
    #[arg(long)]
    listen: Option<std::net::SocketAddr>,
    /// Every member as ID=HOST:PORT, comma-separated, this node included.
    #[arg(long)]
    peers: Option<String>,
    /// Join a running cluster (either engine) instead of forming one:
    /// HOST:PORT of one or more of its members, comma-separated. The node
    /// starts with an empty data directory, never initializes a cluster of
    /// its own, and serves once the leader added it (`quorumlock member
    /// add`). Excludes --peers.
    #[arg(long)]
    join: Option<String>,
    /// If the data directory was lost or is damaged (the start would be
    /// refused), move what is left of it under <data-dir>/damaged-<time>/,
    /// start empty under a new incarnation, and repair from the peers in
    /// --peers: the leader makes this node a learner, records its new
    /// incarnation, and promotes it once it caught up (README, "Storage
    /// faults"). Needs a leader among the peers. With an intact directory
    /// the node starts as usual.
    #[arg(long)]
    repair: bool,
    /// Directory for this node's data.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Consensus engine: raft or paxos.
    #[arg(long)]
    engine: Option<String>,
    /// Leader heartbeat period in milliseconds [default: 100].
    #[arg(long)]
    heartbeat_ms: Option<u64>,
    /// Minimum election timeout in milliseconds; the actual one is drawn from
    /// [t, 2t) [default: 500].
    #[arg(long)]
    election_timeout_ms: Option<u64>,
    /// Longest time a node spends ordering one request [default: 5000].
    #[arg(long)]
    request_timeout_ms: Option<u64>,
    /// Snapshot after this many log entries [default: 10000]; the paxos
    /// engine also waits for a log of half the last snapshot's size.
    #[arg(long)]
    snapshot_every_entries: Option<u64>,
    /// Most recent changes kept for watches to start or resume from; at
    /// most 64 MiB of them either way [default: 100000].
    #[arg(long)]
    watch_history: Option<usize>,
    /// The node's TLS certificate (PEM). With --key and --ca, the node
    /// serves its API and peer protocol over TLS only, requires a client
    /// certificate the CA signed on every connection (see --client-certs),
    /// and dials its peers with this certificate. Re-read on SIGHUP.
    #[arg(long)]
    cert: Option<PathBuf>,
    /// The private key (PEM) of --cert.
    #[arg(long)]
    key: Option<PathBuf>,
    /// CA certificates (PEM) that clients' and peers' certificates must chain to.
    #[arg(long)]
    ca: Option<PathBuf>,
    /// With TLS: `required` (default; every connection presents a
    /// certificate the CA signed) or `optional` (clients may come without
    /// one and prove who they are with a bearer token; needs --auth-policy;
    /// members still present theirs).
    #[arg(long)]
    client_certs: Option<String>,
    /// Access policy (TOML): roles, the identities that hold them, bearer
    /// tokens. Turns authentication and authorization on. Re-read on SIGHUP.
    #[arg(long)]
    auth_policy: Option<PathBuf>,
    /// Serve Prometheus metrics at /metrics, /health and a live status
    /// page at / on this address (HOST:PORT). Over TLS when the node is;
    /// with --auth-policy, /metrics and the page's data need the admin role.
    /// Off unless given.
    #[arg(long, value_name = "ADDR")]
    metrics_listen: Option<std::net::SocketAddr>,
    /// Fault injection for chaos runs: the lease keeper's clock is skewed by
    /// the `OFFSET_MS RATE` this file holds, re-read while the node runs
    /// (see `SkewedClock`). Not for production.
    #[arg(long, hide = true)]
    clock_skew_file: Option<PathBuf>,
}

impl ServeArgs {
    /// The hidden `--clock-skew-file`, if given.
    pub fn clock_skew_file(&self) -> Option<&std::path::Path> {
        self.clock_skew_file.as_deref()
    }

    /// Merges the flags over the config file and the defaults.
    pub fn into_config(self) -> anyhow::Result<NodeConfig> {
        let file = match &self.config {
            Some(path) => FileConfig::load(path)?,
            None => FileConfig::default(),
        };
        let id = self.id.or(file.id).context("--id is required")?;
        let listen = self.listen.or(file.listen).context("--listen is required")?;
        let join = match (&self.join, &self.peers) {
            (Some(_), Some(_)) => anyhow::bail!(
                "--join and --peers exclude each other: a joining node learns its peers from the cluster"
            ),
            (Some(members), None) => {
                anyhow::ensure!(
                    members.split(',').any(|addr| !addr.trim().is_empty()),
                    "--join needs the address of at least one member"
                );
                true
            }
            (None, _) => false,
        };
        anyhow::ensure!(
            !(self.repair && join),
            "--repair and --join exclude each other: a repairing node asks the peers in --peers"
        );
        let peers = match (self.peers, file.peers) {
            _ if join => [(id, listen.to_string())].into(),
            (Some(text), _) => parse_peers(&text)?,
            (None, Some(map)) => {
                let text = map
                    .iter()
                    .map(|(id, addr)| format!("{id}={addr}"))
                    .collect::<Vec<_>>()
                    .join(",");
                parse_peers(&text)?
            }
            (None, None) => anyhow::bail!("--peers is required (or `peers` in the config file)"),
        };
        let engine: EngineKind = self
            .engine
            .or(file.engine)
            .unwrap_or_else(|| "raft".to_string())
            .parse()
            .map_err(|error: String| anyhow::anyhow!(error))?;
        let millis = |flag: Option<u64>, file: Option<u64>, default: u64| {
            Duration::from_millis(flag.or(file).unwrap_or(default))
        };
        Ok(NodeConfig {
            id,
            listen,
            peers,
            join,
            repair: self.repair,
            data_dir: self
                .data_dir
                .or(file.data_dir)
                .context("--data-dir is required")?,
            engine,
            heartbeat: millis(self.heartbeat_ms, file.heartbeat_ms, 100),
            election_timeout: millis(self.election_timeout_ms, file.election_timeout_ms, 500),
            request_timeout: millis(self.request_timeout_ms, file.request_timeout_ms, 5_000),
            snapshot_every_entries: self
                .snapshot_every_entries
                .or(file.snapshot_every_entries)
                .unwrap_or(10_000),
            watch_history: self
                .watch_history
                .or(file.watch_history)
                .unwrap_or(HISTORY_CHANGES_DEFAULT),
            tls: tls_files(
                self.cert.or(file.cert),
                self.key.or(file.key),
                self.ca.or(file.ca),
                self.client_certs
                    .or(file.client_certs)
                    .as_deref()
                    .map(parse_client_certs)
                    .transpose()?,
            )?,
            auth_policy: self.auth_policy.or(file.auth_policy),
            metrics_listen: self.metrics_listen.or(file.metrics_listen),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(clap::Parser)]
    struct Cli {
        #[command(flatten)]
        serve: ServeArgs,
    }

    fn parse(args: &[&str]) -> anyhow::Result<NodeConfig> {
        use clap::Parser;
        let cli = Cli::try_parse_from(std::iter::once("serve").chain(args.iter().copied()))?;
        cli.serve.into_config()
    }

    /// Parses a whitespace-separated flag line.
    fn parse_line(line: &str) -> anyhow::Result<NodeConfig> {
        parse(&line.split_whitespace().collect::<Vec<_>>())
    }

    /// The example in README.md, so that the documented file stays valid.
    fn readme_toml() -> &'static str {
        let readme = include_str!("../../README.md");
        let start = readme.find("```toml\n").expect("README has a TOML example") + "```toml\n".len();
        let end = start + readme[start..].find("```").expect("the TOML example is closed");
        &readme[start..end]
    }

    #[test]
    fn readme_config_file_parses_and_flags_override_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node.toml");
        std::fs::write(&path, readme_toml()).unwrap();
        let path = path.to_str().unwrap();

        let from_file = parse(&["--config", path]).unwrap();
        assert_eq!(from_file.id, NodeId::new(1));
        assert_eq!(from_file.peers.len(), 3);
        assert_eq!(from_file.engine, EngineKind::Raft);
        assert_eq!(from_file.election_timeout, Duration::from_millis(500));

        let overridden = parse(&["--config", path, "--id", "2", "--election-timeout-ms", "900"]).unwrap();
        assert_eq!(overridden.id, NodeId::new(2));
        assert_eq!(overridden.election_timeout, Duration::from_millis(900));
        assert_eq!(
            overridden.listen, from_file.listen,
            "unset flags keep the file's values"
        );
    }

    #[test]
    fn readme_access_policy_example_is_a_valid_policy() {
        let readme = include_str!("../../README.md");
        let marker = "```toml\n# policy.toml\n";
        let start = readme.find(marker).expect("README has the policy example") + "```toml\n".len();
        let end = start + readme[start..].find("```").expect("the policy example is closed");
        let policy = quorumlock_server::auth::Policy::parse(&readme[start..end]).expect("the example parses");
        let summary = policy.summary();
        assert_eq!((summary.roles, summary.identities, summary.tokens), (4, 4, 1));
        use quorumlock_server::auth::Action;
        assert!(policy
            .check("build-worker", &Action::Lock("acquire", "jobs/x"))
            .is_ok());
        assert!(policy
            .check("build-worker", &Action::Lock("acquire", "billing/x"))
            .is_err());
        assert!(policy
            .check("alice@example.com", &Action::Admin("state digest"))
            .is_ok());
    }

    #[test]
    fn flags_alone_make_a_config_with_documented_defaults() {
        let config = parse_line("--id 3 --listen 127.0.0.1:7003 --data-dir /tmp/q3 --peers 1=127.0.0.1:7001,2=127.0.0.1:7002,3=127.0.0.1:7003")
        .unwrap();
        assert_eq!(config.heartbeat, Duration::from_millis(100));
        assert_eq!(config.request_timeout, Duration::from_millis(5_000));
        assert_eq!(config.snapshot_every_entries, 10_000);
        config.validate().unwrap();
    }

    #[test]
    fn missing_or_bad_settings_are_clear_errors() {
        let error = parse_line("--listen 127.0.0.1:7001 --data-dir /tmp/q --peers 1=a").unwrap_err();
        assert!(error.to_string().contains("--id is required"), "{error}");
        let error = parse_line("--id 1 --listen 127.0.0.1:7001 --data-dir /tmp/q --peers 1=a --engine zab")
            .unwrap_err();
        assert!(error.to_string().contains("unknown engine"), "{error}");
        let unknown_key = "id = 1\nlisten = \"127.0.0.1:7001\"\ncolour = \"blue\"\n";
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bad.toml");
        std::fs::write(&path, unknown_key).unwrap();
        assert!(FileConfig::load(&path).is_err(), "unknown keys are refused");
        let config = parse_line("--id 4 --listen 127.0.0.1:7001 --data-dir /tmp/q --peers 1=a,2=b").unwrap();
        assert!(config.validate().is_err(), "an id outside the peers is refused");
    }
}
