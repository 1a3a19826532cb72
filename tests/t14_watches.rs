//! t14: watches through the public gRPC API on a real three-node cluster of
//! each engine.
//!
//! Proves that a watch streams every grant, queue join, leave, release,
//! expiry, put and delete of the names it selects, each with the revision
//! of the command that made it and nothing of other names; that every node
//! gives the same events for the same revisions, so a watch resumes on any
//! node from any revision; that the Rust client's watch resumes across a
//! leader kill with no event lost or repeated; that a revision no longer
//! kept is refused with OUT_OF_RANGE naming the oldest kept; that a watcher
//! that does not read is cut off with WATCH_TOO_SLOW instead of being
//! buffered; and that bad arguments are refused precisely.

mod common;

use std::time::Duration;

use common::*;
use quorumlock_client::{Client, EventKind, WatchOptions};
use quorumlock_proto::v1::lock_client::LockClient;
use quorumlock_proto::v1::{
    ErrorReason, LockMode, WatchEvent, WatchEventCause, WatchEventKind, WatchRequest, WatchResponse,
    WatchTarget,
};
use tonic::transport::Channel;
use tonic::{Code, Status, Streaming};

engine_tests!(
    check_a_watch_sees_every_event_of_its_names_in_revision_order,
    check_every_node_gives_the_same_events_from_any_revision,
    check_the_client_watch_resumes_across_a_leader_kill_with_nothing_lost_or_repeated,
    check_the_client_watch_goes_to_a_node_that_keeps_the_revision,
    check_a_revision_no_longer_kept_is_out_of_range_naming_the_oldest,
    check_a_watcher_that_does_not_read_is_cut_off_not_buffered,
    check_bad_watch_arguments_are_refused_precisely,
);

/// How long a test waits for an event it expects.
const EVENT_WAIT: Duration = Duration::from_secs(30);

/// Opens a watch; returns the stream and the revision it starts after.
async fn open_watch(
    client: &LockClient<Channel>,
    name: &str,
    prefix: bool,
    from_revision: u64,
) -> Result<(Streaming<WatchResponse>, u64), Status> {
    let mut client = client.clone();
    let request = WatchRequest {
        name: name.as_bytes().to_vec(),
        prefix,
        from_revision,
        target: WatchTarget::All.into(),
    };
    let mut stream = call("Watch", RPC_TIMEOUT, client.watch(request)).await?;
    let created = tokio::time::timeout(RPC_TIMEOUT, stream.message())
        .await
        .expect("the first watch message comes at once")?
        .expect("the stream starts with a message");
    assert!(
        created.created,
        "the first message says the watch started: {created:?}"
    );
    assert!(created.events.is_empty());
    Ok((stream, created.revision))
}

/// Reads events until one satisfies `last`; returns all of them, checking
/// that revisions never go back and that every message's revision covers
/// its events.
async fn events_until(
    stream: &mut Streaming<WatchResponse>,
    mut last: impl FnMut(&WatchEvent) -> bool,
) -> Vec<WatchEvent> {
    let mut events: Vec<WatchEvent> = Vec::new();
    loop {
        let message = tokio::time::timeout(EVENT_WAIT, stream.message())
            .await
            .unwrap_or_else(|_| panic!("no watch message within {EVENT_WAIT:?}; so far {events:#?}"))
            .expect("the watch goes on")
            .expect("the stream does not end");
        assert!(!message.created, "only the first message is `created`");
        let mut done = false;
        for event in message.events {
            if let Some(previous) = events.last() {
                assert!(event.revision >= previous.revision, "revisions never go back");
            }
            assert!(
                event.revision <= message.revision + 1,
                "a message is complete through its revision: {event:?} in one through {}",
                message.revision
            );
            done |= last(&event);
            events.push(event);
        }
        if done {
            return events;
        }
    }
}

/// An event as the tests compare it.
fn brief(event: &WatchEvent) -> (WatchEventKind, String, String, u64, WatchEventCause) {
    (
        event.kind(),
        String::from_utf8_lossy(&event.lock).into_owned(),
        String::from_utf8_lossy(&event.key).into_owned(),
        event.session_id,
        event.cause(),
    )
}

fn is_put_of(key: &str) -> impl Fn(&WatchEvent) -> bool + '_ {
    move |event| event.kind() == WatchEventKind::Put && event.key == key.as_bytes()
}

/// Grants, queue joins, a cancelled wait, a release that grants the next
/// waiter in the same revision, puts and deletes, a shared grant, and an
/// expiry all come in order with the right fields; names outside the
/// prefix do not.
async fn check_a_watch_sees_every_event_of_its_names_in_revision_order(engine: &str) {
    let cluster = Cluster::start(engine, 3).await;
    let leader = cluster.wait_for_leader().await;
    let follower = (leader + 1) % cluster.len();
    let client = cluster.client(leader).await;
    // Served by a follower: watches never need the leader.
    let (mut stream, started_after) = open_watch(&cluster.client(follower).await, "t14/", true, 0)
        .await
        .expect("Watch");

    let (one, two, three) = (
        cluster.session(30_000).await,
        cluster.session(30_000).await,
        cluster.session(30_000).await,
    );
    let lock = "t14/a";
    let first = acquire_granted(&client, one.key, lock, 0).await;
    let waiting = {
        let client = client.clone();
        let key = two.key;
        tokio::spawn(async move { acquire(&client, key, lock, 20_000).await })
    };
    wait_for_queue_length(&client, lock, 1).await;
    // A wait that passes leaves the queue: QUEUED, then LEFT (cancelled).
    let passed = acquire(&client, three.key, lock, 300).await.expect("Acquire");
    assert!(!passed.acquired);
    acquire_granted(&client, one.key, "elsewhere/x", 0).await;
    put(&client, "t14/k", "v1", fence(lock, first), one.key)
        .await
        .expect("Put");
    delete(&client, "t14/k", fence(lock, first), one.key)
        .await
        .expect("Delete");
    release(&client, one.key, lock, first).await.expect("Release");
    let second = waiting.await.unwrap().expect("the waiter is granted").token;
    let shared = {
        let mut request = quorumlock_proto::v1::AcquireRequest {
            session_id: three.key.id,
            name: b"t14/r".to_vec(),
            session_secret: three.key.secret.to_vec(),
            ..Default::default()
        };
        request.set_mode(LockMode::Shared);
        acquire_with(&client, request)
            .await
            .expect("shared Acquire")
            .token
    };
    // A session that is not kept alive expires, and its lock with it.
    let lapsing = cluster.open_session_key(1_000).await;
    let lapsed = acquire_granted(&client, lapsing, "t14/lapse", 0).await;

    let events = events_until(&mut stream, |event| event.kind() == WatchEventKind::Expired).await;
    assert!(events.iter().all(|event| event.revision > started_after));
    let seen: Vec<_> = events.iter().map(brief).collect();
    use WatchEventCause as C;
    use WatchEventKind as K;
    let s = |text: &str| text.to_string();
    assert_eq!(
        seen,
        vec![
            (K::Granted, s(lock), s(""), one.id, C::Unspecified),
            (K::Queued, s(lock), s(""), two.id, C::Unspecified),
            (K::Queued, s(lock), s(""), three.id, C::Unspecified),
            (K::Left, s(lock), s(""), three.id, C::Cancelled),
            (K::Put, s(lock), s("t14/k"), 0, C::Unspecified),
            (K::Deleted, s(lock), s("t14/k"), 0, C::Unspecified),
            (K::Released, s(lock), s(""), one.id, C::Released),
            (K::Granted, s(lock), s(""), two.id, C::Unspecified),
            (K::Granted, s("t14/r"), s(""), three.id, C::Unspecified),
            (K::Granted, s("t14/lapse"), s(""), lapsing.id, C::Unspecified),
            (K::Expired, s("t14/lapse"), s(""), lapsing.id, C::SessionExpired),
        ],
        "{events:#?}"
    );
    assert_eq!(events[0].token, first);
    assert_eq!(events[0].mode(), LockMode::Exclusive);
    assert_eq!((events[4].token, events[4].value.as_slice()), (first, &b"v1"[..]));
    assert_eq!(events[6].token, first, "a release names the token let go");
    assert_eq!(events[7].token, second);
    assert_eq!(
        events[6].revision, events[7].revision,
        "the release and the grant it made are one command"
    );
    assert_eq!((events[8].token, events[8].mode()), (shared, LockMode::Shared));
    assert_eq!(events[10].token, lapsed);
}

/// After a mix of commands, a watch from revision 1 on each node gives the
/// same events, and one from a revision in the middle gives their tail.
async fn check_every_node_gives_the_same_events_from_any_revision(engine: &str) {
    let cluster = Cluster::start(engine, 3).await;
    let client = cluster.any_client().await;
    let (one, two) = (cluster.session(30_000).await, cluster.session(30_000).await);
    for round in 0..5u64 {
        let lock = format!("t14/n{}", round % 2);
        let token = acquire_granted(&client, one.key, &lock, 0).await;
        put(
            &client,
            format!("t14/k{round}"),
            format!("v{round}"),
            fence(&lock, token),
            one.key,
        )
        .await
        .expect("Put");
        let waiter = {
            let client = client.clone();
            let key = two.key;
            let lock = lock.clone();
            tokio::spawn(async move { acquire(&client, key, &lock, 20_000).await })
        };
        wait_for_queue_length(&client, &lock, 1).await;
        release(&client, one.key, &lock, token).await.expect("Release");
        let next = waiter.await.unwrap().expect("granted").token;
        release(&client, two.key, &lock, next).await.expect("Release");
    }
    let last = acquire_granted(&client, one.key, "t14/end", 0).await;
    put(&client, "t14/end", "done", fence("t14/end", last), one.key)
        .await
        .expect("Put");

    let mut per_node = Vec::new();
    for index in 0..cluster.len() {
        let (mut stream, _) = open_watch(&cluster.client(index).await, "t14/", true, 1)
            .await
            .unwrap_or_else(|status| panic!("Watch from 1 on node {index}: {status:?}"));
        per_node.push(events_until(&mut stream, is_put_of("t14/end")).await);
    }
    assert!(per_node[0].len() >= 5 * 6, "{} events", per_node[0].len());
    for (index, events) in per_node.iter().enumerate().skip(1) {
        assert_eq!(
            events, &per_node[0],
            "node {index} gives other events than node 0"
        );
    }
    // From a revision in the middle, on another node: exactly the tail.
    let middle = per_node[0][per_node[0].len() / 2].revision;
    let (mut stream, after) = open_watch(&cluster.client(2).await, "t14/", true, middle)
        .await
        .expect("Watch from the middle");
    assert_eq!(after, middle - 1, "a watch from revision r starts after r - 1");
    let tail = events_until(&mut stream, is_put_of("t14/end")).await;
    let expected: Vec<WatchEvent> = per_node[0]
        .iter()
        .filter(|event| event.revision >= middle)
        .cloned()
        .collect();
    assert_eq!(tail, expected);
}

/// The Rust client's watch, served by the leader, resumes on another node
/// when the leader is killed mid-workload; what it returns equals, event
/// for event, a watch of the same revisions on a node that stayed up.
async fn check_the_client_watch_resumes_across_a_leader_kill_with_nothing_lost_or_repeated(engine: &str) {
    let cluster = Cluster::start(engine, 3).await;
    let leader = cluster.wait_for_leader().await;
    let watcher = Client::connect(cluster.urls_first(leader))
        .await
        .expect("connect");
    let mut watch = watcher.watch(WatchOptions::prefix("t14/")).await.expect("watch");
    let leader_addr = cluster.addr(leader).to_string();
    assert_eq!(watch.endpoint(), leader_addr, "the watch starts on the leader");

    let workload = {
        let client = Client::connect(cluster.urls()).await.expect("connect");
        tokio::spawn(async move {
            let session = client.session(Duration::from_secs(10)).await.expect("session");
            let mut done = 0u32;
            for round in 0..40u32 {
                let name = format!("t14/w{}", round % 3);
                let Ok(guard) = session.lock_timeout(&name, Duration::from_secs(5)).await else {
                    continue;
                };
                let Some(guard) = guard else { continue };
                if client
                    .put(&format!("t14/k{round}"), round.to_string(), &guard)
                    .await
                    .is_ok()
                {
                    done += 1;
                }
                let _ = guard.release().await;
            }
            done
        })
    };
    // Kill the leader once the watch has seen some of the workload.
    let mut seen = Vec::new();
    while seen.len() < 10 {
        seen.push(watch.next().await.expect("an event before the kill"));
    }
    cluster.kill(leader);
    let done = workload.await.expect("the workload ran");
    eprintln!("{done} of 40 writes went through");
    let survivor = (leader + 1) % cluster.len();
    let marker = {
        let client = cluster.client(cluster.wait_for_leader().await).await;
        let session = cluster.session(30_000).await;
        let token = acquire_granted(&client, session.key, "t14/end", 0).await;
        put(&client, "t14/end", "done", fence("t14/end", token), session.key)
            .await
            .expect("Put");
        token
    };
    loop {
        let event = tokio::time::timeout(EVENT_WAIT, watch.next())
            .await
            .expect("events keep coming after the kill")
            .expect("the watch resumes");
        let end = event.kind == EventKind::Put && event.key == "t14/end";
        seen.push(event);
        if end {
            break;
        }
    }
    assert_ne!(
        watch.endpoint(),
        leader_addr,
        "the watch moved off the killed leader"
    );
    let workload_puts = seen
        .iter()
        .filter(|event| event.kind == EventKind::Put && event.key.starts_with("t14/k"))
        .count();
    eprintln!("{} events, {workload_puts} of the workload's puts", seen.len());
    // At least every answered write is seen. A put whose answer was lost
    // is retried by the client and may then be written twice, at two
    // revisions: the same key may appear twice, but no event may. An event
    // is its revision and its place in it, and these only grow.
    assert!(
        workload_puts >= done as usize,
        "{workload_puts} puts seen, {done} answered"
    );
    for pair in seen.windows(2) {
        let (before, after) = (&pair[0], &pair[1]);
        assert!(
            (before.revision, before.index) < (after.revision, after.index),
            "no event is delivered twice or out of order: {}#{} then {}#{}",
            before.revision,
            before.index,
            after.revision,
            after.index
        );
    }
    assert!(seen
        .iter()
        .any(|event| event.token.map(|token| token.get()) == Some(marker)));

    let (mut stream, _) = open_watch(
        &cluster.client(survivor).await,
        "t14/",
        true,
        watch.started_after() + 1,
    )
    .await
    .expect("a reference watch on a node that stayed up");
    let reference = events_until(&mut stream, is_put_of("t14/end")).await;
    let resumed: Vec<(u64, String, String, u64, u64)> = seen
        .iter()
        .map(|event| {
            (
                event.revision,
                format!("{}/{}", event.kind.as_str(), event.cause.as_str()),
                format!("{}|{}", event.lock, event.key),
                event.session.map_or(0, |session| session.get()),
                event.token.map_or(0, |token| token.get()),
            )
        })
        .collect();
    let expected: Vec<(u64, String, String, u64, u64)> = reference
        .iter()
        .map(|event| {
            let kind = quorumlock_client_kind(event);
            (
                event.revision,
                kind,
                format!(
                    "{}|{}",
                    String::from_utf8_lossy(&event.lock),
                    String::from_utf8_lossy(&event.key)
                ),
                event.session_id,
                event.token,
            )
        })
        .collect();
    assert_eq!(
        resumed.len(),
        expected.len(),
        "events lost or repeated across the kill"
    );
    assert_eq!(resumed, expected);
}

/// The client's `kind/cause` text of a wire event.
fn quorumlock_client_kind(event: &WatchEvent) -> String {
    let kind = match event.kind() {
        WatchEventKind::Granted => "granted",
        WatchEventKind::Released => "released",
        WatchEventKind::Expired => "expired",
        WatchEventKind::Queued => "queued",
        WatchEventKind::Left => "left",
        WatchEventKind::Put => "put",
        WatchEventKind::Deleted => "deleted",
        WatchEventKind::Revoked => "revoked",
        WatchEventKind::LockDelayBegun => "lock-delay-begun",
        WatchEventKind::LockDelayEnded => "lock-delay-ended",
        WatchEventKind::Unspecified => "other",
    };
    let cause = match event.cause() {
        WatchEventCause::Unspecified => "",
        WatchEventCause::Released => "released",
        WatchEventCause::Cancelled => "cancelled",
        WatchEventCause::SessionClosed => "session-closed",
        WatchEventCause::SessionExpired => "session-expired",
        WatchEventCause::Forced => "forced",
        WatchEventCause::MaxHold => "max-hold",
    };
    format!("{kind}/{cause}")
}

/// With a history of 10 changes, a watch from revision 1 after many more
/// is OUT_OF_RANGE / REVISION_COMPACTED naming the oldest revision kept,
/// and a watch from that revision is served.
async fn check_a_revision_no_longer_kept_is_out_of_range_naming_the_oldest(engine: &str) {
    let cluster = Cluster::start_with_args(engine, 3, &["--watch-history", "10"]).await;
    let client = cluster.any_client().await;
    let session = cluster.session(30_000).await;
    let token = acquire_granted(&client, session.key, "t14/h", 0).await;
    for round in 0..30 {
        put(
            &client,
            format!("t14/h{round}"),
            "v",
            fence("t14/h", token),
            session.key,
        )
        .await
        .expect("Put");
    }
    // The leader answered every put after applying it, so its history
    // holds them all.
    let node = cluster.client(cluster.wait_for_leader().await).await;
    let refused = open_watch(&node, "", true, 1).await;
    let detail = expect_refusal(
        "Watch from revision 1",
        refused,
        Code::OutOfRange,
        ErrorReason::RevisionCompacted,
    );
    assert!(detail.limit > 1, "the oldest revision kept is named: {detail:?}");
    let (mut stream, after) = open_watch(&node, "", true, detail.limit)
        .await
        .expect("a watch from the oldest kept revision is served");
    assert_eq!(after, detail.limit - 1);
    let events = events_until(&mut stream, is_put_of("t14/h29")).await;
    assert!(
        events.len() <= 10,
        "at most the history's 10 changes: {}",
        events.len()
    );
    assert!(events[0].revision >= detail.limit);
}

/// A watcher that stops reading while the node applies far more than its
/// history keeps is ended, while its queue is full, with
/// RESOURCE_EXHAUSTED / WATCH_TOO_SLOW, which it reads after what was
/// queued; what it was sent is in order.
async fn check_a_watcher_that_does_not_read_is_cut_off_not_buffered(engine: &str) {
    let cluster = Cluster::start_with_args(engine, 3, &["--watch-history", "50"]).await;
    let client = cluster.any_client().await;
    let session = cluster.session(30_000).await;
    let token = acquire_granted(&client, session.key, "t14/slow", 0).await;
    let (mut stream, _) = open_watch(&cluster.client(0).await, "", true, 0)
        .await
        .expect("Watch");
    // 300 puts of 64 KiB: far more than the stream's flow-control window
    // (2 MiB) and the node's queue (16 messages of at most 256 KiB) hold,
    // and six times the history.
    let value = vec![b'x'; 64 << 10];
    for round in 0..300 {
        put(
            &client,
            format!("t14/s{round}"),
            &value,
            fence("t14/slow", token),
            session.key,
        )
        .await
        .expect("Put");
    }
    let mut received = 0usize;
    let mut last_revision = 0;
    let ended = loop {
        match tokio::time::timeout(EVENT_WAIT, stream.message()).await {
            Err(_) => panic!("the slow watcher was neither served nor cut off"),
            Ok(Ok(Some(message))) => {
                for event in &message.events {
                    assert!(event.revision > last_revision, "one put per revision, in order");
                    last_revision = event.revision;
                }
                received += message.events.len();
            }
            Ok(Ok(None)) => panic!("the stream ended without a status after {received} events"),
            Ok(Err(status)) => break status,
        }
    };
    assert!(
        received < 300,
        "a watcher that fell behind is not sent everything"
    );
    let detail = expect_refusal(
        "a watcher that fell behind",
        Err::<(), _>(ended),
        Code::ResourceExhausted,
        ErrorReason::WatchTooSlow,
    );
    assert!(
        detail.limit > last_revision + 1,
        "the oldest revision kept ({}) is past what it needed ({})",
        detail.limit,
        last_revision + 1
    );
}

/// An empty name without `prefix`, an unknown target and a name that is
/// not UTF-8 are INVALID_ARGUMENT naming the field.
async fn check_bad_watch_arguments_are_refused_precisely(engine: &str) {
    let cluster = Cluster::start(engine, 3).await;
    let client = cluster.any_client().await;
    let watch = |request: WatchRequest| {
        let mut client = client.clone();
        async move {
            call("Watch", RPC_TIMEOUT, client.watch(request))
                .await
                .map(|_| ())
        }
    };
    for (what, request, field) in [
        ("an empty name without prefix", WatchRequest::default(), "name"),
        (
            "a name that is not UTF-8",
            WatchRequest {
                name: vec![0xff, 0xfe],
                ..WatchRequest::default()
            },
            "name",
        ),
        (
            "a name too long",
            WatchRequest {
                name: vec![b'a'; 1_025],
                ..WatchRequest::default()
            },
            "name",
        ),
        (
            "an unknown target",
            WatchRequest {
                name: b"x".to_vec(),
                target: 9,
                ..WatchRequest::default()
            },
            "target",
        ),
    ] {
        let detail = expect_refusal(
            what,
            watch(request).await,
            Code::InvalidArgument,
            ErrorReason::InvalidArgument,
        );
        assert_eq!(detail.field, field, "{what}");
    }
}

/// A node restarted with a history of 5 changes refuses revision 1 with
/// REVISION_COMPACTED; the Rust client, pointed at it first, moves on to a
/// node that kept revision 1 and watches from there.
async fn check_the_client_watch_goes_to_a_node_that_keeps_the_revision(engine: &str) {
    let cluster = Cluster::start(engine, 3).await;
    let client = cluster.any_client().await;
    let session = cluster.session(30_000).await;
    let token = acquire_granted(&client, session.key, "t14/keep", 0).await;
    for round in 0..20 {
        put(
            &client,
            format!("t14/keep{round}"),
            "v",
            fence("t14/keep", token),
            session.key,
        )
        .await
        .expect("Put");
    }
    cluster.kill(0);
    cluster.start_node_with(0, &["--watch-history", "5"]);
    let short = wait_until("node 0 to keep only its last changes", CONDITION_WAIT, || async {
        let Ok(node) = connect(&cluster.url(0)).await else {
            return Err("node 0 is not up yet".to_string());
        };
        match open_watch(&LockClient::new(node), "", true, 1).await {
            Err(status) if status.code() == Code::OutOfRange => Ok(status),
            Err(status) => Err(format!("Watch from 1 on node 0: {status:?}")),
            Ok(_) => Err("node 0 still keeps revision 1".to_string()),
        }
    })
    .await;
    expect_refusal(
        "Watch from 1 on node 0",
        Err::<(), _>(short),
        Code::OutOfRange,
        ErrorReason::RevisionCompacted,
    );

    let endpoints: Vec<String> = (0..cluster.len()).map(|index| cluster.url(index)).collect();
    let watcher = Client::connect(&endpoints).await.expect("connect");
    assert_eq!(
        watcher.current_endpoint(),
        cluster.addr(0).to_string(),
        "node 0 is asked first"
    );
    let mut watch = watcher
        .watch(WatchOptions::prefix("t14/keep").from_revision(1))
        .await
        .expect("a node that keeps revision 1 serves the watch");
    assert_ne!(watch.endpoint(), cluster.addr(0).to_string());
    let first = watch.next().await.expect("the first event");
    assert_eq!(
        (first.kind, first.lock.as_str()),
        (EventKind::Granted, "t14/keep")
    );
    assert_eq!(first.token.map(|token| token.get()), Some(token));
}
