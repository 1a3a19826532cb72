//! How engine failures and lock refusals become gRPC statuses, and how a
//! request's deadline is read.

use std::time::Duration;

use tonic::metadata::MetadataValue;
use tonic::{Code, Request, Status};

use quorumlock_core::consensus::{EngineError, LeaderInfo};
use quorumlock_core::lock::LockError;

pub use quorumlock_proto::headers::{FORWARDED_HEADER, LEADER_HINT_HEADER};

/// The status for a refusal of the lock state machine.
pub fn from_lock_error(error: LockError) -> Status {
    let code = match &error {
        LockError::InvalidArgument(_) => Code::InvalidArgument,
        LockError::SessionNotFound { .. } => Code::NotFound,
        LockError::NotHolder { .. } | LockError::StaleToken { .. } => Code::FailedPrecondition,
        LockError::QueueFull { .. } | LockError::TooManySessions { .. } => Code::ResourceExhausted,
    };
    Status::new(code, error.to_string())
}

/// The status for an engine failure.
pub fn from_engine_error(error: EngineError) -> Status {
    match error {
        EngineError::NotLeader { leader } => {
            unavailable("this node is not the leader; retry", leader.as_ref())
        }
        EngineError::Unavailable(reason) => unavailable(&format!("no quorum: {reason}"), None),
        error @ EngineError::Overloaded { .. } => Status::unavailable(format!("{error}; retry with backoff")),
        EngineError::ShuttingDown => Status::unavailable("node is shutting down"),
        EngineError::Fatal(reason) => Status::internal(format!("node failed: {reason}")),
    }
}

/// UNAVAILABLE with the leader named in the message and in metadata.
pub fn unavailable(message: &str, leader: Option<&LeaderInfo>) -> Status {
    match leader {
        Some(leader) => {
            let mut status = Status::unavailable(format!(
                "{message} (leader hint: node {} at {})",
                leader.id, leader.addr
            ));
            if let Ok(value) = MetadataValue::try_from(format!("{}@{}", leader.id, leader.addr)) {
                status.metadata_mut().insert(LEADER_HINT_HEADER, value);
            }
            status
        }
        None => Status::unavailable(format!("{message} (no leader known)")),
    }
}

/// Whether a follower already forwarded this request.
pub fn is_forwarded<T>(request: &Request<T>) -> bool {
    request.metadata().contains_key(FORWARDED_HEADER)
}

/// The deadline the client set with `grpc-timeout`, if any.
pub fn client_timeout<T>(request: &Request<T>) -> Option<Duration> {
    let value = request.metadata().get("grpc-timeout")?.to_str().ok()?;
    parse_grpc_timeout(value)
}

/// Parses the gRPC wire format of a timeout: digits followed by a unit.
pub fn parse_grpc_timeout(value: &str) -> Option<Duration> {
    if value.len() < 2 || value.len() > 9 {
        return None;
    }
    let (digits, unit) = value.split_at(value.len() - 1);
    let amount: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(amount.checked_mul(3_600)?),
        "M" => Duration::from_secs(amount.checked_mul(60)?),
        "S" => Duration::from_secs(amount),
        "m" => Duration::from_millis(amount),
        "u" => Duration::from_micros(amount),
        "n" => Duration::from_nanos(amount),
        _ => return None,
    })
}

/// The time this node may spend on a request: the client's deadline less a
/// margin to deliver the answer, capped at `max`.
pub fn budget<T>(request: &Request<T>, max: Duration) -> Duration {
    match client_timeout(request) {
        Some(timeout) => {
            let margin = (timeout / 10).clamp(Duration::from_millis(20), Duration::from_millis(250));
            timeout.saturating_sub(margin).min(max)
        }
        None => max,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeouts_parse_in_every_unit_and_reject_garbage() {
        assert_eq!(parse_grpc_timeout("3S"), Some(Duration::from_secs(3)));
        assert_eq!(parse_grpc_timeout("250m"), Some(Duration::from_millis(250)));
        assert_eq!(parse_grpc_timeout("2M"), Some(Duration::from_secs(120)));
        assert_eq!(parse_grpc_timeout("1H"), Some(Duration::from_secs(3_600)));
        assert_eq!(parse_grpc_timeout("7u"), Some(Duration::from_micros(7)));
        assert_eq!(parse_grpc_timeout("9n"), Some(Duration::from_nanos(9)));
        assert_eq!(parse_grpc_timeout("S"), None);
        assert_eq!(parse_grpc_timeout("12x"), None);
        assert_eq!(parse_grpc_timeout("123456789S"), None);
    }

    #[test]
    fn stale_token_maps_to_failed_precondition_naming_both_tokens() {
        let status = from_lock_error(LockError::StaleToken {
            lock: "a".into(),
            presented: 3,
            current: Some(4),
        });
        assert_eq!(status.code(), Code::FailedPrecondition);
        assert!(status.message().contains("presented 3"), "{}", status.message());
        assert!(status.message().contains("current 4"), "{}", status.message());
    }

    #[test]
    fn unavailable_carries_the_leader_hint_in_metadata() {
        let leader = LeaderInfo {
            id: 2,
            addr: "127.0.0.1:7002".into(),
        };
        let status = from_engine_error(EngineError::NotLeader { leader: Some(leader) });
        assert_eq!(status.code(), Code::Unavailable);
        assert_eq!(
            status.metadata().get(LEADER_HINT_HEADER).unwrap(),
            "2@127.0.0.1:7002"
        );
    }
}
