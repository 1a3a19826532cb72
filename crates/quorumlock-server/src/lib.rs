//! A quorumlock node: the gRPC services of the public API, forwarding to the
//! leader, the lease driver, health reporting, and the assembly of a node
//! from its configuration and one of the consensus engines.

pub mod auth;
pub mod config;
pub mod health;
pub mod identity;
pub mod lease_driver;
pub mod metrics;
pub mod node;
pub mod repair;
pub mod restore;
pub mod rpc;
pub mod skew_file;

pub use config::NodeConfig;
pub use node::Node;
