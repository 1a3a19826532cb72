//! Command-line options. `cargo bench` passes flags of its own (`--bench`),
//! so unknown arguments are ignored rather than refused.

use std::path::PathBuf;
use std::time::Duration;

/// Sessions (and their streams) one client connection carries at most; more
/// sessions get more clients, for every system alike.
pub const SESSIONS_PER_CLIENT_MAX: usize = 100;

/// Everything a run is parametrised by.
#[derive(Debug, Clone)]
pub struct Options {
    /// The CI mode: tiny sizes, output outside the repository.
    pub short: bool,
    /// Where REPORT.md and the charts go.
    pub out_dir: PathBuf,
    /// Only these systems (names as in the report), all when empty.
    pub systems: Vec<String>,
    /// Only these workloads (their numbers, 1 to 7), all when empty.
    pub workloads: Vec<String>,
    /// Nodes per replicated cluster.
    pub nodes: usize,
    /// Heartbeat interval of quorumlock and etcd.
    pub heartbeat_ms: u64,
    /// Election timeout of quorumlock and etcd.
    pub election_timeout_ms: u64,
    /// Unmeasured run-in before each measured window.
    pub warmup: Duration,
    /// Measured window of workloads 1, 2 and 4.
    pub window: Duration,
    /// TTL of the workers' sessions.
    pub session_ttl: Duration,
    /// Worker counts of workload 1.
    pub uncontended_workers: Vec<usize>,
    /// Workers on the hot lock (workload 2).
    pub hot_workers: usize,
    /// Workers of workload 4.
    pub fenced_workers: usize,
    /// Size of a fenced write's value.
    pub fenced_value_bytes: usize,
    /// Sessions queueing in workload 3.
    pub herd_sessions: usize,
    /// Longest time workload 3 may take.
    pub herd_time_max: Duration,
    /// Sessions kept alive in workload 5.
    pub keepalive_sessions: usize,
    /// Their TTL; they renew every TTL/3.
    pub keepalive_ttl: Duration,
    /// Window over which the leader's CPU is measured in workload 5.
    pub keepalive_window: Duration,
    /// Workers of workload 6.
    pub failover_workers: usize,
    /// Leader kills in workload 6.
    pub failover_repeats: usize,
    /// Throughput before each kill, measured as the baseline.
    pub failover_baseline: Duration,
    /// Longest wait for throughput to come back after a kill.
    pub failover_recovery_max: Duration,
    /// Locks held in workload 7 on quorumlock (and Redis).
    pub scale_locks: usize,
    /// Locks held in workload 7 on etcd.
    pub scale_locks_etcd: usize,
    /// Sessions holding them.
    pub scale_sessions: usize,
    /// Acquires in flight at once.
    pub scale_in_flight: usize,
    /// Longest time for acquiring them; the count reached is reported.
    pub scale_time_max: Duration,
    /// Longest wait for a restarted node to catch up.
    pub catch_up_max: Duration,
    /// Measured windows of workloads 1 to 4, each with its own warm-up;
    /// the report gives their median and their range.
    pub repeat: usize,
    /// Workers measuring pairs/s while many locks are held (workload 7) or
    /// many sessions are open (workload 5).
    pub growth_workers: usize,
    /// Their measured window.
    pub growth_window: Duration,
    /// Length of the churn workload (8).
    pub churn_duration: Duration,
    /// Its concurrent clients.
    pub churn_clients: usize,
    /// How often it samples memory and disk.
    pub churn_sample_every: Duration,
    /// Its warm-up, after which memory and disk must stay flat.
    pub churn_warmup: Duration,
    /// Unary gRPC round trips and 512 B fdatasyncs timed for the floor.
    pub floor_samples: usize,
}

impl Options {
    /// The full run, as committed in benches/results.
    pub fn full() -> Options {
        Options {
            short: false,
            out_dir: PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("benches/results"),
            systems: Vec::new(),
            workloads: Vec::new(),
            nodes: 3,
            heartbeat_ms: 50,
            election_timeout_ms: 300,
            warmup: Duration::from_secs(2),
            window: Duration::from_secs(10),
            session_ttl: Duration::from_secs(10),
            uncontended_workers: vec![1, 16, 64, 256],
            hot_workers: 64,
            fenced_workers: 16,
            fenced_value_bytes: 1_024,
            herd_sessions: 1_000,
            herd_time_max: Duration::from_secs(120),
            keepalive_sessions: 100_000,
            keepalive_ttl: Duration::from_secs(9),
            keepalive_window: Duration::from_secs(30),
            failover_workers: 16,
            failover_repeats: 5,
            failover_baseline: Duration::from_secs(3),
            failover_recovery_max: Duration::from_secs(20),
            scale_locks: 1_000_000,
            scale_locks_etcd: 100_000,
            scale_sessions: 1_000,
            scale_in_flight: 256,
            scale_time_max: Duration::from_secs(240),
            catch_up_max: Duration::from_secs(180),
            repeat: 3,
            growth_workers: 64,
            growth_window: Duration::from_secs(3),
            churn_duration: Duration::from_secs(600),
            churn_clients: 8,
            churn_sample_every: Duration::from_secs(10),
            churn_warmup: Duration::from_secs(120),
            floor_samples: 2_000,
        }
    }

    /// The CI run: every system and workload at tiny sizes, about two
    /// minutes, written under the target directory.
    pub fn short() -> Options {
        let target = std::env::var_os("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target"));
        Options {
            short: true,
            out_dir: target.join("bench-engines-short"),
            warmup: Duration::from_millis(300),
            window: Duration::from_secs(1),
            uncontended_workers: vec![1, 8],
            hot_workers: 8,
            fenced_workers: 4,
            herd_sessions: 20,
            herd_time_max: Duration::from_secs(30),
            keepalive_sessions: 50,
            keepalive_ttl: Duration::from_secs(3),
            keepalive_window: Duration::from_secs(2),
            failover_workers: 4,
            failover_repeats: 1,
            failover_baseline: Duration::from_secs(1),
            failover_recovery_max: Duration::from_secs(15),
            scale_locks: 500,
            scale_locks_etcd: 500,
            scale_sessions: 10,
            scale_in_flight: 32,
            scale_time_max: Duration::from_secs(20),
            catch_up_max: Duration::from_secs(60),
            repeat: 1,
            growth_workers: 4,
            growth_window: Duration::from_millis(500),
            churn_duration: Duration::from_secs(4),
            churn_clients: 2,
            churn_sample_every: Duration::from_secs(1),
            churn_warmup: Duration::from_secs(1),
            floor_samples: 50,
            ..Options::full()
        }
    }

    /// Reads the arguments (tolerating cargo's own) and
    /// `QUORUMLOCK_BENCH_SHORT`.
    pub fn from_args(args: impl IntoIterator<Item = String>) -> Options {
        let args: Vec<String> = args.into_iter().collect();
        let short_env = std::env::var("QUORUMLOCK_BENCH_SHORT").is_ok_and(|value| value == "1");
        let mut options = if short_env || args.iter().any(|arg| arg == "--short") {
            Options::short()
        } else {
            Options::full()
        };
        let mut iter = args.iter();
        while let Some(arg) = iter.next() {
            if let Some(value) = arg.strip_prefix("--systems=") {
                options.systems = split_list(value);
            } else if arg == "--systems" {
                options.systems = iter.next().map(|value| split_list(value)).unwrap_or_default();
            } else if let Some(value) = arg.strip_prefix("--workloads=") {
                options.workloads = split_list(value);
            } else if let Some(value) = arg.strip_prefix("--workers=") {
                options.uncontended_workers = split_list(value)
                    .iter()
                    .filter_map(|count| count.parse().ok())
                    .collect();
            } else if let Some(value) = arg.strip_prefix("--repeat=") {
                options.repeat = value.parse().unwrap_or(options.repeat).max(1);
            } else if arg == "--repeat" {
                options.repeat = iter
                    .next()
                    .and_then(|value| value.parse().ok())
                    .unwrap_or(options.repeat)
                    .max(1);
            } else if let Some(value) = arg.strip_prefix("--churn-seconds=") {
                if let Ok(seconds) = value.parse() {
                    options.churn_duration = Duration::from_secs(seconds);
                }
            } else if let Some(value) = arg.strip_prefix("--keepalive-sessions=") {
                options.keepalive_sessions = value.parse().unwrap_or(options.keepalive_sessions);
            } else if let Some(value) = arg.strip_prefix("--out=") {
                options.out_dir = PathBuf::from(value);
            }
        }
        options
    }

    /// Whether the workload labelled `label` ("3 thundering herd") is
    /// selected.
    pub fn workload_selected(&self, label: &str) -> bool {
        let number = label.split_whitespace().next().unwrap_or_default();
        self.workloads.is_empty() || self.workloads.iter().any(|wanted| wanted == number)
    }

    /// Whether system `name` is selected.
    pub fn selected(&self, name: &str) -> bool {
        self.systems.is_empty() || self.systems.iter().any(|wanted| wanted == name)
    }
}

fn split_list(value: &str) -> Vec<String> {
    value
        .split(',')
        .map(str::trim)
        .filter(|name| !name.is_empty())
        .map(str::to_string)
        .collect()
}
