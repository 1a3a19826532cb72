//! The `quorumlock` command.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use quorumlock::consensus::EngineKind;
use quorumlock::server::config::ServeArgs;
use quorumlock::server::{Node, NodeConfig};
use tracing_subscriber::EnvFilter;

#[derive(Parser)]
#[command(
    name = "quorumlock",
    version,
    about = "A distributed lock service with fencing tokens"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Runs one node of a cluster.
    Serve(ServeArgs),
    /// Runs a local cluster on 127.0.0.1 in this process, with no other setup.
    Dev(DevArgs),
}

/// Flags of `dev`.
#[derive(Args)]
struct DevArgs {
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
}

#[tokio::main]
async fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info,openraft=warn")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve(args) => serve(args).await,
        Command::Dev(args) => dev(args).await,
    };
    if let Err(error) = result {
        eprintln!("quorumlock: {error:#}");
        std::process::exit(1);
    }
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let config = args.into_config()?;
    let node = Node::start(config).await?;
    shutdown_signal().await;
    tracing::info!("stopping");
    node.shutdown().await
}

async fn shutdown_signal() {
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("installing a SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate.recv() => {}
    }
}

async fn dev(args: DevArgs) -> anyhow::Result<()> {
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
    let peers: std::collections::BTreeMap<u64, String> = (1..=args.nodes).map(|id| (id, addr(id))).collect();
    let mut nodes = Vec::new();
    for id in 1..=args.nodes {
        let config = NodeConfig {
            id,
            listen: addr(id).parse()?,
            peers: peers.clone(),
            data_dir: data_dir.join(format!("node-{id}")),
            engine,
            heartbeat: Duration::from_millis(100),
            election_timeout: Duration::from_millis(500),
            request_timeout: Duration::from_millis(5_000),
            snapshot_every_entries: 10_000,
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
    println!("press Ctrl-C to stop (data is kept for the next start unless --fresh)");
    shutdown_signal().await;
    for node in nodes {
        node.shutdown().await?;
    }
    Ok(())
}
