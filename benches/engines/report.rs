//! The markdown report: machine, versions, settings, one table per
//! workload, and the key ratios the performance targets are stated in.

use std::fmt::Write as _;
use std::time::Duration;

use super::cli::Options;
use super::floor::Floor;
use super::workloads::{Row, SystemResults};

/// The performance targets, as ratios measured in the same run.
/// Each engine's 1-worker pairs/s as a fraction of the floor.
pub const FLOOR_FRACTION_MIN: f64 = 0.8;
/// Uncontended pairs/s at 64 and 256 workers, and fenced writes/s, against
/// etcd's.
pub const PAIRS_VS_ETCD_MIN: f64 = 3.0;
/// p99 at 64 and 256 workers against etcd's.
pub const P99_VS_ETCD_MAX: f64 = 0.5;
/// Hot-lock handoffs against etcd's.
pub const HANDOFFS_VS_ETCD_MIN: f64 = 2.5;
/// Largest difference between the two engines on any workload.
pub const ENGINE_DIFFERENCE_MAX: f64 = 0.15;
/// Failover median, kill to next acquire.
pub const FAILOVER_MEDIAN_MS_MAX: f64 = 600.0;
/// Resident memory per held lock on the largest node.
pub const RSS_PER_LOCK_BYTES_MAX: u64 = 300;
/// A restarted follower serving again, caught up.
pub const RESTART_TO_SERVING_MAX: Duration = Duration::from_secs(3);
/// Growth of RSS and of the data directory after the churn's warm-up that
/// still counts as flat.
pub const CHURN_GROWTH_MIB_MAX: f64 = 16.0;
/// The leader's CPU with the keepalive target's sessions renewing.
pub const KEEPALIVE_LEADER_CPU_PERCENT_MAX: f64 = 50.0;
/// Sessions the keepalive target is stated for.
pub const KEEPALIVE_SESSIONS_TARGET: usize = 100_000;
/// The moonshot: pairs/s at 64 workers, client included, fsync on.
pub const MOONSHOT_PAIRS_PER_S: f64 = 15_000.0;

const MIB: f64 = 1024.0 * 1024.0;

/// The first line a command prints, or why it could not run.
pub fn command_first_line(exe: &str, args: &[&str]) -> String {
    match std::process::Command::new(exe).args(args).output() {
        Ok(output) => {
            let text = String::from_utf8_lossy(&output.stdout).to_string()
                + &String::from_utf8_lossy(&output.stderr);
            text.lines().next().unwrap_or("").trim().to_string()
        }
        Err(error) => format!("({exe}: {error})"),
    }
}

fn shell(command: &str) -> String {
    command_first_line("sh", &["-c", command])
}

/// What the report says about the machine and the run.
pub struct Context {
    /// Start of the run (UTC, RFC 3339).
    pub date: String,
    /// Wall time of the whole run.
    pub duration: Duration,
    /// quorumlock's git revision.
    pub git_rev: String,
    /// `etcd --version`, or why not.
    pub etcd_version: String,
    /// `redis-server --version`, or why not.
    pub redis_version: String,
    /// The floor measured in this run, or why it could not be.
    pub floor: Result<Floor, String>,
}

fn machine() -> Vec<(String, String)> {
    vec![
        ("CPUs (nproc)".into(), shell("nproc")),
        (
            "CPU model".into(),
            shell("grep -m1 'model name' /proc/cpuinfo | cut -d: -f2"),
        ),
        ("RAM".into(), shell("free -h | awk '/^Mem:/ {print $2}'")),
        ("kernel".into(), shell("uname -sr")),
        (
            "disk (data dirs under /tmp)".into(),
            shell("df -T /tmp | awk 'NR==2 {print $2 \" on \" $1}'"),
        ),
        ("rustc".into(), shell("rustc --version")),
    ]
}

fn num(value: f64) -> String {
    if value >= 100.0 {
        format!("{value:.0}")
    } else if value >= 10.0 {
        format!("{value:.1}")
    } else {
        format!("{value:.2}")
    }
}

fn opt(value: Option<f64>) -> String {
    value.map_or("n/a".to_string(), num)
}

fn elections(value: Option<u64>) -> String {
    value.map_or("n/a".to_string(), |count| count.to_string())
}

fn mib(bytes: u64) -> String {
    format!("{:.0}", bytes as f64 / (1024.0 * 1024.0))
}

/// The median, `None` when there are no values.
fn median(values: &[f64]) -> Option<f64> {
    (!values.is_empty()).then(|| super::workloads::median(values))
}

/// A median with the range of the repetitions behind it: "7565 (7402–7711)".
fn with_range(value: f64, range: Option<(f64, f64)>) -> String {
    match range {
        Some((low, high)) => format!("{} ({}–{})", num(value), num(low), num(high)),
        None => num(value),
    }
}

fn row_cells(row: &Row) -> String {
    let s = &row.summary;
    format!(
        "{} | {} | {} | {} | {} | {} | {} | {}",
        with_range(s.throughput, row.spread.map(|spread| spread.throughput)),
        num(s.p50_ms),
        with_range(s.p99_ms, row.spread.map(|spread| spread.p99_ms)),
        num(s.p999_ms),
        opt(row.leader_cpu_us_per_op),
        opt(row.total_cpu_us_per_op),
        elections(row.elections),
        s.errors
    )
}

fn skipped_line(out: &mut String, results: &[SystemResults]) {
    for system in results {
        if let Some(why) = &system.skipped {
            let _ = writeln!(out, "| {} | skipped ({why}) |", system.name);
        }
    }
}

fn find<'a>(results: &'a [SystemResults], name: &str) -> Option<&'a SystemResults> {
    results
        .iter()
        .find(|system| system.name == name && system.skipped.is_none())
}

fn uncontended(system: &SystemResults, workers: usize) -> Option<&Row> {
    system
        .uncontended
        .iter()
        .find(|(count, _)| *count == workers)
        .map(|(_, row)| row)
}

/// One key ratio: what it compares, the value, the target, met or not.
pub struct Ratio {
    /// What is compared.
    pub what: String,
    /// The measured value.
    pub value: String,
    /// The target.
    pub target: String,
    /// Met, not met, or not measurable.
    pub met: Option<bool>,
}

/// Ours against theirs as "1.50× (300 vs 200 unit)" and whether `good`
/// holds of the ratio; "not measured" when either is missing (or theirs is 0).
fn versus(
    ours: Option<f64>,
    theirs: Option<f64>,
    unit: &str,
    good: impl Fn(f64) -> bool,
) -> (String, Option<bool>) {
    match (ours, theirs) {
        (Some(ours), Some(theirs)) if theirs > 0.0 => {
            let ratio = ours / theirs;
            (
                format!("{ratio:.2}× ({} vs {} {unit})", num(ours), num(theirs)),
                Some(good(ratio)),
            )
        }
        _ => ("not measured".to_string(), None),
    }
}

/// The ratios the performance targets are stated in, each measured in
/// this run.
pub fn key_ratios(results: &[SystemResults], options: &Options, floor: Option<&Floor>) -> Vec<Ratio> {
    let mut ratios = Vec::new();
    let etcd = find(results, "etcd");
    let redis = find(results, "redis");
    let hot_workers = options.hot_workers;
    // The worker counts the throughput target names, where this run has them.
    let high: Vec<usize> = options
        .uncontended_workers
        .iter()
        .copied()
        .filter(|&workers| workers == 64 || workers == 256)
        .collect();
    let high = if high.is_empty() {
        options.uncontended_workers.last().copied().into_iter().collect()
    } else {
        high
    };
    let moonshot_workers = if high.contains(&64) { 64 } else { high[0] };
    for engine in ["quorumlock-raft", "quorumlock-paxos"] {
        let Some(system) = find(results, engine) else {
            continue;
        };
        // 1. The floor.
        if let (Some(floor), Some(one)) = (floor, uncontended(system, 1)) {
            let fraction = one.summary.throughput / floor.pairs_per_s().max(1e-9);
            ratios.push(Ratio {
                what: format!("{engine} 1-worker pairs/s / the floor"),
                value: format!(
                    "{:.0} % ({} of {} pairs/s)",
                    fraction * 100.0,
                    num(one.summary.throughput),
                    num(floor.pairs_per_s())
                ),
                target: format!("≥ {:.0} %", FLOOR_FRACTION_MIN * 100.0),
                met: Some(fraction >= FLOOR_FRACTION_MIN),
            });
        }
        // 2. Throughput and tail latency against etcd.
        for &workers in &high {
            let ours = uncontended(system, workers).map(|row| &row.summary);
            let theirs = etcd
                .and_then(|etcd| uncontended(etcd, workers))
                .map(|row| &row.summary);
            let (value, met) = versus(
                ours.map(|summary| summary.throughput),
                theirs.map(|summary| summary.throughput),
                "pairs/s",
                |ratio| ratio >= PAIRS_VS_ETCD_MIN,
            );
            ratios.push(Ratio {
                what: format!("{engine} / etcd pairs/s, {workers} workers"),
                value,
                target: format!("≥ {PAIRS_VS_ETCD_MIN}×"),
                met,
            });
            let (value, met) = versus(
                ours.map(|summary| summary.p99_ms),
                theirs.map(|summary| summary.p99_ms),
                "ms",
                |ratio| ratio <= P99_VS_ETCD_MAX,
            );
            ratios.push(Ratio {
                what: format!("{engine} p99 / etcd p99, {workers} workers"),
                value,
                target: format!("≤ {P99_VS_ETCD_MAX}×"),
                met,
            });
        }
        let (value, met) = versus(
            system.fenced.as_ref().map(|fenced| fenced.summary.throughput),
            etcd.and_then(|etcd| etcd.fenced.as_ref())
                .map(|fenced| fenced.summary.throughput),
            "writes/s",
            |ratio| ratio >= PAIRS_VS_ETCD_MIN,
        );
        ratios.push(Ratio {
            what: format!(
                "{engine} / etcd fenced writes/s (etcd: Txn), {} workers",
                options.fenced_workers
            ),
            value,
            target: format!("≥ {PAIRS_VS_ETCD_MIN}×"),
            met,
        });
        // 3. The hot lock: the ratio, and every worker served.
        let ours = system.hot.as_ref();
        let (mut value, mut met) = versus(
            ours.map(|hot| hot.row.summary.throughput),
            etcd.and_then(|etcd| etcd.hot.as_ref())
                .map(|hot| hot.row.summary.throughput),
            "handoffs/s",
            |ratio| ratio >= HANDOFFS_VS_ETCD_MIN,
        );
        if let (Some(ours), Some(ratio_met)) = (ours, met) {
            value = format!("{value}; served {}/{}", ours.served, ours.workers);
            met = Some(ratio_met && ours.served == ours.workers);
        }
        ratios.push(Ratio {
            what: format!("{engine} / etcd hot-lock handoffs/s, {hot_workers} workers"),
            value,
            target: format!("≥ {HANDOFFS_VS_ETCD_MIN}×, every worker served"),
            met,
        });
        // 5. Memory, restart and steady state.
        if let Some(scale) = &system.scale {
            if scale.held > 0 {
                let largest = scale.rss_bytes.iter().copied().max().unwrap_or(0);
                let per_lock = largest as f64 / scale.held as f64;
                ratios.push(Ratio {
                    what: format!("{engine} RSS per held lock, largest node ({} locks)", scale.held),
                    value: format!("{per_lock:.0} B ({} MiB)", mib(largest)),
                    target: format!("≤ {RSS_PER_LOCK_BYTES_MAX} B"),
                    met: Some(per_lock <= RSS_PER_LOCK_BYTES_MAX as f64 && scale.held == scale.target),
                });
            }
            if let Some(restart) = scale.restart_to_serving {
                ratios.push(Ratio {
                    what: format!("{engine} follower restart → serving, {} locks held", scale.held),
                    value: format!("{:.2} s", restart.as_secs_f64()),
                    target: format!("≤ {RESTART_TO_SERVING_MAX:?}"),
                    met: Some(restart <= RESTART_TO_SERVING_MAX),
                });
            }
        }
        if let Some(churn) = &system.churn {
            let what = format!(
                "{engine} growth after {:?} of warm-up over {:?} of churn, largest node",
                churn.warmup, churn.duration
            );
            let target = format!("each ≤ {CHURN_GROWTH_MIB_MAX} MiB (flat)");
            let (rss, disk) = (churn.rss_growth(), churn.disk_growth());
            match (rss.iter().max(), disk.iter().max()) {
                (Some(&rss), Some(&disk)) => ratios.push(Ratio {
                    what,
                    value: format!(
                        "RSS {:+.1} MiB, data dir {:+.1} MiB",
                        rss as f64 / MIB,
                        disk as f64 / MIB
                    ),
                    target,
                    met: Some(
                        rss as f64 <= CHURN_GROWTH_MIB_MAX * MIB && disk as f64 <= CHURN_GROWTH_MIB_MAX * MIB,
                    ),
                }),
                _ => ratios.push(Ratio {
                    what,
                    value: "not measured (no sample after the warm-up)".to_string(),
                    target,
                    met: None,
                }),
            }
        }
        // 6. Keepalive scale.
        if let Some(keepalive) = &system.keepalive {
            ratios.push(Ratio {
                what: format!(
                    "{engine} leader CPU, {} sessions renewing at TTL/3",
                    keepalive.sessions
                ),
                value: format!(
                    "{:.1} % of a core; {} sessions lost",
                    keepalive.leader_cpu_percent, keepalive.lost
                ),
                target: format!("< {KEEPALIVE_LEADER_CPU_PERCENT_MAX:.0} % (100,000 sessions), none lost"),
                met: Some(
                    keepalive.leader_cpu_percent < KEEPALIVE_LEADER_CPU_PERCENT_MAX
                        && keepalive.sessions >= KEEPALIVE_SESSIONS_TARGET
                        && keepalive.lost == 0,
                ),
            });
        }
        // 7. The moonshot.
        if let Some(ours) = uncontended(system, moonshot_workers) {
            let redis_ratio = redis
                .and_then(|redis| uncontended(redis, moonshot_workers))
                .map(|redis| ours.summary.throughput / redis.summary.throughput.max(1e-9));
            ratios.push(Ratio {
                what: format!("{engine} pairs/s, {moonshot_workers} workers (moonshot)"),
                value: format!(
                    "{}{}",
                    num(ours.summary.throughput),
                    redis_ratio.map_or(String::new(), |ratio| format!(" ({ratio:.3}× Redis)"))
                ),
                target: format!("≥ {MOONSHOT_PAIRS_PER_S:.0}"),
                met: Some(ours.summary.throughput >= MOONSHOT_PAIRS_PER_S),
            });
        }
    }
    for name in ["quorumlock-raft", "quorumlock-paxos", "etcd"] {
        let Some(system) = find(results, name) else {
            continue;
        };
        let Some(failover) = &system.failover else {
            continue;
        };
        let acquire = median(&failover.to_acquire_ms);
        let recovered: Vec<f64> = failover.to_recovered_ms.iter().flatten().copied().collect();
        ratios.push(Ratio {
            what: format!(
                "{name} failover median, kill → next acquire ({} kills)",
                failover.to_acquire_ms.len()
            ),
            value: format!(
                "{} ms (to 90 % throughput: {} ms, {} of {} recovered)",
                opt(acquire),
                opt(median(&recovered)),
                recovered.len(),
                failover.to_recovered_ms.len()
            ),
            target: if name == "etcd" {
                "reference".to_string()
            } else {
                format!("< {FAILOVER_MEDIAN_MS_MAX} ms")
            },
            met: if name == "etcd" {
                None
            } else {
                acquire.map(|ms| ms < FAILOVER_MEDIAN_MS_MAX)
            },
        });
    }
    for name in ["quorumlock-raft", "quorumlock-paxos"] {
        let Some(system) = find(results, name) else {
            continue;
        };
        let spurious: u64 = system
            .uncontended
            .iter()
            .map(|(_, row)| row.elections.unwrap_or(0))
            .chain(system.hot.iter().map(|hot| hot.row.elections.unwrap_or(0)))
            .chain(system.fenced.iter().map(|row| row.elections.unwrap_or(0)))
            .chain(system.herd.iter().map(|herd| herd.elections.unwrap_or(0)))
            .chain(system.keepalive.iter().map(|k| k.elections.unwrap_or(0)))
            .sum();
        ratios.push(Ratio {
            what: format!("{name} spurious elections outside failover"),
            value: spurious.to_string(),
            target: "0".to_string(),
            met: Some(spurious == 0),
        });
    }
    // 4. The engines against each other.
    if let (Some(raft), Some(paxos)) = (
        find(results, "quorumlock-raft"),
        find(results, "quorumlock-paxos"),
    ) {
        let mut pairs: Vec<(String, f64, f64)> = Vec::new();
        for (workers, row) in &raft.uncontended {
            if let Some(other) = uncontended(paxos, *workers) {
                pairs.push((
                    format!("uncontended {workers} pairs/s"),
                    row.summary.throughput,
                    other.summary.throughput,
                ));
            }
        }
        if let (Some(a), Some(b)) = (&raft.hot, &paxos.hot) {
            pairs.push((
                "hot-lock handoffs/s".into(),
                a.row.summary.throughput,
                b.row.summary.throughput,
            ));
        }
        if let (Some(a), Some(b)) = (&raft.fenced, &paxos.fenced) {
            pairs.push((
                "fenced writes/s".into(),
                a.summary.throughput,
                b.summary.throughput,
            ));
        }
        if let (Some(a), Some(b)) = (&raft.herd, &paxos.herd) {
            pairs.push((
                "herd total time (s)".into(),
                a.total.as_secs_f64(),
                b.total.as_secs_f64(),
            ));
        }
        if let (Some(a), Some(b)) = (&raft.keepalive, &paxos.keepalive) {
            pairs.push((
                "keepalive leader CPU %".into(),
                a.leader_cpu_percent,
                b.leader_cpu_percent,
            ));
        }
        if let (Some(a), Some(b)) = (&raft.failover, &paxos.failover) {
            if let (Some(a), Some(b)) = (median(&a.to_acquire_ms), median(&b.to_acquire_ms)) {
                pairs.push(("failover median (ms)".into(), a, b));
            }
        }
        if let (Some(a), Some(b)) = (&raft.scale, &paxos.scale) {
            pairs.push((
                "scale acquire rate (locks/s)".into(),
                a.held as f64 / a.acquire.as_secs_f64().max(1e-9),
                b.held as f64 / b.acquire.as_secs_f64().max(1e-9),
            ));
        }
        for (what, a, b) in pairs {
            let difference = (a - b).abs() / a.max(b).max(1e-9);
            ratios.push(Ratio {
                what: format!("raft vs paxos: {what}"),
                value: format!("{} vs {} ({:.0} % apart)", num(a), num(b), difference * 100.0),
                target: format!("within {:.0} %", ENGINE_DIFFERENCE_MAX * 100.0),
                met: Some(difference <= ENGINE_DIFFERENCE_MAX),
            });
        }
    }
    ratios
}

/// Workload 1 over mutual TLS against the same engine in plaintext: the
/// cost of TLS, measured in this run.
fn tls_cost(w: &mut String, results: &[SystemResults], options: &Options) {
    let _ = writeln!(
        w,
        "\n### TLS cost (workload 1: the `+tls` rows against plaintext)\n\n\
         Every link over mutual TLS (rustls; client and peer certificates from `quorumlock certs`), \
         connections established before the window, so this is the per-call cost, not handshakes.\n"
    );
    variant_cost(w, results, options, super::quorumlock::TLS_SUFFIX, "TLS");
}

/// Workload 1 with metrics on against the same engine with them off: the
/// cost of metrics, measured in this run (target: under 3 % of pairs/s at
/// 64 workers).
fn metrics_cost(w: &mut String, results: &[SystemResults], options: &Options) {
    let _ = writeln!(
        w,
        "\n### Metrics cost (workload 1: the `+metrics` rows against metrics off)\n\n\
         Every node with `--metrics-listen`: proposals, fsyncs, peer round trips, gRPC calls, waits and \
         holds recorded, and `/metrics` scraped once a second per node (Prometheus's default is every 15 s). \
         Target: metrics on cost under 3 % of pairs/s at 64 workers (ratio ≥ 0.97).\n"
    );
    variant_cost(w, results, options, super::quorumlock::METRICS_SUFFIX, "metrics");
}

/// The table of a variant's workload 1 against the plain engine's.
fn variant_cost(w: &mut String, results: &[SystemResults], options: &Options, suffix: &str, what: &str) {
    let _ = writeln!(
        w,
        "| engine | workers | pairs/s {what} / plain | p50 ms plain → {what} | p99 ms plain → {what} | leader CPU µs/op plain → {what} |\n\
         |---|---|---|---|---|---|"
    );
    for engine in ["quorumlock-raft", "quorumlock-paxos"] {
        let (Some(plain), Some(variant)) =
            (find(results, engine), find(results, &format!("{engine}{suffix}")))
        else {
            continue;
        };
        for &workers in &options.uncontended_workers {
            let (Some(plain), Some(variant)) = (uncontended(plain, workers), uncontended(variant, workers))
            else {
                continue;
            };
            let (p, t) = (&plain.summary, &variant.summary);
            let _ = writeln!(
                w,
                "| {engine} | {workers} | {:.2} | {} → {} | {} → {} | {} → {} |",
                t.throughput / p.throughput.max(1e-9),
                num(p.p50_ms),
                num(t.p50_ms),
                num(p.p99_ms),
                num(t.p99_ms),
                opt(plain.leader_cpu_us_per_op),
                opt(variant.leader_cpu_us_per_op),
            );
        }
    }
}

/// Uncontended pairs/s at `growth_workers` while workload 5's sessions or
/// workload 7's locks build up.
fn growth_table(
    w: &mut String,
    results: &[SystemResults],
    options: &Options,
    what: &str,
    rows: impl Fn(&SystemResults) -> Option<&[(usize, Row)]>,
) {
    let _ = writeln!(
        w,
        "\nUncontended pairs/s ({} workers, {:?} window) with this many {what}:\n\n\
         | system | {what} | pairs/s | p50 ms | p99 ms | leader CPU µs/op |\n|---|---|---|---|---|---|",
        options.growth_workers, options.growth_window
    );
    for system in results {
        for (count, row) in rows(system).unwrap_or_default() {
            let _ = writeln!(
                w,
                "| {} | {} | {} | {} | {} | {} |",
                system.name,
                count,
                num(row.summary.throughput),
                num(row.summary.p50_ms),
                num(row.summary.p99_ms),
                opt(row.leader_cpu_us_per_op)
            );
        }
    }
}

/// Renders REPORT.md.
pub fn render(results: &[SystemResults], options: &Options, context: &Context, charts: &[String]) -> String {
    let mut out = String::new();
    let w = &mut out;
    let _ = writeln!(w, "# quorumlock engines benchmark\n");
    let _ = writeln!(
        w,
        "Generated by `cargo bench --bench engines`{} on {}; the whole run took {:.1} min. \
         Every system ran on this one machine, with the load generator (the benchmark \
         process) on the same cores as the servers.\n",
        if options.short {
            " -- --short (CI mode: tiny sizes, not for comparison)".to_string()
        } else {
            // What was asked for: a subset of systems or workloads, or
            // other sizes, is no full run.
            let asked: Vec<String> = std::env::args().skip(1).filter(|arg| arg != "--bench").collect();
            if asked.is_empty() {
                String::new()
            } else {
                format!(" -- {}", asked.join(" "))
            }
        },
        context.date,
        context.duration.as_secs_f64() / 60.0
    );
    let _ = writeln!(w, "## Machine and versions\n\n| | |\n|---|---|");
    for (key, value) in machine() {
        let _ = writeln!(w, "| {key} | {value} |");
    }
    let _ = writeln!(w, "| quorumlock | git {} |", context.git_rev);
    let _ = writeln!(w, "| etcd | {} |", context.etcd_version);
    let _ = writeln!(w, "| redis | {} |", context.redis_version);
    let _ = writeln!(w, "\n## Settings\n");
    let _ = writeln!(
        w,
        "- quorumlock (both engines) and etcd: {} nodes on 127.0.0.1, heartbeat {} ms, election \
         timeout {} ms, fsync on (both quorumlock engines always sync; etcd's default), each node \
         with its own data directory.\n\
         - quorumlock is driven by its Rust client; etcd by gRPC stubs generated from its own \
         protobuf files (v3 Lock/Unlock under a lease, leases renewed over LeaseKeepAlive streams), \
         each client starting at the leader and giving each attempt {:?} before repeating it on \
         the next member (etcd itself would hold a request that arrived during an election for \
         7 s); Redis by the `redis` crate (multiplexed connection).\n\
         - Redis: one `redis-server`, {}. Acquire is `SET NX PX` retried every {:?} + up to {:?} \
         jitter (Redis has no wait queue); release is a compare-and-delete Lua script.\n\
         - One client connection per {} sessions, for every system.\n\
         - Warm-up {:?}, measured window {:?}; worker sessions' TTL {:?}.\n\
         - Latency is one operation as the worker sees it: acquire+release (workloads 1, 2, 6), \
         acquire+put+release (4), the wait for the grant (3). CPU per operation is CPU time from \
         /proc over the measured window divided by the operations in it: the leader's, and all \
         nodes' together.\n\
         - \"Elections\" is the leader's term (quorumlock: term or ballot round; etcd: raft term) \
         after the workload minus before it; outside the failover workload it must be 0.",
        options.nodes,
        options.heartbeat_ms,
        options.election_timeout_ms,
        super::etcd::ATTEMPT_TIMEOUT,
        super::redis::PERSISTENCE,
        super::redis::RETRY_DELAY,
        super::redis::RETRY_JITTER_MAX,
        super::cli::SESSIONS_PER_CLIENT_MAX,
        options.warmup,
        options.window,
        options.session_ttl,
    );
    for system in results {
        if let Some(why) = &system.skipped {
            let _ = writeln!(w, "- **{}: skipped ({why})**", system.name);
        }
    }

    let _ = writeln!(w, "\n## The floor\n");
    match &context.floor {
        Ok(floor) => {
            let _ = writeln!(
                w,
                "Measured in this run, the median of {} samples each: a unary gRPC round trip on \
                 loopback (`grpc.health.v1.Health/Check`, one HTTP/2 connection, `TCP_NODELAY`, the \
                 server on a thread and runtime of its own) **{:.0} µs**, and writing {} B to a file \
                 under /tmp then `fdatasync` **{:.0} µs**. One worker's acquire or release needs at \
                 least a client round trip, a leader-to-follower round trip and a synced write, so \
                 its pairs/s are at most `1 / (2 × (client RTT + peer RTT + fsync))` = **{} pairs/s**. \
                 Measured at the start and at the end of the run, the lower of each taken: {}.",
                floor.samples,
                floor.grpc_rtt_us,
                super::floor::FSYNC_BYTES,
                floor.fsync_us,
                num(floor.pairs_per_s()),
                floor
                    .rounds
                    .iter()
                    .map(|(rtt, fsync)| format!("{rtt:.0} µs and {fsync:.0} µs"))
                    .collect::<Vec<_>>()
                    .join(", then ")
            );
        }
        Err(why) => {
            let _ = writeln!(w, "Not measured: {why}");
        }
    }

    let _ = writeln!(w, "\n## Key ratios (the performance targets)\n");
    let _ = writeln!(
        w,
        "Figures of workloads 1 to 4 are the median of {} measured windows (each after its own \
         warm-up, with fresh sessions); the tables give their range as (min–max). Failover is the \
         median over its kills; scale, keepalive and churn ran once.\n",
        options.repeat
    );
    let _ = writeln!(w, "| comparison | measured | target | met |\n|---|---|---|---|");
    for ratio in key_ratios(results, options, context.floor.as_ref().ok()) {
        let met = match ratio.met {
            Some(true) => "met",
            Some(false) => "**not met**",
            None => "—",
        };
        let _ = writeln!(
            w,
            "| {} | {} | {} | {met} |",
            ratio.what, ratio.value, ratio.target
        );
    }

    let header = "| system | ops/s | p50 ms | p99 ms | p999 ms | leader CPU µs/op | all-nodes CPU µs/op | elections | failed ops |\n|---|---|---|---|---|---|---|---|---|";
    let _ = writeln!(
        w,
        "\n## 1. Uncontended (own lock per worker, acquire+release pairs)\n"
    );
    for &workers in &options.uncontended_workers {
        let _ = writeln!(w, "\n**{workers} worker(s)**\n\n{header}");
        for system in results {
            if let Some(row) = uncontended(system, workers) {
                let _ = writeln!(w, "| {} | {} |", system.name, row_cells(row));
            }
        }
        skipped_line(w, results);
    }

    tls_cost(w, results, options);
    metrics_cost(w, results, options);

    let _ = writeln!(
        w,
        "\n## 2. Hot lock ({} workers on one lock; ops = handoffs)\n\n{header}",
        options.hot_workers
    );
    for system in results {
        if let Some(hot) = &system.hot {
            let _ = writeln!(w, "| {} | {} |", system.name, row_cells(&hot.row));
        }
    }
    skipped_line(w, results);
    let _ = writeln!(
        w,
        "\nFairness (pairs per worker in the window):\n\n| system | served | min | max |\n|---|---|---|---|"
    );
    for system in results {
        if let Some(hot) = &system.hot {
            let _ = writeln!(
                w,
                "| {} | {}/{} | {} | {} |",
                system.name, hot.served, hot.workers, hot.per_worker_min, hot.per_worker_max
            );
        }
    }

    let _ = writeln!(
        w,
        "\n## 3. Thundering herd ({} sessions queue on one lock, each releases once granted)\n\n\
         | system | total s | handoffs/s | wait p50 ms | wait p99 ms | wait p999 ms | leader CPU µs/handoff | all-nodes CPU µs/handoff | held once | elections |\n\
         |---|---|---|---|---|---|---|---|---|---|",
        options.herd_sessions
    );
    for system in results {
        if let Some(herd) = &system.herd {
            let _ = writeln!(
                w,
                "| {} | {} | {} | {} | {} | {} | {} | {} | {}/{} | {} |",
                system.name,
                with_range(herd.total.as_secs_f64(), herd.total_range),
                num(herd.sessions as f64 / herd.total.as_secs_f64().max(1e-9)),
                num(herd.wait.p50_ms),
                num(herd.wait.p99_ms),
                num(herd.wait.p999_ms),
                opt(herd.leader_cpu_us_per_handoff),
                opt(herd.total_cpu_us_per_handoff),
                herd.held_once,
                herd.sessions,
                elections(herd.elections)
            );
        }
    }
    skipped_line(w, results);
    let _ = writeln!(
        w,
        "\nRedis has no queue: its herd polls with `SET NX`, so its order is not FIFO."
    );

    let _ = writeln!(
        w,
        "\n## 4. Fenced writes ({} workers: acquire → put {} B with the token → release)\n\n{header}",
        options.fenced_workers, options.fenced_value_bytes
    );
    for system in results {
        if let Some(row) = &system.fenced {
            let _ = writeln!(w, "| {} | {} |", system.name, row_cells(row));
        }
    }
    skipped_line(w, results);
    let _ = writeln!(
        w,
        "\nquorumlock: `Put` fenced by the lock's token (refused unless current). etcd: a `Txn` that \
         puts only if the lock key still exists (`CreateRevision(lock key) > 0`), the pattern etcd \
         documents for lock-protected writes. Redis: a plain `SET` — **unfenced**, a paused former \
         holder can still overwrite."
    );

    let _ = writeln!(
        w,
        "\n## 5. Session keepalive ({} sessions, TTL {:?}, renewed every TTL/3 over one keep-alive stream \
         per connection of {} sessions; CPU over {:?})\n\n\
         | system | open all s | leader CPU % | all-nodes CPU % | sessions lost | elections |\n|---|---|---|---|---|---|",
        options.keepalive_sessions,
        options.keepalive_ttl,
        super::cli::SESSIONS_PER_CLIENT_MAX,
        options.keepalive_window
    );
    for system in results {
        if let Some(k) = &system.keepalive {
            let _ = writeln!(
                w,
                "| {} | {:.2} | {:.1} | {:.1} | {} | {} |",
                system.name,
                k.open.as_secs_f64(),
                k.leader_cpu_percent,
                k.total_cpu_percent,
                k.lost,
                elections(k.elections)
            );
        }
    }
    skipped_line(w, results);
    let _ = writeln!(
        w,
        "\nRedis: n/a (no sessions or leases; a holder extends each lock's PX itself)."
    );
    growth_table(w, results, options, "sessions open", |system| {
        system.keepalive.as_ref().map(|k| k.pairs_by_sessions.as_slice())
    });

    let _ = writeln!(
        w,
        "\n## 6. Failover (workload 1 at {} workers; SIGKILL of the leader, {} times; the node is restarted and caught up between kills)\n\n\
         | system | kill → next acquire, median ms | all (ms) | kill → 90 % throughput, median ms | all (ms) | baseline pairs/s | failed ops |\n|---|---|---|---|---|---|---|",
        options.failover_workers, options.failover_repeats
    );
    for system in results {
        if let Some(f) = &system.failover {
            let recovered: Vec<f64> = f.to_recovered_ms.iter().flatten().copied().collect();
            let list = |values: &[f64]| {
                values
                    .iter()
                    .map(|v| format!("{v:.0}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            let recovered_all = f
                .to_recovered_ms
                .iter()
                .map(|v| v.map_or("not within limit".to_string(), |v| format!("{v:.0}")))
                .collect::<Vec<_>>()
                .join(", ");
            let _ = writeln!(
                w,
                "| {} | {} | {} | {} | {} | {} | {} |",
                system.name,
                opt(median(&f.to_acquire_ms)),
                list(&f.to_acquire_ms),
                opt(median(&recovered)),
                recovered_all,
                opt(median(&f.baseline_per_s)),
                f.errors
            );
        }
    }
    skipped_line(w, results);
    let _ = writeln!(
        w,
        "\n\"Next acquire\" is the first acquire *started* after the kill that succeeded: by a \
         worker, or by one of the probes started every {:?} after the kill (each a fresh acquire \
         of its own lock), so that it does not wait for requests already in flight to time out. \
         \"90 % throughput\" is the start of the first {} ms span after the kill whose pairs/s \
         average at least 90 % of the {:?} before the kill (limit {:?}). Redis: n/a (one node).",
        super::workloads::PROBE_INTERVAL,
        super::workloads::RECOVERY_BUCKETS as u128 * super::measure::BUCKET.as_millis(),
        options.failover_baseline,
        options.failover_recovery_max
    );

    let _ = writeln!(
        w,
        "\n## 7. Scale (locks held at once over {} sessions, {} acquires in flight; quorumlock and Redis {} locks, etcd {})\n\n\
         | system | held | acquire s | locks/s | RSS per node MiB | data dir per node MiB | follower restart → serving s |\n|---|---|---|---|---|---|---|",
        options.scale_sessions, options.scale_in_flight, options.scale_locks, options.scale_locks_etcd
    );
    for system in results {
        if let Some(s) = &system.scale {
            let _ = writeln!(
                w,
                "| {} | {}/{} | {:.1} | {} | {} | {} | {} |",
                system.name,
                s.held,
                s.target,
                s.acquire.as_secs_f64(),
                num(s.held as f64 / s.acquire.as_secs_f64().max(1e-9)),
                s.rss_bytes
                    .iter()
                    .map(|b| mib(*b))
                    .collect::<Vec<_>>()
                    .join(" / "),
                s.disk_bytes
                    .iter()
                    .map(|b| mib(*b))
                    .collect::<Vec<_>>()
                    .join(" / "),
                s.restart_to_serving
                    .map_or("n/a".to_string(), |d| format!("{:.2}", d.as_secs_f64()))
            );
        }
    }
    skipped_line(w, results);
    let _ = writeln!(
        w,
        "\nAcquisition stops at the target or after {:?}, whichever comes first; \"held\" says \
         how many were reached. The data directory size (`du -sb`) stands for the snapshot size: \
         it holds the log and the state the node would restore from. \"Restart → serving\" is from \
         starting a SIGKILLed follower until it answers and has applied what the leader had \
         committed.{}",
        options.scale_time_max,
        if options.scale_locks_etcd < options.scale_locks {
            " etcd holds fewer locks because its Lock API (one put and a range per lock) would not fit the run's time budget at 1,000,000."
        } else {
            ""
        }
    );
    if results
        .iter()
        .any(|system| system.scale.as_ref().is_some_and(|s| s.repair.is_some()))
    {
        let _ = writeln!(
            w,
            "\nA follower repaired from an empty data directory with all locks held (`serve --repair` after its \
             directory was deleted): the whole state reaches it as a snapshot, while {} workers take and \
             release locks of their own.\n\n\
             | system | held | repair → serving s | leader RSS before → peak MiB | pairs/s meanwhile | p50 ms | p99 ms | errors |\n\
             |---|---|---|---|---|---|---|---|",
            options.growth_workers
        );
        for system in results {
            let Some((scale, repair)) = system.scale.as_ref().and_then(|s| Some((s, s.repair.as_ref()?)))
            else {
                continue;
            };
            let _ = writeln!(
                w,
                "| {} | {} | {:.2} | {} → {} | {} | {} | {} | {} |",
                system.name,
                scale.held,
                repair.to_serving.as_secs_f64(),
                mib(repair.leader_rss_before),
                mib(repair.leader_rss_peak),
                num(repair.during.throughput),
                num(repair.during.p50_ms),
                num(repair.during.p99_ms),
                repair.during.errors
            );
        }
    }

    growth_table(w, results, options, "locks held", |system| {
        system.scale.as_ref().map(|s| s.pairs_by_held.as_slice())
    });

    let churned: Vec<(String, &super::churn::Churn)> = results
        .iter()
        .filter_map(|system| system.churn.as_ref().map(|churn| (system.name.clone(), churn)))
        .collect();
    if !churned.is_empty() {
        let _ = writeln!(
            w,
            "\n## 8. Churn ({} clients each opening a session, taking a lock, writing {} B fenced, \
             releasing and closing, in a loop, for {:?}; memory and disk sampled every {:?})\n",
            options.churn_clients,
            options.fenced_value_bytes,
            options.churn_duration,
            options.churn_sample_every
        );
        super::churn::render(w, &churned);
    }

    let _ = writeln!(w, "\n## Charts\n");
    for chart in charts {
        let _ = writeln!(w, "![{chart}]({chart})\n");
    }
    if !options.short {
        let _ = writeln!(
            w,
            "## Where the time goes\n\n\
             Profiled apart from this run, since sampling costs CPU: [PROFILE.md](PROFILE.md) \
             (`python3 benches/profile.py`, which names the git revision it profiled) splits \
             the CPU of workload 1 at 1 and 64 workers by process and, for the leader and the \
             client, by component.\n"
        );
    }

    let mut notes = String::new();
    for system in results {
        for note in &system.notes {
            let _ = writeln!(notes, "- {}: {note}", system.name);
        }
        for failure in &system.failures {
            let _ = writeln!(notes, "- **{} failed** {failure}", system.name);
        }
        if let Some(f) = &system.failover {
            if let Some(error) = &f.first_error {
                let _ = writeln!(
                    notes,
                    "- {}: {} operations failed during the failovers (retried by the workers); the first: {error}",
                    system.name, f.errors
                );
            }
        }
    }
    if !notes.is_empty() {
        let _ = writeln!(w, "## Notes\n\n{notes}");
    }
    out
}
