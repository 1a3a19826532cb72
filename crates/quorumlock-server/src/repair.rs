//! Repair from peers (`serve --repair`; README, "Storage faults").
//!
//! A node whose data directory was lost or damaged has forgotten votes,
//! promises and acceptances it made. It may take part again only as a new
//! member would, and that is what a repair makes of it:
//!
//! 1. Its damaged files are moved aside, under `damaged-<unix time>/` in
//!    the data directory, and a [`REPAIR_FILE`] marks the repair as
//!    pending (a restart goes on with it). The node starts from an empty
//!    state under a new incarnation, as a joining node: it never starts an
//!    election or a phase 1, and its peers refuse its requests.
//! 2. It asks the leader (`Cluster/RepairMember`) to make it a learner, if
//!    it was a voter, and then to record its new incarnation in the
//!    replicated state. Until the learner configuration is in force it
//!    counts toward no quorum, exactly like a crashed node; after the
//!    record, every member knows it by its new incarnation.
//! 3. It catches up as a learner (log entries or a snapshot), and once it
//!    has applied its own record it asks for its promotion, which the
//!    leader grants only to a learner that caught up.
//!
//! A repair needs a leader, that is a quorum of voters with intact state
//! besides the node. Without one for [`LEADER_WAIT_ELECTION_TIMEOUTS`]
//! election timeouts the node refuses
//! to go on and says why (a majority lost at once is not repairable from
//! peers: restore a backup).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::sync::watch;
use tonic::transport::Endpoint;
use tonic::Code;

use quorumlock_core::consensus::incarnation::Incarnations;
use quorumlock_core::consensus::{ConsensusEngine, NodeId};
use quorumlock_proto::v1 as pb;
use quorumlock_proto::v1::cluster_client::ClusterClient;
use quorumlock_tls::{node_name, Dialer};

/// Marks a repair as begun and not finished.
pub const REPAIR_FILE: &str = "REPAIR";
/// Marks a directory whose state a peer showed to be lost (the node was
/// known under another incarnation): `--repair` takes it as lost.
pub const LOST_FILE: &str = "LOST";
/// Prefix of the directories the damaged files are moved into.
pub const QUARANTINE_PREFIX: &str = "damaged-";
/// How long a repairing node looks for a leader that records its repair,
/// in election timeouts.
pub const LEADER_WAIT_ELECTION_TIMEOUTS: u32 = 30;
/// Bound of one call to a peer.
const CALL_MAX: Duration = Duration::from_secs(40);

/// Records in `dir` that a peer showed its state to be lost, so that a
/// start with `--repair` repairs it (durably).
pub fn mark_lost(dir: &Path, why: &str) -> anyhow::Result<()> {
    let file = dir.join(LOST_FILE);
    let mut out = std::fs::File::create(&file).with_context(|| format!("creating {}", file.display()))?;
    std::io::Write::write_all(&mut out, format!("{why}\n").as_bytes())
        .with_context(|| format!("writing {}", file.display()))?;
    out.sync_all()
        .with_context(|| format!("syncing {}", file.display()))?;
    sync_dir(dir)
}

/// Whether a peer showed the state in `dir` to be lost.
pub fn marked_lost(dir: &Path) -> bool {
    dir.join(LOST_FILE).exists()
}

/// Whether a repair was begun in `dir` and not finished.
pub fn pending(dir: &Path) -> bool {
    dir.join(REPAIR_FILE).exists()
}

/// Moves everything in `dir` except earlier quarantines into a new
/// `damaged-<unix time>` directory inside it, and marks a repair as
/// pending. Returns the quarantine directory.
pub fn quarantine(dir: &Path, why: &str) -> anyhow::Result<PathBuf> {
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |since| since.as_secs());
    let mut target = dir.join(format!("{QUARANTINE_PREFIX}{stamp}"));
    let mut suffix = 1;
    while target.exists() {
        target = dir.join(format!("{QUARANTINE_PREFIX}{stamp}.{suffix}"));
        suffix += 1;
    }
    std::fs::create_dir_all(&target).with_context(|| format!("creating {}", target.display()))?;
    let entries = std::fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))?;
    for entry in entries {
        let entry = entry.with_context(|| format!("listing {}", dir.display()))?;
        let name = entry.file_name();
        if name.to_string_lossy().starts_with(QUARANTINE_PREFIX) {
            continue;
        }
        std::fs::rename(entry.path(), target.join(&name))
            .with_context(|| format!("moving {} into {}", entry.path().display(), target.display()))?;
    }
    begin(dir, why)?;
    tracing::warn!(dir = %dir.display(), kept = %target.display(), %why,
        "damaged state moved aside for inspection; the node repairs from its peers");
    Ok(target)
}

/// Marks a repair as pending in `dir` (durably).
pub fn begin(dir: &Path, why: &str) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let file = dir.join(REPAIR_FILE);
    let text = format!("a repair from peers is pending; it began because: {why}\n");
    let mut out = std::fs::File::create(&file).with_context(|| format!("creating {}", file.display()))?;
    std::io::Write::write_all(&mut out, text.as_bytes())
        .with_context(|| format!("writing {}", file.display()))?;
    out.sync_all()
        .with_context(|| format!("syncing {}", file.display()))?;
    sync_dir(dir)
}

/// Marks the repair in `dir` as finished (durably).
pub fn finish(dir: &Path) -> anyhow::Result<()> {
    let file = dir.join(REPAIR_FILE);
    match std::fs::remove_file(&file) {
        Ok(()) => {}
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
        Err(error) => return Err(error).with_context(|| format!("removing {}", file.display())),
    }
    sync_dir(dir)
}

fn sync_dir(dir: &Path) -> anyhow::Result<()> {
    std::fs::File::open(dir)
        .and_then(|handle| handle.sync_all())
        .with_context(|| format!("syncing directory {}", dir.display()))
}

/// What a repair needs.
pub struct Repair {
    /// This node.
    pub node: NodeId,
    /// Its data directory.
    pub dir: PathBuf,
    /// Its peers' addresses (this node's own entry is skipped).
    pub peers: Vec<(NodeId, String)>,
    /// The address the cluster knows this node at.
    pub addr: String,
    /// Dials peers as the node's transport does.
    pub dialer: Dialer,
    /// The node's engine.
    pub engine: Arc<dyn ConsensusEngine>,
    /// The node's incarnations.
    pub incarnations: Arc<Incarnations>,
    /// The election timeout: the pause between attempts, and the unit of
    /// how long the node looks for a leader.
    pub election_timeout: Duration,
}

impl Repair {
    /// Runs the repair to its end; publishes on `refused` why it cannot
    /// go on, if it cannot.
    pub async fn run(self, refused: watch::Sender<Option<String>>) {
        match self.steps().await {
            Ok(()) => {}
            Err(why) => {
                tracing::error!(node = %self.node, "the repair cannot go on: {why}");
                refused.send_replace(Some(why));
            }
        }
    }

    async fn steps(&self) -> Result<(), String> {
        let incarnation = self.incarnations.own_incarnation();
        tracing::warn!(node = %self.node, incarnation = %format_args!("{incarnation:016x}"),
            "repair: asking the leader to take this node back as a learner under its new incarnation");
        let started = tokio::time::Instant::now();
        let leader_wait = self.election_timeout * LEADER_WAIT_ELECTION_TIMEOUTS;
        let mut last = String::from("no peer answered");
        let mut by_admin = false;
        let repairs = loop {
            if started.elapsed() >= leader_wait {
                return Err(format!(
                    "no leader recorded the repair within {leader_wait:?} (last answer: {last}); a repair needs \
                     a leader, that is a quorum of voters whose state is intact besides this node. If a majority \
                     lost its state at once, nothing can be repaired from peers: restore a backup (snapshot \
                     restore). The repair stays pending; start the node again to resume it"
                ));
            }
            match self
                .on_leader(|mut client| async move {
                    let mut request = tonic::Request::new(pb::RepairMemberRequest {
                        id: self.node.get(),
                        incarnation,
                        addr: self.addr.clone(),
                    });
                    request.set_timeout(CALL_MAX);
                    client.repair_member(request).await
                })
                .await
            {
                Ok(response) => break Some(response.repairs),
                Err(status) if matches!(status.code(), Code::PermissionDenied | Code::Unauthenticated) => {
                    tracing::warn!(node = %self.node, incarnation = %format_args!("{incarnation:016x}"),
                        "repair: the cluster's access policy does not let this node ask for its own repair ({}); \
                         an admin calls Cluster/RepairMember with this id and incarnation, then member promote; \
                         this node waits for that", status.message());
                    by_admin = true;
                    break None;
                }
                Err(status) if refuses_for_good(&status) => {
                    return Err(format!("the leader refused the repair: {}", status.message()))
                }
                Err(status) => last = status.message().to_string(),
            }
            tokio::time::sleep(self.election_timeout).await;
        };
        if let Some(repairs) = repairs {
            tracing::warn!(node = %self.node, repairs,
                "repair: recorded by the leader; this node is a learner and catches up");
        }
        // The node applies its own record once it caught up to it; the
        // engine meanwhile receives entries or a snapshot from the leader.
        let own = self.node;
        loop {
            let recorded = self
                .engine
                .state()
                .read(|state| state.repaired().get(&own).map(|repaired| repaired.incarnation));
            if recorded == Some(incarnation) {
                break;
            }
            tokio::time::sleep(self.election_timeout / 5).await;
        }
        tracing::info!(node = %self.node, "repair: caught up to its record; asking for promotion");
        loop {
            let voter = self
                .engine
                .members()
                .iter()
                .any(|member| member.id == own && member.voter);
            if voter {
                break;
            }
            if by_admin {
                tokio::time::sleep(self.election_timeout).await;
                continue;
            }
            match self
                .on_leader(|mut client| async move {
                    let mut request = tonic::Request::new(pb::PromoteMemberRequest { id: own.get() });
                    request.set_timeout(CALL_MAX);
                    client.promote_member(request).await
                })
                .await
            {
                Ok(_) => break,
                Err(status) if status.message().contains("already a voter") => break,
                Err(status) if refuses_for_good(&status) => {
                    return Err(format!("the leader refused the promotion: {}", status.message()))
                }
                Err(status) => {
                    tracing::info!(node = %self.node, "repair: not promoted yet: {}", status.message())
                }
            }
            tokio::time::sleep(self.election_timeout).await;
        }
        finish(&self.dir).map_err(|error| format!("{error:#}"))?;
        self.incarnations.set_repairing(false);
        tracing::warn!(node = %self.node, incarnation = %format_args!("{incarnation:016x}"),
            "repair finished: this node is a voter again");
        Ok(())
    }

    /// Sends `call` to every peer in turn until one (the leader) answers
    /// it; the last refusal otherwise.
    async fn on_leader<T, F, Fut>(&self, call: F) -> Result<T, tonic::Status>
    where
        F: Fn(ClusterClient<tonic::transport::Channel>) -> Fut,
        Fut: std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        let mut last = tonic::Status::unavailable("this node has no peers to ask");
        for (id, addr) in self.peers.iter().filter(|(id, _)| *id != self.node) {
            let endpoint = match Endpoint::from_shared(format!("http://{addr}")) {
                Ok(endpoint) => endpoint.connect_timeout(Duration::from_millis(500)),
                Err(error) => {
                    last = tonic::Status::invalid_argument(format!(
                        "bad address {addr:?} of node {id}: {error}"
                    ));
                    continue;
                }
            };
            let channel = match self.dialer.channel(&endpoint, &node_name(id.get())) {
                Ok(channel) => channel,
                Err(error) => {
                    last = tonic::Status::unavailable(format!("dialing node {id}: {error}"));
                    continue;
                }
            };
            match call(ClusterClient::new(channel)).await {
                Ok(response) => return Ok(response.into_inner()),
                Err(status) if refuses_for_good(&status) => return Err(status),
                Err(status) => {
                    last = tonic::Status::new(status.code(), format!("node {id}: {}", status.message()))
                }
            }
        }
        Err(last)
    }
}

/// Refusals no retry changes: the leader will not take this node back.
fn refuses_for_good(status: &tonic::Status) -> bool {
    match status.code() {
        Code::PermissionDenied | Code::Unauthenticated | Code::InvalidArgument | Code::Unimplemented => true,
        Code::FailedPrecondition => {
            let message = status.message();
            message.contains("not a member") || message.contains("last voter")
        }
        _ => false,
    }
}

/// Keeps `incarnations` in step with the repairs the replicated state
/// records, until `stopping`.
pub async fn follow_records(
    engine: Arc<dyn ConsensusEngine>,
    incarnations: Arc<Incarnations>,
    mut stopping: watch::Receiver<bool>,
    every: Duration,
) {
    let mut seen = std::collections::BTreeMap::new();
    loop {
        let records = engine.state().read(|state| state.repaired().clone());
        if records != seen {
            for (node, repaired) in &records {
                if seen.get(node) != Some(repaired) {
                    if let Err(error) = incarnations.adopt(*node, repaired.incarnation) {
                        tracing::error!(%node, "recording a repaired peer's incarnation failed: {error}");
                        continue;
                    }
                }
            }
            seen = records;
        }
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = stopping.wait_for(|stopping| *stopping) => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quarantine_keeps_every_damaged_file_and_marks_the_repair() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("raft")).unwrap();
        std::fs::write(dir.path().join("raft/000001.log"), b"wal").unwrap();
        std::fs::write(dir.path().join("IDENTITY"), b"id").unwrap();
        let first = quarantine(dir.path(), "test").unwrap();
        assert!(pending(dir.path()));
        assert_eq!(std::fs::read(first.join("raft/000001.log")).unwrap(), b"wal");
        assert_eq!(std::fs::read(first.join("IDENTITY")).unwrap(), b"id");
        assert!(!dir.path().join("raft").exists());
        // A second quarantine keeps the first one where it is.
        std::fs::write(dir.path().join("IDENTITY"), b"again").unwrap();
        let second = quarantine(dir.path(), "test").unwrap();
        assert_ne!(first, second);
        assert!(first.exists());
        assert_eq!(std::fs::read(second.join("IDENTITY")).unwrap(), b"again");
        assert!(pending(dir.path()), "REPAIR is written after the move");
        finish(dir.path()).unwrap();
        assert!(!pending(dir.path()));
    }
}
