//! One `redis-server` as a [`LockSystem`]: `SET key owner NX PX ttl` to
//! acquire (polled, since Redis has no lock queue), a compare-and-delete Lua
//! script to release. Unsafe by design (one node, no fencing, expiry by the
//! server's clock): the speed ceiling users quote, not an equivalent.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use ::redis::aio::MultiplexedConnection;
use anyhow::Context;
use async_trait::async_trait;
use quorumlock_testkit::cluster::{free_ports, NodeProcess, ProcessUsage};
use rand::Rng;
use tokio::time::Instant;

use super::systems::{Held, HeldInner, LockClient, LockSession, LockSystem};

/// The server Debian's `redis-server` installs.
pub const REDIS_EXE: &str = "/usr/bin/redis-server";
/// Pause between two `SET NX` attempts on a taken lock, before jitter.
pub const RETRY_DELAY: Duration = Duration::from_millis(2);
/// Jitter added to [`RETRY_DELAY`], at most.
pub const RETRY_JITTER_MAX: Duration = Duration::from_millis(2);
/// Longest wait for the server to answer after a start.
pub const START_WAIT_MAX: Duration = Duration::from_secs(20);
/// The persistence the harness leaves at Redis's built-in defaults (no
/// configuration file is passed), quoted in the report.
pub const PERSISTENCE: &str =
    "Redis 7 built-in defaults (no config file): RDB `save 3600 1 300 100 60 10000`, `appendonly no`";

const RELEASE_SCRIPT: &str = r#"
if redis.call("GET", KEYS[1]) == ARGV[1] then
    return redis.call("DEL", KEYS[1])
else
    return 0
end
"#;

/// Whether `/usr/bin/redis-server` exists.
pub fn installed() -> bool {
    Path::new(REDIS_EXE).exists()
}

/// `redis-server --version`.
pub fn version() -> String {
    super::report::command_first_line(REDIS_EXE, &["--version"])
}

/// One running Redis server.
pub struct RedisSystem {
    server: NodeProcess,
    url: String,
    root: tempfile::TempDir,
}

impl RedisSystem {
    /// Starts the server on a free loopback port and waits until it answers.
    pub async fn start() -> anyhow::Result<RedisSystem> {
        let root = tempfile::Builder::new()
            .prefix("quorumlock-bench-redis-")
            .tempdir()?;
        let port = free_ports(1)?[0];
        let data = root.path().join("data");
        std::fs::create_dir_all(&data)?;
        let args = vec![
            "--port".to_string(),
            port.to_string(),
            "--bind".to_string(),
            "127.0.0.1".to_string(),
            "--dir".to_string(),
            data.display().to_string(),
            "--daemonize".to_string(),
            "no".to_string(),
        ];
        let mut server = NodeProcess::new(
            1,
            format!("127.0.0.1:{port}"),
            PathBuf::from(REDIS_EXE),
            args,
            Vec::new(),
            root.path().join("redis.log"),
        );
        server.start()?;
        let system = RedisSystem {
            server,
            url: format!("redis://127.0.0.1:{port}/"),
            root,
        };
        system.wait_answering(START_WAIT_MAX).await?;
        Ok(system)
    }

    async fn wait_answering(&self, limit: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + limit;
        loop {
            if let Ok(mut connection) = self.connection().await {
                let pong: ::redis::RedisResult<String> =
                    ::redis::cmd("PING").query_async(&mut connection).await;
                if pong.is_ok() {
                    return Ok(());
                }
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "redis did not answer within {limit:?}: {}",
                self.server.log_tail(10)
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn connection(&self) -> anyhow::Result<MultiplexedConnection> {
        let client = ::redis::Client::open(self.url.as_str())?;
        client
            .get_multiplexed_async_connection()
            .await
            .context("connecting to redis")
    }
}

#[async_trait]
impl LockSystem for RedisSystem {
    fn name(&self) -> String {
        "redis".to_string()
    }

    async fn connect(&self) -> anyhow::Result<Arc<dyn LockClient>> {
        Ok(Arc::new(RedisClient {
            connection: self.connection().await?,
            release: Arc::new(::redis::Script::new(RELEASE_SCRIPT)),
        }))
    }

    fn nodes(&self) -> usize {
        1
    }

    async fn leader(&mut self) -> anyhow::Result<usize> {
        Ok(0)
    }

    async fn term(&mut self) -> anyhow::Result<Option<u64>> {
        Ok(None)
    }

    fn usage(&self, _index: usize) -> Option<ProcessUsage> {
        self.server.usage()
    }

    fn data_dir(&self, _index: usize) -> PathBuf {
        self.root.path().join("data")
    }

    fn replicated(&self) -> bool {
        false
    }

    fn kill(&mut self, _index: usize) -> anyhow::Result<()> {
        self.server.kill()
    }

    fn restart(&mut self, _index: usize) -> anyhow::Result<()> {
        self.server.start()
    }

    async fn wait_caught_up(&mut self, _index: usize, limit: Duration) -> anyhow::Result<()> {
        self.wait_answering(limit).await
    }
}

struct RedisClient {
    connection: MultiplexedConnection,
    release: Arc<::redis::Script>,
}

#[async_trait]
impl LockClient for RedisClient {
    async fn session(&self, ttl: Duration) -> anyhow::Result<Box<dyn LockSession>> {
        Ok(Box::new(RedisSession {
            connection: self.connection.clone(),
            release: self.release.clone(),
            owner: format!("{:016x}", rand::thread_rng().gen::<u64>()),
            ttl_ms: u64::try_from(ttl.as_millis())?,
        }))
    }
}

/// Redis has no sessions: a "session" is an owner value and the expiry put
/// on every lock it takes.
struct RedisSession {
    connection: MultiplexedConnection,
    release: Arc<::redis::Script>,
    owner: String,
    ttl_ms: u64,
}

#[async_trait]
impl LockSession for RedisSession {
    async fn acquire(&self, name: &str) -> anyhow::Result<Held> {
        let mut connection = self.connection.clone();
        loop {
            let set: Option<String> = ::redis::cmd("SET")
                .arg(name)
                .arg(&self.owner)
                .arg("NX")
                .arg("PX")
                .arg(self.ttl_ms)
                .query_async(&mut connection)
                .await?;
            if set.is_some() {
                return Ok(Held {
                    token: 0,
                    inner: HeldInner::Redis {
                        key: name.to_string(),
                        owner: self.owner.clone(),
                    },
                });
            }
            let jitter = rand::thread_rng().gen_range(Duration::ZERO..=RETRY_JITTER_MAX);
            tokio::time::sleep(RETRY_DELAY + jitter).await;
        }
    }

    async fn release(&self, held: Held) -> anyhow::Result<()> {
        let HeldInner::Redis { key, owner } = held.inner else {
            anyhow::bail!("not a redis lock");
        };
        let mut connection = self.connection.clone();
        let deleted: i64 = self
            .release
            .key(&key)
            .arg(&owner)
            .invoke_async(&mut connection)
            .await?;
        anyhow::ensure!(deleted == 1, "redis lock {key} was no longer ours at release");
        Ok(())
    }

    async fn fenced_put(&self, _held: &Held, key: &str, value: &[u8]) -> anyhow::Result<()> {
        // Redis cannot fence: a plain SET, which a paused former holder could
        // still overwrite.
        let mut connection = self.connection.clone();
        let _: () = ::redis::cmd("SET")
            .arg(key)
            .arg(value)
            .query_async(&mut connection)
            .await?;
        Ok(())
    }

    fn is_lost(&self) -> bool {
        false
    }

    async fn close(&self) -> anyhow::Result<()> {
        Ok(())
    }
}
