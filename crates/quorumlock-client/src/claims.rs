//! Which lock names a session has claimed: a grant held by a guard, an
//! acquire in flight, or a release in flight.
//!
//! The cluster hands a session that already holds a lock the same token
//! again when it re-acquires it, so without this registry one session could
//! end up with two guards for one grant, and a background release of a
//! dropped guard could land after a new acquire of the same name and free
//! the lock under the new guard. Every acquire therefore claims the name
//! first: a name already claimed is refused, and a name whose release is
//! still in flight is claimed only once that release is done.

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::Mutex;
use tokio::sync::watch;

use super::session::SessionShared;

/// The state of one claimed name.
enum NameState {
    /// An acquire is in flight, or a guard holds (or a detached guard held)
    /// the lock.
    Claimed,
    /// A release is in flight; its sender is dropped once it is done.
    Releasing(watch::Receiver<()>),
}

/// The answer to an attempt to claim a name.
pub(crate) enum ClaimAttempt {
    /// The name is now claimed by the caller.
    Claimed,
    /// The session already has the name claimed.
    AlreadyClaimed,
    /// A release of the name is in flight; wait for the receiver's sender to
    /// go away, then try again.
    WaitForRelease(watch::Receiver<()>),
}

/// The names one session has claimed.
#[derive(Default)]
pub(crate) struct Claims {
    names: Mutex<HashMap<String, NameState>>,
}

impl Claims {
    /// Claims `name` if nothing of this session holds or moves it.
    pub(crate) fn try_claim(&self, name: &str) -> ClaimAttempt {
        let mut names = self.names.lock();
        match names.get(name) {
            None => {
                names.insert(name.to_string(), NameState::Claimed);
                ClaimAttempt::Claimed
            }
            Some(NameState::Claimed) => ClaimAttempt::AlreadyClaimed,
            Some(NameState::Releasing(done)) => ClaimAttempt::WaitForRelease(done.clone()),
        }
    }

    /// Gives up a claim that needs no release.
    pub(crate) fn forget(&self, name: &str) {
        self.names.lock().remove(name);
    }

    /// Marks `name` as being released until the returned slot is dropped.
    pub(crate) fn start_release(session: &Arc<SessionShared>, name: &str) -> ReleaseSlot {
        let (done, receiver) = watch::channel(());
        session
            .claims
            .names
            .lock()
            .insert(name.to_string(), NameState::Releasing(receiver));
        ReleaseSlot {
            session: session.clone(),
            name: name.to_string(),
            _done: done,
        }
    }
}

/// A release in flight: while it lives, a new acquire of the name by the same
/// session waits. Dropping it (the release finished, failed or was
/// cancelled) frees the name and wakes those acquires.
pub(crate) struct ReleaseSlot {
    session: Arc<SessionShared>,
    name: String,
    /// Dropped after the name is removed, so that a woken acquire finds it
    /// free.
    _done: watch::Sender<()>,
}

impl ReleaseSlot {
    /// The session releasing.
    pub(crate) fn session(&self) -> &Arc<SessionShared> {
        &self.session
    }

    /// The name being released.
    pub(crate) fn name(&self) -> &str {
        &self.name
    }
}

impl Drop for ReleaseSlot {
    fn drop(&mut self) {
        self.session.claims.forget(&self.name);
    }
}

/// Releases `slot`'s lock if its session turns out to hold it: for an
/// acquire that was cancelled or failed after it was sent, whose grant (if
/// any) nobody would otherwise release while the session lives.
pub(crate) async fn release_if_holder(slot: ReleaseSlot) {
    let session = slot.session();
    let name = slot.name();
    match session.client.describe(name).await {
        Ok(described) => {
            let mine = described
                .holders
                .iter()
                .find(|holder| holder.session_id == session.key.id);
            if let Some(holder) = mine {
                if let Err(error) = session.client.release(&session.key, name, holder.token).await {
                    tracing::debug!(lock = %name, %error, "releasing the grant of an abandoned acquire failed");
                }
            }
        }
        Err(error) => {
            tracing::debug!(lock = %name, %error, "checking the holder after an abandoned acquire failed");
        }
    }
    drop(slot);
}
