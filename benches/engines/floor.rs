//! The physical floor of one acquire+release pair on this machine, measured
//! in the same run as the systems: a unary gRPC round trip on loopback and a
//! 512-byte `fdatasync`, the median of each.
//!
//! A replicated acquire costs at least a client round trip to the leader,
//! one round trip from the leader to a follower, and one synced write (the
//! leader's and the follower's overlap at best), so a worker that acquires
//! and releases in a loop completes at most
//! `1 / (2 × (client RTT + peer RTT + fsync))` pairs per second. Both round
//! trips are loopback gRPC calls here, so both are the measured RTT.

use std::io::Write as _;
use std::time::{Duration, Instant};

use anyhow::Context;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

/// Bytes written before each timed `fdatasync`.
pub const FSYNC_BYTES: usize = 512;
/// Untimed round trips and syncs before the timed ones.
const WARMUP_SAMPLES: usize = 50;

/// The two medians and the ceiling they put on one worker.
#[derive(Debug, Clone, Default)]
pub struct Floor {
    /// Median unary gRPC round trip on loopback, µs.
    pub grpc_rtt_us: f64,
    /// Median time of writing 512 B and `fdatasync`, µs.
    pub fsync_us: f64,
    /// Samples behind each median.
    pub samples: usize,
    /// Every measurement's (round trip, fsync) medians, µs, when the floor
    /// combines several.
    pub rounds: Vec<(f64, f64)>,
}

impl Floor {
    /// The lower of two measurements of each (the stricter floor), with
    /// both kept in `rounds`: the medians move between runs on this
    /// machine (idle cores wake slowly), so the run measures at its start
    /// and at its end.
    pub fn lower(self, other: Floor) -> Floor {
        let mut rounds = self.rounds;
        rounds.extend(other.rounds);
        Floor {
            grpc_rtt_us: self.grpc_rtt_us.min(other.grpc_rtt_us),
            fsync_us: self.fsync_us.min(other.fsync_us),
            samples: self.samples,
            rounds,
        }
    }

    /// The most pairs/s one worker can complete against a replicated lock:
    /// `1 / (2 × (client RTT + peer RTT + fsync))`.
    pub fn pairs_per_s(&self) -> f64 {
        let pair_us = 2.0 * (2.0 * self.grpc_rtt_us + self.fsync_us);
        if pair_us <= 0.0 {
            0.0
        } else {
            1e6 / pair_us
        }
    }
}

fn median_us(mut samples: Vec<Duration>) -> f64 {
    samples.sort_unstable();
    samples
        .get(samples.len() / 2)
        .map_or(0.0, |sample| sample.as_secs_f64() * 1e6)
}

/// Measures both medians over `samples` timed operations each.
pub async fn measure(samples: usize) -> anyhow::Result<Floor> {
    let samples = samples.max(1);
    let grpc_rtt_us = grpc_rtt_us(samples).await?;
    let fsync_us = tokio::task::spawn_blocking(move || fsync_us(samples))
        .await
        .context("the fsync probe panicked")??;
    Ok(Floor {
        grpc_rtt_us,
        fsync_us,
        samples,
        rounds: vec![(grpc_rtt_us, fsync_us)],
    })
}

/// Unary `grpc.health.v1.Health/Check` calls, one at a time, to a server
/// with a runtime and a thread of its own (as a separate node would have),
/// over one HTTP/2 connection with `TCP_NODELAY` on both ends.
async fn grpc_rtt_us(samples: usize) -> anyhow::Result<f64> {
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = std::thread::Builder::new()
        .name("floor-grpc".into())
        .spawn(move || -> anyhow::Result<()> {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            runtime.block_on(async move {
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
                let addr = listener.local_addr()?;
                let incoming = tonic::transport::server::TcpIncoming::from_listener(listener, true, None)
                    .map_err(|error| anyhow::anyhow!("listening for the floor probe: {error}"))?;
                let (_reporter, service) = tonic_health::server::health_reporter();
                let _ = ready_tx.send(addr);
                tonic::transport::Server::builder()
                    .add_service(service)
                    .serve_with_incoming_shutdown(incoming, async {
                        let _ = stop_rx.await;
                    })
                    .await?;
                anyhow::Ok(())
            })
        })
        .context("starting the floor probe's server thread")?;
    let measured = async {
        let addr = ready_rx.await.context("the floor probe's server did not start")?;
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))?
            .tcp_nodelay(true)
            .connect()
            .await
            .context("connecting to the floor probe's server")?;
        let mut client = HealthClient::new(channel);
        let mut timed = Vec::with_capacity(samples);
        for index in 0..WARMUP_SAMPLES + samples {
            let started = Instant::now();
            client
                .check(HealthCheckRequest {
                    service: String::new(),
                })
                .await
                .context("the floor probe's health check")?;
            if index >= WARMUP_SAMPLES {
                timed.push(started.elapsed());
            }
        }
        anyhow::Ok(median_us(timed))
    }
    .await;
    let _ = stop_tx.send(());
    let served = server
        .join()
        .map_err(|_| anyhow::anyhow!("the floor probe's server thread panicked"))?;
    let median = measured?;
    served?;
    Ok(median)
}

/// Appends 512 B to a file under the temporary directory (where every
/// system's data directories are) and `fdatasync`s it, `samples` times.
fn fsync_us(samples: usize) -> anyhow::Result<f64> {
    let mut file = tempfile::Builder::new()
        .prefix("quorumlock-bench-fsync-")
        .tempfile()
        .context("creating the fsync probe's file")?;
    let block = [0x5a_u8; FSYNC_BYTES];
    let mut timed = Vec::with_capacity(samples);
    for index in 0..WARMUP_SAMPLES + samples {
        let started = Instant::now();
        file.write_all(&block).context("writing the fsync probe's file")?;
        file.as_file()
            .sync_data()
            .context("syncing the fsync probe's file")?;
        if index >= WARMUP_SAMPLES {
            timed.push(started.elapsed());
        }
    }
    Ok(median_us(timed))
}
