//! The identity a data directory carries: which node it belongs to, which
//! engine's state it holds, and the incarnation of that state.
//!
//! A node's safety rests on its disk: a Raft voter that forgot its vote, or
//! a Paxos acceptor that forgot its promises, can help choose two values.
//! So a node refuses, before its engine opens anything, a directory that
//! belongs to another node, holds the other engine's state, or once held
//! state that is now gone; and the file that says so carries its own
//! checksum, since RocksDB's do not cover it.
//!
//! The file, `IDENTITY`, is written once, after the engine created its
//! state for the first time, through a temporary file, fsync and rename:
//!
//! ```text
//! quorumlock data directory
//! format 1
//! node 3
//! engine raft
//! incarnation 5f0c2e91a4b7d803
//! sha256 <hex SHA-256 of the lines above, newlines included>
//! ```
//!
//! The incarnation is drawn at random when the state is first created; a
//! node whose directory was emptied comes back with another one.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use quorumlock_core::consensus::{EngineKind, NodeId};
use sha2::{Digest, Sha256};

/// The identity file's name inside a data directory.
pub const IDENTITY_FILE: &str = "IDENTITY";

const HEADER: &str = "quorumlock data directory";
const FORMAT: u32 = 1;

/// Whom a data directory belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Identity {
    /// The node whose state the directory holds.
    pub node: NodeId,
    /// The engine whose state it holds.
    pub engine: EngineKind,
    /// Drawn at random when the state was first created.
    pub incarnation: u64,
}

/// What [`check`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Found {
    /// The directory is empty, or absent: the engine starts from nothing,
    /// and [`record`] is called once it has created its state.
    Fresh,
    /// The engine's state is there without an identity file (written
    /// before identities existed): [`record`] adopts it.
    Unrecorded,
    /// The directory's identity, which matches the node.
    Recorded(Identity),
}

/// Why a node refuses to start from a data directory.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// The identity file fails its checksum or cannot be read as one.
    #[error(
        "{file} is damaged ({why}); the node will not guess whose state the directory holds: \
         repair or replace the node (README, \"Storage faults\")"
    )]
    Damaged {
        /// The file.
        file: String,
        /// What is wrong with it.
        why: String,
    },
    /// The directory belongs to another node.
    #[error("data directory {dir} belongs to node {recorded}, not to node {asked}; start node {asked} on its own directory")]
    OtherNode {
        /// The directory.
        dir: String,
        /// The node it belongs to.
        recorded: NodeId,
        /// The node being started.
        asked: NodeId,
    },
    /// The directory holds the other engine's state.
    #[error(
        "data directory {dir} holds {recorded} state and the node was started with --engine {asked}; \
         start it with --engine {recorded}, or restore a backup into an empty directory to change engines"
    )]
    OtherEngine {
        /// The directory.
        dir: String,
        /// The engine whose state it holds.
        recorded: EngineKind,
        /// The engine asked for.
        asked: EngineKind,
    },
    /// The identity is there but the engine's state is not.
    #[error(
        "data directory {dir} belongs to node {node} ({engine}, incarnation {incarnation:016x}) but {state} is gone: \
         a node that lost its votes or promises must not take part again under its old state; \
         replace it (member add, promote, remove) or restore the directory"
    )]
    StateLost {
        /// The directory.
        dir: String,
        /// The node.
        node: NodeId,
        /// The engine.
        engine: EngineKind,
        /// The lost state's incarnation.
        incarnation: u64,
        /// The missing engine directory.
        state: String,
    },
    /// Reading or writing the directory failed.
    #[error("{action} {file}: {source}")]
    Io {
        /// What was being done.
        action: &'static str,
        /// The file.
        file: String,
        /// The failure.
        source: std::io::Error,
    },
}

impl IdentityError {
    /// Whether the directory's state was lost or its identity damaged,
    /// which a repair from peers mends; the other refusals are a wrong
    /// flag or directory, which the operator mends.
    pub fn is_lost_or_damaged(&self) -> bool {
        matches!(
            self,
            IdentityError::Damaged { .. } | IdentityError::StateLost { .. }
        )
    }
}

/// Whether `error`'s chain holds a refusal to start from a data directory:
/// a damaged database or an identity that does not fit.
pub fn is_refusal(error: &anyhow::Error) -> bool {
    quorumlock_storage::is_damaged(error)
        || error
            .chain()
            .any(|cause| matches!(cause.downcast_ref::<IdentityError>(), Some(e) if !matches!(e, IdentityError::Io { .. })))
}

fn engine_dir(dir: &Path, engine: EngineKind) -> PathBuf {
    dir.join(engine.as_str())
}

fn other(engine: EngineKind) -> EngineKind {
    match engine {
        EngineKind::Raft => EngineKind::Paxos,
        EngineKind::Paxos => EngineKind::Raft,
    }
}

/// Checks that `dir` may be the data directory of `node` running `engine`.
pub fn check(dir: &Path, node: NodeId, engine: EngineKind) -> Result<Found, IdentityError> {
    let shown = dir.display().to_string();
    let file = dir.join(IDENTITY_FILE);
    let text = match std::fs::read(&file) {
        Ok(bytes) => Some(bytes),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => None,
        Err(source) => {
            return Err(IdentityError::Io {
                action: "reading",
                file: file.display().to_string(),
                source,
            })
        }
    };
    let Some(bytes) = text else {
        if engine_dir(dir, other(engine)).exists() {
            return Err(IdentityError::OtherEngine {
                dir: shown,
                recorded: other(engine),
                asked: engine,
            });
        }
        return Ok(match engine_dir(dir, engine).exists() {
            true => Found::Unrecorded,
            false => Found::Fresh,
        });
    };
    let identity = parse(&bytes).map_err(|why| IdentityError::Damaged {
        file: file.display().to_string(),
        why,
    })?;
    if identity.node != node {
        return Err(IdentityError::OtherNode {
            dir: shown,
            recorded: identity.node,
            asked: node,
        });
    }
    if identity.engine != engine {
        return Err(IdentityError::OtherEngine {
            dir: shown,
            recorded: identity.engine,
            asked: engine,
        });
    }
    let state = engine_dir(dir, engine);
    if !state.exists() {
        return Err(IdentityError::StateLost {
            dir: shown,
            node,
            engine,
            incarnation: identity.incarnation,
            state: state.display().to_string(),
        });
    }
    Ok(Found::Recorded(identity))
}

/// A new incarnation: random, never 0 (which means unknown).
pub fn new_incarnation() -> u64 {
    loop {
        let incarnation: u64 = rand::random();
        if incarnation != 0 {
            return incarnation;
        }
    }
}

/// Writes `dir`'s identity for `node`, `engine` and `incarnation` durably.
pub fn record(
    dir: &Path,
    node: NodeId,
    engine: EngineKind,
    incarnation: u64,
) -> Result<Identity, IdentityError> {
    let identity = Identity {
        node,
        engine,
        incarnation,
    };
    write_checked(dir, IDENTITY_FILE, &body(&identity))
        .map_err(|(action, file, source)| IdentityError::Io { action, file, source })?;
    Ok(identity)
}

/// Writes `body` and its SHA-256 line to `dir/name` durably: a temporary
/// file, fsync, rename, fsync of the directory.
fn write_checked(dir: &Path, name: &str, body: &str) -> Result<(), (&'static str, String, std::io::Error)> {
    let file = dir.join(name);
    let temporary = dir.join(format!("{name}.tmp"));
    let io = |action: &'static str, path: &Path| {
        let file = path.display().to_string();
        move |source| (action, file, source)
    };
    let mut out = std::fs::File::create(&temporary).map_err(io("creating", &temporary))?;
    out.write_all(format!("{body}sha256 {}\n", sha256_hex(body)).as_bytes())
        .and_then(|()| out.sync_all())
        .map_err(io("writing", &temporary))?;
    std::fs::rename(&temporary, &file).map_err(io("renaming into", &file))?;
    std::fs::File::open(dir)
        .and_then(|directory| directory.sync_all())
        .map_err(io("syncing", dir))?;
    Ok(())
}

/// The body of a file [`write_checked`] wrote, once its checksum holds.
fn read_checked(bytes: &[u8]) -> Result<&str, String> {
    let text = std::str::from_utf8(bytes).map_err(|_| "not UTF-8 text".to_string())?;
    let split = text
        .trim_end_matches('\n')
        .rfind('\n')
        .ok_or("no checksum line")?;
    let (body, last) = text.split_at(split + 1);
    let sum = last
        .trim_end_matches('\n')
        .strip_prefix("sha256 ")
        .ok_or("no checksum line")?;
    if sum != sha256_hex(body) {
        return Err("its SHA-256 does not match its contents".to_string());
    }
    Ok(body)
}

fn body(identity: &Identity) -> String {
    format!(
        "{HEADER}\nformat {FORMAT}\nnode {}\nengine {}\nincarnation {:016x}\n",
        identity.node.get(),
        identity.engine,
        identity.incarnation
    )
}

fn sha256_hex(text: &str) -> String {
    Sha256::digest(text.as_bytes())
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect()
}

/// The file in which a node keeps the incarnations it knows its peers by
/// (see [`quorumlock_core::consensus::incarnation`]).
pub const PEERS_FILE: &str = "PEERS";
const PEERS_HEADER: &str = "quorumlock peer incarnations";

/// The peers' incarnations `dir` records; none if it records none yet.
pub fn read_peers(dir: &Path) -> Result<BTreeMap<NodeId, u64>, IdentityError> {
    let file = dir.join(PEERS_FILE);
    let bytes = match std::fs::read(&file) {
        Ok(bytes) => bytes,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(BTreeMap::new()),
        Err(source) => {
            return Err(IdentityError::Io {
                action: "reading",
                file: file.display().to_string(),
                source,
            })
        }
    };
    let damaged = |why: String| IdentityError::Damaged {
        file: file.display().to_string(),
        why,
    };
    let body = read_checked(&bytes).map_err(damaged)?;
    let mut lines = body.lines();
    if lines.next() != Some(PEERS_HEADER) || lines.next() != Some("format 1") {
        return Err(damaged("not a quorumlock peers file of format 1".to_string()));
    }
    let mut known = BTreeMap::new();
    for line in lines {
        let parsed = line
            .strip_prefix("node ")
            .and_then(|rest| rest.split_once(' '))
            .and_then(|(id, incarnation)| {
                Some((
                    id.parse::<NodeId>().ok()?,
                    u64::from_str_radix(incarnation, 16).ok()?,
                ))
            });
        let (id, incarnation) = parsed.ok_or_else(|| damaged(format!("a bad line {line:?}")))?;
        known.insert(id, incarnation);
    }
    Ok(known)
}

/// Records the peers' incarnations in `dir` durably.
pub fn write_peers(dir: &Path, known: &BTreeMap<NodeId, u64>) -> std::io::Result<()> {
    let mut body = format!("{PEERS_HEADER}\nformat 1\n");
    for (id, incarnation) in known {
        body.push_str(&format!("node {id} {incarnation:016x}\n"));
    }
    write_checked(dir, PEERS_FILE, &body).map_err(|(action, file, error)| {
        std::io::Error::new(error.kind(), format!("{action} {file}: {error}"))
    })
}

fn parse(bytes: &[u8]) -> Result<Identity, String> {
    let body = read_checked(bytes)?;
    let mut lines = body.lines();
    if lines.next() != Some(HEADER) {
        return Err("not a quorumlock identity file".to_string());
    }
    let mut field = |name: &str| -> Result<String, String> {
        let line = lines.next().ok_or(format!("no {name} line"))?;
        line.strip_prefix(name)
            .and_then(|value| value.strip_prefix(' '))
            .map(str::to_string)
            .ok_or(format!("expected a {name} line, found {line:?}"))
    };
    let format: u32 = field("format")?
        .parse()
        .map_err(|_| "a bad format line".to_string())?;
    if format != FORMAT {
        return Err(format!("format {format}, and this build reads format {FORMAT}"));
    }
    let node = field("node")?.parse::<NodeId>()?;
    let engine = field("engine")?.parse::<EngineKind>()?;
    let incarnation =
        u64::from_str_radix(&field("incarnation")?, 16).map_err(|_| "a bad incarnation line".to_string())?;
    Ok(Identity {
        node,
        engine,
        incarnation,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const RAFT: EngineKind = EngineKind::Raft;
    const PAXOS: EngineKind = EngineKind::Paxos;

    fn node(id: u64) -> NodeId {
        NodeId::new(id)
    }

    /// A directory in which `engine` has created its state and the identity
    /// of `id` is recorded.
    fn recorded(id: u64, engine: EngineKind) -> (tempfile::TempDir, Identity) {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join(engine.as_str())).unwrap();
        let identity = record(dir.path(), node(id), engine, new_incarnation()).unwrap();
        (dir, identity)
    }

    #[test]
    fn an_empty_directory_is_fresh_and_its_recorded_identity_reads_back() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(check(dir.path(), node(3), RAFT).unwrap(), Found::Fresh);
        assert_eq!(
            check(&dir.path().join("absent"), node(3), RAFT).unwrap(),
            Found::Fresh
        );
        std::fs::create_dir(dir.path().join("raft")).unwrap();
        assert_eq!(check(dir.path(), node(3), RAFT).unwrap(), Found::Unrecorded);
        let identity = record(dir.path(), node(3), RAFT, new_incarnation()).unwrap();
        assert_eq!(
            check(dir.path(), node(3), RAFT).unwrap(),
            Found::Recorded(identity)
        );
    }

    #[test]
    fn incarnations_differ_between_recordings() {
        let (_a, first) = recorded(1, PAXOS);
        let (_b, second) = recorded(1, PAXOS);
        assert_ne!(first.incarnation, second.incarnation);
    }

    #[test]
    fn another_nodes_directory_is_refused_naming_both_nodes() {
        let (dir, _) = recorded(2, RAFT);
        let error = check(dir.path(), node(3), RAFT).unwrap_err();
        assert!(matches!(error, IdentityError::OtherNode { .. }), "{error}");
        let text = error.to_string();
        assert!(text.contains("belongs to node 2, not to node 3"), "{text}");
    }

    #[test]
    fn the_other_engines_state_is_refused_with_or_without_an_identity() {
        let (dir, _) = recorded(1, RAFT);
        let error = check(dir.path(), node(1), PAXOS).unwrap_err();
        assert!(error.to_string().contains("holds raft state"), "{error}");
        let bare = tempfile::tempdir().unwrap();
        std::fs::create_dir(bare.path().join("paxos")).unwrap();
        let error = check(bare.path(), node(1), RAFT).unwrap_err();
        assert!(error.to_string().contains("holds paxos state"), "{error}");
    }

    #[test]
    fn an_identity_whose_state_is_gone_is_refused_as_lost() {
        let (dir, identity) = recorded(4, PAXOS);
        std::fs::remove_dir(dir.path().join("paxos")).unwrap();
        let error = check(dir.path(), node(4), PAXOS).unwrap_err();
        assert!(matches!(error, IdentityError::StateLost { .. }), "{error}");
        assert!(
            error
                .to_string()
                .contains(&format!("{:016x}", identity.incarnation)),
            "{error}"
        );
    }

    #[test]
    fn a_damaged_identity_is_refused_whichever_byte_changed() {
        let (dir, _) = recorded(5, RAFT);
        let file = dir.path().join(IDENTITY_FILE);
        let good = std::fs::read(&file).unwrap();
        for at in 0..good.len() {
            let mut bad = good.clone();
            bad[at] ^= 0x01;
            std::fs::write(&file, &bad).unwrap();
            match check(dir.path(), node(5), RAFT) {
                Err(IdentityError::Damaged { why, .. }) => assert!(!why.is_empty()),
                other => panic!("flipping byte {at} gave {other:?}"),
            }
        }
        std::fs::write(&file, &good[..good.len() / 2]).unwrap();
        assert!(matches!(
            check(dir.path(), node(5), RAFT),
            Err(IdentityError::Damaged { .. })
        ));
    }

    #[test]
    fn peers_incarnations_read_back_and_a_damaged_peers_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        assert!(read_peers(dir.path()).unwrap().is_empty());
        let known: BTreeMap<NodeId, u64> = [(node(2), 0xb2), (node(3), u64::MAX)].into_iter().collect();
        write_peers(dir.path(), &known).unwrap();
        assert_eq!(read_peers(dir.path()).unwrap(), known);
        let file = dir.path().join(PEERS_FILE);
        let mut bytes = std::fs::read(&file).unwrap();
        let at = bytes.len() / 2;
        bytes[at] ^= 0x04;
        std::fs::write(&file, bytes).unwrap();
        assert!(matches!(
            read_peers(dir.path()),
            Err(IdentityError::Damaged { .. })
        ));
    }

    #[test]
    fn refusals_are_told_apart_from_io_failures() {
        let (dir, _) = recorded(2, RAFT);
        let refused = anyhow::Error::from(check(dir.path(), node(3), RAFT).unwrap_err());
        assert!(is_refusal(&refused.context("starting node 3")));
        let io = anyhow::Error::from(IdentityError::Io {
            action: "reading",
            file: "x".into(),
            source: std::io::Error::other("boom"),
        });
        assert!(!is_refusal(&io));
    }
}
