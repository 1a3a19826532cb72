//! Why a TLS configuration could not be built.

use std::path::PathBuf;

/// A certificate, key or CA file that could not be used, or a config rustls refused.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read or holds no usable PEM item of the kind wanted.
    #[error("{what} file {path}: {reason}")]
    File {
        /// Which file: "certificate", "private key" or "CA".
        what: &'static str,
        /// The file's path.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// rustls refused the combination (for example a key that does not match the certificate).
    #[error("TLS configuration refused: {0}")]
    Config(String),
    /// A certificate could not be parsed or issued.
    #[error("certificate: {0}")]
    Certificate(String),
    /// A name that cannot be a TLS server name.
    #[error("{0:?} is not a valid TLS server name (a DNS name or an IP address)")]
    ServerName(String),
}

impl From<rustls::Error> for TlsError {
    fn from(error: rustls::Error) -> Self {
        TlsError::Config(error.to_string())
    }
}
