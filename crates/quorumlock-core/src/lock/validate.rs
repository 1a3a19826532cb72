//! Argument checks shared by the RPC layer (before proposing) and the state
//! machine (on apply).

use super::command::HoldTerms;
use super::credential::IDENTITY_BYTES_MAX;
use super::error::LockError;
use super::limits::{
    KEY_BYTES_MAX, LOCK_DELAY_MS_MAX, LOCK_NAME_BYTES_MAX, MAX_HOLD_MS_MAX, MAX_HOLD_MS_MIN,
    SEMAPHORE_PERMITS_MAX, SESSION_TTL_MS_MAX, SESSION_TTL_MS_MIN, VALUE_BYTES_MAX,
};

/// Checks a session TTL against the documented bounds.
pub fn ttl_ms(ttl_ms: u64) -> Result<(), LockError> {
    if !(SESSION_TTL_MS_MIN..=SESSION_TTL_MS_MAX).contains(&ttl_ms) {
        return Err(LockError::InvalidArgument(format!(
            "session TTL {ttl_ms} ms is outside {SESSION_TTL_MS_MIN}..={SESSION_TTL_MS_MAX} ms"
        )));
    }
    Ok(())
}

/// Checks a semaphore acquire: a limit of 1 to [`SEMAPHORE_PERMITS_MAX`]
/// permits, and 1 to `limit` permits asked for.
pub fn permits(permits: u32, limit: u32) -> Result<(), LockError> {
    if !(1..=SEMAPHORE_PERMITS_MAX).contains(&limit) {
        return Err(LockError::InvalidArgument(format!(
            "a semaphore of {limit} permits is outside 1..={SEMAPHORE_PERMITS_MAX}"
        )));
    }
    if !(1..=limit).contains(&permits) {
        return Err(LockError::InvalidArgument(format!(
            "{permits} permits asked of a semaphore of {limit}: ask 1..={limit}"
        )));
    }
    Ok(())
}

/// Checks hold terms: a lock-delay of at most [`LOCK_DELAY_MS_MAX`], and
/// a maximum hold of 0 or [`MAX_HOLD_MS_MIN`] to [`MAX_HOLD_MS_MAX`].
pub fn terms(terms: &HoldTerms) -> Result<(), LockError> {
    if terms.lock_delay_ms > LOCK_DELAY_MS_MAX {
        return Err(LockError::InvalidArgument(format!(
            "lock-delay {} ms is more than the {LOCK_DELAY_MS_MAX} ms limit",
            terms.lock_delay_ms
        )));
    }
    if terms.max_hold_ms != 0 && !(MAX_HOLD_MS_MIN..=MAX_HOLD_MS_MAX).contains(&terms.max_hold_ms) {
        return Err(LockError::InvalidArgument(format!(
            "maximum hold {} ms is outside {MAX_HOLD_MS_MIN}..={MAX_HOLD_MS_MAX} ms (0 is none)",
            terms.max_hold_ms
        )));
    }
    Ok(())
}

/// Checks a lock name: 1 to [`LOCK_NAME_BYTES_MAX`] bytes.
pub fn lock_name(name: &str) -> Result<(), LockError> {
    bounded_text("lock name", name, LOCK_NAME_BYTES_MAX)
}

/// Checks a key of the fenced store: 1 to [`KEY_BYTES_MAX`] bytes.
pub fn key(key: &str) -> Result<(), LockError> {
    bounded_text("key", key, KEY_BYTES_MAX)
}

/// Checks a value of the fenced store: at most [`VALUE_BYTES_MAX`] bytes.
pub fn value(value: &[u8]) -> Result<(), LockError> {
    if value.len() > VALUE_BYTES_MAX {
        return Err(LockError::InvalidArgument(format!(
            "value is {} bytes, more than the {VALUE_BYTES_MAX}-byte limit",
            value.len()
        )));
    }
    Ok(())
}

/// Checks a caller identity: 1 to [`IDENTITY_BYTES_MAX`] bytes.
pub fn identity(identity: &str) -> Result<(), LockError> {
    bounded_text("identity", identity, IDENTITY_BYTES_MAX)
}

/// Decodes wire bytes as a UTF-8 name and checks its length.
pub fn utf8_name<'a>(what: &str, bytes: &'a [u8], max: usize) -> Result<&'a str, LockError> {
    let text = std::str::from_utf8(bytes)
        .map_err(|_| LockError::InvalidArgument(format!("{what} is not valid UTF-8")))?;
    bounded_text(what, text, max)?;
    Ok(text)
}

fn bounded_text(what: &str, text: &str, max: usize) -> Result<(), LockError> {
    if text.is_empty() {
        return Err(LockError::InvalidArgument(format!("{what} is empty")));
    }
    if text.len() > max {
        return Err(LockError::InvalidArgument(format!(
            "{what} is {} bytes, more than the {max}-byte limit",
            text.len()
        )));
    }
    Ok(())
}
