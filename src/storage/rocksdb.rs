//! [`RocksDbStorage`]: the durable [`Storage`] of a real node, on RocksDB.
//!
//! **What it owns.** One data directory: the RocksDB files in it, the lock on it and the
//! on-disk format below. It only does storage IO, synchronously on the caller's thread; it
//! never talks to the network and decides nothing about consensus (which entries are
//! committed is the core's business — the commit index in the hard state is used only to
//! tell a torn tail from lost committed data at open).
//!
//! **On-disk format** (version [`FORMAT_VERSION`]), one column family per kind of record:
//! - `log`: key = entry index (u64, big-endian, so the key order is the log order); value =
//!   a sealed record holding the postcard encoding of the [`Entry`].
//! - `hard_state`: one key, a sealed postcard [`HardState`].
//! - `snapshot`: `meta` = a sealed record (snapshot metadata, data length, data SHA-256);
//!   `data` = the snapshot's data as the core hands it over, verified against the SHA-256
//!   when read. The group runtime's data is a small [`SnapshotHandle`](super::SnapshotHandle):
//!   the state-machine bytes themselves are a file in `snapshots/` ([`SNAPSHOT_DIR`]),
//!   written and synced before the handle is recorded here.
//! - `default`: `format` = the format version, checked at open.
//!
//! A *sealed* record is `[version u8][checksum 8 bytes][body]`, where the checksum is the
//! SHA-256 of (column family tag, key, body) truncated to 8 bytes: including the key means
//! a value found under the wrong key is caught too, not only flipped or torn bytes.
//!
//! **Durability.** Every [`Storage::write`] and [`Storage::compact`] is one RocksDB write
//! batch, written with `sync = true`: atomic across column families and durable when it
//! returns. Many entries share one batch and one sync (group commit).
//!
//! **Recovery.** At open the whole log after the snapshot is read back and checked. The
//! first bad entry (bad checksum, undecodable, held under the wrong key, or missing) ends
//! the usable log:
//! - above the durable commit index, it is a torn or damaged tail: it and everything after
//!   it are deleted (with a warning) so it can never be applied; the leader re-sends what
//!   is missing;
//! - at or below the commit index, committed data is lost: open fails with
//!   [`StorageError::Corrupt`] rather than silently forgetting it.
//!
//! **Directory.** Created with mode 0700; an existing directory that group or others may
//! access is refused (the log holds confidential commands). RocksDB's `LOCK` file makes a
//! second open of the same directory, in this or another process, fail fast; the error says
//! the directory is in use.
use std::path::{Path, PathBuf};

use rocksdb::{ColumnFamily, ColumnFamilyDescriptor, DBRecoveryMode, IteratorMode, Options, DB};
use serde::{Deserialize, Serialize};

use std::sync::Arc;

use super::{check_range, needs_compaction, SnapshotStore, Storage, StorageError, WriteBatch};
use crate::raft::{Entry, HardState, Index, InitialState, Snapshot, SnapshotMeta};

/// Version byte at the start of every sealed record and in the `format` key.
pub const FORMAT_VERSION: u8 = 1;

const CF_LOG: &str = "log";
const CF_HARD_STATE: &str = "hard_state";
const CF_SNAPSHOT: &str = "snapshot";

const KEY_FORMAT: &[u8] = b"format";
const KEY_HARD_STATE: &[u8] = b"hard_state";
const KEY_SNAPSHOT_META: &[u8] = b"meta";
const KEY_SNAPSHOT_DATA: &[u8] = b"data";

/// Subdirectory of the data directory holding the snapshot files ([`SnapshotStore`]).
pub const SNAPSHOT_DIR: &str = "snapshots";

/// Truncated SHA-256: enough to detect torn and flipped bytes (not an authenticator).
const CHECKSUM_BYTES: usize = 8;
const SEAL_HEADER_BYTES: usize = 1 + CHECKSUM_BYTES;

/// RocksDB keeps a WAL file alive until every column family with data in it has been
/// flushed. The tiny `hard_state` and `snapshot` families would otherwise pin WAL files
/// for a long time; past this total size RocksDB flushes them.
const WAL_TOTAL_BYTES_MAX: u64 = 64 << 20;
/// RocksDB's own info log (`LOG*` files) in the data directory: bounded.
const INFO_LOG_FILES_MAX: usize = 4;
const INFO_LOG_FILE_BYTES_MAX: usize = 8 << 20;

/// Snapshot metadata as stored, with what is needed to verify the data record.
#[derive(Serialize, Deserialize)]
struct StoredSnapshotMeta {
    meta: SnapshotMeta,
    data_len: u64,
    data_sha256: [u8; 32],
}

/// A Raft log and hard-state store in a RocksDB data directory. See the module docs.
pub struct RocksDbStorage {
    db: DB,
    path: PathBuf,
    hard_state: HardState,
    snapshot_meta: Option<SnapshotMeta>,
    /// Index of the last entry; equals the snapshot index when the log after it is empty.
    last_index: Index,
    /// Snapshot files, in [`SNAPSHOT_DIR`] under the data directory (covered by its lock).
    snapshots: Arc<SnapshotStore>,
}

impl std::fmt::Debug for RocksDbStorage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RocksDbStorage")
            .field("path", &self.path)
            .field("hard_state", &self.hard_state)
            .field("snapshot_index", &self.snapshot_index())
            .field("last_index", &self.last_index)
            .finish()
    }
}

fn io(op: &'static str) -> impl Fn(rocksdb::Error) -> StorageError {
    move |e| StorageError::Io {
        op,
        reason: e.into_string(),
    }
}

fn corrupt(what: impl Into<String>) -> StorageError {
    StorageError::Corrupt { what: what.into() }
}

fn log_key(index: Index) -> [u8; 8] {
    index.to_be_bytes()
}

fn checksum(cf: &str, key: &[u8], body: &[u8]) -> [u8; CHECKSUM_BYTES] {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    // Length-prefix the column family and key so (cf, key, body) splits are unambiguous.
    ctx.update(&(cf.len() as u64).to_be_bytes());
    ctx.update(cf.as_bytes());
    ctx.update(&(key.len() as u64).to_be_bytes());
    ctx.update(key);
    ctx.update(body);
    let digest = ctx.finish();
    let mut out = [0u8; CHECKSUM_BYTES];
    out.copy_from_slice(&digest.as_ref()[..CHECKSUM_BYTES]);
    out
}

/// `[version][checksum(cf, key, body)][body]`.
fn seal(cf: &str, key: &[u8], body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(SEAL_HEADER_BYTES + body.len());
    out.push(FORMAT_VERSION);
    out.extend_from_slice(&checksum(cf, key, body));
    out.extend_from_slice(body);
    out
}

/// The body of a sealed record, or why it cannot be trusted.
fn unseal<'a>(cf: &str, key: &[u8], value: &'a [u8]) -> Result<&'a [u8], String> {
    if value.len() < SEAL_HEADER_BYTES {
        return Err(format!(
            "record of {} bytes is shorter than its {SEAL_HEADER_BYTES}-byte header",
            value.len()
        ));
    }
    let (header, body) = value.split_at(SEAL_HEADER_BYTES);
    if header[0] != FORMAT_VERSION {
        return Err(format!(
            "record format version {} (expected {FORMAT_VERSION})",
            header[0]
        ));
    }
    if header[1..] != checksum(cf, key, body) {
        return Err("checksum mismatch".into());
    }
    Ok(body)
}

fn encode_entry(entry: &Entry) -> Result<Vec<u8>, StorageError> {
    let body = postcard::to_allocvec(entry).map_err(|e| StorageError::Io {
        op: "encode entry",
        reason: e.to_string(),
    })?;
    Ok(seal(CF_LOG, &log_key(entry.index), &body))
}

/// Decodes and checks the log record stored under `key`.
fn decode_entry(key: &[u8], value: &[u8]) -> Result<Entry, String> {
    let index = <[u8; 8]>::try_from(key)
        .map(Index::from_be_bytes)
        .map_err(|_| format!("log key of {} bytes (expected 8)", key.len()))?;
    let body = unseal(CF_LOG, key, value)?;
    let entry: Entry = postcard::from_bytes(body).map_err(|e| format!("undecodable: {e}"))?;
    if entry.index != index {
        return Err(format!("holds entry {} under key {index}", entry.index));
    }
    Ok(entry)
}

/// Creates the data directory (mode 0700) or checks that an existing one is private.
fn prepare_dir(path: &Path) -> Result<(), StorageError> {
    super::private_dir(path).map_err(|reason| StorageError::Io {
        op: "open",
        reason: format!("data directory {reason}"),
    })
}

/// RocksDB reports a held `LOCK` file in two ways: another process holds the POSIX lock
/// ("While lock file: …"), or this process already opened the directory ("lock hold by
/// current process"). Both mean the directory is in use.
fn is_lock_error(message: &str) -> bool {
    message.contains("While lock file") || message.contains("lock hold by current process")
}

fn db_options() -> Options {
    let mut opts = Options::default();
    opts.create_if_missing(true);
    opts.create_missing_column_families(true);
    // A torn write at the end of the WAL (crash mid-append) is dropped back to the last
    // complete batch; anything worse stops the open instead of skipping records.
    opts.set_wal_recovery_mode(DBRecoveryMode::PointInTime);
    opts.set_paranoid_checks(true);
    opts.set_max_total_wal_size(WAL_TOTAL_BYTES_MAX);
    opts.set_keep_log_file_num(INFO_LOG_FILES_MAX);
    opts.set_max_log_file_size(INFO_LOG_FILE_BYTES_MAX);
    opts
}

impl RocksDbStorage {
    /// Opens (creating if needed) the store in the data directory `path`, and recovers:
    /// checks every stored record and truncates a torn log tail (see the module docs).
    pub fn open(path: impl AsRef<Path>) -> Result<Self, StorageError> {
        let path = path.as_ref().to_path_buf();
        prepare_dir(&path)?;
        let cfs = [CF_LOG, CF_HARD_STATE, CF_SNAPSHOT]
            .map(|name| ColumnFamilyDescriptor::new(name, Options::default()));
        let db = DB::open_cf_descriptors(&db_options(), &path, cfs).map_err(|e| {
            let message = e.into_string();
            let reason = if is_lock_error(&message) {
                format!(
                    "data directory {} is in use by another process (lock held): {message}",
                    path.display()
                )
            } else {
                format!("cannot open RocksDB in {}: {message}", path.display())
            };
            StorageError::Io { op: "open", reason }
        })?;
        // Only now, with the directory's lock held: the snapshot store deletes stray files.
        let snapshots =
            SnapshotStore::open_dir(path.join(SNAPSHOT_DIR)).map_err(|e| StorageError::Io {
                op: "open",
                reason: e.to_string(),
            })?;
        let mut store = Self {
            db,
            path,
            hard_state: HardState::default(),
            snapshot_meta: None,
            last_index: 0,
            snapshots: Arc::new(snapshots),
        };
        store.check_format()?;
        store.hard_state = store.read_hard_state()?;
        let snapshot = store.read_snapshot_meta()?;
        store.last_index = snapshot.as_ref().map_or(0, |s| s.meta.index);
        store.snapshot_meta = snapshot.map(|s| s.meta);
        store.recover_log()?;
        Ok(store)
    }

    /// The data directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn cf(&self, name: &'static str) -> &ColumnFamily {
        // The families are created at open (`create_missing_column_families`): a missing
        // one is a bug in this module, not bad data.
        self.db
            .cf_handle(name)
            .unwrap_or_else(|| panic!("column family {name} was opened with the database"))
    }

    fn snapshot_index(&self) -> Index {
        self.snapshot_meta.as_ref().map_or(0, |m| m.index)
    }

    fn sync_write(&self, batch: rocksdb::WriteBatch, op: &'static str) -> Result<(), StorageError> {
        let mut opts = rocksdb::WriteOptions::default();
        opts.set_sync(true);
        self.db.write_opt(batch, &opts).map_err(io(op))
    }

    fn check_format(&self) -> Result<(), StorageError> {
        match self.db.get(KEY_FORMAT).map_err(io("read format"))? {
            Some(v) if v.as_slice() == [FORMAT_VERSION] => Ok(()),
            Some(v) => Err(corrupt(format!(
                "data directory {} has format {v:?}; this build reads format {FORMAT_VERSION}",
                self.path.display()
            ))),
            None => {
                // A store that already holds records but no format marker was not written
                // by this module: refuse it rather than guess.
                for name in [CF_LOG, CF_HARD_STATE, CF_SNAPSHOT] {
                    if self
                        .db
                        .iterator_cf(self.cf(name), IteratorMode::Start)
                        .next()
                        .is_some()
                    {
                        return Err(corrupt(format!(
                            "data directory {} holds records but no format marker",
                            self.path.display()
                        )));
                    }
                }
                let mut batch = rocksdb::WriteBatch::default();
                batch.put(KEY_FORMAT, [FORMAT_VERSION]);
                self.sync_write(batch, "write format")
            }
        }
    }

    fn read_hard_state(&self) -> Result<HardState, StorageError> {
        let Some(value) = self
            .db
            .get_pinned_cf(self.cf(CF_HARD_STATE), KEY_HARD_STATE)
            .map_err(io("read hard state"))?
        else {
            return Ok(HardState::default());
        };
        let body = unseal(CF_HARD_STATE, KEY_HARD_STATE, &value)
            .map_err(|e| corrupt(format!("hard state: {e}")))?;
        postcard::from_bytes(body).map_err(|e| corrupt(format!("hard state: undecodable: {e}")))
    }

    fn read_snapshot_meta(&self) -> Result<Option<StoredSnapshotMeta>, StorageError> {
        let Some(value) = self
            .db
            .get_pinned_cf(self.cf(CF_SNAPSHOT), KEY_SNAPSHOT_META)
            .map_err(io("read snapshot metadata"))?
        else {
            return Ok(None);
        };
        let body = unseal(CF_SNAPSHOT, KEY_SNAPSHOT_META, &value)
            .map_err(|e| corrupt(format!("snapshot metadata: {e}")))?;
        postcard::from_bytes(body)
            .map(Some)
            .map_err(|e| corrupt(format!("snapshot metadata: undecodable: {e}")))
    }

    /// Reads the snapshot and verifies its data against the stored SHA-256.
    fn read_snapshot(&self) -> Result<Option<Snapshot>, StorageError> {
        let Some(stored) = self.read_snapshot_meta()? else {
            return Ok(None);
        };
        let data = self
            .db
            .get_cf(self.cf(CF_SNAPSHOT), KEY_SNAPSHOT_DATA)
            .map_err(io("read snapshot data"))?
            .ok_or_else(|| {
                corrupt(format!(
                    "snapshot at {}: data record is missing",
                    stored.meta.index
                ))
            })?;
        if data.len() as u64 != stored.data_len {
            return Err(corrupt(format!(
                "snapshot at {}: data is {} bytes, metadata says {}",
                stored.meta.index,
                data.len(),
                stored.data_len
            )));
        }
        let digest = ring::digest::digest(&ring::digest::SHA256, &data);
        if digest.as_ref() != stored.data_sha256 {
            return Err(corrupt(format!(
                "snapshot at {}: data SHA-256 {} does not match the stored {}",
                stored.meta.index,
                hex::encode(digest.as_ref()),
                hex::encode(stored.data_sha256)
            )));
        }
        Ok(Some(Snapshot {
            meta: stored.meta,
            data: data.into(),
        }))
    }

    fn put_snapshot(batch: &mut rocksdb::WriteBatch, cf: &ColumnFamily, snapshot: &Snapshot) {
        let digest = ring::digest::digest(&ring::digest::SHA256, &snapshot.data);
        let mut data_sha256 = [0u8; 32];
        data_sha256.copy_from_slice(digest.as_ref());
        let stored = StoredSnapshotMeta {
            meta: snapshot.meta.clone(),
            data_len: snapshot.data.len() as u64,
            data_sha256,
        };
        // Serialising plain structs into a Vec cannot fail.
        let body = postcard::to_allocvec(&stored).expect("snapshot metadata encodes");
        batch.put_cf(
            cf,
            KEY_SNAPSHOT_META,
            seal(CF_SNAPSHOT, KEY_SNAPSHOT_META, &body),
        );
        batch.put_cf(cf, KEY_SNAPSHOT_DATA, &snapshot.data);
    }

    /// Walks the log after the snapshot; finds the end of the valid log and deletes a bad
    /// tail, or fails if the damage reaches committed entries.
    fn recover_log(&mut self) -> Result<(), StorageError> {
        let snapshot_index = self.snapshot_index();
        let mut expected = snapshot_index + 1;
        let mut bad: Option<(Index, String)> = None;
        let start = log_key(expected);
        let iter = self.db.iterator_cf(
            self.cf(CF_LOG),
            IteratorMode::From(&start, rocksdb::Direction::Forward),
        );
        for item in iter {
            let (key, value) = item.map_err(io("read log"))?;
            let at = expected;
            let problem = match decode_entry(&key, &value) {
                Err(e) => Some(e),
                Ok(entry) if entry.index != at => Some(format!("entry {at} is missing")),
                Ok(_) => None,
            };
            if let Some(problem) = problem {
                bad = Some((at, problem));
                break;
            }
            expected += 1;
        }
        self.last_index = expected - 1;
        let Some((at, problem)) = bad else {
            return Ok(());
        };
        if at <= self.hard_state.commit {
            return Err(corrupt(format!(
                "log entry {at} in {} is bad ({problem}) but entries up to {} are committed",
                self.path.display(),
                self.hard_state.commit
            )));
        }
        tracing::warn!(
            path = %self.path.display(),
            index = at,
            commit = self.hard_state.commit,
            %problem,
            "torn or damaged log tail above the commit index; truncating it"
        );
        let mut batch = rocksdb::WriteBatch::default();
        batch.delete_range_cf(self.cf(CF_LOG), log_key(at), log_key(Index::MAX));
        self.sync_write(batch, "truncate torn tail")
    }
}

impl Storage for RocksDbStorage {
    fn initial_state(&self) -> Result<InitialState, StorageError> {
        let snapshot = self.read_snapshot()?;
        let entries = self.entries(self.first_index(), self.last_index + 1)?;
        Ok(InitialState {
            hard_state: self.hard_state,
            snapshot,
            entries,
        })
    }

    fn write(&mut self, batch: &WriteBatch) -> Result<(), StorageError> {
        // Validate against the state after the snapshot (if any), before touching the
        // database: a refused write changes nothing.
        let (snapshot_index, base_last) = match &batch.snapshot {
            Some(s) => (s.meta.index, s.meta.index),
            None => (self.snapshot_index(), self.last_index),
        };
        super::check_entries(&batch.entries, snapshot_index, base_last)?;

        let log = self.cf(CF_LOG);
        let mut wb = rocksdb::WriteBatch::default();
        if let Some(snapshot) = &batch.snapshot {
            Self::put_snapshot(&mut wb, self.cf(CF_SNAPSHOT), snapshot);
            // The snapshot replaces the whole log.
            wb.delete_range_cf(log, log_key(0), log_key(Index::MAX));
        }
        if let Some(last) = batch.entries.last() {
            // Entries after the new last one belong to the replaced suffix. Only a
            // conflicting append from a new leader gets here, so one range tombstone is
            // cheap. With a snapshot in the batch the whole log is already deleted.
            if batch.snapshot.is_none() && last.index < self.last_index {
                wb.delete_range_cf(log, log_key(last.index + 1), log_key(Index::MAX));
            }
            for entry in &batch.entries {
                wb.put_cf(log, log_key(entry.index), encode_entry(entry)?);
            }
        }
        if let Some(hs) = &batch.hard_state {
            let body = postcard::to_allocvec(hs).map_err(|e| StorageError::Io {
                op: "encode hard state",
                reason: e.to_string(),
            })?;
            wb.put_cf(
                self.cf(CF_HARD_STATE),
                KEY_HARD_STATE,
                seal(CF_HARD_STATE, KEY_HARD_STATE, &body),
            );
        }
        self.sync_write(wb, "write")?;

        // Durable: now mirror it in memory.
        if let Some(snapshot) = &batch.snapshot {
            self.snapshot_meta = Some(snapshot.meta.clone());
            self.last_index = snapshot.meta.index;
        }
        if let Some(last) = batch.entries.last() {
            self.last_index = last.index;
        }
        if let Some(hs) = batch.hard_state {
            self.hard_state = hs;
        }
        Ok(())
    }

    fn compact(&mut self, snapshot: &Snapshot) -> Result<(), StorageError> {
        let index = snapshot.meta.index;
        if !needs_compaction(index, self.snapshot_index(), self.last_index)? {
            return Ok(());
        }
        let mut wb = rocksdb::WriteBatch::default();
        Self::put_snapshot(&mut wb, self.cf(CF_SNAPSHOT), snapshot);
        wb.delete_range_cf(self.cf(CF_LOG), log_key(0), log_key(index + 1));
        self.sync_write(wb, "compact")?;
        self.snapshot_meta = Some(snapshot.meta.clone());
        Ok(())
    }

    fn entries(&self, lo: Index, hi: Index) -> Result<Vec<Entry>, StorageError> {
        check_range(lo, hi, self.first_index(), self.last_index)?;
        if hi <= lo {
            return Ok(Vec::new());
        }
        let start = log_key(lo);
        let iter = self.db.iterator_cf(
            self.cf(CF_LOG),
            IteratorMode::From(&start, rocksdb::Direction::Forward),
        );
        let mut out = Vec::with_capacity((hi - lo) as usize);
        for (expected, item) in (lo..hi).zip(iter) {
            let (key, value) = item.map_err(io("read log"))?;
            let entry = decode_entry(&key, &value)
                .map_err(|e| corrupt(format!("log entry {expected}: {e}")))?;
            if entry.index != expected {
                return Err(corrupt(format!("log entry {expected} is missing")));
            }
            out.push(entry);
        }
        if out.len() as u64 != hi - lo {
            return Err(corrupt(format!(
                "log entries {}..{hi} are missing",
                lo + out.len() as u64
            )));
        }
        Ok(out)
    }

    fn first_index(&self) -> Index {
        self.snapshot_index() + 1
    }

    fn last_index(&self) -> Index {
        self.last_index
    }

    fn snapshot_meta(&self) -> Option<SnapshotMeta> {
        self.snapshot_meta.clone()
    }

    fn snapshot_store(&self) -> Arc<SnapshotStore> {
        self.snapshots.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::raft::NodeId;
    use crate::storage::conformance::{self, entry, StorageHarness};
    use std::os::unix::fs::PermissionsExt;

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
            RocksDbStorage::open(path).expect("open a fresh store")
        }
        fn reopen(&mut self, store: RocksDbStorage) -> RocksDbStorage {
            let path = store.path().to_path_buf();
            drop(store);
            RocksDbStorage::open(path).expect("reopen")
        }
    }

    #[test]
    fn rocksdb_storage_passes_the_conformance_suite() {
        conformance::run_all(&mut Harness::default());
    }

    fn append(store: &mut RocksDbStorage, range: std::ops::RangeInclusive<Index>, commit: Index) {
        store
            .write(&WriteBatch {
                entries: range.map(|i| entry(i, 1)).collect(),
                hard_state: Some(HardState {
                    term: 1,
                    vote: Some(NodeId(1)),
                    commit,
                }),
                ..WriteBatch::default()
            })
            .expect("append");
    }

    /// Overwrites a raw record behind the store's back, as a torn write or bit rot would.
    fn put_raw(store: &RocksDbStorage, cf: &'static str, key: &[u8], value: &[u8]) {
        store.db.put_cf(store.cf(cf), key, value).expect("raw put");
    }

    fn raw(store: &RocksDbStorage, cf: &'static str, key: &[u8]) -> Vec<u8> {
        store
            .db
            .get_cf(store.cf(cf), key)
            .expect("raw get")
            .expect("record exists")
    }

    fn reopen(store: RocksDbStorage) -> Result<RocksDbStorage, StorageError> {
        let path = store.path().to_path_buf();
        drop(store);
        RocksDbStorage::open(path)
    }

    #[test]
    fn a_torn_tail_above_the_commit_index_is_truncated_and_stays_truncated() {
        let mut h = Harness::default();
        let mut store = h.fresh();
        append(&mut store, 1..=6, 3);
        // Entry 5 torn (half its bytes), entry 6 intact after it: both must go, since the
        // log after a hole cannot be used.
        let torn = raw(&store, CF_LOG, &log_key(5));
        put_raw(&store, CF_LOG, &log_key(5), &torn[..torn.len() / 2]);
        let store = reopen(store).expect("a torn tail does not stop the open");
        assert_eq!(store.last_index(), 4, "truncated from the torn entry on");
        let state = store.initial_state().expect("state");
        assert_eq!(
            state.entries,
            (1..=4).map(|i| entry(i, 1)).collect::<Vec<_>>()
        );
        // The truncation was durable, and the log continues where it now ends.
        let mut store = reopen(store).expect("reopen after truncation");
        assert_eq!(store.last_index(), 4);
        append(&mut store, 5..=5, 4);
        let store = reopen(store).expect("reopen after append");
        assert_eq!(store.entries(5, 6).expect("read"), vec![entry(5, 1)]);
    }

    #[test]
    fn flipped_byte_misplaced_record_and_missing_key_are_detected_at_the_tail() {
        type Damage = fn(&RocksDbStorage);
        let cases: [(&str, Damage); 3] = [
            ("flipped byte", |s| {
                let mut v = raw(s, CF_LOG, &log_key(4));
                let last = v.len() - 1;
                v[last] ^= 0x01;
                put_raw(s, CF_LOG, &log_key(4), &v);
            }),
            ("record under the wrong key", |s| {
                let v = raw(s, CF_LOG, &log_key(3));
                put_raw(s, CF_LOG, &log_key(4), &v);
            }),
            ("missing key", |s| {
                s.db.delete_cf(s.cf(CF_LOG), log_key(4)).expect("delete");
            }),
        ];
        for (what, damage) in cases {
            let mut h = Harness::default();
            let mut store = h.fresh();
            append(&mut store, 1..=5, 2);
            damage(&store);
            let store = reopen(store).unwrap_or_else(|e| panic!("{what}: {e}"));
            assert_eq!(store.last_index(), 3, "{what}: log ends before entry 4");
        }
    }

    #[test]
    fn damage_at_or_below_the_commit_index_is_corruption_not_truncation() {
        let mut h = Harness::default();
        let mut store = h.fresh();
        append(&mut store, 1..=6, 4);
        let mut v = raw(&store, CF_LOG, &log_key(4));
        v[SEAL_HEADER_BYTES] ^= 0xff;
        put_raw(&store, CF_LOG, &log_key(4), &v);
        let path = store.path().to_path_buf();
        let err = reopen(store).expect_err("committed entry 4 is damaged");
        match &err {
            StorageError::Corrupt { what } => {
                assert!(what.contains("log entry 4"), "names the entry: {what}");
                assert!(what.contains("committed"), "says why it is fatal: {what}");
            }
            other => panic!("expected Corrupt, got {other:?}"),
        }
        assert!(err.is_fatal());
        // Nothing was deleted: the failed open left the data for an operator to inspect.
        let err_again = RocksDbStorage::open(&path).expect_err("still corrupt");
        assert_eq!(err, err_again);
    }

    #[test]
    fn a_corrupt_snapshot_is_rejected_on_read() {
        let mut h = Harness::default();
        let mut store = h.fresh();
        append(&mut store, 1..=4, 4);
        let snapshot = Snapshot {
            meta: SnapshotMeta {
                index: 3,
                term: 1,
                membership: crate::raft::Membership::with_voters([NodeId(1)]),
                membership_index: 1,
                incarnation: None,
            },
            data: bytes::Bytes::from_static(b"state machine bytes"),
        };
        store.compact(&snapshot).expect("compact");
        let store = reopen(store).expect("reopen");
        assert_eq!(
            store.initial_state().expect("intact snapshot").snapshot,
            Some(snapshot.clone()),
            "the intact snapshot reads back"
        );
        put_raw(
            &store,
            CF_SNAPSHOT,
            KEY_SNAPSHOT_DATA,
            b"state machine bytez",
        );
        let store = reopen(store).expect("metadata is intact");
        match store.initial_state() {
            Err(StorageError::Corrupt { what }) => {
                assert!(what.contains("SHA-256"), "names the check: {what}")
            }
            other => panic!("a snapshot with altered data must be refused, got {other:?}"),
        }
        // Damaged metadata is caught at open.
        let mut meta = raw(&store, CF_SNAPSHOT, KEY_SNAPSHOT_META);
        meta[SEAL_HEADER_BYTES] ^= 0x01;
        put_raw(&store, CF_SNAPSHOT, KEY_SNAPSHOT_META, &meta);
        match reopen(store) {
            Err(StorageError::Corrupt { what }) => {
                assert!(what.contains("snapshot metadata"), "{what}")
            }
            other => panic!("damaged snapshot metadata must fail the open, got {other:?}"),
        }
    }

    #[test]
    fn a_second_open_of_the_same_directory_is_refused_until_the_first_closes() {
        let mut h = Harness::default();
        let store = h.fresh();
        let path = store.path().to_path_buf();
        match RocksDbStorage::open(&path) {
            Err(StorageError::Io { op, reason }) => {
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
        RocksDbStorage::open(&path).expect("open after the first store closed");
    }

    #[test]
    fn the_data_directory_is_created_0700_and_a_shared_one_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let created = dir.path().join("a/b/data");
        drop(RocksDbStorage::open(&created).expect("open creates the directory"));
        let mode = std::fs::metadata(&created)
            .expect("stat")
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o700, "created data directory mode");

        let shared = dir.path().join("shared");
        std::fs::create_dir(&shared).expect("mkdir");
        std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o750)).expect("chmod");
        match RocksDbStorage::open(&shared) {
            Err(StorageError::Io { op: "open", reason }) => {
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
        RocksDbStorage::open(&shared).expect("a private existing directory is accepted");
    }
}
