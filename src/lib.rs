//! quorumlock: a distributed lock service with fencing tokens.
//!
//! A quorum of nodes agrees on every lock owner through a consensus engine
//! (openraft, or the hand-written Multi-Paxos), every grant carries a strictly
//! increasing fencing token, and the built-in fenced key-value store refuses
//! writes that carry a stale token.
//!
//! # Using it from Rust
//!
//! [`client::Client`] connects through any subset of the cluster's nodes and
//! fails over between them. A [`client::Session`] is kept alive in the
//! background and says at once when it is lost; locks taken under it come
//! back as [`client::LockGuard`]s carrying the fencing token that fenced
//! writes present.
//!
//! ```no_run
//! use std::time::Duration;
//!
//! use quorumlock::client::{Client, ClientError};
//!
//! # async fn example() -> Result<(), ClientError> {
//! // Any subset of the members; `quorumlock dev` serves these three.
//! let client = Client::connect(["127.0.0.1:7001", "http://127.0.0.1:7002"]).await?;
//! let session = client.session(Duration::from_secs(10)).await?;
//!
//! // Waits in the lock's FIFO queue; `try_lock` and `lock_timeout` don't.
//! let guard = session.lock("reports").await?;
//! println!("holding {} with fencing token {}", guard.name(), guard.token());
//!
//! // Work under the lock, but stop at once if the session is lost. The
//! // write is refused anyway if the token is no longer current.
//! tokio::select! {
//!     written = client.put("reports/latest", "all good", &guard) => written?,
//!     reason = guard.lost() => eprintln!("lock lost: {reason}"),
//! }
//! let entry = client.get("reports/latest").await?;
//! assert!(entry.is_some_and(|entry| entry.written_by == guard.fence()));
//!
//! guard.release().await?; // dropping the guard also releases, in the background
//! session.close().await?;
//! # Ok(())
//! # }
//! ```
//!
//! `examples/fenced_counter.rs` is a complete program.
//!
//! # Layout
//!
//! The crate reads like the architecture:
//! - [`client`]: the Rust client;
//! - [`chaos`]: the chaos runner (faults against a process cluster, and
//!   checks of the recorded history);
//! - [`cluster`]: local clusters of node processes, for the demo, benchmarks
//!   and chaos runs;
//! - [`lock`]: the pure, deterministic lock state machine;
//! - [`consensus`]: the engine seam every engine implements;
//! - [`raft`]: the openraft engine;
//! - [`paxos`]: the hand-written Multi-Paxos engine;
//! - [`storage`]: RocksDB helpers shared by engines;
//! - [`rpc`]: the gRPC services and their conversions;
//! - [`server`]: node assembly and the session lease driver.

pub mod chaos;
pub mod client;
pub mod cluster;
pub mod consensus;
pub mod lock;
pub mod paxos;
pub mod raft;
pub mod rpc;
pub mod server;
#[cfg(test)]
mod sim;
pub mod storage;
