//! Calls served by the node's gRPC server, by method and status code.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use parking_lot::RwLock;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};
use tower_layer::Layer;
use tower_service::Service;

use quorumlock_core::consensus::telemetry::latency_buckets;

/// Services whose methods are labelled by name; any other path counts as
/// `unknown`, so a caller cannot create series at will.
const KNOWN_SERVICES: &[&str] = &[
    "quorumlock.v1.Lock/",
    "quorumlock.v1.Cluster/",
    "quorumlock.raft.v1.RaftPeer/",
    "quorumlock.paxos.v1.PaxosPeer/",
    "grpc.health.v1.Health/",
    "grpc.reflection.v1.ServerReflection/",
    "grpc.reflection.v1alpha.ServerReflection/",
];

/// Longest method label kept; longer names count as `unknown`.
const METHOD_LABEL_BYTES_MAX: usize = 96;

/// Most method names kept as labels; beyond it, `unknown`. Only methods a
/// service answered (not UNIMPLEMENTED) are kept, so this is never reached
/// by the services of one version.
const METHODS_KEPT_MAX: usize = 256;

/// The labels of a call.
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CallLabels {
    /// `service/Method`, e.g. `quorumlock.v1.Lock/Acquire`.
    pub method: &'static str,
    /// The gRPC status code's name, e.g. `OK`, `NotFound`.
    pub code: &'static str,
}

/// A request's method, as far as it is known when the call arrives.
enum Method {
    /// Labelled before.
    Kept(&'static str),
    /// A well-formed name of a known service, not labelled yet.
    New(String),
    /// Anything else.
    Unknown,
}

/// Counts and times of the calls served.
#[derive(Debug)]
pub struct GrpcMetrics {
    requests: Family<CallLabels, Counter>,
    duration: Family<CallLabels, Histogram>,
    /// Method names kept as labels (each allocated once, for the process's life).
    methods: RwLock<HashSet<&'static str>>,
    /// The series of each label set, so a call costs two lookups and no
    /// allocation.
    series: RwLock<HashMap<CallLabels, (Counter, Histogram)>>,
}

impl Default for GrpcMetrics {
    fn default() -> Self {
        GrpcMetrics {
            requests: Family::default(),
            duration: Family::new_with_constructor(|| Histogram::new(latency_buckets())),
            methods: RwLock::default(),
            series: RwLock::default(),
        }
    }
}

impl GrpcMetrics {
    /// Registers the call figures.
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "grpc_requests",
            "gRPC calls this node answered (API, forwarded and peer calls), by method and status code; \
             the code is the one the response began with",
            self.requests.clone(),
        );
        registry.register_with_unit(
            "grpc_request_duration",
            "Time from a gRPC call's arrival to the start of its response (a waiting Acquire includes \
             its wait; a stream counts until its first message)",
            Unit::Seconds,
            self.duration.clone(),
        );
    }

    fn method(&self, path: &str) -> Method {
        let name = path.strip_prefix('/').unwrap_or(path);
        if let Some(kept) = self.methods.read().get(name) {
            return Method::Kept(kept);
        }
        match well_formed(name) {
            true => Method::New(name.to_string()),
            false => Method::Unknown,
        }
    }

    fn keep(&self, name: String) -> &'static str {
        let mut methods = self.methods.write();
        if let Some(kept) = methods.get(name.as_str()) {
            return kept;
        }
        if methods.len() >= METHODS_KEPT_MAX {
            return "unknown";
        }
        let kept: &'static str = Box::leak(name.into_boxed_str());
        methods.insert(kept);
        kept
    }

    fn record(&self, method: Method, code: &'static str, started: Instant) {
        // An unknown method is answered UNIMPLEMENTED: its name is not kept.
        let method = match (method, code) {
            (_, "Unimplemented") | (Method::Unknown, _) => "unknown",
            (Method::Kept(method), _) => method,
            (Method::New(name), _) => self.keep(name),
        };
        let labels = CallLabels { method, code };
        let elapsed = started.elapsed().as_secs_f64();
        if let Some((requests, duration)) = self.series.read().get(&labels) {
            duration.observe(elapsed);
            requests.inc();
            return;
        }
        let requests = self.requests.get_or_create(&labels).clone();
        let duration = self.duration.get_or_create(&labels).clone();
        duration.observe(elapsed);
        requests.inc();
        self.series.write().insert(labels, (requests, duration));
    }
}

/// Whether `name` is `Service/Method` of a service this node serves, with
/// a method name of letters and digits, short enough to keep.
fn well_formed(name: &str) -> bool {
    name.len() <= METHOD_LABEL_BYTES_MAX
        && KNOWN_SERVICES.iter().any(|service| {
            name.strip_prefix(service)
                .is_some_and(|method| !method.is_empty() && method.bytes().all(|b| b.is_ascii_alphanumeric()))
        })
}

/// The name of a `grpc-status` value, as gRPC's own libraries print it.
fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code;
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "Canceled",
        Code::Unknown => "Unknown",
        Code::InvalidArgument => "InvalidArgument",
        Code::DeadlineExceeded => "DeadlineExceeded",
        Code::NotFound => "NotFound",
        Code::AlreadyExists => "AlreadyExists",
        Code::PermissionDenied => "PermissionDenied",
        Code::ResourceExhausted => "ResourceExhausted",
        Code::FailedPrecondition => "FailedPrecondition",
        Code::Aborted => "Aborted",
        Code::OutOfRange => "OutOfRange",
        Code::Unimplemented => "Unimplemented",
        Code::Internal => "Internal",
        Code::Unavailable => "Unavailable",
        Code::DataLoss => "DataLoss",
        Code::Unauthenticated => "Unauthenticated",
    }
}

/// Counts the calls of the service it wraps; passes them through
/// untouched when metrics are off.
#[derive(Clone)]
pub struct GrpcMetricsLayer {
    metrics: Option<Arc<GrpcMetrics>>,
}

impl GrpcMetricsLayer {
    /// Counts into `metrics`, or nothing.
    pub fn new(metrics: Option<Arc<GrpcMetrics>>) -> Self {
        GrpcMetricsLayer { metrics }
    }
}

impl<S> Layer<S> for GrpcMetricsLayer {
    type Service = GrpcMetricsService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        GrpcMetricsService {
            inner,
            metrics: self.metrics.clone(),
        }
    }
}

/// See [`GrpcMetricsLayer`].
#[derive(Clone)]
pub struct GrpcMetricsService<S> {
    inner: S,
    metrics: Option<Arc<GrpcMetrics>>,
}

impl<S, B, R> Service<http::Request<B>> for GrpcMetricsService<S>
where
    S: Service<http::Request<B>, Response = http::Response<R>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let Some(metrics) = self.metrics.clone() else {
            return Box::pin(self.inner.call(request));
        };
        let method = metrics.method(request.uri().path());
        let started = Instant::now();
        let response = self.inner.call(request);
        Box::pin(async move {
            let response = response.await;
            let code = match &response {
                Ok(response) => response
                    .headers()
                    .get("grpc-status")
                    .and_then(|value| value.to_str().ok())
                    .and_then(|text| text.parse::<i32>().ok())
                    .map_or("OK", |code| code_name(tonic::Code::from_i32(code))),
                Err(_) => "Unknown",
            };
            metrics.record(method, code, started);
            response
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labelled(metrics: &GrpcMetrics, path: &str, code: &'static str) -> &'static str {
        let method = metrics.method(path);
        metrics.record(method, code, Instant::now());
        let series = metrics.series.read();
        let labels = series
            .keys()
            .find(|labels| {
                labels.code == code && (path.ends_with(labels.method) || labels.method == "unknown")
            })
            .expect("a series was recorded");
        labels.method
    }

    #[test]
    fn only_methods_of_known_services_that_answered_are_labelled_by_name() {
        let metrics = GrpcMetrics::default();
        assert_eq!(
            labelled(&metrics, "/quorumlock.v1.Lock/Acquire", "OK"),
            "quorumlock.v1.Lock/Acquire"
        );
        assert_eq!(
            labelled(&metrics, "/grpc.health.v1.Health/Watch", "OK"),
            "grpc.health.v1.Health/Watch"
        );
        assert_eq!(labelled(&metrics, "/made.up.Service/Anything", "OK"), "unknown");
        assert_eq!(labelled(&metrics, "/quorumlock.v1.Lock/", "NotFound"), "unknown");
        assert_eq!(
            labelled(&metrics, "/quorumlock.v1.Lock/Bad\"Name", "Internal"),
            "unknown"
        );
        let long = format!("/quorumlock.v1.Lock/{}", "A".repeat(200));
        assert_eq!(labelled(&metrics, &long, "Aborted"), "unknown");
        assert_eq!(
            labelled(&metrics, "/quorumlock.v1.Lock/Invented", "Unimplemented"),
            "unknown"
        );
        assert!(
            !metrics.methods.read().contains("quorumlock.v1.Lock/Invented"),
            "a method no service has is not kept"
        );
        // A second call of a kept method reuses its series.
        labelled(&metrics, "/quorumlock.v1.Lock/Acquire", "OK");
        let series = metrics.series.read();
        let (requests, _) = &series[&CallLabels {
            method: "quorumlock.v1.Lock/Acquire",
            code: "OK",
        }];
        assert_eq!(requests.get(), 2);
    }
}
