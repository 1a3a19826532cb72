//! The Rust client against real clusters: sessions kept alive in the
//! background, blocking FIFO locks, try-locks and timed waits, guards that
//! release on drop, fenced writes refused for stale guards, failover to
//! another endpoint when the leader dies, and the lost-session signal.

mod common;

use std::future::Future;
use std::time::Duration;

use common::{wait_until, Cluster, CONDITION_WAIT};
use quorumlock_client::{Client, ClientConfig, ClientError, LockGuard, LockMode, LostReason, Refusal};
use tonic::Code;

/// A TTL long enough that keepalives on a loaded machine never miss it; no
/// test waits for it to pass.
const TTL: Duration = Duration::from_secs(10);
/// TTL of the session that rides out a leader kill: longer than failure
/// detection plus an election on a loaded machine, as a deployment's would.
const FAILOVER_TTL: Duration = Duration::from_secs(10);
/// Bound on anything a test awaits; a hang fails the test instead.
const STEP_MAX: Duration = Duration::from_secs(60);

async fn bounded<T>(what: &str, future: impl Future<Output = T>) -> T {
    tokio::time::timeout(STEP_MAX, future)
        .await
        .unwrap_or_else(|_| panic!("{what} did not finish within {STEP_MAX:?}"))
}

async fn client_of(cluster: &Cluster) -> Client {
    bounded("connect", Client::connect(cluster.urls()))
        .await
        .expect("connect to the cluster")
}

async fn lock(session: &quorumlock_client::Session, name: &str) -> LockGuard {
    bounded("lock", session.lock(name))
        .await
        .unwrap_or_else(|error| panic!("lock {name:?}: {error}"))
}

async fn check_lock_then_release_frees_the_lock(engine: &str) {
    let cluster = Cluster::start(engine, 3).await;
    let client = client_of(&cluster).await;
    let session = client.session(TTL).await.expect("open a session");
    let guard = lock(&session, "alpha").await;
    assert_eq!(guard.name(), "alpha");
    assert_eq!(guard.session_id(), session.id());
    let described = client.describe("alpha").await.expect("describe");
    let holder = described.holder.expect("the lock is held after lock()");
    assert_eq!((holder.session_id, holder.token), (session.id(), guard.token()));
    let released = guard.release().await.expect("release");
    assert_eq!(released.next, None, "nobody waited");
    let described = client.describe("alpha").await.expect("describe");
    assert_eq!(described.holder, None, "release frees the lock");
    let closed = session.close().await.expect("close");
    assert!(
        closed.is_empty(),
        "the session held nothing when closed: {closed:?}"
    );
}

async fn check_blocking_lock_is_granted_in_fifo_order_with_increasing_tokens(engine: &str) {
    let cluster = Cluster::start(engine, 3).await;
    let client = client_of(&cluster).await;
    let first = client.session(TTL).await.expect("open session 1");
    let second = client.session(TTL).await.expect("open session 2");
    let third = client.session(TTL).await.expect("open session 3");
    let held = lock(&first, "fifo").await;

    let second_wait = tokio::spawn(async move {
        let guard = second.lock("fifo").await;
        (second, guard)
    });
    wait_for_queue(&client, "fifo", 1).await;
    let third_wait = tokio::spawn(async move {
        let guard = third.lock("fifo").await;
        (third, guard)
    });
    wait_for_queue(&client, "fifo", 2).await;

    let first_token = held.token();
    held.release().await.expect("release by session 1");
    let (second, second_guard) = bounded("the second waiter's grant", second_wait).await.unwrap();
    let second_guard = second_guard.expect("the first waiter is granted");
    assert!(second_guard.token() > first_token, "tokens increase");
    assert!(!third_wait.is_finished(), "the later waiter is still queued");
    let second_token = second_guard.token();
    second_guard.release().await.expect("release by session 2");
    let (third, third_guard) = bounded("the third waiter's grant", third_wait).await.unwrap();
    let third_guard = third_guard.expect("the second waiter is granted next");
    assert!(third_guard.token() > second_token, "tokens increase");
    assert_eq!(third_guard.session_id(), third.id());
    drop(second);
}

async fn wait_for_queue(client: &Client, name: &str, length: u64) {
    wait_until(
        &format!("{length} waiters on {name:?}"),
        CONDITION_WAIT,
        || async {
            match client.describe(name).await {
                Ok(described) if described.queue_length == length => Ok(()),
                other => Err(format!("{other:?}")),
            }
        },
    )
    .await
}

async fn check_try_lock_and_timed_lock_are_refused_while_held(engine: &str) {
    let cluster = Cluster::start(engine, 3).await;
    let client = client_of(&cluster).await;
    let holder = client.session(TTL).await.expect("open the holder's session");
    let other = client.session(TTL).await.expect("open the other session");
    let guard = lock(&holder, "busy").await;

    let refused = other.try_lock("busy").await.expect("try_lock answers");
    assert!(
        refused.is_none(),
        "try_lock is refused while another session holds the lock"
    );

    let wait = Duration::from_millis(700);
    let started = std::time::Instant::now();
    let timed_out = other
        .lock_timeout("busy", wait)
        .await
        .expect("lock_timeout answers");
    assert!(
        timed_out.is_none(),
        "lock_timeout gives up while the lock stays held"
    );
    assert!(
        started.elapsed() >= wait,
        "lock_timeout returned after {:?}, before its {wait:?} wait",
        started.elapsed()
    );
    let described = client.describe("busy").await.expect("describe");
    assert_eq!(described.queue_length, 0, "a waiter that gave up left the queue");
    assert_eq!(described.holder.map(|holder| holder.token), Some(guard.token()));

    guard.release().await.expect("release");
    let granted = other.try_lock("busy").await.expect("try_lock answers");
    assert!(granted.is_some(), "try_lock succeeds once the lock is free");
}

async fn check_dropping_a_guard_releases_the_lock(engine: &str) {
    let cluster = Cluster::start(engine, 3).await;
    let client = client_of(&cluster).await;
    let session = client.session(TTL).await.expect("open a session");
    let guard = lock(&session, "dropped").await;
    let token = guard.token();
    drop(guard);
    wait_until("the dropped guard's lock to be free", CONDITION_WAIT, || async {
        match client.describe("dropped").await {
            Ok(described) if described.holder.is_none() => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    let again = lock(&session, "dropped").await;
    assert!(again.token() > token, "a new grant gets a new, larger token");
}

async fn check_a_stale_guard_is_refused_by_fenced_writes_and_its_session_reports_lost(engine: &str) {
    let cluster = Cluster::start(engine, 3).await;
    let client = client_of(&cluster).await;
    let first = client.session(TTL).await.expect("open session 1");
    let second = client.session(TTL).await.expect("open session 2");
    let old = lock(&first, "fenced").await;
    client
        .put("data", "v1", &old)
        .await
        .expect("the holder's write is accepted");

    // The cluster ends the first session behind its back; its keepalive
    // stream ends with NOT_FOUND and the client says so.
    client
        .close_session(first.key())
        .await
        .expect("close session 1 by its key");
    let reason = bounded("the lost signal", first.lost()).await;
    assert!(matches!(reason, LostReason::Ended { .. }), "{reason:?}");
    assert!(old.is_lost(), "the guard sees its session lost");

    let new = lock(&second, "fenced").await;
    assert!(new.token() > old.token());
    let refused = client.put("data", "v2 from the stale holder", &old).await;
    match refused {
        Err(error @ ClientError::Rpc { .. }) => {
            assert_eq!(error.code(), Some(Code::FailedPrecondition), "{error}");
            assert!(error.to_string().contains(&old.token().to_string()), "{error}");
        }
        other => panic!("a stale guard's write must be refused, got {other:?}"),
    }
    client
        .put("data", "v2", &new)
        .await
        .expect("the new holder's write");
    let entry = client.get("data").await.expect("get").expect("the key is set");
    assert_eq!(entry.value, b"v2");
    assert_eq!(entry.written_by, new.fence());
    let stale_delete = client.delete("data", &old).await;
    assert!(
        stale_delete
            .as_ref()
            .is_err_and(ClientError::is_failed_precondition),
        "a stale delete is refused: {stale_delete:?}"
    );
    assert!(
        client.delete("data", &new).await.expect("delete"),
        "the key existed"
    );
    assert_eq!(client.get("data").await.expect("get"), None);

    let check = client
        .check_token("fenced", old.token())
        .await
        .expect("check_token");
    assert!(!check.current);
    assert_eq!(check.current_token, Some(new.token()));
    let error = first
        .try_lock("other")
        .await
        .expect_err("a lost session cannot lock");
    assert!(matches!(error, ClientError::SessionLost { .. }), "{error}");
}

async fn check_the_client_keeps_working_through_another_endpoint_when_the_leader_dies(engine: &str) {
    let cluster = Cluster::start(engine, 3).await;
    let leader = cluster.wait_for_leader().await;
    // List the leader first so that the client is talking to it.
    let endpoints = cluster.urls_first(leader);
    let client = bounded("connect", Client::connect(&endpoints))
        .await
        .expect("connect");
    assert_eq!(client.current_endpoint(), cluster.addr(leader).to_string());
    let session = client.session(FAILOVER_TTL).await.expect("open a session");
    let guard = lock(&session, "failover").await;
    client
        .put("state", "before", &guard)
        .await
        .expect("write before failover");

    cluster.kill(leader);
    let killed_at = tokio::time::Instant::now();
    let new_leader = cluster.wait_for_leader().await;
    assert_ne!(new_leader, leader);

    // The same client, with no help, keeps serving through the survivors.
    client
        .put("state", "after", &guard)
        .await
        .expect("write after failover");
    assert_ne!(client.current_endpoint(), cluster.addr(leader).to_string());
    // Renewals confirmed by the dead leader carry the session to at most one
    // TTL after the kill; it is alive past that only if its keepalive moved
    // to a live node.
    tokio::select! {
        reason = session.lost() => panic!("the session was lost after failover: {reason}"),
        _ = tokio::time::sleep_until(killed_at + FAILOVER_TTL + Duration::from_secs(1)) => {}
    }
    let described = client.describe("failover").await.expect("describe");
    assert_eq!(
        described.holder.map(|holder| holder.session_id),
        Some(session.id())
    );
    let entry = client.get("state").await.expect("get").expect("the key is set");
    assert_eq!(entry.value, b"after");
    let token = guard.token();
    guard.release().await.expect("release after failover");
    let other = client
        .session(FAILOVER_TTL)
        .await
        .expect("open a session after failover");
    let next = lock(&other, "failover").await;
    assert!(next.token() > token, "tokens keep increasing across the failover");
}

/// A leader frozen by SIGSTOP keeps its connections open and answers
/// nothing, PINGs included. A lock wait queued on it and a release sent to
/// it both move to the new leader once a PING goes unanswered; without PINGs
/// each would stay there until its deadline (here ten minutes, and for the
/// wait an hour more), far past the bound on every step of this test.
async fn check_calls_to_a_frozen_leader_move_on_when_its_pings_go_unanswered(engine: &str) {
    let cluster = Cluster::start(engine, 3).await;
    let leader = cluster.wait_for_leader().await;
    let endpoints = cluster.urls_first(leader);
    let config = ClientConfig {
        rpc_timeout: Duration::from_secs(600),
        ping_interval: Some(Duration::from_millis(200)),
        ping_timeout: Duration::from_millis(500),
        ..ClientConfig::default()
    };
    let client = bounded("connect", Client::connect_with(&endpoints, config))
        .await
        .expect("connect");
    assert_eq!(client.current_endpoint(), cluster.addr(leader).to_string());
    let holder = client
        .session(FAILOVER_TTL)
        .await
        .expect("open the holder's session");
    let waiter = client
        .session(FAILOVER_TTL)
        .await
        .expect("open the waiter's session");
    let held = lock(&holder, "frozen").await;
    let token = held.token();
    let waiting = tokio::spawn(async move {
        let granted = waiter.lock("frozen").await;
        (waiter, granted)
    });
    wait_for_queue(&client, "frozen", 1).await;

    cluster.pause(leader);
    // The release starts on the frozen leader, as the waiter's acquire did.
    bounded("the release", held.release())
        .await
        .expect("the release reaches the new leader");
    assert_ne!(client.current_endpoint(), cluster.addr(leader).to_string());
    let (waiter, granted) = bounded("the waiter's grant", waiting)
        .await
        .expect("the waiting task");
    let granted = granted.expect("the waiter is granted the lock by the new leader");
    assert_eq!(granted.session_id(), waiter.id());
    assert!(granted.token() > token, "the grant has a newer token");
    cluster.resume(leader);
}

/// A follower forwards a call to the leader and names it in the answer's
/// `x-quorumlock-leader` metadata; the client then sends its next calls to
/// the leader directly, when the leader is one of its endpoints.
async fn check_a_forwarded_answer_names_the_leader_and_the_client_moves_to_it(engine: &str) {
    let cluster = Cluster::start(engine, 3).await;
    let leader = cluster.wait_for_leader().await;
    let follower = cluster.follower_index().await;

    let mut raw = cluster.client(follower).await;
    let opened = bounded(
        "open a session through a follower",
        raw.open_session(quorumlock_proto::v1::OpenSessionRequest { ttl_ms: 10_000 }),
    )
    .await
    .expect("a follower forwards OpenSession");
    let named = opened
        .metadata()
        .get("x-quorumlock-leader")
        .expect("a forwarded answer names the leader")
        .to_str()
        .expect("the leader's name is ASCII")
        .to_string();
    assert_eq!(
        named,
        format!("{}@{}", cluster.node_id(leader), cluster.addr(leader)),
        "the leader named is the cluster's leader"
    );

    // The follower first: the client starts there.
    let endpoints = vec![cluster.url(follower), cluster.url(leader)];
    let client = bounded("connect", Client::connect(&endpoints))
        .await
        .expect("connect");
    assert_eq!(client.current_endpoint(), cluster.addr(follower).to_string());
    let session = client.session(TTL).await.expect("open a session");
    assert_eq!(
        client.current_endpoint(),
        cluster.addr(leader).to_string(),
        "after a forwarded answer the client calls the leader"
    );
    let guard = lock(&session, "direct").await;
    guard.release().await.expect("release through the leader");
    assert_eq!(client.current_endpoint(), cluster.addr(leader).to_string());

    // An answer from the leader itself names nobody.
    let mut raw = cluster.client(leader).await;
    let opened = bounded(
        "open a session on the leader",
        raw.open_session(quorumlock_proto::v1::OpenSessionRequest { ttl_ms: 10_000 }),
    )
    .await
    .expect("the leader opens a session");
    assert!(opened.metadata().get("x-quorumlock-leader").is_none());
}

async fn check_the_session_is_lost_when_no_renewal_succeeds_within_the_ttl(engine: &str) {
    let cluster = Cluster::start(engine, 3).await;
    let client = client_of(&cluster).await;
    let ttl = Duration::from_secs(2);
    let session = client.session(ttl).await.expect("open a session");
    let guard = lock(&session, "doomed").await;
    let mut watch = guard.watch();
    assert_eq!(*watch.borrow(), None, "alive while renewed");
    cluster.stop_all();
    let reason = bounded("the lost signal", session.lost()).await;
    assert_eq!(reason, LostReason::NotRenewed { ttl });
    bounded("the watch to change", watch.changed())
        .await
        .expect("the sender is alive");
    assert_eq!(*watch.borrow(), Some(LostReason::NotRenewed { ttl }));
}

engine_tests!(
    check_lock_then_release_frees_the_lock,
    check_blocking_lock_is_granted_in_fifo_order_with_increasing_tokens,
    check_try_lock_and_timed_lock_are_refused_while_held,
    check_dropping_a_guard_releases_the_lock,
    check_a_stale_guard_is_refused_by_fenced_writes_and_its_session_reports_lost,
    check_the_client_keeps_working_through_another_endpoint_when_the_leader_dies,
    check_a_forwarded_answer_names_the_leader_and_the_client_moves_to_it,
    check_calls_to_a_frozen_leader_move_on_when_its_pings_go_unanswered,
    check_the_session_is_lost_when_no_renewal_succeeds_within_the_ttl,
    check_shared_guards_hold_together_read_under_their_token_and_never_write,
    check_semaphore_guards_take_permits_while_they_fit,
);

/// Permits of a semaphore through the client: granted while they fit,
/// described with their counts, refused for another limit with a typed
/// refusal, and returned by a guard's release to a waiting ask.
async fn check_semaphore_guards_take_permits_while_they_fit(engine: &str) {
    let cluster = Cluster::start(engine, 3).await;
    let client = client_of(&cluster).await;
    let (one, two) = (
        client.session(TTL).await.expect("open session 1"),
        client.session(TTL).await.expect("open session 2"),
    );
    let held = bounded("acquire_permits", one.acquire_permits("slots", 2, 3))
        .await
        .expect("2 of 3");
    assert_eq!((held.mode(), held.permits()), (LockMode::Semaphore, 2));
    assert!(two
        .try_acquire_permits("slots", 2, 3)
        .await
        .expect("a try")
        .is_none());
    let refusal = two
        .try_acquire_permits("slots", 1, 4)
        .await
        .expect_err("another limit");
    match refusal.refusal() {
        Some(Refusal::SemaphoreLimit { semaphore, limit }) => {
            assert_eq!((semaphore.as_str(), *limit), ("slots", 3))
        }
        other => panic!("another limit is a SemaphoreLimit refusal: {other:?} ({refusal})"),
    }
    let local = two
        .try_acquire_permits("slots", 0, 3)
        .await
        .expect_err("no permits");
    assert!(matches!(local, ClientError::InvalidArgument(_)), "{local}");
    let described = client.describe("slots").await.expect("describe");
    assert_eq!(described.mode, LockMode::Semaphore);
    assert_eq!(described.semaphore_limit, Some(3));
    assert_eq!(
        described
            .holders
            .iter()
            .map(|holder| holder.permits)
            .collect::<Vec<_>>(),
        vec![2]
    );
    let (granted, ()) = bounded(
        "a waiting ask",
        futures::future::join(two.acquire_permits_timeout("slots", 3, 3, STEP_MAX), async {
            wait_for_queue(&client, "slots", 1).await;
            held.release().await.expect("release the 2 permits");
        }),
    )
    .await;
    let granted = granted
        .expect("the wait")
        .expect("3 permits once the 2 came back");
    assert_eq!(granted.permits(), 3);
    assert!(matches!(
        client
            .put("slots/data", "x", &granted)
            .await
            .as_ref()
            .map_err(ClientError::refusal),
        Err(Some(Refusal::WrongMode { .. }))
    ));
}

/// Two sessions' shared guards hold one lock together with their own
/// tokens; a writer's try is refused; a shared guard reads under its token
/// and its write is refused as `WrongMode`; once it is released its reads
/// are refused and the writer's timed wait is granted.
async fn check_shared_guards_hold_together_read_under_their_token_and_never_write(engine: &str) {
    let cluster = Cluster::start(engine, 3).await;
    let client = client_of(&cluster).await;
    let (one, two, writer) = (
        client.session(TTL).await.expect("open session 1"),
        client.session(TTL).await.expect("open session 2"),
        client.session(TTL).await.expect("open session 3"),
    );
    let first = bounded("lock_shared", one.lock_shared("shelf"))
        .await
        .expect("first reader");
    let second = bounded("try_lock_shared", two.try_lock_shared("shelf"))
        .await
        .expect("second reader")
        .expect("readers share the lock");
    assert_eq!(
        (first.mode(), second.mode()),
        (LockMode::Shared, LockMode::Shared)
    );
    assert!(second.token() > first.token());
    let described = client.describe("shelf").await.expect("describe");
    assert_eq!(described.mode, LockMode::Shared);
    assert_eq!(described.holder, None, "no exclusive holder");
    assert_eq!(
        described
            .holders
            .iter()
            .map(|holder| holder.token)
            .collect::<Vec<_>>(),
        vec![first.token(), second.token()]
    );
    assert!(writer.try_lock("shelf").await.expect("a writer's try").is_none());

    assert_eq!(
        client.read("shelf/book", &first).await.expect("a fenced read"),
        None
    );
    let check = client
        .check_token_in("shelf", first.token(), LockMode::Shared)
        .await
        .expect("check_token_in");
    assert!(check.current);
    assert!(
        !client
            .check_token("shelf", first.token())
            .await
            .expect("check_token")
            .current
    );
    let refused = client.put("shelf/book", "scribble", &first).await;
    match refused.as_ref().map_err(ClientError::refusal) {
        Err(Some(Refusal::WrongMode { lock })) => assert_eq!(lock, "shelf"),
        other => panic!("a write under a shared guard must be refused as WrongMode: {other:?}"),
    }

    let kept = first.fence();
    let readers_leave = async {
        wait_for_queue(&client, "shelf", 1).await;
        first.release().await.expect("release the first reader");
        let stale = client.get_fenced("shelf/book", &kept).await;
        match stale.as_ref().map_err(ClientError::refusal) {
            Err(Some(Refusal::StaleToken { presented, .. })) => assert_eq!(*presented, kept.token),
            other => panic!("a released reader's read must be refused: {other:?}"),
        }
        second.release().await.expect("release the second reader");
    };
    let (granted, ()) = bounded(
        "the writer's wait",
        futures::future::join(writer.lock_timeout("shelf", STEP_MAX), readers_leave),
    )
    .await;
    let granted = granted
        .expect("the writer's wait")
        .expect("granted once the readers left");
    assert_eq!(granted.mode(), LockMode::Exclusive);
    client
        .put("shelf/book", "v1", &granted)
        .await
        .expect("the writer writes");
}

#[tokio::test]
async fn connecting_to_nothing_names_every_endpoint_tried_and_bad_endpoints_are_refused() {
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead_addr = dead.local_addr().unwrap().to_string();
    drop(dead);
    let config = ClientConfig {
        connect_wait_max: Duration::from_millis(300),
        ..ClientConfig::default()
    };
    let error = Client::connect_with([dead_addr.as_str()], config)
        .await
        .err()
        .expect("nothing listens there");
    let text = error.to_string();
    assert!(matches!(error, ClientError::NoEndpointAnswered { .. }), "{text}");
    assert!(
        text.contains(&dead_addr) && text.contains("UNAVAILABLE"),
        "{text}"
    );

    let error = Client::connect(["localhost"]).await.err().expect("no port");
    assert!(matches!(error, ClientError::InvalidEndpoint { .. }), "{error}");
    let error = Client::connect(Vec::<String>::new())
        .await
        .err()
        .expect("no endpoints");
    assert!(matches!(error, ClientError::NoEndpoints), "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_endpoint_in_the_list_is_skipped() {
    let cluster = Cluster::start("raft", 3).await;
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead_addr = dead.local_addr().unwrap().to_string();
    drop(dead);
    let client = bounded("connect", Client::connect([dead_addr.clone(), cluster.url(1)]))
        .await
        .expect("connect skips the dead endpoint");
    assert_eq!(client.current_endpoint(), cluster.addr(1).to_string());
    let status = client.status().await.expect("status");
    assert_eq!(status.node_id.get(), cluster.node_id(1));
    assert_eq!(status.members.len(), 3);
    let (_, ttl) = client.open_bare_session(TTL).await.expect("open");
    assert_eq!(ttl, TTL);
    let error = client
        .open_bare_session(Duration::from_millis(10))
        .await
        .expect_err("a TTL below the minimum is refused");
    assert!(matches!(error, ClientError::InvalidArgument(_)), "{error}");
}

/// The program in `examples/`, run here against a real cluster.
#[path = "../examples/fenced_counter.rs"]
mod fenced_counter;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_example_program_loses_no_increment_when_two_copies_run_at_once() {
    let cluster = Cluster::start("raft", 3).await;
    let client = client_of(&cluster).await;
    let increments = 5;
    let (first, second) = tokio::join!(
        bounded(
            "the first counter",
            fenced_counter::increment(&client, increments)
        ),
        bounded(
            "the second counter",
            fenced_counter::increment(&client, increments)
        ),
    );
    let (first, second) = (first.expect("first counter"), second.expect("second counter"));
    let mut written: Vec<u64> = first.into_iter().chain(second).collect();
    written.sort_unstable();
    let expected: Vec<u64> = (1..=u64::from(increments) * 2).collect();
    assert_eq!(written, expected, "every increment saw the one before it");
    let entry = client.get(fenced_counter::KEY).await.expect("get").expect("set");
    assert_eq!(entry.value, (increments * 2).to_string().as_bytes());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_session_never_gets_two_guards_for_one_lock_and_a_relock_after_drop_keeps_the_lock() {
    let cluster = Cluster::start("raft", 3).await;
    let client = client_of(&cluster).await;
    let session = client.session(TTL).await.expect("open a session");
    let guard = lock(&session, "once").await;
    let error = bounded("a second lock", session.lock("once"))
        .await
        .expect_err("a second lock of a held name is refused");
    assert!(
        matches!(&error, ClientError::AlreadyHeld { lock, session: id } if lock == "once" && *id == session.id()),
        "{error}"
    );
    let refused = bounded("a try_lock", session.try_lock("once")).await;
    assert!(
        matches!(refused, Err(ClientError::AlreadyHeld { .. })),
        "try_lock of a held name is refused too: {refused:?}"
    );

    // Dropping the guard releases in the background; locking again at once
    // waits for that release, so the new grant is a fresh one that no stray
    // release can free.
    let token = guard.token();
    drop(guard);
    let again = lock(&session, "once").await;
    assert!(
        again.token() > token,
        "the re-lock is a new grant ({} after {token}), not the old one handed back",
        again.token()
    );
    let described = client.describe("once").await.expect("describe");
    assert_eq!(
        described.holder.map(|holder| (holder.session_id, holder.token)),
        Some((session.id(), again.token())),
        "the new guard's lock stays held"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_acquire_abandoned_after_the_grant_does_not_leave_the_lock_held() {
    let cluster = Cluster::start("raft", 3).await;
    let client = client_of(&cluster).await;
    let holder = client.session(TTL).await.expect("open the holder's session");
    let waiter = client.session(TTL).await.expect("open the waiter's session");
    let held = lock(&holder, "abandoned").await;

    // The waiter's lock call is polled until it sits in the queue, then no
    // more: the grant that follows the release reaches a call nobody reads.
    let mut waiting = Box::pin(waiter.lock("abandoned"));
    tokio::select! {
        outcome = &mut waiting => panic!("granted while held: {:?}", outcome.map(|guard| guard.token())),
        _ = wait_for_queue(&client, "abandoned", 1) => {}
    }
    let released = held.release().await.expect("release by the holder");
    assert_eq!(
        released.next.map(|next| next.session_id),
        Some(waiter.id()),
        "the release grants the waiter"
    );
    drop(waiting);

    // The waiter's session stays open; only the abandoned call's cleanup
    // can free the lock.
    wait_until("the abandoned grant to be released", CONDITION_WAIT, || async {
        match client.describe("abandoned").await {
            Ok(described) if described.holder.is_none() => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    assert!(!waiter.is_lost());
    let again = lock(&waiter, "abandoned").await;
    assert_eq!(again.session_id(), waiter.id());
}
