//! Forwarding from a follower to the leader, over cached channels.

use std::collections::HashMap;
use std::time::Duration;

use parking_lot::Mutex;
use tonic::metadata::MetadataValue;
use tonic::transport::{Channel, Endpoint};
use tonic::{Request, Status};

use quorumlock_proto::headers::FORWARDED_HEADER;
use quorumlock_proto::limits::API_MESSAGE_BYTES_MAX;
use quorumlock_proto::v1::lock_client::LockClient;

/// One lazily connected channel per leader address.
#[derive(Default)]
pub struct Forwarder {
    channels: Mutex<HashMap<String, Channel>>,
}

impl Forwarder {
    /// A client for the node at `addr`.
    pub fn client(&self, addr: &str) -> Result<LockClient<Channel>, Status> {
        let mut channels = self.channels.lock();
        let channel = match channels.get(addr) {
            Some(channel) => channel.clone(),
            None => {
                let channel = Endpoint::from_shared(format!("http://{addr}"))
                    .map_err(|error| Status::internal(format!("bad leader address {addr:?}: {error}")))?
                    .connect_timeout(Duration::from_millis(500))
                    .tcp_nodelay(true)
                    .connect_lazy();
                channels.insert(addr.to_string(), channel.clone());
                channel
            }
        };
        Ok(LockClient::new(channel)
            .max_decoding_message_size(API_MESSAGE_BYTES_MAX)
            .max_encoding_message_size(API_MESSAGE_BYTES_MAX))
    }
}

/// A request to forward: the message, the client's remaining deadline, and
/// the mark that stops it from being forwarded twice.
pub fn forwarded<T>(message: T, timeout: Option<Duration>) -> Request<T> {
    let mut request = Request::new(message);
    if let Some(timeout) = timeout {
        request.set_timeout(timeout);
    }
    request
        .metadata_mut()
        .insert(FORWARDED_HEADER, MetadataValue::from_static("1"));
    request
}
