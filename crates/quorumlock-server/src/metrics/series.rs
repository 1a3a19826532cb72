//! The last minutes of a few figures, sampled on this node for the status
//! page's charts: grants per second, the p99 wait for a grant and the p99
//! fsync, each over one sampling interval.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use parking_lot::Mutex;
use serde::Serialize;

use super::Metrics;
use quorumlock_core::consensus::ConsensusEngine;

/// How often a point is taken.
pub const SAMPLE_EVERY: Duration = Duration::from_secs(2);

/// Points kept: five minutes at [`SAMPLE_EVERY`].
pub const SAMPLES_KEPT: usize = 150;

/// One sampling interval.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Point {
    /// The interval's end, in milliseconds since the Unix epoch.
    pub at_unix_ms: u64,
    /// Grants per second over the interval.
    pub grants_per_s: f64,
    /// The p99 wait from joining a queue to the grant, in seconds (the
    /// upper bound of its histogram bucket); `None` without grants.
    pub wait_p99_s: Option<f64>,
    /// The p99 fsync, in seconds (bucket bound); `None` without fsyncs.
    pub fsync_p99_s: Option<f64>,
}

/// The points of the last [`SAMPLES_KEPT`] intervals, oldest first.
#[derive(Debug, Default)]
pub struct Series {
    points: Mutex<VecDeque<Point>>,
}

impl Series {
    /// The points kept, oldest first.
    pub fn points(&self) -> Vec<Point> {
        self.points.lock().iter().cloned().collect()
    }

    fn push(&self, point: Point) {
        let mut points = self.points.lock();
        if points.len() == SAMPLES_KEPT {
            points.pop_front();
        }
        points.push_back(point);
    }

    /// Samples `metrics` every [`SAMPLE_EVERY`] until the engine's
    /// leadership channel closes (the node stopped).
    pub async fn sample(self: Arc<Self>, metrics: Arc<Metrics>, engine: Arc<dyn ConsensusEngine>) {
        let grants = |engine: &dyn ConsensusEngine| engine.state().read(|state| state.totals().grants);
        let mut last_grants = grants(engine.as_ref());
        let mut last_waits = metrics.locks.waits().counts();
        let mut last_syncs = metrics.telemetry.disk_syncs().counts();
        let mut last = tokio::time::Instant::now();
        let mut ticks = tokio::time::interval(SAMPLE_EVERY);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ticks.tick().await;
        let leadership = engine.leadership();
        loop {
            ticks.tick().await;
            if leadership.has_changed().is_err() {
                return;
            }
            let now = tokio::time::Instant::now();
            let seconds = now.duration_since(last).as_secs_f64().max(0.001);
            let grants_now = grants(engine.as_ref());
            let waits = metrics.locks.waits().counts();
            let syncs = metrics.telemetry.disk_syncs().counts();
            self.push(Point {
                at_unix_ms: SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map_or(0, |since| since.as_millis() as u64),
                grants_per_s: grants_now.saturating_sub(last_grants) as f64 / seconds,
                wait_p99_s: metrics.locks.waits().quantile_between(&last_waits, &waits, 0.99),
                fsync_p99_s: metrics
                    .telemetry
                    .disk_syncs()
                    .quantile_between(&last_syncs, &syncs, 0.99),
            });
            (last_grants, last_waits, last_syncs, last) = (grants_now, waits, syncs, now);
        }
    }
}
