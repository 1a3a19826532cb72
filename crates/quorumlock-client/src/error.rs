//! The client's typed errors.

use std::fmt;
use std::time::Duration;

use quorumlock_proto::v1::{ErrorDetail, ErrorReason};
use quorumlock_proto::{details, FencingToken, NodeId, SessionId};
use tonic::{Code, Status};

/// Why the cluster refused a call: the typed detail every refusal of the
/// API carries (see `ErrorDetail` in the proto), read from the status
/// details rather than parsed from the message.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Refusal {
    /// An argument outside its limits, or missing.
    InvalidArgument {
        /// The request field that is wrong.
        field: String,
        /// Its bound (bytes or milliseconds), when it has one.
        limit: Option<u64>,
    },
    /// The session does not exist (never opened, closed or expired).
    SessionNotFound {
        /// The session.
        session: SessionId,
    },
    /// The session ended (closed or expired) while the call waited.
    SessionEnded {
        /// The session.
        session: SessionId,
    },
    /// The caller is not the session's owner: the secret presented is not
    /// the session's, or the identity is not the one that opened it.
    NotSessionOwner {
        /// The session.
        session: SessionId,
    },
    /// The call presented no session secret, or no identity where the node
    /// requires one.
    Unauthenticated {
        /// The session, when the call named one.
        session: SessionId,
        /// What was missing (`session_secret`), when the node said.
        field: String,
    },
    /// The cluster's access policy does not let this identity make the call.
    AccessDenied {
        /// The identity refused.
        identity: String,
    },
    /// An expensive call (the state digest) came too soon after others.
    RateLimited {
        /// How long until it may succeed (zero while another one runs).
        retry_after: Duration,
    },
    /// A release or fenced write named a lock the session does not hold.
    NotHolder {
        /// The lock.
        lock: String,
        /// The session.
        session: SessionId,
    },
    /// The token presented is not the lock's current one.
    StaleToken {
        /// The lock.
        lock: String,
        /// The token presented.
        presented: FencingToken,
        /// The lock's current token; `None` when nobody holds it.
        current: Option<FencingToken>,
    },
    /// The lock is held or asked for in the other mode: a fenced write
    /// under a shared holder's token, or an acquire in one mode by a
    /// session that holds or awaits the lock in the other.
    WrongMode {
        /// The lock.
        lock: String,
    },
    /// A semaphore acquire named another number of permits than the
    /// semaphore has.
    SemaphoreLimit {
        /// The semaphore.
        semaphore: String,
        /// Its number of permits.
        limit: u32,
    },
    /// The lock's wait queue is full.
    QueueFull {
        /// The lock.
        lock: String,
        /// The bound.
        limit: u64,
    },
    /// The cluster holds as many sessions as it allows.
    TooManySessions {
        /// The bound.
        limit: u64,
    },
    /// The node does not lead and could not forward: nothing was proposed.
    NotLeader {
        /// The leader it knows, if any: id and address.
        leader: Option<(NodeId, String)>,
    },
    /// No quorum ordered the command or confirmed the read in time; a
    /// command may still take effect.
    NoQuorum {
        /// The leader the node knows, if any: id and address.
        leader: Option<(NodeId, String)>,
    },
    /// The leader holds as many commands as it may; nothing was proposed.
    Overloaded {
        /// The bound.
        limit: u64,
    },
    /// The node is stopping.
    ShuttingDown,
    /// The node's storage failed; it stops serving.
    NodeFailed,
    /// Forwarding to the leader failed in transport; the command may or may
    /// not have reached it.
    ForwardingFailed,
    /// The node answered in a way it never should.
    Internal,
    /// The membership change cannot be made now; the status message says
    /// why (another change in progress, the learner lags, the id is unknown).
    MembershipRefused,
    /// The node was removed from the cluster; another node serves.
    NodeRemoved,
    /// A watch asked for a revision the node no longer keeps (or never
    /// saw).
    RevisionCompacted {
        /// The oldest revision the node keeps.
        oldest: u64,
    },
    /// A watch fell so far behind that the node dropped revisions it had
    /// not sent.
    WatchTooSlow {
        /// The oldest revision the node keeps.
        oldest: u64,
    },
    /// The node serves as many watches as it allows.
    TooManyWatches {
        /// The bound.
        limit: u64,
    },
    /// `FAILED_PRECONDITION`: a try-acquire named a lock in its lock-delay
    /// (its last grant ended by an expiry or its maximum hold); nobody is
    /// granted it until the delay passes.
    LockDelayed {
        /// The lock.
        lock: String,
        /// The delay's length.
        delay: Duration,
        /// About how much of it is left, as the leader counts.
        left: Duration,
    },
    /// A reason this client does not know (a newer server).
    Other(i32),
}

impl Refusal {
    /// The refusal a status carries, if it carries one.
    pub fn of(status: &Status) -> Option<Refusal> {
        details::detail(status).map(Refusal::from_detail)
    }

    fn from_detail(detail: ErrorDetail) -> Refusal {
        let lock = String::from_utf8_lossy(&detail.lock).into_owned();
        let session = SessionId::new(detail.session_id);
        let leader =
            (detail.leader_id != 0).then(|| (NodeId::new(detail.leader_id), detail.leader_addr.clone()));
        match ErrorReason::try_from(detail.reason) {
            Ok(ErrorReason::InvalidArgument) => Refusal::InvalidArgument {
                field: detail.field,
                limit: (detail.limit != 0).then_some(detail.limit),
            },
            Ok(ErrorReason::SessionNotFound) => Refusal::SessionNotFound { session },
            Ok(ErrorReason::SessionEnded) => Refusal::SessionEnded { session },
            Ok(ErrorReason::NotHolder) => Refusal::NotHolder { lock, session },
            Ok(ErrorReason::StaleToken) => Refusal::StaleToken {
                lock,
                presented: FencingToken::new(detail.presented_token),
                current: (detail.current_token != 0).then_some(FencingToken::new(detail.current_token)),
            },
            Ok(ErrorReason::WrongMode) => Refusal::WrongMode { lock },
            Ok(ErrorReason::SemaphoreLimit) => Refusal::SemaphoreLimit {
                semaphore: lock,
                limit: u32::try_from(detail.limit).unwrap_or(u32::MAX),
            },
            Ok(ErrorReason::QueueFull) => Refusal::QueueFull {
                lock,
                limit: detail.limit,
            },
            Ok(ErrorReason::TooManySessions) => Refusal::TooManySessions { limit: detail.limit },
            Ok(ErrorReason::NotLeader) => Refusal::NotLeader { leader },
            Ok(ErrorReason::NoQuorum) => Refusal::NoQuorum { leader },
            Ok(ErrorReason::Overloaded) => Refusal::Overloaded { limit: detail.limit },
            Ok(ErrorReason::ShuttingDown) => Refusal::ShuttingDown,
            Ok(ErrorReason::NodeFailed) => Refusal::NodeFailed,
            Ok(ErrorReason::ForwardingFailed) => Refusal::ForwardingFailed,
            Ok(ErrorReason::Internal) => Refusal::Internal,
            Ok(ErrorReason::MembershipRefused) => Refusal::MembershipRefused,
            Ok(ErrorReason::NodeRemoved) => Refusal::NodeRemoved,
            Ok(ErrorReason::NotSessionOwner) => Refusal::NotSessionOwner { session },
            Ok(ErrorReason::Unauthenticated) => Refusal::Unauthenticated {
                session,
                field: detail.field,
            },
            Ok(ErrorReason::AccessDenied) => Refusal::AccessDenied {
                identity: detail.identity,
            },
            Ok(ErrorReason::RateLimited) => Refusal::RateLimited {
                retry_after: Duration::from_millis(detail.retry_after_ms),
            },
            Ok(ErrorReason::RevisionCompacted) => Refusal::RevisionCompacted { oldest: detail.limit },
            Ok(ErrorReason::WatchTooSlow) => Refusal::WatchTooSlow { oldest: detail.limit },
            Ok(ErrorReason::TooManyWatches) => Refusal::TooManyWatches { limit: detail.limit },
            Ok(ErrorReason::LockDelayed) => Refusal::LockDelayed {
                lock,
                delay: Duration::from_millis(detail.limit),
                left: Duration::from_millis(detail.retry_after_ms),
            },
            Ok(ErrorReason::Unspecified) | Err(_) => Refusal::Other(detail.reason),
        }
    }

    /// The leader the refusing node named, if it named one.
    pub fn leader(&self) -> Option<&(NodeId, String)> {
        match self {
            Refusal::NotLeader { leader } | Refusal::NoQuorum { leader } => leader.as_ref(),
            _ => None,
        }
    }

    /// Whether the refusal says the session is gone.
    pub fn is_session_gone(&self) -> bool {
        matches!(
            self,
            Refusal::SessionNotFound { .. } | Refusal::SessionEnded { .. }
        )
    }
}

/// Why a session ended without its owner closing it, or why it ended at all.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LostReason {
    /// The cluster ended the session (it expired or was closed elsewhere):
    /// a KeepAlive stream or a call was answered `NOT_FOUND`.
    #[error("the cluster ended the session ({endpoint}: {message})")]
    Ended {
        /// The endpoint that said so.
        endpoint: String,
        /// The server's message.
        message: String,
    },
    /// No renewal was confirmed within the TTL, so the cluster may already
    /// have granted the session's locks to others.
    #[error("no renewal was confirmed within the {ttl:?} TTL")]
    NotRenewed {
        /// The session's TTL.
        ttl: Duration,
    },
    /// The owner closed the session.
    #[error("the session was closed by its owner")]
    Closed,
    /// The lock's grant passed its maximum hold time: the leader ends it
    /// then (the session lives on). Reported by the guard of that grant
    /// only, from the client's own count, which ends no later than the
    /// leader's.
    #[error("the grant passed its {max_hold:?} maximum hold time")]
    MaxHold {
        /// The grant's maximum hold time.
        max_hold: Duration,
    },
}

/// One endpoint's answer while the client looked for a live one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointFailure {
    /// The endpoint tried.
    pub endpoint: String,
    /// The gRPC code it answered with (`UNAVAILABLE` when it did not answer).
    pub code: Code,
    /// What it said, or why it could not be reached.
    pub message: String,
}

impl fmt::Display for EndpointFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}: {}", self.endpoint, code_name(self.code), self.message)
    }
}

/// Everything a client call can fail with.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ClientError {
    /// No endpoint was given.
    #[error("no endpoints given: pass at least one host:port of the cluster")]
    NoEndpoints,
    /// An endpoint is not `host:port` or `http://host:port`.
    #[error("invalid endpoint {endpoint:?}: {reason}")]
    InvalidEndpoint {
        /// The text as given.
        endpoint: String,
        /// What is wrong with it.
        reason: String,
    },
    /// More endpoints than [`ENDPOINTS_MAX`](super::ENDPOINTS_MAX).
    #[error("{count} endpoints given; at most {max} are supported")]
    TooManyEndpoints {
        /// How many were given.
        count: usize,
        /// The limit.
        max: usize,
    },
    /// An argument the client refuses before calling the cluster.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// A node answered with an error status (after retries, for
    /// `UNAVAILABLE`).
    #[error("{endpoint}: {}: {message}", code_name(*.code))]
    Rpc {
        /// The endpoint that answered.
        endpoint: String,
        /// The gRPC status code.
        code: Code,
        /// The status message, with the transport's cause when there is one.
        message: String,
        /// Why, as the status's typed detail says; `None` for failures of
        /// the transport itself (no node answered).
        refusal: Option<Refusal>,
    },
    /// A call that is not safe to repeat failed in a way that may have come
    /// after it took effect (the node went away, the answer was lost), and
    /// the repeat was refused or answered as if it had: whether this call
    /// did what was asked is unknown, though its effect (a released lock, a
    /// closed session, a deleted key) is in place.
    #[error("outcome unknown: an earlier attempt may have taken effect ({earlier_failure}); the repeat got {endpoint}: {}: {message}", code_name(*.code))]
    OutcomeUnknown {
        /// The endpoint that answered the repeat.
        endpoint: String,
        /// The repeat's gRPC code (`OK` when it succeeded with a misleading
        /// answer).
        code: Code,
        /// The repeat's answer.
        message: String,
        /// The failure of the earlier attempt.
        earlier_failure: String,
    },
    /// [`Client::connect`](super::Client::connect) found no endpoint that answers.
    #[error("no endpoint answered within {waited:.1?}: {}", join_failures(.failures))]
    NoEndpointAnswered {
        /// How long the client tried.
        waited: Duration,
        /// The last answer of every endpoint tried.
        failures: Vec<EndpointFailure>,
    },
    /// The session already holds this lock, or is acquiring it: one session
    /// holds a lock at most once, since the cluster would hand it the same
    /// grant again.
    #[error("session {session} already holds lock {lock:?} (or is acquiring it)")]
    AlreadyHeld {
        /// The session id.
        session: SessionId,
        /// The lock's name.
        lock: String,
    },
    /// The session that an operation needs is gone.
    #[error("session {session} lost: {reason}")]
    SessionLost {
        /// The session id.
        session: SessionId,
        /// Why it is gone.
        reason: LostReason,
    },
}

impl ClientError {
    /// Whether an earlier attempt of the call may have taken effect and the
    /// outcome is therefore unknown.
    pub fn is_outcome_unknown(&self) -> bool {
        matches!(self, ClientError::OutcomeUnknown { .. })
    }

    /// The gRPC code of a server answer, if this error is one.
    pub fn code(&self) -> Option<Code> {
        match self {
            ClientError::Rpc { code, .. } => Some(*code),
            _ => None,
        }
    }

    /// The endpoint that answered, if this error is a server answer.
    pub fn endpoint(&self) -> Option<&str> {
        match self {
            ClientError::Rpc { endpoint, .. } => Some(endpoint),
            _ => None,
        }
    }

    /// Whether the cluster refused a fenced write or release because the
    /// token presented is no longer current (`FAILED_PRECONDITION`).
    pub fn is_failed_precondition(&self) -> bool {
        self.code() == Some(Code::FailedPrecondition)
    }

    /// The typed reason of a server's refusal, if this error is one.
    pub fn refusal(&self) -> Option<&Refusal> {
        match self {
            ClientError::Rpc { refusal, .. } => refusal.as_ref(),
            _ => None,
        }
    }

    /// The presented and current token of a refusal for a stale token.
    pub fn stale_token(&self) -> Option<(FencingToken, Option<FencingToken>)> {
        match self.refusal() {
            Some(Refusal::StaleToken {
                presented, current, ..
            }) => Some((*presented, *current)),
            _ => None,
        }
    }

    /// An error for a status answered by `endpoint`.
    pub(crate) fn from_status(endpoint: &str, status: &Status) -> Self {
        ClientError::Rpc {
            endpoint: endpoint.to_string(),
            code: status.code(),
            message: describe_status(status),
            refusal: Refusal::of(status),
        }
    }
}

/// The status message followed by the chain of causes the transport
/// attached, without repeating what was already said.
pub(crate) fn describe_status(status: &Status) -> String {
    let mut message = status.message().to_string();
    let mut source = std::error::Error::source(status);
    while let Some(cause) = source {
        let text = cause.to_string();
        if !text.is_empty() && !message.contains(&text) {
            if message.is_empty() {
                message = text;
            } else {
                message = format!("{message}: {text}");
            }
        }
        source = cause.source();
    }
    if message.is_empty() {
        message = "no message".to_string();
    }
    message
}

fn join_failures(failures: &[EndpointFailure]) -> String {
    failures
        .iter()
        .map(EndpointFailure::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

/// The canonical upper-case name of a gRPC code, as grpcurl and the gRPC
/// documentation spell it.
pub fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unknown_outcome_names_the_earlier_failure_and_the_repeats_answer() {
        let error = ClientError::OutcomeUnknown {
            endpoint: "b:2".into(),
            code: Code::FailedPrecondition,
            message: "session 7 does not hold lock \"x\"".into(),
            earlier_failure: "a:1: UNAVAILABLE: connection reset".into(),
        };
        let text = error.to_string();
        assert!(error.is_outcome_unknown());
        assert!(text.contains("a:1: UNAVAILABLE: connection reset"), "{text}");
        assert!(text.contains("b:2: FAILED_PRECONDITION"), "{text}");
    }

    #[test]
    fn an_rpc_error_names_the_endpoint_the_canonical_code_and_the_message() {
        let error = ClientError::from_status(
            "127.0.0.1:7001",
            &Status::failed_precondition("stale token: presented 3, current 4"),
        );
        assert_eq!(
            error.to_string(),
            "127.0.0.1:7001: FAILED_PRECONDITION: stale token: presented 3, current 4"
        );
        assert!(error.is_failed_precondition());
        assert_eq!(error.endpoint(), Some("127.0.0.1:7001"));
    }

    #[test]
    fn no_endpoint_answered_lists_every_endpoint_tried() {
        let error = ClientError::NoEndpointAnswered {
            waited: Duration::from_secs(3),
            failures: vec![
                EndpointFailure {
                    endpoint: "a:1".into(),
                    code: Code::Unavailable,
                    message: "connection refused".into(),
                },
                EndpointFailure {
                    endpoint: "b:2".into(),
                    code: Code::Unavailable,
                    message: "timed out".into(),
                },
            ],
        };
        let text = error.to_string();
        assert!(text.contains("a:1: UNAVAILABLE: connection refused"), "{text}");
        assert!(text.contains("b:2: UNAVAILABLE: timed out"), "{text}");
    }
}
