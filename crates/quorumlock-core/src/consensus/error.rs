//! Why an engine could not order a command or confirm a read.

/// Failures of the engine itself, as opposed to refusals of the lock state
/// machine (those travel inside [`super::CommandResult`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EngineError {
    /// This node is not the leader; `leader` is the one it knows of.
    #[error("not the leader{}", match .leader { Some(l) => format!(" (leader is node {} at {})", l.id, l.addr), None => " (no leader known)".to_string() })]
    NotLeader {
        /// The known leader, if any.
        leader: Option<super::LeaderInfo>,
    },
    /// This node leads but has heard from no quorum of voters for longer
    /// than its followers wait before standing (partitioned off, or its peers are frozen):
    /// it orders nothing until it hears from one again, so the command was
    /// not proposed and a client should try another node, where a new
    /// leader is likely being elected.
    #[error("this node leads but has heard from no quorum for {silent_ms} ms; it orders no commands until it does (nothing was proposed)")]
    QuorumSilent {
        /// How long since a quorum last answered the leader.
        silent_ms: u64,
    },
    /// The engine could not reach a quorum in time.
    #[error("no quorum: {0}")]
    Unavailable(String),
    /// This node leads but holds as many commands as it may; retry later.
    #[error("the leader is overloaded: {queued_max} commands already wait to be ordered")]
    Overloaded {
        /// The bound that was reached.
        queued_max: usize,
    },
    /// The engine is stopping.
    #[error("engine is shutting down")]
    ShuttingDown,
    /// A membership change was refused before anything was proposed; the
    /// message says why (one is in progress, the learner lags, ...).
    #[error("membership change refused: {0}")]
    MembershipRefused(String),
    /// This node was removed from the cluster by a membership change; it
    /// serves nothing more. The message says how it learned so.
    #[error("{0}")]
    Removed(String),
    /// This engine does not offer the operation.
    #[error("{0}")]
    Unsupported(String),
    /// A storage or invariant failure; the node must stop rather than serve.
    #[error("fatal engine failure: {0}")]
    Fatal(String),
}
