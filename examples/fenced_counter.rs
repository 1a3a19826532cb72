//! Increments a counter kept in quorumlock's fenced key-value store, under a
//! lock, the way any read-modify-write of shared state should be done.
//!
//! Start a local cluster with `cargo run --release -- dev`, then run
//! `cargo run --release --example fenced_counter` (several at once, even):
//! every increment happens under the lock and every write carries the
//! lock's fencing token, so no increment is lost. Set `QUORUMLOCK_ENDPOINTS`
//! to use another cluster.

use std::time::Duration;

use quorumlock_client::{Client, ClientError};

/// The lock that guards the counter.
pub const LOCK: &str = "counter";
/// The key the counter is stored under.
pub const KEY: &str = "counter/value";

/// Increments the counter `increments` times, each under the lock, and
/// returns the values it wrote.
pub async fn increment(client: &Client, increments: u32) -> Result<Vec<u64>, ClientError> {
    let session = client.session(Duration::from_secs(10)).await?;
    let mut written = Vec::new();
    for _ in 0..increments {
        let guard = session.lock(LOCK).await?;
        let current = match client.get(KEY).await? {
            Some(entry) => String::from_utf8_lossy(&entry.value).parse::<u64>().unwrap_or(0),
            None => 0,
        };
        let next = current + 1;
        // If this process froze here past the session's TTL, another one
        // would take the lock, and this write would be refused: its token
        // would no longer be current.
        tokio::select! {
            outcome = client.put(KEY, next.to_string(), &guard) => outcome?,
            reason = guard.lost() => {
                return Err(ClientError::SessionLost { session: session.id(), reason });
            }
        }
        written.push(next);
        guard.release().await?;
    }
    session.close().await?;
    Ok(written)
}

#[allow(dead_code)]
#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let endpoints = std::env::var("QUORUMLOCK_ENDPOINTS")
        .unwrap_or_else(|_| "127.0.0.1:7001,127.0.0.1:7002,127.0.0.1:7003".to_string());
    let client = Client::connect([endpoints]).await?;
    for value in increment(&client, 5).await? {
        println!("{KEY} = {value}");
    }
    Ok(())
}
