//! The vocabulary of the Multi-Paxos core: ballots, slots, proposals and the
//! values chosen for slots. The core orders commands of any type `C` (see
//! [`Command`]); it never looks inside them.

use std::collections::{BTreeMap, BTreeSet};
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
/// id, and totally ordered by `(epoch, round, node)`, so that every ballot
/// of a configuration is above every ballot of the configurations before
/// it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Ballot {
    /// The configuration the ballot belongs to (see [`Configuration`]): only
    /// that configuration's voters answer it.
    pub epoch: u64,
    /// Increases with every phase 1 a node starts.
    pub round: u64,
    /// The proposer that owns the ballot; breaks ties between equal rounds.
    pub node: NodeId,
}

impl Ballot {
    /// The ballot below every real one; nothing is promised or accepted at it.
    pub const ZERO: Ballot = Ballot {
        epoch: 0,
        round: 0,
        node: NodeId::new(0),
    };

    /// The ballot as one number that orders as the ballots of one node do:
    /// the epoch in the high 32 bits, the round in the low 32. A node's
    /// successive ballots have strictly larger terms, also across epochs
    /// (where the round starts again at 1), so a change of term always
    /// means a new leadership period to whoever watches one node.
    pub fn term(self) -> u64 {
        assert!(
            self.epoch < 1 << 32 && self.round < 1 << 32,
            "ballot {self} fits a term"
        );
        (self.epoch << 32) | self.round
    }

    /// The smallest ballot of `epoch` owned by `node` that is above `self`
    /// (`self` is never of a later epoch: a replica only raises ballots of
    /// its own configuration).
    pub fn next_for(self, epoch: u64, node: NodeId) -> Ballot {
        assert!(
            self.epoch <= epoch,
            "ballot {self} is of a later epoch than {epoch}"
        );
        let round = if self.epoch == epoch { self.round + 1 } else { 1 };
        Ballot { epoch, round, node }
    }
}

impl fmt::Display for Ballot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}.{}", self.epoch, self.round, self.node)
    }
}

/// The members of one configuration, as the log carries it.
///
/// A change of voters ends the current configuration: its value is a
/// *stop-sign*, the last slot the configuration decides, and the next
/// configuration (one epoch higher) decides every slot after it. A change
/// of learners only keeps the epoch: learners never count toward a quorum.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Configuration {
    /// Rises by one at every change of voters.
    pub epoch: u64,
    /// Rises by one at every change; a change applies only to the
    /// configuration it was made from (`version` one below its own).
    pub version: u64,
    /// The members that promise, accept and elect.
    pub voters: BTreeSet<NodeId>,
    /// Members that receive every chosen value but never vote.
    pub learners: BTreeSet<NodeId>,
    /// Where each voter and learner serves (`host:port`), for the engine's
    /// transport; the core only carries it.
    pub addresses: BTreeMap<NodeId, String>,
    /// Every id a change removed: never a member again.
    pub retired: BTreeSet<NodeId>,
}

impl Configuration {
    /// The first configuration of a cluster: `voters` at epoch 0.
    pub fn initial(voters: BTreeSet<NodeId>, addresses: BTreeMap<NodeId, String>) -> Configuration {
        Configuration {
            voters,
            addresses,
            ..Configuration::default()
        }
    }

    /// Whether `node` is a voter or a learner.
    pub fn has(&self, node: NodeId) -> bool {
        self.voters.contains(&node) || self.learners.contains(&node)
    }

    /// Whether `next` is a change this configuration accepts: one version
    /// on, and one epoch on exactly when the voters change.
    pub fn accepts(&self, next: &Configuration) -> bool {
        let epoch = if next.voters == self.voters {
            self.epoch
        } else {
            self.epoch + 1
        };
        next.version == self.version + 1 && next.epoch == epoch && !next.voters.is_empty()
    }

    /// Whether `next` ends this configuration (a stop-sign).
    pub fn ends_with(&self, next: &Configuration) -> bool {
        self.accepts(next) && next.epoch > self.epoch
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

/// What a slot holds: a batch of client commands, a no-op a new leader
/// uses to fill a hole it found in phase 1, or a change of configuration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Value<C> {
    /// Fills a slot for which no quorum member reported an accepted value.
    Noop,
    /// Commands applied in order. Shared so that sending one value to every
    /// peer does not copy it.
    Batch(Arc<Vec<Proposal<C>>>),
    /// The configuration from the next slot on. It takes effect only if the
    /// configuration in force [accepts](Configuration::accepts) it (a stale
    /// change chosen late is a no-op); when it changes the voters it is the
    /// stop-sign of the current configuration.
    Reconfigure(Arc<Configuration>),
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
            Value::Noop | Value::Reconfigure(_) => &[],
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
