//! The client's tunable limits, all in one place.

use std::time::Duration;

use quorumlock_proto::limits::WAIT_MS_MAX;
use quorumlock_tls::ClientTls;

/// Most endpoints a client keeps: the given ones plus leaders it was told about.
pub const ENDPOINTS_MAX: usize = 64;
/// A session renews its lease this many times per TTL, so that two renewals
/// may be lost before the lease runs out.
pub const RENEWALS_PER_TTL: u32 = 3;
/// Most keepalive renewals sent on one stream and not yet answered; past this
/// the node is not reading and the stream is abandoned for another endpoint.
pub const KEEPALIVE_UNANSWERED_MAX: usize = 4;

/// How a [`Client`](super::Client) connects, retries and waits.
///
/// Every bound on time the client applies is here; [`ClientConfig::default`]
/// suits a cluster on a local network.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// Longest time to open a TCP/HTTP2 connection to one endpoint.
    pub connect_timeout: Duration,
    /// How long [`Client::connect`](super::Client::connect) keeps trying the
    /// endpoints, with backoff, before it gives up because none answers.
    pub connect_wait_max: Duration,
    /// Longest wait for the answer to one call, not counting a lock wait.
    pub rpc_timeout: Duration,
    /// While calls are open on a connection and it has heard nothing from
    /// its node for this long, the client sends an HTTP/2 PING. `None` sends
    /// none, and then a node that stops answering without closing the
    /// connection (frozen, or cut off by a partition) holds a call for its
    /// whole `rpc_timeout` plus lock wait.
    pub ping_interval: Option<Duration>,
    /// How long a PING may go unanswered before the connection is closed and
    /// its calls, lock waits and keepalive streams included, move to another
    /// endpoint. A frozen node is left at most `ping_interval + ping_timeout`
    /// after its last answer.
    pub ping_timeout: Duration,
    /// How long one operation keeps retrying `UNAVAILABLE` answers (no
    /// leader, node down, leader change) before it reports the last one.
    pub retry_total_max: Duration,
    /// First pause between retries; it doubles up to `backoff_max`.
    pub backoff_initial: Duration,
    /// Longest pause between retries (before jitter).
    pub backoff_max: Duration,
    /// Longest single `Acquire` wait a blocking lock asks the server for; a
    /// longer wait is made of several. The server's limit is one hour.
    pub lock_wait_step_max: Duration,
    /// TLS for every connection (see [`ClientTls::load`]): the CA the
    /// nodes' certificates must chain to and, for a cluster that requires
    /// client certificates, this client's own. `None` connects in
    /// plaintext, except that an `https://` endpoint then is an error.
    pub tls: Option<ClientTls>,
    /// A bearer token sent with every call (`authorization: Bearer TOKEN`),
    /// for clusters whose access policy lists it. Over plaintext anyone on
    /// the path can read it: use it with TLS beyond loopback.
    pub token: Option<BearerToken>,
}

/// A bearer token: an opaque secret the access policy of the cluster
/// stands for an identity. Its `Debug` form never shows it.
#[derive(Clone, PartialEq, Eq)]
pub struct BearerToken(String);

/// Longest bearer token, in bytes.
pub const BEARER_TOKEN_BYTES_MAX: usize = 1024;

impl BearerToken {
    /// A token of visible ASCII characters (no spaces), 1 to
    /// [`BEARER_TOKEN_BYTES_MAX`] bytes; surrounding whitespace, as a token
    /// file's final newline, is trimmed.
    pub fn new(token: &str) -> Result<BearerToken, String> {
        let token = token.trim();
        if token.is_empty() || token.len() > BEARER_TOKEN_BYTES_MAX {
            return Err(format!(
                "a bearer token is 1 to {BEARER_TOKEN_BYTES_MAX} bytes; this one is {}",
                token.len()
            ));
        }
        if !token.bytes().all(|byte| byte.is_ascii_graphic()) {
            return Err("a bearer token holds visible ASCII characters only".into());
        }
        Ok(BearerToken(token.to_string()))
    }

    /// The token itself, to send.
    pub(crate) fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for BearerToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BearerToken(..)")
    }
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig {
            connect_timeout: Duration::from_secs(2),
            connect_wait_max: Duration::from_secs(3),
            rpc_timeout: Duration::from_secs(10),
            ping_interval: Some(Duration::from_secs(5)),
            ping_timeout: Duration::from_secs(5),
            retry_total_max: Duration::from_secs(30),
            backoff_initial: Duration::from_millis(50),
            backoff_max: Duration::from_secs(1),
            lock_wait_step_max: Duration::from_millis(WAIT_MS_MAX),
            tls: None,
            token: None,
        }
    }
}
