//! Identifiers that must not be mixed up: a session id, a fencing token and
//! a node id are all numbers on the wire, and distinct types everywhere else,
//! so that passing one where another belongs does not compile.
//!
//! Each encodes exactly as the `u64` it wraps (serde `transparent`), so
//! logs, snapshots and messages written before these types existed read back
//! unchanged. `0` is never a valid value: the wire uses it for "none".

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident, $what:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(u64);

        impl $name {
            /// Wraps a number read from the wire or a command line.
            pub const fn new(value: u64) -> Self {
                $name(value)
            }

            /// The number as the wire carries it.
            pub const fn get(self) -> u64 {
                self.0
            }

            /// The identifier that follows this one.
            pub const fn next(self) -> Self {
                $name(self.0 + 1)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Display::fmt(&self.0, f)
            }
        }

        impl FromStr for $name {
            type Err = String;

            fn from_str(text: &str) -> Result<Self, Self::Err> {
                text.trim()
                    .parse::<u64>()
                    .map($name)
                    .map_err(|_| format!("{} {text:?} is not a number", $what))
            }
        }

        /// `id + n` is the identifier `n` after `id`: ids of one kind may be
        /// counted forward, never mixed with another kind.
        impl std::ops::Add<u64> for $name {
            type Output = $name;

            fn add(self, n: u64) -> $name {
                $name(self.0 + n)
            }
        }

        impl From<u64> for $name {
            fn from(value: u64) -> $name {
                $name(value)
            }
        }

        impl From<$name> for u64 {
            fn from(id: $name) -> u64 {
                id.0
            }
        }
    };
}

id_type!(
    /// Identifies a session; the state machine assigns them from a counter.
    SessionId,
    "session id"
);
id_type!(
    /// A fencing token; the state machine assigns one, larger than every
    /// earlier one, on every grant of any lock.
    FencingToken,
    "fencing token"
);
id_type!(
    /// A node's id; unique within a cluster and stable across restarts.
    NodeId,
    "node id"
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_encode_exactly_as_the_number_they_wrap() {
        let token = FencingToken::new(42);
        assert_eq!(
            bincode::serialize(&token).unwrap(),
            bincode::serialize(&42u64).unwrap()
        );
        assert_eq!(
            bincode::deserialize::<FencingToken>(&bincode::serialize(&42u64).unwrap()).unwrap(),
            token
        );
        assert_eq!(token.get(), 42);
        assert_eq!(token.next(), FencingToken::new(43));
    }

    #[test]
    fn ids_parse_from_text_and_say_what_they_are_when_they_do_not() {
        assert_eq!("7".parse::<SessionId>(), Ok(SessionId::new(7)));
        assert!("x".parse::<NodeId>().unwrap_err().contains("node id"));
    }
}
