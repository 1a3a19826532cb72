//! The `disk` fault of `--disk-faults`: a node crashes, its files are
//! damaged as a bad disk or a wrong command would, and it is started again
//! on them. It must refuse the directory (exit status 6) within
//! [`REFUSAL_WAIT_MAX`] — never serve with less than it acknowledged.
//! Then, one fault in two, it is started with `--repair` and must repair
//! from its peers (log `repair finished`) within [`REPAIR_WAIT_MAX`];
//! otherwise its directory as it was before the damage is put back (what
//! an operator restores from a copy) and it starts again.
//!
//! Damage, one kind per fault, drawn among those the directory allows:
//! - `wal`: 64 bytes inverted in the middle of the largest RocksDB WAL;
//! - `sst`: 64 bytes inverted in the middle of the largest SST file;
//! - `sst_truncated`: the largest SST file cut to half its size;
//! - `manifest`: 16 bytes inverted in the middle of the MANIFEST;
//! - `wiped`: the whole data directory deleted (the node starts as a fresh
//!   one; its peers, which know it under its old incarnation, must make it
//!   stop at their first request).

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::Rng;

use crate::cluster::ProcessCluster;

/// The exit status of `serve` refusing its data directory.
pub const EXIT_DATA_DIR_REFUSED: i32 = 6;
/// Longest time a node started on a damaged directory may run.
pub const REFUSAL_WAIT_MAX: Duration = Duration::from_secs(20);
/// Longest time a repair from peers may take: a demotion, a catch-up and
/// a promotion, each waiting for a leader that the faults before may have
/// just replaced.
pub const REPAIR_WAIT_MAX: Duration = Duration::from_secs(60);
/// Smallest file worth damaging in its middle.
const DAMAGEABLE_BYTES_MIN: u64 = 256;

/// What one disk fault did.
pub struct DiskFault {
    /// The fault's description for the log and the summary.
    pub detail: String,
    /// Set when the node did not refuse its damaged directory: what it did
    /// instead.
    pub unrefused: Option<String>,
    /// Set when a repair from peers did not finish: what was seen.
    pub unrepaired: Option<String>,
}

/// Crashes node `index`, damages its data directory, starts it, checks
/// that it refuses, and puts the directory back as it was.
pub async fn damage(
    rng: &mut StdRng,
    cluster: &mut ProcessCluster,
    index: usize,
    role: &str,
) -> anyhow::Result<DiskFault> {
    cluster.node_mut(index).kill()?;
    let data_dir = cluster.data_dir(index);
    let copy = data_dir.with_extension("before-damage");
    if copy.exists() {
        std::fs::remove_dir_all(&copy).with_context(|| format!("removing {}", copy.display()))?;
    }
    copy_dir(&data_dir, &copy)?;
    let damage = choose_damage(rng, &data_dir)?;
    let what = damage.apply(&data_dir)?;

    cluster.node_mut(index).start()?;
    let started = tokio::time::Instant::now();
    let outcome = loop {
        if let Some(status) = cluster.node_mut(index).reap()? {
            break Ok(status);
        }
        if started.elapsed() >= REFUSAL_WAIT_MAX {
            break Err(());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let took = started.elapsed().as_secs_f64();
    let (result, unrefused) = match outcome {
        Ok(status) if status.code() == Some(EXIT_DATA_DIR_REFUSED) => {
            (format!("refused (exit 6) in {took:.1}s"), None)
        }
        Ok(status) => {
            let said = format!("exited with {status} instead of status {EXIT_DATA_DIR_REFUSED}");
            (said.clone(), Some(said))
        }
        Err(()) => {
            cluster.node_mut(index).kill()?;
            let said = format!("still served {took:.0}s after starting on the damaged directory");
            (said.clone(), Some(said))
        }
    };
    let node = cluster.node(index).id();
    let mut unrepaired = None;
    let mut after = "its directory put back".to_string();
    let repaired = match unrefused.is_none() && rng.gen_bool(0.5) {
        true => match repair(cluster, index).await? {
            Ok(took) => {
                after = format!("repaired from peers in {took:.1}s");
                true
            }
            Err(seen) => {
                after = format!("{seen}; its directory put back");
                unrepaired = Some(format!(
                    "node {node} {seen} ({what}); its log ends:\n{}",
                    cluster.node(index).log_tail(crate::cluster::LOG_TAIL_LINES)
                ));
                cluster.node_mut(index).kill()?;
                false
            }
        },
        false => false,
    };
    if repaired {
        std::fs::remove_dir_all(&copy).with_context(|| format!("removing {}", copy.display()))?;
    } else {
        std::fs::remove_dir_all(&data_dir).or_else(ignore_missing)?;
        std::fs::rename(&copy, &data_dir).with_context(|| format!("putting back {}", data_dir.display()))?;
        cluster.node_mut(index).start()?;
    }
    Ok(DiskFault {
        detail: format!("{what} of {role} node {node}: {result}; {after}"),
        unrepaired,
        unrefused: unrefused.map(|said| {
            format!(
                "node {node} {said} ({what}); its log ends:\n{}",
                cluster.node(index).log_tail(crate::cluster::LOG_TAIL_LINES)
            )
        }),
    })
}

/// Starts node `index` with `--repair` and waits until it logs `repair
/// finished`: the seconds it took, or what was seen instead.
async fn repair(cluster: &mut ProcessCluster, index: usize) -> anyhow::Result<Result<f64, String>> {
    let logged_before = cluster.node(index).log().len();
    cluster.node_mut(index).start_with(&["--repair"])?;
    let started = tokio::time::Instant::now();
    loop {
        let log = cluster.node(index).log();
        if log
            .get(logged_before..)
            .is_some_and(|since| since.contains("repair finished"))
        {
            return Ok(Ok(started.elapsed().as_secs_f64()));
        }
        if let Some(status) = cluster.node_mut(index).reap()? {
            return Ok(Err(format!("exited with {status} while repairing")));
        }
        if started.elapsed() >= REPAIR_WAIT_MAX {
            return Ok(Err(format!(
                "did not finish its repair within {}s",
                REPAIR_WAIT_MAX.as_secs()
            )));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn ignore_missing(error: std::io::Error) -> std::io::Result<()> {
    match error.kind() {
        std::io::ErrorKind::NotFound => Ok(()),
        _ => Err(error),
    }
}

enum Damage {
    Flip {
        file: PathBuf,
        len: usize,
        kind: &'static str,
    },
    Truncate {
        file: PathBuf,
    },
    Wipe,
}

impl Damage {
    fn apply(&self, data_dir: &Path) -> anyhow::Result<String> {
        match self {
            Damage::Flip { file, len, kind } => {
                let mut bytes = std::fs::read(file).with_context(|| format!("reading {}", file.display()))?;
                let at = bytes.len() / 2;
                for byte in &mut bytes[at..at + len] {
                    *byte = !*byte;
                }
                std::fs::write(file, &bytes).with_context(|| format!("writing {}", file.display()))?;
                Ok(format!("{kind}: {len} bytes inverted at {at} of {}", name(file)))
            }
            Damage::Truncate { file } => {
                let len = std::fs::metadata(file)?.len();
                std::fs::OpenOptions::new()
                    .write(true)
                    .open(file)?
                    .set_len(len / 2)?;
                Ok(format!(
                    "sst_truncated: {} cut from {len} to {} bytes",
                    name(file),
                    len / 2
                ))
            }
            Damage::Wipe => {
                std::fs::remove_dir_all(data_dir)
                    .with_context(|| format!("deleting {}", data_dir.display()))?;
                Ok("wiped: the whole data directory deleted".to_string())
            }
        }
    }
}

fn name(file: &Path) -> String {
    file.file_name()
        .map(|name| name.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// The damage kinds `data_dir` allows, one drawn at random.
fn choose_damage(rng: &mut StdRng, data_dir: &Path) -> anyhow::Result<Damage> {
    let engine_dir = ["raft", "paxos"]
        .iter()
        .map(|engine| data_dir.join(engine))
        .find(|dir| dir.is_dir())
        .with_context(|| format!("no engine state in {}", data_dir.display()))?;
    let mut files: Vec<(PathBuf, u64)> = std::fs::read_dir(&engine_dir)?
        .filter_map(|entry| entry.ok())
        .map(|entry| entry.path())
        .filter_map(|path| Some((path.clone(), std::fs::metadata(&path).ok()?.len())))
        .filter(|(_, len)| *len >= DAMAGEABLE_BYTES_MIN)
        .collect();
    files.sort_by_key(|(_, len)| std::cmp::Reverse(*len));
    let largest = |suffix: &str| {
        files
            .iter()
            .find(|(path, _)| name(path).ends_with(suffix))
            .map(|(path, _)| path.clone())
    };
    let manifest = files
        .iter()
        .find(|(path, _)| name(path).starts_with("MANIFEST-"))
        .map(|(path, _)| path.clone());
    let mut choices = vec![Damage::Wipe];
    if let Some(file) = largest(".log") {
        choices.push(Damage::Flip {
            file,
            len: 64,
            kind: "wal",
        });
    }
    if let Some(file) = largest(".sst") {
        choices.push(Damage::Flip {
            file: file.clone(),
            len: 64,
            kind: "sst",
        });
        choices.push(Damage::Truncate { file });
    }
    if let Some(file) = manifest {
        choices.push(Damage::Flip {
            file,
            len: 16,
            kind: "manifest",
        });
    }
    let pick = (0..choices.len())
        .collect::<Vec<_>>()
        .choose(rng)
        .copied()
        .expect("wiping is always possible");
    Ok(choices.swap_remove(pick))
}

/// Copies directory `from` with everything in it to `to`.
pub fn copy_dir(from: &Path, to: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(to).with_context(|| format!("creating {}", to.display()))?;
    for entry in std::fs::read_dir(from).with_context(|| format!("reading {}", from.display()))? {
        let entry = entry?;
        let target = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            copy_dir(&entry.path(), &target)?;
        } else {
            std::fs::copy(entry.path(), &target)
                .with_context(|| format!("copying {}", entry.path().display()))?;
        }
    }
    Ok(())
}
