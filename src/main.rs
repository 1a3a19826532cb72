//! The `quorumlock` command: a node, a local cluster, a demo, and client
//! subcommands for scripts.

mod cli;

use clap::Parser;
use tracing_subscriber::EnvFilter;

#[tokio::main]
async fn main() {
    let parsed = cli::Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(parsed.default_log_filter())),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let code = match parsed.run().await {
        Ok(code) => code,
        Err(error) => {
            eprintln!("quorumlock: {error:#}");
            cli::EXIT_ERROR
        }
    };
    std::process::exit(code);
}
