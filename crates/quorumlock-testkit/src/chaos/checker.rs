//! The checks run on a recorded history after the run.
//!
//! Each check takes the operations (and, for liveness, the times faults were
//! healed) and returns the violations it found, by kind. "Before" always
//! means real time: operation A precedes B when A completed before B was
//! invoked; operations that overlap may have taken effect in either order.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::history::{Call, Op, Return, FINAL_READER};
use super::workload::SEMAPHORE_LIMIT;

/// States the linearizability search may visit for one lock before it gives
/// up and reports that lock as inconclusive.
pub const LINEARIZABILITY_STATES_MAX: usize = 2_000_000;

/// What a violation breaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ViolationKind {
    /// The fenced store accepted (or showed) a token lower than one it had
    /// accepted before for that key.
    MutualExclusion,
    /// A grant's token was not larger than an earlier grant's.
    TokenOrder,
    /// No order of the operations explains what the clients saw.
    Linearizability,
    /// An acknowledged write was missing after all nodes restarted.
    LostWrite,
    /// Operations did not resume within the bound after a fault healed.
    Liveness,
    /// A node process exited by itself during the run.
    NodeExit,
    /// A node started on a damaged data directory did not refuse it.
    DamageUnrefused,
    /// A node started with `--repair` after a disk fault did not finish
    /// its repair within the bound.
    RepairUnfinished,
    /// A read under a shared hold showed a write made under a token newer
    /// than the hold's: a writer held the lock beside a reader.
    SharedRead,
    /// A description of the semaphore showed more permits held than its
    /// limit, a limit other than the one every acquire named, or a holder
    /// no acquire can explain.
    Semaphore,
}

impl ViolationKind {
    /// Every kind, in the order the summary prints them.
    pub const ALL: [ViolationKind; 10] = [
        ViolationKind::MutualExclusion,
        ViolationKind::TokenOrder,
        ViolationKind::Linearizability,
        ViolationKind::LostWrite,
        ViolationKind::Liveness,
        ViolationKind::NodeExit,
        ViolationKind::DamageUnrefused,
        ViolationKind::RepairUnfinished,
        ViolationKind::SharedRead,
        ViolationKind::Semaphore,
    ];

    /// The name printed in the summary.
    pub fn name(self) -> &'static str {
        match self {
            ViolationKind::MutualExclusion => "mutual_exclusion",
            ViolationKind::TokenOrder => "token_order",
            ViolationKind::Linearizability => "linearizability",
            ViolationKind::LostWrite => "lost_write",
            ViolationKind::Liveness => "liveness",
            ViolationKind::NodeExit => "node_exit",
            ViolationKind::DamageUnrefused => "damage_unrefused",
            ViolationKind::RepairUnfinished => "repair_unfinished",
            ViolationKind::SharedRead => "shared_read",
            ViolationKind::Semaphore => "semaphore",
        }
    }
}

/// One violation and what shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    /// What it breaks.
    pub kind: ViolationKind,
    /// The operations involved, in words.
    pub detail: String,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.kind.name(), self.detail)
    }
}

fn describe(op: &Op) -> String {
    let complete = op
        .complete_us
        .map_or_else(|| "never".to_string(), |at| at.to_string());
    format!(
        "[process {} session {} {:?} -> {:?} at {}..{} us]",
        op.process, op.session, op.call, op.ret, op.invoke_us, complete
    )
}

/// A token some operation observed on a lock or key, for the real-time order
/// checks.
struct Observation<'a> {
    op: &'a Op,
    token: u64,
}

/// Pairs (A, B) where A precedes B in real time and B's token is lower than
/// A's (or not higher, when `strict`); `same` says which pairs are allowed
/// to carry equal tokens.
fn real_time_regressions<'a>(
    observations: &[Observation<'a>],
    strict: bool,
    same: impl Fn(&Op, &Op) -> bool,
) -> Vec<(&'a Op, &'a Op)> {
    let mut by_complete: Vec<&Observation> = observations
        .iter()
        .filter(|observation| observation.op.complete_us.is_some())
        .collect();
    by_complete.sort_by_key(|observation| observation.op.complete_or_max());
    let mut by_invoke: Vec<&Observation> = observations.iter().collect();
    by_invoke.sort_by_key(|observation| observation.op.invoke_us);
    let mut found = Vec::new();
    let mut highest: Option<&Observation> = None;
    let mut next = 0;
    for later in by_invoke {
        while next < by_complete.len() && by_complete[next].op.complete_or_max() < later.op.invoke_us {
            if highest.is_none_or(|best| by_complete[next].token > best.token) {
                highest = Some(by_complete[next]);
            }
            next += 1;
        }
        if let Some(earlier) = highest {
            let regressed = if strict {
                later.token < earlier.token || (later.token == earlier.token && !same(earlier.op, later.op))
            } else {
                later.token < earlier.token
            };
            if regressed {
                found.push((earlier.op, later.op));
            }
        }
    }
    found
}

/// Mutual exclusion as the storage sees it: per key, the tokens of
/// acknowledged writes and of the writes reads showed never go down in real
/// time. A lower token after a higher one means the store accepted a write
/// from a holder whose lock had already passed on.
pub fn check_storage_order(ops: &[Op]) -> Vec<Violation> {
    let mut by_key: BTreeMap<&str, Vec<Observation>> = BTreeMap::new();
    for op in ops {
        let observed = match (&op.call, &op.ret) {
            (Call::Put { key, token, .. }, Return::Written) => Some((key, *token)),
            (
                Call::Get { key, .. } | Call::ReadShared { key, .. },
                Return::Read {
                    token: Some(token), ..
                },
            ) => Some((key, *token)),
            _ => None,
        };
        if let Some((key, token)) = observed {
            by_key.entry(key).or_default().push(Observation { op, token });
        }
    }
    let mut violations = Vec::new();
    for (key, observations) in by_key {
        for (earlier, later) in real_time_regressions(&observations, false, |_, _| true) {
            violations.push(Violation {
                kind: ViolationKind::MutualExclusion,
                detail: format!(
                    "key {key:?}: {} came after {}, with a lower token",
                    describe(later),
                    describe(earlier)
                ),
            });
        }
    }
    violations
}

/// Token monotonicity: per lock (or semaphore), a grant that follows
/// another in real time carries a strictly larger token, and no two grants
/// anywhere carry the same token. Every grant, of a lock or of a
/// semaphore's permits, takes the next token of one counter. The one
/// exception is a session granted the same lock again while it still holds
/// it, which the cluster answers with the same grant.
pub fn check_token_order(ops: &[Op]) -> Vec<Violation> {
    let same_grant = |a: &Op, b: &Op| a.session == b.session && a.call.lock() == b.call.lock();
    let mut by_lock: BTreeMap<&str, Vec<Observation>> = BTreeMap::new();
    let mut by_token: HashMap<u64, &Op> = HashMap::new();
    let mut violations = Vec::new();
    // An acquire by a session that still holds the lock answers with the
    // token of the hold it has (the retry rule), which may be older than a
    // grant another session got meanwhile: a shared or semaphore hold whose
    // release was lost stays beside new holders. Such an answer is no new
    // grant. It is recognised by an earlier acquire of the same session and
    // lock that answered the same token, or whose answer was lost (it may
    // have been granted then); only new grants are held to real-time order.
    let acquires: Vec<&Op> = ops
        .iter()
        .filter(|op| {
            matches!(
                op.call,
                Call::Acquire { .. } | Call::AcquireShared { .. } | Call::AcquirePermits { .. }
            )
        })
        .collect();
    let held_before = |op: &Op, token: u64| {
        acquires.iter().any(|earlier| {
            earlier.invoke_us < op.invoke_us
                && same_grant(earlier, op)
                && match &earlier.ret {
                    Return::Granted { token: earlier_token } => *earlier_token == token,
                    Return::Unknown { .. } => true,
                    _ => false,
                }
        })
    };
    for op in ops {
        if let (
            Call::Acquire { lock }
            | Call::AcquireShared { lock }
            | Call::AcquirePermits { semaphore: lock, .. },
            Return::Granted { token },
        ) = (&op.call, &op.ret)
        {
            if !held_before(op, *token) {
                by_lock
                    .entry(lock)
                    .or_default()
                    .push(Observation { op, token: *token });
            }
            match by_token.get(token) {
                Some(other) if !same_grant(other, op) => violations.push(Violation {
                    kind: ViolationKind::TokenOrder,
                    detail: format!(
                        "token {token} granted twice: {} and {}",
                        describe(other),
                        describe(op)
                    ),
                }),
                Some(_) => {}
                None => {
                    by_token.insert(*token, op);
                }
            }
        }
    }
    for (lock, observations) in by_lock {
        for (earlier, later) in real_time_regressions(&observations, true, same_grant) {
            violations.push(Violation {
                kind: ViolationKind::TokenOrder,
                detail: format!(
                    "lock {lock:?}: {} was granted after {} without a larger token",
                    describe(later),
                    describe(earlier)
                ),
            });
        }
    }
    violations
}

/// Readers see no write newer than their hold: a read fenced by a shared
/// hold of token T that was answered shows a write under a token below T.
/// A writer is granted only once every reader let go, and every grant's
/// token is larger than every earlier one, so a write under a token above T
/// was accepted while the reader held the lock.
pub fn check_shared_reads(ops: &[Op]) -> Vec<Violation> {
    ops.iter()
        .filter_map(|op| match (&op.call, &op.ret) {
            (
                Call::ReadShared { token: held, .. },
                Return::Read {
                    token: Some(written), ..
                },
            ) if written >= held => Some(Violation {
                kind: ViolationKind::SharedRead,
                detail: format!(
                    "{} read a write under token {written} while holding token {held} shared",
                    describe(op)
                ),
            }),
            _ => None,
        })
        .collect()
}

/// The outcome of [`check_semaphores`].
#[derive(Debug, Clone, Default)]
pub struct SemaphoreReport {
    /// Answered descriptions checked.
    pub describes: usize,
    /// Violations found.
    pub violations: Vec<Violation>,
}

/// What a semaphore's answered descriptions show is possible:
/// - the permits of its holders add up to at most its limit, and the limit
///   is [`SEMAPHORE_LIMIT`], the one every acquire named (a description
///   without holders may show no semaphore at all: the cluster keeps none
///   that nobody holds or waits for);
/// - every holder (session, token) is explained by an acquire of the
///   semaphore by that session, invoked before the description completed,
///   that either was answered with that token or whose answer was lost (an
///   acquire of unknown outcome may have been granted a token the history
///   never shows). An acquire answered "not granted" explains nothing.
///
/// Nothing here compares when clients believed they held: a paused client
/// may believe it holds after its session expired and its permits passed
/// on, and that is expected.
pub fn check_semaphores(ops: &[Op]) -> SemaphoreReport {
    // Per (semaphore, session): the grants (token, invoked) and the
    // invocations of acquires of unknown outcome.
    let mut granted: HashMap<(&str, u64), Vec<(u64, u64)>> = HashMap::new();
    let mut maybe_granted: HashMap<(&str, u64), Vec<u64>> = HashMap::new();
    for op in ops {
        let Call::AcquirePermits { semaphore, .. } = &op.call else {
            continue;
        };
        let key = (semaphore.as_str(), op.session);
        match &op.ret {
            Return::Granted { token } => granted.entry(key).or_default().push((*token, op.invoke_us)),
            Return::Unknown { .. } => maybe_granted.entry(key).or_default().push(op.invoke_us),
            _ => {}
        }
    }
    let mut report = SemaphoreReport::default();
    for op in ops {
        let (Call::DescribeSemaphore { semaphore }, Return::Described { limit, holders }) =
            (&op.call, &op.ret)
        else {
            continue;
        };
        report.describes += 1;
        let mut problems = Vec::new();
        let used: u64 = holders.iter().map(|&(_, _, permits)| u64::from(permits)).sum();
        match limit {
            Some(limit) if *limit != SEMAPHORE_LIMIT => {
                problems.push(format!(
                    "a limit of {limit} where every acquire named {SEMAPHORE_LIMIT}"
                ));
            }
            None if !holders.is_empty() => problems.push("holders but no limit".to_string()),
            _ => {}
        }
        let bound = limit.unwrap_or(SEMAPHORE_LIMIT);
        if used > u64::from(bound) {
            problems.push(format!("{used} permits held of {bound}"));
        }
        let before = op.complete_or_max();
        for &(session, token, _) in holders {
            let key = (semaphore.as_str(), session);
            let by_grant = granted.get(&key).is_some_and(|grants| {
                grants
                    .iter()
                    .any(|&(granted, at)| granted == token && at < before)
            });
            let by_lost_answer = maybe_granted
                .get(&key)
                .is_some_and(|invoked| invoked.iter().any(|&at| at < before));
            if !by_grant && !by_lost_answer {
                problems.push(format!(
                    "holder session {session} with token {token}, which no acquire by that session explains"
                ));
            }
        }
        for problem in problems {
            report.violations.push(Violation {
                kind: ViolationKind::Semaphore,
                detail: format!("semaphore {semaphore:?}: {problem}, in {}", describe(op)),
            });
        }
    }
    report
}

/// No acknowledged write lost: the final read of every key (made by
/// [`FINAL_READER`] after every node was killed and restarted) shows a
/// write whose token is at least that of every acknowledged write of the
/// key. A later write may have replaced an acknowledged one, but only with a
/// larger token.
pub fn check_lost_writes(ops: &[Op]) -> Vec<Violation> {
    let mut acknowledged: BTreeMap<&str, &Op> = BTreeMap::new();
    for op in ops {
        if let (Call::Put { key, token, .. }, Return::Written) = (&op.call, &op.ret) {
            let best = acknowledged.entry(key).or_insert(op);
            if let Call::Put {
                token: best_token, ..
            } = &best.call
            {
                if token > best_token {
                    *best = op;
                }
            }
        }
    }
    let mut finals: HashMap<&str, &Op> = HashMap::new();
    for op in ops.iter().filter(|op| op.process == FINAL_READER) {
        if let Call::Get { key, .. } = &op.call {
            finals.insert(key, op);
        }
    }
    let mut violations = Vec::new();
    for (key, written) in acknowledged {
        let Call::Put {
            token: written_token, ..
        } = &written.call
        else {
            continue;
        };
        let problem = match finals.get(key).map(|op| &op.ret) {
            None => Some("the key was never read at the end".to_string()),
            Some(Return::Read { token, .. }) if token.unwrap_or(0) >= *written_token => None,
            Some(Return::Read { token: None, .. }) => Some("the final read found the key unset".to_string()),
            Some(Return::Read {
                token: Some(token), ..
            }) => Some(format!("the final read found token {token}")),
            Some(other) => Some(format!("the final read did not answer: {other:?}")),
        };
        if let Some(problem) = problem {
            violations.push(Violation {
                kind: ViolationKind::LostWrite,
                detail: format!("key {key:?}: {problem}, after {}", describe(written)),
            });
        }
    }
    violations
}

/// The longest stretch of `[start_us, end_us]` in which no operation
/// completed successfully: its length and start, in microseconds.
pub fn longest_unavailability(ops: &[Op], start_us: u64, end_us: u64) -> (u64, u64) {
    let mut completions: Vec<u64> = ops
        .iter()
        .filter(|op| op.process != FINAL_READER && op.ret.is_ok())
        .filter_map(|op| op.complete_us)
        .filter(|at| (start_us..=end_us).contains(at))
        .collect();
    completions.sort_unstable();
    let mut longest = (0, start_us);
    let mut previous = start_us;
    for at in completions.into_iter().chain(std::iter::once(end_us)) {
        if at.saturating_sub(previous) > longest.0 {
            longest = (at - previous, previous);
        }
        previous = at;
    }
    longest
}

/// Liveness: after every heal (all nodes up, connected, unpaused and with
/// true clocks again) some operation completes successfully within
/// `bound_us`. Heals closer than `bound_us` to the end of the workload are
/// not judged.
pub fn check_liveness(ops: &[Op], heals_us: &[u64], workload_end_us: u64, bound_us: u64) -> Vec<Violation> {
    let mut completions: Vec<u64> = ops
        .iter()
        .filter(|op| op.process != FINAL_READER && op.ret.is_ok())
        .filter_map(|op| op.complete_us)
        .collect();
    completions.sort_unstable();
    let mut violations = Vec::new();
    for &heal in heals_us {
        if heal.saturating_add(bound_us) > workload_end_us {
            continue;
        }
        let first = completions.partition_point(|&at| at < heal);
        let resumed = completions.get(first).copied();
        if resumed.is_none_or(|at| at - heal > bound_us) {
            violations.push(Violation {
                kind: ViolationKind::Liveness,
                detail: format!(
                    "no operation succeeded within {} ms of the heal at {heal} us (first at {})",
                    bound_us / 1_000,
                    resumed.map_or_else(|| "never".to_string(), |at| format!("{at} us"))
                ),
            });
        }
    }
    violations
}

/// The lock holder as the model knows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Holder {
    /// Nobody holds the lock.
    Free,
    /// The grant with this token holds it.
    Known(u64),
    /// A grant whose answer was lost (an acquire of unknown outcome) may
    /// hold it; its token is unknown.
    Unknown,
}

/// The sequential model of one lock and the key it guards.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct LockModel {
    holder: Holder,
    /// The largest token granted so far that the history shows; tokens
    /// granted in acquires of unknown outcome are not counted, so this is a
    /// lower bound.
    token_floor: u64,
    /// The value (interned) and token of the last write to the key.
    stored: Option<(u32, u64)>,
}

/// One operation, reduced to what the model needs.
#[derive(Debug, Clone)]
struct ModelOp {
    invoke_us: u64,
    complete_us: u64,
    call: ModelCall,
    /// May have had no effect at all.
    may_skip: bool,
    /// Has no completion: a write or release of unknown outcome may take
    /// effect at any time after its invocation while its token holds.
    open: bool,
    index: usize,
}

#[derive(Debug, Clone)]
enum ModelCall {
    AcquireGranted(u64),
    AcquireUnknown,
    PutWritten(u64, u32),
    PutFailed(u64),
    PutUnknown(u64, u32),
    Read(Option<(u32, u64)>),
    ReleaseOk(u64),
    ReleaseFailed(u64),
    ReleaseUnknown(u64),
}

impl LockModel {
    /// The states the operation may lead to; none if it cannot happen now.
    ///
    /// Session expiry makes the model nondeterministic: the cluster ends a
    /// session one TTL after its last renewal, through the log, and the
    /// clients do not see when. A history shows an expiry only through its
    /// effects, so the model applies it lazily, where an effect needs it:
    /// - a grant with a new, larger token may take the lock from whoever the
    ///   model thinks holds it (that holder's session expired, or it was an
    ///   unrecorded background release);
    /// - a fenced write or release refused for a token the model thinks is
    ///   current means the lease ran out just before: the lock is then free.
    ///
    /// What stays strict is what safety is about: a write or release is
    /// acknowledged only for the current grant, a token once displaced never
    /// becomes current again, and a read shows the last write.
    fn step(&self, call: &ModelCall) -> Vec<LockModel> {
        let with_holder = |holder| LockModel {
            holder,
            ..self.clone()
        };
        match *call {
            ModelCall::AcquireGranted(token) if self.holder == Holder::Known(token) => vec![self.clone()],
            ModelCall::AcquireGranted(token) if token > self.token_floor => vec![LockModel {
                holder: Holder::Known(token),
                token_floor: token,
                stored: self.stored,
            }],
            ModelCall::AcquireGranted(_) => vec![],
            ModelCall::AcquireUnknown => vec![self.clone(), with_holder(Holder::Unknown)],
            ModelCall::PutWritten(token, value) if self.holder == Holder::Known(token) => vec![LockModel {
                stored: Some((value, token)),
                ..self.clone()
            }],
            ModelCall::PutWritten(..) => vec![],
            ModelCall::PutFailed(token) | ModelCall::ReleaseFailed(token)
                if self.holder == Holder::Known(token) =>
            {
                vec![with_holder(Holder::Free)]
            }
            ModelCall::PutFailed(_) | ModelCall::ReleaseFailed(_) => vec![self.clone()],
            ModelCall::PutUnknown(token, value) if self.holder == Holder::Known(token) => vec![
                self.clone(),
                LockModel {
                    stored: Some((value, token)),
                    ..self.clone()
                },
            ],
            ModelCall::PutUnknown(..) => vec![self.clone()],
            ModelCall::Read(seen) if seen == self.stored => vec![self.clone()],
            ModelCall::Read(_) => vec![],
            ModelCall::ReleaseOk(token) if self.holder == Holder::Known(token) => {
                vec![with_holder(Holder::Free)]
            }
            ModelCall::ReleaseOk(_) => vec![],
            ModelCall::ReleaseUnknown(token) if self.holder == Holder::Known(token) => {
                vec![self.clone(), with_holder(Holder::Free)]
            }
            ModelCall::ReleaseUnknown(_) => vec![self.clone()],
        }
    }
}

/// What the linearizability check concluded for one lock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Linearizable {
    /// An order exists.
    Yes,
    /// No order exists; the text says how far the search got.
    No(String),
    /// The search visited [`LINEARIZABILITY_STATES_MAX`] states without
    /// deciding.
    Inconclusive,
}

/// The outcome of [`check_linearizability`].
#[derive(Debug, Clone, Default)]
pub struct LinearizabilityReport {
    /// Locks checked.
    pub locks: usize,
    /// Operations checked.
    pub ops: usize,
    /// Locks the search could not decide within its bound.
    pub inconclusive: Vec<String>,
    /// Locks without a linearization.
    pub violations: Vec<Violation>,
}

/// Linearizability of the lock + key-value history against the sequential
/// model of [`LockModel::step`], lock by lock.
///
/// The history is split per lock (each lock guards its own key): locks
/// share only the token counter, whose one property that matters here —
/// tokens grow — holds per lock too, so checking each part alone finds every
/// violation that involves one lock and keeps the search small. The search
/// is Wing and Gong's, with Lowe's memoization of (operations done, model
/// state) as in Porcupine: depth first, it linearizes next any operation
/// invoked before every pending operation's completion, trying every state
/// the model allows. An operation whose outcome is unknown may have had no
/// effect. A fenced write or release of unknown outcome may also take
/// effect long after its client gave up on it (a command the old leader
/// logged can commit under the next one), for as long as its token holds
/// the lock: it has no completion, as Jepsen's `:info`. An acquire of
/// unknown outcome is bounded by the time its client gave up: its late
/// effect, a grant that displaces the holder, is one the model already
/// allows any later grant (expiry is applied lazily), and leaving it open
/// made the search undecided on long histories.
pub fn check_linearizability(ops: &[Op]) -> LinearizabilityReport {
    let mut values: HashMap<String, u32> = HashMap::new();
    let mut intern = |value: &str| -> u32 {
        if let Some(&id) = values.get(value) {
            return id;
        }
        let id = u32::try_from(values.len()).expect("fewer than 2^32 values in one history");
        values.insert(value.to_string(), id);
        id
    };
    let mut by_lock: BTreeMap<&str, Vec<ModelOp>> = BTreeMap::new();
    for (index, op) in ops.iter().enumerate() {
        let (call, may_skip) = match (&op.call, &op.ret) {
            (Call::Acquire { .. }, Return::Granted { token }) => (ModelCall::AcquireGranted(*token), false),
            (Call::Acquire { .. }, Return::Unknown { .. }) => (ModelCall::AcquireUnknown, true),
            (Call::Put { token, .. }, Return::Failed { .. }) => (ModelCall::PutFailed(*token), false),
            (Call::Put { token, value, .. }, Return::Written) => {
                (ModelCall::PutWritten(*token, intern(value)), false)
            }
            (Call::Put { token, value, .. }, Return::Unknown { .. }) => {
                (ModelCall::PutUnknown(*token, intern(value)), true)
            }
            (Call::Get { .. } | Call::ReadShared { .. }, Return::Read { value, token }) => {
                let seen = match (value, token) {
                    (Some(value), Some(token)) => Some((intern(value), *token)),
                    _ => None,
                };
                (ModelCall::Read(seen), false)
            }
            (Call::Release { token, .. }, Return::Released) => (ModelCall::ReleaseOk(*token), false),
            (Call::Release { token, .. }, Return::Failed { .. }) => (ModelCall::ReleaseFailed(*token), false),
            (Call::Release { token, .. }, Return::Unknown { .. }) => {
                (ModelCall::ReleaseUnknown(*token), true)
            }
            // A refused acquire and a failed read change nothing and
            // constrain nothing: they are left out. So are shared acquires
            // and releases: the model has one holder, and a reader's hold
            // changes neither it nor the stored value (a writer waits for
            // it; `check_shared_reads` checks what readers saw). The
            // semaphore guards no key: `check_semaphores` checks it.
            _ => continue,
        };
        let open = matches!(call, ModelCall::PutUnknown(..) | ModelCall::ReleaseUnknown(_));
        by_lock.entry(op.call.lock()).or_default().push(ModelOp {
            invoke_us: op.invoke_us,
            complete_us: if open { u64::MAX } else { op.complete_or_max() },
            call,
            may_skip,
            open,
            index,
        });
    }
    let mut report = LinearizabilityReport::default();
    for (lock, mut lock_ops) in by_lock {
        lock_ops.sort_by_key(|op| (op.invoke_us, op.complete_us));
        report.locks += 1;
        report.ops += lock_ops.len();
        match search(&lock_ops, ops) {
            Linearizable::Yes => {}
            Linearizable::No(why) => report.violations.push(Violation {
                kind: ViolationKind::Linearizability,
                detail: format!("lock {lock:?}: {why}"),
            }),
            Linearizable::Inconclusive => report.inconclusive.push(lock.to_string()),
        }
    }
    report
}

struct Frame {
    done: Vec<u64>,
    /// The Zobrist hash of `done` (see `zobrist_keys`).
    done_hash: u128,
    /// How many operations that must be placed are not yet.
    required_left: usize,
    /// (operation, successor state) pairs still to try.
    choices: Vec<(usize, LockModel)>,
}

/// A random 128-bit key per operation (fixed seed), whose XOR over the
/// operations done stands for the set in the search's memo: a history has
/// tens of thousands of operations per lock, and a set of them kept per
/// visited state cost gigabytes where a search went back far.
fn zobrist_keys(count: usize) -> Vec<u128> {
    let mut rng = StdRng::seed_from_u64(0x9E37_79B9_7F4A_7C15);
    (0..count).map(|_| rng.gen()).collect()
}

fn is_done(done: &[u64], index: usize) -> bool {
    done[index / 64] & (1 << (index % 64)) != 0
}

/// The operations without a completion: a bit per operation, as in
/// `done`, and their indexes.
struct OpenOps {
    mask: Vec<u64>,
    indexes: Vec<usize>,
}

impl OpenOps {
    fn of(ops: &[ModelOp]) -> OpenOps {
        let mut mask = vec![0u64; ops.len().div_ceil(64)];
        let mut indexes = Vec::new();
        for (index, _) in ops.iter().enumerate().filter(|(_, op)| op.open) {
            mask[index / 64] |= 1 << (index % 64);
            indexes.push(index);
        }
        OpenOps { mask, indexes }
    }
}

fn choices(
    ops: &[ModelOp],
    open: &OpenOps,
    done: &[u64],
    state: &LockModel,
) -> (Vec<(usize, LockModel)>, Option<usize>) {
    // Operations still to place start at the first word with one not yet
    // done; open ones stay candidates wherever they are, and are looked at
    // through their own list before that word.
    let start = done
        .iter()
        .zip(&open.mask)
        .position(|(done_word, open_word)| done_word | open_word != u64::MAX)
        .map_or(ops.len(), |word| word * 64);
    // Operations are in invocation order and complete after they begin, so
    // none invoked after the earliest completion so far can complete
    // earlier.
    let mut first_due: Option<usize> = None;
    for (index, op) in ops.iter().enumerate().skip(start) {
        if first_due.is_some_and(|due| op.invoke_us > ops[due].complete_us) {
            break;
        }
        if !is_done(done, index) && first_due.is_none_or(|due| op.complete_us < ops[due].complete_us) {
            first_due = Some(index);
        }
    }
    let Some(first_due) = first_due else {
        return (Vec::new(), None);
    };
    let due_us = ops[first_due].complete_us;
    // The search tries the last choice first. Open operations stay
    // candidates for as long as their token holds, so they go first in the
    // list: placed only where the others cannot go on, they do not multiply
    // the states searched at every step.
    let mut maybe = Vec::new();
    let mut found = Vec::new();
    let earlier = open.indexes.iter().take_while(|index| **index < start);
    let candidates = earlier.copied().chain(start..ops.len());
    for (index, op) in candidates.map(|index| (index, &ops[index])) {
        if op.invoke_us > due_us {
            break;
        }
        if is_done(done, index) {
            continue;
        }
        let steps = state.step(&op.call).into_iter();
        if op.open {
            // Placed where it changes nothing, it is the same order as
            // left out.
            maybe.extend(steps.filter(|next| next != state).map(|next| (index, next)));
        } else {
            found.extend(steps.map(|next| (index, next)));
        }
    }
    maybe.append(&mut found);
    (maybe, Some(first_due))
}

fn search(ops: &[ModelOp], history: &[Op]) -> Linearizable {
    let words = ops.len().div_ceil(64);
    let initial = LockModel {
        holder: Holder::Free,
        token_floor: 0,
        stored: None,
    };
    let required = ops.iter().filter(|op| !op.may_skip).count();
    let keys = zobrist_keys(ops.len());
    let mut seen: HashSet<(u128, LockModel)> = HashSet::new();
    let done = vec![0u64; words];
    if required == 0 {
        return Linearizable::Yes;
    }
    let open = OpenOps::of(ops);
    let (first_choices, mut stuck_at) = choices(ops, &open, &done, &initial);
    let mut deepest = 0usize;
    let mut stack = vec![Frame {
        done,
        done_hash: 0,
        required_left: required,
        choices: first_choices,
    }];
    while let Some(frame) = stack.last_mut() {
        let Some((index, next_state)) = frame.choices.pop() else {
            stack.pop();
            continue;
        };
        let done_hash = frame.done_hash ^ keys[index];
        if !seen.insert((done_hash, next_state.clone())) {
            continue;
        }
        let required_left = frame.required_left - usize::from(!ops[index].may_skip);
        if required_left == 0 {
            return Linearizable::Yes;
        }
        let mut done = frame.done.clone();
        done[index / 64] |= 1 << (index % 64);
        if seen.len() > LINEARIZABILITY_STATES_MAX {
            return Linearizable::Inconclusive;
        }
        let (next_choices, due) = choices(ops, &open, &done, &next_state);
        if stack.len() > deepest {
            deepest = stack.len();
            stuck_at = due;
        }
        stack.push(Frame {
            done,
            done_hash,
            required_left,
            choices: next_choices,
        });
    }
    let blocking = stuck_at.map_or_else(String::new, |index| {
        format!(
            "; the search got {deepest} of {} operations in, and could not place {}",
            ops.len(),
            describe(&history[ops[index].index])
        )
    });
    Linearizable::No(format!("no order of its operations fits the model{blocking}"))
}

/// Every check's violations, and the figures the summary reports.
#[derive(Debug, Clone, Default)]
pub struct CheckReport {
    /// Every violation found, by kind.
    pub violations: Vec<Violation>,
    /// The linearizability search's figures.
    pub linearizability: LinearizabilityReport,
    /// The longest time without a successful operation, and when it began
    /// (microseconds).
    pub longest_unavailable_us: (u64, u64),
    /// Answered descriptions of the semaphore that were checked.
    pub semaphore_describes: usize,
}

impl CheckReport {
    /// Violations of one kind.
    pub fn count(&self, kind: ViolationKind) -> usize {
        self.violations
            .iter()
            .filter(|violation| violation.kind == kind)
            .count()
    }
}

/// Runs every check on a history.
pub fn check_all(
    ops: &[Op],
    heals_us: &[u64],
    workload_us: (u64, u64),
    liveness_bound_us: u64,
    node_exits: Vec<Violation>,
) -> CheckReport {
    let mut violations = node_exits;
    violations.extend(check_storage_order(ops));
    violations.extend(check_token_order(ops));
    violations.extend(check_shared_reads(ops));
    let semaphores = check_semaphores(ops);
    violations.extend(semaphores.violations);
    let linearizability = check_linearizability(ops);
    violations.extend(linearizability.violations.iter().cloned());
    violations.extend(check_lost_writes(ops));
    violations.extend(check_liveness(ops, heals_us, workload_us.1, liveness_bound_us));
    violations.sort_by_key(|violation| violation.kind);
    CheckReport {
        violations,
        linearizability,
        longest_unavailable_us: longest_unavailability(ops, workload_us.0, workload_us.1),
        semaphore_describes: semaphores.describes,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(process: u64, session: u64, span: (u64, Option<u64>), call: Call, ret: Return) -> Op {
        Op {
            process,
            session,
            invoke_us: span.0,
            complete_us: span.1,
            call,
            ret,
        }
    }

    fn acquire(process: u64, span: (u64, u64), token: u64) -> Op {
        op(
            process,
            process,
            (span.0, Some(span.1)),
            Call::Acquire { lock: "l".into() },
            Return::Granted { token },
        )
    }

    fn put(process: u64, span: (u64, u64), token: u64, value: &str, ret: Return) -> Op {
        op(
            process,
            process,
            (span.0, Some(span.1)),
            Call::Put {
                lock: "l".into(),
                key: "k".into(),
                value: value.into(),
                token,
            },
            ret,
        )
    }

    fn get(process: u64, span: (u64, u64), seen: Option<(&str, u64)>) -> Op {
        op(
            process,
            process,
            (span.0, Some(span.1)),
            Call::Get {
                lock: "l".into(),
                key: "k".into(),
            },
            Return::Read {
                value: seen.map(|(value, _)| value.to_string()),
                token: seen.map(|(_, token)| token),
            },
        )
    }

    fn release(process: u64, span: (u64, u64), token: u64, ret: Return) -> Op {
        op(
            process,
            process,
            (span.0, Some(span.1)),
            Call::Release {
                lock: "l".into(),
                token,
            },
            ret,
        )
    }

    fn failed() -> Return {
        Return::Failed {
            reason: "refused".into(),
        }
    }

    fn unknown() -> Return {
        Return::Unknown {
            reason: "timeout".into(),
        }
    }

    /// A reader's shared hold and its fenced read.
    fn shared_read(process: u64, span: (u64, u64), held: u64, seen: Option<(&str, u64)>) -> Vec<Op> {
        vec![
            op(
                process,
                process,
                (span.0, Some(span.0 + 1)),
                Call::AcquireShared { lock: "l".into() },
                Return::Granted { token: held },
            ),
            op(
                process,
                process,
                (span.0 + 2, Some(span.1)),
                Call::ReadShared {
                    lock: "l".into(),
                    key: "k".into(),
                    token: held,
                },
                Return::Read {
                    value: seen.map(|(value, _)| value.to_string()),
                    token: seen.map(|(_, token)| token),
                },
            ),
        ]
    }

    #[test]
    fn a_reader_that_sees_the_last_write_before_its_hold_passes_every_check() {
        let mut ops = good_history();
        ops.extend(shared_read(3, (80, 90), 9, Some(("b", 7))));
        assert!(check_storage_order(&ops).is_empty());
        assert!(check_token_order(&ops).is_empty());
        assert!(check_shared_reads(&ops).is_empty());
        let report = check_linearizability(&ops);
        assert!(report.violations.is_empty(), "{:?}", report.violations);
        // The read is in the model: one that saw a value never stored fails it.
        let mut wrong = good_history();
        wrong.extend(shared_read(3, (80, 90), 9, Some(("never written", 7))));
        assert_eq!(check_linearizability(&wrong).violations.len(), 1);
    }

    #[test]
    fn shared_reads_catch_a_write_newer_than_the_readers_hold() {
        let mut ops = good_history();
        // A writer with token 11 wrote while a reader held token 9.
        ops.push(acquire(4, (71, 75), 11));
        ops.push(put(4, (76, 79), 11, "c", Return::Written));
        ops.extend(shared_read(3, (70, 90), 9, Some(("c", 11))));
        let violations = check_shared_reads(&ops);
        assert_eq!(violations.len(), 1, "{violations:?}");
        assert_eq!(violations[0].kind, ViolationKind::SharedRead);
        assert!(
            violations[0].detail.contains("token 11 while holding token 9"),
            "{violations:?}"
        );
    }

    #[test]
    fn a_shared_read_that_shows_an_older_write_breaks_storage_order() {
        let mut ops = good_history();
        ops.extend(shared_read(3, (80, 90), 9, Some(("a", 5))));
        let violations = check_storage_order(&ops);
        assert!(
            violations
                .iter()
                .any(|violation| violation.kind == ViolationKind::MutualExclusion),
            "{violations:?}"
        );
    }

    /// Two holders in turn, each writing and reading back, the second after
    /// the first's session expired (no release): a correct history.
    fn good_history() -> Vec<Op> {
        vec![
            acquire(1, (0, 10), 5),
            put(1, (11, 20), 5, "a", Return::Written),
            get(1, (21, 30), Some(("a", 5))),
            acquire(2, (25, 40), 7),
            put(1, (41, 50), 5, "late", failed()),
            put(2, (45, 55), 7, "b", Return::Written),
            release(1, (51, 60), 5, failed()),
            get(2, (56, 65), Some(("b", 7))),
            release(2, (66, 70), 7, Return::Released),
        ]
    }

    #[test]
    fn a_correct_history_passes_every_check() {
        let ops = good_history();
        assert!(check_storage_order(&ops).is_empty());
        assert!(check_token_order(&ops).is_empty());
        let report = check_linearizability(&ops);
        assert!(report.violations.is_empty(), "{:?}", report.violations);
        assert!(report.inconclusive.is_empty());
    }

    #[test]
    fn storage_order_catches_a_write_accepted_with_a_lower_token_later() {
        let mut ops = good_history();
        // The paused first holder's write is acknowledged after the second
        // holder's: the store accepted a stale token.
        ops.push(put(1, (80, 90), 5, "stale", Return::Written));
        let violations = check_storage_order(&ops);
        assert_eq!(violations.len(), 1, "{violations:?}");
        assert_eq!(violations[0].kind, ViolationKind::MutualExclusion);
    }

    #[test]
    fn storage_order_catches_a_read_that_shows_an_older_write() {
        let mut ops = good_history();
        ops.push(get(3, (80, 90), Some(("a", 5))));
        assert_eq!(check_storage_order(&ops).len(), 1);
    }

    #[test]
    fn overlapping_writes_may_take_effect_in_either_order() {
        let ops = vec![
            put(1, (0, 100), 9, "x", Return::Written),
            put(2, (10, 20), 4, "y", Return::Written),
        ];
        assert!(check_storage_order(&ops).is_empty());
    }

    #[test]
    fn token_order_catches_a_later_grant_with_a_smaller_or_equal_token() {
        let mut ops = good_history();
        ops.push(acquire(3, (80, 90), 6));
        let violations = check_token_order(&ops);
        assert_eq!(violations.len(), 1, "{violations:?}");
        assert_eq!(violations[0].kind, ViolationKind::TokenOrder);

        let mut ops = good_history();
        ops.push(acquire(3, (80, 90), 7));
        let violations = check_token_order(&ops);
        assert_eq!(
            violations.len(),
            2,
            "a duplicate token and a non-increase: {violations:?}"
        );
    }

    #[test]
    fn token_order_allows_the_same_session_being_handed_its_grant_again() {
        let ops = vec![acquire(1, (0, 10), 5), acquire(1, (20, 30), 5)];
        assert!(check_token_order(&ops).is_empty());
    }

    /// A semaphore hold whose release was lost stays beside a newer
    /// holder's; the same session's next acquire answers with its old
    /// token, which is no new grant. An older token to a session that held
    /// nothing is still caught.
    #[test]
    fn token_order_allows_a_kept_shared_hold_answered_again_and_catches_a_new_grant_out_of_order() {
        let permits = |session: u64, span: (u64, u64), ret: Return| {
            op(
                session,
                session,
                (span.0, Some(span.1)),
                Call::AcquirePermits {
                    semaphore: "s".into(),
                    permits: 1,
                },
                ret,
            )
        };
        let kept = vec![
            permits(1, (0, 10), Return::Granted { token: 5 }),
            op(
                1,
                1,
                (11, Some(20)),
                Call::ReleasePermits {
                    semaphore: "s".into(),
                    token: 5,
                },
                unknown(),
            ),
            permits(2, (21, 30), Return::Granted { token: 7 }),
            permits(1, (40, 50), Return::Granted { token: 5 }),
        ];
        assert!(
            check_token_order(&kept).is_empty(),
            "{:?}",
            check_token_order(&kept)
        );
        let lost_answer = vec![
            permits(1, (0, 10), unknown()),
            permits(2, (21, 30), Return::Granted { token: 7 }),
            permits(1, (40, 50), Return::Granted { token: 5 }),
        ];
        assert!(check_token_order(&lost_answer).is_empty());
        let out_of_order = vec![
            permits(2, (21, 30), Return::Granted { token: 7 }),
            permits(1, (40, 50), Return::Granted { token: 5 }),
        ];
        assert_eq!(check_token_order(&out_of_order).len(), 1);
    }

    #[test]
    fn linearizability_catches_a_write_acknowledged_after_the_lock_moved_on() {
        let mut ops = good_history();
        ops.truncate(4);
        // The first holder's write is acknowledged after the second grant
        // completed: its token cannot have been current then.
        ops.push(put(1, (41, 50), 5, "late", Return::Written));
        let report = check_linearizability(&ops);
        assert_eq!(report.violations.len(), 1, "{report:?}");
        assert!(
            report.violations[0].detail.contains("late"),
            "{}",
            report.violations[0]
        );
    }

    #[test]
    fn linearizability_catches_a_stale_read() {
        let mut ops = good_history();
        ops.push(get(3, (80, 90), Some(("a", 5))));
        assert_eq!(check_linearizability(&ops).violations.len(), 1);
    }

    #[test]
    fn linearizability_catches_a_read_of_a_write_that_was_refused() {
        let ops = vec![
            acquire(1, (0, 10), 5),
            acquire(2, (20, 30), 7),
            put(1, (31, 40), 5, "refused", failed()),
            get(3, (50, 60), Some(("refused", 5))),
        ];
        assert_eq!(check_linearizability(&ops).violations.len(), 1);
    }

    #[test]
    fn linearizability_catches_a_release_acknowledged_for_a_displaced_grant() {
        let ops = vec![
            acquire(1, (0, 10), 5),
            acquire(2, (20, 30), 7),
            release(1, (40, 50), 5, Return::Released),
        ];
        assert_eq!(check_linearizability(&ops).violations.len(), 1);
    }

    #[test]
    fn an_unknown_write_may_or_may_not_have_happened() {
        let base = vec![
            acquire(1, (0, 10), 5),
            put(1, (11, 20), 5, "a", Return::Written),
            put(1, (21, 30), 5, "maybe", unknown()),
        ];
        for seen in [("a", 5), ("maybe", 5)] {
            let mut ops = base.clone();
            ops.push(get(2, (40, 50), Some(seen)));
            let report = check_linearizability(&ops);
            assert!(report.violations.is_empty(), "reading {seen:?}: {report:?}");
        }
        let mut ops = base;
        ops.push(get(2, (40, 50), Some(("never written", 5))));
        assert_eq!(check_linearizability(&ops).violations.len(), 1);
    }

    #[test]
    fn an_operation_that_never_completed_may_take_effect_late() {
        let ops = vec![
            acquire(1, (0, 10), 5),
            op(
                1,
                1,
                (11, None),
                Call::Put {
                    lock: "l".into(),
                    key: "k".into(),
                    value: "slow".into(),
                    token: 5,
                },
                unknown(),
            ),
            get(2, (100, 110), None),
            get(2, (120, 130), Some(("slow", 5))),
        ];
        let report = check_linearizability(&ops);
        assert!(report.violations.is_empty(), "{report:?}");
    }

    #[test]
    fn an_unknown_write_may_commit_after_its_writer_gave_up() {
        // The writer's put ends unknown (its leader heard no quorum); it
        // reads the old value and releases, and the put, logged by the old
        // leader, commits after that read but before the release.
        let ops = vec![
            acquire(1, (0, 10), 5),
            put(1, (11, 20), 5, "old", Return::Written),
            put(1, (21, 30), 5, "late", unknown()),
            get(1, (31, 40), Some(("old", 5))),
            get(2, (41, 50), Some(("late", 5))),
            release(1, (51, 60), 5, Return::Released),
            get(2, (70, 80), Some(("late", 5))),
        ];
        let report = check_linearizability(&ops);
        assert!(report.violations.is_empty(), "{report:?}");
        // It cannot commit once its token was released.
        let mut after_release = ops.clone();
        after_release[4] = get(2, (61, 65), Some(("old", 5)));
        after_release[6] = get(2, (70, 80), Some(("late", 5)));
        assert_eq!(check_linearizability(&after_release).violations.len(), 1);
    }

    #[test]
    fn a_lost_acknowledged_write_is_caught_by_the_final_read() {
        let mut ops = good_history();
        let mut last_read = get(FINAL_READER, (100, 110), Some(("b", 7)));
        last_read.session = 0;
        ops.push(last_read.clone());
        assert!(check_lost_writes(&ops).is_empty());

        ops.pop();
        ops.push(get(FINAL_READER, (100, 110), Some(("a", 5))));
        let violations = check_lost_writes(&ops);
        assert_eq!(violations.len(), 1);
        assert_eq!(violations[0].kind, ViolationKind::LostWrite);

        ops.pop();
        ops.push(get(FINAL_READER, (100, 110), None));
        assert_eq!(
            check_lost_writes(&ops).len(),
            1,
            "an unset key lost the write too"
        );
        ops.pop();
        assert_eq!(
            check_lost_writes(&ops).len(),
            1,
            "a key never read at the end is reported"
        );
    }

    fn acquire_permits(session: u64, span: (u64, Option<u64>), permits: u32, ret: Return) -> Op {
        op(
            session,
            session,
            span,
            Call::AcquirePermits {
                semaphore: "s".into(),
                permits,
            },
            ret,
        )
    }

    fn describe_semaphore(
        session: u64,
        span: (u64, u64),
        limit: Option<u32>,
        holders: &[(u64, u64, u32)],
    ) -> Op {
        op(
            session,
            session,
            (span.0, Some(span.1)),
            Call::DescribeSemaphore {
                semaphore: "s".into(),
            },
            Return::Described {
                limit,
                holders: holders.to_vec(),
            },
        )
    }

    fn release_permits(session: u64, span: (u64, u64), token: u64, ret: Return) -> Op {
        op(
            session,
            session,
            (span.0, Some(span.1)),
            Call::ReleasePermits {
                semaphore: "s".into(),
                token,
            },
            ret,
        )
    }

    /// Sessions 11, 12 and 13 on semaphore "s" beside the lock history of
    /// [`good_history`] (tokens from the same counter): 11 takes 2 permits
    /// (token 6), 12 takes 1 (token 8), and 13's acquire of 1 loses its
    /// answer though the cluster granted it (token 10), so a description
    /// shows 13 holding a token no answer named.
    fn good_semaphore_history() -> Vec<Op> {
        let mut ops = good_history();
        ops.extend([
            acquire_permits(11, (30, Some(35)), 2, Return::Granted { token: 6 }),
            acquire_permits(12, (42, Some(46)), 1, Return::Granted { token: 8 }),
            describe_semaphore(11, (47, 48), Some(3), &[(11, 6, 2), (12, 8, 1)]),
            acquire_permits(14, (49, Some(50)), 2, failed()),
            release_permits(11, (51, 52), 6, Return::Released),
            acquire_permits(13, (53, None), 1, unknown()),
            describe_semaphore(12, (60, 61), Some(3), &[(12, 8, 1), (13, 10, 1)]),
            release_permits(12, (62, 63), 8, Return::Released),
            // Nobody holds it: the cluster keeps no semaphore.
            describe_semaphore(12, (90, 91), None, &[]),
        ]);
        ops
    }

    #[test]
    fn a_semaphore_history_within_its_limit_and_explained_by_its_acquires_passes_every_check() {
        let ops = good_semaphore_history();
        let report = check_semaphores(&ops);
        assert!(report.violations.is_empty(), "{:?}", report.violations);
        assert_eq!(report.describes, 3);
        assert!(
            check_token_order(&ops).is_empty(),
            "{:?}",
            check_token_order(&ops)
        );
        assert!(check_storage_order(&ops).is_empty());
        let linearizability = check_linearizability(&ops);
        assert!(linearizability.violations.is_empty(), "{linearizability:?}");
        assert_eq!(
            linearizability.locks, 1,
            "the semaphore is not a lock of the model"
        );
    }

    #[test]
    fn semaphore_catches_more_permits_held_than_the_limit() {
        let mut ops = good_semaphore_history();
        ops.push(describe_semaphore(
            12,
            (47, 48),
            Some(3),
            &[(11, 6, 2), (12, 8, 2)],
        ));
        let violations = check_semaphores(&ops).violations;
        assert_eq!(violations.len(), 1, "{violations:?}");
        assert_eq!(violations[0].kind, ViolationKind::Semaphore);
        assert!(
            violations[0].detail.contains("4 permits held of 3"),
            "{violations:?}"
        );
    }

    #[test]
    fn semaphore_catches_a_limit_other_than_the_one_every_acquire_named() {
        let mut ops = good_semaphore_history();
        ops.push(describe_semaphore(
            12,
            (47, 48),
            Some(4),
            &[(11, 6, 2), (12, 8, 1)],
        ));
        ops.push(describe_semaphore(12, (47, 48), None, &[(12, 8, 1)]));
        let violations = check_semaphores(&ops).violations;
        assert_eq!(violations.len(), 2, "{violations:?}");
        assert!(violations
            .iter()
            .all(|violation| violation.kind == ViolationKind::Semaphore));
        assert!(violations[0].detail.contains("a limit of 4"), "{violations:?}");
        assert!(
            violations[1].detail.contains("holders but no limit"),
            "{violations:?}"
        );
    }

    #[test]
    fn semaphore_catches_a_holder_no_acquire_explains() {
        // A session that never asked.
        let mut ops = good_semaphore_history();
        ops.push(describe_semaphore(
            12,
            (47, 48),
            Some(3),
            &[(12, 8, 1), (15, 9, 1)],
        ));
        let violations = check_semaphores(&ops).violations;
        assert_eq!(violations.len(), 1, "{violations:?}");
        assert!(
            violations[0].detail.contains("holder session 15 with token 9"),
            "{violations:?}"
        );
        // A token the session's grant did not name, while no answer of
        // that session was lost.
        let mut ops = good_semaphore_history();
        ops.push(describe_semaphore(
            12,
            (47, 48),
            Some(3),
            &[(11, 7, 2), (12, 8, 1)],
        ));
        assert_eq!(check_semaphores(&ops).violations.len(), 1);
        // An acquire answered "not granted" explains nothing.
        let mut ops = good_semaphore_history();
        ops.push(describe_semaphore(
            12,
            (51, 52),
            Some(3),
            &[(12, 8, 1), (14, 9, 2)],
        ));
        assert_eq!(check_semaphores(&ops).violations.len(), 1);
        // Nor does an acquire of lost answer invoked after the description
        // completed.
        let mut ops = good_semaphore_history();
        ops.push(describe_semaphore(
            12,
            (47, 48),
            Some(3),
            &[(11, 6, 2), (13, 10, 1)],
        ));
        assert_eq!(check_semaphores(&ops).violations.len(), 1);
    }

    #[test]
    fn token_order_covers_semaphore_grants() {
        let mut ops = good_semaphore_history();
        // A semaphore grant that reuses a lock grant's token.
        ops.push(acquire_permits(
            16,
            (80, Some(85)),
            1,
            Return::Granted { token: 7 },
        ));
        let violations = check_token_order(&ops);
        assert!(
            violations
                .iter()
                .any(|violation| violation.detail.contains("token 7 granted twice")),
            "{violations:?}"
        );
    }

    #[test]
    fn liveness_catches_a_heal_not_followed_by_progress_within_the_bound() {
        let ops = vec![
            acquire(1, (0, 10), 5),
            put(1, (11, 20), 5, "a", Return::Written),
            get(1, (1_000, 1_500), Some(("a", 5))),
        ];
        assert!(check_liveness(&ops, &[15], 10_000, 100).is_empty());
        let violations = check_liveness(&ops, &[100], 10_000, 100);
        assert_eq!(violations.len(), 1);
        assert_eq!(violations[0].kind, ViolationKind::Liveness);
        assert!(
            check_liveness(&ops, &[9_950], 10_000, 100).is_empty(),
            "a heal too close to the end is not judged"
        );
        assert_eq!(longest_unavailability(&ops, 0, 2_000), (1_480, 20));
    }
}
