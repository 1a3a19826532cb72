//! Issuing certificates: a CA, node certificates and client certificates.

use std::io::Write;
use std::net::IpAddr;
use std::path::Path;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose, SanType,
};

use crate::{node_name, TlsError, NODE_NAME_PREFIX};

/// How long an issued node or client certificate is valid.
pub const ISSUED_VALIDITY_DAYS: i64 = 365;
/// How long a CA is valid.
const AUTHORITY_VALIDITY_DAYS: i64 = 3_650;

/// A certificate and its private key, both PEM.
pub struct Issued {
    /// The certificate.
    pub cert_pem: String,
    /// The private key (keep it secret: written with mode 0600).
    pub key_pem: String,
}

/// A certificate authority that signs node and client certificates.
pub struct Authority {
    cert: rcgen::Certificate,
    key: KeyPair,
}

fn failed(what: &str) -> impl Fn(rcgen::Error) -> TlsError + '_ {
    move |error| TlsError::Certificate(format!("{what}: {error}"))
}

fn validity(params: &mut CertificateParams, days: i64) {
    let now = time::OffsetDateTime::now_utc();
    // An hour of slack for clocks a little behind the issuer's.
    params.not_before = now - time::Duration::hours(1);
    params.not_after = now + time::Duration::days(days);
}

impl Authority {
    /// A new CA whose subject is `CN=<name>`.
    pub fn generate(name: &str) -> Result<Authority, TlsError> {
        let mut params = CertificateParams::new(Vec::<String>::new()).map_err(failed("CA parameters"))?;
        let mut subject = DistinguishedName::new();
        subject.push(DnType::CommonName, name);
        params.distinguished_name = subject;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        validity(&mut params, AUTHORITY_VALIDITY_DAYS);
        let key = KeyPair::generate().map_err(failed("CA key"))?;
        let cert = params.self_signed(&key).map_err(failed("CA certificate"))?;
        Ok(Authority { cert, key })
    }

    /// An existing CA, from its certificate and key (PEM).
    pub fn load(cert_pem: &str, key_pem: &str) -> Result<Authority, TlsError> {
        let key = KeyPair::from_pem(key_pem).map_err(failed("CA key"))?;
        let params = CertificateParams::from_ca_cert_pem(cert_pem).map_err(failed("CA certificate"))?;
        // Signing needs only the CA's name and key; re-signing the parsed
        // parameters yields an issuer with both.
        let cert = params.self_signed(&key).map_err(failed("CA certificate"))?;
        Ok(Authority { cert, key })
    }

    /// The CA certificate, PEM; `key_pem` is its private key.
    pub fn cert_pem(&self) -> String {
        self.cert.pem()
    }

    /// The CA's private key, PEM.
    pub fn key_pem(&self) -> String {
        self.key.serialize_pem()
    }

    /// A certificate for node `id`: it names [`node_name`]`(id)` and every
    /// host in `hosts` (IP addresses or DNS names clients dial it by), and
    /// serves both as the node's server certificate and as its client
    /// certificate toward its peers.
    pub fn issue_node(&self, id: u64, hosts: &[String]) -> Result<Issued, TlsError> {
        let mut sans = vec![SanType::DnsName(
            node_name(id).try_into().map_err(failed("node name"))?,
        )];
        for host in hosts {
            sans.push(match host.parse::<IpAddr>() {
                Ok(ip) => SanType::IpAddress(ip),
                Err(_) => SanType::DnsName(host.clone().try_into().map_err(failed("host name"))?),
            });
        }
        self.issue(
            &node_name(id),
            sans,
            vec![
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ],
        )
    }

    /// A client certificate whose subject is `CN=<name>`; it can only
    /// authenticate a client, never serve or join as a node.
    pub fn issue_client(&self, name: &str) -> Result<Issued, TlsError> {
        if name.is_empty() || name.starts_with(NODE_NAME_PREFIX) {
            return Err(TlsError::Certificate(format!(
                "client name {name:?} is empty or starts with {NODE_NAME_PREFIX:?}, which names nodes"
            )));
        }
        self.issue(name, Vec::new(), vec![ExtendedKeyUsagePurpose::ClientAuth])
    }

    fn issue(
        &self,
        name: &str,
        sans: Vec<SanType>,
        usages: Vec<ExtendedKeyUsagePurpose>,
    ) -> Result<Issued, TlsError> {
        let mut params = CertificateParams::new(Vec::<String>::new()).map_err(failed("parameters"))?;
        let mut subject = DistinguishedName::new();
        subject.push(DnType::CommonName, name);
        params.distinguished_name = subject;
        params.subject_alt_names = sans;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = usages;
        params.use_authority_key_identifier_extension = true;
        let mut serial = [0u8; 16];
        rand_serial(&mut serial);
        params.serial_number = Some(rcgen::SerialNumber::from_slice(&serial));
        validity(&mut params, ISSUED_VALIDITY_DAYS);
        let key = KeyPair::generate().map_err(failed("key"))?;
        let cert = params
            .signed_by(&key, &self.cert, &self.key)
            .map_err(failed("certificate"))?;
        Ok(Issued {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }
}

/// A positive 127-bit serial from the OS's random source.
fn rand_serial(serial: &mut [u8; 16]) {
    rustls::crypto::ring::default_provider()
        .secure_random
        .fill(serial)
        .expect("the OS random source works");
    serial[0] &= 0x7f;
    serial[0] |= 0x01;
}

/// Writes `contents` to `path`; a `secret` file (a private key) is created
/// readable by its owner only.
pub fn write_pem(path: &Path, contents: &str, secret: bool) -> std::io::Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(if secret { 0o600 } else { 0o644 });
    }
    let mut file = options.open(path)?;
    file.write_all(contents.as_bytes())?;
    file.sync_all()
}
