//! Keeps the member-only parts of a node to members: the peer protocols,
//! the mark a follower sets on a call it forwards, and the caller identity
//! it vouches for.
//!
//! Over TLS every connection carries a verified client certificate; a
//! connection counts as a member's only if that certificate names
//! ([`quorumlock_tls::node_name`]) a voter or learner of the configuration
//! this node currently knows, and never an id a membership change retired.
//! The guard follows the engine's [`KnownMembership`], so a member added
//! by `member add` is admitted from the moment this node knows the
//! configuration that adds it, and a removed one is refused from the moment
//! it knows the one that removes it. A client certificate, however valid,
//! can then neither speak Raft or Paxos to a node nor pass a call off as
//! forwarded, nor claim an identity. A plaintext node has no identities to
//! check: it accepts the peer protocols and the forwarded mark from anyone
//! who can reach it (it is meant for loopback and trusted networks only, and
//! `serve` warns otherwise), and refuses every claimed identity, which only
//! a member proven over mutual TLS may make.
//!
//! A node started with `--join` knows no configuration until the leader
//! that adds it first reaches it. Connections run from the leader to the
//! learner, so the learner's guard judges the leader's certificate, with no
//! configuration to judge it by. Until it knows one, the node admits any
//! node certificate (signed by the cluster's CA, naming
//! `quorumlock-node-<id>`) to the peer protocol, and still refuses every
//! forwarded mark and claimed identity. Why that is safe:
//!
//! - Client certificates stay refused. Raft and Paxos tolerate crashes, not
//!   lies: members already believe whatever a holder of a member's node
//!   certificate sends, so the guard's task is to keep out whoever is not a
//!   node, or not a member (any more). During the window the only holders
//!   it cannot tell apart are those of node certificates for ids that are
//!   not members: ids never issued, which nobody holds, and retired ids.
//! - The joining node has an empty store, serves no API and has no vote:
//!   there is nothing to read from it, and it decides nothing. What a
//!   holder could do through the window is lie to it, which a member's
//!   certificate allows at any time anyway; and the node becomes a voter
//!   only by `member promote`, once the leader sees it caught up with the
//!   leader's own log.
//! - A retired node does not address a node it never knew: a removed Raft
//!   node stops its core, and a removed Paxos node only answers members of
//!   the configuration it ended. A retired node's certificate in hostile
//!   hands is a compromised key, dealt with by issuing a new CA.
//! - The window closes with the first configuration the node learns, which
//!   carries the cluster's retired ids: from then on only that
//!   configuration's members, less its retired ids, get in.
//!
//! Admitting only the nodes behind the `--join` addresses would be no
//! tighter: an address names no node id (the guard judges certificates, and
//! many nodes may share a host), and the leader that adds the node need not
//! be among those addresses, since leadership moves.

use std::sync::Arc;
use std::task::{Context, Poll};

use futures::future::{Either, Ready};
use tokio::sync::watch;
use tonic::body::BoxBody;
use tonic::metadata::MetadataValue;
use tonic::Status;

use quorumlock_core::consensus::incarnation::{
    sender_of, Incarnations, Refusal, INCARNATION_HEADER, INCARNATION_OF_METADATA,
};
use quorumlock_core::consensus::{KnownMembership, NodeId, RETIRED_METADATA};
use quorumlock_proto::headers::{FORWARDED_HEADER, IDENTITY_HEADER};
use quorumlock_tls::ConnInfo;

/// The gRPC path prefixes of the peer protocols.
pub const PEER_PATHS: [&str; 2] = ["/quorumlock.raft.v1.RaftPeer/", "/quorumlock.paxos.v1.PaxosPeer/"];

/// Who may use the member-only parts.
#[derive(Debug, Clone)]
pub struct PeerPolicy {
    /// Whether connections are TLS with verified client certificates.
    pub tls: bool,
    /// The membership this node knows, as the engine publishes it. Each
    /// member-only request reads the value in place (an uncontended read
    /// lock: the engine writes only when the membership changes), and
    /// never asks the engine itself.
    pub membership: watch::Receiver<KnownMembership>,
    /// This node's incarnation and its peers' (see
    /// [`quorumlock_core::consensus::incarnation`]): a peer request acts
    /// only when both match. `None` checks none (tests of the rest).
    pub incarnations: Option<Arc<Incarnations>>,
    /// Senders already reported as having lost their state, so that a
    /// node refused on every message is logged once.
    pub reported: Arc<parking_lot::Mutex<std::collections::BTreeSet<(NodeId, u64)>>>,
}

/// What a member-only request asks for.
#[derive(Clone, Copy, PartialEq, Eq)]
enum MemberOnly {
    PeerProtocol,
    Identity,
    Forwarded,
}

impl MemberOnly {
    fn describe(self) -> &'static str {
        match self {
            MemberOnly::PeerProtocol => "the peer protocol",
            MemberOnly::Identity => {
                "a caller identity asserted by a member (metadata x-quorumlock-identity-bin)"
            }
            MemberOnly::Forwarded => "a forwarded call (metadata x-quorumlock-forwarded)",
        }
    }
}

impl PeerPolicy {
    /// Why a request for `path` with `headers` on connection `info` is
    /// refused, or `None` when it may go on.
    pub fn refusal(&self, path: &str, headers: &http::HeaderMap, info: Option<&ConnInfo>) -> Option<Status> {
        self.membership_refusal(path, headers, info)
            .or_else(|| self.incarnation_refusal(path, headers, info))
    }

    /// Judges the incarnations a peer request names (see
    /// [`quorumlock_core::consensus::incarnation`]). Over TLS the sender
    /// it names must be the node its certificate names, before anything
    /// about it is recorded.
    fn incarnation_refusal(
        &self,
        path: &str,
        headers: &http::HeaderMap,
        info: Option<&ConnInfo>,
    ) -> Option<Status> {
        let incarnations = self.incarnations.as_ref()?;
        if !PEER_PATHS.iter().any(|prefix| path.starts_with(prefix)) {
            return None;
        }
        let header = headers
            .get(INCARNATION_HEADER)
            .and_then(|value| value.to_str().ok());
        if self.tls {
            let named: Vec<u64> = info
                .and_then(|info| info.peer.as_deref())
                .map(|names| names.nodes().collect())
                .unwrap_or_default();
            if let Some(sender) = header.and_then(sender_of) {
                if !named.contains(&sender.get()) {
                    return Some(Status::permission_denied(format!(
                        "{path}: {INCARNATION_HEADER} names node {sender}, and the connection's certificate names {}",
                        list(&named.into_iter().map(NodeId::new).collect::<Vec<_>>())
                    )));
                }
            }
        }
        let refusal = incarnations.judge(header).err()?;
        let message = format!("{path}: refused: {refusal}");
        let mut status = match &refusal {
            Refusal::Malformed(_) => Status::invalid_argument(message),
            Refusal::Unrecorded { .. } => Status::unavailable(message),
            _ => Status::failed_precondition(message),
        };
        match refusal {
            Refusal::Unintroduced { .. } => {
                if let Ok(value) = incarnations.introduction().parse() {
                    status.metadata_mut().insert(INCARNATION_OF_METADATA, value);
                }
            }
            Refusal::SenderForgot { from, claimed, .. } if self.reported.lock().insert((from, claimed)) => {
                tracing::error!(%from, "{refusal}");
            }
            Refusal::ReceiverForgot { .. } => tracing::error!("{refusal}"),
            _ => {}
        }
        Some(status)
    }

    fn membership_refusal(
        &self,
        path: &str,
        headers: &http::HeaderMap,
        info: Option<&ConnInfo>,
    ) -> Option<Status> {
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
        let asked = if PEER_PATHS.iter().any(|prefix| path.starts_with(prefix)) {
            MemberOnly::PeerProtocol
        } else if claims_identity {
            MemberOnly::Identity
        } else if headers.contains_key(FORWARDED_HEADER) {
            MemberOnly::Forwarded
        } else {
            return None;
        };
        let peer = info.and_then(|info| info.peer.as_deref());
        let named: Vec<NodeId> = peer
            .map(|names| names.nodes().map(NodeId::new).collect())
            .unwrap_or_default();
        let (why, retired) = {
            let membership = self.membership.borrow();
            if named.iter().any(|id| membership.admits(*id)) {
                return None;
            }
            // See the module's comment: before it knows a configuration a
            // joining node lets any node certificate speak the peer protocol.
            if !membership.configured && asked == MemberOnly::PeerProtocol && !named.is_empty() {
                return None;
            }
            let retired = named.iter().copied().find(|id| membership.retired.contains(id));
            let why = match (retired, named.as_slice(), membership.configured) {
                (Some(id), _, _) => format!(
                    "node {id} was removed from this cluster by a membership change and its id is retired"
                ),
                (None, [], _) => {
                    "a member's certificate carries the DNS name quorumlock-node-<id>, and this one carries none"
                        .to_string()
                }
                (None, _, false) => "this node is joining and knows no configuration yet, so no member can \
                                     vouch for a call to it"
                    .to_string(),
                (None, named, true) => format!(
                    "it names node {}, which is not a member of the configuration this node knows (members {})",
                    list(named),
                    list(&membership.members.iter().copied().collect::<Vec<_>>())
                ),
            };
            (why, retired)
        };
        let who = match peer {
            Some(names) => format!("certificate {:?}", names.subject),
            None => "a connection without a client certificate".to_string(),
        };
        let what = asked.describe();
        let remote = remote();
        tracing::warn!(target: "quorumlock::audit", %remote, %who, path, "refused: {what} is for cluster members only: {why}");
        let mut status = Status::permission_denied(format!(
            "{path}: {what} is for cluster members only; {who} is refused: {why}"
        ));
        if let Some(id) = retired {
            // A removed node that still runs learns of its removal from
            // this, as from the engines' own refusals.
            status
                .metadata_mut()
                .insert(RETIRED_METADATA, MetadataValue::from(id.get()));
        }
        Some(status)
    }
}

/// Node ids as `1, 2, 4`, or `none`.
fn list(ids: &[NodeId]) -> String {
    match ids {
        [] => "none".to_string(),
        ids => ids.iter().map(ToString::to_string).collect::<Vec<_>>().join(", "),
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

    fn known(members: &[u64], retired: &[u64]) -> KnownMembership {
        KnownMembership {
            members: members.iter().copied().map(NodeId::new).collect(),
            retired: retired.iter().copied().map(NodeId::new).collect(),
            configured: !members.is_empty(),
        }
    }

    fn policy() -> PeerPolicy {
        PeerPolicy {
            tls: true,
            membership: watch::channel(known(&[1, 2, 3], &[])).1,
            incarnations: None,
            reported: Arc::default(),
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
    fn peer_requests_act_only_when_both_incarnations_match_and_the_certificate_names_the_sender() {
        let receiver = Arc::new(Incarnations::in_memory(NodeId::new(1), 0xa1));
        let sender = Incarnations::in_memory(NodeId::new(2), 0xb2);
        let policy = PeerPolicy {
            incarnations: Some(receiver.clone()),
            ..policy()
        };
        let vote = "/quorumlock.raft.v1.RaftPeer/Vote";
        let member = names(&["quorumlock-node-2"]);
        let headers = |value: String| {
            let mut headers = http::HeaderMap::new();
            headers.insert(INCARNATION_HEADER, value.parse().unwrap());
            headers
        };
        let missing = policy
            .refusal(vote, &http::HeaderMap::new(), Some(&member))
            .unwrap();
        assert_eq!(missing.code(), tonic::Code::InvalidArgument);
        let unintroduced = policy
            .refusal(vote, &headers(sender.header_to(NodeId::new(1))), Some(&member))
            .unwrap();
        assert_eq!(unintroduced.code(), tonic::Code::FailedPrecondition);
        let introduction = unintroduced.metadata().get(INCARNATION_OF_METADATA).unwrap();
        assert!(sender
            .learn(NodeId::new(1), introduction.to_str().unwrap())
            .unwrap());
        assert!(policy
            .refusal(vote, &headers(sender.header_to(NodeId::new(1))), Some(&member))
            .is_none());
        let impostor = policy
            .refusal(
                vote,
                &headers(sender.header_to(NodeId::new(1))),
                Some(&names(&["quorumlock-node-3"])),
            )
            .unwrap();
        assert!(
            impostor.message().contains("names node 2"),
            "{}",
            impostor.message()
        );
        let amnesiac = Incarnations::in_memory(NodeId::new(2), 0xc3);
        let forgot = policy
            .refusal(vote, &headers(amnesiac.header_to(NodeId::new(1))), Some(&member))
            .unwrap();
        assert_eq!(forgot.code(), tonic::Code::FailedPrecondition);
        assert!(
            forgot.message().contains("emptied or replaced"),
            "{}",
            forgot.message()
        );
        let api = "/quorumlock.v1.Lock/Acquire";
        assert!(
            policy.refusal(api, &http::HeaderMap::new(), None).is_none(),
            "the API needs none"
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

    #[test]
    fn the_guard_follows_the_membership_as_it_changes() {
        let (engine, membership) = watch::channel(known(&[1, 2, 3], &[]));
        let policy = PeerPolicy {
            tls: true,
            membership,
            ..policy()
        };
        let vote = "/quorumlock.raft.v1.RaftPeer/Vote";
        let plain = http::HeaderMap::new();
        let (node3, node4) = (names(&["quorumlock-node-3"]), names(&["quorumlock-node-4"]));
        let refused = policy
            .refusal(vote, &plain, Some(&node4))
            .expect("not a member yet");
        assert!(
            refused.message().contains("node 4, which is not a member")
                && refused.message().contains("members 1, 2, 3"),
            "{}",
            refused.message()
        );

        // `member add --id 4`: a learner is a member.
        engine.send_replace(known(&[1, 2, 3, 4], &[]));
        assert!(policy.refusal(vote, &plain, Some(&node4)).is_none());

        // `member remove --id 3`: retired, refused with the marker that
        // tells a removed node it was removed.
        engine.send_replace(known(&[1, 2, 4], &[3]));
        let refused = policy.refusal(vote, &plain, Some(&node3)).expect("a retired id");
        assert_eq!(refused.code(), tonic::Code::PermissionDenied);
        assert!(refused.message().contains("removed"), "{}", refused.message());
        assert_eq!(
            refused
                .metadata()
                .get(RETIRED_METADATA)
                .map(|value| value.to_str().unwrap()),
            Some("3")
        );
        assert!(policy.refusal(vote, &plain, Some(&node4)).is_none());
    }

    #[test]
    fn a_retired_id_is_refused_even_where_a_configuration_still_names_it() {
        let policy = PeerPolicy {
            tls: true,
            membership: watch::channel(known(&[1, 2, 3], &[3])).1,
            ..policy()
        };
        let refused = policy
            .refusal(
                "/quorumlock.paxos.v1.PaxosPeer/Deliver",
                &http::HeaderMap::new(),
                Some(&names(&["quorumlock-node-3"])),
            )
            .expect("a retired id");
        assert!(refused.metadata().get(RETIRED_METADATA).is_some());
    }

    #[test]
    fn a_joining_node_admits_node_certificates_to_the_peer_protocol_only() {
        let policy = PeerPolicy {
            tls: true,
            membership: watch::channel(KnownMembership::default()).1,
            ..policy()
        };
        let plain = http::HeaderMap::new();
        let forwarded = {
            let mut headers = http::HeaderMap::new();
            headers.insert(FORWARDED_HEADER, "1".parse().unwrap());
            headers
        };
        let mut claim = http::HeaderMap::new();
        claim.insert(IDENTITY_HEADER, "YWRtaW4".parse().unwrap());
        let leader = names(&["quorumlock-node-1"]);
        for path in [
            "/quorumlock.raft.v1.RaftPeer/AppendEntries",
            "/quorumlock.paxos.v1.PaxosPeer/Deliver",
        ] {
            assert!(policy.refusal(path, &plain, Some(&leader)).is_none());
            assert!(
                policy.refusal(path, &plain, Some(&names(&[]))).is_some(),
                "a client"
            );
            assert!(policy.refusal(path, &plain, None).is_some());
        }
        let api = "/quorumlock.v1.Lock/Acquire";
        let refused = policy
            .refusal(api, &forwarded, Some(&leader))
            .expect("no member vouches yet");
        assert!(refused.message().contains("joining"), "{}", refused.message());
        assert!(policy.refusal(api, &claim, Some(&leader)).is_some());
    }
}
