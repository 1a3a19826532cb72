//! The lock state machine under openraft: applied in memory, with snapshots
//! persisted to RocksDB.
//!
//! On start the last persisted snapshot is restored and openraft re-applies
//! the log entries after it, so the in-memory state never needs its own
//! durability.

use std::collections::BTreeSet;
use std::io::Cursor;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{EntryPayload, OptionalSend, RaftSnapshotBuilder, StorageIOError};
use parking_lot::Mutex;
use rocksdb::DB;
use serde::{Deserialize, Serialize};

use super::retirement::Retirement;
use super::types::{Entry, LogId, SnapshotMeta, StorageError, StoredMembership, TypeConfig};
use quorumlock_core::consensus::{AppliedState, CommandResult, EngineTelemetry, NodeId};
use quorumlock_core::lock::LockState;
use quorumlock_storage::{cf, synced};

/// Column family holding the current snapshot.
pub const CF_SNAPSHOT: &str = "raft_snapshot";
const KEY_SNAPSHOT: &[u8] = b"current";

/// A snapshot as persisted: openraft's metadata and the bytes of a
/// [`SnapshotData`].
#[derive(Clone, Serialize, Deserialize)]
struct StoredSnapshot {
    meta: SnapshotMeta,
    data: Vec<u8>,
}

/// What a snapshot carries (and what travels to a follower that installs
/// it): the lock state and the ids membership changes retired.
#[derive(Serialize, Deserialize)]
struct SnapshotData {
    retired: BTreeSet<NodeId>,
    state: Vec<u8>,
}

/// Opens every [`SnapshotData`]; snapshots written before retired ids
/// existed hold the lock state's bytes alone (and nothing was retired).
const SNAPSHOT_DATA_MAGIC: &[u8; 8] = b"QLRSNAP1";

impl SnapshotData {
    fn encode(retired: BTreeSet<NodeId>, state: Vec<u8>) -> Result<Vec<u8>, bincode::Error> {
        let mut bytes = SNAPSHOT_DATA_MAGIC.to_vec();
        bincode::serialize_into(&mut bytes, &SnapshotData { retired, state })?;
        Ok(bytes)
    }

    fn decode(bytes: &[u8]) -> Result<SnapshotData, bincode::Error> {
        match bytes.strip_prefix(SNAPSHOT_DATA_MAGIC.as_slice()) {
            Some(body) => bincode::deserialize(body),
            None => Ok(SnapshotData {
                retired: BTreeSet::new(),
                state: bytes.to_vec(),
            }),
        }
    }
}

/// The last log id the stored snapshot covers, if one is stored.
pub(crate) fn stored_snapshot_last_log_id(db: &DB) -> Result<Option<LogId>, StorageError> {
    let stored = db
        .get_cf(cf(db, CF_SNAPSHOT), KEY_SNAPSHOT)
        .map_err(|e| StorageIOError::read_snapshot(None, &e))?
        .map(|bytes| bincode::deserialize::<StoredSnapshot>(&bytes))
        .transpose()
        .map_err(|e| StorageIOError::read_snapshot(None, &e))?;
    Ok(stored.and_then(|stored| stored.meta.last_log_id))
}

/// The persisted current snapshot, shared by the state machine and its
/// builders (which run concurrently with apply).
struct SnapshotStore {
    db: Arc<DB>,
    current: Mutex<Option<StoredSnapshot>>,
}

impl SnapshotStore {
    fn load(db: Arc<DB>) -> Result<Self, StorageError> {
        let current = db
            .get_cf(cf(&db, CF_SNAPSHOT), KEY_SNAPSHOT)
            .map_err(|e| StorageIOError::read_snapshot(None, &e))?
            .map(|bytes| bincode::deserialize::<StoredSnapshot>(&bytes))
            .transpose()
            .map_err(|e| StorageIOError::read_snapshot(None, &e))?;
        Ok(SnapshotStore {
            db,
            current: Mutex::new(current),
        })
    }

    /// Persists `snapshot` (synced) unless a newer one is already stored.
    fn save(&self, snapshot: &StoredSnapshot) -> Result<(), StorageError> {
        let mut current = self.current.lock();
        if let Some(stored) = current.as_ref() {
            if stored.meta.last_log_id > snapshot.meta.last_log_id {
                return Ok(());
            }
        }
        let signature = Some(snapshot.meta.signature());
        let bytes = bincode::serialize(snapshot)
            .map_err(|e| StorageIOError::write_snapshot(signature.clone(), &e))?;
        self.db
            .put_cf_opt(cf(&self.db, CF_SNAPSHOT), KEY_SNAPSHOT, bytes, &synced())
            .map_err(|e| StorageIOError::write_snapshot(signature, &e))?;
        *current = Some(snapshot.clone());
        Ok(())
    }

    fn current(&self) -> Option<StoredSnapshot> {
        self.current.lock().clone()
    }
}

/// Seeds an empty raft database with `data` as its snapshot at `index`,
/// under `members` as the membership (the state of a restored backup). On
/// its first start openraft takes the snapshot's membership and purges the
/// (empty) log up to it, so the node joins an election among `members`
/// without initializing a cluster of its own. Refuses a database that holds
/// any log, vote or snapshot.
pub fn seed_restored_snapshot(
    db: &DB,
    index: u64,
    members: &std::collections::BTreeMap<NodeId, String>,
    data: Vec<u8>,
) -> anyhow::Result<()> {
    for family in [CF_SNAPSHOT, super::log_store::CF_LOG, super::log_store::CF_META] {
        let mut entries = db.iterator_cf(cf(db, family), rocksdb::IteratorMode::Start);
        anyhow::ensure!(
            entries.next().is_none(),
            "the raft database already holds data in {family}; a restore only seeds an empty one"
        );
    }
    anyhow::ensure!(index > 0, "a restored snapshot needs an index above 0");
    LockState::restore(&data).map_err(|error| anyhow::anyhow!("the state to seed: {error}"))?;
    // No leader wrote this index; term 0 sorts below every term an
    // election of the restored cluster can reach.
    let log_id = LogId::new(openraft::CommittedLeaderId::new(0, 0.into()), index);
    let voters: std::collections::BTreeSet<_> = members.keys().copied().collect();
    let nodes: std::collections::BTreeMap<_, _> = members
        .iter()
        .map(|(id, addr)| (*id, openraft::BasicNode { addr: addr.clone() }))
        .collect();
    let membership = openraft::Membership::new(vec![voters], nodes);
    let snapshot = StoredSnapshot {
        meta: SnapshotMeta {
            last_log_id: Some(log_id),
            last_membership: StoredMembership::new(Some(log_id), membership),
            snapshot_id: format!("restored-{index}"),
        },
        data: SnapshotData::encode(BTreeSet::new(), data)?,
    };
    let bytes = bincode::serialize(&snapshot)?;
    db.put_cf_opt(cf(db, CF_SNAPSHOT), KEY_SNAPSHOT, bytes, &synced())?;
    Ok(())
}

/// openraft's state machine: the shared [`AppliedState`] plus what openraft
/// needs to know about it.
pub struct StateMachineStore {
    state: Arc<AppliedState>,
    last_applied: Option<LogId>,
    last_membership: StoredMembership,
    retirement: Arc<Retirement>,
    snapshots: Arc<SnapshotStore>,
    applied_index: Arc<AtomicU64>,
    snapshots_built: u64,
    telemetry: Arc<EngineTelemetry>,
}

impl StateMachineStore {
    /// Opens the state machine over a database with [`CF_SNAPSHOT`],
    /// restoring the persisted snapshot into `state` and `retirement` if
    /// there is one. Snapshots saved and installed are recorded in `telemetry`.
    pub fn open(
        db: Arc<DB>,
        state: Arc<AppliedState>,
        retirement: Arc<Retirement>,
        applied_index: Arc<AtomicU64>,
        telemetry: Arc<EngineTelemetry>,
    ) -> Result<Self, StorageError> {
        let snapshots = Arc::new(SnapshotStore::load(db)?);
        let mut store = StateMachineStore {
            state,
            last_applied: None,
            last_membership: StoredMembership::default(),
            retirement,
            snapshots,
            applied_index,
            snapshots_built: 0,
            telemetry,
        };
        if let Some(snapshot) = store.snapshots.current() {
            store.restore(&snapshot)?;
        }
        Ok(store)
    }

    fn restore(&mut self, snapshot: &StoredSnapshot) -> Result<(), StorageError> {
        let signature = Some(snapshot.meta.signature());
        let data = SnapshotData::decode(&snapshot.data)
            .map_err(|e| StorageIOError::read_snapshot(signature.clone(), &e))?;
        let state = LockState::restore(&data.state)
            .map_err(|e| StorageIOError::read_snapshot(signature, &std::io::Error::other(e)))?;
        self.retirement.restore(data.retired);
        self.state
            .restore(state, snapshot.meta.last_log_id.map_or(0, |log_id| log_id.index));
        self.last_applied = snapshot.meta.last_log_id;
        self.last_membership = snapshot.meta.last_membership.clone();
        self.publish_applied();
        Ok(())
    }

    fn publish_applied(&self) {
        if let Some(log_id) = self.last_applied {
            self.applied_index.store(log_id.index, Ordering::Relaxed);
        }
    }
}

/// Builds a snapshot from state captured when the builder was created.
pub struct SnapshotBuilder {
    /// The snapshot, or why it could not be encoded.
    snapshot: Result<StoredSnapshot, bincode::Error>,
    snapshots: Arc<SnapshotStore>,
    telemetry: Arc<EngineTelemetry>,
    /// When the state was captured.
    started: std::time::Instant,
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError> {
        let snapshot = match &self.snapshot {
            Ok(snapshot) => snapshot,
            Err(error) => return Err(StorageIOError::write_snapshot(None, error).into()),
        };
        self.snapshots.save(snapshot)?;
        self.telemetry
            .snapshot_saved(snapshot.data.len(), self.started.elapsed());
        Ok(Snapshot {
            meta: snapshot.meta.clone(),
            snapshot: Box::new(Cursor::new(snapshot.data.clone())),
        })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachineStore {
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), StorageError> {
        Ok((self.last_applied, self.last_membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Vec<CommandResult>>, StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut responses = Vec::new();
        for entry in entries {
            assert!(
                Some(entry.log_id) > self.last_applied,
                "entries are applied once, in log order"
            );
            self.last_applied = Some(entry.log_id);
            let index = entry.log_id.index;
            let response = match entry.payload {
                EntryPayload::Blank => {
                    self.state.advance(index);
                    Vec::new()
                }
                EntryPayload::Normal(commands) => self.state.apply_entry(index, &commands),
                EntryPayload::Membership(membership) => {
                    self.state.advance(index);
                    let dropped: Vec<NodeId> = self
                        .last_membership
                        .membership()
                        .nodes()
                        .map(|(id, _)| *id)
                        .filter(|id| membership.get_node(id).is_none())
                        // A node under repair leaves to come back as a
                        // new learner: its id is not retired.
                        .filter(|id| !self.state.read(|state| state.repair_pending(*id)))
                        .collect();
                    self.retirement.retire(dropped, index);
                    self.last_membership = StoredMembership::new(Some(entry.log_id), membership);
                    Vec::new()
                }
            };
            responses.push(response);
        }
        self.publish_applied();
        Ok(responses)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        // Capture the state now: openraft keeps applying while the builder runs.
        let started = std::time::Instant::now();
        self.snapshots_built += 1;
        let snapshot_id = match self.last_applied {
            Some(log_id) => format!("{}-{}-{}", log_id.leader_id, log_id.index, self.snapshots_built),
            None => format!("empty-{}", self.snapshots_built),
        };
        let data = SnapshotData::encode(self.retirement.retired(), self.state.snapshot());
        SnapshotBuilder {
            snapshot: data.map(|data| StoredSnapshot {
                meta: SnapshotMeta {
                    last_log_id: self.last_applied,
                    last_membership: self.last_membership.clone(),
                    snapshot_id,
                },
                data,
            }),
            snapshots: self.snapshots.clone(),
            telemetry: self.telemetry.clone(),
            started,
        }
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, StorageError> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError> {
        let snapshot = StoredSnapshot {
            meta: meta.clone(),
            data: snapshot.into_inner(),
        };
        // Validate before persisting: a snapshot that does not restore must not
        // replace the one we have.
        self.restore(&snapshot)?;
        self.snapshots.save(&snapshot)?;
        self.telemetry.snapshot_installed();
        tracing::info!(last_log_id = ?meta.last_log_id, bytes = snapshot.data.len(), "installed snapshot from the leader");
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, StorageError> {
        Ok(self.snapshots.current().map(|stored| Snapshot {
            meta: stored.meta,
            snapshot: Box::new(Cursor::new(stored.data)),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshot_data_round_trips_and_reads_snapshots_from_before_retired_ids() {
        let state = LockState::default().snapshot();
        let retired: BTreeSet<NodeId> = [NodeId::new(3)].into();
        let bytes = SnapshotData::encode(retired.clone(), state.clone()).unwrap();
        let decoded = SnapshotData::decode(&bytes).unwrap();
        assert_eq!((decoded.retired, decoded.state), (retired, state.clone()));

        let legacy = SnapshotData::decode(&state).unwrap();
        assert!(legacy.retired.is_empty());
        assert_eq!(legacy.state, state);
    }
}
