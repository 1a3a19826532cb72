//! `certs`: a CA and node and client certificates for a deployment, and the
//! throwaway set `dev --tls` and `demo --tls` make for themselves.

use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::Args;
use quorumlock_tls::{write_pem, Authority, ClientCerts, ServerTlsFiles, ISSUED_VALIDITY_DAYS};

/// Flags of `certs`.
#[derive(Debug, Args)]
pub struct CertsArgs {
    /// Directory for the files; a CA already in it (ca.pem, ca-key.pem) is
    /// used, otherwise one is made.
    #[arg(long)]
    dir: PathBuf,
    /// Common name of a new CA.
    #[arg(long, default_value = "quorumlock CA")]
    ca_name: String,
    /// A node certificate, as ID=HOST[,HOST...]: the hosts (IP addresses or
    /// DNS names) clients and peers dial it by. Repeatable.
    #[arg(long = "node", value_name = "ID=HOSTS")]
    nodes: Vec<String>,
    /// A client certificate whose subject is CN=NAME. Repeatable.
    #[arg(long = "client", value_name = "NAME")]
    clients: Vec<String>,
}

/// The paths of one issued certificate and its key.
pub struct IssuedFiles {
    /// The certificate.
    pub cert: PathBuf,
    /// Its private key.
    pub key: PathBuf,
}

/// The CA in `dir`, loaded, or made and written there.
fn authority(dir: &Path, name: &str) -> anyhow::Result<(Authority, bool)> {
    let cert = dir.join("ca.pem");
    let key = dir.join("ca-key.pem");
    if cert.exists() || key.exists() {
        let cert_pem =
            std::fs::read_to_string(&cert).with_context(|| format!("reading {}", cert.display()))?;
        let key_pem = std::fs::read_to_string(&key).with_context(|| format!("reading {}", key.display()))?;
        return Ok((Authority::load(&cert_pem, &key_pem)?, false));
    }
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let ca = Authority::generate(name)?;
    write_pem(&cert, &ca.cert_pem(), false).with_context(|| format!("writing {}", cert.display()))?;
    write_pem(&key, &ca.key_pem(), true).with_context(|| format!("writing {}", key.display()))?;
    Ok((ca, true))
}

fn save(dir: &Path, stem: &str, issued: &quorumlock_tls::Issued) -> anyhow::Result<IssuedFiles> {
    let cert = dir.join(format!("{stem}.pem"));
    let key = dir.join(format!("{stem}-key.pem"));
    write_pem(&cert, &issued.cert_pem, false).with_context(|| format!("writing {}", cert.display()))?;
    write_pem(&key, &issued.key_pem, true).with_context(|| format!("writing {}", key.display()))?;
    Ok(IssuedFiles { cert, key })
}

/// Parses `ID=HOST[,HOST...]`.
fn parse_node(text: &str) -> anyhow::Result<(u64, Vec<String>)> {
    let (id, hosts) = text
        .split_once('=')
        .with_context(|| format!("--node {text:?} is not of the form ID=HOST[,HOST...]"))?;
    let id: u64 = id
        .trim()
        .parse()
        .ok()
        .filter(|id| *id > 0)
        .with_context(|| format!("--node {text:?}: the id must be a number from 1"))?;
    let hosts: Vec<String> = hosts
        .split(',')
        .map(str::trim)
        .filter(|host| !host.is_empty())
        .map(str::to_string)
        .collect();
    anyhow::ensure!(
        !hosts.is_empty(),
        "--node {text:?}: give at least one host clients dial it by"
    );
    Ok((id, hosts))
}

/// A client name that is also a safe file name.
fn check_client_name(name: &str) -> anyhow::Result<()> {
    let fine = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b'@'));
    anyhow::ensure!(
        fine,
        "--client {name:?}: use 1 to 64 of A-Z a-z 0-9 . _ - @ (it becomes the certificate's CN and a file name)"
    );
    Ok(())
}

/// Runs `certs`.
pub fn certs(args: CertsArgs) -> anyhow::Result<i32> {
    anyhow::ensure!(
        !args.nodes.is_empty() || !args.clients.is_empty(),
        "nothing to issue: give --node ID=HOSTS and/or --client NAME"
    );
    let nodes = args
        .nodes
        .iter()
        .map(|text| parse_node(text))
        .collect::<anyhow::Result<Vec<_>>>()?;
    for name in &args.clients {
        check_client_name(name)?;
    }
    let (ca, made) = authority(&args.dir, &args.ca_name)?;
    let dir = &args.dir;
    if made {
        println!(
            "made a CA: {} (its key {} must stay secret)",
            dir.join("ca.pem").display(),
            dir.join("ca-key.pem").display()
        );
    } else {
        println!("using the CA in {}", dir.join("ca.pem").display());
    }
    for (id, hosts) in &nodes {
        let files = save(dir, &format!("node-{id}"), &ca.issue_node(*id, hosts)?)?;
        println!(
            "node {id}: {} and {} (names {}, {}; valid {ISSUED_VALIDITY_DAYS} days)",
            files.cert.display(),
            files.key.display(),
            quorumlock_tls::node_name(*id),
            hosts.join(", ")
        );
        println!(
            "  serve --cert {} --key {} --ca {}",
            files.cert.display(),
            files.key.display(),
            dir.join("ca.pem").display()
        );
    }
    for name in &args.clients {
        let files = save(dir, &format!("client-{name}"), &ca.issue_client(name)?)?;
        println!(
            "client {name}: --cacert {} --cert {} --key {}",
            dir.join("ca.pem").display(),
            files.cert.display(),
            files.key.display()
        );
    }
    Ok(0)
}

/// The certificates of a local development cluster, made in `dir` on first
/// use and reused after: a CA, one certificate per node (127.0.0.1 and
/// localhost), and one client certificate, `dev-client`.
pub struct DevTls {
    /// The CA file.
    pub ca: PathBuf,
    /// Each node's files, node 1 first.
    pub nodes: Vec<ServerTlsFiles>,
    /// The client's certificate and key.
    pub client: IssuedFiles,
}

impl DevTls {
    /// Makes (or reuses) the files for nodes `1..=nodes`.
    pub fn prepare(dir: &Path, nodes: u64) -> anyhow::Result<DevTls> {
        let (ca, _) = authority(dir, "quorumlock dev CA")?;
        let hosts = ["127.0.0.1".to_string(), "localhost".to_string()];
        let existing = |stem: &str| {
            let files = IssuedFiles {
                cert: dir.join(format!("{stem}.pem")),
                key: dir.join(format!("{stem}-key.pem")),
            };
            (files.cert.exists() && files.key.exists()).then_some(files)
        };
        let mut node_files = Vec::new();
        for id in 1..=nodes {
            let stem = format!("node-{id}");
            let files = match existing(&stem) {
                Some(files) => files,
                None => save(dir, &stem, &ca.issue_node(id, &hosts)?)?,
            };
            node_files.push(ServerTlsFiles {
                cert: files.cert,
                key: files.key,
                ca: dir.join("ca.pem"),
                client_certs: ClientCerts::Required,
            });
        }
        let client = match existing("client-dev-client") {
            Some(files) => files,
            None => save(dir, "client-dev-client", &ca.issue_client("dev-client")?)?,
        };
        Ok(DevTls {
            ca: dir.join("ca.pem"),
            nodes: node_files,
            client,
        })
    }

    /// The client flags that reach the cluster.
    pub fn client_flags(&self) -> String {
        format!(
            "--cacert {} --cert {} --key {}",
            self.ca.display(),
            self.client.cert.display(),
            self.client.key.display()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_specs_and_client_names_are_checked() {
        assert_eq!(
            parse_node("2=10.0.0.2, node2").unwrap(),
            (2, vec!["10.0.0.2".into(), "node2".into()])
        );
        assert!(parse_node("0=a").is_err());
        assert!(parse_node("2=").is_err());
        assert!(parse_node("a").is_err());
        assert!(check_client_name("billing-worker@eu").is_ok());
        assert!(check_client_name("../etc/passwd").is_err());
        assert!(check_client_name("").is_err());
    }

    #[test]
    fn dev_certificates_are_made_once_and_reused() {
        let dir = tempfile::tempdir().unwrap();
        let first = DevTls::prepare(dir.path(), 3).unwrap();
        let pem = std::fs::read_to_string(&first.nodes[2].cert).unwrap();
        let again = DevTls::prepare(dir.path(), 3).unwrap();
        assert_eq!(std::fs::read_to_string(&again.nodes[2].cert).unwrap(), pem);
        assert!(again.client_flags().contains("--cacert"));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&first.client.key).unwrap().permissions().mode();
            assert_eq!(mode & 0o077, 0, "a private key is readable by others");
        }
    }
}
