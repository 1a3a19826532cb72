//! Backups: `Cluster/SaveSnapshot` from the leader, as a stream of the
//! backup file's bytes.

use std::time::Duration;

use tokio::time::Instant;
use tonic::{Code, Status, Streaming};

use super::backoff::Backoff;
use super::connection::{request, retryable, Client};
use super::endpoints::leader_hint;
use super::error::{describe_status, ClientError, Refusal};
use quorumlock_proto::v1 as pb;
use quorumlock_proto::v1::cluster_client::ClusterClient;

/// Largest chunk a node sends; the client takes messages up to this size
/// plus framing.
const CHUNK_MESSAGE_BYTES_MAX: usize = (1 << 20) + 1_024;

/// A backup file arriving from the leader, chunk by chunk.
pub struct SnapshotDownload {
    endpoint: String,
    chunks: Streaming<pb::SnapshotChunk>,
}

impl SnapshotDownload {
    /// The node that sends it (the leader when the call began).
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// The next bytes of the file, or `None` once it is complete.
    pub async fn next_chunk(&mut self) -> Result<Option<Vec<u8>>, ClientError> {
        match self.chunks.message().await {
            Ok(chunk) => Ok(chunk.map(|chunk| chunk.data)),
            Err(status) => Err(ClientError::from_status(&self.endpoint, &status)),
        }
    }
}

impl Client {
    /// Starts a backup: finds the leader (following the hints of nodes that
    /// do not lead, within [`crate::ClientConfig::retry_total_max`]) and
    /// returns the file as it streams. `limit` bounds the whole transfer.
    pub async fn save_snapshot(&self, limit: Duration) -> Result<SnapshotDownload, ClientError> {
        let config = self.config();
        let started = Instant::now();
        let mut backoff = Backoff::new(config.backoff_initial, config.backoff_max);
        loop {
            let picked = self.pool().current();
            let mut client =
                ClusterClient::new(picked.channel.clone()).max_decoding_message_size(CHUNK_MESSAGE_BYTES_MAX);
            let call = client.save_snapshot(request(pb::SaveSnapshotRequest {}, limit));
            let status = match tokio::time::timeout(limit, call).await {
                Ok(Ok(response)) => {
                    return Ok(SnapshotDownload {
                        endpoint: picked.addr.clone(),
                        chunks: response.into_inner(),
                    })
                }
                Ok(Err(status)) if retryable(&status) => status,
                Ok(Err(status)) => return Err(ClientError::from_status(&picked.addr, &status)),
                Err(_) => Status::deadline_exceeded(format!("no answer within {limit:?}")),
            };
            self.pool().failed(&picked, leader_hint(&status));
            let pause = backoff.next_pause();
            if started.elapsed() + pause > config.retry_total_max || status.code() == Code::DeadlineExceeded {
                return Err(ClientError::Rpc {
                    endpoint: picked.addr,
                    code: status.code(),
                    message: describe_status(&status),
                    refusal: Refusal::of(&status),
                });
            }
            tokio::time::sleep(pause).await;
        }
    }
}
