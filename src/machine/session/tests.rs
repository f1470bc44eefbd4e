//! Tests of client sessions: exactly-once application, eviction, expiry and snapshots.
use super::*;
use crate::machine::stream::encode_snapshot;
use crate::machine::stream::testing::{assert_failing_reader_changes_nothing, Sink, Trickle};
use crate::machine::{
    KvCommand, KvLimits, KvOutput, KvQuery, KvQueryResult, KvStore, ReplicatedKv,
};

fn b(s: &str) -> Vec<u8> {
    s.as_bytes().to_vec()
}

fn ctx(index: u64, timestamp_ms: u64) -> ApplyContext<'static> {
    ApplyContext::new(index, 1, timestamp_ms)
}

fn cmd(client: u64, seq: u64, command: KvCommand) -> SessionCommand<KvCommand> {
    SessionCommand {
        client: ClientId(client),
        seq,
        command,
    }
}

fn append(v: &str) -> KvCommand {
    KvCommand::Append {
        key: b("k"),
        value: b(v),
    }
}

fn get_k() -> KvCommand {
    KvCommand::Get { key: b("k") }
}

fn bounded(sessions_max: u32, session_ttl_ms: Option<u64>) -> Sessions<KvStore> {
    Sessions::with_config(
        KvStore::new(),
        SessionConfig {
            sessions_max: NonZeroU32::new(sessions_max).expect("nonzero"),
            session_ttl_ms,
        },
    )
}

/// Applies commands at consecutive indexes starting at 1, all at time 0.
fn run(
    machine: &mut Sessions<KvStore>,
    commands: Vec<SessionCommand<KvCommand>>,
) -> Vec<SessionOutput<KvOutput>> {
    let first = machine
        .sessions
        .values()
        .map(|s| s.last_index)
        .max()
        .unwrap_or(0)
        + 1;
    let batch = commands
        .into_iter()
        .zip(first..)
        .map(|(command, index)| (command, ctx(index, 0)))
        .collect();
    let outputs = machine.apply_batch(batch);
    machine.validate();
    outputs
}

fn stored(machine: &Sessions<KvStore>) -> Option<Vec<u8>> {
    machine.inner().get(b"k").map(<[u8]>::to_vec)
}

/// The sessions as a snapshot records them (every output applied).
fn recorded(machine: &Sessions<KvStore>) -> Vec<(ClientId, Session<&KvOutput>)> {
    machine
        .sessions
        .iter()
        .map(|(c, s)| (*c, s.recorded().expect("outputs applied")))
        .collect()
}

/// The format, built independently of the streaming writer: header, the postcard
/// encoding of the table as a byte string, then the inner snapshot to the end.
fn reference_snapshot(machine: &Sessions<KvStore>) -> Vec<u8> {
    let table = postcard::to_stdvec(&TableRef {
        clock_ms: machine.clock_ms,
        sessions: recorded(machine),
    })
    .expect("table");
    let mut bytes = encode_snapshot(SNAPSHOT_FORMAT_VERSION, machine.signature(), &table[..]);
    bytes.extend_from_slice(&machine.inner().snapshot().expect("inner"));
    bytes
}

fn five_clients() -> Sessions<KvStore> {
    let mut machine = bounded(8, Some(60_000));
    run(
        &mut machine,
        (1..=5)
            .map(|c| cmd(c, 1, append(&"v".repeat(c as usize * 40))))
            .collect(),
    );
    machine
}

#[test]
fn the_snapshot_is_exactly_the_encoding_of_its_body() {
    let machine = five_clients();
    let bytes = machine.snapshot().expect("snapshot");
    assert_eq!(bytes, reference_snapshot(&machine));
    let mut restored = bounded(8, Some(60_000));
    restored.restore(&bytes).expect("restores");
    assert_eq!(restored.snapshot().expect("snapshot"), bytes);
}

#[test]
fn snapshot_to_and_restore_from_stream_the_snapshot_bytes() {
    let machine = five_clients();
    let bytes = machine.snapshot().expect("snapshot");
    let mut sink = Sink {
        trickle: true,
        ..Sink::default()
    };
    machine.snapshot_to(&mut sink).expect("snapshot_to");
    assert_eq!(sink.bytes, bytes);

    let mut restored = bounded(8, Some(60_000));
    run(&mut restored, vec![cmd(9, 1, append("stale"))]);
    let mut input = Trickle::new(&bytes);
    restored.restore_from(&mut input).expect("restore_from");
    assert_eq!(restored, machine);
    restored.validate();
    let mut from_slice = bounded(8, Some(60_000));
    from_slice.restore(&bytes).expect("restore");
    assert_eq!(from_slice, restored);
}

#[test]
fn snapshot_to_a_failing_writer_is_an_io_error() {
    let machine = five_clients();
    let len = machine.snapshot().expect("snapshot").len();
    // In the header, the table and the inner snapshot.
    for fail_at in [0, 10, 100, len - 10] {
        let mut sink = Sink {
            fail_at: Some(fail_at),
            ..Sink::default()
        };
        assert!(
            matches!(
                machine.snapshot_to(&mut sink),
                Err(SnapshotError::Io { .. })
            ),
            "failing at {fail_at}"
        );
    }
}

#[test]
fn restore_from_a_reader_that_fails_is_an_io_error_and_changes_nothing() {
    let bytes = five_clients().snapshot().expect("snapshot");
    let mut machine = bounded(8, Some(60_000));
    run(&mut machine, vec![cmd(9, 1, append("keep"))]);
    assert_failing_reader_changes_nothing(&mut machine, &bytes);
}

/// Format 1 embedded the inner snapshot as a byte string inside the body.
#[test]
fn a_snapshot_of_format_version_1_is_refused() {
    #[derive(Serialize)]
    struct BodyV1<'a> {
        clock_ms: u64,
        sessions: Vec<(ClientId, Session<&'a KvOutput>)>,
        inner: &'a [u8],
    }
    let mut machine = five_clients();
    let inner = machine.inner().snapshot().expect("inner");
    let v1 = encode_snapshot(
        1,
        machine.signature(),
        &BodyV1 {
            clock_ms: machine.clock_ms,
            sessions: recorded(&machine),
            inner: &inner,
        },
    );
    let before = machine.clone();
    assert_eq!(
        machine.restore(&v1),
        Err(SnapshotError::UnsupportedVersion {
            expected: 2,
            found: 1
        })
    );
    assert_eq!(machine, before);
}

/// Where the table starts in the snapshot of a small machine: after the header and a
/// one-byte table length.
const TABLE_AT: usize = 1 + 32 + 1;

#[test]
fn restore_refuses_a_table_length_over_the_limit_or_beyond_the_input() {
    let mut machine = bounded(2, None);
    run(&mut machine, vec![cmd(1, 1, append("x"))]);
    let before = machine.clone();
    let signature = machine.signature();
    let table_bytes_max = machine.table_bytes_max();
    let with_table_length = |len: u64, rest: &[u8]| {
        let mut bytes = encode_snapshot(SNAPSHOT_FORMAT_VERSION, signature, &());
        crate::machine::stream::write_varint(&mut bytes, len).expect("varint");
        bytes.extend_from_slice(rest);
        bytes
    };
    let good = machine.snapshot().expect("snapshot");
    let table_len = u64::from(good[TABLE_AT - 1]);
    let rest = &good[TABLE_AT..];
    // Refused before reading: 2^60 bytes, and one byte over the limit.
    let over = [1 << 60, table_bytes_max + 1];
    for len in over {
        assert!(
            matches!(
                machine.restore(&with_table_length(len, rest)),
                Err(SnapshotError::Invalid { .. })
            ),
            "{len}"
        );
    }
    // Within the limit but beyond the input: read as far as it goes, then refused.
    assert!(matches!(
        machine.restore(&with_table_length(table_bytes_max, rest)),
        Err(SnapshotError::Decode { .. })
    ));
    // One byte too few or too many for the table.
    for len in [table_len - 1, table_len + 1] {
        assert!(
            matches!(
                machine.restore(&with_table_length(len, rest)),
                Err(SnapshotError::Decode { .. })
            ),
            "{len}"
        );
    }
    assert_eq!(machine, before);
    assert_eq!(machine.restore(&with_table_length(table_len, rest)), Ok(()));
}

#[test]
fn restore_refuses_overlong_varints_in_the_table_and_its_length() {
    let mut machine = bounded(2, None);
    run(&mut machine, vec![cmd(1, 1, append("x"))]);
    let good = machine.snapshot().expect("snapshot");
    let mut overlong_length = good.clone();
    overlong_length[TABLE_AT - 1] |= 0x80;
    overlong_length.insert(TABLE_AT, 0x00);
    // The clock (0, the first byte of the table) as 0x80 0x00, the length one more.
    let mut overlong_clock = good.clone();
    assert_eq!(overlong_clock[TABLE_AT], 0);
    overlong_clock[TABLE_AT - 1] += 1;
    overlong_clock[TABLE_AT] = 0x80;
    overlong_clock.insert(TABLE_AT + 1, 0x00);
    for bytes in [overlong_length, overlong_clock] {
        assert!(matches!(
            machine.restore(&bytes),
            Err(SnapshotError::Invalid { .. })
        ));
    }
    let mut overlong_version = good.clone();
    overlong_version[0] |= 0x80;
    overlong_version.insert(1, 0x00);
    assert!(matches!(
        machine.restore(&overlong_version),
        Err(SnapshotError::Invalid { .. })
    ));
    let mut trailing = good;
    trailing.push(0);
    assert!(matches!(
        machine.restore(&trailing),
        Err(SnapshotError::Decode { .. })
    ));
}

/// Outputs averaging more than the allowance per session make the table too large:
/// the snapshot is refused before anything is written, rather than written and then
/// refused by every restore.
#[test]
fn a_table_over_the_limit_is_not_snapshotted() {
    let mut machine = Sessions::with_config(
        KvStore::with_limits(KvLimits {
            value_bytes_max: 2 * 1024 * 1024,
            ..KvLimits::default()
        }),
        SessionConfig {
            sessions_max: NonZeroU32::MIN,
            session_ttl_ms: None,
        },
    );
    let value = vec![b'v'; 1024 * 1024 + 100];
    let put = KvCommand::Put { key: b("k"), value };
    run(&mut machine, vec![cmd(1, 1, put), cmd(1, 2, get_k())]);
    let mut sink = Sink::default();
    assert!(matches!(
        machine.snapshot_to(&mut sink),
        Err(SnapshotError::Encode { .. })
    ));
    assert!(sink.bytes.is_empty());
    // Once the cached output is small again, it is.
    run(
        &mut machine,
        vec![cmd(1, 3, KvCommand::Delete { key: b("k") })],
    );
    assert!(machine.snapshot().is_ok());
}

#[test]
fn a_command_arriving_three_times_is_applied_once() {
    let mut machine = ReplicatedKv::default();
    let outputs = run(
        &mut machine,
        vec![
            cmd(1, 1, append("x")),
            cmd(1, 1, append("x")),
            cmd(1, 1, append("x")),
        ],
    );
    let first = KvOutput::Append { len_bytes: 1 };
    assert_eq!(
        outputs,
        vec![
            SessionOutput::Applied(first.clone()),
            SessionOutput::Duplicate(first.clone()),
            SessionOutput::Duplicate(first),
        ]
    );
    assert_eq!(stored(&machine), Some(b("x")));
}

#[test]
fn a_duplicate_returns_the_first_output_not_the_current_state() {
    let mut machine = ReplicatedKv::default();
    let outputs = run(
        &mut machine,
        vec![
            cmd(1, 1, get_k()),
            cmd(2, 1, append("y")),
            cmd(1, 1, get_k()),
            cmd(1, 2, get_k()),
        ],
    );
    assert_eq!(
        outputs[2],
        SessionOutput::Duplicate(KvOutput::Get { value: None })
    );
    assert_eq!(
        outputs[3],
        SessionOutput::Applied(KvOutput::Get {
            value: Some(b("y"))
        })
    );
}

#[test]
fn a_lower_seq_is_stale_and_not_applied() {
    let mut machine = ReplicatedKv::default();
    let outputs = run(
        &mut machine,
        vec![
            cmd(1, 1, append("a")),
            cmd(1, 2, append("b")),
            cmd(1, 1, append("a")),
        ],
    );
    assert_eq!(outputs[2], SessionOutput::Stale { last_seq: 2 });
    assert_eq!(stored(&machine), Some(b("ab")));
    assert_eq!(machine.session(ClientId(1)).map(|s| s.last_seq), Some(2));
}

#[test]
fn seq_gaps_are_accepted_and_clients_are_independent() {
    let mut machine = ReplicatedKv::default();
    let outputs = run(
        &mut machine,
        vec![
            cmd(1, 1, append("a")),
            cmd(2, 1, append("b")),
            cmd(1, 7, append("c")),
        ],
    );
    assert!(outputs
        .iter()
        .all(|o| matches!(o, SessionOutput::Applied(_))));
    assert_eq!(stored(&machine), Some(b("abc")));
}

#[test]
fn a_full_table_evicts_the_least_recently_active_client() {
    let mut machine = bounded(2, None);
    run(
        &mut machine,
        vec![
            cmd(1, 1, append("1")), // index 1
            cmd(2, 1, append("2")), // index 2
            cmd(1, 1, append("1")), // index 3: a duplicate still counts as activity
            cmd(3, 1, append("3")), // index 4: evicts client 2 (last index 2)
        ],
    );
    assert!(machine.session(ClientId(1)).is_some());
    assert!(machine.session(ClientId(2)).is_none());
    assert!(machine.session(ClientId(3)).is_some());
    assert_eq!(machine.session_count(), 2);
}

/// The documented risk: a retry from an evicted client is taken as new and runs again.
#[test]
fn a_retry_from_an_evicted_client_is_applied_again() {
    let mut machine = bounded(1, None);
    let outputs = run(
        &mut machine,
        vec![
            cmd(1, 1, append("x")),
            cmd(2, 1, get_k()),
            cmd(1, 1, append("x")),
        ],
    );
    assert_eq!(
        outputs[2],
        SessionOutput::Applied(KvOutput::Append { len_bytes: 2 })
    );
    assert_eq!(stored(&machine), Some(b("xx")));
}

#[test]
fn eviction_ties_on_index_go_to_the_lower_client_id() {
    for order in [[5u64, 9], [9, 5]] {
        let mut machine = bounded(2, None);
        // Both at index 1: a tie only a misbehaving driver produces, still deterministic.
        for client in order {
            machine.apply(cmd(client, 1, get_k()), &ctx(1, 0));
        }
        machine.apply(cmd(7, 1, get_k()), &ctx(2, 0));
        machine.validate();
        assert!(machine.session(ClientId(5)).is_none(), "order {order:?}");
        assert!(machine.session(ClientId(9)).is_some(), "order {order:?}");
    }
}

#[test]
fn sessions_idle_longer_than_the_ttl_expire() {
    let mut machine = bounded(100, Some(1_000));
    machine.apply(cmd(1, 1, append("a")), &ctx(1, 10_000));
    machine.apply(cmd(2, 1, append("b")), &ctx(2, 10_500));
    // 11_001 - 10_000 > 1_000: client 1 expires; 11_001 - 10_500 does not.
    machine.apply(cmd(3, 1, get_k()), &ctx(3, 11_001));
    assert!(machine.session(ClientId(1)).is_none());
    assert!(machine.session(ClientId(2)).is_some());
    // Exactly the TTL idle is still alive.
    machine.apply(cmd(3, 2, get_k()), &ctx(4, 11_500));
    assert!(machine.session(ClientId(2)).is_some());
    machine.apply(cmd(3, 3, get_k()), &ctx(5, 11_501));
    assert!(machine.session(ClientId(2)).is_none());
    machine.validate();
}

#[test]
fn without_a_ttl_sessions_never_expire() {
    let mut machine = bounded(100, None);
    machine.apply(cmd(1, 1, append("a")), &ctx(1, 0));
    machine.apply(cmd(2, 1, append("b")), &ctx(2, u64::MAX));
    assert!(machine.session(ClientId(1)).is_some());
}

#[test]
fn the_session_clock_never_runs_backwards() {
    let mut machine = bounded(100, Some(1_000));
    machine.apply(cmd(1, 1, append("a")), &ctx(1, 5_000));
    // A new leader with a slow clock: the session clock stays at 5_000.
    machine.apply(cmd(2, 1, append("b")), &ctx(2, 100));
    assert_eq!(machine.clock_ms(), 5_000);
    assert_eq!(
        machine.session(ClientId(2)).map(|s| s.last_seen_ms),
        Some(5_000)
    );
    machine.apply(cmd(3, 1, get_k()), &ctx(3, 6_001));
    assert!(machine.session(ClientId(1)).is_none());
    assert!(machine.session(ClientId(2)).is_none());
    machine.validate();
}

#[test]
fn queries_go_to_the_inner_machine() {
    let mut machine = ReplicatedKv::default();
    run(&mut machine, vec![cmd(1, 1, append("v"))]);
    assert_eq!(
        machine.query(&KvQuery::Get { key: b("k") }),
        KvQueryResult::Get {
            value: Some(b("v"))
        }
    );
    assert_eq!(
        machine.leadership_preference(),
        LeadershipPreference::Normal
    );
}

#[test]
fn signature_covers_the_inner_signature_and_the_session_bounds() {
    let base = bounded(10, None).signature();
    assert_eq!(base, bounded(10, None).signature());
    assert_ne!(base, bounded(11, None).signature());
    assert_ne!(base, bounded(10, Some(0)).signature());
    assert_ne!(base, bounded(10, Some(1)).signature());
    assert_ne!(base, KvStore::new().signature());
    let other_inner = Sessions::with_config(
        KvStore::with_limits(KvLimits {
            key_bytes_max: 1,
            ..KvLimits::default()
        }),
        bounded(10, None).config(),
    );
    assert_ne!(base, other_inner.signature());
}

#[test]
fn the_session_table_survives_snapshot_and_restore() {
    let mut machine = bounded(4, Some(60_000));
    run(
        &mut machine,
        vec![cmd(1, 1, append("x")), cmd(2, 3, get_k())],
    );
    let bytes = machine.snapshot().expect("snapshot");
    let mut restored = bounded(4, Some(60_000));
    restored.restore(&bytes).expect("restore");
    assert_eq!(restored, machine);
    restored.validate();
    // The retry after restore is still recognised.
    assert_eq!(
        restored.apply(cmd(1, 1, append("x")), &ctx(10, 0)),
        SessionOutput::Duplicate(KvOutput::Append { len_bytes: 1 })
    );
    assert_eq!(stored(&restored), Some(b("x")));
}

#[test]
fn restore_replaces_all_previous_state() {
    let empty = ReplicatedKv::default();
    let bytes = empty.snapshot().expect("snapshot");
    let mut machine = ReplicatedKv::default();
    run(&mut machine, vec![cmd(1, 1, append("x"))]);
    machine.restore(&bytes).expect("restore");
    assert_eq!(machine, empty);
}

#[test]
fn a_failed_restore_changes_nothing() {
    let mut machine = ReplicatedKv::default();
    run(&mut machine, vec![cmd(1, 1, append("x"))]);
    let before = machine.clone();
    let good = machine.snapshot().expect("snapshot");
    for len in 0..good.len() {
        assert!(
            matches!(
                machine.restore(&good[..len]),
                Err(SnapshotError::Decode { .. })
            ),
            "prefix of {len} bytes"
        );
    }
    assert!(machine.restore(b"definitely not a snapshot").is_err());
    assert_eq!(machine, before);
}

fn forged(
    machine: &Sessions<KvStore>,
    clock_ms: u64,
    sessions: Vec<(ClientId, Session<KvOutput>)>,
    inner: &[u8],
) -> Vec<u8> {
    let table = postcard::to_stdvec(&TableRef {
        clock_ms,
        sessions: sessions.iter().map(|(c, s)| (*c, s.borrowed())).collect(),
    })
    .expect("table");
    let mut bytes = encode_snapshot(SNAPSHOT_FORMAT_VERSION, machine.signature(), &table[..]);
    bytes.extend_from_slice(inner);
    bytes
}

fn session_at(last_index: u64, last_seen_ms: u64) -> Session<KvOutput> {
    Session {
        last_seq: 1,
        last_index,
        last_seen_ms,
        output: KvOutput::Put,
    }
}

#[test]
fn restore_checks_the_table_and_the_inner_snapshot() {
    let mut machine = bounded(2, None);
    let inner = KvStore::new().snapshot().expect("snapshot");
    let ok = forged(
        &machine,
        5,
        vec![
            (ClientId(1), session_at(1, 5)),
            (ClientId(2), session_at(2, 5)),
        ],
        &inner,
    );
    assert_eq!(machine.restore(&ok), Ok(()));
    let before = machine.clone();

    let too_many = forged(
        &machine,
        5,
        (1..=3).map(|c| (ClientId(c), session_at(c, 5))).collect(),
        &inner,
    );
    let unordered = forged(
        &machine,
        5,
        vec![
            (ClientId(2), session_at(1, 5)),
            (ClientId(1), session_at(2, 5)),
        ],
        &inner,
    );
    let from_the_future = forged(&machine, 5, vec![(ClientId(1), session_at(1, 6))], &inner);
    for bytes in [too_many, unordered, from_the_future] {
        assert!(matches!(
            machine.restore(&bytes),
            Err(SnapshotError::Invalid { .. })
        ));
    }
    let bad_inner = forged(&machine, 5, vec![], b"garbage");
    assert!(machine.restore(&bad_inner).is_err());
    assert_eq!(machine, before);
}

#[test]
fn restore_refuses_a_snapshot_from_other_bounds() {
    let bytes = bounded(2, None).snapshot().expect("snapshot");
    assert!(matches!(
        bounded(3, None).restore(&bytes),
        Err(SnapshotError::SignatureMismatch { .. })
    ));
}

/// An inner machine that records how its commands arrive: one `apply_batch` call per run.
#[derive(Default)]
struct Recorder {
    total: u64,
    batches: Vec<Vec<u64>>,
}

impl StateMachine for Recorder {
    type Command = u64;
    type Output = u64;
    type Query = ();
    type QueryResult = u64;

    fn signature(&self) -> [u8; 32] {
        SignatureBuilder::new("tessera.test.recorder.v1").finish()
    }

    fn apply(&mut self, add: u64, _: &ApplyContext<'_>) -> u64 {
        self.batches.push(vec![add]);
        self.total += add;
        self.total
    }

    fn apply_batch(&mut self, batch: Vec<(u64, ApplyContext<'_>)>) -> Vec<u64> {
        self.batches
            .push(batch.iter().map(|(add, _)| *add).collect());
        batch
            .into_iter()
            .map(|(add, _)| {
                self.total += add;
                self.total
            })
            .collect()
    }

    fn query(&self, _: &()) -> u64 {
        self.total
    }

    fn snapshot(&self) -> Result<Vec<u8>, SnapshotError> {
        Ok(self.total.to_le_bytes().to_vec())
    }

    fn restore(&mut self, _: &[u8]) -> Result<(), SnapshotError> {
        Err(SnapshotError::Invalid {
            reason: "not needed here".into(),
        })
    }
}

fn add(client: u64, seq: u64, value: u64) -> SessionCommand<u64> {
    SessionCommand {
        client: ClientId(client),
        seq,
        command: value,
    }
}

#[test]
fn a_batch_reaches_the_inner_machine_in_runs_cut_only_where_a_retry_needs_an_output() {
    let mut machine = Sessions::new(Recorder::default());
    let batch = vec![
        (add(1, 1, 10), ctx(1, 0)),
        (add(2, 1, 20), ctx(2, 0)),
        // A retry of client 1's command, still in the run: the run is applied first.
        (add(1, 1, 10), ctx(3, 0)),
        (add(3, 1, 30), ctx(4, 0)),
        (add(2, 2, 40), ctx(5, 0)),
        // Client 3's next command needs the run holding its first applied first.
        (add(3, 2, 50), ctx(6, 0)),
    ];
    let outputs = machine.apply_batch(batch);
    assert_eq!(
        outputs,
        vec![
            SessionOutput::Applied(10),
            SessionOutput::Applied(30),
            SessionOutput::Duplicate(10),
            SessionOutput::Applied(60),
            SessionOutput::Applied(100),
            SessionOutput::Applied(150),
        ]
    );
    // Client 2's second command does not cut: its first was applied with the first run.
    assert_eq!(
        machine.inner().batches,
        vec![vec![10, 20], vec![30, 40], vec![50]]
    );
    machine.validate();
    assert_eq!(machine.session_count(), 3);
}

#[test]
fn a_waiting_session_evicted_within_its_batch_is_not_recorded() {
    // One session at most: client 2's command evicts client 1's waiting session, so
    // client 1's retry is unknown afterwards and runs again, as it would one at a time.
    let batch = vec![
        (add(1, 1, 1), ctx(1, 0)),
        (add(2, 1, 2), ctx(2, 0)),
        (add(1, 1, 1), ctx(3, 0)),
    ];
    let mut one_by_one = Sessions::with_config(
        Recorder::default(),
        SessionConfig {
            sessions_max: NonZeroU32::new(1).expect("nonzero"),
            session_ttl_ms: None,
        },
    );
    let expected: Vec<_> = batch
        .iter()
        .map(|(command, ctx)| one_by_one.apply(command.clone(), ctx))
        .collect();
    let mut batched = Sessions::with_config(Recorder::default(), one_by_one.config());
    assert_eq!(batched.apply_batch(batch), expected);
    assert_eq!(expected[2], SessionOutput::Applied(4));
    assert_eq!(batched.inner().batches, vec![vec![1, 2, 1]]);
    batched.validate();
    assert_eq!(
        batched.session(ClientId(1)),
        one_by_one.session(ClientId(1))
    );
    assert_eq!(batched.session(ClientId(2)), None);
}
