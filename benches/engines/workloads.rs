//! The eight workloads, run the same way against every
//! [`LockSystem`], and the results they produce.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use futures::stream::{self, StreamExt, TryStreamExt};
use parking_lot::Mutex;
use tokio::time::Instant;

use super::churn::{churn, Churn, ChurnSettings};
use super::cli::{Options, SESSIONS_PER_CLIENT_MAX};
use super::idle::{IdleGroup, OPENING_PER_GROUP_MAX};
use super::measure::{clock_ticks_per_second, disk_bytes, Recorder, Summary, Timeline, BUCKET};
use super::systems::{Held, LockClient, LockSession, LockSystem};
use quorumlock_testkit::cluster::process_usage;

/// Sessions opened at once while setting a workload up.
pub const OPEN_CONCURRENCY_MAX: usize = 128;
/// TTL of workload 7's sessions.
const SCALE_SESSION_TTL: Duration = Duration::from_secs(60);
/// How often the leader's memory is sampled while a follower repairs.
const RSS_SAMPLE_INTERVAL: Duration = Duration::from_millis(100);
/// Pause after a failed operation before the worker tries again.
const ERROR_PAUSE: Duration = Duration::from_millis(20);
/// Buckets averaged when deciding that throughput has recovered.
pub const RECOVERY_BUCKETS: usize = 5;
/// Fraction of the baseline throughput that counts as recovered.
const RECOVERED_FRACTION: f64 = 0.9;
/// Pause between two probes after a kill.
pub const PROBE_INTERVAL: Duration = Duration::from_millis(50);
/// Most probes after one kill.
pub const PROBES_MAX: usize = 400;
/// Seconds of the failover timeline kept before and after the kill.
const TIMELINE_BEFORE_S: f64 = 3.0;
const TIMELINE_AFTER_S: f64 = 12.0;

/// One measured row: a system under one workload setting.
#[derive(Debug, Clone, Default)]
pub struct Row {
    /// Throughput and latency.
    pub summary: Summary,
    /// Leader CPU microseconds per operation.
    pub leader_cpu_us_per_op: Option<f64>,
    /// CPU microseconds per operation over all nodes.
    pub total_cpu_us_per_op: Option<f64>,
    /// Leader term change over the workload (elections); `None` without
    /// elections.
    pub elections: Option<u64>,
    /// The range over repeated windows; `None` for a single one.
    pub spread: Option<Spread>,
}

/// Lowest and highest of a figure over repeated measured windows.
#[derive(Debug, Clone, Copy, Default)]
pub struct Spread {
    /// (min, max) operations per second.
    pub throughput: (f64, f64),
    /// (min, max) 99th percentile, ms.
    pub p99_ms: (f64, f64),
}

/// The median of `values` (0 when empty).
pub fn median(values: &[f64]) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let middle = sorted.len() / 2;
    if sorted.len() % 2 == 0 {
        (sorted[middle - 1] + sorted[middle]) / 2.0
    } else {
        sorted[middle]
    }
}

fn median_option(values: impl Iterator<Item = Option<f64>>) -> Option<f64> {
    let values: Option<Vec<f64>> = values.collect();
    values
        .filter(|values| !values.is_empty())
        .map(|values| median(&values))
}

fn range(values: impl Iterator<Item = f64>) -> (f64, f64) {
    values.fold((f64::MAX, f64::MIN), |(low, high), value| {
        (low.min(value), high.max(value))
    })
}

impl Row {
    /// One row from repeated windows: each figure is the median of the
    /// windows' (the latency CDF is the window with the median pairs/s);
    /// elections and failures add up.
    pub fn median_of(rows: Vec<Row>) -> Row {
        if rows.len() <= 1 {
            return rows.into_iter().next().unwrap_or_default();
        }
        let throughputs: Vec<f64> = rows.iter().map(|row| row.summary.throughput).collect();
        let middle = median(&throughputs);
        let closest = rows
            .iter()
            .min_by(|a, b| {
                (a.summary.throughput - middle)
                    .abs()
                    .total_cmp(&(b.summary.throughput - middle).abs())
            })
            .expect("at least two rows");
        let figure =
            |get: fn(&Summary) -> f64| median(&rows.iter().map(|row| get(&row.summary)).collect::<Vec<_>>());
        let summary = Summary {
            ops: rows.iter().map(|row| row.summary.ops).sum(),
            throughput: middle,
            p50_ms: figure(|s| s.p50_ms),
            p99_ms: figure(|s| s.p99_ms),
            p999_ms: figure(|s| s.p999_ms),
            errors: rows.iter().map(|row| row.summary.errors).sum(),
            first_error: rows.iter().find_map(|row| row.summary.first_error.clone()),
            cdf: closest.summary.cdf.clone(),
        };
        Row {
            summary,
            leader_cpu_us_per_op: median_option(rows.iter().map(|row| row.leader_cpu_us_per_op)),
            total_cpu_us_per_op: median_option(rows.iter().map(|row| row.total_cpu_us_per_op)),
            elections: rows
                .iter()
                .map(|row| row.elections)
                .try_fold(0, |sum, count| Some(sum + count?)),
            spread: Some(Spread {
                throughput: range(rows.iter().map(|row| row.summary.throughput)),
                p99_ms: range(rows.iter().map(|row| row.summary.p99_ms)),
            }),
        }
    }
}

/// Workload 2's result.
#[derive(Debug, Clone, Default)]
pub struct Hot {
    /// Handoffs (acquire+release pairs) per second and their latency.
    pub row: Row,
    /// Pairs per worker in the window, fewest and most.
    pub per_worker_min: u64,
    /// See `per_worker_min`.
    pub per_worker_max: u64,
    /// Workers that completed at least one pair in the window.
    pub served: usize,
    /// Workers.
    pub workers: usize,
}

/// Workload 3's result.
#[derive(Debug, Clone, Default)]
pub struct Herd {
    /// Sessions queued.
    pub sessions: usize,
    /// Sessions that held the lock exactly once.
    pub held_once: usize,
    /// From the first request to the last release (the median over
    /// repetitions).
    pub total: Duration,
    /// (min, max) of `total` over repetitions, seconds; `None` for one.
    pub total_range: Option<(f64, f64)>,
    /// Each session's wait for its grant.
    pub wait: Summary,
    /// All nodes' CPU microseconds per handoff.
    pub total_cpu_us_per_handoff: Option<f64>,
    /// The leader's.
    pub leader_cpu_us_per_handoff: Option<f64>,
    /// Elections meanwhile.
    pub elections: Option<u64>,
}

impl Herd {
    /// The repetition with the median total time, with the range of all.
    fn median_of(mut runs: Vec<Herd>) -> Herd {
        runs.sort_by_key(|run| run.total);
        let count = runs.len();
        let total_range = (count > 1).then(|| {
            (
                runs.first().map_or(0.0, |run| run.total.as_secs_f64()),
                runs.last().map_or(0.0, |run| run.total.as_secs_f64()),
            )
        });
        let elections = runs
            .iter()
            .map(|run| run.elections)
            .try_fold(0, |sum, count| Some(sum + count?));
        let mut chosen = runs.swap_remove(count / 2);
        chosen.total_range = total_range;
        chosen.elections = elections;
        chosen
    }
}

/// Workload 5's result.
#[derive(Debug, Clone, Default)]
pub struct Keepalive {
    /// Time to open them all.
    pub open: Duration,
    /// The leader's CPU use over the window, in percent of one core.
    pub leader_cpu_percent: f64,
    /// All nodes' together.
    pub total_cpu_percent: f64,
    /// Sessions lost by the end.
    pub lost: usize,
    /// Elections meanwhile.
    pub elections: Option<u64>,
    /// Sessions kept alive.
    pub sessions: usize,
    /// Uncontended pairs/s measured with this many sessions open:
    /// (sessions open, row).
    pub pairs_by_sessions: Vec<(usize, Row)>,
}

/// Workload 6's result.
#[derive(Debug, Clone, Default)]
pub struct Failover {
    /// Per kill: from the kill to the first successful acquire started after
    /// it, by a worker or by a probe.
    pub to_acquire_ms: Vec<f64>,
    /// Per kill: from the kill to throughput back at 90 % (`None`: not
    /// within the limit).
    pub to_recovered_ms: Vec<Option<f64>>,
    /// Pairs/s before each kill.
    pub baseline_per_s: Vec<f64>,
    /// The first kill's timeline: (seconds since the kill, pairs/s).
    pub timeline: Vec<(f64, f64)>,
    /// Operations that failed during the kills.
    pub errors: u64,
    /// The first failure's text.
    pub first_error: Option<String>,
}

/// Workload 7's result.
#[derive(Debug, Clone, Default)]
pub struct Scale {
    /// Locks asked for.
    pub target: usize,
    /// Locks held at the end.
    pub held: usize,
    /// Time to acquire them.
    pub acquire: Duration,
    /// Resident memory per node with all of them held.
    pub rss_bytes: Vec<u64>,
    /// Data directory size per node (`du -sb`).
    pub disk_bytes: Vec<u64>,
    /// From the restart of a follower (after SIGKILL) to it serving again,
    /// caught up with the leader; `None` for a single node.
    pub restart_to_serving: Option<Duration>,
    /// Uncontended pairs/s measured with this many locks held: (locks
    /// held, row).
    pub pairs_by_held: Vec<(usize, Row)>,
    /// A follower repaired from an empty data directory, all locks held;
    /// `None` where the system has no such repair.
    pub repair: Option<RepairFromEmpty>,
}

/// A follower whose data directory was deleted, started to repair from its
/// peers while workers take and release their own locks: the leader's
/// whole state reaches it as a snapshot.
#[derive(Debug, Clone, Default)]
pub struct RepairFromEmpty {
    /// From its start until it answers and has applied what the leader had
    /// committed.
    pub to_serving: Duration,
    /// The leader's resident memory before.
    pub leader_rss_before: u64,
    /// The most the leader's resident memory reached meanwhile (sampled
    /// every 100 ms).
    pub leader_rss_peak: u64,
    /// The workers' uncontended pairs meanwhile.
    pub during: Summary,
}

/// Every result of one system; `None` for a workload that does not apply.
#[derive(Debug, Clone, Default)]
pub struct SystemResults {
    /// The system's name.
    pub name: String,
    /// Why the system was not run, if it was not.
    pub skipped: Option<String>,
    /// Workload 1 by worker count.
    pub uncontended: Vec<(usize, Row)>,
    /// Workload 2.
    pub hot: Option<Hot>,
    /// Workload 3.
    pub herd: Option<Herd>,
    /// Workload 4.
    pub fenced: Option<Row>,
    /// Workload 5.
    pub keepalive: Option<Keepalive>,
    /// Workload 6.
    pub failover: Option<Failover>,
    /// Workload 7.
    pub scale: Option<Scale>,
    /// Workload 8.
    pub churn: Option<Churn>,
    /// Workloads that failed, with why.
    pub failures: Vec<String>,
    /// Notes for the report.
    pub notes: Vec<String>,
}

/// What one worker does in a loop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    /// Acquire and release its own lock.
    OwnLock,
    /// Acquire and release the one hot lock.
    HotLock,
    /// Acquire its own lock, write a value fenced by it, release.
    Fenced,
}

/// Runs one workload step: skipped unless selected, timed, and recorded as
/// a failure if it fails.
macro_rules! run_step {
    ($name:expr, $options:expr, $results:expr, $label:expr, $run:expr) => {{
        let label = $label;
        if !$options.workload_selected(&label) {
            eprintln!("[{}] {} skipped (not selected)", $name, label);
        } else {
            let started = Instant::now();
            eprintln!("[{}] {} ...", $name, label);
            match $run.await {
                Ok(()) => eprintln!("[{}] {} done in {:.1?}", $name, label, started.elapsed()),
                Err(error) => {
                    eprintln!("[{}] {} FAILED: {error:#}", $name, label);
                    $results.failures.push(format!("{}: {error:#}", label));
                }
            }
        }
    }};
}

/// Workload 1 at every worker count.
pub async fn run_uncontended(system: &mut dyn LockSystem, options: &Options, results: &mut SystemResults) {
    let name = system.name();
    for &workers in &options.uncontended_workers {
        run_step!(
            name,
            options,
            results,
            format!("1 uncontended, {workers} workers"),
            async {
                let mut rows = Vec::new();
                for _ in 0..options.repeat {
                    rows.push(loop_workload(system, options, Op::OwnLock, workers).await?.0);
                }
                let row = Row::median_of(rows);
                let checked = check_errors(&row.summary);
                results.uncontended.push((workers, row));
                checked
            }
        );
    }
}

/// Runs every workload against `system`, recording failures instead of
/// stopping at the first.
pub async fn run_all(system: &mut dyn LockSystem, options: &Options, results: &mut SystemResults) {
    let name = system.name();
    run_uncontended(system, options, results).await;
    macro_rules! step {
        ($label:expr, $run:expr) => {
            run_step!(name, options, results, $label, $run)
        };
    }
    step!("2 hot lock", async {
        let mut rows = Vec::new();
        let (mut per_worker_min, mut per_worker_max, mut served) = (u64::MAX, 0, usize::MAX);
        for _ in 0..options.repeat {
            let (row, per_worker) = loop_workload(system, options, Op::HotLock, options.hot_workers).await?;
            per_worker_min = per_worker_min.min(per_worker.iter().copied().min().unwrap_or(0));
            per_worker_max = per_worker_max.max(per_worker.iter().copied().max().unwrap_or(0));
            // Every worker must be served in every window.
            served = served.min(per_worker.iter().filter(|&&count| count > 0).count());
            rows.push(row);
        }
        let row = Row::median_of(rows);
        let checked = check_errors(&row.summary);
        results.hot = Some(Hot {
            per_worker_min,
            per_worker_max,
            served,
            workers: options.hot_workers,
            row,
        });
        checked
    });
    step!("4 fenced writes", async {
        let mut rows = Vec::new();
        for _ in 0..options.repeat {
            rows.push(
                loop_workload(system, options, Op::Fenced, options.fenced_workers)
                    .await?
                    .0,
            );
        }
        let row = Row::median_of(rows);
        let checked = check_errors(&row.summary);
        results.fenced = Some(row);
        checked
    });
    step!("3 thundering herd", async {
        let mut runs = Vec::new();
        for _ in 0..options.repeat {
            runs.push(herd(system, options).await?);
        }
        results.herd = Some(Herd::median_of(runs));
        anyhow::Ok(())
    });
    if name == "redis" {
        results
            .notes
            .push("keepalive: n/a, Redis has no sessions or leases (locks expire by PX)".to_string());
    } else {
        step!("5 keepalive", async {
            let keepalive = keepalive(system, options).await?;
            let lost = keepalive.lost;
            // Reported with its numbers, and still counted as failed.
            results.keepalive = Some(keepalive);
            anyhow::ensure!(lost == 0, "{lost} sessions were lost");
            anyhow::Ok(())
        });
    }
    if system.replicated() {
        step!("6 failover", async {
            results.failover = Some(failover(system, options).await?);
            anyhow::Ok(())
        });
    } else {
        results
            .notes
            .push("failover: n/a, a single Redis node has nothing to fail over to".to_string());
    }
    let target = if name == "etcd" {
        options.scale_locks_etcd
    } else {
        options.scale_locks
    };
    step!("7 scale", async {
        results.scale = Some(scale(system, options, target).await?);
        anyhow::Ok(())
    });
    if name.starts_with("quorumlock") {
        step!("8 churn", async {
            let settings = ChurnSettings {
                duration: options.churn_duration,
                clients: options.churn_clients,
                sample_every: options.churn_sample_every,
                value_bytes: options.fenced_value_bytes,
                session_ttl: options.session_ttl,
                warmup: options.churn_warmup,
            };
            let result = churn(system, &settings).await?;
            let errors = result.errors;
            let first_error = result.first_error.clone();
            results.churn = Some(result);
            match first_error {
                Some(error) => anyhow::bail!("{errors} churn cycles failed, the first: {error}"),
                None => anyhow::Ok(()),
            }
        });
    }
}

/// A workload whose operations failed is reported with its numbers, and
/// still counts as failed.
fn check_errors(summary: &Summary) -> anyhow::Result<()> {
    match &summary.first_error {
        Some(error) => anyhow::bail!("{} operations failed, the first: {error}", summary.errors),
        None => Ok(()),
    }
}

/// Clients enough for `sessions` sessions.
async fn clients_for(system: &dyn LockSystem, sessions: usize) -> anyhow::Result<Vec<Arc<dyn LockClient>>> {
    let count = sessions.div_ceil(SESSIONS_PER_CLIENT_MAX).max(1);
    let mut clients = Vec::with_capacity(count);
    for _ in 0..count {
        clients.push(system.connect().await?);
    }
    Ok(clients)
}

/// Opens `count` sessions of `ttl`, spread over `clients`.
async fn open_sessions(
    clients: &[Arc<dyn LockClient>],
    count: usize,
    ttl: Duration,
) -> anyhow::Result<Vec<Arc<dyn LockSession>>> {
    stream::iter(0..count)
        .map(|index| {
            let client = clients[index % clients.len()].clone();
            async move { client.session(ttl).await.map(Arc::<dyn LockSession>::from) }
        })
        .buffered(OPEN_CONCURRENCY_MAX)
        .try_collect()
        .await
        .context("opening sessions")
}

async fn close_sessions(sessions: Vec<Arc<dyn LockSession>>) {
    stream::iter(sessions)
        .for_each_concurrent(OPEN_CONCURRENCY_MAX, |session| async move {
            let _ = session.close().await;
        })
        .await;
}

/// CPU ticks of every node (0 for a node not running).
fn cpu_ticks(system: &dyn LockSystem) -> Vec<u64> {
    (0..system.nodes())
        .map(|index| system.usage(index).map_or(0, |usage| usage.cpu_ticks))
        .collect()
}

/// (leader, all nodes) CPU microseconds per operation between two readings.
fn cpu_per_op(before: &[u64], after: &[u64], leader: usize, ops: u64) -> (Option<f64>, Option<f64>) {
    if ops == 0 {
        return (None, None);
    }
    let micros_per_tick = 1e6 / clock_ticks_per_second() as f64;
    let leader_ticks = after[leader].saturating_sub(before[leader]);
    let total_ticks: u64 = after.iter().zip(before).map(|(a, b)| a.saturating_sub(*b)).sum();
    (
        Some(leader_ticks as f64 * micros_per_tick / ops as f64),
        Some(total_ticks as f64 * micros_per_tick / ops as f64),
    )
}

fn elections(before: Option<u64>, after: Option<u64>) -> Option<u64> {
    Some(after?.saturating_sub(before?))
}

/// Shared state of a worker loop.
struct LoopShared {
    stop: AtomicBool,
    /// Operations completing in [measure_from, measure_until] are recorded.
    window: Mutex<(Option<Instant>, Option<Instant>)>,
    timeline: Timeline,
    /// The last kill, and the first acquire started after it.
    kill: Mutex<(Option<Instant>, Option<Instant>)>,
    value: Vec<u8>,
}

/// Runs `workers` workers doing `op` until stopped; returns their recorders
/// and per-worker counts in the window.
struct Workers {
    shared: Arc<LoopShared>,
    handles: Vec<tokio::task::JoinHandle<(Recorder, u64)>>,
}

impl Workers {
    async fn start(
        system: &dyn LockSystem,
        options: &Options,
        op: Op,
        workers: usize,
    ) -> anyhow::Result<Workers> {
        let clients = clients_for(system, workers).await?;
        let sessions = open_sessions(&clients, workers, options.session_ttl).await?;
        let shared = Arc::new(LoopShared {
            stop: AtomicBool::new(false),
            window: Mutex::new((None, None)),
            timeline: Timeline::new(),
            kill: Mutex::new((None, None)),
            value: vec![b'v'; options.fenced_value_bytes],
        });
        let handles = sessions
            .into_iter()
            .enumerate()
            .map(|(worker, session)| {
                let client = clients[worker % clients.len()].clone();
                let shared = shared.clone();
                let ttl = options.session_ttl;
                tokio::spawn(worker_loop(worker, op, client, session, ttl, shared))
            })
            .collect();
        Ok(Workers { shared, handles })
    }

    fn measure_from(&self, at: Instant) {
        self.shared.window.lock().0 = Some(at);
    }

    fn measure_until(&self, at: Instant) {
        self.shared.window.lock().1 = Some(at);
    }

    async fn stop(self) -> anyhow::Result<(Recorder, Vec<u64>)> {
        self.shared.stop.store(true, Ordering::SeqCst);
        let mut total = Recorder::default();
        let mut counts = Vec::new();
        for handle in self.handles {
            let (recorder, count) = handle.await.context("a worker panicked")?;
            total.merge(&recorder);
            counts.push(count);
        }
        Ok((total, counts))
    }
}

async fn worker_loop(
    worker: usize,
    op: Op,
    client: Arc<dyn LockClient>,
    mut session: Arc<dyn LockSession>,
    ttl: Duration,
    shared: Arc<LoopShared>,
) -> (Recorder, u64) {
    let mut recorder = Recorder::default();
    let mut count = 0u64;
    let name = match op {
        Op::HotLock => "hot".to_string(),
        Op::OwnLock => format!("own-{worker}"),
        Op::Fenced => format!("fenced-{worker}"),
    };
    let key = format!("value-{worker}");
    while !shared.stop.load(Ordering::Relaxed) {
        let started = Instant::now();
        let outcome = async {
            let held = session.acquire(&name).await?;
            {
                let mut kill = shared.kill.lock();
                if let (Some(killed), None) = *kill {
                    if started >= killed {
                        kill.1 = Some(Instant::now());
                    }
                }
            }
            if op == Op::Fenced {
                session.fenced_put(&held, &key, &shared.value).await?;
            }
            session.release(held).await
        }
        .await;
        let finished = Instant::now();
        match outcome {
            Ok(()) => {
                shared.timeline.record(finished);
                let (from, until) = *shared.window.lock();
                if from.is_some_and(|from| started >= from) && until.is_none_or(|until| finished <= until) {
                    recorder.record(finished - started);
                    count += 1;
                }
            }
            Err(error) => {
                recorder.error(&error);
                if session.is_lost() {
                    if let Ok(fresh) = client.session(ttl).await {
                        session = Arc::from(fresh);
                    }
                }
                tokio::time::sleep(ERROR_PAUSE).await;
            }
        }
    }
    let _ = session.close().await;
    (recorder, count)
}

/// Workloads 1, 2 and 4: a warm-up, then a measured window.
async fn loop_workload(
    system: &mut dyn LockSystem,
    options: &Options,
    op: Op,
    workers: usize,
) -> anyhow::Result<(Row, Vec<u64>)> {
    measured_loop(system, options, op, workers, options.warmup, options.window).await
}

/// Uncontended pairs/s at `growth_workers` with a short warm-up and
/// window: the cost of what workloads 5 and 7 have built up.
async fn growth_row(system: &mut dyn LockSystem, options: &Options) -> anyhow::Result<Row> {
    let warmup = options.growth_window / 3;
    let (row, _) = measured_loop(
        system,
        options,
        Op::OwnLock,
        options.growth_workers,
        warmup,
        options.growth_window,
    )
    .await?;
    check_errors(&row.summary)?;
    Ok(row)
}

/// `workers` workers doing `op`: `warmup`, then a measured `window`.
async fn measured_loop(
    system: &mut dyn LockSystem,
    options: &Options,
    op: Op,
    workers: usize,
    warmup: Duration,
    window: Duration,
) -> anyhow::Result<(Row, Vec<u64>)> {
    let term_before = system.term().await?;
    let leader = system.leader().await?;
    let running = Workers::start(system, options, op, workers).await?;
    tokio::time::sleep(warmup).await;
    let from = Instant::now();
    running.measure_from(from);
    let cpu_before = cpu_ticks(system);
    tokio::time::sleep(window).await;
    let until = Instant::now();
    running.measure_until(until);
    let cpu_after = cpu_ticks(system);
    let (recorder, counts) = running.stop().await?;
    let summary = recorder.summary(until - from);
    let (leader_cpu, total_cpu) = cpu_per_op(&cpu_before, &cpu_after, leader, summary.ops);
    let term_after = system.term().await?;
    Ok((
        Row {
            summary,
            leader_cpu_us_per_op: leader_cpu,
            total_cpu_us_per_op: total_cpu,
            elections: elections(term_before, term_after),
            spread: None,
        },
        counts,
    ))
}

/// Workload 3: every session asks for one lock at once; each releases as
/// soon as it is granted.
async fn herd(system: &mut dyn LockSystem, options: &Options) -> anyhow::Result<Herd> {
    let term_before = system.term().await?;
    let leader = system.leader().await?;
    let clients = clients_for(system, options.herd_sessions).await?;
    let sessions = open_sessions(&clients, options.herd_sessions, options.session_ttl).await?;
    let cpu_before = cpu_ticks(system);
    let started = Instant::now();
    let tasks: Vec<_> = sessions
        .iter()
        .map(|session| {
            let session = session.clone();
            tokio::spawn(async move {
                let asked = Instant::now();
                let held = session.acquire("herd").await?;
                let waited = asked.elapsed();
                let token = held.token;
                session.release(held).await?;
                anyhow::Ok((waited, token))
            })
        })
        .collect();
    let mut recorder = Recorder::default();
    let mut tokens = Vec::new();
    let joined = tokio::time::timeout(options.herd_time_max, futures::future::join_all(tasks))
        .await
        .with_context(|| format!("the herd did not finish within {:?}", options.herd_time_max))?;
    for outcome in joined {
        let (waited, token) = outcome.context("a herd task panicked")??;
        recorder.record(waited);
        tokens.push(token);
    }
    let total = started.elapsed();
    let cpu_after = cpu_ticks(system);
    close_sessions(sessions).await;
    tokens.sort_unstable();
    let distinct_tokens = {
        let mut distinct = tokens.clone();
        distinct.dedup();
        distinct.len()
    };
    // Systems with tokens must have granted each session its own; Redis
    // has none to check.
    let held_once = if tokens.iter().all(|&token| token == 0) {
        tokens.len()
    } else {
        distinct_tokens
    };
    anyhow::ensure!(
        held_once == options.herd_sessions,
        "only {held_once} of {} sessions held the lock exactly once",
        options.herd_sessions
    );
    let (leader_cpu, total_cpu) = cpu_per_op(&cpu_before, &cpu_after, leader, tokens.len() as u64);
    let term_after = system.term().await?;
    Ok(Herd {
        sessions: options.herd_sessions,
        held_once,
        total,
        total_range: None,
        wait: recorder.summary(total),
        total_cpu_us_per_handoff: total_cpu,
        leader_cpu_us_per_handoff: leader_cpu,
        elections: elections(term_before, term_after),
    })
}

/// Workload 5: many sessions renewing every TTL/3; the leader's CPU.
async fn keepalive(system: &mut dyn LockSystem, options: &Options) -> anyhow::Result<Keepalive> {
    let term_before = system.term().await?;
    let leader = system.leader().await?;
    let mut open = Duration::ZERO;
    let mut groups: Vec<IdleGroup> = Vec::new();
    let mut opened = 0;
    let mut pairs_by_sessions = Vec::new();
    for stage in growth_stages(options.keepalive_sessions) {
        let opening = Instant::now();
        let more = stage - opened;
        let sizes = (0..more)
            .step_by(SESSIONS_PER_CLIENT_MAX)
            .map(|first| SESSIONS_PER_CLIENT_MAX.min(more - first));
        let deployment: &dyn LockSystem = system;
        let more: Vec<IdleGroup> = stream::iter(sizes)
            .map(|count| deployment.idle_sessions(leader, count, options.keepalive_ttl))
            .buffered(OPEN_CONCURRENCY_MAX / OPENING_PER_GROUP_MAX)
            .try_collect()
            .await
            .context("opening idle sessions")?;
        open += opening.elapsed();
        opened = stage;
        groups.extend(more);
        pairs_by_sessions.push((stage, growth_row(system, options).await?));
    }
    // One TTL to spread the renewals out evenly before measuring.
    tokio::time::sleep(options.keepalive_ttl).await;
    let cpu_before = cpu_ticks(system);
    let from = Instant::now();
    tokio::time::sleep(options.keepalive_window).await;
    let cpu_after = cpu_ticks(system);
    let window = from.elapsed();
    let lost = groups.iter().map(IdleGroup::lost).sum();
    stream::iter(groups)
        .for_each_concurrent(OPEN_CONCURRENCY_MAX / OPENING_PER_GROUP_MAX, IdleGroup::close)
        .await;
    let ticks_per_second = clock_ticks_per_second() as f64;
    let percent = |ticks: u64| ticks as f64 / ticks_per_second / window.as_secs_f64() * 100.0;
    let total_ticks: u64 = cpu_after
        .iter()
        .zip(&cpu_before)
        .map(|(a, b)| a.saturating_sub(*b))
        .sum();
    let term_after = system.term().await?;
    Ok(Keepalive {
        sessions: options.keepalive_sessions,
        pairs_by_sessions,
        open,
        leader_cpu_percent: percent(cpu_after[leader].saturating_sub(cpu_before[leader])),
        total_cpu_percent: percent(total_ticks),
        lost,
        elections: elections(term_before, term_after),
    })
}

/// Workload 6: workload 1 at `failover_workers`; the leader is killed,
/// later restarted and caught up, several times.
async fn failover(system: &mut dyn LockSystem, options: &Options) -> anyhow::Result<Failover> {
    let running = Workers::start(system, options, Op::OwnLock, options.failover_workers).await?;
    let probe_client = system.connect().await?;
    running.measure_from(Instant::now());
    tokio::time::sleep(options.warmup).await;
    let mut result = Failover::default();
    let bucket_s = BUCKET.as_secs_f64();
    let baseline_buckets = (options.failover_baseline.as_millis() / BUCKET.as_millis()).max(1) as usize;
    for repeat in 0..options.failover_repeats {
        let leader = system.leader().await?;
        tokio::time::sleep(options.failover_baseline).await;
        let timeline = &running.shared.timeline;
        let killed_at = Instant::now();
        system.kill(leader)?;
        *running.shared.kill.lock() = (Some(killed_at), None);
        let probes = tokio::spawn(probe(
            probe_client.clone(),
            options.session_ttl,
            running.shared.clone(),
            killed_at + options.failover_recovery_max,
            repeat,
        ));
        let kill_bucket = timeline.bucket_of(killed_at);
        let baseline_total: u64 = (kill_bucket.saturating_sub(baseline_buckets)..kill_bucket)
            .map(|index| timeline.count(index))
            .sum();
        let baseline_per_bucket = baseline_total as f64 / baseline_buckets as f64;
        anyhow::ensure!(baseline_total > 0, "no throughput before kill {}", repeat + 1);
        // Wait for the first acquire after the kill, then for throughput.
        let deadline = killed_at + options.failover_recovery_max;
        let mut recovered = None;
        loop {
            let now = Instant::now();
            let complete = timeline.bucket_of(now);
            for start in kill_bucket + 1..complete.saturating_sub(RECOVERY_BUCKETS - 1) {
                let sum: u64 = (start..start + RECOVERY_BUCKETS)
                    .map(|index| timeline.count(index))
                    .sum();
                if sum as f64 / RECOVERY_BUCKETS as f64 >= RECOVERED_FRACTION * baseline_per_bucket {
                    recovered = Some(start);
                    break;
                }
            }
            let first_acquire = running.shared.kill.lock().1;
            if recovered.is_some() && first_acquire.is_some() || now >= deadline {
                break;
            }
            tokio::time::sleep(BUCKET).await;
        }
        let first_acquire = running.shared.kill.lock().1.with_context(|| {
            format!(
                "no acquire succeeded within {:?} of kill {}",
                options.failover_recovery_max,
                repeat + 1
            )
        })?;
        result
            .to_acquire_ms
            .push((first_acquire - killed_at).as_secs_f64() * 1e3);
        let kill_offset_s = (killed_at - timeline.start()).as_secs_f64();
        result
            .to_recovered_ms
            .push(recovered.map(|bucket| ((bucket as f64 * bucket_s - kill_offset_s).max(0.0)) * 1e3));
        result.baseline_per_s.push(baseline_per_bucket / bucket_s);
        if repeat == 0 {
            // Let the timeline fill past the kill before copying it.
            let shown_until = killed_at + Duration::from_secs_f64(TIMELINE_AFTER_S);
            tokio::time::sleep_until(shown_until.max(Instant::now())).await;
            let first = kill_bucket.saturating_sub((TIMELINE_BEFORE_S / bucket_s) as usize);
            let last = kill_bucket + (TIMELINE_AFTER_S / bucket_s) as usize;
            result.timeline = (first..last)
                .map(|index| {
                    (
                        index as f64 * bucket_s - kill_offset_s,
                        timeline.count(index) as f64 / bucket_s,
                    )
                })
                .collect();
        }
        probes.abort();
        system.restart(leader)?;
        system.wait_caught_up(leader, options.catch_up_max).await?;
        *running.shared.kill.lock() = (None, None);
    }
    let (recorder, _) = running.stop().await?;
    result.errors = recorder.errors;
    result.first_error = recorder.first_error;
    Ok(result)
}

/// Starts a fresh acquire (of a lock of its own) every [`PROBE_INTERVAL`]
/// after a kill until one succeeds, so that the time to the next acquire
/// does not depend on how long the workers' requests already in flight
/// take to fail. The first success is recorded like a worker's.
async fn probe(
    client: Arc<dyn LockClient>,
    ttl: Duration,
    shared: Arc<LoopShared>,
    deadline: Instant,
    repeat: usize,
) {
    let Ok(session) = client.session(ttl).await.map(Arc::<dyn LockSession>::from) else {
        return;
    };
    let mut probes = tokio::task::JoinSet::new();
    for index in 0..PROBES_MAX {
        if shared.kill.lock().1.is_some() || Instant::now() >= deadline {
            break;
        }
        let session = session.clone();
        let shared = shared.clone();
        probes.spawn(async move {
            let started = Instant::now();
            if let Ok(held) = session.acquire(&format!("probe-{repeat}-{index}")).await {
                {
                    let mut kill = shared.kill.lock();
                    if let (Some(killed), None) = *kill {
                        if started >= killed {
                            kill.1 = Some(Instant::now());
                        }
                    }
                }
                let _ = session.release(held).await;
            }
        });
        tokio::time::sleep(PROBE_INTERVAL).await;
    }
    // Let the probes still waiting finish (and release) in the background.
    while probes.join_next().await.is_some() {}
    let _ = session.close().await;
}

/// The counts at which workloads 5 and 7 pause to measure pairs/s: a
/// thousandth, a hundredth and a tenth of `target`, and `target` (those
/// under 100 left out).
fn growth_stages(target: usize) -> Vec<usize> {
    let mut stages: Vec<usize> = [1_000, 100, 10]
        .iter()
        .map(|divisor| target / divisor)
        .filter(|&count| count >= 100)
        .collect();
    stages.push(target);
    stages.dedup();
    stages
}

/// Workload 7: `target` locks held at once over `scale_sessions` sessions;
/// memory, disk, and the restart of a follower.
async fn scale(system: &mut dyn LockSystem, options: &Options, target: usize) -> anyhow::Result<Scale> {
    let clients = clients_for(system, options.scale_sessions).await?;
    // The client renews every TTL/3. Each leader change charges a quarter
    // of the TTL against a session not renewed since, so a TTL much longer
    // than the workload would let a burst of elections expire live sessions.
    let ttl = SCALE_SESSION_TTL;
    let sessions = open_sessions(&clients, options.scale_sessions, ttl).await?;
    let mut held: Vec<Held> = Vec::with_capacity(target);
    let mut acquire = Duration::ZERO;
    let mut pairs_by_held = Vec::new();
    for stage in growth_stages(target) {
        let started = Instant::now();
        let deadline = started + options.scale_time_max.saturating_sub(acquire);
        let next = Arc::new(AtomicUsize::new(held.len()));
        let tasks: Vec<_> = (0..options.scale_in_flight)
            .map(|_| {
                let sessions = sessions.clone();
                let next = next.clone();
                tokio::spawn(async move {
                    let mut held = Vec::new();
                    loop {
                        let index = next.fetch_add(1, Ordering::Relaxed);
                        if index >= stage || Instant::now() >= deadline {
                            break;
                        }
                        let session = &sessions[index % sessions.len()];
                        held.push(session.acquire(&format!("scale-{index}")).await?);
                    }
                    anyhow::Ok(held)
                })
            })
            .collect();
        for task in tasks {
            held.extend(task.await.context("a scale task panicked")??);
        }
        acquire += started.elapsed();
        if held.len() < stage {
            // Out of time: the count reached is reported.
            break;
        }
        pairs_by_held.push((stage, growth_row(system, options).await?));
    }
    let leader = system.leader().await?;
    let rss_bytes = (0..system.nodes())
        .map(|index| system.usage(index).map_or(0, |usage| usage.rss_bytes))
        .collect();
    let disk = (0..system.nodes())
        .map(|index| disk_bytes(&system.data_dir(index)))
        .collect();
    let restart_to_serving = if system.replicated() {
        let follower = (leader + 1) % system.nodes();
        system.kill(follower)?;
        let restarted = Instant::now();
        system.restart(follower)?;
        system.wait_caught_up(follower, options.catch_up_max).await?;
        Some(restarted.elapsed())
    } else {
        None
    };
    let repair = if system.replicated() {
        repair_from_empty(system, options, leader).await?
    } else {
        None
    };
    let count = held.len();
    // Closing the sessions releases their locks in one command each; the
    // handles dropped afterwards then have nothing to release.
    close_sessions(sessions).await;
    drop(held);
    Ok(Scale {
        target,
        held: count,
        acquire,
        rss_bytes,
        disk_bytes: disk,
        restart_to_serving,
        pairs_by_held,
        repair,
    })
}

/// Repairs a follower of `leader` from an empty data directory while
/// `growth_workers` workers run (see [`RepairFromEmpty`]); `None` where the
/// system cannot.
async fn repair_from_empty(
    system: &mut dyn LockSystem,
    options: &Options,
    leader: usize,
) -> anyhow::Result<Option<RepairFromEmpty>> {
    let Some(leader_pid) = system.pid(leader) else {
        return Ok(None);
    };
    let follower = (leader + 1) % system.nodes();
    let leader_rss_before = system.usage(leader).map_or(0, |usage| usage.rss_bytes);
    let running = Workers::start(system, options, Op::OwnLock, options.growth_workers).await?;
    tokio::time::sleep(options.growth_window / 3).await;
    let sampling = Arc::new(AtomicBool::new(true));
    let sampler = {
        let sampling = sampling.clone();
        tokio::spawn(async move {
            let mut peak = 0;
            while sampling.load(Ordering::SeqCst) {
                let rss = process_usage(leader_pid).map_or(0, |usage| usage.rss_bytes);
                peak = peak.max(rss);
                tokio::time::sleep(RSS_SAMPLE_INTERVAL).await;
            }
            peak
        })
    };
    let from = Instant::now();
    running.measure_from(from);
    let repaired = match system.repair_from_empty(follower) {
        Ok(true) => system
            .wait_caught_up(follower, options.catch_up_max)
            .await
            .map(|()| true),
        other => other,
    };
    let until = Instant::now();
    running.measure_until(until);
    sampling.store(false, Ordering::SeqCst);
    let leader_rss_peak = sampler.await.context("the RSS sampler panicked")?;
    let (recorder, _) = running.stop().await?;
    if !repaired? {
        return Ok(None);
    }
    Ok(Some(RepairFromEmpty {
        to_serving: until - from,
        leader_rss_before,
        leader_rss_peak: leader_rss_peak.max(leader_rss_before),
        during: recorder.summary(until - from),
    }))
}
