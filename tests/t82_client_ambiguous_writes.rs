//! A fenced write whose first attempt may have taken effect, and whose
//! repeat is refused for a stale token, reports an unknown outcome rather
//! than a refusal.
//!
//! The chaos runner found this: a `Put` reached a leader that was frozen
//! right after replicating it; the write was committed by the next leader,
//! the writer's session expired meanwhile, and the client's repeat of the
//! `Put` was refused with `FAILED_PRECONDITION`, which the client reported
//! as "refused" although the value was stored. A scripted server plays the
//! same answers here: `UNAVAILABLE` with no leader named (the attempt may
//! have been applied), then `FAILED_PRECONDITION`.

use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::Stream;
use quorumlock_client::{
    Client, ClientConfig, ClientError, Fence, FencingToken, SessionId, SessionKey, SessionSecret,
};
use quorumlock_proto::v1 as pb;
use quorumlock_proto::v1::cluster_server::{Cluster, ClusterServer};
use quorumlock_proto::v1::lock_server::{Lock, LockServer};
use tonic::{Code, Request, Response, Status, Streaming};

/// Answers the first write of each kind with an ambiguous failure and every
/// repeat with a stale-token refusal; everything else is unimplemented.
#[derive(Default, Clone)]
struct Scripted {
    puts: Arc<AtomicUsize>,
    deletes: Arc<AtomicUsize>,
}

fn ambiguous_then_stale(calls: &AtomicUsize) -> Status {
    if calls.fetch_add(1, Ordering::SeqCst) == 0 {
        // No leader hint: the node may have proposed the command already.
        Status::unavailable("leadership lost while the command was in flight")
    } else {
        Status::failed_precondition("stale fencing token for lock \"l\": presented 5, current 7")
    }
}

type KeepAliveStream = Pin<Box<dyn Stream<Item = Result<pb::KeepAliveResponse, Status>> + Send>>;
type WatchStream = Pin<Box<dyn Stream<Item = Result<pb::WatchResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Lock for Scripted {
    async fn open_session(
        &self,
        _: Request<pb::OpenSessionRequest>,
    ) -> Result<Response<pb::OpenSessionResponse>, Status> {
        Err(Status::unimplemented("scripted"))
    }

    type KeepAliveStream = KeepAliveStream;

    async fn keep_alive(
        &self,
        _: Request<Streaming<pb::KeepAliveRequest>>,
    ) -> Result<Response<Self::KeepAliveStream>, Status> {
        Err(Status::unimplemented("scripted"))
    }

    async fn close_session(
        &self,
        _: Request<pb::CloseSessionRequest>,
    ) -> Result<Response<pb::CloseSessionResponse>, Status> {
        Err(Status::unimplemented("scripted"))
    }

    async fn acquire(&self, _: Request<pb::AcquireRequest>) -> Result<Response<pb::AcquireResponse>, Status> {
        Err(Status::unimplemented("scripted"))
    }

    async fn release(&self, _: Request<pb::ReleaseRequest>) -> Result<Response<pb::ReleaseResponse>, Status> {
        Err(Status::unimplemented("scripted"))
    }

    async fn describe(
        &self,
        _: Request<pb::DescribeRequest>,
    ) -> Result<Response<pb::DescribeResponse>, Status> {
        Err(Status::unimplemented("scripted"))
    }

    async fn put(&self, _: Request<pb::PutRequest>) -> Result<Response<pb::PutResponse>, Status> {
        Err(ambiguous_then_stale(&self.puts))
    }

    async fn get(&self, _: Request<pb::GetRequest>) -> Result<Response<pb::GetResponse>, Status> {
        Err(Status::unimplemented("scripted"))
    }

    async fn delete(&self, _: Request<pb::DeleteRequest>) -> Result<Response<pb::DeleteResponse>, Status> {
        Err(ambiguous_then_stale(&self.deletes))
    }

    async fn check_token(
        &self,
        _: Request<pb::CheckTokenRequest>,
    ) -> Result<Response<pb::CheckTokenResponse>, Status> {
        Err(Status::unimplemented("scripted"))
    }

    async fn force_release(
        &self,
        _: Request<pb::ForceReleaseRequest>,
    ) -> Result<Response<pb::ForceReleaseResponse>, Status> {
        Err(Status::unimplemented("scripted"))
    }

    type WatchStream = WatchStream;

    async fn watch(&self, _: Request<pb::WatchRequest>) -> Result<Response<Self::WatchStream>, Status> {
        Err(Status::unimplemented("scripted"))
    }
}

#[tonic::async_trait]
impl Cluster for Scripted {
    type SaveSnapshotStream = Pin<Box<dyn Stream<Item = Result<pb::SnapshotChunk, Status>> + Send>>;

    async fn save_snapshot(
        &self,
        _: Request<pb::SaveSnapshotRequest>,
    ) -> Result<Response<Self::SaveSnapshotStream>, Status> {
        Err(Status::unimplemented("scripted"))
    }

    async fn status(&self, _: Request<pb::StatusRequest>) -> Result<Response<pb::StatusResponse>, Status> {
        Ok(Response::new(pb::StatusResponse {
            node_id: 1,
            engine: "raft".into(),
            ..Default::default()
        }))
    }

    async fn list_members(
        &self,
        _: Request<pb::ListMembersRequest>,
    ) -> Result<Response<pb::ListMembersResponse>, Status> {
        Err(Status::unimplemented("scripted"))
    }

    async fn add_member(
        &self,
        _: Request<pb::AddMemberRequest>,
    ) -> Result<Response<pb::MembershipChangeResponse>, Status> {
        Err(Status::unimplemented("scripted"))
    }

    async fn promote_member(
        &self,
        _: Request<pb::PromoteMemberRequest>,
    ) -> Result<Response<pb::MembershipChangeResponse>, Status> {
        Err(Status::unimplemented("scripted"))
    }

    async fn remove_member(
        &self,
        _: Request<pb::RemoveMemberRequest>,
    ) -> Result<Response<pb::MembershipChangeResponse>, Status> {
        Err(Status::unimplemented("scripted"))
    }

    async fn repair_member(
        &self,
        _: Request<pb::RepairMemberRequest>,
    ) -> Result<Response<pb::RepairMemberResponse>, Status> {
        Err(Status::unimplemented("scripted"))
    }
}

async fn start(server: Scripted) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(LockServer::new(server.clone()))
            .add_service(ClusterServer::new(server))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    addr
}

fn config() -> ClientConfig {
    ClientConfig {
        backoff_initial: Duration::from_millis(10),
        backoff_max: Duration::from_millis(20),
        retry_total_max: Duration::from_secs(5),
        ..ClientConfig::default()
    }
}

/// The key of the session the scripted writes name.
fn key() -> SessionKey {
    SessionKey::new(
        SessionId::new(1),
        SessionSecret::from_bytes(&[9; 32]).expect("32 bytes"),
    )
}

#[tokio::test]
async fn a_put_refused_on_repeat_after_an_ambiguous_attempt_has_an_unknown_outcome() {
    let server = Scripted::default();
    let addr = start(server.clone()).await;
    let client = Client::connect_with([addr.as_str()], config()).await.unwrap();
    let fence = Fence {
        lock: "l".into(),
        token: FencingToken::new(5),
    };
    let error = client.put_fenced("k", "v", &fence, &key()).await.unwrap_err();
    assert_eq!(server.puts.load(Ordering::SeqCst), 2, "the put was repeated once");
    assert!(
        matches!(
            &error,
            ClientError::OutcomeUnknown {
                code: Code::FailedPrecondition,
                ..
            }
        ),
        "the refusal of the repeat is not the answer to the first attempt: {error}"
    );
    assert!(!error.is_failed_precondition(), "not reported as a plain refusal");
}

#[tokio::test]
async fn a_delete_refused_on_repeat_after_an_ambiguous_attempt_has_an_unknown_outcome() {
    let server = Scripted::default();
    let addr = start(server.clone()).await;
    let client = Client::connect_with([addr.as_str()], config()).await.unwrap();
    let fence = Fence {
        lock: "l".into(),
        token: FencingToken::new(5),
    };
    let error = client.delete_fenced("k", &fence, &key()).await.unwrap_err();
    assert_eq!(server.deletes.load(Ordering::SeqCst), 2);
    assert!(error.is_outcome_unknown(), "{error}");
}

#[tokio::test]
async fn a_put_refused_at_the_first_attempt_is_a_plain_refusal() {
    let server = Scripted::default();
    // The first attempt is used up, so the server refuses at once.
    server.puts.store(1, Ordering::SeqCst);
    let addr = start(server.clone()).await;
    let client = Client::connect_with([addr.as_str()], config()).await.unwrap();
    let fence = Fence {
        lock: "l".into(),
        token: FencingToken::new(5),
    };
    let error = client.put_fenced("k", "v", &fence, &key()).await.unwrap_err();
    assert!(error.is_failed_precondition(), "{error}");
}
