//! `Watch`: streams the changes this node applied, filtered by name, from a
//! revision on. A watch reads the node's bounded history of changes with a
//! cursor of its own, so a slow watcher costs no memory beyond its stream's
//! bounded queue: when the history drops a revision the watcher has not been
//! sent, the watch ends with WATCH_TOO_SLOW instead of growing.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use prost::Message;
use tokio::sync::{mpsc, watch};
use tonic::{Code, Status};

use super::lock_service::{node_stopping, stopped};
use super::status::invalid_argument;
use quorumlock_core::consensus::{Compacted, ConsensusEngine, Revision};
use quorumlock_core::lock::{validate, Cause, Change, LockMode, Subject};
use quorumlock_proto::details::{self, reason};
use quorumlock_proto::limits::{KEY_BYTES_MAX, WATCHES_MAX};
use quorumlock_proto::v1::{self as pb, ErrorReason};

/// Bound of each watch's outgoing queue, in messages.
pub const WATCH_QUEUE_MAX: usize = 16;
/// Most events in one message.
pub const WATCH_MESSAGE_EVENTS_MAX: usize = 1_000;
/// Encoded bytes after which a message is sent (one event may exceed it,
/// and is sent alone: a maximal value fits the API's message limit).
pub const WATCH_MESSAGE_BYTES: usize = 256 << 10;
/// Longest time a watch whose events are all filtered out goes without a
/// progress message, while revisions advance.
pub const WATCH_PROGRESS_INTERVAL: Duration = Duration::from_secs(1);
/// Revisions read from the history at a time.
const REVISIONS_PER_READ: usize = 256;

/// What a watch selects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Selector {
    /// The name, or the start of the names with `prefix`.
    pub name: String,
    /// Whether `name` is a prefix.
    pub prefix: bool,
    /// Whether lock events are selected.
    pub locks: bool,
    /// Whether key events are selected.
    pub keys: bool,
}

impl Selector {
    /// Checks a request's selector.
    pub fn from_request(request: &pb::WatchRequest) -> Result<Selector, Status> {
        let name = validate::utf8_name("watched name", &request.name, KEY_BYTES_MAX)
            .or_else(|error| {
                // An empty name is a prefix of every name.
                if request.name.is_empty() && request.prefix {
                    Ok("")
                } else {
                    Err(error)
                }
            })
            .map_err(|error| invalid_argument("name", Some(KEY_BYTES_MAX as u64), error.to_string()))?
            .to_string();
        let (locks, keys) = match pb::WatchTarget::try_from(request.target) {
            Ok(pb::WatchTarget::All) => (true, true),
            Ok(pb::WatchTarget::Locks) => (true, false),
            Ok(pb::WatchTarget::Keys) => (false, true),
            Err(_) => {
                return Err(invalid_argument(
                    "target",
                    None,
                    format!("target {} is not a WatchTarget", request.target),
                ))
            }
        };
        Ok(Selector {
            name,
            prefix: request.prefix,
            locks,
            keys,
        })
    }

    fn matches(&self, name: &str) -> bool {
        if self.prefix {
            name.starts_with(&self.name)
        } else {
            name == self.name
        }
    }

    /// Whether the watch selects `change`.
    pub fn selects(&self, change: &Change) -> bool {
        match change.subject() {
            Subject::Lock(lock) => self.locks && self.matches(lock),
            Subject::Key(key) => self.keys && self.matches(key),
        }
    }
}

/// The watches a node serves now, bounded by [`WATCHES_MAX`].
#[derive(Debug, Default)]
pub struct WatchCount(AtomicUsize);

/// One admitted watch; dropping it frees its place.
#[derive(Debug)]
pub struct WatchSlot(Arc<WatchCount>);

impl Drop for WatchSlot {
    fn drop(&mut self) {
        self.0 .0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl WatchCount {
    /// Takes a place for one more watch, or refuses it with
    /// TOO_MANY_WATCHES.
    pub fn admit(self: &Arc<Self>) -> Result<WatchSlot, Status> {
        let taken = self
            .0
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |count| {
                (count < WATCHES_MAX).then_some(count + 1)
            });
        match taken {
            Ok(_) => Ok(WatchSlot(self.clone())),
            Err(_) => Err(details::status(
                Code::ResourceExhausted,
                format!("this node serves {WATCHES_MAX} watches, as many as it allows; watch on another node or later"),
                pb::ErrorDetail {
                    limit: WATCHES_MAX as u64,
                    ..reason(ErrorReason::TooManyWatches)
                },
            )),
        }
    }

    /// Watches served now.
    pub fn get(&self) -> usize {
        self.0.load(Ordering::Relaxed)
    }
}

/// OUT_OF_RANGE for a watch that asks for a revision this node does not keep.
pub fn compacted(compacted: Compacted) -> Status {
    details::status(
        Code::OutOfRange,
        format!(
            "revision {} is not kept on this node: its oldest is {}. Re-read the state and watch from now, or resume on a node that keeps the revision",
            compacted.asked, compacted.oldest
        ),
        pb::ErrorDetail {
            limit: compacted.oldest,
            ..reason(ErrorReason::RevisionCompacted)
        },
    )
}

/// RESOURCE_EXHAUSTED for a watch that fell behind the history.
fn too_slow(compacted: Compacted) -> Status {
    details::status(
        Code::ResourceExhausted,
        format!(
            "the watch fell behind: it needs revision {}, and this node keeps revisions from {} on (it dropped older ones, or installed a snapshot past them). Re-read the state and watch again",
            compacted.asked, compacted.oldest
        ),
        pb::ErrorDetail {
            limit: compacted.oldest,
            ..reason(ErrorReason::WatchTooSlow)
        },
    )
}

/// The first revision a watch of `from_revision` starts at on this node, or
/// OUT_OF_RANGE when this node does not keep it.
pub fn start_revision(engine: &dyn ConsensusEngine, from_revision: u64) -> Result<u64, Status> {
    let (oldest, last) = engine.state().history_span();
    let start = match from_revision {
        0 => last + 1,
        from => from,
    };
    if start < oldest {
        return Err(compacted(Compacted { asked: start, oldest }));
    }
    Ok(start)
}

fn wire_cause(cause: &Cause) -> pb::WatchEventCause {
    match cause {
        Cause::Released => pb::WatchEventCause::Released,
        Cause::Cancelled => pb::WatchEventCause::Cancelled,
        Cause::SessionClosed => pb::WatchEventCause::SessionClosed,
        Cause::SessionExpired => pb::WatchEventCause::SessionExpired,
        Cause::Forced { .. } => pb::WatchEventCause::Forced,
        Cause::MaxHold => pb::WatchEventCause::MaxHold,
    }
}

fn wire_mode(mode: LockMode, permits: u32) -> pb::LockMode {
    match (mode, permits) {
        (_, 1..) => pb::LockMode::Semaphore,
        (LockMode::Exclusive, 0) => pb::LockMode::Exclusive,
        (LockMode::Shared, 0) => pb::LockMode::Shared,
    }
}

/// The event a watcher is sent for `change` of `revision`.
pub fn wire_event(revision: u64, change: &Change) -> pb::WatchEvent {
    let event = pb::WatchEvent {
        revision,
        ..pb::WatchEvent::default()
    };
    match change {
        Change::Granted {
            lock,
            session,
            token,
            mode,
            permits,
        } => pb::WatchEvent {
            kind: pb::WatchEventKind::Granted.into(),
            lock: lock.clone().into_bytes(),
            session_id: session.get(),
            token: token.get(),
            mode: wire_mode(*mode, *permits).into(),
            permits: *permits,
            ..event
        },
        Change::Queued {
            lock,
            session,
            mode,
            permits,
        } => pb::WatchEvent {
            kind: pb::WatchEventKind::Queued.into(),
            lock: lock.clone().into_bytes(),
            session_id: session.get(),
            mode: wire_mode(*mode, *permits).into(),
            permits: *permits,
            ..event
        },
        Change::Left { lock, session, cause } => pb::WatchEvent {
            kind: pb::WatchEventKind::Left.into(),
            lock: lock.clone().into_bytes(),
            session_id: session.get(),
            cause: wire_cause(cause).into(),
            ..event
        },
        Change::Freed {
            lock,
            session,
            token,
            cause,
        } => pb::WatchEvent {
            kind: match cause {
                Cause::SessionExpired => pb::WatchEventKind::Expired,
                Cause::Forced { .. } | Cause::MaxHold => pb::WatchEventKind::Revoked,
                Cause::Released | Cause::SessionClosed | Cause::Cancelled => pb::WatchEventKind::Released,
            }
            .into(),
            lock: lock.clone().into_bytes(),
            session_id: session.get(),
            token: token.get(),
            cause: wire_cause(cause).into(),
            by: match cause {
                Cause::Forced { by } => by.clone(),
                _ => String::new(),
            },
            ..event
        },
        Change::Put { key, value, fence } => pb::WatchEvent {
            kind: pb::WatchEventKind::Put.into(),
            key: key.clone().into_bytes(),
            lock: fence.lock.clone().into_bytes(),
            token: fence.token.get(),
            value: value.clone(),
            ..event
        },
        Change::Deleted { key, fence } => pb::WatchEvent {
            kind: pb::WatchEventKind::Deleted.into(),
            key: key.clone().into_bytes(),
            lock: fence.lock.clone().into_bytes(),
            token: fence.token.get(),
            ..event
        },
        Change::DelayBegun { lock, ms } => pb::WatchEvent {
            kind: pb::WatchEventKind::LockDelayBegun.into(),
            lock: lock.clone().into_bytes(),
            delay_ms: *ms,
            ..event
        },
        Change::DelayEnded { lock } => pb::WatchEvent {
            kind: pb::WatchEventKind::LockDelayEnded.into(),
            lock: lock.clone().into_bytes(),
            ..event
        },
    }
}

/// Where a watch is: the next revision it needs, and how many of that
/// revision's selected events it was already sent (a revision whose events
/// did not fit one message is sent in parts).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Cursor {
    next: u64,
    sent_of_next: usize,
}

/// The next message of a watch at `cursor`, from `revisions` (a read of the
/// history from the cursor on, complete through `through`), and the cursor
/// after it. Whole revisions go in while they fit in
/// [`WATCH_MESSAGE_EVENTS_MAX`] events and [`WATCH_MESSAGE_BYTES`]; only a
/// revision that alone exceeds them is split, and a message that ends
/// inside a revision is complete through the revision before it. The
/// message may carry no events (the read held none the watch selects); the
/// caller decides whether such progress is worth sending.
fn next_message(
    selector: &Selector,
    revisions: &[Revision],
    through: u64,
    cursor: Cursor,
) -> (pb::WatchResponse, Cursor) {
    let mut events: Vec<pb::WatchEvent> = Vec::new();
    let mut bytes = 0;
    for kept in revisions.iter().filter(|kept| kept.revision >= cursor.next) {
        let skip = if kept.revision == cursor.next {
            cursor.sent_of_next
        } else {
            0
        };
        let selected: Vec<pb::WatchEvent> = kept
            .changes
            .iter()
            .filter(|change| selector.selects(change))
            .skip(skip)
            .map(|change| wire_event(kept.revision, change))
            .collect();
        if selected.is_empty() {
            continue;
        }
        let revision_bytes: usize = selected.iter().map(Message::encoded_len).sum();
        let complete_before = pb::WatchResponse {
            events: Vec::new(),
            revision: kept.revision - 1,
            created: false,
        };
        if !events.is_empty()
            && (events.len() + selected.len() > WATCH_MESSAGE_EVENTS_MAX
                || bytes + revision_bytes > WATCH_MESSAGE_BYTES)
        {
            // The revision does not fit beside what the message holds:
            // it starts the next message.
            let resume = Cursor {
                next: kept.revision,
                sent_of_next: skip,
            };
            return (
                pb::WatchResponse {
                    events,
                    ..complete_before
                },
                resume,
            );
        }
        for (taken, event) in selected.into_iter().enumerate() {
            let size = event.encoded_len();
            if !events.is_empty()
                && (events.len() >= WATCH_MESSAGE_EVENTS_MAX || bytes + size > WATCH_MESSAGE_BYTES)
            {
                // A revision too large for one message, split: a client
                // that resumes from it skips the events of it that it has
                // (every node orders them alike).
                let resume = Cursor {
                    next: kept.revision,
                    sent_of_next: skip + taken,
                };
                return (
                    pb::WatchResponse {
                        events,
                        ..complete_before
                    },
                    resume,
                );
            }
            bytes += size;
            events.push(event);
        }
    }
    let after = Cursor {
        next: through + 1,
        sent_of_next: 0,
    };
    (
        pb::WatchResponse {
            events,
            revision: through,
            created: false,
        },
        after,
    )
}

/// How a watch ends when its queue is full: after the messages queued, the
/// client gets this status.
type Ending = tokio::sync::oneshot::Sender<Status>;

/// Why a watch stopped sending.
enum Stop {
    /// The client went away.
    Gone,
    /// End with this status.
    End(Status),
}

/// Serves one admitted watch from revision `start` on: sends into
/// `replies` one message at a time, until the client goes away, the watch
/// falls behind the history, or the node stops. While its queue is full it
/// holds one message, and still notices the history dropping revisions it
/// needs and the node stopping: it then ends through `ending`, which the
/// client reads after the messages queued.
pub async fn serve_watch(
    engine: Arc<dyn ConsensusEngine>,
    selector: Selector,
    start: u64,
    replies: mpsc::Sender<Result<pb::WatchResponse, Status>>,
    ending: Ending,
    stopping: watch::Receiver<bool>,
    _slot: WatchSlot,
) {
    let state = engine.state();
    let mut cursor = Cursor {
        next: start,
        sent_of_next: 0,
    };
    let created = pb::WatchResponse {
        events: Vec::new(),
        revision: start - 1,
        created: true,
    };
    let mut reported = start - 1;
    let mut progress = tokio::time::interval(WATCH_PROGRESS_INTERVAL);
    progress.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut progress_due = false;
    let mut pending = Some(created);
    let stop = loop {
        // Send what is in hand, watching the history and the node while
        // the queue is full.
        if let Some(message) = pending.take() {
            let sent = tokio::select! {
                permit = replies.reserve() => match permit {
                    Ok(permit) => {
                        permit.send(Ok(message));
                        None
                    }
                    Err(_) => Some(Stop::Gone),
                },
                () = stopped(stopping.clone()) => Some(Stop::End(node_stopping())),
                Err(compacted) = fell_behind(state, cursor.next) => Some(Stop::End(too_slow(compacted))),
            };
            match sent {
                None => continue,
                Some(stop) => break stop,
            }
        }
        let changed = state.history_changed();
        tokio::pin!(changed);
        changed.as_mut().enable();
        let since = match state.changes_since(cursor.next, REVISIONS_PER_READ) {
            Ok(since) => since,
            Err(compacted) => break Stop::End(too_slow(compacted)),
        };
        let more = since.revisions.len() == REVISIONS_PER_READ;
        let (message, after) = next_message(&selector, &since.revisions, since.through, cursor);
        let ended_inside = after.next <= since.through;
        cursor = after;
        if !message.events.is_empty() || (progress_due && message.revision > reported) {
            reported = message.revision;
            progress_due = false;
            pending = Some(message);
            continue;
        }
        if more || ended_inside {
            continue;
        }
        tokio::select! {
            () = &mut changed => {}
            _ = progress.tick() => progress_due = true,
            () = replies.closed() => break Stop::Gone,
            () = stopped(stopping.clone()) => break Stop::End(node_stopping()),
        }
    };
    if let Stop::End(status) = stop {
        // After the queued messages: a full queue cannot take it.
        drop(replies);
        let _ = ending.send(status);
    }
}

/// Resolves with the refusal once the history no longer keeps revision
/// `next`, checked every [`WATCH_PROGRESS_INTERVAL`] and at every change.
async fn fell_behind(state: &quorumlock_core::consensus::AppliedState, next: u64) -> Result<(), Compacted> {
    loop {
        let changed = state.history_changed();
        tokio::pin!(changed);
        changed.as_mut().enable();
        let (oldest, _) = state.history_span();
        if next < oldest {
            return Err(Compacted { asked: next, oldest });
        }
        tokio::select! {
            () = &mut changed => {}
            () = tokio::time::sleep(WATCH_PROGRESS_INTERVAL) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use quorumlock_core::lock::{Fence, FencingToken, SessionId};

    fn selector(name: &str, prefix: bool) -> Selector {
        Selector {
            name: name.into(),
            prefix,
            locks: true,
            keys: true,
        }
    }

    fn granted(lock: &str, token: u64) -> Change {
        Change::Granted {
            lock: lock.into(),
            session: SessionId::new(1),
            token: FencingToken::new(token),
            mode: LockMode::Exclusive,
            permits: 0,
        }
    }

    fn put(key: &str, size: usize) -> Change {
        Change::Put {
            key: key.into(),
            value: vec![7; size],
            fence: Fence {
                lock: "l".into(),
                token: FencingToken::new(1),
            },
        }
    }

    fn revision(revision: u64, changes: Vec<Change>) -> Revision {
        Revision {
            revision,
            changes: changes.into(),
        }
    }

    fn start(next: u64) -> Cursor {
        Cursor {
            next,
            sent_of_next: 0,
        }
    }

    /// Every message [`next_message`] makes from `revisions`, up to and
    /// including the one complete through `through`, and the cursor after.
    fn messages(
        selector: &Selector,
        revisions: &[Revision],
        through: u64,
        mut cursor: Cursor,
    ) -> (Vec<pb::WatchResponse>, Cursor) {
        let mut out = Vec::new();
        loop {
            let (message, after) = next_message(selector, revisions, through, cursor);
            assert!(after != cursor, "every message moves the cursor");
            cursor = after;
            out.push(message);
            if cursor.next > through {
                return (out, cursor);
            }
        }
    }

    #[test]
    fn revisions_that_fit_are_never_split_across_messages() {
        let many: Vec<Change> = (0..999).map(|token| granted("a", token + 1)).collect();
        let revisions = [
            revision(1, many),
            revision(2, vec![granted("a", 1_000), granted("a", 1_001)]),
        ];
        let (out, _) = messages(&selector("a", false), &revisions, 2, start(1));
        let shape: Vec<(usize, u64)> = out
            .iter()
            .map(|message| (message.events.len(), message.revision))
            .collect();
        assert_eq!(
            shape,
            [(999, 1), (2, 2)],
            "revision 2 starts the next message whole"
        );
    }

    #[test]
    fn a_selector_matches_a_name_exactly_or_by_prefix_and_by_target() {
        assert!(selector("jobs/a", false).selects(&granted("jobs/a", 1)));
        assert!(!selector("jobs/a", false).selects(&granted("jobs/ab", 1)));
        assert!(selector("jobs/", true).selects(&granted("jobs/ab", 1)));
        assert!(selector("", true).selects(&put("anything", 1)));
        let locks_only = Selector {
            keys: false,
            ..selector("", true)
        };
        assert!(locks_only.selects(&granted("x", 1)));
        assert!(!locks_only.selects(&put("x", 1)));
    }

    #[test]
    fn messages_carry_only_selected_events_and_end_complete_through_the_read() {
        let revisions = [
            revision(5, vec![granted("a", 1), granted("b", 2)]),
            revision(7, vec![granted("b", 3)]),
        ];
        let (out, after) = messages(&selector("a", false), &revisions, 9, start(5));
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].events.len(), 1);
        assert_eq!(out[0].events[0].revision, 5);
        assert_eq!(out[0].revision, 9);
        assert_eq!(after, start(10));
    }

    #[test]
    fn a_revision_too_large_for_one_message_is_split_and_resumable_without_repeats() {
        let big = WATCH_MESSAGE_BYTES / 2 + 1;
        let revisions = [
            revision(4, vec![put("k1", 10)]),
            revision(5, vec![put("k2", big), put("k3", big), put("k4", big)]),
        ];
        let (out, _) = messages(&selector("", true), &revisions, 5, start(4));
        let all: Vec<String> = out
            .iter()
            .flat_map(|message| &message.events)
            .map(|event| String::from_utf8(event.key.clone()).unwrap())
            .collect();
        assert_eq!(all, ["k1", "k2", "k3", "k4"]);
        // Every message but the last is complete only through revision 4,
        // the one before the revision it split.
        assert!(out.len() >= 3, "{} messages", out.len());
        for message in &out[..out.len() - 1] {
            assert_eq!(message.revision, 4);
        }
        assert_eq!(out.last().unwrap().revision, 5);
        // A resume inside revision 5, after k2, sends k3 and k4 only.
        let (resumed, _) = messages(
            &selector("", true),
            &revisions[1..],
            5,
            Cursor {
                next: 5,
                sent_of_next: 1,
            },
        );
        let rest: Vec<String> = resumed
            .iter()
            .flat_map(|message| &message.events)
            .map(|event| String::from_utf8(event.key.clone()).unwrap())
            .collect();
        assert_eq!(rest, ["k3", "k4"]);
    }

    #[test]
    fn a_message_holds_at_most_the_event_limit() {
        let changes: Vec<Change> = (0..2_500).map(|token| granted("a", token + 1)).collect();
        let (out, _) = messages(&selector("a", false), &[revision(3, changes)], 3, start(3));
        let sizes: Vec<usize> = out.iter().map(|message| message.events.len()).collect();
        assert_eq!(sizes, [1_000, 1_000, 500]);
    }

    #[test]
    fn revisions_before_the_cursor_are_not_sent_again() {
        let revisions = [
            revision(2, vec![granted("a", 1)]),
            revision(3, vec![granted("a", 2)]),
        ];
        let (out, after) = messages(&selector("a", false), &revisions, 3, start(3));
        let tokens: Vec<u64> = out
            .iter()
            .flat_map(|message| &message.events)
            .map(|event| event.token)
            .collect();
        assert_eq!(tokens, [2]);
        assert_eq!(after, start(4));
    }
}
