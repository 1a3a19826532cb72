//! [`LockGuard`]: a held lock and its fencing token.

use quorumlock_proto::{FencingToken, SessionId};
use std::sync::Arc;

use tokio::sync::watch;
use tokio::time::Instant;

use super::claims::Claims;
use super::connection::{Fence, LockMode, Released};
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
    token: FencingToken,
    mode: LockMode,
    permits: u32,
    session: Arc<SessionShared>,
    released: bool,
}

impl LockGuard {
    pub(crate) fn new(
        session: Arc<SessionShared>,
        name: String,
        token: FencingToken,
        mode: LockMode,
        permits: u32,
    ) -> Self {
        LockGuard {
            name,
            token,
            mode,
            permits,
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
    pub fn token(&self) -> FencingToken {
        self.token
    }

    /// The mode the lock is held in: an exclusive guard's token fences
    /// writes and reads, a shared guard's reads only.
    pub fn mode(&self) -> LockMode {
        self.mode
    }

    /// The permits held, of a semaphore; 0 for a lock.
    pub fn permits(&self) -> u32 {
        self.permits
    }

    /// The session that holds the lock.
    pub fn session_id(&self) -> SessionId {
        self.session.key.id
    }

    /// The key (id and secret) of the session that holds the lock, which
    /// fenced writes present with the fence.
    pub fn session_key(&self) -> &super::SessionKey {
        &self.session.key
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

    /// Until when the cluster is known to keep the holding session, moving
    /// forward with every confirmed renewal; see
    /// [`Session::lease_deadline`](super::Session::lease_deadline).
    pub fn lease_deadline(&self) -> watch::Receiver<Instant> {
        self.session.lease_deadline()
    }

    /// Lets go of the guard without releasing the lock, for handing the
    /// lock and token to another process; returns its fence. The lock stays
    /// held as long as its session lives, and the session still counts it as
    /// held: locking the name again through it fails with
    /// [`ClientError::AlreadyHeld`].
    pub fn detach(mut self) -> Fence {
        self.released = true;
        self.fence()
    }

    /// Releases the lock; the first waiter is granted it at once.
    pub async fn release(mut self) -> Result<Released, ClientError> {
        self.released = true;
        // Until the answer is in, a new acquire of the name by this session
        // waits, so that it cannot be handed this grant's token again.
        let _releasing = Claims::start_release(&self.session, &self.name);
        self.session
            .client
            .release(&self.session.key, &self.name, self.token)
            .await
    }
}

impl std::fmt::Debug for LockGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LockGuard")
            .field("name", &self.name)
            .field("token", &self.token)
            .field("session", &self.session.key.id)
            .finish()
    }
}

impl Drop for LockGuard {
    fn drop(&mut self) {
        if self.released {
            return;
        }
        if self.session.lost_reason().is_some() {
            self.session.claims.forget(&self.name);
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            self.session.claims.forget(&self.name);
            return;
        };
        // The slot keeps the session alive, and a new acquire of the name by
        // it waiting, until the release is done.
        let slot = Claims::start_release(&self.session, &self.name);
        let token = self.token;
        runtime.spawn(async move {
            let session = slot.session();
            if let Err(error) = session.client.release(&session.key, slot.name(), token).await {
                tracing::debug!(lock = %slot.name(), %token, %error, "releasing a dropped lock guard failed");
            }
            drop(slot);
        });
    }
}
