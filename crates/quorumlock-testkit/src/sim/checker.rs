//! The properties every simulated run must keep, whatever the engine.
//!
//! Engines report what their replicas apply (grants, accepted fenced writes,
//! state after each index, the changes each replica's history recorded) and
//! what clients saw acknowledged; the checker records the first broken
//! property with the values that broke it.

use std::collections::{BTreeMap, BTreeSet};

use quorumlock_core::consensus::{AppliedState, NodeId};
use quorumlock_core::lock::{Cause, Change, Fence, FencingToken, Grant, LockState, SessionId, Timed};

/// A fenced write a client saw acknowledged, with its real-time interval.
#[derive(Debug, Clone)]
pub struct AckedWrite {
    /// The client that wrote it.
    pub client: usize,
    /// The key written.
    pub key: String,
    /// The (unique) value written.
    pub value: Vec<u8>,
    /// The fence presented.
    pub fence: Fence,
    /// Global simulated time the write was sent.
    pub invoked_ms: u64,
    /// Global simulated time its acknowledgement arrived.
    pub completed_ms: u64,
}

/// What ended through the log in the timed ways: grants past their
/// maximum hold, and lock-delays.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct TimedEnds {
    /// Grants ended because their maximum hold time passed.
    pub holds_ended: u64,
    /// Lock-delays begun.
    pub delays_begun: u64,
    /// Lock-delays ended.
    pub delays_ended: u64,
}

impl TimedEnds {
    /// What one revision's changes did.
    fn of(changes: &[Change]) -> TimedEnds {
        let mut ends = TimedEnds::default();
        for change in changes {
            match change {
                Change::Freed {
                    cause: Cause::MaxHold,
                    ..
                } => ends.holds_ended += 1,
                Change::DelayBegun { .. } => ends.delays_begun += 1,
                Change::DelayEnded { .. } => ends.delays_ended += 1,
                _ => {}
            }
        }
        ends
    }

    fn is_none(&self) -> bool {
        *self == TimedEnds::default()
    }

    fn add(&mut self, other: TimedEnds) {
        self.holds_ended += other.holds_ended;
        self.delays_begun += other.delays_begun;
        self.delays_ended += other.delays_ended;
    }
}

/// Collects observations and the violations they reveal.
#[derive(Default)]
pub struct Checker {
    /// Every grant ever applied anywhere, by token: the same token must mean
    /// the same lock and session on every replica.
    grants: BTreeMap<FencingToken, (String, SessionId)>,
    /// Per replica and lock, the last token granted in apply order.
    last_grant: BTreeMap<(NodeId, String), FencingToken>,
    /// Per replica, tokens at or below this were issued before its state was
    /// last restored; grants after it must be above.
    token_floor: BTreeMap<NodeId, FencingToken>,
    /// Per replica and lock, the last token the fenced store accepted.
    last_put: BTreeMap<(NodeId, String), FencingToken>,
    /// The serialized state after each applied index, as first seen.
    states: BTreeMap<u64, (NodeId, Vec<u8>)>,
    /// Per replica, the locks its applied state has in a lock-delay, as
    /// followed through its history.
    delayed: BTreeMap<NodeId, BTreeSet<String>>,
    /// Per revision that ended a hold or began or ended a lock-delay, what
    /// it did, as first read from any replica.
    timed_ends: BTreeMap<u64, TimedEnds>,
    acked: Vec<AckedWrite>,
    violations: Vec<String>,
}

impl Checker {
    /// Records a broken property.
    pub fn violation(&mut self, violation: String) {
        self.violations.push(violation);
    }

    /// The first broken property, if any.
    pub fn first_violation(&self) -> Option<&String> {
        self.violations.first()
    }

    /// A replica applied a grant (a new holder got `grant.token`).
    pub fn granted(&mut self, node: NodeId, grant: &Grant) {
        let known = self
            .grants
            .entry(grant.token)
            .or_insert_with(|| (grant.lock.clone(), grant.session));
        if *known != (grant.lock.clone(), grant.session) {
            let known = known.clone();
            self.violation(format!(
                "grant agreement: node {node} granted token {} of lock {:?} to session {}, but \
                 another replica granted that token of lock {:?} to session {}",
                grant.token, grant.lock, grant.session, known.0, known.1
            ));
        }
        let floor = self
            .token_floor
            .get(&node)
            .copied()
            .unwrap_or(FencingToken::new(0));
        if grant.token <= floor {
            self.violation(format!(
                "token monotonicity: node {node} granted token {} of lock {:?} at or below {floor}, \
                 which was already issued when its state was restored",
                grant.token, grant.lock
            ));
        }
        let last = self
            .last_grant
            .entry((node, grant.lock.clone()))
            .or_insert(FencingToken::new(0));
        if grant.token <= *last {
            let last = *last;
            self.violation(format!(
                "token monotonicity: node {node} granted lock {:?} token {} after token {last}",
                grant.lock, grant.token
            ));
        } else {
            *last = grant.token;
        }
    }

    /// A replica's in-memory state was replaced: from a snapshot, or from
    /// nothing at a restart. Its apply order starts again from there.
    pub fn restored(&mut self, node: NodeId, state: &LockState) {
        self.last_grant.retain(|(id, _), _| *id != node);
        self.last_put.retain(|(id, _), _| *id != node);
        self.token_floor
            .insert(node, FencingToken::new(state.next_token().get() - 1));
    }

    /// A replica's state was replaced by one the checker cannot see (an
    /// engine's snapshot install): its apply order starts again.
    pub fn reset(&mut self, node: NodeId) {
        self.last_grant.retain(|(id, _), _| *id != node);
        self.last_put.retain(|(id, _), _| *id != node);
        self.token_floor.remove(&node);
    }

    /// A replica's fenced store accepted a write under `fence`.
    pub fn put_accepted(&mut self, node: NodeId, fence: &Fence) {
        let last = self
            .last_put
            .entry((node, fence.lock.clone()))
            .or_insert(FencingToken::new(0));
        if fence.token < *last {
            let last = *last;
            self.violation(format!(
                "fencing: node {node}'s store accepted token {} for lock {:?} after accepting {last}",
                fence.token, fence.lock
            ));
        } else {
            *last = fence.token;
        }
    }

    /// A replica's state after applying everything up to `index`; replicas
    /// that applied the same indices must serialize identically.
    pub fn applied_state(&mut self, node: NodeId, index: u64, bytes: Vec<u8>) {
        match self.states.get(&index) {
            None => {
                self.states.insert(index, (node, bytes));
            }
            Some((first, known)) if *known != bytes => {
                let first = *first;
                self.violation(format!(
                    "state agreement: node {node}'s lock state after index {index} differs from \
                     node {first}'s"
                ));
            }
            Some(_) => {}
        }
    }

    /// Reads the changes `state` applied after revision `through` (the last
    /// one read from it; `None` for a state not read yet) and checks them;
    /// returns the revision read through. A state whose history no longer
    /// reaches back there (a snapshot replaced it) is read afresh.
    pub fn follow(&mut self, node: NodeId, state: &AppliedState, through: Option<u64>) -> u64 {
        let since = through.and_then(|through| state.changes_since(through + 1, usize::MAX).ok());
        let Some(since) = since else {
            let (delayed, index) = state.read_indexed(|state, index| (delayed_locks(state), index));
            self.delayed.insert(node, delayed);
            return index;
        };
        for revision in &since.revisions {
            self.applied_changes(node, revision.revision, &revision.changes);
        }
        since.through
    }

    /// The changes a replica applied at `revision`, in order: no lock is
    /// granted while the replica's state has it in a lock-delay.
    pub fn applied_changes(&mut self, node: NodeId, revision: u64, changes: &[Change]) {
        let delayed = self.delayed.entry(node).or_default();
        let mut found = Vec::new();
        for change in changes {
            match change {
                Change::DelayBegun { lock, .. } => {
                    delayed.insert(lock.clone());
                }
                Change::DelayEnded { lock } => {
                    delayed.remove(lock);
                }
                Change::Granted {
                    lock, session, token, ..
                } if delayed.contains(lock) => found.push(format!(
                    "lock-delay: node {node} granted lock {lock:?} to session {session} under token \
                     {token} at revision {revision}, while its state had the lock in a lock-delay"
                )),
                _ => {}
            }
        }
        self.violations.extend(found);
        let ends = TimedEnds::of(changes);
        if !ends.is_none() {
            self.timed_ends.entry(revision).or_insert(ends);
        }
    }

    /// Holds ended and lock-delays begun and ended, over every revision any
    /// replica was followed through.
    pub fn timed_ends(&self) -> TimedEnds {
        let mut total = TimedEnds::default();
        for ends in self.timed_ends.values() {
            total.add(*ends);
        }
        total
    }

    /// A client saw a fenced write acknowledged.
    pub fn put_acked(&mut self, write: AckedWrite) {
        self.acked.push(write);
    }

    /// Acknowledged writes.
    pub fn acked_writes(&self) -> usize {
        self.acked.len()
    }

    /// Fencing as clients see it: a write acknowledged before another began
    /// on the same lock was accepted under a token no higher than the later one.
    pub fn check_realtime_fencing(&mut self) {
        let mut found = Vec::new();
        for earlier in &self.acked {
            for later in &self.acked {
                if earlier.fence.lock == later.fence.lock
                    && earlier.completed_ms < later.invoked_ms
                    && later.fence.token < earlier.fence.token
                {
                    found.push(format!(
                        "fencing: client {}'s write under token {} of lock {:?} was acknowledged at \
                         {} ms, after client {}'s write under token {} was acknowledged at {} ms",
                        later.client,
                        later.fence.token,
                        later.fence.lock,
                        later.completed_ms,
                        earlier.client,
                        earlier.fence.token,
                        earlier.completed_ms
                    ));
                }
            }
        }
        self.violations.extend(found);
    }

    /// Durability: every acknowledged write is in the final state, or was
    /// overwritten under a higher token. A holder writes once per grant, so an
    /// equal token means the same write.
    pub fn check_durability(&mut self, node: NodeId, state: &LockState) {
        let mut found = Vec::new();
        for write in &self.acked {
            match state.get(&write.key) {
                None => found.push(format!(
                    "durability: node {node} lost key {:?}, acknowledged to client {} under token {}",
                    write.key, write.client, write.fence.token
                )),
                Some(entry)
                    if entry.written_by.lock != write.fence.lock
                        || entry.written_by.token < write.fence.token
                        || (entry.written_by.token == write.fence.token && entry.value != write.value) =>
                {
                    found.push(format!(
                        "durability: node {node} holds key {:?} written under token {}, but client {}'s \
                         write under token {} was acknowledged",
                        write.key, entry.written_by.token, write.client, write.fence.token
                    ))
                }
                Some(_) => {}
            }
        }
        self.violations.extend(found);
    }
}

/// The locks `state` has in a lock-delay.
fn delayed_locks(state: &LockState) -> BTreeSet<String> {
    state
        .timed()
        .into_iter()
        .filter_map(|timed| match timed {
            Timed::Delay { lock, .. } => Some(lock),
            Timed::Hold { .. } => None,
        })
        .collect()
}
