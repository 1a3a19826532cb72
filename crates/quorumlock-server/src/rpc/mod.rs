//! The gRPC services of a node and their conversions.

pub mod cluster_service;
pub mod forward;
pub mod lock_service;
pub mod peer_guard;
pub mod status;
pub mod watch;

pub use cluster_service::ClusterService;
pub use lock_service::{LockService, LockServiceConfig};
