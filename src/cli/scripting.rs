//! The subcommands for scripts: `acquire`, `release`, `describe`, `put`,
//! `get`, `delete` and `status`.
//!
//! A script holds a lock across several commands by passing on what
//! `acquire` printed: `acquire` opens a session of `--ttl` (or uses
//! `--session` with `--session-secret`), keeps it alive while it waits, and
//! on a grant prints `session=<id> secret=<hex> token=<n>` and exits,
//! leaving the session open with no keepalive: it and its lock last one TTL
//! unless released sooner. The session, its secret and the token then guard
//! `put` and `delete`, and `release` takes them back (and closes the session
//! unless `--keep-session`). The secret proves the caller owns the session:
//! keep it out of logs, and pass it in the environment
//! (`QUORUMLOCK_SESSION_SECRET`) rather than on a command line that others
//! can read with `ps`.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use quorumlock_client::{
    AcquireOptions, Fence, FencingToken, LockMode, NodeStatus, SessionId, SessionKey, SessionSecret,
};

use super::{parse_duration, ClusterArgs, EXIT_NO};

/// Flags of `acquire`.
#[derive(Args)]
pub struct AcquireArgs {
    #[command(flatten)]
    cluster: ClusterArgs,
    /// The lock's name.
    name: String,
    /// TTL of the session opened for the lock; the lock is held at most this
    /// long after `acquire` exits unless released first.
    #[arg(long, value_parser = parse_duration, default_value = "60s")]
    ttl: Duration,
    /// Acquire under this existing session instead of opening one; it must
    /// stay alive through the wait (nothing renews it here).
    #[arg(long, requires = "session_secret")]
    session: Option<SessionId>,
    /// The secret of `--session`, as `acquire` printed it.
    #[arg(long, requires = "session", value_parser = parse_secret)]
    session_secret: Option<SessionSecret>,
    /// Give up after waiting this long in the lock's queue (0s: only if
    /// free) [default: wait until granted, with or without --session].
    #[arg(long, value_parser = parse_duration)]
    wait: Option<Duration>,
    #[command(flatten)]
    want: WantArgs,
}

/// What an acquire asks for, as `acquire` and `lock` take it.
#[derive(Args)]
pub struct WantArgs {
    /// Take the lock shared: with other readers, never with a writer. The
    /// token then fences reads (`get --lock --token`), not writes.
    #[arg(long, conflicts_with = "permits")]
    shared: bool,
    /// Take this many permits of a semaphore (with `--of`) instead of a
    /// lock; the token then fences reads, not writes.
    #[arg(long, requires = "of")]
    permits: Option<u32>,
    /// The semaphore's number of permits, with `--permits`.
    #[arg(long, requires = "permits")]
    of: Option<u32>,
    /// Lock-delay of the grant (up to 60s): if the holder's session
    /// expires, or its --max-hold passes, nobody is granted the lock for
    /// this long; a release frees it at once.
    #[arg(long, value_parser = parse_duration, default_value = "0s")]
    lock_delay: Duration,
    /// Maximum hold time of the grant (1s to 24h): the cluster ends the
    /// grant once it has been held this long, even while its session lives.
    #[arg(long, value_parser = parse_duration)]
    max_hold: Option<Duration>,
}

impl WantArgs {
    /// The acquire of `--shared` or `--permits K --of N`, with the grant's
    /// `--lock-delay` and `--max-hold`, waiting as long as it takes.
    pub fn want(&self) -> Want {
        Want(AcquireOptions {
            mode: if self.shared {
                LockMode::Shared
            } else {
                LockMode::Exclusive
            },
            permits: self.permits.zip(self.of),
            wait: None,
            lock_delay: self.lock_delay,
            max_hold: self.max_hold,
        })
    }
}

/// What an acquire asks for: a lock in a mode or permits of a semaphore,
/// and the grant's terms.
#[derive(Debug, Clone, Copy)]
pub struct Want(AcquireOptions);

impl Want {
    /// One acquire of at most `wait` by the session of `key`.
    async fn acquire(
        self,
        client: &quorumlock_client::Client,
        key: &SessionKey,
        name: &str,
        wait: Duration,
    ) -> Result<Option<FencingToken>, quorumlock_client::ClientError> {
        let options = AcquireOptions {
            wait: Some(wait),
            ..self.0
        };
        client.acquire_with(key, name, &options).await
    }

    /// A guard of `session`, waiting at most `wait` (or until granted).
    pub async fn guard(
        self,
        session: &quorumlock_client::Session,
        name: &str,
        wait: Option<Duration>,
    ) -> Result<Option<quorumlock_client::LockGuard>, quorumlock_client::ClientError> {
        let options = AcquireOptions { wait, ..self.0 };
        session.acquire_with(name, &options).await
    }
}

/// A session secret given as 64 hex digits.
fn parse_secret(text: &str) -> Result<SessionSecret, String> {
    SessionSecret::from_hex(text).map_err(|error| error.to_string())
}

/// Acquires a lock and prints `session=<id> secret=<hex> token=<n>`.
pub async fn acquire(args: AcquireArgs) -> anyhow::Result<i32> {
    let client = args.cluster.connect().await?;
    let want = args.want.want();
    let given = args
        .session
        .zip(args.session_secret)
        .map(|(id, secret)| SessionKey::new(id, secret));
    let (key, token) = match given {
        Some(key) => match args.wait {
            Some(wait) => {
                let token = acquire_within(&client, &key, &args.name, wait, want).await?;
                (Some(key), token)
            }
            // Without --wait the session waits in the queue until granted, one
            // server-side wait of at most lock_wait_step_max at a time.
            None => loop {
                let step = client.config().lock_wait_step_max;
                if let Some(token) = want.acquire(&client, &key, &args.name, step).await? {
                    break (Some(key), Some(token));
                }
            },
        },
        None => {
            let session = client.session(args.ttl).await?;
            let guard = want.guard(&session, &args.name, args.wait).await?;
            match guard {
                Some(guard) => {
                    let token = guard.detach().token;
                    (Some(session.detach()), Some(token))
                }
                None => {
                    // Nothing was granted: the session has no further use.
                    session.close().await?;
                    (None, None)
                }
            }
        }
    };
    match key.zip(token) {
        Some((key, token)) => {
            println!("session={} secret={} token={token}", key.id, key.secret.to_hex());
            Ok(0)
        }
        None => {
            let described = client.describe(&args.name).await?;
            let holder = match (
                described.holder,
                described.holders.len(),
                described.semaphore_limit,
            ) {
                (Some(holder), _, _) => format!(
                    "held by session {} with token {}",
                    holder.session_id, holder.token
                ),
                (None, 0, _) => "free again".to_string(),
                (None, holders, Some(limit)) => {
                    let used: u64 = described
                        .holders
                        .iter()
                        .map(|holder| u64::from(holder.permits))
                        .sum();
                    format!(
                        "a semaphore with {used} of its {limit} permits held by {holders} session(s), {} waiting",
                        described.queue_length
                    )
                }
                (None, readers, None) => format!(
                    "held shared by {readers} session(s), {} waiting",
                    described.queue_length
                ),
            };
            eprintln!("quorumlock: lock {:?} not acquired: {holder}", args.name);
            Ok(EXIT_NO)
        }
    }
}

/// Waits at most `wait` in the lock's queue for session `session_id`, in as
/// many server-side waits of at most `lock_wait_step_max` as that takes.
async fn acquire_within(
    client: &quorumlock_client::Client,
    key: &SessionKey,
    name: &str,
    wait: Duration,
    want: Want,
) -> anyhow::Result<Option<FencingToken>> {
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        if let Some(token) = want.acquire(client, key, name, left).await? {
            return Ok(Some(token));
        }
        if left <= client.config().lock_wait_step_max {
            return Ok(None);
        }
    }
}

/// Flags of `release`.
#[derive(Args)]
pub struct ReleaseArgs {
    #[command(flatten)]
    cluster: ClusterArgs,
    /// The lock's name.
    name: String,
    #[command(flatten)]
    session: SessionArgs,
    /// The token of the grant, as `acquire` printed it.
    #[arg(long)]
    token: FencingToken,
    /// Leave the session open (by default it is closed: `acquire` opened it
    /// for this lock alone).
    #[arg(long)]
    keep_session: bool,
}

/// Releases a lock and, unless asked not to, closes its session.
pub async fn release(args: ReleaseArgs) -> anyhow::Result<i32> {
    let client = args.cluster.connect().await?;
    let key = args.session.key();
    let released = client.release(&key, &args.name, args.token).await?;
    match released.next {
        Some(next) => println!(
            "released {}; granted to session {} with token {}",
            args.name, next.session_id, next.token
        ),
        None => println!("released {}", args.name),
    }
    if !args.keep_session {
        client.close_session(&key).await?;
    }
    Ok(0)
}

/// Flags of `force-release`.
#[derive(Args)]
pub struct ForceReleaseArgs {
    #[command(flatten)]
    cluster: ClusterArgs,
    /// The lock's name.
    name: String,
    /// The token of the grant to free, as `describe` prints it.
    #[arg(long)]
    token: FencingToken,
}

/// Frees a holder's grant for an administrator; prints `forced <lock>
/// free from session <id>` and who was granted it next.
pub async fn force_release(args: ForceReleaseArgs) -> anyhow::Result<i32> {
    let client = args.cluster.connect().await?;
    let forced = client.force_release(&args.name, args.token).await?;
    match forced.next {
        Some(next) => println!(
            "forced {} free from session {}; granted to session {} with token {}",
            args.name, forced.holder, next.session_id, next.token
        ),
        None => println!("forced {} free from session {}", args.name, forced.holder),
    }
    Ok(0)
}

/// Flags of `describe`.
#[derive(Args)]
pub struct DescribeArgs {
    #[command(flatten)]
    cluster: ClusterArgs,
    /// The lock's name.
    name: String,
}

/// Prints `held=true session=<id> token=<n> queue_length=<n>` for an
/// exclusive holder, `held=true mode=shared holders=<id>:<token>,...
/// queue_length=<n>` for shared holders, `held=true mode=semaphore
/// limit=<n> holders=<id>:<token>:<permits>,... queue_length=<n>` for a
/// semaphore, `held=false queue_length=<n>` for a free lock; each followed
/// by ` lock_delay=<n>ms left=<n>ms` while a lock-delay is in force.
pub async fn describe(args: DescribeArgs) -> anyhow::Result<i32> {
    let client = args.cluster.connect().await?;
    let described = client.describe(&args.name).await?;
    let line = match (described.holder, described.mode) {
        (Some(holder), _) => format!(
            "held=true session={} token={} queue_length={}",
            holder.session_id, holder.token, described.queue_length
        ),
        (None, LockMode::Semaphore) if !described.holders.is_empty() => {
            let holders: Vec<String> = described
                .holders
                .iter()
                .map(|holder| format!("{}:{}:{}", holder.session_id, holder.token, holder.permits))
                .collect();
            format!(
                "held=true mode=semaphore limit={} holders={} queue_length={}",
                described.semaphore_limit.unwrap_or(0),
                holders.join(","),
                described.queue_length
            )
        }
        (None, LockMode::Shared) if !described.holders.is_empty() => {
            let holders: Vec<String> = described
                .holders
                .iter()
                .map(|holder| format!("{}:{}", holder.session_id, holder.token))
                .collect();
            format!(
                "held=true mode=shared holders={} queue_length={}",
                holders.join(","),
                described.queue_length
            )
        }
        _ => format!("held=false queue_length={}", described.queue_length),
    };
    match described.lock_delay {
        Some(delay) => println!(
            "{line} lock_delay={}ms left={}ms",
            delay.length.as_millis(),
            delay.left.as_millis()
        ),
        None => println!("{line}"),
    }
    Ok(0)
}

/// The session a call is made on, and the secret that proves it is the
/// caller's.
#[derive(Args)]
pub struct SessionArgs {
    /// The session, as `acquire` printed it (`lock` exports it as
    /// QUORUMLOCK_SESSION).
    #[arg(long, env = "QUORUMLOCK_SESSION")]
    session: SessionId,
    /// The session's secret, as `acquire` printed it (`lock` exports it as
    /// QUORUMLOCK_SESSION_SECRET). Prefer the environment: a command line
    /// is visible to other users of the machine.
    #[arg(long, env = "QUORUMLOCK_SESSION_SECRET", hide_env_values = true, value_parser = parse_secret)]
    session_secret: SessionSecret,
}

impl SessionArgs {
    fn key(&self) -> SessionKey {
        SessionKey::new(self.session, self.session_secret.clone())
    }
}

/// The lock and token that guard a write.
#[derive(Args)]
pub struct FenceArgs {
    /// The lock whose token guards the write (`lock` exports it as
    /// QUORUMLOCK_LOCK).
    #[arg(long, env = "QUORUMLOCK_LOCK")]
    lock: String,
    /// The token of the writer's grant (`lock` exports it as
    /// QUORUMLOCK_TOKEN).
    #[arg(long, env = "QUORUMLOCK_TOKEN")]
    token: FencingToken,
}

impl FenceArgs {
    fn fence(&self) -> Fence {
        Fence {
            lock: self.lock.clone(),
            token: self.token,
        }
    }
}

/// Flags of `put`.
#[derive(Args)]
pub struct PutArgs {
    #[command(flatten)]
    cluster: ClusterArgs,
    #[command(flatten)]
    fence: FenceArgs,
    /// The session that holds the fence's lock.
    #[command(flatten)]
    session: SessionArgs,
    /// The key.
    key: String,
    /// The value [default: read from standard input].
    value: Option<String>,
}

/// Writes a key; refused unless the token is the lock's current one.
pub async fn put(args: PutArgs) -> anyhow::Result<i32> {
    let value = match args.value {
        Some(value) => value.into_bytes(),
        None => {
            let mut value = Vec::new();
            std::io::stdin()
                .read_to_end(&mut value)
                .context("reading the value from standard input")?;
            value
        }
    };
    let client = args.cluster.connect().await?;
    client
        .put_fenced(&args.key, value, &args.fence.fence(), &args.session.key())
        .await?;
    Ok(0)
}

/// Flags of `get`.
#[derive(Args)]
pub struct GetArgs {
    #[command(flatten)]
    cluster: ClusterArgs,
    /// The key.
    key: String,
    /// Print `lock=<name> token=<n>` of the write that stored the value
    /// instead of the value.
    #[arg(long)]
    fence: bool,
    /// Read under this lock: answered only while `--token` is one of its
    /// holders' (shared or exclusive); a reader that lost the lock is
    /// refused (exit 1, STALE_TOKEN).
    #[arg(long, requires = "token")]
    lock: Option<String>,
    /// The token of the hold the read is made under, with `--lock`.
    #[arg(long, requires = "lock")]
    token: Option<FencingToken>,
}

/// Prints a key's value exactly as stored (or the fence that wrote it).
pub async fn get(args: GetArgs) -> anyhow::Result<i32> {
    let client = args.cluster.connect().await?;
    let read = match args.lock.zip(args.token) {
        Some((lock, token)) => client.get_fenced(&args.key, &Fence { lock, token }).await?,
        None => client.get(&args.key).await?,
    };
    let Some(entry) = read else {
        eprintln!("quorumlock: key {:?} not found", args.key);
        return Ok(EXIT_NO);
    };
    if args.fence {
        println!("lock={} token={}", entry.written_by.lock, entry.written_by.token);
    } else {
        let mut stdout = std::io::stdout().lock();
        stdout
            .write_all(&entry.value)
            .context("writing to standard output")?;
        stdout.flush().context("writing to standard output")?;
    }
    Ok(0)
}

/// Flags of `delete`.
#[derive(Args)]
pub struct DeleteArgs {
    #[command(flatten)]
    cluster: ClusterArgs,
    #[command(flatten)]
    fence: FenceArgs,
    /// The session that holds the fence's lock.
    #[command(flatten)]
    session: SessionArgs,
    /// The key.
    key: String,
}

/// Deletes a key; prints `existed=<bool>`.
pub async fn delete(args: DeleteArgs) -> anyhow::Result<i32> {
    let client = args.cluster.connect().await?;
    let existed = client
        .delete_fenced(&args.key, &args.fence.fence(), &args.session.key())
        .await?;
    println!("existed={existed}");
    Ok(0)
}

/// Flags of `status`.
#[derive(Args)]
pub struct StatusArgs {
    #[command(flatten)]
    cluster: ClusterArgs,
}

/// One row of the status table: a member and what it said, if it answered.
struct Row {
    addr: String,
    answer: Result<NodeStatus, String>,
}

/// Asks every given endpoint and every member they name for its status and
/// prints one row per member.
pub async fn status(args: StatusArgs) -> anyhow::Result<i32> {
    let client = args.cluster.connect().await?;
    let mut rows: BTreeMap<u64, Row> = BTreeMap::new();
    let mut unknown: Vec<Row> = Vec::new();
    for endpoint in client.endpoints() {
        match client.status_of(&endpoint).await {
            Ok(status) => {
                for (id, addr) in &status.members {
                    rows.entry((*id).get()).or_insert_with(|| Row {
                        addr: addr.clone(),
                        answer: Err("not asked yet".to_string()),
                    });
                }
                rows.insert(
                    status.node_id.get(),
                    Row {
                        addr: endpoint.clone(),
                        answer: Ok(status),
                    },
                );
            }
            Err(error) => unknown.push(Row {
                addr: endpoint,
                answer: Err(error.to_string()),
            }),
        }
    }
    // Members that no given endpoint reached are asked at the address the
    // cluster knows them by.
    for row in rows.values_mut() {
        if row.answer.is_err() {
            row.answer = client
                .status_of(&row.addr)
                .await
                .map_err(|error| error.to_string());
        }
    }
    // An unreachable endpoint that is a known member's address is not
    // listed twice.
    unknown.retain(|row| !rows.values().any(|known| known.addr == row.addr));

    println!(
        "{:<4} {:<24} {:<9} {:>6} {:>8} {:>8}",
        "ID", "ADDRESS", "ROLE", "TERM", "COMMIT", "APPLIED"
    );
    for (id, row) in &rows {
        print_row(&id.to_string(), row);
    }
    for row in &unknown {
        print_row("?", row);
    }
    let leaders: Vec<String> = rows
        .values()
        .filter_map(|row| row.answer.as_ref().ok()?.leader.clone())
        .map(|(id, addr)| format!("node {id} at {addr}"))
        .collect();
    match leaders.first() {
        Some(leader) if leaders.iter().all(|other| other == leader) => println!("leader: {leader}"),
        Some(_) => println!("leader: the members disagree ({})", leaders.join(", ")),
        None => println!("leader: none known"),
    }
    Ok(0)
}

fn print_row(id: &str, row: &Row) {
    match &row.answer {
        Ok(status) => {
            let role = if status.is_leader { "leader" } else { "follower" };
            println!(
                "{id:<4} {:<24} {role:<9} {:>6} {:>8} {:>8}",
                row.addr, status.term, status.commit_index, status.applied_index
            );
        }
        Err(error) => println!("{id:<4} {:<24} unreachable: {error}", row.addr),
    }
}
