//! Keeps the member-only parts of a node to members: the peer protocols,
//! the mark a follower sets on a call it forwards, and the caller identity
//! it vouches for.
//!
//! Over TLS every connection carries a verified client certificate; a
//! connection counts as a member's only if that certificate names a member
//! ([`quorumlock_tls::node_name`]). A client certificate, however valid,
//! can then neither speak Raft or Paxos to a node nor pass a call off as
//! forwarded, nor claim an identity. A plaintext node has no identities to
//! check: it accepts the peer protocols and the forwarded mark from anyone
//! who can reach it (it is meant for loopback and trusted networks only, and
//! `serve` warns otherwise), and refuses every claimed identity, which only
//! a member proven over mutual TLS may make.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures::future::{Either, Ready};
use tonic::body::BoxBody;
use tonic::Status;

use quorumlock_proto::headers::{FORWARDED_HEADER, IDENTITY_HEADER};
use quorumlock_tls::ConnInfo;

/// The gRPC path prefixes of the peer protocols.
pub const PEER_PATHS: [&str; 2] = ["/quorumlock.raft.v1.RaftPeer/", "/quorumlock.paxos.v1.PaxosPeer/"];

/// Who may use the member-only parts.
#[derive(Debug, Clone)]
pub struct PeerPolicy {
    /// Whether connections are TLS with verified client certificates.
    pub tls: bool,
    /// The ids of the cluster's members.
    pub members: BTreeSet<u64>,
}

impl PeerPolicy {
    /// Why a request for `path` with `headers` on connection `info` is
    /// refused, or `None` when it may go on.
    pub fn refusal(&self, path: &str, headers: &http::HeaderMap, info: Option<&ConnInfo>) -> Option<Status> {
        let claims_identity = headers.contains_key(IDENTITY_HEADER);
        let remote = || {
            info.and_then(|info| info.remote)
                .map(|addr| addr.to_string())
                .unwrap_or_else(|| "?".into())
        };
        if !self.tls {
            return claims_identity.then(|| {
                let remote = remote();
                tracing::warn!(target: "quorumlock::audit", %remote, path, "refused: a claimed identity on a plaintext node");
                Status::permission_denied(format!(
                    "{path}: metadata {IDENTITY_HEADER} is accepted only from cluster members over mutual TLS; \
                     this node serves plaintext, so nobody can assert an identity to it"
                ))
            });
        }
        let what = if PEER_PATHS.iter().any(|prefix| path.starts_with(prefix)) {
            "the peer protocol"
        } else if claims_identity {
            "a caller identity asserted by a member (metadata x-quorumlock-identity-bin)"
        } else if headers.contains_key(FORWARDED_HEADER) {
            "a forwarded call (metadata x-quorumlock-forwarded)"
        } else {
            return None;
        };
        let peer = info.and_then(|info| info.peer.as_deref());
        if peer.is_some_and(|names| names.nodes().any(|id| self.members.contains(&id))) {
            return None;
        }
        let who = match peer {
            Some(names) => format!("certificate {:?}", names.subject),
            None => "a connection without a client certificate".to_string(),
        };
        let remote = remote();
        tracing::warn!(target: "quorumlock::audit", %remote, %who, path, "refused: {what} is for cluster members only");
        Some(Status::permission_denied(format!(
            "{path}: {what} is for cluster members only; {who} names no member (a member's certificate carries the DNS name quorumlock-node-<id>)"
        )))
    }
}

/// The tower layer applying a [`PeerPolicy`] to every request.
#[derive(Clone)]
pub struct PeerGuardLayer {
    policy: Arc<PeerPolicy>,
}

impl PeerGuardLayer {
    /// A layer enforcing `policy`.
    pub fn new(policy: PeerPolicy) -> PeerGuardLayer {
        PeerGuardLayer {
            policy: Arc::new(policy),
        }
    }
}

impl<S> tower_layer::Layer<S> for PeerGuardLayer {
    type Service = PeerGuard<S>;

    fn layer(&self, inner: S) -> PeerGuard<S> {
        PeerGuard {
            inner,
            policy: self.policy.clone(),
        }
    }
}

/// A service that refuses member-only requests from non-members.
#[derive(Clone)]
pub struct PeerGuard<S> {
    inner: S,
    policy: Arc<PeerPolicy>,
}

impl<S, B> tower_service::Service<http::Request<B>> for PeerGuard<S>
where
    S: tower_service::Service<http::Request<B>, Response = http::Response<BoxBody>>,
{
    type Response = http::Response<BoxBody>;
    type Error = S::Error;
    type Future = Either<Ready<Result<Self::Response, S::Error>>, S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let info = request.extensions().get::<ConnInfo>();
        match self.policy.refusal(request.uri().path(), request.headers(), info) {
            Some(status) => Either::Left(futures::future::ready(Ok(status.into_http()))),
            None => Either::Right(self.inner.call(request)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> PeerPolicy {
        PeerPolicy {
            tls: true,
            members: [1, 2, 3].into(),
        }
    }

    fn names(dns: &[&str]) -> ConnInfo {
        ConnInfo {
            remote: None,
            peer: Some(Arc::new(quorumlock_tls::CertNames {
                subject: "CN=x".into(),
                common_name: Some("x".into()),
                dns_names: dns.iter().map(|name| name.to_string()).collect(),
                ip_addresses: Vec::new(),
                serial: "01".into(),
                not_after: "never".into(),
            })),
        }
    }

    #[test]
    fn peer_paths_and_forwarded_marks_need_a_members_certificate() {
        let forwarded = {
            let mut headers = http::HeaderMap::new();
            headers.insert(FORWARDED_HEADER, "1".parse().unwrap());
            headers
        };
        let plain = http::HeaderMap::new();
        let raft = "/quorumlock.raft.v1.RaftPeer/Vote";
        let paxos = "/quorumlock.paxos.v1.PaxosPeer/Deliver";
        let api = "/quorumlock.v1.Lock/Acquire";
        let member = names(&["quorumlock-node-2"]);
        let outsider = names(&["quorumlock-node-9"]);
        let client = names(&[]);
        let policy = policy();
        for path in [raft, paxos] {
            assert!(policy.refusal(path, &plain, Some(&member)).is_none());
            assert!(policy.refusal(path, &plain, Some(&client)).is_some());
            assert!(
                policy.refusal(path, &plain, Some(&outsider)).is_some(),
                "a non-member node"
            );
            assert!(policy.refusal(path, &plain, None).is_some());
        }
        assert!(policy.refusal(api, &forwarded, Some(&member)).is_none());
        let refused = policy.refusal(api, &forwarded, Some(&client)).unwrap();
        assert_eq!(refused.code(), tonic::Code::PermissionDenied);
        assert!(refused.message().contains("forwarded"), "{}", refused.message());
        assert!(
            policy.refusal(api, &plain, Some(&client)).is_none(),
            "clients use the API"
        );
    }

    #[test]
    fn a_plaintext_node_checks_no_member_but_refuses_every_claimed_identity() {
        let policy = PeerPolicy {
            tls: false,
            ..policy()
        };
        assert!(policy
            .refusal("/quorumlock.raft.v1.RaftPeer/Vote", &http::HeaderMap::new(), None)
            .is_none());
        let mut claim = http::HeaderMap::new();
        claim.insert(IDENTITY_HEADER, "YWRtaW4".parse().unwrap());
        let refused = policy
            .refusal("/quorumlock.v1.Lock/Acquire", &claim, None)
            .expect("a plaintext node refuses a claimed identity");
        assert_eq!(refused.code(), tonic::Code::PermissionDenied);
    }

    #[test]
    fn only_a_member_may_claim_a_callers_identity() {
        let mut claim = http::HeaderMap::new();
        claim.insert(IDENTITY_HEADER, "YWRtaW4".parse().unwrap());
        let policy = policy();
        let api = "/quorumlock.v1.Lock/Acquire";
        assert!(policy
            .refusal(api, &claim, Some(&names(&["quorumlock-node-3"])))
            .is_none());
        let refused = policy.refusal(api, &claim, Some(&names(&[]))).unwrap();
        assert!(refused.message().contains("identity"), "{}", refused.message());
        assert!(policy.refusal(api, &claim, None).is_some());
    }
}
