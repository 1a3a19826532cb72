//! The client workers: each loops acquire → fenced put → read back →
//! release over a small set of locks; one cycle in three instead as a
//! reader: shared acquire → read fenced by the shared hold → release; and
//! one cycle in six on a semaphore: take 1 or 2 of its
//! [`SEMAPHORE_LIMIT`] permits → describe it → release. Every operation is
//! reported as it is invoked and as it completes.
//!
//! A worker runs as its own process (the hidden `chaos-worker` subcommand)
//! so that the nemesis can freeze it with SIGSTOP like a long GC pause; it
//! writes [`WorkerEvent`]s as JSON lines on its standard output.

use std::io::Write;
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::history::{now_us, Call, Return, WorkerEvent};
use quorumlock_client::{Client, ClientConfig, ClientError, Entry, LockDescription, LockGuard, Session};

/// How long one acquire waits in the lock's queue.
pub const ACQUIRE_WAIT: Duration = Duration::from_secs(1);
/// Pause after a failure to reach the cluster, before trying again.
pub const RETRY_PAUSE: Duration = Duration::from_millis(100);

/// The semaphore the workers share.
pub const SEMAPHORE: &str = "chaos-sem";
/// Its number of permits.
pub const SEMAPHORE_LIMIT: u32 = 3;
/// Most permits one semaphore cycle takes.
pub const SEMAPHORE_PERMITS_MAX: u32 = 2;

/// The name of lock number `index`.
pub fn lock_name(index: usize) -> String {
    format!("chaos-{index}")
}

/// The key lock `lock` guards.
pub fn key_of(lock: &str) -> String {
    format!("{lock}/record")
}

/// What one worker does.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// The cluster's endpoints.
    pub endpoints: Vec<String>,
    /// This worker's number (from 1; 0 is the runner's final reader).
    pub worker: u64,
    /// How many locks to choose from.
    pub locks: usize,
    /// Seeds the choice of locks.
    pub seed: u64,
    /// The session TTL.
    pub ttl: Duration,
    /// How long to keep starting operations.
    pub run_for: Duration,
}

/// The client settings of workers and the final reader: short timeouts, so
/// that an operation stuck behind a fault ends (as unknown) and the worker
/// tries again, and so that the history stays small enough to check.
pub fn client_config() -> ClientConfig {
    ClientConfig {
        connect_timeout: Duration::from_millis(500),
        connect_wait_max: Duration::from_secs(5),
        rpc_timeout: Duration::from_secs(2),
        // A paused leader answers no PING: its calls move to another node
        // within 0.75 s of its last answer instead of waiting out the 2 s.
        ping_interval: Some(Duration::from_millis(250)),
        ping_timeout: Duration::from_millis(500),
        retry_total_max: Duration::from_secs(3),
        backoff_initial: Duration::from_millis(20),
        backoff_max: Duration::from_millis(250),
        ..ClientConfig::default()
    }
}

struct Recorder<W: Write> {
    out: W,
    seq: u64,
}

impl<W: Write> Recorder<W> {
    fn invoke(&mut self, session: u64, call: Call) -> std::io::Result<u64> {
        self.seq += 1;
        let event = WorkerEvent::Invoke {
            seq: self.seq,
            session,
            at_us: now_us(),
            call,
        };
        self.emit(&event)?;
        Ok(self.seq)
    }

    fn complete(&mut self, seq: u64, ret: Return) -> std::io::Result<()> {
        let event = WorkerEvent::Complete {
            seq,
            at_us: now_us(),
            ret,
        };
        self.emit(&event)
    }

    fn emit(&mut self, event: &WorkerEvent) -> std::io::Result<()> {
        serde_json::to_writer(&mut self.out, event)?;
        self.out.write_all(b"\n")?;
        // Flushed at once: a worker may be killed at any moment, and what it
        // invoked must be known.
        self.out.flush()
    }
}

fn unknown(error: &ClientError) -> Return {
    Return::Unknown {
        reason: error.to_string(),
    }
}

fn failed(error: &ClientError) -> Return {
    Return::Failed {
        reason: error.to_string(),
    }
}

/// Runs one worker until `run_for` has passed; every operation goes to `out`.
pub async fn run_worker(config: WorkerConfig, out: impl Write) -> anyhow::Result<()> {
    let mut rng = StdRng::seed_from_u64(config.seed ^ config.worker.wrapping_mul(0x9e37_79b9_7f4a_7c15));
    let mut recorder = Recorder { out, seq: 0 };
    let deadline = tokio::time::Instant::now() + config.run_for;
    let client = loop {
        match Client::connect_with(&config.endpoints, client_config()).await {
            Ok(client) => break client,
            Err(error) if tokio::time::Instant::now() < deadline => {
                tracing::warn!(%error, "connecting again");
                tokio::time::sleep(RETRY_PAUSE).await;
            }
            Err(error) => return Err(error.into()),
        }
    };
    let mut written = 0u64;
    while tokio::time::Instant::now() < deadline {
        let session = match client.session(config.ttl).await {
            Ok(session) => session,
            Err(error) => {
                tracing::debug!(%error, "opening a session");
                tokio::time::sleep(RETRY_PAUSE).await;
                continue;
            }
        };
        while tokio::time::Instant::now() < deadline && !session.is_lost() {
            let lock = lock_name(rng.gen_range(0..config.locks.max(1)));
            written += 1;
            // Of six cycles: two shared, one on the semaphore, three
            // exclusive.
            match rng.gen_range(0..6u32) {
                0 | 1 => {
                    shared_cycle(&client, &session, &mut recorder, &lock).await?;
                    continue;
                }
                2 => {
                    let permits = rng.gen_range(1..=SEMAPHORE_PERMITS_MAX);
                    semaphore_cycle(&client, &session, &mut recorder, permits).await?;
                    continue;
                }
                _ => {}
            }
            let value = format!("w{}-{written}", config.worker);
            one_cycle(&client, &session, &mut recorder, &lock, value).await?;
        }
        // Closing is not recorded: it only ends what expiry would end.
        let _ = tokio::time::timeout(Duration::from_secs(2), session.close()).await;
    }
    Ok(())
}

/// The answer to a release, as the history records it.
fn released_return(released: &Result<quorumlock_client::Released, ClientError>) -> Return {
    match released {
        Ok(_) => Return::Released,
        Err(error) if error.is_outcome_unknown() => unknown(error),
        Err(error)
            if matches!(
                error.code(),
                Some(tonic::Code::FailedPrecondition | tonic::Code::NotFound)
            ) =>
        {
            failed(error)
        }
        Err(error) => unknown(error),
    }
}

/// Completes the acquire recorded as `seq` with how it ended; the guard
/// when it was granted.
fn record_acquire<W: Write>(
    recorder: &mut Recorder<W>,
    seq: u64,
    acquired: Result<Option<LockGuard>, ClientError>,
) -> std::io::Result<Option<LockGuard>> {
    let (ret, guard) = match acquired {
        Ok(Some(guard)) => (
            Return::Granted {
                token: guard.token().get(),
            },
            Some(guard),
        ),
        Ok(None) => (
            Return::Failed {
                reason: "not granted within the wait".into(),
            },
            None,
        ),
        Err(error @ ClientError::AlreadyHeld { .. }) => (failed(&error), None),
        // The cluster may have granted it; the session releases such a
        // grant in the background.
        Err(error) => (unknown(&error), None),
    };
    recorder.complete(seq, ret)?;
    Ok(guard)
}

/// The answer to a read, as the history records it. A read changes
/// nothing: a failed one is simply failed.
fn read_return(read: Result<Option<Entry>, ClientError>) -> Return {
    match read {
        Ok(entry) => Return::Read {
            token: entry.as_ref().map(|entry| entry.written_by.token.get()),
            value: entry.map(|entry| String::from_utf8_lossy(&entry.value).into_owned()),
        },
        Err(error) => failed(&error),
    }
}

/// shared acquire → fenced read → release of one lock, each recorded.
async fn shared_cycle<W: Write>(
    client: &Client,
    session: &Session,
    recorder: &mut Recorder<W>,
    lock: &str,
) -> anyhow::Result<()> {
    let id = session.id();
    let key = key_of(lock);
    let seq = recorder.invoke(id.get(), Call::AcquireShared { lock: lock.into() })?;
    let acquired = session.lock_shared_timeout(lock, ACQUIRE_WAIT).await;
    let Some(guard) = record_acquire(recorder, seq, acquired)? else {
        return Ok(());
    };
    let token = guard.token();
    let seq = recorder.invoke(
        id.get(),
        Call::ReadShared {
            lock: lock.into(),
            key: key.clone(),
            token: token.get(),
        },
    )?;
    let read = client.read(&key, &guard).await;
    recorder.complete(seq, read_return(read))?;
    let seq = recorder.invoke(
        id.get(),
        Call::ReleaseShared {
            lock: lock.into(),
            token: token.get(),
        },
    )?;
    let released = guard.release().await;
    recorder.complete(seq, released_return(&released))?;
    Ok(())
}

/// The answer to a describe of the semaphore, as the history records it.
/// A describe changes nothing: a failed one is simply failed.
fn described_return(described: Result<LockDescription, ClientError>) -> Return {
    match described {
        Ok(description) => Return::Described {
            limit: description.semaphore_limit,
            holders: description
                .holders
                .iter()
                .map(|holder| (holder.session_id.get(), holder.token.get(), holder.permits))
                .collect(),
        },
        Err(error) => failed(&error),
    }
}

/// acquire `permits` of [`SEMAPHORE`] → describe it → release, each
/// recorded.
async fn semaphore_cycle<W: Write>(
    client: &Client,
    session: &Session,
    recorder: &mut Recorder<W>,
    permits: u32,
) -> anyhow::Result<()> {
    let id = session.id();
    let seq = recorder.invoke(
        id.get(),
        Call::AcquirePermits {
            semaphore: SEMAPHORE.into(),
            permits,
        },
    )?;
    let acquired = session
        .acquire_permits_timeout(SEMAPHORE, permits, SEMAPHORE_LIMIT, ACQUIRE_WAIT)
        .await;
    let Some(guard) = record_acquire(recorder, seq, acquired)? else {
        return Ok(());
    };
    let token = guard.token();
    let seq = recorder.invoke(
        id.get(),
        Call::DescribeSemaphore {
            semaphore: SEMAPHORE.into(),
        },
    )?;
    let described = client.describe(SEMAPHORE).await;
    recorder.complete(seq, described_return(described))?;
    let seq = recorder.invoke(
        id.get(),
        Call::ReleasePermits {
            semaphore: SEMAPHORE.into(),
            token: token.get(),
        },
    )?;
    let released = guard.release().await;
    recorder.complete(seq, released_return(&released))?;
    Ok(())
}

/// acquire → put → get → release of one lock, each operation recorded.
async fn one_cycle<W: Write>(
    client: &Client,
    session: &Session,
    recorder: &mut Recorder<W>,
    lock: &str,
    value: String,
) -> anyhow::Result<()> {
    let id = session.id();
    let key = key_of(lock);
    let seq = recorder.invoke(id.get(), Call::Acquire { lock: lock.into() })?;
    let acquired = session.lock_timeout(lock, ACQUIRE_WAIT).await;
    let Some(guard) = record_acquire(recorder, seq, acquired)? else {
        return Ok(());
    };
    let token = guard.token();
    let seq = recorder.invoke(
        id.get(),
        Call::Put {
            lock: lock.into(),
            key: key.clone(),
            value: value.clone(),
            token: token.get(),
        },
    )?;
    let put = client.put(&key, value, &guard).await;
    recorder.complete(
        seq,
        match &put {
            Ok(()) => Return::Written,
            Err(error) if error.is_failed_precondition() => failed(error),
            Err(error) => unknown(error),
        },
    )?;
    let seq = recorder.invoke(
        id.get(),
        Call::Get {
            lock: lock.into(),
            key: key.clone(),
        },
    )?;
    let read = client.get(&key).await;
    recorder.complete(seq, read_return(read))?;
    let seq = recorder.invoke(
        id.get(),
        Call::Release {
            lock: lock.into(),
            token: token.get(),
        },
    )?;
    let released = guard.release().await;
    recorder.complete(seq, released_return(&released))?;
    Ok(())
}
