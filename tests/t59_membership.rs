//! t59: changing membership through the real path, on both engines. On a
//! 3-process cluster that holds a lock and a fenced value, node 3 is killed
//! and its data directory deleted; node 4 starts with `serve --join` and an
//! empty directory, `quorumlock member add` makes it a learner, `member
//! promote` a voter once it caught up, and `member remove` drops node 3.
//! Then one more node is killed: the two survivors (one of them the new
//! node) still grant locks, and the held lock, its token and the fenced
//! value are intact. Changes that cannot apply are refused with
//! FAILED_PRECONDITION naming why (one change at a time, a learner that
//! never caught up, an id that is or was a member); a removed node, the
//! leader included, stops serving and names its removal while the others
//! serve on; a cluster grows to five and shrinks to three under lock
//! traffic; and a leader that crashes in the middle of a change (raft:
//! between the steps of joint consensus; paxos: after the stop-sign, with
//! the new configuration short of a quorum) leaves a change that the next
//! leader completes.

mod common;

use std::process::Stdio;
use std::time::Duration;

use common::pki::{exe, ids_with_role, run};
use common::{
    acquire_granted, assert_held, connect, fence, get, put, Cluster, KeepAlive, ELECTION_TIMEOUT_MS,
    HEARTBEAT_MS,
};
use quorumlock_client::{Client, ClientConfig};
use quorumlock_proto::v1::lock_client::LockClient;
use tokio::process::Command;

const TTL_MS: u64 = 30_000;
const LOCK: &str = "jobs/nightly";
const VALUE_KEY: &str = "jobs/nightly/state";

engine_tests!(
    check_a_dead_node_is_replaced_by_a_new_one_and_the_cluster_survives_one_more_loss,
    check_wrong_changes_are_refused_and_a_removed_node_stops_serving_and_its_id_is_never_reused,
    check_removing_the_leader_hands_the_cluster_to_the_remaining_voters_with_its_locks,
    check_a_cluster_grows_to_five_and_shrinks_to_three_without_the_leader_under_lock_traffic,
);

fn member_cli(args: &[&str], endpoints: &[String]) -> Command {
    let mut command = Command::new(exe());
    command
        .arg("member")
        .args(args)
        .args(["--endpoints", &endpoints.join(",")]);
    command
}

/// Waits until `client`'s node refuses Describe naming its removal; the
/// refusal.
async fn wait_for_removal_refusal(
    what: &str,
    client: &LockClient<tonic::transport::Channel>,
) -> tonic::Status {
    common::wait_until(what, common::CONDITION_WAIT, || async {
        match common::describe(client, LOCK).await {
            Err(status) if status.message().contains("was removed") => Ok(status),
            other => Err(format!("Describe answered {other:?}")),
        }
    })
    .await
}

/// A client of the first of `urls` whose node answers Describe.
async fn first_answering(urls: &[String]) -> LockClient<tonic::transport::Channel> {
    common::wait_until("a node that answers Describe", common::CONDITION_WAIT, || async {
        for url in urls {
            let Ok(channel) = connect(url).await else { continue };
            let client = LockClient::new(channel);
            if common::describe(&client, LOCK).await.is_ok() {
                return Ok(client);
            }
        }
        Err("no remaining voter answers Describe".to_string())
    })
    .await
}

/// Starts node `id` with `serve --join join` and an empty data directory
/// under `dir`; returns the process and its address.
fn serve_joining(
    engine: &str,
    id: u64,
    dir: &std::path::Path,
    join: &str,
) -> (tokio::process::Child, String) {
    let port = quorumlock_testkit::cluster::free_ports(1).unwrap()[0];
    let addr = format!("127.0.0.1:{port}");
    let log = std::fs::File::create(dir.join(format!("node-{id}.log"))).unwrap();
    let child = Command::new(exe())
        .args(["serve", "--id", &id.to_string(), "--listen", &addr])
        .args(["--join", join])
        .arg("--data-dir")
        .arg(dir.join(format!("node-{id}")))
        .args(["--engine", engine])
        .args(["--heartbeat-ms", &HEARTBEAT_MS.to_string()])
        .args(["--election-timeout-ms", &ELECTION_TIMEOUT_MS.to_string()])
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    (child, addr)
}

async fn check_a_dead_node_is_replaced_by_a_new_one_and_the_cluster_survives_one_more_loss(engine: &str) {
    let cluster = Cluster::start(engine, 3).await;
    let holder_key = cluster.open_session_key(TTL_MS).await;
    let client = cluster.leader_client().await;
    let token = acquire_granted(&client, holder_key, LOCK, 0).await;
    put(&client, VALUE_KEY, "running", fence(LOCK, token), holder_key)
        .await
        .unwrap();
    let mut holder = KeepAlive::spawn(cluster.urls(), holder_key, TTL_MS);

    // Node 3 dies with its disk.
    cluster.kill(2);
    std::fs::remove_dir_all(cluster.data_dir(2)).unwrap();

    // Node 4 joins with an empty data directory.
    let dir = tempfile::tempdir().unwrap();
    let (mut node4, addr) = serve_joining(engine, 4, dir.path(), &cluster.addr(0).to_string());
    let survivors = vec![cluster.url(0), cluster.url(1)];

    let (added, output) = run(&mut member_cli(
        &["add", "--id", "4", "--addr", &addr],
        &survivors,
    ))
    .await;
    assert!(added, "member add failed: {output}");
    assert_eq!(ids_with_role(&output, "learner"), vec![4], "{output}");

    // Refusals name what is wrong and change nothing.
    for (args, why) in [
        (
            vec!["add", "--id", "2", "--addr", "127.0.0.1:1"],
            "already a member",
        ),
        (vec!["promote", "--id", "9"], "not a learner"),
        (vec!["remove", "--id", "9"], "not a member"),
        (vec!["add", "--id", "5", "--addr", "no-port"], "HOST:PORT"),
    ] {
        let (accepted, output) = run(&mut member_cli(&args, &survivors)).await;
        assert!(!accepted, "{args:?} was accepted: {output}");
        assert!(
            output.contains(why),
            "{args:?} refused without naming {why:?}: {output}"
        );
    }

    // Promote once node 4 caught up (a lagging learner is refused).
    let config = ClientConfig {
        connect_wait_max: Duration::from_secs(10),
        ..ClientConfig::default()
    };
    let admin = Client::connect_with(survivors.clone(), config).await.unwrap();
    common::wait_until("node 4 to catch up", common::CONDITION_WAIT, || async {
        let listed = admin.list_members().await.map_err(|error| error.to_string())?;
        match listed.members.iter().find(|member| member.id == 4) {
            Some(member) if member.matched_index > 0 && member.lag <= 1_000 => Ok(()),
            other => Err(format!("node 4 is {other:?}")),
        }
    })
    .await;
    let (promoted, output) = run(&mut member_cli(&["promote", "--id", "4"], &survivors)).await;
    assert!(promoted, "member promote failed: {output}");
    let (removed, output) = run(&mut member_cli(&["remove", "--id", "3"], &survivors)).await;
    assert!(removed, "member remove failed: {output}");
    let voters = ids_with_role(&output, "voter");
    assert_eq!(voters, vec![1, 2, 4], "{output}");
    assert!(ids_with_role(&output, "learner").is_empty(), "{output}");

    // The new node serves, and one more loss is survived.
    let node4_url = format!("http://{addr}");
    let (listed, output) = run(&mut member_cli(&["list"], std::slice::from_ref(&node4_url))).await;
    assert!(listed, "member list through node 4 failed: {output}");
    holder.stop().await;
    cluster.kill(0);
    let remaining = vec![cluster.url(1), node4_url.clone()];
    holder = KeepAlive::spawn(remaining.clone(), holder_key, TTL_MS);
    let client = common::wait_until("a leader among nodes 2 and 4", common::CONDITION_WAIT, || async {
        for url in &remaining {
            let Ok(channel) = connect(url).await else { continue };
            let client = LockClient::new(channel);
            if common::describe(&client, LOCK).await.is_ok() {
                return Ok(client);
            }
        }
        Err("neither answers Describe".to_string())
    })
    .await;
    assert_held(&client, LOCK, holder_key.id, token, 0).await;
    let value = get(&client, VALUE_KEY).await.unwrap();
    assert_eq!(value.value, b"running");
    let newcomer = common::retry_unavailable("OpenSession", || common::open_session(&client, TTL_MS))
        .await
        .unwrap();
    let fresh = acquire_granted(&client, common::Key::of(&newcomer), "jobs/other", 0).await;
    assert!(fresh > token, "token {fresh} after {token}");
    put(&client, VALUE_KEY, "still mine", fence(LOCK, token), holder_key)
        .await
        .expect("the holder writes under its lock after the change");
    holder.stop().await;
    node4.kill().await.unwrap();
}

/// The reply of `member promote --id 9` (no such node) sent to the
/// cluster: refused either as "not a learner" or, while another change
/// runs, as "in progress" before the id is even looked at.
async fn probe_change_in_progress(endpoints: &[String]) -> Result<(), String> {
    let (accepted, output) = run(&mut member_cli(&["promote", "--id", "9"], endpoints)).await;
    assert!(!accepted, "node 9 was promoted: {output}");
    match output.contains("in progress") {
        true => Ok(()),
        false => Err(output),
    }
}

/// Refusals, removed learners and voters. Only raft can hold a change in
/// progress on a live leader (its joint configuration waits for a quorum
/// of the new voters); a paxos stop-sign is decided by the configuration it
/// ends, so its one-at-a-time refusal is checked in the core's tests.
async fn check_wrong_changes_are_refused_and_a_removed_node_stops_serving_and_its_id_is_never_reused(
    engine: &str,
) {
    let cluster = Cluster::start(engine, 3).await;
    let leader = cluster.wait_for_leader().await;
    let followers: Vec<usize> = (0..3).filter(|index| *index != leader).collect();
    let (leaving, witness) = (followers[0], followers[1]);
    let urls = cluster.urls();

    // A learner that never answers is not promoted; a removed learner's id
    // is not taken again.
    let silent = quorumlock_testkit::cluster::free_ports(1).unwrap()[0];
    let silent_addr = format!("127.0.0.1:{silent}");
    let (added, output) = run(&mut member_cli(
        &["add", "--id", "5", "--addr", &silent_addr],
        &urls,
    ))
    .await;
    assert!(added, "member add failed: {output}");
    let (promoted, output) = run(&mut member_cli(&["promote", "--id", "5"], &urls)).await;
    assert!(!promoted, "a learner that never answered was promoted: {output}");
    assert!(output.contains("has not acknowledged any entry"), "{output}");
    let (removed, output) = run(&mut member_cli(&["remove", "--id", "5"], &urls)).await;
    assert!(removed, "member remove of a learner failed: {output}");
    let (readded, output) = run(&mut member_cli(
        &["add", "--id", "5", "--addr", &silent_addr],
        &urls,
    ))
    .await;
    assert!(!readded, "a removed id was added again: {output}");
    assert!(output.contains("never reused"), "{output}");

    // A learner that runs hears of its removal from the leader (it sends
    // no peer messages that a member could refuse) and stops serving.
    let dir = tempfile::tempdir().unwrap();
    let (_node6, addr6) = serve_joining(engine, 6, dir.path(), &cluster.addr(leader).to_string());
    let (added, output) = run(&mut member_cli(&["add", "--id", "6", "--addr", &addr6], &urls)).await;
    assert!(added, "member add of node 6 failed: {output}");
    let (removed, output) = run(&mut member_cli(&["remove", "--id", "6"], &urls)).await;
    assert!(removed, "member remove of node 6 failed: {output}");
    let learner = common::wait_until("node 6 to serve", common::CONDITION_WAIT, || async {
        connect(&format!("http://{addr6}"))
            .await
            .map(LockClient::new)
            .map_err(|error| error.to_string())
    })
    .await;
    wait_for_removal_refusal("the removed learner to refuse", &learner).await;

    let leaving_id = cluster.node_id(leaving);
    let admin = Client::connect(urls.clone()).await.unwrap();
    if engine == "raft" {
        // With the witness down, removing a follower cannot commit (the new
        // configuration needs the witness): it is in progress, and a second
        // change is refused rather than queued.
        cluster.kill(witness);
        let removal = tokio::spawn({
            let admin = admin.clone();
            async move { admin.remove_member(leaving_id).await }
        });
        common::wait_until("the removal to be in progress", common::CONDITION_WAIT, || {
            probe_change_in_progress(&urls)
        })
        .await;
        cluster.start_node(witness);
        // The call may give up at the server's 30 s bound on a slow machine
        // while the change still completes: the members are read afresh.
        let _ = removal.await.unwrap();
    } else {
        admin
            .remove_member(leaving_id)
            .await
            .expect("removing a follower");
    }
    let members = common::wait_until("the removal to complete", common::CONDITION_WAIT, || async {
        let listed = admin.list_members().await.map_err(|error| error.to_string())?;
        match listed.joint || listed.members.iter().any(|member| member.id == leaving_id) {
            true => Err(format!("members are {listed:?}")),
            false => Ok(listed),
        }
    })
    .await;
    let mut voters: Vec<u64> = members
        .members
        .iter()
        .filter(|member| member.voter)
        .map(|member| member.id)
        .collect();
    voters.sort_unstable();
    let mut expected = vec![cluster.node_id(leader), cluster.node_id(witness)];
    expected.sort_unstable();
    assert_eq!(voters, expected);

    // The removed node, still running, learns it was removed and refuses
    // the API, naming the removal; the others serve on.
    let client = cluster.client(leaving).await;
    let refusal = wait_for_removal_refusal("the removed node to refuse", &client).await;
    assert_eq!(refusal.code(), tonic::Code::Unavailable, "{refusal:?}");
    let health = tonic_health::pb::health_client::HealthClient::new(cluster.channel(leaving).await);
    common::wait_until(
        "the removed node's lock API health",
        common::CONDITION_WAIT,
        || {
            let mut health = health.clone();
            async move {
                let answer = health
                    .check(tonic_health::pb::HealthCheckRequest {
                        service: "quorumlock.v1.Lock".to_string(),
                    })
                    .await
                    .map_err(|status| status.to_string())?
                    .into_inner();
                match answer.status() {
                    tonic_health::pb::health_check_response::ServingStatus::NotServing => Ok(()),
                    other => Err(format!("health is {other:?}")),
                }
            }
        },
    )
    .await;
    let (listed, output) = run(&mut member_cli(&["list"], &[cluster.url(leaving)])).await;
    assert!(!listed && output.contains("was removed"), "{output}");
    let (readded, output) = run(&mut member_cli(
        &[
            "add",
            "--id",
            &leaving_id.to_string(),
            "--addr",
            &cluster.addr(leaving).to_string(),
        ],
        &[cluster.url(leader)],
    ))
    .await;
    assert!(!readded && output.contains("never reused"), "{output}");
    let serving = cluster.client(leader).await;
    let opened = common::retry_unavailable("OpenSession", || common::open_session(&serving, TTL_MS))
        .await
        .unwrap();
    acquire_granted(&serving, common::Key::of(&opened), LOCK, 0).await;
}

async fn check_removing_the_leader_hands_the_cluster_to_the_remaining_voters_with_its_locks(engine: &str) {
    let cluster = Cluster::start(engine, 3).await;
    let holder_key = cluster.open_session_key(TTL_MS).await;
    let client = cluster.leader_client().await;
    let token = acquire_granted(&client, holder_key, LOCK, 0).await;
    let leader = cluster.wait_for_leader().await;
    let leader_id = cluster.node_id(leader);

    let (removed, output) = run(&mut member_cli(
        &["remove", "--id", &leader_id.to_string()],
        &cluster.urls(),
    ))
    .await;
    assert!(removed, "removing the leader failed: {output}");
    let voters = ids_with_role(&output, "voter");
    let mut expected: Vec<u64> = (0..3)
        .filter(|index| *index != leader)
        .map(|index| cluster.node_id(index))
        .collect();
    expected.sort_unstable();
    assert_eq!(voters, expected, "{output}");

    // The old leader refuses the API, naming its removal; the other two
    // elect a leader among themselves that still knows the holder.
    let old = cluster.client(leader).await;
    wait_for_removal_refusal("the old leader to refuse", &old).await;
    let remaining: Vec<usize> = (0..3).filter(|index| *index != leader).collect();
    let serving = common::wait_until(
        "a leader among the remaining voters",
        common::CONDITION_WAIT,
        || async {
            for &index in &remaining {
                let client = cluster.client(index).await;
                if let Ok(opened) = common::open_session(&client, TTL_MS).await {
                    return Ok((client, opened));
                }
            }
            Err("no remaining voter opens a session".to_string())
        },
    )
    .await;
    let (serving, opened) = serving;
    assert_held(&serving, LOCK, holder_key.id, token, 0).await;
    let fresh = acquire_granted(&serving, common::Key::of(&opened), "jobs/other", 0).await;
    assert!(fresh > token, "token {fresh} after {token}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_interrupted_by_the_leaders_crash_is_completed_and_a_later_change_works() {
    let cluster = Cluster::start("raft", 3).await;
    let holder_key = cluster.open_session_key(TTL_MS).await;
    let client = cluster.leader_client().await;
    let token = acquire_granted(&client, holder_key, LOCK, 0).await;
    let mut holder = KeepAlive::spawn(cluster.urls(), holder_key, TTL_MS);
    let leader = cluster.wait_for_leader().await;
    let followers: Vec<usize> = (0..3).filter(|index| *index != leader).collect();
    let (leaving, witness) = (followers[0], followers[1]);
    let urls = cluster.urls();

    // With the witness down, removing a follower stops in its joint
    // configuration (the new voters, leader and witness, lack a quorum).
    cluster.kill(witness);
    let admin = Client::connect(urls.clone()).await.unwrap();
    let leaving_id = cluster.node_id(leaving);
    let removal = tokio::spawn({
        let admin = admin.clone();
        async move { admin.remove_member(leaving_id).await }
    });
    common::wait_until("the joint configuration", common::CONDITION_WAIT, || async {
        let listed = admin.list_members().await.map_err(|error| error.to_string())?;
        match listed.joint {
            true => Ok(()),
            false => Err(format!("not joint yet: {listed:?}")),
        }
    })
    .await;
    let (listed, output) = run(&mut member_cli(&["list"], &urls)).await;
    assert!(listed && output.contains("between its steps"), "{output}");

    // The leader crashes between the steps; everyone comes back.
    cluster.kill(leader);
    removal.abort();
    cluster.start_node(witness);
    cluster.start_node(leader);

    // Whoever leads now completes the change: the leaving node is retired.
    let expected = {
        let mut ids = vec![cluster.node_id(leader), cluster.node_id(witness)];
        ids.sort_unstable();
        ids
    };
    common::wait_until(
        "the interrupted change to complete",
        common::CONDITION_WAIT,
        || async {
            let listed = admin.list_members().await.map_err(|error| error.to_string())?;
            let mut voters: Vec<u64> = listed.members.iter().filter(|m| m.voter).map(|m| m.id).collect();
            voters.sort_unstable();
            match (listed.joint, voters == expected) {
                (false, true) => Ok(()),
                _ => Err(format!("members are {listed:?}")),
            }
        },
    )
    .await;

    // The node logs once openraft answers its change, which can come just
    // after the new configuration is visible to a member list.
    common::wait_until(
        "a node to log that it completed the change",
        common::CONDITION_WAIT,
        || async {
            match (0..3).any(|index| {
                cluster
                    .log(index)
                    .contains("completed the interrupted membership change")
            }) {
                true => Ok(()),
                false => Err(format!(
                    "no node says it completed the change: {}",
                    cluster.log_tails()
                )),
            }
        },
    )
    .await;

    // A later change works, and the lock is still held with its token.
    let silent = quorumlock_testkit::cluster::free_ports(1).unwrap()[0];
    admin
        .add_member(7, &format!("127.0.0.1:{silent}"))
        .await
        .expect("a change after the completed one");
    admin.remove_member(7).await.expect("removing the learner again");
    let serving = [leader, witness]
        .into_iter()
        .map(|index| cluster.url(index))
        .collect::<Vec<_>>();
    holder.stop().await;
    holder = KeepAlive::spawn(serving.clone(), holder_key, TTL_MS);
    let client = first_answering(&serving).await;
    assert_held(&client, LOCK, holder_key.id, token, 0).await;
    holder.stop().await;
}

/// What the workers of the grow-and-shrink test saw.
#[derive(Default)]
struct Observed {
    /// Every token granted, by lock.
    grants: std::collections::BTreeMap<String, Vec<u64>>,
    /// Rounds in which the holder's fenced write and the read after it
    /// both answered.
    checked_rounds: u64,
    /// Calls that failed in passing (a leader change, a removed node).
    transient_errors: u64,
}

/// One worker: take a lock, write under it, read the write back, release,
/// until `stop`; every read must show this holder's own write.
async fn lock_worker(
    endpoints: Vec<String>,
    worker: usize,
    stop: tokio::sync::watch::Receiver<bool>,
    observed: std::sync::Arc<parking_lot::Mutex<Observed>>,
) {
    let client = Client::connect(endpoints).await.unwrap();
    let session = client.session(Duration::from_millis(TTL_MS)).await.unwrap();
    let mut round = 0usize;
    while !*stop.borrow() {
        round += 1;
        let lock = format!("grow/{}", (worker + round) % 2);
        let guard = match session.lock_timeout(&lock, Duration::from_secs(5)).await {
            Ok(Some(guard)) => guard,
            Ok(None) | Err(_) => {
                observed.lock().transient_errors += 1;
                continue;
            }
        };
        let token = guard.token().get();
        observed
            .lock()
            .grants
            .entry(lock.clone())
            .or_default()
            .push(token);
        let key = format!("{lock}/value");
        let written = client.put(&key, token.to_string(), &guard).await;
        let read = client.get(&key).await;
        match (written, read) {
            (Ok(()), Ok(Some(entry))) => {
                assert_eq!(
                    (entry.value, entry.written_by.token.get()),
                    (token.to_string().into_bytes(), token),
                    "the holder of {lock} with token {token} read another write"
                );
                observed.lock().checked_rounds += 1;
            }
            (written, read) => {
                assert!(
                    !matches!(read, Ok(None)),
                    "{lock}'s value vanished (write: {written:?})"
                );
                observed.lock().transient_errors += 1;
            }
        }
        if guard.release().await.is_err() {
            observed.lock().transient_errors += 1;
        }
    }
    assert!(
        session.lost_reason().is_none(),
        "worker {worker} lost its session"
    );
}

async fn check_a_cluster_grows_to_five_and_shrinks_to_three_without_the_leader_under_lock_traffic(
    engine: &str,
) {
    let cluster = Cluster::start(engine, 3).await;
    let dir = tempfile::tempdir().unwrap();
    let join = cluster.addr(0).to_string();
    let (_node4, addr4) = serve_joining(engine, 4, dir.path(), &join);
    let (_node5, addr5) = serve_joining(engine, 5, dir.path(), &join);
    let mut endpoints = cluster.urls();
    endpoints.extend([format!("http://{addr4}"), format!("http://{addr5}")]);

    let (stop, stopped) = tokio::sync::watch::channel(false);
    let observed = std::sync::Arc::new(parking_lot::Mutex::new(Observed::default()));
    let workers: Vec<_> = (0..3)
        .map(|worker| {
            tokio::spawn(lock_worker(
                endpoints.clone(),
                worker,
                stopped.clone(),
                observed.clone(),
            ))
        })
        .collect();
    let rounds_at_least = |floor: u64| {
        let observed = observed.clone();
        async move {
            common::wait_until("the workers to make progress", common::CONDITION_WAIT, || {
                let rounds = observed.lock().checked_rounds;
                async move {
                    match rounds >= floor {
                        true => Ok(()),
                        false => Err(format!("{rounds} rounds")),
                    }
                }
            })
            .await
        }
    };
    rounds_at_least(10).await;

    let admin = Client::connect(endpoints.clone()).await.unwrap();
    for (id, addr) in [(4, &addr4), (5, &addr5)] {
        admin.add_member(id, addr).await.unwrap();
        common::wait_until("the learner to catch up", common::CONDITION_WAIT, || async {
            let listed = admin.list_members().await.map_err(|error| error.to_string())?;
            match listed.members.iter().find(|member| member.id == id) {
                Some(member) if member.matched_index > 0 && member.lag <= 1_000 => Ok(()),
                other => Err(format!("node {id} is {other:?}")),
            }
        })
        .await;
        admin.promote_member(id).await.unwrap();
        let done = observed.lock().checked_rounds;
        rounds_at_least(done + 5).await;
    }
    let voters = |members: &[quorumlock_proto::v1::MemberStatus]| {
        let mut ids: Vec<u64> = members.iter().filter(|m| m.voter).map(|m| m.id).collect();
        ids.sort_unstable();
        ids
    };
    assert_eq!(
        voters(&admin.list_members().await.unwrap().members),
        vec![1, 2, 3, 4, 5]
    );

    // Shrink: the leader first, then another of the first three.
    // (Any of the five may lead now; the first three say which.)
    let leader_id = common::wait_until("a known leader", common::CONDITION_WAIT, || async {
        for index in 0..3 {
            if let Ok(status) = cluster.status(index).await {
                if status.leader_id != 0 {
                    return Ok(status.leader_id);
                }
            }
        }
        Err("no node names a leader".to_string())
    })
    .await;
    let other_id = [1, 2, 3].into_iter().find(|id| *id != leader_id).unwrap();
    for id in [leader_id, other_id] {
        admin.remove_member(id).await.unwrap();
        let done = observed.lock().checked_rounds;
        rounds_at_least(done + 5).await;
    }
    let expected: Vec<u64> = (1..=5).filter(|id| *id != leader_id && *id != other_id).collect();
    assert_eq!(voters(&admin.list_members().await.unwrap().members), expected);

    stop.send_replace(true);
    for worker in workers {
        worker.await.expect("a worker failed");
    }
    let observed = observed.lock();
    for (lock, tokens) in &observed.grants {
        let mut sorted = tokens.clone();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(
            sorted.len(),
            tokens.len(),
            "a token of {lock} was granted twice: {tokens:?}"
        );
    }
    eprintln!(
        "{} checked rounds, {} transient errors, grants {:?}",
        observed.checked_rounds,
        observed.transient_errors,
        observed.grants.values().map(Vec::len).collect::<Vec<_>>()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paxos_leader_that_crashes_after_the_stop_sign_leaves_a_change_the_next_leader_completes() {
    let cluster = Cluster::start("paxos", 3).await;
    let holder_key = cluster.open_session_key(TTL_MS).await;
    let client = cluster.leader_client().await;
    let token = acquire_granted(&client, holder_key, LOCK, 0).await;
    put(&client, VALUE_KEY, "running", fence(LOCK, token), holder_key)
        .await
        .unwrap();
    let holder = KeepAlive::spawn(cluster.urls(), holder_key, TTL_MS);
    let leader = cluster.wait_for_leader().await;
    let followers: Vec<usize> = (0..3).filter(|index| *index != leader).collect();
    let (leaving, witness) = (followers[0], followers[1]);
    let urls = cluster.urls();

    // With the witness down, the leader and the leaving node still decide
    // the stop-sign (the configuration it ends has all three), but the new
    // configuration — the leader and the witness — has no quorum: the
    // change is chosen and nothing after it can be.
    cluster.kill(witness);
    let admin = Client::connect(urls.clone()).await.unwrap();
    let leaving_id = cluster.node_id(leaving);
    admin
        .remove_member(leaving_id)
        .await
        .expect("the stop-sign is chosen by the old configuration");

    // The leader crashes after the stop-sign; it and the witness come back,
    // neither of which may know the stop-sign chosen.
    cluster.kill(leader);
    cluster.start_node(witness);
    cluster.start_node(leader);
    let expected = {
        let mut ids = vec![cluster.node_id(leader), cluster.node_id(witness)];
        ids.sort_unstable();
        ids
    };
    let serving = [leader, witness]
        .into_iter()
        .map(|index| cluster.url(index))
        .collect::<Vec<_>>();
    let admin = Client::connect(serving.clone()).await.unwrap();
    common::wait_until(
        "the new configuration to serve",
        common::CONDITION_WAIT,
        || async {
            let listed = admin.list_members().await.map_err(|error| error.to_string())?;
            let mut voters: Vec<u64> = listed.members.iter().filter(|m| m.voter).map(|m| m.id).collect();
            voters.sort_unstable();
            match voters == expected {
                true => Ok(()),
                false => Err(format!("members are {listed:?}")),
            }
        },
    )
    .await;

    // A later change works, the removed node refuses, and the lock is
    // still held with its token and value.
    let silent = quorumlock_testkit::cluster::free_ports(1).unwrap()[0];
    admin
        .add_member(7, &format!("127.0.0.1:{silent}"))
        .await
        .expect("a change after the completed one");
    admin.remove_member(7).await.expect("removing the learner again");
    let removed = cluster.client(leaving).await;
    wait_for_removal_refusal("the removed node to refuse", &removed).await;
    let client = first_answering(&serving).await;
    assert_held(&client, LOCK, holder_key.id, token, 0).await;
    assert_eq!(get(&client, VALUE_KEY).await.unwrap().value, b"running");
    let opened = common::retry_unavailable("OpenSession", || common::open_session(&client, TTL_MS))
        .await
        .unwrap();
    let fresh = acquire_granted(&client, common::Key::of(&opened), "jobs/other", 0).await;
    assert!(fresh > token, "token {fresh} after {token}");
    holder.stop().await;
}
