//! The heart of quorumlock, shared by every engine and the server:
//!
//! - [`lock`]: the pure, deterministic lock state machine (sessions, FIFO
//!   queues, fencing tokens, the fenced key-value store);
//! - [`consensus`]: the seam every consensus engine implements, and the
//!   applied state it drives;
//! - [`lease`]: session leases as the leader keeps them, sans I/O;
//! - [`time`]: the injected clock leases are judged on;
//! - [`backup`]: the engine-neutral backup file of the applied state.

pub mod backup;
pub mod consensus;
pub mod lease;
pub mod lock;
pub mod time;
