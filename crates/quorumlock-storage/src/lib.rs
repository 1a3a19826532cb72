//! RocksDB helpers shared by the engines: opening a database with its column
//! families, synced writes, and order-preserving keys.
//!
//! A storage failure is fatal to a replica: callers turn these errors into
//! the engine's fatal error and stop the node rather than serve from a state
//! they could not persist.
//!
//! Every durable record of either engine lives in RocksDB, whose own
//! checksums cover it: CRC32C on each WAL record and MANIFEST entry, and a
//! checksum on every SST block, verified on every read (reads, compaction,
//! and the scan [`open`] makes). [`open`] never trades a damaged record for
//! a shorter history: a checksum mismatch anywhere stops the open with
//! [`Damaged`], naming the file; only an incomplete record at the very end
//! of the newest WAL, which a crash in the middle of a write leaves and
//! whose write therefore never returned, is dropped. A damaged length field
//! that makes a record look incomplete is told apart by the WAL's framing
//! (a record never crosses its 32 KiB block) and refused too.

use std::path::Path;
use std::sync::Arc;

use rocksdb::{
    ColumnFamily, ColumnFamilyDescriptor, DBRecoveryMode, ErrorKind, Options, ReadOptions, WriteOptions, DB,
};

/// A database whose files failed their checksums, are missing, or do not
/// fit together: the node must not serve from it.
#[derive(Debug, thiserror::Error)]
#[error("the database at {dir} is damaged: {what}")]
pub struct Damaged {
    /// The database's directory.
    pub dir: String,
    /// RocksDB's account of the damage, which names the file.
    pub what: String,
}

/// Opens (creating if needed) the database at `path` with the given column
/// families, and reads every record of it once so that a damaged file is
/// found now, before the node takes part in the protocol, rather than when
/// a read or a compaction first touches it.
///
/// A damaged database is refused with [`Damaged`] (within the returned
/// error): RocksDB's recovery is told to fail on a corrupted WAL record
/// rather than drop it and everything after it, to check as it opens that
/// every SST file the MANIFEST lists is there with its size, and to verify
/// the WALs the MANIFEST tracks as synced.
pub fn open(path: &Path, column_families: &[&str]) -> anyhow::Result<Arc<DB>> {
    std::fs::create_dir_all(path)?;
    let mut options = Options::default();
    options.create_if_missing(true);
    options.create_missing_column_families(true);
    options.set_paranoid_checks(true);
    options.set_wal_recovery_mode(DBRecoveryMode::TolerateCorruptedTailRecords);
    options.set_track_and_verify_wals_in_manifest(true);
    // A WAL file is deleted only once every column family with a write in
    // it has flushed. A rarely written family (the vote, the committed
    // index) would otherwise keep every WAL alive until RocksDB's default
    // cap of four times all memtables (hundreds of MiB): past this size,
    // RocksDB flushes the families that hold the oldest WAL instead.
    options.set_max_total_wal_size(WAL_BYTES_MAX);
    // Its own info log rolls over instead of growing with the node's age.
    options.set_max_log_file_size(INFO_LOG_BYTES_MAX);
    options.set_keep_log_file_num(INFO_LOGS_KEPT);
    let descriptors = column_families.iter().map(|name| {
        let mut family = Options::default();
        // The live state is small and every family is read back at open;
        // large memtables only hold deleted log entries in memory longer.
        family.set_write_buffer_size(MEMTABLE_BYTES);
        ColumnFamilyDescriptor::new(*name, family)
    });
    let damaged = |error: rocksdb::Error| -> anyhow::Error {
        match error.kind() {
            ErrorKind::Corruption | ErrorKind::NotFound => Damaged {
                dir: path.display().to_string(),
                what: with_logged_detail(path, error.into_string()),
            }
            .into(),
            _ => anyhow::anyhow!("opening RocksDB at {}: {error}", path.display()),
        }
    };
    check_wal_framing(path)?;
    let db = DB::open_cf_descriptors(&options, path, descriptors).map_err(damaged)?;
    for name in column_families {
        verify_column_family(&db, name).map_err(damaged)?;
    }
    Ok(Arc::new(db))
}

/// RocksDB's WAL block: a record never crosses one (`db/log_format.h`).
const WAL_BLOCK_BYTES: usize = 32 * 1024;
/// A WAL record's header: checksum (4), length (2), type (1).
const WAL_HEADER_BYTES: usize = 7;
/// The header of a record in a recycled WAL file, with its log number.
const WAL_RECYCLABLE_HEADER_BYTES: usize = 11;

/// Refuses a WAL (`*.log` in `dir`) whose record framing cannot come from
/// a crash. RocksDB's recovery takes a record that runs past the end of the
/// file for the last one, cut short by a crash during its write, and drops
/// it with everything after it; in a WAL shorter than one 32 KiB block, a
/// damaged length field in the middle looks just like that. A record
/// never crosses its block, so one that claims more than its block holds
/// is damage, wherever the file ends; one that fits its block but not the
/// file is a torn last record and is left to RocksDB.
fn check_wal_framing(dir: &Path) -> anyhow::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let file = entry?.path();
        if file.extension().is_none_or(|extension| extension != "log") {
            continue;
        }
        let bytes = std::fs::read(&file)?;
        if let Some(at) = misframed_record(&bytes) {
            let name = file.file_name().map(|name| name.to_string_lossy().into_owned());
            return Err(Damaged {
                dir: dir.display().to_string(),
                what: format!(
                    "{}: the WAL record at byte {at} claims more bytes than its 32 KiB block holds (damaged, not cut short by a crash)",
                    name.unwrap_or_default()
                ),
            }
            .into());
        }
    }
    Ok(())
}

/// The offset of the first record of WAL `bytes` whose length runs past
/// its block, if any; walking stops at zeroes (unwritten space) and at a
/// record the file's end cuts short.
fn misframed_record(bytes: &[u8]) -> Option<usize> {
    let mut at = 0;
    while at < bytes.len() {
        let block_left = WAL_BLOCK_BYTES - at % WAL_BLOCK_BYTES;
        if block_left < WAL_HEADER_BYTES {
            // The block's zero trailer.
            at += block_left;
            continue;
        }
        // A header the file's end cuts short: a crash during its write.
        let header = bytes.get(at..at + WAL_HEADER_BYTES)?;
        let length = usize::from(u16::from_le_bytes([header[4], header[5]]));
        let header_bytes = match header[6] {
            0 if length == 0 => return None,
            5..=8 | 11 => WAL_RECYCLABLE_HEADER_BYTES,
            _ => WAL_HEADER_BYTES,
        };
        if header_bytes + length > block_left {
            return Some(at);
        }
        at += header_bytes + length;
    }
    None
}

/// RocksDB's error for a damaged WAL does not name the file; its info log
/// (`LOG` in the database's directory) does: the last line there that
/// reports the damage is added to `what`.
fn with_logged_detail(dir: &Path, what: String) -> String {
    let log = std::fs::read(dir.join("LOG")).unwrap_or_default();
    let log = String::from_utf8_lossy(&log);
    let recent: Vec<&str> = log.lines().rev().take(LOG_LINES_SEARCHED_MAX).collect();
    // "<file>: dropping <n> bytes; Corruption: ..." names the file; the
    // final "DB::Open() failed" line does not.
    let detail = ["dropping", "Corruption"]
        .iter()
        .find_map(|needle| recent.iter().find(|line| line.contains(needle)))
        .map(|line| line.split_once(']').map_or(*line, |(_, rest)| rest).trim());
    match detail {
        Some(detail) if !what.contains(detail) => format!("{what} (RocksDB's LOG: {detail})"),
        _ => what,
    }
}

/// Total WAL size past which RocksDB flushes the column families holding
/// the oldest WAL file, so that it can be deleted.
pub const WAL_BYTES_MAX: u64 = 64 << 20;
/// One column family's memtable; a full one is flushed to an SST file.
pub const MEMTABLE_BYTES: usize = 16 << 20;
/// Size at which RocksDB starts a new info log (`LOG`).
pub const INFO_LOG_BYTES_MAX: usize = 16 << 20;
/// Info logs kept, the current one included.
pub const INFO_LOGS_KEPT: usize = 4;

/// How far back from its end RocksDB's info log is searched for what it
/// said of the damage.
const LOG_LINES_SEARCHED_MAX: usize = 200;

/// Reads every entry of column family `name` with checksums verified and
/// without filling the block cache.
fn verify_column_family(db: &DB, name: &str) -> Result<(), rocksdb::Error> {
    let mut read = ReadOptions::default();
    read.set_verify_checksums(true);
    read.fill_cache(false);
    let mut iterator = db.raw_iterator_cf_opt(cf(db, name), read);
    iterator.seek_to_first();
    while iterator.valid() {
        iterator.next();
    }
    iterator.status()
}

/// Whether `error`'s chain holds a [`Damaged`] database.
pub fn is_damaged(error: &anyhow::Error) -> bool {
    error.chain().any(|cause| cause.is::<Damaged>())
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

    const CFS: &[&str] = &["log", "meta"];
    const RECORDS: u64 = 400;

    /// Writes `RECORDS` synced records of 200 bytes to a new database in
    /// `dir`, optionally flushing them into an SST, and closes it.
    fn write_records(dir: &Path, flush: bool) {
        let db = open(dir, CFS).unwrap();
        for index in 0..RECORDS {
            db.put_cf_opt(cf(&db, "log"), u64_key(index), [index as u8; 200], &synced())
                .unwrap();
        }
        if flush {
            db.flush_cf(cf(&db, "log")).unwrap();
        }
    }

    fn files_ending(dir: &Path, suffix: &str) -> Vec<std::path::PathBuf> {
        let mut files: Vec<_> = std::fs::read_dir(dir)
            .unwrap()
            .map(|entry| entry.unwrap().path())
            .filter(|path| {
                path.to_string_lossy().ends_with(suffix) && std::fs::metadata(path).unwrap().len() > 0
            })
            .collect();
        files.sort();
        files
    }

    fn only_file_ending(dir: &Path, suffix: &str) -> std::path::PathBuf {
        let files = files_ending(dir, suffix);
        assert_eq!(
            files.len(),
            1,
            "one non-empty {suffix} file in {}: {files:?}",
            dir.display()
        );
        files[0].clone()
    }

    /// Inverts `len` bytes of `file` starting at `at`.
    fn flip(file: &Path, at: u64, len: usize) {
        let mut bytes = std::fs::read(file).unwrap();
        for byte in &mut bytes[at as usize..at as usize + len] {
            *byte = !*byte;
        }
        std::fs::write(file, bytes).unwrap();
    }

    fn damage_of(dir: &Path) -> String {
        let error = open(dir, CFS).expect_err("a damaged database is refused");
        assert!(is_damaged(&error), "refused as damaged: {error:#}");
        format!("{error:#}")
    }

    fn records_in(dir: &Path) -> u64 {
        let db = open(dir, CFS).unwrap();
        db.iterator_cf(cf(&db, "log"), rocksdb::IteratorMode::Start)
            .count() as u64
    }

    #[test]
    fn a_clean_database_reopens_with_every_record() {
        let dir = tempfile::tempdir().unwrap();
        write_records(dir.path(), false);
        assert_eq!(records_in(dir.path()), RECORDS);
    }

    #[test]
    fn a_corrupted_record_in_the_middle_of_the_wal_is_refused_not_dropped() {
        let dir = tempfile::tempdir().unwrap();
        write_records(dir.path(), false);
        let wal = only_file_ending(dir.path(), ".log");
        let middle = std::fs::metadata(&wal).unwrap().len() / 2;
        flip(&wal, middle, 64);
        let damage = damage_of(dir.path());
        let name = wal.file_name().unwrap().to_string_lossy().into_owned();
        assert!(damage.contains(&name), "names the WAL {name}: {damage}");
    }

    /// The byte offsets at which the records of `wal` start, walking
    /// RocksDB's framing (32 KiB blocks, 7-byte headers, zero trailers).
    fn record_starts(wal: &Path) -> Vec<u64> {
        let bytes = std::fs::read(wal).unwrap();
        let (mut at, mut starts) = (0usize, Vec::new());
        while at + 7 <= bytes.len() {
            let block_left = 32 * 1024 - at % (32 * 1024);
            if block_left < 7 {
                at += block_left;
                continue;
            }
            starts.push(at as u64);
            at += 7 + u16::from_le_bytes([bytes[at + 4], bytes[at + 5]]) as usize;
        }
        starts
    }

    #[test]
    fn a_damaged_record_header_inside_a_wal_shorter_than_a_block_is_refused_not_taken_for_a_torn_tail() {
        // In a WAL shorter than one 32 KiB block, an inverted length runs
        // past the end of the file, which RocksDB's recovery alone takes
        // for a record a crash cut short, dropping it and every record
        // after it while the node serves on.
        let dir = tempfile::tempdir().unwrap();
        let db = open(dir.path(), CFS).unwrap();
        for index in 0..60u64 {
            db.put_cf_opt(cf(&db, "log"), u64_key(index), [index as u8; 200], &synced())
                .unwrap();
        }
        drop(db);
        let wal = only_file_ending(dir.path(), ".log");
        let len = std::fs::metadata(&wal).unwrap().len();
        assert!(len < 32 * 1024, "the WAL fits one block: {len} bytes");
        let starts = record_starts(&wal);
        let middle = starts[starts.len() / 2];
        flip(&wal, middle, 64);
        let damage = damage_of(dir.path());
        let name = wal.file_name().unwrap().to_string_lossy().into_owned();
        assert!(damage.contains(&name), "names the WAL {name}: {damage}");
    }

    #[test]
    fn a_torn_last_record_of_the_wal_is_dropped_and_nothing_before_it() {
        let dir = tempfile::tempdir().unwrap();
        write_records(dir.path(), false);
        let wal = only_file_ending(dir.path(), ".log");
        let len = std::fs::metadata(&wal).unwrap().len();
        // Cut inside the last record, as a crash during its write would.
        std::fs::OpenOptions::new()
            .write(true)
            .open(&wal)
            .unwrap()
            .set_len(len - 50)
            .unwrap();
        assert_eq!(records_in(dir.path()), RECORDS - 1);
    }

    #[test]
    fn a_corrupted_sst_block_is_refused_at_open() {
        let dir = tempfile::tempdir().unwrap();
        write_records(dir.path(), true);
        let sst = only_file_ending(dir.path(), ".sst");
        flip(&sst, 100, 64);
        let damage = damage_of(dir.path());
        let name = sst.file_name().unwrap().to_string_lossy().into_owned();
        assert!(damage.contains(&name), "names the SST file {name}: {damage}");
    }

    #[test]
    fn a_corrupted_manifest_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        write_records(dir.path(), true);
        let manifest = files_ending(dir.path(), "")
            .into_iter()
            .find(|path| {
                path.file_name()
                    .unwrap()
                    .to_string_lossy()
                    .starts_with("MANIFEST-")
            })
            .unwrap();
        let middle = std::fs::metadata(&manifest).unwrap().len() / 2;
        flip(&manifest, middle, 16);
        damage_of(dir.path());
    }

    #[test]
    fn a_missing_sst_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        write_records(dir.path(), true);
        std::fs::remove_file(only_file_ending(dir.path(), ".sst")).unwrap();
        damage_of(dir.path());
    }
}
