//! The trait every consensus engine implements.

use async_trait::async_trait;
use tokio::sync::watch;

use super::{
    AppliedState, CommandResult, EngineError, EngineStatus, KnownMembership, Leadership, MemberState,
    MembershipChange,
};
use crate::lock::Command;
use std::sync::Arc;

/// A replicated log driving the lock state machine.
///
/// Implementations must apply every committed command, in log order, through
/// the [`AppliedState`] returned by [`ConsensusEngine::state`], exactly once
/// per replica lifetime (replay after restart restores from the snapshot first).
#[async_trait]
pub trait ConsensusEngine: Send + Sync + 'static {
    /// Orders `command` through the log; returns the state machine's answer
    /// once the command is committed and applied on this node. Fails with
    /// [`EngineError::NotLeader`] on a follower.
    async fn propose(&self, command: Command) -> Result<CommandResult, EngineError>;

    /// Returns once this node's [`AppliedState`] reflects every command that
    /// was committed before the call began, having confirmed leadership with a
    /// quorum. Only a leader can serve it.
    async fn read_barrier(&self) -> Result<(), EngineError>;

    /// The state machine this engine applies to.
    fn state(&self) -> &Arc<AppliedState>;

    /// Leadership as this node currently sees it; changes are published.
    fn leadership(&self) -> watch::Receiver<Leadership>;

    /// `None` while the engine runs; the reason once it stopped by itself on
    /// a fatal failure (its storage failed). A node then stops serving and
    /// exits: it must never vote, promise or answer from a state its disk
    /// does not back.
    fn failed(&self) -> watch::Receiver<Option<String>>;

    /// `Some(why)` once this node learned that a membership change removed
    /// it from the cluster: it then serves no API call (UNAVAILABLE, naming
    /// the removal). Engines whose members are fixed are never removed.
    fn removed(&self) -> Option<String> {
        None
    }

    /// Figures for `Cluster/Status`.
    fn status(&self) -> EngineStatus;

    /// Every member with its role and, on the leader, how far its log has
    /// caught up. The default lists [`EngineStatus::members`] as voters.
    fn members(&self) -> Vec<MemberState> {
        self.status()
            .members
            .into_iter()
            .map(|member| MemberState {
                id: member.id,
                addr: member.addr,
                voter: true,
                matched_index: None,
            })
            .collect()
    }

    /// The membership this node knows, published whenever it changes, so
    /// that a check on every peer request reads a value instead of asking
    /// the engine. The default publishes [`ConsensusEngine::members`] once,
    /// as a fixed configuration without retired ids.
    fn known_membership(&self) -> watch::Receiver<KnownMembership> {
        let members = self.members().into_iter().map(|member| member.id).collect();
        let (_fixed, known) = watch::channel(KnownMembership {
            members,
            retired: Default::default(),
            configured: true,
        });
        known
    }

    /// Whether a membership change is between its steps (a joint
    /// configuration is in effect).
    fn membership_in_transition(&self) -> bool {
        false
    }

    /// Runs one membership change step on the leader and returns once the
    /// new configuration is committed. Only a leader can serve it; a step
    /// that cannot run now is refused with [`EngineError::MembershipRefused`]
    /// before anything is proposed. The default refuses every change.
    async fn change_membership(&self, change: MembershipChange) -> Result<(), EngineError> {
        Err(EngineError::Unsupported(format!(
            "the {} engine does not change its membership ({change:?} refused); its members are fixed at first start",
            self.status().engine
        )))
    }

    /// Stops the engine; pending proposals fail with [`EngineError::ShuttingDown`].
    async fn shutdown(&self) -> Result<(), EngineError>;
}
