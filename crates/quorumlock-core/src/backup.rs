//! The backup file: the applied lock state at one index, in a form that
//! does not depend on the engine that wrote it.
//!
//! A text header of `key value` lines in a fixed order, ended by an empty
//! line, then the body: the state exactly as [`LockState::snapshot`]
//! serializes it (the bytes the state digest of `Cluster/Status` hashes).
//!
//! ```text
//! quorumlock-snapshot 1
//! engine raft
//! index 1234
//! next-token 57
//! next-session 12
//! sessions 3
//! locks 2
//! keys 5
//! created-unix-ms 1796231651516
//! body-bytes 4242
//! body-sha256 <64 hex digits>
//! header-sha256 <64 hex digits of every header byte before this line>
//!
//! <body>
//! ```
//!
//! Reading checks everything before anything is used: the header's own
//! checksum, the body's length and SHA-256, that the body decodes into a
//! state whose invariants hold, and that the counters the header names are
//! the state's. A damaged, truncated or extended file is refused, naming
//! what is wrong.

use sha2::{Digest, Sha256};

use crate::lock::LockState;
use quorumlock_proto::hex;

/// The first word of every backup file.
pub const MAGIC: &str = "quorumlock-snapshot";
/// The format version this code writes and reads.
pub const FORMAT_VERSION: u32 = 1;
/// Longest header a reader accepts.
pub const HEADER_BYTES_MAX: usize = 4_096;

/// The header's fields, in file order (the checksum lines are written and
/// checked by [`BackupHeader::encode`] and [`read_backup`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackupHeader {
    /// The file format's version.
    pub format: u32,
    /// The engine of the cluster the backup was taken from (informative:
    /// the body is the same for either engine).
    pub engine: String,
    /// The log index or slot of the last entry the state holds.
    pub index: u64,
    /// The token the next grant would have carried.
    pub next_token: u64,
    /// The id the next session would have got.
    pub next_session: u64,
    /// Live sessions.
    pub sessions: u64,
    /// Locks held or waited for.
    pub locks: u64,
    /// Keys of the fenced store.
    pub keys: u64,
    /// When the leader took it, in milliseconds since the Unix epoch.
    pub created_unix_ms: u64,
    /// Length of the body.
    pub body_bytes: u64,
    /// SHA-256 of the body.
    pub body_sha256: [u8; 32],
}

/// Why a file is not a usable backup.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BackupError {
    /// It does not start as a backup does.
    #[error("not a quorumlock snapshot file (it does not start with {MAGIC:?})")]
    NotABackup,
    /// A format this code does not read.
    #[error("snapshot format {found} is not supported (this quorumlock reads format {FORMAT_VERSION})")]
    UnsupportedFormat {
        /// The version the file names.
        found: String,
    },
    /// The header is malformed.
    #[error("bad snapshot header, line {line}: {why}")]
    Header {
        /// 1-based line number.
        line: usize,
        /// What is wrong with it.
        why: String,
    },
    /// The header's checksum does not match: a field was damaged.
    #[error("the snapshot header is damaged: its SHA-256 is {actual}, the header says {expected}")]
    HeaderDamaged {
        /// What the header says.
        expected: String,
        /// What its bytes hash to.
        actual: String,
    },
    /// The body is shorter or longer than the header says.
    #[error("the snapshot body is {actual} bytes, the header says {expected} (truncated or extended file)")]
    BodyLength {
        /// What the header says.
        expected: u64,
        /// What follows the header.
        actual: u64,
    },
    /// The body's checksum does not match.
    #[error("the snapshot body is damaged: its SHA-256 is {actual}, the header says {expected}")]
    BodyDamaged {
        /// What the header says.
        expected: String,
        /// What the body hashes to.
        actual: String,
    },
    /// The body passed its checksum but is not a valid state (a bug in
    /// whatever wrote it).
    #[error("the snapshot body is not a valid lock state: {0}")]
    BadState(String),
    /// The header names figures the state does not have.
    #[error("the snapshot header says {field} is {header}, the state has {state}")]
    Mismatch {
        /// Which figure.
        field: &'static str,
        /// What the header says.
        header: u64,
        /// What the state has.
        state: u64,
    },
}

/// The header's field names, in file order, after the first line.
const FIELDS: [&str; 10] = [
    "engine",
    "index",
    "next-token",
    "next-session",
    "sessions",
    "locks",
    "keys",
    "created-unix-ms",
    "body-bytes",
    "body-sha256",
];

impl BackupHeader {
    /// The header of a backup of `state`, serialized as `body`, holding
    /// every entry up to `index` of an `engine` cluster.
    pub fn describe(state: &LockState, body: &[u8], engine: &str, index: u64, created_unix_ms: u64) -> Self {
        BackupHeader {
            format: FORMAT_VERSION,
            engine: engine.to_string(),
            index,
            next_token: state.next_token().get(),
            next_session: state.next_session().get(),
            sessions: state.session_count() as u64,
            locks: state.lock_count() as u64,
            keys: state.key_count() as u64,
            created_unix_ms,
            body_bytes: body.len() as u64,
            body_sha256: Sha256::digest(body).into(),
        }
    }

    /// The header as the file holds it, checksum line and ending empty
    /// line included.
    pub fn encode(&self) -> Vec<u8> {
        let values = [
            self.engine.clone(),
            self.index.to_string(),
            self.next_token.to_string(),
            self.next_session.to_string(),
            self.sessions.to_string(),
            self.locks.to_string(),
            self.keys.to_string(),
            self.created_unix_ms.to_string(),
            self.body_bytes.to_string(),
            hex::encode(&self.body_sha256),
        ];
        let mut text = format!("{MAGIC} {}\n", self.format);
        for (field, value) in FIELDS.iter().zip(values) {
            text.push_str(&format!("{field} {value}\n"));
        }
        let checksum = hex::encode(&Sha256::digest(text.as_bytes()));
        text.push_str(&format!("header-sha256 {checksum}\n\n"));
        text.into_bytes()
    }

    /// The fields as `name: value` lines, for people.
    pub fn describe_lines(&self) -> Vec<(&'static str, String)> {
        vec![
            ("format", self.format.to_string()),
            ("engine", self.engine.clone()),
            ("index", self.index.to_string()),
            ("next token", self.next_token.to_string()),
            ("next session", self.next_session.to_string()),
            ("sessions", self.sessions.to_string()),
            ("locks", self.locks.to_string()),
            ("keys", self.keys.to_string()),
            ("created (unix ms)", self.created_unix_ms.to_string()),
            ("body bytes", self.body_bytes.to_string()),
            ("body sha256", hex::encode(&self.body_sha256)),
        ]
    }
}

/// A whole backup file: the header, then the body.
pub fn encode_backup(header: &BackupHeader, body: &[u8]) -> Vec<u8> {
    let mut file = header.encode();
    file.extend_from_slice(body);
    file
}

/// Reads and checks a whole backup file: its header, and the state it
/// holds.
pub fn read_backup(file: &[u8]) -> Result<(BackupHeader, LockState), BackupError> {
    let (header, body) = read_header(file)?;
    if body.len() as u64 != header.body_bytes {
        return Err(BackupError::BodyLength {
            expected: header.body_bytes,
            actual: body.len() as u64,
        });
    }
    let actual: [u8; 32] = Sha256::digest(body).into();
    if actual != header.body_sha256 {
        return Err(BackupError::BodyDamaged {
            expected: hex::encode(&header.body_sha256),
            actual: hex::encode(&actual),
        });
    }
    let state = LockState::restore(body).map_err(BackupError::BadState)?;
    for (field, claimed, held) in [
        ("next-token", header.next_token, state.next_token().get()),
        ("next-session", header.next_session, state.next_session().get()),
        ("sessions", header.sessions, state.session_count() as u64),
        ("locks", header.locks, state.lock_count() as u64),
        ("keys", header.keys, state.key_count() as u64),
    ] {
        if claimed != held {
            return Err(BackupError::Mismatch {
                field,
                header: claimed,
                state: held,
            });
        }
    }
    Ok((header, state))
}

/// The header, checked against its own checksum, and the bytes after it.
pub fn read_header(file: &[u8]) -> Result<(BackupHeader, &[u8]), BackupError> {
    if !file.starts_with(MAGIC.as_bytes()) {
        return Err(BackupError::NotABackup);
    }
    let window = &file[..file.len().min(HEADER_BYTES_MAX)];
    let end = window
        .windows(2)
        .position(|pair| pair == b"\n\n")
        .ok_or_else(|| BackupError::Header {
            line: 1,
            why: format!("no empty line ends the header within its first {HEADER_BYTES_MAX} bytes"),
        })?;
    let text = std::str::from_utf8(&file[..end + 1]).map_err(|_| BackupError::Header {
        line: 1,
        why: "the header is not UTF-8 text".to_string(),
    })?;
    let body = &file[end + 2..];
    let lines: Vec<&str> = text.lines().collect();
    let header_error = |line: usize, why: String| BackupError::Header { line, why };

    let version = lines[0]
        .strip_prefix(MAGIC)
        .and_then(|rest| rest.strip_prefix(' '));
    match version {
        Some(version) if version == FORMAT_VERSION.to_string() => {}
        Some(version) => {
            return Err(BackupError::UnsupportedFormat {
                found: version.to_string(),
            })
        }
        None => {
            return Err(header_error(
                1,
                format!("expected \"{MAGIC} VERSION\", found {:?}", lines[0]),
            ))
        }
    }
    let expected_lines = 1 + FIELDS.len() + 1;
    if lines.len() != expected_lines {
        return Err(header_error(
            lines.len().min(expected_lines),
            format!(
                "the header has {} lines, a format {FORMAT_VERSION} header has {expected_lines}",
                lines.len()
            ),
        ));
    }
    let value_of = |number: usize, field: &str| -> Result<&str, BackupError> {
        let line = lines[number - 1];
        line.strip_prefix(field)
            .and_then(|rest| rest.strip_prefix(' '))
            .ok_or_else(|| header_error(number, format!("expected \"{field} VALUE\", found {line:?}")))
    };
    let checksum_line = expected_lines;
    let claimed = value_of(checksum_line, "header-sha256")?;
    let covered = lines[..checksum_line - 1]
        .iter()
        .map(|line| format!("{line}\n"))
        .collect::<String>();
    let actual = hex::encode(&Sha256::digest(covered.as_bytes()));
    if claimed != actual {
        return Err(BackupError::HeaderDamaged {
            expected: claimed.to_string(),
            actual,
        });
    }
    let number = |index: usize| -> Result<u64, BackupError> {
        let line = index + 2;
        let text = value_of(line, FIELDS[index])?;
        text.parse()
            .map_err(|_| header_error(line, format!("{} {text:?} is not a number", FIELDS[index])))
    };
    let engine = value_of(2, FIELDS[0])?.to_string();
    let body_sha256 = {
        let text = value_of(FIELDS.len() + 1, "body-sha256")?;
        hex::decode::<32>(text).ok_or_else(|| {
            header_error(
                FIELDS.len() + 1,
                format!("body-sha256 {text:?} is not 64 hex digits"),
            )
        })?
    };
    let header = BackupHeader {
        format: FORMAT_VERSION,
        engine,
        index: number(1)?,
        next_token: number(2)?,
        next_session: number(3)?,
        sessions: number(4)?,
        locks: number(5)?,
        keys: number(6)?,
        created_unix_ms: number(7)?,
        body_bytes: number(8)?,
        body_sha256,
    };
    Ok((header, body))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lock::{Command, Credential};

    fn busy_state() -> LockState {
        let mut state = LockState::default();
        for _ in 0..3 {
            let owner = Credential::of_secret(&[7u8; 16]);
            let _ = state.apply(&Command::OpenSession {
                ttl_ms: 10_000,
                owner,
            });
        }
        state
    }

    fn backup_of(state: &LockState) -> Vec<u8> {
        let body = state.snapshot();
        let header = BackupHeader::describe(state, &body, "raft", 42, 1_796_000_000_000);
        encode_backup(&header, &body)
    }

    #[test]
    fn a_backup_reads_back_as_the_state_it_was_made_of() {
        let state = busy_state();
        let file = backup_of(&state);
        let (header, restored) = read_backup(&file).unwrap();
        assert_eq!(restored, state);
        assert_eq!(header.index, 42);
        assert_eq!(header.sessions, 3);
        assert_eq!(header.next_session, 4);
        assert_eq!(header.engine, "raft");
        assert_eq!(
            header.body_sha256,
            <[u8; 32]>::from(Sha256::digest(state.snapshot()))
        );
    }

    #[test]
    fn every_damaged_byte_truncation_or_extension_is_refused() {
        let file = backup_of(&busy_state());
        for position in 0..file.len() {
            let mut damaged = file.clone();
            damaged[position] ^= 0x01;
            assert!(
                read_backup(&damaged).is_err(),
                "a flipped bit at byte {position} went unnoticed"
            );
        }
        for length in 0..file.len() {
            assert!(
                read_backup(&file[..length]).is_err(),
                "a file cut to {length} bytes was accepted"
            );
        }
        let mut extended = file.clone();
        extended.push(0);
        assert!(matches!(
            read_backup(&extended),
            Err(BackupError::BodyLength { .. })
        ));
    }

    #[test]
    fn refusals_name_what_is_wrong() {
        let file = backup_of(&busy_state());
        assert_eq!(read_backup(b"PK\x03\x04"), Err(BackupError::NotABackup));
        let newer =
            String::from_utf8_lossy(&file).replacen("quorumlock-snapshot 1", "quorumlock-snapshot 2", 1);
        assert!(matches!(
            read_backup(newer.as_bytes()),
            Err(BackupError::UnsupportedFormat { found }) if found == "2"
        ));
        // A changed field no longer matches the header's checksum.
        let text = String::from_utf8(file[..file.len() - busy_state().snapshot().len()].to_vec()).unwrap();
        let lowered = text.replacen("next-token 1", "next-token 0", 1);
        let mut forged = lowered.into_bytes();
        forged.extend_from_slice(&busy_state().snapshot());
        assert!(matches!(
            read_backup(&forged),
            Err(BackupError::HeaderDamaged { .. })
        ));
        let body_len = busy_state().snapshot().len();
        let mut damaged = file.clone();
        let last = damaged.len() - 1;
        damaged[last] ^= 0xff;
        let error = read_backup(&damaged).unwrap_err();
        assert!(matches!(error, BackupError::BodyDamaged { .. }), "{error}");
        assert!(error.to_string().contains("damaged"), "{error}");
        let cut = read_backup(&file[..file.len() - body_len / 2]).unwrap_err();
        assert!(cut.to_string().contains("truncated"), "{cut}");
    }
}
