//! t52: every stop is clean.
//!
//! A node stopped with SIGTERM stops in a defined order — health says
//! NOT_SERVING, the server drains, the lease driver and the engine stop and
//! join every task and thread that touches storage, the database closes —
//! and exits 0. This stops leaders and followers of each engine, idle and
//! under a lock workload, 50 times per engine, and requires exit status 0
//! every time (an abort at exit, `pthread lock: Invalid argument` and status
//! 134, is what a database still in use while the process exits looks like),
//! then a clean reopen: the node starts on its data directory, rejoins and
//! catches up. At the end every node's state digest agrees.

mod common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use quorumlock_client::{Client, ClientConfig};

engine_tests!(check_fifty_stops_of_leaders_and_followers_exit_zero_and_reopen_cleanly);

/// Stops per engine.
const STOPS: usize = 50;
/// Longest time a node may take to exit after SIGTERM: the server's drain
/// grace and the engine's stop, with room for a loaded machine.
const EXIT_WAIT_MAX: Duration = Duration::from_secs(20);
/// Workers of the lock workload.
const WORKERS: usize = 3;

/// Acquire, write under the token, release, on its own lock, until told to
/// stop; failures (a node stopping under the call) are retried by the next
/// round. Counts the rounds that completed.
fn spawn_worker(
    urls: Vec<String>,
    worker: usize,
    stop: Arc<AtomicBool>,
    rounds: Arc<AtomicU64>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let config = ClientConfig {
            connect_wait_max: Duration::from_secs(30),
            ..ClientConfig::default()
        };
        let Ok(client) = Client::connect_with(urls, config).await else {
            return;
        };
        let lock = format!("t52/lock-{worker}");
        while !stop.load(Ordering::Relaxed) {
            let Ok(session) = client.session(Duration::from_secs(5)).await else {
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            };
            while !stop.load(Ordering::Relaxed) && !session.is_lost() {
                let Ok(Some(guard)) = session.lock_timeout(&lock, Duration::from_secs(1)).await else {
                    break;
                };
                if client
                    .put(&format!("t52/key-{worker}"), "value", &guard)
                    .await
                    .is_ok()
                {
                    rounds.fetch_add(1, Ordering::Relaxed);
                }
                let _ = guard.release().await;
            }
            let _ = session.close().await;
        }
    })
}

async fn check_fifty_stops_of_leaders_and_followers_exit_zero_and_reopen_cleanly(engine: &str) {
    let cluster = Cluster::start(engine, 3).await;
    let stop = Arc::new(AtomicBool::new(false));
    let rounds = Arc::new(AtomicU64::new(0));
    let mut workers = Vec::new();
    for stop_number in 0..STOPS {
        // The first half idle, the second under load; leaders and
        // followers alternate throughout.
        if stop_number == STOPS / 2 {
            for worker in 0..WORKERS {
                workers.push(spawn_worker(cluster.urls(), worker, stop.clone(), rounds.clone()));
            }
            wait_until("the workload makes progress", CONDITION_WAIT, || {
                let done = rounds.load(Ordering::Relaxed);
                async move {
                    if done > 0 {
                        Ok(())
                    } else {
                        Err("no round completed yet".to_string())
                    }
                }
            })
            .await;
        }
        let leader = cluster.wait_for_leader().await;
        let target = if stop_number % 2 == 0 {
            leader
        } else {
            cluster.follower_index().await
        };
        let role = if target == leader { "leader" } else { "follower" };
        let load = if workers.is_empty() { "idle" } else { "under load" };
        let status = cluster.terminate(target, EXIT_WAIT_MAX).await;
        assert!(
            status.success(),
            "stop {stop_number}: the {role} (node {}), {load}, exited with {status} after SIGTERM; its log:\n{}",
            cluster.node_id(target),
            cluster.log(target)
        );
        cluster.start_node(target);
        wait_for_rejoin(&cluster, target, stop_number).await;
    }
    stop.store(true, Ordering::Relaxed);
    for worker in workers {
        worker.await.expect("a worker panicked");
    }
    assert!(
        rounds.load(Ordering::Relaxed) > 0,
        "the workload completed no round while nodes stopped"
    );
    cluster
        .wait_for_one_state("every node applied the same state")
        .await;
    for index in 0..cluster.len() {
        let log = cluster.log(index);
        assert!(
            !log.contains("panicked"),
            "node {} panicked at some point; its log:\n{log}",
            cluster.node_id(index)
        );
    }
}

/// Waits until node `target` serves again on its data directory and has
/// applied everything the leader had committed when it came back.
async fn wait_for_rejoin(cluster: &Cluster, target: usize, stop_number: usize) {
    let leader = cluster.wait_for_leader().await;
    let committed = wait_until("the leader answers Status", CONDITION_WAIT, || async move {
        cluster
            .status(leader)
            .await
            .map(|status| status.commit_index)
            .map_err(|error| format!("{error:#}"))
    })
    .await;
    let what = format!(
        "stop {stop_number}: node {} rejoins and catches up",
        cluster.node_id(target)
    );
    wait_until(&what, CONDITION_WAIT, || async move {
        let status = cluster
            .status(target)
            .await
            .map_err(|error| format!("{error:#}"))?;
        if status.leader_id != 0 && status.applied_index >= committed {
            Ok(())
        } else {
            Err(format!(
                "leader {}, applied {} of {committed}",
                status.leader_id, status.applied_index
            ))
        }
    })
    .await;
}
