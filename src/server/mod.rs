//! Node assembly, configuration and the session lease keeper.

pub mod clock;
pub mod config;
pub mod lease;
pub mod leases;
pub mod node;

pub use config::NodeConfig;
pub use node::Node;
