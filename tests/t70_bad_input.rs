//! t70: refusals of bad requests, each with its exact status code.
//!
//! Proves INVALID_ARGUMENT for empty, over-long (more than 512 bytes) and
//! non-UTF-8 lock names on every RPC that takes one, for bad keys (empty, more
//! than 1024 bytes, non-UTF-8), for values over 1 MiB, for TTLs outside
//! 1000..=3600000 ms and for a missing fence, while the boundary values are
//! accepted; NOT_FOUND for sessions that were never opened or are closed;
//! FAILED_PRECONDITION for stale tokens (naming the presented and the current
//! token) and for releasing a lock the session does not hold. It also checks
//! that refused requests leave the lock state untouched.

mod common;

use common::*;
use quorumlock_proto::v1::ErrorReason;
use tonic::Code;

engine_tests!(
    check_bad_lock_names_are_invalid_argument,
    check_bad_keys_and_values_are_invalid_argument,
    check_bad_ttls_are_invalid_argument,
    check_missing_fence_is_invalid_argument,
    check_unknown_sessions_are_not_found,
    check_stale_tokens_and_non_holders_are_failed_precondition,
    check_oversized_messages_are_refused_naming_their_limit,
);

const NAME_BYTES_MAX: usize = 512;
const KEY_BYTES_MAX: usize = 1_024;
const VALUE_BYTES_MAX: usize = 1 << 20;
const TTL_MS_MIN: u64 = 1_000;
const TTL_MS_MAX: u64 = 3_600_000;
/// A session id no test ever opens.
const NEVER_OPENED: Key = Key {
    id: 987_654_321_012,
    secret: [7; 32],
};

/// Names the service must refuse, with a label for failure messages.
fn bad_names() -> Vec<(&'static str, Vec<u8>)> {
    vec![
        ("an empty name", Vec::new()),
        ("a 513-byte name", vec![b'n'; NAME_BYTES_MAX + 1]),
        // 257 two-byte characters: 514 bytes although only 257 characters.
        ("a 514-byte name of 257 characters", "é".repeat(257).into_bytes()),
        ("a non-UTF-8 name", b"t70/\xff\xfe-not-utf8".to_vec()),
    ]
}

/// Every RPC that takes a lock name refuses bad names; names of exactly 512
/// bytes, in ASCII or in multi-byte characters, are accepted.
async fn check_bad_lock_names_are_invalid_argument(engine: &str) {
    let cluster = Cluster::start(engine, 3).await;
    let client = cluster.any_client().await;
    let session = cluster.session(30_000).await;

    for (label, name) in bad_names() {
        let acquired = acquire(&client, session.key, &name, 0).await;
        let detail = expect_refusal(
            &format!("Acquire with {label}"),
            acquired,
            Code::InvalidArgument,
            ErrorReason::InvalidArgument,
        );
        assert_eq!(
            (detail.field.as_str(), detail.limit),
            ("name", NAME_BYTES_MAX as u64),
            "the detail names the field and its limit"
        );
        let waited = acquire(&client, session.key, &name, 1_000).await;
        expect_code(
            &format!("waiting Acquire with {label}"),
            waited,
            Code::InvalidArgument,
        );
        let released = release(&client, session.key, &name, 1).await;
        expect_code(&format!("Release with {label}"), released, Code::InvalidArgument);
        let described = describe(&client, &name).await;
        expect_code(
            &format!("Describe with {label}"),
            described,
            Code::InvalidArgument,
        );
        let checked = check_token(&client, &name, 1).await;
        expect_code(
            &format!("CheckToken with {label}"),
            checked,
            Code::InvalidArgument,
        );
        let fence_with_bad_name = Some(quorumlock_proto::v1::Fence {
            lock: name.clone(),
            token: 1,
        });
        let written = put(
            &client,
            "t70/key",
            "value",
            fence_with_bad_name.clone(),
            session.key,
        )
        .await;
        let detail = expect_refusal(
            &format!("Put fenced by {label}"),
            written,
            Code::InvalidArgument,
            ErrorReason::InvalidArgument,
        );
        assert_eq!(detail.field, "fence.lock");
        let deleted = delete(&client, "t70/key", fence_with_bad_name, session.key).await;
        expect_code(
            &format!("Delete fenced by {label}"),
            deleted,
            Code::InvalidArgument,
        );
    }

    let longest_ascii = "a".repeat(NAME_BYTES_MAX);
    let longest_multibyte = "é".repeat(NAME_BYTES_MAX / 2);
    for name in [longest_ascii, longest_multibyte] {
        let token = acquire_granted(&client, session.key, &name, 0).await;
        assert_held(&client, &name, session.id, token, 0).await;
        put(
            &client,
            "t70/longest-name-key",
            "value",
            fence(&name, token),
            session.key,
        )
        .await
        .expect("Put fenced by a 512-byte name");
        release(&client, session.key, &name, token)
            .await
            .expect("Release of a 512-byte name");
    }
}

/// Put, Get and Delete refuse bad keys, and Put refuses values over 1 MiB;
/// a 1024-byte key and a value of exactly 1 MiB are accepted.
async fn check_bad_keys_and_values_are_invalid_argument(engine: &str) {
    let cluster = Cluster::start(engine, 3).await;
    let client = cluster.any_client().await;
    let session = cluster.session(30_000).await;
    let lock = "t70/keys";
    let token = acquire_granted(&client, session.key, lock, 0).await;

    let bad_keys: Vec<(&str, Vec<u8>)> = vec![
        ("an empty key", Vec::new()),
        ("a 1025-byte key", vec![b'k'; KEY_BYTES_MAX + 1]),
        ("a non-UTF-8 key", b"t70/\xc3\x28-not-utf8".to_vec()),
    ];
    for (label, key) in bad_keys {
        let written = put(&client, &key, "value", fence(lock, token), session.key).await;
        expect_code(&format!("Put with {label}"), written, Code::InvalidArgument);
        let read = get(&client, &key).await;
        expect_code(&format!("Get with {label}"), read, Code::InvalidArgument);
        let deleted = delete(&client, &key, fence(lock, token), session.key).await;
        expect_code(&format!("Delete with {label}"), deleted, Code::InvalidArgument);
    }

    let too_big = vec![0u8; VALUE_BYTES_MAX + 1];
    let written = put(&client, "t70/big", &too_big, fence(lock, token), session.key).await;
    let detail = expect_refusal(
        "Put of a value over 1 MiB",
        written,
        Code::InvalidArgument,
        ErrorReason::InvalidArgument,
    );
    assert_eq!(
        (detail.field.as_str(), detail.limit),
        ("value", VALUE_BYTES_MAX as u64)
    );
    let read = get(&client, "t70/big").await.expect("Get");
    assert!(!read.found, "a refused Put stores nothing");

    let longest_key = "k".repeat(KEY_BYTES_MAX);
    put(&client, &longest_key, "value", fence(lock, token), session.key)
        .await
        .expect("Put with a 1024-byte key");
    let read = get(&client, &longest_key)
        .await
        .expect("Get with a 1024-byte key");
    assert_eq!(read.value, b"value");
    let largest = vec![7u8; VALUE_BYTES_MAX];
    put(&client, "t70/largest", &largest, fence(lock, token), session.key)
        .await
        .expect("Put of a value of exactly 1 MiB");
    let read = get(&client, "t70/largest")
        .await
        .expect("Get of the largest value");
    assert!(read.value == largest, "the 1 MiB value reads back intact");
    assert_held(&client, lock, session.id, token, 0).await;
}

/// OpenSession refuses TTLs outside 1000..=3600000 ms and accepts both ends.
async fn check_bad_ttls_are_invalid_argument(engine: &str) {
    let cluster = Cluster::start(engine, 3).await;
    let client = cluster.any_client().await;
    // The first call goes through the harness so that a fresh leader's
    // transient UNAVAILABLE is retried.
    cluster.open_session_key(TTL_MS_MIN).await;

    for ttl_ms in [0, 1, TTL_MS_MIN - 1, TTL_MS_MAX + 1, u64::MAX] {
        let opened = open_session(&client, ttl_ms).await;
        expect_code(
            &format!("OpenSession with a TTL of {ttl_ms} ms"),
            opened,
            Code::InvalidArgument,
        );
    }
    for ttl_ms in [TTL_MS_MIN, TTL_MS_MAX] {
        let opened = open_session(&client, ttl_ms)
            .await
            .unwrap_or_else(|status| panic!("OpenSession with a TTL of {ttl_ms} ms: {status:?}"));
        assert_eq!(opened.ttl_ms, ttl_ms);
        close_session(&client, Key::of(&opened))
            .await
            .expect("CloseSession");
    }
}

/// Put and Delete without a fence are refused, and nothing is written.
async fn check_missing_fence_is_invalid_argument(engine: &str) {
    let cluster = Cluster::start(engine, 3).await;
    let client = cluster.any_client().await;
    let session = cluster.session(30_000).await;
    let lock = "t70/unfenced";
    let key = "t70/unfenced-key";
    let token = acquire_granted(&client, session.key, lock, 0).await;

    let written = put(&client, key, "unfenced", None, session.key).await;
    expect_code("Put without a fence", written, Code::InvalidArgument);
    assert!(!get(&client, key).await.expect("Get").found);

    put(&client, key, "fenced", fence(lock, token), session.key)
        .await
        .expect("Put with a fence");
    let deleted = delete(&client, key, None, session.key).await;
    expect_code("Delete without a fence", deleted, Code::InvalidArgument);
    let read = get(&client, key).await.expect("Get");
    assert_eq!(read.value, b"fenced", "a refused Delete deletes nothing");
}

/// Sessions never opened, and closed ones, are NOT_FOUND on every RPC that
/// names a session.
async fn check_unknown_sessions_are_not_found(engine: &str) {
    let cluster = Cluster::start(engine, 3).await;
    let client = cluster.any_client().await;
    let closed = cluster.open_session_key(30_000).await;
    close_session(&client, closed)
        .await
        .expect("CloseSession of an open session");

    for (label, session_id) in [("a never-opened", NEVER_OPENED), ("a closed", closed)] {
        let acquired = acquire(&client, session_id, "t70/unknown", 0).await;
        let detail = expect_refusal(
            &format!("Acquire by {label} session"),
            acquired,
            Code::NotFound,
            ErrorReason::SessionNotFound,
        );
        assert_eq!(detail.session_id, session_id.id, "the detail names the session");
        let waited = acquire(&client, session_id, "t70/unknown", 1_000).await;
        expect_code(
            &format!("waiting Acquire by {label} session"),
            waited,
            Code::NotFound,
        );
        let released = release(&client, session_id, "t70/unknown", 1).await;
        expect_code(&format!("Release by {label} session"), released, Code::NotFound);
        let renewed = keep_alive_once(&client, session_id).await;
        expect_refusal(
            &format!("KeepAlive of {label} session"),
            renewed,
            Code::NotFound,
            ErrorReason::SessionNotFound,
        );
        let closed_again = close_session(&client, session_id).await;
        expect_code(
            &format!("CloseSession of {label} session"),
            closed_again,
            Code::NotFound,
        );
    }
    assert_free(&client, "t70/unknown").await;
}

/// Stale tokens (on Release, Put and Delete) and releases by a session that
/// does not hold the lock are FAILED_PRECONDITION, and change nothing.
async fn check_stale_tokens_and_non_holders_are_failed_precondition(engine: &str) {
    let cluster = Cluster::start(engine, 3).await;
    let client = cluster.any_client().await;
    let holder = cluster.session(30_000).await;
    let other = cluster.session(30_000).await;
    let lock = "t70/stale";
    let key = "t70/stale-key";
    let token = acquire_granted(&client, holder.key, lock, 0).await;
    put(&client, key, "original", fence(lock, token), holder.key)
        .await
        .expect("Put by the holder");
    let wrong = token + 1_000;

    let released = release(&client, holder.key, lock, wrong).await;
    let detail = expect_refusal(
        "Release by the holder with a wrong token",
        released,
        Code::FailedPrecondition,
        ErrorReason::StaleToken,
    );
    assert_eq!(
        (
            detail.lock.as_slice(),
            detail.presented_token,
            detail.current_token
        ),
        (lock.as_bytes(), wrong, token),
        "the detail carries the lock, the presented and the current token as numbers"
    );
    let released = release(&client, other.key, lock, token).await;
    let detail = expect_refusal(
        "Release by a session that does not hold the lock",
        released,
        Code::FailedPrecondition,
        ErrorReason::NotHolder,
    );
    assert_eq!(
        (detail.lock.as_slice(), detail.session_id),
        (lock.as_bytes(), other.id)
    );
    let released = release(&client, holder.key, "t70/never-acquired", token).await;
    expect_code(
        "Release of a lock nobody holds",
        released,
        Code::FailedPrecondition,
    );

    let written = put(&client, key, "wrong token", fence(lock, wrong), holder.key).await;
    let status = expect_code("Put with a wrong token", written, Code::FailedPrecondition);
    assert_names_tokens("Put with a wrong token", &status, &[wrong, token]);
    let detail = quorumlock_proto::details::detail(&status).expect("a typed detail");
    assert_eq!((detail.presented_token, detail.current_token), (wrong, token));
    let deleted = delete(&client, key, fence(lock, wrong), holder.key).await;
    let status = expect_code("Delete with a wrong token", deleted, Code::FailedPrecondition);
    assert_names_tokens("Delete with a wrong token", &status, &[wrong, token]);
    let written = put(
        &client,
        key,
        "free lock",
        fence("t70/never-acquired", token),
        holder.key,
    )
    .await;
    let detail = expect_refusal(
        "Put fenced by a lock nobody holds",
        written,
        Code::FailedPrecondition,
        ErrorReason::StaleToken,
    );
    assert_eq!(detail.current_token, 0, "a free lock has no current token");

    let read = get(&client, key).await.expect("Get");
    assert_eq!(read.value, b"original", "refused writes change nothing");
    assert_held(&client, lock, holder.id, token, 0).await;
    release(&client, holder.key, lock, token)
        .await
        .expect("the holder can still release with its token");
    assert_free(&client, lock).await;
}

/// A message above the API's message bound (1 MiB + 64 KiB) is refused by
/// the server with a status naming that limit, before it is decoded; the
/// Rust client refuses such a value itself, naming the value limit, without
/// sending it.
async fn check_oversized_messages_are_refused_naming_their_limit(engine: &str) {
    use quorumlock_proto::limits::API_MESSAGE_BYTES_MAX;

    let cluster = Cluster::start(engine, 3).await;
    let client = cluster.any_client().await;
    let session = cluster.session(30_000).await;
    let lock = "t70/oversized";
    let token = acquire_granted(&client, session.key, lock, 0).await;
    let huge = vec![1u8; 1_200_000];
    let written = put(&client, "t70/huge", &huge, fence(lock, token), session.key).await;
    let status = written.expect_err("a 1.2 MB message is refused");
    assert!(
        matches!(
            status.code(),
            Code::OutOfRange | Code::ResourceExhausted | Code::InvalidArgument
        ),
        "a message over the bound is refused as too large, not as a failed node: {status:?}"
    );
    assert!(
        numbers_in(status.message()).contains(&(API_MESSAGE_BYTES_MAX as u64)),
        "the refusal names the {API_MESSAGE_BYTES_MAX}-byte limit: {:?}",
        status.message()
    );

    let rust_client = quorumlock_client::Client::connect(cluster.urls())
        .await
        .expect("connect");
    let fenced = quorumlock_client::Fence {
        lock: lock.to_string(),
        token: quorumlock_client::FencingToken::new(token),
    };
    let error = rust_client
        .put_fenced(
            "t70/huge",
            huge,
            &fenced,
            &quorumlock_client::SessionKey::new(
                quorumlock_client::SessionId::new(session.id),
                quorumlock_client::SessionSecret::from_bytes(&session.key.secret).expect("32 bytes"),
            ),
        )
        .await
        .expect_err("the client refuses a value over 1 MiB");
    assert!(
        matches!(&error, quorumlock_client::ClientError::InvalidArgument(message) if message.contains("1048576-byte limit")),
        "the client names the value limit: {error}"
    );
    let read = get(&client, "t70/huge").await.expect("Get");
    assert!(!read.found, "nothing was written");
}
