//! The fault model: what can go wrong between nodes, drawn from a run's
//! seed, and a network that applies it.
//!
//! Nodes are numbered from 1. A message may be lost, delivered twice, or
//! delayed by up to [`LinkFaults::delay_max`] steps (so messages overtake
//! each other); a [`Partition`] splits the nodes into sides that cannot
//! reach each other until it heals.

use std::collections::BTreeMap;

use rand::rngs::StdRng;
use rand::Rng;

/// Faults on every link, changed as the run goes on (healing sets them to
/// none).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LinkFaults {
    /// Chance that a message is lost.
    pub drop: f64,
    /// Chance that a message is delivered twice.
    pub duplicate: f64,
    /// Longest delay of a message, in steps (at least 1).
    pub delay_max: u64,
}

impl LinkFaults {
    /// Links that lose and duplicate nothing; delays stay as drawn.
    pub fn healed(self) -> LinkFaults {
        LinkFaults {
            drop: 0.0,
            duplicate: 0.0,
            ..self
        }
    }
}

/// Nodes on different sides cannot reach each other until `until`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Partition {
    /// The side of each node (index `id - 1`).
    pub sides: Vec<u8>,
    /// The step at which it heals.
    pub until: u64,
}

impl Partition {
    /// Draws a partition of `size` nodes lasting `length` steps from `now`:
    /// half the time one of `leaders` alone against the rest (when there is
    /// a leader), otherwise every node on a random side.
    pub fn draw(rng: &mut StdRng, size: usize, leaders: &[u64], now: u64, length: u64) -> Partition {
        let sides = if !leaders.is_empty() && rng.gen_bool(0.5) {
            let leader = leaders[rng.gen_range(0..leaders.len())];
            (1..=size as u64).map(|id| u8::from(id == leader)).collect()
        } else {
            (0..size).map(|_| rng.gen_range(0..2)).collect()
        };
        Partition {
            sides,
            until: now + length,
        }
    }

    /// Whether `from` and `to` are on different sides.
    pub fn separates(&self, from: u64, to: u64) -> bool {
        self.sides[(from - 1) as usize] != self.sides[(to - 1) as usize]
    }
}

/// Messages in flight between simulated nodes, in delivery order.
#[derive(Debug)]
pub struct Network<M> {
    /// Keyed by (step due, sequence number): ties leave in sending order.
    in_flight: BTreeMap<(u64, u64), (u64, u64, M)>,
    sent: u64,
    /// The partition in force, if any.
    pub partition: Option<Partition>,
}

impl<M> Default for Network<M> {
    fn default() -> Self {
        Network {
            in_flight: BTreeMap::new(),
            sent: 0,
            partition: None,
        }
    }
}

impl<M: Clone> Network<M> {
    /// Whether a partition keeps `from` from reaching `to` now.
    pub fn partitioned(&self, from: u64, to: u64) -> bool {
        self.partition
            .as_ref()
            .is_some_and(|partition| partition.separates(from, to))
    }

    /// Sends `message` from `from` to `to` at step `now`, through the faults.
    pub fn send(&mut self, rng: &mut StdRng, faults: &LinkFaults, now: u64, from: u64, to: u64, message: M) {
        if self.partitioned(from, to) || rng.gen_bool(faults.drop) {
            return;
        }
        let copies = if rng.gen_bool(faults.duplicate) { 2 } else { 1 };
        for _ in 0..copies {
            let delay = rng.gen_range(1..=faults.delay_max.max(1));
            self.sent += 1;
            self.in_flight
                .insert((now + delay, self.sent), (from, to, message.clone()));
        }
    }

    /// The next message due by step `now`, as `(from, to, message)`; a
    /// message that a partition separates when it arrives is lost.
    pub fn deliver_due(&mut self, now: u64) -> Option<(u64, u64, M)> {
        loop {
            let entry = self.in_flight.first_entry()?;
            if entry.key().0 > now {
                return None;
            }
            let (from, to, message) = entry.remove();
            if !self.partitioned(from, to) {
                return Some((from, to, message));
            }
        }
    }

    /// Ends the partition once its time is up; returns whether it did.
    pub fn heal_partition_due(&mut self, now: u64) -> bool {
        if self
            .partition
            .as_ref()
            .is_some_and(|partition| now >= partition.until)
        {
            self.partition = None;
            return true;
        }
        false
    }

    /// Messages in flight.
    pub fn len(&self) -> usize {
        self.in_flight.len()
    }

    /// Whether no message is in flight.
    pub fn is_empty(&self) -> bool {
        self.in_flight.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;

    use super::*;

    #[test]
    fn messages_arrive_in_due_order_and_a_partition_loses_them() {
        let mut rng = StdRng::seed_from_u64(1);
        let faults = LinkFaults {
            drop: 0.0,
            duplicate: 0.0,
            delay_max: 1,
        };
        let mut network = Network::default();
        network.send(&mut rng, &faults, 0, 1, 2, "a");
        network.send(&mut rng, &faults, 0, 2, 1, "b");
        assert_eq!(network.deliver_due(0), None, "nothing arrives before its delay");
        assert_eq!(network.deliver_due(1), Some((1, 2, "a")));
        network.partition = Some(Partition {
            sides: vec![0, 1],
            until: 5,
        });
        assert_eq!(network.deliver_due(1), None, "lost across the partition");
        network.send(&mut rng, &faults, 1, 1, 2, "c");
        assert!(network.is_empty(), "not sent across the partition");
        assert!(!network.heal_partition_due(4));
        assert!(network.heal_partition_due(5));
        network.send(&mut rng, &faults, 5, 1, 2, "d");
        assert_eq!(network.deliver_due(6), Some((1, 2, "d")));
    }

    #[test]
    fn a_drawn_partition_isolating_a_leader_puts_it_alone() {
        let mut rng = StdRng::seed_from_u64(3);
        for _ in 0..20 {
            let partition = Partition::draw(&mut rng, 5, &[2], 10, 100);
            assert_eq!(partition.until, 110);
            assert_eq!(partition.sides.len(), 5);
        }
    }
}
