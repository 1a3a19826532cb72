//! The recorded history of a chaos run: every client operation with the
//! times it was invoked and completed, and every fault the nemesis injected,
//! written as JSON lines.
//!
//! Times are microseconds of `CLOCK_MONOTONIC`, which every process on the
//! machine shares, so the runner and its worker processes record on one
//! time line that no clock step can disturb.

use std::io::{BufRead, Write};
use std::path::Path;

use anyhow::Context;
use serde::{Deserialize, Serialize};

/// The process id recorded for the runner's final reads.
pub const FINAL_READER: u64 = 0;

/// Microseconds of `CLOCK_MONOTONIC`.
pub fn now_us() -> u64 {
    let now = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
        .expect("CLOCK_MONOTONIC is always readable on Linux");
    u64::try_from(now.tv_sec()).unwrap_or(0) * 1_000_000 + u64::try_from(now.tv_nsec()).unwrap_or(0) / 1_000
}

/// What a client asked for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "call", rename_all = "snake_case")]
pub enum Call {
    /// Acquire a lock under the process's session (waiting a bounded time).
    Acquire {
        /// The lock.
        lock: String,
    },
    /// A fenced write of `value` under `key`, guarded by `lock` and `token`.
    Put {
        /// The lock guarding the key.
        lock: String,
        /// The key.
        key: String,
        /// A value unique in the run.
        value: String,
        /// The fencing token presented.
        token: u64,
    },
    /// A linearizable read of a key.
    Get {
        /// The lock guarding the key.
        lock: String,
        /// The key.
        key: String,
    },
    /// Release of a grant.
    Release {
        /// The lock.
        lock: String,
        /// The grant's token.
        token: u64,
    },
    /// Acquire a lock shared (waiting a bounded time).
    AcquireShared {
        /// The lock.
        lock: String,
    },
    /// A read of a key fenced by a shared hold: answered only while the
    /// hold is current.
    ReadShared {
        /// The lock guarding the key.
        lock: String,
        /// The key.
        key: String,
        /// The shared hold's token.
        token: u64,
    },
    /// Release of a shared grant.
    ReleaseShared {
        /// The lock.
        lock: String,
        /// The grant's token.
        token: u64,
    },
    /// Acquire `permits` of a semaphore (waiting a bounded time).
    AcquirePermits {
        /// The semaphore.
        semaphore: String,
        /// How many permits.
        permits: u32,
    },
    /// A linearizable description of a semaphore: its limit and holders.
    DescribeSemaphore {
        /// The semaphore.
        semaphore: String,
    },
    /// Release of a semaphore grant.
    ReleasePermits {
        /// The semaphore.
        semaphore: String,
        /// The grant's token.
        token: u64,
    },
}

impl Call {
    /// The lock or semaphore the operation concerns (each lock guards one
    /// key; a semaphore guards none).
    pub fn lock(&self) -> &str {
        match self {
            Call::Acquire { lock }
            | Call::Put { lock, .. }
            | Call::Get { lock, .. }
            | Call::Release { lock, .. }
            | Call::AcquireShared { lock }
            | Call::ReadShared { lock, .. }
            | Call::ReleaseShared { lock, .. } => lock,
            Call::AcquirePermits { semaphore, .. }
            | Call::DescribeSemaphore { semaphore }
            | Call::ReleasePermits { semaphore, .. } => semaphore,
        }
    }

    /// A short name of the operation's kind.
    pub fn kind(&self) -> &'static str {
        match self {
            Call::Acquire { .. } => "acquire",
            Call::Put { .. } => "put",
            Call::Get { .. } => "get",
            Call::Release { .. } => "release",
            Call::AcquireShared { .. } => "acquire_shared",
            Call::ReadShared { .. } => "read_shared",
            Call::ReleaseShared { .. } => "release_shared",
            Call::AcquirePermits { .. } => "acquire_permits",
            Call::DescribeSemaphore { .. } => "describe_semaphore",
            Call::ReleasePermits { .. } => "release_permits",
        }
    }
}

/// How an operation ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "ret", rename_all = "snake_case")]
pub enum Return {
    /// The lock was granted with this token.
    Granted {
        /// The fencing token.
        #[serde(rename = "granted_token")]
        token: u64,
    },
    /// The fenced write was acknowledged.
    Written,
    /// The read answered: the value and the token that wrote it, or nothing.
    Read {
        /// The value, when the key is set.
        #[serde(rename = "read_value")]
        value: Option<String>,
        /// The token of the write that stored it.
        #[serde(rename = "read_token")]
        token: Option<u64>,
    },
    /// The release was acknowledged.
    Released,
    /// A semaphore's description: its limit (`None` when the cluster keeps
    /// no semaphore of that name, i.e. nobody holds or waits for it) and
    /// its holders.
    Described {
        /// The semaphore's number of permits.
        limit: Option<u32>,
        /// Every holder: (session, token, permits).
        holders: Vec<(u64, u64, u32)>,
    },
    /// The cluster answered, and the operation certainly took no effect (a
    /// lock not granted within the wait, a stale token refused, a read that
    /// failed).
    Failed {
        /// Why.
        reason: String,
    },
    /// The operation may or may not have taken effect (a timeout, a lost
    /// connection, an answer that never came).
    Unknown {
        /// Why.
        reason: String,
    },
}

impl Return {
    /// `ok`, `failed` or `unknown`.
    pub fn outcome(&self) -> &'static str {
        match self {
            Return::Failed { .. } => "failed",
            Return::Unknown { .. } => "unknown",
            _ => "ok",
        }
    }

    /// Whether the cluster acknowledged the operation.
    pub fn is_ok(&self) -> bool {
        self.outcome() == "ok"
    }
}

/// One client operation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Op {
    /// The worker that ran it ([`FINAL_READER`] for the final reads).
    pub process: u64,
    /// The worker's session at the time (0 for none).
    pub session: u64,
    /// When it was invoked.
    pub invoke_us: u64,
    /// When its answer came; `None` if it never did.
    pub complete_us: Option<u64>,
    /// What was asked.
    #[serde(flatten)]
    pub call: Call,
    /// The answer.
    #[serde(flatten)]
    pub ret: Return,
}

impl Op {
    /// The completion time, with an operation that never completed counted
    /// as completing after everything.
    pub fn complete_or_max(&self) -> u64 {
        self.complete_us.unwrap_or(u64::MAX)
    }
}

/// A fault the nemesis injected, and when it was healed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fault {
    /// `kill`, `pause_node`, `pause_client`, `partition_isolate`,
    /// `partition_split`, `clock_skew`, or a change of membership: `add`,
    /// `promote`, `remove`, `replace`.
    pub kind: String,
    /// What was done, in words (which nodes, which worker, what skew).
    pub detail: String,
    /// When it started.
    pub start_us: u64,
    /// When everything it broke was whole again.
    pub healed_us: u64,
    /// How a change of membership ended: `done`, `refused` (skipped after
    /// the cluster refused it, e.g. another change was in progress or the
    /// learner lagged), `skipped` (nothing to change) or `unknown` (no
    /// answer; the membership the cluster lists afterwards says what
    /// happened). `None` for the other kinds, which always happen.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outcome: Option<String>,
}

impl Fault {
    /// A fault of `kind` that started at `start_us` and is over now.
    pub fn ended_now(kind: &str, detail: String, start_us: u64, outcome: Option<String>) -> Fault {
        Fault {
            kind: kind.to_string(),
            detail,
            start_us,
            healed_us: now_us(),
            outcome,
        }
    }

    /// Prints the fault's line of the run's log to stderr.
    pub fn log(&self) {
        eprintln!(
            "nemesis: {:>10.3}s {} ({}) over after {:.1}s",
            self.start_us as f64 / 1e6,
            self.kind,
            self.detail,
            (self.healed_us - self.start_us) as f64 / 1e6
        );
    }
}

/// One line of the history file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Entry {
    /// A client operation.
    Op(Op),
    /// A fault.
    Fault(Fault),
}

/// What a worker process reports on its standard output, one JSON object a
/// line: an invocation before the call and its completion after, so that an
/// operation whose answer never comes (the worker was stopped) is still
/// known.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum WorkerEvent {
    /// An operation started.
    Invoke {
        /// The worker's sequence number of the operation.
        seq: u64,
        /// The session in use.
        session: u64,
        /// When.
        at_us: u64,
        /// What.
        #[serde(flatten)]
        call: Call,
    },
    /// An operation ended.
    Complete {
        /// The sequence number of its invocation.
        seq: u64,
        /// When.
        at_us: u64,
        /// How.
        #[serde(flatten)]
        ret: Return,
    },
}

/// Writes the history as JSON lines.
pub fn write_history(path: &Path, entries: &[Entry]) -> anyhow::Result<()> {
    let file = std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
    let mut out = std::io::BufWriter::new(file);
    for entry in entries {
        serde_json::to_writer(&mut out, entry)?;
        out.write_all(b"\n")?;
    }
    out.flush().with_context(|| format!("writing {}", path.display()))
}

/// Reads a history written by [`write_history`].
pub fn read_history(path: &Path) -> anyhow::Result<Vec<Entry>> {
    let file = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut entries = Vec::new();
    for (number, line) in std::io::BufReader::new(file).lines().enumerate() {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        entries.push(
            serde_json::from_str(&line).with_context(|| format!("{} line {}", path.display(), number + 1))?,
        );
    }
    Ok(entries)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_history_survives_the_round_trip_through_its_file() {
        let entries = vec![
            Entry::Op(Op {
                process: 1,
                session: 7,
                invoke_us: 10,
                complete_us: Some(20),
                call: Call::Put {
                    lock: "l".into(),
                    key: "k".into(),
                    value: "v".into(),
                    token: 3,
                },
                ret: Return::Written,
            }),
            Entry::Op(Op {
                process: 2,
                session: 8,
                invoke_us: 11,
                complete_us: None,
                call: Call::Get {
                    lock: "l".into(),
                    key: "k".into(),
                },
                ret: Return::Unknown {
                    reason: "stopped".into(),
                },
            }),
            Entry::Op(Op {
                process: 3,
                session: 9,
                invoke_us: 12,
                complete_us: Some(13),
                call: Call::AcquirePermits {
                    semaphore: "s".into(),
                    permits: 2,
                },
                ret: Return::Granted { token: 4 },
            }),
            Entry::Op(Op {
                process: 3,
                session: 9,
                invoke_us: 14,
                complete_us: Some(15),
                call: Call::DescribeSemaphore {
                    semaphore: "s".into(),
                },
                ret: Return::Described {
                    limit: Some(3),
                    holders: vec![(9, 4, 2), (10, 5, 1)],
                },
            }),
            Entry::Op(Op {
                process: 3,
                session: 9,
                invoke_us: 16,
                complete_us: Some(17),
                call: Call::ReleasePermits {
                    semaphore: "s".into(),
                    token: 4,
                },
                ret: Return::Released,
            }),
            Entry::Fault(Fault {
                kind: "kill".into(),
                detail: "node 1".into(),
                start_us: 1,
                healed_us: 2,
                outcome: None,
            }),
            Entry::Fault(Fault {
                kind: "promote".into(),
                detail: "node 4".into(),
                start_us: 3,
                healed_us: 4,
                outcome: Some("done".into()),
            }),
        ];
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("history.jsonl");
        write_history(&path, &entries).unwrap();
        assert_eq!(read_history(&path).unwrap(), entries);
    }

    #[test]
    fn monotonic_time_moves_forward() {
        let first = now_us();
        assert!(now_us() >= first);
    }
}
