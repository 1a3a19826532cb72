//! A node's access control: the policy in force (re-read on SIGHUP), who
//! each call comes from, and whether the policy lets it through. Every
//! refusal, and every admin call, is an audit line.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use parking_lot::RwLock;
use tonic::metadata::MetadataMap;
use tonic::{Code, Request, Status};

use quorumlock_core::lock::IDENTITY_BYTES_MAX;
use quorumlock_proto::details::{self, reason};
use quorumlock_proto::headers::{AUTHORIZATION_HEADER, FORWARDED_HEADER, IDENTITY_HEADER};
use quorumlock_proto::v1::{self as pb, ErrorReason};
use quorumlock_tls::{node_of_name, ConnInfo};

use super::caller::{Caller, Source};
use super::policy::{Action, Policy, PolicySummary};
use super::rate::DigestLimiter;
use super::AUDIT_TARGET;

/// The access control of one node.
pub struct Access {
    file: Option<PathBuf>,
    policy: RwLock<Option<Arc<Policy>>>,
    /// The bound on state digests.
    pub digests: DigestLimiter,
}

fn read_policy(path: &std::path::Path) -> anyhow::Result<Policy> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    Policy::parse(&text).map_err(|error| anyhow::anyhow!("access policy {}: {error}", path.display()))
}

/// UNAUTHENTICATED: the call proved no identity where one is required.
fn unauthenticated(message: String) -> Status {
    details::status(
        Code::Unauthenticated,
        message,
        reason(ErrorReason::Unauthenticated),
    )
}

impl Access {
    /// No access control: every caller is anonymous and may do anything a
    /// session's secret allows.
    pub fn off() -> Access {
        Access {
            file: None,
            policy: RwLock::new(None),
            digests: DigestLimiter::default(),
        }
    }

    /// The policy in `file`, or none.
    pub fn load(file: Option<PathBuf>) -> anyhow::Result<Access> {
        let policy = match &file {
            Some(path) => Some(Arc::new(read_policy(path)?)),
            None => None,
        };
        Ok(Access {
            file,
            policy: RwLock::new(policy),
            digests: DigestLimiter::default(),
        })
    }

    /// What the policy in force defines; `None` when access control is off.
    pub fn summary(&self) -> Option<PolicySummary> {
        self.policy.read().as_ref().map(|policy| policy.summary())
    }

    /// Re-reads the policy file. Calls that start afterwards are judged by
    /// the new policy; on error the one in force stays.
    pub fn reload(&self) -> anyhow::Result<Option<PolicySummary>> {
        let Some(path) = &self.file else {
            return Ok(None);
        };
        let policy = read_policy(path)?;
        let summary = policy.summary();
        *self.policy.write() = Some(Arc::new(policy));
        Ok(Some(summary))
    }

    fn current(&self) -> Option<Arc<Policy>> {
        self.policy.read().clone()
    }

    /// Who made `request` (see [`Access::caller_of`]).
    pub fn caller<T>(&self, request: &Request<T>) -> Result<Caller, Status> {
        self.caller_of(request.metadata(), request.extensions().get::<ConnInfo>())
    }

    /// Who made a call with `metadata` on connection `info`. With access
    /// control on, in this order: the identity a forwarding member vouches
    /// for; a bearer token the policy lists; the client certificate's
    /// common name (or its first DNS name). A call with none of them is
    /// UNAUTHENTICATED, and so is a token the policy does not list.
    pub fn caller_of(&self, metadata: &MetadataMap, info: Option<&ConnInfo>) -> Result<Caller, Status> {
        let remote = info.and_then(|info| info.remote);
        let Some(policy) = self.current() else {
            return Ok(Caller {
                identity: None,
                source: Source::Anonymous,
                remote,
            });
        };
        let peer = info.and_then(|info| info.peer.as_deref());
        let refuse = |message: String| {
            tracing::warn!(target: AUDIT_TARGET, remote = %remote.map_or_else(|| "?".into(), |addr| addr.to_string()),
                outcome = "unauthenticated", "refused: {message}");
            unauthenticated(message)
        };
        if let Some(value) = metadata.get_bin(IDENTITY_HEADER) {
            // The peer guard admitted this header only from a member's
            // connection; checked again here so that this path never trusts
            // it on its own.
            if peer.is_none_or(|names| names.nodes().next().is_none()) {
                return Err(refuse(format!(
                    "metadata {IDENTITY_HEADER} is accepted only from cluster members over mutual TLS"
                )));
            }
            let bytes = value
                .to_bytes()
                .map_err(|_| refuse(format!("metadata {IDENTITY_HEADER} is not valid base64")))?;
            let identity = String::from_utf8(bytes.to_vec())
                .ok()
                .filter(|identity| !identity.is_empty() && identity.len() <= IDENTITY_BYTES_MAX)
                .ok_or_else(|| refuse(format!("metadata {IDENTITY_HEADER} is not a valid identity")))?;
            return Ok(Caller {
                identity: Some(identity),
                source: Source::Forwarded,
                remote,
            });
        }
        if let Some(value) = metadata.get(AUTHORIZATION_HEADER) {
            let token = value
                .to_str()
                .ok()
                .and_then(|text| {
                    let (scheme, token) = text.split_once(' ')?;
                    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
                })
                .filter(|token| !token.is_empty())
                .ok_or_else(|| refuse("metadata authorization must be `Bearer TOKEN`".into()))?;
            let identity = policy.identity_of_token(token).ok_or_else(|| {
                refuse("the bearer token is not one this node's access policy lists".into())
            })?;
            return Ok(Caller {
                identity: Some(identity.to_string()),
                source: Source::Token(value.clone()),
                remote,
            });
        }
        if let Some(names) = peer {
            if metadata.contains_key(FORWARDED_HEADER) {
                return Err(refuse(
                    "a forwarded call came without the caller's identity: every node needs --auth-policy"
                        .into(),
                ));
            }
            let identity = names
                .identity()
                .filter(|name| !name.is_empty())
                .map(str::to_string)
                .ok_or_else(|| {
                    refuse(format!(
                        "the client certificate {:?} has no common name or DNS name to serve as an identity",
                        names.subject
                    ))
                })?;
            if identity.len() > IDENTITY_BYTES_MAX {
                return Err(refuse(format!(
                    "the client certificate's name is {} bytes; an identity is at most {IDENTITY_BYTES_MAX}",
                    identity.len()
                )));
            }
            if node_of_name(&identity).is_some() {
                return Err(refuse(format!(
                    "{identity:?} is a member's certificate; members call the API only to forward a caller's call"
                )));
            }
            return Ok(Caller {
                identity: Some(identity),
                source: Source::Certificate,
                remote,
            });
        }
        Err(refuse(
            "no identity: this cluster requires a client certificate or a bearer token (metadata authorization: Bearer TOKEN)"
                .into(),
        ))
    }

    /// Whether `caller` may do `action`: always with access control off;
    /// otherwise as the policy says. A refusal is PERMISSION_DENIED naming
    /// the identity, the operation and the resource, and an audit line; an
    /// admin call let through is an audit line too.
    pub fn allow(&self, caller: &Caller, action: Action<'_>) -> Result<(), Status> {
        let Some(policy) = self.current() else {
            if let Action::Admin(what) = action {
                tracing::info!(target: AUDIT_TARGET, identity = caller.name(), remote = %caller.remote(),
                    op = action.op(), outcome = "allowed", "admin call: {what} (access control off)");
            }
            return Ok(());
        };
        let identity = caller.name();
        match policy.check(identity, &action) {
            Ok(()) => {
                if let Action::Admin(what) = action {
                    tracing::info!(target: AUDIT_TARGET, identity, remote = %caller.remote(),
                        op = action.op(), outcome = "allowed", "admin call: {what}");
                }
                Ok(())
            }
            Err(denied) => {
                tracing::warn!(target: AUDIT_TARGET, identity, remote = %caller.remote(), op = action.op(),
                    resource = %action.resource(), outcome = "denied", "refused: {denied}");
                Err(details::status(
                    Code::PermissionDenied,
                    denied.0,
                    pb::ErrorDetail {
                        identity: identity.to_string(),
                        ..reason(ErrorReason::AccessDenied)
                    },
                ))
            }
        }
    }
}
