//! t20: the FIFO wait queue and session leases.
//!
//! Proves that 100 queued waiters are granted in FIFO order, each exactly
//! once, with strictly increasing tokens; that a waiter whose wait passes, or
//! whose call is cancelled, leaves the queue; that keepalives keep a session
//! alive well past its TTL; that a holder whose keepalives stop loses its lock
//! to the queued waiter with a higher token, after which the expired session
//! is NOT_FOUND; that closing a session releases its locks; and that a
//! keepalive stream ends with NOT_FOUND as soon as its session ends, without
//! waiting for the client's next renewal (the holder's "lock lost" signal).

mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use common::*;
use tokio::sync::mpsc;
use tonic::Code;

engine_tests!(
    check_fifo_grants_to_100_waiters,
    check_waiter_leaves_queue_when_wait_passes,
    check_cancelled_waiter_leaves_queue,
    check_keepalive_keeps_session_alive,
    check_session_expiry_hands_lock_to_waiter,
    check_closed_session_releases_its_locks,
    check_keepalive_stream_reports_session_end_at_once,
);

const WAITERS: usize = 100;
/// How long the test waits for each single handover in the waiter chain.
const HANDOVER_WAIT: Duration = Duration::from_secs(60);

/// What a waiter task reports.
#[derive(Debug)]
enum WaiterEvent {
    /// Its Acquire returned; sent before it releases.
    Granted {
        index: usize,
        outcome: Result<(bool, u64), String>,
    },
    /// Its Release returned.
    Released {
        index: usize,
        outcome: Result<(u64, u64), String>,
    },
}

/// 100 sessions queue on one lock in a known order (each is started only
/// once the previous one shows in the queue length). When the holder releases,
/// each waiter is granted in turn and releases, so the grants form a chain:
/// they must come in queue order, each exactly once, with strictly increasing
/// tokens, and each Release must name the next waiter.
async fn check_fifo_grants_to_100_waiters(engine: &str) {
    let cluster = Cluster::start(engine, 3).await;
    let lock = "t20/fifo";
    let watcher = cluster.any_client().await;
    let mut clients = Vec::new();
    for index in 0..cluster.len() {
        clients.push(cluster.client(index).await);
    }

    let holder = cluster.open_session_key(LONG_TTL_MS).await;
    let holder_token = acquire_granted(&watcher, holder, lock, 0).await;

    let (events, mut event_receiver) = mpsc::unbounded_channel();
    let mut sessions = Vec::with_capacity(WAITERS);
    let mut tasks = Vec::with_capacity(WAITERS);
    for index in 0..WAITERS {
        // Waiters are spread over all nodes, so forwarded calls queue too.
        let client = clients[index % clients.len()].clone();
        let session_id = cluster.open_session_key(LONG_TTL_MS).await;
        sessions.push(session_id);
        let events = events.clone();
        tasks.push(tokio::spawn(async move {
            let granted = acquire(&client, session_id, lock, LONG_WAIT_MS).await;
            let granted = granted
                .map(|response| (response.acquired, response.token))
                .map_err(|status| format!("{status:?}"));
            let _ = events.send(WaiterEvent::Granted {
                index,
                outcome: granted.clone(),
            });
            if let Ok((true, token)) = granted {
                let released = release(&client, session_id, lock, token)
                    .await
                    .map(|response| (response.next_session_id, response.next_token))
                    .map_err(|status| format!("{status:?}"));
                let _ = events.send(WaiterEvent::Released {
                    index,
                    outcome: released,
                });
            }
        }));
        wait_for_queue_length(&watcher, lock, index as u64 + 1).await;
    }
    drop(events);
    assert_held(&watcher, lock, holder.id, holder_token, WAITERS as u64).await;

    let handed = release(&watcher, holder, lock, holder_token)
        .await
        .expect("Release by the holder");
    assert_eq!(
        handed.next_session_id, sessions[0].id,
        "the holder's Release grants the first waiter"
    );

    // A waiter is granted only after the previous one released, and each
    // reports its grant before releasing, so grants arrive in grant order.
    let mut grants: Vec<(usize, u64)> = Vec::with_capacity(WAITERS);
    let mut releases: HashMap<usize, (u64, u64)> = HashMap::new();
    while grants.len() < WAITERS {
        let event = tokio::time::timeout(HANDOVER_WAIT, event_receiver.recv())
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "no waiter was granted within {HANDOVER_WAIT:?} after {} grants",
                    grants.len()
                )
            })
            .expect("waiter tasks report until every waiter is granted");
        match event {
            WaiterEvent::Granted { index, outcome } => match outcome {
                Ok((true, token)) => grants.push((index, token)),
                other => panic!("waiter {index} was not granted: {other:?}"),
            },
            WaiterEvent::Released { index, outcome } => {
                let outcome = outcome.unwrap_or_else(|error| panic!("waiter {index}'s Release: {error}"));
                releases.insert(index, outcome);
            }
        }
    }
    for task in tasks {
        tokio::time::timeout(RPC_TIMEOUT, task)
            .await
            .expect("a granted waiter finishes its Release")
            .expect("waiter task");
    }
    while let Ok(event) = event_receiver.try_recv() {
        match event {
            WaiterEvent::Released { index, outcome } => {
                let outcome = outcome.unwrap_or_else(|error| panic!("waiter {index}'s Release: {error}"));
                releases.insert(index, outcome);
            }
            WaiterEvent::Granted { index, .. } => {
                panic!("waiter {index} was granted a second time")
            }
        }
    }

    let order: Vec<usize> = grants.iter().map(|(index, _)| *index).collect();
    let expected: Vec<usize> = (0..WAITERS).collect();
    assert_eq!(order, expected, "waiters are granted in FIFO order, each once");
    assert_eq!(
        handed.next_token, grants[0].1,
        "the holder's Release names the first waiter's token"
    );
    let mut previous = holder_token;
    for (index, token) in &grants {
        assert!(
            *token > previous,
            "tokens strictly increase: waiter {index} got {token} after {previous}"
        );
        previous = *token;
    }
    for index in 0..WAITERS {
        let next = match grants.get(index + 1) {
            Some((next_index, next_token)) => (sessions[*next_index].id, *next_token),
            None => (0, 0),
        };
        assert_eq!(
            releases.get(&index),
            Some(&next),
            "waiter {index}'s Release names the next grant"
        );
    }
    assert_free(&watcher, lock).await;
}

/// A waiter whose wait passes gets OK with acquired = false and leaves the
/// queue; the holder keeps the lock.
async fn check_waiter_leaves_queue_when_wait_passes(engine: &str) {
    let cluster = Cluster::start(engine, 3).await;
    let client = cluster.any_client().await;
    let holder = cluster.session(30_000).await;
    let waiter = cluster.session(30_000).await;
    let lock = "t20/wait-passes";

    let token = acquire_granted(&client, holder.key, lock, 0).await;
    let gave_up = acquire(&client, waiter.key, lock, 1_500)
        .await
        .expect("an Acquire whose wait passes is answered OK");
    assert!(
        !gave_up.acquired,
        "the wait passed while the lock was held, so nothing is granted: {gave_up:?}"
    );
    wait_for_queue_length(&client, lock, 0).await;
    assert_held(&client, lock, holder.id, token, 0).await;

    let released = release(&client, holder.key, lock, token)
        .await
        .expect("Release by the holder");
    assert_eq!(
        released.next_session_id, 0,
        "the waiter that gave up is not granted"
    );
    assert_free(&client, lock).await;
}

/// A waiter whose Acquire call is cancelled by its client leaves the queue,
/// so a later Release grants nobody.
async fn check_cancelled_waiter_leaves_queue(engine: &str) {
    let cluster = Cluster::start(engine, 3).await;
    let client = cluster.any_client().await;
    let holder = cluster.session(30_000).await;
    let waiter = cluster.session(30_000).await;
    let lock = "t20/cancelled-waiter";

    let token = acquire_granted(&client, holder.key, lock, 0).await;
    let waiting = {
        let client = client.clone();
        let session_id = waiter.key;
        tokio::spawn(async move { acquire(&client, session_id, lock, LONG_WAIT_MS).await })
    };
    wait_for_queue_length(&client, lock, 1).await;
    // Aborting the task drops the call, which resets its HTTP/2 stream.
    waiting.abort();
    wait_for_queue_length(&client, lock, 0).await;

    let released = release(&client, holder.key, lock, token)
        .await
        .expect("Release by the holder");
    assert_eq!(released.next_session_id, 0, "the cancelled waiter is not granted");
    assert_free(&client, lock).await;
}

/// A holder that keeps sending keepalives keeps its session and lock for
/// several TTLs.
async fn check_keepalive_keeps_session_alive(engine: &str) {
    let cluster = Cluster::start(engine, 3).await;
    let client = cluster.any_client().await;
    let ttl_ms = 3_000;
    let holder = cluster.session(ttl_ms).await;
    let lock = "t20/kept-alive";

    let token = acquire_granted(&client, holder.key, lock, 0).await;
    let observe_until = Instant::now() + Duration::from_millis(3 * ttl_ms);
    while Instant::now() < observe_until {
        assert_held(&client, lock, holder.id, token, 0).await;
        assert!(
            !holder.keepalive_ended(),
            "the keepalive stream of a live session ended"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let renewed = keep_alive_once(&client, holder.key)
        .await
        .expect("KeepAlive of a live session")
        .expect("KeepAlive answers a renewal");
    assert_eq!(renewed.session_id, holder.id);
    assert_eq!(renewed.ttl_ms, ttl_ms, "a renewal grants the session's TTL");
    release(&client, holder.key, lock, token)
        .await
        .expect("Release after several TTLs");
}

/// A holder whose keepalives stop loses the lock when its TTL passes: the
/// queued waiter is granted with a higher token, and the expired session's
/// KeepAlive, Release, Acquire and CloseSession are NOT_FOUND.
async fn check_session_expiry_hands_lock_to_waiter(engine: &str) {
    let cluster = Cluster::start(engine, 3).await;
    let client = cluster.any_client().await;
    let mut holder = cluster.session(2_000).await;
    let waiter = cluster.session(30_000).await;
    let lock = "t20/expiry";

    let holder_token = acquire_granted(&client, holder.key, lock, 0).await;
    let waiting = {
        let client = client.clone();
        let session_id = waiter.key;
        tokio::spawn(async move { acquire(&client, session_id, lock, LONG_WAIT_MS).await })
    };
    wait_for_queue_length(&client, lock, 1).await;
    assert_held(&client, lock, holder.id, holder_token, 1).await;

    let end = holder.stop_keepalive().await;
    assert!(
        matches!(end, Some(KeepAliveEnd::Stopped)),
        "the holder's session was alive until its keepalives stopped: {end:?}"
    );
    let granted = tokio::time::timeout(CONDITION_WAIT, waiting)
        .await
        .unwrap_or_else(|_| {
            panic!("the waiter was not granted within {CONDITION_WAIT:?} of the holder going silent")
        })
        .expect("the waiter's task")
        .expect("the waiter's Acquire");
    assert!(granted.acquired, "the waiter is granted: {granted:?}");
    assert!(
        granted.token > holder_token,
        "the waiter's token {} is above the expired holder's {holder_token}",
        granted.token
    );
    assert_held(&client, lock, waiter.id, granted.token, 0).await;

    let renewal = keep_alive_once(&client, holder.key).await;
    expect_code("KeepAlive of the expired session", renewal, Code::NotFound);
    let released = release(&client, holder.key, lock, holder_token).await;
    expect_code("Release by the expired session", released, Code::NotFound);
    let acquired = acquire(&client, holder.key, "t20/expiry-other", 0).await;
    expect_code("Acquire by the expired session", acquired, Code::NotFound);
    let closed = close_session(&client, holder.key).await;
    expect_code("CloseSession of the expired session", closed, Code::NotFound);
    assert_held(&client, lock, waiter.id, granted.token, 0).await;
}

/// CloseSession releases every lock the session holds (and names them),
/// grants the next waiter, and leaves the closed session NOT_FOUND.
async fn check_closed_session_releases_its_locks(engine: &str) {
    let cluster = Cluster::start(engine, 3).await;
    let client = cluster.any_client().await;
    let mut holder = cluster.session(30_000).await;
    let waiter = cluster.session(30_000).await;
    let contended = "t20/closed-contended";
    let alone = "t20/closed-alone";

    let contended_token = acquire_granted(&client, holder.key, contended, 0).await;
    acquire_granted(&client, holder.key, alone, 0).await;
    let waiting = {
        let client = client.clone();
        let session_id = waiter.key;
        tokio::spawn(async move { acquire(&client, session_id, contended, LONG_WAIT_MS).await })
    };
    wait_for_queue_length(&client, contended, 1).await;

    holder.stop_keepalive().await;
    let closed = close_session(&client, holder.key)
        .await
        .expect("CloseSession of a live session");
    let mut released = closed.released.clone();
    released.sort();
    assert_eq!(
        released,
        vec![alone.to_string(), contended.to_string()],
        "CloseSession names the locks it released"
    );

    let granted = tokio::time::timeout(CONDITION_WAIT, waiting)
        .await
        .expect("the waiter is granted once the holder's session closes")
        .expect("the waiter's task")
        .expect("the waiter's Acquire");
    assert!(granted.acquired);
    assert!(granted.token > contended_token);
    assert_held(&client, contended, waiter.id, granted.token, 0).await;
    assert_free(&client, alone).await;

    let acquired = acquire(&client, holder.key, alone, 0).await;
    expect_code("Acquire by a closed session", acquired, Code::NotFound);
    let renewal = keep_alive_once(&client, holder.key).await;
    expect_code("KeepAlive of a closed session", renewal, Code::NotFound);
    let closed_again = close_session(&client, holder.key).await;
    expect_code("CloseSession of a closed session", closed_again, Code::NotFound);
}

/// The keepalive stream of a session that ends is closed with NOT_FOUND by
/// the server right away: with a 60 s TTL the client renews only every 20 s,
/// and the stream must end long before that.
async fn check_keepalive_stream_reports_session_end_at_once(engine: &str) {
    let cluster = Cluster::start(engine, 3).await;
    let mut holder = cluster.session(60_000).await;
    let client = cluster.leader_client().await;
    acquire_granted(&client, holder.key, "t20/lost", 0).await;
    // Let the first renewal reach the leader, so the stream watches the session.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(
        !holder.keepalive_ended(),
        "the stream is open while the session lives"
    );

    close_session(&client, holder.key).await.expect("CloseSession");
    wait_until("the keepalive stream to end", Duration::from_secs(10), || async {
        if holder.keepalive_ended() {
            Ok(())
        } else {
            Err("the keepalive stream is still open".to_string())
        }
    })
    .await;
    match holder.stop_keepalive().await {
        Some(KeepAliveEnd::SessionGone(status)) => assert_eq!(status.code(), Code::NotFound, "{status:?}"),
        other => panic!("the keepalive ended otherwise than with NOT_FOUND: {other:?}"),
    }
}
