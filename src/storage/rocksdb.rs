//! [`RocksDbStorage`]: the durable [`Storage`] of a real node, on RocksDB.
//!
//! **What it owns.** One data directory: the RocksDB files in it, the lock on it and the
//! on-disk format below. It only does storage IO, synchronously on the caller's thread; it
//! never talks to the network and decides nothing about consensus.
//!
//! **The host owns the disk** (architecture.md §13): it can read, alter, swap, delete and replay
//! any file. So every record is sealed ([`super::seal`]: ChaCha20-Poly1305 under a key
//! derived from the group key and this member's node id) and the records are chained, so
//! that the only state the store accepts at open is one it wrote as a whole:
//! - log entry `i` is sealed with the tag of entry `i - 1` in its associated data (entry
//!   `snapshot + 1` with the snapshot's *anchor*: the tag of the compacted entry at the
//!   snapshot index, or the snapshot record's own tag when it was installed from a leader);
//! - the *tip*, rewritten in every write batch, holds the hard state, the last index, the
//!   last entry's tag and the snapshot record's tag.
//!
//! A flipped byte, a record moved to another index, an entry replayed from an overwritten
//! suffix, a truncated suffix brought back, an old hard state beside a newer log: each
//! breaks a tag or the chain, and the open fails with [`FatalStorageError::Corrupt`] naming the
//! record. Nothing is ever truncated as a "torn tail": every write is one synced RocksDB
//! batch, which RocksDB either replays whole or, when the crash tore it, drops as the
//! incomplete last WAL record ([`DBRecoveryMode::TolerateCorruptedTailRecords`]); damage
//! anywhere else in the WAL stops the open instead of silently dropping synced batches
//! after it (RocksDB's default, point-in-time recovery, would). What the host can still
//! do is roll the whole directory back to an earlier state; a node in a TD never reads its
//! directory across a reboot (a new identity, a new key), and the README says so.
//!
//! **On-disk format** (version [`FORMAT_VERSION`]), one column family per kind of record:
//! - `log`: key = entry index (u64, big-endian, so the key order is the log order); value =
//!   a sealed postcard [`Entry`].
//! - `tip`: one sealed record, [`Tip`].
//! - `snapshot`: one sealed record, [`StoredSnapshot`] (metadata, anchor and data). The
//!   group runtime's data is a small [`SnapshotHandle`](super::SnapshotHandle): the
//!   state-machine bytes are a file in `snapshots/` ([`SNAPSHOT_DIR`]) whose SHA-256 the
//!   handle names, so the sealed record authenticates the file too.
//! - `default`: `format` = the format version, checked at open.
//!
//! **Durability.** Every [`Storage::write`] and [`Storage::compact`] is one RocksDB write
//! batch, written with `sync = true`: atomic across column families and durable when it
//! returns. Many entries share one batch and one sync (group commit).
//!
//! **Directory.** Created with mode 0700; an existing directory that group or others may
//! access is refused. RocksDB's `LOCK` file makes a second open of the same directory, in
//! this or another process, fail fast; the error says the directory is in use. Opening is
//! two steps: [`RocksDbStorage::lock`] takes the directory (before the node binds anything,
//! when the group key may not be provisioned yet), [`LockedRocksDb::unseal`] reads and
//! checks the records with the key.
use std::collections::VecDeque;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use rocksdb::{ColumnFamily, ColumnFamilyDescriptor, DBRecoveryMode, IteratorMode, Options, DB};
use serde::{Deserialize, Serialize};

use std::sync::Arc;

use super::seal::{tag_of, RecordKind, SealError, Sealer, StorageKey, Tag, TAG_BYTES};
use super::{
    check_range, needs_compaction, FatalStorageError, LogMisuse, SnapshotStore, Storage,
    StorageError, WriteBatch,
};
use crate::raft::{Entry, HardState, Index, InitialState, Snapshot, SnapshotMeta};

/// Version of the on-disk format, in the `format` key.
pub(crate) const FORMAT_VERSION: u8 = 2;

const CF_LOG: &str = "log";
const CF_TIP: &str = "tip";
const CF_SNAPSHOT: &str = "snapshot";
const RECORD_FAMILIES: [&str; 3] = [CF_LOG, CF_TIP, CF_SNAPSHOT];

const KEY_FORMAT: &[u8] = b"format";
const KEY_TIP: &[u8] = b"tip";
const KEY_SNAPSHOT: &[u8] = b"snapshot";

/// What the tip and the snapshot record chain to: they stand alone.
const NO_CHAIN: Tag = [0; TAG_BYTES];

/// Subdirectory of the data directory holding the snapshot files ([`SnapshotStore`]).
pub const SNAPSHOT_DIR: &str = "snapshots";

/// RocksDB keeps a WAL file alive until every column family with data in it has been
/// flushed. The tiny `tip` and `snapshot` families would otherwise pin WAL files for a long
/// time; past this total size RocksDB flushes them.
const WAL_TOTAL_BYTES_MAX: u64 = 64 << 20;
/// RocksDB's own info log (`LOG*` files) in the data directory: bounded.
const INFO_LOG_FILES_MAX: usize = 4;
const INFO_LOG_FILE_BYTES_MAX: usize = 8 << 20;

/// The record that closes the store's state: rewritten by every write and compaction.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct Tip {
    hard_state: HardState,
    last_index: Index,
    /// Tag of the entry at `last_index` (the snapshot's anchor when no entry follows it).
    last_tag: Tag,
    /// The snapshot record's index and tag, when there is one.
    snapshot: Option<(Index, Tag)>,
}

/// The snapshot record.
#[derive(Serialize, Deserialize)]
struct StoredSnapshot {
    meta: SnapshotMeta,
    /// The tag the entry after the snapshot chains to: the compacted entry's at the
    /// snapshot index, or `None` for a snapshot installed from a leader (the log was
    /// replaced; the next entry chains to this record's own tag).
    anchor: Option<Tag>,
    data: Bytes,
}

/// A data directory taken (locked, format checked) but whose records are not read yet.
pub struct LockedRocksDb {
    db: DB,
    path: PathBuf,
}

impl std::fmt::Debug for LockedRocksDb {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LockedRocksDb")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

/// A Raft log and hard-state store in a RocksDB data directory. See the module docs.
pub struct RocksDbStorage {
    db: DB,
    path: PathBuf,
    sealer: Sealer,
    hard_state: HardState,
    snapshot_meta: Option<SnapshotMeta>,
    /// The snapshot record's tag.
    snapshot_tag: Option<Tag>,
    /// What the entry after the snapshot chains to ([`NO_CHAIN`] without a snapshot).
    anchor: Tag,
    /// Tags of the entries `first_index..=last_index`, in order: what every read checks a
    /// record against, so a record replayed while the node runs is caught too.
    tags: VecDeque<Tag>,
    /// Snapshot files, in [`SNAPSHOT_DIR`] under the data directory (covered by its lock).
    snapshots: Arc<SnapshotStore>,
}

impl std::fmt::Debug for RocksDbStorage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RocksDbStorage")
            .field("path", &self.path)
            .field("hard_state", &self.hard_state)
            .field("snapshot_index", &self.snapshot_index())
            .field("last_index", &self.last_index())
            .finish()
    }
}

/// A failure of the underlying store during `op`: fatal.
fn io_failed(op: &'static str, reason: impl Into<String>) -> StorageError {
    FatalStorageError::Io {
        op,
        reason: reason.into(),
    }
    .into()
}

fn io(op: &'static str) -> impl Fn(rocksdb::Error) -> StorageError {
    move |e| io_failed(op, e.into_string())
}

fn corrupt(what: impl Into<String>) -> StorageError {
    FatalStorageError::Corrupt { what: what.into() }.into()
}

fn seal_failed(e: SealError) -> StorageError {
    io_failed("seal", e.to_string())
}

fn encode<T: Serialize>(value: &T, what: &'static str) -> Result<Vec<u8>, StorageError> {
    postcard::to_allocvec(value).map_err(|e| io_failed(what, e.to_string()))
}

fn log_key(index: Index) -> [u8; 8] {
    index.to_be_bytes()
}

fn key_index(key: &[u8]) -> Result<Index, String> {
    <[u8; 8]>::try_from(key)
        .map(Index::from_be_bytes)
        .map_err(|_| format!("log key of {} bytes (expected 8)", key.len()))
}

/// Creates the data directory (mode 0700) or checks that an existing one is private.
fn prepare_dir(path: &Path) -> Result<(), StorageError> {
    super::private_dir(path).map_err(|reason| io_failed("open", format!("data directory {reason}")))
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
    // Only the incomplete last record of a WAL (a write torn by a crash, never
    // acknowledged) is dropped; damage anywhere else stops the open.
    opts.set_wal_recovery_mode(DBRecoveryMode::TolerateCorruptedTailRecords);
    opts.set_paranoid_checks(true);
    opts.set_max_total_wal_size(WAL_TOTAL_BYTES_MAX);
    opts.set_keep_log_file_num(INFO_LOG_FILES_MAX);
    opts.set_max_log_file_size(INFO_LOG_FILE_BYTES_MAX);
    opts
}

fn cf<'a>(db: &'a DB, name: &'static str) -> &'a ColumnFamily {
    // The families are created at open (`create_missing_column_families`): a missing one
    // is a bug in this module, not bad data.
    db.cf_handle(name)
        .unwrap_or_else(|| panic!("column family {name} was opened with the database"))
}

fn sync_write(db: &DB, batch: rocksdb::WriteBatch, op: &'static str) -> Result<(), StorageError> {
    let mut opts = rocksdb::WriteOptions::default();
    opts.set_sync(true);
    db.write_opt(batch, &opts).map_err(io(op))
}

impl LockedRocksDb {
    /// The data directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether the directory holds any record (a log, a tip or a snapshot).
    pub fn has_records(&self) -> Result<bool, StorageError> {
        for name in RECORD_FAMILIES {
            if let Some(item) = self
                .db
                .iterator_cf(cf(&self.db, name), IteratorMode::Start)
                .next()
            {
                item.map_err(io("read records"))?;
                return Ok(true);
            }
        }
        Ok(false)
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
                if self.has_records()? {
                    return Err(corrupt(format!(
                        "data directory {} holds records but no format marker",
                        self.path.display()
                    )));
                }
                let mut batch = rocksdb::WriteBatch::default();
                batch.put(KEY_FORMAT, [FORMAT_VERSION]);
                sync_write(&self.db, batch, "write format")
            }
        }
    }

    /// Reads and checks every record with `key` (see the module docs): the store, or why
    /// its records cannot be trusted. A failed check changes nothing on disk.
    pub fn unseal(self, key: StorageKey) -> Result<RocksDbStorage, StorageError> {
        // Only now, with the directory's lock held: the snapshot store deletes stray files.
        let snapshots = SnapshotStore::open_dir(self.path.join(SNAPSHOT_DIR), key.clone())
            .map_err(|e| io_failed("open", e.to_string()))?;
        let sealer = Sealer::new(key).map_err(seal_failed)?;
        let mut store = RocksDbStorage {
            db: self.db,
            path: self.path,
            sealer,
            hard_state: HardState::default(),
            snapshot_meta: None,
            snapshot_tag: None,
            anchor: NO_CHAIN,
            tags: VecDeque::new(),
            snapshots: Arc::new(snapshots),
        };
        store.recover()?;
        Ok(store)
    }
}

impl RocksDbStorage {
    /// Opens (creating if needed) the store in the data directory `path` and reads its
    /// records with `key`: [`lock`](Self::lock) then [`LockedRocksDb::unseal`].
    pub fn open(path: impl AsRef<Path>, key: StorageKey) -> Result<Self, StorageError> {
        Self::lock(path)?.unseal(key)
    }

    /// Takes the data directory `path` (creating it if needed): checks its mode, holds its
    /// lock and checks the format, without reading any record.
    pub fn lock(path: impl AsRef<Path>) -> Result<LockedRocksDb, StorageError> {
        let path = path.as_ref().to_path_buf();
        prepare_dir(&path)?;
        let cfs = [CF_LOG, CF_TIP, CF_SNAPSHOT]
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
            io_failed("open", reason)
        })?;
        let locked = LockedRocksDb { db, path };
        locked.check_format()?;
        Ok(locked)
    }

    /// The data directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn snapshot_index(&self) -> Index {
        self.snapshot_meta.as_ref().map_or(0, |m| m.index)
    }

    /// The tag of the entry at `index` (the anchor at the snapshot index), `None` outside
    /// the log.
    fn tag_at(&self, index: Index) -> Option<Tag> {
        let snapshot_index = self.snapshot_index();
        if index == snapshot_index {
            return Some(self.anchor);
        }
        let offset = index.checked_sub(snapshot_index + 1)?;
        self.tags.get(usize::try_from(offset).ok()?).copied()
    }

    /// `what` in this store's directory is corrupt.
    fn corrupt_record(&self, what: impl std::fmt::Display) -> StorageError {
        corrupt(format!("{what} in {}", self.path.display()))
    }

    /// Reads the snapshot record the tip names and checks it is that record.
    fn read_snapshot(
        &self,
        index: Index,
        tag: &Tag,
    ) -> Result<(StoredSnapshot, Tag), StorageError> {
        let record = self
            .db
            .get_pinned_cf(cf(&self.db, CF_SNAPSHOT), KEY_SNAPSHOT)
            .map_err(io("read snapshot"))?
            .ok_or_else(|| {
                self.corrupt_record(format!("snapshot at {index}: record is missing"))
            })?;
        if tag_of(&record).as_ref() != Some(tag) {
            return Err(self.corrupt_record(format!(
                "snapshot at {index}: not the record the tip names (replaced or replayed)"
            )));
        }
        let body = self
            .sealer
            .open(RecordKind::Snapshot, index, &NO_CHAIN, &record)
            .map_err(|e| self.corrupt_record(format!("snapshot at {index}: {e}")))?;
        let stored: StoredSnapshot = postcard::from_bytes(&body)
            .map_err(|e| self.corrupt_record(format!("snapshot at {index}: undecodable: {e}")))?;
        if stored.meta.index != index {
            return Err(self.corrupt_record(format!(
                "snapshot record at {index} holds the snapshot at {}",
                stored.meta.index
            )));
        }
        Ok((stored, *tag))
    }

    /// Opens the log record at `index`, which must chain to `chain`: the entry and its tag.
    fn open_entry(&self, index: Index, chain: &Tag, record: &[u8]) -> Result<(Entry, Tag), String> {
        let body = self
            .sealer
            .open(RecordKind::Entry, index, chain, record)
            .map_err(|e| e.to_string())?;
        let entry: Entry = postcard::from_bytes(&body).map_err(|e| format!("undecodable: {e}"))?;
        if entry.index != index {
            return Err(format!("holds entry {} under key {index}", entry.index));
        }
        // `open` succeeded, so the record is at least as long as its tag.
        let tag = tag_of(record).ok_or("shorter than its tag")?;
        Ok((entry, tag))
    }

    /// Reads the tip, the snapshot and the whole log, checking the chain from the snapshot's
    /// anchor to the tip (see the module docs).
    fn recover(&mut self) -> Result<(), StorageError> {
        let tip_record = self
            .db
            .get_pinned_cf(cf(&self.db, CF_TIP), KEY_TIP)
            .map_err(io("read tip"))?
            .map(|v| v.to_vec());
        let Some(tip_record) = tip_record else {
            // No tip: nothing was ever written (`check_format` refuses records without a
            // format marker, and every write leaves a tip).
            for name in [CF_LOG, CF_SNAPSHOT] {
                if self
                    .db
                    .iterator_cf(cf(&self.db, name), IteratorMode::Start)
                    .next()
                    .is_some()
                {
                    return Err(
                        self.corrupt_record(format!("{name} records without the store's tip"))
                    );
                }
            }
            return Ok(());
        };
        let body = self
            .sealer
            .open(RecordKind::Tip, 0, &NO_CHAIN, &tip_record)
            .map_err(|e| self.corrupt_record(format!("the tip (hard state) record: {e}")))?;
        let tip: Tip = postcard::from_bytes(&body).map_err(|e| {
            self.corrupt_record(format!("the tip (hard state) record: undecodable: {e}"))
        })?;

        match tip.snapshot {
            Some((index, tag)) => {
                let (stored, tag) = self.read_snapshot(index, &tag)?;
                self.anchor = stored.anchor.unwrap_or(tag);
                self.snapshot_tag = Some(tag);
                self.snapshot_meta = Some(stored.meta);
            }
            None => {
                if self
                    .db
                    .get_pinned_cf(cf(&self.db, CF_SNAPSHOT), KEY_SNAPSHOT)
                    .map_err(io("read snapshot"))?
                    .is_some()
                {
                    return Err(self.corrupt_record("a snapshot record the tip does not name"));
                }
            }
        }

        let snapshot_index = self.snapshot_index();
        if tip.last_index < snapshot_index {
            return Err(self.corrupt_record(format!(
                "the tip ends the log at {} before its snapshot at {snapshot_index}",
                tip.last_index
            )));
        }
        let mut chain = self.anchor;
        let mut expected = snapshot_index + 1;
        let mut tags = VecDeque::new();
        for item in self
            .db
            .iterator_cf(cf(&self.db, CF_LOG), IteratorMode::Start)
        {
            let (key, value) = item.map_err(io("read log"))?;
            let index = key_index(&key).map_err(|e| self.corrupt_record(e))?;
            // The tip bounds the log above (`last_index >= snapshot_index`, checked), the
            // snapshot below, and nothing may be missing in between.
            if index > tip.last_index {
                return Err(self.corrupt_record(format!(
                    "log entry {index} beyond the last durable entry {} (a deleted suffix \
                     brought back?)",
                    tip.last_index
                )));
            }
            if index <= snapshot_index {
                return Err(self.corrupt_record(format!(
                    "log entry {index}, which the snapshot at {snapshot_index} covers"
                )));
            }
            if index != expected {
                return Err(self
                    .corrupt_record(format!("log entry {expected} is missing (next is {index})")));
            }
            let (_, tag) = self
                .open_entry(index, &chain, &value)
                .map_err(|e| self.corrupt_record(format!("log entry {index}: {e}")))?;
            tags.push_back(tag);
            chain = tag;
            expected += 1;
        }
        if expected != tip.last_index + 1 {
            return Err(self.corrupt_record(format!(
                "log entries {expected}..={} are missing",
                tip.last_index
            )));
        }
        if chain != tip.last_tag {
            return Err(self.corrupt_record(format!(
                "log entry {} is not the last entry the tip names (an older log or tip \
                 replayed)",
                tip.last_index
            )));
        }
        self.tags = tags;
        self.hard_state = tip.hard_state;
        Ok(())
    }

    /// The tip describing the store after a write: its hard state, log end and snapshot.
    fn seal_tip(&mut self, tip: &Tip) -> Result<Vec<u8>, StorageError> {
        let body = encode(tip, "encode tip")?;
        self.sealer
            .seal(RecordKind::Tip, 0, &NO_CHAIN, &body)
            .map(|(record, _)| record)
            .map_err(seal_failed)
    }

    fn seal_snapshot(
        &mut self,
        snapshot: &Snapshot,
        anchor: Option<Tag>,
    ) -> Result<(Vec<u8>, Tag), StorageError> {
        let body = encode(
            &StoredSnapshot {
                meta: snapshot.meta.clone(),
                anchor,
                data: snapshot.data.clone(),
            },
            "encode snapshot",
        )?;
        self.sealer
            .seal(RecordKind::Snapshot, snapshot.meta.index, &NO_CHAIN, &body)
            .map_err(seal_failed)
    }
}

impl Storage for RocksDbStorage {
    fn initial_state(&self) -> Result<InitialState, StorageError> {
        let snapshot = match (&self.snapshot_meta, &self.snapshot_tag) {
            (Some(meta), Some(tag)) => {
                let (stored, _) = self.read_snapshot(meta.index, tag)?;
                Some(Snapshot {
                    meta: stored.meta,
                    data: stored.data,
                })
            }
            _ => None,
        };
        let entries = self.entries(self.first_index(), self.last_index() + 1)?;
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
            None => (self.snapshot_index(), self.last_index()),
        };
        super::check_entries(&batch.entries, snapshot_index, base_last)?;

        let mut wb = rocksdb::WriteBatch::default();
        // The snapshot after this write: its record's index and tag, and the anchor.
        let mut snapshot_state = (self.snapshot_tag, self.anchor);
        // How many of the current entries' tags stay.
        let mut kept = self.tags.len();
        if let Some(snapshot) = &batch.snapshot {
            let (record, tag) = self.seal_snapshot(snapshot, None)?;
            wb.put_cf(cf(&self.db, CF_SNAPSHOT), KEY_SNAPSHOT, record);
            // The snapshot replaces the whole log; the next entry chains to its record.
            wb.delete_range_cf(cf(&self.db, CF_LOG), log_key(0), log_key(Index::MAX));
            snapshot_state = (Some(tag), tag);
            kept = 0;
        }
        let mut new_tags = Vec::with_capacity(batch.entries.len());
        if let (Some(first), Some(last)) = (batch.entries.first(), batch.entries.last()) {
            // `check_entries` holds `snapshot_index < first <= base_last + 1`.
            kept = usize::try_from(first.index - 1 - snapshot_index).map_err(|_| {
                StorageError::from(LogMisuse::Gap {
                    max_first: base_last + 1,
                    first: first.index,
                })
            })?;
            let mut chain = if kept == 0 {
                snapshot_state.1
            } else {
                self.tags[kept - 1]
            };
            // Entries after the new last one belong to the replaced suffix. Only a
            // conflicting append from a new leader gets here, so one range tombstone is
            // cheap. With a snapshot in the batch the whole log is already deleted.
            if batch.snapshot.is_none() && last.index < self.last_index() {
                wb.delete_range_cf(
                    cf(&self.db, CF_LOG),
                    log_key(last.index + 1),
                    log_key(Index::MAX),
                );
            }
            for entry in &batch.entries {
                let body = encode(entry, "encode entry")?;
                let (record, tag) = self
                    .sealer
                    .seal(RecordKind::Entry, entry.index, &chain, &body)
                    .map_err(seal_failed)?;
                chain = tag;
                new_tags.push(chain);
                wb.put_cf(cf(&self.db, CF_LOG), log_key(entry.index), record);
            }
        }
        let last_tag = match new_tags.last() {
            Some(tag) => *tag,
            None if kept > 0 => self.tags[kept - 1],
            None => snapshot_state.1,
        };
        let hard_state = batch.hard_state.unwrap_or(self.hard_state);
        let tip = Tip {
            hard_state,
            last_index: snapshot_index + kept as Index + new_tags.len() as Index,
            last_tag,
            snapshot: snapshot_state.0.map(|tag| (snapshot_index, tag)),
        };
        let tip = self.seal_tip(&tip)?;
        wb.put_cf(cf(&self.db, CF_TIP), KEY_TIP, tip);
        sync_write(&self.db, wb, "write")?;

        // Durable: now mirror it in memory.
        if let Some(snapshot) = &batch.snapshot {
            self.snapshot_meta = Some(snapshot.meta.clone());
        }
        (self.snapshot_tag, self.anchor) = snapshot_state;
        self.tags.truncate(kept);
        self.tags.extend(new_tags);
        self.hard_state = hard_state;
        Ok(())
    }

    fn compact(&mut self, snapshot: &Snapshot) -> Result<(), StorageError> {
        let index = snapshot.meta.index;
        if !needs_compaction(index, self.snapshot_index(), self.last_index())? {
            return Ok(());
        }
        // `needs_compaction` holds `snapshot_index < index <= last_index`.
        let anchor = self.tag_at(index).ok_or(LogMisuse::Unavailable {
            index,
            last_index: self.last_index(),
        })?;
        let dropped = usize::try_from(index - self.snapshot_index()).unwrap_or(usize::MAX);
        let (record, tag) = self.seal_snapshot(snapshot, Some(anchor))?;
        let tip = Tip {
            hard_state: self.hard_state,
            last_index: self.last_index(),
            last_tag: self.tag_at(self.last_index()).unwrap_or(anchor),
            snapshot: Some((index, tag)),
        };
        let tip = self.seal_tip(&tip)?;
        let mut wb = rocksdb::WriteBatch::default();
        wb.put_cf(cf(&self.db, CF_SNAPSHOT), KEY_SNAPSHOT, record);
        wb.delete_range_cf(cf(&self.db, CF_LOG), log_key(0), log_key(index + 1));
        wb.put_cf(cf(&self.db, CF_TIP), KEY_TIP, tip);
        sync_write(&self.db, wb, "compact")?;
        self.snapshot_meta = Some(snapshot.meta.clone());
        self.snapshot_tag = Some(tag);
        self.anchor = anchor;
        self.tags.drain(..dropped.min(self.tags.len()));
        Ok(())
    }

    fn entries(&self, lo: Index, hi: Index) -> Result<Vec<Entry>, StorageError> {
        check_range(lo, hi, self.first_index(), self.last_index())?;
        if hi <= lo {
            return Ok(Vec::new());
        }
        let start = log_key(lo);
        let iter = self.db.iterator_cf(
            cf(&self.db, CF_LOG),
            IteratorMode::From(&start, rocksdb::Direction::Forward),
        );
        let mut out = Vec::with_capacity((hi - lo) as usize);
        for (expected, item) in (lo..hi).zip(iter) {
            let (key, value) = item.map_err(io("read log"))?;
            let index = key_index(&key).map_err(|e| self.corrupt_record(e))?;
            if index != expected {
                return Err(self.corrupt_record(format!("log entry {expected} is missing")));
            }
            // Both tags are in memory: `check_range` holds `first_index <= lo`, `hi <= last + 1`.
            let (chain, own) = match (self.tag_at(expected - 1), self.tag_at(expected)) {
                (Some(chain), Some(own)) => (chain, own),
                _ => return Err(self.corrupt_record(format!("log entry {expected} has no tag"))),
            };
            let (entry, tag) = self
                .open_entry(expected, &chain, &value)
                .map_err(|e| self.corrupt_record(format!("log entry {expected}: {e}")))?;
            if tag != own {
                return Err(self.corrupt_record(format!(
                    "log entry {expected}: not the record this store wrote (replayed)"
                )));
            }
            out.push(entry);
        }
        if out.len() as u64 != hi - lo {
            return Err(self.corrupt_record(format!(
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
        self.snapshot_index() + self.tags.len() as Index
    }

    fn snapshot_meta(&self) -> Option<SnapshotMeta> {
        self.snapshot_meta.clone()
    }

    fn snapshot_store(&self) -> Arc<SnapshotStore> {
        self.snapshots.clone()
    }
}

#[cfg(test)]
mod tests;
