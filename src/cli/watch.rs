//! `quorumlock watch`: prints the events of locks and keys as lines.

use std::io::Write;

use clap::{Args, ValueEnum};
use quorumlock_client::{EventKind, WatchEvent, WatchOptions, WatchTarget};

use super::ClusterArgs;

/// Which events `watch` prints.
#[derive(Clone, Copy, ValueEnum)]
pub enum Only {
    /// Lock and semaphore events only.
    Locks,
    /// Key events only.
    Keys,
}

/// Flags of `watch`.
#[derive(Args)]
pub struct WatchArgs {
    #[command(flatten)]
    cluster: ClusterArgs,
    /// The start of the lock and key names to watch ("" for all of them).
    prefix: String,
    /// Watch only the lock or key named exactly PREFIX.
    #[arg(long)]
    exact: bool,
    /// Start at this revision instead of now; the first line says where the
    /// watch starts, so a later `watch --from` can go on from there.
    #[arg(long, default_value_t = 0)]
    from: u64,
    /// Print only lock events or only key events.
    #[arg(long, value_enum)]
    only: Option<Only>,
    /// Stop after this many events [default: never].
    #[arg(long)]
    count: Option<u64>,
}

/// One event as a line: `rev=<n> <kind> lock=<name> session=<id>
/// token=<n> ...`, with the fields the kind has.
pub fn line(event: &WatchEvent) -> String {
    let mut line = format!("rev={} {}", event.revision, event.kind.as_str());
    if matches!(event.kind, EventKind::Put | EventKind::Deleted) {
        line += &format!(" key={}", quoted(&event.key));
    }
    line += &format!(" lock={}", quoted(&event.lock));
    if let Some(session) = event.session {
        line += &format!(" session={session}");
    }
    if let Some(token) = event.token {
        line += &format!(" token={token}");
    }
    if matches!(event.kind, EventKind::Granted | EventKind::Queued) {
        line += &format!(" mode={}", event.mode.as_str());
        if event.permits > 0 {
            line += &format!(" permits={}", event.permits);
        }
    }
    if !event.cause.as_str().is_empty() {
        line += &format!(" cause={}", event.cause.as_str());
    }
    if !event.by.is_empty() {
        line += &format!(" by={}", quoted(&event.by));
    }
    if event.kind == EventKind::Put {
        line += &format!(" value={}", quoted(&String::from_utf8_lossy(&event.value)));
    }
    line
}

/// A name or value as a word of a line: bare when it is one, quoted and
/// escaped otherwise.
fn quoted(text: &str) -> String {
    if !text.is_empty()
        && text
            .chars()
            .all(|c| c.is_ascii_graphic() && c != '"' && c != '\\')
    {
        text.to_string()
    } else {
        format!("{text:?}")
    }
}

/// Prints `watching from=<revision>` and then one line per event until
/// interrupted (or `--count` events).
pub async fn watch(args: WatchArgs) -> anyhow::Result<i32> {
    let client = args.cluster.connect().await?;
    let options = WatchOptions {
        name: args.prefix,
        prefix: !args.exact,
        from_revision: args.from,
        target: match args.only {
            None => WatchTarget::All,
            Some(Only::Locks) => WatchTarget::Locks,
            Some(Only::Keys) => WatchTarget::Keys,
        },
    };
    let mut watch = client.watch(options).await?;
    let mut out = std::io::stdout().lock();
    writeln!(out, "watching from={}", watch.started_after() + 1)?;
    out.flush()?;
    let mut printed = 0u64;
    while args.count.is_none_or(|count| printed < count) {
        let event = watch.next().await?;
        writeln!(out, "{}", line(&event))?;
        out.flush()?;
        printed += 1;
    }
    Ok(0)
}
