//! Who may use a session: the digest of its secret and, when the cluster
//! authenticates callers, the identity that opened it.
//!
//! The node that orders `OpenSession` draws the secret from the operating
//! system's random source and hands it to the client once; the log and the
//! snapshots keep only its SHA-256, so a copy of a node's disk or of a backup
//! does not let anyone use a session. Every session-scoped command carries
//! the digest of the secret its caller presented (and the caller's identity),
//! and the state machine admits it only if both match the session's owner.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

pub use quorumlock_proto::limits::SESSION_SECRET_BYTES;

/// Longest caller identity (certificate name or token name), in bytes.
pub const IDENTITY_BYTES_MAX: usize = 256;

/// SHA-256 of a session secret. Never the secret itself.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct SecretDigest([u8; 32]);

impl SecretDigest {
    /// The digest of `secret`.
    pub fn of(secret: &[u8]) -> SecretDigest {
        SecretDigest(Sha256::digest(secret).into())
    }

    /// Whether two digests are equal, in time independent of where they
    /// differ.
    pub fn matches(&self, other: &SecretDigest) -> bool {
        self.0.ct_eq(&other.0).into()
    }
}

impl std::fmt::Debug for SecretDigest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Two bytes tell digests apart in a failing test; the rest stays out
        // of logs.
        write!(f, "SecretDigest({:02x}{:02x}..)", self.0[0], self.0[1])
    }
}

/// A caller as a session-scoped command names it, and the owner a session
/// records when it is opened.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Credential {
    /// Digest of the session secret presented (or, for the owner, drawn).
    pub secret: SecretDigest,
    /// The authenticated identity of the caller, when the node that took the
    /// call authenticates callers.
    pub identity: Option<String>,
}

impl Credential {
    /// A credential of `secret` without an identity.
    pub fn of_secret(secret: &[u8]) -> Credential {
        Credential {
            secret: SecretDigest::of(secret),
            identity: None,
        }
    }

    /// Whether `caller` is this owner: the secret's digest must match and,
    /// if the session was opened by an authenticated identity, the caller
    /// must be that same identity. Both parts are always evaluated, so the
    /// time taken does not tell which one failed.
    pub fn admits(&self, caller: &Credential) -> bool {
        let secret = self.secret.matches(&caller.secret);
        let identity = match &self.identity {
            None => true,
            Some(owner) => caller
                .identity
                .as_ref()
                .is_some_and(|identity| bool::from(owner.as_bytes().ct_eq(identity.as_bytes()))),
        };
        secret & identity
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_owner_admits_only_its_own_secret_and_identity() {
        let owner = Credential {
            secret: SecretDigest::of(b"right"),
            identity: Some("jobs".to_string()),
        };
        let caller = |secret: &[u8], identity: Option<&str>| Credential {
            secret: SecretDigest::of(secret),
            identity: identity.map(str::to_string),
        };
        assert!(owner.admits(&caller(b"right", Some("jobs"))));
        assert!(!owner.admits(&caller(b"wrong", Some("jobs"))));
        assert!(!owner.admits(&caller(b"right", Some("billing"))));
        assert!(!owner.admits(&caller(b"right", None)));
        let anonymous = Credential::of_secret(b"right");
        assert!(anonymous.admits(&caller(b"right", None)));
        assert!(anonymous.admits(&caller(b"right", Some("jobs"))));
        assert!(!anonymous.admits(&caller(b"wrong", None)));
    }

    #[test]
    fn a_digest_never_prints_the_bytes_it_holds() {
        let digest = SecretDigest::of(b"secret");
        let printed = format!("{digest:?}");
        assert!(printed.len() < 24, "{printed}");
    }
}
