//! The Multi-Paxos engine's durable state in RocksDB: the acceptor's promise
//! and accepted records, the latest state-machine snapshot, and the boot
//! counter that keeps proposal ids unique across restarts.
//!
//! Every write is one `WriteBatch` with a synced WAL: the driver calls
//! [`PaxosStore::persist`] before sending the messages that depend on it.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use rocksdb::{WriteBatch, DB};

use super::effects::Persist;
use super::replica::DurableState;
use super::types::{Accepted, Ballot, Slot};
use crate::storage::{cf, parse_u64_key, synced, u64_key};

/// Column family of accepted records, keyed by big-endian slot.
pub const CF_ACCEPTED: &str = "paxos_accepted";
/// Column family of single values: promise, boot counter, snapshot.
pub const CF_META: &str = "paxos_meta";

const KEY_PROMISED: &[u8] = b"promised";
const KEY_BOOT: &[u8] = b"boot";
const KEY_SNAPSHOT: &[u8] = b"snapshot";

/// One replica's RocksDB.
#[derive(Clone)]
pub struct PaxosStore {
    db: Arc<DB>,
}

impl PaxosStore {
    /// Opens (creating if needed) the store under `dir`.
    pub fn open(dir: &Path) -> anyhow::Result<PaxosStore> {
        let db = crate::storage::open(&dir.join("paxos"), &[CF_ACCEPTED, CF_META])?;
        Ok(PaxosStore { db })
    }

    /// Bumps and returns the boot counter (durably, before any proposal of
    /// this boot can exist).
    pub fn next_boot(&self) -> anyhow::Result<u64> {
        let meta = cf(&self.db, CF_META);
        let boot = match self.db.get_cf(meta, KEY_BOOT)? {
            Some(bytes) => parse_u64_key(&bytes).context("reading the boot counter")? + 1,
            None => 1,
        };
        self.db.put_cf_opt(meta, KEY_BOOT, u64_key(boot), &synced())?;
        Ok(boot)
    }

    /// Everything a restarted replica recovers.
    pub fn load(&self) -> anyhow::Result<DurableState> {
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
        let mut accepted = BTreeMap::new();
        for item in self
            .db
            .iterator_cf(cf(&self.db, CF_ACCEPTED), rocksdb::IteratorMode::Start)
        {
            let (key, value) = item?;
            let slot = parse_u64_key(&key)?;
            let record: Accepted = bincode::deserialize(&value)
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
        })
    }

    /// Makes `records` durable in one synced batch.
    pub fn persist(&self, records: &[Persist]) -> anyhow::Result<()> {
        if records.is_empty() {
            return Ok(());
        }
        let mut batch = WriteBatch::default();
        let meta = cf(&self.db, CF_META);
        let accepted = cf(&self.db, CF_ACCEPTED);
        for record in records {
            match record {
                Persist::Promise(ballot) => batch.put_cf(meta, KEY_PROMISED, bincode::serialize(ballot)?),
                Persist::Accept {
                    slot,
                    accepted: record,
                } => batch.put_cf(accepted, u64_key(*slot), bincode::serialize(record)?),
            }
        }
        self.db.write_opt(batch, &synced())?;
        Ok(())
    }

    /// Stores a snapshot covering every slot up to `slot` and, in the same
    /// synced batch, deletes the accepted records it makes unnecessary.
    pub fn save_snapshot(&self, slot: Slot, data: &[u8]) -> anyhow::Result<()> {
        let mut batch = WriteBatch::default();
        batch.put_cf(
            cf(&self.db, CF_META),
            KEY_SNAPSHOT,
            bincode::serialize(&(slot, data))?,
        );
        batch.delete_range_cf(cf(&self.db, CF_ACCEPTED), u64_key(0), u64_key(slot + 1));
        self.db.write_opt(batch, &synced())?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::paxos::types::Value;

    fn record(round: u64) -> Accepted {
        Accepted {
            ballot: Ballot { round, node: 2 },
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
                    Persist::Promise(Ballot { round: 3, node: 1 }),
                    Persist::Accept {
                        slot: 1,
                        accepted: record(2),
                    },
                    Persist::Accept {
                        slot: 300,
                        accepted: record(3),
                    },
                ])
                .unwrap();
        }
        let state = PaxosStore::open(dir.path()).unwrap().load().unwrap();
        assert_eq!(
            state.promised,
            Ballot { round: 3, node: 2 },
            "an accepted ballot implies its promise"
        );
        assert_eq!(state.accepted.keys().copied().collect::<Vec<_>>(), vec![1, 300]);
        assert!(state.snapshot.is_none());
    }

    #[test]
    fn snapshot_truncates_records_it_covers() {
        let dir = tempfile::tempdir().unwrap();
        let store = PaxosStore::open(dir.path()).unwrap();
        let records: Vec<Persist> = (1..=10)
            .map(|slot| Persist::Accept {
                slot,
                accepted: record(1),
            })
            .collect();
        store.persist(&records).unwrap();
        store.save_snapshot(7, b"state").unwrap();
        drop(store);
        let state = PaxosStore::open(dir.path()).unwrap().load().unwrap();
        assert_eq!(state.accepted.keys().copied().collect::<Vec<_>>(), vec![8, 9, 10]);
        assert_eq!(state.snapshot, Some((7, Arc::new(b"state".to_vec()))));
    }

    #[test]
    fn boot_counter_rises_across_opens() {
        let dir = tempfile::tempdir().unwrap();
        let first = PaxosStore::open(dir.path()).unwrap().next_boot().unwrap();
        let second = PaxosStore::open(dir.path()).unwrap().next_boot().unwrap();
        assert_eq!((first, second), (1, 2));
    }
}
