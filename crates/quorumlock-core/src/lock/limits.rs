//! Every bound the lock state machine enforces, in one place.
//!
//! The public API's limits come from the wire protocol, where clients see
//! them too; the RPC layer validates requests against them before it
//! proposes, so a bad request is refused without touching the log, and the
//! state machine checks again on apply because a log is not trusted input.

pub use quorumlock_proto::limits::{
    KEY_BYTES_MAX, LOCK_DELAY_MS_MAX, LOCK_NAME_BYTES_MAX, MAX_HOLD_MS_MAX, MAX_HOLD_MS_MIN,
    SEMAPHORE_PERMITS_MAX, SESSIONS_MAX, SESSION_TTL_MS_MAX, SESSION_TTL_MS_MIN, VALUE_BYTES_MAX,
    WAITERS_PER_LOCK_MAX,
};

/// Most entries in one `CheckpointSessions` command.
pub const CHECKPOINT_ENTRIES_MAX: usize = 1_000;
/// Largest value a restored snapshot's session or token counter may have.
/// Each command raises a counter by at most one, so no real history comes
/// near it (2^62 commands at a million a second take over 100,000 years); a
/// snapshot above it is corrupt, and refusing it leaves the counters room to
/// grow without overflowing.
pub const COUNTER_VALUE_MAX: u64 = 1 << 62;
