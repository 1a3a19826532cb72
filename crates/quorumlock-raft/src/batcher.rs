//! Batches client commands into Raft log entries.
//!
//! openraft 0.9 turns every `client_write` into its own log entry: one
//! RaftCore turn, one storage append, one response channel and one apply
//! call each. Under load that per-entry work, not fsync or the network, is
//! what limits the leader. The batcher puts every command that queued while
//! earlier entries were being ordered into one entry (as the Multi-Paxos
//! engine puts them into one slot), so the per-entry work is shared.
//!
//! A lone command is written at once: batching only ever takes what is
//! already waiting, so it adds no latency. Entries are handed to openraft in
//! the order their commands were queued; at most [`ENTRIES_IN_FLIGHT_MAX`]
//! are unanswered at once, and commands arriving meanwhile wait for the next.

use std::sync::Arc;

use openraft::error::{ClientWriteError, ForwardToLeader};
use openraft::BasicNode;
use tokio::sync::{mpsc, oneshot, Semaphore};

use super::types::Raft;
use quorumlock_core::consensus::{CommandResult, EngineError, LeaderInfo, NodeId};
use quorumlock_core::lock::Command;

/// Most commands in one log entry (as in one Multi-Paxos slot).
pub const COMMANDS_PER_ENTRY_MAX: usize = 256;
/// Most encoded bytes of commands in one entry; a single larger command
/// still gets an entry of its own.
pub const ENTRY_BYTES_MAX: usize = 2 << 20;
/// Entries handed to openraft and not yet answered.
pub const ENTRIES_IN_FLIGHT_MAX: usize = 8;

type Reply = oneshot::Sender<Result<CommandResult, EngineError>>;

/// A command waiting to be put in an entry.
struct Queued {
    command: Command,
    bytes: usize,
    reply: Reply,
}

/// The queue into the batching task. Dropping every clone stops the task.
#[derive(Clone)]
pub struct Batcher {
    queue: mpsc::Sender<Queued>,
}

impl Batcher {
    /// Starts the batching task over `raft`; `queued_max` bounds the
    /// commands waiting to be batched.
    pub fn start(raft: Raft, queued_max: usize) -> Batcher {
        let (queue, commands) = mpsc::channel(queued_max);
        tokio::spawn(run(raft, commands));
        Batcher { queue }
    }

    /// Orders `command` in the next entry and waits for its result.
    pub async fn propose(&self, command: Command) -> Result<CommandResult, EngineError> {
        let bytes = bincode::serialized_size(&command).map_or(usize::MAX, |bytes| bytes as usize);
        let (reply, answer) = oneshot::channel();
        self.queue
            .send(Queued {
                command,
                bytes,
                reply,
            })
            .await
            .map_err(|_| EngineError::ShuttingDown)?;
        answer.await.map_err(|_| EngineError::ShuttingDown)?
    }
}

async fn run(raft: Raft, mut commands: mpsc::Receiver<Queued>) {
    let in_flight = Arc::new(Semaphore::new(ENTRIES_IN_FLIGHT_MAX));
    let mut carried: Option<Queued> = None;
    loop {
        let first = match carried.take() {
            Some(first) => first,
            None => match commands.recv().await {
                Some(first) => first,
                None => return,
            },
        };
        // Waiting here is what lets a batch grow while entries are busy.
        let Ok(permit) = in_flight.clone().acquire_owned().await else {
            return;
        };
        let mut bytes = first.bytes;
        let mut batch = vec![first];
        while batch.len() < COMMANDS_PER_ENTRY_MAX {
            let Ok(next) = commands.try_recv() else {
                break;
            };
            if bytes.saturating_add(next.bytes) > ENTRY_BYTES_MAX {
                carried = Some(next);
                break;
            }
            bytes += next.bytes;
            batch.push(next);
        }
        let (entry, replies): (Vec<Command>, Vec<Reply>) = batch
            .into_iter()
            .map(|queued| (queued.command, queued.reply))
            .unzip();
        // Handed over here, in queue order; answered in a task of its own.
        match raft.client_write_ff(entry).await {
            Ok(written) => {
                tokio::spawn(async move {
                    let answer = written.await;
                    drop(permit);
                    match answer {
                        Ok(Ok(response)) => answer_all(replies, response.data),
                        Ok(Err(error)) => fail_all(replies, &from_write_error(error)),
                        Err(_) => fail_all(replies, &EngineError::ShuttingDown),
                    }
                });
            }
            Err(fatal) => fail_all(replies, &super::engine::fatal(fatal)),
        }
    }
}

fn answer_all(replies: Vec<Reply>, results: Vec<CommandResult>) {
    if results.len() != replies.len() {
        let error = EngineError::Fatal(format!(
            "an entry of {} commands was applied with {} results",
            replies.len(),
            results.len()
        ));
        return fail_all(replies, &error);
    }
    for (reply, result) in replies.into_iter().zip(results) {
        // The caller may have given up; that is fine.
        let _ = reply.send(Ok(result));
    }
}

fn fail_all(replies: Vec<Reply>, error: &EngineError) {
    for reply in replies {
        let _ = reply.send(Err(error.clone()));
    }
}

fn from_write_error(error: ClientWriteError<NodeId, BasicNode>) -> EngineError {
    match error {
        ClientWriteError::ForwardToLeader(forward) => EngineError::NotLeader {
            leader: leader_of(&forward),
        },
        ClientWriteError::ChangeMembershipError(error) => {
            EngineError::Fatal(format!("unexpected membership error: {error}"))
        }
    }
}

/// The leader a refusal names, if it names one with its address.
pub fn leader_of(forward: &ForwardToLeader<NodeId, BasicNode>) -> Option<LeaderInfo> {
    match (forward.leader_id, &forward.leader_node) {
        (Some(id), Some(node)) => Some(LeaderInfo {
            id,
            addr: node.addr.clone(),
        }),
        _ => None,
    }
}
