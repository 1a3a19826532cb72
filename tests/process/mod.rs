//! Server processes started from literal argument lists.
//!
//! The [`common`](../common/index.html) harness builds every node's command
//! itself. Some tests need commands that come from elsewhere (the node
//! commands of `docker/compose.yml`) or need to signal a node the way an
//! operator does (SIGTERM rather than SIGKILL); they use this module. Each
//! process logs to its own file, is killed when dropped, and prints the tail
//! of its log when a test panics.

#![allow(dead_code)]

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

const LOG_TAIL_LINES: usize = 40;
const EXIT_POLL_INTERVAL: Duration = Duration::from_millis(50);

/// One `quorumlock` process.
pub struct ServerProcess {
    name: String,
    child: Option<Child>,
    log_path: PathBuf,
}

impl ServerProcess {
    /// Starts the built binary with `args`, logging stdout and stderr to
    /// `log_path`.
    pub fn spawn(name: &str, args: &[String], log_path: &Path) -> ServerProcess {
        let log =
            File::create(log_path).unwrap_or_else(|error| panic!("create {}: {error}", log_path.display()));
        let stderr = log.try_clone().expect("clone the log file handle");
        let child = Command::new(env!("CARGO_BIN_EXE_quorumlock"))
            .args(args)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(stderr)
            .spawn()
            .unwrap_or_else(|error| panic!("spawn {name} ({args:?}): {error}"));
        ServerProcess {
            name: name.to_string(),
            child: Some(child),
            log_path: log_path.to_path_buf(),
        }
    }

    /// The name the test gave this process.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Sends SIGTERM, the signal `docker stop` and service managers send.
    pub fn terminate(&self) {
        let child = self.child.as_ref().expect("the process was already reaped");
        let status = Command::new("kill")
            .arg("-TERM")
            .arg(child.id().to_string())
            .status()
            .expect("run kill -TERM");
        assert!(status.success(), "kill -TERM {} failed: {status}", child.id());
    }

    /// The exit status if the process has exited.
    pub fn try_exit(&mut self) -> Option<ExitStatus> {
        let child = self.child.as_mut()?;
        child.try_wait().expect("poll the child process")
    }

    /// Waits at most `limit` for the process to exit; panics if it does not.
    pub fn wait_exit(&mut self, limit: Duration) -> ExitStatus {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.try_exit() {
                self.child = None;
                return status;
            }
            if Instant::now() >= deadline {
                panic!("{} did not exit within {limit:?}", self.name);
            }
            std::thread::sleep(EXIT_POLL_INTERVAL);
        }
    }

    /// The process's log so far.
    pub fn log(&self) -> String {
        String::from_utf8_lossy(&std::fs::read(&self.log_path).unwrap_or_default()).into_owned()
    }

    fn log_tail(&self) -> String {
        let log = self.log();
        let lines: Vec<&str> = log.lines().collect();
        let start = lines.len().saturating_sub(LOG_TAIL_LINES);
        lines[start..].join("\n")
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::thread::panicking() {
            eprintln!("----- last lines of {} -----\n{}", self.name, self.log_tail());
        }
    }
}

/// Picks `count` distinct free ports on 127.0.0.1.
pub fn free_ports(count: usize) -> Vec<u16> {
    quorumlock_testkit::cluster::free_ports(count).expect("free ports on 127.0.0.1")
}
