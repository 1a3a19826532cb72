//! The Raft log and vote in RocksDB.
//!
//! Log entries live in their own column family under big-endian index keys,
//! so iteration order is log order. Every append is one `WriteBatch`;
//! openraft is told the entries are flushed only once the WAL holding them
//! is synced, by the WAL sync thread of [`super::wal_sync`].
//!
//! A follower that installs a snapshot from its leader may be sent, and
//! acknowledge, the entries after it before its state machine task has made
//! the snapshot durable. A node stopped in between holds entries after a
//! gap that nothing covers, and acknowledged them: it cannot rebuild its
//! state, and forgetting them could lose committed entries. Its start is
//! refused as damaged ([`quorumlock_storage::Damaged`]), which `serve
//! --repair` repairs from the peers.

use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{AnyError, OptionalSend, RaftLogReader, StorageIOError, Vote};
use rocksdb::{Direction, IteratorMode, WriteBatch, DB};
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::types::{Entry, LogId, StorageError, TypeConfig};
use super::wal_sync::{WalSync, WalSyncer};
use quorumlock_core::consensus::{EngineTelemetry, NodeId};
use quorumlock_storage::{cf, parse_u64_key, synced, u64_key};

/// Column family of log entries.
pub const CF_LOG: &str = "raft_log";
/// Column family of the vote, committed id and purge point.
pub const CF_META: &str = "raft_meta";

const KEY_VOTE: &[u8] = b"vote";
const KEY_COMMITTED: &[u8] = b"committed";
const KEY_LAST_PURGED: &[u8] = b"last_purged";

/// The log store; cheap to clone (readers share the database).
#[derive(Clone)]
pub struct LogStore {
    db: Arc<DB>,
    commit_index: Arc<AtomicU64>,
    syncer: WalSyncer,
}

impl LogStore {
    /// Wraps a database opened with [`CF_LOG`] and [`CF_META`];
    /// `commit_index` is updated whenever openraft saves its committed id.
    /// Its fsyncs are recorded in `telemetry`.
    /// Also returns the WAL sync thread, if `sync` runs one: it ends once
    /// every clone of the store is dropped.
    pub fn new(
        db: Arc<DB>,
        commit_index: Arc<AtomicU64>,
        sync: WalSync,
        telemetry: Arc<EngineTelemetry>,
    ) -> anyhow::Result<(Self, Option<std::thread::JoinHandle<()>>)> {
        let (syncer, thread) = WalSyncer::start(db.clone(), sync, telemetry)?;
        let store = LogStore {
            db,
            commit_index,
            syncer,
        };
        store.refuse_uncovered_gap()?;
        Ok((store, thread))
    }

    /// Refuses a log whose first entry follows a gap that no purge point
    /// or stored snapshot covers (see the module).
    fn refuse_uncovered_gap(&self) -> anyhow::Result<()> {
        let first = {
            let mut iter = self.db.iterator_cf(cf(&self.db, CF_LOG), IteratorMode::Start);
            match iter.next() {
                None => return Ok(()),
                Some(item) => parse_u64_key(&item?.0)?,
            }
        };
        let purged = self
            .read_meta::<LogId>(KEY_LAST_PURGED)?
            .map(|log_id| log_id.index + 1);
        let snapshot =
            super::state_machine::stored_snapshot_last_log_id(&self.db)?.map(|log_id| log_id.index + 1);
        let covered = purged.max(snapshot).unwrap_or(0);
        if first <= covered {
            return Ok(());
        }
        Err(quorumlock_storage::Damaged {
            dir: self.db.path().display().to_string(),
            what: format!(
                "the raft log starts at entry {first}, and nothing covers the entries before it (no purge \
                 point, no snapshot beyond entry {}): a snapshot from the leader was not stored before the \
                 node stopped, though entries after it were",
                covered.saturating_sub(1)
            ),
        }
        .into())
    }

    fn read_meta<T: DeserializeOwned>(&self, key: &[u8]) -> Result<Option<T>, StorageIOError<NodeId>> {
        let bytes = self
            .db
            .get_cf(cf(&self.db, CF_META), key)
            .map_err(|e| StorageIOError::read(&e))?;
        bytes
            .map(|bytes| bincode::deserialize(&bytes).map_err(|e| StorageIOError::read(&e)))
            .transpose()
    }

    fn write_meta<T: Serialize>(
        &self,
        key: &[u8],
        value: &T,
        sync: bool,
    ) -> Result<(), StorageIOError<NodeId>> {
        let bytes = bincode::serialize(value).map_err(|e| StorageIOError::write(&e))?;
        let options = if sync {
            synced()
        } else {
            rocksdb::WriteOptions::default()
        };
        self.db
            .put_cf_opt(cf(&self.db, CF_META), key, bytes, &options)
            .map_err(|e| StorageIOError::write(&e))
    }

    fn last_entry(&self) -> Result<Option<Entry>, StorageIOError<NodeId>> {
        let mut iter = self.db.iterator_cf(cf(&self.db, CF_LOG), IteratorMode::End);
        match iter.next() {
            None => Ok(None),
            Some(item) => {
                let (_, value) = item.map_err(|e| StorageIOError::read_logs(&e))?;
                let entry = bincode::deserialize(&value).map_err(|e| StorageIOError::read_logs(&e))?;
                Ok(Some(entry))
            }
        }
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        let start = match range.start_bound() {
            Bound::Included(index) => *index,
            Bound::Excluded(index) => index + 1,
            Bound::Unbounded => 0,
        };
        let mut entries = Vec::new();
        let mode = IteratorMode::From(&u64_key(start), Direction::Forward);
        for item in self.db.iterator_cf(cf(&self.db, CF_LOG), mode) {
            let (key, value) = item.map_err(|e| StorageIOError::read_logs(&e))?;
            let index = parse_u64_key(&key).map_err(|e| StorageIOError::read_logs(AnyError::error(e)))?;
            if !range.contains(&index) {
                break;
            }
            let entry: Entry = bincode::deserialize(&value).map_err(|e| StorageIOError::read_logs(&e))?;
            assert_eq!(
                entry.log_id.index, index,
                "log entry stored under the wrong index"
            );
            entries.push(entry);
        }
        Ok(entries)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        let last_purged_log_id: Option<LogId> = self.read_meta(KEY_LAST_PURGED)?;
        // Entries a durable snapshot covers count as purged: openraft
        // purges them after installing a snapshot from the leader, and a
        // node stopped in between holds the snapshot and not the purge.
        let snapshot = super::state_machine::stored_snapshot_last_log_id(&self.db)?;
        let last_purged_log_id = last_purged_log_id.max(snapshot);
        let last_log_id = self
            .last_entry()?
            .map(|entry| entry.log_id)
            .or(last_purged_log_id);
        Ok(LogState {
            last_purged_log_id,
            last_log_id,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> Result<(), StorageError> {
        // A vote must survive a crash: forgetting it could let this node vote twice in a term.
        self.write_meta(KEY_VOTE, vote, true)?;
        Ok(())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<NodeId>>, StorageError> {
        Ok(self.read_meta(KEY_VOTE)?)
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError> {
        // Not synced: losing it only means re-learning the commit point from the leader.
        self.write_meta(KEY_COMMITTED, &committed, false)?;
        if let Some(log_id) = committed {
            self.commit_index.fetch_max(log_id.index, Ordering::Relaxed);
        }
        Ok(())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, StorageError> {
        let committed: Option<Option<LogId>> = self.read_meta(KEY_COMMITTED)?;
        let committed = committed.flatten();
        if let Some(log_id) = committed {
            self.commit_index.fetch_max(log_id.index, Ordering::Relaxed);
        }
        Ok(committed)
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut batch = WriteBatch::default();
        let log = cf(&self.db, CF_LOG);
        for entry in entries {
            let bytes = bincode::serialize(&entry).map_err(|e| StorageIOError::write_logs(&e))?;
            batch.put_cf(log, u64_key(entry.log_id.index), bytes);
        }
        // Written unsynced; the callback fires after the next WAL sync.
        match self.db.write(batch) {
            Ok(()) => {
                self.syncer.flushed_after_sync(callback);
                Ok(())
            }
            Err(error) => {
                callback.log_io_completed(Err(std::io::Error::other(error.to_string())));
                Err(StorageIOError::write_logs(&error).into())
            }
        }
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        let mut batch = WriteBatch::default();
        batch.delete_range_cf(cf(&self.db, CF_LOG), u64_key(log_id.index), u64_key(u64::MAX));
        self.db
            .write_opt(batch, &synced())
            .map_err(|e| StorageIOError::write_logs(&e))?;
        Ok(())
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        // Record the purge point before deleting, so a crash in between never
        // leaves a log whose first entry is unexplained.
        self.write_meta(KEY_LAST_PURGED, &log_id, true)?;
        let mut batch = WriteBatch::default();
        batch.delete_range_cf(cf(&self.db, CF_LOG), u64_key(0), u64_key(log_id.index + 1));
        self.db
            .write_opt(batch, &synced())
            .map_err(|e| StorageIOError::write_logs(&e))?;
        Ok(())
    }
}
