//! PEM files: certificate chains, private keys, CA bundles.

use std::path::Path;

use rustls::RootCertStore;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::TlsError;

/// Every certificate in `path`, leaf first.
pub(crate) fn certificates(
    what: &'static str,
    path: &Path,
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let fail = |reason: String| TlsError::File {
        what,
        path: path.to_path_buf(),
        reason,
    };
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|error| fail(error.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| fail(error.to_string()))?;
    if certs.is_empty() {
        return Err(fail("no CERTIFICATE block in it".into()));
    }
    Ok(certs)
}

/// The private key in `path` (PKCS#8, PKCS#1 or SEC1).
pub(crate) fn private_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    // The key's bytes never reach an error message.
    PrivateKeyDer::from_pem_file(path).map_err(|error| TlsError::File {
        what: "private key",
        path: path.to_path_buf(),
        reason: match error {
            rustls_pki_types::pem::Error::NoItemsFound => "no PRIVATE KEY block in it".into(),
            rustls_pki_types::pem::Error::Io(error) => error.to_string(),
            _ => "not a PEM private key".into(),
        },
    })
}

/// The trust anchors in the CA file `path`.
pub(crate) fn roots(path: &Path) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in certificates("CA", path)? {
        roots.add(cert).map_err(|error| TlsError::File {
            what: "CA",
            path: path.to_path_buf(),
            reason: format!("not a usable CA certificate: {error}"),
        })?;
    }
    Ok(roots)
}
