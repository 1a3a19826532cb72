//! `serve` (one node) and `dev` (a local cluster in one process).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use super::serve_args::ServeArgs;
use anyhow::Context;
use clap::Args;
use quorumlock_core::consensus::{EngineKind, NodeId};
use quorumlock_server::identity;
use quorumlock_server::skew_file::SkewFileClock;
use quorumlock_server::{Node, NodeConfig};

use super::certs::DevTls;
use super::{EXIT_DATA_DIR_REFUSED, EXIT_STORAGE_FAILED};

/// Flags of `dev`.
#[derive(Args)]
pub struct DevArgs {
    /// Number of nodes.
    #[arg(long, default_value_t = 3)]
    nodes: u64,
    /// Consensus engine: raft or paxos.
    #[arg(long, default_value = "raft")]
    engine: String,
    /// Port of node 1; node N listens on base_port + N - 1.
    #[arg(long, default_value_t = 7001)]
    base_port: u16,
    /// Where the nodes keep their data [default: <temp dir>/quorumlock-dev].
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Delete the data left by an earlier run first.
    #[arg(long)]
    fresh: bool,
    /// Serve TLS with client certificates required, using a throwaway CA
    /// and certificates made in <data-dir>/tls (kept for the next start),
    /// and print the client flags that reach the cluster.
    #[arg(long)]
    tls: bool,
    /// Port of node 1's metrics listener (/metrics, /health and the status
    /// page); node N serves on metrics_port + N - 1. 0 turns them off.
    #[arg(long, default_value_t = 9101)]
    metrics_port: u16,
}

/// Runs one node until SIGINT or SIGTERM (exit 0), or until its storage
/// fails (exit [`EXIT_STORAGE_FAILED`]): a node whose disk it cannot trust
/// stops rather than serve, vote or promise from memory the disk does not
/// back, and says why once.
pub async fn serve(args: ServeArgs) -> anyhow::Result<i32> {
    let skew_file = args.clock_skew_file().map(PathBuf::from);
    let config = args.into_config()?;
    let data_dir = config.data_dir.clone();
    let started = match skew_file {
        Some(path) => {
            tracing::warn!(path = %path.display(), "the lease clock follows a skew file (fault injection)");
            Node::start_with_clock(config, Arc::new(SkewFileClock::new(path))).await
        }
        None => Node::start(config).await,
    };
    let node = match started {
        Ok(node) => node,
        Err(error) if identity::is_refusal(&error) => {
            tracing::error!(
                "refusing to start from this data directory: {error:#} \
                 (a lost or damaged directory is repaired from the peers with --repair)"
            );
            tracing::info!("exiting with status {EXIT_DATA_DIR_REFUSED}");
            return Ok(EXIT_DATA_DIR_REFUSED);
        }
        Err(error) => return Err(error),
    };
    let mut hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        .context("installing a SIGHUP handler")?;
    let stop = shutdown_signal();
    tokio::pin!(stop);
    let failure = loop {
        tokio::select! {
            signal = &mut stop => {
                signal?;
                tracing::info!("stopping");
                break None;
            }
            _ = node.failed() => break Some(Stopped::StorageFailed),
            reason = node.forgotten() => break Some(Stopped::Forgotten(reason)),
            reason = node.repair_refused() => break Some(Stopped::RepairRefused(reason)),
            _ = hangup.recv() => {
                // The node logged what it reloaded and what failed.
                let _ = node.reload();
            }
        }
    };
    let stopped = node.shutdown().await;
    match failure {
        Some(Stopped::StorageFailed) => {
            // The node logged the cause, once, when it failed.
            tracing::info!("exiting with status {EXIT_STORAGE_FAILED}");
            Ok(EXIT_STORAGE_FAILED)
        }
        Some(Stopped::Forgotten(reason)) => {
            if let Err(error) = quorumlock_server::repair::mark_lost(&data_dir, &reason) {
                tracing::error!("marking the data directory as lost: {error:#}");
            }
            tracing::error!(
                "refusing to take part with a data directory whose state was lost: {reason}; \
                 start the node with --repair to repair it from its peers"
            );
            tracing::info!("exiting with status {EXIT_DATA_DIR_REFUSED}");
            Ok(EXIT_DATA_DIR_REFUSED)
        }
        Some(Stopped::RepairRefused(reason)) => {
            tracing::error!("stopping: the repair from peers cannot go on: {reason}");
            tracing::info!("exiting with status {EXIT_DATA_DIR_REFUSED}");
            Ok(EXIT_DATA_DIR_REFUSED)
        }
        None => {
            stopped?;
            Ok(0)
        }
    }
}

/// Why `serve` stopped a node by itself.
enum Stopped {
    /// Its storage failed (the node logged why, once, when it failed).
    StorageFailed,
    /// A peer knows it under another incarnation: its state was lost.
    Forgotten(String),
    /// A repair from peers cannot go on.
    RepairRefused(String),
}

/// Waits for SIGINT (Ctrl-C) or SIGTERM.
pub async fn shutdown_signal() -> anyhow::Result<()> {
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("installing a SIGTERM handler")?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate.recv() => {}
    }
    Ok(())
}

/// Runs a local cluster in this process until SIGINT or SIGTERM.
pub async fn dev(args: DevArgs) -> anyhow::Result<i32> {
    anyhow::ensure!((1..=9).contains(&args.nodes), "--nodes must be between 1 and 9");
    let engine: EngineKind = args
        .engine
        .parse()
        .map_err(|error: String| anyhow::anyhow!(error))?;
    let data_dir = args
        .data_dir
        .unwrap_or_else(|| std::env::temp_dir().join("quorumlock-dev"));
    if args.fresh && data_dir.exists() {
        std::fs::remove_dir_all(&data_dir).with_context(|| format!("removing {}", data_dir.display()))?;
    }
    let addr = |id: u64| format!("127.0.0.1:{}", u64::from(args.base_port) + id - 1);
    let peers: std::collections::BTreeMap<NodeId, String> =
        (1..=args.nodes).map(|id| (NodeId::new(id), addr(id))).collect();
    let tls = match args.tls {
        true => Some(DevTls::prepare(&data_dir.join("tls"), args.nodes)?),
        false => None,
    };
    let mut nodes = Vec::new();
    for id in 1..=args.nodes {
        let config = NodeConfig {
            id: NodeId::new(id),
            listen: addr(id).parse()?,
            peers: peers.clone(),
            join: false,
            repair: false,
            data_dir: data_dir.join(format!("node-{id}")),
            engine,
            heartbeat: Duration::from_millis(100),
            election_timeout: Duration::from_millis(500),
            request_timeout: Duration::from_millis(5_000),
            snapshot_every_entries: 10_000,
            watch_history: quorumlock_core::consensus::history::HISTORY_CHANGES_DEFAULT,
            tls: tls.as_ref().map(|tls| tls.nodes[id as usize - 1].clone()),
            auth_policy: None,
            metrics_listen: match args.metrics_port {
                0 => None,
                port => Some(std::net::SocketAddr::from(([127, 0, 0, 1], port + id as u16 - 1))),
            },
        };
        nodes.push(Node::start(config).await?);
    }
    let endpoints: Vec<String> = peers.values().cloned().collect();
    println!(
        "quorumlock dev cluster: {} {engine} nodes, data in {}",
        args.nodes,
        data_dir.display()
    );
    println!("endpoints: {}", endpoints.join(","));
    let scheme = if tls.is_some() { "https" } else { "http" };
    for node in &nodes {
        if let Some(metrics) = node.metrics_addr() {
            println!(
                "node {}: status page {scheme}://{metrics}/  metrics {scheme}://{metrics}/metrics",
                node.engine().status().node_id
            );
        }
    }
    if let Some(tls) = &tls {
        println!(
            "TLS with client certificates; client flags: {}",
            tls.client_flags()
        );
    }
    println!("press Ctrl-C to stop (data is kept for the next start unless --fresh)");
    shutdown_signal().await?;
    for node in nodes {
        node.shutdown().await?;
    }
    Ok(0)
}
