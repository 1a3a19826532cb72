//! The openraft engine: log and vote in RocksDB, the lock state machine
//! applied in memory with persisted snapshots, and a tonic peer transport.

pub mod batcher;
pub mod contact;
pub mod election;
pub mod engine;
pub mod log_store;
pub mod network;
pub mod retirement;
pub mod service;
pub mod state_machine;
pub mod types;
pub mod wal_sync;

pub use engine::RaftEngine;

#[cfg(test)]
mod tests;
