//! TLS and mutual TLS for every quorumlock link.
//!
//! - [`ClientTls`] and [`Dialer`]: the connecting side, used by clients and
//!   by nodes dialing their peers. Certificates are verified against one CA
//!   file; a node's own certificate doubles as its client certificate.
//! - `ServerTls` and `incoming` (feature `server`): a node's listener,
//!   handshaking each accepted socket with a timeout and a bound on how many
//!   are in flight, and handing tonic a [`Connected`](tonic::transport::server::Connected)
//!   stream whose connect info carries the names in the peer's certificate.
//! - `Authority` (feature `server`): issues a CA and node and client
//!   certificates, for `quorumlock certs` and zero-setup development TLS.
//!
//! Node certificates carry the DNS name [`node_name`]`(id)` besides their
//! addresses: a node dialing peer 2 requires `quorumlock-node-2`, and a
//! node accepts the peer protocol only from a certificate naming a member,
//! so a client certificate cannot pose as a member.

mod client;
mod error;
mod files;
#[cfg(feature = "server")]
mod issue;
#[cfg(feature = "server")]
mod names;
#[cfg(feature = "server")]
mod node;
#[cfg(feature = "server")]
mod server;

pub use client::{ClientTls, ClientTlsFiles, Dialer};
pub use error::TlsError;
#[cfg(feature = "server")]
pub use issue::{write_pem, Authority, Issued, ISSUED_VALIDITY_DAYS};
#[cfg(feature = "server")]
pub use names::CertNames;
#[cfg(feature = "server")]
pub use node::NodeTls;
#[cfg(feature = "server")]
pub use server::{
    incoming, ClientCerts, ConnInfo, Connection, ServerTls, ServerTlsFiles, HANDSHAKES_IN_FLIGHT_MAX,
    HANDSHAKE_TIMEOUT,
};

/// The DNS name every certificate of node `id` carries, and the name a node
/// requires of the peer it dials.
pub fn node_name(id: u64) -> String {
    format!("{NODE_NAME_PREFIX}{id}")
}

/// The prefix of [`node_name`]; no client certificate may carry a name
/// starting with it.
pub const NODE_NAME_PREFIX: &str = "quorumlock-node-";

/// The node id a certificate name asserts, if it is a [`node_name`].
pub fn node_of_name(name: &str) -> Option<u64> {
    let digits = name.strip_prefix(NODE_NAME_PREFIX)?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) || digits.starts_with('0') {
        return None;
    }
    digits.parse().ok()
}

/// The one cryptographic provider every config is built with.
pub(crate) fn provider() -> std::sync::Arc<rustls::crypto::CryptoProvider> {
    std::sync::Arc::new(rustls::crypto::ring::default_provider())
}

/// The ALPN protocol gRPC runs on; grpc-core clients refuse a TLS server
/// that does not select it.
pub(crate) const ALPN_H2: &[u8] = b"h2";
/// The ALPN name of HTTP/1.1, which the metrics listener also serves.
pub(crate) const ALPN_HTTP1: &[u8] = b"http/1.1";

#[cfg(all(test, feature = "server"))]
mod tests;
