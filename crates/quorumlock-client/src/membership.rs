//! Membership: `Cluster/ListMembers`, `AddMember`, `PromoteMember` and
//! `RemoveMember`, each sent to the leader (following the hints of nodes
//! that do not lead).

use std::future::Future;
use std::time::Duration;

use tokio::time::Instant;
use tonic::{Code, Response, Status};

use super::backoff::Backoff;
use super::connection::{request, retryable, Client};
use super::endpoints::{leader_hint, Rpc};
use super::error::{describe_status, ClientError, Refusal};
use quorumlock_proto::v1 as pb;
use quorumlock_proto::v1::cluster_client::ClusterClient;

/// How long one membership call may take: a change returns once its new
/// configuration is committed, which the server bounds at 30 s.
pub const MEMBERSHIP_CALL_MAX: Duration = Duration::from_secs(40);

impl Client {
    /// Every member with its role and how far it caught up, as the leader
    /// sees it.
    pub async fn list_members(&self) -> Result<pb::ListMembersResponse, ClientError> {
        self.on_leader(|mut client| async move {
            client
                .list_members(request(pb::ListMembersRequest {}, MEMBERSHIP_CALL_MAX))
                .await
        })
        .await
    }

    /// Adds node `id` at `addr` as a learner.
    pub async fn add_member(&self, id: u64, addr: &str) -> Result<pb::MembershipChangeResponse, ClientError> {
        let addr = addr.to_string();
        self.on_leader(move |mut client| {
            let body = pb::AddMemberRequest {
                id,
                addr: addr.clone(),
            };
            async move { client.add_member(request(body, MEMBERSHIP_CALL_MAX)).await }
        })
        .await
    }

    /// Makes the learner `id` a voter.
    pub async fn promote_member(&self, id: u64) -> Result<pb::MembershipChangeResponse, ClientError> {
        self.on_leader(move |mut client| async move {
            client
                .promote_member(request(pb::PromoteMemberRequest { id }, MEMBERSHIP_CALL_MAX))
                .await
        })
        .await
    }

    /// Removes member `id`.
    pub async fn remove_member(&self, id: u64) -> Result<pb::MembershipChangeResponse, ClientError> {
        self.on_leader(move |mut client| async move {
            client
                .remove_member(request(pb::RemoveMemberRequest { id }, MEMBERSHIP_CALL_MAX))
                .await
        })
        .await
    }

    /// Sends one call to the leader. A change is not retried once a leader
    /// answered it (FAILED_PRECONDITION and the like come back at once);
    /// only "not the leader" and unreachable nodes move on to another one.
    async fn on_leader<T, F, Fut>(&self, call: F) -> Result<T, ClientError>
    where
        F: Fn(ClusterClient<Rpc>) -> Fut,
        Fut: Future<Output = Result<Response<T>, Status>>,
    {
        let config = self.config();
        let started = Instant::now();
        let mut backoff = Backoff::new(config.backoff_initial, config.backoff_max);
        let mut removed = std::collections::BTreeSet::new();
        loop {
            let picked = self.pool().current();
            let client = ClusterClient::new(picked.channel.clone());
            let status = match tokio::time::timeout(MEMBERSHIP_CALL_MAX, call(client)).await {
                Ok(Ok(response)) => return Ok(response.into_inner()),
                Ok(Err(status)) if retryable(&status) && leader_hint(&status).is_some() => status,
                Ok(Err(status)) if matches!(Refusal::of(&status), Some(Refusal::NodeRemoved)) => {
                    // Another endpoint may still be a member; once every
                    // one says it was removed, there is nobody to ask.
                    removed.insert(picked.addr.clone());
                    if removed.len() >= self.pool().len() {
                        return Err(ClientError::from_status(&picked.addr, &status));
                    }
                    status
                }
                Ok(Err(status)) if status.code() == Code::Unavailable && Refusal::of(&status).is_none() => {
                    status
                }
                // Not proposed: between leaders (a paxos change of voters
                // always elects again), so ask again until one is known.
                Ok(Err(status)) if matches!(Refusal::of(&status), Some(Refusal::NotLeader { .. })) => status,
                Ok(Err(status)) => return Err(ClientError::from_status(&picked.addr, &status)),
                Err(_) => Status::deadline_exceeded(format!("no answer within {MEMBERSHIP_CALL_MAX:?}")),
            };
            self.pool().failed(&picked, leader_hint(&status));
            let pause = backoff.next_pause();
            if started.elapsed() + pause > config.retry_total_max || status.code() == Code::DeadlineExceeded {
                return Err(ClientError::Rpc {
                    endpoint: picked.addr,
                    code: status.code(),
                    message: describe_status(&status),
                    refusal: Refusal::of(&status),
                });
            }
            tokio::time::sleep(pause).await;
        }
    }
}
