//! Engine-neutral vocabulary shared by both engines and their users.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::lock::{LockError, Outcome};

pub use quorumlock_proto::NodeId;

/// What a committed command returns to its proposer.
pub type CommandResult = Result<Outcome, LockError>;

/// Which consensus engine runs under the lock service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum EngineKind {
    /// openraft.
    Raft,
    /// quorumlock's own Multi-Paxos.
    Paxos,
}

impl EngineKind {
    /// The name used on the command line and in `Status`.
    pub fn as_str(self) -> &'static str {
        match self {
            EngineKind::Raft => "raft",
            EngineKind::Paxos => "paxos",
        }
    }
}

impl fmt::Display for EngineKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for EngineKind {
    type Err = String;

    fn from_str(name: &str) -> Result<Self, Self::Err> {
        match name {
            "raft" => Ok(EngineKind::Raft),
            "paxos" => Ok(EngineKind::Paxos),
            other => Err(format!("unknown engine {other:?}: expected raft or paxos")),
        }
    }
}

/// A cluster member: id and the address that serves both the public API and
/// the peer transport.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    /// Node id.
    pub id: NodeId,
    /// `host:port` of its gRPC server.
    pub addr: String,
}

/// The known leader of the cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaderInfo {
    /// Leader's node id.
    pub id: NodeId,
    /// Leader's gRPC address.
    pub addr: String,
}

/// This node's view of leadership, published whenever it changes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Leadership {
    /// Raft term or Paxos ballot round of the view.
    pub term: u64,
    /// The leader this node knows of, if any.
    pub leader: Option<LeaderInfo>,
    /// Whether this node is that leader.
    pub is_self: bool,
}

/// Figures for `Cluster/Status`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EngineStatus {
    /// This node.
    pub node_id: NodeId,
    /// The engine in use.
    pub engine: EngineKind,
    /// Leadership as this node sees it.
    pub leadership: Leadership,
    /// Highest log index known committed.
    pub commit_index: u64,
    /// Highest log index applied to the state machine.
    pub applied_index: u64,
    /// Voting members.
    pub members: Vec<Member>,
}

/// One step of a membership change. Steps run one at a time: a step asked
/// for while another is being committed is refused, not queued.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MembershipChange {
    /// Adds `id`, serving at `addr`, as a learner: it receives the log (or
    /// a snapshot) but neither votes nor counts toward a quorum.
    AddLearner {
        /// The new node's id; never one the cluster has had.
        id: NodeId,
        /// `host:port` of its gRPC server.
        addr: String,
    },
    /// Makes the learner `id` a voter, once it has caught up.
    Promote {
        /// The learner.
        id: NodeId,
    },
    /// Removes `id`, voter or learner, from the cluster.
    Remove {
        /// The member to remove.
        id: NodeId,
    },
    /// Makes the voter `id` a learner, keeping its id and address: a node
    /// under repair takes part again only through [`MembershipChange::Promote`].
    Demote {
        /// The voter.
        id: NodeId,
    },
}

/// A member as this node sees it, for `member list`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberState {
    /// Node id.
    pub id: NodeId,
    /// `host:port` of its gRPC server.
    pub addr: String,
    /// Whether it votes (a learner does not).
    pub voter: bool,
    /// The highest log index the leader knows this member holds; `None`
    /// when this node does not lead or has not heard from it.
    pub matched_index: Option<u64>,
}
