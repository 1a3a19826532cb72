//! quorumlock: a distributed lock service with fencing tokens.
//!
//! A quorum of nodes agrees on every lock owner through a consensus engine
//! (openraft, or the hand-written Multi-Paxos), every grant carries a strictly
//! increasing fencing token, and the built-in fenced key-value store refuses
//! writes that carry a stale token.
//!
//! The crate reads like the architecture:
//! - [`lock`]: the pure, deterministic lock state machine;
//! - [`consensus`]: the engine seam every engine implements;
//! - [`raft`]: the openraft engine;
//! - [`storage`]: RocksDB helpers shared by engines;
//! - [`rpc`]: the gRPC services and their conversions;
//! - [`server`]: node assembly and the session lease driver.

pub mod client;
pub mod consensus;
pub mod lock;
pub mod raft;
pub mod rpc;
pub mod server;
pub mod storage;
