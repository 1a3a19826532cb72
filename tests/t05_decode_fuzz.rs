//! t05: decoders of untrusted and replicated bytes, fuzzed with proptest.
//!
//! Every decoder a node runs on bytes from the network or from its own disk
//! — the Paxos transport's message batches, openraft's requests and log
//! entries, the acceptor's stored records, lock-state snapshots, and the
//! commands inside all of them — is fed arbitrary bytes and mutations of
//! valid encodings (flipped bytes, cut-offs, huge lengths). The property:
//! decoding never panics and either fails with a typed error or yields a
//! value, and whatever decodes is safe to use — a decoded command applied to
//! a live lock state keeps its invariants, a restored snapshot passes its
//! checks and keeps them under further commands, and a decoded Paxos message
//! stepped into a replica does not panic it.
//!
//! The random command sequences that drive the lock state machine itself
//! are in `src/lock/proptests.rs`; this file adds the decode side.

use std::collections::BTreeSet;
use std::sync::Arc;

use proptest::prelude::*;
use quorumlock_core::consensus::NodeId;
use quorumlock_core::lock::{Command, Credential, Fence, FencingToken, LockState, SecretDigest, SessionId};
use quorumlock_paxos::transport::decode_batch;
use quorumlock_paxos::{Ballot, Chosen, DurableState, Proposal, ProposalId, ReplicaConfig, Slot};

/// The engine's types, ordering lock commands.
type Accepted = quorumlock_paxos::Accepted<Command>;
type Message = quorumlock_paxos::Message<Command>;
type Replica = quorumlock_paxos::Replica<Command>;
type Value = quorumlock_paxos::Value<Command>;
use quorumlock_raft::types::{Entry, TypeConfig};

/// Longest arbitrary input.
const INPUT_BYTES_MAX: usize = 2_048;

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: 512,
        ..ProptestConfig::default()
    }
}

/// A lock state with sessions, a held lock, a queue and a fenced value, so
/// that decoded commands meet something to act on.
fn live_state() -> LockState {
    let mut state = LockState::default();
    for _ in 0..3 {
        state.apply(&Command::OpenSession {
            ttl_ms: 10_000,
            owner: owner(),
        });
    }
    for session in 1..=3 {
        state.apply(&Command::Acquire {
            session: SessionId::new(session),
            lock: "a".into(),
            wait: true,
            by: owner(),
        });
    }
    let token = state.current_token("a").expect("session 1 holds a");
    state.apply(&Command::Put {
        key: "k".into(),
        value: b"v".to_vec(),
        fence: Fence {
            lock: "a".into(),
            token,
        },
        session: SessionId::new(1),
        by: owner(),
    });
    state
}

/// The owner of the live state's sessions.
fn owner() -> Credential {
    Credential::of_secret(b"the live state's sessions")
}

/// The owner or a caller with any other secret and identity.
fn caller() -> impl Strategy<Value = Credential> {
    prop_oneof![
        3 => Just(owner()),
        1 => (proptest::collection::vec(any::<u8>(), 0..40), proptest::option::of(text())).prop_map(
            |(secret, identity)| Credential {
                secret: SecretDigest::of(&secret),
                identity,
            }
        ),
    ]
}

/// Applies `command` to `state` and checks the invariants afterwards.
fn apply_checked(state: &mut LockState, command: &Command) -> Result<(), TestCaseError> {
    state.apply(command);
    state
        .check_invariants()
        .map_err(|broken| TestCaseError::fail(format!("after {command:?}: {broken}")))
}

/// Any string, including empty, long and multi-byte ones.
fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        Just(String::new()),
        "[a-c]{1,3}",
        ".{0,40}",
        (500usize..530).prop_map(|length| "n".repeat(length)),
    ]
}

fn command() -> impl Strategy<Value = Command> {
    prop_oneof![
        (prop_oneof![Just(10_000u64), any::<u64>()], caller())
            .prop_map(|(ttl_ms, owner)| Command::OpenSession { ttl_ms, owner }),
        (session(), caller()).prop_map(|(session, by)| Command::CloseSession { session, by }),
        session().prop_map(|session| Command::ExpireSession { session }),
        proptest::collection::vec((session(), any::<u64>()), 0..4)
            .prop_map(|remaining| Command::CheckpointSessions { remaining }),
        (session(), text(), any::<bool>(), caller()).prop_map(|(session, lock, wait, by)| Command::Acquire {
            session,
            lock,
            wait,
            by
        }),
        (session(), text(), caller()).prop_map(|(session, lock, by)| Command::CancelWait {
            session,
            lock,
            by
        }),
        (session(), text(), token(), caller()).prop_map(|(session, lock, token, by)| Command::Release {
            session,
            lock,
            token,
            by
        }),
        (
            text(),
            proptest::collection::vec(any::<u8>(), 0..16),
            text(),
            token(),
            session(),
            caller()
        )
            .prop_map(|(key, value, lock, token, session, by)| Command::Put {
                key,
                value,
                fence: Fence { lock, token },
                session,
                by,
            }),
        (text(), text(), token(), session(), caller()).prop_map(|(key, lock, token, session, by)| {
            Command::Delete {
                key,
                fence: Fence { lock, token },
                session,
                by,
            }
        }),
    ]
}

/// A session id among the few the live state has (and some it has not).
fn session() -> impl Strategy<Value = SessionId> {
    (0u64..6).prop_map(SessionId::new)
}

/// A token near the live state's.
fn token() -> impl Strategy<Value = FencingToken> {
    (0u64..8).prop_map(FencingToken::new)
}

fn ballot() -> impl Strategy<Value = Ballot> {
    (0u64..3, 0u64..4, 1u64..4).prop_map(|(epoch, round, node)| Ballot {
        epoch,
        round,
        node: NodeId::new(node),
    })
}

fn value() -> impl Strategy<Value = Value> {
    prop_oneof![
        1 => Just(Value::Noop),
        3 => proptest::collection::vec(command(), 0..3).prop_map(|commands| {
            Value::Batch(Arc::new(
                commands
                    .into_iter()
                    .enumerate()
                    .map(|(seq, command)| Proposal {
                        id: ProposalId {
                            node: NodeId::new(1),
                            boot: 1,
                            seq: seq as u64,
                        },
                        command,
                    })
                    .collect(),
            ))
        }),
    ]
}

fn message() -> impl Strategy<Value = Message> {
    let slot = (0u64..8).prop_map(Slot::new);
    prop_oneof![
        ballot().prop_map(|ballot| Message::Probe { ballot }),
        (ballot(), any::<bool>()).prop_map(|(ballot, granted)| Message::ProbeReply { ballot, granted }),
        (ballot(), slot.clone()).prop_map(|(ballot, from_slot)| Message::Prepare { ballot, from_slot }),
        (
            ballot(),
            slot.clone(),
            proptest::collection::vec((slot.clone(), ballot(), value()), 0..3)
        )
            .prop_map(|(ballot, chosen_upto, accepted)| Message::Promise {
                ballot,
                chosen_upto,
                accepted: accepted
                    .into_iter()
                    .map(|(slot, ballot, value)| (slot, Accepted { ballot, value }))
                    .collect(),
            }),
        (
            ballot(),
            proptest::collection::vec((slot.clone(), value()), 0..3),
            slot.clone()
        )
            .prop_map(|(ballot, entries, chosen_upto)| Message::Accept {
                ballot,
                entries,
                chosen_upto
            }),
        (ballot(), proptest::collection::vec(slot.clone(), 0..4))
            .prop_map(|(ballot, slots)| Message::Accepted { ballot, slots }),
        (ballot(), ballot()).prop_map(|(ballot, promised)| Message::Nack { ballot, promised }),
        (ballot(), slot.clone(), 0u64..4).prop_map(|(ballot, chosen_upto, seq)| Message::Heartbeat {
            ballot,
            chosen_upto,
            seq
        }),
        (ballot(), 0u64..4, slot.clone()).prop_map(|(ballot, seq, chosen_upto)| Message::HeartbeatAck {
            ballot,
            seq,
            chosen_upto
        }),
        (0u64..4).prop_map(|epoch| Message::EpochEnded { epoch }),
        slot.clone().prop_map(|from_slot| Message::Learn { from_slot }),
        proptest::collection::vec((slot.clone(), value()), 0..3).prop_map(|entries| Message::Chosen {
            entries: entries
                .into_iter()
                .map(|(slot, value)| Chosen { slot, value })
                .collect(),
        }),
        (
            slot.clone(),
            0u64..64,
            0u64..64,
            proptest::collection::vec(any::<u8>(), 0..32),
            proptest::collection::btree_set(1u64..6, 1..4)
        )
            .prop_map(|(slot, offset, total, data, voters)| Message::SnapshotChunk {
                slot,
                offset,
                total,
                data,
                config: Arc::new(quorumlock_paxos::Configuration::initial(
                    voters.into_iter().map(NodeId::new).collect(),
                    Default::default()
                )),
            }),
        (slot, 0u64..64).prop_map(|(slot, offset)| Message::SnapshotPull { slot, offset }),
    ]
}

/// One way to damage an encoding.
#[derive(Debug, Clone)]
enum Mutation {
    /// Replace the byte at this fraction of the length.
    Set { at: f64, byte: u8 },
    /// Cut the encoding at this fraction of its length.
    Truncate { at: f64 },
    /// Write this little-endian u64 (a length, count, id or token) here.
    Word { at: f64, word: u64 },
    /// Insert a byte here.
    Insert { at: f64, byte: u8 },
}

fn mutation() -> impl Strategy<Value = Mutation> {
    let at = 0.0f64..1.0;
    let word = prop_oneof![
        Just(u64::MAX),
        Just(u64::MAX - 1),
        Just(1u64 << 62),
        Just(1u64 << 32),
        Just(0u64),
        any::<u64>(),
    ];
    prop_oneof![
        (at.clone(), any::<u8>()).prop_map(|(at, byte)| Mutation::Set { at, byte }),
        at.clone().prop_map(|at| Mutation::Truncate { at }),
        (at.clone(), word).prop_map(|(at, word)| Mutation::Word { at, word }),
        (at, any::<u8>()).prop_map(|(at, byte)| Mutation::Insert { at, byte }),
    ]
}

fn mutate(mut bytes: Vec<u8>, mutations: &[Mutation]) -> Vec<u8> {
    for mutation in mutations {
        let position = |at: f64, len: usize| ((at * len as f64) as usize).min(len);
        match *mutation {
            Mutation::Set { at, byte } => {
                if !bytes.is_empty() {
                    let index = position(at, bytes.len() - 1);
                    bytes[index] = byte;
                }
            }
            Mutation::Truncate { at } => {
                let length = position(at, bytes.len());
                bytes.truncate(length);
            }
            Mutation::Word { at, word } => {
                let index = position(at, bytes.len());
                for (offset, byte) in word.to_le_bytes().into_iter().enumerate() {
                    match bytes.get_mut(index + offset) {
                        Some(slot) => *slot = byte,
                        None => bytes.push(byte),
                    }
                }
            }
            Mutation::Insert { at, byte } => {
                let index = position(at, bytes.len());
                bytes.insert(index, byte);
            }
        }
    }
    bytes
}

fn mutations() -> impl Strategy<Value = Vec<Mutation>> {
    proptest::collection::vec(mutation(), 1..4)
}

/// A follower replica of a three-node cluster, as messages from peer 2 find it.
fn replica() -> Replica {
    let members: BTreeSet<NodeId> = [1, 2, 3].into_iter().map(NodeId::new).collect();
    Replica::new(
        ReplicaConfig::new(NodeId::new(1), members, 1, 10),
        DurableState::default(),
    )
}

/// Steps `messages` from peer 2 into a fresh replica and drains its effects,
/// as the driver does: a snapshot received whole is decoded, and installed
/// only if it decodes.
fn step_all(messages: Vec<Message>) {
    let mut replica = replica();
    let drain = |replica: &mut Replica| {
        let ready = replica.take_ready();
        if let Some(received) = ready.snapshot_received {
            match LockState::restore(&received.data) {
                Ok(_) => replica.install_snapshot(received.slot, received.data, received.config),
                Err(_) => replica.snapshot_undecodable(received.slot),
            }
            let _ = replica.take_ready();
        }
    };
    for message in messages {
        replica.step(NodeId::new(2), message);
        drain(&mut replica);
        replica.tick();
        drain(&mut replica);
    }
}

/// A snapshot whose token or session counter sits at the top of u64 (or at
/// 0) is refused: restoring it would let the next grant wrap around and hand
/// out a token smaller than those before it, or the id 0 that means "none".
#[test]
fn snapshots_with_exhausted_or_zero_counters_are_refused() {
    let snapshot = LockState::default().snapshot();
    // An 8-byte magic, then bincode's fixed-width layout: the session
    // counter, then the token counter.
    for (offset, counter) in [(8, "session"), (16, "token")] {
        for value in [0, u64::MAX, u64::MAX - 1, (1 << 62) + 1] {
            let mut damaged = snapshot.clone();
            damaged[offset..offset + 8].copy_from_slice(&u64::to_le_bytes(value));
            let refusal = LockState::restore(&damaged)
                .err()
                .unwrap_or_else(|| panic!("a snapshot with {counter} counter {value} restored"));
            assert!(
                refusal.contains(&format!("next {counter} counter {value}")),
                "the refusal names the counter: {refusal}"
            );
        }
    }
    let mut edge = snapshot;
    edge[16..24].copy_from_slice(&u64::to_le_bytes(1 << 62));
    let mut state = LockState::restore(&edge).expect("a counter at the bound restores");
    let opened = state.apply(&Command::OpenSession {
        ttl_ms: 10_000,
        owner: owner(),
    });
    let session = match opened.result {
        Ok(quorumlock_core::lock::Outcome::SessionOpened { session, .. }) => session,
        other => panic!("OpenSession: {other:?}"),
    };
    for lock in ["a", "b"] {
        let command = Command::Acquire {
            session,
            lock: lock.into(),
            wait: false,
            by: owner(),
        };
        apply_checked(&mut state, &command).expect("grants above the bound keep the invariants");
    }
    assert_eq!(
        state.current_token("b"),
        Some(FencingToken::new((1 << 62) + 1)),
        "tokens keep rising"
    );
}

proptest! {
    #![proptest_config(config())]

    /// Arbitrary bytes into every decoder: each returns a value or a typed
    /// error without panicking; a lock state that restores satisfies its
    /// invariants; a command that decodes keeps a live state's invariants.
    #[test]
    fn arbitrary_bytes_decode_to_a_value_or_a_typed_error(
        bytes in proptest::collection::vec(any::<u8>(), 0..INPUT_BYTES_MAX),
    ) {
        if let Ok(messages) = decode_batch::<Command>(&bytes) {
            step_all(messages);
        }
        if let Ok(command) = bincode::deserialize::<Command>(&bytes) {
            apply_checked(&mut live_state(), &command)?;
        }
        if let Ok(state) = LockState::restore(&bytes) {
            prop_assert!(state.check_invariants().is_ok());
        }
        let _ = bincode::deserialize::<Entry>(&bytes);
        let _ = bincode::deserialize::<openraft::raft::AppendEntriesRequest<TypeConfig>>(&bytes);
        let _ = bincode::deserialize::<openraft::raft::VoteRequest<u64>>(&bytes);
        let _ = bincode::deserialize::<openraft::raft::InstallSnapshotRequest<TypeConfig>>(&bytes);
        let _ = bincode::deserialize::<Accepted>(&bytes);
        let _ = bincode::deserialize::<Ballot>(&bytes);
        let _ = bincode::deserialize::<(u64, Vec<u8>)>(&bytes);
    }

    /// Damaged encodings of valid commands: decoding never panics, and a
    /// command that still decodes keeps a live state's invariants, as do
    /// the valid ones.
    #[test]
    fn mutated_commands_decode_safely_and_keep_invariants(
        commands in proptest::collection::vec(command(), 1..8),
        damage in mutations(),
    ) {
        let mut state = live_state();
        for command in &commands {
            apply_checked(&mut state, command)?;
            let encoded = bincode::serialize(command).expect("a command encodes");
            prop_assert_eq!(&bincode::deserialize::<Command>(&encoded).expect("round trip"), command);
            if let Ok(decoded) = bincode::deserialize::<Command>(&mutate(encoded, &damage)) {
                apply_checked(&mut state, &decoded)?;
            }
        }
    }

    /// Damaged encodings of Paxos message batches: decoding never panics,
    /// and whatever decodes can be stepped into a replica.
    #[test]
    fn mutated_paxos_batches_decode_safely_and_step(
        messages in proptest::collection::vec(message(), 1..6),
        damage in mutations(),
    ) {
        let encoded = bincode::serialize(&messages).expect("messages encode");
        prop_assert_eq!(&decode_batch::<Command>(&encoded).expect("round trip"), &messages);
        step_all(messages);
        if let Ok(decoded) = decode_batch(&mutate(encoded, &damage)) {
            step_all(decoded);
        }
    }

    /// Damaged lock-state snapshots: restore never panics, and a state it
    /// accepts passes its checks and keeps them under further commands.
    #[test]
    fn mutated_snapshots_restore_safely_or_are_refused(
        setup in proptest::collection::vec(command(), 0..12),
        damage in mutations(),
        after in proptest::collection::vec(command(), 0..8),
    ) {
        let mut state = live_state();
        for command in &setup {
            state.apply(command);
        }
        let snapshot = state.snapshot();
        prop_assert_eq!(&LockState::restore(&snapshot).expect("an intact snapshot restores"), &state);
        if let Ok(mut restored) = LockState::restore(&mutate(snapshot, &damage)) {
            for command in &after {
                apply_checked(&mut restored, command)?;
            }
        }
    }
}
