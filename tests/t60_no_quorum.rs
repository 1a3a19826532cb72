//! t60: behaviour without a quorum.
//!
//! Proves that with two of three nodes stopped, the remaining node, whether
//! it was the leader or a follower, answers OpenSession, Acquire and Describe
//! with UNAVAILABLE before a 3 s client deadline: not OK (a minority must not
//! grant locks or serve linearizable reads), not DEADLINE_EXCEEDED or
//! CANCELLED (it must not hang). A leader left alone for several election
//! timeouts refuses commands with the reason `NOT_LEADER` (nothing
//! proposed). It also proves the cluster serves again once a quorum is back.

mod common;

use std::fmt::Debug;
use std::future::Future;
use std::time::{Duration, Instant};

use common::*;
use quorumlock_proto::v1::{AcquireRequest, DescribeRequest, ErrorReason, OpenSessionRequest};
use tonic::{Code, Request, Status};

engine_tests!(
    check_minority_leader_answers_unavailable,
    check_minority_follower_answers_unavailable,
);

/// The deadline the client puts on every call (sent as `grpc-timeout`).
const CLIENT_DEADLINE: Duration = Duration::from_secs(3);
/// Slack for scheduling on a loaded machine before a missing answer counts
/// as a hang; the client itself would have given up at the deadline.
const DEADLINE_SLACK: Duration = Duration::from_secs(2);

/// The leader is the one node left.
async fn check_minority_leader_answers_unavailable(engine: &str) {
    let cluster = Cluster::start(engine, 3).await;
    let survivor = cluster.wait_for_leader().await;
    check_survivor_answers_unavailable(&cluster, survivor, Survivor::Leader).await;
}

/// A follower is the one node left.
async fn check_minority_follower_answers_unavailable(engine: &str) {
    let cluster = Cluster::start(engine, 3).await;
    let survivor = cluster.follower_index().await;
    check_survivor_answers_unavailable(&cluster, survivor, Survivor::Follower).await;
}

/// Which node is left.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Survivor {
    Leader,
    Follower,
}

async fn check_survivor_answers_unavailable(cluster: &Cluster, survivor: usize, role: Survivor) {
    let client = cluster.client(survivor).await;
    let opened = retry_unavailable("OpenSession", || open_session(&client, LONG_TTL_MS))
        .await
        .expect("OpenSession with a quorum");
    let session = Key::of(&opened);
    let lock = "t60/no-quorum";

    let stopped: Vec<usize> = (0..cluster.len()).filter(|&index| index != survivor).collect();
    for &index in &stopped {
        cluster.kill(index);
    }

    // Right after the kills the survivor may still believe in the old
    // leadership; a few election timeouts later it knows it has none. Both
    // situations must be answered UNAVAILABLE.
    for (round_index, round) in ["just after the kills", "after several election timeouts"]
        .into_iter()
        .enumerate()
    {
        if round_index > 0 {
            tokio::time::sleep(Duration::from_millis(3 * ELECTION_TIMEOUT_MS)).await;
        }
        let started = Instant::now();
        let mut client = client.clone();
        let opening = expect_unavailable(
            &format!("OpenSession {round}"),
            client.open_session(with_deadline(OpenSessionRequest { ttl_ms: LONG_TTL_MS })),
        )
        .await;
        let acquiring = expect_unavailable(
            &format!("Acquire {round}"),
            client.acquire(with_deadline(AcquireRequest {
                session_id: session.id,
                name: lock.as_bytes().to_vec(),
                wait_ms: 0,
                session_secret: session.secret.to_vec(),
                ..AcquireRequest::default()
            })),
        )
        .await;
        expect_unavailable(
            &format!("Describe {round}"),
            client.describe(with_deadline(DescribeRequest {
                name: lock.as_bytes().to_vec(),
            })),
        )
        .await;
        eprintln!(
            "three calls {round} were answered UNAVAILABLE in {:?}",
            started.elapsed()
        );
        if role == Survivor::Leader && round_index > 0 {
            // A leader that has heard from no quorum for two election timeouts
            // orders nothing (raft: check quorum; paxos: it stepped down):
            // commands are refused before they are proposed, which the
            // reason tells the client, instead of waiting for a commit
            // that cannot come.
            for (what, status) in [("OpenSession", opening), ("Acquire", acquiring)] {
                expect_refusal(
                    &format!("{what} {round}"),
                    Err::<(), _>(status),
                    Code::Unavailable,
                    ErrorReason::NotLeader,
                );
            }
        }
    }

    // With one stopped node back, the cluster serves again.
    cluster.restart(stopped[0]);
    cluster.wait_for_leader().await;
    let granted = retry_unavailable("Acquire after the quorum is back", || {
        acquire(&client, session, lock, 0)
    })
    .await
    .expect("Acquire after the quorum is back");
    assert!(granted.acquired, "the lock is free: {granted:?}");
}

fn with_deadline<T>(message: T) -> Request<T> {
    let mut request = Request::new(message);
    request.set_timeout(CLIENT_DEADLINE);
    request
}

/// Asserts that `rpc` is answered UNAVAILABLE before the client deadline
/// (plus scheduling slack), and returns the answer.
async fn expect_unavailable<T: Debug>(
    what: &str,
    rpc: impl Future<Output = Result<tonic::Response<T>, Status>>,
) -> Status {
    match tokio::time::timeout(CLIENT_DEADLINE + DEADLINE_SLACK, rpc).await {
        Err(_) => panic!(
            "{what} without a quorum: no answer within the {CLIENT_DEADLINE:?} deadline \
             (the client would see DEADLINE_EXCEEDED)"
        ),
        Ok(Ok(response)) => panic!(
            "{what} without a quorum was answered OK: {:?}",
            response.into_inner()
        ),
        Ok(Err(status)) => {
            assert_eq!(
                status.code(),
                Code::Unavailable,
                "{what} without a quorum: expected UNAVAILABLE, got {:?}: {}",
                status.code(),
                status.message()
            );
            status
        }
    }
}
