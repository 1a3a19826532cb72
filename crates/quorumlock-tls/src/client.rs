//! The connecting side: a reloadable client config and a tonic connector.

use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use hyper_util::rt::TokioIo;
use parking_lot::RwLock;
use rustls::{ClientConfig, RootCertStore};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;
use tonic::transport::{Channel, Endpoint, Uri};

use crate::{files, provider, TlsError, ALPN_H2};

/// The files a TLS client reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientTlsFiles {
    /// CA certificates the server's certificate must chain to.
    pub ca: PathBuf,
    /// The client's own certificate chain and private key, for servers that
    /// require client certificates (mutual TLS).
    pub identity: Option<(PathBuf, PathBuf)>,
}

/// A client TLS config read from files, re-read by [`ClientTls::reload`].
/// Clones share it; connections made after a reload use the new files,
/// established ones keep theirs.
#[derive(Clone)]
pub struct ClientTls {
    files: Arc<ClientTlsFiles>,
    config: Arc<RwLock<Arc<ClientConfig>>>,
}

impl std::fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientTls").field("files", &self.files).finish()
    }
}

impl ClientTls {
    /// Reads the files and builds the config.
    pub fn load(files: ClientTlsFiles) -> Result<ClientTls, TlsError> {
        let config = build(&files)?;
        Ok(ClientTls {
            files: Arc::new(files),
            config: Arc::new(RwLock::new(Arc::new(config))),
        })
    }

    /// Re-reads the files; on error the config in use stays.
    pub fn reload(&self) -> Result<(), TlsError> {
        let config = build(&self.files)?;
        self.install(config);
        Ok(())
    }

    /// A config over an already built one (see [`client_config`]).
    #[cfg(feature = "server")]
    pub(crate) fn from_parts(files: ClientTlsFiles, config: ClientConfig) -> ClientTls {
        ClientTls {
            files: Arc::new(files),
            config: Arc::new(RwLock::new(Arc::new(config))),
        }
    }

    /// Connects with `config` from now on.
    pub(crate) fn install(&self, config: ClientConfig) {
        *self.config.write() = Arc::new(config);
    }

    /// The files this config is read from.
    pub fn files(&self) -> &ClientTlsFiles {
        &self.files
    }

    fn current(&self) -> Arc<ClientConfig> {
        self.config.read().clone()
    }
}

fn build(files: &ClientTlsFiles) -> Result<ClientConfig, TlsError> {
    let roots = files::roots(&files.ca)?;
    let identity = match &files.identity {
        Some((cert, key)) => Some((
            files::certificates("certificate", cert)?,
            files::private_key(key)?,
        )),
        None => None,
    };
    client_config(roots, identity)
}

/// A client config trusting `roots`, presenting `identity` (a certificate
/// chain and its key) to servers that ask for one.
pub(crate) fn client_config(
    roots: RootCertStore,
    identity: Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>,
) -> Result<ClientConfig, TlsError> {
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots);
    let mut config = match identity {
        Some((chain, key)) => builder.with_client_auth_cert(chain, key)?,
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![ALPN_H2.to_vec()];
    Ok(config)
}

/// How a channel reaches a server: plaintext, or TLS with one config.
#[derive(Clone, Debug, Default)]
pub struct Dialer {
    tls: Option<ClientTls>,
}

impl Dialer {
    /// Plaintext HTTP/2.
    pub fn plaintext() -> Dialer {
        Dialer { tls: None }
    }

    /// TLS with `tls`.
    pub fn tls(tls: ClientTls) -> Dialer {
        Dialer { tls: Some(tls) }
    }

    /// The TLS config, if this dialer uses TLS.
    pub fn tls_config(&self) -> Option<&ClientTls> {
        self.tls.as_ref()
    }

    /// A lazily connecting channel for `endpoint` (an `http://host:port`
    /// endpoint with its timeouts set). With TLS, the server's certificate
    /// must name `server_name`; the endpoint's connect timeout covers the
    /// TCP connect and the handshake together.
    pub fn channel(&self, endpoint: &Endpoint, server_name: &str) -> Result<Channel, TlsError> {
        match &self.tls {
            None => Ok(endpoint.connect_lazy()),
            Some(tls) => {
                let server_name = ServerName::try_from(server_name.to_string())
                    .map_err(|_| TlsError::ServerName(server_name.to_string()))?;
                Ok(endpoint.connect_with_connector_lazy(Connector {
                    tls: tls.clone(),
                    server_name,
                }))
            }
        }
    }
}

/// Connects TCP, turns Nagle's algorithm off, and handshakes TLS.
#[derive(Clone)]
struct Connector {
    tls: ClientTls,
    server_name: ServerName<'static>,
}

impl tower_service::Service<Uri> for Connector {
    type Response = TokioIo<TlsStream<TcpStream>>;
    type Error = std::io::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let connector = TlsConnector::from(self.tls.current());
        let server_name = self.server_name.clone();
        Box::pin(async move {
            let authority = uri.authority().ok_or_else(|| {
                std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    format!("{uri} has no host:port"),
                )
            })?;
            let port = authority.port_u16().unwrap_or(443);
            // An IPv6 literal keeps its brackets in the authority.
            let host = authority.host().trim_start_matches('[').trim_end_matches(']');
            let tcp = TcpStream::connect((host, port)).await?;
            tcp.set_nodelay(true)?;
            let tls = connector.connect(server_name, tcp).await?;
            Ok(TokioIo::new(tls))
        })
    }
}
