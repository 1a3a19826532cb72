//! [`SessionKey`]: a session's id and the secret that proves the caller owns
//! it.

use std::fmt;

use quorumlock_proto::limits::SESSION_SECRET_BYTES;
use quorumlock_proto::SessionId;

use super::error::ClientError;

/// The secret `OpenSession` returned for a session: every call on the
/// session presents it. It prints as `SessionSecret(..)`, never its bytes;
/// [`SessionSecret::to_hex`] is for handing it to another process on
/// purpose.
#[derive(Clone, PartialEq, Eq)]
pub struct SessionSecret([u8; SESSION_SECRET_BYTES]);

impl SessionSecret {
    /// The secret of these bytes; refused unless exactly
    /// [`SESSION_SECRET_BYTES`] long.
    pub fn from_bytes(bytes: &[u8]) -> Result<SessionSecret, ClientError> {
        let bytes: [u8; SESSION_SECRET_BYTES] = bytes.try_into().map_err(|_| {
            ClientError::InvalidArgument(format!(
                "a session secret is {SESSION_SECRET_BYTES} bytes, not {}",
                bytes.len()
            ))
        })?;
        Ok(SessionSecret(bytes))
    }

    /// Parses the lowercase or uppercase hex of [`SessionSecret::to_hex`].
    pub fn from_hex(text: &str) -> Result<SessionSecret, ClientError> {
        let text = text.trim();
        let malformed = || {
            ClientError::InvalidArgument(format!(
                "a session secret is {} hex digits ({SESSION_SECRET_BYTES} bytes); got {} characters \
                 that are not that",
                SESSION_SECRET_BYTES * 2,
                text.chars().count()
            ))
        };
        quorumlock_proto::hex::decode::<SESSION_SECRET_BYTES>(text)
            .map(SessionSecret)
            .ok_or_else(malformed)
    }

    /// The secret as 64 lowercase hex digits.
    pub fn to_hex(&self) -> String {
        quorumlock_proto::hex::encode(&self.0)
    }

    /// The secret's bytes, as requests carry them.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Debug for SessionSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SessionSecret(..)")
    }
}

/// What a call on a session presents: its id and its secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionKey {
    /// The session id the cluster assigned.
    pub id: SessionId,
    /// The secret it returned with it.
    pub secret: SessionSecret,
}

impl SessionKey {
    /// The key of session `id` with `secret`.
    pub fn new(id: SessionId, secret: SessionSecret) -> SessionKey {
        SessionKey { id, secret }
    }

    /// The secret's bytes, for a request's `session_secret`.
    pub(crate) fn secret_bytes(&self) -> Vec<u8> {
        self.secret.as_bytes().to_vec()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_secret_round_trips_through_hex_and_never_prints_its_bytes() {
        let secret = SessionSecret::from_bytes(&[0xab; SESSION_SECRET_BYTES]).expect("32 bytes");
        assert_eq!(secret.to_hex(), "ab".repeat(SESSION_SECRET_BYTES));
        assert_eq!(
            SessionSecret::from_hex(&secret.to_hex().to_uppercase()).expect("hex"),
            secret
        );
        let key = SessionKey::new(SessionId::new(7), secret);
        let printed = format!("{key:?}");
        assert!(!printed.contains("ab"), "{printed}");
        assert!(printed.contains("SessionSecret(..)"), "{printed}");
    }

    #[test]
    fn a_malformed_secret_is_refused_saying_what_a_secret_is() {
        for text in ["", "abc", &"zz".repeat(SESSION_SECRET_BYTES), &"é".repeat(32)] {
            let error = SessionSecret::from_hex(text).unwrap_err();
            assert!(error.to_string().contains("64 hex digits"), "{error}");
        }
        assert!(SessionSecret::from_bytes(&[1; 31]).is_err());
    }
}
