//! What every compared system offers the workloads: a running deployment
//! ([`LockSystem`]), clients to it ([`LockClient`]) and sessions or leases
//! that hold locks ([`LockSession`]). The workloads only see these traits, so
//! every system runs the same generator and the same measurement code.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use quorumlock_client::LockGuard;
use quorumlock_testkit::cluster::ProcessUsage;

use super::idle::IdleGroup;

/// One held lock, with what the system needs to release or fence with it.
pub struct Held {
    /// The fencing token (quorumlock), the lock key's revision (etcd), or 0
    /// where the system has none (Redis).
    pub token: u64,
    /// System-specific handle.
    pub inner: HeldInner,
}

/// The system-specific part of a [`Held`] lock.
pub enum HeldInner {
    /// quorumlock's guard.
    Quorumlock(LockGuard),
    /// The key etcd's Lock API created for the holder.
    Etcd {
        /// The key; it exists exactly while the lock is held.
        key: Vec<u8>,
    },
    /// The Redis key and the random value that marks the owner.
    Redis {
        /// The lock's key.
        key: String,
        /// The owner's value, compared before deleting.
        owner: String,
    },
}

/// A running deployment of one system.
#[async_trait]
pub trait LockSystem: Send + Sync {
    /// The name in tables and charts.
    fn name(&self) -> String;
    /// A new client (its own connections).
    async fn connect(&self) -> anyhow::Result<Arc<dyn LockClient>>;
    /// Number of server processes.
    fn nodes(&self) -> usize;
    /// Index of the current leader (0 for a single node); waits for one.
    async fn leader(&mut self) -> anyhow::Result<usize>;
    /// The leader's term (quorumlock: term or ballot round; etcd: raft
    /// term); `None` where there is no election (Redis).
    async fn term(&mut self) -> anyhow::Result<Option<u64>>;
    /// CPU ticks and RSS of node `index`, if it runs.
    fn usage(&self, index: usize) -> Option<ProcessUsage>;
    /// Node `index`'s data directory.
    fn data_dir(&self, index: usize) -> PathBuf;
    /// Whether the system replicates, so failover makes sense.
    fn replicated(&self) -> bool;
    /// SIGKILLs node `index`.
    fn kill(&mut self, index: usize) -> anyhow::Result<()>;
    /// Starts node `index` again on its data directory.
    fn restart(&mut self, index: usize) -> anyhow::Result<()>;
    /// Waits until node `index` answers and has applied everything the
    /// leader had committed when this was called.
    async fn wait_caught_up(&mut self, index: usize, limit: Duration) -> anyhow::Result<()>;
    /// SIGKILLs node `index`, deletes its data directory and starts it
    /// again to repair from its peers, which send it their state; `false`
    /// where the system has no such repair.
    fn repair_from_empty(&mut self, index: usize) -> anyhow::Result<bool> {
        let _ = index;
        Ok(false)
    }
    /// The process id of node `index`, if it runs.
    fn pid(&self, index: usize) -> Option<u32> {
        let _ = index;
        None
    }
    /// Opens `count` sessions of `ttl` that only stay alive, on a new
    /// connection to node `leader`, renewed over one keep-alive stream
    /// (workload 5, [`IdleGroup`]).
    async fn idle_sessions(&self, leader: usize, count: usize, ttl: Duration) -> anyhow::Result<IdleGroup> {
        let _ = (leader, count, ttl);
        anyhow::bail!("{} has no sessions to keep alive", self.name())
    }
}

/// A client of one system.
#[async_trait]
pub trait LockClient: Send + Sync {
    /// Opens a session (a lease) of `ttl`, renewed in the background every
    /// `ttl / 3` until closed or dropped.
    async fn session(&self, ttl: Duration) -> anyhow::Result<Box<dyn LockSession>>;
}

/// A session or lease that holds locks.
#[async_trait]
pub trait LockSession: Send + Sync {
    /// Acquires `name`, waiting as long as it takes.
    async fn acquire(&self, name: &str) -> anyhow::Result<Held>;
    /// Releases a lock taken by this session.
    async fn release(&self, held: Held) -> anyhow::Result<()>;
    /// Writes `value` under `key`, fenced by `held` where the system can.
    async fn fenced_put(&self, held: &Held, key: &str, value: &[u8]) -> anyhow::Result<()>;
    /// Whether the session's lease is known lost.
    fn is_lost(&self) -> bool;
    /// Closes the session, releasing whatever it still holds.
    async fn close(&self) -> anyhow::Result<()>;
}
