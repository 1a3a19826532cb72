//! Membership changes by stop-sign (as in Stoppable Paxos and OmniPaxos).
//!
//! A change is a value of its own slot, [`Value::Reconfigure`], carrying the
//! whole next [`Configuration`]. A change of learners keeps the epoch and
//! takes effect from the next slot. A change of voters is a *stop-sign*: the
//! slot that holds it is the last one the current configuration decides.
//! When a replica's chosen prefix reaches a stop-sign it
//!
//! - forgets every value it knew chosen after it (such a value was decided,
//!   if at all, by the configuration that had just ended, and is void);
//! - leaves whatever role it had in the old epoch (a leader first tells the
//!   old configuration's members that the stop-sign is chosen);
//! - from then on answers only ballots of the new epoch, whose voters run a
//!   fresh phase 1 for the slots after the stop-sign.
//!
//! Ballots order by epoch first, so an acceptor of both configurations
//! promises a new-epoch ballot over any old one, and refuses the old epoch's
//! leader afterwards. A new-epoch leader ignores what its promisers
//! accepted at older epochs: those records lie after the stop-sign (every
//! new-epoch replica knows every slot up to it chosen) and are void.

use std::sync::Arc;

use super::message::Message;
use super::types::{Command, Configuration, Slot, Value};
use super::{Replica, Role};
use quorumlock_core::consensus::NodeId;

/// A learner is promoted only while it is at most this many slots behind
/// the leader's chosen prefix.
pub const PROMOTE_LAG_MAX: u64 = 1_000;

/// One membership change, asked of the leader.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfigurationChange {
    /// Adds a learner serving at `addr`.
    AddLearner {
        /// Its id; never a removed one.
        id: NodeId,
        /// Where it serves.
        addr: String,
    },
    /// Makes a caught-up learner a voter (a stop-sign).
    Promote {
        /// The learner.
        id: NodeId,
    },
    /// Removes a voter (a stop-sign) or a learner; its id is retired.
    Remove {
        /// The member.
        id: NodeId,
    },
    /// Makes a voter a learner (a stop-sign), keeping its id and address.
    Demote {
        /// The voter.
        id: NodeId,
    },
}

/// Why a change was not proposed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReconfigurationRefused {
    /// Only the active leader proposes changes.
    #[error("not the leader")]
    NotLeader {
        /// The leader this node follows, if any.
        leader: Option<NodeId>,
    },
    /// The change cannot be made now or at all; the message says why.
    #[error("{0}")]
    Refused(String),
}

impl<C: Command> Replica<C> {
    /// Proposes `change` as the next slot's value. Refused unless this node
    /// leads, knows every slot its phase 1 reported chosen, and has no other
    /// change in flight; and refused when the change itself is wrong (see
    /// the messages). Returns the configuration that will be in force once
    /// the change is chosen.
    pub fn propose_reconfiguration(
        &mut self,
        change: ConfigurationChange,
    ) -> Result<Arc<Configuration>, ReconfigurationRefused> {
        let refused = |why: String| Err(ReconfigurationRefused::Refused(why));
        let current = self.configuration().clone();
        let (chosen_upto, reported) = (self.chosen_upto, self.leader_chosen_upto);
        let Role::Leading(leading) = &mut self.role else {
            return Err(ReconfigurationRefused::NotLeader {
                leader: self.leader.map(|ballot| ballot.node),
            });
        };
        if leading.reconfigure.is_some() || leading.reconfiguring_at.is_some() {
            return refused("another membership change is in progress; run one change at a time".to_string());
        }
        if chosen_upto < reported {
            return refused(
                "the leader is still learning slots chosen before it was elected; retry in a moment"
                    .to_string(),
            );
        }
        let mut next = Configuration {
            version: current.version + 1,
            ..(*current).clone()
        };
        match change {
            ConfigurationChange::AddLearner { id, addr } => {
                if current.has(id) {
                    return refused(format!("node {id} is already a member"));
                }
                if current.retired.contains(&id) {
                    return refused(format!(
                        "node {id} was removed from this cluster and a removed id is never reused; \
                         give the new node a new id"
                    ));
                }
                next.learners.insert(id);
                next.addresses.insert(id, addr);
            }
            ConfigurationChange::Promote { id } => {
                if current.voters.contains(&id) {
                    return refused(format!("node {id} is already a voter"));
                }
                if !current.learners.contains(&id) {
                    return refused(format!(
                        "node {id} is not a learner of this cluster; add it first"
                    ));
                }
                let silent_for = leading.acked_at.get(&id).map(|at| self.now - at);
                if silent_for.is_some_and(|ticks| ticks > self.config.election_ticks) {
                    return refused(format!(
                        "learner {id} has not answered for an election timeout; promote it once it answers"
                    ));
                }
                match leading.matched.get(&id) {
                    None => {
                        return refused(format!(
                            "learner {id} has not acknowledged any entry yet; promote it once it caught up"
                        ))
                    }
                    Some(matched) if chosen_upto.since(*matched) > PROMOTE_LAG_MAX => {
                        return refused(format!(
                            "learner {id} lags {} slots behind the leader (at most {PROMOTE_LAG_MAX}); \
                             promote it once it caught up",
                            chosen_upto.since(*matched)
                        ))
                    }
                    Some(_) => {}
                }
                next.learners.remove(&id);
                next.voters.insert(id);
                next.epoch += 1;
            }
            ConfigurationChange::Remove { id } => {
                if !current.has(id) {
                    return refused(format!("node {id} is not a member"));
                }
                if current.voters.contains(&id) {
                    if current.voters.len() == 1 {
                        return refused(format!("node {id} is the last voter"));
                    }
                    next.voters.remove(&id);
                    next.epoch += 1;
                } else {
                    next.learners.remove(&id);
                }
                next.addresses.remove(&id);
                next.retired.insert(id);
            }
            ConfigurationChange::Demote { id } => {
                if !current.voters.contains(&id) {
                    return refused(format!("node {id} is not a voter"));
                }
                if current.voters.len() == 1 {
                    return refused(format!("node {id} is the last voter"));
                }
                next.voters.remove(&id);
                next.learners.insert(id);
                next.epoch += 1;
            }
        }
        assert!(
            current.accepts(&next),
            "a change is made from the configuration in force"
        );
        let next = Arc::new(next);
        leading.reconfigure = Some(next.clone());
        Ok(next)
    }

    /// Whether this leader has a change waiting for its slot or in flight.
    pub fn reconfiguring(&self) -> bool {
        matches!(&self.role, Role::Leading(leading)
            if leading.reconfigure.is_some() || leading.reconfiguring_at.is_some())
    }

    /// The chosen prefix each member last reported to this leader (empty
    /// on a follower).
    pub fn member_progress(&self) -> Vec<(NodeId, Slot)> {
        match &self.role {
            Role::Leading(leading) => leading
                .matched
                .iter()
                .map(|(node, slot)| (*node, *slot))
                .collect(),
            _ => Vec::new(),
        }
    }

    /// The leader's next slot for a queued change, if one waits and the
    /// pipeline has room: `(slot, value, ends the epoch)`.
    pub(super) fn take_reconfiguration_slot(&mut self) -> Option<(Slot, Value<C>)> {
        let inflight_max = self.config.inflight_slots_max;
        let Role::Leading(leading) = &mut self.role else {
            return None;
        };
        if leading.inflight.len() >= inflight_max {
            return None;
        }
        let next = leading.reconfigure.take()?;
        let slot = leading.next_slot;
        leading.next_slot += 1;
        let ends = self.configs.last().expect("never empty").1.ends_with(&next);
        leading.reconfiguring_at = Some((slot, ends));
        tracing::info!(
            node = %self.config.id,
            %slot,
            version = next.version,
            epoch = next.epoch,
            stop_sign = ends,
            "membership change proposed"
        );
        Some((slot, Value::Reconfigure(next)))
    }

    /// The chosen prefix just reached `slot`, which holds the change to
    /// `next`: put it in force if the configuration in force accepts it (a
    /// stale change chosen late is a no-op), and end the epoch at a
    /// stop-sign.
    pub(super) fn on_configuration_chosen(&mut self, slot: Slot, next: Arc<Configuration>) {
        let current = self.configuration().clone();
        // A node that joined knows no configuration until it learns one: it
        // learns the chosen values from slot 1 on (or from a snapshot,
        // which carries its configuration), and the first change in the log
        // was made from the first members' configuration, which it was
        // never told. It takes that change as it is.
        let joining = current.voters.is_empty() && current.learners.is_empty();
        if !joining && !current.accepts(&next) {
            tracing::info!(
                node = %self.config.id,
                %slot,
                version = next.version,
                in_force = current.version,
                "a stale membership change was chosen; it has no effect"
            );
            return;
        }
        self.configs.push((slot, next.clone()));
        tracing::info!(
            node = %self.config.id,
            %slot,
            version = next.version,
            epoch = next.epoch,
            voters = ?next.voters,
            learners = ?next.learners,
            "configuration in force"
        );
        if next.epoch > current.epoch {
            self.end_epoch(slot, &current, &next);
        } else {
            self.tell_removed_learners(slot, &current, &next);
        }
        self.note_if_removed();
    }

    /// A leader tells a learner that `next` removed that the slot holding
    /// the change is chosen: the learner asks for it, and the members'
    /// transport refuses it as retired, which is how it learns of its
    /// removal (it sends nothing else a member could refuse).
    fn tell_removed_learners(&mut self, slot: Slot, current: &Configuration, next: &Configuration) {
        let Role::Leading(leading) = &self.role else {
            return;
        };
        // The round already sent: its acknowledgements are counted for
        // reads begun before it, which this one was sent after too.
        let message = Message::Heartbeat {
            ballot: leading.ballot,
            chosen_upto: slot,
            seq: leading.round,
        };
        let removed: Vec<NodeId> = current
            .learners
            .iter()
            .copied()
            .filter(|learner| next.retired.contains(learner))
            .collect();
        for learner in removed {
            self.send(learner, message.clone());
            // One that never learned the configuration that added it knows
            // no address to ask from: it is served what it needs to see the
            // change (its snapshot, then the values after it).
            if let Some(last) = self.on_learn(learner, Slot::new(1)) {
                if last < slot {
                    self.on_learn(learner, last.next());
                }
            }
        }
    }

    /// The configuration `ended` decided its last slot, `slot`.
    fn end_epoch(&mut self, slot: Slot, ended: &Configuration, next: &Configuration) {
        // Anything known chosen after the stop-sign was decided by the
        // ended configuration: void.
        let void = self.chosen.split_off(&slot.next());
        self.abandon_own(void.values());
        self.epoch_started_at = Some(slot);
        self.leader_chosen_upto = self.chosen_upto;
        self.commit_scanned = None;
        self.learn_asked_at = None;
        let id = self.config.id;
        let was_leading = match &self.role {
            Role::Leading(leading) => {
                // The old configuration's members learn that the stop-sign
                // is chosen from their own records at this ballot.
                let message = Message::Heartbeat {
                    ballot: leading.ballot,
                    chosen_upto: slot,
                    seq: leading.round + 1,
                };
                let told: Vec<NodeId> = ended
                    .voters
                    .iter()
                    .chain(&ended.learners)
                    .copied()
                    .filter(|node| *node != id)
                    .collect();
                for node in told {
                    self.send(node, message.clone());
                }
                true
            }
            _ => false,
        };
        self.step_down();
        self.failed_elections = 0;
        self.reset_election_timer();
        if was_leading && next.voters.contains(&id) {
            // The leader that ended the epoch is the likeliest to be caught
            // up: let it stand first in the new one, once its last
            // heartbeat had time to arrive.
            self.election_at = self.now + self.config.heartbeat_ticks;
        }
    }

    /// Records that this node was removed, as a peer that refused its
    /// messages said (the change that removed it may not have reached this
    /// node, and never will once every member refuses it).
    pub fn note_removed(&mut self, why: String) {
        if self.removed.is_none() {
            tracing::warn!(node = %self.config.id, "{why}");
            self.step_down();
            self.removed = Some(why);
        }
    }

    /// A removed node takes part in nothing, but helps members that slept
    /// through the change that removed it: it answers ballots of an ended
    /// epoch with [`Message::EpochEnded`] and serves chosen values. Without
    /// it, members that restarted in the ended epoch could lack a quorum of
    /// it when the removed node was one of the few that knew the stop-sign
    /// chosen.
    pub(super) fn step_removed(&mut self, from: NodeId, message: Message<C>) {
        let config = self.configuration().clone();
        match message {
            Message::Learn { from_slot } => {
                self.on_learn(from, from_slot);
            }
            Message::SnapshotPull { slot, offset } => self.on_snapshot_pull(from, slot, offset),
            message => {
                if message.ballot().is_some_and(|ballot| ballot.epoch < config.epoch) && config.has(from) {
                    self.send(from, Message::EpochEnded { epoch: config.epoch });
                }
            }
        }
    }

    /// Records the removal once a change in force retired this node's id.
    pub(super) fn note_if_removed(&mut self) {
        if self.removed.is_some() {
            return;
        }
        let config = self.configuration().clone();
        if config.retired.contains(&self.config.id) {
            let why = format!(
                "node {} was removed from the cluster by membership change {} (epoch {})",
                self.config.id, config.version, config.epoch
            );
            tracing::warn!(node = %self.config.id, "{why}");
            self.step_down();
            self.removed = Some(why);
        }
    }

    /// A message of a later epoch came from `from`: this node is behind a
    /// configuration change and learns the chosen values from that peer
    /// (once per heartbeat interval) before it takes part again.
    pub(super) fn catch_up_with(&mut self, from: NodeId) {
        let now = self.now;
        if self
            .epoch_catch_up_at
            .is_some_and(|at| now - at < self.config.heartbeat_ticks)
        {
            return;
        }
        if !self.configuration().has(from) {
            // No address is known for it; a leader pushes its state to new
            // learners (see `push_to_new_learners`).
            return;
        }
        self.epoch_catch_up_at = Some(now);
        self.learn_source = Some(from);
        let from_slot = self.chosen_upto + 1;
        self.send(from, Message::Learn { from_slot });
    }

    /// A leader serves members that cannot ask as if they had asked for
    /// everything: a learner that never acknowledged a heartbeat (a node
    /// that joins knows no member's address until it learned the
    /// configuration that added it), and any member silent for two
    /// election timeouts (a learner keeps nothing on disk, so one that
    /// restarted knows no configuration again). Each heartbeat pushes the
    /// next batch after the last one pushed, starting over from slot 1
    /// after the chosen prefix (so that a batch lost on the way is pushed
    /// again); a snapshot transfer is started again at most once per
    /// election timeout (see `on_learn`).
    pub(super) fn push_to_new_learners(&mut self) {
        let Role::Leading(leading) = &self.role else {
            return;
        };
        let (now, silence) = (self.now, 2 * self.config.election_ticks);
        let config = self.configuration();
        let id = self.config.id;
        let silent: Vec<NodeId> = config
            .voters
            .iter()
            .chain(&config.learners)
            .copied()
            .filter(|member| *member != id)
            .filter(|member| match leading.acked_at.get(member) {
                Some(at) => now - at >= silence,
                None if config.learners.contains(member) => true,
                None => now - leading.elected_at >= silence,
            })
            .collect();
        let chosen_upto = self.chosen_upto;
        let starts: Vec<(NodeId, Slot)> = silent
            .into_iter()
            .map(|member| match leading.pushed.get(&member) {
                Some(last) if *last < chosen_upto => (member, last.next()),
                _ => (member, Slot::new(1)),
            })
            .collect();
        for (member, from) in starts {
            let last = self.on_learn(member, from).unwrap_or(Slot::ZERO);
            let Role::Leading(leading) = &mut self.role else {
                unreachable!("still leading");
            };
            leading.pushed.insert(member, last);
        }
    }

    /// Keeps the configurations in force from `slot` on (the one in force
    /// at `slot` becomes the first).
    pub(super) fn forget_configurations_upto(&mut self, slot: Slot) {
        let keep_from = self
            .configs
            .iter()
            .rposition(|(since, _)| *since <= slot)
            .unwrap_or(0);
        self.configs.drain(..keep_from);
    }
}
