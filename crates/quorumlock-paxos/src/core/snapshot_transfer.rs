//! Snapshot transfer. A peer whose wanted slots were compacted away gets the
//! first chunk of the snapshot in answer to its `Learn` and pulls every next
//! one itself, one at a time, from the node that sent the first: at most one
//! chunk per receiver is on the way, the receiver sets the pace, and no
//! message is larger than a chunk. The receiver assembles the bytes and
//! hands the whole snapshot to its driver to decode before anything is
//! installed or forgotten.

use std::sync::Arc;

use super::message::Message;
use super::ready::ReceivedSnapshot;
use super::types::{Command, Configuration, Slot};
use super::Replica;
use quorumlock_core::consensus::NodeId;

/// A snapshot this node serves one receiver. It keeps the bytes it started
/// with even when a newer snapshot replaces them here, so that a transfer
/// under way is not started over at every compaction.
#[derive(Debug, Clone)]
pub(super) struct Serving {
    slot: Slot,
    data: Arc<Vec<u8>>,
    config: Arc<Configuration>,
    /// When the receiver last asked (the transfer started or a chunk was
    /// pulled).
    pulled_at: u64,
}

/// A snapshot this node is receiving.
#[derive(Debug)]
pub(super) struct Incoming {
    /// Its sender: every chunk comes from it, as two nodes' snapshots of
    /// one slot need not be the same bytes.
    from: NodeId,
    slot: Slot,
    total: u64,
    data: Vec<u8>,
    config: Arc<Configuration>,
    /// When the last chunk arrived.
    received_at: u64,
    /// Chunks taken so far.
    chunks: u64,
}

impl<C: Command> Replica<C> {
    /// Starts serving `to` this node's latest snapshot from its first chunk,
    /// unless `to` is pulling that snapshot already (it pulled within an
    /// election timeout). Returns the slot the snapshot covers when a
    /// transfer started.
    pub(super) fn serve_snapshot(&mut self, to: NodeId) -> Option<Slot> {
        let data = self.snapshot.clone()?;
        let (slot, now) = (self.compacted, self.now);
        let live = self.snapshot_serving.get(&to).is_some_and(|serving| {
            serving.slot == slot && now - serving.pulled_at < self.config.election_ticks
        });
        if live {
            return None;
        }
        let serving = Serving {
            slot,
            data,
            config: self.configuration_at(slot),
            pulled_at: now,
        };
        self.send_chunk(to, &serving, 0);
        self.snapshot_serving.insert(to, serving);
        Some(slot)
    }

    /// `from` asks for the chunk at `offset` of the snapshot at `slot`.
    pub(super) fn on_snapshot_pull(&mut self, from: NodeId, slot: Slot, offset: u64) {
        let now = self.now;
        let serving = match self.snapshot_serving.get(&from) {
            Some(serving) if serving.slot == slot => Some(serving.clone()),
            // This node restarted, or forgot a transfer that stalled: its
            // own snapshot of that slot is the one it served.
            _ if slot == self.compacted => self.snapshot.clone().map(|data| Serving {
                slot,
                data,
                config: self.configuration_at(slot),
                pulled_at: now,
            }),
            _ => None,
        };
        match serving {
            Some(mut serving) if offset < serving.data.len() as u64 => {
                serving.pulled_at = now;
                self.send_chunk(from, &serving, offset);
                self.snapshot_serving.insert(from, serving);
            }
            // The receiver has it all (this pull is a late duplicate).
            Some(_) => {
                self.snapshot_serving.remove(&from);
            }
            // That snapshot is gone from here: the receiver starts over
            // with the newer one this node holds.
            None if slot < self.compacted => {
                self.snapshot_serving.remove(&from);
                self.serve_snapshot(from);
            }
            None => {}
        }
    }

    fn send_chunk(&mut self, to: NodeId, serving: &Serving, offset: u64) {
        let total = serving.data.len();
        let start = usize::try_from(offset).map_or(total, |offset| offset.min(total));
        let end = start
            .saturating_add(self.config.snapshot_chunk_bytes.max(1))
            .min(total);
        self.send(
            to,
            Message::SnapshotChunk {
                slot: serving.slot,
                offset: start as u64,
                total: total as u64,
                data: serving.data[start..end].to_vec(),
                config: serving.config.clone(),
            },
        );
    }

    /// A chunk of `from`'s snapshot at `slot` arrived: it extends the
    /// transfer under way when it is the next one, starts one when it is a
    /// first chunk and nothing newer is under way, and is dropped otherwise
    /// (a duplicate, one out of order, or one of an older snapshot).
    pub(super) fn on_snapshot_chunk(
        &mut self,
        from: NodeId,
        slot: Slot,
        offset: u64,
        total: u64,
        data: Vec<u8>,
        config: Arc<Configuration>,
    ) {
        if self
            .snapshot_incoming
            .as_ref()
            .is_some_and(|incoming| incoming.slot <= self.applied)
        {
            self.snapshot_incoming = None;
        }
        // One snapshot at a time is decoded; a newer one is asked for again
        // once it is installed, if still needed.
        if slot <= self.applied || self.snapshot_decoding.is_some() {
            return;
        }
        if total > self.config.snapshot_bytes_max {
            tracing::warn!(
                node = %self.config.id, %from, %slot, total,
                limit = self.config.snapshot_bytes_max,
                "snapshot refused: larger than the most this node takes from a peer"
            );
            return;
        }
        let chunk = data.len() as u64;
        let fits = offset.checked_add(chunk).is_some_and(|end| end <= total);
        if !fits || (chunk == 0 && offset < total) {
            tracing::warn!(node = %self.config.id, %from, %slot, offset, chunk, total, "malformed snapshot chunk dropped");
            return;
        }
        let (now, stalled_after) = (self.now, self.config.election_ticks);
        match &mut self.snapshot_incoming {
            Some(incoming) if incoming.slot == slot && incoming.from == from && incoming.total == total => {
                if offset != incoming.data.len() as u64 {
                    return;
                }
                incoming.data.extend_from_slice(&data);
                incoming.received_at = now;
                incoming.chunks += 1;
            }
            current => {
                let starts = offset == 0
                    && current.as_ref().is_none_or(|incoming| {
                        slot > incoming.slot || now - incoming.received_at >= stalled_after
                    });
                if !starts {
                    return;
                }
                *current = Some(Incoming {
                    from,
                    slot,
                    total,
                    data,
                    config,
                    received_at: now,
                    chunks: 1,
                });
            }
        }
        let Some(incoming) = &self.snapshot_incoming else {
            unreachable!("a transfer is under way");
        };
        let received = incoming.data.len() as u64;
        if received < total {
            self.send(
                from,
                Message::SnapshotPull {
                    slot,
                    offset: received,
                },
            );
            return;
        }
        let Some(Incoming {
            slot,
            data,
            config,
            chunks,
            ..
        }) = self.snapshot_incoming.take()
        else {
            unreachable!("a transfer is under way");
        };
        tracing::info!(node = %self.config.id, %from, %slot, bytes = data.len(), chunks, "snapshot received from a peer");
        self.snapshot_decoding = Some(slot);
        self.ready.snapshot_received = Some(ReceivedSnapshot {
            slot,
            data: Arc::new(data),
            config,
        });
    }

    /// The node a snapshot is being received from, and its address as the
    /// snapshot's configuration gives it: a node that knows no
    /// configuration yet (one that joins, or repairs) has no other address
    /// to pull the next chunks from.
    pub fn snapshot_source(&self) -> Option<(NodeId, &str)> {
        let incoming = self.snapshot_incoming.as_ref()?;
        let addr = incoming.config.addresses.get(&incoming.from)?;
        Some((incoming.from, addr.as_str()))
    }

    /// Whether a snapshot is being received or decoded: asking for chosen
    /// values meanwhile would only start its transfer over.
    pub(super) fn receiving_snapshot(&self) -> bool {
        self.snapshot_incoming.is_some() || self.snapshot_decoding.is_some()
    }

    /// Pulls again a chunk that did not come, gives up on a sender silent
    /// for two election timeouts (the next `Learn` finds another), and
    /// forgets transfers no receiver pulled for as long.
    pub(super) fn tick_snapshot_transfer(&mut self) {
        let (now, given_up_after) = (self.now, 2 * self.config.election_ticks);
        self.snapshot_serving
            .retain(|_, serving| now - serving.pulled_at < given_up_after);
        let Some(incoming) = &self.snapshot_incoming else {
            return;
        };
        let quiet = now - incoming.received_at;
        let retry_ticks = 2 * self.config.heartbeat_ticks;
        if quiet >= given_up_after || incoming.slot <= self.applied {
            self.snapshot_incoming = None;
            self.learn_asked_at = None;
        } else if quiet >= retry_ticks && quiet % retry_ticks == 0 {
            let (to, slot, offset) = (incoming.from, incoming.slot, incoming.data.len() as u64);
            self.send(to, Message::SnapshotPull { slot, offset });
        }
    }

    /// The driver decoded the snapshot at `slot` this node received: the
    /// replica installs it (unless it applied past it meanwhile), forgets
    /// the slots it covers and persists it in its next Ready, which also
    /// tells the driver to install it in the state machine.
    pub fn install_snapshot(&mut self, slot: Slot, data: Arc<Vec<u8>>, config: Arc<Configuration>) {
        if self.snapshot_decoding == Some(slot) {
            self.snapshot_decoding = None;
        }
        self.on_snapshot(slot, data, config);
    }

    /// The driver could not decode the snapshot at `slot` (corrupt, or of
    /// an incompatible version): nothing of it is kept, and chosen values
    /// (or a snapshot) are asked for again after the usual pause.
    pub fn snapshot_undecodable(&mut self, slot: Slot) {
        if self.snapshot_decoding == Some(slot) {
            self.snapshot_decoding = None;
        }
    }
}
