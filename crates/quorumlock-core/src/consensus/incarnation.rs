//! Incarnations: a node that lost its data directory is not taken back as
//! the node it was.
//!
//! Raft's and Paxos's safety rests on every node remembering what it
//! acknowledged. A node whose directory was emptied and that starts again
//! under its old id has forgotten its votes, promises and acceptances, and
//! its own protocol cannot tell. So each data directory carries an
//! incarnation, drawn at random when the node's state is first created, and
//! every peer request names both ends' incarnations in
//! [`INCARNATION_HEADER`]: `<from>:<from incarnation>><to>:<to incarnation>`
//! (hexadecimal; a `to` incarnation of 0 means the sender does not know it).
//!
//! Each node keeps, durably, the incarnation under which it first heard of
//! each peer ([`Incarnations::judge`] records a sender's; a refusal carrying
//! [`INCARNATION_OF_METADATA`] tells a sender the receiver's, which
//! [`Incarnations::learn`] records), and a receiver acts on a request only
//! when both incarnations in it match what it knows:
//!
//! - A request from a sender that does not know the receiver's incarnation
//!   is refused with it, and acted on only once the sender has recorded it.
//!   So a node never votes, acknowledges an append or promises for a peer
//!   that has not recorded who it is, and a Raft vote or acknowledgment
//!   (which travel in responses) always comes from a node its requester
//!   knows by incarnation.
//! - A request naming the receiver under another incarnation than its own
//!   means the receiver's state was lost since that peer knew it: the
//!   receiver refuses it and stops ([`Incarnations::forgotten`]).
//! - A request from a sender known under another incarnation is refused:
//!   the sender's state was lost.
//!
//! A node whose state was lost or damaged comes back through a repair
//! (README, "Storage faults"): it starts as a learner under a new
//! incarnation, which the leader records in the replicated state once the
//! node no longer votes ([`crate::lock::Command::RecordRepair`]); every
//! replica then [adopts](Incarnations::adopt) it in place of the one it
//! knew. Meanwhile, and once its own repair is recorded, the node refuses
//! requests that name an incarnation of it from before the repair
//! ([`Refusal::Superseded`]) without stopping: their senders have not
//! applied the record yet.
//!
//! A fresh cluster still forms by itself from empty directories: nobody
//! knows anybody yet, and the first request each way teaches the
//! incarnations. A node added with `member add` is new to everyone. What
//! is not caught: a node that lost its directory before any peer ever
//! acted on a request from it or learned its incarnation, which had then
//! acknowledged nothing it could forget.

use std::collections::BTreeMap;

use std::sync::atomic::{AtomicBool, Ordering};

use parking_lot::Mutex;
use tokio::sync::watch;

use super::NodeId;

/// Request metadata naming both ends' incarnations (see the module).
pub const INCARNATION_HEADER: &str = "x-quorumlock-incarnation";
/// Refusal metadata giving the receiver's own incarnation, as
/// `<id>:<incarnation>`, to a sender that did not know it.
pub const INCARNATION_OF_METADATA: &str = "x-quorumlock-incarnation-of";

/// Most peers whose incarnations one node records. Ids are never reused,
/// so a long-lived cluster's record grows with every node it ever had; this
/// bounds what requests naming made-up ids can make a node write (a
/// plaintext node cannot tell who sends them).
pub const KNOWN_PEERS_MAX: usize = 4_096;

/// Keeps what this node knows of peers' incarnations durably.
pub type Persist = Box<dyn Fn(&BTreeMap<NodeId, u64>) -> std::io::Result<()> + Send + Sync>;

/// This node's incarnation and the ones it knows its peers by.
pub struct Incarnations {
    own: NodeId,
    own_incarnation: u64,
    known: Mutex<BTreeMap<NodeId, u64>>,
    persist: Persist,
    forgotten: watch::Sender<Option<String>>,
    /// This node runs a repair: it came back under a new incarnation.
    repairing: AtomicBool,
    /// The replicated state records this node's repair under its own
    /// incarnation.
    repair_recorded: AtomicBool,
}

impl std::fmt::Debug for Incarnations {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Incarnations")
            .field("own", &self.own)
            .field("own_incarnation", &format_args!("{:016x}", self.own_incarnation))
            .field("known", &*self.known.lock())
            .finish()
    }
}

/// Why a peer request is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// No [`INCARNATION_HEADER`], or one that does not parse.
    #[error("peer requests must carry {INCARNATION_HEADER} as <from>:<incarnation>><to>:<incarnation>: {0}")]
    Malformed(String),
    /// The request is for another node.
    #[error("the request is addressed to node {to}, and this is node {own}")]
    Misaddressed {
        /// The node the sender meant.
        to: NodeId,
        /// This node.
        own: NodeId,
    },
    /// The sender does not know this node's incarnation yet; the refusal
    /// carries it ([`INCARNATION_OF_METADATA`]).
    #[error("node {from} does not know this node's incarnation yet; it is sent with this refusal")]
    Unintroduced {
        /// The sender.
        from: NodeId,
    },
    /// The sender is known here under another incarnation: its state was
    /// lost.
    #[error(
        "node {from} is known here as incarnation {known:016x} and now comes as incarnation {claimed:016x}: \
         its data directory was emptied or replaced, so it may have forgotten votes or promises it made; \
         replace it (member add, promote, remove) rather than restart it under its old id"
    )]
    SenderForgot {
        /// The sender.
        from: NodeId,
        /// The incarnation this node knows it by.
        known: u64,
        /// The one it claims now.
        claimed: u64,
    },
    /// The sender knows this node under another incarnation: this node's
    /// state was lost.
    #[error(
        "node {from} knows this node ({own}) as incarnation {known:016x}, and this node's data directory is \
         incarnation {own_incarnation:016x}: this node's state was lost since, and it must not take part \
         under its old id; replace it (member add, promote, remove)"
    )]
    ReceiverForgot {
        /// The sender.
        from: NodeId,
        /// This node.
        own: NodeId,
        /// The incarnation the sender knows this node by.
        known: u64,
        /// This node's incarnation.
        own_incarnation: u64,
    },
    /// The sender knows this node by an incarnation from before its
    /// repair: the sender has not applied the repair's record yet.
    #[error(
        "node {from} knows this node ({own}) as incarnation {known:016x}, from before its repair; \
         it is incarnation {own_incarnation:016x} since, as the sender will know once it applies the repair's record"
    )]
    Superseded {
        /// The sender.
        from: NodeId,
        /// This node.
        own: NodeId,
        /// The incarnation the sender knows this node by.
        known: u64,
        /// This node's incarnation.
        own_incarnation: u64,
    },
    /// Recording a new peer's incarnation failed.
    #[error("recording node {from}'s incarnation failed: {why}")]
    Unrecorded {
        /// The sender.
        from: NodeId,
        /// The failure.
        why: String,
    },
}

impl Incarnations {
    /// This node `own`, of incarnation `own_incarnation` (never 0), which
    /// knows its peers by `known` and records what it learns with `persist`
    /// before acting on it.
    pub fn new(own: NodeId, own_incarnation: u64, known: BTreeMap<NodeId, u64>, persist: Persist) -> Self {
        assert_ne!(own_incarnation, 0, "incarnation 0 means unknown");
        Incarnations {
            own,
            own_incarnation,
            known: Mutex::new(known),
            persist,
            forgotten: watch::channel(None).0,
            repairing: AtomicBool::new(false),
            repair_recorded: AtomicBool::new(false),
        }
    }

    /// Marks this node as running a repair (see the module).
    pub fn set_repairing(&self, repairing: bool) {
        self.repairing.store(repairing, Ordering::Release);
    }

    /// Takes in a repair the replicated state records: `peer` is
    /// `incarnation` since. Replaces what this node knew of `peer`; for
    /// this node itself, notes that its own repair is recorded.
    pub fn adopt(&self, peer: NodeId, incarnation: u64) -> Result<(), String> {
        if peer == self.own {
            if incarnation == self.own_incarnation && !self.repair_recorded.swap(true, Ordering::AcqRel) {
                tracing::info!(node = %self.own, "the cluster records this node's repair");
            }
            return Ok(());
        }
        let mut known = self.known.lock();
        let before = known.get(&peer).copied();
        if before == Some(incarnation) {
            return Ok(());
        }
        self.record(&mut known, peer, incarnation)?;
        tracing::info!(
            node = %self.own, %peer,
            before = %format_args!("{:016x}", before.unwrap_or(0)),
            incarnation = %format_args!("{incarnation:016x}"),
            "a peer came back from a repair under a new incarnation"
        );
        Ok(())
    }

    /// Incarnations kept in memory only (tests and simulations).
    pub fn in_memory(own: NodeId, own_incarnation: u64) -> Self {
        Self::new(own, own_incarnation, BTreeMap::new(), Box::new(|_| Ok(())))
    }

    /// This node's incarnation.
    pub fn own_incarnation(&self) -> u64 {
        self.own_incarnation
    }

    /// The incarnation this node knows `peer` by, if any.
    pub fn known(&self, peer: NodeId) -> Option<u64> {
        self.known.lock().get(&peer).copied()
    }

    /// The [`INCARNATION_HEADER`] value of a request to `to`.
    pub fn header_to(&self, to: NodeId) -> String {
        format!(
            "{}:{:016x}>{}:{:016x}",
            self.own,
            self.own_incarnation,
            to,
            self.known(to).unwrap_or(0)
        )
    }

    /// The [`INCARNATION_OF_METADATA`] value of this node's refusals.
    pub fn introduction(&self) -> String {
        format!("{}:{:016x}", self.own, self.own_incarnation)
    }

    /// Set once a peer showed that this node's state was lost: the node
    /// must stop.
    pub fn forgotten(&self) -> watch::Receiver<Option<String>> {
        self.forgotten.subscribe()
    }

    fn record(
        &self,
        known: &mut BTreeMap<NodeId, u64>,
        peer: NodeId,
        incarnation: u64,
    ) -> Result<(), String> {
        if !known.contains_key(&peer) && known.len() >= KNOWN_PEERS_MAX {
            return Err(format!(
                "this node already records the incarnations of {} peers, the most it keeps",
                known.len()
            ));
        }
        let mut next = known.clone();
        next.insert(peer, incarnation);
        (self.persist)(&next).map_err(|error| error.to_string())?;
        *known = next;
        tracing::info!(node = %self.own, %peer, incarnation = %format_args!("{incarnation:016x}"), "recorded a peer's incarnation");
        Ok(())
    }

    /// Judges a peer request's [`INCARNATION_HEADER`] value; records the
    /// sender's incarnation if it is new here. `Ok` carries the sender.
    pub fn judge(&self, header: Option<&str>) -> Result<NodeId, Refusal> {
        let header = header.ok_or_else(|| Refusal::Malformed("it is missing".to_string()))?;
        let ((from, claimed), (to, named)) = parse_header(header).map_err(Refusal::Malformed)?;
        if to != self.own {
            return Err(Refusal::Misaddressed { to, own: self.own });
        }
        if claimed == 0 {
            return Err(Refusal::Malformed("the sender's incarnation is 0".to_string()));
        }
        {
            let mut known = self.known.lock();
            match known.get(&from).copied() {
                Some(incarnation) if incarnation != claimed => {
                    return Err(Refusal::SenderForgot {
                        from,
                        known: incarnation,
                        claimed,
                    })
                }
                Some(_) => {}
                None => self
                    .record(&mut known, from, claimed)
                    .map_err(|why| Refusal::Unrecorded { from, why })?,
            }
        }
        if named == 0 {
            return Err(Refusal::Unintroduced { from });
        }
        if named != self.own_incarnation {
            if self.repairing.load(Ordering::Acquire) || self.repair_recorded.load(Ordering::Acquire) {
                return Err(Refusal::Superseded {
                    from,
                    own: self.own,
                    known: named,
                    own_incarnation: self.own_incarnation,
                });
            }
            let refusal = Refusal::ReceiverForgot {
                from,
                own: self.own,
                known: named,
                own_incarnation: self.own_incarnation,
            };
            self.forgotten.send_if_modified(|reason| {
                let first = reason.is_none();
                if first {
                    *reason = Some(refusal.to_string());
                }
                first
            });
            return Err(refusal);
        }
        Ok(from)
    }

    /// Takes in an [`INCARNATION_OF_METADATA`] value from `peer`'s refusal:
    /// records `peer`'s incarnation if none was known. A different one
    /// from the one known is not taken (that peer's state was lost).
    /// Returns whether something new was recorded.
    pub fn learn(&self, peer: NodeId, introduction: &str) -> Result<bool, String> {
        let (id, incarnation) = parse_end(introduction)?;
        if id != peer || incarnation == 0 {
            return Err(format!("node {peer} introduced itself as {introduction:?}"));
        }
        let mut known = self.known.lock();
        match known.get(&peer).copied() {
            Some(current) if current == incarnation => Ok(false),
            Some(current) => {
                tracing::error!(
                    node = %self.own, %peer,
                    known = %format_args!("{current:016x}"), claimed = %format_args!("{incarnation:016x}"),
                    "a peer comes back under another incarnation: its state was lost, and it is not taken back"
                );
                Ok(false)
            }
            None => self.record(&mut known, peer, incarnation).map(|()| true),
        }
    }
}

/// The sender an [`INCARNATION_HEADER`] value names, if it parses.
pub fn sender_of(header: &str) -> Option<NodeId> {
    parse_header(header).ok().map(|((from, _), _)| from)
}

fn parse_end(text: &str) -> Result<End, String> {
    let (id, incarnation) = text
        .split_once(':')
        .ok_or(format!("{text:?} is not <id>:<incarnation>"))?;
    let id: NodeId = id.parse()?;
    if incarnation.len() != 16 {
        return Err(format!(
            "incarnation {incarnation:?} is not 16 hexadecimal digits"
        ));
    }
    let incarnation = u64::from_str_radix(incarnation, 16)
        .map_err(|_| format!("incarnation {incarnation:?} is not hexadecimal"))?;
    Ok((id, incarnation))
}

/// A node and its incarnation, as one end of a header names them.
type End = (NodeId, u64);

fn parse_header(text: &str) -> Result<(End, End), String> {
    let (from, to) = text.split_once('>').ok_or(format!("{text:?} has no '>'"))?;
    Ok((parse_end(from)?, parse_end(to)?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn id(n: u64) -> NodeId {
        NodeId::new(n)
    }

    /// A node whose records also land in `disk`.
    fn node(n: u64, incarnation: u64, disk: &Arc<Mutex<BTreeMap<NodeId, u64>>>) -> Incarnations {
        let disk2 = disk.clone();
        Incarnations::new(
            id(n),
            incarnation,
            disk.lock().clone(),
            Box::new(move |known| {
                *disk2.lock() = known.clone();
                Ok(())
            }),
        )
    }

    /// Sends one request from `from` to `to` as a transport does: on an
    /// introduction the sender learns it and sends again.
    fn exchange(from: &Incarnations, to: &Incarnations) -> Result<(), Refusal> {
        match to.judge(Some(&from.header_to(to.own))) {
            Err(Refusal::Unintroduced { .. }) => {
                from.learn(to.own, &to.introduction()).unwrap();
                to.judge(Some(&from.header_to(to.own))).map(|_| ())
            }
            other => other.map(|_| ()),
        }
    }

    #[test]
    fn fresh_nodes_introduce_themselves_and_then_talk() {
        let (d1, d2) = (Arc::default(), Arc::default());
        let (one, two) = (node(1, 0xa1, &d1), node(2, 0xb2, &d2));
        assert_eq!(
            two.judge(Some(&one.header_to(id(2)))),
            Err(Refusal::Unintroduced { from: id(1) }),
            "a request naming no incarnation for the receiver is refused"
        );
        assert_eq!(two.known(id(1)), Some(0xa1), "the receiver recorded the sender");
        exchange(&one, &two).unwrap();
        exchange(&two, &one).unwrap();
        assert_eq!(d1.lock().get(&id(2)), Some(&0xb2), "what was learned is on disk");
        assert_eq!(d2.lock().get(&id(1)), Some(&0xa1));
    }

    #[test]
    fn a_node_that_lost_its_directory_is_refused_both_ways_and_told_it_was_forgotten() {
        let (d1, d2) = (Arc::default(), Arc::default());
        let (one, two) = (node(1, 0xa1, &d1), node(2, 0xb2, &d2));
        exchange(&one, &two).unwrap();
        exchange(&two, &one).unwrap();
        // Node 2 comes back on an empty directory: new incarnation, no records.
        let two_again = node(2, 0xc3, &Arc::default());
        let forgotten = two_again.forgotten();
        match exchange(&one, &two_again) {
            Err(Refusal::ReceiverForgot {
                known,
                own_incarnation,
                ..
            }) => {
                assert_eq!((known, own_incarnation), (0xb2, 0xc3))
            }
            other => panic!("node 1's request to the new node 2 gave {other:?}"),
        }
        assert!(forgotten.borrow().as_ref().unwrap().contains("state was lost"));
        match exchange(&two_again, &one) {
            Err(Refusal::SenderForgot { known, claimed, .. }) => assert_eq!((known, claimed), (0xb2, 0xc3)),
            other => panic!("the new node 2's request to node 1 gave {other:?}"),
        }
        assert!(
            !one.learn(id(2), &two_again.introduction()).unwrap(),
            "an amnesiac's introduction is not taken"
        );
        assert_eq!(one.known(id(2)), Some(0xb2));
    }

    #[test]
    fn a_repaired_node_is_taken_back_only_once_the_replicated_record_is_adopted() {
        let (d1, d2) = (Arc::default(), Arc::default());
        let (one, two) = (node(1, 0xa1, &d1), node(2, 0xb2, &d2));
        exchange(&one, &two).unwrap();
        exchange(&two, &one).unwrap();
        // Node 2 loses its directory and repairs under a new incarnation.
        let repaired = node(2, 0xc3, &Arc::default());
        repaired.set_repairing(true);
        assert!(
            matches!(exchange(&repaired, &one), Err(Refusal::SenderForgot { .. })),
            "before the record, the repaired node's requests are refused"
        );
        assert!(
            matches!(
                exchange(&one, &repaired),
                Err(Refusal::Superseded { known: 0xb2, .. })
            ),
            "a request naming its old incarnation is refused"
        );
        assert!(
            repaired.forgotten().borrow().is_none(),
            "a repairing node does not stop on its old incarnation"
        );
        // The record is applied on both.
        one.adopt(id(2), 0xc3).unwrap();
        repaired.adopt(id(2), 0xc3).unwrap();
        repaired.set_repairing(false);
        assert_eq!(
            d1.lock().get(&id(2)),
            Some(&0xc3),
            "the adopted incarnation is on disk"
        );
        exchange(&one, &repaired).unwrap();
        exchange(&repaired, &one).unwrap();
        // A peer that has not applied the record yet is refused, and the
        // repaired node, its repair recorded, does not stop.
        let lagging = node(3, 0xd4, &Arc::default());
        lagging.adopt(id(2), 0xb2).unwrap();
        assert!(matches!(
            exchange(&lagging, &repaired),
            Err(Refusal::Superseded { .. })
        ));
        assert!(repaired.forgotten().borrow().is_none());
        // Without a repair, a node named under an old incarnation stops.
        let amnesiac = node(2, 0xe5, &Arc::default());
        assert!(matches!(
            exchange(&one, &amnesiac),
            Err(Refusal::ReceiverForgot { .. })
        ));
        assert!(amnesiac.forgotten().borrow().is_some());
    }

    #[test]
    fn misaddressed_and_malformed_requests_are_refused() {
        let one = Incarnations::in_memory(id(1), 0xa1);
        let two = Incarnations::in_memory(id(2), 0xb2);
        assert_eq!(
            one.judge(Some(&two.header_to(id(3)))),
            Err(Refusal::Misaddressed {
                to: id(3),
                own: id(1)
            })
        );
        for bad in [
            None,
            Some(""),
            Some("2:00000000000000b2"),
            Some("2:b2>1:0"),
            Some("x:00000000000000b2>1:0000000000000000"),
        ] {
            assert!(matches!(one.judge(bad), Err(Refusal::Malformed(_))), "{bad:?}");
        }
        assert!(
            one.learn(id(2), "3:00000000000000b2").is_err(),
            "an introduction for another id"
        );
        assert_eq!(one.known(id(2)), None);
    }

    #[test]
    fn the_record_of_peers_is_bounded() {
        let full: BTreeMap<NodeId, u64> = (1..=KNOWN_PEERS_MAX as u64).map(|n| (id(n + 1), n)).collect();
        let one = Incarnations::new(id(1), 0xa1, full, Box::new(|_| Ok(())));
        let newcomer = Incarnations::in_memory(id(KNOWN_PEERS_MAX as u64 + 7), 0xb2);
        assert!(matches!(
            one.judge(Some(&newcomer.header_to(id(1)))),
            Err(Refusal::Unrecorded { .. })
        ));
        assert_eq!(one.known(id(KNOWN_PEERS_MAX as u64 + 7)), None);
    }

    #[test]
    fn a_failed_record_admits_nothing() {
        let one = Incarnations::new(
            id(1),
            0xa1,
            BTreeMap::new(),
            Box::new(|_| Err(std::io::Error::other("disk full"))),
        );
        let two = Incarnations::in_memory(id(2), 0xb2);
        assert!(matches!(
            one.judge(Some(&two.header_to(id(1)))),
            Err(Refusal::Unrecorded { .. })
        ));
        assert_eq!(one.known(id(2)), None);
        assert!(two.learn(id(1), &one.introduction()).unwrap());
        assert!(one.learn(id(2), &two.introduction()).is_err());
    }
}
