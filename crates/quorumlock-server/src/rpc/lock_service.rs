//! `quorumlock.v1.Lock`: validates requests, routes them to the leader, and
//! turns them into lock commands and linearizable reads.

use std::collections::{BTreeMap, BTreeSet};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures::{Stream, StreamExt};
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;
use tonic::{Code, Request, Response, Status, Streaming};

use super::forward::{forwarded, Forwarder};
use super::status::{
    budget, client_timeout, forwarding_failed, from_engine_error, from_lock_error, internal,
    invalid_argument, is_forwarded, leader_moved, lock_delayed, name_leader, no_quorum, not_leader,
    secret_missing, session_gone,
};
use super::watch::{serve_watch, start_revision, Selector, WatchCount, WATCH_QUEUE_MAX};
use crate::auth::{Access, Action, Caller};
use crate::lease_driver::LeaseDriver;
use quorumlock_core::consensus::{ConsensusEngine, EngineError, GrantWatch, LeaderInfo, StateNotice};
use quorumlock_core::lease::RenewError;
use quorumlock_core::lock::limits::{
    KEY_BYTES_MAX, LOCK_NAME_BYTES_MAX, SESSION_TTL_MS_MAX, VALUE_BYTES_MAX,
};
use quorumlock_core::lock::{
    validate, Command, Credential, Event, Fence, FencingToken, HoldTerms, LockError, LockMode, LockState,
    Outcome, SecretDigest, SessionId,
};
use quorumlock_proto::limits::{
    LOCK_DELAY_MS_MAX, MAX_HOLD_MS_MAX, SEMAPHORE_PERMITS_MAX, SESSION_SECRET_BYTES, WAIT_MS_MAX,
};
use quorumlock_proto::v1 as pb;
use quorumlock_proto::v1::lock_client::LockClient;
use quorumlock_tls::Dialer;

/// Bound of each keepalive stream's outgoing queue.
pub const KEEPALIVE_QUEUE_MAX: usize = 16;

/// Settings of the lock service.
#[derive(Debug, Clone)]
pub struct LockServiceConfig {
    /// Longest time spent ordering one command or confirming one read, even
    /// when the client set no deadline.
    pub request_timeout: Duration,
}

/// Serves `quorumlock.v1.Lock` on one node.
pub struct LockService {
    engine: Arc<dyn ConsensusEngine>,
    leases: Arc<LeaseDriver>,
    forwarder: Arc<Forwarder>,
    access: Arc<Access>,
    /// Whether this node dials the leader over mutual TLS, so that the
    /// leader takes its word for a caller's identity.
    tls: bool,
    config: LockServiceConfig,
    /// Turns true when the node begins to stop: keepalive streams and
    /// waiting acquires end at once (UNAVAILABLE, the node is stopping), so
    /// their clients move to another node and the server drains quickly.
    stopping: watch::Receiver<bool>,
    /// The watches this node serves.
    watches: Arc<WatchCount>,
}

/// Resolves once `stopping` turns true (or its sender is gone).
pub(super) async fn stopped(mut stopping: watch::Receiver<bool>) {
    let _ = stopping.wait_for(|stopping| *stopping).await;
}

/// UNAVAILABLE for a stream or a wait cut short because the node stops.
pub(super) fn node_stopping() -> Status {
    from_engine_error(EngineError::ShuttingDown)
}

enum Route {
    Local,
    Forward(Box<(LockClient<Channel>, LeaderInfo)>),
}

/// Forwards the request to the leader and returns its answer, unless this
/// node is the leader. The answer names the leader in its
/// `x-quorumlock-leader` metadata, so that the client can call it directly
/// next time instead of paying for the extra hop.
macro_rules! forward_unless_leader {
    ($service:ident, $request:ident, $method:ident, $caller:ident) => {
        if let Route::Forward(forward) = $service.route(&$request)? {
            let (mut client, leader) = *forward;
            let timeout = client_timeout(&$request);
            let call = client.$method(forwarded($request.into_inner(), timeout, &$caller, $service.tls));
            let mut response = $service.unless_leader_moves(&leader, call).await?;
            name_leader(response.metadata_mut(), &leader);
            return Ok(response);
        }
    };
}

impl LockService {
    /// Serves the lock API over `engine`, answering keepalives from `leases`
    /// and letting callers through as `access` says, until `stopping` turns
    /// true; forwards to the leader over channels `dialer` makes.
    pub fn new(
        engine: Arc<dyn ConsensusEngine>,
        leases: Arc<LeaseDriver>,
        config: LockServiceConfig,
        stopping: watch::Receiver<bool>,
        dialer: Dialer,
        access: Arc<Access>,
    ) -> Self {
        LockService {
            engine,
            leases,
            tls: dialer.tls_config().is_some(),
            forwarder: Arc::new(Forwarder::new(dialer)),
            access,
            config,
            stopping,
            watches: Arc::default(),
        }
    }

    /// The watches this node serves now.
    pub fn watches(&self) -> Arc<WatchCount> {
        self.watches.clone()
    }

    fn route<T>(&self, request: &Request<T>) -> Result<Route, Status> {
        if let Some(why) = self.engine.removed() {
            return Err(from_engine_error(EngineError::Removed(why)));
        }
        let view = self.engine.leadership().borrow().clone();
        if view.is_self {
            return Ok(Route::Local);
        }
        match view.leader {
            Some(leader) if !is_forwarded(request) => Ok(Route::Forward(Box::new((
                self.forwarder.client(&leader)?,
                leader,
            )))),
            leader => Err(not_leader("this node is not the leader", leader.as_ref())),
        }
    }

    /// The answer of `call`, forwarded to `leader`, unless this node first
    /// learns of another leader: then the call is abandoned with
    /// `UNAVAILABLE` `FORWARDING_FAILED` naming the new one, since `leader`
    /// may have proposed the command before it lost its place. A leader that
    /// froze answers nothing, so without this the call would wait out the
    /// client's whole deadline.
    async fn unless_leader_moves<R>(
        &self,
        leader: &LeaderInfo,
        call: impl std::future::Future<Output = Result<R, Status>>,
    ) -> Result<R, Status> {
        let mut view = self.engine.leadership();
        let moved = async {
            loop {
                let now = view.borrow_and_update().leader.clone();
                match now {
                    Some(now) if now.id != leader.id => return now,
                    _ => {}
                }
                if view.changed().await.is_err() {
                    std::future::pending::<()>().await;
                }
            }
        };
        tokio::select! {
            answer = call => answer.map_err(relayed),
            now = moved => Err(leader_moved(leader, &now)),
        }
    }

    /// Orders a command within `budget`; refusals become precise statuses.
    async fn propose(&self, command: Command, budget: Duration) -> Result<Outcome, Status> {
        propose_within(self.engine.as_ref(), command, budget)
            .await?
            .map_err(from_lock_error)
    }

    /// Confirms leadership and catch-up, then reads the applied state.
    async fn read<R>(&self, budget: Duration, read: impl FnOnce(&LockState) -> R) -> Result<R, Status> {
        match tokio::time::timeout(budget, self.engine.read_barrier()).await {
            Err(_) => Err(no_quorum(
                &format!("leadership not confirmed by a quorum within {budget:?}"),
                self.engine.leadership().borrow().leader.as_ref(),
            )),
            Ok(Err(error)) => Err(from_engine_error(error)),
            Ok(Ok(())) => Ok(self.engine.state().read(read)),
        }
    }

    fn budget<T>(&self, request: &Request<T>) -> Duration {
        budget(request, self.config.request_timeout)
    }

    /// Waits in the queue for a grant until `wait` passes; leaves the queue
    /// if it does. Dropping the future (a cancelled call) also leaves it.
    async fn wait_for_grant(
        &self,
        session: SessionId,
        lock: String,
        by: Credential,
        wait: Duration,
        watch: GrantWatch,
        received: tokio::time::Instant,
    ) -> Result<pb::AcquireResponse, Status> {
        // The grant is applied after the last look that found the session
        // still waiting: how long after `received` that look was is a lower
        // bound of the wait, which the client may count a max hold from.
        let waited_ms = |looked: tokio::time::Instant| {
            u64::try_from(looked.duration_since(received).as_millis()).unwrap_or(u64::MAX)
        };
        let mut looked = received;
        let mut leave_on_drop = LeaveQueueOnDrop {
            engine: Some(self.engine.clone()),
            session,
            lock: lock.clone(),
            by: by.clone(),
        };
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            // Armed before the state is read, so a grant applied in between
            // still wakes this wait.
            let woken = watch.notified();
            tokio::pin!(woken);
            woken.as_mut().enable();
            let now = tokio::time::Instant::now();
            match self
                .engine
                .state()
                .read(|state| waiter_status(state, session, &lock))
            {
                WaiterStatus::Holds(token) => {
                    leave_on_drop.disarm();
                    return Ok(pb::AcquireResponse {
                        acquired: true,
                        token,
                        waited_ms: waited_ms(looked),
                    });
                }
                WaiterStatus::SessionGone => {
                    leave_on_drop.disarm();
                    return Err(session_gone(session, true));
                }
                WaiterStatus::Waiting => looked = now,
            }
            tokio::select! {
                () = &mut woken => {}
                () = tokio::time::sleep_until(deadline) => break,
                // The session keeps its place; its client asks another node.
                () = stopped(self.stopping.clone()) => return Err(node_stopping()),
            }
        }
        // The wait passed: leave the queue. A grant may have raced with the
        // deadline, in which case the session holds the lock and says so.
        leave_on_drop.disarm();
        let cancel = Command::CancelWait {
            session,
            lock: lock.clone(),
            by: by.clone(),
        };
        if let Err(status) = self.propose(cancel, self.config.request_timeout).await {
            // The answer is UNAVAILABLE (outcome unknown); the waiter still
            // leaves the queue once the leader can order it.
            leave_queue_in_background(self.engine.clone(), session, lock, by);
            return Err(status);
        }
        match self
            .engine
            .state()
            .read(|state| waiter_status(state, session, &lock))
        {
            WaiterStatus::Holds(token) => Ok(pb::AcquireResponse {
                acquired: true,
                token,
                waited_ms: waited_ms(looked),
            }),
            _ => Ok(pb::AcquireResponse {
                acquired: false,
                token: 0,
                waited_ms: 0,
            }),
        }
    }
}

/// Proposes `command` and waits at most `budget` for its result: the
/// outcome or the state machine's refusal, or the status of an engine
/// that could not order it.
async fn propose_within(
    engine: &dyn ConsensusEngine,
    command: Command,
    budget: Duration,
) -> Result<Result<Outcome, LockError>, Status> {
    match tokio::time::timeout(budget, engine.propose(command)).await {
        Err(_) => Err(no_quorum(
            // A slow commit has two causes the node cannot tell apart: the
            // leader is too busy to replicate in time, or no quorum answers.
            &format!(
                "command not committed within {budget:?}: the leader is overloaded or cannot reach a quorum"
            ),
            engine.leadership().borrow().leader.as_ref(),
        )),
        Ok(Err(error)) => Err(from_engine_error(error)),
        Ok(Ok(result)) => Ok(result),
    }
}

enum WaiterStatus {
    Holds(u64),
    Waiting,
    SessionGone,
}

fn waiter_status(state: &LockState, session: SessionId, lock: &str) -> WaiterStatus {
    if state.session(session).is_none() {
        return WaiterStatus::SessionGone;
    }
    match state.lock(lock).and_then(|found| found.holders.get(&session)) {
        Some(token) => WaiterStatus::Holds(token.get()),
        None => WaiterStatus::Waiting,
    }
}

/// Answers one keepalive stream: every message renews its session; and as
/// soon as a session renewed on this stream ends (expired or closed), the
/// stream ends with NOT_FOUND without waiting for the next renewal, so the
/// holder learns at once that its locks are gone.
async fn serve_keepalives(
    leases: Arc<LeaseDriver>,
    engine: Arc<dyn ConsensusEngine>,
    access: Arc<Access>,
    caller: Caller,
    mut inbound: Streaming<pb::KeepAliveRequest>,
    replies: mpsc::Sender<Result<pb::KeepAliveResponse, Status>>,
    stopping: watch::Receiver<bool>,
) {
    let mut notices = engine.state().subscribe_session_ends();
    let mut renewed: BTreeSet<SessionId> = BTreeSet::new();
    // Sessions whose owner this stream proved, with the secret's digest: a
    // session's owner never changes, so later renewals need not read the
    // state again.
    let mut proved: BTreeMap<SessionId, SecretDigest> = BTreeMap::new();
    let stop = stopped(stopping);
    tokio::pin!(stop);
    loop {
        let reply = tokio::select! {
            () = &mut stop => Err(node_stopping()),
            message = inbound.next() => {
                let Some(Ok(message)) = message else { return };
                let session = SessionId::new(message.session_id);
                let renewal = access
                    .allow(&caller, Action::UseSession("keep_alive"))
                    .and_then(|()| renew_one(&leases, engine.as_ref(), &mut proved, session, &message.session_secret, &caller));
                if renewal.is_ok() {
                    renewed.insert(session);
                }
                renewal
            }
            notice = notices.recv() => {
                let ended = match notice {
                    Ok(StateNotice::Event(Event::SessionEnded { session })) => {
                        Some(session).filter(|session| renewed.contains(session))
                    }
                    Ok(StateNotice::Event(_)) => None,
                    Ok(StateNotice::Restored) | Err(RecvError::Lagged(_)) => engine
                        .state()
                        .read(|state| renewed.iter().copied().find(|session| state.session(*session).is_none())),
                    Err(RecvError::Closed) => return,
                };
                match ended {
                    Some(session) => Err(session_gone(session, false)),
                    None => continue,
                }
            }
        };
        let last = reply.is_err();
        if replies.send(reply).await.is_err() || last {
            return;
        }
    }
}

/// Answers one keepalive message: renews `session` if the caller proves it
/// owns it.
fn renew_one(
    leases: &LeaseDriver,
    engine: &dyn ConsensusEngine,
    proved: &mut BTreeMap<SessionId, SecretDigest>,
    session: SessionId,
    secret: &[u8],
    caller: &Caller,
) -> Result<pb::KeepAliveResponse, Status> {
    prove_owner(engine, proved, session, secret, caller)?;
    match leases.renew(session) {
        Ok(ttl) => Ok(pb::KeepAliveResponse {
            session_id: session.get(),
            ttl_ms: ttl.as_millis() as u64,
        }),
        Err(RenewError::NotFound) => Err(session_gone(session, false)),
        Err(RenewError::NotLeader) => Err(not_leader(
            "this node does not keep leases now; reconnect",
            engine.leadership().borrow().leader.as_ref(),
        )),
    }
}

/// Checks that a keepalive for `session` comes from its owner: against the
/// digest this stream proved before (the stream's caller never changes), or
/// else against the applied state. A session this node does not know is
/// left to the renewal, which reports it not found.
fn prove_owner(
    engine: &dyn ConsensusEngine,
    proved: &mut BTreeMap<SessionId, SecretDigest>,
    session: SessionId,
    secret: &[u8],
    caller: &Caller,
) -> Result<(), Status> {
    let caller = credential(session, secret, caller)?;
    if let Some(digest) = proved.get(&session) {
        if digest.matches(&caller.secret) {
            return Ok(());
        }
    }
    let admitted = engine
        .state()
        .read(|state| state.session(session).map(|found| found.owner.admits(&caller)));
    match admitted {
        Some(false) => Err(from_lock_error(LockError::NotSessionOwner {
            session,
            caller: caller.identity,
        })),
        Some(true) => {
            proved.insert(session, caller.secret);
            Ok(())
        }
        None => Ok(()),
    }
}

/// The credential of a call on `session`: the secret it presented and the
/// identity of its caller.
fn credential(session: SessionId, secret: &[u8], caller: &Caller) -> Result<Credential, Status> {
    if secret.is_empty() {
        return Err(secret_missing(session));
    }
    if secret.len() != SESSION_SECRET_BYTES {
        return Err(invalid_argument(
            "session_secret",
            Some(SESSION_SECRET_BYTES as u64),
            format!(
                "session_secret is {} bytes; a session secret is exactly {SESSION_SECRET_BYTES} bytes, as OpenSession returned it",
                secret.len()
            ),
        ));
    }
    Ok(Credential {
        identity: caller.identity.clone(),
        ..Credential::of_secret(secret)
    })
}

/// A fresh session secret from the operating system's random source.
fn draw_secret() -> Result<[u8; SESSION_SECRET_BYTES], Status> {
    use rand::RngCore;
    let mut secret = [0u8; SESSION_SECRET_BYTES];
    rand::rngs::OsRng.try_fill_bytes(&mut secret).map_err(|error| {
        internal(format!(
            "the OS random source failed to give a session secret: {error}"
        ))
    })?;
    Ok(secret)
}

/// Attempts made to take a waiter whose call ended out of its queue.
pub const LEAVE_QUEUE_ATTEMPTS: u32 = 8;
/// Pause after the first failed attempt; it doubles after each failure.
const LEAVE_QUEUE_BACKOFF_FIRST: Duration = Duration::from_millis(100);
/// Longest pause between attempts.
const LEAVE_QUEUE_BACKOFF_MAX: Duration = Duration::from_secs(5);
/// Time each attempt is given to commit.
const LEAVE_QUEUE_ATTEMPT_BUDGET: Duration = Duration::from_secs(5);

/// Proposes `CancelWait` in the background if the waiting call goes away.
struct LeaveQueueOnDrop {
    engine: Option<Arc<dyn ConsensusEngine>>,
    session: SessionId,
    lock: String,
    by: Credential,
}

impl LeaveQueueOnDrop {
    fn disarm(&mut self) {
        self.engine = None;
    }
}

impl Drop for LeaveQueueOnDrop {
    fn drop(&mut self) {
        if let Some(engine) = self.engine.take() {
            leave_queue_in_background(
                engine,
                self.session,
                std::mem::take(&mut self.lock),
                self.by.clone(),
            );
        }
    }
}

/// Takes `session` out of the queue of `lock` after its call ended without
/// an answer (cancelled, or its own cancel could not commit): an overloaded
/// leader would otherwise keep a waiter nobody waits for, and grant it the
/// lock. Tries [`LEAVE_QUEUE_ATTEMPTS`] times with doubling pauses, and stops
/// early once the session no longer waits on the lock or this node no longer
/// leads (the waiter then leaves when its session ends).
fn leave_queue_in_background(
    engine: Arc<dyn ConsensusEngine>,
    session: SessionId,
    lock: String,
    by: Credential,
) {
    tokio::spawn(async move {
        let mut pause = LEAVE_QUEUE_BACKOFF_FIRST;
        for attempt in 1..=LEAVE_QUEUE_ATTEMPTS {
            let waits = engine.state().read(|state| {
                state
                    .session(session)
                    .is_some_and(|found| found.waiting.contains(&lock))
            });
            if !waits || !engine.leadership().borrow().is_self {
                return;
            }
            let command = Command::CancelWait {
                session,
                lock: lock.clone(),
                by: by.clone(),
            };
            match propose_within(engine.as_ref(), command, LEAVE_QUEUE_ATTEMPT_BUDGET).await {
                Ok(_) => return,
                Err(status) => {
                    tracing::debug!(%status, %session, attempt, "a waiter whose call ended could not leave its queue yet");
                }
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(LEAVE_QUEUE_BACKOFF_MAX);
        }
        tracing::warn!(
            %session,
            lock = %lock,
            "a waiter whose call ended stays queued until its session ends: {LEAVE_QUEUE_ATTEMPTS} attempts to leave failed"
        );
    });
}

/// A forwarded call that failed in transport (the leader died mid-call, the
/// connection reset) is reported as UNAVAILABLE: the client did not cancel
/// anything, and retrying elsewhere is the right response.
fn relayed(status: Status) -> Status {
    match status.code() {
        Code::Cancelled | Code::Unknown => forwarding_failed(status.message()),
        _ => status,
    }
}

fn unexpected(outcome: Outcome) -> Status {
    internal(format!("unexpected state machine outcome {outcome:?}"))
}

/// A lock name from request field `field`, checked against its limits.
fn lock_name(field: &str, bytes: &[u8]) -> Result<String, Status> {
    validate::utf8_name("lock name", bytes, LOCK_NAME_BYTES_MAX)
        .map(str::to_string)
        .map_err(|error| invalid_argument(field, Some(LOCK_NAME_BYTES_MAX as u64), error.to_string()))
}

fn key(bytes: &[u8]) -> Result<String, Status> {
    validate::utf8_name("key", bytes, KEY_BYTES_MAX)
        .map(str::to_string)
        .map_err(|error| invalid_argument("key", Some(KEY_BYTES_MAX as u64), error.to_string()))
}

fn value(bytes: &[u8]) -> Result<(), Status> {
    validate::value(bytes)
        .map_err(|error| invalid_argument("value", Some(VALUE_BYTES_MAX as u64), error.to_string()))
}

fn fence(fence: Option<&pb::Fence>) -> Result<Fence, Status> {
    let fence = fence.ok_or_else(|| {
        invalid_argument(
            "fence",
            None,
            "fence is required: the lock and token that guard the write",
        )
    })?;
    Ok(Fence {
        lock: lock_name("fence.lock", &fence.lock)?,
        token: FencingToken::new(fence.token),
    })
}

/// The mode a request names; an unknown value is refused, never read as
/// exclusive.
fn any_mode(mode: i32) -> Result<pb::LockMode, Status> {
    pb::LockMode::try_from(mode).map_err(|_| {
        invalid_argument(
            "mode",
            None,
            format!(
                "mode {mode} is not a lock mode: 0 (LOCK_MODE_EXCLUSIVE), 1 (LOCK_MODE_SHARED) or 2 \
                 (LOCK_MODE_SEMAPHORE)"
            ),
        )
    })
}

/// The mode of a call about a lock's tokens (CheckToken): a semaphore's
/// holders are checked as shared holders.
fn lock_mode(mode: i32) -> Result<LockMode, Status> {
    Ok(match any_mode(mode)? {
        pb::LockMode::Exclusive => LockMode::Exclusive,
        pb::LockMode::Shared | pb::LockMode::Semaphore => LockMode::Shared,
    })
}

/// What an `Acquire` asks for.
#[derive(Debug, Clone, Copy)]
enum Asked {
    /// A lock in a mode.
    Lock(LockMode),
    /// Permits of a semaphore.
    Permits { permits: u32, limit: u32 },
}

impl Asked {
    fn command(
        self,
        session: SessionId,
        lock: String,
        wait: bool,
        terms: HoldTerms,
        by: Credential,
    ) -> Command {
        if !terms.is_none() {
            let (mode, semaphore) = match self {
                Asked::Lock(mode) => (mode, None),
                Asked::Permits { permits, limit } => (LockMode::Shared, Some((permits, limit))),
            };
            return Command::AcquireWithTerms {
                session,
                lock,
                wait,
                mode,
                semaphore,
                terms,
                by,
            };
        }
        match self {
            Asked::Lock(mode) => Command::acquire(session, lock, wait, mode, by),
            Asked::Permits { permits, limit } => Command::AcquirePermits {
                session,
                semaphore: lock,
                permits,
                limit,
                wait,
                by,
            },
        }
    }
}

/// The hold terms an `Acquire` sets, each within its bounds.
fn hold_terms(request: &pb::AcquireRequest) -> Result<HoldTerms, Status> {
    let terms = HoldTerms {
        lock_delay_ms: request.lock_delay_ms,
        max_hold_ms: request.max_hold_ms,
    };
    validate::terms(&terms).map_err(|error| {
        let (field, limit) = if terms.lock_delay_ms > LOCK_DELAY_MS_MAX {
            ("lock_delay_ms", LOCK_DELAY_MS_MAX)
        } else {
            ("max_hold_ms", MAX_HOLD_MS_MAX)
        };
        invalid_argument(field, Some(u64::from(limit)), error.to_string())
    })?;
    Ok(terms)
}

/// What an `Acquire` asks for: permits and a limit only for a semaphore,
/// each within its bounds.
fn asked(request: &pb::AcquireRequest) -> Result<Asked, Status> {
    let (permits, limit) = (request.permits, request.semaphore_limit);
    match any_mode(request.mode)? {
        pb::LockMode::Semaphore => {
            if !(1..=SEMAPHORE_PERMITS_MAX).contains(&limit) {
                return Err(invalid_argument(
                    "semaphore_limit",
                    Some(u64::from(SEMAPHORE_PERMITS_MAX)),
                    format!("semaphore_limit {limit} is outside 1..={SEMAPHORE_PERMITS_MAX}"),
                ));
            }
            if !(1..=limit).contains(&permits) {
                return Err(invalid_argument(
                    "permits",
                    Some(u64::from(limit)),
                    format!("permits {permits} is outside 1..={limit}, the semaphore's permits"),
                ));
            }
            Ok(Asked::Permits { permits, limit })
        }
        mode => {
            for (field, value) in [("permits", permits), ("semaphore_limit", limit)] {
                if value != 0 {
                    return Err(invalid_argument(
                        field,
                        None,
                        format!("{field} is {value}; it is for LOCK_MODE_SEMAPHORE only and must be 0 here"),
                    ));
                }
            }
            Ok(Asked::Lock(match mode {
                pb::LockMode::Shared => LockMode::Shared,
                _ => LockMode::Exclusive,
            }))
        }
    }
}

type KeepAliveStream = Pin<Box<dyn Stream<Item = Result<pb::KeepAliveResponse, Status>> + Send>>;
type WatchStream = Pin<Box<dyn Stream<Item = Result<pb::WatchResponse, Status>> + Send>>;

#[tonic::async_trait]
impl pb::lock_server::Lock for LockService {
    async fn open_session(
        &self,
        request: Request<pb::OpenSessionRequest>,
    ) -> Result<Response<pb::OpenSessionResponse>, Status> {
        let ttl_ms = request.get_ref().ttl_ms;
        validate::ttl_ms(ttl_ms)
            .map_err(|error| invalid_argument("ttl_ms", Some(SESSION_TTL_MS_MAX), error.to_string()))?;
        let caller = self.access.caller(&request)?;
        forward_unless_leader!(self, request, open_session, caller);
        self.access.allow(&caller, Action::OpenSession)?;
        // Drawn here, by the node that orders the session, and carried in
        // the command only as its digest: apply stays deterministic and the
        // log never holds the secret.
        let secret = draw_secret()?;
        let owner = Credential {
            identity: caller.identity.clone(),
            ..Credential::of_secret(&secret)
        };
        match self
            .propose(Command::OpenSession { ttl_ms, owner }, self.budget(&request))
            .await?
        {
            Outcome::SessionOpened { session, ttl_ms } => {
                self.leases.opened(session, Duration::from_millis(ttl_ms));
                Ok(Response::new(pb::OpenSessionResponse {
                    session_id: session.get(),
                    ttl_ms,
                    session_secret: secret.to_vec(),
                }))
            }
            other => Err(unexpected(other)),
        }
    }

    type KeepAliveStream = KeepAliveStream;

    async fn keep_alive(
        &self,
        request: Request<Streaming<pb::KeepAliveRequest>>,
    ) -> Result<Response<Self::KeepAliveStream>, Status> {
        let caller = self.access.caller(&request)?;
        if let Route::Forward(forward) = self.route(&request)? {
            let (mut client, _) = *forward;
            // Relay the whole stream: the leader answers every renewal.
            let inbound = request
                .into_inner()
                .take_while(|message| futures::future::ready(message.is_ok()))
                .filter_map(|message| futures::future::ready(message.ok()));
            let replies = client
                .keep_alive(forwarded(inbound, None, &caller, self.tls))
                .await
                .map_err(relayed)?
                .into_inner()
                .map(|reply| reply.map_err(relayed));
            // A stopping node ends the relayed stream too, saying why.
            let stopping = self.stopping.clone();
            let ending = self.stopping.clone();
            let replies = replies.take_until(stopped(stopping)).chain(
                futures::stream::once(async move { *ending.borrow() })
                    .filter_map(|stopped| futures::future::ready(stopped.then(|| Err(node_stopping())))),
            );
            return Ok(Response::new(Box::pin(replies)));
        }
        let (replies, outbound) = mpsc::channel(KEEPALIVE_QUEUE_MAX);
        tokio::spawn(serve_keepalives(
            self.leases.clone(),
            self.engine.clone(),
            self.access.clone(),
            caller,
            request.into_inner(),
            replies,
            self.stopping.clone(),
        ));
        Ok(Response::new(Box::pin(ReceiverStream::new(outbound))))
    }

    async fn close_session(
        &self,
        request: Request<pb::CloseSessionRequest>,
    ) -> Result<Response<pb::CloseSessionResponse>, Status> {
        let session = SessionId::new(request.get_ref().session_id);
        let caller = self.access.caller(&request)?;
        let by = credential(session, &request.get_ref().session_secret, &caller)?;
        forward_unless_leader!(self, request, close_session, caller);
        self.access.allow(&caller, Action::UseSession("close_session"))?;
        match self
            .propose(Command::CloseSession { session, by }, self.budget(&request))
            .await?
        {
            Outcome::SessionEnded { released } => {
                self.leases.closed(session);
                Ok(Response::new(pb::CloseSessionResponse { released }))
            }
            other => Err(unexpected(other)),
        }
    }

    async fn acquire(
        &self,
        request: Request<pb::AcquireRequest>,
    ) -> Result<Response<pb::AcquireResponse>, Status> {
        let lock = lock_name("name", &request.get_ref().name)?;
        let asked = asked(request.get_ref())?;
        let terms = hold_terms(request.get_ref())?;
        let wait_ms = request.get_ref().wait_ms;
        if wait_ms > WAIT_MS_MAX {
            return Err(invalid_argument(
                "wait_ms",
                Some(WAIT_MS_MAX),
                format!("wait_ms {wait_ms} is more than the {WAIT_MS_MAX} ms limit"),
            ));
        }
        let session = SessionId::new(request.get_ref().session_id);
        let caller = self.access.caller(&request)?;
        let by = credential(session, &request.get_ref().session_secret, &caller)?;
        forward_unless_leader!(self, request, acquire, caller);
        let received = tokio::time::Instant::now();
        self.access.allow(&caller, Action::Lock("acquire", &lock))?;
        let wait = Duration::from_millis(wait_ms);
        let wait = match client_timeout(&request) {
            Some(_) => wait.min(budget(&request, Duration::MAX)),
            None => wait,
        };
        // Registered before proposing, so the grant's wake-up has a target;
        // a try-lock never waits, so it registers nothing.
        let watch = (wait_ms > 0).then(|| self.engine.state().watch_grant(session, &lock));
        let command = asked.command(session, lock.clone(), wait_ms > 0, terms, by.clone());
        let outcome = match propose_within(self.engine.as_ref(), command, self.budget(&request)).await? {
            Ok(outcome) => outcome,
            Err(LockError::LockDelayed { lock, delay_ms }) => {
                let left = self.leases.delay_left(&lock);
                return Err(lock_delayed(&lock, delay_ms, left));
            }
            Err(refusal) => return Err(from_lock_error(refusal)),
        };
        let response = match outcome {
            // Granted by this command, after the request came in: no wait
            // to count.
            Outcome::Acquired { token } => pb::AcquireResponse {
                acquired: true,
                token: token.get(),
                waited_ms: 0,
            },
            Outcome::Busy { .. } => pb::AcquireResponse {
                acquired: false,
                token: 0,
                waited_ms: 0,
            },
            Outcome::Queued { .. } => match watch {
                Some(watch) => {
                    self.wait_for_grant(session, lock, by, wait, watch, received)
                        .await?
                }
                // A try-lock by a session that already waits keeps its place.
                None => pb::AcquireResponse {
                    acquired: false,
                    token: 0,
                    waited_ms: 0,
                },
            },
            other => return Err(unexpected(other)),
        };
        Ok(Response::new(response))
    }

    async fn release(
        &self,
        request: Request<pb::ReleaseRequest>,
    ) -> Result<Response<pb::ReleaseResponse>, Status> {
        let lock = lock_name("name", &request.get_ref().name)?;
        let session = SessionId::new(request.get_ref().session_id);
        let caller = self.access.caller(&request)?;
        let by = credential(session, &request.get_ref().session_secret, &caller)?;
        forward_unless_leader!(self, request, release, caller);
        self.access.allow(&caller, Action::Lock("release", &lock))?;
        let command = Command::Release {
            session,
            lock,
            token: FencingToken::new(request.get_ref().token),
            by,
        };
        match self.propose(command, self.budget(&request)).await? {
            Outcome::Released { next } => Ok(Response::new(pb::ReleaseResponse {
                next_session_id: next.as_ref().map_or(0, |grant| grant.session.get()),
                next_token: next.as_ref().map_or(0, |grant| grant.token.get()),
            })),
            other => Err(unexpected(other)),
        }
    }

    async fn describe(
        &self,
        request: Request<pb::DescribeRequest>,
    ) -> Result<Response<pb::DescribeResponse>, Status> {
        let lock = lock_name("name", &request.get_ref().name)?;
        let caller = self.access.caller(&request)?;
        forward_unless_leader!(self, request, describe, caller);
        self.access.allow(&caller, Action::Lock("describe", &lock))?;
        let (view, found) = self
            .read(self.budget(&request), |state| {
                (state.describe(&lock), state.lock(&lock).cloned())
            })
            .await?;
        let (holder, token) = view
            .holder
            .map_or((0, 0), |(holder, token)| (holder.get(), token.get()));
        let semaphore = found.as_ref().and_then(|found| found.semaphore.as_ref());
        let wire_mode = |mode: LockMode| -> i32 {
            match (mode, semaphore) {
                (_, Some(_)) => pb::LockMode::Semaphore,
                (LockMode::Exclusive, None) => pb::LockMode::Exclusive,
                (LockMode::Shared, None) => pb::LockMode::Shared,
            }
            .into()
        };
        let permits_of = |session: &SessionId| {
            semaphore
                .and_then(|semaphore| semaphore.held.get(session).copied())
                .unwrap_or(0)
        };
        Ok(Response::new(pb::DescribeResponse {
            held: view.held(),
            holder_session_id: holder,
            token,
            queue_length: view.queue_len as u64,
            mode: wire_mode(view.mode),
            holders: view
                .holder
                .iter()
                .chain(&view.shared)
                .map(|(session, token)| {
                    let terms = view.terms.get(session).copied().unwrap_or_default();
                    pb::Holder {
                        session_id: session.get(),
                        token: token.get(),
                        permits: permits_of(session),
                        lock_delay_ms: terms.lock_delay_ms,
                        max_hold_ms: terms.max_hold_ms,
                    }
                })
                .collect(),
            semaphore_limit: semaphore.map_or(0, |semaphore| semaphore.limit),
            waiters: found
                .iter()
                .flat_map(|found| &found.queue)
                .map(|waiter| pb::Waiter {
                    session_id: waiter.session.get(),
                    mode: wire_mode(waiter.mode),
                    permits: waiter.permits,
                    lock_delay_ms: waiter.terms.lock_delay_ms,
                    max_hold_ms: waiter.terms.max_hold_ms,
                })
                .collect(),
            lock_delay_ms: view.delay.map_or(0, |delay| delay.ms),
            // The leader answers (Describe is forwarded to it); before its
            // next tick it may not time the delay yet: the whole delay.
            lock_delay_left_ms: view.delay.map_or(0, |delay| {
                self.leases.delay_left(&lock).map_or(u64::from(delay.ms), |left| {
                    u64::try_from(left.as_millis()).unwrap_or(u64::MAX)
                })
            }),
        }))
    }

    async fn put(&self, request: Request<pb::PutRequest>) -> Result<Response<pb::PutResponse>, Status> {
        let key = key(&request.get_ref().key)?;
        value(&request.get_ref().value)?;
        let fence = fence(request.get_ref().fence.as_ref())?;
        let session = SessionId::new(request.get_ref().session_id);
        let caller = self.access.caller(&request)?;
        let by = credential(session, &request.get_ref().session_secret, &caller)?;
        forward_unless_leader!(self, request, put, caller);
        self.access
            .allow(&caller, Action::WriteKey("put", &key, &fence.lock))?;
        let budget = self.budget(&request);
        let value = request.into_inner().value;
        let command = Command::Put {
            key,
            value,
            fence,
            session,
            by,
        };
        match self.propose(command, budget).await? {
            Outcome::Written { .. } => Ok(Response::new(pb::PutResponse {})),
            other => Err(unexpected(other)),
        }
    }

    async fn get(&self, request: Request<pb::GetRequest>) -> Result<Response<pb::GetResponse>, Status> {
        let key = key(&request.get_ref().key)?;
        let read_fence = match request.get_ref().fence.as_ref() {
            Some(given) => Some(fence(Some(given))?),
            None => None,
        };
        let caller = self.access.caller(&request)?;
        forward_unless_leader!(self, request, get, caller);
        self.access.allow(&caller, Action::ReadKey(&key))?;
        let entry = self
            .read(self.budget(&request), |state| match &read_fence {
                Some(read_fence) => state
                    .check_read_fence(read_fence)
                    .map(|()| state.get(&key).cloned()),
                None => Ok(state.get(&key).cloned()),
            })
            .await?
            .map_err(from_lock_error)?;
        Ok(Response::new(match entry {
            Some(entry) => pb::GetResponse {
                found: true,
                value: entry.value,
                written_by: Some(pb::Fence {
                    lock: entry.written_by.lock.into_bytes(),
                    token: entry.written_by.token.get(),
                }),
            },
            None => pb::GetResponse::default(),
        }))
    }

    async fn delete(
        &self,
        request: Request<pb::DeleteRequest>,
    ) -> Result<Response<pb::DeleteResponse>, Status> {
        let key = key(&request.get_ref().key)?;
        let fence = fence(request.get_ref().fence.as_ref())?;
        let session = SessionId::new(request.get_ref().session_id);
        let caller = self.access.caller(&request)?;
        let by = credential(session, &request.get_ref().session_secret, &caller)?;
        forward_unless_leader!(self, request, delete, caller);
        self.access
            .allow(&caller, Action::WriteKey("delete", &key, &fence.lock))?;
        let command = Command::Delete {
            key,
            fence,
            session,
            by,
        };
        match self.propose(command, self.budget(&request)).await? {
            Outcome::Written { existed } => Ok(Response::new(pb::DeleteResponse { existed })),
            other => Err(unexpected(other)),
        }
    }

    async fn force_release(
        &self,
        request: Request<pb::ForceReleaseRequest>,
    ) -> Result<Response<pb::ForceReleaseResponse>, Status> {
        let lock = lock_name("name", &request.get_ref().name)?;
        let token = FencingToken::new(request.get_ref().token);
        let caller = self.access.caller(&request)?;
        forward_unless_leader!(self, request, force_release, caller);
        self.access.allow(&caller, Action::Admin("force_release"))?;
        let command = Command::ForceRelease {
            lock: lock.clone(),
            token,
            by: caller.name().to_string(),
        };
        match self.propose(command, self.budget(&request)).await? {
            Outcome::ForceReleased { session, next } => {
                tracing::warn!(lock = %lock, %token, holder = %session, by = caller.name(),
                    "a lock's grant was forced free");
                Ok(Response::new(pb::ForceReleaseResponse {
                    session_id: session.get(),
                    next_session_id: next.as_ref().map_or(0, |grant| grant.session.get()),
                    next_token: next.as_ref().map_or(0, |grant| grant.token.get()),
                }))
            }
            other => Err(unexpected(other)),
        }
    }

    type WatchStream = WatchStream;

    async fn watch(&self, request: Request<pb::WatchRequest>) -> Result<Response<Self::WatchStream>, Status> {
        let selector = Selector::from_request(request.get_ref())?;
        let caller = self.access.caller(&request)?;
        if let Some(why) = self.engine.removed() {
            return Err(from_engine_error(EngineError::Removed(why)));
        }
        if selector.locks {
            self.access.allow(&caller, Action::WatchLocks(&selector.name))?;
        }
        if selector.keys {
            self.access.allow(&caller, Action::WatchKeys(&selector.name))?;
        }
        if *self.stopping.borrow() {
            return Err(node_stopping());
        }
        let slot = self.watches.admit()?;
        // Served here, never forwarded: any node's history gives the same
        // events for a revision.
        let start = start_revision(self.engine.as_ref(), request.get_ref().from_revision)?;
        let (replies, outbound) = mpsc::channel(WATCH_QUEUE_MAX);
        let (ending, ended) = tokio::sync::oneshot::channel();
        tokio::spawn(serve_watch(
            self.engine.clone(),
            selector,
            start,
            replies,
            ending,
            self.stopping.clone(),
            slot,
        ));
        // The queued messages, then the status the watch ended with, if it
        // ended with one.
        let ended =
            futures::stream::once(ended).filter_map(|ended| futures::future::ready(ended.ok().map(Err)));
        Ok(Response::new(Box::pin(
            ReceiverStream::new(outbound).chain(ended),
        )))
    }

    async fn check_token(
        &self,
        request: Request<pb::CheckTokenRequest>,
    ) -> Result<Response<pb::CheckTokenResponse>, Status> {
        let lock = lock_name("lock", &request.get_ref().lock)?;
        let mode = lock_mode(request.get_ref().mode)?;
        let caller = self.access.caller(&request)?;
        forward_unless_leader!(self, request, check_token, caller);
        self.access.allow(&caller, Action::Lock("check_token", &lock))?;
        let token = FencingToken::new(request.get_ref().token);
        let (is_current, newest) = self
            .read(self.budget(&request), |state| {
                (
                    state.token_is_current(&lock, token, mode),
                    state.current_token(&lock),
                )
            })
            .await?;
        Ok(Response::new(pb::CheckTokenResponse {
            current: is_current,
            current_token: newest.map_or(0, FencingToken::get),
        }))
    }
}
