//! The access policy: roles that grant lock-name and key prefixes and
//! cluster administration, the identities that hold them, and the bearer
//! tokens that stand for identities. Pure: parsed from TOML text and asked
//! questions, with no I/O and no clock.

use std::collections::BTreeMap;
use std::fmt;

use serde::Deserialize;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use quorumlock_core::lock::IDENTITY_BYTES_MAX;
use quorumlock_proto::hex;
use quorumlock_tls::NODE_NAME_PREFIX;

/// Most roles, identities or tokens one policy may define (each).
pub const POLICY_ENTRIES_MAX: usize = 10_000;
/// Most prefixes one role may grant (of each kind).
pub const ROLE_PREFIXES_MAX: usize = 1_000;
/// Largest policy file, in bytes.
pub const POLICY_BYTES_MAX: usize = 4 << 20;

/// The policy file as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicyFile {
    #[serde(default)]
    roles: BTreeMap<String, RoleFile>,
    #[serde(default)]
    identities: BTreeMap<String, Vec<String>>,
    #[serde(default)]
    tokens: Vec<TokenFile>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RoleFile {
    #[serde(default)]
    locks: Vec<String>,
    #[serde(default)]
    keys_read: Vec<String>,
    #[serde(default)]
    keys_read_write: Vec<String>,
    #[serde(default)]
    admin: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenFile {
    identity: String,
    sha256: String,
}

/// What an identity may do: the union of its roles' grants.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Grants {
    roles: Vec<String>,
    locks: Vec<String>,
    keys_read: Vec<String>,
    keys_read_write: Vec<String>,
    admin: bool,
}

/// A parsed, checked policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    identities: BTreeMap<String, Grants>,
    /// SHA-256 of each token, and the identity it stands for.
    tokens: Vec<([u8; 32], String)>,
    roles: usize,
}

/// What a caller asks to do, and to what.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action<'a> {
    /// Open a session.
    OpenSession,
    /// Renew or close one of the caller's own sessions.
    UseSession(&'static str),
    /// Acquire, release, describe or check the token of a lock.
    Lock(&'static str, &'a str),
    /// Read a key.
    ReadKey(&'a str),
    /// Write or delete a key under the fence of a lock.
    WriteKey(&'static str, &'a str, &'a str),
    /// A cluster operation (state digest, membership, snapshots).
    Admin(&'static str),
    /// Watch the locks whose names start with a prefix (or have a name).
    WatchLocks(&'a str),
    /// Watch the keys whose names start with a prefix (or have a name),
    /// values included.
    WatchKeys(&'a str),
}

impl Action<'_> {
    /// The operation's name, as audit lines give it.
    pub fn op(&self) -> &'static str {
        match self {
            Action::OpenSession => "open_session",
            Action::UseSession(op) | Action::Lock(op, _) | Action::WriteKey(op, _, _) | Action::Admin(op) => {
                op
            }
            Action::ReadKey(_) => "get",
            Action::WatchLocks(_) | Action::WatchKeys(_) => "watch",
        }
    }

    /// The resource acted on, as audit lines give it.
    pub fn resource(&self) -> String {
        match self {
            Action::OpenSession | Action::UseSession(_) => "session".into(),
            Action::Lock(_, name) => format!("lock {name:?}"),
            Action::ReadKey(key) => format!("key {key:?}"),
            Action::WriteKey(_, key, lock) => format!("key {key:?} under lock {lock:?}"),
            Action::Admin(what) => format!("cluster ({what})"),
            Action::WatchLocks(prefix) => format!("locks starting with {prefix:?}"),
            Action::WatchKeys(prefix) => format!("keys starting with {prefix:?}"),
        }
    }
}

/// Why the policy does not let an identity act.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Denied(pub String);

impl fmt::Display for Denied {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Counts of what a policy defines, for the log line of a (re)load.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PolicySummary {
    /// Roles defined.
    pub roles: usize,
    /// Identities given roles.
    pub identities: usize,
    /// Bearer tokens.
    pub tokens: usize,
}

impl fmt::Display for PolicySummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} roles, {} identities, {} tokens",
            self.roles, self.identities, self.tokens
        )
    }
}

/// SHA-256 of a bearer token: what a policy file stores instead of it.
pub fn token_digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// The `sha256` value a policy file gives for `token`.
pub fn token_digest_hex(token: &str) -> String {
    hex::encode(&token_digest(token))
}

/// Checks an identity as a policy names it.
fn check_identity(identity: &str, where_: &str) -> Result<(), String> {
    if identity.is_empty() || identity.len() > IDENTITY_BYTES_MAX {
        return Err(format!(
            "{where_}: identity {identity:?} must be 1 to {IDENTITY_BYTES_MAX} bytes"
        ));
    }
    if identity.chars().any(char::is_control) {
        return Err(format!(
            "{where_}: identity {identity:?} holds a control character"
        ));
    }
    if identity.starts_with(NODE_NAME_PREFIX) {
        return Err(format!(
            "{where_}: identity {identity:?} starts with {NODE_NAME_PREFIX:?}, which names cluster members, not callers"
        ));
    }
    Ok(())
}

impl Policy {
    /// Parses and checks policy TOML. Every mistake is an error naming the
    /// entry: an unknown key, a role an identity names that is not defined,
    /// a token that is not 64 hex digits or whose identity has no role, a
    /// name too long, more entries than the limits allow.
    pub fn parse(text: &str) -> Result<Policy, String> {
        if text.len() > POLICY_BYTES_MAX {
            return Err(format!(
                "the policy is {} bytes; at most {POLICY_BYTES_MAX} are read",
                text.len()
            ));
        }
        let file: PolicyFile = toml::from_str(text).map_err(|error| error.to_string())?;
        for (what, count) in [
            ("roles", file.roles.len()),
            ("identities", file.identities.len()),
            ("tokens", file.tokens.len()),
        ] {
            if count > POLICY_ENTRIES_MAX {
                return Err(format!(
                    "the policy defines {count} {what}; at most {POLICY_ENTRIES_MAX} are allowed"
                ));
            }
        }
        for (name, role) in &file.roles {
            for (what, prefixes) in [
                ("locks", &role.locks),
                ("keys_read", &role.keys_read),
                ("keys_read_write", &role.keys_read_write),
            ] {
                if prefixes.len() > ROLE_PREFIXES_MAX {
                    return Err(format!(
                        "role {name:?} grants {} {what} prefixes; at most {ROLE_PREFIXES_MAX} are allowed",
                        prefixes.len()
                    ));
                }
            }
        }
        let mut identities = BTreeMap::new();
        for (identity, roles) in &file.identities {
            check_identity(identity, "[identities]")?;
            let mut grants = Grants::default();
            for role_name in roles {
                let role = file.roles.get(role_name).ok_or_else(|| {
                    format!("identity {identity:?} has role {role_name:?}, which [roles] does not define")
                })?;
                grants.roles.push(role_name.clone());
                grants.locks.extend(role.locks.iter().cloned());
                grants.keys_read.extend(role.keys_read.iter().cloned());
                grants
                    .keys_read_write
                    .extend(role.keys_read_write.iter().cloned());
                grants.admin |= role.admin;
            }
            identities.insert(identity.clone(), grants);
        }
        let mut tokens = Vec::with_capacity(file.tokens.len());
        for (index, token) in file.tokens.iter().enumerate() {
            let where_ = format!("token {} (identity {:?})", index + 1, token.identity);
            check_identity(&token.identity, &where_)?;
            let digest = hex::decode::<32>(&token.sha256).ok_or_else(|| {
                format!("{where_}: sha256 must be the token's SHA-256 as 64 hex digits (`quorumlock token` prints it)")
            })?;
            if identities
                .get(&token.identity)
                .is_none_or(|grants| grants.roles.is_empty())
            {
                return Err(format!(
                    "{where_}: the identity has no role in [identities], so the token could do nothing"
                ));
            }
            if tokens.iter().any(|(other, _)| *other == digest) {
                return Err(format!("{where_}: the same token is listed twice"));
            }
            tokens.push((digest, token.identity.clone()));
        }
        Ok(Policy {
            identities,
            tokens,
            roles: file.roles.len(),
        })
    }

    /// What this policy defines.
    pub fn summary(&self) -> PolicySummary {
        PolicySummary {
            roles: self.roles,
            identities: self.identities.len(),
            tokens: self.tokens.len(),
        }
    }

    /// The identity `token` stands for. Every listed token is compared, in
    /// time independent of where the digests differ, so the time taken
    /// tells nothing about which token came close.
    pub fn identity_of_token(&self, token: &str) -> Option<&str> {
        let presented = token_digest(token);
        let mut found = None;
        for (digest, identity) in &self.tokens {
            if bool::from(digest.ct_eq(&presented)) {
                found = Some(identity.as_str());
            }
        }
        found
    }

    /// Whether `identity` may do `action`.
    pub fn check(&self, identity: &str, action: &Action<'_>) -> Result<(), Denied> {
        let denied = |why: String| {
            Denied(format!(
                "identity {identity:?} may not {} {}: {why}",
                action.op(),
                action.resource()
            ))
        };
        let Some(grants) = self
            .identities
            .get(identity)
            .filter(|grants| !grants.roles.is_empty())
        else {
            return Err(denied("it has no role in the access policy".into()));
        };
        let roles = grants.roles.join(", ");
        let under =
            |prefixes: &[String], name: &str| prefixes.iter().any(|prefix| name.starts_with(prefix.as_str()));
        match action {
            Action::OpenSession | Action::UseSession(_) => Ok(()),
            Action::Lock(_, name) => {
                if under(&grants.locks, name) {
                    Ok(())
                } else {
                    Err(denied(format!("no lock prefix of its roles ({roles}) covers it")))
                }
            }
            Action::ReadKey(key) => {
                if under(&grants.keys_read, key) || under(&grants.keys_read_write, key) {
                    Ok(())
                } else {
                    Err(denied(format!(
                        "no key prefix of its roles ({roles}) grants reading it"
                    )))
                }
            }
            Action::WriteKey(_, key, lock) => {
                if !under(&grants.keys_read_write, key) {
                    Err(denied(format!(
                        "no keys_read_write prefix of its roles ({roles}) covers the key"
                    )))
                } else if !under(&grants.locks, lock) {
                    Err(denied(format!(
                        "no lock prefix of its roles ({roles}) covers the fencing lock"
                    )))
                } else {
                    Ok(())
                }
            }
            // Every name a watch may select starts with its prefix, so a
            // grant covers the watch when the prefix starts with the
            // grant's own prefix.
            Action::WatchLocks(prefix) => {
                if under(&grants.locks, prefix) {
                    Ok(())
                } else {
                    Err(denied(format!(
                        "no lock prefix of its roles ({roles}) covers every lock the watch selects"
                    )))
                }
            }
            Action::WatchKeys(prefix) => {
                if under(&grants.keys_read, prefix) || under(&grants.keys_read_write, prefix) {
                    Ok(())
                } else {
                    Err(denied(format!(
                        "no key prefix of its roles ({roles}) grants reading every key the watch selects"
                    )))
                }
            }
            Action::Admin(_) => {
                if grants.admin {
                    Ok(())
                } else {
                    Err(denied(format!("none of its roles ({roles}) is an admin role")))
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = r#"
[roles.jobs]
locks = ["jobs/"]
keys_read_write = ["jobs/"]

[roles.auditor]
keys_read = [""]

[roles.operator]
admin = true

[identities]
"worker-1" = ["jobs"]
"alice" = ["jobs", "auditor", "operator"]
"nobody" = []

[[tokens]]
identity = "worker-1"
sha256 = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
"#;

    #[test]
    fn roles_grant_their_prefixes_and_nothing_else() {
        let policy = Policy::parse(EXAMPLE).unwrap();
        assert!(policy
            .check("worker-1", &Action::Lock("acquire", "jobs/build"))
            .is_ok());
        let refused = policy
            .check("worker-1", &Action::Lock("acquire", "billing/invoice"))
            .unwrap_err();
        assert!(
            refused.0.contains("\"worker-1\"")
                && refused.0.contains("acquire")
                && refused.0.contains("\"billing/invoice\""),
            "{refused}"
        );
        assert!(policy
            .check("worker-1", &Action::WriteKey("put", "jobs/out", "jobs/build"))
            .is_ok());
        assert!(
            policy.check("worker-1", &Action::ReadKey("jobs/out")).is_ok(),
            "read-write implies read"
        );
        assert!(policy
            .check("worker-1", &Action::WriteKey("put", "billing/x", "jobs/build"))
            .is_err());
        assert!(
            policy
                .check("worker-1", &Action::WriteKey("put", "jobs/x", "billing/lock"))
                .is_err(),
            "the fencing lock must be the caller's too"
        );
        assert!(policy.check("worker-1", &Action::ReadKey("billing/x")).is_err());
        assert!(
            policy.check("alice", &Action::ReadKey("billing/x")).is_ok(),
            "an empty prefix covers every key"
        );
        assert!(
            policy
                .check("alice", &Action::WriteKey("put", "billing/x", "jobs/a"))
                .is_err(),
            "read-only"
        );
        assert!(policy.check("worker-1", &Action::Admin("state digest")).is_err());
        assert!(policy.check("alice", &Action::Admin("state digest")).is_ok());
    }

    #[test]
    fn an_identity_without_a_role_can_do_nothing() {
        let policy = Policy::parse(EXAMPLE).unwrap();
        for identity in ["nobody", "stranger"] {
            for action in [
                Action::OpenSession,
                Action::UseSession("keep_alive"),
                Action::Lock("describe", "jobs/a"),
                Action::ReadKey("jobs/a"),
            ] {
                let refused = policy.check(identity, &action).unwrap_err();
                assert!(refused.0.contains("no role"), "{refused}");
            }
        }
    }

    #[test]
    fn tokens_are_matched_by_their_digest() {
        let policy = Policy::parse(EXAMPLE).unwrap();
        // The example's digest is SHA-256("test").
        assert_eq!(policy.identity_of_token("test"), Some("worker-1"));
        assert_eq!(policy.identity_of_token("tesT"), None);
        assert_eq!(policy.identity_of_token(""), None);
        assert_eq!(
            token_digest_hex("test"),
            "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
        );
    }

    #[test]
    fn mistakes_in_a_policy_are_refused_naming_the_entry() {
        let cases = [
            ("[roles.a]\nlocks = [\"x\"]\ncolour = 1\n", "colour"),
            ("[identities]\nbob = [\"ghost\"]\n", "\"ghost\""),
            ("[identities]\n\"quorumlock-node-1\" = []\n", "members"),
            (
                "[roles.a]\n[identities]\nbob = [\"a\"]\n[[tokens]]\nidentity = \"bob\"\nsha256 = \"abc\"\n",
                "64 hex digits",
            ),
            (
                "[[tokens]]\nidentity = \"carol\"\nsha256 = \"9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08\"\n",
                "no role",
            ),
        ];
        for (text, expected) in cases {
            let error = Policy::parse(text).unwrap_err();
            assert!(error.contains(expected), "{text:?} gave {error:?}");
        }
        let summary = Policy::parse(EXAMPLE).unwrap().summary();
        assert_eq!((summary.roles, summary.identities, summary.tokens), (3, 3, 1));
    }
}
