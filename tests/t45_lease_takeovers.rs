//! t45: leases across repeated leader changes (the etcd #9888 property).
//!
//! A new leader cannot know when a session last renewed, so it grants every
//! session a fresh budget; if that budget were always a full TTL, a dead
//! client's session could be kept alive for ever by leaders that each live
//! less than a TTL. Proves that a session that never renews is expired even
//! though every leader is killed well before one TTL has passed under it,
//! while a session whose client keeps renewing survives the same failovers.

mod common;

use std::time::{Duration, Instant};

use common::*;

engine_tests!(check_dead_session_expires_despite_leaders_shorter_than_its_ttl);

/// The dead session's TTL; every leader is killed well within it.
const TTL_MS: u64 = 20_000;
/// Leader changes after which the test gives up on the expiry.
const TAKEOVERS_MAX: usize = 10;

async fn check_dead_session_expires_despite_leaders_shorter_than_its_ttl(engine: &str) {
    let cluster = Cluster::start(engine, 3).await;
    let live = cluster.session(TTL_MS).await;
    let dead = cluster.open_session_key(TTL_MS).await;
    let client = cluster.leader_client().await;
    let dead_lock = "t45/dead";
    let live_lock = "t45/live";
    acquire_granted(&client, dead, dead_lock, 0).await;
    let live_token = acquire_granted(&client, live.key, live_lock, 0).await;

    let mut leader = cluster.wait_for_leader().await;
    let mut elected_at = Instant::now();
    for takeover in 1..=TAKEOVERS_MAX {
        cluster.kill(leader);
        let lived = elected_at.elapsed();
        assert!(
            lived < Duration::from_millis(TTL_MS / 2),
            "leader {} lived {lived:?}, too long for this test to mean anything",
            cluster.node_id(leader)
        );
        let killed = leader;
        leader = cluster.wait_for_leader().await;
        elected_at = Instant::now();
        cluster.restart(killed);

        let client = cluster.client(leader).await;
        let view = retry_unavailable("Describe after a takeover", || describe(&client, dead_lock))
            .await
            .expect("Describe after a takeover");
        if !view.held {
            // Expired: the live session kept its lock through every takeover.
            assert_held(&client, live_lock, live.id, live_token, 0).await;
            assert!(
                takeover >= 2,
                "the dead session expired after only {takeover} takeovers, sooner than its TTL allows"
            );
            return;
        }
        // Give the new leader a moment to record its takeover charge.
        tokio::time::sleep(Duration::from_millis(1_500)).await;
        let view = retry_unavailable("Describe before the next kill", || describe(&client, dead_lock))
            .await
            .expect("Describe before the next kill");
        if !view.held {
            assert_held(&client, live_lock, live.id, live_token, 0).await;
            return;
        }
    }
    panic!("a session that never renewed survived {TAKEOVERS_MAX} leader changes");
}
