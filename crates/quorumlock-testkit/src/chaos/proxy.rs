//! A fault-injecting TCP proxy in front of every node, which tells the
//! nodes that dial it apart.
//!
//! Each node has one proxy, and the proxy's address is the one every member
//! knows the node by: it is in every node's `--peers` (itself included) and
//! in the `member add` of a node that joins later, so the membership the
//! engines replicate names proxies only. A change of membership hands the
//! same addresses to every member, which is why the proxy sits in front of
//! the destination rather than on each directed link: a link proxy per pair
//! would need a different address for the same node in each member's view,
//! and a replicated configuration has one.
//!
//! When a connection comes in, the proxy finds which node process dialed it
//! (from `/proc`: the socket behind the connection's source port, then the
//! process holding that socket, then that process's `--listen` address), so
//! a partition can cut exactly the directed pairs it names. A cut pair's
//! open connections close at once and new ones close as soon as they are
//! accepted, so the dialing node sees the peer as unreachable; a partition
//! between two nodes cuts both directions. Connections from anything that is
//! not a node (the workers, the runner's own probes and membership calls, a
//! leader hint followed by a client) are never cut.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use parking_lot::RwLock;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Longest wait for the proxy's connection to the node behind it.
pub const UPSTREAM_CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// Pause after a failed accept (out of file descriptors, say), so that the
/// accept loop does not spin.
const ACCEPT_RETRY_PAUSE: Duration = Duration::from_millis(10);

/// Says which node, by index, dialed a connection: given the nodes' own
/// listen addresses by index, the connection's source (the dialer's end)
/// and the proxy's end. `None` for anything that is not a node.
pub type SourceOf = Arc<dyn Fn(&[String], SocketAddr, SocketAddr) -> Option<usize> + Send + Sync>;

struct Shared {
    // The node behind each proxy, by index; empty until it is known.
    upstreams: RwLock<Vec<String>>,
    // Directed pairs (from, to) that are cut.
    cut: RwLock<BTreeSet<(usize, usize)>>,
    // Bumped at every cut: each connection's task watches it and drops both
    // sockets when its own pair is cut.
    cuts: watch::Sender<u64>,
    source_of: SourceOf,
}

impl Shared {
    fn is_cut(&self, from: Option<usize>, to: usize) -> bool {
        from.is_some_and(|from| self.cut.read().contains(&(from, to)))
    }
}

/// The proxies in front of every node of a run, by node index.
pub struct Network {
    shared: Arc<Shared>,
    addrs: Vec<String>,
    accept_tasks: Vec<JoinHandle<()>>,
}

impl Network {
    /// Starts a proxy for each of `addrs`, forwarding to it.
    pub async fn start(addrs: &[String]) -> anyhow::Result<Network> {
        let network = Network::bind(addrs.len()).await?;
        network.set_addrs(addrs);
        Ok(network)
    }

    /// Starts the proxies of `nodes` nodes before their addresses are known,
    /// so that ports picked for the nodes afterwards cannot collide with the
    /// proxies' ports; [`Network::set_addrs`] and [`Network::set_upstream`]
    /// give the addresses. Dialers are told apart through `/proc`.
    pub async fn bind(nodes: usize) -> anyhow::Result<Network> {
        Network::bind_with(nodes, Arc::new(source_from_proc)).await
    }

    /// [`Network::bind`] with another way of telling dialers apart.
    pub async fn bind_with(nodes: usize, source_of: SourceOf) -> anyhow::Result<Network> {
        let (cuts, _) = watch::channel(0);
        let shared = Arc::new(Shared {
            upstreams: RwLock::new(vec![String::new(); nodes]),
            cut: RwLock::new(BTreeSet::new()),
            cuts,
            source_of,
        });
        let mut addrs = Vec::with_capacity(nodes);
        let mut accept_tasks = Vec::with_capacity(nodes);
        for to in 0..nodes {
            let listener = TcpListener::bind("127.0.0.1:0")
                .await
                .context("binding a node's proxy")?;
            addrs.push(listener.local_addr()?.to_string());
            accept_tasks.push(tokio::spawn(accept_loop(listener, to, shared.clone())));
        }
        Ok(Network {
            shared,
            addrs,
            accept_tasks,
        })
    }

    /// The nodes' own addresses, by index, from the first.
    pub fn set_addrs(&self, addrs: &[String]) {
        for (index, addr) in addrs.iter().enumerate() {
            self.set_upstream(index, addr);
        }
    }

    /// Node `index`'s own listen address.
    pub fn set_upstream(&self, index: usize, addr: &str) {
        let mut upstreams = self.shared.upstreams.write();
        assert!(index < upstreams.len(), "node index {index} has no proxy");
        upstreams[index] = addr.to_string();
    }

    /// Number of proxies (nodes that are or may become part of the run).
    pub fn len(&self) -> usize {
        self.addrs.len()
    }

    /// Whether there are no proxies.
    pub fn is_empty(&self) -> bool {
        self.addrs.is_empty()
    }

    /// The address of node `index`'s proxy: the one every member and client
    /// dials, and the one its membership entry names.
    pub fn addr(&self, index: usize) -> &str {
        &self.addrs[index]
    }

    /// Every proxy's address, by node index.
    pub fn addrs(&self) -> &[String] {
        &self.addrs
    }

    /// Cuts both directions between `a` and `b`.
    pub fn partition(&self, a: usize, b: usize) {
        {
            let mut cut = self.shared.cut.write();
            cut.insert((a, b));
            cut.insert((b, a));
        }
        self.shared.cuts.send_modify(|cuts| *cuts += 1);
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
        self.shared.cut.write().clear();
    }

    /// Number of directed links cut now.
    pub fn cut_links(&self) -> usize {
        self.shared.cut.read().len()
    }
}

impl Drop for Network {
    fn drop(&mut self) {
        for task in &self.accept_tasks {
            task.abort();
        }
        // Ends the connection tasks too.
        self.shared.cut.write().clear();
        self.shared.cuts.send_modify(|cuts| *cuts = u64::MAX);
    }
}

async fn accept_loop(listener: TcpListener, to: usize, shared: Arc<Shared>) {
    loop {
        let (inbound, source) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(_) => {
                tokio::time::sleep(ACCEPT_RETRY_PAUSE).await;
                continue;
            }
        };
        tokio::spawn(carry(inbound, source, to, shared.clone()));
    }
}

async fn carry(mut inbound: TcpStream, source: SocketAddr, to: usize, shared: Arc<Shared>) {
    // Subscribed before the check, so that a cut made while the connection
    // is being set up is not missed.
    let mut cuts = shared.cuts.subscribe();
    let Ok(local) = inbound.local_addr() else {
        return;
    };
    let identify = shared.clone();
    let from = tokio::task::spawn_blocking(move || {
        let upstreams = identify.upstreams.read().clone();
        (identify.source_of)(&upstreams, source, local)
    })
    .await
    .ok()
    .flatten();
    // Dropping the socket closes it: the dialer sees the connection fail,
    // as it would with no route.
    if shared.is_cut(from, to) {
        return;
    }
    let upstream = shared.upstreams.read()[to].clone();
    if upstream.is_empty() {
        return;
    }
    let connected = tokio::time::timeout(UPSTREAM_CONNECT_TIMEOUT, TcpStream::connect(&upstream)).await;
    let Ok(Ok(mut outbound)) = connected else {
        return;
    };
    let _ = inbound.set_nodelay(true);
    let _ = outbound.set_nodelay(true);
    let cut = async {
        loop {
            if cuts.changed().await.is_err() || *cuts.borrow() == u64::MAX || shared.is_cut(from, to) {
                return;
            }
        }
    };
    tokio::select! {
        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
        _ = cut => {}
    }
}

/// Finds the node behind a connection through `/proc`: the socket whose
/// local port is the connection's source port and whose remote port is the
/// proxy's, then the node process (a `serve` whose `--listen` is one of
/// `upstreams`) that holds it.
pub fn source_from_proc(upstreams: &[String], source: SocketAddr, local: SocketAddr) -> Option<usize> {
    let inode = socket_inode(source.port(), local.port())?;
    let entries = std::fs::read_dir("/proc").ok()?;
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|name| name.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        let Some(listen) = listen_addr_of(&cmdline) else {
            continue;
        };
        let Some(index) = upstreams.iter().position(|addr| *addr == listen) else {
            continue;
        };
        if holds_socket(pid, inode) {
            return Some(index);
        }
    }
    None
}

/// The inode of the TCP socket from `local_port` to `remote_port` on this
/// host, from `/proc/net/tcp` and `/proc/net/tcp6`.
pub fn socket_inode(local_port: u16, remote_port: u16) -> Option<u64> {
    let port_of = |field: &str| {
        field
            .rsplit_once(':')
            .and_then(|(_, port)| u16::from_str_radix(port, 16).ok())
    };
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let [_, local, remote, _, _, _, _, _, _, inode, ..] = fields.as_slice() else {
                continue;
            };
            if port_of(local) == Some(local_port) && port_of(remote) == Some(remote_port) {
                if let Ok(inode) = inode.parse::<u64>() {
                    if inode != 0 {
                        return Some(inode);
                    }
                }
            }
        }
    }
    None
}

/// Whether process `pid` has the socket `inode` open.
pub fn holds_socket(pid: u32, inode: u64) -> bool {
    let wanted = format!("socket:[{inode}]");
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return false;
    };
    fds.flatten().any(|fd| {
        std::fs::read_link(fd.path())
            .map(|target| target.as_os_str() == wanted.as_str())
            .unwrap_or(false)
    })
}

/// The `--listen` address of a `serve` command line as `/proc/<pid>/cmdline`
/// holds it (arguments separated by NUL bytes).
pub fn listen_addr_of(cmdline: &[u8]) -> Option<String> {
    let args: Vec<&[u8]> = cmdline.split(|&byte| byte == 0).collect();
    if !args.iter().any(|arg| *arg == b"serve") {
        return None;
    }
    let at = args.iter().position(|arg| *arg == b"--listen")?;
    args.get(at + 1)
        .map(|addr| String::from_utf8_lossy(addr).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpSocket;

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

    /// Dialers told apart by the source port each test connection binds.
    #[derive(Clone, Default)]
    struct Ports(Arc<parking_lot::Mutex<BTreeMap<u16, usize>>>);

    impl Ports {
        fn source_of(&self) -> SourceOf {
            let ports = self.0.clone();
            Arc::new(move |_: &[String], source: SocketAddr, _: SocketAddr| {
                ports.lock().get(&source.port()).copied()
            })
        }

        /// Connects to `to` as node `from` (`None`: as a client).
        async fn dial(&self, from: Option<usize>, to: &str) -> TcpStream {
            let socket = TcpSocket::new_v4().unwrap();
            socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
            if let Some(from) = from {
                self.0.lock().insert(socket.local_addr().unwrap().port(), from);
            }
            socket.connect(to.parse().unwrap()).await.unwrap()
        }
    }

    async fn network_of(nodes: usize, ports: &Ports) -> Network {
        let network = Network::bind_with(nodes, ports.source_of()).await.unwrap();
        let mut addrs = Vec::new();
        for _ in 0..nodes {
            addrs.push(echo_server().await);
        }
        network.set_addrs(&addrs);
        network
    }

    #[tokio::test]
    async fn a_partition_cuts_open_connections_and_refuses_new_ones_until_healed() {
        let ports = Ports::default();
        let network = network_of(2, &ports).await;
        let mut open = ports.dial(Some(0), network.addr(1)).await;
        assert_eq!(
            round_trip(&mut open).await.unwrap(),
            b"ping",
            "a healthy link passes"
        );

        network.partition(0, 1);
        let mut buffer = [0u8; 4];
        let read = tokio::time::timeout(Duration::from_secs(5), open.read(&mut buffer))
            .await
            .expect("the cut connection is closed, not left hanging");
        assert!(matches!(read, Ok(0) | Err(_)), "the open connection was cut");
        let mut fresh = ports.dial(Some(0), network.addr(1)).await;
        assert!(
            round_trip(&mut fresh).await.is_err(),
            "a new connection carries nothing"
        );

        network.heal();
        let mut healed = ports.dial(Some(0), network.addr(1)).await;
        assert_eq!(
            round_trip(&mut healed).await.unwrap(),
            b"ping",
            "a healed link passes again"
        );
    }

    #[tokio::test]
    async fn a_partition_between_two_nodes_cuts_both_directions_only() {
        let ports = Ports::default();
        let network = network_of(3, &ports).await;
        network.partition(0, 1);
        assert_eq!(network.cut_links(), 2);
        for (from, to, cut) in [(0, 1, true), (1, 0, true), (0, 2, false), (2, 1, false)] {
            let mut stream = ports.dial(Some(from), network.addr(to)).await;
            assert_eq!(round_trip(&mut stream).await.is_err(), cut, "link {from} -> {to}");
        }
        let mut client = ports.dial(None, network.addr(1)).await;
        assert_eq!(
            round_trip(&mut client).await.unwrap(),
            b"ping",
            "a client is never cut"
        );
        network.heal();
        assert_eq!(network.cut_links(), 0);
    }

    #[tokio::test]
    async fn a_proxy_with_no_node_behind_it_closes_what_it_accepts() {
        let ports = Ports::default();
        let network = Network::bind_with(1, ports.source_of()).await.unwrap();
        let mut stream = ports.dial(None, network.addr(0)).await;
        assert!(round_trip(&mut stream).await.is_err());
    }

    #[tokio::test]
    async fn the_process_holding_a_connection_is_found_in_proc() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let dialed = TcpStream::connect(listener.local_addr().unwrap()).await.unwrap();
        let (_accepted, source) = listener.accept().await.unwrap();
        let local = listener.local_addr().unwrap();
        assert_eq!(source.port(), dialed.local_addr().unwrap().port());
        let inode = tokio::task::spawn_blocking(move || socket_inode(source.port(), local.port()))
            .await
            .unwrap()
            .expect("the dialer's socket is in /proc/net/tcp");
        assert!(holds_socket(std::process::id(), inode), "this process holds it");
        // Reversed ports name the accepting socket, another inode.
        assert_ne!(socket_inode(local.port(), source.port()), Some(inode));
    }

    #[test]
    fn the_listen_address_is_read_from_a_serve_command_line_only() {
        let cmdline = |args: &[&str]| args.join("\0").into_bytes();
        let serve = cmdline(&[
            "/bin/quorumlock",
            "serve",
            "--id",
            "4",
            "--listen",
            "127.0.0.1:7004",
            "--join",
            "x",
        ]);
        assert_eq!(listen_addr_of(&serve).as_deref(), Some("127.0.0.1:7004"));
        let worker = cmdline(&["/bin/quorumlock", "chaos-worker", "--listen", "a"]);
        assert_eq!(listen_addr_of(&worker), None);
        let no_listen = cmdline(&["/bin/quorumlock", "serve", "--id", "1"]);
        assert_eq!(listen_addr_of(&no_listen), None);
    }
}
