//! openraft's own storage conformance suite, run against our RocksDB log
//! store and state machine on a real database in a temporary directory.

use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use openraft::testing::{StoreBuilder, Suite};

use super::log_store::{LogStore, CF_LOG, CF_META};
use super::state_machine::{StateMachineStore, CF_SNAPSHOT};
use super::types::{StorageError, TypeConfig};
use super::wal_sync::WalSync;
use quorumlock_core::consensus::AppliedState;

struct RocksBuilder;

impl StoreBuilder<TypeConfig, LogStore, StateMachineStore, tempfile::TempDir> for RocksBuilder {
    async fn build(&self) -> Result<(tempfile::TempDir, LogStore, StateMachineStore), StorageError> {
        let dir = tempfile::tempdir().expect("creating a temporary directory");
        let db =
            quorumlock_storage::open(dir.path(), &[CF_LOG, CF_META, CF_SNAPSHOT]).expect("opening RocksDB");
        let (log, _sync_thread) = LogStore::new(db.clone(), Arc::new(AtomicU64::new(0)), WalSync::Background)
            .expect("starting the WAL syncer");
        let state = Arc::new(AppliedState::default());
        let state_machine = StateMachineStore::open(db, state, Arc::new(AtomicU64::new(0)))?;
        Ok((dir, log, state_machine))
    }
}

#[test]
fn rocksdb_log_store_and_state_machine_pass_openraft_storage_suite() {
    Suite::test_all(RocksBuilder).expect("openraft storage suite");
}
