//! The names in a certificate: who a peer is.

use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::{node_of_name, TlsError};

/// What a verified certificate says about its holder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertNames {
    /// The subject, as `CN=..., O=...`.
    pub subject: String,
    /// The subject's common name, if it has one.
    pub common_name: Option<String>,
    /// The DNS names of its subject alternative names.
    pub dns_names: Vec<String>,
    /// The IP addresses of its subject alternative names.
    pub ip_addresses: Vec<std::net::IpAddr>,
    /// The serial number, colon-separated hex.
    pub serial: String,
    /// The end of its validity, RFC 2822.
    pub not_after: String,
}

impl CertNames {
    /// Parses a DER certificate.
    pub fn parse(der: &[u8]) -> Result<CertNames, TlsError> {
        let (_, cert) = X509Certificate::from_der(der)
            .map_err(|error| TlsError::Certificate(format!("unparsable: {error}")))?;
        let mut dns_names = Vec::new();
        let mut ip_addresses = Vec::new();
        if let Ok(Some(names)) = cert.subject_alternative_name() {
            for name in &names.value.general_names {
                match name {
                    GeneralName::DNSName(name) => dns_names.push(name.to_string()),
                    GeneralName::IPAddress(bytes) => {
                        if let Ok(octets) = <[u8; 4]>::try_from(*bytes) {
                            ip_addresses.push(std::net::IpAddr::from(octets));
                        } else if let Ok(octets) = <[u8; 16]>::try_from(*bytes) {
                            ip_addresses.push(std::net::IpAddr::from(octets));
                        }
                    }
                    _ => {}
                }
            }
        }
        let common_name = cert
            .subject()
            .iter_common_name()
            .next()
            .and_then(|name| name.as_str().ok())
            .map(str::to_string);
        Ok(CertNames {
            subject: cert.subject().to_string(),
            common_name,
            dns_names,
            ip_addresses,
            serial: cert.raw_serial_as_string(),
            not_after: cert.validity().not_after.to_string(),
        })
    }

    /// The node ids its DNS names assert (see [`crate::node_name`]).
    pub fn nodes(&self) -> impl Iterator<Item = u64> + '_ {
        self.dns_names.iter().filter_map(|name| node_of_name(name))
    }

    /// The identity a client with this certificate acts as: its common
    /// name, or else its first DNS name.
    pub fn identity(&self) -> Option<&str> {
        self.common_name
            .as_deref()
            .or(self.dns_names.first().map(String::as_str))
    }
}
