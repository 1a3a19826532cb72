//! Forwarding from a follower to the leader, over cached channels.

use std::collections::HashMap;
use std::time::Duration;

use parking_lot::Mutex;
use tonic::metadata::MetadataValue;
use tonic::transport::{Channel, Endpoint};
use tonic::{Request, Status};

use crate::auth::Caller;
use quorumlock_core::consensus::{LeaderInfo, NodeId};
use quorumlock_proto::headers::FORWARDED_HEADER;
use quorumlock_proto::limits::API_MESSAGE_BYTES_MAX;
use quorumlock_proto::v1::lock_client::LockClient;
use quorumlock_tls::{node_name, Dialer};

/// While calls are forwarded on a connection that has heard nothing from
/// the leader for this long, the node sends it an HTTP/2 PING.
pub const FORWARD_PING_INTERVAL: Duration = Duration::from_secs(1);
/// A PING unanswered this long closes the connection to the leader, failing
/// its forwarded calls with `FORWARDING_FAILED`: a frozen leader that this
/// node still follows holds a forwarded call (or a relayed keepalive stream)
/// at most `FORWARD_PING_INTERVAL + FORWARD_PING_TIMEOUT` past its last word.
pub const FORWARD_PING_TIMEOUT: Duration = Duration::from_secs(1);

/// One lazily connected channel per leader, dialed as the node's peers
/// are: over TLS with the node's own certificate, requiring the leader's
/// certificate to name it.
pub struct Forwarder {
    dialer: Dialer,
    channels: Mutex<HashMap<(NodeId, String), Channel>>,
}

impl Forwarder {
    /// Forwards over channels `dialer` makes.
    pub fn new(dialer: Dialer) -> Forwarder {
        Forwarder {
            dialer,
            channels: Mutex::default(),
        }
    }

    /// A client for `leader`.
    pub fn client(&self, leader: &LeaderInfo) -> Result<LockClient<Channel>, Status> {
        let mut channels = self.channels.lock();
        let key = (leader.id, leader.addr.clone());
        let channel = match channels.get(&key) {
            Some(channel) => channel.clone(),
            None => {
                let addr = &leader.addr;
                let endpoint = Endpoint::from_shared(format!("http://{addr}"))
                    .map_err(|error| Status::internal(format!("bad leader address {addr:?}: {error}")))?
                    .connect_timeout(Duration::from_millis(500))
                    .tcp_nodelay(true)
                    .http2_keep_alive_interval(FORWARD_PING_INTERVAL)
                    .keep_alive_timeout(FORWARD_PING_TIMEOUT)
                    .keep_alive_while_idle(false);
                let channel = self
                    .dialer
                    .channel(&endpoint, &node_name(leader.id.get()))
                    .map_err(|error| Status::internal(format!("dialing leader {}: {error}", leader.id)))?;
                channels.insert(key, channel.clone());
                channel
            }
        };
        Ok(LockClient::new(channel)
            .max_decoding_message_size(API_MESSAGE_BYTES_MAX)
            .max_encoding_message_size(API_MESSAGE_BYTES_MAX))
    }
}

/// A request to forward: the message, the client's remaining deadline, the
/// mark that stops it from being forwarded twice, and what tells the leader
/// who the caller is (see [`Caller::vouch`]).
pub fn forwarded<T>(message: T, timeout: Option<Duration>, caller: &Caller, tls: bool) -> Request<T> {
    let mut request = Request::new(message);
    if let Some(timeout) = timeout {
        request.set_timeout(timeout);
    }
    request
        .metadata_mut()
        .insert(FORWARDED_HEADER, MetadataValue::from_static("1"));
    caller.vouch(request.metadata_mut(), tls);
    request
}
