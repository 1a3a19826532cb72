//! Every bound the lock state machine enforces, in one place.
//!
//! The RPC layer validates requests against the same constants before it
//! proposes them, so a bad request is refused without touching the log; the
//! state machine checks again on apply because a log is not trusted input.

/// Shortest session TTL a client may ask for.
pub const SESSION_TTL_MS_MIN: u64 = 1_000;
/// Longest session TTL a client may ask for.
pub const SESSION_TTL_MS_MAX: u64 = 3_600_000;
/// Longest lock name, in bytes of UTF-8.
pub const LOCK_NAME_BYTES_MAX: usize = 512;
/// Longest key of the fenced key-value store, in bytes of UTF-8.
pub const KEY_BYTES_MAX: usize = 1_024;
/// Largest value of the fenced key-value store.
pub const VALUE_BYTES_MAX: usize = 1 << 20;
/// Most sessions waiting in one lock's FIFO queue.
pub const WAITERS_PER_LOCK_MAX: usize = 10_000;
/// Most sessions open at once in the whole cluster.
pub const SESSIONS_MAX: usize = 1_000_000;
/// Most entries in one `CheckpointSessions` command.
pub const CHECKPOINT_ENTRIES_MAX: usize = 1_000;
/// Largest value a restored snapshot's session or token counter may have.
/// Each command raises a counter by at most one, so no real history comes
/// near it (2^62 commands at a million a second take over 100,000 years); a
/// snapshot above it is corrupt, and refusing it leaves the counters room to
/// grow without overflowing.
pub const COUNTER_VALUE_MAX: u64 = 1 << 62;
