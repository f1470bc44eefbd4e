//! Tests of the RocksDB store: the conformance suite, and the damage, replays, leaks and
//! sharing that stop the open.
use super::*;
use crate::raft::NodeId;
use crate::storage::conformance::{self, entry, StorageHarness};
use std::os::unix::fs::PermissionsExt;

fn key() -> StorageKey {
    member_key(1)
}

fn member_key(member: u8) -> StorageKey {
    StorageKey::derive(&[5; 32], &[member; 32])
}

/// Fresh stores live in their own temporary directories, kept until the harness drops.
#[derive(Default)]
struct Harness {
    dirs: Vec<tempfile::TempDir>,
}

impl Harness {
    fn new_path(&mut self) -> PathBuf {
        let dir = tempfile::tempdir().expect("temporary directory");
        let path = dir.path().join("data");
        self.dirs.push(dir);
        path
    }
}

impl StorageHarness for Harness {
    type S = RocksDbStorage;
    fn fresh(&mut self) -> RocksDbStorage {
        let path = self.new_path();
        RocksDbStorage::open(path, key()).expect("open a fresh store")
    }
    fn reopen(&mut self, store: RocksDbStorage) -> RocksDbStorage {
        let path = store.path().to_path_buf();
        drop(store);
        RocksDbStorage::open(path, key()).expect("reopen")
    }
}

#[test]
fn rocksdb_storage_passes_the_conformance_suite() {
    conformance::run_all(&mut Harness::default());
}

fn write(store: &mut RocksDbStorage, range: std::ops::RangeInclusive<Index>, term: u64) {
    store
        .write(&WriteBatch {
            entries: range.map(|i| entry(i, term)).collect(),
            hard_state: Some(HardState {
                term,
                vote: Some(NodeId(1)),
                commit: 2,
            }),
            ..WriteBatch::default()
        })
        .expect("write");
}

/// Overwrites a raw record behind the store's back, as the host could.
fn put_raw(store: &RocksDbStorage, family: &'static str, key: &[u8], value: &[u8]) {
    store
        .db
        .put_cf(cf(&store.db, family), key, value)
        .expect("raw put");
}

fn raw(store: &RocksDbStorage, family: &'static str, key: &[u8]) -> Vec<u8> {
    store
        .db
        .get_cf(cf(&store.db, family), key)
        .expect("raw get")
        .expect("record exists")
}

fn reopen(store: RocksDbStorage) -> Result<RocksDbStorage, StorageError> {
    let path = store.path().to_path_buf();
    drop(store);
    RocksDbStorage::open(path, key())
}

/// The open fails as corrupt, with a message holding every one of `words`.
fn assert_refused(result: Result<RocksDbStorage, StorageError>, what: &str, words: &[&str]) {
    match result {
        Err(e @ StorageError::Fatal(FatalStorageError::Corrupt { .. })) => {
            assert!(e.is_fatal());
            let message = e.to_string();
            for word in words {
                assert!(message.contains(word), "{what}: {message:?} names {word:?}");
            }
        }
        Err(other) => panic!("{what}: expected Corrupt, got {other:?}"),
        Ok(store) => panic!("{what}: the store opened: {store:?}"),
    }
}

#[test]
fn damaged_moved_or_missing_entries_stop_the_open_at_any_index() {
    type Damage = fn(&RocksDbStorage);
    let cases: [(&str, Damage, &[&str]); 4] = [
        (
            "flipped byte above the commit index",
            |s| {
                let mut v = raw(s, CF_LOG, &log_key(5));
                let last = v.len() - 1;
                v[last] ^= 0x01;
                put_raw(s, CF_LOG, &log_key(5), &v);
            },
            &["log entry 5", "authentication failed"],
        ),
        (
            "flipped byte in a committed entry",
            |s| {
                let mut v = raw(s, CF_LOG, &log_key(2));
                v[30] ^= 0x80;
                put_raw(s, CF_LOG, &log_key(2), &v);
            },
            &["log entry 2", "authentication failed"],
        ),
        (
            "record under the wrong key",
            |s| {
                let v = raw(s, CF_LOG, &log_key(3));
                put_raw(s, CF_LOG, &log_key(4), &v);
            },
            &["log entry 4", "authentication failed"],
        ),
        (
            "missing entry",
            |s| {
                s.db.delete_cf(cf(&s.db, CF_LOG), log_key(4))
                    .expect("delete");
            },
            &["log entry 4 is missing"],
        ),
    ];
    for (what, damage, words) in cases {
        let mut h = Harness::default();
        let mut store = h.fresh();
        write(&mut store, 1..=6, 1);
        damage(&store);
        let path = store.path().to_path_buf();
        assert_refused(reopen(store), what, words);
        // Nothing was deleted: the refused open leaves the data for an operator.
        let again = RocksDbStorage::open(&path, key());
        assert_refused(again, what, words);
    }
}

#[test]
fn an_entry_replayed_from_an_overwritten_suffix_is_caught_running_and_at_open() {
    let mut h = Harness::default();
    let mut store = h.fresh();
    write(&mut store, 1..=5, 1);
    let old_4 = raw(&store, CF_LOG, &log_key(4));
    // A new leader's entries replace 4..=5.
    write(&mut store, 4..=5, 2);
    put_raw(&store, CF_LOG, &log_key(4), &old_4);
    match store.entries(4, 5) {
        Err(StorageError::Fatal(FatalStorageError::Corrupt { what })) => {
            assert!(what.contains("log entry 4"), "{what}");
            assert!(what.contains("replayed"), "{what}");
        }
        other => panic!("a replayed entry must not be read: {other:?}"),
    }
    // At open the chain breaks at the entry after it.
    assert_refused(reopen(store), "replayed entry", &["log entry 5"]);
}

#[test]
fn a_deleted_suffix_brought_back_or_an_old_tip_stops_the_open() {
    let mut h = Harness::default();
    let mut store = h.fresh();
    write(&mut store, 1..=6, 1);
    let old: Vec<_> = (5..=6).map(|i| raw(&store, CF_LOG, &log_key(i))).collect();
    // A new leader's entry 4 replaces 4..=6: 5 and 6 are deleted.
    write(&mut store, 4..=4, 2);
    for (i, record) in (5..=6).zip(&old) {
        put_raw(&store, CF_LOG, &log_key(i), record);
    }
    let store = reopen(store).err().map(|e| e.to_string());
    assert!(
        store
            .as_deref()
            .is_some_and(|m| m.contains("log entry 5 beyond the last durable entry 4")),
        "resurrected suffix: {store:?}"
    );

    // The older tip beside the newer log: the chain does not end where it says.
    let mut h = Harness::default();
    let mut store = h.fresh();
    write(&mut store, 1..=4, 1);
    let old_tip_4 = raw(&store, CF_TIP, KEY_TIP);
    write(&mut store, 4..=4, 2);
    put_raw(&store, CF_TIP, KEY_TIP, &old_tip_4);
    assert_refused(
        reopen(store),
        "old tip",
        &["log entry 4", "not the last entry"],
    );
}

#[test]
fn a_damaged_tip_or_another_members_key_stops_the_open() {
    let mut h = Harness::default();
    let mut store = h.fresh();
    write(&mut store, 1..=3, 1);
    let path = store.path().to_path_buf();
    drop(store);
    match RocksDbStorage::open(&path, member_key(2)) {
        Err(StorageError::Fatal(FatalStorageError::Corrupt { what })) => {
            assert!(what.contains("tip"), "{what}");
            assert!(what.contains("another key"), "{what}");
            assert!(what.contains(&path.display().to_string()), "{what}");
        }
        other => panic!("another member's key must not open the store: {other:?}"),
    }
    let store = RocksDbStorage::open(&path, key()).expect("the owner's key opens it");
    let mut tip = raw(&store, CF_TIP, KEY_TIP);
    tip[20] ^= 0x04;
    put_raw(&store, CF_TIP, KEY_TIP, &tip);
    assert_refused(reopen(store), "damaged tip", &["tip (hard state) record"]);
}

fn snapshot_at(index: Index, data: &'static [u8]) -> Snapshot {
    Snapshot {
        meta: SnapshotMeta {
            index,
            term: 1,
            membership: crate::raft::Membership::with_voters([NodeId(1)]),
            membership_index: 1,
            incarnation: None,
            timestamp_ms: 0,
        },
        data: Bytes::from_static(data),
    }
}

#[test]
fn a_damaged_or_replaced_snapshot_record_stops_the_open() {
    let mut h = Harness::default();
    let mut store = h.fresh();
    write(&mut store, 1..=6, 1);
    store
        .compact(&snapshot_at(2, b"state at 2"))
        .expect("compact");
    let old_snapshot = raw(&store, CF_SNAPSHOT, KEY_SNAPSHOT);
    store
        .compact(&snapshot_at(4, b"state at 4"))
        .expect("compact");
    let store = reopen(store).expect("reopen");
    let state = store.initial_state().expect("state");
    assert_eq!(state.snapshot, Some(snapshot_at(4, b"state at 4")));
    assert_eq!(
        state.entries,
        (5..=6).map(|i| entry(i, 1)).collect::<Vec<_>>(),
        "entries after the snapshot chain to its anchor"
    );

    put_raw(&store, CF_SNAPSHOT, KEY_SNAPSHOT, &old_snapshot);
    assert_refused(
        reopen(store),
        "older snapshot record",
        &["snapshot at 4", "not the record the tip names"],
    );

    let mut h = Harness::default();
    let mut store = h.fresh();
    write(&mut store, 1..=3, 1);
    store
        .compact(&snapshot_at(3, b"state at 3"))
        .expect("compact");
    let mut record = raw(&store, CF_SNAPSHOT, KEY_SNAPSHOT);
    let at = record.len() - 1;
    record[at] ^= 0x01;
    put_raw(&store, CF_SNAPSHOT, KEY_SNAPSHOT, &record);
    assert_refused(reopen(store), "damaged snapshot", &["snapshot at 3"]);
}

/// Every byte of every file in `dir` (recursively).
fn all_file_bytes(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    for item in std::fs::read_dir(dir).expect("ls") {
        let path = item.expect("entry").path();
        if path.is_dir() {
            out.extend(all_file_bytes(&path));
        } else {
            out.push((path.clone(), std::fs::read(&path).expect("read")));
        }
    }
    out
}

#[test]
fn commands_and_snapshots_are_not_stored_in_the_clear() {
    let mut h = Harness::default();
    let mut store = h.fresh();
    write(&mut store, 1..=20, 1);
    store
        .compact(&snapshot_at(10, b"confidential snapshot bytes"))
        .expect("compact");
    store.db.flush_cf(cf(&store.db, CF_LOG)).expect("flush");
    let path = store.path().to_path_buf();
    drop(store);
    for (file, bytes) in all_file_bytes(&path) {
        for needle in [&b"cmd-15-1"[..], b"confidential snapshot"] {
            assert!(
                !bytes.windows(needle.len()).any(|w| w == needle),
                "{} holds {:?} in the clear",
                file.display(),
                String::from_utf8_lossy(needle)
            );
        }
    }
}

/// The files of `dir` whose names end with `suffix`.
fn files_ending(dir: &Path, suffix: &str) -> Vec<PathBuf> {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .expect("ls")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.to_string_lossy().ends_with(suffix))
        .collect();
    files.sort();
    files
}

fn flip(file: &Path, at: usize) {
    let mut bytes = std::fs::read(file).expect("read");
    assert!(
        at < bytes.len(),
        "{} has {} bytes",
        file.display(),
        bytes.len()
    );
    bytes[at] ^= 0x10;
    std::fs::write(file, bytes).expect("write");
}

#[test]
fn a_flipped_byte_in_a_table_file_stops_the_open_and_names_the_file() {
    let mut h = Harness::default();
    let mut store = h.fresh();
    write(&mut store, 1..=50, 1);
    for family in RECORD_FAMILIES {
        store.db.flush_cf(cf(&store.db, family)).expect("flush");
    }
    let path = store.path().to_path_buf();
    drop(store);
    let tables = files_ending(&path, ".sst");
    assert!(!tables.is_empty(), "the flush wrote table files");
    // The largest table holds the log; byte 100 is inside its first data block.
    let table = tables
        .iter()
        .max_by_key(|p| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0))
        .expect("a table");
    flip(table, 100);
    let name = table
        .file_name()
        .expect("name")
        .to_string_lossy()
        .into_owned();
    match RocksDbStorage::open(&path, key()) {
        Err(e) => assert!(e.to_string().contains(&name), "names {name}: {e}"),
        Ok(store) => panic!("a damaged table file was accepted: {store:?}"),
    }
}

#[test]
fn a_flipped_byte_inside_the_wal_stops_the_open_instead_of_dropping_batches() {
    let mut h = Harness::default();
    let mut store = h.fresh();
    for i in 1..=40 {
        write(&mut store, i..=i, 1);
    }
    let path = store.path().to_path_buf();
    drop(store);
    let wals = files_ending(&path, ".log");
    let wal = wals
        .iter()
        .max_by_key(|p| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0))
        .expect("a WAL file");
    let len = std::fs::metadata(wal).expect("stat").len() as usize;
    // The middle of the WAL: synced batches follow it.
    flip(wal, len / 2);
    match RocksDbStorage::open(&path, key()) {
        Err(e) => {
            let message = e.to_string();
            assert!(message.contains("Corruption"), "{message}");
            assert!(message.contains(&path.display().to_string()), "{message}");
        }
        Ok(store) => panic!(
            "the WAL lost batches silently: the store opened at {}",
            store.last_index()
        ),
    }
}

#[test]
fn a_second_open_of_the_same_directory_is_refused_until_the_first_closes() {
    let mut h = Harness::default();
    let store = h.fresh();
    let path = store.path().to_path_buf();
    match RocksDbStorage::open(&path, key()) {
        Err(StorageError::Fatal(FatalStorageError::Io { op, reason })) => {
            assert_eq!(op, "open");
            assert!(
                reason.contains(&format!(
                    "data directory {} is in use by another process (lock held)",
                    path.display()
                )),
                "clear reason: {reason}"
            );
        }
        other => panic!("second open must fail, got {other:?}"),
    }
    drop(store);
    RocksDbStorage::open(&path, key()).expect("open after the first store closed");
}

#[test]
fn the_data_directory_is_created_0700_and_a_shared_one_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let created = dir.path().join("a/b/data");
    drop(RocksDbStorage::open(&created, key()).expect("open creates the directory"));
    let mode = std::fs::metadata(&created)
        .expect("stat")
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o700, "created data directory mode");

    let shared = dir.path().join("shared");
    std::fs::create_dir(&shared).expect("mkdir");
    std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o750)).expect("chmod");
    match RocksDbStorage::open(&shared, key()) {
        Err(StorageError::Fatal(FatalStorageError::Io { op: "open", reason })) => {
            assert!(reason.contains(&shared.display().to_string()), "{reason}");
            assert!(reason.contains("0750"), "names the mode: {reason}");
        }
        other => panic!("a group-readable directory must be refused, got {other:?}"),
    }
    assert!(
        std::fs::read_dir(&shared).expect("ls").next().is_none(),
        "nothing was written into the refused directory"
    );
    std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o700)).expect("chmod");
    RocksDbStorage::open(&shared, key()).expect("a private existing directory is accepted");
}
