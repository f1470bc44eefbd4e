//! The conformance suite every [`Storage`] must pass (openraft's `testing/log/suite.rs` idea).
//!
//! A store plugs in through [`StorageHarness`]; `reopen` must simulate a process restart
//! (drop every in-memory structure and read back what is durable). Each check panics with
//! a message naming the contract it tests, so a failing store says what it broke.
use bytes::Bytes;

use super::{LogMisuse, Storage, StorageError, WriteBatch};
use crate::raft::{
    Entry, EntryPayload, HardState, Index, Membership, NodeId, Snapshot, SnapshotMeta, Term,
};

/// How the suite makes and restarts stores.
pub trait StorageHarness {
    /// The store under test.
    type S: Storage;
    /// A new, empty store.
    fn fresh(&mut self) -> Self::S;
    /// Closes `store` and opens the same data again, as after a restart.
    fn reopen(&mut self, store: Self::S) -> Self::S;
}

/// Runs every check of the suite.
pub fn run_all<H: StorageHarness>(h: &mut H) {
    fresh_store_is_empty(h);
    appended_entries_read_back_after_reopen(h);
    hard_state_survives_reopen(h);
    a_gap_is_refused_and_changes_nothing(h);
    overlapping_write_replaces_the_suffix(h);
    compaction_keeps_the_tail(h);
    installed_snapshot_replaces_the_log(h);
    reads_outside_the_log_are_errors(h);
    one_batch_writes_snapshot_entries_and_hard_state(h);
}

/// A command entry at `index` in `term`, with a payload and a timestamp derived from both,
/// so that a store that mixes entries up fails the comparison.
pub fn entry(index: Index, term: Term) -> Entry {
    Entry {
        term,
        index,
        timestamp_ms: index * 10,
        payload: EntryPayload::Command(Bytes::from(format!("cmd-{index}-{term}"))),
    }
}

fn entries(range: std::ops::RangeInclusive<Index>, term: Term) -> Vec<Entry> {
    range.map(|i| entry(i, term)).collect()
}

fn append<S: Storage>(store: &mut S, es: Vec<Entry>) {
    store
        .write(&WriteBatch {
            entries: es,
            ..WriteBatch::default()
        })
        .expect("append must succeed");
}

fn snapshot(index: Index, term: Term) -> Snapshot {
    Snapshot {
        meta: SnapshotMeta {
            index,
            term,
            membership: Membership::with_voters([NodeId(1), NodeId(2), NodeId(3)]),
            membership_index: 1,
            incarnation: None,
            timestamp_ms: 0,
        },
        data: Bytes::from(format!("state-at-{index}")),
    }
}

/// A new store has the default hard state, no snapshot, no entries, and
/// `first_index() == 1`, `last_index() == 0`.
pub fn fresh_store_is_empty<H: StorageHarness>(h: &mut H) {
    let store = h.fresh();
    let state = store
        .initial_state()
        .expect("initial state of a fresh store");
    assert_eq!(state.hard_state, HardState::default(), "fresh hard state");
    assert!(state.snapshot.is_none(), "fresh store has no snapshot");
    assert!(state.entries.is_empty(), "fresh store has no entries");
    assert_eq!((store.first_index(), store.last_index()), (1, 0));
}

/// Entries appended in two writes read back identical, through `entries` and
/// `initial_state`, after a restart.
pub fn appended_entries_read_back_after_reopen<H: StorageHarness>(h: &mut H) {
    let mut store = h.fresh();
    append(&mut store, entries(1..=3, 1));
    append(&mut store, entries(4..=5, 2));
    let store = h.reopen(store);
    assert_eq!(store.last_index(), 5, "last index after reopen");
    let mut want = entries(1..=3, 1);
    want.extend(entries(4..=5, 2));
    assert_eq!(
        store.entries(1, 6).expect("read 1..6"),
        want,
        "entries after reopen"
    );
    assert_eq!(store.initial_state().expect("state").entries, want);
}

/// A hard state written alone survives a restart.
pub fn hard_state_survives_reopen<H: StorageHarness>(h: &mut H) {
    let mut store = h.fresh();
    let hs = HardState {
        term: 7,
        vote: Some(NodeId(3)),
        commit: 0,
    };
    store
        .write(&WriteBatch {
            hard_state: Some(hs),
            ..WriteBatch::default()
        })
        .expect("write hard state");
    let store = h.reopen(store);
    assert_eq!(
        store.initial_state().expect("state").hard_state,
        hs,
        "hard state after reopen"
    );
}

/// A write that starts past `last_index + 1` ([`LogMisuse::Gap`]) or skips an index
/// ([`LogMisuse::NotContiguous`]) is refused as misuse, not fatal, and changes neither the
/// log nor the hard state of the same batch.
pub fn a_gap_is_refused_and_changes_nothing<H: StorageHarness>(h: &mut H) {
    let mut store = h.fresh();
    append(&mut store, entries(1..=2, 1));
    let err = store
        .write(&WriteBatch {
            entries: entries(4..=5, 1),
            hard_state: Some(HardState {
                term: 9,
                vote: None,
                commit: 0,
            }),
            ..WriteBatch::default()
        })
        .expect_err("a write leaving a gap must fail");
    assert!(
        matches!(err, StorageError::Misuse(LogMisuse::Gap { .. })),
        "gap error, got {err:?}"
    );
    assert!(!err.is_fatal(), "a refused call leaves the store usable");
    let skipping = store.write(&WriteBatch {
        entries: vec![entry(3, 1), entry(5, 1)],
        ..WriteBatch::default()
    });
    assert_eq!(
        skipping,
        Err(StorageError::Misuse(LogMisuse::NotContiguous { index: 5 })),
        "a write skipping an index is refused"
    );
    let store = h.reopen(store);
    assert_eq!(
        store.last_index(),
        2,
        "failed write must not change the log"
    );
    assert_eq!(
        store.initial_state().expect("state").hard_state.term,
        0,
        "failed write must not change the hard state"
    );
}

/// A write starting inside the log replaces everything from its first index on, including
/// entries past its last one.
pub fn overlapping_write_replaces_the_suffix<H: StorageHarness>(h: &mut H) {
    let mut store = h.fresh();
    append(&mut store, entries(1..=5, 1));
    append(&mut store, entries(3..=4, 2));
    let store = h.reopen(store);
    assert_eq!(
        store.last_index(),
        4,
        "entry 5 must be gone after overwrite at 3"
    );
    let got = store.entries(1, 5).expect("read");
    let terms: Vec<Term> = got.iter().map(|e| e.term).collect();
    assert_eq!(terms, vec![1, 1, 2, 2], "suffix replaced from index 3");
}

/// `compact` drops entries up to the snapshot and keeps the ones after it across a restart;
/// reading compacted entries, compacting past the last entry and overwriting entries the
/// snapshot covers are refused.
pub fn compaction_keeps_the_tail<H: StorageHarness>(h: &mut H) {
    let mut store = h.fresh();
    append(&mut store, entries(1..=6, 1));
    store.compact(&snapshot(4, 1)).expect("compact to 4");
    let store = h.reopen(store);
    assert_eq!(store.first_index(), 5, "first index after compaction");
    assert_eq!(store.last_index(), 6);
    let state = store.initial_state().expect("state");
    assert_eq!(
        state.snapshot,
        Some(snapshot(4, 1)),
        "snapshot after reopen"
    );
    assert_eq!(state.entries, entries(5..=6, 1), "tail after compaction");
    assert!(
        matches!(
            store.entries(3, 5),
            Err(StorageError::Misuse(LogMisuse::Compacted { .. }))
        ),
        "reading compacted entries is an error"
    );
    let mut store = store;
    assert!(
        matches!(
            store.compact(&snapshot(9, 1)),
            Err(StorageError::Misuse(LogMisuse::Unavailable { .. }))
        ),
        "compacting beyond the last index is an error"
    );
    assert!(
        matches!(
            store.write(&WriteBatch {
                entries: entries(4..=6, 2),
                ..WriteBatch::default()
            }),
            Err(StorageError::Misuse(LogMisuse::BelowSnapshot { .. }))
        ),
        "replacing entries the snapshot covers is refused"
    );
    assert_eq!(store.entries(5, 7).expect("read"), entries(5..=6, 1));
}

/// A snapshot in a [`WriteBatch`] (from a leader) replaces the whole log, even one ahead
/// of it: the log then continues right after the snapshot, and a gap after it is refused.
pub fn installed_snapshot_replaces_the_log<H: StorageHarness>(h: &mut H) {
    let mut store = h.fresh();
    append(&mut store, entries(1..=3, 1));
    store
        .write(&WriteBatch {
            snapshot: Some(snapshot(10, 3)),
            ..WriteBatch::default()
        })
        .expect("install snapshot");
    let mut store = h.reopen(store);
    assert_eq!((store.first_index(), store.last_index()), (11, 10));
    assert!(store.initial_state().expect("state").entries.is_empty());
    append(&mut store, entries(11..=12, 3));
    assert!(
        store
            .write(&WriteBatch {
                entries: entries(14..=14, 3),
                ..WriteBatch::default()
            })
            .is_err(),
        "gap after a snapshot is refused"
    );
    let store = h.reopen(store);
    assert_eq!(store.entries(11, 13).expect("read"), entries(11..=12, 3));
}

/// Reading past the last entry is [`LogMisuse::Unavailable`]; an empty range is not an
/// error.
pub fn reads_outside_the_log_are_errors<H: StorageHarness>(h: &mut H) {
    let mut store = h.fresh();
    append(&mut store, entries(1..=3, 1));
    assert!(matches!(
        store.entries(2, 9),
        Err(StorageError::Misuse(LogMisuse::Unavailable { .. }))
    ));
    assert_eq!(store.entries(2, 2).expect("empty range"), Vec::new());
}

/// One batch carrying a snapshot, the entries right after it and a hard state stores all
/// three.
pub fn one_batch_writes_snapshot_entries_and_hard_state<H: StorageHarness>(h: &mut H) {
    let mut store = h.fresh();
    append(&mut store, entries(1..=2, 1));
    let hs = HardState {
        term: 4,
        vote: Some(NodeId(2)),
        commit: 21,
    };
    store
        .write(&WriteBatch {
            snapshot: Some(snapshot(20, 4)),
            entries: entries(21..=22, 4),
            hard_state: Some(hs),
        })
        .expect("combined batch");
    let store = h.reopen(store);
    let state = store.initial_state().expect("state");
    assert_eq!(state.hard_state, hs);
    assert_eq!(state.snapshot.map(|s| s.meta.index), Some(20));
    assert_eq!(state.entries, entries(21..=22, 4));
}
