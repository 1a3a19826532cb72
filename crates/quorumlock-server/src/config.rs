//! A node's settings: command-line flags, optionally on top of a TOML file.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};
use serde::Deserialize;

use quorumlock_core::consensus::{EngineKind, NodeId};
use quorumlock_tls::{ClientCerts, ServerTlsFiles};

/// Everything a node needs to start.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// This node's id.
    pub id: NodeId,
    /// Address the gRPC server binds.
    pub listen: SocketAddr,
    /// Every member's id and address, this node included (only this node
    /// when it joins).
    pub peers: BTreeMap<NodeId, String>,
    /// This node joins a running cluster (`serve --join`): it never
    /// initializes a membership and waits for `member add`.
    pub join: bool,
    /// `serve --repair`: if the data directory is lost or damaged, move the
    /// damaged files aside and repair from the peers (see
    /// [`crate::repair`]) instead of refusing to start. A pending repair
    /// resumes at every start whether or not this is set.
    pub repair: bool,
    /// Directory for this node's RocksDB.
    pub data_dir: PathBuf,
    /// The consensus engine.
    pub engine: EngineKind,
    /// Leader heartbeat period.
    pub heartbeat: Duration,
    /// Minimum election timeout (drawn from `[t, 2t)`).
    pub election_timeout: Duration,
    /// Longest time spent ordering one command or confirming one read.
    pub request_timeout: Duration,
    /// Build a snapshot after this many applied commands.
    pub snapshot_every_entries: u64,
    /// Most changes the node keeps for watches to resume from (README,
    /// "Watches"); at most 64 MiB of them either way.
    pub watch_history: usize,
    /// TLS on the API and the peer protocol, with client certificates
    /// verified on every connection (required unless the files say
    /// otherwise); `None` serves plaintext.
    pub tls: Option<ServerTlsFiles>,
    /// The access policy (TOML); `None` turns access control off.
    pub auth_policy: Option<PathBuf>,
    /// Where to serve `/metrics`, `/health` and the status page (see
    /// [`crate::metrics`]); `None` serves none of them and records no
    /// metrics.
    pub metrics_listen: Option<SocketAddr>,
}

/// The optional TOML file: the same settings as the flags, all optional.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// See [`NodeConfig::watch_history`].
    pub watch_history: Option<usize>,
    /// See [`NodeConfig::id`].
    pub id: Option<NodeId>,
    /// See [`NodeConfig::listen`].
    pub listen: Option<SocketAddr>,
    /// Peers as `id = "addr"` pairs.
    pub peers: Option<BTreeMap<String, String>>,
    /// See [`NodeConfig::data_dir`].
    pub data_dir: Option<PathBuf>,
    /// `raft` or `paxos`.
    pub engine: Option<String>,
    /// Milliseconds.
    pub heartbeat_ms: Option<u64>,
    /// Milliseconds.
    pub election_timeout_ms: Option<u64>,
    /// Milliseconds.
    pub request_timeout_ms: Option<u64>,
    /// Entries between snapshots.
    pub snapshot_every_entries: Option<u64>,
    /// The node's certificate (PEM).
    pub cert: Option<PathBuf>,
    /// The node's private key (PEM).
    pub key: Option<PathBuf>,
    /// The CA certificates (PEM) clients and peers must be signed by.
    pub ca: Option<PathBuf>,
    /// `required` or `optional`.
    pub client_certs: Option<String>,
    /// The access policy (TOML).
    pub auth_policy: Option<PathBuf>,
    /// See [`NodeConfig::metrics_listen`].
    pub metrics_listen: Option<SocketAddr>,
}

impl FileConfig {
    /// Reads a TOML config file.
    pub fn load(path: &std::path::Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        toml::from_str(&text).with_context(|| format!("parsing {}", path.display()))
    }
}

/// Parses `--client-certs`: `required` or `optional`.
pub fn parse_client_certs(text: &str) -> anyhow::Result<ClientCerts> {
    match text {
        "required" => Ok(ClientCerts::Required),
        "optional" => Ok(ClientCerts::Optional),
        other => bail!("--client-certs {other:?}: expected required or optional"),
    }
}

/// The TLS files from `--cert`, `--key` and `--ca`: all three, or none;
/// and whether clients must present certificates (`--client-certs`, only
/// with TLS).
///
/// A node's peers authenticate each other by client certificate, so TLS
/// without a CA (server authentication only) would leave the peer protocol
/// open to anyone who can connect; it is refused.
pub fn tls_files(
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
    ca: Option<PathBuf>,
    client_certs: Option<ClientCerts>,
) -> anyhow::Result<Option<ServerTlsFiles>> {
    match (cert, key, ca) {
        (None, None, None) => match client_certs {
            None => Ok(None),
            Some(_) => bail!("--client-certs needs TLS: --cert, --key and --ca"),
        },
        (Some(cert), Some(key), Some(ca)) => Ok(Some(ServerTlsFiles {
            cert,
            key,
            ca,
            client_certs: client_certs.unwrap_or_default(),
        })),
        (cert, key, ca) => {
            let missing: Vec<&str> = [
                ("--cert", cert.is_none()),
                ("--key", key.is_none()),
                ("--ca", ca.is_none()),
            ]
            .into_iter()
            .filter_map(|(flag, missing)| missing.then_some(flag))
            .collect();
            bail!(
                "TLS needs --cert, --key and --ca together (missing {}): members prove who they are to each other \
                 with certificates the CA signed",
                missing.join(", ")
            )
        }
    }
}

/// Parses `1=host:port,2=host:port,...`.
pub fn parse_peers(text: &str) -> anyhow::Result<BTreeMap<NodeId, String>> {
    let mut peers = BTreeMap::new();
    for item in text.split(',').map(str::trim).filter(|item| !item.is_empty()) {
        let (id, addr) = item
            .split_once('=')
            .with_context(|| format!("peer {item:?} is not of the form ID=HOST:PORT"))?;
        let id: NodeId = id
            .trim()
            .parse()
            .map_err(|_| anyhow::anyhow!("peer id {id:?} is not a number"))?;
        if id == NodeId::new(0) {
            bail!("peer id 0 is reserved; ids start at 1");
        }
        if peers.insert(id, addr.trim().to_string()).is_some() {
            bail!("peer id {id} is listed twice");
        }
    }
    if peers.is_empty() {
        bail!("no peers given");
    }
    Ok(peers)
}

impl NodeConfig {
    /// Checks settings that would otherwise fail later and less clearly.
    pub fn validate(&self) -> anyhow::Result<()> {
        if !self.peers.contains_key(&self.id) {
            bail!(
                "--id {} is not among --peers {:?}",
                self.id,
                self.peers.keys().collect::<Vec<_>>()
            );
        }
        if self.heartbeat.is_zero() || self.election_timeout <= self.heartbeat * 2 {
            bail!(
                "election timeout ({:?}) must exceed twice the heartbeat ({:?})",
                self.election_timeout,
                self.heartbeat
            );
        }
        if self.snapshot_every_entries == 0 {
            bail!("snapshot interval must be at least one entry");
        }
        if self.watch_history == 0 {
            bail!("--watch-history must keep at least one change");
        }
        let optional = self
            .tls
            .as_ref()
            .is_some_and(|tls| tls.client_certs == ClientCerts::Optional);
        if optional && self.auth_policy.is_none() {
            bail!(
                "--client-certs optional needs --auth-policy: without client certificates, callers prove who \
                 they are with the policy's bearer tokens"
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peers_parse_and_reject_malformed_lists() {
        let peers = parse_peers("1=127.0.0.1:7001, 2=127.0.0.1:7002").unwrap();
        assert_eq!(
            peers.get(&NodeId::new(2)).map(String::as_str),
            Some("127.0.0.1:7002")
        );
        assert!(parse_peers("1=a,1=b").is_err());
        assert!(parse_peers("x=a").is_err());
        assert!(parse_peers("0=a").is_err());
        assert!(parse_peers("1").is_err());
        assert!(parse_peers("").is_err());
    }

    #[test]
    fn tls_files_come_as_a_set_of_three() {
        assert!(tls_files(None, None, None, None).unwrap().is_none());
        let all = tls_files(Some("c".into()), Some("k".into()), Some("ca".into()), None)
            .unwrap()
            .unwrap();
        assert_eq!(all.ca, PathBuf::from("ca"));
        assert_eq!(all.client_certs, ClientCerts::Required, "mutual TLS by default");
        let error = tls_files(Some("c".into()), Some("k".into()), None, None)
            .unwrap_err()
            .to_string();
        assert!(error.contains("missing --ca"), "{error}");
        let error = tls_files(None, Some("k".into()), None, None)
            .unwrap_err()
            .to_string();
        assert!(error.contains("missing --cert, --ca"), "{error}");
        let error = tls_files(None, None, None, Some(ClientCerts::Optional))
            .unwrap_err()
            .to_string();
        assert!(error.contains("needs TLS"), "{error}");
    }
}
