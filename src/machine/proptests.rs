//! Property tests over random command sequences for [`ReplicatedKv`]: snapshot round trips,
//! determinism across replicas, exactly-once against a model, and restore of corrupt bytes.
//!
//! The machines use small limits (3 sessions, a 50 ms TTL, 4-byte keys, 8-byte values, a
//! 24-byte store) so that eviction, expiry and every rejection happen often.

use std::collections::BTreeMap;
use std::num::NonZeroU32;

use proptest::prelude::*;

use super::stream::testing::{Sink, Trickle};
use super::{
    ApplyContext, ClientId, KvCommand, KvLimits, KvOutput, KvStore, ReplicatedKv, SessionCommand,
    SessionConfig, SessionOutput, Sessions, StateMachine,
};

const LIMITS: KvLimits = KvLimits {
    key_bytes_max: 4,
    value_bytes_max: 8,
    data_bytes_max: 24,
    range_limit_max: 3,
};

fn machine(sessions_max: u32, session_ttl_ms: Option<u64>) -> ReplicatedKv {
    Sessions::with_config(
        KvStore::with_limits(LIMITS),
        SessionConfig {
            sessions_max: NonZeroU32::new(sessions_max).expect("nonzero"),
            session_ttl_ms,
        },
    )
}

fn tight() -> ReplicatedKv {
    machine(3, Some(50))
}

fn key() -> impl Strategy<Value = Vec<u8>> {
    // "long!" is over the 4-byte key limit.
    prop::sample::select(vec![&b""[..], b"a", b"ab", b"b", b"long!"]).prop_map(<[u8]>::to_vec)
}

fn value() -> impl Strategy<Value = Vec<u8>> {
    // Up to 9 bytes: one over the value limit.
    prop::collection::vec(0u8..3, 0..=9)
}

fn kv_command() -> impl Strategy<Value = KvCommand> {
    prop_oneof![
        (key(), value()).prop_map(|(key, value)| KvCommand::Put { key, value }),
        key().prop_map(|key| KvCommand::Delete { key }),
        (key(), prop::option::of(value()), prop::option::of(value()))
            .prop_map(|(key, expected, new)| KvCommand::CompareAndSwap { key, expected, new }),
        (key(), value()).prop_map(|(key, value)| KvCommand::Append { key, value }),
        key().prop_map(|key| KvCommand::Get { key }),
    ]
}

/// One log entry: a session command and how far the leader's clock moved (backwards too).
#[derive(Clone, Debug)]
struct Step {
    command: SessionCommand<KvCommand>,
    clock_delta_ms: i64,
}

fn step() -> impl Strategy<Value = Step> {
    (0u64..5, 1u64..6, kv_command(), -20i64..40).prop_map(
        |(client, seq, command, clock_delta_ms)| Step {
            command: SessionCommand {
                client: ClientId(client),
                seq,
                command,
            },
            clock_delta_ms,
        },
    )
}

fn steps() -> impl Strategy<Value = Vec<Step>> {
    prop::collection::vec(step(), 0..80)
}

/// Gives the steps consecutive log indexes from 1 and leader timestamps from 1_000 ms.
fn entries(steps: &[Step]) -> Vec<(SessionCommand<KvCommand>, ApplyContext<'static>)> {
    let mut timestamp_ms: u64 = 1_000;
    steps
        .iter()
        .zip(1u64..)
        .map(|(step, index)| {
            timestamp_ms = timestamp_ms.saturating_add_signed(step.clock_delta_ms);
            let ctx = ApplyContext::new(index, 1 + index / 10, timestamp_ms);
            (step.command.clone(), ctx)
        })
        .collect()
}

fn apply_all(
    machine: &mut ReplicatedKv,
    entries: &[(SessionCommand<KvCommand>, ApplyContext)],
) -> Vec<SessionOutput<KvOutput>> {
    entries
        .iter()
        .map(|(command, ctx)| {
            let output = machine.apply(command.clone(), ctx);
            machine.validate();
            machine.inner().validate();
            output
        })
        .collect()
}

proptest! {
    // Keep shrunk failures beside this file (src/machine/proptests.regressions) rather than
    // in a crate-wide folder other modules share.
    #![proptest_config(ProptestConfig {
        failure_persistence: Some(Box::new(
            proptest::test_runner::FileFailurePersistence::WithSource("regressions"),
        )),
        ..ProptestConfig::default()
    })]

    /// Restoring a snapshot taken at any point gives an equal machine (same canonical
    /// bytes), which then returns the same outputs as the original for the rest of the log.
    #[test]
    fn snapshot_restore_round_trip_preserves_state_and_future_outputs(
        steps in steps(),
        split in any::<prop::sample::Index>(),
    ) {
        let entries = entries(&steps);
        let split = split.index(entries.len() + 1);
        let mut original = tight();
        apply_all(&mut original, &entries[..split]);
        let bytes = original.snapshot().expect("snapshot");

        // The restoring replica has diverging state of its own first: restore replaces it.
        let mut restored = tight();
        apply_all(&mut restored, &entries[split..]);
        restored.restore(&bytes).expect("restore");
        prop_assert_eq!(&restored, &original);
        prop_assert_eq!(restored.snapshot().expect("snapshot"), bytes);

        let expected = apply_all(&mut original, &entries[split..]);
        let actual = apply_all(&mut restored, &entries[split..]);
        prop_assert_eq!(actual, expected);
        prop_assert_eq!(&restored, &original);
    }

    /// Two replicas fed the same log, one entry at a time and in batches cut anywhere
    /// (as members learn of commits in different rounds), give the same outputs and
    /// byte-identical snapshots: the session layer's runs (`session/batch.rs`) decide,
    /// evict and expire exactly as one-at-a-time application does.
    #[test]
    fn replicas_fed_the_same_log_produce_identical_snapshots(
        steps in steps(),
        batch_lens in prop::collection::vec(1usize..24, 1..12),
    ) {
        let entries = entries(&steps);
        let mut one_by_one = tight();
        let expected = apply_all(&mut one_by_one, &entries);
        let mut batched = tight();
        let mut actual = Vec::new();
        let mut rest = &entries[..];
        for len in batch_lens.iter().cycle() {
            if rest.is_empty() {
                break;
            }
            let (chunk, after) = rest.split_at((*len).min(rest.len()));
            actual.extend(batched.apply_batch(chunk.to_vec()));
            batched.validate();
            rest = after;
        }
        prop_assert_eq!(actual, expected);
        prop_assert_eq!(
            batched.snapshot().expect("snapshot"),
            one_by_one.snapshot().expect("snapshot")
        );
    }

    /// With room for every client and no expiry, the session layer behaves like this model:
    /// a command runs on a plain store exactly when its seq is above the client's last,
    /// a repeat of the last seq returns the remembered output, a lower one is stale.
    #[test]
    fn sessions_apply_each_client_seq_at_most_once(steps in steps()) {
        let entries = entries(&steps);
        let mut machine = machine(16, None);
        let mut store = KvStore::with_limits(LIMITS);
        let mut last: BTreeMap<ClientId, (u64, KvOutput)> = BTreeMap::new();
        for (command, ctx) in &entries {
            let expected = match last.get(&command.client) {
                Some((last_seq, _)) if command.seq < *last_seq => {
                    SessionOutput::Stale { last_seq: *last_seq }
                }
                Some((last_seq, output)) if command.seq == *last_seq => {
                    SessionOutput::Duplicate(output.clone())
                }
                _ => {
                    let output = store.apply(command.command.clone(), ctx);
                    last.insert(command.client, (command.seq, output.clone()));
                    SessionOutput::Applied(output)
                }
            };
            prop_assert_eq!(machine.apply(command.clone(), ctx), expected);
        }
        prop_assert_eq!(machine.inner(), &store);
    }

    /// Restore of corrupted snapshot bytes never panics. Either it fails and the machine is
    /// unchanged, or the bytes were a valid snapshot, in which case they are canonical: the
    /// restored machine snapshots back to exactly those bytes.
    #[test]
    fn restore_of_corrupt_bytes_errs_or_is_canonical(
        steps in steps(),
        edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>(), 0u8..3), 1..4),
        noise in prop::collection::vec(any::<u8>(), 0..64),
    ) {
        let mut source = tight();
        apply_all(&mut source, &entries(&steps));
        let mut bytes = source.snapshot().expect("snapshot");
        for (at, byte, kind) in edits {
            let at = at.index(bytes.len() + 1);
            match kind {
                0 if at < bytes.len() => bytes[at] ^= byte | 1,
                1 => bytes.insert(at, byte),
                _ => bytes.truncate(at),
            }
        }
        for candidate in [bytes, noise] {
            let mut target = tight();
            apply_all(&mut target, &entries(&steps[..steps.len() / 2]));
            let before = target.clone();
            match target.restore(&candidate) {
                Ok(()) => {
                    target.validate();
                    target.inner().validate();
                    prop_assert_eq!(target.snapshot().expect("snapshot"), candidate);
                }
                Err(_) => prop_assert_eq!(&target, &before),
            }
        }
    }

    /// The streaming snapshot and restore agree with the in-memory ones: `snapshot_to`
    /// writes the bytes of `snapshot()` to a writer taking a few bytes at a time, and
    /// `restore_from` a reader giving a few at a time ends exactly as `restore` of the same
    /// bytes, intact, corrupted or cut short: the same result, the same machine after.
    #[test]
    fn streaming_snapshot_and_restore_agree_with_the_in_memory_ones(
        steps in steps(),
        at in any::<prop::sample::Index>(),
        byte in any::<u8>(),
    ) {
        let mut source = tight();
        apply_all(&mut source, &entries(&steps));
        let bytes = source.snapshot().expect("snapshot");
        let mut sink = Sink { trickle: true, ..Sink::default() };
        source.snapshot_to(&mut sink).expect("snapshot_to");
        prop_assert_eq!(&sink.bytes, &bytes);

        let at = at.index(bytes.len());
        let mut corrupted = bytes.clone();
        corrupted[at] ^= byte | 1;
        for candidate in [&bytes[..], &corrupted[..], &bytes[..at]] {
            let mut in_memory = tight();
            apply_all(&mut in_memory, &entries(&steps[..steps.len() / 2]));
            let mut streamed = in_memory.clone();
            let expected = in_memory.restore(candidate);
            let actual = streamed.restore_from(&mut Trickle::new(candidate));
            prop_assert_eq!(actual, expected);
            prop_assert_eq!(&streamed, &in_memory);
        }
        let mut restored = tight();
        restored.restore_from(&mut Trickle::new(&bytes)).expect("restore_from");
        prop_assert_eq!(&restored, &source);
    }
}
