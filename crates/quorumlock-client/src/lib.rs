//! The Rust client: sessions kept alive in the background, FIFO locks with
//! fencing tokens, and the fenced key-value store.
//!
//! Start with [`Client::connect`], open a [`Session`] with
//! [`Client::session`], and take locks with [`Session::lock`],
//! [`Session::try_lock`] or [`Session::lock_timeout`]; each returns a
//! [`LockGuard`] carrying the fencing token.
//!
//! It depends on the wire protocol crate and tonic alone: a program that
//! wants only the client compiles neither RocksDB nor the server.
//!
//! ```no_run
//! use std::time::Duration;
//!
//! use quorumlock_client::{Client, ClientError};
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
//! `examples/fenced_counter.rs` in the repository is a complete program.

mod backoff;
mod backup;
mod claims;
mod config;
mod connection;
mod endpoints;
mod error;
mod guard;
mod key;
mod membership;
mod session;
mod watch;

pub use backoff::Backoff;
pub use backup::SnapshotDownload;
pub use config::{
    BearerToken, ClientConfig, BEARER_TOKEN_BYTES_MAX, ENDPOINTS_MAX, KEEPALIVE_UNANSWERED_MAX,
    RENEWALS_PER_TTL,
};
pub use connection::{
    node_status, AcquireOptions, Client, Entry, Fence, ForceReleased, Holder, LockDelayed, LockDescription,
    LockMode, NodeStatus, Released, TokenCheck, Waiting,
};
pub use endpoints::{parse_endpoint, parse_endpoint_list, parse_endpoint_scheme, Scheme};
pub use error::{code_name, ClientError, EndpointFailure, LostReason, Refusal};
pub use guard::LockGuard;
pub use key::{SessionKey, SessionSecret};
pub use membership::MEMBERSHIP_CALL_MAX;
pub use quorumlock_proto::{FencingToken, NodeId, SessionId};
pub use quorumlock_tls::{ClientTls, ClientTlsFiles, TlsError};
pub use session::Session;
pub use watch::{EventCause, EventKind, Watch, WatchEvent, WatchOptions, WatchTarget};
