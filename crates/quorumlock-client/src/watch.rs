//! Watches: a stream of what happens to locks and fenced keys, resumed on
//! another node after a failure without losing or repeating an event.

use std::collections::{BTreeSet, VecDeque};
use std::time::{Duration, Instant};

use quorumlock_proto::limits::{API_MESSAGE_BYTES_MAX, KEY_BYTES_MAX};
use quorumlock_proto::v1::{self as pb, lock_client::LockClient};
use quorumlock_proto::{FencingToken, SessionId};
use tonic::{Status, Streaming};

use crate::backoff::Backoff;
use crate::connection::{retryable, Client, LockMode};
use crate::endpoints::Picked;
use crate::error::{code_name, ClientError, Refusal};

/// Which events a watch selects.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum WatchTarget {
    /// Events of locks and of keys whose name matches.
    #[default]
    All,
    /// Events of locks (and semaphores) only.
    Locks,
    /// Events of fenced keys only.
    Keys,
}

/// What a watch selects and where it starts.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WatchOptions {
    /// The lock or key name, or with `prefix` the start of the names
    /// (empty: everything).
    pub name: String,
    /// Whether `name` is a prefix.
    pub prefix: bool,
    /// The first revision to see events of; 0 for "from now".
    pub from_revision: u64,
    /// Lock events, key events, or both.
    pub target: WatchTarget,
}

impl WatchOptions {
    /// Everything whose name starts with `prefix`, from now.
    pub fn prefix(prefix: impl Into<String>) -> WatchOptions {
        WatchOptions {
            name: prefix.into(),
            prefix: true,
            ..WatchOptions::default()
        }
    }

    /// The lock or key called `name`, from now.
    pub fn name(name: impl Into<String>) -> WatchOptions {
        WatchOptions {
            name: name.into(),
            ..WatchOptions::default()
        }
    }

    /// The same, starting at `revision` (0: from now).
    pub fn from_revision(self, revision: u64) -> WatchOptions {
        WatchOptions {
            from_revision: revision,
            ..self
        }
    }

    /// The same, selecting only `target`'s events.
    pub fn target(self, target: WatchTarget) -> WatchOptions {
        WatchOptions { target, ..self }
    }
}

/// What happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    /// A session was granted the lock, or permits of the semaphore.
    Granted,
    /// A holder released the lock or closed its session.
    Released,
    /// A holder's session expired, and with it the hold.
    Expired,
    /// A session joined the queue.
    Queued,
    /// A waiter left the queue without the lock.
    Left,
    /// A fenced write stored a value.
    Put,
    /// A fenced delete removed a key.
    Deleted,
    /// A holder's grant was ended for it: by an administrator (cause
    /// [`EventCause::Forced`]) or its maximum hold time
    /// ([`EventCause::MaxHold`]).
    Revoked,
    /// A lock-delay began: nobody is granted the lock for
    /// [`WatchEvent::delay`].
    LockDelayBegun,
    /// The lock-delay passed; the grants that follow in the same revision
    /// are the waiters it held back.
    LockDelayEnded,
    /// A kind this client does not know (a newer server).
    Other(i32),
}

impl EventKind {
    fn from_pb(kind: i32) -> EventKind {
        match pb::WatchEventKind::try_from(kind) {
            Ok(pb::WatchEventKind::Granted) => EventKind::Granted,
            Ok(pb::WatchEventKind::Released) => EventKind::Released,
            Ok(pb::WatchEventKind::Expired) => EventKind::Expired,
            Ok(pb::WatchEventKind::Queued) => EventKind::Queued,
            Ok(pb::WatchEventKind::Left) => EventKind::Left,
            Ok(pb::WatchEventKind::Put) => EventKind::Put,
            Ok(pb::WatchEventKind::Deleted) => EventKind::Deleted,
            Ok(pb::WatchEventKind::Revoked) => EventKind::Revoked,
            Ok(pb::WatchEventKind::LockDelayBegun) => EventKind::LockDelayBegun,
            Ok(pb::WatchEventKind::LockDelayEnded) => EventKind::LockDelayEnded,
            Ok(pb::WatchEventKind::Unspecified) | Err(_) => EventKind::Other(kind),
        }
    }

    /// The kind's name as `quorumlock watch` prints it.
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Granted => "granted",
            EventKind::Released => "released",
            EventKind::Expired => "expired",
            EventKind::Queued => "queued",
            EventKind::Left => "left",
            EventKind::Put => "put",
            EventKind::Deleted => "deleted",
            EventKind::Revoked => "revoked",
            EventKind::LockDelayBegun => "lock-delay-begun",
            EventKind::LockDelayEnded => "lock-delay-ended",
            EventKind::Other(_) => "other",
        }
    }
}

/// Why a hold or a wait ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventCause {
    /// Not an end (grants, queue joins, writes).
    None,
    /// The holder released the lock.
    Released,
    /// The waiter cancelled its wait.
    Cancelled,
    /// The session closed.
    SessionClosed,
    /// The session expired.
    SessionExpired,
    /// An administrator forced the grant free.
    Forced,
    /// The grant's maximum hold time passed.
    MaxHold,
    /// A cause this client does not know (a newer server).
    Other(i32),
}

impl EventCause {
    fn from_pb(cause: i32) -> EventCause {
        match pb::WatchEventCause::try_from(cause) {
            Ok(pb::WatchEventCause::Unspecified) => EventCause::None,
            Ok(pb::WatchEventCause::Released) => EventCause::Released,
            Ok(pb::WatchEventCause::Cancelled) => EventCause::Cancelled,
            Ok(pb::WatchEventCause::SessionClosed) => EventCause::SessionClosed,
            Ok(pb::WatchEventCause::SessionExpired) => EventCause::SessionExpired,
            Ok(pb::WatchEventCause::Forced) => EventCause::Forced,
            Ok(pb::WatchEventCause::MaxHold) => EventCause::MaxHold,
            Err(_) => EventCause::Other(cause),
        }
    }

    /// The cause's name as `quorumlock watch` prints it.
    pub fn as_str(self) -> &'static str {
        match self {
            EventCause::None => "",
            EventCause::Released => "released",
            EventCause::Cancelled => "cancelled",
            EventCause::SessionClosed => "session-closed",
            EventCause::SessionExpired => "session-expired",
            EventCause::Forced => "forced",
            EventCause::MaxHold => "max-hold",
            EventCause::Other(_) => "other",
        }
    }
}

/// One event of a watch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatchEvent {
    /// The log index (or slot) of the command that did it.
    pub revision: u64,
    /// What happened.
    pub kind: EventKind,
    /// The lock; for a write, its fencing lock.
    pub lock: String,
    /// The key, for a write; empty otherwise.
    pub key: String,
    /// The session granted, queued, leaving or letting go; `None` for writes.
    pub session: Option<SessionId>,
    /// The token granted or let go, or the write's fence token.
    pub token: Option<FencingToken>,
    /// The mode granted or asked for.
    pub mode: LockMode,
    /// Semaphore permits granted or asked for; 0 for a lock.
    pub permits: u32,
    /// The value a put stored.
    pub value: Vec<u8>,
    /// Why a hold or a wait ended.
    pub cause: EventCause,
    /// For a revoked grant, who forced it free.
    pub by: String,
    /// For [`EventKind::LockDelayBegun`], the delay's length; zero otherwise.
    pub delay: Duration,
    /// Its place among the events of its revision that the watch selects
    /// (0 first): every node gives them in the same order.
    pub index: usize,
}

impl WatchEvent {
    fn from_pb(event: pb::WatchEvent, index: usize) -> WatchEvent {
        WatchEvent {
            index,
            revision: event.revision,
            kind: EventKind::from_pb(event.kind),
            lock: String::from_utf8_lossy(&event.lock).into_owned(),
            key: String::from_utf8_lossy(&event.key).into_owned(),
            session: (event.session_id != 0).then(|| SessionId::new(event.session_id)),
            token: (event.token != 0).then(|| FencingToken::new(event.token)),
            mode: LockMode::from_pb(event.mode),
            permits: event.permits,
            value: event.value,
            cause: EventCause::from_pb(event.cause),
            by: event.by,
            delay: Duration::from_millis(u64::from(event.delay_ms)),
        }
    }
}

/// A running watch. [`Watch::next`] returns its events in revision order;
/// when its node fails it resumes on another from the revision after the
/// last one it completed, skipping what it already returned, so no event
/// is lost or repeated as long as the nodes keep the revisions (README,
/// "Watches").
pub struct Watch {
    client: Client,
    request: pb::WatchRequest,
    stream: Option<Streaming<pb::WatchResponse>>,
    /// The revision the watch started after.
    started_after: u64,
    /// Every selected event up to this revision has been received.
    through: u64,
    /// The last event received: its revision and its place among that
    /// revision's selected events; events at or before it are not returned
    /// again after a resume.
    last: Option<(u64, usize)>,
    /// The place among its revision's events of the next event received.
    arriving: Option<(u64, usize)>,
    ready: VecDeque<WatchEvent>,
    /// The node serving the stream.
    serving: Option<Picked>,
    /// Whether a node accepted the watch once: from then on it continues
    /// from the revision after `through`, never from "now".
    resuming: bool,
}

impl Client {
    /// Starts a watch as `options` say; returns once a node accepted it.
    pub async fn watch(&self, options: WatchOptions) -> Result<Watch, ClientError> {
        if options.name.is_empty() && !options.prefix {
            return Err(ClientError::InvalidArgument(
                "a watch needs a name, or a prefix (empty for everything)".into(),
            ));
        }
        if options.name.len() > KEY_BYTES_MAX {
            return Err(ClientError::InvalidArgument(format!(
                "watched name is {} bytes; at most {KEY_BYTES_MAX}",
                options.name.len()
            )));
        }
        let mut watch = Watch {
            client: self.clone(),
            request: pb::WatchRequest {
                name: options.name.into_bytes(),
                prefix: options.prefix,
                from_revision: options.from_revision,
                target: match options.target {
                    WatchTarget::All => pb::WatchTarget::All,
                    WatchTarget::Locks => pb::WatchTarget::Locks,
                    WatchTarget::Keys => pb::WatchTarget::Keys,
                }
                .into(),
            },
            stream: None,
            started_after: 0,
            through: options.from_revision.saturating_sub(1),
            last: None,
            arriving: None,
            ready: VecDeque::new(),
            serving: None,
            resuming: false,
        };
        watch.reconnect().await?;
        watch.started_after = watch.through;
        Ok(watch)
    }
}

impl Watch {
    /// The watch returns events of revisions after this one.
    pub fn started_after(&self) -> u64 {
        self.started_after
    }

    /// Every selected event up to this revision has been returned or is
    /// ready: a new watch from `through() + 1` would see nothing before.
    pub fn through(&self) -> u64 {
        self.through
    }

    /// The endpoint serving the watch now.
    pub fn endpoint(&self) -> String {
        self.client.current_endpoint()
    }

    /// The next event; waits for one. Resumes on another node after a
    /// failure that retrying can fix; fails with the node's refusal
    /// otherwise (REVISION_COMPACTED or WATCH_TOO_SLOW when the events
    /// needed are no longer kept, see [`crate::Refusal`]).
    pub async fn next(&mut self) -> Result<WatchEvent, ClientError> {
        loop {
            if let Some(event) = self.ready.pop_front() {
                self.last = Some((event.revision, event.index));
                return Ok(event);
            }
            self.receive().await?;
        }
    }

    /// The next event, or `None` if none comes within `wait`.
    pub async fn next_within(&mut self, wait: Duration) -> Result<Option<WatchEvent>, ClientError> {
        match tokio::time::timeout(wait, self.next()).await {
            Ok(event) => event.map(Some),
            Err(_) => Ok(None),
        }
    }

    /// Reads one message, resuming elsewhere if the stream fails.
    async fn receive(&mut self) -> Result<(), ClientError> {
        let stream = match self.stream.as_mut() {
            Some(stream) => stream,
            None => {
                self.reconnect().await?;
                return Ok(());
            }
        };
        match stream.message().await {
            Ok(Some(message)) => {
                self.take(message);
                Ok(())
            }
            Ok(None) => {
                // The node ended the stream without a status: resume.
                self.stream = None;
                Ok(())
            }
            Err(status) if retryable(&status) || another_node_may_serve(&status) => {
                tracing::debug!(%status, "watch interrupted; resuming on another node");
                if let Some(serving) = self.serving.take() {
                    self.client.pool().failed(&serving, None);
                }
                self.stream = None;
                Ok(())
            }
            Err(status) => {
                self.stream = None;
                let endpoint = self
                    .serving
                    .take()
                    .map_or_else(|| self.client.current_endpoint(), |serving| serving.addr);
                Err(ClientError::from_status(&endpoint, &status))
            }
        }
    }

    fn take(&mut self, message: pb::WatchResponse) {
        for event in message.events {
            let place = match self.arriving {
                Some((revision, index)) if revision == event.revision => (revision, index + 1),
                _ => (event.revision, 0),
            };
            self.arriving = Some(place);
            // After a resume, the events of the revision it resumed in that
            // were already received come again: skip them.
            let received = self
                .ready
                .back()
                .map(|back| (back.revision, back.index))
                .or(self.last);
            if received.is_none_or(|received| place > received) {
                self.ready.push_back(WatchEvent::from_pb(event, place.1));
            }
        }
        self.through = self.through.max(message.revision);
    }

    /// Opens the stream on the pool's current node from the revision after
    /// `through`, trying the others while failures are retryable.
    async fn reconnect(&mut self) -> Result<(), ClientError> {
        let config = self.client.config().clone();
        let started = Instant::now();
        let mut backoff = Backoff::new(config.backoff_initial, config.backoff_max);
        let mut attempts = 0u32;
        // Nodes that refused the revision, or to serve one more watch: the
        // watch fails only once every node has.
        let mut refused: BTreeSet<String> = BTreeSet::new();
        loop {
            let picked = self.client.pool().current();
            let mut request = self.request.clone();
            if self.resuming {
                request.from_revision = self.through + 1;
            }
            // A resume starts a revision over: count its events afresh.
            self.arriving = None;
            let mut lock = LockClient::new(picked.channel.clone())
                .max_decoding_message_size(API_MESSAGE_BYTES_MAX)
                .max_encoding_message_size(API_MESSAGE_BYTES_MAX);
            attempts += 1;
            let opened = tokio::time::timeout(config.rpc_timeout, async {
                let mut stream = lock.watch(request).await?.into_inner();
                let created = stream.message().await?;
                Ok::<_, Status>((stream, created))
            })
            .await;
            let status = match opened {
                Ok(Ok((stream, Some(created)))) if created.created => {
                    self.through = self.through.max(created.revision);
                    self.resuming = true;
                    self.stream = Some(stream);
                    self.client.pool().prefer(picked.index);
                    self.serving = Some(picked);
                    return Ok(());
                }
                Ok(Ok(_)) => Status::unavailable("the watch stream ended before it started"),
                Ok(Err(status)) if retryable(&status) => status,
                Ok(Err(status)) if another_node_may_serve(&status) => {
                    refused.insert(picked.addr.clone());
                    if refused.len() >= self.client.pool().len() {
                        return Err(ClientError::from_status(&picked.addr, &status));
                    }
                    status
                }
                Ok(Err(status)) => return Err(ClientError::from_status(&picked.addr, &status)),
                Err(_) => Status::deadline_exceeded(format!("no answer within {:?}", config.rpc_timeout)),
            };
            self.client.pool().failed(&picked, None);
            let pause = backoff.next_pause();
            if started.elapsed() + pause > config.retry_total_max {
                return Err(ClientError::Rpc {
                    endpoint: picked.addr,
                    code: status.code(),
                    message: format!(
                        "{}: {} (gave up resuming the watch after {attempts} attempts in {:.1?})",
                        code_name(status.code()),
                        status.message(),
                        started.elapsed()
                    ),
                    refusal: Refusal::of(&status),
                });
            }
            tokio::time::sleep(pause).await;
        }
    }
}

/// Whether another node may serve what this one refused: a revision it no
/// longer keeps (or fell behind of), a full node, a removed node.
fn another_node_may_serve(status: &Status) -> bool {
    matches!(
        Refusal::of(status),
        Some(
            Refusal::RevisionCompacted { .. }
                | Refusal::WatchTooSlow { .. }
                | Refusal::TooManyWatches { .. }
                | Refusal::NodeRemoved
        )
    )
}
