//! etcd (3.4, Debian's `etcd-server`) as a [`LockSystem`]: a static
//! 3-member cluster on loopback ports, locks through the v3 lock API under
//! a lease, fenced writes as a transaction that first checks that the lock
//! key still exists (the lease still holds the lock).
//!
//! The gRPC stubs in etcd_pb/ were generated from etcd's own protobuf files
//! (benches/engines/proto) by tonic-build 0.12 with protox; they are checked
//! in so that building needs neither `protoc` nor a second build script.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use async_trait::async_trait;
use futures::stream::{BoxStream, StreamExt};
use quorumlock_testkit::cluster::{free_ports, NodeProcess, ProcessUsage};
use tokio::sync::oneshot;
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Status};

use super::idle::{open_each, Answer, IdleGroup, KeepAliveStream};
use super::systems::{Held, HeldInner, LockClient, LockSession, LockSystem};

// Generated code; the benchmark uses a few of etcd's calls.
#[allow(dead_code, clippy::all, clippy::pedantic, missing_docs)]
mod pb {
    pub mod mvccpb {
        include!("etcd_pb/mvccpb.rs");
    }
    pub mod authpb {
        include!("etcd_pb/authpb.rs");
    }
    pub mod etcdserverpb {
        include!("etcd_pb/etcdserverpb.rs");
    }
    pub mod v3lockpb {
        include!("etcd_pb/v3lockpb.rs");
    }
}

use pb::etcdserverpb::compare::{CompareResult, CompareTarget, TargetUnion};
use pb::etcdserverpb::kv_client::KvClient;
use pb::etcdserverpb::lease_client::LeaseClient;
use pb::etcdserverpb::maintenance_client::MaintenanceClient;
use pb::etcdserverpb::request_op::Request;
use pb::etcdserverpb::{
    Compare, LeaseGrantRequest, LeaseKeepAliveRequest, LeaseRevokeRequest, PutRequest, RequestOp,
    StatusRequest, StatusResponse, TxnRequest,
};
use pb::v3lockpb::lock_client::LockClient as EtcdLockClient;
use pb::v3lockpb::{LockRequest, UnlockRequest};

/// The etcd executable Debian's `etcd-server` installs.
pub const ETCD_EXE: &str = "/usr/bin/etcd";
/// Longest wait for the members to elect a leader.
pub const LEADER_WAIT_MAX: Duration = Duration::from_secs(60);
/// How long one call keeps retrying an unavailable cluster.
pub const RETRY_TOTAL_MAX: Duration = Duration::from_secs(30);
/// Longest wait for one attempt of a call before it is repeated on the next
/// member. Without it, a request that reached a member while there was no
/// leader waits for etcd's own request timeout (5 s plus two election
/// timeouts) before failing; a careful etcd user sets a deadline like this.
/// Repeating a Lock is safe (locking twice with one lease is one
/// acquisition), but a Lock given up while waiting loses its place: etcd
/// deletes the waiter's key. Lock attempts are therefore given up only when
/// their member has no leader (`Channels::call_waiting`).
pub const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(2);
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);
/// etcd's answer about a lease the member does not know.
const LEASE_NOT_FOUND: &str = "requested lease not found";
/// Times a Lock is repeated after that answer before it counts as failed.
const LEASE_NOT_FOUND_RETRIES_MAX: usize = 25;
const POLL_INTERVAL: Duration = Duration::from_millis(50);
const BACKOFF_INITIAL: Duration = Duration::from_millis(20);
const BACKOFF_MAX: Duration = Duration::from_millis(500);

/// Whether `/usr/bin/etcd` exists.
pub fn installed() -> bool {
    Path::new(ETCD_EXE).exists()
}

/// `etcd --version`'s first line.
pub fn version() -> String {
    super::report::command_first_line(ETCD_EXE, &["--version"])
}

/// A running etcd cluster.
pub struct EtcdSystem {
    members: Vec<NodeProcess>,
    client_addrs: Vec<String>,
    root: tempfile::TempDir,
}

impl EtcdSystem {
    /// Starts `count` members with the given timings and waits for a leader.
    pub async fn start(
        count: usize,
        heartbeat_ms: u64,
        election_timeout_ms: u64,
    ) -> anyhow::Result<EtcdSystem> {
        let root = tempfile::Builder::new()
            .prefix("quorumlock-bench-etcd-")
            .tempdir()?;
        let ports = free_ports(count * 2)?;
        let client_addrs: Vec<String> = ports[..count]
            .iter()
            .map(|port| format!("127.0.0.1:{port}"))
            .collect();
        let peer_urls: Vec<String> = ports[count..]
            .iter()
            .map(|port| format!("http://127.0.0.1:{port}"))
            .collect();
        let initial_cluster = peer_urls
            .iter()
            .enumerate()
            .map(|(index, url)| format!("m{}={url}", index + 1))
            .collect::<Vec<_>>()
            .join(",");
        let mut members = Vec::with_capacity(count);
        for index in 0..count {
            let client_url = format!("http://{}", client_addrs[index]);
            let args = vec![
                format!("--name=m{}", index + 1),
                format!(
                    "--data-dir={}",
                    root.path().join(format!("m{}", index + 1)).display()
                ),
                format!("--listen-client-urls={client_url}"),
                format!("--advertise-client-urls={client_url}"),
                format!("--listen-peer-urls={}", peer_urls[index]),
                format!("--initial-advertise-peer-urls={}", peer_urls[index]),
                format!("--initial-cluster={initial_cluster}"),
                "--initial-cluster-state=new".to_string(),
                "--initial-cluster-token=quorumlock-bench".to_string(),
                format!("--heartbeat-interval={heartbeat_ms}"),
                format!("--election-timeout={election_timeout_ms}"),
                "--logger=zap".to_string(),
                "--log-level=warn".to_string(),
            ];
            let mut member = NodeProcess::new(
                index as u64 + 1,
                client_addrs[index].clone(),
                PathBuf::from(ETCD_EXE),
                args,
                Vec::new(),
                root.path().join(format!("m{}.log", index + 1)),
            );
            member.start()?;
            members.push(member);
        }
        let mut system = EtcdSystem {
            members,
            client_addrs,
            root,
        };
        system.leader().await.context("waiting for an etcd leader")?;
        Ok(system)
    }

    async fn status_of(addr: &str) -> Result<StatusResponse, Status> {
        let channel = Endpoint::from_shared(format!("http://{addr}"))
            .map_err(|error| Status::invalid_argument(error.to_string()))?
            .connect_timeout(PROBE_TIMEOUT)
            .timeout(PROBE_TIMEOUT)
            .connect()
            .await
            .map_err(|error| Status::unavailable(error.to_string()))?;
        Ok(MaintenanceClient::new(channel)
            .status(StatusRequest {})
            .await?
            .into_inner())
    }

    /// The index of the member every running member names as leader.
    async fn agreed_leader(&mut self) -> Result<(usize, StatusResponse), String> {
        let mut leader = None;
        let mut named = Vec::new();
        for (index, member) in self.members.iter_mut().enumerate() {
            if let Ok(Some(status)) = member.reap() {
                return Err(format!(
                    "etcd member {} exited ({status}): {}",
                    index + 1,
                    member.log_tail(20)
                ));
            }
            if !member.is_running() {
                continue;
            }
            let status = Self::status_of(&self.client_addrs[index])
                .await
                .map_err(|status| status.message().to_string())?;
            named.push(status.leader);
            let own_id = status.header.as_ref().map_or(0, |header| header.member_id);
            if status.leader != 0 && status.leader == own_id {
                leader = Some((index, status));
            }
        }
        match leader {
            Some((index, status)) if named.iter().all(|&id| id == status.leader) => Ok((index, status)),
            _ => Err(format!("members name leaders {named:?}")),
        }
    }

    async fn leader_status(&mut self) -> anyhow::Result<(usize, StatusResponse)> {
        let deadline = Instant::now() + LEADER_WAIT_MAX;
        loop {
            match self.agreed_leader().await {
                Ok(found) => return Ok(found),
                Err(why) if why.contains("exited") => anyhow::bail!(why),
                Err(why) => anyhow::ensure!(
                    Instant::now() < deadline,
                    "etcd agreed on no leader within {LEADER_WAIT_MAX:?}: {why}"
                ),
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }
}

#[async_trait]
impl LockSystem for EtcdSystem {
    fn name(&self) -> String {
        "etcd".to_string()
    }

    async fn connect(&self) -> anyhow::Result<Arc<dyn LockClient>> {
        let mut channels = Vec::new();
        for addr in &self.client_addrs {
            channels.push(
                Endpoint::from_shared(format!("http://{addr}"))?
                    .connect_timeout(PROBE_TIMEOUT)
                    .tcp_nodelay(true)
                    .connect_lazy(),
            );
        }
        // Start at the leader, as quorumlock's client does after its first
        // answer: followers would forward every request to it.
        let mut first = 0;
        for (index, addr) in self.client_addrs.iter().enumerate() {
            if let Ok(status) = Self::status_of(addr).await {
                let own_id = status.header.as_ref().map_or(0, |header| header.member_id);
                if status.leader == own_id {
                    first = index;
                    break;
                }
            }
        }
        Ok(Arc::new(EtcdClient {
            inner: Arc::new(Channels {
                channels,
                current: AtomicUsize::new(first),
            }),
        }))
    }

    fn nodes(&self) -> usize {
        self.members.len()
    }

    async fn leader(&mut self) -> anyhow::Result<usize> {
        Ok(self.leader_status().await?.0)
    }

    async fn term(&mut self) -> anyhow::Result<Option<u64>> {
        Ok(Some(self.leader_status().await?.1.raft_term))
    }

    fn usage(&self, index: usize) -> Option<ProcessUsage> {
        self.members[index].usage()
    }

    fn data_dir(&self, index: usize) -> PathBuf {
        self.root.path().join(format!("m{}", index + 1))
    }

    fn replicated(&self) -> bool {
        self.members.len() > 1
    }

    fn kill(&mut self, index: usize) -> anyhow::Result<()> {
        self.members[index].kill()
    }

    fn restart(&mut self, index: usize) -> anyhow::Result<()> {
        self.members[index].start()
    }

    async fn wait_caught_up(&mut self, index: usize, limit: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + limit;
        let (_, leader) = self.leader_status().await?;
        let target = leader.raft_index;
        loop {
            if let Ok(status) = Self::status_of(&self.client_addrs[index]).await {
                if status.raft_applied_index >= target && status.leader != 0 {
                    return Ok(());
                }
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "etcd member {} did not catch up to index {target} within {limit:?}",
                index + 1
            );
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }

    async fn idle_sessions(&self, leader: usize, count: usize, ttl: Duration) -> anyhow::Result<IdleGroup> {
        let addr = &self.client_addrs[leader];
        let channel = Endpoint::from_shared(format!("http://{addr}"))?
            .tcp_nodelay(true)
            .connect()
            .await
            .with_context(|| format!("connecting to {addr}"))?;
        let stub = LeaseClient::new(channel);
        let ttl_s = i64::try_from(ttl.as_secs().max(1))?;
        let leases = open_each(count, || {
            let mut stub = stub.clone();
            async move {
                let granted = stub.lease_grant(LeaseGrantRequest { ttl: ttl_s, id: 0 }).await?;
                Ok::<_, Status>(granted.into_inner().id)
            }
        })
        .await
        .context("granting a lease")?;
        Ok(IdleGroup::start(EtcdKeepAlive { stub, leases }, ttl))
    }
}

/// etcd's `LeaseKeepAlive` for a group of idle leases, as etcd's own client
/// uses it: every lease of the connection over one stream.
struct EtcdKeepAlive {
    stub: LeaseClient<Channel>,
    leases: Vec<i64>,
}

#[async_trait]
impl KeepAliveStream for EtcdKeepAlive {
    type Request = LeaseKeepAliveRequest;

    fn sessions(&self) -> usize {
        self.leases.len()
    }

    fn id(&self, slot: usize) -> u64 {
        self.leases[slot] as u64
    }

    fn request(&self, slot: usize) -> LeaseKeepAliveRequest {
        LeaseKeepAliveRequest {
            id: self.leases[slot],
        }
    }

    async fn open(
        &self,
        requests: ReceiverStream<LeaseKeepAliveRequest>,
    ) -> Result<BoxStream<'static, Result<Answer, Status>>, Status> {
        let answers = self.stub.clone().lease_keep_alive(requests).await?.into_inner();
        Ok(answers
            .map(|answer| {
                answer.map(|renewed| match renewed.ttl {
                    ttl if ttl > 0 => Answer::Renewed(renewed.id as u64),
                    _ => Answer::Refused(renewed.id as u64),
                })
            })
            .boxed())
    }

    fn refused_by(&self, _status: &Status) -> Option<u64> {
        None
    }

    async fn close(&self, slot: usize) {
        let request = LeaseRevokeRequest {
            id: self.leases[slot],
        };
        let _ = self.stub.clone().lease_revoke(request).await;
    }
}

/// One connection per member; calls go to `current` and move on to the next
/// member when it is unavailable.
struct Channels {
    channels: Vec<Channel>,
    current: AtomicUsize,
}

fn retryable(status: &Status) -> bool {
    matches!(
        status.code(),
        Code::Unavailable | Code::Unknown | Code::Cancelled | Code::DeadlineExceeded
    )
}

impl Channels {
    /// Runs `rpc`, retrying on the next member while the cluster is
    /// unavailable, for at most [`RETRY_TOTAL_MAX`]. The Lock, Unlock, Put
    /// and keep-alive calls used here may be repeated: locking twice with
    /// the same lease is one acquisition.
    async fn call<T, F, Fut>(&self, rpc: F) -> anyhow::Result<T>
    where
        F: FnMut(Channel) -> Fut,
        Fut: std::future::Future<Output = Result<tonic::Response<T>, Status>>,
    {
        self.call_with(rpc, false).await
    }

    /// Like [`Channels::call`], for a Lock, which legitimately waits while
    /// others hold the lock: an attempt is given up after
    /// [`ATTEMPT_TIMEOUT`] only if its member then has no leader. (Giving
    /// up a waiting Lock makes etcd delete the waiter's key, sending it to
    /// the back of the queue.)
    async fn call_waiting<T, F, Fut>(&self, rpc: F) -> anyhow::Result<T>
    where
        F: FnMut(Channel) -> Fut,
        Fut: std::future::Future<Output = Result<tonic::Response<T>, Status>>,
    {
        self.call_with(rpc, true).await
    }

    async fn call_with<T, F, Fut>(&self, mut rpc: F, waits: bool) -> anyhow::Result<T>
    where
        F: FnMut(Channel) -> Fut,
        Fut: std::future::Future<Output = Result<tonic::Response<T>, Status>>,
    {
        let started = Instant::now();
        let mut pause = BACKOFF_INITIAL;
        loop {
            let index = self.current.load(Ordering::Relaxed) % self.channels.len();
            let channel = self.channels[index].clone();
            let call = rpc(channel.clone());
            tokio::pin!(call);
            let attempt = loop {
                tokio::select! {
                    answer = &mut call => break answer,
                    () = tokio::time::sleep(ATTEMPT_TIMEOUT) => {
                        if !waits || !member_has_leader(channel.clone()).await {
                            break Err(Status::deadline_exceeded("attempt timed out"));
                        }
                    }
                }
            };
            match attempt {
                Ok(response) => return Ok(response.into_inner()),
                Err(status) if retryable(&status) && started.elapsed() < RETRY_TOTAL_MAX => {
                    let _ = self.current.compare_exchange(
                        index,
                        (index + 1) % self.channels.len(),
                        Ordering::Relaxed,
                        Ordering::Relaxed,
                    );
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(BACKOFF_MAX);
                }
                Err(status) => {
                    anyhow::bail!("etcd: {:?}: {}", status.code(), status.message())
                }
            }
        }
    }
}

/// Whether the member behind `channel` knows a leader, asked within
/// [`PROBE_TIMEOUT`].
async fn member_has_leader(channel: Channel) -> bool {
    let mut client = MaintenanceClient::new(channel);
    match tokio::time::timeout(PROBE_TIMEOUT, client.status(StatusRequest {})).await {
        Ok(Ok(response)) => response.get_ref().leader != 0,
        _ => false,
    }
}

struct EtcdClient {
    inner: Arc<Channels>,
}

#[async_trait]
impl LockClient for EtcdClient {
    async fn session(&self, ttl: Duration) -> anyhow::Result<Box<dyn LockSession>> {
        let ttl_s = i64::try_from(ttl.as_secs().max(1))?;
        let granted = self
            .inner
            .call(|channel| async move {
                LeaseClient::new(channel)
                    .lease_grant(LeaseGrantRequest { ttl: ttl_s, id: 0 })
                    .await
            })
            .await?;
        let lost = Arc::new(AtomicBool::new(false));
        let (stop, stopped) = oneshot::channel();
        tokio::spawn(keep_alive(
            self.inner.clone(),
            granted.id,
            Duration::from_secs(u64::try_from(granted.ttl.max(1))?),
            lost.clone(),
            stopped,
        ));
        Ok(Box::new(EtcdSession {
            channels: self.inner.clone(),
            lease: granted.id,
            lost,
            stop: parking_lot::Mutex::new(Some(stop)),
        }))
    }
}

/// Renews lease `id` every `ttl / 3` over a keep-alive stream until told to
/// stop; marks it lost when etcd answers TTL 0 or no renewal succeeds for
/// a whole TTL.
async fn keep_alive(
    channels: Arc<Channels>,
    id: i64,
    ttl: Duration,
    lost: Arc<AtomicBool>,
    mut stopped: oneshot::Receiver<()>,
) {
    let period = ttl / 3;
    let mut renewed_at = Instant::now();
    let mut attempt = 0usize;
    'streams: loop {
        let index = (channels.current.load(Ordering::Relaxed) + attempt) % channels.channels.len();
        attempt += 1;
        let (sender, receiver) = tokio::sync::mpsc::channel(4);
        // The first renewal is queued before the call: etcd sends the
        // response headers only with its first answer, so waiting for the
        // call to open before sending anything would wait forever.
        let mut queued = sender.try_send(LeaseKeepAliveRequest { id }).is_ok();
        let stream = tokio_stream::wrappers::ReceiverStream::new(receiver);
        let mut client = LeaseClient::new(channels.channels[index].clone());
        let opened = tokio::select! {
            opened = client.lease_keep_alive(stream) => opened,
            _ = &mut stopped => return,
        };
        let mut answers = match opened {
            Ok(response) => response.into_inner(),
            Err(_) => {
                if renewed_at.elapsed() > ttl {
                    lost.store(true, Ordering::Relaxed);
                    return;
                }
                tokio::time::sleep(BACKOFF_MAX).await;
                continue 'streams;
            }
        };
        loop {
            if !std::mem::take(&mut queued) && sender.send(LeaseKeepAliveRequest { id }).await.is_err() {
                continue 'streams;
            }
            let sent_at = Instant::now();
            let answer = tokio::select! {
                answer = tokio::time::timeout(period, answers.message()) => answer,
                _ = &mut stopped => return,
            };
            match answer {
                Ok(Ok(Some(answer))) if answer.ttl > 0 => renewed_at = sent_at,
                Ok(Ok(Some(_))) => {
                    lost.store(true, Ordering::Relaxed);
                    return;
                }
                _ => {
                    if renewed_at.elapsed() > ttl {
                        lost.store(true, Ordering::Relaxed);
                        return;
                    }
                    continue 'streams;
                }
            }
            tokio::select! {
                _ = tokio::time::sleep_until(sent_at + period) => {}
                _ = &mut stopped => return,
            }
        }
    }
}

struct EtcdSession {
    channels: Arc<Channels>,
    lease: i64,
    lost: Arc<AtomicBool>,
    stop: parking_lot::Mutex<Option<oneshot::Sender<()>>>,
}

impl EtcdSession {
    fn stop_keep_alive(&self) {
        if let Some(stop) = self.stop.lock().take() {
            let _ = stop.send(());
        }
    }
}

impl Drop for EtcdSession {
    fn drop(&mut self) {
        self.stop_keep_alive();
    }
}

#[async_trait]
impl LockSession for EtcdSession {
    async fn acquire(&self, name: &str) -> anyhow::Result<Held> {
        let lease = self.lease;
        let mut unknown_lease = 0;
        let locked = loop {
            let locked = self
                .channels
                .call_waiting(|channel| {
                    let name = name.as_bytes().to_vec();
                    async move {
                        EtcdLockClient::new(channel)
                            .lock(LockRequest { name, lease })
                            .await
                    }
                })
                .await;
            match locked {
                // A member that has not applied the lease's grant yet (the
                // call moved to it after a slow attempt) does not know the
                // lease; a repeated Lock with the same lease is the same
                // acquisition.
                Err(error)
                    if error.to_string().contains(LEASE_NOT_FOUND)
                        && !self.is_lost()
                        && unknown_lease < LEASE_NOT_FOUND_RETRIES_MAX =>
                {
                    unknown_lease += 1;
                    tokio::time::sleep(BACKOFF_INITIAL).await;
                }
                other => break other?,
            }
        };
        Ok(Held {
            token: locked.header.map_or(0, |header| header.revision as u64),
            inner: HeldInner::Etcd { key: locked.key },
        })
    }

    async fn release(&self, held: Held) -> anyhow::Result<()> {
        let HeldInner::Etcd { key } = held.inner else {
            anyhow::bail!("not an etcd lock");
        };
        self.channels
            .call(|channel| {
                let key = key.clone();
                async move { EtcdLockClient::new(channel).unlock(UnlockRequest { key }).await }
            })
            .await?;
        Ok(())
    }

    async fn fenced_put(&self, held: &Held, key: &str, value: &[u8]) -> anyhow::Result<()> {
        let HeldInner::Etcd { key: lock_key } = &held.inner else {
            anyhow::bail!("not an etcd lock");
        };
        // The lock key exists (has a create revision) exactly while this
        // lease holds the lock: put only if it still does.
        let request = TxnRequest {
            compare: vec![Compare {
                result: CompareResult::Greater as i32,
                target: CompareTarget::Create as i32,
                key: lock_key.clone(),
                range_end: Vec::new(),
                target_union: Some(TargetUnion::CreateRevision(0)),
            }],
            success: vec![RequestOp {
                request: Some(Request::RequestPut(PutRequest {
                    key: key.as_bytes().to_vec(),
                    value: value.to_vec(),
                    ..PutRequest::default()
                })),
            }],
            failure: Vec::new(),
        };
        let answer = self
            .channels
            .call(|channel| {
                let request = request.clone();
                async move { KvClient::new(channel).txn(request).await }
            })
            .await?;
        anyhow::ensure!(
            answer.succeeded,
            "etcd refused a fenced put: the lock key is gone"
        );
        Ok(())
    }

    fn is_lost(&self) -> bool {
        self.lost.load(Ordering::Relaxed)
    }

    async fn close(&self) -> anyhow::Result<()> {
        self.stop_keep_alive();
        let id = self.lease;
        self.channels
            .call(|channel| async move {
                LeaseClient::new(channel)
                    .lease_revoke(LeaseRevokeRequest { id })
                    .await
            })
            .await?;
        Ok(())
    }
}
