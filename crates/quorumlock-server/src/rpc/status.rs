//! How engine failures and lock refusals become gRPC statuses, and how a
//! request's deadline is read.

use std::time::Duration;

use tonic::metadata::MetadataValue;
use tonic::{Code, Request, Status};

use quorumlock_core::consensus::{EngineError, LeaderInfo};
use quorumlock_core::lock::{LockError, SessionId};
use quorumlock_proto::details::{self, reason};
use quorumlock_proto::v1::{self as pb, ErrorReason};

pub use quorumlock_proto::headers::{FORWARDED_HEADER, LEADER_HINT_HEADER};

/// FAILED_PRECONDITION (LOCK_DELAYED) for a try-acquire of `lock` during
/// its lock-delay of `delay_ms`, with about how much is `left` when this
/// node times it (the leader does).
pub fn lock_delayed(lock: &str, delay_ms: u32, left: Option<Duration>) -> Status {
    let error = LockError::LockDelayed {
        lock: lock.to_string(),
        delay_ms,
    };
    // Unknown here (not the leader's count): at most the whole delay,
    // unless leadership changes and starts it over.
    let left_ms = left.map_or(u64::from(delay_ms), |left| {
        u64::try_from(left.as_millis()).unwrap_or(u64::MAX)
    });
    let message = match left {
        Some(_) => format!("{error}; about {left_ms} ms of it left"),
        None => format!("{error}; at most {left_ms} ms of it left unless leadership changes"),
    };
    details::status(
        Code::FailedPrecondition,
        message,
        pb::ErrorDetail {
            lock: lock.as_bytes().to_vec(),
            limit: u64::from(delay_ms),
            retry_after_ms: left_ms,
            ..reason(ErrorReason::LockDelayed)
        },
    )
}

/// The status for a refusal of the lock state machine.
pub fn from_lock_error(error: LockError) -> Status {
    let message = error.to_string();
    let (code, detail) = match error {
        LockError::LockDelayed { lock, delay_ms } => return lock_delayed(&lock, delay_ms, None),
        LockError::InvalidArgument(_) => (Code::InvalidArgument, reason(ErrorReason::InvalidArgument)),
        LockError::SessionNotFound { session } => (
            Code::NotFound,
            pb::ErrorDetail {
                session_id: session.get(),
                ..reason(ErrorReason::SessionNotFound)
            },
        ),
        LockError::NotHolder { lock, session } => (
            Code::FailedPrecondition,
            pb::ErrorDetail {
                lock: lock.into_bytes(),
                session_id: session.get(),
                ..reason(ErrorReason::NotHolder)
            },
        ),
        LockError::StaleToken {
            lock,
            presented,
            current,
        } => (
            Code::FailedPrecondition,
            pb::ErrorDetail {
                lock: lock.into_bytes(),
                presented_token: presented.get(),
                current_token: current.map_or(0, |token| token.get()),
                ..reason(ErrorReason::StaleToken)
            },
        ),
        LockError::QueueFull { lock, max } => (
            Code::ResourceExhausted,
            pb::ErrorDetail {
                lock: lock.into_bytes(),
                limit: max as u64,
                ..reason(ErrorReason::QueueFull)
            },
        ),
        LockError::NotSessionOwner { session, .. } => (
            Code::PermissionDenied,
            pb::ErrorDetail {
                session_id: session.get(),
                ..reason(ErrorReason::NotSessionOwner)
            },
        ),
        LockError::WrongMode { lock, .. } => (
            Code::FailedPrecondition,
            pb::ErrorDetail {
                lock: lock.into_bytes(),
                ..reason(ErrorReason::WrongMode)
            },
        ),
        LockError::SemaphoreLimit { semaphore, limit, .. } => (
            Code::FailedPrecondition,
            pb::ErrorDetail {
                lock: semaphore.into_bytes(),
                limit: u64::from(limit),
                ..reason(ErrorReason::SemaphoreLimit)
            },
        ),
        LockError::TooManySessions { max } => (
            Code::ResourceExhausted,
            pb::ErrorDetail {
                limit: max as u64,
                ..reason(ErrorReason::TooManySessions)
            },
        ),
    };
    details::status(code, message, detail)
}

/// INVALID_ARGUMENT for request field `field`, whose bound is `limit` (bytes
/// or milliseconds) when it has one.
pub fn invalid_argument(field: &str, limit: Option<u64>, message: impl Into<String>) -> Status {
    details::status(
        Code::InvalidArgument,
        message,
        pb::ErrorDetail {
            field: field.to_string(),
            limit: limit.unwrap_or(0),
            ..reason(ErrorReason::InvalidArgument)
        },
    )
}

/// The status for an engine failure.
pub fn from_engine_error(error: EngineError) -> Status {
    match error {
        EngineError::NotLeader { leader } => {
            not_leader("this node is not the leader; retry", leader.as_ref())
        }
        error @ EngineError::QuorumSilent { .. } => {
            not_leader(&format!("{error}; retry on another node"), None)
        }
        EngineError::Unavailable(why) => no_quorum(&format!("no quorum: {why}"), None),
        error @ EngineError::Overloaded { queued_max } => details::status(
            Code::Unavailable,
            format!("{error}; retry with backoff"),
            pb::ErrorDetail {
                limit: queued_max as u64,
                ..reason(ErrorReason::Overloaded)
            },
        ),
        EngineError::ShuttingDown => details::status(
            Code::Unavailable,
            "node is shutting down",
            reason(ErrorReason::ShuttingDown),
        ),
        EngineError::MembershipRefused(why) => details::status(
            Code::FailedPrecondition,
            format!("membership change refused: {why}"),
            reason(ErrorReason::MembershipRefused),
        ),
        EngineError::Unsupported(why) => Status::unimplemented(why),
        EngineError::Removed(why) => details::status(
            Code::Unavailable,
            format!("{why}; use another node"),
            reason(ErrorReason::NodeRemoved),
        ),
        EngineError::Fatal(why) => details::status(
            Code::Internal,
            format!("node failed: {why}"),
            reason(ErrorReason::NodeFailed),
        ),
    }
}

/// UNAVAILABLE because this node does not lead: nothing was proposed. Names
/// the leader, when known, in the message, the detail and the metadata.
pub fn not_leader(message: &str, leader: Option<&LeaderInfo>) -> Status {
    unavailable(ErrorReason::NotLeader, message, leader)
}

/// UNAVAILABLE because no quorum ordered a command or confirmed a read in
/// time: a command may still take effect.
pub fn no_quorum(message: &str, leader: Option<&LeaderInfo>) -> Status {
    unavailable(ErrorReason::NoQuorum, message, leader)
}

/// Names `leader` in `metadata` as `x-quorumlock-leader: <id>@<addr>`: on a
/// refusal, and on an answer a follower forwarded from the leader.
pub fn name_leader(metadata: &mut tonic::metadata::MetadataMap, leader: &LeaderInfo) {
    if let Ok(value) = MetadataValue::try_from(format!("{}@{}", leader.id, leader.addr)) {
        metadata.insert(LEADER_HINT_HEADER, value);
    }
}

/// UNAVAILABLE with a reason, naming the leader (when known) in the message,
/// the detail and the `x-quorumlock-leader` metadata.
fn unavailable(why: ErrorReason, message: &str, leader: Option<&LeaderInfo>) -> Status {
    match leader {
        Some(leader) => {
            let mut status = details::status(
                Code::Unavailable,
                format!("{message} (leader hint: node {} at {})", leader.id, leader.addr),
                pb::ErrorDetail {
                    leader_id: leader.id.get(),
                    leader_addr: leader.addr.clone(),
                    ..reason(why)
                },
            );
            name_leader(status.metadata_mut(), leader);
            status
        }
        None => details::status(
            Code::Unavailable,
            format!("{message} (no leader known)"),
            reason(why),
        ),
    }
}

/// NOT_FOUND for a session that is gone: `ended` while the call waited, or
/// not there when the call came.
pub fn session_gone(session: SessionId, ended: bool) -> Status {
    let (why, message) = if ended {
        (
            ErrorReason::SessionEnded,
            format!("session {session} ended (closed or expired) while waiting"),
        )
    } else {
        (
            ErrorReason::SessionNotFound,
            format!("session {session} not found: expired, closed or never opened"),
        )
    };
    details::status(
        Code::NotFound,
        message,
        pb::ErrorDetail {
            session_id: session.get(),
            ..reason(why)
        },
    )
}

/// UNAUTHENTICATED for a call on `session` that presented no session secret.
pub fn secret_missing(session: SessionId) -> Status {
    details::status(
        Code::Unauthenticated,
        format!(
            "session_secret is missing: every call on session {session} must present the secret \
             OpenSession returned"
        ),
        pb::ErrorDetail {
            session_id: session.get(),
            field: "session_secret".to_string(),
            ..reason(ErrorReason::Unauthenticated)
        },
    )
}

/// INTERNAL for an answer the node should never give (a bug), saying what.
pub fn internal(message: impl Into<String>) -> Status {
    details::status(Code::Internal, message, reason(ErrorReason::Internal))
}

/// UNAVAILABLE for a forwarded call that failed in transport: the command
/// may or may not have reached the leader.
pub fn forwarding_failed(message: &str) -> Status {
    details::status(
        Code::Unavailable,
        format!("forwarding to the leader failed: {message}"),
        reason(ErrorReason::ForwardingFailed),
    )
}

/// UNAVAILABLE for a call forwarded to `from` that this node abandoned on
/// learning that `to` leads now: the command may or may not have reached
/// `from`, and `to` is where to send it again.
pub fn leader_moved(from: &LeaderInfo, to: &LeaderInfo) -> Status {
    unavailable(
        ErrorReason::ForwardingFailed,
        &format!(
            "forwarding to the leader failed: node {} stopped leading while the call was forwarded to it",
            from.id
        ),
        Some(to),
    )
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
    use quorumlock_core::consensus::NodeId;
    use quorumlock_core::lock::FencingToken;

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
            presented: FencingToken::new(3),
            current: Some(FencingToken::new(4)),
        });
        assert_eq!(status.code(), Code::FailedPrecondition);
        assert!(status.message().contains("presented 3"), "{}", status.message());
        assert!(status.message().contains("current 4"), "{}", status.message());
        let detail = details::detail(&status).expect("a typed detail");
        assert_eq!(detail.reason(), ErrorReason::StaleToken);
        assert_eq!((detail.presented_token, detail.current_token), (3, 4));
        assert_eq!(detail.lock, b"a");
    }

    #[test]
    fn unavailable_carries_the_leader_hint_in_metadata() {
        let leader = LeaderInfo {
            id: NodeId::new(2),
            addr: "127.0.0.1:7002".into(),
        };
        let status = from_engine_error(EngineError::NotLeader { leader: Some(leader) });
        assert_eq!(status.code(), Code::Unavailable);
        assert_eq!(
            status.metadata().get(LEADER_HINT_HEADER).unwrap(),
            "2@127.0.0.1:7002"
        );
        let detail = details::detail(&status).expect("a typed detail");
        assert_eq!(detail.reason(), ErrorReason::NotLeader);
        assert_eq!(
            (detail.leader_id, detail.leader_addr.as_str()),
            (2, "127.0.0.1:7002")
        );
    }
}
