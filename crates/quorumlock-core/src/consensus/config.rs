//! Settings every engine takes.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use super::incarnation::Incarnations;
use super::NodeId;

/// Settings of one node's consensus engine, whichever it is.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// This node's id; must be a key of `members`.
    pub node_id: NodeId,
    /// Every voting member and its address, this node included.
    pub members: BTreeMap<NodeId, String>,
    /// This node joins a running cluster: it never initializes a
    /// membership of its own and waits for the leader to add it
    /// (`members` then holds only itself).
    pub join: bool,
    /// Directory of this node's RocksDB.
    pub data_dir: PathBuf,
    /// Leader heartbeat period.
    pub heartbeat: Duration,
    /// Minimum election timeout; each wait is drawn from `[min, 2·min)`.
    pub election_timeout: Duration,
    /// Snapshot the state machine and truncate the log after this many log
    /// entries (Raft) or slots (Paxos).
    pub snapshot_every_entries: u64,
    /// This node's incarnation and its peers': every peer request carries
    /// them (see [`super::incarnation`]).
    pub incarnations: Arc<Incarnations>,
    /// Where the engine records its fsyncs, peer calls and snapshots.
    pub telemetry: Arc<super::EngineTelemetry>,
    /// How much of what it applies the engine's state keeps for watches,
    /// from the first entry it applies (the replay at start included).
    pub watch_history: super::HistoryLimits,
    /// Turns true when the node begins to stop, before its server drains:
    /// peer streams the engine serves end then, so the drain need not wait
    /// for the peers to close them. A dropped sender never stops them.
    pub stopping: tokio::sync::watch::Receiver<bool>,
}

impl EngineConfig {
    /// Checks what every engine relies on.
    pub fn validate(&self) -> anyhow::Result<()> {
        anyhow::ensure!(
            self.members.contains_key(&self.node_id),
            "node {} is not among the members {:?}",
            self.node_id,
            self.members.keys().collect::<Vec<_>>()
        );
        anyhow::ensure!(
            self.snapshot_every_entries > 0,
            "snapshot_every_entries must be positive"
        );
        Ok(())
    }
}
