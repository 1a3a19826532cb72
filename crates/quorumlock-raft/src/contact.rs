//! Whether a leader still hears a quorum, from the peers' own answers.
//!
//! openraft 0.9 has no check-quorum, and its `millis_since_quorum_ack`
//! counts only AppendEntries answered within one heartbeat interval
//! (follower fsync included): on a loaded machine answers come later than
//! that while every follower still follows, and the metric grows with the
//! load instead of with silence. [`Contacted`] wraps the peer transport so
//! that every AppendEntries and InstallSnapshot runs to its own, longer
//! deadline on a task of its own, even after openraft stopped waiting, and
//! records in [`QuorumContact`] the send time of the newest request each
//! peer answered without refusing the leader's vote. It also tells
//! [`LongerLogs`] which vote requests a longer log refused.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use openraft::error::{InstallSnapshotError, NetworkError, RPCError, RaftError};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::{BasicNode, Vote};
use parking_lot::Mutex;
use tokio::time::Instant;

use super::election::LongerLogs;
use super::types::TypeConfig;
use quorumlock_core::consensus::NodeId;

/// Calls to one peer that may run on their own at once. Beyond this (a
/// frozen peer, each heartbeat starting another call) a call runs only as
/// long as openraft waits for it, so requests kept alive for a silent peer
/// stay bounded in number and memory.
pub const DETACHED_CALLS_PER_PEER_MAX: usize = 4;

/// Per peer: the vote of the newest request it accepted, and when that
/// request was sent; and how many calls to it run on their own.
#[derive(Default)]
pub struct QuorumContact {
    heard: Mutex<HashMap<NodeId, (Vote<NodeId>, Instant)>>,
    detached: Mutex<HashMap<NodeId, usize>>,
}

/// One call to a peer running on its own; counted until dropped.
struct DetachedCall {
    contact: Arc<QuorumContact>,
    peer: NodeId,
}

impl Drop for DetachedCall {
    fn drop(&mut self) {
        if let Some(count) = self.contact.detached.lock().get_mut(&self.peer) {
            *count -= 1;
        }
    }
}

impl QuorumContact {
    /// Counts a call to `peer` that runs on its own, unless as many as
    /// [`DETACHED_CALLS_PER_PEER_MAX`] already do.
    fn detach(self: &Arc<Self>, peer: NodeId) -> Option<DetachedCall> {
        let mut detached = self.detached.lock();
        let count = detached.entry(peer).or_default();
        if *count >= DETACHED_CALLS_PER_PEER_MAX {
            return None;
        }
        *count += 1;
        Some(DetachedCall {
            contact: self.clone(),
            peer,
        })
    }

    /// `peer` accepted a request of `vote` sent at `sent`.
    fn heard(&self, peer: NodeId, vote: Vote<NodeId>, sent: Instant) {
        let mut heard = self.heard.lock();
        let entry = heard.entry(peer).or_insert((vote, sent));
        // A late answer to an older leadership's request tells nothing.
        let newer = match vote.partial_cmp(&entry.0) {
            Some(std::cmp::Ordering::Greater) => true,
            Some(std::cmp::Ordering::Equal) => sent > entry.1,
            _ => false,
        };
        if newer {
            *entry = (vote, sent);
        }
    }

    /// How long the leader `me` of `vote`, leading since `leading_since`,
    /// has not heard a quorum of every configuration in `configs` (both of
    /// a joint one) at `now`: the time since the newest send that a
    /// majority of each configuration answered, the leader counting itself.
    /// A leader counts from the start of its leadership until a quorum
    /// first answers it.
    pub fn silent_for(
        &self,
        me: NodeId,
        vote: &Vote<NodeId>,
        configs: &[BTreeSet<NodeId>],
        leading_since: Instant,
        now: Instant,
    ) -> Duration {
        let heard = self.heard.lock();
        let mut quorum_heard = now;
        for config in configs {
            let mut acks: Vec<Instant> = config
                .iter()
                .filter_map(|voter| {
                    if *voter == me {
                        return Some(now);
                    }
                    heard
                        .get(voter)
                        .and_then(|(heard_vote, sent)| (heard_vote == vote).then_some(*sent))
                })
                .collect();
            acks.sort_unstable_by(|a, b| b.cmp(a));
            let majority = config.len() / 2 + 1;
            // Fewer answers than a majority: never heard in this vote.
            let newest_majority = acks.get(majority - 1).copied().unwrap_or(leading_since);
            quorum_heard = quorum_heard.min(newest_majority);
        }
        now.saturating_duration_since(quorum_heard.max(leading_since))
    }
}

/// A peer transport whose AppendEntries and InstallSnapshot answers are
/// told to a [`QuorumContact`], also when they come after openraft gave up.
pub struct Contacted<N> {
    inner: N,
    contact: Arc<QuorumContact>,
    longer_logs: Arc<LongerLogs>,
    /// How long a request may run after openraft stopped waiting for it:
    /// an answer older than this tells nothing the check needs.
    late_ttl: Duration,
}

impl<N> Contacted<N> {
    /// Wraps `inner`, telling answers to `contact` and letting each request
    /// run for `late_ttl` at most (openraft's own TTL if that is longer);
    /// votes refused by a longer log are told to `longer_logs`.
    pub fn new(
        inner: N,
        contact: Arc<QuorumContact>,
        longer_logs: Arc<LongerLogs>,
        late_ttl: Duration,
    ) -> Contacted<N> {
        Contacted {
            inner,
            contact,
            longer_logs,
            late_ttl,
        }
    }
}

impl<N> RaftNetworkFactory<TypeConfig> for Contacted<N>
where
    N: RaftNetworkFactory<TypeConfig>,
    N::Network: Clone,
{
    type Network = ContactedConnection<N::Network>;

    async fn new_client(&mut self, target: NodeId, node: &BasicNode) -> Self::Network {
        ContactedConnection {
            inner: self.inner.new_client(target, node).await,
            target,
            contact: self.contact.clone(),
            longer_logs: self.longer_logs.clone(),
            late_ttl: self.late_ttl,
        }
    }
}

/// A connection to one peer that tells its answers to the contact.
pub struct ContactedConnection<C> {
    inner: C,
    target: NodeId,
    contact: Arc<QuorumContact>,
    longer_logs: Arc<LongerLogs>,
    late_ttl: Duration,
}

type RpcResult<T, E = openraft::error::Infallible> =
    Result<T, RPCError<NodeId, BasicNode, RaftError<NodeId, E>>>;

impl<C: RaftNetwork<TypeConfig> + Clone> ContactedConnection<C> {
    /// Runs `call` on a task of its own for the longer TTL, records an
    /// answer that `accepted` the request's `vote`, and hands openraft the
    /// result if it comes within openraft's `ttl`.
    async fn detached<T, E, A, F, Fut>(
        &self,
        vote: Vote<NodeId>,
        ttl: Duration,
        accepted: A,
        call: F,
    ) -> RpcResult<T, E>
    where
        T: Send + 'static,
        A: FnOnce(&T) -> bool + Send + 'static,
        E: std::error::Error + Send + 'static,
        F: FnOnce(C, RPCOption) -> Fut,
        Fut: std::future::Future<Output = RpcResult<T, E>> + Send + 'static,
    {
        let sent = Instant::now();
        let (contact, target) = (self.contact.clone(), self.target);
        let Some(detached) = contact.detach(target) else {
            let result = call(self.inner.clone(), RPCOption::new(ttl)).await;
            if result.as_ref().is_ok_and(accepted) {
                contact.heard(target, vote, sent);
            }
            return result;
        };
        let request = call(self.inner.clone(), RPCOption::new(self.late_ttl.max(ttl)));
        let (answer_tx, answer) = tokio::sync::oneshot::channel();
        tokio::spawn(async move {
            let _detached = detached;
            let result = request.await;
            if result.as_ref().is_ok_and(accepted) {
                contact.heard(target, vote, sent);
            }
            // openraft may have stopped waiting; the answer is then dropped.
            let _ = answer_tx.send(result);
        });
        match tokio::time::timeout(ttl, answer).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(network_error(
                std::io::ErrorKind::Interrupted,
                "the peer call's task ended",
            )),
            Err(_) => Err(network_error(
                std::io::ErrorKind::TimedOut,
                &format!("peer RPC timed out after {ttl:?}"),
            )),
        }
    }
}

fn network_error<E: std::error::Error>(
    kind: std::io::ErrorKind,
    what: &str,
) -> RPCError<NodeId, BasicNode, E> {
    RPCError::Network(NetworkError::new(&std::io::Error::new(kind, what.to_string())))
}

impl<C> RaftNetwork<TypeConfig> for ContactedConnection<C>
where
    C: RaftNetwork<TypeConfig> + Clone,
{
    async fn append_entries(
        &mut self,
        request: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<AppendEntriesResponse<NodeId>> {
        let vote = request.vote;
        let accepted = |response: &AppendEntriesResponse<NodeId>| {
            !matches!(response, AppendEntriesResponse::HigherVote(_))
        };
        self.detached(
            vote,
            option.hard_ttl(),
            accepted,
            |mut inner, option| async move { inner.append_entries(request, option).await },
        )
        .await
    }

    async fn install_snapshot(
        &mut self,
        request: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<InstallSnapshotResponse<NodeId>, InstallSnapshotError> {
        let vote = request.vote;
        // The follower answers with its vote: a higher one refuses.
        let accepted = move |response: &InstallSnapshotResponse<NodeId>| {
            matches!(
                response.vote.partial_cmp(&vote),
                Some(std::cmp::Ordering::Less | std::cmp::Ordering::Equal)
            )
        };
        self.detached(
            vote,
            option.hard_ttl(),
            accepted,
            |mut inner, option| async move { inner.install_snapshot(request, option).await },
        )
        .await
    }

    async fn vote(
        &mut self,
        request: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> RpcResult<VoteResponse<NodeId>> {
        let mine = request.last_log_id;
        let result = self.inner.vote(request, option).await;
        if let Ok(answer) = &result {
            if !answer.vote_granted {
                self.longer_logs
                    .refused(mine.as_ref(), answer.last_log_id.as_ref());
            }
        }
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u64) -> NodeId {
        NodeId::new(n)
    }

    fn config(ids: &[u64]) -> BTreeSet<NodeId> {
        ids.iter().copied().map(id).collect()
    }

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn a_leader_is_silent_for_the_time_since_a_majority_last_answered() {
        let contact = QuorumContact::default();
        let vote = Vote::new_committed(3, id(1));
        let start = Instant::now();
        contact.heard(id(2), vote, start + 100 * MS);
        contact.heard(id(3), vote, start + 40 * MS);
        let now = start + 500 * MS;
        let configs = [config(&[1, 2, 3, 4, 5])];
        // The leader, node 2 at 100 ms and node 3 at 40 ms make three of five.
        assert_eq!(contact.silent_for(id(1), &vote, &configs, start, now), 460 * MS);
        contact.heard(id(4), vote, start + 450 * MS);
        assert_eq!(contact.silent_for(id(1), &vote, &configs, start, now), 400 * MS);
    }

    #[test]
    fn a_leader_no_majority_answered_counts_from_the_start_of_its_leadership() {
        let contact = QuorumContact::default();
        let vote = Vote::new_committed(3, id(1));
        let start = Instant::now();
        contact.heard(id(2), vote, start + 100 * MS);
        let configs = [config(&[1, 2, 3, 4, 5])];
        let since = start + 50 * MS;
        assert_eq!(
            contact.silent_for(id(1), &vote, &configs, since, start + 800 * MS),
            750 * MS
        );
    }

    #[test]
    fn answers_to_an_older_leadership_do_not_count_for_the_current_one() {
        let contact = QuorumContact::default();
        let old = Vote::new_committed(2, id(1));
        let current = Vote::new_committed(4, id(1));
        let start = Instant::now();
        contact.heard(id(2), current, start + 10 * MS);
        // A late answer to the old leadership's request, sent later.
        contact.heard(id(2), old, start + 20 * MS);
        contact.heard(id(3), old, start + 30 * MS);
        let configs = [config(&[1, 2, 3])];
        let now = start + 100 * MS;
        assert_eq!(contact.silent_for(id(1), &current, &configs, start, now), 90 * MS);
        // An answer sent earlier than the one on record does not replace it.
        contact.heard(id(2), current, start + 5 * MS);
        assert_eq!(contact.silent_for(id(1), &current, &configs, start, now), 90 * MS);
    }

    #[test]
    fn a_joint_configuration_needs_a_majority_of_each_half() {
        let contact = QuorumContact::default();
        let vote = Vote::new_committed(1, id(1));
        let start = Instant::now();
        contact.heard(id(2), vote, start + 90 * MS);
        contact.heard(id(4), vote, start + 20 * MS);
        let now = start + 100 * MS;
        let configs = [config(&[1, 2, 3]), config(&[2, 4, 5])];
        // Old half: the leader and node 2 (90 ms); new half: 2 and 4 (20 ms).
        assert_eq!(contact.silent_for(id(1), &vote, &configs, start, now), 80 * MS);
        let single = [config(&[1, 2, 3])];
        assert_eq!(contact.silent_for(id(1), &vote, &single, start, now), 10 * MS);
    }

    #[test]
    fn calls_to_one_peer_run_on_their_own_up_to_the_bound() {
        let contact = Arc::new(QuorumContact::default());
        let running: Vec<DetachedCall> = (0..DETACHED_CALLS_PER_PEER_MAX)
            .map(|_| contact.detach(id(2)).expect("below the bound"))
            .collect();
        assert!(contact.detach(id(2)).is_none(), "the bound is per peer and holds");
        let other = contact.detach(id(3));
        assert!(other.is_some(), "another peer has a bound of its own");
        drop(running);
        assert!(contact.detach(id(2)).is_some(), "ended calls make room");
    }

    #[test]
    fn a_single_voter_leader_is_never_silent() {
        let contact = QuorumContact::default();
        let vote = Vote::new_committed(1, id(1));
        let start = Instant::now();
        let configs = [config(&[1])];
        assert_eq!(
            contact.silent_for(id(1), &vote, &configs, start, start + 10_000 * MS),
            Duration::ZERO
        );
    }
}
