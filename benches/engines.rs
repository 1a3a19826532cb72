//! System benchmark: both quorumlock engines, etcd and Redis under
//! the same eight workloads (the eighth, churn, on quorumlock only), driven by the same client machinery, measured
//! by the same code, reported as benches/results/REPORT.md plus SVG charts.
//!
//! `cargo bench --bench engines` runs the full benchmark (every measured
//! window of workloads 1 to 4 three times, `--repeat N` to change that);
//! `cargo bench --bench engines -- --short` (or `QUORUMLOCK_BENCH_SHORT=1`)
//! runs every system and workload at tiny sizes for CI, writes under the
//! target directory, and exits non-zero if any workload failed.

// The crate root of a bench target finds modules next to it, not in
// benches/engines/, hence the paths.
#[path = "engines/charts.rs"]
mod charts;
#[path = "engines/churn.rs"]
mod churn;
#[path = "engines/cli.rs"]
mod cli;
#[path = "engines/etcd.rs"]
mod etcd;
#[path = "engines/floor.rs"]
mod floor;
#[path = "engines/idle.rs"]
mod idle;
#[path = "engines/measure.rs"]
mod measure;
#[path = "engines/quorumlock.rs"]
mod quorumlock;
#[path = "engines/redis.rs"]
mod redis;
#[path = "engines/report.rs"]
mod report;
#[path = "engines/systems.rs"]
mod systems;
#[path = "engines/workloads.rs"]
mod workloads;

use std::process::ExitCode;
use std::time::{Instant, SystemTime};

use cli::Options;
use systems::LockSystem;
use workloads::SystemResults;

/// The systems in report order. The `+tls` ones run workload 1 only, over
/// mutual TLS, so that TLS's cost is measured beside the plaintext rows;
/// the `+metrics` ones likewise with metrics on and scraped.
const SYSTEMS: [&str; 8] = [
    "quorumlock-raft",
    "quorumlock-paxos",
    "etcd",
    "redis",
    "quorumlock-raft+tls",
    "quorumlock-paxos+tls",
    "quorumlock-raft+metrics",
    "quorumlock-paxos+metrics",
];

/// Whether `name` is a variant that runs workload 1 only.
fn variant(name: &str) -> bool {
    name.ends_with(quorumlock::TLS_SUFFIX) || name.ends_with(quorumlock::METRICS_SUFFIX)
}

async fn start(name: &str, options: &Options) -> anyhow::Result<Box<dyn LockSystem>> {
    Ok(match name {
        "quorumlock-raft"
        | "quorumlock-paxos"
        | "quorumlock-raft+tls"
        | "quorumlock-paxos+tls"
        | "quorumlock-raft+metrics"
        | "quorumlock-paxos+metrics" => {
            let tls = name.ends_with(quorumlock::TLS_SUFFIX);
            let metrics = name.ends_with(quorumlock::METRICS_SUFFIX);
            let engine = name
                .trim_start_matches("quorumlock-")
                .trim_end_matches(quorumlock::TLS_SUFFIX)
                .trim_end_matches(quorumlock::METRICS_SUFFIX);
            Box::new(
                quorumlock::QuorumlockSystem::start(
                    engine,
                    options.nodes,
                    options.heartbeat_ms,
                    options.election_timeout_ms,
                    tls,
                    metrics,
                )
                .await?,
            )
        }
        "etcd" => Box::new(
            etcd::EtcdSystem::start(options.nodes, options.heartbeat_ms, options.election_timeout_ms).await?,
        ),
        "redis" => Box::new(redis::RedisSystem::start().await?),
        other => anyhow::bail!("unknown system {other}"),
    })
}

fn missing(name: &str) -> Option<String> {
    match name {
        "etcd" if !etcd::installed() => Some(format!("etcd not installed: no {}", etcd::ETCD_EXE)),
        "redis" if !redis::installed() => Some(format!("redis not installed: no {}", redis::REDIS_EXE)),
        _ => None,
    }
}

fn git_rev() -> String {
    let dir = env!("CARGO_MANIFEST_DIR");
    let rev = report::command_first_line("git", &["-C", dir, "rev-parse", "--short", "HEAD"]);
    let dirty = std::process::Command::new("git")
        // The report's own files do not count: a rerun overwrites them.
        .args([
            "-C",
            dir,
            "status",
            "--porcelain",
            "--untracked-files=no",
            "--",
            ".",
            ":(exclude)benches/results",
        ])
        .output()
        .map(|output| !output.stdout.is_empty())
        .unwrap_or(false);
    if dirty {
        format!("{rev} (with uncommitted changes)")
    } else {
        rev
    }
}

async fn run(options: Options) -> anyhow::Result<bool> {
    let began = Instant::now();
    let date = humantime::format_rfc3339_seconds(SystemTime::now()).to_string();
    eprintln!(
        "engines benchmark ({} mode), report into {}",
        if options.short { "short" } else { "full" },
        options.out_dir.display()
    );
    let first_floor = floor::measure(options.floor_samples)
        .await
        .map_err(|error| format!("{error:#}"));
    match &first_floor {
        Ok(floor) => eprintln!(
            "floor: gRPC round trip {:.0} µs, 512 B fdatasync {:.0} µs: {:.0} pairs/s for one worker",
            floor.grpc_rtt_us,
            floor.fsync_us,
            floor.pairs_per_s()
        ),
        Err(why) => eprintln!("floor not measured: {why}"),
    }
    let mut results = Vec::new();
    for name in SYSTEMS {
        if !options.selected(name) {
            continue;
        }
        let mut system_results = SystemResults {
            name: name.to_string(),
            ..SystemResults::default()
        };
        if let Some(why) = missing(name) {
            eprintln!("[{name}] skipped ({why})");
            system_results.skipped = Some(why);
            results.push(system_results);
            continue;
        }
        match start(name, &options).await {
            Ok(mut system) if variant(name) => {
                workloads::run_uncontended(system.as_mut(), &options, &mut system_results).await;
            }
            Ok(mut system) => {
                workloads::run_all(system.as_mut(), &options, &mut system_results).await;
            }
            Err(error) => {
                eprintln!("[{name}] could not start: {error:#}");
                system_results.failures.push(format!("start: {error:#}"));
            }
        }
        results.push(system_results);
    }
    let cdf_workers = if options.uncontended_workers.contains(&64) {
        64
    } else {
        options.uncontended_workers.last().copied().unwrap_or(1)
    };
    // Measured again at the end; the lower of the two is the floor.
    let floor = match (first_floor, floor::measure(options.floor_samples).await) {
        (Ok(first), Ok(last)) => Ok(first.lower(last)),
        (Ok(first), Err(_)) => Ok(first),
        (Err(_), Ok(last)) => Ok(last),
        (Err(why), Err(_)) => Err(why),
    };
    let charts = charts::draw_all(&options.out_dir, &results, cdf_workers)?;
    let context = report::Context {
        date,
        duration: began.elapsed(),
        git_rev: git_rev(),
        etcd_version: if etcd::installed() {
            etcd::version()
        } else {
            "not installed".to_string()
        },
        redis_version: if redis::installed() {
            redis::version()
        } else {
            "not installed".to_string()
        },
        floor,
    };
    let text = report::render(&results, &options, &context, &charts);
    let path = options.out_dir.join("REPORT.md");
    std::fs::write(&path, &text)?;
    eprintln!(
        "\n{}",
        key_ratio_lines(&results, &options, context.floor.as_ref().ok())
    );
    eprintln!(
        "report written to {} ({:.1} min)",
        path.display(),
        began.elapsed().as_secs_f64() / 60.0
    );
    let failed: Vec<String> = results
        .iter()
        .flat_map(|system| {
            system
                .failures
                .iter()
                .map(move |failure| format!("{}: {failure}", system.name))
        })
        .collect();
    for failure in &failed {
        eprintln!("FAILED {failure}");
    }
    Ok(failed.is_empty())
}

fn key_ratio_lines(results: &[SystemResults], options: &Options, floor: Option<&floor::Floor>) -> String {
    report::key_ratios(results, options, floor)
        .into_iter()
        .map(|ratio| {
            let met = match ratio.met {
                Some(true) => "met",
                Some(false) => "NOT MET",
                None => "-",
            };
            format!("{}: {} (target {}) {met}", ratio.what, ratio.value, ratio.target)
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn main() -> ExitCode {
    let options = Options::from_args(std::env::args().skip(1));
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("starting the runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(options)) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(error) => {
            eprintln!("engines benchmark failed: {error:#}");
            ExitCode::FAILURE
        }
    }
}
