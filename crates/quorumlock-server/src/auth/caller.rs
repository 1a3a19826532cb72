//! A caller as one node authenticated it, and how that identity travels
//! when the node forwards the call.

use std::net::SocketAddr;

use tonic::metadata::{AsciiMetadataValue, BinaryMetadataValue, MetadataMap};

use quorumlock_proto::headers::{AUTHORIZATION_HEADER, IDENTITY_HEADER};

/// How a caller proved who it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// Authentication is off: nobody is asked.
    Anonymous,
    /// A verified client certificate's name.
    Certificate,
    /// A bearer token the policy lists. Holds the `authorization` value, so a
    /// plaintext node can pass it on to the leader, which checks it itself.
    Token(AsciiMetadataValue),
    /// A member that forwarded the call vouched for it over mutual TLS.
    Forwarded,
}

/// Who made a call.
#[derive(Debug, Clone)]
pub struct Caller {
    /// The authenticated identity; `None` when authentication is off.
    pub identity: Option<String>,
    /// How it was established.
    pub source: Source,
    /// The remote address of the connection the call came on.
    pub remote: Option<SocketAddr>,
}

impl Caller {
    /// The identity for log lines: the name, or "anonymous".
    pub fn name(&self) -> &str {
        self.identity.as_deref().unwrap_or("anonymous")
    }

    /// The remote address for log lines.
    pub fn remote(&self) -> String {
        self.remote.map_or_else(|| "?".into(), |addr| addr.to_string())
    }

    /// Adds to a forwarded request's metadata what lets the leader know the
    /// caller: over mutual TLS the identity, which the leader accepts
    /// because this node's certificate names a member; in plaintext the
    /// caller's own token, which the leader checks against its policy (a
    /// plaintext node cannot prove it is a member, so it vouches for no one).
    pub fn vouch(&self, metadata: &mut MetadataMap, tls: bool) {
        match (&self.identity, &self.source) {
            (None, _) => {}
            (Some(_), Source::Token(value)) if !tls => {
                metadata.insert(AUTHORIZATION_HEADER, value.clone());
            }
            (Some(identity), _) => {
                metadata.insert_bin(
                    IDENTITY_HEADER,
                    BinaryMetadataValue::from_bytes(identity.as_bytes()),
                );
            }
        }
    }
}
