//! The `quorumlock` command: a node, a local cluster, a demo, and client
//! subcommands for scripts.

mod cli;

use std::time::Duration;

use clap::Parser;
use tracing_subscriber::EnvFilter;

/// Every allocation of the process goes to mimalloc: a node allocates and
/// frees per request on every runtime thread, which glibc's malloc served
/// at about a sixth of the leader's CPU (benches/results/PROFILE.md).
/// RocksDB's C++ allocations stay with glibc.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// How long tasks still running when a command is done get to finish
/// before the process exits.
const RUNTIME_STOP_GRACE: Duration = Duration::from_secs(2);

fn main() {
    let parsed = cli::Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(parsed.default_log_filter())),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("quorumlock: starting the async runtime: {error}");
            std::process::exit(cli::EXIT_ERROR);
        }
    };
    let code = match runtime.block_on(parsed.run()) {
        Ok(code) => code,
        Err(error) => {
            eprintln!("quorumlock: {error:#}");
            cli::EXIT_ERROR
        }
    };
    // The runtime stops before the process exits, so that no task is still
    // running while exit tears down what it might touch (a node closes its
    // database in order before this point).
    runtime.shutdown_timeout(RUNTIME_STOP_GRACE);
    std::process::exit(code);
}
