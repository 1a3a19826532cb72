//! Typed refusals on the wire: every error status of the public API carries
//! a [`v1::ErrorDetail`] in its details (the `grpc-status-details-bin`
//! trailer holds a `google.rpc.Status` whose only detail is that message),
//! so that clients in any language act on fields instead of parsing
//! messages.

use prost::Message;
use tonic::{Code, Status};

use crate::v1;

/// The type URL of [`v1::ErrorDetail`] inside a `google.protobuf.Any`.
pub const ERROR_DETAIL_TYPE_URL: &str = "type.googleapis.com/quorumlock.v1.ErrorDetail";

/// A status with `code` and `message` that carries `detail`.
pub fn status(code: Code, message: impl Into<String>, detail: v1::ErrorDetail) -> Status {
    let message = message.into();
    let envelope = tonic_types::pb::Status {
        code: code as i32,
        message: message.clone(),
        details: vec![prost_types::Any {
            type_url: ERROR_DETAIL_TYPE_URL.to_string(),
            value: detail.encode_to_vec(),
        }],
    };
    Status::with_details(code, message, envelope.encode_to_vec().into())
}

/// The typed detail a status carries, if it carries one that decodes.
pub fn detail(status: &Status) -> Option<v1::ErrorDetail> {
    let envelope = tonic_types::pb::Status::decode(status.details()).ok()?;
    envelope
        .details
        .iter()
        .find(|any| any.type_url == ERROR_DETAIL_TYPE_URL)
        .and_then(|any| v1::ErrorDetail::decode(any.value.as_slice()).ok())
}

/// A detail with only its reason set.
pub fn reason(reason: v1::ErrorReason) -> v1::ErrorDetail {
    v1::ErrorDetail {
        reason: reason as i32,
        ..v1::ErrorDetail::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_detail_survives_the_round_trip_through_a_status() {
        let detail = v1::ErrorDetail {
            reason: v1::ErrorReason::StaleToken as i32,
            lock: b"jobs/a".to_vec(),
            presented_token: 3,
            current_token: 4,
            ..v1::ErrorDetail::default()
        };
        let status = status(Code::FailedPrecondition, "stale", detail.clone());
        assert_eq!(status.code(), Code::FailedPrecondition);
        assert_eq!(status.message(), "stale");
        assert_eq!(super::detail(&status), Some(detail));
        assert_eq!(super::detail(&Status::internal("plain")), None);
    }
}
