//! Handshakes over loopback between the acceptor and the dialer, with
//! certificates this crate issues.

use std::path::{Path, PathBuf};
use std::time::Duration;

use tonic::transport::{Endpoint, Server};
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

use super::*;

struct Pki {
    dir: tempfile::TempDir,
}

impl Pki {
    fn new() -> Pki {
        Pki {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn authority(&self, name: &str) -> Authority {
        let ca = Authority::generate(name).unwrap();
        write_pem(&self.path(&format!("{name}.pem")), &ca.cert_pem(), false).unwrap();
        ca
    }

    fn save(&self, name: &str, issued: &Issued) -> (PathBuf, PathBuf) {
        let cert = self.path(&format!("{name}.pem"));
        let key = self.path(&format!("{name}-key.pem"));
        write_pem(&cert, &issued.cert_pem, false).unwrap();
        write_pem(&key, &issued.key_pem, true).unwrap();
        (cert, key)
    }
}

fn server_files((cert, key): (PathBuf, PathBuf), ca: &Path) -> ServerTlsFiles {
    ServerTlsFiles {
        cert,
        key,
        ca: ca.to_path_buf(),
        client_certs: ClientCerts::Required,
    }
}

/// Serves the health service over `tls` on a loopback port.
async fn serve(tls: ServerTls) -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (_reporter, health) = tonic_health::server::health_reporter();
    let incoming = incoming(listener, Some(tls));
    tokio::spawn(
        Server::builder()
            .add_service(health)
            .serve_with_incoming(incoming),
    );
    addr
}

async fn check(addr: std::net::SocketAddr, dialer: &Dialer, server_name: &str) -> Result<(), tonic::Status> {
    let endpoint = Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect_timeout(Duration::from_secs(5));
    let channel = dialer.channel(&endpoint, server_name).unwrap();
    HealthClient::new(channel)
        .check(HealthCheckRequest::default())
        .await
        .map(|_| ())
}

fn client(ca: &Path, identity: Option<(PathBuf, PathBuf)>) -> Dialer {
    Dialer::tls(
        ClientTls::load(ClientTlsFiles {
            ca: ca.to_path_buf(),
            identity,
        })
        .unwrap(),
    )
}

#[tokio::test]
async fn a_client_certificate_from_the_ca_completes_mutual_tls_by_node_name_and_by_address() {
    let pki = Pki::new();
    let ca = pki.authority("ca");
    let node = pki.save(
        "node1",
        &ca.issue_node(1, &["127.0.0.1".into(), "localhost".into()])
            .unwrap(),
    );
    let alice = pki.save("alice", &ca.issue_client("alice").unwrap());
    let addr = serve(ServerTls::load(server_files(node, &pki.path("ca.pem"))).unwrap()).await;
    let dialer = client(&pki.path("ca.pem"), Some(alice));
    for name in ["quorumlock-node-1", "127.0.0.1", "localhost"] {
        check(addr, &dialer, name)
            .await
            .unwrap_or_else(|status| panic!("dialing by {name}: {status}"));
    }
}

#[tokio::test]
async fn connections_without_a_client_certificate_or_with_another_cas_are_refused() {
    let pki = Pki::new();
    let ca = pki.authority("ca");
    let other = pki.authority("other");
    let node = pki.save("node1", &ca.issue_node(1, &["127.0.0.1".into()]).unwrap());
    let stranger = pki.save("mallory", &other.issue_client("mallory").unwrap());
    let addr = serve(ServerTls::load(server_files(node, &pki.path("ca.pem"))).unwrap()).await;

    let anonymous = client(&pki.path("ca.pem"), None);
    assert!(
        check(addr, &anonymous, "127.0.0.1").await.is_err(),
        "no client certificate was accepted"
    );
    let foreign = client(&pki.path("ca.pem"), Some(stranger));
    assert!(
        check(addr, &foreign, "127.0.0.1").await.is_err(),
        "another CA's client certificate was accepted"
    );
    // And a client trusting only another CA refuses the node.
    let alice = pki.save("alice", &ca.issue_client("alice").unwrap());
    let misled = client(&pki.path("other.pem"), Some(alice));
    assert!(
        check(addr, &misled, "127.0.0.1").await.is_err(),
        "a server from an untrusted CA was accepted"
    );
}

#[tokio::test]
async fn a_dialer_refuses_a_node_that_does_not_carry_the_expected_name() {
    let pki = Pki::new();
    let ca = pki.authority("ca");
    let node = pki.save("node1", &ca.issue_node(1, &["127.0.0.1".into()]).unwrap());
    let peer = pki.save("node2", &ca.issue_node(2, &[]).unwrap());
    let addr = serve(ServerTls::load(server_files(node, &pki.path("ca.pem"))).unwrap()).await;
    let dialer = client(&pki.path("ca.pem"), Some(peer));
    assert!(check(addr, &dialer, "quorumlock-node-1").await.is_ok());
    assert!(
        check(addr, &dialer, "quorumlock-node-3").await.is_err(),
        "node 1's certificate passed as node 3's"
    );
}

#[tokio::test]
async fn a_client_certificate_cannot_serve_as_a_node() {
    let pki = Pki::new();
    let ca = pki.authority("ca");
    let impostor = pki.save("alice", &ca.issue_client("alice").unwrap());
    let addr = serve(ServerTls::load(server_files(impostor, &pki.path("ca.pem"))).unwrap()).await;
    let peer = pki.save("node2", &ca.issue_node(2, &[]).unwrap());
    let dialer = client(&pki.path("ca.pem"), Some(peer));
    assert!(
        check(addr, &dialer, "alice").await.is_err(),
        "a certificate without serverAuth was accepted as a server's"
    );
}

#[tokio::test]
async fn reload_serves_the_new_certificate_to_new_connections() {
    let pki = Pki::new();
    let ca = pki.authority("ca");
    let files = server_files(
        pki.save("node1", &ca.issue_node(1, &["127.0.0.1".into()]).unwrap()),
        &pki.path("ca.pem"),
    );
    let tls = ServerTls::load(files.clone()).unwrap();
    let before = tls.served();
    let addr = serve(tls.clone()).await;
    let alice = client(
        &pki.path("ca.pem"),
        Some(pki.save("alice", &ca.issue_client("alice").unwrap())),
    );
    check(addr, &alice, "127.0.0.1").await.unwrap();

    // A broken file is refused and the served certificate stays.
    write_pem(&files.cert, "not a certificate", false).unwrap();
    assert!(tls.reload().is_err());
    assert_eq!(tls.served(), before);

    pki.save(
        "node1",
        &ca.issue_node(1, &["127.0.0.1".into(), "node1.example".into()])
            .unwrap(),
    );
    let after = tls.reload().unwrap();
    assert_ne!(after.serial, before.serial);
    assert_eq!(tls.served(), after);
    // A fresh dialer (a new connection) sees the new certificate's names.
    let bob = client(
        &pki.path("ca.pem"),
        Some(pki.save("bob", &ca.issue_client("bob").unwrap())),
    );
    check(addr, &bob, "node1.example").await.unwrap();
}

#[test]
fn issued_certificates_carry_their_names_and_a_loaded_authority_signs_like_the_original() {
    let pki = Pki::new();
    let ca = pki.authority("ca");
    let reloaded = Authority::load(&ca.cert_pem(), &ca.key_pem()).unwrap();
    let node = reloaded
        .issue_node(7, &["10.0.0.7".into(), "db7.example".into()])
        .unwrap();
    let der = rustls_pki_types::pem::PemObject::from_pem_slice(node.cert_pem.as_bytes()).unwrap();
    let names = CertNames::parse(&rustls_pki_types::CertificateDer::into_owned(der)).unwrap();
    assert_eq!(names.nodes().collect::<Vec<_>>(), vec![7]);
    assert_eq!(
        names.dns_names,
        vec!["quorumlock-node-7".to_string(), "db7.example".to_string()]
    );
    assert_eq!(
        names.ip_addresses,
        vec!["10.0.0.7".parse::<std::net::IpAddr>().unwrap()]
    );
    assert_eq!(names.common_name.as_deref(), Some("quorumlock-node-7"));

    let client = reloaded.issue_client("billing-worker").unwrap();
    let der = rustls_pki_types::pem::PemObject::from_pem_slice(client.cert_pem.as_bytes()).unwrap();
    let names = CertNames::parse(&rustls_pki_types::CertificateDer::into_owned(der)).unwrap();
    assert_eq!(names.identity(), Some("billing-worker"));
    assert_eq!(names.nodes().count(), 0);
}

#[test]
fn client_names_that_would_pose_as_nodes_are_refused() {
    let ca = Authority::generate("ca").unwrap();
    assert!(ca.issue_client("quorumlock-node-1").is_err());
    assert!(ca.issue_client("").is_err());
}

#[test]
fn only_canonical_node_names_assert_a_node() {
    assert_eq!(node_of_name(&node_name(12)), Some(12));
    for name in [
        "quorumlock-node-",
        "quorumlock-node-01",
        "quorumlock-node-1a",
        "xquorumlock-node-1",
        "quorumlock-node-+1",
    ] {
        assert_eq!(node_of_name(name), None, "{name}");
    }
}

#[test]
fn missing_and_malformed_files_name_the_file_and_never_the_key() {
    let pki = Pki::new();
    let ca = pki.authority("ca");
    let (cert, key) = pki.save("node1", &ca.issue_node(1, &[]).unwrap());
    let missing = ServerTls::load(ServerTlsFiles {
        cert: pki.path("absent.pem"),
        key: key.clone(),
        ca: pki.path("ca.pem"),
        client_certs: ClientCerts::Required,
    })
    .err()
    .unwrap()
    .to_string();
    assert!(
        missing.contains("certificate file") && missing.contains("absent.pem"),
        "{missing}"
    );
    let key_text = std::fs::read_to_string(&key).unwrap();
    // A certificate where the key belongs.
    let wrong = ServerTls::load(ServerTlsFiles {
        cert: cert.clone(),
        key: cert.clone(),
        ca: pki.path("ca.pem"),
        client_certs: ClientCerts::Required,
    })
    .err()
    .unwrap()
    .to_string();
    assert!(wrong.contains("private key file"), "{wrong}");
    assert!(!wrong.contains(key_text.lines().nth(1).unwrap()));
}

#[tokio::test]
async fn dropping_the_incoming_stream_releases_the_listener() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let stream = incoming(listener, None);
    drop(stream);
    let mut rebound = None;
    for _ in 0..100 {
        match tokio::net::TcpListener::bind(addr).await {
            Ok(listener) => {
                rebound = Some(listener);
                break;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
    assert!(rebound.is_some(), "the listener on {addr} was never released");
}

#[tokio::test]
async fn plaintext_connections_have_nagle_disabled() {
    use tokio_stream::StreamExt;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let mut stream = incoming(listener, None);
    let _client = tokio::net::TcpStream::connect(addr).await.unwrap();
    let accepted = stream.next().await.unwrap().unwrap();
    match &accepted.io {
        server::Io::Plain(tcp) => assert!(tcp.nodelay().unwrap()),
        server::Io::Tls(_) => unreachable!("a plaintext listener"),
    }
    assert_eq!(accepted.info.remote.unwrap().ip(), addr.ip());
}

#[tokio::test]
async fn a_node_reloads_only_a_certificate_that_names_it_and_changes_both_sides_together() {
    let pki = Pki::new();
    let ca = pki.authority("ca");
    let files = server_files(
        pki.save("node1", &ca.issue_node(1, &["127.0.0.1".into()]).unwrap()),
        &pki.path("ca.pem"),
    );
    let other_node = ca.issue_node(2, &["127.0.0.1".into()]).unwrap();
    pki.save("node2", &other_node);
    let refused = NodeTls::load(
        1,
        server_files(
            (pki.path("node2.pem"), pki.path("node2-key.pem")),
            &pki.path("ca.pem"),
        ),
    )
    .err()
    .expect("node 1 must not start with node 2's certificate");
    assert!(refused.to_string().contains("quorumlock-node-1"), "{refused}");

    let tls = NodeTls::load(1, files.clone()).unwrap();
    let before = tls.server().served();
    // Node 2's certificate in node 1's files: the reload is refused and
    // neither side changes.
    pki.save("node1", &other_node);
    let error = tls.reload().unwrap_err();
    assert!(error.to_string().contains("quorumlock-node-1"), "{error}");
    assert_eq!(tls.server().served(), before);

    // The node's own new certificate is served, and the dialer presents it
    // too: a server that requires client certificates accepts it.
    pki.save("node1", &ca.issue_node(1, &["127.0.0.1".into()]).unwrap());
    let after = tls.reload().unwrap();
    assert_ne!(after.serial, before.serial);
    let addr = serve(tls.server().clone()).await;
    check(addr, &tls.dialer(), "quorumlock-node-1")
        .await
        .expect("the node's dialer is accepted with its new certificate");
}

#[tokio::test]
async fn optional_client_certificates_admit_a_client_without_one_but_not_a_foreign_one() {
    let pki = Pki::new();
    let ca = pki.authority("ca");
    let other = pki.authority("other");
    let mut files = server_files(
        pki.save("node1", &ca.issue_node(1, &["127.0.0.1".into()]).unwrap()),
        &pki.path("ca.pem"),
    );
    files.client_certs = ClientCerts::Optional;
    let addr = serve(ServerTls::load(files).unwrap()).await;
    check(addr, &client(&pki.path("ca.pem"), None), "127.0.0.1")
        .await
        .expect("no client certificate is allowed");
    let mallory = client(
        &pki.path("ca.pem"),
        Some(pki.save("mallory", &other.issue_client("mallory").unwrap())),
    );
    assert!(
        check(addr, &mallory, "127.0.0.1").await.is_err(),
        "a certificate another CA signed must still be refused"
    );
}
