//! The documented limits of the public API (README, "Limits"), shared by the
//! server, which enforces them, and the clients, which check them before
//! sending so that a bad request is refused with a precise error instead of
//! a transport failure.

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
/// Most permits a semaphore may have.
pub const SEMAPHORE_PERMITS_MAX: u32 = 1_000_000;
/// Longest lock-delay an acquire may set (0 is none).
pub const LOCK_DELAY_MS_MAX: u32 = 60_000;
/// Shortest maximum hold time an acquire may set (0 is none).
pub const MAX_HOLD_MS_MIN: u32 = 1_000;
/// Longest maximum hold time an acquire may set: one day.
pub const MAX_HOLD_MS_MAX: u32 = 86_400_000;
/// Most watches one node serves at once.
pub const WATCHES_MAX: usize = 10_000;
/// Most sessions open at once in the whole cluster.
pub const SESSIONS_MAX: usize = 1_000_000;
/// Longest time a queued `Acquire` may wait.
pub const WAIT_MS_MAX: u64 = 3_600_000;
/// Largest public API message either side sends or accepts: a maximal value
/// plus its key and fence, with room to spare.
pub const API_MESSAGE_BYTES_MAX: usize = VALUE_BYTES_MAX + 64 * 1024;
/// Bytes of a session secret: exactly this many, from the OS's random source.
pub const SESSION_SECRET_BYTES: usize = 32;
