//! An in-memory peer network for openraft nodes in one runtime, with
//! seeded faults.
//!
//! Every RPC waits a drawn delay, may be lost on the way there or back
//! (the caller then sees a network error, as after a reset connection), may
//! be delivered twice (the copy's answer is discarded), and fails as
//! unreachable across a partition or to a crashed node. Delays are tokio
//! sleeps, so with the runtime's clock paused they cost no real time.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use openraft::error::{InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::BasicNode;
use parking_lot::Mutex;
use quorumlock_simkit::{LinkFaults, Partition};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use quorumlock_core::consensus::NodeId;
use quorumlock_raft::types::{Raft, TypeConfig};

/// Fault settings of the network, in the shared fault model's terms
/// (delays in milliseconds); the run changes them as it goes.
#[derive(Debug, Clone)]
pub struct NetworkFaults {
    /// Loss, duplication and delay on every link.
    pub links: LinkFaults,
    /// The partition in force, if any.
    pub partition: Option<Partition>,
}

struct HubState {
    nodes: BTreeMap<NodeId, Raft>,
    faults: NetworkFaults,
    rng: StdRng,
    delivered: u64,
}

/// The nodes that are up and the faults between them.
#[derive(Clone)]
pub struct Hub {
    state: Arc<Mutex<HubState>>,
}

impl Hub {
    /// A network with no nodes and no faults.
    pub fn new(seed: u64) -> Hub {
        Hub {
            state: Arc::new(Mutex::new(HubState {
                nodes: BTreeMap::new(),
                faults: NetworkFaults {
                    links: LinkFaults {
                        drop: 0.0,
                        duplicate: 0.0,
                        delay_max: 1,
                    },
                    partition: None,
                },
                rng: StdRng::seed_from_u64(seed),
                delivered: 0,
            })),
        }
    }

    /// A node is up and takes messages.
    pub fn attach(&self, id: NodeId, raft: Raft) {
        self.state.lock().nodes.insert(id, raft);
    }

    /// A node crashed: messages to it fail from now on.
    pub fn detach(&self, id: NodeId) {
        self.state.lock().nodes.remove(&id);
    }

    /// Replaces the fault settings.
    pub fn set_faults(&self, faults: NetworkFaults) {
        self.state.lock().faults = faults;
    }

    /// RPCs delivered so far.
    pub fn delivered(&self) -> u64 {
        self.state.lock().delivered
    }

    /// The factory node `from` hands openraft.
    pub fn factory(&self, from: NodeId) -> SimNetwork {
        SimNetwork {
            from,
            hub: self.clone(),
        }
    }

    fn partitioned(faults: &NetworkFaults, from: NodeId, to: NodeId) -> bool {
        faults
            .partition
            .as_ref()
            .is_some_and(|partition| partition.separates(from.get(), to.get()))
    }

    /// Draws one leg of a message: its delay, and whether it arrives.
    fn leg(&self, from: NodeId, to: NodeId) -> (Duration, bool) {
        let mut state = self.state.lock();
        let HubState { faults, rng, .. } = &mut *state;
        let delay = Duration::from_millis(rng.gen_range(1..=faults.links.delay_max.max(1)));
        let arrives = !Self::partitioned(faults, from, to) && !rng.gen_bool(faults.links.drop);
        (delay, arrives)
    }

    fn duplicate(&self) -> bool {
        let mut state = self.state.lock();
        let chance = state.faults.links.duplicate;
        state.rng.gen_bool(chance)
    }

    fn target(&self, to: NodeId) -> Option<Raft> {
        let mut state = self.state.lock();
        state.delivered += 1;
        state.nodes.get(&to).cloned()
    }
}

/// openraft's network factory for one node.
#[derive(Clone)]
pub struct SimNetwork {
    from: NodeId,
    hub: Hub,
}

impl RaftNetworkFactory<TypeConfig> for SimNetwork {
    type Network = SimConnection;

    async fn new_client(&mut self, target: NodeId, _node: &BasicNode) -> SimConnection {
        SimConnection {
            from: self.from,
            target,
            hub: self.hub.clone(),
        }
    }
}

/// openraft's connection from one node to another.
#[derive(Clone)]
pub struct SimConnection {
    from: NodeId,
    target: NodeId,
    hub: Hub,
}

fn lost<E: std::error::Error>(what: &str) -> RPCError<NodeId, BasicNode, E> {
    RPCError::Network(NetworkError::new(&std::io::Error::new(
        std::io::ErrorKind::ConnectionReset,
        what.to_string(),
    )))
}

fn unreachable<E: std::error::Error>(target: NodeId) -> RPCError<NodeId, BasicNode, E> {
    RPCError::Unreachable(Unreachable::new(&std::io::Error::new(
        std::io::ErrorKind::ConnectionRefused,
        format!("node {target} is down"),
    )))
}

impl SimConnection {
    /// Carries one request to the target's `handle` and its answer back,
    /// with the drawn delays, losses and duplicates, within openraft's TTL.
    async fn call<Req, Resp, E, F, Fut>(
        &self,
        request: Req,
        option: &RPCOption,
        handle: F,
    ) -> Result<Resp, RPCError<NodeId, BasicNode, RaftError<NodeId, E>>>
    where
        Req: Clone + Send + 'static,
        Resp: Send + 'static,
        E: std::error::Error + Send + 'static,
        F: Fn(Raft, Req) -> Fut + Send + Sync + Clone + 'static,
        Fut: Future<Output = Result<Resp, RaftError<NodeId, E>>> + Send + 'static,
    {
        let (from, target, hub) = (self.from, self.target, self.hub.clone());
        if hub.duplicate() {
            // The copy travels on its own; whatever it causes is real, its
            // answer is lost.
            let (hub, request, handle) = (hub.clone(), request.clone(), handle.clone());
            tokio::spawn(async move {
                let (delay, arrives) = hub.leg(from, target);
                tokio::time::sleep(delay * 2).await;
                if let (true, Some(raft)) = (arrives, hub.target(target)) {
                    let _ = handle(raft, request).await;
                }
            });
        }
        let exchange = async move {
            let (delay, arrives) = hub.leg(from, target);
            tokio::time::sleep(delay).await;
            if !arrives {
                return Err(lost("request lost"));
            }
            let Some(raft) = hub.target(target) else {
                return Err(unreachable(target));
            };
            let answer = handle(raft, request).await;
            let (delay, arrives) = hub.leg(target, from);
            tokio::time::sleep(delay).await;
            if !arrives {
                return Err(lost("answer lost"));
            }
            answer.map_err(|error| RPCError::RemoteError(RemoteError::new(target, error)))
        };
        match tokio::time::timeout(option.hard_ttl(), exchange).await {
            Ok(result) => result,
            Err(_) => Err(lost("timed out")),
        }
    }
}

impl RaftNetwork<TypeConfig> for SimConnection {
    async fn append_entries(
        &mut self,
        request: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        self.call(request, &option, |raft: Raft, request| async move {
            raft.append_entries(request).await
        })
        .await
    }

    async fn install_snapshot(
        &mut self,
        request: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<NodeId>,
        RPCError<NodeId, BasicNode, RaftError<NodeId, InstallSnapshotError>>,
    > {
        self.call(request, &option, |raft: Raft, request| async move {
            raft.install_snapshot(request).await
        })
        .await
    }

    async fn vote(
        &mut self,
        request: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        self.call(request, &option, |raft: Raft, request| async move {
            raft.vote(request).await
        })
        .await
    }
}
