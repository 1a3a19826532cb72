//! [`LockGuard`]: a held lock and its fencing token.

use std::sync::Arc;

use tokio::sync::watch;

use super::connection::{Fence, Released};
use super::error::{ClientError, LostReason};
use super::session::SessionShared;

/// A lock held by a session, with the fencing token of its grant.
///
/// Present [`LockGuard::token`] (or [`LockGuard::fence`]) with every write to
/// storage the lock protects; storage that checks it refuses the writes of a
/// holder that lost the lock. Dropping the guard releases the lock in the
/// background (best effort); [`LockGuard::release`] releases it and reports
/// errors.
pub struct LockGuard {
    name: String,
    token: u64,
    session: Arc<SessionShared>,
    released: bool,
}

impl LockGuard {
    pub(crate) fn new(session: Arc<SessionShared>, name: String, token: u64) -> Self {
        LockGuard {
            name,
            token,
            session,
            released: false,
        }
    }

    /// The lock's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The fencing token of this grant: larger than every token granted
    /// before it, by any lock.
    pub fn token(&self) -> u64 {
        self.token
    }

    /// The session that holds the lock.
    pub fn session_id(&self) -> u64 {
        self.session.id
    }

    /// The lock and token, as fenced writes present them.
    pub fn fence(&self) -> Fence {
        Fence {
            lock: self.name.clone(),
            token: self.token,
        }
    }

    /// Why the holding session is lost, or `None` while it is alive.
    pub fn lost_reason(&self) -> Option<LostReason> {
        self.session.lost_reason()
    }

    /// Whether the holding session is lost (the lock must then be assumed
    /// held by someone else).
    pub fn is_lost(&self) -> bool {
        self.session.lost_reason().is_some()
    }

    /// Resolves as soon as the holding session is lost.
    pub async fn lost(&self) -> LostReason {
        self.session.lost().await
    }

    /// The holding session's lost signal as a watch receiver.
    pub fn watch(&self) -> watch::Receiver<Option<LostReason>> {
        self.session.watch()
    }

    /// Lets go of the guard without releasing the lock, for handing the
    /// lock and token to another process; returns its fence. The lock stays
    /// held as long as its session lives.
    pub fn detach(mut self) -> Fence {
        self.released = true;
        self.fence()
    }

    /// Releases the lock; the first waiter is granted it at once.
    pub async fn release(mut self) -> Result<Released, ClientError> {
        self.released = true;
        self.session
            .client
            .release(self.session.id, &self.name, self.token)
            .await
    }
}

impl Drop for LockGuard {
    fn drop(&mut self) {
        if self.released || self.session.lost_reason().is_some() {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        // The task keeps the session alive until the release is done.
        let session = self.session.clone();
        let name = std::mem::take(&mut self.name);
        let token = self.token;
        runtime.spawn(async move {
            if let Err(error) = session.client.release(session.id, &name, token).await {
                tracing::debug!(lock = %name, token, %error, "releasing a dropped lock guard failed");
            }
        });
    }
}
