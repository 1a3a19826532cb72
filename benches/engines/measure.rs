//! Measurement shared by every system and workload: latency histograms
//! (HdrHistogram, microseconds), operation counts, errors, per-bucket
//! timelines, and CPU use read from `/proc`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use hdrhistogram::Histogram;
use tokio::time::Instant;

/// Largest latency the histograms hold; longer ones are clamped to it.
pub const LATENCY_US_MAX: u64 = 600_000_000;
/// Width of one timeline bucket.
pub const BUCKET: Duration = Duration::from_millis(100);
/// Most buckets a timeline holds (10 minutes); later events are dropped.
pub const TIMELINE_BUCKETS_MAX: usize = 6_000;
/// Points in a latency CDF.
pub const CDF_POINTS_MAX: usize = 200;

fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, LATENCY_US_MAX, 3).expect("static histogram bounds are valid")
}

/// One worker's measurements; merged into a [`Summary`] at the end.
pub struct Recorder {
    histogram: Histogram<u64>,
    /// Operations completed inside the measured window.
    pub ops: u64,
    /// Operations that failed (anywhere in the run).
    pub errors: u64,
    /// The first failure's text.
    pub first_error: Option<String>,
}

impl Default for Recorder {
    fn default() -> Self {
        Recorder {
            histogram: new_histogram(),
            ops: 0,
            errors: 0,
            first_error: None,
        }
    }
}

impl Recorder {
    /// Records one operation that took `latency`.
    pub fn record(&mut self, latency: Duration) {
        let micros = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        self.histogram.saturating_record(micros.clamp(1, LATENCY_US_MAX));
        self.ops += 1;
    }

    /// Records a failure.
    pub fn error(&mut self, error: &anyhow::Error) {
        self.errors += 1;
        if self.first_error.is_none() {
            self.first_error = Some(format!("{error:#}"));
        }
    }

    /// Adds another worker's measurements.
    pub fn merge(&mut self, other: &Recorder) {
        self.histogram
            .add(&other.histogram)
            .expect("histograms with the same bounds add");
        self.ops += other.ops;
        self.errors += other.errors;
        if self.first_error.is_none() {
            self.first_error.clone_from(&other.first_error);
        }
    }

    /// The summary over a measured window of `window`.
    pub fn summary(&self, window: Duration) -> Summary {
        let quantile = |q: f64| {
            if self.histogram.is_empty() {
                0.0
            } else {
                self.histogram.value_at_quantile(q) as f64 / 1_000.0
            }
        };
        let mut cdf = Vec::new();
        if !self.histogram.is_empty() {
            for step in 0..=CDF_POINTS_MAX {
                let q = step as f64 / CDF_POINTS_MAX as f64;
                // Logarithmic spacing of the tail, where the interest is.
                let q = 1.0 - (1.0 - q).powi(3);
                cdf.push((self.histogram.value_at_quantile(q) as f64 / 1_000.0, q));
            }
        }
        Summary {
            ops: self.ops,
            throughput: self.ops as f64 / window.as_secs_f64().max(1e-9),
            p50_ms: quantile(0.5),
            p99_ms: quantile(0.99),
            p999_ms: quantile(0.999),
            errors: self.errors,
            first_error: self.first_error.clone(),
            cdf,
        }
    }
}

/// Throughput and latency of one measured run.
#[derive(Debug, Clone, Default)]
pub struct Summary {
    /// Operations in the window.
    pub ops: u64,
    /// Operations per second.
    pub throughput: f64,
    /// Median latency.
    pub p50_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// 99.9th percentile.
    pub p999_ms: f64,
    /// Failed operations.
    pub errors: u64,
    /// The first failure's text.
    pub first_error: Option<String>,
    /// (latency ms, fraction of operations at most that slow).
    pub cdf: Vec<(f64, f64)>,
}

/// Completions per [`BUCKET`] since a start instant, shared by workers.
pub struct Timeline {
    start: Instant,
    buckets: Vec<AtomicU64>,
}

impl Timeline {
    /// An empty timeline starting now.
    pub fn new() -> Timeline {
        Timeline {
            start: Instant::now(),
            buckets: (0..TIMELINE_BUCKETS_MAX).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    /// When bucket 0 starts.
    pub fn start(&self) -> Instant {
        self.start
    }

    /// Counts one completion at `at`.
    pub fn record(&self, at: Instant) {
        let index = (at.saturating_duration_since(self.start).as_millis() / BUCKET.as_millis()) as usize;
        if let Some(bucket) = self.buckets.get(index) {
            bucket.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The index of the bucket holding `at`.
    pub fn bucket_of(&self, at: Instant) -> usize {
        (at.saturating_duration_since(self.start).as_millis() / BUCKET.as_millis()) as usize
    }

    /// Completions in bucket `index`.
    pub fn count(&self, index: usize) -> u64 {
        self.buckets
            .get(index)
            .map_or(0, |bucket| bucket.load(Ordering::Relaxed))
    }
}

/// The kernel's clock ticks per second (`getconf CLK_TCK`).
pub fn clock_ticks_per_second() -> u64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|output| String::from_utf8_lossy(&output.stdout).trim().parse().ok())
        .unwrap_or(100)
}

/// Bytes under `path` (`du -sb`), 0 if it cannot be read.
pub fn disk_bytes(path: &std::path::Path) -> u64 {
    std::process::Command::new("du")
        .arg("-sb")
        .arg(path)
        .output()
        .ok()
        .and_then(|output| {
            String::from_utf8_lossy(&output.stdout)
                .split_whitespace()
                .next()
                .and_then(|bytes| bytes.parse().ok())
        })
        .unwrap_or(0)
}
