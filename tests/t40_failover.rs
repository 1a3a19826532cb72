//! t40: leader crash and failover.
//!
//! Proves that when the leader is killed with SIGKILL, the other two nodes
//! elect a new leader that still shows every held lock with the same holder
//! and token and every stored value, that sessions kept alive across the
//! failover survive it, that grants after the failover have tokens above
//! every token granted before it (no token goes backwards), that old tokens
//! stay fenced, and that the crashed node rejoins and agrees.

mod common;

use common::*;
use tonic::Code;

engine_tests!(
    check_leader_crash_preserves_locks_and_tokens,
    check_tokens_never_go_backwards_across_leader_changes,
);

/// Kill -9 the leader: locks, tokens, values and sessions survive, and new
/// grants continue above every earlier token.
async fn check_leader_crash_preserves_locks_and_tokens(engine: &str) {
    let cluster = Cluster::start(engine, 3).await;
    let old_leader = cluster.wait_for_leader().await;
    let client = cluster.client(old_leader).await;
    let first = cluster.session(20_000).await;
    let second = cluster.session(20_000).await;
    let third = cluster.session(20_000).await;
    let first_lock = "t40/first";
    let second_lock = "t40/second";
    let third_lock = "t40/third";
    let key = "t40/key";

    let first_token = acquire_granted(&client, first.key, first_lock, 0).await;
    let second_token = acquire_granted(&client, second.key, second_lock, 0).await;
    put(
        &client,
        key,
        "before the crash",
        fence(first_lock, first_token),
        first.key,
    )
    .await
    .expect("Put before the crash");
    let highest_before = first_token.max(second_token);

    cluster.kill(old_leader);
    let new_leader = cluster.wait_for_leader().await;
    assert_ne!(new_leader, old_leader, "a killed node cannot lead");
    let client = cluster.client(new_leader).await;

    let described = retry_unavailable("Describe after failover", || describe(&client, first_lock))
        .await
        .expect("Describe after failover");
    assert!(described.held, "the first lock is still held: {described:?}");
    assert_eq!(described.holder_session_id, first.id);
    assert_eq!(described.token, first_token, "the holder keeps its token");
    assert_held(&client, second_lock, second.id, second_token, 0).await;
    let read = get(&client, key).await.expect("Get after failover");
    assert_eq!(read.value, b"before the crash");
    assert_eq!(read.written_by, fence(first_lock, first_token));
    let checked = check_token(&client, first_lock, first_token)
        .await
        .expect("CheckToken after failover");
    assert!(checked.current, "the pre-crash token is still current");

    let third_token = retry_unavailable("Acquire after failover", || {
        acquire(&client, third.key, third_lock, 0)
    })
    .await
    .expect("Acquire after failover");
    assert!(third_token.acquired, "a free lock is granted: {third_token:?}");
    assert!(
        third_token.token > highest_before,
        "a grant after failover ({}) is above every earlier token ({highest_before})",
        third_token.token
    );

    // The pre-crash holder hands its lock over through the new leader.
    release(&client, first.key, first_lock, first_token)
        .await
        .expect("Release of a pre-crash grant");
    let regranted = acquire_granted(&client, third.key, first_lock, 0).await;
    assert!(regranted > third_token.token, "tokens keep increasing");
    let stale = put(&client, key, "stale", fence(first_lock, first_token), first.key).await;
    let status = expect_code(
        "Put with a pre-crash token after handover",
        stale,
        Code::FailedPrecondition,
    );
    assert_names_tokens("Put with a pre-crash token", &status, &[first_token, regranted]);

    // The crashed node rejoins and answers like the others.
    cluster.restart(old_leader);
    cluster.wait_for_leader().await;
    let rejoined = cluster.client(old_leader).await;
    let described = retry_unavailable("Describe on the rejoined node", || {
        describe(&rejoined, first_lock)
    })
    .await
    .expect("Describe on the rejoined node");
    assert_eq!(
        (described.held, described.holder_session_id, described.token),
        (true, third.id, regranted),
        "the rejoined node answers with the current holder and token"
    );
    assert_held(&rejoined, second_lock, second.id, second_token, 0).await;
    for session in [&first, &second, &third] {
        assert!(
            !session.keepalive_ended(),
            "session {} was lost during the failover",
            session.id
        );
    }
}

/// Over several rounds of "grant, kill the leader, restart it", every token
/// granted is above every token granted before, and held locks keep theirs.
async fn check_tokens_never_go_backwards_across_leader_changes(engine: &str) {
    const ROUNDS: usize = 3;
    const GRANTS_PER_ROUND: usize = 3;
    let cluster = Cluster::start(engine, 3).await;
    let session = cluster.session(20_000).await;
    let lock = "t40/monotonic";
    let mut highest = 0;
    let mut held: Vec<(String, u64)> = Vec::new();

    for round in 0..ROUNDS {
        let leader = cluster.wait_for_leader().await;
        let client = cluster.client(leader).await;
        for (held_lock, token) in &held {
            let described =
                retry_unavailable("Describe a held lock", || describe(&client, held_lock.as_str()))
                    .await
                    .expect("Describe a held lock");
            assert_eq!(
                (described.held, described.holder_session_id, described.token),
                (true, session.id, *token),
                "round {round}: {held_lock:?} keeps its holder and token"
            );
        }
        for grant in 0..GRANTS_PER_ROUND {
            let granted = retry_unavailable("Acquire", || acquire(&client, session.key, lock, 0))
                .await
                .expect("Acquire");
            assert!(granted.acquired, "round {round}: the lock is free");
            assert!(
                granted.token > highest,
                "round {round}, grant {grant}: token {} is not above {highest}",
                granted.token
            );
            highest = granted.token;
            release(&client, session.key, lock, granted.token)
                .await
                .expect("Release");
        }
        let held_lock = format!("t40/held-{round}");
        let token = acquire_granted(&client, session.key, &held_lock, 0).await;
        assert!(
            token > highest,
            "round {round}: held token {token} above {highest}"
        );
        highest = token;
        held.push((held_lock, token));

        cluster.kill(leader);
        let new_leader = cluster.wait_for_leader().await;
        assert_ne!(new_leader, leader);
        cluster.restart(leader);
    }

    cluster.wait_for_leader().await;
    let client = cluster.leader_client().await;
    let last = retry_unavailable("Acquire after the last failover", || {
        acquire(&client, session.key, lock, 0)
    })
    .await
    .expect("Acquire after the last failover");
    assert!(last.acquired);
    assert!(
        last.token > highest,
        "the last token {} is above every earlier one ({highest})",
        last.token
    );
    for (held_lock, token) in &held {
        assert_held(&client, held_lock, session.id, *token, 0).await;
    }
    assert!(!session.keepalive_ended(), "the session survived every failover");
}
