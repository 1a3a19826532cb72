//! Workload 5's sessions: sessions that do nothing but stay alive. A group
//! of them is opened on one connection to the leader and renewed over one
//! keep-alive stream, each session once per TTL/3 with the renewals spread
//! evenly over that period — as etcd's own client renews every lease of a
//! connection over one stream, and as quorumlock's `KeepAlive` allows (each
//! message renews the session it names). A task, a timer and a stream per
//! session, as the lock workloads' sessions have, cost the load generator
//! more CPU than the servers at 100,000 sessions on one machine, and lost
//! sessions for every system alike.
//!
//! The protocol of each system is behind [`KeepAliveStream`]; the pacing and
//! the bookkeeping of what was renewed are here, shared.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures::future::BoxFuture;
use futures::stream::BoxStream;
use futures::{FutureExt, StreamExt, TryStreamExt};
use parking_lot::Mutex;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;

/// How often a group's renewer wakes to send the renewals that came due: a
/// session's renewal is late by at most this.
pub const RENEW_TICK: Duration = Duration::from_millis(100);
/// Pause before a broken keep-alive stream is opened again.
const REOPEN_PAUSE: Duration = Duration::from_millis(100);
/// Sessions of one group opened (and closed) at once.
pub const OPENING_PER_GROUP_MAX: usize = 16;

/// What a keep-alive stream answered for one session.
pub enum Answer {
    /// The session's lease was renewed.
    Renewed(u64),
    /// The session is gone (etcd: TTL 0).
    Refused(u64),
}

/// One system's keep-alive protocol, for one group of opened sessions.
#[async_trait]
pub trait KeepAliveStream: Send + Sync + 'static {
    /// The stream's request message.
    type Request: Send + 'static;
    /// Number of sessions in the group.
    fn sessions(&self) -> usize;
    /// The id of the session at `slot`, as the stream's answers name it.
    fn id(&self, slot: usize) -> u64;
    /// The renewal of the session at `slot` of the group.
    fn request(&self, slot: usize) -> Self::Request;
    /// Opens a keep-alive stream fed by `requests`; its answers, ending
    /// with the status that ended the stream, if any.
    async fn open(
        &self,
        requests: ReceiverStream<Self::Request>,
    ) -> Result<BoxStream<'static, Result<Answer, tonic::Status>>, tonic::Status>;
    /// The session that a status ending the stream refused, when it names
    /// one (quorumlock ends a stream with NOT_FOUND naming the session).
    fn refused_by(&self, status: &tonic::Status) -> Option<u64>;
    /// Closes the session at `slot`; one that cannot be closed expires.
    async fn close(&self, slot: usize);
}

/// Opens `count` sessions with `open_one`, [`OPENING_PER_GROUP_MAX`] at a
/// time; all of them, or the first failure.
pub async fn open_each<T, E, F, Fut>(count: usize, mut open_one: F) -> Result<Vec<T>, E>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    futures::stream::iter(0..count)
        .map(|_| open_one())
        .buffered(OPENING_PER_GROUP_MAX)
        .try_collect()
        .await
}

/// What is known of a group's sessions: when each was last renewed, or
/// that it was refused.
pub struct Ledger {
    ttl: Duration,
    slots: HashMap<u64, usize>,
    renewed: Mutex<Vec<Option<Instant>>>,
}

impl Ledger {
    /// A ledger of sessions `ids`, opened (so renewed) now, of `ttl`.
    pub fn new(ids: &[u64], ttl: Duration) -> Ledger {
        let now = Instant::now();
        Ledger {
            ttl,
            slots: ids.iter().enumerate().map(|(slot, id)| (*id, slot)).collect(),
            renewed: Mutex::new(vec![Some(now); ids.len()]),
        }
    }

    fn answered(&self, answer: &Answer) {
        let (id, renewed) = match answer {
            Answer::Renewed(id) => (*id, Some(Instant::now())),
            Answer::Refused(id) => (*id, None),
        };
        if let Some(slot) = self.slots.get(&id) {
            let mut slots = self.renewed.lock();
            // A refused session stays refused.
            if slots[*slot].is_some() {
                slots[*slot] = renewed;
            }
        }
    }

    /// Whether the session at `slot` is still renewed (was not refused).
    fn renewing(&self, slot: usize) -> bool {
        self.renewed.lock()[slot].is_some()
    }

    /// Sessions known lost: refused, or not renewed for a whole TTL.
    pub fn lost(&self) -> usize {
        let now = Instant::now();
        self.renewed
            .lock()
            .iter()
            .filter(|renewed| renewed.is_none_or(|at| now.duration_since(at) > self.ttl))
            .count()
    }
}

/// Which renewals are due: one per session per `period`, spread evenly over
/// it, from `start` on.
struct Pacer {
    sessions: u64,
    period: Duration,
    start: Instant,
    sent: u64,
}

impl Pacer {
    /// The slots whose renewal came due since the last call, in turn.
    fn due(&mut self, now: Instant) -> impl Iterator<Item = usize> {
        let elapsed = now.saturating_duration_since(self.start);
        let target = (elapsed.as_secs_f64() / self.period.as_secs_f64() * self.sessions as f64) as u64;
        let from = self.sent;
        self.sent = self.sent.max(target);
        let sessions = self.sessions.max(1);
        (from..self.sent).map(move |n| (n % sessions) as usize)
    }
}

/// A group of idle sessions, renewed until closed.
pub struct IdleGroup {
    ledger: Arc<Ledger>,
    stop: oneshot::Sender<()>,
    renewer: JoinHandle<()>,
    closing: BoxFuture<'static, ()>,
}

impl IdleGroup {
    /// Starts renewing the sessions of `protocol`, just opened with `ttl`,
    /// every `ttl / 3`.
    pub fn start<S: KeepAliveStream>(protocol: S, ttl: Duration) -> IdleGroup {
        let protocol = Arc::new(protocol);
        let sessions = protocol.sessions();
        let ids: Vec<u64> = (0..sessions).map(|slot| protocol.id(slot)).collect();
        let ledger = Arc::new(Ledger::new(&ids, ttl));
        let (stop, stopped) = oneshot::channel();
        let pacer = Pacer {
            sessions: sessions as u64,
            period: ttl / 3,
            start: Instant::now(),
            sent: 0,
        };
        let renewer = tokio::spawn(renew(protocol.clone(), ledger.clone(), pacer, stopped));
        // Run by `close`, once renewals stop.
        let closing = async move {
            futures::stream::iter(0..sessions)
                .for_each_concurrent(OPENING_PER_GROUP_MAX, |slot| protocol.close(slot))
                .await;
        }
        .boxed();
        IdleGroup {
            ledger,
            stop,
            renewer,
            closing,
        }
    }

    /// Sessions of the group known lost.
    pub fn lost(&self) -> usize {
        self.ledger.lost()
    }

    /// Stops renewing and closes every session of the group.
    pub async fn close(self) {
        let _ = self.stop.send(());
        let _ = self.renewer.await;
        self.closing.await;
    }
}

/// Renews a group's sessions as `pacer` says, over one stream at a time,
/// until stopped.
async fn renew<S: KeepAliveStream>(
    stream: Arc<S>,
    ledger: Arc<Ledger>,
    mut pacer: Pacer,
    mut stopped: oneshot::Receiver<()>,
) {
    let sessions = stream.sessions();
    loop {
        let (requests, outgoing) = mpsc::channel(sessions.max(1));
        // Queued before the call opens: etcd sends its response headers only
        // with its first answer, so the call would not open before a
        // request is sent. (One renewal more than the pace asks is harmless.)
        if let Some(slot) = (0..sessions).find(|slot| ledger.renewing(*slot)) {
            let _ = requests.try_send(stream.request(slot));
        }
        let opened = tokio::select! {
            opened = stream.open(ReceiverStream::new(outgoing)) => opened,
            _ = &mut stopped => return,
        };
        if let Ok(mut answers) = opened {
            let mut tick = tokio::time::interval(RENEW_TICK);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = &mut stopped => return,
                    _ = tick.tick() => {
                        for slot in pacer.due(Instant::now()) {
                            // A full queue means the server is behind: the
                            // renewal is skipped, and the session is lost if
                            // that goes on for a TTL.
                            if ledger.renewing(slot) {
                                let _ = requests.try_send(stream.request(slot));
                            }
                        }
                    }
                    answer = answers.next() => match answer {
                        Some(Ok(answer)) => ledger.answered(&answer),
                        Some(Err(status)) => {
                            if let Some(id) = stream.refused_by(&status) {
                                ledger.answered(&Answer::Refused(id));
                            }
                            break;
                        }
                        None => break,
                    },
                }
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(REOPEN_PAUSE) => {}
            _ = &mut stopped => return,
        }
    }
}
