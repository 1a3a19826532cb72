//! `snapshot save`, `snapshot inspect` and `snapshot restore`: backups of a
//! cluster's applied state, in the engine-neutral file format of
//! `quorumlock_core::backup`, and new clusters started from them.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Subcommand};
use quorumlock_core::backup::{read_backup, BackupHeader};
use quorumlock_core::consensus::{EngineKind, NodeId};
use quorumlock_server::config::parse_peers;
use quorumlock_server::restore::restore_backup;

use super::{parse_duration, ClusterArgs, EXIT_ERROR};

/// Flags of `snapshot`.
#[derive(Args)]
pub struct SnapshotArgs {
    #[command(subcommand)]
    command: SnapshotCommand,
}

#[derive(Subcommand)]
enum SnapshotCommand {
    /// Saves the leader's applied state to FILE (written to FILE.part,
    /// checked, synced, then renamed; an existing FILE is not replaced).
    Save(SaveArgs),
    /// Prints a backup file's header and checks the whole file.
    Inspect(InspectArgs),
    /// Writes the data directory of one node of a new cluster (either
    /// engine) holding the backup's state; run it for every member with the
    /// same FILE and --peers, then start each with `serve` and those flags.
    Restore(RestoreArgs),
}

/// Flags of `snapshot restore`.
#[derive(Args)]
pub struct RestoreArgs {
    /// The backup file.
    file: PathBuf,
    /// The new node's data directory; must be absent or empty.
    #[arg(long)]
    data_dir: PathBuf,
    /// The new node's id.
    #[arg(long)]
    id: NodeId,
    /// Every member of the new cluster as ID=HOST:PORT, comma-separated,
    /// as its nodes' `serve --peers` will give them.
    #[arg(long)]
    peers: String,
    /// The new cluster's engine: raft or paxos (either, whatever engine the
    /// backup came from).
    #[arg(long)]
    engine: EngineKind,
}

/// Flags of `snapshot save`.
#[derive(Args)]
pub struct SaveArgs {
    /// The file to write.
    file: PathBuf,
    /// Longest time the whole transfer may take.
    #[arg(long, value_parser = parse_duration, default_value = "5m")]
    timeout: Duration,
    #[command(flatten)]
    cluster: ClusterArgs,
}

/// Flags of `snapshot inspect`.
#[derive(Args)]
pub struct InspectArgs {
    /// The backup file.
    file: PathBuf,
}

/// Runs `snapshot`.
pub async fn snapshot(args: SnapshotArgs) -> anyhow::Result<i32> {
    match args.command {
        SnapshotCommand::Save(args) => save(args).await,
        SnapshotCommand::Inspect(args) => inspect(&args.file),
        SnapshotCommand::Restore(args) => restore(args),
    }
}

fn print_header(header: &BackupHeader) {
    for (field, value) in header.describe_lines() {
        println!("{field:<18} {value}");
    }
}

async fn save(args: SaveArgs) -> anyhow::Result<i32> {
    anyhow::ensure!(
        !args.file.exists(),
        "{} exists; a backup never replaces a file",
        args.file.display()
    );
    let partial = partial_path(&args.file);
    let client = args.cluster.connect().await?;
    let mut download = client.save_snapshot(args.timeout).await?;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&partial)
        .with_context(|| format!("creating {}", partial.display()))?;
    let written = async {
        let mut bytes = Vec::new();
        while let Some(chunk) = tokio::time::timeout(args.timeout, download.next_chunk())
            .await
            .map_err(|_| anyhow::anyhow!("the transfer took longer than --timeout {:?}", args.timeout))??
        {
            file.write_all(&chunk)
                .with_context(|| format!("writing {}", partial.display()))?;
            bytes.extend_from_slice(&chunk);
        }
        // The file is checked as a reader will check it before it takes
        // the final name.
        let (header, _) = read_backup(&bytes).context("the snapshot received does not check out")?;
        file.sync_all()
            .with_context(|| format!("syncing {}", partial.display()))?;
        anyhow::Ok((header, bytes.len()))
    }
    .await;
    let (header, bytes) = match written {
        Ok(done) => done,
        Err(error) => {
            let _ = std::fs::remove_file(&partial);
            return Err(error);
        }
    };
    std::fs::rename(&partial, &args.file)
        .with_context(|| format!("renaming {} to its name", partial.display()))?;
    if let Some(dir) = args.file.parent().filter(|dir| !dir.as_os_str().is_empty()) {
        // The rename itself is durable once the directory is.
        std::fs::File::open(dir)
            .and_then(|dir| dir.sync_all())
            .with_context(|| format!("syncing {}", dir.display()))?;
    }
    println!(
        "saved {} ({bytes} bytes) from {}",
        args.file.display(),
        download.endpoint()
    );
    print_header(&header);
    Ok(0)
}

fn partial_path(file: &Path) -> PathBuf {
    let mut name = file.as_os_str().to_owned();
    name.push(".part");
    PathBuf::from(name)
}

fn inspect(path: &Path) -> anyhow::Result<i32> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    match read_backup(&bytes) {
        Ok((header, _)) => {
            print_header(&header);
            println!("checked: header and body checksums match, the state decodes and its invariants hold");
            Ok(0)
        }
        Err(error) => {
            eprintln!("quorumlock: {}: {error}", path.display());
            Ok(EXIT_ERROR)
        }
    }
}

fn restore(args: RestoreArgs) -> anyhow::Result<i32> {
    let members = parse_peers(&args.peers)?;
    let bytes = std::fs::read(&args.file).with_context(|| format!("reading {}", args.file.display()))?;
    match restore_backup(&bytes, args.engine, args.id, &members, &args.data_dir) {
        Ok(header) => {
            println!(
                "restored {} into {} for node {} of a {} cluster of {} members",
                args.file.display(),
                args.data_dir.display(),
                args.id,
                args.engine,
                members.len()
            );
            print_header(&header);
            println!(
                "sessions have one full TTL from the new cluster's first leader to reconnect; \
                 tokens continue from {}",
                header.next_token
            );
            Ok(0)
        }
        Err(error) => {
            eprintln!("quorumlock: restore of {} refused: {error}", args.file.display());
            Ok(EXIT_ERROR)
        }
    }
}
