//! One node process: start, SIGKILL, SIGSTOP/SIGCONT, restart on the same
//! data directory, and its resource use read from `/proc`.

use std::fs::OpenOptions;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};

use anyhow::Context;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// Log lines quoted when a node fails.
pub const LOG_TAIL_LINES: usize = 30;

/// A node's CPU time and memory, from `/proc/<pid>/stat` and `status`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ProcessUsage {
    /// User plus system CPU time, in clock ticks (`getconf CLK_TCK`, 100 on
    /// Linux).
    pub cpu_ticks: u64,
    /// Resident set size in bytes.
    pub rss_bytes: u64,
}

/// A server process (usually `quorumlock serve`) that can be stopped and
/// started again.
pub struct NodeProcess {
    id: u64,
    addr: String,
    exe: PathBuf,
    args: Vec<String>,
    env: Vec<(String, String)>,
    log_path: PathBuf,
    child: Option<Child>,
    paused: bool,
    starts: u64,
}

impl NodeProcess {
    /// A process of `exe` with `args`, not started yet; its output goes to
    /// `log_path`. Any server works, not only `quorumlock serve`: the
    /// benchmarks run etcd and Redis through it too.
    pub fn new(
        id: u64,
        addr: String,
        exe: PathBuf,
        args: Vec<String>,
        env: Vec<(String, String)>,
        log_path: PathBuf,
    ) -> NodeProcess {
        NodeProcess {
            id,
            addr,
            exe,
            args,
            env,
            log_path,
            child: None,
            paused: false,
            starts: 0,
        }
    }

    /// The node id.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// The address it listens on.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// Its process id while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Whether the process runs (possibly paused).
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// Whether it was paused with [`NodeProcess::pause`] and not resumed.
    pub fn is_paused(&self) -> bool {
        self.paused
    }

    /// How many times it was started.
    pub fn starts(&self) -> u64 {
        self.starts
    }

    /// Starts the process unless it runs; its output is appended to the log.
    pub fn start(&mut self) -> anyhow::Result<()> {
        self.start_with(&[])
    }

    /// Like [`NodeProcess::start`], with `more_args` after its own for this
    /// start only.
    pub fn start_with(&mut self, more_args: &[&str]) -> anyhow::Result<()> {
        if self.child.is_some() {
            return Ok(());
        }
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)
            .with_context(|| format!("opening {}", self.log_path.display()))?;
        let child = Command::new(&self.exe)
            .args(&self.args)
            .args(more_args)
            .envs(self.env.iter().map(|(key, value)| (key, value)))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting node {} from {}", self.id, self.exe.display()))?;
        self.child = Some(child);
        self.paused = false;
        self.starts += 1;
        Ok(())
    }

    /// SIGKILL, then reaps the process. Nothing happens if it does not run.
    pub fn kill(&mut self) -> anyhow::Result<()> {
        if let Some(mut child) = self.child.take() {
            child
                .kill()
                .with_context(|| format!("killing node {}", self.id))?;
            child.wait()?;
        }
        self.paused = false;
        Ok(())
    }

    /// SIGTERM: asks the node to shut down cleanly.
    pub fn terminate(&self) -> anyhow::Result<()> {
        self.signal(Signal::SIGTERM)
    }

    /// SIGSTOP: freezes the whole process, as a long GC pause would.
    pub fn pause(&mut self) -> anyhow::Result<()> {
        self.signal(Signal::SIGSTOP)?;
        self.paused = self.child.is_some();
        Ok(())
    }

    /// SIGCONT after [`NodeProcess::pause`].
    pub fn resume(&mut self) -> anyhow::Result<()> {
        self.signal(Signal::SIGCONT)?;
        self.paused = false;
        Ok(())
    }

    fn signal(&self, signal: Signal) -> anyhow::Result<()> {
        if let Some(pid) = self.pid() {
            let pid = Pid::from_raw(i32::try_from(pid).context("process id out of range")?);
            kill(pid, signal).with_context(|| format!("sending {signal} to node {}", self.id))?;
        }
        Ok(())
    }

    /// The exit status if the process exited by itself since last asked.
    pub fn reap(&mut self) -> anyhow::Result<Option<ExitStatus>> {
        let Some(child) = self.child.as_mut() else {
            return Ok(None);
        };
        let status = child
            .try_wait()
            .with_context(|| format!("polling node {}", self.id))?;
        if status.is_some() {
            self.child = None;
            self.paused = false;
        }
        Ok(status)
    }

    /// CPU time and resident memory, while it runs.
    pub fn usage(&self) -> Option<ProcessUsage> {
        process_usage(self.pid()?)
    }

    /// The log file.
    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// The whole log so far.
    pub fn log(&self) -> String {
        String::from_utf8_lossy(&std::fs::read(&self.log_path).unwrap_or_default()).into_owned()
    }

    /// The address of the metrics listener, as the node logged it when it
    /// started serving it (`metrics at http(s)://ADDR/metrics`); `None`
    /// before then or without one.
    pub fn metrics_addr(&self) -> Option<String> {
        let log = self.log();
        let after = log[log.find("metrics at http")?..].split_once("://")?.1;
        Some(after.split('/').next()?.to_string())
    }

    /// The last `lines` lines of the log.
    pub fn log_tail(&self, lines: usize) -> String {
        let log = self.log();
        let all: Vec<&str> = log.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        if self.paused {
            let _ = self.resume();
        }
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// CPU time and resident memory of process `pid`, from `/proc`; `None` once
/// it is gone.
pub fn process_usage(pid: u32) -> Option<ProcessUsage> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is parenthesised and may hold spaces;
    // utime and stime are fields 14 and 15, the 12th and 13th after it.
    let after_name = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let cpu_ticks = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let rss_kib = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|kib| kib.parse::<u64>().ok())?;
    Some(ProcessUsage {
        cpu_ticks,
        rss_bytes: rss_kib * 1024,
    })
}
