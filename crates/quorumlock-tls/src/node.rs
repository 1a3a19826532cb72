//! A node's TLS: the listener's config and the client config its peer and
//! forwarding channels use, both from the same files and replaced together.

use crate::client::client_config;
use crate::server::server_config;
use crate::{
    files, node_name, CertNames, ClientTls, ClientTlsFiles, Dialer, ServerTls, ServerTlsFiles, TlsError,
};

/// The TLS of node `id`: its certificate serves its listener and is its
/// client certificate towards its peers. [`NodeTls::reload`] builds both
/// configs from one reading of the files and checks them before it
/// replaces either, so a node never serves one certificate and dials with
/// another, and a certificate that does not name the node is never served.
#[derive(Clone)]
pub struct NodeTls {
    id: u64,
    server: ServerTls,
    client: ClientTls,
}

/// The two configs built from one reading of the files.
struct Built {
    server: (std::sync::Arc<rustls::ServerConfig>, CertNames),
    client: rustls::ClientConfig,
}

impl NodeTls {
    /// Reads the files of node `id`.
    pub fn load(id: u64, files: ServerTlsFiles) -> Result<NodeTls, TlsError> {
        let built = build(id, &files)?;
        let client_files = ClientTlsFiles {
            ca: files.ca.clone(),
            identity: Some((files.cert.clone(), files.key.clone())),
        };
        Ok(NodeTls {
            id,
            server: ServerTls::from_parts(files, built.server),
            client: ClientTls::from_parts(client_files, built.client),
        })
    }

    /// Re-reads the files and, if they make a valid pair of configs whose
    /// certificate names this node, serves and dials with them from now on;
    /// returns the certificate now served. On error nothing changes.
    pub fn reload(&self) -> Result<CertNames, TlsError> {
        let built = build(self.id, self.server.files())?;
        let names = built.server.1.clone();
        self.server.install(built.server);
        self.client.install(built.client);
        Ok(names)
    }

    /// The listener's config.
    pub fn server(&self) -> &ServerTls {
        &self.server
    }

    /// A dialer presenting this node's certificate.
    pub fn dialer(&self) -> Dialer {
        Dialer::tls(self.client.clone())
    }
}

fn build(id: u64, files: &ServerTlsFiles) -> Result<Built, TlsError> {
    let chain = files::certificates("certificate", &files.cert)?;
    let key = files::private_key(&files.key)?;
    let roots = files::roots(&files.ca)?;
    let client = client_config(roots.clone(), Some((chain.clone(), key.clone_key())))?;
    let server = server_config(chain, key, roots, files.client_certs)?;
    let name = node_name(id);
    if !server.1.dns_names.contains(&name) {
        return Err(TlsError::Certificate(format!(
            "{} ({}) does not carry this node's name {name:?}, so its peers would refuse it \
             (`quorumlock certs --node {id}=HOSTS` issues one that does)",
            files.cert.display(),
            server.1.subject
        )));
    }
    Ok(Built { server, client })
}
