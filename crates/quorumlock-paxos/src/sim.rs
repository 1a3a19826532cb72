//! A simulated disk and network for the [`Driver`](crate::Driver), so that
//! the simulations run the production driver and inject faults through its
//! seams.
//!
//! - [`SimDisk`] makes each Ready's records durable after a drawn delay, in
//!   order; a crash keeps a drawn prefix of what was still pending and loses
//!   the rest — the moment between a persist and the messages that follow
//!   it is where a crash hurts, and every step of a run can be that moment.
//!   It also checks what an acceptor's disk must never see: a promise that
//!   does not rise, an acceptance below the promise.
//! - [`SimTransport`] sends through a shared [`Network`] of the fault model.
//!
//! Simulations are single-threaded: disks and links are shared with the
//! simulation through `Rc<RefCell<_>>`, so it can read a crashed node's disk
//! and deliver messages.

use std::cell::RefCell;
use std::collections::{BTreeMap, VecDeque};
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use quorumlock_simkit::{LinkFaults, Network};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::core::message::Envelope;
use crate::core::ready::{Persist, ReadyNumber};
use crate::core::types::{Accepted, Ballot, Configuration, Slot};
use crate::core::DurableState;
use crate::driver::{Storage, StorageFailure, Transport};

/// What a simulated node's disk holds durably.
#[derive(Debug, Clone)]
pub struct DiskImage<C> {
    /// The promise.
    pub promised: Ballot,
    /// Accepted records above the snapshot.
    pub accepted: BTreeMap<Slot, Accepted<C>>,
    /// The latest snapshot.
    pub snapshot: Option<(Slot, Arc<Vec<u8>>)>,
    /// The configuration in force after the snapshot's slot.
    pub snapshot_config: Option<Arc<Configuration>>,
    /// The boot counter.
    pub boot: u64,
}

impl<C> Default for DiskImage<C> {
    fn default() -> Self {
        DiskImage {
            promised: Ballot::ZERO,
            accepted: BTreeMap::new(),
            snapshot: None,
            snapshot_config: None,
            boot: 0,
        }
    }
}

impl<C: Clone> DiskImage<C> {
    /// What a replica restarted on this disk recovers.
    pub fn durable_state(&self) -> DurableState<C> {
        DurableState {
            promised: self.promised,
            accepted: self.accepted.clone(),
            snapshot: self.snapshot.clone(),
            snapshot_config: self.snapshot_config.clone(),
        }
    }

    /// Writes records durably, refusing what an acceptor's disk must never
    /// hold.
    fn write(&mut self, records: Vec<Persist<C>>) -> Result<(), String> {
        for record in records {
            match record {
                Persist::Promise(ballot) => {
                    if ballot <= self.promised {
                        return Err(format!(
                            "durable promise: promise {ballot} persisted, not above {}",
                            self.promised
                        ));
                    }
                    self.promised = ballot;
                }
                Persist::Accept { slot, accepted } => {
                    if accepted.ballot < self.promised {
                        return Err(format!(
                            "acceptor: slot {slot} accepted at {} below the durable promise {}",
                            accepted.ballot, self.promised
                        ));
                    }
                    if self
                        .snapshot
                        .as_ref()
                        .is_some_and(|(covered, _)| slot <= *covered)
                    {
                        return Err(format!(
                            "acceptor: slot {slot} recorded though a snapshot covers it"
                        ));
                    }
                    self.promised = self.promised.max(accepted.ballot);
                    self.accepted.insert(slot, accepted);
                }
                Persist::Snapshot { slot, data, config } => {
                    self.accepted = self.accepted.split_off(&(slot + 1));
                    self.snapshot = Some((slot, data));
                    self.snapshot_config = Some(config);
                }
            }
        }
        Ok(())
    }
}

/// A pending write: the Ready's number, its records, and the step at which
/// it becomes durable.
type PendingWrite<C> = (ReadyNumber, Vec<Persist<C>>, u64);

#[derive(Debug)]
struct DiskState<C> {
    image: DiskImage<C>,
    pending: VecDeque<PendingWrite<C>>,
    durable: ReadyNumber,
    violation: Option<String>,
    rng: StdRng,
    latency_max: u64,
}

/// One simulated node's disk. Cloning shares it.
#[derive(Debug)]
pub struct SimDisk<C> {
    state: Rc<RefCell<DiskState<C>>>,
    now: Arc<AtomicU64>,
}

impl<C> Clone for SimDisk<C> {
    fn clone(&self) -> Self {
        SimDisk {
            state: self.state.clone(),
            now: self.now.clone(),
        }
    }
}

impl<C: Clone> SimDisk<C> {
    /// An empty disk whose writes take up to `latency_max` steps of `now`.
    pub fn new(seed: u64, latency_max: u64, now: Arc<AtomicU64>) -> SimDisk<C> {
        Self::starting_at_boot(seed, latency_max, now, 0)
    }

    /// An empty disk whose boot counter starts after `boot` (a disk that
    /// replaces a lost one: see `crate::engine::first_boot`).
    pub fn starting_at_boot(seed: u64, latency_max: u64, now: Arc<AtomicU64>, boot: u64) -> SimDisk<C> {
        SimDisk {
            state: Rc::new(RefCell::new(DiskState {
                image: DiskImage {
                    boot,
                    ..DiskImage::default()
                },
                pending: VecDeque::new(),
                durable: 0,
                violation: None,
                rng: StdRng::seed_from_u64(seed),
                latency_max,
            })),
            now,
        }
    }

    /// Makes the writes that are due durable, in order; returns whether any
    /// were.
    pub fn sync_due(&self) -> bool {
        let now = self.now.load(Ordering::Relaxed);
        let mut state = self.state.borrow_mut();
        let mut synced = false;
        while state.pending.front().is_some_and(|(_, _, due)| *due <= now) {
            let (number, records, _) = state.pending.pop_front().expect("checked above");
            synced = true;
            if let Err(violation) = state.image.write(records) {
                state.violation.get_or_insert(violation);
            }
            state.durable = number;
        }
        synced
    }

    /// Whether writes are pending.
    pub fn has_pending(&self) -> bool {
        !self.state.borrow().pending.is_empty()
    }

    /// The node crashed: a drawn prefix of the pending writes reached the
    /// disk, the rest is lost. The next life starts from the image, with its
    /// Ready numbers from 1 again and its boot counter raised.
    pub fn crash(&self) {
        let mut state = self.state.borrow_mut();
        let kept = {
            let pending = state.pending.len();
            state.rng.gen_range(0..=pending)
        };
        for _ in 0..kept {
            let (_, records, _) = state.pending.pop_front().expect("within the pending writes");
            if let Err(violation) = state.image.write(records) {
                state.violation.get_or_insert(violation);
            }
        }
        state.pending.clear();
        state.durable = 0;
        state.image.boot += 1;
    }

    /// The durable image.
    pub fn image(&self) -> DiskImage<C> {
        self.state.borrow().image.clone()
    }

    /// The first broken rule of acceptor storage, if any.
    pub fn violation(&self) -> Option<String> {
        self.state.borrow().violation.clone()
    }
}

impl<C: Clone> Storage<C> for SimDisk<C> {
    fn persist(&mut self, number: ReadyNumber, records: Vec<Persist<C>>) -> Result<(), StorageFailure> {
        let now = self.now.load(Ordering::Relaxed);
        let mut state = self.state.borrow_mut();
        assert!(
            number > state.pending.back().map_or(state.durable, |(last, _, _)| *last),
            "Readys reach storage in order"
        );
        let latency_max = state.latency_max;
        let latency = state.rng.gen_range(0..=latency_max);
        // In order: never due before the write ahead of it.
        let due = state
            .pending
            .back()
            .map_or(now + latency, |(_, _, due)| (*due).max(now + latency));
        state.pending.push_back((number, records, due));
        drop(state);
        // A write with no latency is durable at once.
        self.sync_due();
        Ok(())
    }

    fn durable_through(&mut self) -> Result<ReadyNumber, StorageFailure> {
        Ok(self.state.borrow().durable)
    }
}

/// The links between simulated nodes: the fault model's network, its
/// faults, and the randomness and time it draws on.
#[derive(Debug)]
pub struct Links<C> {
    /// Messages in flight and the partition in force.
    pub network: Network<Envelope<C>>,
    /// Faults on every link.
    pub faults: LinkFaults,
    rng: StdRng,
    now: Arc<AtomicU64>,
}

impl<C: Clone> Links<C> {
    /// Links with `faults`, drawing from `seed`, timed by `now`.
    pub fn new(seed: u64, faults: LinkFaults, now: Arc<AtomicU64>) -> Rc<RefCell<Links<C>>> {
        Rc::new(RefCell::new(Links {
            network: Network::default(),
            faults,
            rng: StdRng::seed_from_u64(seed),
            now,
        }))
    }

    /// Sends through the faults.
    pub fn send(&mut self, envelope: Envelope<C>) {
        let now = self.now.load(Ordering::Relaxed);
        let (from, to) = (envelope.from.get(), envelope.to.get());
        self.network
            .send(&mut self.rng, &self.faults, now, from, to, envelope);
    }

    /// The next message due now, if any.
    pub fn deliver_due(&mut self) -> Option<Envelope<C>> {
        let now = self.now.load(Ordering::Relaxed);
        self.network.deliver_due(now).map(|(_, _, envelope)| envelope)
    }
}

/// One node's side of the links.
pub struct SimTransport<C> {
    links: Rc<RefCell<Links<C>>>,
}

impl<C> SimTransport<C> {
    /// Sends through `links`.
    pub fn new(links: Rc<RefCell<Links<C>>>) -> Self {
        SimTransport { links }
    }
}

impl<C: Clone> Transport<C> for SimTransport<C> {
    fn send(&mut self, envelope: Envelope<C>) {
        self.links.borrow_mut().send(envelope);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::types::Value;
    use quorumlock_core::consensus::NodeId;

    fn accept(slot: u64, round: u64) -> Persist<u64> {
        Persist::Accept {
            slot: Slot::new(slot),
            accepted: Accepted {
                ballot: Ballot {
                    epoch: 0,
                    round,
                    node: NodeId::new(1),
                },
                value: Value::Noop,
            },
        }
    }

    #[test]
    fn writes_become_durable_in_order_and_a_crash_keeps_only_a_prefix() {
        let now = Arc::new(AtomicU64::new(0));
        let mut disk: SimDisk<u64> = SimDisk::new(7, 5, now.clone());
        for number in 1..=20 {
            disk.persist(number, vec![accept(number, 1)]).unwrap();
        }
        now.store(100, Ordering::Relaxed);
        assert!(disk.sync_due());
        assert_eq!(disk.durable_through(), Ok(20));
        for number in 21..=40 {
            disk.persist(number, vec![accept(number, 1)]).unwrap();
        }
        disk.crash();
        let image = disk.image();
        let slots: Vec<Slot> = image.accepted.keys().copied().collect();
        assert_eq!(
            slots,
            (1..=slots.len() as u64).map(Slot::new).collect::<Vec<_>>(),
            "a prefix, no holes"
        );
        assert!(slots.len() >= 20);
        assert_eq!(image.boot, 1);
        assert_eq!(disk.durable_through(), Ok(0), "a new life counts Readys from 1");
    }

    #[test]
    fn the_disk_refuses_a_falling_promise_and_an_acceptance_below_it() {
        let now = Arc::new(AtomicU64::new(0));
        let mut disk: SimDisk<u64> = SimDisk::new(1, 0, now);
        disk.persist(
            1,
            vec![Persist::Promise(Ballot {
                epoch: 0,
                round: 3,
                node: NodeId::new(2),
            })],
        )
        .unwrap();
        disk.persist(2, vec![accept(1, 2)]).unwrap();
        assert!(disk.violation().unwrap().starts_with("acceptor"));
        let mut disk: SimDisk<u64> = SimDisk::new(1, 0, Arc::new(AtomicU64::new(0)));
        disk.persist(
            1,
            vec![Persist::Promise(Ballot {
                epoch: 0,
                round: 3,
                node: NodeId::new(2),
            })],
        )
        .unwrap();
        disk.persist(
            2,
            vec![Persist::Promise(Ballot {
                epoch: 0,
                round: 3,
                node: NodeId::new(2),
            })],
        )
        .unwrap();
        assert!(disk.violation().unwrap().starts_with("durable promise"));
    }
}
