//! t16: lock-delay and maximum hold time through the public gRPC API and
//! the Rust client, on a real three-node cluster of each engine.
//!
//! Proves that:
//! - a grant with a lock-delay whose session expires leaves the lock to
//!   nobody for the delay: `Describe` shows the delay and how much is left,
//!   a try-acquire is refused with FAILED_PRECONDITION (LOCK_DELAYED) naming
//!   the delay, and the waiter queued behind it is granted no earlier than
//!   the delay after the holder stopped renewing; a watch sees EXPIRED,
//!   LOCK_DELAY_BEGUN, then LOCK_DELAY_ENDED with the grant in one revision;
//! - a leader killed during a delay does not cut it short: the new leader
//!   starts it over, so the waiter is granted no earlier than the delay
//!   after the kill;
//! - a grant with a maximum hold ends through the log once it passes, while
//!   its session renews: the waiter is granted, the old token's writes are
//!   refused, a watch sees REVOKED with cause MAX_HOLD, and the Rust
//!   client's guard reports `LostReason::MaxHold` no later than the cluster
//!   ended the grant;
//! - terms outside their bounds are INVALID_ARGUMENT naming the field.

mod common;

use std::time::{Duration, Instant};

use common::*;
use quorumlock_client::{AcquireOptions, Client, LostReason};
use quorumlock_proto::v1::lock_client::LockClient;
use quorumlock_proto::v1::{
    AcquireRequest, AcquireResponse, ErrorReason, WatchEvent, WatchEventCause, WatchEventKind, WatchRequest,
    WatchResponse, WatchTarget,
};
use tonic::transport::Channel;
use tonic::{Code, Status, Streaming};

engine_tests!(
    check_a_lock_delay_after_an_expiry_holds_off_every_grant_until_it_passes,
    check_a_leader_killed_during_a_lock_delay_does_not_cut_it_short,
    check_a_grant_past_its_maximum_hold_is_ended_while_its_session_renews,
);

/// TTL of the sessions meant to expire: the shortest the API allows.
const SHORT_TTL_MS: u64 = 1_000;

/// An exclusive acquire of `name` by `session` with these terms.
async fn acquire_terms(
    client: &LockClient<Channel>,
    session: Key,
    name: &str,
    wait_ms: u64,
    lock_delay_ms: u32,
    max_hold_ms: u32,
) -> Result<AcquireResponse, Status> {
    acquire_with(
        client,
        AcquireRequest {
            session_id: session.id,
            name: name.as_bytes().to_vec(),
            wait_ms,
            session_secret: session.secret.to_vec(),
            lock_delay_ms,
            max_hold_ms,
            ..AcquireRequest::default()
        },
    )
    .await
}

/// A watch of the lock `name` from now, past its `created` message.
async fn watch_lock(client: &LockClient<Channel>, name: &str) -> Streaming<WatchResponse> {
    let mut client = client.clone();
    let request = WatchRequest {
        name: name.as_bytes().to_vec(),
        prefix: false,
        from_revision: 0,
        target: WatchTarget::Locks.into(),
    };
    let mut events = call("Watch", RPC_TIMEOUT, client.watch(request))
        .await
        .expect("Watch");
    let created = events.message().await.expect("Watch").expect("created");
    assert!(created.created, "the first message says the watch is created");
    events
}

/// The watch's events until `last` is among them, with the rest of the
/// message that brought it.
async fn events_through(
    events: &mut Streaming<WatchResponse>,
    last: impl Fn(&WatchEvent) -> bool,
) -> Vec<WatchEvent> {
    let mut seen: Vec<WatchEvent> = Vec::new();
    loop {
        let message = tokio::time::timeout(CONDITION_WAIT, events.message())
            .await
            .unwrap_or_else(|_| {
                panic!("the awaited event did not come within {CONDITION_WAIT:?}; saw {seen:?}")
            })
            .expect("the watch goes on")
            .expect("the stream does not end");
        let done = message.events.iter().any(&last);
        seen.extend(message.events);
        if done {
            return seen;
        }
    }
}

/// The first of `seen` of `kind`.
fn first_of(seen: &[WatchEvent], kind: WatchEventKind) -> &WatchEvent {
    seen.iter()
        .find(|event| event.kind() == kind)
        .unwrap_or_else(|| panic!("{kind:?} among {seen:?}"))
}

/// Waits until `Describe` of `name` shows a lock-delay in force and nobody
/// holding; returns the answer.
async fn wait_for_delay(client: &LockClient<Channel>, name: &str) -> quorumlock_proto::v1::DescribeResponse {
    wait_until("the lock-delay to begin", CONDITION_WAIT, || async {
        let described = describe(client, name)
            .await
            .map_err(|status| status.to_string())?;
        match described.lock_delay_ms != 0 && !described.held {
            true => Ok(described),
            false => Err(format!("{described:?}")),
        }
    })
    .await
}

async fn check_a_lock_delay_after_an_expiry_holds_off_every_grant_until_it_passes(engine: &str) {
    const DELAY_MS: u32 = 4_000;
    let cluster = Cluster::start(engine, 3).await;
    let leader = cluster.wait_for_leader().await;
    let client = cluster.client(leader).await;
    let follower = cluster.client((leader + 1) % cluster.len()).await;
    let lock = "t16/delayed";
    let mut events = watch_lock(&follower, lock).await;

    let mut holder = cluster.session(SHORT_TTL_MS).await;
    let (waiter, late) = (
        cluster.session(LONG_TTL_MS).await,
        cluster.session(LONG_TTL_MS).await,
    );
    let granted = acquire_terms(&follower, holder.key, lock, 0, DELAY_MS, 0)
        .await
        .expect("Acquire with a lock-delay");
    assert!(granted.acquired);
    assert_eq!(granted.waited_ms, 0, "granted at once");
    let described = describe_ok(&client, lock).await;
    assert_eq!(
        described.holders[0].lock_delay_ms, DELAY_MS,
        "Describe shows the grant's terms"
    );
    let waiting = {
        let client = client.clone();
        let key = waiter.key;
        tokio::spawn(async move { acquire(&client, key, lock, LONG_WAIT_MS).await })
    };
    wait_for_queue_length(&client, lock, 1).await;

    // The holder stops renewing, as a client that froze would.
    let stopped = Instant::now();
    holder.stop_keepalive().await;
    let described = wait_for_delay(&client, lock).await;
    assert_eq!(described.lock_delay_ms, DELAY_MS);
    assert!(
        (1..=u64::from(DELAY_MS)).contains(&described.lock_delay_left_ms),
        "about how much is left: {described:?}"
    );
    assert_eq!(described.queue_length, 1, "the waiter still waits: {described:?}");

    // A try-acquire meanwhile is refused with the delay; only if the delay
    // already passed (a machine slow enough to take the whole delay since
    // Describe showed it) is it a plain "not acquired" behind the waiter.
    match acquire(&follower, late.key, lock, 0).await {
        Ok(answer) => {
            assert!(!answer.acquired, "nobody else is granted the lock: {answer:?}");
            let now = describe_ok(&client, lock).await;
            assert_eq!(
                (now.lock_delay_ms, now.holder_session_id),
                (0, waiter.id),
                "a try-acquire is answered without a refusal only once the delay is over"
            );
        }
        refused => {
            let detail = expect_refusal(
                "a try-acquire during the lock-delay",
                refused,
                Code::FailedPrecondition,
                ErrorReason::LockDelayed,
            );
            assert_eq!(detail.lock, lock.as_bytes());
            assert_eq!(detail.limit, u64::from(DELAY_MS), "the refusal names the delay");
            assert!(detail.retry_after_ms <= u64::from(DELAY_MS));
        }
    }

    let granted = waiting.await.unwrap().expect("the waiter's Acquire is answered");
    assert!(granted.acquired, "the waiter is granted once the delay passed");
    let waited = stopped.elapsed();
    assert!(
        waited >= Duration::from_millis(u64::from(DELAY_MS)),
        "granted {waited:?} after the holder stopped renewing, within its {DELAY_MS} ms lock-delay"
    );
    assert!(
        granted.waited_ms <= u64::try_from(waited.as_millis()).unwrap() + RPC_TIMEOUT.as_millis() as u64,
        "the reported wait is a lower bound: {granted:?}"
    );
    assert_held(&client, lock, waiter.id, granted.token, 0).await;
    let after = describe_ok(&client, lock).await;
    assert_eq!((after.lock_delay_ms, after.lock_delay_left_ms), (0, 0));

    // The watch: EXPIRED and the delay's beginning in one revision, then
    // its end and the grant in a later one.
    let seen = events_through(&mut events, |event| {
        event.kind() == WatchEventKind::Granted && event.session_id == waiter.id
    })
    .await;
    let expired = first_of(&seen, WatchEventKind::Expired);
    let begun = first_of(&seen, WatchEventKind::LockDelayBegun);
    assert_eq!(expired.session_id, holder.id);
    assert_eq!(begun.revision, expired.revision);
    assert_eq!(begun.delay_ms, DELAY_MS);
    let ended = first_of(&seen, WatchEventKind::LockDelayEnded);
    let grant = seen.last().unwrap();
    assert!(ended.revision > begun.revision);
    assert_eq!((grant.revision, grant.token), (ended.revision, granted.token));

    // Terms outside their bounds name the field.
    for (lock_delay_ms, max_hold_ms, field) in [
        (60_001, 0, "lock_delay_ms"),
        (0, 999, "max_hold_ms"),
        (0, 86_400_001, "max_hold_ms"),
    ] {
        let bad = acquire_terms(&client, late.key, "t16/bad", 0, lock_delay_ms, max_hold_ms).await;
        let detail = expect_refusal(
            "terms out of bounds",
            bad,
            Code::InvalidArgument,
            ErrorReason::InvalidArgument,
        );
        assert_eq!(detail.field, field);
    }
}

async fn check_a_leader_killed_during_a_lock_delay_does_not_cut_it_short(engine: &str) {
    const DELAY_MS: u32 = 5_000;
    let cluster = Cluster::start(engine, 3).await;
    let leader = cluster.wait_for_leader().await;
    let client = cluster.client(leader).await;
    let lock = "t16/failover";
    let mut holder = cluster.session(SHORT_TTL_MS).await;
    let waiter = cluster.session(LONG_TTL_MS).await;
    let granted = acquire_terms(&client, holder.key, lock, 0, DELAY_MS, 0)
        .await
        .expect("Acquire with a lock-delay");
    assert!(granted.acquired);
    let waiting = {
        let urls = cluster.urls();
        let key = waiter.key;
        // Through whichever node answers, again when the call breaks: the
        // leader is about to die. The session keeps its place in the queue.
        tokio::spawn(async move {
            let deadline = Instant::now() + CONDITION_WAIT;
            loop {
                let answer = match connect_any(&urls).await {
                    Ok(channel) => acquire(&LockClient::new(channel), key, lock, LONG_WAIT_MS).await,
                    Err(status) => Err(status),
                };
                match answer {
                    Err(status) if broken(&status) && Instant::now() < deadline => {
                        eprintln!("Acquire: {status:?}; again");
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                    answer => return answer,
                }
            }
        })
    };
    wait_for_queue_length(&client, lock, 1).await;
    holder.stop_keepalive().await;
    wait_for_delay(&client, lock).await;

    let killed = Instant::now();
    cluster.kill(leader);
    let new_leader = cluster.wait_for_leader().await;
    assert_ne!(new_leader, leader);
    let granted = waiting
        .await
        .unwrap()
        .expect("the waiter is answered by the new leader");
    assert!(granted.acquired);
    let waited = killed.elapsed();
    assert!(
        waited >= Duration::from_millis(u64::from(DELAY_MS)),
        "granted {waited:?} after the leader died, within the {DELAY_MS} ms lock-delay the new leader starts over"
    );
    let client = cluster.client(new_leader).await;
    assert_held(&client, lock, waiter.id, granted.token, 0).await;
}

/// Whether a call failed because its node or connection went away.
fn broken(status: &Status) -> bool {
    status.code() == Code::Unavailable
        || (status.code() == Code::Unknown && status.message().contains("transport error"))
}

/// Opens a channel to the first of `urls` that answers.
async fn connect_any(urls: &[String]) -> Result<Channel, Status> {
    for url in urls {
        if let Ok(channel) = connect(url).await {
            return Ok(channel);
        }
    }
    Err(Status::unavailable("no node answered"))
}

async fn check_a_grant_past_its_maximum_hold_is_ended_while_its_session_renews(engine: &str) {
    const MAX_HOLD_MS: u32 = 2_000;
    let cluster = Cluster::start(engine, 3).await;
    let leader = cluster.wait_for_leader().await;
    let client = cluster.client(leader).await;
    let lock = "t16/bounded";
    let mut events = watch_lock(&client, lock).await;
    let (holder, waiter) = (
        cluster.session(LONG_TTL_MS).await,
        cluster.session(LONG_TTL_MS).await,
    );

    let sent = Instant::now();
    let granted = acquire_terms(&client, holder.key, lock, 0, 0, MAX_HOLD_MS)
        .await
        .expect("Acquire with a maximum hold");
    assert!(granted.acquired);
    let token = granted.token;
    let next = acquire(&client, waiter.key, lock, LONG_WAIT_MS)
        .await
        .expect("the waiter's Acquire");
    assert!(
        next.acquired,
        "the waiter is granted once the maximum hold passed"
    );
    let held = sent.elapsed();
    assert!(
        held >= Duration::from_millis(u64::from(MAX_HOLD_MS)),
        "the grant ended {held:?} after it was asked for, before its {MAX_HOLD_MS} ms maximum hold"
    );
    assert!(
        u128::from(next.waited_ms) <= held.as_millis(),
        "the waiter's reported wait is a lower bound: {next:?} after {held:?}"
    );
    assert!(!holder.keepalive_ended(), "the holder's session lives on");
    let late = put(&client, "t16/out", "late", fence(lock, token), holder.key).await;
    expect_refusal(
        "a write under the ended grant",
        late,
        Code::FailedPrecondition,
        ErrorReason::StaleToken,
    );
    let seen = events_through(&mut events, |event| {
        event.kind() == WatchEventKind::Granted && event.session_id == waiter.id
    })
    .await;
    let revoked = first_of(&seen, WatchEventKind::Revoked);
    assert_eq!(
        (revoked.session_id, revoked.token, revoked.cause()),
        (holder.id, token, WatchEventCause::MaxHold)
    );
    let grant = seen.last().unwrap();
    assert_eq!((grant.revision, grant.token), (revoked.revision, next.token));

    // The Rust client: the guard reports the maximum hold, no later than
    // the cluster ends the grant.
    let rust = Client::connect(cluster.urls()).await.expect("connect");
    let session = rust.session(Duration::from_secs(30)).await.expect("session");
    let options = AcquireOptions {
        max_hold: Some(Duration::from_millis(u64::from(MAX_HOLD_MS))),
        ..AcquireOptions::default()
    };
    let name = "t16/guarded";
    let guard = session
        .acquire_with(name, &options)
        .await
        .expect("acquire_with")
        .expect("granted");
    let watched = guard.watch();
    assert!(guard.hold_deadline().is_some());
    let reason = tokio::time::timeout(CONDITION_WAIT, guard.lost())
        .await
        .expect("the guard reports the maximum hold");
    assert_eq!(
        reason,
        LostReason::MaxHold {
            max_hold: Duration::from_millis(u64::from(MAX_HOLD_MS))
        }
    );
    assert!(guard.is_lost());
    assert!(matches!(
        *watched.borrow(),
        None | Some(LostReason::MaxHold { .. })
    ));
    // When the guard says so, the cluster may still count: it ends the
    // grant at or after that moment, never before.
    let token = guard.token();
    wait_until("the cluster to end the guarded grant", CONDITION_WAIT, || async {
        let described = describe(&client, name)
            .await
            .map_err(|status| status.to_string())?;
        match described.holders.iter().any(|holder| holder.token == token.get()) {
            true => Err(format!("still held: {described:?}")),
            false => Ok(()),
        }
    })
    .await;
    assert!(session.lost_reason().is_none(), "the session lives on");
    session.close().await.expect("close");
}
