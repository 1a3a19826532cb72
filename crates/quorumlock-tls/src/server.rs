//! The accepting side: a reloadable server config and the stream of
//! accepted, handshaken connections a node's gRPC server reads.

use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use parking_lot::RwLock;
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, Semaphore};
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::server::Connected;

use crate::{files, provider, CertNames, TlsError, ALPN_H2, ALPN_HTTP1};

/// Longest a client may take from its TCP connect to the end of its TLS
/// handshake before the socket is closed.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Handshakes in progress at once; further accepted sockets wait for one to
/// finish, so a flood of idle connections cannot exhaust memory.
pub const HANDSHAKES_IN_FLIGHT_MAX: usize = 256;

/// Handshaken connections waiting for the server to pick them up.
const READY_CONNECTIONS_MAX: usize = 64;

/// The files a TLS server reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerTlsFiles {
    /// The node's certificate chain, leaf first.
    pub cert: PathBuf,
    /// The node's private key.
    pub key: PathBuf,
    /// CA certificates every client's certificate must chain to.
    pub ca: PathBuf,
    /// Whether every connection must present a client certificate.
    pub client_certs: ClientCerts,
}

/// Whether a TLS server requires client certificates.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum ClientCerts {
    /// Every connection presents a certificate the CA signed (mutual TLS).
    #[default]
    Required,
    /// A connection may present none; one it presents must verify. Meant
    /// for clients that prove who they are with bearer tokens instead:
    /// members still need their certificates for the peer protocol.
    Optional,
}

/// A server TLS config read from files, re-read by [`ServerTls::reload`].
/// Handshakes after a reload use the new files; established connections
/// keep theirs.
#[derive(Clone)]
pub struct ServerTls {
    files: Arc<ServerTlsFiles>,
    config: Arc<RwLock<(Arc<ServerConfig>, CertNames)>>,
}

impl ServerTls {
    /// Reads the files and builds the config.
    pub fn load(files: ServerTlsFiles) -> Result<ServerTls, TlsError> {
        let built = build(&files)?;
        Ok(ServerTls {
            files: Arc::new(files),
            config: Arc::new(RwLock::new(built)),
        })
    }

    /// Re-reads the files and returns the names of the certificate now
    /// served; on error the config in use stays.
    pub fn reload(&self) -> Result<CertNames, TlsError> {
        let built = build(&self.files)?;
        let names = built.1.clone();
        self.install(built);
        Ok(names)
    }

    /// A config over already built parts (see [`server_config`]).
    pub(crate) fn from_parts(files: ServerTlsFiles, built: (Arc<ServerConfig>, CertNames)) -> ServerTls {
        ServerTls {
            files: Arc::new(files),
            config: Arc::new(RwLock::new(built)),
        }
    }

    /// Serves `built` to handshakes from now on.
    pub(crate) fn install(&self, built: (Arc<ServerConfig>, CertNames)) {
        *self.config.write() = built;
    }

    /// The certificate served now.
    pub fn served(&self) -> CertNames {
        self.config.read().1.clone()
    }

    /// The files this config is read from.
    pub fn files(&self) -> &ServerTlsFiles {
        &self.files
    }

    fn acceptor(&self) -> TlsAcceptor {
        TlsAcceptor::from(self.config.read().0.clone())
    }
}

fn build(files: &ServerTlsFiles) -> Result<(Arc<ServerConfig>, CertNames), TlsError> {
    let chain = files::certificates("certificate", &files.cert)?;
    let key = files::private_key(&files.key)?;
    let roots = files::roots(&files.ca)?;
    server_config(chain, key, roots, files.client_certs)
}

/// A server config serving `chain` with `key`, verifying client
/// certificates against `roots`; and the names of the certificate served.
pub(crate) fn server_config(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    roots: RootCertStore,
    client_certs: ClientCerts,
) -> Result<(Arc<ServerConfig>, CertNames), TlsError> {
    let names = CertNames::parse(&chain[0])?;
    let builder = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider());
    let builder = match client_certs {
        ClientCerts::Required => builder,
        ClientCerts::Optional => builder.allow_unauthenticated(),
    };
    let verifier = builder
        .build()
        .map_err(|error| TlsError::Config(format!("client verifier: {error}")))?;
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)?;
    // gRPC clients negotiate h2; HTTP/1.1 is offered for the metrics
    // listener's scrapers and browsers, which share this configuration.
    config.alpn_protocols = vec![ALPN_H2.to_vec(), ALPN_HTTP1.to_vec()];
    Ok((Arc::new(config), names))
}

/// Who is on the other end of an accepted connection.
#[derive(Debug, Clone)]
pub struct ConnInfo {
    /// The remote address.
    pub remote: Option<SocketAddr>,
    /// The names in the client certificate it presented, verified against
    /// the CA; `None` on a plaintext listener.
    pub peer: Option<Arc<CertNames>>,
}

/// An accepted connection, plaintext or TLS.
pub struct Connection {
    pub(crate) io: Io,
    pub(crate) info: ConnInfo,
}

pub(crate) enum Io {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl Connected for Connection {
    type ConnectInfo = ConnInfo;

    fn connect_info(&self) -> ConnInfo {
        self.info.clone()
    }
}

macro_rules! delegate {
    ($self:ident, $io:ident => $call:expr) => {
        match &mut $self.get_mut().io {
            Io::Plain($io) => $call,
            Io::Tls($io) => $call,
        }
    };
}

impl AsyncRead for Connection {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        delegate!(self, io => Pin::new(io).poll_read(cx, buf))
    }
}

impl AsyncWrite for Connection {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        delegate!(self, io => Pin::new(io).poll_write(cx, buf))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        delegate!(self, io => Pin::new(io).poll_write_vectored(cx, bufs))
    }

    fn is_write_vectored(&self) -> bool {
        match &self.io {
            Io::Plain(io) => io.is_write_vectored(),
            Io::Tls(io) => io.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        delegate!(self, io => Pin::new(io).poll_flush(cx))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        delegate!(self, io => Pin::new(io).poll_shutdown(cx))
    }
}

/// The connections `listener` accepts, with Nagle's algorithm off (a small
/// response written while an earlier one is unacknowledged would otherwise
/// wait for the peer's delayed ACK), handshaken with `tls` when given.
///
/// A handshake that fails or takes longer than [`HANDSHAKE_TIMEOUT`] closes
/// its socket and is logged with the remote address and the reason; at most
/// [`HANDSHAKES_IN_FLIGHT_MAX`] run at once. Accepting stops when the
/// stream is dropped, which releases the listener.
pub fn incoming(listener: TcpListener, tls: Option<ServerTls>) -> ReceiverStream<io::Result<Connection>> {
    let (ready, stream) = mpsc::channel(READY_CONNECTIONS_MAX);
    tokio::spawn(accept_loop(listener, tls, ready));
    ReceiverStream::new(stream)
}

async fn accept_loop(
    listener: TcpListener,
    tls: Option<ServerTls>,
    ready: mpsc::Sender<io::Result<Connection>>,
) {
    let handshakes = Arc::new(Semaphore::new(HANDSHAKES_IN_FLIGHT_MAX));
    loop {
        let accepted = tokio::select! {
            _ = ready.closed() => return,
            accepted = listener.accept() => accepted,
        };
        let (tcp, remote) = match accepted {
            Ok(accepted) => accepted,
            Err(error) => {
                // Out of file descriptors and the like: back off instead of spinning.
                tracing::warn!(%error, "accepting a connection failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        if let Err(error) = tcp.set_nodelay(true) {
            tracing::debug!(%remote, %error, "could not disable Nagle's algorithm");
        }
        let Some(tls) = &tls else {
            let connection = Connection {
                io: Io::Plain(tcp),
                info: ConnInfo {
                    remote: Some(remote),
                    peer: None,
                },
            };
            if ready.send(Ok(connection)).await.is_err() {
                return;
            }
            continue;
        };
        let permit = tokio::select! {
            _ = ready.closed() => return,
            permit = handshakes.clone().acquire_owned() => permit.expect("the semaphore is never closed"),
        };
        let acceptor = tls.acceptor();
        let ready = ready.clone();
        tokio::spawn(async move {
            let _permit = permit;
            match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Err(_) => {
                    tracing::info!(%remote, timeout = ?HANDSHAKE_TIMEOUT, "TLS handshake refused: not finished in time");
                }
                Ok(Err(error)) => tracing::info!(%remote, %error, "TLS handshake refused"),
                Ok(Ok(stream)) => {
                    let peer = stream
                        .get_ref()
                        .1
                        .peer_certificates()
                        .and_then(|chain| chain.first())
                        .and_then(|leaf| CertNames::parse(leaf).ok())
                        .map(Arc::new);
                    let connection = Connection {
                        io: Io::Tls(Box::new(stream)),
                        info: ConnInfo {
                            remote: Some(remote),
                            peer,
                        },
                    };
                    let _ = ready.send(Ok(connection)).await;
                }
            }
        });
    }
}
