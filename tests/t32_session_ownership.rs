//! t32: a session belongs to whoever opened it.
//!
//! Against a real 3-process cluster, through the leader and through a
//! follower (which forwards): every session-scoped call that names another
//! client's session without its secret is refused (PERMISSION_DENIED with
//! reason NOT_SESSION_OWNER for a wrong secret, UNAUTHENTICATED for none,
//! INVALID_ARGUMENT for one of the wrong length), and the owner's lock, its
//! token, its value and its keepalive are intact afterwards. A session that
//! read the current token from `Describe` cannot write under it either: the
//! token proves the write is current, not who sends it.

mod common;

use common::*;
use quorumlock_proto::v1::lock_client::LockClient;
use quorumlock_proto::v1::ErrorReason;
use tonic::transport::Channel;
use tonic::Code;

engine_tests!(check_calls_on_another_clients_session_are_refused_and_change_nothing,);

async fn check_calls_on_another_clients_session_are_refused_and_change_nothing(engine: &str) {
    let cluster = Cluster::start(engine, 3).await;
    let leader = cluster.wait_for_leader().await;
    let follower = cluster.follower_index().await;
    let owner = cluster.session(30_000).await;
    let intruder = cluster.session(30_000).await;
    let lock = "t32/owned";
    let key = "t32/owned-key";
    let leader_client = cluster.client(leader).await;
    let token = acquire_granted(&leader_client, owner.key, lock, 0).await;
    put(&leader_client, key, "the owner's", fence(lock, token), owner.key)
        .await
        .expect("Put by the owner");

    for (node, index) in [("leader", leader), ("follower", follower)] {
        let client = cluster.client(index).await;
        let at = |what: &str| format!("{what} through the {node}");
        // The owner's id with a guessed secret.
        let forged = owner.key.forged();
        let (code, reason) = (Code::PermissionDenied, ErrorReason::NotSessionOwner);
        let detail = expect_refusal(
            &at("Release with a guessed secret"),
            release(&client, forged, lock, token).await,
            code,
            reason,
        );
        assert_eq!(detail.session_id, owner.id, "the refusal names the session");
        expect_refusal(
            &at("Acquire with a guessed secret"),
            acquire(&client, forged, "t32/other", 0).await,
            code,
            reason,
        );
        expect_refusal(
            &at("Put with a guessed secret"),
            put(&client, key, "hijacked", fence(lock, token), forged).await,
            code,
            reason,
        );
        expect_refusal(
            &at("Delete with a guessed secret"),
            delete(&client, key, fence(lock, token), forged).await,
            code,
            reason,
        );
        expect_refusal(
            &at("KeepAlive with a guessed secret"),
            keep_alive_once(&client, forged).await,
            code,
            reason,
        );
        expect_refusal(
            &at("CloseSession with a guessed secret"),
            close_session(&client, forged).await,
            code,
            reason,
        );

        // No secret at all, and one that is not a secret's length.
        let without = Key {
            secret: [0; 32],
            ..owner.key
        };
        let detail = expect_refusal(
            &at("Release without a secret"),
            release_with_secret(&client, owner.id, lock, token, Vec::new()).await,
            Code::Unauthenticated,
            ErrorReason::Unauthenticated,
        );
        assert_eq!(detail.field, "session_secret");
        let detail = expect_refusal(
            &at("Release with a 5-byte secret"),
            release_with_secret(&client, owner.id, lock, token, vec![1; 5]).await,
            Code::InvalidArgument,
            ErrorReason::InvalidArgument,
        );
        assert_eq!((detail.field.as_str(), detail.limit), ("session_secret", 32));
        expect_refusal(
            &at("CloseSession with an all-zero secret"),
            close_session(&client, without).await,
            Code::PermissionDenied,
            ErrorReason::NotSessionOwner,
        );

        // The intruder's own session, with the token anyone can read.
        let seen = describe_ok(&client, lock).await;
        assert_eq!(seen.token, token, "Describe shows the current token to anyone");
        let detail = expect_refusal(
            &at("Put by a session that read the token but does not hold the lock"),
            put(&client, key, "hijacked", fence(lock, seen.token), intruder.key).await,
            Code::FailedPrecondition,
            ErrorReason::NotHolder,
        );
        assert_eq!(detail.session_id, intruder.id);
        expect_refusal(
            &at("Release by a session that does not hold the lock"),
            release(&client, intruder.key, lock, seen.token).await,
            Code::FailedPrecondition,
            ErrorReason::NotHolder,
        );
    }

    // Everything the owner had is as it was, on every node.
    for index in 0..cluster.len() {
        let client = cluster.client(index).await;
        let described = describe_ok(&client, lock).await;
        assert!(
            described.held && described.holder_session_id == owner.id && described.token == token,
            "node {}: the owner's lock changed: {described:?}",
            cluster.node_id(index)
        );
        let stored = get(&client, key).await.expect("Get");
        assert_eq!(stored.value, b"the owner's", "node {}", cluster.node_id(index));
    }
    assert!(
        !owner.keepalive_ended(),
        "the owner's keepalive still renews its session"
    );
    let renewed = keep_alive_once(&leader_client, owner.key)
        .await
        .expect("KeepAlive by the owner")
        .expect("an answer");
    assert_eq!(renewed.session_id, owner.id);
    release(&leader_client, owner.key, lock, token)
        .await
        .expect("Release by the owner");
}

/// `Release` with the given raw `session_secret` bytes.
async fn release_with_secret(
    client: &LockClient<Channel>,
    session_id: u64,
    lock: &str,
    token: u64,
    secret: Vec<u8>,
) -> Result<quorumlock_proto::v1::ReleaseResponse, tonic::Status> {
    let mut client = client.clone();
    let request = quorumlock_proto::v1::ReleaseRequest {
        session_id,
        name: lock.as_bytes().to_vec(),
        token,
        session_secret: secret,
    };
    call("Release", RPC_TIMEOUT, client.release(request)).await
}
