//! Restoring a backup (see `quorumlock_core::backup`) into the data
//! directory of one node of a new cluster, of either engine.
//!
//! Every node of the new cluster is restored from the same file with the
//! same members; each then starts with the backup's state applied at the
//! backup's index and elects a leader among those members, without
//! initializing a cluster of its own. Sessions get their full TTL back, so a
//! client of the old cluster has one full TTL (plus the first leader's
//! takeover grace) to reconnect; the token counter is the backup's, so every
//! later grant is larger than every token the backup holds.

use std::collections::BTreeMap;
use std::path::Path;

use quorumlock_core::backup::{read_backup, BackupError, BackupHeader};
use quorumlock_core::consensus::{EngineKind, NodeId};

/// Why a restore wrote nothing (or removed what it had started to write).
#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    /// The file is not a usable backup.
    #[error("the backup file is refused: {0}")]
    Backup(#[from] BackupError),
    /// This node is not among the members.
    #[error("node {node} is not among the members {members:?}")]
    NotAMember {
        /// The node being restored.
        node: NodeId,
        /// The members given.
        members: Vec<NodeId>,
    },
    /// The data directory already holds something.
    #[error("{dir} is not empty; a restore never writes into a used data directory")]
    NotEmpty {
        /// The directory.
        dir: String,
    },
    /// The backup's index is 0: it holds no applied entry to continue from.
    #[error("the backup is at index 0 and holds no applied state to restore")]
    EmptyBackup,
    /// Reading the directory or writing the engine's storage failed.
    #[error("writing {dir}: {source:#}")]
    Storage {
        /// The directory.
        dir: String,
        /// What failed.
        source: anyhow::Error,
    },
}

/// Checks `file` as a backup and writes `data_dir` for node `node` of a new
/// `engine` cluster of `members`. Nothing is written unless the file checks
/// out and `data_dir` is absent or empty; if writing fails part-way, what
/// was written is removed. Returns the backup's header.
pub fn restore_backup(
    file: &[u8],
    engine: EngineKind,
    node: NodeId,
    members: &BTreeMap<NodeId, String>,
    data_dir: &Path,
) -> Result<BackupHeader, RestoreError> {
    let (header, mut state) = read_backup(file)?;
    if !members.contains_key(&node) {
        return Err(RestoreError::NotAMember {
            node,
            members: members.keys().copied().collect(),
        });
    }
    if header.index == 0 {
        return Err(RestoreError::EmptyBackup);
    }
    let storage = |source: anyhow::Error| RestoreError::Storage {
        dir: data_dir.display().to_string(),
        source,
    };
    let created = match std::fs::read_dir(data_dir) {
        Ok(mut entries) => {
            if entries.next().is_some() {
                return Err(RestoreError::NotEmpty {
                    dir: data_dir.display().to_string(),
                });
            }
            false
        }
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            std::fs::create_dir_all(data_dir).map_err(|error| storage(error.into()))?;
            true
        }
        Err(error) => return Err(storage(error.into())),
    };
    state.restore_full_budgets();
    // The restored cluster's nodes start with new directories.
    state.forget_repairs();
    let body = state.snapshot();
    let written = match engine {
        EngineKind::Raft => quorumlock_raft::RaftEngine::seed_restored(data_dir, header.index, members, body),
        EngineKind::Paxos => quorumlock_paxos::store::PaxosStore::open(data_dir)
            .and_then(|store| store.seed_restored(quorumlock_paxos::Slot::new(header.index), body)),
    }
    .and_then(|()| sync_dir(data_dir))
    .and_then(|()| {
        Ok(
            crate::identity::record(data_dir, node, engine, crate::identity::new_incarnation())
                .map(|_| ())?,
        )
    });
    if let Err(error) = written {
        let subdir = data_dir.join(engine.as_str());
        let _ = std::fs::remove_dir_all(&subdir);
        let _ = std::fs::remove_file(data_dir.join(crate::identity::IDENTITY_FILE));
        if created {
            let _ = std::fs::remove_dir(data_dir);
        }
        return Err(storage(error));
    }
    Ok(header)
}

/// Makes the directory's new entries durable.
fn sync_dir(dir: &Path) -> anyhow::Result<()> {
    std::fs::File::open(dir)?.sync_all()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use quorumlock_core::backup::{encode_backup, BackupHeader};
    use quorumlock_core::lock::{Command, Credential, LockState, SessionId};

    const TTL_MS: u64 = 30_000;

    /// A state with two sessions, a held lock with a waiter, and a budget
    /// recorded below the TTL; and its backup file at index 42.
    fn backup() -> (LockState, Vec<u8>) {
        let owner = Credential::of_secret(b"a session secret");
        let mut state = LockState::default();
        for _ in 0..2 {
            state.apply(&Command::OpenSession {
                ttl_ms: TTL_MS,
                owner: owner.clone(),
            });
        }
        for session in [1, 2] {
            state.apply(&Command::Acquire {
                session: SessionId::new(session),
                lock: "jobs/a".to_string(),
                wait: true,
                by: owner.clone(),
            });
        }
        assert_eq!(state.describe("jobs/a").queue_len, 1);
        state.apply(&Command::CheckpointSessions {
            remaining: vec![(SessionId::new(1), 1_000)],
        });
        let body = state.snapshot();
        let header = BackupHeader::describe(&state, &body, "paxos", 42, 1);
        (state, encode_backup(&header, &body))
    }

    fn members() -> BTreeMap<NodeId, String> {
        (1..=3u64)
            .map(|id| (NodeId::from(id), format!("127.0.0.1:{}", 7000 + id)))
            .collect()
    }

    #[test]
    fn a_damaged_file_or_a_stranger_id_writes_nothing() {
        let (_, file) = backup();
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("node");
        let mut damaged = file.clone();
        let last = damaged.len() - 1;
        damaged[last] ^= 1;
        for (bytes, node) in [(&damaged[..], 1u64), (&file[..file.len() - 1], 1), (&file[..], 9)] {
            let error =
                restore_backup(bytes, EngineKind::Raft, node.into(), &members(), &target).unwrap_err();
            assert!(
                matches!(error, RestoreError::Backup(_) | RestoreError::NotAMember { .. }),
                "{error}"
            );
            assert!(
                !target.exists(),
                "nothing is written for a refused restore ({error})"
            );
        }
    }

    #[test]
    fn a_used_data_directory_is_refused_and_left_alone() {
        let (_, file) = backup();
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("keep"), b"operator data").unwrap();
        let error = restore_backup(&file, EngineKind::Paxos, 1.into(), &members(), dir.path()).unwrap_err();
        assert!(matches!(error, RestoreError::NotEmpty { .. }), "{error}");
        assert!(error.to_string().contains("not empty"), "{error}");
        let entries: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(entries.len(), 1, "the directory is untouched");
    }

    #[test]
    fn a_restored_paxos_store_holds_the_state_at_the_backup_slot_with_full_budgets() {
        let (mut state, file) = backup();
        let dir = tempfile::tempdir().unwrap();
        let header = restore_backup(&file, EngineKind::Paxos, 2.into(), &members(), dir.path()).unwrap();
        assert_eq!(header.index, 42);
        let store = quorumlock_paxos::store::PaxosStore::open(dir.path()).unwrap();
        let durable = store.load::<Command>().unwrap();
        let (slot, data) = durable.snapshot.expect("the seeded snapshot");
        assert_eq!(slot.get(), 42);
        assert!(durable.accepted.is_empty());
        state.restore_full_budgets();
        assert_eq!(LockState::restore(&data).unwrap(), state);
    }

    #[test]
    fn a_raft_directory_is_seeded_once_and_only_once() {
        let (_, file) = backup();
        let dir = tempfile::tempdir().unwrap();
        restore_backup(&file, EngineKind::Raft, 3.into(), &members(), dir.path()).unwrap();
        assert!(dir.path().join("raft").is_dir());
        let again = restore_backup(&file, EngineKind::Raft, 3.into(), &members(), dir.path()).unwrap_err();
        assert!(matches!(again, RestoreError::NotEmpty { .. }), "{again}");
    }
}
