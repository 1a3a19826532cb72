//! Node assembly, configuration, the session lease keeper and health reporting.

pub mod clock;
pub mod config;
pub mod health;
pub mod lease;
pub mod leases;
pub mod node;

pub use config::NodeConfig;
pub use node::Node;
