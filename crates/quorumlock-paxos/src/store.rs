//! The Multi-Paxos engine's durable state in RocksDB: the acceptor's promise
//! and accepted records, the latest state-machine snapshot, and the boot
//! counter that keeps proposal ids unique across restarts.
//!
//! [`PaxosStore`] reads and writes; [`Persister`] is the driver's
//! [`Storage`]: a thread of its own writes each Ready's records as one
//! `WriteBatch` and syncs the WAL, taking whatever queued meanwhile into the
//! same sync, so the driver never blocks on the disk and many Readys share
//! one fsync under load.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::Arc;
use std::thread::JoinHandle;

use anyhow::Context;
use parking_lot::Mutex;
use rocksdb::{WriteBatch, DB};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::sync::Notify;

use crate::core::ready::{Persist, ReadyNumber};
use crate::core::types::{Accepted, Ballot, Configuration, Slot};
use crate::core::DurableState;
use crate::driver::{Storage, StorageFailure};
use quorumlock_core::consensus::EngineTelemetry;
use quorumlock_storage::{cf, parse_u64_key, synced, u64_key};

/// Column family of accepted records, keyed by big-endian slot.
pub const CF_ACCEPTED: &str = "paxos_accepted";
/// Column family of single values: promise, boot counter, snapshot.
pub const CF_META: &str = "paxos_meta";

const KEY_PROMISED: &[u8] = b"promised";
const KEY_BOOT: &[u8] = b"boot";
const KEY_SNAPSHOT: &[u8] = b"snapshot";
const KEY_SNAPSHOT_CONFIG: &[u8] = b"snapshot_config";
const KEY_FORMAT: &[u8] = b"format";

/// The layout of the records: 2 since ballots carry their configuration's
/// epoch. A store without the key holds 1 (ballots without an epoch) or
/// nothing, and is brought to 2 when opened.
pub const STORE_FORMAT: u64 = 2;

/// Readys handed to the persister and not yet written; beyond this the
/// driver waits for the disk (backpressure rather than unbounded memory).
pub const PERSIST_QUEUE_MAX: usize = 4_096;
/// Most Readys written under one sync.
pub const READYS_PER_SYNC_MAX: usize = 1_024;

/// One replica's RocksDB.
#[derive(Clone)]
pub struct PaxosStore {
    db: Arc<DB>,
    telemetry: Arc<EngineTelemetry>,
}

impl PaxosStore {
    /// Opens (creating if needed) the store under `dir`.
    pub fn open(dir: &Path) -> anyhow::Result<PaxosStore> {
        let db = quorumlock_storage::open(&dir.join("paxos"), &[CF_ACCEPTED, CF_META])?;
        let store = PaxosStore {
            db,
            telemetry: Arc::default(),
        };
        store.upgrade_format()?;
        Ok(store)
    }

    /// Records the time of every synced write in `telemetry`.
    pub fn with_telemetry(mut self, telemetry: Arc<EngineTelemetry>) -> PaxosStore {
        self.telemetry = telemetry;
        self
    }

    /// Brings the records to [`STORE_FORMAT`]. Format 1 encoded a ballot as
    /// `(round, node)`; format 2 puts the epoch first, and every record of
    /// format 1 belongs to epoch 0, so each promise and accepted record
    /// gains eight zero bytes in front — one synced write with the new
    /// format key, so a crash leaves either format whole.
    fn upgrade_format(&self) -> anyhow::Result<()> {
        let meta = cf(&self.db, CF_META);
        if let Some(bytes) = self.db.get_cf(meta, KEY_FORMAT)? {
            let format = parse_u64_key(&bytes).context("reading the paxos store format")?;
            anyhow::ensure!(
                format == STORE_FORMAT,
                "the paxos store has format {format}; this version reads format {STORE_FORMAT}"
            );
            return Ok(());
        }
        let mut batch = WriteBatch::default();
        let epoch_zero = [0u8; 8];
        if let Some(promised) = self.db.get_cf(meta, KEY_PROMISED)? {
            batch.put_cf(meta, KEY_PROMISED, [&epoch_zero[..], &promised].concat());
        }
        let accepted = cf(&self.db, CF_ACCEPTED);
        let mut upgraded = 0u64;
        for item in self.db.iterator_cf(accepted, rocksdb::IteratorMode::Start) {
            let (key, value) = item?;
            batch.put_cf(accepted, key, [&epoch_zero[..], &value].concat());
            upgraded += 1;
        }
        batch.put_cf(meta, KEY_FORMAT, u64_key(STORE_FORMAT));
        self.db.write_opt(batch, &synced())?;
        if upgraded > 0 {
            tracing::info!(
                records = upgraded,
                "paxos store upgraded to format {STORE_FORMAT}"
            );
        }
        Ok(())
    }

    /// The database, for closing it in order when the node stops.
    pub fn db(&self) -> &Arc<DB> {
        &self.db
    }

    /// Bumps and returns the boot counter (durably, before any proposal of
    /// this boot can exist); a store without one starts at `first`.
    pub fn next_boot(&self, first: u64) -> anyhow::Result<u64> {
        let meta = cf(&self.db, CF_META);
        let boot = match self.db.get_cf(meta, KEY_BOOT)? {
            Some(bytes) => parse_u64_key(&bytes).context("reading the boot counter")? + 1,
            None => first,
        };
        self.db.put_cf_opt(meta, KEY_BOOT, u64_key(boot), &synced())?;
        Ok(boot)
    }

    /// Everything a restarted replica recovers.
    pub fn load<C: DeserializeOwned>(&self) -> anyhow::Result<DurableState<C>> {
        let meta = cf(&self.db, CF_META);
        let promised: Ballot = match self.db.get_cf(meta, KEY_PROMISED)? {
            Some(bytes) => bincode::deserialize(&bytes).context("decoding the promised ballot")?,
            None => Ballot::ZERO,
        };
        let snapshot: Option<(Slot, Arc<Vec<u8>>)> = match self.db.get_cf(meta, KEY_SNAPSHOT)? {
            Some(bytes) => {
                let (slot, data): (Slot, Vec<u8>) =
                    bincode::deserialize(&bytes).context("decoding the stored snapshot")?;
                Some((slot, Arc::new(data)))
            }
            None => None,
        };
        let snapshot_config: Option<Arc<Configuration>> = match self.db.get_cf(meta, KEY_SNAPSHOT_CONFIG)? {
            Some(bytes) => Some(Arc::new(
                bincode::deserialize(&bytes).context("decoding the stored snapshot's configuration")?,
            )),
            None => None,
        };
        let mut accepted = BTreeMap::new();
        for item in self
            .db
            .iterator_cf(cf(&self.db, CF_ACCEPTED), rocksdb::IteratorMode::Start)
        {
            let (key, value) = item?;
            let slot = Slot::new(parse_u64_key(&key)?);
            let record: Accepted<C> = bincode::deserialize(&value)
                .with_context(|| format!("decoding the accepted record of slot {slot}"))?;
            accepted.insert(slot, record);
        }
        // Accepting at a ballot implies promising it; the promise key is
        // written with it, but recovering the maximum costs nothing.
        let promised = accepted
            .values()
            .map(|record| record.ballot)
            .fold(promised, Ballot::max);
        Ok(DurableState {
            promised,
            accepted,
            snapshot,
            snapshot_config,
        })
    }

    /// Seeds an empty store with `data` as its snapshot at `slot` (the
    /// state of a restored backup): the replica starts with that state
    /// applied and the log continuing after `slot`. Refuses a store that
    /// holds a promise, a record, a snapshot or a boot.
    pub fn seed_restored(&self, slot: Slot, data: Vec<u8>) -> anyhow::Result<()> {
        for family in [CF_META, CF_ACCEPTED] {
            let mut entries = self
                .db
                .iterator_cf(cf(&self.db, family), rocksdb::IteratorMode::Start)
                .filter(|item| !matches!(item, Ok((key, _)) if &key[..] == KEY_FORMAT));
            anyhow::ensure!(
                entries.next().is_none(),
                "the paxos store already holds data in {family}; a restore only seeds an empty one"
            );
        }
        anyhow::ensure!(slot.get() > 0, "a restored snapshot needs a slot above 0");
        // No configuration: the restored cluster's first one is its
        // `--peers`.
        let meta = cf(&self.db, CF_META);
        self.db.put_cf_opt(
            meta,
            KEY_SNAPSHOT,
            bincode::serialize(&(slot, data.as_slice()))?,
            &synced(),
        )?;
        Ok(())
    }

    /// Adds `records` to `batch`, in order.
    fn add_to_batch<C: Serialize>(
        &self,
        batch: &mut WriteBatch,
        records: &[Persist<C>],
    ) -> anyhow::Result<()> {
        let meta = cf(&self.db, CF_META);
        let accepted = cf(&self.db, CF_ACCEPTED);
        for record in records {
            match record {
                Persist::Promise(ballot) => batch.put_cf(meta, KEY_PROMISED, bincode::serialize(ballot)?),
                Persist::Accept {
                    slot,
                    accepted: record,
                } => batch.put_cf(accepted, u64_key(slot.get()), bincode::serialize(record)?),
                Persist::Snapshot { slot, data, config } => {
                    batch.put_cf(meta, KEY_SNAPSHOT, bincode::serialize(&(slot, data.as_slice()))?);
                    batch.put_cf(meta, KEY_SNAPSHOT_CONFIG, bincode::serialize(config.as_ref())?);
                    // The records the snapshot covers go in the same write.
                    batch.delete_range_cf(accepted, u64_key(0), u64_key(slot.next().get()));
                }
            }
        }
        Ok(())
    }

    /// Makes `records` durable in one synced batch.
    pub fn persist<C: Serialize>(&self, records: &[Persist<C>]) -> anyhow::Result<()> {
        if records.is_empty() {
            return Ok(());
        }
        let mut batch = WriteBatch::default();
        self.add_to_batch(&mut batch, records)?;
        self.telemetry
            .timed_sync(|| self.db.write_opt(batch, &synced()))?;
        Ok(())
    }
}

/// What the persister thread reports back.
#[derive(Default)]
struct Progress {
    /// The highest Ready whose records are durable.
    durable: AtomicU64,
    /// The first write that failed; nothing is written after it.
    failure: Mutex<Option<String>>,
}

/// The driver's storage on a live node: Readys are written on a thread of
/// their own, and `wake` is notified whenever more of them are durable.
pub struct Persister<C> {
    queue: Option<SyncSender<(ReadyNumber, Vec<Persist<C>>)>>,
    progress: Arc<Progress>,
    thread: Option<JoinHandle<()>>,
}

impl<C: Serialize + Send + Sync + 'static> Persister<C> {
    /// Starts the persister thread over `store`.
    pub fn start(store: PaxosStore, wake: Arc<Notify>) -> std::io::Result<Persister<C>> {
        let (queue, jobs) = sync_channel(PERSIST_QUEUE_MAX);
        let progress = Arc::new(Progress::default());
        let thread = std::thread::Builder::new()
            .name("paxos-persist".to_string())
            .spawn({
                let progress = progress.clone();
                move || persist_loop(&store, &jobs, &progress, &wake)
            })?;
        Ok(Persister {
            queue: Some(queue),
            progress,
            thread: Some(thread),
        })
    }

    /// Stops the thread once it has written what it was given, and waits
    /// for it: after this nothing of this persister touches the database.
    pub fn stop(&mut self) {
        self.queue = None;
        if let Some(thread) = self.thread.take() {
            if thread.join().is_err() {
                tracing::error!("the paxos persister thread panicked");
            }
        }
    }
}

impl<C> Drop for Persister<C> {
    fn drop(&mut self) {
        self.queue = None;
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl<C: Serialize + Send + Sync + 'static> Storage<C> for Persister<C> {
    fn persist(&mut self, number: ReadyNumber, records: Vec<Persist<C>>) -> Result<(), StorageFailure> {
        if let Some(failure) = self.progress.failure.lock().clone() {
            return Err(StorageFailure(failure));
        }
        let queue = self
            .queue
            .as_ref()
            .ok_or_else(|| StorageFailure("the persister was stopped".to_string()))?;
        // A full queue blocks the driver until the disk catches up; the
        // thread never needs the driver, so this cannot deadlock.
        queue
            .send((number, records))
            .map_err(|_| StorageFailure("the persister thread stopped".to_string()))
    }

    fn durable_through(&mut self) -> Result<ReadyNumber, StorageFailure> {
        if let Some(failure) = self.progress.failure.lock().clone() {
            return Err(StorageFailure(failure));
        }
        Ok(self.progress.durable.load(Ordering::Acquire))
    }
}

fn persist_loop<C: Serialize>(
    store: &PaxosStore,
    jobs: &Receiver<(ReadyNumber, Vec<Persist<C>>)>,
    progress: &Progress,
    wake: &Notify,
) {
    while let Ok(first) = jobs.recv() {
        let mut batch = WriteBatch::default();
        let mut last = first.0;
        let mut result = store.add_to_batch(&mut batch, &first.1);
        for (number, records) in jobs.try_iter().take(READYS_PER_SYNC_MAX - 1) {
            if result.is_err() {
                break;
            }
            last = number;
            result = store.add_to_batch(&mut batch, &records);
        }
        let result = result.and_then(|()| {
            store
                .telemetry
                .timed_sync(|| store.db.write_opt(batch, &synced()))
                .map_err(|error| anyhow::anyhow!("writing acceptor records to RocksDB: {error}"))
        });
        match result {
            Ok(()) => progress.durable.store(last, Ordering::Release),
            Err(error) => {
                // Reported once, by the node, through the engine's failure.
                *progress.failure.lock() = Some(format!("{error:#}"));
                wake.notify_one();
                return;
            }
        }
        wake.notify_one();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::types::Value;
    use quorumlock_core::consensus::NodeId;

    fn record(round: u64) -> Accepted<u64> {
        Accepted {
            ballot: Ballot {
                epoch: 0,
                round,
                node: NodeId::new(2),
            },
            value: Value::Noop,
        }
    }

    #[test]
    fn promise_and_records_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = PaxosStore::open(dir.path()).unwrap();
            store
                .persist(&[
                    Persist::Promise(Ballot {
                        epoch: 0,
                        round: 3,
                        node: NodeId::new(1),
                    }),
                    Persist::Accept {
                        slot: Slot::new(1),
                        accepted: record(2),
                    },
                    Persist::Accept {
                        slot: Slot::new(300),
                        accepted: record(3),
                    },
                ])
                .unwrap();
        }
        let state: DurableState<u64> = PaxosStore::open(dir.path()).unwrap().load().unwrap();
        assert_eq!(
            state.promised,
            Ballot {
                epoch: 0,
                round: 3,
                node: NodeId::new(2)
            },
            "an accepted ballot implies its promise"
        );
        assert_eq!(
            state.accepted.keys().copied().collect::<Vec<_>>(),
            vec![Slot::new(1), Slot::new(300)]
        );
        assert!(state.snapshot.is_none());
    }

    #[test]
    fn snapshot_truncates_records_it_covers_in_the_same_write() {
        let dir = tempfile::tempdir().unwrap();
        let store = PaxosStore::open(dir.path()).unwrap();
        let mut records: Vec<Persist<u64>> = (1..=10)
            .map(|slot| Persist::Accept {
                slot: Slot::new(slot),
                accepted: record(1),
            })
            .collect();
        records.push(Persist::Snapshot {
            slot: Slot::new(7),
            data: Arc::new(b"state".to_vec()),
            config: Arc::new(Configuration {
                epoch: 2,
                version: 3,
                ..Configuration::default()
            }),
        });
        store.persist(&records).unwrap();
        drop(store);
        let state: DurableState<u64> = PaxosStore::open(dir.path()).unwrap().load().unwrap();
        assert_eq!(
            state.accepted.keys().copied().collect::<Vec<_>>(),
            [8, 9, 10].map(Slot::new)
        );
        assert_eq!(state.snapshot, Some((Slot::new(7), Arc::new(b"state".to_vec()))));
        assert_eq!(
            state.snapshot_config.map(|config| (config.epoch, config.version)),
            Some((2, 3)),
            "the snapshot's configuration is stored with it"
        );
    }

    #[test]
    fn a_store_of_ballots_without_epochs_reads_back_at_epoch_zero() {
        let dir = tempfile::tempdir().unwrap();
        {
            // Format 1, as an older version wrote it: `(round, node)`
            // ballots and no format key.
            let db = quorumlock_storage::open(&dir.path().join("paxos"), &[CF_ACCEPTED, CF_META]).unwrap();
            let old_ballot = bincode::serialize(&(4u64, NodeId::new(3))).unwrap();
            db.put_cf(cf(&db, CF_META), KEY_PROMISED, &old_ballot).unwrap();
            let old_record = [
                old_ballot.clone(),
                bincode::serialize(&Value::<u64>::Noop).unwrap(),
            ]
            .concat();
            db.put_cf(cf(&db, CF_ACCEPTED), u64_key(9), &old_record).unwrap();
        }
        let expected = Ballot {
            epoch: 0,
            round: 4,
            node: NodeId::new(3),
        };
        for _ in 0..2 {
            // The second open finds format 2 and changes nothing.
            let state: DurableState<u64> = PaxosStore::open(dir.path()).unwrap().load().unwrap();
            assert_eq!(state.promised, expected);
            assert_eq!(state.accepted[&Slot::new(9)].ballot, expected);
            assert_eq!(state.accepted[&Slot::new(9)].value, Value::Noop);
        }
    }

    #[test]
    fn boot_counter_rises_across_opens() {
        let dir = tempfile::tempdir().unwrap();
        let first = PaxosStore::open(dir.path()).unwrap().next_boot(1).unwrap();
        let second = PaxosStore::open(dir.path()).unwrap().next_boot(1).unwrap();
        assert_eq!((first, second), (1, 2));
    }

    #[test]
    fn the_persister_reports_readys_durable_in_order_and_stops_cleanly() {
        let dir = tempfile::tempdir().unwrap();
        let store = PaxosStore::open(dir.path()).unwrap();
        let wake = Arc::new(Notify::new());
        let mut persister: Persister<u64> = Persister::start(store.clone(), wake).unwrap();
        for number in 1..=50 {
            persister
                .persist(
                    number,
                    vec![Persist::Accept {
                        slot: Slot::new(number),
                        accepted: record(1),
                    }],
                )
                .unwrap();
        }
        persister.stop();
        assert_eq!(persister.durable_through(), Ok(50));
        let state: DurableState<u64> = store.load().unwrap();
        assert_eq!(state.accepted.len(), 50);
    }
}
