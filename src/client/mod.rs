//! The Rust client: sessions kept alive in the background, FIFO locks with
//! fencing tokens, and the fenced key-value store.
//!
//! Start with [`Client::connect`], open a [`Session`] with
//! [`Client::session`], and take locks with [`Session::lock`],
//! [`Session::try_lock`] or [`Session::lock_timeout`]; each returns a
//! [`LockGuard`] carrying the fencing token. See the crate root for an
//! example.

mod backoff;
mod claims;
mod config;
mod connection;
mod endpoints;
mod error;
mod guard;
mod session;

pub use backoff::Backoff;
pub use config::{ClientConfig, ENDPOINTS_MAX, KEEPALIVE_UNANSWERED_MAX, RENEWALS_PER_TTL};
pub use connection::{
    node_status, Client, Entry, Fence, Holder, LockDescription, NodeStatus, Released, TokenCheck,
};
pub use endpoints::{parse_endpoint, parse_endpoint_list};
pub use error::{code_name, ClientError, EndpointFailure, LostReason};
pub use guard::LockGuard;
pub use session::Session;
