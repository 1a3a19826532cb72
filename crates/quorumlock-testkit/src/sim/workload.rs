//! The clients of a simulated run, the same for both engines.
//!
//! Each client loops the way the workers do: open a session, try to
//! acquire one of a few locks, write a record under the token into the fenced
//! store, release. One acquire in three is shared: a reader holds the lock
//! beside other readers, writes nothing and releases; one in six takes
//! permits of a semaphore of 2 instead, and releases them. One exclusive
//! acquire in four asks for hold terms: a lock-delay, a maximum hold time,
//! or both. A holder with a maximum hold time often works past it (a slow
//! worker whose session stays renewed): the leader ends the grant, and the
//! holder finds it gone at its next write or release. A try-acquire during
//! a lock-delay is refused and tried again later. A client renews its
//! session every third of its TTL, and sometimes pauses (the GC pause of the
//! seeds) past its TTL, then resumes with the token it held: the fenced
//! store must refuse it. An answer the client never gets leaves the outcome
//! unknown; the client then abandons its session to the lease keeper, as
//! the real client does with a session it can no longer trust.

use rand::rngs::StdRng;
use rand::Rng;

use super::checker::AckedWrite;
use quorumlock_core::consensus::{CommandResult, NodeId};
use quorumlock_core::lease::RenewError;
use quorumlock_core::lock::limits::MAX_HOLD_MS_MIN;
use quorumlock_core::lock::{
    Command, Credential, Fence, FencingToken, HoldTerms, LockError, LockMode, Outcome, SessionId,
};

/// Locks the clients contend for.
pub const LOCKS: usize = 2;
/// Shortest session TTL the clients ask for (the state machine's minimum).
pub const TTL_MS_MIN: u64 = 1_000;
/// Longest session TTL the clients ask for.
pub const TTL_MS_MAX: u64 = 2_000;
/// Longest pause between a client's commands.
pub const THINK_MS_MAX: u64 = 40;
/// A client gives up on a command unanswered for this long.
pub const ANSWER_MS_MAX: u64 = 1_500;

/// Permits of each semaphore the clients share.
pub const SEMAPHORE_PERMITS: u32 = 2;

/// Chance that an exclusive acquire asks for hold terms.
pub const TERMS_CHANCE: f64 = 0.25;
/// The lock-delay a grant with one asks for.
pub const LOCK_DELAY_MS: u32 = 300;
/// The maximum hold time a grant with one asks for: the shortest allowed.
pub const MAX_HOLD_MS: u32 = MAX_HOLD_MS_MIN;
/// Chance that a holder with a maximum hold time works past it before
/// its write.
pub const OVERSTAY_CHANCE: f64 = 0.5;

/// Hold terms drawn evenly from a lock-delay, a maximum hold time, or both.
pub fn draw_terms(rng: &mut StdRng) -> HoldTerms {
    let (lock_delay_ms, max_hold_ms) = match rng.gen_range(0..3) {
        0 => (LOCK_DELAY_MS, 0),
        1 => (0, MAX_HOLD_MS),
        _ => (LOCK_DELAY_MS, MAX_HOLD_MS),
    };
    HoldTerms {
        lock_delay_ms,
        max_hold_ms,
    }
}

/// Name of semaphore `index`.
pub fn semaphore_name(index: usize) -> String {
    format!("semaphore-{index}")
}

/// Name of lock `index`.
pub fn lock_name(index: usize) -> String {
    format!("lock-{index}")
}

/// The key a lock's holder writes.
pub fn key_of(lock: &str) -> String {
    format!("record/{lock}")
}

/// One simulated client.
#[derive(Debug)]
pub struct Client {
    /// Its index, for reports.
    pub id: usize,
    /// The node it sends commands and keepalives to.
    pub target: NodeId,
    ttl_ms: u64,
    /// Its session and the credential it opened it with.
    session: Option<(SessionId, Credential)>,
    /// The lock it holds, its token, and whether it wrote under it yet.
    holding: Option<(String, FencingToken, bool)>,
    in_flight: Option<(Command, u64)>,
    next_command_ms: u64,
    next_renew_ms: u64,
    paused_until_ms: u64,
    /// A pause of this length starts when the next lock is granted: the
    /// worst moment, between the grant and the write under it.
    pause_after_grant_ms: Option<u64>,
    writes: u64,
    /// Fenced writes or releases the store refused as stale.
    pub stale_refusals: u64,
    /// Try-acquires refused because the lock was in a lock-delay.
    pub delayed_refusals: u64,
    /// Grants found gone at the next write or release under them: the
    /// session expired and the lock went on, or the maximum hold passed.
    pub lost_grants: u64,
}

impl Client {
    /// A client without a session.
    pub fn new(id: usize, target: NodeId, rng: &mut StdRng) -> Client {
        Client {
            id,
            target,
            ttl_ms: rng.gen_range(TTL_MS_MIN..=TTL_MS_MAX),
            session: None,
            holding: None,
            in_flight: None,
            next_command_ms: 0,
            next_renew_ms: 0,
            paused_until_ms: 0,
            pause_after_grant_ms: None,
            writes: 0,
            stale_refusals: 0,
            delayed_refusals: 0,
            lost_grants: 0,
        }
    }

    /// The command it is waiting on and when it was sent.
    pub fn in_flight(&self) -> Option<&(Command, u64)> {
        self.in_flight.as_ref()
    }

    /// Whether it is in a pause.
    pub fn paused(&self, now_ms: u64) -> bool {
        now_ms < self.paused_until_ms
    }

    /// Stops everything the client does until `until_ms`, keeping what it
    /// believes it holds.
    pub fn pause(&mut self, until_ms: u64) {
        self.paused_until_ms = until_ms;
    }

    /// Pauses for `length_ms` once the next lock is granted.
    pub fn pause_after_grant(&mut self, length_ms: u64) {
        self.pause_after_grant_ms = Some(length_ms);
    }

    /// Ends any pause now and cancels a pending one.
    pub fn resume(&mut self, now_ms: u64) {
        self.paused_until_ms = now_ms;
        self.pause_after_grant_ms = None;
    }

    /// The next command to send, if the client is ready to send one.
    pub fn next_command(&mut self, now_ms: u64, rng: &mut StdRng) -> Option<Command> {
        if self.in_flight.is_some() || now_ms < self.next_command_ms || self.paused(now_ms) {
            return None;
        }
        let command = match (self.session.clone(), &self.holding) {
            (None, _) => {
                // As a node draws it from the OS; here from the run's seed.
                let secret: [u8; 32] = rng.gen();
                Command::OpenSession {
                    ttl_ms: self.ttl_ms,
                    owner: Credential::of_secret(&secret),
                }
            }
            (Some((session, by)), None) => match rng.gen_range(0..6) {
                0 => Command::AcquirePermits {
                    session,
                    semaphore: semaphore_name(rng.gen_range(0..LOCKS)),
                    permits: rng.gen_range(1..=SEMAPHORE_PERMITS),
                    limit: SEMAPHORE_PERMITS,
                    wait: false,
                    by,
                },
                draw => {
                    let mode = if draw <= 2 {
                        LockMode::Shared
                    } else {
                        LockMode::Exclusive
                    };
                    let lock = lock_name(rng.gen_range(0..LOCKS));
                    if mode == LockMode::Exclusive && rng.gen_bool(TERMS_CHANCE) {
                        Command::AcquireWithTerms {
                            session,
                            lock,
                            wait: false,
                            mode,
                            semaphore: None,
                            terms: draw_terms(rng),
                            by,
                        }
                    } else {
                        Command::acquire(session, lock, false, mode, by)
                    }
                }
            },
            (Some((session, by)), Some((lock, token, false))) => {
                self.writes += 1;
                Command::Put {
                    key: key_of(lock),
                    value: format!("client-{}-write-{}", self.id, self.writes).into_bytes(),
                    fence: Fence {
                        lock: lock.clone(),
                        token: *token,
                    },
                    session,
                    by,
                }
            }
            (Some((session, by)), Some((lock, token, true))) => Command::Release {
                session,
                lock: lock.clone(),
                token: *token,
                by,
            },
        };
        self.in_flight = Some((command.clone(), now_ms));
        Some(command)
    }

    /// The answer to the command in flight arrived; returns the write to
    /// record if it was an acknowledged fenced write.
    pub fn answered(&mut self, now_ms: u64, result: &CommandResult, rng: &mut StdRng) -> Option<AckedWrite> {
        let (command, invoked_ms) = self.in_flight.take()?;
        self.next_command_ms = now_ms + rng.gen_range(0..=THINK_MS_MAX);
        let mut acked = None;
        match (&command, result) {
            (_, Err(LockError::SessionNotFound { .. })) => self.lost_session(),
            (Command::OpenSession { owner, .. }, Ok(Outcome::SessionOpened { session, .. })) => {
                self.session = Some((*session, owner.clone()));
                self.holding = None;
                self.next_renew_ms = now_ms + self.ttl_ms / 3;
            }
            (
                Command::Acquire { lock, .. }
                | Command::AcquireWithTerms {
                    lock,
                    mode: LockMode::Exclusive,
                    ..
                },
                Ok(Outcome::Acquired { token }),
            ) => {
                self.granted(now_ms, lock, *token, false);
                if let Command::AcquireWithTerms { terms, .. } = &command {
                    self.overstay(now_ms, *terms, rng);
                }
            }
            // A reader or a semaphore holder writes nothing: next it releases.
            (
                Command::AcquireShared { lock, .. }
                | Command::AcquirePermits { semaphore: lock, .. }
                | Command::AcquireWithTerms {
                    lock,
                    mode: LockMode::Shared,
                    ..
                },
                Ok(Outcome::Acquired { token }),
            ) => self.granted(now_ms, lock, *token, true),
            (
                Command::Acquire { .. }
                | Command::AcquireShared { .. }
                | Command::AcquirePermits { .. }
                | Command::AcquireWithTerms { .. },
                Ok(Outcome::Busy { .. }),
            ) => {}
            // Its last holder's grant ended without a release: try later.
            (
                Command::Acquire { .. }
                | Command::AcquireShared { .. }
                | Command::AcquirePermits { .. }
                | Command::AcquireWithTerms { .. },
                Err(LockError::LockDelayed { .. }),
            ) => self.delayed_refusals += 1,
            (
                Command::Put {
                    key, value, fence, ..
                },
                Ok(Outcome::Written { .. }),
            ) => {
                if let Some(holding) = &mut self.holding {
                    holding.2 = true;
                }
                acked = Some(AckedWrite {
                    client: self.id,
                    key: key.clone(),
                    value: value.clone(),
                    fence: fence.clone(),
                    invoked_ms,
                    completed_ms: now_ms,
                });
            }
            // The lock was lost (the session expired and another holder
            // took it, the leader ended the grant at its maximum hold time,
            // or it was released already): start over.
            (Command::Put { .. } | Command::Release { .. }, Err(error)) => {
                if matches!(error, LockError::StaleToken { .. }) {
                    self.stale_refusals += 1;
                }
                if matches!(error, LockError::StaleToken { .. } | LockError::NotHolder { .. }) {
                    self.lost_grants += 1;
                }
                self.holding = None;
            }
            (Command::Release { .. }, Ok(Outcome::Released { .. })) => self.holding = None,
            // Anything else is a refusal the workload does not expect, such
            // as too many sessions: start over with a new session.
            _ => self.lost_session(),
        }
        acked
    }

    /// It holds `lock` under `token`; a reader (`done`) writes nothing
    /// under it and releases next. A pause waiting for a grant starts now.
    fn granted(&mut self, now_ms: u64, lock: &str, token: FencingToken, done: bool) {
        self.holding = Some((lock.to_string(), token, done));
        if let Some(length_ms) = self.pause_after_grant_ms.take() {
            self.paused_until_ms = now_ms + length_ms;
        }
    }

    /// With a maximum hold time, sometimes waits past it before the next
    /// command (the write under the grant), renewing its session meanwhile.
    fn overstay(&mut self, now_ms: u64, terms: HoldTerms, rng: &mut StdRng) {
        if terms.max_hold_ms == 0 || !rng.gen_bool(OVERSTAY_CHANCE) {
            return;
        }
        let max_hold_ms = u64::from(terms.max_hold_ms);
        self.next_command_ms = now_ms + rng.gen_range(max_hold_ms..=2 * max_hold_ms);
    }

    /// The command in flight will never be answered (crash, lost leadership,
    /// timeout): its outcome is unknown, so the session is abandoned.
    pub fn unknown(&mut self, now_ms: u64, rng: &mut StdRng) {
        self.in_flight = None;
        self.lost_session();
        self.next_command_ms = now_ms + rng.gen_range(0..=THINK_MS_MAX);
    }

    /// The command was refused before entering the log; send it again later.
    pub fn refused(&mut self, now_ms: u64, leader: Option<NodeId>, rng: &mut StdRng) {
        // Not in the log: the next command is drawn afresh (a refused write
        // is sent again with a new value).
        self.in_flight = None;
        if let Some(leader) = leader {
            self.target = leader;
        }
        self.next_command_ms = now_ms + rng.gen_range(1..=THINK_MS_MAX);
    }

    /// The session to renew now, if a renewal is due.
    pub fn renewal_due(&mut self, now_ms: u64) -> Option<SessionId> {
        let (session, _) = self.session.as_ref()?;
        let session = *session;
        if self.paused(now_ms) || now_ms < self.next_renew_ms {
            return None;
        }
        self.next_renew_ms = now_ms + self.ttl_ms / 3;
        Some(session)
    }

    /// The answer to a renewal.
    pub fn renewed(&mut self, now_ms: u64, result: Result<(), RenewError>, leader: Option<NodeId>) {
        match result {
            Ok(()) => {}
            Err(RenewError::NotFound) => self.lost_session(),
            Err(RenewError::NotLeader) => {
                // Ask the leader (or the next node) again soon.
                if let Some(leader) = leader {
                    self.target = leader;
                }
                self.next_renew_ms = now_ms + 20;
            }
        }
    }

    fn lost_session(&mut self) {
        self.session = None;
        self.holding = None;
    }
}
