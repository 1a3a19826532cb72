//! RocksDB helpers shared by the engines: opening a database with its column
//! families, synced writes, and order-preserving keys.
//!
//! A storage failure is fatal to a replica: callers turn these errors into
//! the engine's fatal error and stop the node rather than serve from a state
//! they could not persist.

use std::path::Path;
use std::sync::Arc;

use rocksdb::{ColumnFamily, ColumnFamilyDescriptor, Options, WriteOptions, DB};

/// Opens (creating if needed) the database at `path` with the given column
/// families.
pub fn open(path: &Path, column_families: &[&str]) -> anyhow::Result<Arc<DB>> {
    std::fs::create_dir_all(path)?;
    let mut options = Options::default();
    options.create_if_missing(true);
    options.create_missing_column_families(true);
    let descriptors = column_families
        .iter()
        .map(|name| ColumnFamilyDescriptor::new(*name, Options::default()));
    let db = DB::open_cf_descriptors(&options, path, descriptors)
        .map_err(|error| anyhow::anyhow!("opening RocksDB at {}: {error}", path.display()))?;
    Ok(Arc::new(db))
}

/// Write options that sync the WAL before the write returns: used for every
/// write whose durability a reply depends on.
pub fn synced() -> WriteOptions {
    let mut options = WriteOptions::default();
    options.set_sync(true);
    options
}

/// A column family that [`open`] created; its absence is a programming error.
pub fn cf<'a>(db: &'a DB, name: &str) -> &'a ColumnFamily {
    db.cf_handle(name)
        .unwrap_or_else(|| panic!("column family {name} was created at open"))
}

/// A `u64` as a key that sorts numerically (big-endian).
pub fn u64_key(value: u64) -> [u8; 8] {
    value.to_be_bytes()
}

/// Reads back a key written by [`u64_key`].
pub fn parse_u64_key(key: &[u8]) -> anyhow::Result<u64> {
    let bytes: [u8; 8] = key
        .try_into()
        .map_err(|_| anyhow::anyhow!("index key has {} bytes, expected 8", key.len()))?;
    Ok(u64::from_be_bytes(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn u64_keys_sort_numerically() {
        let mut keys: Vec<[u8; 8]> = [3u64, 256, 1, u64::MAX, 255].into_iter().map(u64_key).collect();
        keys.sort();
        let values: Vec<u64> = keys.iter().map(|k| parse_u64_key(k).unwrap()).collect();
        assert_eq!(values, vec![1, 3, 255, 256, u64::MAX]);
    }

    #[test]
    fn parse_rejects_short_keys() {
        assert!(parse_u64_key(&[1, 2, 3]).is_err());
    }
}
