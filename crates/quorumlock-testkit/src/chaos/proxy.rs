//! A fault-injecting TCP proxy on every directed peer link.
//!
//! Node `a` reaches node `b` through its own proxy for the link `a → b`
//! (see `ClusterSpec::route`), so the runner can cut exactly the links it
//! wants. A partitioned link closes every connection it carries at once and
//! closes every new one as soon as it is accepted, so the dialing node sees
//! the peer as unreachable; a partition between two nodes cuts both
//! directions. Clients talk to the nodes directly.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Longest wait for the proxy's connection to the node behind it.
pub const UPSTREAM_CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

struct LinkState {
    partitioned: AtomicBool,
    // Bumped at every cut: each connection's task watches it and drops both
    // sockets when it changes.
    cuts: watch::Sender<u64>,
}

/// The proxy of one directed link.
pub struct LinkProxy {
    addr: String,
    state: Arc<LinkState>,
    accept_task: JoinHandle<()>,
}

impl LinkProxy {
    /// Listens on a free port of 127.0.0.1 and forwards to `upstream`.
    pub async fn start(upstream: String) -> anyhow::Result<LinkProxy> {
        LinkProxy::start_shared(Arc::new(parking_lot::RwLock::new(upstream))).await
    }

    /// Like [`LinkProxy::start`], with an upstream that may be set later
    /// (read at every new connection).
    pub async fn start_shared(upstream: Arc<parking_lot::RwLock<String>>) -> anyhow::Result<LinkProxy> {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .context("binding a link proxy")?;
        let addr = listener.local_addr()?.to_string();
        let (cuts, _) = watch::channel(0);
        let state = Arc::new(LinkState {
            partitioned: AtomicBool::new(false),
            cuts,
        });
        let accept_state = state.clone();
        let accept_task = tokio::spawn(async move {
            loop {
                let Ok((inbound, _)) = listener.accept().await else {
                    continue;
                };
                if accept_state.partitioned.load(Ordering::SeqCst) {
                    // Dropping the socket closes it: the dialer sees the
                    // connection fail, as it would with no route.
                    drop(inbound);
                    continue;
                }
                let cut = accept_state.cuts.subscribe();
                let upstream = upstream.read().clone();
                tokio::spawn(carry(inbound, upstream, cut));
            }
        });
        Ok(LinkProxy {
            addr,
            state,
            accept_task,
        })
    }

    /// The address to dial instead of the node.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// Cuts the link (closing what it carries) or heals it.
    pub fn set_partitioned(&self, partitioned: bool) {
        self.state.partitioned.store(partitioned, Ordering::SeqCst);
        if partitioned {
            self.state.cuts.send_modify(|cuts| *cuts += 1);
        }
    }

    /// Whether the link is cut.
    pub fn is_partitioned(&self) -> bool {
        self.state.partitioned.load(Ordering::SeqCst)
    }
}

impl Drop for LinkProxy {
    fn drop(&mut self) {
        self.accept_task.abort();
        // Ends the connection tasks too.
        self.state.cuts.send_modify(|cuts| *cuts += 1);
    }
}

async fn carry(mut inbound: TcpStream, upstream: String, mut cut: watch::Receiver<u64>) {
    let connected = tokio::time::timeout(UPSTREAM_CONNECT_TIMEOUT, TcpStream::connect(&upstream)).await;
    let Ok(Ok(mut outbound)) = connected else {
        return;
    };
    let _ = inbound.set_nodelay(true);
    let _ = outbound.set_nodelay(true);
    tokio::select! {
        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
        _ = cut.changed() => {}
    }
}

/// The proxies of every directed link of a cluster, by node index.
pub struct Network {
    links: BTreeMap<(usize, usize), LinkProxy>,
    addrs: Vec<Arc<parking_lot::RwLock<String>>>,
}

impl Network {
    /// Starts a proxy for every ordered pair of distinct nodes, forwarding to
    /// `addrs[to]`.
    pub async fn start(addrs: &[String]) -> anyhow::Result<Network> {
        let network = Network::bind(addrs.len()).await?;
        network.set_addrs(addrs);
        Ok(network)
    }

    /// Starts the proxies of `nodes` nodes before their addresses are known,
    /// so that ports picked for the nodes afterwards cannot collide with the
    /// proxies' ports; [`Network::set_addrs`] gives the addresses.
    pub async fn bind(nodes: usize) -> anyhow::Result<Network> {
        let addrs: Vec<_> = (0..nodes)
            .map(|_| Arc::new(parking_lot::RwLock::new(String::new())))
            .collect();
        let mut links = BTreeMap::new();
        for from in 0..nodes {
            for (to, addr) in addrs.iter().enumerate() {
                if from != to {
                    links.insert((from, to), LinkProxy::start_shared(addr.clone()).await?);
                }
            }
        }
        Ok(Network { links, addrs })
    }

    /// The nodes' own addresses, by index.
    pub fn set_addrs(&self, addrs: &[String]) {
        for (slot, addr) in self.addrs.iter().zip(addrs) {
            *slot.write() = addr.clone();
        }
    }

    /// The address node `from` dials to reach node `to`.
    pub fn route(&self, from: usize, to: usize) -> Option<String> {
        self.links.get(&(from, to)).map(|link| link.addr().to_string())
    }

    /// Cuts both directions between `a` and `b`.
    pub fn partition(&self, a: usize, b: usize) {
        for key in [(a, b), (b, a)] {
            if let Some(link) = self.links.get(&key) {
                link.set_partitioned(true);
            }
        }
    }

    /// Cuts every link between the two groups.
    pub fn split(&self, left: &[usize], right: &[usize]) {
        for &a in left {
            for &b in right {
                self.partition(a, b);
            }
        }
    }

    /// Heals every link.
    pub fn heal(&self) {
        for link in self.links.values() {
            link.set_partitioned(false);
        }
    }

    /// Number of links cut now.
    pub fn cut_links(&self) -> usize {
        self.links.values().filter(|link| link.is_partitioned()).count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn echo_server() -> String {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let (mut reader, mut writer) = socket.split();
                    let _ = tokio::io::copy(&mut reader, &mut writer).await;
                });
            }
        });
        addr
    }

    async fn round_trip(stream: &mut TcpStream) -> std::io::Result<Vec<u8>> {
        stream.write_all(b"ping").await?;
        let mut buffer = [0u8; 4];
        tokio::time::timeout(Duration::from_secs(5), stream.read_exact(&mut buffer))
            .await
            .map_err(|_| std::io::Error::other("no answer"))??;
        Ok(buffer.to_vec())
    }

    #[tokio::test]
    async fn a_partition_cuts_open_connections_and_refuses_new_ones_until_healed() {
        let upstream = echo_server().await;
        let proxy = LinkProxy::start(upstream).await.unwrap();
        let mut open = TcpStream::connect(proxy.addr()).await.unwrap();
        assert_eq!(
            round_trip(&mut open).await.unwrap(),
            b"ping",
            "a healthy link passes"
        );

        proxy.set_partitioned(true);
        let mut buffer = [0u8; 4];
        let read = tokio::time::timeout(Duration::from_secs(5), open.read(&mut buffer))
            .await
            .expect("the cut connection is closed, not left hanging");
        assert!(matches!(read, Ok(0) | Err(_)), "the open connection was cut");
        let mut fresh = TcpStream::connect(proxy.addr()).await.unwrap();
        assert!(
            round_trip(&mut fresh).await.is_err(),
            "a new connection carries nothing"
        );

        proxy.set_partitioned(false);
        let mut healed = TcpStream::connect(proxy.addr()).await.unwrap();
        assert_eq!(
            round_trip(&mut healed).await.unwrap(),
            b"ping",
            "a healed link passes again"
        );
    }

    #[tokio::test]
    async fn a_partition_between_two_nodes_cuts_both_directions_only() {
        let addrs = vec![echo_server().await, echo_server().await, echo_server().await];
        let network = Network::start(&addrs).await.unwrap();
        network.partition(0, 1);
        assert_eq!(network.cut_links(), 2);
        for (from, to, cut) in [(0, 1, true), (1, 0, true), (0, 2, false), (2, 1, false)] {
            let mut stream = TcpStream::connect(network.route(from, to).unwrap())
                .await
                .unwrap();
            assert_eq!(round_trip(&mut stream).await.is_err(), cut, "link {from} -> {to}");
        }
        network.heal();
        assert_eq!(network.cut_links(), 0);
    }
}
