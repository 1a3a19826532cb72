//! The endpoints a client talks to: parsing, lazily connected channels, and
//! which one to use next.

use std::time::Duration;

use parking_lot::Mutex;
use tonic::metadata::AsciiMetadataValue;
use tonic::service::interceptor::InterceptedService;
use tonic::service::Interceptor;
use tonic::transport::{Channel, Endpoint};
use tonic::Status;

use super::config::{BearerToken, ClientConfig, ENDPOINTS_MAX};
use super::error::{ClientError, Refusal};
use quorumlock_proto::headers::LEADER_HINT_HEADER;
use quorumlock_tls::Dialer;

/// How an endpoint asks to be reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    /// `host:port`: as the client's config says (TLS when it has one).
    Any,
    /// `http://host:port`: plaintext.
    Plaintext,
    /// `https://host:port`: TLS.
    Tls,
}

/// Parses one endpoint, `host:port`, `http://host:port` or
/// `https://host:port`, into `host:port`.
pub fn parse_endpoint(text: &str) -> Result<String, ClientError> {
    parse_endpoint_scheme(text).map(|(_, address)| address)
}

/// Parses one endpoint into its scheme and `host:port`.
pub fn parse_endpoint_scheme(text: &str) -> Result<(Scheme, String), ClientError> {
    let invalid = |reason: &str| ClientError::InvalidEndpoint {
        endpoint: text.to_string(),
        reason: reason.to_string(),
    };
    let trimmed = text.trim();
    let (scheme, address) = if let Some(address) = trimmed.strip_prefix("https://") {
        (Scheme::Tls, address)
    } else if let Some(address) = trimmed.strip_prefix("http://") {
        (Scheme::Plaintext, address)
    } else {
        (Scheme::Any, trimmed)
    };
    let address = address.strip_suffix('/').unwrap_or(address);
    if address.contains("://") {
        return Err(invalid("only http:// and https:// endpoints are supported"));
    }
    if address.contains('/') {
        return Err(invalid("an endpoint has no path: expected host:port"));
    }
    let (host, port) = address
        .rsplit_once(':')
        .ok_or_else(|| invalid("expected host:port (the port is missing)"))?;
    if host.is_empty() {
        return Err(invalid("the host is empty"));
    }
    if host.contains(':') && !(host.starts_with('[') && host.ends_with(']')) {
        return Err(invalid(
            "an IPv6 host must be written in brackets, e.g. [::1]:7001",
        ));
    }
    match port.parse::<u16>() {
        Ok(0) | Err(_) => Err(invalid("the port must be a number from 1 to 65535")),
        Ok(_) => Ok((scheme, address.to_string())),
    }
}

/// Checks that every endpoint's scheme agrees with whether the client has
/// a TLS config: `https://` needs one, `http://` refuses one, rather than
/// silently downgrading or upgrading.
pub(crate) fn check_schemes<I, S>(endpoints: I, tls: bool) -> Result<(), ClientError>
where
    I: IntoIterator<Item = S>,
    S: AsRef<str>,
{
    for item in endpoints {
        for text in item.as_ref().split(',').filter(|text| !text.trim().is_empty()) {
            let invalid = |reason: &str| ClientError::InvalidEndpoint {
                endpoint: text.trim().to_string(),
                reason: reason.to_string(),
            };
            match (parse_endpoint_scheme(text)?.0, tls) {
                (Scheme::Tls, false) => {
                    return Err(invalid(
                        "https:// needs a TLS config: the CA file the nodes' certificates chain to \
                         (ClientConfig::tls, or --cacert / QUORUMLOCK_CACERT)",
                    ))
                }
                (Scheme::Plaintext, true) => {
                    return Err(invalid(
                        "http:// asks for plaintext but a TLS config is given; use https:// or host:port",
                    ))
                }
                _ => {}
            }
        }
    }
    Ok(())
}

/// Parses a comma-separated endpoint list, dropping duplicates.
pub fn parse_endpoint_list<I, S>(endpoints: I) -> Result<Vec<String>, ClientError>
where
    I: IntoIterator<Item = S>,
    S: AsRef<str>,
{
    let mut parsed: Vec<String> = Vec::new();
    for item in endpoints {
        for text in item.as_ref().split(',').filter(|text| !text.trim().is_empty()) {
            let endpoint = parse_endpoint(text)?;
            if !parsed.contains(&endpoint) {
                parsed.push(endpoint);
            }
        }
    }
    if parsed.is_empty() {
        return Err(ClientError::NoEndpoints);
    }
    if parsed.len() > ENDPOINTS_MAX {
        return Err(ClientError::TooManyEndpoints {
            count: parsed.len(),
            max: ENDPOINTS_MAX,
        });
    }
    Ok(parsed)
}

/// The leader's address named by an `UNAVAILABLE` answer, if any: from its
/// typed detail, or else from the `x-quorumlock-leader` metadata.
pub fn leader_hint(status: &Status) -> Option<String> {
    if let Some((_, addr)) = Refusal::of(status).as_ref().and_then(Refusal::leader) {
        return parse_endpoint(addr).ok();
    }
    named_leader(status.metadata())
}

/// The leader's address in `x-quorumlock-leader` metadata (`<id>@<addr>`):
/// on a refusal, or on an answer a follower forwarded from the leader.
pub fn named_leader(metadata: &tonic::metadata::MetadataMap) -> Option<String> {
    let value = metadata.get(LEADER_HINT_HEADER)?.to_str().ok()?;
    let (_, addr) = value.split_once('@')?;
    parse_endpoint(addr).ok()
}

/// A channel that sends the client's bearer token, if it has one, with
/// every call.
pub(crate) type Rpc = InterceptedService<Channel, Bearer>;

/// Adds `authorization: Bearer TOKEN` to every request.
#[derive(Clone)]
pub(crate) struct Bearer(Option<AsciiMetadataValue>);

impl Bearer {
    fn new(token: Option<&BearerToken>) -> Result<Bearer, ClientError> {
        let Some(token) = token else {
            return Ok(Bearer(None));
        };
        let mut value = AsciiMetadataValue::try_from(format!("Bearer {}", token.expose()))
            .map_err(|_| ClientError::InvalidArgument("the bearer token is not valid metadata".into()))?;
        value.set_sensitive(true);
        Ok(Bearer(Some(value)))
    }
}

impl Interceptor for Bearer {
    fn call(&mut self, mut request: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(value) = &self.0 {
            request
                .metadata_mut()
                .insert(quorumlock_proto::headers::AUTHORIZATION_HEADER, value.clone());
        }
        Ok(request)
    }
}

struct Slot {
    addr: String,
    channel: Rpc,
}

struct Slots {
    slots: Vec<Slot>,
    preferred: usize,
}

/// How a channel to one endpoint connects and notices a silent node.
#[derive(Debug, Clone, Copy)]
struct Timing {
    connect_timeout: Duration,
    ping_interval: Option<Duration>,
    ping_timeout: Duration,
}

/// The endpoints in use and the one calls go to first.
pub(crate) struct Pool {
    timing: Timing,
    dialer: Dialer,
    bearer: Bearer,
    state: Mutex<Slots>,
}

/// The endpoint a call is made on.
#[derive(Clone)]
pub(crate) struct Picked {
    /// Its index in the pool, to report a failure against.
    pub index: usize,
    /// `host:port`.
    pub addr: String,
    /// A lazily connected channel to it.
    pub channel: Rpc,
}

impl Pool {
    /// A pool over already parsed endpoints (see [`parse_endpoint_list`]),
    /// connecting, pinging and authenticating as `config` says.
    pub fn new(endpoints: &[String], config: &ClientConfig) -> Result<Self, ClientError> {
        let timing = Timing {
            connect_timeout: config.connect_timeout,
            ping_interval: config.ping_interval,
            ping_timeout: config.ping_timeout,
        };
        let dialer = config.tls.clone().map(Dialer::tls).unwrap_or_default();
        let bearer = Bearer::new(config.token.as_ref())?;
        let slots = endpoints
            .iter()
            .map(|addr| {
                Ok(Slot {
                    addr: addr.clone(),
                    channel: lazy_channel(addr, timing, &dialer, &bearer)?,
                })
            })
            .collect::<Result<Vec<_>, ClientError>>()?;
        Ok(Pool {
            timing,
            dialer,
            bearer,
            state: Mutex::new(Slots { slots, preferred: 0 }),
        })
    }

    /// Every endpoint, given or learned.
    pub fn addrs(&self) -> Vec<String> {
        self.state
            .lock()
            .slots
            .iter()
            .map(|slot| slot.addr.clone())
            .collect()
    }

    /// The number of endpoints.
    pub fn len(&self) -> usize {
        self.state.lock().slots.len()
    }

    /// The endpoint to use now.
    pub fn current(&self) -> Picked {
        let state = self.state.lock();
        let slot = &state.slots[state.preferred];
        Picked {
            index: state.preferred,
            addr: slot.addr.clone(),
            channel: slot.channel.clone(),
        }
    }

    /// The endpoint at `index`, modulo the pool's size.
    pub fn at(&self, index: usize) -> Picked {
        let state = self.state.lock();
        let index = index % state.slots.len();
        let slot = &state.slots[index];
        Picked {
            index,
            addr: slot.addr.clone(),
            channel: slot.channel.clone(),
        }
    }

    /// Makes the endpoint at `index` the one calls go to first.
    pub fn prefer(&self, index: usize) {
        let mut state = self.state.lock();
        if index < state.slots.len() {
            state.preferred = index;
        }
    }

    /// `served` answered a call by forwarding it to the leader at `leader`:
    /// later calls go to the leader directly, saving the extra hop, if it is
    /// one of the endpoints the client knows. An address only a hint gave
    /// is not added here (unlike after a failure): the follower reached the
    /// leader, which does not mean this client can.
    pub fn forwarded(&self, served: &Picked, leader: &str) {
        let mut state = self.state.lock();
        if state.preferred != served.index || served.addr == leader {
            return;
        }
        if let Some(index) = state.slots.iter().position(|slot| slot.addr == leader) {
            state.preferred = index;
        }
    }

    /// Moves on after `failed` did not serve a call: to the leader it named
    /// if it named another node, else to the next endpoint. Several callers
    /// may report the same failure; only the first moves the preference.
    pub fn failed(&self, failed: &Picked, hint: Option<String>) {
        let mut state = self.state.lock();
        if state.preferred != failed.index {
            return;
        }
        if let Some(hint) = hint.filter(|hint| *hint != failed.addr) {
            if let Some(index) = state.slots.iter().position(|slot| slot.addr == hint) {
                state.preferred = index;
                return;
            }
            if state.slots.len() < ENDPOINTS_MAX {
                if let Ok(channel) = lazy_channel(&hint, self.timing, &self.dialer, &self.bearer) {
                    state.slots.push(Slot { addr: hint, channel });
                    state.preferred = state.slots.len() - 1;
                    return;
                }
            }
        }
        state.preferred = (failed.index + 1) % state.slots.len();
    }
}

/// A lazily connected channel to `addr`; over TLS the node's certificate
/// must name the host the endpoint gives (an IP address or a DNS name).
/// While calls are open on it, a connection that hears nothing from its node
/// for `ping_interval` sends an HTTP/2 PING, and one whose PING goes
/// unanswered for `ping_timeout` is closed, failing its calls so that they
/// are retried on another endpoint.
fn lazy_channel(addr: &str, timing: Timing, dialer: &Dialer, bearer: &Bearer) -> Result<Rpc, ClientError> {
    let invalid = |reason: String| ClientError::InvalidEndpoint {
        endpoint: addr.to_string(),
        reason,
    };
    let mut endpoint = Endpoint::from_shared(format!("http://{addr}"))
        .map_err(|error| invalid(error.to_string()))?
        .connect_timeout(timing.connect_timeout)
        .tcp_nodelay(true);
    if let Some(interval) = timing.ping_interval {
        endpoint = endpoint
            .http2_keep_alive_interval(interval)
            .keep_alive_timeout(timing.ping_timeout)
            .keep_alive_while_idle(false);
    }
    let host = addr.rsplit_once(':').map_or(addr, |(host, _)| host);
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let channel = dialer
        .channel(&endpoint, host)
        .map_err(|error| invalid(error.to_string()))?;
    Ok(InterceptedService::new(channel, bearer.clone()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_accept_host_port_and_http_urls_alike() {
        assert_eq!(parse_endpoint("127.0.0.1:7001").unwrap(), "127.0.0.1:7001");
        assert_eq!(parse_endpoint("http://127.0.0.1:7001").unwrap(), "127.0.0.1:7001");
        assert_eq!(parse_endpoint(" http://node1:7001/ ").unwrap(), "node1:7001");
        assert_eq!(parse_endpoint("[::1]:7001").unwrap(), "[::1]:7001");
        assert_eq!(
            parse_endpoint_scheme("https://node1:7001").unwrap(),
            (Scheme::Tls, "node1:7001".to_string())
        );
    }

    #[test]
    fn schemes_must_agree_with_the_tls_config() {
        assert!(check_schemes(["a:1,http://b:2"], false).is_ok());
        assert!(check_schemes(["a:1,https://b:2"], true).is_ok());
        let error = check_schemes(["a:1,https://b:2"], false).unwrap_err().to_string();
        assert!(
            error.contains("https://b:2") && error.contains("--cacert"),
            "{error}"
        );
        let error = check_schemes(["http://b:2"], true).unwrap_err().to_string();
        assert!(error.contains("plaintext"), "{error}");
    }

    #[test]
    fn malformed_endpoints_are_refused_with_the_reason() {
        for (text, reason) in [
            ("127.0.0.1", "port is missing"),
            (":7001", "host is empty"),
            ("host:0", "port must be"),
            ("host:99999", "port must be"),
            ("host:http", "port must be"),
            ("grpc://host:7001", "only http://"),
            ("http://host:7001/path", "no path"),
            ("::1:7001", "brackets"),
        ] {
            let error = parse_endpoint(text).unwrap_err().to_string();
            assert!(error.contains(reason), "{text:?}: {error}");
        }
    }

    #[test]
    fn endpoint_lists_split_on_commas_drop_duplicates_and_must_not_be_empty() {
        let list = parse_endpoint_list(["a:1,http://b:2", "a:1"]).unwrap();
        assert_eq!(list, vec!["a:1".to_string(), "b:2".to_string()]);
        assert!(matches!(
            parse_endpoint_list([" , "]),
            Err(ClientError::NoEndpoints)
        ));
        let many: Vec<String> = (1..=ENDPOINTS_MAX + 1).map(|port| format!("h:{port}")).collect();
        assert!(matches!(
            parse_endpoint_list(many),
            Err(ClientError::TooManyEndpoints { .. })
        ));
    }

    #[test]
    fn the_leader_hint_is_read_from_unavailable_metadata() {
        let mut status = Status::unavailable("not the leader");
        status.metadata_mut().insert(
            LEADER_HINT_HEADER,
            tonic::metadata::MetadataValue::from_static("2@127.0.0.1:7002"),
        );
        assert_eq!(leader_hint(&status).as_deref(), Some("127.0.0.1:7002"));
        assert_eq!(leader_hint(&Status::unavailable("no leader")), None);
    }

    #[tokio::test]
    async fn a_failure_moves_to_the_named_leader_or_else_to_the_next_endpoint() {
        let pool = Pool::new(
            &["a:1".to_string(), "b:2".to_string(), "c:3".to_string()],
            &ClientConfig::default(),
        )
        .unwrap();
        let first = pool.current();
        assert_eq!(first.addr, "a:1");
        pool.failed(&first, Some("c:3".to_string()));
        assert_eq!(pool.current().addr, "c:3");
        // A stale report about an endpoint no longer preferred changes nothing.
        pool.failed(&first, None);
        assert_eq!(pool.current().addr, "c:3");
        pool.failed(&pool.current(), None);
        assert_eq!(pool.current().addr, "a:1");
        // A hint naming a node not yet known adds it.
        pool.failed(&pool.current(), Some("d:4".to_string()));
        assert_eq!(pool.current().addr, "d:4");
        assert_eq!(pool.len(), 4);
    }
}
