//! `lock NAME -- CMD ARGS...`: runs a command while holding a lock, and
//! stops it when the lock is at risk of being lost.

use std::process::ExitStatus;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tokio::process::{Child, Command};
use tokio::signal::unix::{signal, SignalKind};
use tokio::time::Instant;

use super::scripting::WantArgs;
use super::{parse_duration, ClusterArgs, EXIT_LOCK_LOST, EXIT_NO};

/// Flags of `lock`.
#[derive(Args)]
pub struct LockArgs {
    #[command(flatten)]
    cluster: ClusterArgs,
    /// The lock's name.
    name: String,
    /// TTL of the session that holds the lock: how long the lock outlives
    /// this process if it dies or freezes.
    #[arg(long, value_parser = parse_duration, default_value = "10s")]
    ttl: Duration,
    /// Give up (exit 3) after waiting this long for the lock [default: wait
    /// until granted].
    #[arg(long, value_parser = parse_duration)]
    wait: Option<Duration>,
    /// Shared or semaphore permits instead of the exclusive lock.
    #[command(flatten)]
    want: WantArgs,
    /// How long the command has between SIGTERM and SIGKILL when the lock is
    /// at risk. The command is sent SIGTERM once the lease's confirmed
    /// deadline is less than the grace away (at most half the TTL, which a
    /// healthy session never gets near: it renews three times per TTL), so
    /// that it is killed about when the lease could run out rather than a
    /// grace after another holder may have been granted the lock.
    #[arg(long, value_parser = parse_duration, default_value = "5s")]
    grace: Duration,
    /// The command and its arguments.
    #[arg(required = true, last = true, value_name = "CMD")]
    command: Vec<String>,
}

/// The exit code a shell gives a process that ended with `status`.
fn exit_code(status: ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => code,
        (None, Some(signal)) => 128 + signal,
        (None, None) => super::EXIT_ERROR,
    }
}

fn send(child: &Child, signal: Signal) {
    if let Some(pid) = child.id().and_then(|pid| i32::try_from(pid).ok()) {
        // The child may have exited already; then there is nothing to stop.
        let _ = kill(Pid::from_raw(pid), signal);
    }
}

/// Acquires the lock, runs the command with `QUORUMLOCK_LOCK`,
/// `QUORUMLOCK_TOKEN`, `QUORUMLOCK_SESSION`, `QUORUMLOCK_SESSION_SECRET` and
/// `QUORUMLOCK_ENDPOINTS` in its environment (so that it can make fenced
/// writes under the lock with `put` and `delete`), releases the lock when it exits, and exits with its code.
pub async fn lock(args: LockArgs) -> anyhow::Result<i32> {
    let client = args.cluster.connect().await?;
    let session = client.session(args.ttl).await?;
    let granted = args.want.want().guard(&session, &args.name, args.wait).await?;
    // Only a bounded wait ends without a grant.
    let Some(guard) = granted else {
        eprintln!(
            "quorumlock: lock {:?} not acquired within {}",
            args.name,
            humantime::format_duration(args.wait.unwrap_or_default())
        );
        session.close().await?;
        return Ok(EXIT_NO);
    };
    let (program, program_args) = args.command.split_first().context("no command given after --")?;
    // The handlers are in place before the command starts, so that a signal
    // for the job that arrives early still reaches the command rather than
    // ending this process and leaving the command running without it.
    let mut interrupt = signal(SignalKind::interrupt()).context("installing a SIGINT handler")?;
    let mut terminate = signal(SignalKind::terminate()).context("installing a SIGTERM handler")?;
    let mut hangup = signal(SignalKind::hangup()).context("installing a SIGHUP handler")?;
    let mut command = Command::new(program);
    command
        .args(program_args)
        .env("QUORUMLOCK_LOCK", &args.name)
        .env("QUORUMLOCK_TOKEN", guard.token().to_string())
        .env("QUORUMLOCK_SESSION", session.id().to_string())
        .env("QUORUMLOCK_SESSION_SECRET", session.key().secret.to_hex())
        .env("QUORUMLOCK_ENDPOINTS", client.endpoints().join(","))
        // If this process ends without waiting for the command (an error,
        // a panic), the command is killed rather than left running unlocked.
        .kill_on_drop(true);
    // SAFETY: the closure runs in the forked child before exec and only
    // calls prctl(2), which is async-signal-safe.
    unsafe {
        command.pre_exec(|| {
            // A SIGKILLed `lock` runs no code at all; the kernel then kills
            // the command, which would otherwise outlive the lock.
            nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).map_err(std::io::Error::from)
        });
    }
    let mut child = command.spawn().with_context(|| format!("starting {program:?}"))?;

    let margin = args.grace.min(session.ttl() / 2);
    let mut lease = guard.lease_deadline();
    // With --max-hold the command is stopped a grace before the maximum
    // hold passes (as the client counts it, which ends no later than the
    // cluster's count), so it is gone when the cluster ends the grant.
    let hold_at_risk = guard
        .hold_deadline()
        .map(|deadline| deadline.checked_sub(args.grace).unwrap_or_else(Instant::now));
    loop {
        let at_risk_at = lease.borrow().checked_sub(margin).unwrap_or_else(Instant::now);
        tokio::select! {
            status = child.wait() => {
                let status = status.context("waiting for the command")?;
                // The command's outcome is what the caller asked for; a
                // failed release only means the lock lingers until the
                // session's TTL runs out, so it is reported, not returned.
                if let Err(error) = guard.release().await {
                    eprintln!("quorumlock: releasing {:?} failed: {error}", args.name);
                }
                if let Err(error) = session.close().await {
                    eprintln!("quorumlock: closing session failed: {error}");
                }
                return Ok(exit_code(status));
            }
            reason = guard.lost() => {
                eprintln!(
                    "quorumlock: lock {:?} lost ({reason}); stopping the command",
                    args.name
                );
                stop(&mut child, args.grace).await?;
                return Ok(EXIT_LOCK_LOST);
            }
            () = tokio::time::sleep_until(hold_at_risk.unwrap_or_else(Instant::now)), if hold_at_risk.is_some() => {
                eprintln!(
                    "quorumlock: lock {:?} reaches its maximum hold within {}; stopping the command",
                    args.name,
                    humantime::format_duration(args.grace)
                );
                stop(&mut child, args.grace).await?;
                if let Err(error) = session.close().await {
                    eprintln!("quorumlock: closing session failed: {error}");
                }
                return Ok(EXIT_LOCK_LOST);
            }
            // A renewal moved the deadline: compute the risk point again.
            Ok(()) = lease.changed() => {}
            _ = tokio::time::sleep_until(at_risk_at) => {
                if lease.borrow().saturating_duration_since(Instant::now()) > margin {
                    continue;
                }
                eprintln!(
                    "quorumlock: lock {:?} at risk: no renewal confirmed and the lease may be lost \
                     within {}; stopping the command",
                    args.name,
                    humantime::format_duration(margin)
                );
                stop(&mut child, args.grace).await?;
                return Ok(EXIT_LOCK_LOST);
            }
            // Signals meant for the whole job reach the command; the lock is
            // released when it exits. Ctrl-C is not passed on: the terminal
            // already sends SIGINT to the command, which is in the same
            // process group, and a second one could make it skip its cleanup.
            _ = interrupt.recv() => {}
            _ = terminate.recv() => send(&child, Signal::SIGTERM),
            _ = hangup.recv() => send(&child, Signal::SIGHUP),
        }
    }
}

/// Sends the command SIGTERM, and SIGKILL if it is still running `grace`
/// later; returns once it has exited.
async fn stop(child: &mut Child, grace: Duration) -> anyhow::Result<()> {
    send(child, Signal::SIGTERM);
    let status = match tokio::time::timeout(grace, child.wait()).await {
        Ok(status) => status,
        Err(_) => {
            eprintln!(
                "quorumlock: the command outlived its {} grace; killing it",
                humantime::format_duration(grace)
            );
            send(child, Signal::SIGKILL);
            child.wait().await
        }
    }
    .context("waiting for the command")?;
    eprintln!("quorumlock: the command was stopped ({status})");
    Ok(())
}
