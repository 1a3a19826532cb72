//! The vocabulary of the Multi-Paxos core: ballots, slots, proposals and the
//! values chosen for slots. The core orders commands of any type `C` (see
//! [`Command`]); it never looks inside them.

use std::fmt;
use std::sync::Arc;

use quorumlock_core::consensus::NodeId;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// What the log orders. Any type that can be compared, printed and encoded
/// will do: the lock service orders lock commands, the core's simulation
/// orders numbers.
pub trait Command:
    Clone + PartialEq + fmt::Debug + Serialize + DeserializeOwned + Send + Sync + 'static
{
}

impl<T> Command for T where
    T: Clone + PartialEq + fmt::Debug + Serialize + DeserializeOwned + Send + Sync + 'static
{
}

/// A position in the replicated sequence. Slot 0 is never used: it names the
/// empty prefix, so "chosen up to slot 0" means nothing is chosen.
///
/// A slot is not a count, a ballot round or a node id: it can be moved
/// forward by a count (`slot + n`), and two slots give the count between
/// them ([`Slot::since`]), nothing else. It encodes exactly as the `u64` it
/// wraps, so logs and messages read back unchanged.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Slot(u64);

impl Slot {
    /// The empty prefix: "chosen up to `Slot::ZERO`" means nothing is chosen.
    pub const ZERO: Slot = Slot(0);

    /// Wraps a slot number read from storage or the wire.
    pub const fn new(number: u64) -> Slot {
        Slot(number)
    }

    /// The number as storage and the wire carry it.
    pub const fn get(self) -> u64 {
        self.0
    }

    /// The slot after this one.
    pub fn next(self) -> Slot {
        self + 1
    }

    /// The slot before this one; the empty prefix has none before it and
    /// stays where it is.
    pub fn prev(self) -> Slot {
        Slot(self.0.saturating_sub(1))
    }

    /// How many slots lie after `earlier` up to and including `self`
    /// (0 when `earlier` is not before `self`).
    pub fn since(self, earlier: Slot) -> u64 {
        self.0.saturating_sub(earlier.0)
    }

    /// The slots after `self` up to and including `last`, in order.
    pub fn after_through(self, last: Slot) -> impl DoubleEndedIterator<Item = Slot> {
        (self.0 + 1..=last.0).map(Slot)
    }
}

impl std::ops::Add<u64> for Slot {
    type Output = Slot;

    fn add(self, n: u64) -> Slot {
        Slot(self.0.checked_add(n).expect("a slot number never wraps around"))
    }
}

impl std::ops::AddAssign<u64> for Slot {
    fn add_assign(&mut self, n: u64) {
        *self = *self + n;
    }
}

impl fmt::Display for Slot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

/// A proposal number: unique per proposer because it carries the proposer's
/// id, and totally ordered by `(round, node)`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Ballot {
    /// Increases with every phase 1 a node starts.
    pub round: u64,
    /// The proposer that owns the ballot; breaks ties between equal rounds.
    pub node: NodeId,
}

impl Ballot {
    /// The ballot below every real one; nothing is promised or accepted at it.
    pub const ZERO: Ballot = Ballot {
        round: 0,
        node: NodeId::new(0),
    };

    /// The smallest ballot owned by `node` that is above `self`.
    pub fn next_for(self, node: NodeId) -> Ballot {
        Ballot {
            round: self.round + 1,
            node,
        }
    }
}

impl fmt::Display for Ballot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.round, self.node)
    }
}

/// Identifies one client command across the cluster, so the node that
/// proposed it can answer its caller when (and wherever) it is chosen.
///
/// `boot` is a counter the driver persists and bumps at every start: a
/// restarted node never reuses the id of a command it proposed in an earlier
/// life, which a later leader may still choose.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ProposalId {
    /// The proposing node.
    pub node: NodeId,
    /// The proposing node's boot counter.
    pub boot: u64,
    /// Sequence number within that boot.
    pub seq: u64,
}

/// A client command as it travels through the log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Proposal<C> {
    /// Whom to answer.
    pub id: ProposalId,
    /// What to apply.
    pub command: C,
}

/// What a slot holds: a batch of client commands, or a no-op a new leader
/// uses to fill a hole it found in phase 1.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Value<C> {
    /// Fills a slot for which no quorum member reported an accepted value.
    Noop,
    /// Commands applied in order. Shared so that sending one value to every
    /// peer does not copy it.
    Batch(Arc<Vec<Proposal<C>>>),
}

impl<C: Command> Value<C> {
    /// The value's encoded size in bytes, for the byte bounds of slots and
    /// messages.
    pub fn encoded_bytes(&self) -> usize {
        bincode::serialized_size(self).map_or(usize::MAX, |bytes| bytes as usize)
    }
}

impl<C> Value<C> {
    /// The commands of this value, in apply order.
    pub fn proposals(&self) -> &[Proposal<C>] {
        match self {
            Value::Noop => &[],
            Value::Batch(batch) => batch,
        }
    }
}

/// An acceptor's record for one slot: the highest-ballot value it accepted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Accepted<C> {
    /// The ballot the value was accepted at.
    pub ballot: Ballot,
    /// The value.
    pub value: Value<C>,
}

impl<C: Command> Proposal<C> {
    /// The proposal's encoded size in bytes.
    pub fn encoded_bytes(&self) -> usize {
        bincode::serialized_size(self).map_or(usize::MAX, |bytes| bytes as usize)
    }
}

/// A value known to be chosen for a slot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Chosen<C> {
    /// The slot.
    pub slot: Slot,
    /// Its chosen value.
    pub value: Value<C>,
}

/// Identifies a pending linearizable read on the node that asked for it.
pub type ReadId = u64;
