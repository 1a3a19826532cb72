//! The subcommands of the `quorumlock` binary, one module per area.

mod certs;
mod demo;
mod lock_command;
mod member;
mod scripting;
mod serve;
mod serve_args;
mod snapshot;
mod token;
mod watch;

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use quorumlock_client::{BearerToken, Client, ClientConfig, ClientTls, ClientTlsFiles};
use serve_args::ServeArgs;

/// Exit code of a failure (bad input, unreachable cluster, refused call).
pub const EXIT_ERROR: i32 = 1;
/// Exit code when the answer is "no": a lock not acquired within the wait,
/// a key not found.
pub const EXIT_NO: i32 = 3;
/// Exit code of `lock` when the lock was lost while the command ran.
pub const EXIT_LOCK_LOST: i32 = 4;
/// Exit code of `serve` when the node stopped because its storage failed.
pub const EXIT_STORAGE_FAILED: i32 = 5;
/// `serve` refused to start from its data directory, or to go on with it:
/// a database that fails its checksums; a directory that belongs to
/// another node, holds the other engine's state, or lost the state its
/// identity file records; or a directory a peer shows was emptied or
/// replaced since it knew the node (another incarnation). Restarting will
/// not help; see README, "Storage faults".
pub const EXIT_DATA_DIR_REFUSED: i32 = 6;

/// The endpoints `quorumlock dev` serves, used when none are given.
pub const DEFAULT_ENDPOINTS: &str = "127.0.0.1:7001,127.0.0.1:7002,127.0.0.1:7003";

/// The parsed command line.
#[derive(Parser)]
#[command(
    name = "quorumlock",
    version,
    about = "A distributed lock service with fencing tokens",
    after_help = "Exit codes: 0 success, 1 error, 2 bad usage, 3 not acquired / not found, \
                  4 lock lost while `lock` ran its command, 5 the node stopped because its storage failed."
)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Runs one node of a cluster.
    Serve(ServeArgs),
    /// Runs a local cluster on 127.0.0.1 in this process, with no other setup.
    Dev(serve::DevArgs),
    /// Plays the paused-client scenario against a local (or given) cluster.
    Demo(demo::DemoArgs),
    /// Runs a command while holding a lock.
    Lock(lock_command::LockArgs),
    /// Acquires a lock and prints `session=<id> token=<n>`.
    Acquire(scripting::AcquireArgs),
    /// Releases a lock acquired with `acquire`.
    Release(scripting::ReleaseArgs),
    /// Frees a holder's grant of a lock by its token (an administrator's
    /// call), granting the next waiters.
    ForceRelease(scripting::ForceReleaseArgs),
    /// Prints who holds a lock.
    Describe(scripting::DescribeArgs),
    /// Writes a key of the fenced store, guarded by a lock's token.
    Put(scripting::PutArgs),
    /// Reads a key of the fenced store.
    Get(scripting::GetArgs),
    /// Deletes a key of the fenced store, guarded by a lock's token.
    Delete(scripting::DeleteArgs),
    /// Prints the events of locks and keys under a prefix as lines, from now
    /// or from a revision.
    Watch(watch::WatchArgs),
    /// Prints a table of the cluster's members.
    Status(scripting::StatusArgs),
    /// Backs up the cluster's state (`snapshot save FILE`) and checks a
    /// backup file (`snapshot inspect FILE`).
    Snapshot(snapshot::SnapshotArgs),
    /// Lists, adds, promotes and removes members (`member list|add|promote|remove`).
    Member(member::MemberArgs),
    /// Makes a CA (or uses the one in --dir) and node and client certificates.
    Certs(certs::CertsArgs),
    /// Makes a bearer token for an identity and prints the access-policy
    /// entry that lists it.
    Token(token::TokenArgs),
    /// Runs a cluster under kills, pauses, partitions and clock skew, and
    /// checks that the locks stayed safe.
    Chaos(quorumlock_testkit::chaos::ChaosArgs),
    /// Client A of `demo`, run as a separate process so that it can be paused.
    #[command(hide = true)]
    DemoClient(demo::DemoClientArgs),
    /// A client worker of `chaos`, run as a separate process so that it can
    /// be paused; reports its operations as JSON lines on stdout.
    #[command(hide = true)]
    ChaosWorker(quorumlock_testkit::chaos::ChaosWorkerArgs),
}

impl Cli {
    /// The log filter when `RUST_LOG` is unset: nodes log their progress,
    /// client commands only their warnings, so that their output stays
    /// readable.
    pub fn default_log_filter(&self) -> &'static str {
        match self.command {
            Command::Serve(_) | Command::Dev(_) => "info,openraft=warn",
            _ => "warn",
        }
    }

    /// Runs the subcommand; returns the process exit code.
    pub async fn run(self) -> anyhow::Result<i32> {
        match self.command {
            Command::Serve(args) => serve::serve(args).await,
            Command::Dev(args) => serve::dev(args).await,
            Command::Demo(args) => demo::demo(args).await,
            Command::Lock(args) => lock_command::lock(args).await,
            Command::Acquire(args) => scripting::acquire(args).await,
            Command::Release(args) => scripting::release(args).await,
            Command::Describe(args) => scripting::describe(args).await,
            Command::ForceRelease(args) => scripting::force_release(args).await,
            Command::Put(args) => scripting::put(args).await,
            Command::Get(args) => scripting::get(args).await,
            Command::Delete(args) => scripting::delete(args).await,
            Command::Status(args) => scripting::status(args).await,
            Command::Watch(args) => watch::watch(args).await,
            Command::Snapshot(args) => snapshot::snapshot(args).await,
            Command::Member(args) => member::member(args).await,
            Command::Certs(args) => certs::certs(args),
            Command::Token(args) => token::token(args),
            Command::DemoClient(args) => demo::demo_client(args).await,
            Command::Chaos(args) => quorumlock_testkit::chaos::run(args).await,
            Command::ChaosWorker(args) => quorumlock_testkit::chaos::run_worker(args).await,
        }
    }
}

/// Where the cluster is, and how to reach it.
#[derive(Args, Clone)]
pub struct ClusterArgs {
    /// The cluster's endpoints, comma-separated, each host:port,
    /// http://host:port or https://host:port; any subset of the members works.
    #[arg(long, env = "QUORUMLOCK_ENDPOINTS", default_value = DEFAULT_ENDPOINTS)]
    pub endpoints: String,
    /// How long to look for an endpoint that answers before giving up.
    #[arg(long, value_parser = parse_duration, default_value = "3s")]
    pub connect_wait: Duration,
    /// CA certificate (PEM) the nodes' certificates must chain to; turns TLS on.
    #[arg(long, env = "QUORUMLOCK_CACERT")]
    pub cacert: Option<PathBuf>,
    /// This client's certificate (PEM), for clusters that require one (mutual TLS).
    #[arg(long = "cert", id = "tls_cert", env = "QUORUMLOCK_CERT", requires = "tls_key")]
    pub cert: Option<PathBuf>,
    /// The private key (PEM) of --cert.
    #[arg(long = "key", id = "tls_key", env = "QUORUMLOCK_KEY", requires = "tls_cert")]
    pub key: Option<PathBuf>,
    /// A bearer token (`quorumlock token` makes one), sent with every call.
    /// Prefer the environment or --auth-token-file: a flag shows in `ps`.
    /// (Not `--token`/`QUORUMLOCK_TOKEN`: those are the fencing token.)
    #[arg(
        long,
        env = "QUORUMLOCK_AUTH_TOKEN",
        hide_env_values = true,
        conflicts_with = "auth_token_file"
    )]
    pub auth_token: Option<String>,
    /// A file holding the bearer token.
    #[arg(long, env = "QUORUMLOCK_AUTH_TOKEN_FILE")]
    pub auth_token_file: Option<PathBuf>,
}

impl ClusterArgs {
    /// The client settings these flags give.
    pub fn client_config(&self) -> anyhow::Result<ClientConfig> {
        let tls = match (&self.cacert, &self.cert, &self.key) {
            (None, None, None) => None,
            (None, _, _) => anyhow::bail!(
                "--cert and --key need --cacert (the CA the nodes' certificates chain to) to turn TLS on"
            ),
            (Some(ca), cert, key) => Some(ClientTls::load(ClientTlsFiles {
                ca: ca.clone(),
                identity: cert.clone().zip(key.clone()),
            })?),
        };
        let token =
            match (&self.auth_token, &self.auth_token_file) {
                (Some(token), _) => Some(token.clone()),
                (None, Some(path)) => Some(std::fs::read_to_string(path).map_err(|error| {
                    anyhow::anyhow!("reading --auth-token-file {}: {error}", path.display())
                })?),
                (None, None) => None,
            };
        let token = token
            .map(|token| {
                BearerToken::new(&token).map_err(|error| anyhow::anyhow!("the bearer token: {error}"))
            })
            .transpose()?;
        Ok(ClientConfig {
            connect_wait_max: self.connect_wait,
            tls,
            token,
            ..ClientConfig::default()
        })
    }

    /// Connects to the cluster.
    pub async fn connect(&self) -> anyhow::Result<Client> {
        Ok(Client::connect_with([self.endpoints.as_str()], self.client_config()?).await?)
    }
}

/// Parses a human duration such as `10s`, `500ms` or `1m 30s`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text.trim())
        .map_err(|error| format!("{error} (expected a duration such as 10s, 500ms or 1m30s)"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_human_style_and_bad_ones_say_what_is_expected() {
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("1m 30s"), Ok(Duration::from_secs(90)));
        let error = parse_duration("ten seconds").unwrap_err();
        assert!(error.contains("expected a duration"), "{error}");
        assert!(parse_duration("10").is_err(), "a unit is required");
    }

    #[test]
    fn the_command_line_definition_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
