//! `quorumlock chaos`: a real cluster of node processes, client workers in
//! their own processes, a seeded nemesis that kills, pauses, partitions and
//! skews clocks, and checks of the recorded history afterwards.
//!
//! The parts, one file each:
//! - [`proxy`]: a fault-injecting TCP proxy in front of every node, which
//!   cuts the directed links between nodes that a partition names;
//! - [`nemesis`]: the seeded rounds of faults, each logged;
//! - [`membership`]: with `--membership`, seeded changes of membership
//!   (add, promote, remove, replace) between the other faults;
//! - [`disk`]: with `--disk-faults`, data directories damaged on a crashed
//!   node, which must refuse them;
//! - [`workload`]: the client workers (the hidden `chaos-worker`);
//! - [`history`]: the recorded operations and faults, as JSON lines;
//! - [`checker`]: mutual exclusion at the storage, token order,
//!   linearizability, shared reads, the semaphore's descriptions, no lost
//!   writes, liveness.
//!
//! A run: start the proxies and the cluster (each node's lease clock follows
//! a skew file), start the workers, let the nemesis play rounds until the
//! duration has passed, heal everything, let the workers finish, SIGKILL and
//! restart every node, read every key once more, then check. With
//! `--membership`, the rounds alternate between a fault and a change of
//! membership, and the final phase stops every removed node and restarts
//! only the members. The summary
//! ends with `violations: N`; any violation makes the exit code non-zero
//! and keeps the history file and the nodes' logs.

pub mod checker;
pub mod disk;
pub mod history;
pub mod membership;
pub mod nemesis;
pub mod proxy;
pub mod workload;

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::Args;
use rand::rngs::StdRng;
use rand::SeedableRng;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;
use tokio::time::Instant;

use self::checker::{check_all, CheckReport, Violation, ViolationKind};
use self::history::{now_us, Call, Entry, Op, Return, WorkerEvent, FINAL_READER};
use self::membership::{MembershipNemesis, Stage, MEMBERSHIP_KINDS, SPARE_IDS};
use self::nemesis::{write_skew, Nemesis, Targets, DISK_KIND, FAULT_HOLD_MIN, FAULT_KINDS};
use self::proxy::Network;
use self::workload::{client_config, key_of, lock_name, WorkerConfig};
use crate::cluster::{free_ports, ClusterSpec, ProcessCluster};
use quorumlock_client::Client;
use quorumlock_core::time::Skew;

/// Cluster sizes a run may use.
pub const NODES_ALLOWED: [usize; 2] = [3, 5];
/// Most worker processes.
pub const WORKERS_MAX: usize = 32;
/// Most locks the workers share.
pub const LOCKS_MAX: usize = 64;
/// Longest run.
pub const DURATION_MAX: Duration = Duration::from_secs(24 * 3600);
/// After a heal, some operation must succeed within this long.
pub const LIVENESS_BOUND: Duration = Duration::from_secs(10);
/// Shortest heartbeat period the nodes may run with.
pub const HEARTBEAT_MS_MIN: u64 = 10;
/// Longest heartbeat period and election timeout the nodes may run with:
/// with an election timeout drawn from [t, 2t), a leader's death is noticed
/// well within [`LIVENESS_BOUND`].
pub const TIMING_MS_MAX: u64 = 2_000;
/// Longest wait for the workers to finish after the run.
pub const WORKER_EXIT_WAIT_MAX: Duration = Duration::from_secs(20);
/// Longest time spent on the final read of one key.
pub const FINAL_READ_WAIT_MAX: Duration = Duration::from_secs(30);
/// Violations printed in full in the summary (all are in the count).
pub const VIOLATIONS_PRINTED_MAX: usize = 50;
/// Mixed into the seed for the membership nemesis's own random source, so
/// that the other faults draw the same sequence with or without it.
const MEMBERSHIP_SEED_SALT: u64 = 0x6d65_6d62_6572_7321;

fn parse_duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text.trim())
        .map_err(|error| format!("{error} (expected a duration such as 60s or 5m)"))
}

/// Flags of `chaos`.
#[derive(Args, Debug, Clone)]
pub struct ChaosArgs {
    /// Consensus engine: raft or paxos.
    #[arg(long, default_value = "raft")]
    pub engine: String,
    /// Number of nodes: 3 or 5.
    #[arg(long, default_value_t = 3)]
    pub nodes: usize,
    /// How long the workers and the nemesis run.
    #[arg(long, value_parser = parse_duration, default_value = "60s")]
    pub duration: Duration,
    /// Seeds the nemesis and the workers [default: random, printed].
    #[arg(long)]
    pub seed: Option<u64>,
    /// Where to write the history (JSON lines); kept even on success.
    /// Without it the history goes to a temporary file, kept only when a
    /// check fails.
    #[arg(long)]
    pub history: Option<PathBuf>,
    /// Keep the nodes' logs and data directories even when every check
    /// passes (they are kept when one fails), to read what a run did.
    #[arg(long)]
    pub keep_logs: bool,
    /// Number of client worker processes.
    #[arg(long, default_value_t = 4)]
    pub workers: usize,
    /// Number of locks the workers share (each guards one key).
    #[arg(long, default_value_t = 3)]
    pub locks: usize,
    /// Session TTL of the workers; pauses last longer than this.
    #[arg(long, value_parser = parse_duration, default_value = "2s")]
    pub ttl: Duration,
    /// Also change the membership between faults: add nodes (`serve
    /// --join`, `member add`), promote learners, remove voters (the leader
    /// too) and learners, and replace a voter whose disk was lost.
    #[arg(long)]
    pub membership: bool,
    /// Also damage data directories: crash a node, invert bytes in its
    /// WAL, an SST or the MANIFEST, cut an SST short, or delete the whole
    /// directory; start it and count it a violation unless it refuses the
    /// directory (exit status 6) within 20s; then put the directory back.
    #[arg(long)]
    pub disk_faults: bool,
    /// The nodes' heartbeat period in milliseconds (`serve --heartbeat-ms`).
    #[arg(long, default_value_t = 100)]
    pub heartbeat_ms: u64,
    /// The nodes' minimum election timeout in milliseconds (`serve
    /// --election-timeout-ms`); more than twice the heartbeat. It bounds how
    /// soon the nodes notice a dead or paused leader.
    #[arg(long, default_value_t = 1_000)]
    pub election_timeout_ms: u64,
}

/// Flags of the hidden `chaos-worker`.
#[derive(Args, Debug, Clone)]
pub struct ChaosWorkerArgs {
    /// The cluster's endpoints, comma-separated.
    #[arg(long)]
    pub endpoints: String,
    /// This worker's number, from 1.
    #[arg(long)]
    pub worker: u64,
    /// Number of locks.
    #[arg(long)]
    pub locks: usize,
    /// The run's seed.
    #[arg(long)]
    pub seed: u64,
    /// Session TTL in milliseconds.
    #[arg(long)]
    pub ttl_ms: u64,
    /// How long to run, in milliseconds.
    #[arg(long)]
    pub run_for_ms: u64,
}

/// Runs one worker, reporting on standard output.
pub async fn run_worker(args: ChaosWorkerArgs) -> anyhow::Result<i32> {
    let config = WorkerConfig {
        endpoints: args.endpoints.split(',').map(str::to_string).collect(),
        worker: args.worker,
        locks: args.locks,
        seed: args.seed,
        ttl: Duration::from_millis(args.ttl_ms),
        run_for: Duration::from_millis(args.run_for_ms),
    };
    workload::run_worker(config, std::io::stdout().lock()).await?;
    Ok(0)
}

impl ChaosArgs {
    fn validate(&self) -> anyhow::Result<()> {
        if self.engine != "raft" && self.engine != "paxos" {
            bail!("--engine must be raft or paxos, not {:?}", self.engine);
        }
        if !NODES_ALLOWED.contains(&self.nodes) {
            bail!("--nodes must be 3 or 5, not {}", self.nodes);
        }
        if self.duration < FAULT_HOLD_MIN * 2 || self.duration > DURATION_MAX {
            bail!(
                "--duration must be between {:?} and {:?}",
                FAULT_HOLD_MIN * 2,
                DURATION_MAX
            );
        }
        if !(1..=WORKERS_MAX).contains(&self.workers) {
            bail!("--workers must be between 1 and {WORKERS_MAX}");
        }
        if !(1..=LOCKS_MAX).contains(&self.locks) {
            bail!("--locks must be between 1 and {LOCKS_MAX}");
        }
        if !(HEARTBEAT_MS_MIN..=TIMING_MS_MAX).contains(&self.heartbeat_ms) {
            bail!("--heartbeat-ms must be between {HEARTBEAT_MS_MIN} and {TIMING_MS_MAX}");
        }
        if self.election_timeout_ms <= self.heartbeat_ms * 2 || self.election_timeout_ms > TIMING_MS_MAX {
            bail!(
                "--election-timeout-ms must be more than twice --heartbeat-ms ({} ms) and at most {TIMING_MS_MAX}",
                self.heartbeat_ms
            );
        }
        let ttl_ms = u64::try_from(self.ttl.as_millis()).unwrap_or(u64::MAX);
        if !(quorumlock_core::lock::limits::SESSION_TTL_MS_MIN..=60_000).contains(&ttl_ms) {
            bail!(
                "--ttl must be between {} ms and 60 s",
                quorumlock_core::lock::limits::SESSION_TTL_MS_MIN
            );
        }
        Ok(())
    }
}

/// What the run produced, for the summary.
struct Outcome {
    ops: Vec<Op>,
    faults: Vec<history::Fault>,
    /// Per kind of membership change: made, tried.
    changes: BTreeMap<&'static str, (usize, usize)>,
    /// The members at the end: voters and learners, as the leader listed
    /// them, or why they are unknown.
    members: String,
    report: CheckReport,
    workload_start_us: u64,
}

/// Runs `chaos`; returns the exit code (0 only if no check failed).
pub async fn run(args: ChaosArgs) -> anyhow::Result<i32> {
    args.validate()?;
    let seed = args.seed.unwrap_or_else(rand::random);
    println!(
        "chaos: engine={} nodes={} duration={} workers={} locks={} ttl={} membership={} disk_faults={} seed={seed}",
        args.engine,
        args.nodes,
        humantime::format_duration(args.duration),
        args.workers,
        args.locks,
        humantime::format_duration(args.ttl),
        if args.membership { "on" } else { "off" },
        if args.disk_faults { "on" } else { "off" }
    );
    let temp = tempfile::Builder::new()
        .prefix("quorumlock-chaos-")
        .tempdir()
        .context("creating a temporary directory")?;
    let outcome = match play(&args, seed, temp.path()).await {
        Ok(outcome) => outcome,
        Err(error) => {
            // The nodes' logs say why the run could not go on.
            let logs = temp.keep();
            return Err(error.context(format!("the nodes' logs are kept in {}", logs.display())));
        }
    };
    let failed = !outcome.report.violations.is_empty();
    let history_path = args.history.clone().unwrap_or_else(|| {
        std::env::temp_dir().join(format!("quorumlock-chaos-{seed}-{}.jsonl", std::process::id()))
    });
    let mut entries: Vec<Entry> = outcome.ops.iter().cloned().map(Entry::Op).collect();
    entries.extend(outcome.faults.iter().cloned().map(Entry::Fault));
    entries.sort_by_key(|entry| match entry {
        Entry::Op(op) => op.invoke_us,
        Entry::Fault(fault) => fault.start_us,
    });
    history::write_history(&history_path, &entries)?;
    let keep_history = failed || args.history.is_some();
    if !keep_history {
        std::fs::remove_file(&history_path)
            .with_context(|| format!("removing {}", history_path.display()))?;
    }
    let logs = (failed || args.keep_logs).then(|| temp.keep());
    print_summary(&args, seed, &outcome, &history_path, keep_history, logs);
    Ok(if failed { 1 } else { 0 })
}

fn print_summary(
    args: &ChaosArgs,
    seed: u64,
    outcome: &Outcome,
    history_path: &std::path::Path,
    history_kept: bool,
    logs: Option<PathBuf>,
) {
    let report = &outcome.report;
    let mut by_outcome: BTreeMap<&str, usize> = BTreeMap::new();
    let mut by_kind: BTreeMap<&str, BTreeMap<&str, usize>> = BTreeMap::new();
    for op in &outcome.ops {
        *by_outcome.entry(op.ret.outcome()).or_default() += 1;
        *by_kind
            .entry(op.call.kind())
            .or_default()
            .entry(op.ret.outcome())
            .or_default() += 1;
    }
    let count = |map: &BTreeMap<&str, usize>, key: &str| map.get(key).copied().unwrap_or(0);
    println!("chaos summary");
    println!(
        "  engine: {}, nodes: {}, workers: {}, locks: {}, duration: {}, seed: {seed}",
        args.engine,
        args.nodes,
        args.workers,
        args.locks,
        humantime::format_duration(args.duration)
    );
    println!(
        "ops: {} (ok {}, failed {}, unknown {})",
        outcome.ops.len(),
        count(&by_outcome, "ok"),
        count(&by_outcome, "failed"),
        count(&by_outcome, "unknown")
    );
    for (kind, outcomes) in &by_kind {
        println!(
            "  {kind}: ok {}, failed {}, unknown {}",
            count(outcomes, "ok"),
            count(outcomes, "failed"),
            count(outcomes, "unknown")
        );
    }
    let mut kinds: Vec<&str> = FAULT_KINDS.to_vec();
    if args.disk_faults {
        kinds.push(DISK_KIND);
    }
    if args.membership {
        kinds.extend(MEMBERSHIP_KINDS);
    }
    let faults: Vec<String> = kinds
        .iter()
        .map(|kind| {
            let injected = outcome.faults.iter().filter(|fault| fault.kind == *kind).count();
            format!("{kind}={injected}")
        })
        .collect();
    println!("faults: {} (total {})", faults.join(" "), outcome.faults.len());
    if args.membership {
        let changes: Vec<String> = outcome
            .changes
            .iter()
            .map(|(kind, (made, tried))| format!("{kind}={made}/{tried}"))
            .collect();
        println!("membership changes made/tried: {}", changes.join(" "));
        println!("members at the end: {}", outcome.members);
    }
    let inconclusive = &report.linearizability.inconclusive;
    println!(
        "linearizability: {} locks, {} ops checked; undecided within the search bound: {}",
        report.linearizability.locks,
        report.linearizability.ops,
        if inconclusive.is_empty() {
            "none".to_string()
        } else {
            inconclusive.join(", ")
        }
    );
    println!(
        "semaphore: {} describes of {} ({} permits) checked",
        report.semaphore_describes,
        workload::SEMAPHORE,
        workload::SEMAPHORE_LIMIT
    );
    let (gap_us, gap_start_us) = report.longest_unavailable_us;
    println!(
        "longest unavailability: {:.2}s (from {:.1}s into the run)",
        gap_us as f64 / 1e6,
        gap_start_us.saturating_sub(outcome.workload_start_us) as f64 / 1e6
    );
    let kinds: Vec<String> = ViolationKind::ALL
        .iter()
        .map(|kind| format!("{}={}", kind.name(), report.count(*kind)))
        .collect();
    println!("violations by kind: {}", kinds.join(" "));
    for violation in report.violations.iter().take(VIOLATIONS_PRINTED_MAX) {
        println!("  {violation}");
    }
    println!("seed: {seed}");
    if history_kept {
        println!("history: {}", history_path.display());
    } else {
        println!("history: deleted (no violation; pass --history to keep it)");
    }
    if let Some(logs) = logs {
        println!("node logs and data: {}", logs.display());
    }
    println!("violations: {}", report.violations.len());
}

async fn play(args: &ChaosArgs, seed: u64, dir: &std::path::Path) -> anyhow::Result<Outcome> {
    let exe = std::env::current_exe().context("finding the quorumlock executable")?;
    // One proxy for every id the run may use, the spare ones of the
    // membership nemesis included: the workers know every address from the
    // start. The proxies hold their ports before the nodes' ports are
    // picked, so the two cannot collide.
    let slots = args.nodes + if args.membership { SPARE_IDS } else { 0 };
    let network = Network::bind(slots).await?;
    let ports = free_ports(args.nodes)?;
    let addrs: Vec<String> = ports.iter().map(|port| format!("127.0.0.1:{port}")).collect();
    network.set_addrs(&addrs);
    // Every node knows every node, itself included, by its proxy, so that
    // the membership the engines replicate names only proxies.
    let proxies: Vec<String> = network.addrs().to_vec();
    for index in 0..slots {
        write_skew(dir, index, Skew::NONE)?;
    }
    let mut spec = ClusterSpec::new(exe.clone(), &args.engine, args.nodes);
    spec.extra_args = vec![
        "--clock-skew-file".to_string(),
        dir.join("skew-{id}").display().to_string(),
    ];
    spec.heartbeat_ms = args.heartbeat_ms;
    spec.election_timeout_ms = args.election_timeout_ms;
    spec.ports = Some(ports);
    spec.dir = Some(dir.join("cluster"));
    spec.route = Some(Arc::new(move |_from, to| proxies[to].clone()));
    let mut cluster = ProcessCluster::start(spec)
        .await
        .context("starting the cluster")?;
    let endpoints: Vec<String> = network.addrs().to_vec();

    let workload_start_us = now_us();
    let events: Arc<parking_lot::Mutex<Vec<(u64, WorkerEvent)>>> = Arc::default();
    let mut children = Vec::new();
    let mut readers = Vec::new();
    for worker in 1..=args.workers as u64 {
        let stderr = std::fs::File::create(dir.join(format!("worker-{worker}.log")))?;
        let mut child = Command::new(&exe)
            .args([
                "chaos-worker",
                "--endpoints",
                &endpoints.join(","),
                "--worker",
                &worker.to_string(),
                "--locks",
                &args.locks.to_string(),
                "--seed",
                &seed.to_string(),
                "--ttl-ms",
                &args.ttl.as_millis().to_string(),
                "--run-for-ms",
                &args.duration.as_millis().to_string(),
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .kill_on_drop(true)
            .spawn()
            .context("starting a worker")?;
        let stdout = child.stdout.take().context("the worker's stdout")?;
        let events = events.clone();
        readers.push(tokio::spawn(async move {
            let mut lines = BufReader::new(stdout).lines();
            let mut malformed = 0usize;
            while let Ok(Some(line)) = lines.next_line().await {
                match serde_json::from_str::<WorkerEvent>(&line) {
                    Ok(event) => events.lock().push((worker, event)),
                    Err(_) => malformed += 1,
                }
            }
            malformed
        }));
        children.push(child);
    }
    let pids: Vec<u32> = children.iter().filter_map(|child| child.id()).collect();

    let deadline = Instant::now() + args.duration;
    let mut nemesis = Nemesis::new(StdRng::seed_from_u64(seed), args.disk_faults);
    let mut members = MembershipNemesis::new(
        StdRng::seed_from_u64(seed ^ MEMBERSHIP_SEED_SALT),
        args.nodes,
        dir.to_path_buf(),
    );
    let mut heals_us = Vec::new();
    let mut node_exits = Vec::new();
    // The first fault comes after a quiet start, so the workers get going.
    tokio::time::sleep(nemesis.settle().min(args.duration / 4)).await;
    let mut round = 0u64;
    while Instant::now() + FAULT_HOLD_MIN < deadline {
        round += 1;
        if args.membership && round % 2 == 0 {
            let mut stage = Stage {
                cluster: &mut cluster,
                network: &network,
            };
            members.round(&mut stage).await?;
        } else {
            let live = members.roster.live();
            let mut targets = Targets {
                cluster: &mut cluster,
                nodes: &live,
                network: &network,
                workers: &pids,
                skew_dir: dir,
                ttl: args.ttl,
            };
            nemesis.round(&mut targets).await?;
        }
        node_exits.extend(restart_exited(&mut cluster, &members.roster.live())?);
        heals_us.push(now_us());
        let settle = nemesis.settle();
        tokio::time::sleep(settle.min(deadline.saturating_duration_since(Instant::now()))).await;
    }
    let workload_end_us = workload_start_us + u64::try_from(args.duration.as_micros()).unwrap_or(u64::MAX);

    // Heal anything left and let the workers finish their last operations.
    network.heal();
    for index in members.roster.live() {
        write_skew(dir, index, Skew::NONE)?;
        if cluster.node(index).is_paused() {
            cluster.node_mut(index).resume()?;
        }
    }
    for pid in &pids {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(i32::try_from(*pid).unwrap_or(0)),
            nix::sys::signal::Signal::SIGCONT,
        );
    }
    let exit_deadline = Instant::now() + WORKER_EXIT_WAIT_MAX;
    for child in &mut children {
        let left = exit_deadline.saturating_duration_since(Instant::now());
        if tokio::time::timeout(left, child.wait()).await.is_err() {
            eprintln!("chaos: a worker did not finish in time; killing it");
            child.start_kill()?;
            child.wait().await?;
        }
    }
    let mut malformed = 0;
    for reader in readers {
        malformed += reader.await.unwrap_or(0);
    }
    if malformed > 0 {
        bail!("{malformed} lines of the workers' reports could not be read");
    }
    node_exits.extend(restart_exited(&mut cluster, &members.roster.live())?);
    if args.membership {
        // A replacement cut short is finished if it can be, and removed
        // nodes stop: the final phase restarts the members only.
        let mut stage = Stage {
            cluster: &mut cluster,
            network: &network,
        };
        members.wind_down(&mut stage).await?;
        node_exits.extend(restart_exited(&mut cluster, &members.roster.live())?);
    }

    // Every member dies at once and comes back from its disk: what was
    // acknowledged must still be there.
    let live = members.roster.live();
    for &index in &live {
        cluster.node_mut(index).kill()?;
    }
    for &index in &live {
        cluster.node_mut(index).start()?;
    }
    cluster
        .wait_for_leader()
        .await
        .context("waiting for a leader after restarting every member")?;
    let live_endpoints: Vec<String> = live
        .iter()
        .map(|&index| network.addr(index).to_string())
        .collect();
    let mut ops = assemble_ops(std::mem::take(&mut *events.lock()));
    ops.extend(final_reads(&live_endpoints, args.locks).await?);
    let final_members = if args.membership {
        members.describe_members(&live_endpoints).await
    } else {
        String::new()
    };
    node_exits.extend(nemesis.unrefused.drain(..).map(|detail| Violation {
        kind: ViolationKind::DamageUnrefused,
        detail,
    }));
    node_exits.extend(nemesis.unrepaired.drain(..).map(|detail| Violation {
        kind: ViolationKind::RepairUnfinished,
        detail,
    }));
    let report = check_all(
        &ops,
        &heals_us,
        (workload_start_us, workload_end_us),
        u64::try_from(LIVENESS_BOUND.as_micros()).unwrap_or(u64::MAX),
        node_exits,
    );
    let changes = members.tally();
    let mut faults = nemesis.faults;
    faults.extend(members.faults);
    faults.sort_by_key(|fault| fault.start_us);
    Ok(Outcome {
        ops,
        faults,
        changes,
        members: final_members,
        report,
        workload_start_us,
    })
}

/// Restarts members (of `live`) that exited by themselves, reporting each
/// as a violation.
fn restart_exited(cluster: &mut ProcessCluster, live: &[usize]) -> anyhow::Result<Vec<Violation>> {
    let mut found = Vec::new();
    for &index in live {
        if let Some(status) = cluster.node_mut(index).reap()? {
            let node = cluster.node(index);
            found.push(Violation {
                kind: ViolationKind::NodeExit,
                detail: format!(
                    "node {} exited by itself ({status}); its log ends:\n{}",
                    node.id(),
                    node.log_tail(crate::cluster::LOG_TAIL_LINES)
                ),
            });
            cluster.node_mut(index).start()?;
        }
    }
    Ok(found)
}

/// Pairs every invocation with its completion; one that never completed is
/// an operation of unknown outcome that may take effect at any later time.
fn assemble_ops(events: Vec<(u64, WorkerEvent)>) -> Vec<Op> {
    let mut open: HashMap<(u64, u64), Op> = HashMap::new();
    let mut ops = Vec::new();
    for (worker, event) in events {
        match event {
            WorkerEvent::Invoke {
                seq,
                session,
                at_us,
                call,
            } => {
                open.insert(
                    (worker, seq),
                    Op {
                        process: worker,
                        session,
                        invoke_us: at_us,
                        complete_us: None,
                        call,
                        ret: Return::Unknown {
                            reason: "the worker stopped before the answer came".to_string(),
                        },
                    },
                );
            }
            WorkerEvent::Complete { seq, at_us, ret } => {
                if let Some(mut op) = open.remove(&(worker, seq)) {
                    op.complete_us = Some(at_us);
                    op.ret = ret;
                    ops.push(op);
                }
            }
        }
    }
    ops.extend(open.into_values());
    ops.sort_by_key(|op| (op.invoke_us, op.process));
    ops
}

/// Reads every key once, after the restart, as [`FINAL_READER`].
async fn final_reads(endpoints: &[String], locks: usize) -> anyhow::Result<Vec<Op>> {
    let client = Client::connect_with(endpoints, client_config())
        .await
        .context("connecting for the final reads")?;
    let mut ops = Vec::new();
    for index in 0..locks {
        let lock = lock_name(index);
        let key = key_of(&lock);
        let started = Instant::now();
        loop {
            let invoke_us = now_us();
            let read = client.get(&key).await;
            let complete_us = Some(now_us());
            let call = Call::Get {
                lock: lock.clone(),
                key: key.clone(),
            };
            let ret = match read {
                Ok(entry) => Return::Read {
                    token: entry.as_ref().map(|entry| entry.written_by.token.get()),
                    value: entry.map(|entry| String::from_utf8_lossy(&entry.value).into_owned()),
                },
                Err(error) if started.elapsed() >= FINAL_READ_WAIT_MAX => Return::Failed {
                    reason: error.to_string(),
                },
                Err(_) => {
                    tokio::time::sleep(workload::RETRY_PAUSE).await;
                    continue;
                }
            };
            ops.push(Op {
                process: FINAL_READER,
                session: 0,
                invoke_us,
                complete_us,
                call,
                ret,
            });
            break;
        }
    }
    Ok(ops)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn operations_are_paired_and_unanswered_ones_are_unknown() {
        let call = Call::Acquire { lock: "l".into() };
        let events = vec![
            (
                1,
                WorkerEvent::Invoke {
                    seq: 1,
                    session: 9,
                    at_us: 10,
                    call: call.clone(),
                },
            ),
            (
                2,
                WorkerEvent::Invoke {
                    seq: 1,
                    session: 8,
                    at_us: 11,
                    call: call.clone(),
                },
            ),
            (
                1,
                WorkerEvent::Complete {
                    seq: 1,
                    at_us: 20,
                    ret: Return::Granted { token: 4 },
                },
            ),
        ];
        let ops = assemble_ops(events);
        assert_eq!(ops.len(), 2);
        assert_eq!(ops[0].complete_us, Some(20));
        assert_eq!(ops[0].ret, Return::Granted { token: 4 });
        assert_eq!(ops[1].complete_us, None);
        assert_eq!(ops[1].ret.outcome(), "unknown");
    }

    #[test]
    fn bad_flags_are_refused_with_the_allowed_range() {
        use clap::Parser;
        #[derive(Parser)]
        struct Cli {
            #[command(flatten)]
            chaos: ChaosArgs,
        }
        let parse = |line: &str| {
            Cli::try_parse_from(std::iter::once("chaos").chain(line.split_whitespace()))
                .unwrap()
                .chaos
                .validate()
        };
        // What a bad line is refused with.
        let refusal = |line: &str| parse(line).unwrap_err().to_string();
        assert!(parse("--engine raft --nodes 3 --duration 20s").is_ok());
        assert!(parse("--heartbeat-ms 50 --election-timeout-ms 300").is_ok());
        assert!(refusal("--engine etcd").contains("raft or paxos"));
        assert!(refusal("--nodes 4").contains("3 or 5"));
        assert!(refusal("--duration 1s").contains("--duration"));
        assert!(refusal("--workers 0").contains("--workers"));
        assert!(refusal("--ttl 10ms").contains("--ttl"));
        assert!(refusal("--heartbeat-ms 5").contains("--heartbeat-ms"));
        assert!(refusal("--heartbeat-ms 100 --election-timeout-ms 200")
            .contains("more than twice --heartbeat-ms"));
        assert!(refusal("--election-timeout-ms 5000").contains("--election-timeout-ms"));
    }
}
