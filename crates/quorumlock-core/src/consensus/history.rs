//! The changes a replica applied recently, by revision (the log index or
//! slot of the entry that made them), for watchers: bounded in changes and
//! in bytes, oldest dropped first. Pure: no clock, no I/O, no locking.

use std::collections::VecDeque;
use std::sync::Arc;

use crate::lock::Change;

/// Most changes kept by default.
pub const HISTORY_CHANGES_DEFAULT: usize = 100_000;
/// Most bytes of changes kept by default (values of fenced writes included).
pub const HISTORY_BYTES_DEFAULT: usize = 64 << 20;

/// How much a history keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HistoryLimits {
    /// Most changes kept.
    pub changes: usize,
    /// Most bytes of changes kept, as [`Change::footprint`] counts them.
    pub bytes: usize,
}

impl Default for HistoryLimits {
    fn default() -> Self {
        HistoryLimits {
            changes: HISTORY_CHANGES_DEFAULT,
            bytes: HISTORY_BYTES_DEFAULT,
        }
    }
}

/// The changes of one revision, in the order they were made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Revision {
    /// The revision: the index of the entry whose commands made them.
    pub revision: u64,
    /// What they changed; never empty.
    pub changes: Arc<[Change]>,
}

/// A read of the history from a revision on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Since {
    /// The revisions with changes from the revision asked for on, oldest
    /// first, at most as many as asked.
    pub revisions: Vec<Revision>,
    /// Every change up to this revision was in the reply (or in an earlier
    /// one): the last revision read, or the last applied when the read
    /// reached the end.
    pub through: u64,
}

/// The revision asked for is older than the history keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Compacted {
    /// The revision asked for.
    pub asked: u64,
    /// The oldest revision the history can still answer from.
    pub oldest: u64,
}

/// The recent changes of one replica.
#[derive(Debug)]
pub struct History {
    limits: HistoryLimits,
    revisions: VecDeque<Revision>,
    /// Changes kept, all revisions together.
    changes: usize,
    /// Bytes kept, as [`Change::footprint`] counts them.
    bytes: usize,
    /// Every change of a revision from this one on is kept.
    oldest: u64,
    /// The last revision applied, with changes or without.
    last: u64,
}

impl History {
    /// An empty history of a replica whose state holds every entry up to
    /// `applied`: it answers from `applied + 1` on.
    pub fn new(limits: HistoryLimits, applied: u64) -> History {
        History {
            limits,
            revisions: VecDeque::new(),
            changes: 0,
            bytes: 0,
            oldest: applied + 1,
            last: applied,
        }
    }

    /// The oldest revision a read can start from.
    pub fn oldest(&self) -> u64 {
        self.oldest
    }

    /// The last revision applied.
    pub fn last(&self) -> u64 {
        self.last
    }

    /// How much it keeps.
    pub fn limits(&self) -> HistoryLimits {
        self.limits
    }

    /// Keeps at most what `limits` allow from now on, dropping the oldest
    /// revisions at once if they exceed them.
    pub fn set_limits(&mut self, limits: HistoryLimits) {
        self.limits = limits;
        self.trim();
    }

    /// Changes kept now.
    pub fn len(&self) -> usize {
        self.changes
    }

    /// Whether no change is kept.
    pub fn is_empty(&self) -> bool {
        self.changes == 0
    }

    /// Records that entry `revision` was applied and made `changes`; drops
    /// the oldest revisions while the limits are exceeded. A revision's
    /// changes are kept whole or not at all. Revisions only rise; an entry
    /// applied in parts (the same revision again) adds to its changes, but
    /// a watch that read the first part has moved past the revision, so the
    /// engines record each entry whole (one `apply_entry` per entry).
    pub fn record(&mut self, revision: u64, changes: Vec<Change>) {
        assert!(
            revision >= self.last,
            "revision {revision} recorded after revision {}",
            self.last
        );
        self.last = revision;
        if changes.is_empty() {
            return;
        }
        let bytes: usize = changes.iter().map(Change::footprint).sum();
        self.changes += changes.len();
        self.bytes += bytes;
        match self.revisions.back_mut() {
            Some(back) if back.revision == revision => {
                let mut joined = back.changes.to_vec();
                joined.extend(changes);
                back.changes = joined.into();
            }
            _ => self.revisions.push_back(Revision {
                revision,
                changes: changes.into(),
            }),
        }
        self.trim();
    }

    fn trim(&mut self) {
        while self.changes > self.limits.changes || self.bytes > self.limits.bytes {
            let Some(dropped) = self.revisions.pop_front() else {
                break;
            };
            self.changes -= dropped.changes.len();
            self.bytes -= dropped.changes.iter().map(Change::footprint).sum::<usize>();
            self.oldest = dropped.revision + 1;
        }
    }

    /// Forgets everything: the state was replaced by one that holds every
    /// entry up to `applied` (a snapshot install), so the changes before
    /// it are unknown here.
    pub fn reset(&mut self, applied: u64) {
        *self = History::new(self.limits, applied);
    }

    /// The revisions with changes from `from` on, at most `most` of them.
    /// `from` may lie ahead of the last applied revision (nothing yet).
    pub fn since(&self, from: u64, most: usize) -> Result<Since, Compacted> {
        if from < self.oldest {
            return Err(Compacted {
                asked: from,
                oldest: self.oldest,
            });
        }
        let start = self.revisions.partition_point(|kept| kept.revision < from);
        let revisions: Vec<Revision> = self.revisions.iter().skip(start).take(most).cloned().collect();
        let reached_end = start + revisions.len() == self.revisions.len();
        let through = match revisions.last() {
            Some(last) if !reached_end => last.revision,
            // Nothing more is kept: complete through the last applied, but
            // never claim revisions before `from` were read.
            _ => self.last.max(from.saturating_sub(1)),
        };
        Ok(Since { revisions, through })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lock::{Cause, SessionId};

    fn left(lock: &str) -> Change {
        Change::Left {
            lock: lock.into(),
            session: SessionId::new(1),
            cause: Cause::Cancelled,
        }
    }

    fn revisions(since: &Since) -> Vec<u64> {
        since.revisions.iter().map(|kept| kept.revision).collect()
    }

    #[test]
    fn a_read_returns_every_revision_with_changes_from_the_one_asked_for() {
        let mut history = History::new(HistoryLimits::default(), 10);
        history.record(11, vec![left("a")]);
        history.record(12, vec![]);
        history.record(13, vec![left("b"), left("c")]);
        let all = history.since(11, 100).unwrap();
        assert_eq!(revisions(&all), vec![11, 13]);
        assert_eq!(all.through, 13);
        let later = history.since(12, 100).unwrap();
        assert_eq!(revisions(&later), vec![13]);
        assert_eq!(later.revisions[0].changes.len(), 2);
    }

    #[test]
    fn a_read_at_the_end_is_complete_through_the_last_applied() {
        let mut history = History::new(HistoryLimits::default(), 0);
        history.record(1, vec![left("a")]);
        history.record(2, vec![]);
        history.record(3, vec![]);
        let tail = history.since(2, 100).unwrap();
        assert!(tail.revisions.is_empty());
        assert_eq!(tail.through, 3);
        // A revision ahead of the last applied: nothing yet, and nothing
        // before it claimed.
        let ahead = history.since(9, 100).unwrap();
        assert!(ahead.revisions.is_empty());
        assert_eq!(ahead.through, 8);
    }

    #[test]
    fn a_partial_read_is_complete_only_through_its_last_revision() {
        let mut history = History::new(HistoryLimits::default(), 0);
        for revision in 1..=5 {
            history.record(revision, vec![left("a")]);
        }
        let first = history.since(1, 2).unwrap();
        assert_eq!(revisions(&first), vec![1, 2]);
        assert_eq!(first.through, 2);
        let rest = history.since(first.through + 1, 100).unwrap();
        assert_eq!(revisions(&rest), vec![3, 4, 5]);
    }

    #[test]
    fn the_oldest_revisions_go_first_and_reads_before_them_are_refused() {
        let limits = HistoryLimits {
            changes: 3,
            bytes: usize::MAX,
        };
        let mut history = History::new(limits, 0);
        history.record(1, vec![left("a")]);
        history.record(2, vec![left("a"), left("b")]);
        history.record(3, vec![left("a")]);
        assert_eq!(history.len(), 3);
        assert_eq!(history.oldest(), 2);
        assert_eq!(history.since(1, 10), Err(Compacted { asked: 1, oldest: 2 }));
        assert_eq!(revisions(&history.since(2, 10).unwrap()), vec![2, 3]);
    }

    #[test]
    fn retention_is_bounded_in_bytes_too() {
        let put = |size: usize| Change::Put {
            key: "k".into(),
            value: vec![0; size],
            fence: crate::lock::Fence {
                lock: "l".into(),
                token: crate::lock::FencingToken::new(1),
            },
        };
        let limits = HistoryLimits {
            changes: usize::MAX,
            bytes: 10_000,
        };
        let mut history = History::new(limits, 0);
        for revision in 1..=10 {
            history.record(revision, vec![put(3_000)]);
        }
        assert!(history.bytes <= 10_000, "kept {} bytes", history.bytes);
        assert_eq!(history.len(), 3);
        assert_eq!(history.oldest(), 8);
    }

    #[test]
    fn a_revision_too_large_for_the_limits_is_not_kept_and_its_readers_are_refused() {
        let limits = HistoryLimits {
            changes: 1,
            bytes: usize::MAX,
        };
        let mut history = History::new(limits, 0);
        history.record(1, vec![left("a"), left("b")]);
        assert!(history.is_empty());
        assert_eq!(history.since(1, 10), Err(Compacted { asked: 1, oldest: 2 }));
        assert!(history.since(2, 10).unwrap().revisions.is_empty());
    }

    #[test]
    fn a_reset_forgets_what_came_before_the_installed_state() {
        let mut history = History::new(HistoryLimits::default(), 0);
        history.record(1, vec![left("a")]);
        history.reset(50);
        assert_eq!(history.since(2, 10), Err(Compacted { asked: 2, oldest: 51 }));
        history.record(51, vec![left("b")]);
        assert_eq!(revisions(&history.since(51, 10).unwrap()), vec![51]);
    }
}
