//! A second election timer beside openraft's, for a follower that its own
//! timer holds back on an old smaller-log backoff.
//!
//! When a candidate's vote is refused by a voter with a longer log,
//! openraft 0.9 sets a flag that adds `2 × election_timeout_max` to the
//! node's next election timeout, and clears it only when the node next
//! stands. A node that lost one election that way, then followed the
//! winner for minutes, still waits the extra `2t` when that leader dies,
//! even though its log is now as long as anyone's. In a three-node cluster
//! with one node down, both survivors often carry the flag, and no leader
//! is elected for `3t` to `4t` per round (openraft fixed this after 0.9:
//! the backoff applies only while the node is still behind).
//!
//! This timer stands for the node once neither a leader nor a vote has
//! been heard for a little longer than openraft's own timeout without the
//! backoff: `lease + max` (the latest a follower of a live leader stands),
//! or `max` when no leader is established, plus a jitter of up to `max/2`
//! drawn per vote so that two nodes do not stand together — but only once
//! the node has applied as far as the longest log that refused it
//! ([`LongerLogs`]; upstream checks the last log id itself). A node still
//! behind keeps openraft's backoff: standing as often as the node with the
//! longest log, it would keep raising the term past that node's and no one
//! would be elected. The leader's heartbeats
//! refresh a follower's vote time, so this timer never fires while a
//! leader is heard.

use std::sync::Arc;
use std::time::Duration;

use openraft::{LogId, ServerState};
use parking_lot::Mutex;
use rand::Rng;
use tokio::time::Instant;

use super::types::Raft;
use quorumlock_core::consensus::NodeId;

/// openraft's election timing, as configured.
#[derive(Debug, Clone, Copy)]
pub struct ElectionTiming {
    /// How long a vote for an established leader keeps voters from
    /// granting another (openraft's `leader_lease`, `election_timeout_max`).
    pub lease: Duration,
    /// openraft's `election_timeout_max`.
    pub max: Duration,
}

impl ElectionTiming {
    /// The greatest jitter added to the overdue bound.
    pub fn jitter_max(&self) -> Duration {
        self.max / 2
    }

    /// How long after its vote last changed or was refreshed a non-leader
    /// voter is overdue to stand, with `jitter` added: `lease + max` while
    /// its vote is for an established leader, `max` otherwise.
    pub fn overdue_after(&self, leader_established: bool, jitter: Duration) -> Duration {
        let lease = if leader_established {
            self.lease
        } else {
            Duration::ZERO
        };
        lease + self.max + jitter
    }
}

/// The longest log a voter refused this node's vote with: while this
/// node's own log is shorter, it is behind, and openraft's backoff is due.
#[derive(Default)]
pub struct LongerLogs {
    longest: Mutex<Option<LogId<NodeId>>>,
}

impl LongerLogs {
    /// A vote request sent with `mine` as this node's last log id was
    /// refused by a voter whose last log id is `theirs`.
    pub fn refused(&self, mine: Option<&LogId<NodeId>>, theirs: Option<&LogId<NodeId>>) {
        let Some(theirs) = theirs.filter(|theirs| Some(*theirs) > mine) else {
            return;
        };
        let mut longest = self.longest.lock();
        if longest.as_ref().is_none_or(|longest| theirs > longest) {
            *longest = Some(*theirs);
        }
    }

    /// Whether this node, having applied up to `applied`, may still be
    /// behind the longest log that refused it. Logs compare by last term,
    /// then index: a log as long as the longest but ending in an older term
    /// (a crashed leader's unreplicated tail) is behind too. The node's
    /// last log id is not published, so the applied one stands for it: once
    /// it reaches the longest refusal, the log has too (the applied prefix
    /// is committed, so it is never cut back).
    pub fn behind(&self, applied: Option<&LogId<NodeId>>) -> bool {
        self.longest
            .lock()
            .as_ref()
            .is_some_and(|longest| applied < Some(longest))
    }
}

/// What the timer reads of openraft's state on each look.
struct Look {
    stands: bool,
    vote_heard: Option<Instant>,
    leader_established: bool,
}

/// Looks at `raft` every `max / 4` and starts an election when it is
/// overdue (see the module's text). Ends when the raft core stops.
pub async fn stand_when_overdue(
    raft: Raft,
    me: NodeId,
    longer_logs: Arc<LongerLogs>,
    timing: ElectionTiming,
) {
    let mut tick = tokio::time::interval((timing.max / 4).max(Duration::from_millis(1)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The jitter is drawn once per vote time, so that looking more often
    // does not make standing likelier.
    let mut drawn: Option<(Instant, Duration)> = None;
    loop {
        tick.tick().await;
        let look = raft
            .with_raft_state(move |state| Look {
                stands: state.server_state != ServerState::Leader
                    && state.membership_state.effective().voter_ids().any(|id| id == me),
                vote_heard: state.vote_last_modified(),
                leader_established: state.vote_ref().is_committed(),
            })
            .await;
        let Ok(look) = look else {
            return;
        };
        let (true, Some(heard)) = (look.stands, look.vote_heard) else {
            continue;
        };
        let jitter = match drawn {
            Some((at, jitter)) if at == heard => jitter,
            _ => {
                let jitter = rand::thread_rng().gen_range(Duration::ZERO..=timing.jitter_max());
                drawn = Some((heard, jitter));
                jitter
            }
        };
        let quiet = Instant::now().saturating_duration_since(heard);
        if quiet > timing.overdue_after(look.leader_established, jitter)
            && !longer_logs.behind(raft.metrics().borrow().last_applied.as_ref())
        {
            tracing::info!(
                quiet_ms = quiet.as_millis() as u64,
                "no leader or vote heard past the election timeout; standing"
            );
            if raft.trigger().elect().await.is_err() {
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn timing() -> ElectionTiming {
        ElectionTiming {
            lease: Duration::from_millis(1_000),
            max: Duration::from_millis(1_000),
        }
    }

    #[test]
    fn a_follower_of_an_established_leader_waits_out_the_lease_and_a_whole_timeout() {
        // openraft's own timer stands by lease + max at the latest; this
        // one never before it, so the two do not race.
        assert_eq!(
            timing().overdue_after(true, Duration::ZERO),
            Duration::from_millis(2_000)
        );
    }

    #[test]
    fn a_candidate_or_voter_without_a_leader_waits_one_whole_timeout() {
        assert_eq!(
            timing().overdue_after(false, Duration::ZERO),
            Duration::from_millis(1_000)
        );
    }

    fn log_id(term: u64, index: u64) -> LogId<NodeId> {
        LogId::new(openraft::CommittedLeaderId::new(term, NodeId::new(1)), index)
    }

    #[test]
    fn a_node_refused_by_a_longer_log_is_behind_until_it_applied_that_far() {
        let longer = LongerLogs::default();
        assert!(!longer.behind(Some(&log_id(2, 97))), "no refusal yet");
        longer.refused(Some(&log_id(2, 97)), Some(&log_id(3, 346)));
        assert!(longer.behind(Some(&log_id(2, 97))));
        assert!(longer.behind(None));
        assert!(
            !longer.behind(Some(&log_id(3, 346))),
            "caught up by following a leader"
        );
        assert!(!longer.behind(Some(&log_id(4, 350))));
    }

    #[test]
    fn a_log_as_long_but_ending_in_an_older_term_is_behind() {
        // A leader killed with entries of its own term at the same index
        // as the survivor's newer ones: standing, it would be refused.
        let longer = LongerLogs::default();
        longer.refused(Some(&log_id(3, 141)), Some(&log_id(5, 141)));
        assert!(longer.behind(Some(&log_id(3, 141))));
        assert!(longer.behind(Some(&log_id(4, 150))));
        assert!(!longer.behind(Some(&log_id(6, 142))));
    }

    #[test]
    fn only_a_longer_log_counts_and_the_longest_is_kept() {
        let longer = LongerLogs::default();
        // Refused for its vote, not its log: nothing learned.
        longer.refused(Some(&log_id(3, 346)), Some(&log_id(3, 300)));
        longer.refused(Some(&log_id(3, 346)), None);
        assert!(!longer.behind(Some(&log_id(3, 346))));
        longer.refused(Some(&log_id(2, 97)), Some(&log_id(3, 346)));
        longer.refused(Some(&log_id(2, 97)), Some(&log_id(3, 200)));
        assert!(
            longer.behind(Some(&log_id(3, 300))),
            "the longest refusal is kept"
        );
    }

    #[test]
    fn the_bound_stays_below_the_sticky_backoff_it_replaces() {
        // openraft with a stale smaller-log flag stands no sooner than
        // lease + min + 2 × max (min is max / 3 here).
        let timing = timing();
        let backoff_earliest = timing.lease + timing.max / 3 + timing.max * 2;
        assert!(timing.overdue_after(true, timing.jitter_max()) < backoff_earliest);
        let unled_backoff_earliest = timing.max / 3 + timing.max * 2;
        assert!(timing.overdue_after(false, timing.jitter_max()) < unled_backoff_earliest);
    }
}
