//! [`LockGuard`]: a held lock and its fencing token.

use quorumlock_proto::{FencingToken, SessionId};
use std::sync::Arc;
use std::time::Duration;

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
    /// With a maximum hold: when the client counts it passed, and its length.
    hold: Option<(Instant, Duration)>,
    /// The task that feeds [`LockGuard::watch`] when there is a maximum
    /// hold; stopped with the guard.
    watcher: parking_lot::Mutex<Option<tokio::task::AbortHandle>>,
}

impl LockGuard {
    pub(crate) fn new(
        session: Arc<SessionShared>,
        name: String,
        token: FencingToken,
        mode: LockMode,
        permits: u32,
        hold: Option<(Instant, Duration)>,
    ) -> Self {
        LockGuard {
            name,
            token,
            mode,
            permits,
            session,
            released: false,
            hold,
            watcher: parking_lot::Mutex::new(None),
        }
    }

    /// When the grant's maximum hold time passes, as this client counts it
    /// (from no later than the grant, so no later than the leader ends it);
    /// `None` without one.
    pub fn hold_deadline(&self) -> Option<Instant> {
        self.hold.map(|(deadline, _)| deadline)
    }

    /// [`LostReason::MaxHold`] once the maximum hold time passed.
    fn held_too_long(&self) -> Option<LostReason> {
        self.hold
            .filter(|(deadline, _)| Instant::now() >= *deadline)
            .map(|(_, max_hold)| LostReason::MaxHold { max_hold })
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

    /// Why the lock is lost — its session is, or the grant passed its
    /// maximum hold time — or `None` while it is held.
    pub fn lost_reason(&self) -> Option<LostReason> {
        self.session.lost_reason().or_else(|| self.held_too_long())
    }

    /// Whether the lock is lost (it must then be assumed held by someone
    /// else).
    pub fn is_lost(&self) -> bool {
        self.lost_reason().is_some()
    }

    /// Resolves as soon as the lock is lost: its session is, or its
    /// maximum hold time passes.
    pub async fn lost(&self) -> LostReason {
        match self.hold {
            None => self.session.lost().await,
            Some((deadline, max_hold)) => tokio::select! {
                reason = self.session.lost() => reason,
                () = tokio::time::sleep_until(deadline) => LostReason::MaxHold { max_hold },
            },
        }
    }

    /// The lock's lost signal as a watch receiver: the session's, and with
    /// a maximum hold also [`LostReason::MaxHold`] once it passes.
    pub fn watch(&self) -> watch::Receiver<Option<LostReason>> {
        let Some((deadline, max_hold)) = self.hold else {
            return self.session.watch();
        };
        let (sender, receiver) = watch::channel(self.lost_reason());
        let mut session = self.session.watch();
        let task = tokio::spawn(async move {
            let reason = tokio::select! {
                changed = session.wait_for(Option::is_some) => match changed {
                    Ok(reason) => reason.clone(),
                    Err(_) => return,
                },
                () = tokio::time::sleep_until(deadline) => Some(LostReason::MaxHold { max_hold }),
            };
            sender.send_if_modified(|state| {
                let first = state.is_none();
                if first {
                    *state = reason;
                }
                first
            });
            // Kept open for receivers until the guard goes.
            std::future::pending::<()>().await;
        });
        if let Some(previous) = self.watcher.lock().replace(task.abort_handle()) {
            previous.abort();
        }
        receiver
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
        if let Some(watcher) = self.watcher.lock().take() {
            watcher.abort();
        }
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
