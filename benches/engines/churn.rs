//! The churn workload: steady state stays bounded. Clients keep opening
//! sessions, taking a lock, writing a value fenced by it, releasing it and
//! closing the session, for minutes, over a small set of recurring lock
//! names, so that the live state stays small; meanwhile every node's RSS,
//! data directory size and RocksDB write-ahead log size are sampled. A
//! system whose memory or disk keeps growing after the warm-up under this
//! load, while its live state stays the same, holds on to what it no longer
//! needs (memtables and WAL files of rarely written column families, say).

use std::fmt::Write as _;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use parking_lot::Mutex;
use plotters::prelude::*;
use tokio::task::JoinSet;
use tokio::time::Instant;

use super::charts::{color, draw_error, SIZE};
use super::measure::disk_bytes;
use super::systems::{LockClient, LockSystem};

/// Distinct lock names (and keys) each client cycles through, so that names
/// recur and the live state stays small.
pub const NAMES_PER_CLIENT: u64 = 64;
/// Pause after a failed cycle before the client starts the next one.
const ERROR_PAUSE: Duration = Duration::from_millis(20);
/// How long the clients may take to finish their cycle in progress once
/// stopped, on top of the session TTL (a lock left behind by a session that
/// could not be closed is free again one TTL later).
const STOP_GRACE: Duration = Duration::from_secs(30);
/// Most samples one run may plan (`duration / sample_every`).
pub const SAMPLES_MAX: usize = 100_000;
/// Seconds between two rows of the report's table (fewer seconds when the
/// run is too short for [`TABLE_ROWS_MIN`] rows at this spacing).
const TABLE_ROW_EVERY_S: f64 = 60.0;
/// Rows a short run's table still gets.
const TABLE_ROWS_MIN: usize = 6;
/// Bytes in a MiB.
const MIB: f64 = 1024.0 * 1024.0;
/// Head room above the highest line of a chart, for the legend.
const CHART_HEADROOM: f64 = 1.3;
/// File name of the RSS chart.
pub const RSS_CHART: &str = "churn_rss.svg";
/// File name of the data directory chart.
pub const DISK_CHART: &str = "churn_disk.svg";

/// How the churn workload runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChurnSettings {
    /// How long the clients churn (and the sampler samples).
    pub duration: Duration,
    /// Concurrent clients, each with its own connection, each doing one
    /// cycle at a time.
    pub clients: usize,
    /// Time between two samples.
    pub sample_every: Duration,
    /// Size of the value written under the lock in every cycle.
    pub value_bytes: usize,
    /// TTL of the sessions the clients open.
    pub session_ttl: Duration,
    /// Start of the run not counted in the growth (caches filling, first
    /// compactions).
    pub warmup: Duration,
}

/// One sample of every node, taken while the clients churn.
#[derive(Debug, Clone, Default)]
pub struct ChurnSample {
    /// Seconds since the churn started.
    pub at_s: f64,
    /// Resident memory per node, 0 for a node not running.
    pub rss_bytes: Vec<u64>,
    /// Data directory size per node (`du -sb`), 0 if it cannot be read.
    pub disk_bytes: Vec<u64>,
    /// Per node: total size of the RocksDB write-ahead logs (files named
    /// `NNNNNN.log`) anywhere under its data directory.
    pub wal_bytes: Vec<u64>,
    /// Cycles completed since the start, by all clients.
    pub cycles: u64,
}

/// The churn workload's result.
#[derive(Debug, Clone, Default)]
pub struct Churn {
    /// The samples, the first at the start, the last at the end.
    pub samples: Vec<ChurnSample>,
    /// Cycles completed (open session, acquire, fenced put, release, close),
    /// including those finishing after the end while the clients stopped.
    pub cycles: u64,
    /// Cycles that failed, plus clients that did not stop in time.
    pub errors: u64,
    /// The first failure's text.
    pub first_error: Option<String>,
    /// How long the clients churned (as asked for).
    pub duration: Duration,
    /// The warm-up: growth is measured from the first sample at or after it.
    pub warmup: Duration,
}

impl Churn {
    /// The first sample at or after the warm-up and the last sample, if
    /// there is a sample at or after the warm-up.
    fn growth_span(&self) -> Option<(&ChurnSample, &ChurnSample)> {
        let warmup_s = self.warmup.as_secs_f64();
        let from = self.samples.iter().find(|sample| sample.at_s >= warmup_s)?;
        Some((from, self.samples.last()?))
    }

    /// Per node: growth of RSS from the first sample at or after the
    /// warm-up to the last sample, in bytes (negative if it shrank). Empty
    /// if no sample was taken after the warm-up, so check the length before
    /// deciding that a system stayed flat.
    pub fn rss_growth(&self) -> Vec<i64> {
        self.growth_span()
            .map_or_else(Vec::new, |(from, to)| growth(&from.rss_bytes, &to.rss_bytes))
    }

    /// Per node: growth of the data directory size, like
    /// [`Churn::rss_growth`].
    pub fn disk_growth(&self) -> Vec<i64> {
        self.growth_span()
            .map_or_else(Vec::new, |(from, to)| growth(&from.disk_bytes, &to.disk_bytes))
    }

    /// Per node: growth of the write-ahead logs, like [`Churn::rss_growth`].
    fn wal_growth(&self) -> Vec<i64> {
        self.growth_span()
            .map_or_else(Vec::new, |(from, to)| growth(&from.wal_bytes, &to.wal_bytes))
    }
}

/// `to - from` per node, in bytes.
fn growth(from: &[u64], to: &[u64]) -> Vec<i64> {
    let signed = |bytes: u64| i64::try_from(bytes).unwrap_or(i64::MAX);
    from.iter()
        .zip(to)
        .map(|(&from, &to)| signed(to).saturating_sub(signed(from)))
        .collect()
}

/// What the clients and the sampler share.
#[derive(Default)]
struct Shared {
    /// Set at the end: every client stops after its cycle in progress.
    stop: AtomicBool,
    /// Completed cycles.
    cycles: AtomicU64,
    /// Failed cycles.
    errors: AtomicU64,
    /// The first failure's text.
    first_error: Mutex<Option<String>>,
}

impl Shared {
    /// Records a failure.
    fn error(&self, error: &anyhow::Error) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        let mut first = self.first_error.lock();
        if first.is_none() {
            *first = Some(format!("{error:#}"));
        }
    }
}

/// Runs the churn workload against `system` for `settings.duration`,
/// sampling every node every `settings.sample_every`. Failed cycles are
/// counted (see [`Churn::errors`]), not returned; an error is returned if
/// the settings are unusable, a client cannot connect, a data directory
/// cannot be walked, or a client panics.
pub async fn churn(system: &mut dyn LockSystem, settings: &ChurnSettings) -> anyhow::Result<Churn> {
    anyhow::ensure!(
        settings.clients > 0,
        "the churn workload needs at least one client"
    );
    anyhow::ensure!(
        !settings.sample_every.is_zero(),
        "the churn workload needs a sampling interval above zero"
    );
    let planned = settings.duration.as_secs_f64() / settings.sample_every.as_secs_f64();
    anyhow::ensure!(
        planned <= SAMPLES_MAX as f64,
        "sampling every {:?} for {:?} would take more than {SAMPLES_MAX} samples",
        settings.sample_every,
        settings.duration
    );
    let dirs: Vec<PathBuf> = (0..system.nodes()).map(|index| system.data_dir(index)).collect();
    let mut clients = Vec::with_capacity(settings.clients);
    for index in 0..settings.clients {
        let client = system
            .connect()
            .await
            .with_context(|| format!("connecting churn client {index}"))?;
        clients.push(client);
    }
    let shared = Arc::new(Shared::default());
    let started = Instant::now();
    let mut samples = Vec::new();
    samples.push(sample(rss_now(&*system), &dirs, started, &shared).await?);
    // Dropping the set (on an error below) aborts the clients.
    let mut tasks = JoinSet::new();
    for (index, client) in clients.into_iter().enumerate() {
        tasks.spawn(client_loop(
            index,
            client,
            settings.session_ttl,
            settings.value_bytes,
            shared.clone(),
        ));
    }
    let end = started
        .checked_add(settings.duration)
        .with_context(|| format!("a churn duration of {:?} is too long", settings.duration))?;
    let mut next: u32 = 1;
    loop {
        let at = started
            .checked_add(settings.sample_every.saturating_mul(next))
            .map_or(end, |at| at.min(end));
        tokio::time::sleep_until(at).await;
        samples.push(sample(rss_now(&*system), &dirs, started, &shared).await?);
        if at >= end {
            break;
        }
        next += 1;
    }
    shared.stop.store(true, Ordering::SeqCst);
    let stop_limit = settings.session_ttl + STOP_GRACE;
    let deadline = Instant::now() + stop_limit;
    while !tasks.is_empty() {
        match tokio::time::timeout_at(deadline, tasks.join_next()).await {
            Ok(Some(joined)) => joined.context("a churn client panicked")?,
            Ok(None) => break,
            Err(_elapsed) => {
                let stuck = tasks.len();
                shared.error(&anyhow::anyhow!(
                    "{stuck} churn client(s) did not finish their cycle within {stop_limit:?} of the end"
                ));
                tasks.shutdown().await;
                break;
            }
        }
    }
    let first_error = shared.first_error.lock().take();
    Ok(Churn {
        samples,
        cycles: shared.cycles.load(Ordering::SeqCst),
        errors: shared.errors.load(Ordering::SeqCst),
        first_error,
        duration: settings.duration,
        warmup: settings.warmup,
    })
}

/// Resident memory of every node now, 0 for a node not running.
fn rss_now(system: &dyn LockSystem) -> Vec<u64> {
    (0..system.nodes())
        .map(|index| system.usage(index).map_or(0, |usage| usage.rss_bytes))
        .collect()
}

/// One sample: `rss_bytes` (just read) and the cycle count now, then the
/// sizes of the data directories (walked on a blocking thread, so that the
/// clients keep running).
async fn sample(
    rss_bytes: Vec<u64>,
    dirs: &[PathBuf],
    started: Instant,
    shared: &Shared,
) -> anyhow::Result<ChurnSample> {
    let at_s = started.elapsed().as_secs_f64();
    let cycles = shared.cycles.load(Ordering::Relaxed);
    let dirs = dirs.to_vec();
    let (disk_bytes, wal_bytes) = tokio::task::spawn_blocking(move || {
        let disk: Vec<u64> = dirs.iter().map(|dir| disk_bytes(dir.as_path())).collect();
        let wal = dirs
            .iter()
            .map(|dir| wal_bytes(dir.as_path()))
            .collect::<anyhow::Result<Vec<u64>>>()?;
        anyhow::Ok((disk, wal))
    })
    .await
    .context("measuring the data directories panicked")??;
    Ok(ChurnSample {
        at_s,
        rss_bytes,
        disk_bytes,
        wal_bytes,
        cycles,
    })
}

/// Whether `name` is a RocksDB write-ahead log's: digits, then `.log`
/// (RocksDB's info log is `LOG`, and `LOG.old.*`).
fn is_wal_name(name: &std::ffi::OsStr) -> bool {
    name.to_str()
        .and_then(|name| name.strip_suffix(".log"))
        .is_some_and(|stem| !stem.is_empty() && stem.bytes().all(|byte| byte.is_ascii_digit()))
}

/// `result`'s value, `None` if what it read is gone (RocksDB deletes
/// obsolete logs and files while the walk runs), or the error.
fn unless_gone<T>(result: std::io::Result<T>, what: &Path) -> anyhow::Result<Option<T>> {
    match result {
        Ok(value) => Ok(Some(value)),
        Err(error) if error.kind() == ErrorKind::NotFound => Ok(None),
        Err(error) => Err(error).with_context(|| format!("reading {}", what.display())),
    }
}

/// Total size of the RocksDB write-ahead logs anywhere under `root` (0 if
/// it does not exist). Symbolic links are not followed.
fn wal_bytes(root: &Path) -> anyhow::Result<u64> {
    let mut total = 0u64;
    let mut pending = vec![root.to_path_buf()];
    while let Some(dir) = pending.pop() {
        let Some(entries) = unless_gone(std::fs::read_dir(&dir), &dir)? else {
            continue;
        };
        for entry in entries {
            let Some(entry) = unless_gone(entry, &dir)? else {
                continue;
            };
            let path = entry.path();
            let Some(file_type) = unless_gone(entry.file_type(), &path)? else {
                continue;
            };
            if file_type.is_dir() {
                pending.push(path);
            } else if file_type.is_file() && is_wal_name(&entry.file_name()) {
                if let Some(metadata) = unless_gone(entry.metadata(), &path)? {
                    total += metadata.len();
                }
            }
        }
    }
    Ok(total)
}

/// Bytes that do not compress (a value of one repeated byte would let
/// RocksDB's compression hide the data written), the same for every run.
fn incompressible(seed: u64, len: usize) -> Vec<u8> {
    // splitmix64
    let mut state = seed;
    let mut bytes = Vec::with_capacity(len + 8);
    while bytes.len() < len {
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        bytes.extend_from_slice(&z.to_le_bytes());
    }
    bytes.truncate(len);
    bytes
}

/// One client's loop: cycles until stopped; a failed cycle is recorded and
/// followed by a short pause.
async fn client_loop(
    index: usize,
    client: Arc<dyn LockClient>,
    ttl: Duration,
    value_bytes: usize,
    shared: Arc<Shared>,
) {
    let mut value = incompressible(index as u64, value_bytes);
    let mut n: u64 = 0;
    while !shared.stop.load(Ordering::Relaxed) {
        let name = format!("churn-{index}-{}", n % NAMES_PER_CLIENT);
        // Every write differs from the last one under the same key.
        let stamp = n.to_le_bytes();
        let stamped = value.len().min(stamp.len());
        value[..stamped].copy_from_slice(&stamp[..stamped]);
        match cycle(client.as_ref(), ttl, &name, &value).await {
            Ok(()) => {
                shared.cycles.fetch_add(1, Ordering::Relaxed);
            }
            Err(error) => {
                shared.error(&error);
                tokio::time::sleep(ERROR_PAUSE).await;
            }
        }
        n += 1;
    }
}

/// One cycle: open a session, acquire `name`, write `value` under the key
/// `name` fenced by the lock, release, close the session. The session is
/// closed (and the lock released) even when a step in between fails; the
/// first failure is returned.
async fn cycle(client: &dyn LockClient, ttl: Duration, name: &str, value: &[u8]) -> anyhow::Result<()> {
    let session = client.session(ttl).await.context("opening a session")?;
    let outcome = async {
        let held = session.acquire(name).await.context("acquiring")?;
        let put = session
            .fenced_put(&held, name, value)
            .await
            .context("writing fenced by the lock");
        let released = session.release(held).await.context("releasing");
        put.and(released)
    }
    .await;
    let closed = session.close().await.context("closing the session");
    outcome.and(closed)
}

/// `bytes` in MiB, one decimal.
fn mib(bytes: u64) -> String {
    format!("{:.1}", bytes as f64 / MIB)
}

/// Per-node values in MiB: "21.0 / 20.5 / 20.9".
fn mib_list(bytes: &[u64]) -> String {
    bytes.iter().map(|&b| mib(b)).collect::<Vec<_>>().join(" / ")
}

/// Per-node growth in MiB, signed: "+0.3 / -0.1 / +0.2".
fn growth_list(growth: &[i64]) -> String {
    growth
        .iter()
        .map(|&b| format!("{:+.1}", b as f64 / MIB))
        .collect::<Vec<_>>()
        .join(" / ")
}

/// Indices of the samples shown in the table: the first, then the first one
/// in every following row interval, and the last.
fn table_rows(samples: &[ChurnSample]) -> Vec<usize> {
    let Some(last) = samples.last() else {
        return Vec::new();
    };
    let every = TABLE_ROW_EVERY_S.min(last.at_s / TABLE_ROWS_MIN as f64).max(1e-3);
    let mut rows = Vec::new();
    let mut next = 0.0;
    for (index, sample) in samples.iter().enumerate() {
        if sample.at_s >= next || index + 1 == samples.len() {
            rows.push(index);
            next = ((sample.at_s / every).floor() + 1.0) * every;
        }
    }
    rows
}

/// Appends a section "### Churn (…)" per system in `rows`: a table of the
/// samples about every minute (RSS, data directory and WAL size per node,
/// cycles/s since the row before), then the growth per node after the
/// warm-up.
pub fn render(w: &mut String, rows: &[(String, &Churn)]) {
    for (name, churn) in rows {
        let _ = writeln!(
            w,
            "\n### Churn ({name}: {} of session churn, growth measured after {} of warm-up)\n",
            humantime::format_duration(churn.duration),
            humantime::format_duration(churn.warmup)
        );
        let rate = churn
            .samples
            .last()
            .map_or(0.0, |last| last.cycles as f64 / last.at_s.max(1e-9));
        let _ = write!(
            w,
            "{} cycles (open session → acquire → fenced put → release → close), {rate:.0} cycles/s on \
             average; {} failed",
            churn.cycles, churn.errors
        );
        match &churn.first_error {
            Some(error) => {
                let _ = writeln!(w, ", the first: {}.\n", error.replace(['\n', '\r'], " "));
            }
            None => {
                let _ = writeln!(w, ".\n");
            }
        }
        let _ = writeln!(
            w,
            "| t s | RSS MiB per node | data dir MiB per node | WAL MiB per node | cycles/s |\n\
             |---|---|---|---|---|"
        );
        let warmup_s = churn.warmup.as_secs_f64();
        let mut previous: Option<&ChurnSample> = None;
        for index in table_rows(&churn.samples) {
            let sample = &churn.samples[index];
            let rate = previous.map_or("—".to_string(), |before| {
                let cycles = sample.cycles.saturating_sub(before.cycles) as f64;
                format!("{:.0}", cycles / (sample.at_s - before.at_s).max(1e-9))
            });
            let _ = writeln!(
                w,
                "| {:.0}{} | {} | {} | {} | {rate} |",
                sample.at_s,
                if sample.at_s < warmup_s { " (warm-up)" } else { "" },
                mib_list(&sample.rss_bytes),
                mib_list(&sample.disk_bytes),
                mib_list(&sample.wal_bytes),
            );
            previous = Some(sample);
        }
        match churn.growth_span() {
            Some((from, to)) => {
                let _ = writeln!(
                    w,
                    "\nGrowth after the warm-up (sample at {:.0} s to sample at {:.0} s), per node: \
                     RSS {} MiB; data dir {} MiB; WAL {} MiB.",
                    from.at_s,
                    to.at_s,
                    growth_list(&churn.rss_growth()),
                    growth_list(&churn.disk_growth()),
                    growth_list(&churn.wal_growth()),
                );
            }
            None => {
                let _ = writeln!(w, "\nNo sample after the warm-up: growth not measured.");
            }
        }
    }
}

/// One line per system.
struct Series {
    name: String,
    /// (minutes, MiB).
    points: Vec<(f64, f64)>,
}

/// A line chart against minutes, from 0, with a grey vertical line at the
/// end of the warm-up.
fn line_chart(
    path: &Path,
    title: &str,
    y_label: &str,
    series: &[Series],
    warmup_min: f64,
) -> anyhow::Result<()> {
    let (mut x_max, mut y_max) = (0.0f64, 0.0f64);
    for &(x, y) in series.iter().flat_map(|s| s.points.iter()) {
        x_max = x_max.max(x);
        y_max = y_max.max(y);
    }
    if x_max <= 0.0 {
        x_max = 1.0;
    }
    let y_top = if y_max <= 0.0 { 1.0 } else { y_max * CHART_HEADROOM };
    let root = SVGBackend::new(path, SIZE).into_drawing_area();
    root.fill(&WHITE).map_err(draw_error)?;
    {
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 20))
            .margin(15)
            .x_label_area_size(45)
            .y_label_area_size(70)
            .build_cartesian_2d(0.0..x_max, 0.0..y_top)
            .map_err(draw_error)?;
        chart
            .configure_mesh()
            .x_desc("minutes since the churn started")
            .y_desc(y_label)
            .draw()
            .map_err(draw_error)?;
        for (index, s) in series.iter().enumerate() {
            let style = color(index);
            chart
                .draw_series(LineSeries::new(s.points.iter().copied(), style.stroke_width(2)))
                .map_err(draw_error)?
                .label(s.name.clone())
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], style.stroke_width(2)));
        }
        if warmup_min > 0.0 && warmup_min < x_max {
            let grey = RGBColor(128, 128, 128);
            chart
                .draw_series(LineSeries::new(
                    [(warmup_min, 0.0), (warmup_min, y_top)],
                    grey.stroke_width(1),
                ))
                .map_err(draw_error)?
                .label("end of warm-up")
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], grey.stroke_width(1)));
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .position(SeriesLabelPosition::UpperRight)
            .draw()
            .map_err(draw_error)?;
    }
    root.present().map_err(draw_error)?;
    Ok(())
}

/// Per system, (minutes, the largest per-node value of `field` in MiB) at
/// every sample.
fn largest_per_sample(rows: &[(String, &Churn)], field: fn(&ChurnSample) -> &[u64]) -> Vec<Series> {
    rows.iter()
        .map(|(name, churn)| Series {
            name: name.clone(),
            points: churn
                .samples
                .iter()
                .map(|sample| {
                    let largest = field(sample).iter().copied().max().unwrap_or(0);
                    (sample.at_s / 60.0, largest as f64 / MIB)
                })
                .collect(),
        })
        .collect()
}

/// Draws [`RSS_CHART`] (the largest per-node RSS of each system at each
/// sample, against minutes) and [`DISK_CHART`] (the largest per-node data
/// directory) into `dir`; returns the file names written, none if `rows` is
/// empty.
pub fn charts(dir: &Path, rows: &[(String, &Churn)]) -> anyhow::Result<Vec<String>> {
    if rows.is_empty() {
        return Ok(Vec::new());
    }
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let warmup_min = rows
        .iter()
        .map(|(_, churn)| churn.warmup)
        .max()
        .unwrap_or_default()
        .as_secs_f64()
        / 60.0;
    line_chart(
        &dir.join(RSS_CHART),
        "Churn: largest RSS of any node",
        "RSS, MiB",
        &largest_per_sample(rows, |sample| sample.rss_bytes.as_slice()),
        warmup_min,
    )?;
    line_chart(
        &dir.join(DISK_CHART),
        "Churn: largest data directory of any node",
        "data directory, MiB (du -sb)",
        &largest_per_sample(rows, |sample| sample.disk_bytes.as_slice()),
        warmup_min,
    )?;
    Ok(vec![RSS_CHART.to_string(), DISK_CHART.to_string()])
}
