//! The metrics listener (`serve --metrics-listen`): `/metrics` for
//! Prometheus, `/health` for load balancers, the status page at `/` and
//! its data at [`STATUS_PATH`]. Over TLS when the node serves TLS, with the
//! node's certificate and client-certificate rule; with access control on,
//! `/metrics` and [`STATUS_PATH`] need an identity with the admin role
//! (bearer token or client certificate). `/health` and the page itself
//! (static, no data) are open.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Extension, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use futures::StreamExt;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use serde::Serialize;
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};
use tokio::task::{JoinHandle, JoinSet};
use tonic::metadata::MetadataMap;
use tonic::transport::server::Connected;

use super::{Metrics, Point, RecentEvent, Series};
use crate::auth::{Access, Action};
use quorumlock_core::consensus::ConsensusEngine;
use quorumlock_proto::v1 as pb;
use quorumlock_proto::v1::cluster_client::ClusterClient;
use quorumlock_tls::{node_name, ConnInfo, Dialer, ServerTls};

/// Where the status page reads its data.
pub const STATUS_PATH: &str = "/api/status";

/// Connections the listener serves at once; more wait to be accepted.
pub const METRICS_CONNECTIONS_MAX: usize = 64;

/// How long the status data waits for each peer's own figures.
pub const PEER_STATUS_TIMEOUT: Duration = Duration::from_millis(500);

/// The page, built into the binary: no external fonts, scripts or styles.
const STATUS_PAGE: &str = include_str!("status.html");

/// The OpenMetrics text format, which Prometheus negotiates.
const OPENMETRICS_CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Who may read what the listener serves, and how peers are reached.
#[derive(Clone)]
pub struct HttpAccess {
    /// The node's access control.
    pub access: Arc<Access>,
    /// Dials peers for their own status.
    pub dialer: Dialer,
    /// Whether the lock API can be served, as the gRPC health service says.
    pub serving: watch::Receiver<bool>,
}

#[derive(Clone)]
struct App {
    metrics: Arc<Metrics>,
    engine: Arc<dyn ConsensusEngine>,
    series: Arc<Series>,
    http: HttpAccess,
}

/// A running metrics listener.
pub struct MetricsServer {
    addr: SocketAddr,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl MetricsServer {
    /// The address it is bound to.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops accepting and closes every connection.
    pub async fn stop(self) {
        self.stop.send_replace(true);
        let _ = self.task.await;
    }
}

/// Serves the listener on `listener` (over `tls` when given) until stopped.
pub fn serve(
    listener: TcpListener,
    tls: Option<ServerTls>,
    metrics: Arc<Metrics>,
    engine: Arc<dyn ConsensusEngine>,
    http: HttpAccess,
) -> std::io::Result<MetricsServer> {
    let addr = listener.local_addr()?;
    let app = App {
        series: metrics.series.clone(),
        metrics,
        engine,
        http,
    };
    let router = Router::new()
        .route("/", get(page))
        .route("/metrics", get(scrape))
        .route("/health", get(health))
        .route(STATUS_PATH, get(status))
        .with_state(app);
    let (stop, mut stopped) = watch::channel(false);
    let task = tokio::spawn(async move {
        let mut incoming = quorumlock_tls::incoming(listener, tls);
        let slots = Arc::new(Semaphore::new(METRICS_CONNECTIONS_MAX));
        let mut connections = JoinSet::new();
        loop {
            let Ok(slot) = slots.clone().acquire_owned().await else {
                return;
            };
            let connection = tokio::select! {
                _ = stopped.wait_for(|stopped| *stopped) => break,
                connection = incoming.next() => connection,
            };
            let connection = match connection {
                Some(Ok(connection)) => connection,
                Some(Err(error)) => {
                    tracing::debug!(%error, "metrics listener: a connection failed before it was served");
                    continue;
                }
                None => break,
            };
            let info = connection.connect_info();
            let service = TowerToHyperService::new(router.clone().layer(Extension(info)));
            connections.spawn(async move {
                let _slot = slot;
                let _ = auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(connection), service)
                    .await;
            });
            while connections.try_join_next().is_some() {}
        }
        connections.shutdown().await;
    });
    Ok(MetricsServer { addr, stop, task })
}

/// A refusal: 401 (no identity, or one not listed) or 403 (not an admin),
/// naming what was refused and why.
fn refused(code: StatusCode, what: &str, why: &str) -> Response {
    let mut response = (code, format!("{what} refused: {why}\n")).into_response();
    if code == StatusCode::UNAUTHORIZED {
        response.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer realm=\"quorumlock\""),
        );
    }
    response
}

impl App {
    /// Lets the call through if access control is off or the caller has
    /// the admin role.
    fn authorize(&self, headers: &HeaderMap, info: &ConnInfo, what: &'static str) -> Result<(), Response> {
        let access = &self.http.access;
        if access.summary().is_none() {
            return Ok(());
        }
        let metadata = MetadataMap::from_headers(headers.clone());
        let caller = access
            .caller_of(&metadata, Some(info))
            .map_err(|status| refused(StatusCode::UNAUTHORIZED, what, status.message()))?;
        access
            .allow(&caller, Action::Admin(what))
            .map_err(|status| refused(StatusCode::FORBIDDEN, what, status.message()))
    }
}

async fn page() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        STATUS_PAGE,
    )
}

async fn scrape(
    State(app): State<App>,
    Extension(info): Extension<ConnInfo>,
    headers: HeaderMap,
) -> Response {
    if let Err(refusal) = app.authorize(&headers, &info, "metrics") {
        return refusal;
    }
    let text = app.metrics.encode(app.engine.as_ref());
    ([(header::CONTENT_TYPE, OPENMETRICS_CONTENT_TYPE)], text).into_response()
}

#[derive(Serialize)]
struct HealthJson {
    /// `"true"` or `"false"`, as etcd's `/health` answers.
    health: &'static str,
    reason: String,
}

async fn health(State(app): State<App>) -> Response {
    let serving = *app.http.serving.borrow();
    let (code, reason) = match (serving, app.engine.removed()) {
        (_, Some(why)) => (StatusCode::SERVICE_UNAVAILABLE, why),
        (true, None) => (StatusCode::OK, String::new()),
        (false, None) => (
            StatusCode::SERVICE_UNAVAILABLE,
            "the lock API is NOT_SERVING: no leader known, or this leader is cut off from its quorum, \
             or the node is stopping"
                .to_string(),
        ),
    };
    let health = match code {
        StatusCode::OK => "true",
        _ => "false",
    };
    (code, Json(HealthJson { health, reason })).into_response()
}

/// One member as the status page shows it.
#[derive(Debug, Serialize)]
struct MemberJson {
    id: u64,
    addr: String,
    voter: bool,
    /// `leader`, `follower` or `learner`, as the member itself says; `null`
    /// when it did not answer.
    role: Option<&'static str>,
    term: Option<u64>,
    commit_index: Option<u64>,
    applied_index: Option<u64>,
    /// On the leader: the last index the member's log matches.
    matched_index: Option<u64>,
    /// Entries the member's applied index is behind this node's commit index.
    lag: Option<u64>,
    /// Why the member's own figures are missing.
    error: Option<String>,
}

#[derive(Debug, Serialize)]
struct QueueJson {
    lock: String,
    /// `exclusive` or `shared`.
    mode: &'static str,
    /// How many sessions hold it (more than one only when shared).
    holders: usize,
    /// The holder (in shared mode, the one of the oldest grant) and its token.
    holder_session: Option<u64>,
    token: Option<u64>,
    depth: usize,
    /// The longest wait among its waiters, in seconds, as this replica timed it.
    longest_wait_s: Option<f64>,
}

#[derive(Debug, Serialize)]
struct StatusJson {
    node: u64,
    engine: &'static str,
    health: bool,
    term: u64,
    leader: Option<u64>,
    is_leader: bool,
    commit_index: u64,
    applied_index: u64,
    members: Vec<MemberJson>,
    sessions: usize,
    locks_held: usize,
    waiters: usize,
    totals: TotalsJson,
    queues: Vec<QueueJson>,
    events: Vec<RecentEvent>,
    series: Vec<Point>,
    sample_every_s: f64,
}

#[derive(Debug, Serialize)]
struct TotalsJson {
    sessions_opened: u64,
    sessions_expired: u64,
    grants: u64,
    locks_lost: u64,
    fenced_writes: u64,
    fence_refused: u64,
}

/// Asks member `id` at `addr` for its own status.
async fn peer_status(dialer: &Dialer, id: u64, addr: &str) -> Result<pb::StatusResponse, String> {
    let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .map_err(|error| format!("bad address {addr:?}: {error}"))?
        .connect_timeout(PEER_STATUS_TIMEOUT)
        .timeout(PEER_STATUS_TIMEOUT);
    let channel = dialer
        .channel(&endpoint, &node_name(id))
        .map_err(|error| error.to_string())?;
    let mut client = ClusterClient::new(channel);
    let call = client.status(pb::StatusRequest::default());
    match tokio::time::timeout(PEER_STATUS_TIMEOUT, call).await {
        Ok(Ok(response)) => Ok(response.into_inner()),
        Ok(Err(status)) => Err(format!("{:?}: {}", status.code(), status.message())),
        Err(_) => Err(format!("no answer within {PEER_STATUS_TIMEOUT:?}")),
    }
}

fn role_of(is_leader: bool, voter: bool) -> &'static str {
    match (is_leader, voter) {
        (true, _) => "leader",
        (false, true) => "follower",
        (false, false) => "learner",
    }
}

async fn status(
    State(app): State<App>,
    Extension(info): Extension<ConnInfo>,
    headers: HeaderMap,
) -> Response {
    if let Err(refusal) = app.authorize(&headers, &info, "status page") {
        return refusal;
    }
    let super::Refreshed {
        status: own,
        totals,
        queues,
        sessions,
    } = app.metrics.refresh(app.engine.as_ref());
    let members = app.engine.members();
    let peers = futures::future::join_all(members.iter().map(|member| {
        let dialer = app.http.dialer.clone();
        let own_id = own.node_id;
        let (id, addr) = (member.id, member.addr.clone());
        async move {
            match id == own_id {
                true => (id, None),
                false => (id, Some(peer_status(&dialer, id.get(), &addr).await)),
            }
        }
    }))
    .await;
    let peers: BTreeMap<_, _> = peers.into_iter().collect();
    let members = members
        .into_iter()
        .map(|member| {
            let (role, term, commit_index, applied_index, error) = match peers.get(&member.id) {
                Some(Some(Ok(peer))) => (
                    Some(role_of(peer.is_leader, member.voter)),
                    Some(peer.term),
                    Some(peer.commit_index),
                    Some(peer.applied_index),
                    None,
                ),
                Some(Some(Err(error))) => (None, None, None, None, Some(error.clone())),
                _ => (
                    Some(role_of(own.leadership.is_self, member.voter)),
                    Some(own.leadership.term),
                    Some(own.commit_index),
                    Some(own.applied_index),
                    None,
                ),
            };
            MemberJson {
                id: member.id.get(),
                addr: member.addr,
                voter: member.voter,
                role,
                term,
                commit_index,
                applied_index,
                matched_index: member.matched_index,
                lag: applied_index.map(|applied| own.commit_index.saturating_sub(applied)),
                error,
            }
        })
        .collect();
    let longest = app
        .metrics
        .locks
        .longest_waits(queues.deepest.iter().map(|queue| queue.lock.as_str()));
    let body = StatusJson {
        node: own.node_id.get(),
        engine: own.engine.as_str(),
        health: *app.http.serving.borrow(),
        term: own.leadership.term,
        leader: own.leadership.leader.as_ref().map(|leader| leader.id.get()),
        is_leader: own.leadership.is_self,
        commit_index: own.commit_index,
        applied_index: own.applied_index,
        members,
        sessions,
        locks_held: queues.held,
        waiters: queues.waiters,
        totals: TotalsJson {
            sessions_opened: totals.sessions_opened,
            sessions_expired: totals.sessions_expired,
            grants: totals.grants,
            locks_lost: totals.locks_lost,
            fenced_writes: totals.fenced_writes,
            fence_refused: app.metrics.locks.fence_refused(),
        },
        queues: queues
            .deepest
            .into_iter()
            .map(|queue| QueueJson {
                longest_wait_s: longest.get(&queue.lock).map(Duration::as_secs_f64),
                mode: queue.mode.as_str(),
                holders: queue.holders,
                holder_session: queue.holder.map(|(session, _)| session.get()),
                token: queue.holder.map(|(_, token)| token.get()),
                depth: queue.depth,
                lock: queue.lock,
            })
            .collect(),
        events: app.metrics.recent.list(),
        series: app.series.points(),
        sample_every_s: super::SAMPLE_EVERY.as_secs_f64(),
    };
    ([(header::CACHE_CONTROL, "no-store")], Json(body)).into_response()
}
