//! The membership nemesis (`chaos --membership`): seeded changes of the
//! cluster's membership, made the way an operator makes them, between the
//! other faults.
//!
//! Kinds of change, taken in a seeded order that covers every kind before
//! any repeats (a kind the cluster's state does not allow waits for a later
//! turn, and an `add` fills in when nothing else is possible):
//! - `add`: start a new node with `serve --join` and an empty data
//!   directory, then `member add` it as a learner;
//! - `promote`: make a learner a voter (refused while it lags: retried);
//! - `remove`: remove a voter, the leader as likely as any other, while
//!   more than [`VOTERS_MIN`] remain, or a learner;
//! - `replace`: SIGKILL a voter, delete its data directory, add a new node,
//!   promote it, and remove the dead one. A replacement cut short (the
//!   cluster refused a step past the retry bound) is finished before any
//!   other change, and the dead voter is never started again.
//!
//! Every change goes through the client's membership calls to whichever
//! node leads. A change refused because another is in progress or the
//! learner lags is retried for [`CHANGE_RETRY_MAX`], then skipped; each is
//! logged as a fault with its outcome. New ids are never reused. A run
//! keeps at most `--nodes` + 2 node processes and never fewer than
//! [`VOTERS_MIN`] voters; it may start [`SPARE_IDS`] new nodes, whose
//! proxies are bound, and whose addresses the workers know, from the start.
//! A removed node keeps running until the next change begins, so that
//! clients meet its refusal (`NODE_REMOVED`) for a while; then it is
//! stopped for good.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use tokio::time::Instant;

use super::history::{now_us, Fault};
use super::nemesis::write_skew;
use super::proxy::Network;
use crate::cluster::{free_ports, ProcessCluster};
use quorumlock_client::{Client, ClientConfig, MEMBERSHIP_CALL_MAX};
use quorumlock_core::time::Skew;

/// The kinds of change, as the summary names them.
pub const MEMBERSHIP_KINDS: [&str; 4] = ["add", "promote", "remove", "replace"];
/// The cluster never has fewer voters.
pub const VOTERS_MIN: usize = 3;
/// Node processes a run keeps at most, beyond `--nodes`.
pub const EXTRA_PROCESSES_MAX: usize = 2;
/// New nodes a run may start; once they are used up, `add` and `replace`
/// are no longer drawn.
pub const SPARE_IDS: usize = 24;
/// How long a refused change is retried.
pub const CHANGE_RETRY_MAX: Duration = Duration::from_secs(20);
/// Pause between attempts at a refused change.
pub const CHANGE_RETRY_PAUSE: Duration = Duration::from_millis(250);
/// Longest wait for the answer to one change: the client's own bound on a
/// membership call, and a margin.
pub const CHANGE_WAIT_MAX: Duration = Duration::from_secs(MEMBERSHIP_CALL_MAX.as_secs() + 5);
/// Longest wait for a new node to accept connections.
pub const NODE_START_WAIT_MAX: Duration = Duration::from_secs(10);
const NODE_START_POLL: Duration = Duration::from_millis(20);
/// Longest wait for the leader to list the membership.
pub const VIEW_WAIT_MAX: Duration = Duration::from_secs(10);
/// Steps a replacement takes at most in one turn (add, promote, remove,
/// and room for a second new node).
const REPLACE_STEPS_MAX: usize = 5;

/// How a change ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Committed.
    Done {
        /// Refusals before it was.
        refusals: usize,
    },
    /// Refused past the retry bound, or refused for good; skipped.
    Refused {
        /// The last refusal.
        reason: String,
    },
    /// Nothing the cluster's state allowed.
    Skipped {
        /// Why.
        reason: String,
    },
    /// No answer; the membership listed afterwards says what happened.
    Unknown {
        /// The error in place of an answer.
        reason: String,
    },
}

impl Outcome {
    /// The outcome as the history names it.
    pub fn name(&self) -> &'static str {
        match self {
            Outcome::Done { .. } => "done",
            Outcome::Refused { .. } => "refused",
            Outcome::Skipped { .. } => "skipped",
            Outcome::Unknown { .. } => "unknown",
        }
    }

    fn is_done(&self) -> bool {
        matches!(self, Outcome::Done { .. })
    }
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Outcome::Done { refusals: 0 } => write!(f, "done"),
            Outcome::Done { refusals } => write!(f, "done after {refusals} refusals"),
            Outcome::Refused { reason } => write!(f, "refused, skipped: {reason}"),
            Outcome::Skipped { reason } => write!(f, "skipped: {reason}"),
            Outcome::Unknown { reason } => write!(f, "unknown: {reason}"),
        }
    }
}

/// Which node processes are members, by index (a node's id is its index
/// plus one).
#[derive(Debug, Clone, Default)]
pub struct Roster {
    live: BTreeSet<usize>,
    lost: BTreeSet<usize>,
    removed: BTreeSet<usize>,
    stopping: BTreeSet<usize>,
}

impl Roster {
    /// The first `nodes` nodes, all members.
    pub fn new(nodes: usize) -> Roster {
        Roster {
            live: (0..nodes).collect(),
            ..Roster::default()
        }
    }

    /// Members (voters and learners) whose data is whole, and a node that
    /// joins: the nodes faults may hit, restarts bring back, and the final
    /// phase restarts.
    pub fn live(&self) -> Vec<usize> {
        self.live.iter().copied().collect()
    }

    /// Voters whose data directory was deleted, whose removal is pending:
    /// never started again.
    pub fn lost(&self) -> Vec<usize> {
        self.lost.iter().copied().collect()
    }

    /// Nodes removed from the cluster, or never admitted to it.
    pub fn removed(&self) -> Vec<usize> {
        self.removed.iter().copied().collect()
    }

    fn retire(&mut self, index: usize) {
        self.live.remove(&index);
        self.lost.remove(&index);
        self.removed.insert(index);
        self.stopping.insert(index);
    }
}

/// The membership as the leader lists it.
#[derive(Debug, Clone, Default)]
struct View {
    voters: BTreeSet<u64>,
    learners: BTreeSet<u64>,
    from_leader: bool,
}

impl View {
    fn has(&self, id: u64) -> bool {
        self.voters.contains(&id) || self.learners.contains(&id)
    }

    fn describe(&self) -> String {
        let ids = |set: &BTreeSet<u64>| set.iter().map(u64::to_string).collect::<Vec<_>>().join(",");
        format!(
            "voters {{{}}} learners {{{}}}",
            ids(&self.voters),
            ids(&self.learners)
        )
    }
}

fn id_of(index: usize) -> u64 {
    index as u64 + 1
}

fn index_of(id: u64) -> usize {
    usize::try_from(id - 1).expect("ids fit in usize")
}

/// A change to send to the leader.
#[derive(Debug, Clone)]
enum Change {
    Add { id: u64, addr: String },
    Promote { id: u64 },
    Remove { id: u64 },
}

impl Change {
    /// Whether `view` shows this change made.
    fn is_made_in(&self, view: &View) -> bool {
        match self {
            Change::Add { id, .. } => view.has(*id),
            Change::Promote { id } => view.voters.contains(id),
            Change::Remove { id } => !view.has(*id),
        }
    }
}

/// A refusal worth trying again: the cluster is busy with another change,
/// between leaders, or the learner has not caught up yet.
fn is_transient(message: &str) -> bool {
    let message = message.to_lowercase();
    [
        "in progress",
        "once it",
        "retry",
        "caught up",
        "lags",
        "joint",
        "not applied",
        "no leader",
    ]
    .iter()
    .any(|phrase| message.contains(phrase))
}

/// The client settings of the runner's membership calls.
fn admin_config() -> ClientConfig {
    ClientConfig {
        connect_timeout: Duration::from_millis(500),
        connect_wait_max: Duration::from_secs(10),
        rpc_timeout: Duration::from_secs(5),
        retry_total_max: Duration::from_secs(10),
        backoff_initial: Duration::from_millis(50),
        backoff_max: Duration::from_millis(500),
        ..ClientConfig::default()
    }
}

/// Waits until the node just started at `index` accepts connections on
/// `listen`, for up to [`NODE_START_WAIT_MAX`]; `Err` says why it exited
/// instead (its port, picked free, may have been taken meanwhile).
async fn wait_listening(
    cluster: &mut ProcessCluster,
    index: usize,
    listen: &str,
) -> anyhow::Result<Result<(), String>> {
    let deadline = Instant::now() + NODE_START_WAIT_MAX;
    while Instant::now() < deadline {
        if let Some(status) = cluster.node_mut(index).reap()? {
            let node = cluster.node(index);
            return Ok(Err(format!(
                "node {} exited as it started ({status}); its log ends:\n{}",
                node.id(),
                node.log_tail(crate::cluster::LOG_TAIL_LINES)
            )));
        }
        if tokio::net::TcpStream::connect(listen).await.is_ok() {
            return Ok(Ok(()));
        }
        tokio::time::sleep(NODE_START_POLL).await;
    }
    // Slow to start, not gone: the cluster's leader keeps trying to reach it.
    Ok(Ok(()))
}

/// The runner's membership calls, to whichever node leads, through the
/// proxies of the members (whose addresses the membership names, so that
/// leader hints match). A call that fails without an answer (a connection
/// reset by a node just killed, say) drops the client, and the next call
/// connects afresh to a member that answers.
struct Admin {
    endpoints: Vec<String>,
    client: Option<Client>,
}

impl Admin {
    fn new(endpoints: Vec<String>) -> Admin {
        Admin {
            endpoints,
            client: None,
        }
    }

    async fn client(&mut self) -> Result<Client, String> {
        if let Some(client) = &self.client {
            return Ok(client.clone());
        }
        let client = Client::connect_with(&self.endpoints, admin_config())
            .await
            .map_err(|error| format!("no member answered: {error}"))?;
        self.client = Some(client.clone());
        Ok(client)
    }

    /// The membership as the leader lists it, asked again for up to
    /// [`VIEW_WAIT_MAX`] while no leader answers.
    async fn view(&mut self) -> Result<View, String> {
        let started = Instant::now();
        loop {
            let listed = match self.client().await {
                Ok(client) => client.list_members().await.map_err(|error| error.to_string()),
                Err(reason) => Err(reason),
            };
            match listed {
                Ok(listed) if listed.from_leader || started.elapsed() >= VIEW_WAIT_MAX => {
                    let mut view = View {
                        from_leader: listed.from_leader,
                        ..View::default()
                    };
                    for member in listed.members {
                        if member.voter {
                            view.voters.insert(member.id);
                        } else {
                            view.learners.insert(member.id);
                        }
                    }
                    return Ok(view);
                }
                Ok(_) => {}
                Err(reason) if started.elapsed() >= VIEW_WAIT_MAX => return Err(reason),
                Err(_) => self.client = None,
            }
            tokio::time::sleep(CHANGE_RETRY_PAUSE).await;
        }
    }

    /// Sends one change to the leader, retrying while the refusal says to
    /// or while no answer comes; after a call with no answer, the listed
    /// membership says whether the change was made.
    async fn change(&mut self, change: Change) -> Outcome {
        let started = Instant::now();
        let mut refusals = 0;
        let mut unanswered = 0;
        loop {
            let (refused, reason) = match self.client().await {
                Ok(client) => {
                    let call = async {
                        match &change {
                            Change::Add { id, addr } => client.add_member(*id, addr).await,
                            Change::Promote { id } => client.promote_member(*id).await,
                            Change::Remove { id } => client.remove_member(*id).await,
                        }
                    };
                    match tokio::time::timeout(CHANGE_WAIT_MAX, call).await {
                        Ok(Ok(_)) => return Outcome::Done { refusals },
                        Ok(Err(error)) if error.is_failed_precondition() => (true, error.to_string()),
                        Ok(Err(error)) => (false, error.to_string()),
                        Err(_) => (false, format!("no answer within {CHANGE_WAIT_MAX:?}")),
                    }
                }
                Err(reason) => (false, reason),
            };
            if refused && !is_transient(&reason) && unanswered == 0 {
                return Outcome::Refused { reason };
            }
            if refused && is_transient(&reason) {
                refusals += 1;
            } else {
                // No answer (or a refusal such as "already a member" after
                // an attempt with no answer): look whether it was made.
                unanswered += usize::from(!refused);
                self.client = None;
                if let Ok(view) = self.view().await {
                    if view.from_leader && change.is_made_in(&view) {
                        return Outcome::Done { refusals };
                    }
                }
                if refused {
                    return Outcome::Refused { reason };
                }
            }
            if started.elapsed() + CHANGE_RETRY_PAUSE > CHANGE_RETRY_MAX {
                return if unanswered > 0 && !refused {
                    Outcome::Unknown { reason }
                } else {
                    Outcome::Refused {
                        reason: format!(
                            "{refusals} refusals within {CHANGE_RETRY_MAX:?}, the last: {reason}"
                        ),
                    }
                };
            }
            tokio::time::sleep(CHANGE_RETRY_PAUSE).await;
        }
    }
}

/// The membership nemesis's state: its random source, the roster and its
/// log.
pub struct MembershipNemesis {
    rng: StdRng,
    bag: Vec<&'static str>,
    nodes: usize,
    skew_dir: PathBuf,
    // The new node added to take each lost voter's place, by the lost
    // voter's index.
    replacements: BTreeMap<usize, u64>,
    /// Which nodes are members.
    pub roster: Roster,
    /// Every change made so far.
    pub faults: Vec<Fault>,
}

/// What one turn acts on.
pub struct Stage<'a> {
    /// The node processes.
    pub cluster: &'a mut ProcessCluster,
    /// The proxies in front of the nodes, one for every id the run may use.
    pub network: &'a Network,
}

impl MembershipNemesis {
    /// A nemesis over a cluster started with `nodes` nodes, drawing from
    /// `rng`; a new node's lease clock follows a skew file in `skew_dir`.
    pub fn new(rng: StdRng, nodes: usize, skew_dir: PathBuf) -> MembershipNemesis {
        MembershipNemesis {
            rng,
            bag: Vec::new(),
            nodes,
            skew_dir,
            replacements: BTreeMap::new(),
            roster: Roster::new(nodes),
            faults: Vec::new(),
        }
    }

    fn can_add(&self, stage: &Stage<'_>) -> bool {
        stage.cluster.len() < stage.network.len() && self.roster.live.len() < self.nodes + EXTRA_PROCESSES_MAX
    }

    fn allowed(&self, kind: &str, view: &View, stage: &Stage<'_>) -> bool {
        match kind {
            "add" => self.can_add(stage),
            "promote" => !view.learners.is_empty(),
            "remove" => !view.learners.is_empty() || view.voters.len() > VOTERS_MIN,
            "replace" => stage.cluster.len() < stage.network.len(),
            other => unreachable!("unknown membership kind {other}"),
        }
    }

    /// The next kind the cluster's state allows, preferring the seeded
    /// order that covers every kind.
    fn next_kind(&mut self, view: &View, stage: &Stage<'_>) -> Option<&'static str> {
        if self.bag.is_empty() {
            self.bag = MEMBERSHIP_KINDS.to_vec();
            self.bag.shuffle(&mut self.rng);
        }
        if let Some(at) = self.bag.iter().position(|kind| self.allowed(kind, view, stage)) {
            return Some(self.bag.remove(at));
        }
        MEMBERSHIP_KINDS
            .into_iter()
            .find(|kind| self.allowed(kind, view, stage))
    }

    /// Makes one change (or finishes a replacement cut short), logs it, and
    /// returns.
    pub async fn round(&mut self, stage: &mut Stage<'_>) -> anyhow::Result<()> {
        let start_us = now_us();
        self.stop_removed(stage)?;
        let mut steps = Vec::new();
        let mut admin = Admin::new(
            self.roster
                .live
                .iter()
                .map(|&index| stage.network.addr(index).to_string())
                .collect(),
        );
        let turn = self.turn(&mut admin, stage, &mut steps).await?;
        self.reconcile(&mut admin, &mut steps).await?;
        let (kind, outcome) = match turn {
            Ok(made) => made,
            // Nothing was changed, so there is no fault to log.
            Err(reason) => {
                eprintln!("nemesis: membership turn skipped: {reason}");
                return Ok(());
            }
        };
        let fault = Fault::ended_now(
            kind,
            format!("{}; {outcome}", steps.join("; ")),
            start_us,
            Some(outcome.name().to_string()),
        );
        fault.log();
        self.faults.push(fault);
        Ok(())
    }

    /// Before the final phase: finishes a replacement cut short if it can,
    /// and stops every removed node.
    pub async fn wind_down(&mut self, stage: &mut Stage<'_>) -> anyhow::Result<()> {
        if !self.roster.lost.is_empty() {
            self.round(stage).await?;
        }
        self.stop_removed(stage)
    }

    async fn turn(
        &mut self,
        admin: &mut Admin,
        stage: &mut Stage<'_>,
        steps: &mut Vec<String>,
    ) -> anyhow::Result<Result<(&'static str, Outcome), String>> {
        if let Some(&lost) = self.roster.lost.iter().next() {
            steps.push(format!("finishing the replacement of node {}", id_of(lost)));
            let outcome = self.replace_steps(admin, stage, lost, steps).await?;
            return Ok(Ok(("replace", outcome)));
        }
        let view = match admin.view().await {
            Ok(view) => view,
            Err(reason) => return Ok(Err(format!("no membership listed: {reason}"))),
        };
        let Some(kind) = self.next_kind(&view, stage) else {
            return Ok(Err(format!("no change is possible with {}", view.describe())));
        };
        let outcome = match kind {
            "add" => self.add(admin, stage, steps).await?,
            "promote" => {
                let learners: Vec<u64> = view.learners.iter().copied().collect();
                let id = *learners.choose(&mut self.rng).expect("allowed: a learner");
                steps.push(format!("promote learner {id}"));
                admin.change(Change::Promote { id }).await
            }
            "remove" => self.remove(admin, stage, &view, steps).await?,
            "replace" => {
                let voters: Vec<u64> = view
                    .voters
                    .iter()
                    .copied()
                    .filter(|id| self.roster.live.contains(&index_of(*id)))
                    .collect();
                let id = *voters.choose(&mut self.rng).expect("a live voter");
                let index = index_of(id);
                stage.cluster.node_mut(index).kill()?;
                let dir = stage.cluster.data_dir(index);
                std::fs::remove_dir_all(&dir).with_context(|| format!("deleting {}", dir.display()))?;
                self.roster.live.remove(&index);
                self.roster.lost.insert(index);
                steps.push(format!("SIGKILL voter {id} and delete its data directory"));
                self.replace_steps(admin, stage, index, steps).await?
            }
            other => unreachable!("unknown membership kind {other}"),
        };
        Ok(Ok((kind, outcome)))
    }

    /// Starts the next new node with `serve --join` and adds it as a
    /// learner.
    async fn add(
        &mut self,
        admin: &mut Admin,
        stage: &mut Stage<'_>,
        steps: &mut Vec<String>,
    ) -> anyhow::Result<Outcome> {
        let index = stage.cluster.len();
        anyhow::ensure!(index < stage.network.len(), "no spare id is left");
        let id = id_of(index);
        let port = free_ports(1)?[0];
        let listen = format!("127.0.0.1:{port}");
        stage.network.set_upstream(index, &listen);
        write_skew(&self.skew_dir, index, Skew::NONE)?;
        let members: Vec<String> = self
            .roster
            .live
            .iter()
            .map(|&member| stage.network.addr(member).to_string())
            .collect();
        stage.cluster.join(id, &listen, &members)?;
        if let Err(reason) = wait_listening(stage.cluster, index, &listen).await? {
            // Not added, so no member: its id is spent.
            self.roster.retire(index);
            steps.push(format!("start node {id} with --join"));
            return Ok(Outcome::Skipped { reason });
        }
        self.roster.live.insert(index);
        let addr = stage.network.addr(index).to_string();
        steps.push(format!(
            "start node {id} with --join, add it as a learner at {addr}"
        ));
        let outcome = admin.change(Change::Add { id, addr }).await;
        if let Outcome::Refused { .. } = outcome {
            // Never admitted: its id is spent, and its process goes.
            self.roster.retire(index);
        }
        Ok(outcome)
    }

    async fn remove(
        &mut self,
        admin: &mut Admin,
        stage: &mut Stage<'_>,
        view: &View,
        steps: &mut Vec<String>,
    ) -> anyhow::Result<Outcome> {
        let mut candidates: Vec<u64> = view.learners.iter().copied().collect();
        if view.voters.len() > VOTERS_MIN {
            candidates.extend(view.voters.iter().copied());
        }
        let id = *candidates
            .choose(&mut self.rng)
            .expect("allowed: a removable member");
        let leader = self.leader_id(stage).await;
        let role = match (view.voters.contains(&id), leader == Some(id)) {
            (true, true) => "the leader, voter",
            (true, false) => "voter",
            (false, _) => "learner",
        };
        steps.push(format!("remove {role} {id}"));
        let outcome = admin.change(Change::Remove { id }).await;
        if outcome.is_done() {
            self.roster.retire(index_of(id));
        }
        Ok(outcome)
    }

    /// Brings the replacement of the lost voter `lost` forward: a new node
    /// added for it, promoted, then the lost voter removed.
    async fn replace_steps(
        &mut self,
        admin: &mut Admin,
        stage: &mut Stage<'_>,
        lost: usize,
        steps: &mut Vec<String>,
    ) -> anyhow::Result<Outcome> {
        let lost_id = id_of(lost);
        let mut refusals = 0;
        for _ in 0..REPLACE_STEPS_MAX {
            let view = match admin.view().await {
                Ok(view) => view,
                Err(reason) => return Ok(Outcome::Unknown { reason }),
            };
            if !view.has(lost_id) {
                self.roster.retire(lost);
                self.replacements.remove(&lost);
                return Ok(Outcome::Done { refusals });
            }
            let replacement = self.replacements.get(&lost).copied().filter(|id| view.has(*id));
            let outcome = match replacement {
                None if stage.cluster.len() < stage.network.len() => {
                    let id = id_of(stage.cluster.len());
                    let outcome = self.add(admin, stage, steps).await?;
                    if outcome.is_done() {
                        self.replacements.insert(lost, id);
                    }
                    outcome
                }
                None => Outcome::Skipped {
                    reason: "no spare id is left for a replacement".to_string(),
                },
                Some(id) if view.learners.contains(&id) => {
                    steps.push(format!("promote learner {id}"));
                    admin.change(Change::Promote { id }).await
                }
                Some(_) if view.voters.len() > VOTERS_MIN => {
                    steps.push(format!("remove the dead voter {lost_id}"));
                    let outcome = admin.change(Change::Remove { id: lost_id }).await;
                    if outcome.is_done() {
                        self.roster.retire(lost);
                        self.replacements.remove(&lost);
                    }
                    if let Outcome::Done { refusals: more } = outcome {
                        return Ok(Outcome::Done {
                            refusals: refusals + more,
                        });
                    }
                    outcome
                }
                // The replacement is a voter, yet the lost voter cannot go
                // without leaving too few: another one is needed.
                Some(_) => {
                    self.replacements.remove(&lost);
                    Outcome::Done { refusals: 0 }
                }
            };
            match outcome {
                Outcome::Done { refusals: more } => refusals += more,
                other => return Ok(other),
            }
        }
        Ok(Outcome::Refused {
            reason: format!("node {lost_id} is still a member after {REPLACE_STEPS_MAX} steps"),
        })
    }

    /// After a turn: a node the leader does not list is no member (a change
    /// whose answer was lost may have applied or not), so it is retired; a
    /// lost voter the leader no longer lists is retired too.
    async fn reconcile(&mut self, admin: &mut Admin, steps: &mut Vec<String>) -> anyhow::Result<()> {
        let Ok(view) = admin.view().await else {
            return Ok(());
        };
        if !view.from_leader {
            return Ok(());
        }
        let known: Vec<usize> = self
            .roster
            .live
            .iter()
            .chain(&self.roster.lost)
            .copied()
            .collect();
        for index in known {
            if !view.has(id_of(index)) {
                steps.push(format!("node {} is not listed: retired", id_of(index)));
                self.roster.retire(index);
            }
        }
        steps.push(format!("now {}", view.describe()));
        Ok(())
    }

    /// Stops the nodes removed since the last turn.
    fn stop_removed(&mut self, stage: &mut Stage<'_>) -> anyhow::Result<()> {
        for index in std::mem::take(&mut self.roster.stopping) {
            let node = stage.cluster.node_mut(index);
            if node.is_paused() {
                node.resume()?;
            }
            node.kill()?;
        }
        Ok(())
    }

    /// The id of the node that says it leads, among the live ones.
    async fn leader_id(&self, stage: &Stage<'_>) -> Option<u64> {
        let config = ClientConfig {
            rpc_timeout: Duration::from_millis(500),
            connect_timeout: Duration::from_millis(500),
            ..ClientConfig::default()
        };
        for &index in &self.roster.live {
            let node = stage.cluster.node(index);
            if !node.is_running() || node.is_paused() {
                continue;
            }
            if let Ok(status) = quorumlock_client::node_status(node.addr(), &config).await {
                if status.is_leader {
                    return Some(status.node_id.get());
                }
            }
        }
        None
    }

    /// The members as the leader lists them, asked through `endpoints`.
    pub async fn describe_members(&self, endpoints: &[String]) -> String {
        let mut admin = Admin::new(endpoints.to_vec());
        match admin.view().await {
            Ok(view) => view.describe(),
            Err(reason) => format!("unknown ({reason})"),
        }
    }

    /// Per kind: how many changes were made, and how many were tried.
    pub fn tally(&self) -> BTreeMap<&'static str, (usize, usize)> {
        let mut tally: BTreeMap<&'static str, (usize, usize)> =
            MEMBERSHIP_KINDS.iter().map(|kind| (*kind, (0, 0))).collect();
        for fault in &self.faults {
            if let Some(entry) = MEMBERSHIP_KINDS
                .iter()
                .find(|kind| **kind == fault.kind)
                .and_then(|kind| tally.get_mut(kind))
            {
                entry.1 += 1;
                if fault.outcome.as_deref() == Some("done") {
                    entry.0 += 1;
                }
            }
        }
        tally
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_refusals_that_may_pass_are_retried() {
        assert!(is_transient(
            "another membership change is in progress; run one change at a time"
        ));
        assert!(is_transient(
            "learner 4 lags 1200 entries behind the leader's log (at most 1000); promote it once it caught up"
        ));
        assert!(is_transient(
            "learner 5 has not answered for an election timeout; promote it once it answers"
        ));
        assert!(!is_transient("node 2 is already a member"));
        assert!(!is_transient("node 9 is not a member"));
    }

    #[test]
    fn a_retired_node_leaves_the_live_and_lost_sets_and_is_stopped_later() {
        let mut roster = Roster::new(3);
        roster.live.remove(&1);
        roster.lost.insert(1);
        roster.retire(1);
        roster.retire(2);
        assert_eq!(roster.live(), vec![0]);
        assert!(roster.lost().is_empty());
        assert_eq!(roster.removed(), vec![1, 2]);
        assert_eq!(roster.stopping.len(), 2);
    }
}
