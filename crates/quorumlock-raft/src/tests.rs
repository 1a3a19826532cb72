//! openraft's own storage conformance suite, run against our RocksDB log
//! store and state machine on a real database in a temporary directory.

use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use openraft::testing::{StoreBuilder, Suite};

use super::log_store::{LogStore, CF_LOG, CF_META};
use super::retirement::Retirement;
use super::state_machine::{StateMachineStore, CF_SNAPSHOT};
use super::types::{StorageError, TypeConfig};
use super::wal_sync::WalSync;
use quorumlock_core::consensus::AppliedState;

struct RocksBuilder;

/// What one case of the suite leaves behind once its stores are dropped: the
/// WAL sync thread, joined before the directory goes, so that no RocksDB
/// handle outlives the case. A detached syncer still closing its database
/// when the test binary exits races RocksDB's static destructors and aborts
/// the process ("pthread lock: Invalid argument").
struct CaseGuard {
    sync_thread: Option<std::thread::JoinHandle<()>>,
    _dir: tempfile::TempDir,
}

impl Drop for CaseGuard {
    fn drop(&mut self) {
        // openraft's suite drops the stores (and with them every handle to
        // the syncer's queue) before the guard, so the thread is ending.
        if let Some(thread) = self.sync_thread.take() {
            let joined = thread.join();
            if !std::thread::panicking() {
                assert!(joined.is_ok(), "the raft WAL sync thread panicked");
            }
        }
    }
}

impl StoreBuilder<TypeConfig, LogStore, StateMachineStore, CaseGuard> for RocksBuilder {
    async fn build(&self) -> Result<(CaseGuard, LogStore, StateMachineStore), StorageError> {
        let dir = tempfile::tempdir().expect("creating a temporary directory");
        let db =
            quorumlock_storage::open(dir.path(), &[CF_LOG, CF_META, CF_SNAPSHOT]).expect("opening RocksDB");
        let (log, sync_thread) = LogStore::new(
            db.clone(),
            Arc::new(AtomicU64::new(0)),
            WalSync::Background,
            Arc::default(),
        )
        .expect("starting the WAL syncer");
        let state = Arc::new(AppliedState::default());
        let state_machine = StateMachineStore::open(
            db,
            state,
            Arc::new(Retirement::new(quorumlock_core::consensus::NodeId::new(1))),
            Arc::new(AtomicU64::new(0)),
            Arc::default(),
        )?;
        Ok((
            CaseGuard {
                sync_thread,
                _dir: dir,
            },
            log,
            state_machine,
        ))
    }
}

#[test]
fn rocksdb_log_store_and_state_machine_pass_openraft_storage_suite() {
    Suite::test_all(RocksBuilder).expect("openraft storage suite");
}
