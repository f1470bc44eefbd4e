//! Tests of the key-value store: commands, queries, limits and snapshots.
use super::*;
use crate::machine::stream::encode_snapshot;
use crate::machine::stream::testing::{assert_failing_reader_changes_nothing, Sink, Trickle};
use crate::machine::SnapshotError;

const CTX: ApplyContext<'static> = ApplyContext::new(1, 1, 1_700_000_000_000);

fn b(s: &str) -> Vec<u8> {
    s.as_bytes().to_vec()
}

fn put(key: &str, value: &str) -> KvCommand {
    KvCommand::Put {
        key: b(key),
        value: b(value),
    }
}

fn cas(key: &str, expected: Option<&str>, new: Option<&str>) -> KvCommand {
    KvCommand::CompareAndSwap {
        key: b(key),
        expected: expected.map(b),
        new: new.map(b),
    }
}

fn get(kv: &mut KvStore, key: &str) -> KvOutput {
    kv.apply(KvCommand::Get { key: b(key) }, &CTX)
}

fn value(v: &str) -> KvOutput {
    KvOutput::Get { value: Some(b(v)) }
}

const ABSENT: KvOutput = KvOutput::Get { value: None };

fn small_limits() -> KvLimits {
    KvLimits {
        key_bytes_max: 4,
        value_bytes_max: 8,
        data_bytes_max: 20,
        range_limit_max: 3,
    }
}

#[test]
fn put_then_get_reads_the_value_and_get_of_absent_key_is_none() {
    let mut kv = KvStore::new();
    assert_eq!(get(&mut kv, "a"), ABSENT);
    assert_eq!(kv.apply(put("a", "1"), &CTX), KvOutput::Put);
    assert_eq!(get(&mut kv, "a"), value("1"));
    assert_eq!(kv.apply(put("a", "2"), &CTX), KvOutput::Put);
    assert_eq!(get(&mut kv, "a"), value("2"));
    assert_eq!(
        kv.query(&KvQuery::Get { key: b("a") }),
        KvQueryResult::Get {
            value: Some(b("2"))
        }
    );
    assert_eq!(
        kv.query(&KvQuery::Get { key: b("b") }),
        KvQueryResult::Get { value: None }
    );
    kv.validate();
}

#[test]
fn delete_reports_whether_it_removed_something() {
    let mut kv = KvStore::new();
    kv.apply(put("a", "1"), &CTX);
    let delete = KvCommand::Delete { key: b("a") };
    assert_eq!(
        kv.apply(delete.clone(), &CTX),
        KvOutput::Delete { removed: true }
    );
    assert_eq!(get(&mut kv, "a"), ABSENT);
    assert_eq!(kv.apply(delete, &CTX), KvOutput::Delete { removed: false });
    assert!(kv.is_empty());
    assert_eq!(kv.data_bytes(), 0);
}

#[test]
fn cas_on_matching_value_swaps() {
    let mut kv = KvStore::new();
    kv.apply(put("a", "1"), &CTX);
    assert_eq!(
        kv.apply(cas("a", Some("1"), Some("2")), &CTX),
        KvOutput::Swapped
    );
    assert_eq!(get(&mut kv, "a"), value("2"));
}

#[test]
fn cas_on_other_value_fails_with_the_current_value_and_changes_nothing() {
    let mut kv = KvStore::new();
    kv.apply(put("a", "1"), &CTX);
    let before = kv.clone();
    assert_eq!(
        kv.apply(cas("a", Some("9"), Some("2")), &CTX),
        KvOutput::SwapFailed {
            current: Some(b("1"))
        }
    );
    assert_eq!(kv, before);
}

#[test]
fn cas_expecting_absent_creates_an_absent_key() {
    let mut kv = KvStore::new();
    assert_eq!(kv.apply(cas("a", None, Some("1")), &CTX), KvOutput::Swapped);
    assert_eq!(get(&mut kv, "a"), value("1"));
}

#[test]
fn cas_expecting_absent_fails_on_a_present_key() {
    let mut kv = KvStore::new();
    kv.apply(put("a", "1"), &CTX);
    assert_eq!(
        kv.apply(cas("a", None, Some("2")), &CTX),
        KvOutput::SwapFailed {
            current: Some(b("1"))
        }
    );
    assert_eq!(get(&mut kv, "a"), value("1"));
}

#[test]
fn cas_expecting_a_value_fails_on_an_absent_key() {
    let mut kv = KvStore::new();
    assert_eq!(
        kv.apply(cas("a", Some("1"), Some("2")), &CTX),
        KvOutput::SwapFailed { current: None }
    );
    assert!(kv.is_empty());
}

#[test]
fn cas_expecting_empty_value_does_not_match_absent_key() {
    let mut kv = KvStore::new();
    assert_eq!(
        kv.apply(cas("a", Some(""), Some("1")), &CTX),
        KvOutput::SwapFailed { current: None }
    );
    kv.apply(put("a", ""), &CTX);
    assert_eq!(
        kv.apply(cas("a", None, Some("1")), &CTX),
        KvOutput::SwapFailed {
            current: Some(Vec::new())
        }
    );
    assert_eq!(
        kv.apply(cas("a", Some(""), Some("1")), &CTX),
        KvOutput::Swapped
    );
}

#[test]
fn cas_with_new_none_deletes() {
    let mut kv = KvStore::new();
    kv.apply(put("a", "1"), &CTX);
    assert_eq!(kv.apply(cas("a", Some("1"), None), &CTX), KvOutput::Swapped);
    assert_eq!(get(&mut kv, "a"), ABSENT);
    assert_eq!(kv.data_bytes(), 0);
    // Absent → absent is a successful swap that changes nothing.
    assert_eq!(kv.apply(cas("a", None, None), &CTX), KvOutput::Swapped);
    assert!(kv.is_empty());
}

#[test]
fn append_concatenates_and_a_missing_key_counts_as_empty() {
    let mut kv = KvStore::new();
    let append = |v: &str| KvCommand::Append {
        key: b("log"),
        value: b(v),
    };
    assert_eq!(
        kv.apply(append("ab"), &CTX),
        KvOutput::Append { len_bytes: 2 }
    );
    assert_eq!(
        kv.apply(append("cd"), &CTX),
        KvOutput::Append { len_bytes: 4 }
    );
    assert_eq!(get(&mut kv, "log"), value("abcd"));
    // An empty append to a missing key creates it, empty.
    assert_eq!(
        kv.apply(
            KvCommand::Append {
                key: b("e"),
                value: Vec::new()
            },
            &CTX
        ),
        KvOutput::Append { len_bytes: 0 }
    );
    assert_eq!(
        get(&mut kv, "e"),
        KvOutput::Get {
            value: Some(Vec::new())
        }
    );
    kv.validate();
}

#[test]
fn range_returns_prefix_matches_in_order_up_to_the_limit() {
    let mut kv = KvStore::new();
    for key in ["a", "a/1", "a/2", "a/3", "a0", "b/1", "a/"] {
        kv.apply(put(key, key), &CTX);
    }
    let range = |prefix: &str, limit| {
        kv.query(&KvQuery::Range {
            prefix: b(prefix),
            limit,
        })
    };
    let pairs =
        |keys: &[&str]| -> Vec<(Vec<u8>, Vec<u8>)> { keys.iter().map(|k| (b(k), b(k))).collect() };
    assert_eq!(
        range("a/", 10),
        KvQueryResult::Range {
            entries: pairs(&["a/", "a/1", "a/2", "a/3"]),
            more: false
        }
    );
    assert_eq!(
        range("a/", 2),
        KvQueryResult::Range {
            entries: pairs(&["a/", "a/1"]),
            more: true
        }
    );
    // Exactly as many matches as the limit: nothing more.
    assert_eq!(
        range("a/", 4),
        KvQueryResult::Range {
            entries: pairs(&["a/", "a/1", "a/2", "a/3"]),
            more: false
        }
    );
    assert_eq!(
        range("a/", 0),
        KvQueryResult::Range {
            entries: Vec::new(),
            more: true
        }
    );
    assert_eq!(
        range("c", 10),
        KvQueryResult::Range {
            entries: Vec::new(),
            more: false
        }
    );
    assert_eq!(
        range("", 100),
        KvQueryResult::Range {
            entries: pairs(&["a", "a/", "a/1", "a/2", "a/3", "a0", "b/1"]),
            more: false
        }
    );
    assert_eq!(kv.query(&KvQuery::Len), KvQueryResult::Len { keys: 7 });
}

#[test]
fn range_limit_is_clamped_to_the_named_maximum() {
    let mut kv = KvStore::with_limits(small_limits());
    for key in ["k1", "k2", "k3", "k4"] {
        assert_eq!(kv.apply(put(key, ""), &CTX), KvOutput::Put);
    }
    assert_eq!(
        kv.query(&KvQuery::Range {
            prefix: b("k"),
            limit: u32::MAX
        }),
        KvQueryResult::Range {
            entries: ["k1", "k2", "k3"]
                .iter()
                .map(|k| (b(k), Vec::new()))
                .collect(),
            more: true
        }
    );
}

/// Every command kind carrying an oversized key is rejected the same way, and changes
/// nothing; a key exactly at the limit is accepted.
#[test]
fn oversized_key_is_rejected_by_every_command() {
    let mut kv = KvStore::with_limits(small_limits());
    kv.apply(put("k", "v"), &CTX);
    let before = kv.clone();
    let long = "12345";
    let commands = [
        put(long, "v"),
        KvCommand::Delete { key: b(long) },
        cas(long, None, Some("v")),
        KvCommand::Append {
            key: b(long),
            value: b("v"),
        },
        KvCommand::Get { key: b(long) },
    ];
    let expected = KvOutput::Rejected(KvRejection::KeyTooLarge {
        key_bytes: 5,
        key_bytes_max: 4,
    });
    for command in commands {
        assert_eq!(kv.apply(command.clone(), &CTX), expected, "{command:?}");
        assert_eq!(kv, before, "{command:?} changed the state");
    }
    assert_eq!(kv.apply(put("1234", "v"), &CTX), KvOutput::Put);
}

#[test]
fn oversized_value_is_rejected_and_the_limit_itself_is_accepted() {
    let mut kv = KvStore::with_limits(small_limits());
    let too_large = KvOutput::Rejected(KvRejection::ValueTooLarge {
        value_bytes: 9,
        value_bytes_max: 8,
    });
    assert_eq!(kv.apply(put("k", "123456789"), &CTX), too_large);
    assert_eq!(kv.apply(cas("k", Some("123456789"), None), &CTX), too_large);
    assert_eq!(kv.apply(cas("k", None, Some("123456789")), &CTX), too_large);
    assert!(kv.is_empty());
    assert_eq!(kv.apply(put("k", "12345678"), &CTX), KvOutput::Put);
}

#[test]
fn append_past_the_value_limit_is_rejected_and_keeps_the_old_value() {
    let mut kv = KvStore::with_limits(small_limits());
    let append = |v: &str| KvCommand::Append {
        key: b("k"),
        value: b(v),
    };
    assert_eq!(
        kv.apply(append("12345"), &CTX),
        KvOutput::Append { len_bytes: 5 }
    );
    assert_eq!(
        kv.apply(append("6789"), &CTX),
        KvOutput::Rejected(KvRejection::ValueTooLarge {
            value_bytes: 9,
            value_bytes_max: 8
        })
    );
    assert_eq!(get(&mut kv, "k"), value("12345"));
    assert_eq!(
        kv.apply(append("678"), &CTX),
        KvOutput::Append { len_bytes: 8 }
    );
}

#[test]
fn a_full_store_rejects_growth_but_allows_shrinking() {
    // data_bytes_max = 20: two entries of 1 + 8 bytes fill 18.
    let mut kv = KvStore::with_limits(small_limits());
    assert_eq!(kv.apply(put("a", "12345678"), &CTX), KvOutput::Put);
    assert_eq!(kv.apply(put("b", "12345678"), &CTX), KvOutput::Put);
    assert_eq!(
        kv.apply(put("c", "12"), &CTX),
        KvOutput::Rejected(KvRejection::StoreFull {
            data_bytes: 21,
            data_bytes_max: 20
        })
    );
    assert_eq!(
        kv.apply(cas("c", None, Some("12")), &CTX),
        KvOutput::Rejected(KvRejection::StoreFull {
            data_bytes: 21,
            data_bytes_max: 20
        })
    );
    // Replacing a value counts only the difference.
    assert_eq!(kv.apply(put("a", "1"), &CTX), KvOutput::Put);
    assert_eq!(kv.data_bytes(), 11);
    assert_eq!(kv.apply(put("c", "12"), &CTX), KvOutput::Put);
    assert_eq!(
        kv.apply(KvCommand::Delete { key: b("b") }, &CTX),
        KvOutput::Delete { removed: true }
    );
    assert_eq!(kv.data_bytes(), 5);
    kv.validate();
}

#[test]
fn signature_is_stable_and_covers_every_limit() {
    let base = KvStore::new().signature();
    assert_eq!(base, KvStore::new().signature());
    let d = KvLimits::default();
    let variants = [
        KvLimits {
            key_bytes_max: d.key_bytes_max + 1,
            ..d
        },
        KvLimits {
            value_bytes_max: d.value_bytes_max + 1,
            ..d
        },
        KvLimits {
            data_bytes_max: d.data_bytes_max + 1,
            ..d
        },
        KvLimits {
            range_limit_max: d.range_limit_max + 1,
            ..d
        },
    ];
    for limits in variants {
        assert_ne!(KvStore::with_limits(limits).signature(), base, "{limits:?}");
    }
}

fn sample() -> KvStore {
    let mut kv = KvStore::new();
    kv.apply(put("a", "1"), &CTX);
    kv.apply(put("b", ""), &CTX);
    kv.apply(put("", "empty key"), &CTX);
    kv
}

#[test]
fn snapshot_restore_round_trip_gives_an_equal_store() {
    let kv = sample();
    let bytes = kv.snapshot().expect("snapshot");
    let mut restored = KvStore::new();
    restored.apply(put("stale", "gone after restore"), &CTX);
    restored.restore(&bytes).expect("restore");
    assert_eq!(restored, kv);
    assert_eq!(restored.snapshot().expect("snapshot"), bytes);
    restored.validate();
}

#[test]
fn restore_of_garbage_or_truncated_bytes_is_an_error_and_changes_nothing() {
    let bytes = sample().snapshot().expect("snapshot");
    let mut kv = KvStore::new();
    kv.apply(put("keep", "me"), &CTX);
    let before = kv.clone();
    for len in 0..bytes.len() {
        assert!(
            matches!(kv.restore(&bytes[..len]), Err(SnapshotError::Decode { .. })),
            "prefix of {len} bytes"
        );
    }
    let mut trailing = bytes.clone();
    trailing.push(0);
    assert!(matches!(
        kv.restore(&trailing),
        Err(SnapshotError::Decode { .. })
    ));
    assert!(kv.restore(&[0xff; 64]).is_err());
    assert_eq!(kv, before);
}

#[test]
fn restore_refuses_a_snapshot_taken_with_other_limits() {
    let bytes = sample().snapshot().expect("snapshot");
    let mut kv = KvStore::with_limits(small_limits());
    assert!(matches!(
        kv.restore(&bytes),
        Err(SnapshotError::SignatureMismatch { .. })
    ));
}

#[test]
fn restore_refuses_another_format_version() {
    let mut bytes = sample().snapshot().expect("snapshot");
    // The header starts with the version, a one-byte varint for small values.
    bytes[0] = 2;
    assert_eq!(
        KvStore::new().restore(&bytes),
        Err(SnapshotError::UnsupportedVersion {
            expected: 1,
            found: 2
        })
    );
}

/// The snapshot bytes of `entries` as postcard encodes them, taken as they come (out
/// of order, over the limits): the format `snapshot()` writes, built independently.
fn forged(entries: Vec<(&[u8], &[u8])>) -> Vec<u8> {
    forged_for(&KvStore::new(), entries)
}

/// As [`forged`], for a store with other limits.
fn forged_for(kv: &KvStore, entries: Vec<(&[u8], &[u8])>) -> Vec<u8> {
    encode_snapshot(SNAPSHOT_FORMAT_VERSION, kv.signature(), &entries)
}

/// A header for `kv` followed by `body`, for bodies postcard would not write.
fn with_header(kv: &KvStore, body: &[u8]) -> Vec<u8> {
    let mut bytes = encode_snapshot(SNAPSHOT_FORMAT_VERSION, kv.signature(), &());
    bytes.extend_from_slice(body);
    bytes
}

/// Limits so large that only the input itself bounds a restore.
fn unlimited() -> KvStore {
    KvStore::with_limits(KvLimits {
        key_bytes_max: u64::MAX,
        value_bytes_max: u64::MAX,
        data_bytes_max: u64::MAX,
        range_limit_max: u32::MAX,
    })
}

#[test]
fn the_snapshot_is_the_postcard_encoding_of_the_entries_in_key_order() {
    let kv = sample();
    let expected = forged(vec![(b"", b"empty key"), (b"a", b"1"), (b"b", b"")]);
    assert_eq!(kv.snapshot().expect("snapshot"), expected);
    assert_eq!(
        KvStore::new().snapshot().expect("snapshot"),
        forged(Vec::new())
    );
}

#[test]
fn snapshot_to_writes_the_snapshot_bytes_to_a_writer_taking_a_few_at_a_time() {
    let kv = sample();
    let mut sink = Sink {
        trickle: true,
        ..Sink::default()
    };
    kv.snapshot_to(&mut sink).expect("snapshot_to");
    assert_eq!(sink.bytes, kv.snapshot().expect("snapshot"));
}

#[test]
fn snapshot_to_a_failing_writer_is_an_io_error() {
    let mut sink = Sink {
        trickle: true,
        fail_at: Some(10),
        ..Sink::default()
    };
    assert!(matches!(
        sample().snapshot_to(&mut sink),
        Err(SnapshotError::Io { .. })
    ));
}

#[test]
fn restore_from_a_reader_giving_a_few_bytes_at_a_time_gives_the_same_store() {
    let kv = sample();
    let bytes = kv.snapshot().expect("snapshot");
    let mut restored = KvStore::new();
    restored.apply(put("stale", "gone"), &CTX);
    let mut input = Trickle::new(&bytes);
    restored.restore_from(&mut input).expect("restore_from");
    assert_eq!(restored, kv);
    assert!(input.reads > 1);
    let mut from_slice = KvStore::new();
    from_slice.restore(&bytes).expect("restore");
    assert_eq!(from_slice, restored);
}

#[test]
fn restore_from_a_reader_that_fails_is_an_io_error_and_changes_nothing() {
    let bytes = sample().snapshot().expect("snapshot");
    let mut kv = KvStore::new();
    kv.apply(put("keep", "me"), &CTX);
    assert_failing_reader_changes_nothing(&mut kv, &bytes);
}

/// Forged counts and lengths far beyond the input are refused without allocating what
/// they announce (the test would abort on an allocation of 2^60 bytes): by the limits
/// when they are over them, and by the end of input when the limits allow them.
#[test]
fn restore_refuses_huge_forged_counts_and_lengths_without_allocating() {
    let kv = KvStore::new();
    let mut body = Vec::new();
    write_varint(&mut body, 1).expect("count");
    write_varint(&mut body, 1 << 60).expect("key length");
    body.extend_from_slice(b"short");
    assert!(matches!(
        KvStore::new().restore(&with_header(&kv, &body)),
        Err(SnapshotError::Invalid { .. })
    ));
    let mut count = Vec::new();
    write_varint(&mut count, 1 << 62).expect("count");
    count.extend_from_slice(&[1, b'a', 1, b'1']);
    assert!(matches!(
        KvStore::new().restore(&with_header(&kv, &count)),
        Err(SnapshotError::Invalid { .. })
    ));

    let mut unlimited = unlimited();
    let huge = [
        // 2^62 entries, one given.
        count,
        // A key of 2^60 bytes.
        body,
        // A value of 2^60 bytes.
        [
            &[1, 1, b'k'][..],
            &[0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x10],
        ]
        .concat(),
    ];
    for body in huge {
        assert!(
            matches!(
                unlimited.restore(&with_header(&unlimited, &body)),
                Err(SnapshotError::Decode { .. })
            ),
            "{body:x?}"
        );
    }
    assert!(unlimited.is_empty());
}

#[test]
fn restore_refuses_overlong_varints_in_the_header_count_and_lengths() {
    let canonical = forged(vec![(b"a", b"1")]);
    // version (1 byte) ‖ signature (32) ‖ count ‖ key length ‖ "a" ‖ value length ‖ "1"
    assert_eq!(canonical[33..], [1, 1, b'a', 1, b'1']);
    for at in [0, 33, 34, 36] {
        let mut overlong = canonical.clone();
        overlong[at] |= 0x80;
        overlong.insert(at + 1, 0x00);
        assert!(
            matches!(
                KvStore::new().restore(&overlong),
                Err(SnapshotError::Invalid { .. })
            ),
            "overlong varint at byte {at}"
        );
    }
}

#[test]
fn restore_refuses_a_count_that_does_not_match_the_entries() {
    let kv = KvStore::new();
    // Two announced, one given: the input ends early.
    assert!(matches!(
        KvStore::new().restore(&with_header(&kv, &[2, 1, b'a', 1, b'1'])),
        Err(SnapshotError::Decode { .. })
    ));
    // None announced, one given: trailing bytes.
    assert!(matches!(
        KvStore::new().restore(&with_header(&kv, &[0, 1, b'a', 1, b'1'])),
        Err(SnapshotError::Decode { .. })
    ));
    // A count past 64 bits.
    let mut overflow = vec![0xff; 10];
    overflow.push(0x01);
    assert!(matches!(
        KvStore::new().restore(&with_header(&kv, &overflow)),
        Err(SnapshotError::Decode { .. })
    ));
}

#[test]
fn restore_refuses_entries_over_the_value_and_data_limits() {
    // small_limits: values up to 8 bytes, 20 bytes in all.
    let mut kv = KvStore::with_limits(small_limits());
    let full = forged_for(&kv, vec![(b"a", b"12345678"), (b"b", b"12345678")]);
    assert_eq!(kv.restore(&full), Ok(()));
    assert_eq!(kv.data_bytes(), 18);
    let before = kv.clone();
    for entries in [
        vec![(&b"a"[..], &b"123456789"[..])],
        vec![(b"a", b"12345678"), (b"b", b"12345678"), (b"c", b"12")],
        vec![(b"a", b"12345678"), (b"b", b"12345678"), (b"cde", b"")],
    ] {
        assert!(
            matches!(
                kv.restore(&forged_for(&kv, entries.clone())),
                Err(SnapshotError::Invalid { .. })
            ),
            "{entries:?}"
        );
    }
    assert_eq!(kv, before);
}

/// The memory of a snapshot does not grow with the store: it reaches the writer in
/// pieces no larger than the buffer, whatever the total.
#[test]
fn snapshot_to_writes_a_large_store_in_bounded_pieces() {
    let mut kv = KvStore::new();
    for i in 0..20_000u32 {
        let key = format!("key/{i:08}");
        let value = format!("{i:0100}");
        assert_eq!(kv.apply(put(&key, &value), &CTX), KvOutput::Put);
    }
    let mut sink = Sink::default();
    kv.snapshot_to(&mut sink).expect("snapshot_to");
    assert!(
        sink.bytes.len() > 30 * IO_BUFFER_BYTES,
        "{}",
        sink.bytes.len()
    );
    assert!(
        sink.largest_write <= IO_BUFFER_BYTES,
        "{}",
        sink.largest_write
    );
    let mut restored = KvStore::new();
    restored
        .restore_from(&mut Trickle::new(&sink.bytes))
        .expect("restore_from");
    assert_eq!(restored, kv);
}

#[test]
fn restore_refuses_unordered_or_duplicate_keys() {
    let valid = forged(vec![(b"a", b"1"), (b"b", b"2")]);
    assert!(KvStore::new().restore(&valid).is_ok());
    for entries in [
        vec![(&b"b"[..], &b"2"[..]), (b"a", b"1")],
        vec![(b"a", b"1"), (b"a", b"2")],
    ] {
        assert!(matches!(
            KvStore::new().restore(&forged(entries)),
            Err(SnapshotError::Invalid { .. })
        ));
    }
}

#[test]
fn restore_refuses_a_non_canonical_encoding_of_valid_state() {
    let canonical = forged(vec![(b"a", b"1")]);
    assert!(KvStore::new().restore(&canonical).is_ok());
    // Byte 33 (after the version byte and the 32-byte signature) is the entry count, 1;
    // 0x81 0x00 is an overlong varint for the same 1.
    assert_eq!(canonical[33], 1);
    let mut overlong = canonical.clone();
    overlong[33] = 0x81;
    overlong.insert(34, 0x00);
    assert!(matches!(
        KvStore::new().restore(&overlong),
        Err(SnapshotError::Invalid { .. })
    ));
}

#[test]
fn restore_refuses_entries_over_the_limits() {
    let long_key = vec![b'k'; KEY_BYTES_MAX_DEFAULT as usize + 1];
    let bytes = forged(vec![(&long_key, b"v")]);
    assert!(matches!(
        KvStore::new().restore(&bytes),
        Err(SnapshotError::Invalid { .. })
    ));
    let key_at_limit = vec![b'k'; KEY_BYTES_MAX_DEFAULT as usize];
    assert!(KvStore::new()
        .restore(&forged(vec![(&key_at_limit, b"v")]))
        .is_ok());
}
