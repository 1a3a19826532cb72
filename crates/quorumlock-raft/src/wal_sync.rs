//! WAL syncs for the Raft log, on a thread of their own.
//!
//! openraft's `append` hands over a [`LogFlushed`] callback so the store can
//! report durability later. The batch is written unsynced, the callback is
//! queued, and one thread syncs the WAL and fires it; the async runtime never
//! blocks on the disk. A callback fires only after an fsync that began after
//! its batch was written, so "flushed" still means on disk, and appends that
//! queue during one fsync share the next.
//!
//! openraft 0.9's RaftCore awaits each append's callback before its next
//! step, so on one node appends do not actually overlap: a leader syncs its
//! entry before it replicates it, and syncs once per entry. Batching
//! commands into entries (`super::batcher`) is what spreads the sync over
//! many commands. Syncing inline in `append` instead measured slower at 64
//! workers (it blocks a runtime worker for the whole fsync).

use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::Arc;
use std::thread::JoinHandle;

use openraft::storage::LogFlushed;
use quorumlock_core::consensus::EngineTelemetry;
use rocksdb::DB;

use super::types::TypeConfig;

/// Appends waiting for a sync; beyond this, `append` waits for room
/// (backpressure on RaftCore rather than unbounded memory).
pub const APPENDS_AWAITING_SYNC_MAX: usize = 16_384;

/// Most callbacks answered by one fsync; bounds one round's latency.
const CALLBACKS_PER_SYNC_MAX: usize = 4_096;

/// Where appends are synced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WalSync {
    /// On the WAL sync thread (what nodes run).
    Background,
    /// In `append` itself, one fsync per append. The simulation runs this
    /// way: under tokio's paused time, waiting on another thread idles the
    /// runtime, and an idle runtime jumps the clock to the next timer, so
    /// every fsync would look like a long stall.
    Inline,
}

/// Reports appends flushed; the syncing thread stops when every clone is
/// dropped.
#[derive(Clone)]
pub enum WalSyncer {
    /// Queue for the WAL sync thread.
    Background(SyncSender<LogFlushed<TypeConfig>>),
    /// Sync in the caller.
    Inline(Arc<DB>, Arc<EngineTelemetry>),
}

impl WalSyncer {
    /// Starts syncing for `db` the way `mode` says; returns the syncer and
    /// the syncing thread, which ends once every clone of the syncer is
    /// dropped (join it before closing the database).
    /// Every fsync is recorded in `telemetry`.
    pub fn start(
        db: Arc<DB>,
        mode: WalSync,
        telemetry: Arc<EngineTelemetry>,
    ) -> std::io::Result<(WalSyncer, Option<JoinHandle<()>>)> {
        if mode == WalSync::Inline {
            return Ok((WalSyncer::Inline(db, telemetry), None));
        }
        let (queue, pending) = sync_channel(APPENDS_AWAITING_SYNC_MAX);
        let thread = std::thread::Builder::new()
            .name("raft-wal-sync".to_string())
            .spawn(move || sync_loop(&db, &pending, &telemetry))?;
        Ok((WalSyncer::Background(queue), Some(thread)))
    }

    /// Reports `callback` flushed once the WAL holding everything written so
    /// far is synced. Blocks while [`APPENDS_AWAITING_SYNC_MAX`] are queued.
    pub fn flushed_after_sync(&self, callback: LogFlushed<TypeConfig>) {
        let queue = match self {
            WalSyncer::Background(queue) => queue,
            WalSyncer::Inline(db, telemetry) => {
                callback.log_io_completed(
                    telemetry
                        .timed_sync(|| db.flush_wal(true))
                        .map_err(|error| std::io::Error::other(error.to_string())),
                );
                return;
            }
        };
        // A full queue blocks this thread until the syncer takes a round;
        // the syncer never needs the async runtime, so this cannot deadlock.
        if let Err(error) = queue.send(callback) {
            error
                .0
                .log_io_completed(Err(std::io::Error::other("the WAL sync thread stopped")));
        }
    }
}

fn sync_loop(db: &DB, pending: &Receiver<LogFlushed<TypeConfig>>, telemetry: &EngineTelemetry) {
    while let Ok(first) = pending.recv() {
        let mut callbacks = vec![first];
        callbacks.extend(pending.try_iter().take(CALLBACKS_PER_SYNC_MAX - 1));
        let result = telemetry.timed_sync(|| db.flush_wal(true));
        if let Err(error) = &result {
            tracing::error!(%error, "syncing the Raft log failed");
        }
        for callback in callbacks {
            callback.log_io_completed(
                result
                    .as_ref()
                    .map(|_| ())
                    .map_err(|error| std::io::Error::other(error.to_string())),
            );
        }
    }
}
