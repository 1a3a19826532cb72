//! Figures an engine records about its own work, for the metrics a node
//! exports: how long each fsync took, how long each call to a peer took,
//! and the snapshots it saved, sent and installed.
//!
//! An engine records into the [`EngineTelemetry`] its [`super::EngineConfig`]
//! carries; the node registers the same values with its metrics registry.
//! Recording is a few atomic operations and never blocks.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::{Registry, Unit};

use super::NodeId;

/// Buckets of latencies from 50 µs to about 1.6 s, doubling.
pub fn latency_buckets() -> impl Iterator<Item = f64> {
    exponential_buckets(0.000_05, 2.0, 16)
}

/// A histogram exported to Prometheus whose bucket counts can also be
/// read here, so that a node can show recent percentiles itself (the
/// status page's charts) from the same observations.
#[derive(Debug, Clone)]
pub struct Recorded {
    exported: Histogram,
    bounds: Arc<[f64]>,
    /// One count per bound, then one for the values above the last.
    counts: Arc<[AtomicU64]>,
}

impl Recorded {
    /// A histogram with these bucket upper bounds (ascending).
    pub fn new(bounds: impl Iterator<Item = f64>) -> Recorded {
        let bounds: Arc<[f64]> = bounds.collect();
        Recorded {
            exported: Histogram::new(bounds.iter().copied()),
            counts: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            bounds,
        }
    }

    /// Records one value.
    pub fn observe(&self, value: f64) {
        self.exported.observe(value);
        let bucket = self.bounds.partition_point(|bound| *bound < value);
        self.counts[bucket].fetch_add(1, Ordering::Relaxed);
    }

    /// The histogram to register.
    pub fn exported(&self) -> Histogram {
        self.exported.clone()
    }

    /// The count of each bucket (not cumulative), the last one above every bound.
    pub fn counts(&self) -> Vec<u64> {
        self.counts
            .iter()
            .map(|count| count.load(Ordering::Relaxed))
            .collect()
    }

    /// The `q` quantile of the values observed between two readings of
    /// [`Recorded::counts`], as the upper bound of the bucket it falls in
    /// (what Prometheus's `histogram_quantile` bounds it by); `None` if no
    /// value was observed in between. Values above the last bound report it.
    pub fn quantile_between(&self, before: &[u64], after: &[u64], q: f64) -> Option<f64> {
        let deltas: Vec<u64> = after
            .iter()
            .zip(before.iter().chain(std::iter::repeat(&0)))
            .map(|(after, before)| after.saturating_sub(*before))
            .collect();
        let total: u64 = deltas.iter().sum();
        if total == 0 {
            return None;
        }
        let rank = ((total as f64) * q).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (bucket, delta) in deltas.iter().enumerate() {
            seen += delta;
            if seen >= rank {
                return Some(self.bounds[bucket.min(self.bounds.len() - 1)]);
            }
        }
        self.bounds.last().copied()
    }
}

/// The label of a per-peer series.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PeerLabel {
    /// The peer's node id.
    pub peer: String,
}

/// What an engine records about its own work.
#[derive(Debug)]
pub struct EngineTelemetry {
    disk_sync: Recorded,
    peer_round_trip: Family<PeerLabel, Histogram>,
    snapshots_saved: Counter,
    snapshot_save: Histogram,
    snapshot_bytes: Gauge,
    snapshots_sent: Counter,
    snapshots_installed: Counter,
}

impl Default for EngineTelemetry {
    fn default() -> Self {
        EngineTelemetry {
            disk_sync: Recorded::new(latency_buckets()),
            peer_round_trip: Family::new_with_constructor(|| Histogram::new(latency_buckets())),
            snapshots_saved: Counter::default(),
            snapshot_save: Histogram::new(exponential_buckets(0.000_1, 4.0, 10)),
            snapshot_bytes: Gauge::default(),
            snapshots_sent: Counter::default(),
            snapshots_installed: Counter::default(),
        }
    }
}

impl EngineTelemetry {
    /// Records one fsync (a synced write batch or a WAL flush) that took `took`.
    pub fn disk_synced(&self, took: Duration) {
        self.disk_sync.observe(took.as_secs_f64());
    }

    /// Runs `sync`, a write that returns only once the disk has it, and
    /// records how long it took.
    pub fn timed_sync<T>(&self, sync: impl FnOnce() -> T) -> T {
        let started = Instant::now();
        let result = sync();
        self.disk_synced(started.elapsed());
        result
    }

    /// The fsync latencies, readable here.
    pub fn disk_syncs(&self) -> &Recorded {
        &self.disk_sync
    }

    /// The round-trip histogram of `peer` (created empty if it has none),
    /// for a sender to keep and record each answered call into.
    pub fn peer_round_trip(&self, peer: NodeId) -> Histogram {
        self.peer_round_trip
            .get_or_create(&PeerLabel {
                peer: peer.to_string(),
            })
            .clone()
    }

    /// Records a snapshot of `bytes` saved to this node's disk in `took`.
    pub fn snapshot_saved(&self, bytes: usize, took: Duration) {
        self.snapshots_saved.inc();
        self.snapshot_save.observe(took.as_secs_f64());
        self.snapshot_bytes.set(i64::try_from(bytes).unwrap_or(i64::MAX));
    }

    /// Records a snapshot sent to a follower that lacked the log it needed.
    pub fn snapshot_sent(&self) {
        self.snapshots_sent.inc();
    }

    /// Records a snapshot received from the leader and installed.
    pub fn snapshot_installed(&self) {
        self.snapshots_installed.inc();
    }

    /// Registers every figure with `registry` (which the node prefixes with
    /// `quorumlock` and labels with the engine).
    pub fn register(&self, registry: &mut Registry) {
        registry.register_with_unit(
            "disk_sync_duration",
            "Time of each fsync: a synced write batch or a WAL flush of the log or the Paxos state",
            Unit::Seconds,
            self.disk_sync.exported(),
        );
        registry.register_with_unit(
            "network_peer_round_trip_time",
            "Time from sending a peer protocol call (a raft RPC or a batch of Paxos messages) to its answer, \
             by peer; raft's AppendEntries includes the follower's log write",
            Unit::Seconds,
            self.peer_round_trip.clone(),
        );
        registry.register(
            "snapshot_saved",
            "Snapshots of the lock state this node built and saved to its disk",
            self.snapshots_saved.clone(),
        );
        registry.register_with_unit(
            "snapshot_save_duration",
            "Time to capture, encode and (raft) save each snapshot",
            Unit::Seconds,
            self.snapshot_save.clone(),
        );
        registry.register_with_unit(
            "snapshot_size",
            "Size of the last snapshot this node saved",
            Unit::Bytes,
            self.snapshot_bytes.clone(),
        );
        registry.register(
            "snapshot_sent",
            "Snapshots this node sent to followers whose log was behind its own compaction (leader only)",
            self.snapshots_sent.clone(),
        );
        registry.register(
            "snapshot_installed",
            "Snapshots this node received from the leader and installed",
            self.snapshots_installed.clone(),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_recorded_quantile_is_the_bound_of_the_bucket_it_falls_in() {
        let recorded = Recorded::new([0.001, 0.01, 0.1].into_iter());
        let before = recorded.counts();
        assert_eq!(recorded.quantile_between(&before, &recorded.counts(), 0.99), None);
        for _ in 0..98 {
            recorded.observe(0.000_5);
        }
        recorded.observe(0.05);
        recorded.observe(7.0);
        let after = recorded.counts();
        assert_eq!(after, vec![98, 0, 1, 1]);
        assert_eq!(recorded.quantile_between(&before, &after, 0.5), Some(0.001));
        assert_eq!(recorded.quantile_between(&before, &after, 0.99), Some(0.1));
        assert_eq!(
            recorded.quantile_between(&before, &after, 1.0),
            Some(0.1),
            "above the last bound"
        );
        // Only what came after the first reading counts.
        recorded.observe(0.005);
        assert_eq!(
            recorded.quantile_between(&after, &recorded.counts(), 0.99),
            Some(0.01)
        );
    }
}
