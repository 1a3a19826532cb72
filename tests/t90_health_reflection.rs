//! t90: gRPC health checking and server reflection on real nodes.
//!
//! Properties checked, each through real processes and gRPC on loopback with
//! tonic-health's and tonic-reflection's generated clients:
//! - every node of a healthy cluster reports `SERVING` for the server (`""`),
//!   `quorumlock.v1.Lock` and `quorumlock.v1.Cluster`;
//! - the lock API's health follows the quorum: a node left in a minority,
//!   whether it was the leader or a follower, goes `NOT_SERVING` while
//!   `quorumlock.v1.Cluster` stays `SERVING`, and it serves again once the
//!   quorum is back;
//! - a node that receives SIGTERM tells its health watchers `NOT_SERVING`
//!   before it closes their streams;
//! - reflection lists the API and returns the file that defines
//!   `quorumlock.v1.Lock`, on both reflection protocol versions.

mod common;
mod process;

use std::time::Duration;

use common::*;
use process::{free_ports, ServerProcess};
use prost::Message;
use tonic::transport::Channel;
use tonic::Code;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::{HealthCheckRequest, HealthCheckResponse};

const SERVER: &str = "";
const LOCK: &str = "quorumlock.v1.Lock";
const CLUSTER: &str = "quorumlock.v1.Cluster";
/// Bound on a stopping node's exit after SIGTERM.
const STOP_WAIT: Duration = Duration::from_secs(30);

engine_tests!(
    check_healthy_cluster_reports_serving,
    check_minority_leader_goes_not_serving,
    check_minority_follower_goes_not_serving,
    check_reflection_lists_the_api_and_returns_its_descriptor,
);

async fn check(channel: &Channel, service: &str) -> Result<ServingStatus, tonic::Status> {
    let mut client = HealthClient::new(channel.clone());
    let response = call(
        "Health/Check",
        RPC_TIMEOUT,
        client.check(HealthCheckRequest {
            service: service.to_string(),
        }),
    )
    .await?;
    Ok(serving_status(&response))
}

fn serving_status(response: &HealthCheckResponse) -> ServingStatus {
    ServingStatus::try_from(response.status)
        .unwrap_or_else(|_| panic!("unknown serving status {}", response.status))
}

/// Polls `Health/Check(service)` on `channel` until it reports `expected`.
async fn wait_for_health(channel: &Channel, node: u64, service: &str, expected: ServingStatus) {
    wait_until(
        &format!("node {node} to report {service:?} as {expected:?}"),
        CONDITION_WAIT,
        || async {
            match check(channel, service).await {
                Ok(status) if status == expected => Ok(()),
                Ok(status) => Err(format!("it reports {status:?}")),
                Err(status) => Err(format!("Check failed: {status:?}")),
            }
        },
    )
    .await
}

async fn check_healthy_cluster_reports_serving(engine: &str) {
    let cluster = Cluster::start(engine, 3).await;
    for index in 0..cluster.len() {
        let channel = cluster.channel(index).await;
        let node = cluster.node_id(index);
        // A follower learns of the new leader a heartbeat after the election.
        for service in [SERVER, LOCK, CLUSTER] {
            wait_for_health(&channel, node, service, ServingStatus::Serving).await;
        }
        let unknown = check(&channel, "no.such.Service").await;
        expect_code("Check of an unknown service", unknown, Code::NotFound);
    }
}

async fn check_minority_leader_goes_not_serving(engine: &str) {
    let cluster = Cluster::start(engine, 3).await;
    let survivor = cluster.wait_for_leader().await;
    check_minority_goes_not_serving(&cluster, survivor).await;
}

async fn check_minority_follower_goes_not_serving(engine: &str) {
    let cluster = Cluster::start(engine, 3).await;
    let survivor = cluster.follower_index().await;
    check_minority_goes_not_serving(&cluster, survivor).await;
}

async fn check_minority_goes_not_serving(cluster: &Cluster, survivor: usize) {
    let channel = cluster.channel(survivor).await;
    let node = cluster.node_id(survivor);
    wait_for_health(&channel, node, LOCK, ServingStatus::Serving).await;

    let stopped: Vec<usize> = (0..cluster.len()).filter(|&index| index != survivor).collect();
    for &index in &stopped {
        cluster.kill(index);
    }
    wait_for_health(&channel, node, LOCK, ServingStatus::NotServing).await;
    wait_for_health(&channel, node, SERVER, ServingStatus::NotServing).await;
    // Status still answers on a minority node, so its service stays healthy.
    assert_eq!(
        check(&channel, CLUSTER)
            .await
            .expect("Check(Cluster) on the minority node"),
        ServingStatus::Serving,
        "quorumlock.v1.Cluster on a minority node"
    );

    for &index in &stopped {
        cluster.restart(index);
    }
    wait_for_health(&channel, node, LOCK, ServingStatus::Serving).await;
    wait_for_health(&channel, node, SERVER, ServingStatus::Serving).await;
}

/// A single-node cluster whose process the test can send SIGTERM.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopping_node_tells_health_watchers_not_serving_before_closing() {
    let dir = tempfile::tempdir().expect("create a temporary directory");
    let port = free_ports(1)[0];
    let addr = format!("127.0.0.1:{port}");
    let args: Vec<String> = [
        "serve",
        "--id",
        "1",
        "--listen",
        &addr,
        "--peers",
        &format!("1={addr}"),
        "--data-dir",
        &dir.path().join("node-1").display().to_string(),
        "--heartbeat-ms",
        &HEARTBEAT_MS.to_string(),
        "--election-timeout-ms",
        &ELECTION_TIMEOUT_MS.to_string(),
    ]
    .iter()
    .map(|arg| arg.to_string())
    .collect();
    let mut node = ServerProcess::spawn("node 1", &args, &dir.path().join("node-1.log"));
    let url = format!("http://{addr}");
    let channel = wait_until("node 1 to accept connections", CONDITION_WAIT, || async {
        connect(&url).await.map_err(|error| format!("{error:#}"))
    })
    .await;
    wait_for_health(&channel, 1, SERVER, ServingStatus::Serving).await;

    let mut watchers = Vec::new();
    for service in [SERVER, LOCK, CLUSTER] {
        let mut client = HealthClient::new(channel.clone());
        let request = HealthCheckRequest {
            service: service.to_string(),
        };
        let mut stream = call("Health/Watch", RPC_TIMEOUT, client.watch(request))
            .await
            .unwrap_or_else(|status| panic!("Watch({service:?}): {status:?}"));
        let first = call("the first Watch message", RPC_TIMEOUT, async {
            stream.message().await.map(tonic::Response::new)
        })
        .await
        .unwrap_or_else(|status| panic!("Watch({service:?}) failed: {status:?}"))
        .unwrap_or_else(|| panic!("Watch({service:?}) ended before its first message"));
        assert_eq!(
            serving_status(&first),
            ServingStatus::Serving,
            "Watch({service:?}) starts"
        );
        watchers.push((service, stream));
    }

    node.terminate();
    for (service, mut stream) in watchers {
        // tonic-health may repeat the status a watch started with, so read
        // until the status changes; the stream must not close before that.
        loop {
            let next = call("the Watch message after SIGTERM", STOP_WAIT, async {
                stream.message().await.map(tonic::Response::new)
            })
            .await;
            match next {
                Ok(Some(message)) if serving_status(&message) == ServingStatus::Serving => continue,
                Ok(Some(message)) => {
                    assert_eq!(
                        serving_status(&message),
                        ServingStatus::NotServing,
                        "Watch({service:?}) after SIGTERM"
                    );
                    break;
                }
                other => panic!("Watch({service:?}) closed without reporting NOT_SERVING: {other:?}"),
            }
        }
    }
    let status = node.wait_exit(STOP_WAIT);
    assert!(status.success(), "node 1 exited with {status} after SIGTERM");
}

async fn check_reflection_lists_the_api_and_returns_its_descriptor(engine: &str) {
    let cluster = Cluster::start(engine, 3).await;
    let channel = cluster.channel(cluster.follower_index().await).await;

    let services = reflection_v1::list_services(&channel).await;
    for expected in [
        LOCK,
        CLUSTER,
        "grpc.health.v1.Health",
        "grpc.reflection.v1.ServerReflection",
    ] {
        assert!(
            services.iter().any(|name| name == expected),
            "v1 reflection lists {expected}: {services:?}"
        );
    }
    let services = reflection_v1alpha::list_services(&channel).await;
    assert!(
        services.iter().any(|name| name == LOCK),
        "v1alpha reflection lists {LOCK}: {services:?}"
    );

    let files = reflection_v1::file_containing_symbol(&channel, LOCK).await;
    let lock_file = files
        .iter()
        .map(|bytes| prost_types::FileDescriptorProto::decode(bytes.as_slice()).expect("a file descriptor"))
        .find(|file| file.name() == "quorumlock/v1/lock.proto")
        .unwrap_or_else(|| panic!("no quorumlock/v1/lock.proto among {} files", files.len()));
    assert_eq!(lock_file.package(), "quorumlock.v1");
    let lock_service = lock_file
        .service
        .iter()
        .find(|service| service.name() == "Lock")
        .expect("lock.proto defines service Lock");
    let methods: Vec<&str> = lock_service.method.iter().map(|method| method.name()).collect();
    for expected in ["OpenSession", "KeepAlive", "Acquire", "Release", "Put", "Get"] {
        assert!(methods.contains(&expected), "Lock has {expected}: {methods:?}");
    }

    let files = reflection_v1alpha::file_containing_symbol(&channel, "quorumlock.v1.Lock.Acquire").await;
    assert!(
        files.iter().any(|bytes| {
            prost_types::FileDescriptorProto::decode(bytes.as_slice())
                .map(|file| file.name() == "quorumlock/v1/lock.proto")
                .unwrap_or(false)
        }),
        "v1alpha reflection returns lock.proto for a method symbol"
    );
}

/// One client per reflection protocol version; the generated types differ
/// only by module, so the same code is written for each.
macro_rules! reflection_client {
    ($module:ident, $pb:path) => {
        mod $module {
            use super::*;
            use pb::server_reflection_client::ServerReflectionClient;
            use pb::server_reflection_request::MessageRequest;
            use pb::server_reflection_response::MessageResponse;
            use pb::ServerReflectionRequest;
            use $pb as pb;

            async fn ask(channel: &Channel, request: MessageRequest) -> MessageResponse {
                let mut client = ServerReflectionClient::new(channel.clone());
                let request = ServerReflectionRequest {
                    host: String::new(),
                    message_request: Some(request),
                };
                let exchange = async {
                    let mut responses = client
                        .server_reflection_info(tokio_stream::iter([request]))
                        .await?
                        .into_inner();
                    responses.message().await
                };
                let response = match tokio::time::timeout(RPC_TIMEOUT, exchange).await {
                    Ok(Ok(Some(response))) => response,
                    Ok(Ok(None)) => panic!("reflection ended its stream without an answer"),
                    Ok(Err(status)) => panic!("reflection failed: {status:?}"),
                    Err(_) => panic!("reflection gave no answer within {RPC_TIMEOUT:?}"),
                };
                match response.message_response {
                    Some(MessageResponse::ErrorResponse(error)) => {
                        panic!("reflection answered an error: {error:?}")
                    }
                    Some(answer) => answer,
                    None => panic!("reflection answered nothing"),
                }
            }

            /// The names of the services the node advertises.
            pub async fn list_services(channel: &Channel) -> Vec<String> {
                match ask(channel, MessageRequest::ListServices(String::new())).await {
                    MessageResponse::ListServicesResponse(list) => list
                        .service
                        .into_iter()
                        .map(|service| service.name)
                        .collect(),
                    other => panic!("ListServices answered {other:?}"),
                }
            }

            /// The encoded file descriptors defining `symbol` and its imports.
            pub async fn file_containing_symbol(channel: &Channel, symbol: &str) -> Vec<Vec<u8>> {
                match ask(
                    channel,
                    MessageRequest::FileContainingSymbol(symbol.to_string()),
                )
                .await
                {
                    MessageResponse::FileDescriptorResponse(files) => files.file_descriptor_proto,
                    other => panic!("FileContainingSymbol answered {other:?}"),
                }
            }
        }
    };
}

reflection_client!(reflection_v1, tonic_reflection::pb::v1);
reflection_client!(reflection_v1alpha, tonic_reflection::pb::v1alpha);
