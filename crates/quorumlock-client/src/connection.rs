//! [`Client`]: calls with retries and failover, and the typed wrappers of the
//! lock API.

use quorumlock_proto::{FencingToken, NodeId, SessionId};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use tonic::{Code, Request, Response, Status};

use super::backoff::Backoff;
use super::config::ClientConfig;
use super::endpoints::{
    check_schemes, leader_hint, named_leader, parse_endpoint, parse_endpoint_list, Picked, Pool, Rpc,
};
use super::error::{code_name, describe_status, ClientError, EndpointFailure, Refusal};
use super::guard::LockGuard;
use super::key::{SessionKey, SessionSecret};
use super::session::Session;
use quorumlock_proto::limits::{
    API_MESSAGE_BYTES_MAX, KEY_BYTES_MAX, LOCK_DELAY_MS_MAX, LOCK_NAME_BYTES_MAX, MAX_HOLD_MS_MAX,
    MAX_HOLD_MS_MIN, SEMAPHORE_PERMITS_MAX, SESSION_SECRET_BYTES, SESSION_TTL_MS_MAX, SESSION_TTL_MS_MIN,
    VALUE_BYTES_MAX,
};
use quorumlock_proto::v1 as pb;
use quorumlock_proto::v1::cluster_client::ClusterClient;
use quorumlock_proto::v1::lock_client::LockClient;

/// A lock and a token that claims to be its current one: what guards a
/// fenced write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fence {
    /// The lock's name.
    pub lock: String,
    /// The fencing token of a grant of that lock.
    pub token: FencingToken,
}

impl Fence {
    fn to_pb(&self) -> pb::Fence {
        pb::Fence {
            lock: self.lock.as_bytes().to_vec(),
            token: self.token.get(),
        }
    }

    fn from_pb(fence: pb::Fence) -> Self {
        Fence {
            lock: String::from_utf8_lossy(&fence.lock).into_owned(),
            token: FencingToken::new(fence.token),
        }
    }
}

/// A value of the fenced key-value store and the fence that wrote it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The stored bytes.
    pub value: Vec<u8>,
    /// The lock and token of the write that stored them.
    pub written_by: Fence,
}

/// A lock's state as `Describe` reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LockDescription {
    /// The exclusive holder and its token, when held exclusively.
    pub holder: Option<Holder>,
    /// The mode it is held in ([`LockMode::Exclusive`] when free).
    pub mode: LockMode,
    /// Every holder in session id order: the exclusive one, or the shared ones.
    pub holders: Vec<Holder>,
    /// Sessions waiting in the lock's FIFO queue.
    pub queue_length: u64,
    /// A semaphore's number of permits; `None` for a lock.
    pub semaphore_limit: Option<u32>,
    /// The queue, first in line first.
    pub waiters: Vec<Waiting>,
    /// The lock-delay in force, if any: nobody is granted the lock
    /// meanwhile.
    pub lock_delay: Option<LockDelayed>,
}

/// A lock-delay in force, as `Describe` reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LockDelayed {
    /// Its length.
    pub length: Duration,
    /// About how much of it is left, as the leader counts.
    pub left: Duration,
}

/// A session in a lock's queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Waiting {
    /// The waiting session.
    pub session_id: SessionId,
    /// What it asked for.
    pub mode: LockMode,
    /// The permits it asked for, of a semaphore; 0 for a lock.
    pub permits: u32,
}

/// How a lock is held or asked for.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum LockMode {
    /// One holder at a time; its token fences writes and reads.
    #[default]
    Exclusive,
    /// Any number of holders and no exclusive one; their tokens fence
    /// reads ([`Client::get_fenced`], [`Client::check_token_in`]) only.
    Shared,
    /// Permits of a semaphore ([`Client::acquire_permits`]); its holders'
    /// tokens fence reads only, as shared holders' do.
    Semaphore,
}

impl LockMode {
    fn to_pb(self) -> pb::LockMode {
        match self {
            LockMode::Exclusive => pb::LockMode::Exclusive,
            LockMode::Shared => pb::LockMode::Shared,
            LockMode::Semaphore => pb::LockMode::Semaphore,
        }
    }

    pub(crate) fn from_pb(mode: i32) -> LockMode {
        match pb::LockMode::try_from(mode) {
            Ok(pb::LockMode::Shared) => LockMode::Shared,
            Ok(pb::LockMode::Semaphore) => LockMode::Semaphore,
            _ => LockMode::Exclusive,
        }
    }

    /// `exclusive`, `shared` or `semaphore`.
    pub fn as_str(self) -> &'static str {
        match self {
            LockMode::Exclusive => "exclusive",
            LockMode::Shared => "shared",
            LockMode::Semaphore => "semaphore",
        }
    }
}

/// How to acquire a lock: its kind, how long to wait, and the grant's
/// lock-delay and maximum hold time (README, "Lock-delay and maximum hold
/// time"). The default is an exclusive lock, waited for as long as it
/// takes, with neither.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AcquireOptions {
    /// [`LockMode::Exclusive`] or [`LockMode::Shared`]; for a semaphore,
    /// set `permits` (the mode is then ignored).
    pub mode: LockMode,
    /// `Some((permits, limit))`: that many permits of a semaphore of
    /// `limit`, instead of a lock.
    pub permits: Option<(u32, u32)>,
    /// How long to wait in the queue: `None` as long as it takes,
    /// `Some(Duration::ZERO)` only if the lock is free now.
    pub wait: Option<Duration>,
    /// When the grant ends without a release (its session expires, or its
    /// `max_hold` passes), nobody is granted the lock for this long: its
    /// holder may still be at work. Zero (none) to 60 s, in whole ms.
    pub lock_delay: Duration,
    /// The leader ends the grant once it has been held this long, even
    /// while the session renews; the guard reports
    /// [`LostReason::MaxHold`](crate::LostReason::MaxHold) by then. `None`,
    /// or 1 s to 24 h, in whole ms.
    pub max_hold: Option<Duration>,
}

impl AcquireOptions {
    /// What the options ask for.
    pub(crate) fn ask(&self) -> Ask {
        match self.permits {
            Some((permits, limit)) => Ask::Permits { permits, limit },
            None => Ask::Lock(self.mode),
        }
    }

    /// The terms as the wire carries them, checked against their bounds.
    pub(crate) fn terms(&self) -> Result<Terms, ClientError> {
        let lock_delay_ms = u32::try_from(self.lock_delay.as_millis())
            .ok()
            .filter(|ms| *ms <= LOCK_DELAY_MS_MAX)
            .ok_or_else(|| {
                ClientError::InvalidArgument(format!(
                    "lock-delay {:?} is more than the {LOCK_DELAY_MS_MAX} ms limit",
                    self.lock_delay
                ))
            })?;
        let max_hold_ms = match self.max_hold {
            None => 0,
            Some(max_hold) => u32::try_from(max_hold.as_millis())
                .ok()
                .filter(|ms| (MAX_HOLD_MS_MIN..=MAX_HOLD_MS_MAX).contains(ms))
                .ok_or_else(|| {
                    ClientError::InvalidArgument(format!(
                        "maximum hold {max_hold:?} is outside {MAX_HOLD_MS_MIN}..={MAX_HOLD_MS_MAX} ms"
                    ))
                })?,
        };
        Ok(Terms {
            lock_delay_ms,
            max_hold_ms,
        })
    }
}

/// A grant's terms in milliseconds, as `AcquireRequest` carries them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Terms {
    pub(crate) lock_delay_ms: u32,
    pub(crate) max_hold_ms: u32,
}

/// A grant as the client knows it: its token, and a moment no later than
/// the one the grant was made at (the request's sending, plus the wait the
/// server reported), which a maximum hold is counted from.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Granted {
    pub(crate) token: FencingToken,
    pub(crate) no_later_than: tokio::time::Instant,
}

/// What an acquire asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Ask {
    /// A lock, exclusive or shared.
    Lock(LockMode),
    /// `permits` of a semaphore of `limit`.
    Permits { permits: u32, limit: u32 },
}

impl Ask {
    pub(crate) fn mode(self) -> LockMode {
        match self {
            Ask::Lock(mode) => mode,
            Ask::Permits { .. } => LockMode::Semaphore,
        }
    }

    pub(crate) fn permits(self) -> u32 {
        match self {
            Ask::Lock(_) => 0,
            Ask::Permits { permits, .. } => permits,
        }
    }
}

impl std::fmt::Display for LockMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Who holds a lock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Holder {
    /// The holding session.
    pub session_id: SessionId,
    /// The fencing token of its grant.
    pub token: FencingToken,
    /// A semaphore holder's permits; 0 for a lock.
    pub permits: u32,
}

/// The answer of `CheckToken`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TokenCheck {
    /// Whether the token asked about is current in the mode asked.
    pub current: bool,
    /// The lock's newest token (the exclusive holder's, or the highest
    /// shared holder's), if it is held.
    pub current_token: Option<FencingToken>,
}

/// What `Release` did besides releasing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Released {
    /// The waiter granted the lock in the same command, if any.
    pub next: Option<Holder>,
}

/// The answer to a forced release.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ForceReleased {
    /// The session whose grant was freed.
    pub holder: SessionId,
    /// The waiter granted the lock in the same command, if any.
    pub next: Option<Holder>,
}

/// One node's view of the cluster, from `Cluster/Status`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeStatus {
    /// The endpoint that answered.
    pub endpoint: String,
    /// The node's id.
    pub node_id: NodeId,
    /// `raft` or `paxos`.
    pub engine: String,
    /// The leader it knows of: id and address.
    pub leader: Option<(NodeId, String)>,
    /// Whether this node is the leader.
    pub is_leader: bool,
    /// Raft term or Paxos ballot round.
    pub term: u64,
    /// Highest log index known committed.
    pub commit_index: u64,
    /// Highest log index applied to the lock state.
    pub applied_index: u64,
    /// Every member: id and address.
    pub members: Vec<(NodeId, String)>,
}

impl NodeStatus {
    fn from_pb(endpoint: &str, status: pb::StatusResponse) -> Self {
        NodeStatus {
            endpoint: endpoint.to_string(),
            node_id: NodeId::new(status.node_id),
            engine: status.engine,
            leader: (status.leader_id != 0).then_some((NodeId::new(status.leader_id), status.leader_addr)),
            is_leader: status.is_leader,
            term: status.term,
            commit_index: status.commit_index,
            applied_index: status.applied_index,
            members: status
                .members
                .into_iter()
                .map(|member| (NodeId::new(member.id), member.addr))
                .collect(),
        }
    }
}

/// A connection to a quorumlock cluster through any subset of its nodes.
///
/// Every call goes to one endpoint (the last that worked, or the leader a
/// node named); an `UNAVAILABLE` answer or a dead endpoint moves it to the
/// next one and retries with bounded exponential backoff and jitter, for at
/// most [`ClientConfig::retry_total_max`]. A failure of that kind may come
/// after the command took effect: calls whose repeat could then answer
/// wrongly (`release`, `close_session`, `put_fenced`, `delete_fenced`) report such an
/// answer as [`ClientError::OutcomeUnknown`]. Cloning is cheap and shares the
/// connections.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

struct Inner {
    pool: Pool,
    config: ClientConfig,
}

/// Whether a failed attempt may be repeated elsewhere: `UNAVAILABLE` (no
/// leader, node down, leader change) and a connection that broke mid-call.
/// Such a failure can come after the command took effect, so only some calls
/// give the same answer when repeated; see [`Repeat`].
pub(crate) fn retryable(status: &Status) -> bool {
    match status.code() {
        Code::Unavailable => true,
        // A connection that broke mid-call surfaces as one of these with the
        // transport's error attached; the server never saw a cancellation.
        Code::Unknown | Code::Cancelled => std::error::Error::source(status).is_some(),
        _ => false,
    }
}

/// Whether a failed attempt certainly did not take effect: a node that says
/// it is not the leader, an overloaded leader, or a node removed from the
/// cluster refuses before proposing anything. Every other failure (no quorum in time, a broken connection,
/// a failed forward, a node stopping) may come after the command was
/// proposed.
fn certainly_not_applied(status: &Status) -> bool {
    matches!(
        Refusal::of(status),
        Some(Refusal::NotLeader { .. } | Refusal::Overloaded { .. } | Refusal::NodeRemoved)
    )
}

/// What repeating a call after a failure that may have taken effect does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Repeat {
    /// The repeat answers as the first attempt would have: `Acquire` by the
    /// same session (the holder gets its token back, a waiter keeps its
    /// place), and the reads.
    Idempotent,
    /// The repeat may be refused, or answer differently, because the first
    /// attempt took effect: `Release`, `CloseSession`, `Delete`, and `Put`
    /// (a first attempt that wrote may be followed by the lock passing on,
    /// and the repeat refused for a stale token). The
    /// call's wrapper turns such an answer into
    /// [`ClientError::OutcomeUnknown`].
    Ambiguous,
}

/// The result of a call, and whether an earlier attempt of it may have taken
/// effect without its answer arriving.
pub(crate) struct Called<T> {
    outcome: Result<T, ClientError>,
    /// The last such failure, if any.
    earlier_failure: Option<String>,
}

impl<T> Called<T> {
    /// The outcome, with a refusal of a repeat whose earlier attempt may
    /// have taken effect (`refused_if_applied`) reported as
    /// [`ClientError::OutcomeUnknown`].
    fn resolve(self, refused_if_applied: &[Code]) -> Result<T, ClientError> {
        match (self.outcome, self.earlier_failure) {
            (
                Err(ClientError::Rpc {
                    endpoint,
                    code,
                    message,
                    ..
                }),
                Some(earlier_failure),
            ) if refused_if_applied.contains(&code) => Err(ClientError::OutcomeUnknown {
                endpoint,
                code,
                message,
                earlier_failure,
            }),
            (outcome, _) => outcome,
        }
    }
}

impl Client {
    /// Connects through `endpoints` (each `host:port`, `http://host:port` or `https://host:port`,
    /// or a comma-separated list of them) with the default
    /// [`ClientConfig`].
    pub async fn connect<I, S>(endpoints: I) -> Result<Client, ClientError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        Client::connect_with(endpoints, ClientConfig::default()).await
    }

    /// Connects with explicit settings. Succeeds once one endpoint answers
    /// `Cluster/Status`; fails with every endpoint's last answer if none does
    /// within [`ClientConfig::connect_wait_max`].
    pub async fn connect_with<I, S>(endpoints: I, config: ClientConfig) -> Result<Client, ClientError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let given: Vec<String> = endpoints
            .into_iter()
            .map(|item| item.as_ref().to_string())
            .collect();
        check_schemes(&given, config.tls.is_some())?;
        let endpoints = parse_endpoint_list(&given)?;
        let pool = Pool::new(&endpoints, &config)?;
        let client = Client {
            inner: Arc::new(Inner { pool, config }),
        };
        client.find_live_endpoint().await?;
        Ok(client)
    }

    async fn find_live_endpoint(&self) -> Result<(), ClientError> {
        let config = &self.inner.config;
        let started = Instant::now();
        let mut backoff = Backoff::new(config.backoff_initial, config.backoff_max);
        let mut failures: Vec<EndpointFailure> = Vec::new();
        loop {
            for index in 0..self.inner.pool.len() {
                let picked = self.inner.pool.at(index);
                match self.status_on(&picked).await {
                    Ok(_) => {
                        self.inner.pool.prefer(picked.index);
                        return Ok(());
                    }
                    Err(error) => {
                        let failure = match error {
                            ClientError::Rpc {
                                endpoint,
                                code,
                                message,
                                ..
                            } => EndpointFailure {
                                endpoint,
                                code,
                                message,
                            },
                            other => return Err(other),
                        };
                        failures.retain(|known| known.endpoint != failure.endpoint);
                        failures.push(failure);
                    }
                }
            }
            let pause = backoff.next_pause();
            if started.elapsed() + pause > config.connect_wait_max {
                return Err(ClientError::NoEndpointAnswered {
                    waited: started.elapsed(),
                    failures,
                });
            }
            tokio::time::sleep(pause).await;
        }
    }

    /// The settings in use.
    pub fn config(&self) -> &ClientConfig {
        &self.inner.config
    }

    /// Every endpoint the client knows, given or learned from leader hints.
    pub fn endpoints(&self) -> Vec<String> {
        self.inner.pool.addrs()
    }

    /// The endpoint calls go to first.
    pub fn current_endpoint(&self) -> String {
        self.inner.pool.current().addr
    }

    pub(crate) fn pool(&self) -> &Pool {
        &self.inner.pool
    }

    /// Runs one idempotent call, retrying retryable failures on other
    /// endpoints until [`ClientConfig::retry_total_max`] has passed. `wait`
    /// is added to the per-attempt timeout for calls that wait on purpose.
    pub(crate) async fn call<T, F, Fut>(&self, wait: Duration, rpc: F) -> Result<T, ClientError>
    where
        F: FnMut(LockClient<Rpc>, Duration) -> Fut,
        Fut: Future<Output = Result<Response<T>, Status>>,
    {
        self.call_tracked(wait, Repeat::Idempotent, rpc).await.outcome
    }

    /// Like [`Client::call`], also saying whether an earlier attempt may
    /// have taken effect. A call that is not idempotent is still retried,
    /// since giving up at every leader change would make it useless, but its
    /// wrapper must read a refusal of the repeat as "outcome unknown".
    pub(crate) async fn call_tracked<T, F, Fut>(
        &self,
        wait: Duration,
        repeat: Repeat,
        mut rpc: F,
    ) -> Called<T>
    where
        F: FnMut(LockClient<Rpc>, Duration) -> Fut,
        Fut: Future<Output = Result<Response<T>, Status>>,
    {
        let config = &self.inner.config;
        let started = Instant::now();
        let mut backoff = Backoff::new(config.backoff_initial, config.backoff_max);
        let mut attempts = 0u32;
        let mut earlier_failure: Option<String> = None;
        let done = |outcome, earlier_failure| Called {
            outcome,
            earlier_failure: if repeat == Repeat::Ambiguous {
                earlier_failure
            } else {
                None
            },
        };
        loop {
            let picked = self.inner.pool.current();
            let timeout = config.rpc_timeout.saturating_add(wait);
            let client = LockClient::new(picked.channel.clone())
                .max_decoding_message_size(API_MESSAGE_BYTES_MAX)
                .max_encoding_message_size(API_MESSAGE_BYTES_MAX);
            attempts += 1;
            let status = match tokio::time::timeout(timeout, rpc(client, timeout)).await {
                Ok(Ok(response)) => {
                    if let Some(leader) = named_leader(response.metadata()) {
                        self.inner.pool.forwarded(&picked, &leader);
                    }
                    return done(Ok(response.into_inner()), earlier_failure);
                }
                Ok(Err(status)) if retryable(&status) => status,
                Ok(Err(status)) => {
                    return done(
                        Err(ClientError::from_status(&picked.addr, &status)),
                        earlier_failure,
                    )
                }
                Err(_) => Status::deadline_exceeded(format!("no answer within {timeout:?}")),
            };
            if !certainly_not_applied(&status) {
                earlier_failure = Some(format!(
                    "{}: {}: {}",
                    picked.addr,
                    code_name(status.code()),
                    describe_status(&status)
                ));
            }
            self.inner.pool.failed(&picked, leader_hint(&status));
            let pause = backoff.next_pause();
            if started.elapsed() + pause > config.retry_total_max {
                let error = ClientError::Rpc {
                    endpoint: picked.addr,
                    code: status.code(),
                    message: format!(
                        "{} (gave up after {attempts} attempts in {:.1?})",
                        describe_status(&status),
                        started.elapsed()
                    ),
                    refusal: Refusal::of(&status),
                };
                // The last failure is the error itself, not an earlier one.
                return done(Err(error), None);
            }
            tracing::debug!(endpoint = %picked.addr, %status, ?pause, "retrying");
            tokio::time::sleep(pause).await;
        }
    }

    /// Opens a session of `ttl` and keeps it alive in a background task
    /// until it is closed or every handle to it (the [`Session`] and its
    /// [`LockGuard`]s) is dropped.
    pub async fn session(&self, ttl: Duration) -> Result<Session, ClientError> {
        let opened_at = Instant::now();
        let (key, ttl) = self.open_bare_session(ttl).await?;
        Ok(Session::start(self.clone(), key, ttl, opened_at))
    }

    /// Opens a session that nothing keeps alive: it expires one TTL after
    /// the cluster opened it unless renewed. For scripts that hand the
    /// session on; programs want [`Client::session`]. Returns the session's
    /// key (its id and the secret every call on it presents) and the TTL
    /// granted.
    ///
    /// An `OpenSession` repeated after a failure that may have taken effect
    /// opens a second session; the first, unknown to the client, holds
    /// nothing and expires one TTL later.
    pub async fn open_bare_session(&self, ttl: Duration) -> Result<(SessionKey, Duration), ClientError> {
        let ttl_ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX);
        if !(SESSION_TTL_MS_MIN..=SESSION_TTL_MS_MAX).contains(&ttl_ms) {
            return Err(ClientError::InvalidArgument(format!(
                "session TTL {ttl:?} is outside the allowed {:?} to {:?}",
                Duration::from_millis(SESSION_TTL_MS_MIN),
                Duration::from_millis(SESSION_TTL_MS_MAX)
            )));
        }
        let opened = self
            .call(Duration::ZERO, |mut client, timeout| async move {
                client
                    .open_session(request(pb::OpenSessionRequest { ttl_ms }, timeout))
                    .await
            })
            .await?;
        let secret = SessionSecret::from_bytes(&opened.session_secret).map_err(|_| ClientError::Rpc {
            endpoint: self.current_endpoint(),
            code: Code::Internal,
            refusal: None,
            message: format!(
                "OpenSession returned a session secret of {} bytes, not {SESSION_SECRET_BYTES}",
                opened.session_secret.len()
            ),
        })?;
        Ok((
            SessionKey::new(SessionId::new(opened.session_id), secret),
            Duration::from_millis(opened.ttl_ms),
        ))
    }

    /// Closes a session, releasing its locks and leaving its queues;
    /// returns the locks it held. [`ClientError::OutcomeUnknown`] when an
    /// attempt that may have closed it failed and the repeat found no such
    /// session.
    pub async fn close_session(&self, session: &SessionKey) -> Result<Vec<String>, ClientError> {
        let closed = self
            .call_tracked(Duration::ZERO, Repeat::Ambiguous, |mut client, timeout| {
                let message = pb::CloseSessionRequest {
                    session_id: session.id.get(),
                    session_secret: session.secret_bytes(),
                };
                async move { client.close_session(request(message, timeout)).await }
            })
            .await
            .resolve(&[Code::NotFound])?;
        Ok(closed.released)
    }

    /// `Acquire` for a session: a try-lock when `wait` is zero, else a
    /// wait of at most `wait` in the lock's FIFO queue. Returns the fencing
    /// token, or `None` when the lock was not granted. The wait is capped at
    /// [`ClientConfig::lock_wait_step_max`]. Programs want
    /// [`Session::lock`] and friends, which return guards.
    pub async fn acquire(
        &self,
        session: &SessionKey,
        name: &str,
        wait: Duration,
    ) -> Result<Option<FencingToken>, ClientError> {
        self.acquire_in(session, name, wait, LockMode::Exclusive).await
    }

    /// [`Client::acquire`] in `mode`: shared holders hold together, in FIFO
    /// order with writers (a reader behind a waiting writer waits too).
    pub async fn acquire_in(
        &self,
        session: &SessionKey,
        name: &str,
        wait: Duration,
        mode: LockMode,
    ) -> Result<Option<FencingToken>, ClientError> {
        if mode == LockMode::Semaphore {
            return Err(ClientError::InvalidArgument(
                "a semaphore is acquired with acquire_permits, which names the permits".to_string(),
            ));
        }
        Ok(self
            .acquire_ask(session, name, wait, Ask::Lock(mode), Terms::default())
            .await?
            .map(|granted| granted.token))
    }

    /// `Acquire` of `name` by a session as `options` say, waiting at most
    /// `options.wait` cut to one server-side wait
    /// ([`ClientConfig::lock_wait_step_max`](crate::ClientConfig)); `None`
    /// when not granted within it.
    pub async fn acquire_with(
        &self,
        session: &SessionKey,
        name: &str,
        options: &AcquireOptions,
    ) -> Result<Option<FencingToken>, ClientError> {
        let wait = options.wait.unwrap_or(self.inner.config.lock_wait_step_max);
        Ok(self
            .acquire_ask(session, name, wait, options.ask(), options.terms()?)
            .await?
            .map(|granted| granted.token))
    }

    /// `Acquire` of `permits` of the semaphore `name`, which has `limit`
    /// permits (fixed while anyone holds or awaits it: another number is
    /// refused with [`Refusal::SemaphoreLimit`](crate::Refusal::SemaphoreLimit)).
    /// FIFO: an ask that does not fit waits, and later asks wait behind it.
    pub async fn acquire_permits(
        &self,
        session: &SessionKey,
        name: &str,
        permits: u32,
        limit: u32,
        wait: Duration,
    ) -> Result<Option<FencingToken>, ClientError> {
        Ok(self
            .acquire_ask(
                session,
                name,
                wait,
                Ask::Permits { permits, limit },
                Terms::default(),
            )
            .await?
            .map(|granted| granted.token))
    }

    pub(crate) async fn acquire_ask(
        &self,
        session: &SessionKey,
        name: &str,
        wait: Duration,
        ask: Ask,
        terms: Terms,
    ) -> Result<Option<Granted>, ClientError> {
        check_lock_name(name)?;
        let (permits, semaphore_limit) = match ask {
            Ask::Lock(_) => (0, 0),
            Ask::Permits { permits, limit } => {
                check_permits(permits, limit)?;
                (permits, limit)
            }
        };
        let mode = ask.mode();
        let wait = wait.min(self.inner.config.lock_wait_step_max);
        let wait_ms = u64::try_from(wait.as_millis()).unwrap_or(u64::MAX);
        let name = name.as_bytes().to_vec();
        // Before the first attempt is sent: no later than the one answered.
        let sent = tokio::time::Instant::now();
        let answer = self
            .call(wait, |mut client, timeout| {
                let message = pb::AcquireRequest {
                    session_id: session.id.get(),
                    name: name.clone(),
                    wait_ms,
                    session_secret: session.secret_bytes(),
                    mode: mode.to_pb().into(),
                    permits,
                    semaphore_limit,
                    lock_delay_ms: terms.lock_delay_ms,
                    max_hold_ms: terms.max_hold_ms,
                };
                async move { client.acquire(request(message, timeout)).await }
            })
            .await?;
        Ok(answer.acquired.then(|| Granted {
            token: FencingToken::new(answer.token),
            no_later_than: sent + Duration::from_millis(answer.waited_ms),
        }))
    }

    /// `Release` of `name` held by a session with `token`; the first waiter
    /// is granted in the same command.
    ///
    /// [`ClientError::OutcomeUnknown`] when an attempt that may have
    /// released failed and the repeat was refused as if it had (the session
    /// no longer holds the lock, or is gone): the lock is then not held by
    /// this session, but who was granted it next is unknown.
    pub async fn release(
        &self,
        session: &SessionKey,
        name: &str,
        token: FencingToken,
    ) -> Result<Released, ClientError> {
        check_lock_name(name)?;
        let name = name.as_bytes().to_vec();
        let answer = self
            .call_tracked(Duration::ZERO, Repeat::Ambiguous, |mut client, timeout| {
                let message = pb::ReleaseRequest {
                    session_id: session.id.get(),
                    name: name.clone(),
                    token: token.get(),
                    session_secret: session.secret_bytes(),
                };
                async move { client.release(request(message, timeout)).await }
            })
            .await
            .resolve(&[Code::NotFound, Code::FailedPrecondition])?;
        Ok(Released {
            next: (answer.next_session_id != 0).then_some(Holder {
                session_id: SessionId::new(answer.next_session_id),
                token: FencingToken::new(answer.next_token),
                permits: 0,
            }),
        })
    }

    /// Frees the grant of `name` made under `token`, whoever holds it (an
    /// administrator's call: the admin role with an access policy). Returns
    /// the session that held it, and the waiter granted next. A repeat after
    /// a lost answer is refused as a stale token, never freeing a later
    /// grant: such a refusal is reported as [`ClientError::OutcomeUnknown`].
    pub async fn force_release(&self, name: &str, token: FencingToken) -> Result<ForceReleased, ClientError> {
        check_lock_name(name)?;
        let name = name.as_bytes().to_vec();
        let answer = self
            .call_tracked(Duration::ZERO, Repeat::Ambiguous, |mut client, timeout| {
                let message = pb::ForceReleaseRequest {
                    name: name.clone(),
                    token: token.get(),
                };
                async move { client.force_release(request(message, timeout)).await }
            })
            .await
            .resolve(&[Code::FailedPrecondition])?;
        Ok(ForceReleased {
            holder: SessionId::new(answer.session_id),
            next: (answer.next_session_id != 0).then_some(Holder {
                session_id: SessionId::new(answer.next_session_id),
                token: FencingToken::new(answer.next_token),
                permits: 0,
            }),
        })
    }

    /// Holders, tokens, mode and queue length of a lock (linearizable).
    pub async fn describe(&self, name: &str) -> Result<LockDescription, ClientError> {
        check_lock_name(name)?;
        let name = name.as_bytes().to_vec();
        let answer = self
            .call(Duration::ZERO, |mut client, timeout| {
                let name = name.clone();
                async move {
                    client
                        .describe(request(pb::DescribeRequest { name }, timeout))
                        .await
                }
            })
            .await?;
        Ok(LockDescription {
            holder: (answer.held && answer.holder_session_id != 0).then_some(Holder {
                session_id: SessionId::new(answer.holder_session_id),
                token: FencingToken::new(answer.token),
                permits: 0,
            }),
            mode: LockMode::from_pb(answer.mode),
            holders: answer
                .holders
                .iter()
                .map(|holder| Holder {
                    session_id: SessionId::new(holder.session_id),
                    token: FencingToken::new(holder.token),
                    permits: holder.permits,
                })
                .collect(),
            queue_length: answer.queue_length,
            semaphore_limit: (answer.semaphore_limit != 0).then_some(answer.semaphore_limit),
            waiters: answer
                .waiters
                .iter()
                .map(|waiter| Waiting {
                    session_id: SessionId::new(waiter.session_id),
                    mode: LockMode::from_pb(waiter.mode),
                    permits: waiter.permits,
                })
                .collect(),
            lock_delay: (answer.lock_delay_ms != 0).then(|| LockDelayed {
                length: Duration::from_millis(u64::from(answer.lock_delay_ms)),
                left: Duration::from_millis(answer.lock_delay_left_ms),
            }),
        })
    }

    /// Writes `value` under `key`, fenced by the guard's lock and token: the
    /// cluster refuses it with `FAILED_PRECONDITION` unless the token is
    /// still the lock's current one and the guard's session holds it. [`ClientError::OutcomeUnknown`] when an
    /// attempt that may have written failed and the repeat was refused: the
    /// value may or may not be stored.
    pub async fn put(
        &self,
        key: &str,
        value: impl Into<Vec<u8>>,
        guard: &LockGuard,
    ) -> Result<(), ClientError> {
        self.put_fenced(key, value, &guard.fence(), guard.session_key())
            .await
    }

    /// Like [`Client::put`] with an explicit fence and the key of the
    /// session that holds its lock, for holders that keep them elsewhere (a
    /// script, another process).
    pub async fn put_fenced(
        &self,
        key: &str,
        value: impl Into<Vec<u8>>,
        fence: &Fence,
        session: &SessionKey,
    ) -> Result<(), ClientError> {
        check_key(key)?;
        check_lock_name(&fence.lock)?;
        let value = value.into();
        check_value(&value)?;
        let key = key.as_bytes().to_vec();
        let fence = fence.to_pb();
        self.call_tracked(Duration::ZERO, Repeat::Ambiguous, |mut client, timeout| {
            let message = pb::PutRequest {
                key: key.clone(),
                value: value.clone(),
                fence: Some(fence.clone()),
                session_id: session.id.get(),
                session_secret: session.secret_bytes(),
            };
            async move { client.put(request(message, timeout)).await }
        })
        .await
        // A first attempt may have written and the lock passed on before
        // the repeat, which is then refused: that refusal says nothing
        // about the first attempt.
        .resolve(&[Code::FailedPrecondition])?;
        Ok(())
    }

    /// Reads a key (linearizable); `None` when it is not set.
    pub async fn get(&self, key: &str) -> Result<Option<Entry>, ClientError> {
        self.get_with(key, None).await
    }

    /// Reads a key under a held lock, shared or exclusive: answered only
    /// while the guard's token is one of its lock's holders', at the same
    /// linearizable point as the read; a guard that lost its lock gets
    /// [`Refusal::StaleToken`](crate::Refusal::StaleToken).
    pub async fn read(&self, key: &str, guard: &LockGuard) -> Result<Option<Entry>, ClientError> {
        self.get_fenced(key, &guard.fence()).await
    }

    /// Like [`Client::read`] with an explicit fence.
    pub async fn get_fenced(&self, key: &str, fence: &Fence) -> Result<Option<Entry>, ClientError> {
        check_lock_name(&fence.lock)?;
        self.get_with(key, Some(fence.to_pb())).await
    }

    async fn get_with(&self, key: &str, fence: Option<pb::Fence>) -> Result<Option<Entry>, ClientError> {
        check_key(key)?;
        let key = key.as_bytes().to_vec();
        let answer = self
            .call(Duration::ZERO, |mut client, timeout| {
                let message = pb::GetRequest {
                    key: key.clone(),
                    fence: fence.clone(),
                };
                async move { client.get(request(message, timeout)).await }
            })
            .await?;
        Ok(answer.found.then(|| Entry {
            value: answer.value,
            written_by: Fence::from_pb(answer.written_by.unwrap_or_default()),
        }))
    }

    /// Deletes a key, fenced by the guard; returns whether it existed.
    /// [`ClientError::OutcomeUnknown`] when an attempt that may have deleted
    /// it failed and the repeat found the key gone: it is gone, but whether
    /// this call deleted it is unknown.
    pub async fn delete(&self, key: &str, guard: &LockGuard) -> Result<bool, ClientError> {
        self.delete_fenced(key, &guard.fence(), guard.session_key()).await
    }

    /// Like [`Client::delete`] with an explicit fence and session.
    pub async fn delete_fenced(
        &self,
        key: &str,
        fence: &Fence,
        session: &SessionKey,
    ) -> Result<bool, ClientError> {
        check_key(key)?;
        check_lock_name(&fence.lock)?;
        let key = key.as_bytes().to_vec();
        let fence = fence.to_pb();
        let called = self
            .call_tracked(Duration::ZERO, Repeat::Ambiguous, |mut client, timeout| {
                let message = pb::DeleteRequest {
                    key: key.clone(),
                    fence: Some(fence.clone()),
                    session_id: session.id.get(),
                    session_secret: session.secret_bytes(),
                };
                async move { client.delete(request(message, timeout)).await }
            })
            .await;
        // A repeat of a delete that took effect finds the key gone: that
        // "did not exist" says nothing about what this call deleted.
        if let (Ok(answer), Some(earlier_failure)) = (&called.outcome, &called.earlier_failure) {
            if !answer.existed {
                return Err(ClientError::OutcomeUnknown {
                    endpoint: self.current_endpoint(),
                    code: Code::Ok,
                    message: "the key does not exist (any more)".to_string(),
                    earlier_failure: earlier_failure.clone(),
                });
            }
        }
        // Likewise a repeat refused because the lock passed on after the
        // first attempt deleted the key.
        Ok(called.resolve(&[Code::FailedPrecondition])?.existed)
    }

    /// Whether `token` is the exclusive holder's token of `lock`
    /// (linearizable), for storage outside quorumlock that checks the
    /// tokens of writes itself.
    pub async fn check_token(&self, lock: &str, token: FencingToken) -> Result<TokenCheck, ClientError> {
        self.check_token_in(lock, token, LockMode::Exclusive).await
    }

    /// Whether `token` is current for `lock` in `mode`: for
    /// [`LockMode::Shared`], whether it is any holder's token (a read under
    /// it may be served); for [`LockMode::Exclusive`], as [`Client::check_token`].
    pub async fn check_token_in(
        &self,
        lock: &str,
        token: FencingToken,
        mode: LockMode,
    ) -> Result<TokenCheck, ClientError> {
        check_lock_name(lock)?;
        let lock = lock.as_bytes().to_vec();
        let answer = self
            .call(Duration::ZERO, |mut client, timeout| {
                let lock = lock.clone();
                async move {
                    client
                        .check_token(request(
                            pb::CheckTokenRequest {
                                lock,
                                token: token.get(),
                                mode: mode.to_pb().into(),
                            },
                            timeout,
                        ))
                        .await
                }
            })
            .await?;
        Ok(TokenCheck {
            current: answer.current,
            current_token: (answer.current_token != 0).then_some(FencingToken::new(answer.current_token)),
        })
    }

    /// `Cluster/Status` of the endpoint in use, moving on to another when it
    /// does not answer.
    pub async fn status(&self) -> Result<NodeStatus, ClientError> {
        let config = &self.inner.config;
        let started = Instant::now();
        let mut backoff = Backoff::new(config.backoff_initial, config.backoff_max);
        loop {
            let picked = self.inner.pool.current();
            match self.status_on(&picked).await {
                Err(ClientError::Rpc {
                    code: Code::Unavailable,
                    ..
                }) => {
                    self.inner.pool.failed(&picked, None);
                    let pause = backoff.next_pause();
                    if started.elapsed() + pause > config.retry_total_max {
                        return self.status_on(&picked).await;
                    }
                    tokio::time::sleep(pause).await;
                }
                outcome => return outcome,
            }
        }
    }

    /// `Cluster/Status` of one endpoint, which need not be one the client
    /// was given; no retries.
    pub async fn status_of(&self, endpoint: &str) -> Result<NodeStatus, ClientError> {
        node_status(endpoint, &self.inner.config).await
    }

    async fn status_on(&self, picked: &Picked) -> Result<NodeStatus, ClientError> {
        status_on(picked, self.inner.config.rpc_timeout).await
    }
}

/// `Cluster/Status` of one endpoint, without a [`Client`]: for probing
/// nodes that may not be up yet. No retries; `config` bounds the connection
/// and the call.
pub async fn node_status(endpoint: &str, config: &ClientConfig) -> Result<NodeStatus, ClientError> {
    check_schemes([endpoint], config.tls.is_some())?;
    let addr = parse_endpoint(endpoint)?;
    let pool = Pool::new(std::slice::from_ref(&addr), config)?;
    status_on(&pool.current(), config.rpc_timeout).await
}

async fn status_on(picked: &Picked, timeout: Duration) -> Result<NodeStatus, ClientError> {
    let mut client = ClusterClient::new(picked.channel.clone());
    let call = client.status(request(pb::StatusRequest::default(), timeout));
    match tokio::time::timeout(timeout, call).await {
        Ok(Ok(response)) => Ok(NodeStatus::from_pb(&picked.addr, response.into_inner())),
        Ok(Err(status)) => Err(ClientError::from_status(&picked.addr, &status)),
        Err(_) => Err(ClientError::Rpc {
            endpoint: picked.addr.clone(),
            code: Code::Unavailable,
            message: format!("no answer within {timeout:?}"),
            refusal: None,
        }),
    }
}

/// Checks a lock name or key against the API's limits before it is sent, so
/// that a bad argument is refused here, precisely, rather than by the
/// server or the transport.
fn check_text(what: &str, text: &str, max: usize) -> Result<(), ClientError> {
    if text.is_empty() {
        return Err(ClientError::InvalidArgument(format!("{what} is empty")));
    }
    if text.len() > max {
        return Err(ClientError::InvalidArgument(format!(
            "{what} is {} bytes, more than the {max}-byte limit",
            text.len()
        )));
    }
    Ok(())
}

fn check_lock_name(name: &str) -> Result<(), ClientError> {
    check_text("lock name", name, LOCK_NAME_BYTES_MAX)
}

/// Checks a semaphore ask against its bounds before it is sent.
fn check_permits(permits: u32, limit: u32) -> Result<(), ClientError> {
    if !(1..=SEMAPHORE_PERMITS_MAX).contains(&limit) {
        return Err(ClientError::InvalidArgument(format!(
            "a semaphore of {limit} permits is outside 1..={SEMAPHORE_PERMITS_MAX}"
        )));
    }
    if !(1..=limit).contains(&permits) {
        return Err(ClientError::InvalidArgument(format!(
            "{permits} permits asked of a semaphore of {limit}: ask 1..={limit}"
        )));
    }
    Ok(())
}

fn check_key(key: &str) -> Result<(), ClientError> {
    check_text("key", key, KEY_BYTES_MAX)
}

/// Checks a value of the fenced store against its limit before it is sent.
fn check_value(value: &[u8]) -> Result<(), ClientError> {
    if value.len() > VALUE_BYTES_MAX {
        return Err(ClientError::InvalidArgument(format!(
            "value is {} bytes, more than the {VALUE_BYTES_MAX}-byte limit",
            value.len()
        )));
    }
    Ok(())
}

/// A request carrying the client's deadline, so that the server spends no
/// longer on it than the client waits.
pub(crate) fn request<T>(message: T, timeout: Duration) -> Request<T> {
    let mut request = Request::new(message);
    request.set_timeout(timeout);
    request
}
