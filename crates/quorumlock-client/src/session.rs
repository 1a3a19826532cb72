//! [`Session`]: a lease kept alive in the background, the locks taken under
//! it, and the signal that it is lost.

use quorumlock_proto::{FencingToken, SessionId};
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Code, Status};

use super::backoff::Backoff;
use super::claims::{release_if_holder, ClaimAttempt, Claims};
use super::config::{KEEPALIVE_UNANSWERED_MAX, RENEWALS_PER_TTL};
use super::connection::{AcquireOptions, Ask, Client, LockMode, Terms};
use super::endpoints::{leader_hint, Picked};
use super::error::{describe_status, ClientError, LostReason};
use super::guard::LockGuard;
use super::key::SessionKey;

/// The terms of an acquire that sets none.
const NO_TERMS: Terms = Terms {
    lock_delay_ms: 0,
    max_hold_ms: 0,
};
use quorumlock_proto::v1 as pb;
use quorumlock_proto::v1::lock_client::LockClient;

/// What every handle of one session shares: the session's identity, its
/// lost signal, and the switch that stops its keepalive.
pub(crate) struct SessionShared {
    pub(crate) client: Client,
    /// The id and the secret every call on the session presents.
    pub(crate) key: SessionKey,
    ttl: Duration,
    lost: watch::Receiver<Option<LostReason>>,
    lost_sender: Arc<watch::Sender<Option<LostReason>>>,
    stop: Mutex<Option<oneshot::Sender<()>>>,
    /// Set once the owner closed or detached the session: dropping the last
    /// handle then has nothing to close.
    closed: AtomicBool,
    /// The lock names this session holds or is acquiring or releasing.
    pub(crate) claims: Claims,
    /// Until when the cluster is known to keep the session: one TTL after
    /// the sending of the last renewal it confirmed.
    lease_deadline: watch::Receiver<Instant>,
}

impl SessionShared {
    pub(crate) fn lost_reason(&self) -> Option<LostReason> {
        self.lost.borrow().clone()
    }

    pub(crate) async fn lost(&self) -> LostReason {
        let mut lost = self.lost.clone();
        let reason = match lost.wait_for(Option::is_some).await {
            Ok(reason) => reason.clone(),
            // The sender lives as long as this struct, so this cannot happen;
            // a vanished sender would mean nothing keeps the session alive.
            Err(_) => None,
        };
        reason.unwrap_or(LostReason::Closed)
    }

    pub(crate) fn watch(&self) -> watch::Receiver<Option<LostReason>> {
        self.lost.clone()
    }

    pub(crate) fn lease_deadline(&self) -> watch::Receiver<Instant> {
        self.lease_deadline.clone()
    }

    fn stop_keepalive(&self) {
        if let Some(stop) = self.stop.lock().take() {
            let _ = stop.send(());
        }
    }

    fn mark_lost(&self, reason: LostReason) {
        self.lost_sender.send_if_modified(|state| {
            if state.is_none() {
                *state = Some(reason);
                true
            } else {
                false
            }
        });
    }

    /// The error for an operation that needs the session once it is gone.
    fn lost_error(&self, reason: LostReason) -> ClientError {
        ClientError::SessionLost {
            session: self.key.id,
            reason,
        }
    }

    /// Turns a `NOT_FOUND` answer about this session into the lost signal.
    fn check_gone(&self, error: ClientError) -> ClientError {
        match &error {
            ClientError::Rpc {
                endpoint,
                code: Code::NotFound,
                message,
                refusal: Some(refusal),
            } if refusal.is_session_gone() => {
                let reason = LostReason::Ended {
                    endpoint: endpoint.clone(),
                    message: message.clone(),
                };
                self.mark_lost(reason.clone());
                self.stop_keepalive();
                self.lost_error(reason)
            }
            _ => error,
        }
    }
}

impl Drop for SessionShared {
    /// The last handle is gone: stop renewing and close the session in the
    /// background (best effort; it expires after its TTL otherwise).
    fn drop(&mut self) {
        self.stop_keepalive();
        if self.closed.load(Ordering::SeqCst) || self.lost.borrow().is_some() {
            return;
        }
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let client = self.client.clone();
            let key = self.key.clone();
            runtime.spawn(async move {
                if let Err(error) = client.close_session(&key).await {
                    tracing::debug!(session = %key.id, %error, "closing a dropped session failed");
                }
            });
        }
    }
}

/// A session: the unit of liveness that locks belong to.
///
/// A background task renews the lease about three times per TTL over a
/// `KeepAlive` stream, and moves to another endpoint when a stream breaks.
/// If the cluster ends the session, or no renewal is confirmed within the
/// TTL, the session is *lost*: [`Session::lost`] resolves at once and every
/// lock taken under it must be assumed held by someone else.
///
/// The session stays open while the `Session` or any of its [`LockGuard`]s
/// exists; when the last is dropped it is closed in the background.
pub struct Session {
    shared: Arc<SessionShared>,
}

impl Session {
    /// Starts keeping session `key` alive; `opened_at` is when `OpenSession`
    /// was sent, so the client's idea of the lease never outlasts the
    /// server's.
    pub(crate) fn start(client: Client, key: SessionKey, ttl: Duration, opened_at: Instant) -> Session {
        let (lost_sender, lost) = watch::channel(None);
        let lost_sender = Arc::new(lost_sender);
        let (stop_sender, stop) = oneshot::channel();
        let (lease_sender, lease_deadline) = watch::channel(opened_at + ttl);
        tokio::spawn(keep_alive(
            client.clone(),
            key.clone(),
            ttl,
            lease_sender,
            lost_sender.clone(),
            stop,
        ));
        Session {
            shared: Arc::new(SessionShared {
                client,
                key,
                ttl,
                lost,
                lost_sender,
                stop: Mutex::new(Some(stop_sender)),
                closed: AtomicBool::new(false),
                claims: Claims::default(),
                lease_deadline,
            }),
        }
    }

    /// The session id the cluster assigned.
    pub fn id(&self) -> SessionId {
        self.shared.key.id
    }

    /// The session's id and secret, for calls made on it by hand (a
    /// fenced write with [`Client::put_fenced`], another process that takes
    /// the session over). Treat it as a password.
    pub fn key(&self) -> &SessionKey {
        &self.shared.key
    }

    /// The TTL the cluster granted.
    pub fn ttl(&self) -> Duration {
        self.shared.ttl
    }

    /// The client the session was opened with.
    pub fn client(&self) -> &Client {
        &self.shared.client
    }

    /// Why the session is lost, or `None` while it is alive.
    pub fn lost_reason(&self) -> Option<LostReason> {
        self.shared.lost_reason()
    }

    /// Whether the session is lost.
    pub fn is_lost(&self) -> bool {
        self.shared.lost_reason().is_some()
    }

    /// Resolves as soon as the session is lost, with the reason.
    pub async fn lost(&self) -> LostReason {
        self.shared.lost().await
    }

    /// A receiver that changes from `None` to the reason when the session is
    /// lost, for holders that select on it alongside their work.
    pub fn watch(&self) -> watch::Receiver<Option<LostReason>> {
        self.shared.watch()
    }

    /// Until when the cluster is known to keep the session (one TTL after
    /// the sending of the last renewal it confirmed), as a receiver that
    /// moves forward with every confirmed renewal. A holder that must stop
    /// before its lease can run out watches this.
    pub fn lease_deadline(&self) -> watch::Receiver<Instant> {
        self.shared.lease_deadline()
    }

    /// Waits in the lock's FIFO queue until it is granted, however long that
    /// takes; fails if the session is lost meanwhile.
    ///
    /// One session holds a lock at most once: locking a name this session
    /// already holds (or is acquiring) fails with
    /// [`ClientError::AlreadyHeld`], and locking a name whose release by
    /// this session is still in flight waits for that release first. If the
    /// call is cancelled or fails after the cluster may have granted the
    /// lock, the grant is released in the background.
    pub async fn lock(&self, name: &str) -> Result<LockGuard, ClientError> {
        self.lock_in(name, LockMode::Exclusive).await
    }

    /// Takes the lock if it is free; `None` when another session holds it.
    pub async fn try_lock(&self, name: &str) -> Result<Option<LockGuard>, ClientError> {
        self.acquire(
            name,
            Some(Duration::ZERO),
            Ask::Lock(LockMode::Exclusive),
            NO_TERMS,
        )
        .await
    }

    /// Waits in the lock's FIFO queue for at most `wait`; `None` when it was
    /// not granted in time (the session has then left the queue).
    pub async fn lock_timeout(&self, name: &str, wait: Duration) -> Result<Option<LockGuard>, ClientError> {
        self.acquire(name, Some(wait), Ask::Lock(LockMode::Exclusive), NO_TERMS)
            .await
    }

    /// Takes the lock shared, waiting as long as it takes: with other
    /// readers at once, never with a writer. FIFO across modes: behind a
    /// waiting writer, this waits too. The guard's token fences reads
    /// ([`Client::read`]), never writes.
    pub async fn lock_shared(&self, name: &str) -> Result<LockGuard, ClientError> {
        self.lock_in(name, LockMode::Shared).await
    }

    /// Takes the lock shared if no writer holds it or waits for it.
    pub async fn try_lock_shared(&self, name: &str) -> Result<Option<LockGuard>, ClientError> {
        self.acquire(name, Some(Duration::ZERO), Ask::Lock(LockMode::Shared), NO_TERMS)
            .await
    }

    /// [`Session::lock_shared`] for at most `wait`.
    pub async fn lock_shared_timeout(
        &self,
        name: &str,
        wait: Duration,
    ) -> Result<Option<LockGuard>, ClientError> {
        self.acquire(name, Some(wait), Ask::Lock(LockMode::Shared), NO_TERMS)
            .await
    }

    /// Takes `permits` of the semaphore `name`, which has `limit` permits,
    /// waiting as long as it takes (FIFO: an ask that does not fit waits,
    /// and later asks wait behind it). The guard's token fences reads, not
    /// writes; releasing it returns its permits.
    pub async fn acquire_permits(
        &self,
        name: &str,
        permits: u32,
        limit: u32,
    ) -> Result<LockGuard, ClientError> {
        match self
            .acquire(name, None, Ask::Permits { permits, limit }, NO_TERMS)
            .await?
        {
            Some(guard) => Ok(guard),
            None => unreachable!("a wait without a deadline ends only with a grant or an error"),
        }
    }

    /// [`Session::acquire_permits`] if they are free and nobody waits.
    pub async fn try_acquire_permits(
        &self,
        name: &str,
        permits: u32,
        limit: u32,
    ) -> Result<Option<LockGuard>, ClientError> {
        self.acquire(
            name,
            Some(Duration::ZERO),
            Ask::Permits { permits, limit },
            NO_TERMS,
        )
        .await
    }

    /// [`Session::acquire_permits`] for at most `wait`.
    pub async fn acquire_permits_timeout(
        &self,
        name: &str,
        permits: u32,
        limit: u32,
        wait: Duration,
    ) -> Result<Option<LockGuard>, ClientError> {
        self.acquire(name, Some(wait), Ask::Permits { permits, limit }, NO_TERMS)
            .await
    }

    async fn lock_in(&self, name: &str, mode: LockMode) -> Result<LockGuard, ClientError> {
        match self.acquire(name, None, Ask::Lock(mode), NO_TERMS).await? {
            Some(guard) => Ok(guard),
            None => unreachable!("a wait without a deadline ends only with a grant or an error"),
        }
    }

    /// Acquires `name` as `options` say: a lock or semaphore permits,
    /// waiting as long as `options.wait`, with the grant's lock-delay and
    /// maximum hold time. `None` when not granted within the wait. A guard
    /// with a maximum hold reports
    /// [`LostReason::MaxHold`](crate::LostReason::MaxHold) once it passes,
    /// counted from no later than the grant, so no later than the leader
    /// ends the grant.
    pub async fn acquire_with(
        &self,
        name: &str,
        options: &AcquireOptions,
    ) -> Result<Option<LockGuard>, ClientError> {
        if options.permits.is_none() && options.mode == LockMode::Semaphore {
            return Err(ClientError::InvalidArgument(
                "a semaphore is acquired with permits: Some((permits, limit))".to_string(),
            ));
        }
        let terms = options.terms()?;
        self.acquire(name, options.wait, options.ask(), terms).await
    }

    async fn acquire(
        &self,
        name: &str,
        wait: Option<Duration>,
        ask: Ask,
        terms: Terms,
    ) -> Result<Option<LockGuard>, ClientError> {
        let shared = &self.shared;
        let deadline = wait.map(|wait| Instant::now() + wait);
        let mut claim = self.claim(name).await?;
        loop {
            if let Some(reason) = shared.lost_reason() {
                return Err(shared.lost_error(reason));
            }
            let step = match deadline {
                Some(deadline) => deadline.saturating_duration_since(Instant::now()),
                None => shared.client.config().lock_wait_step_max,
            };
            // From here until an answer says otherwise, the cluster may have
            // granted the lock: if this call ends any other way, the claim
            // releases that grant.
            claim.maybe_granted = true;
            let granted = tokio::select! {
                granted = shared.client.acquire_ask(&shared.key, name, step, ask, terms) => granted,
                // Dropping the call cancels it, and the server takes the
                // session out of the queue.
                reason = shared.lost() => return Err(shared.lost_error(reason)),
            };
            match granted.map_err(|error| shared.check_gone(error))? {
                Some(granted) => {
                    let hold = (terms.max_hold_ms > 0).then(|| {
                        let max_hold = Duration::from_millis(u64::from(terms.max_hold_ms));
                        (granted.no_later_than + max_hold, max_hold)
                    });
                    return Ok(Some(claim.into_guard(granted.token, ask, hold)));
                }
                // The server answered "not granted" and took the session out
                // of the queue: there is nothing to release.
                None if deadline.is_some_and(|deadline| Instant::now() >= deadline) => {
                    claim.maybe_granted = false;
                    return Ok(None);
                }
                None if deadline.is_some() && step.is_zero() => {
                    claim.maybe_granted = false;
                    return Ok(None);
                }
                // One step of a longer wait passed: wait again.
                None => continue,
            }
        }
    }

    /// Claims `name` for an acquire, after any release of it by this session
    /// that is still in flight.
    async fn claim(&self, name: &str) -> Result<Claim, ClientError> {
        let shared = &self.shared;
        loop {
            if let Some(reason) = shared.lost_reason() {
                return Err(shared.lost_error(reason));
            }
            let mut release_done = match shared.claims.try_claim(name) {
                ClaimAttempt::Claimed => {
                    return Ok(Claim {
                        session: shared.clone(),
                        name: name.to_string(),
                        maybe_granted: false,
                        done: false,
                    })
                }
                ClaimAttempt::AlreadyClaimed => {
                    return Err(ClientError::AlreadyHeld {
                        session: shared.key.id,
                        lock: name.to_string(),
                    })
                }
                ClaimAttempt::WaitForRelease(done) => done,
            };
            tokio::select! {
                // Resolves with an error once the release drops its sender.
                _ = release_done.changed() => {}
                reason = shared.lost() => return Err(shared.lost_error(reason)),
            }
        }
    }

    /// Stops renewing the session and lets go of it without closing it: it
    /// stays open, with its locks, until one TTL after its last renewal
    /// unless something else renews it. For handing a session to another
    /// process; returns its key (id and secret). Guards taken under it no
    /// longer renew it either; detach them too so that dropping them does
    /// not release.
    pub fn detach(self) -> SessionKey {
        self.shared.closed.store(true, Ordering::SeqCst);
        self.shared.stop_keepalive();
        self.shared.key.clone()
    }

    /// Closes the session: releases its locks, leaves its queues and stops
    /// the keepalive. Returns the locks it held. Guards still around then
    /// report the session lost with [`LostReason::Closed`].
    pub async fn close(self) -> Result<Vec<String>, ClientError> {
        let shared = &self.shared;
        shared.stop_keepalive();
        shared.closed.store(true, Ordering::SeqCst);
        let outcome = shared.client.close_session(&shared.key).await;
        shared.mark_lost(LostReason::Closed);
        outcome
    }
}

/// A name claimed by an acquire in progress. Turned into a guard on a grant;
/// dropped otherwise, when it frees the name, after releasing in the
/// background any grant the cluster may have made.
struct Claim {
    session: Arc<SessionShared>,
    name: String,
    /// Whether an `Acquire` was sent whose grant was not ruled out.
    maybe_granted: bool,
    /// Set once a guard owns the name.
    done: bool,
}

impl Claim {
    fn into_guard(mut self, token: FencingToken, ask: Ask, hold: Option<(Instant, Duration)>) -> LockGuard {
        self.done = true;
        LockGuard::new(
            self.session.clone(),
            std::mem::take(&mut self.name),
            token,
            ask.mode(),
            ask.permits(),
            hold,
        )
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        // A lost session's locks are gone with it; a call never sent
        // granted nothing.
        if !self.maybe_granted || self.session.lost_reason().is_some() {
            self.session.claims.forget(&self.name);
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            self.session.claims.forget(&self.name);
            return;
        };
        let slot = Claims::start_release(&self.session, &self.name);
        runtime.spawn(release_if_holder(slot));
    }
}

/// How one KeepAlive stream ended.
enum StreamEnd {
    /// The cluster said the session is gone.
    Gone { message: String },
    /// No renewal was confirmed before the lease ran out.
    Expired,
    /// The stream broke or stopped answering; try another endpoint.
    Broken { hint: Option<String> },
}

/// Renews session `key` until stopped or lost, moving between endpoints.
async fn keep_alive(
    client: Client,
    key: SessionKey,
    ttl: Duration,
    lease: watch::Sender<Instant>,
    lost: Arc<watch::Sender<Option<LostReason>>>,
    mut stop: oneshot::Receiver<()>,
) {
    let period = (ttl / RENEWALS_PER_TTL).max(Duration::from_millis(1));
    let config = client.config().clone();
    let mut deadline = *lease.borrow();
    let mut backoff = Backoff::new(config.backoff_initial, config.backoff_max.min(period));
    let report = |reason: LostReason| {
        lost.send_if_modified(|state| {
            if state.is_none() {
                *state = Some(reason);
                true
            } else {
                false
            }
        });
    };
    loop {
        let picked = client.pool().current();
        let deadline_before = deadline;
        let end = tokio::select! {
            _ = &mut stop => return,
            end = one_stream(&picked, &key, period, config.rpc_timeout, &mut deadline, &lease) => end,
        };
        match end {
            StreamEnd::Gone { message } => {
                report(LostReason::Ended {
                    endpoint: picked.addr,
                    message,
                });
                return;
            }
            StreamEnd::Expired => {
                report(LostReason::NotRenewed { ttl });
                return;
            }
            StreamEnd::Broken { hint } => {
                if deadline > deadline_before {
                    // The stream did renew before it broke: start over.
                    backoff = Backoff::new(config.backoff_initial, config.backoff_max.min(period));
                }
                tracing::debug!(session = %key.id, endpoint = %picked.addr, "keepalive stream broke; reconnecting");
                client.pool().failed(&picked, hint);
                let pause = backoff.next_pause();
                tokio::select! {
                    _ = &mut stop => return,
                    _ = tokio::time::sleep_until(deadline) => {
                        report(LostReason::NotRenewed { ttl });
                        return;
                    }
                    _ = tokio::time::sleep(pause) => {}
                }
            }
        }
    }
}

/// Runs one KeepAlive stream on `picked`, renewing every `period` and
/// moving `deadline` to one TTL after each renewal the server confirms
/// (counted from when the renewal was sent, so never later than the
/// server's own deadline).
async fn one_stream(
    picked: &Picked,
    key: &SessionKey,
    period: Duration,
    open_timeout: Duration,
    deadline: &mut Instant,
    lease: &watch::Sender<Instant>,
) -> StreamEnd {
    let renewal = pb::KeepAliveRequest {
        session_id: key.id.get(),
        session_secret: key.secret_bytes(),
    };
    let (sender, receiver) = mpsc::channel(KEEPALIVE_UNANSWERED_MAX);
    let mut sent: VecDeque<Instant> = VecDeque::with_capacity(KEEPALIVE_UNANSWERED_MAX);
    if sender.try_send(renewal.clone()).is_err() {
        return StreamEnd::Broken { hint: None };
    }
    sent.push_back(Instant::now());
    let mut client = LockClient::new(picked.channel.clone());
    let opened = tokio::select! {
        opened = client.keep_alive(ReceiverStream::new(receiver)) => opened,
        _ = tokio::time::sleep_until(*deadline) => return StreamEnd::Expired,
        _ = tokio::time::sleep(open_timeout) => return StreamEnd::Broken { hint: None },
    };
    let mut replies = match opened {
        Ok(response) => response.into_inner(),
        Err(status) if session_refused(&status) => {
            return StreamEnd::Gone {
                message: describe_status(&status),
            }
        }
        Err(status) => {
            return StreamEnd::Broken {
                hint: leader_hint(&status),
            }
        }
    };
    let mut ticker = tokio::time::interval_at(Instant::now() + period, period);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tokio::time::sleep_until(*deadline) => return StreamEnd::Expired,
            _ = ticker.tick() => {
                // A node that leaves a renewal unanswered for more than one
                // period is abandoned. The lease runs one TTL (RENEWALS_PER_TTL
                // periods) from the sending of the last confirmed renewal,
                // which is at least as old as the unanswered one, so at most
                // two periods of it are gone here and another node still has
                // a period to renew it in.
                if sent.front().is_some_and(|oldest| oldest.elapsed() > period) {
                    return StreamEnd::Broken { hint: None };
                }
                match sender.try_send(renewal.clone()) {
                    Ok(()) => sent.push_back(Instant::now()),
                    Err(mpsc::error::TrySendError::Full(_)) => {}
                    Err(mpsc::error::TrySendError::Closed(_)) => return StreamEnd::Broken { hint: None },
                }
            }
            reply = replies.message() => match reply {
                Ok(Some(reply)) => {
                    if let Some(sent_at) = sent.pop_front() {
                        *deadline = (*deadline).max(sent_at + Duration::from_millis(reply.ttl_ms));
                        lease.send_replace(*deadline);
                    }
                }
                Ok(None) => return StreamEnd::Broken { hint: None },
                Err(status) if session_refused(&status) => {
                    return StreamEnd::Gone { message: describe_status(&status) }
                }
                Err(status) => return StreamEnd::Broken { hint: leader_hint(&status) },
            }
        }
    }
}

/// Whether a keepalive answer says the session cannot be renewed by this
/// client at all (it is gone, or the cluster does not take this client for
/// its owner), so that no other node would renew it either.
fn session_refused(status: &Status) -> bool {
    matches!(
        status.code(),
        Code::NotFound | Code::PermissionDenied | Code::Unauthenticated | Code::InvalidArgument
    )
}
