//! Durable state of a node: the Raft log, the hard state and the latest snapshot.
//!
//! **IO contract.** A [`Storage`] does only storage IO, synchronously; it never talks to
//! the network and never decides anything about consensus. The core tells the driver what
//! to write ([`Ready`]); the driver hands it here as one [`WriteBatch`]
//! (group commit: many entries, one sync) and reports durability back to the core.
//!
//! Every implementation must pass [`conformance`].
pub mod conformance;
mod error;
pub(crate) mod faulty;
pub mod identity;
mod memory;
#[cfg(feature = "rocksdb")]
mod rocksdb;
// The record format of the RocksDB store: only the key derivation is used without it.
#[cfg_attr(not(feature = "rocksdb"), allow(dead_code))]
pub(crate) mod seal;
pub(crate) mod sealed_file;
pub(crate) mod snapshot_store;
pub(crate) mod timing;

#[cfg(feature = "rocksdb")]
pub use self::rocksdb::{LockedRocksDb, RocksDbStorage, SNAPSHOT_DIR};
pub use error::{FatalStorageError, LogMisuse, StorageError};
pub use faulty::{FaultSwitch, FaultyStorage, INJECTED_FAILURE};
pub use memory::MemoryStorage;
pub use seal::StorageKey;
pub use snapshot_store::{
    SnapshotHandle, SnapshotReader, SnapshotStore, SnapshotStoreError, SnapshotWriter,
};
pub use timing::{WriteTimes, WriteTiming};

use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::Path;
use std::sync::Arc;

use crate::raft::{Entry, HardState, Index, InitialState, Ready, Snapshot, SnapshotMeta};

/// Mode of a directory a store creates; any group/other bit on an existing one is refused
/// (the log and the snapshots hold confidential state).
const DIR_MODE: u32 = 0o700;
const DIR_MODE_FORBIDDEN_BITS: u32 = 0o077;

/// Creates `path` (and its parents) with mode 0700, or checks that an existing one is a
/// directory that group and others cannot access. The error starts with the path.
pub(crate) fn private_dir(path: &Path) -> Result<(), String> {
    match std::fs::metadata(path) {
        Ok(meta) => {
            if !meta.is_dir() {
                return Err(format!("{} is not a directory", path.display()));
            }
            let mode = meta.permissions().mode() & 0o777;
            if mode & DIR_MODE_FORBIDDEN_BITS != 0 {
                return Err(format!(
                    "{} has mode {mode:04o}; it must not be accessible to group or others \
                     (expected {DIR_MODE:04o}; fix with `chmod 700 {}`)",
                    path.display(),
                    path.display()
                ));
            }
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => std::fs::DirBuilder::new()
            .recursive(true)
            .mode(DIR_MODE)
            .create(path)
            .map_err(|e| format!("{}: cannot create it: {e}", path.display())),
        Err(e) => Err(format!("{}: cannot inspect it: {e}", path.display())),
    }
}

/// One durable write: what a [`Ready`] asks to persist.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WriteBatch {
    /// A snapshot from the leader. Installing it replaces the whole log.
    pub snapshot: Option<Snapshot>,
    /// Entries to append; everything stored at or after `entries[0].index` is replaced.
    pub entries: Vec<Entry>,
    /// Term, vote and commit index to store, when they changed since the last write.
    pub hard_state: Option<HardState>,
}

impl WriteBatch {
    /// The write a [`Ready`] asks for (empty when it asks for none).
    pub fn from_ready(ready: &Ready) -> Self {
        Self {
            snapshot: ready.snapshot.clone(),
            entries: ready.entries.clone(),
            hard_state: ready.hard_state,
        }
    }

    /// Whether the write has nothing to store; the driver may skip the call (and its sync).
    pub fn is_empty(&self) -> bool {
        self.snapshot.is_none() && self.entries.is_empty() && self.hard_state.is_none()
    }

    /// The log position this write makes durable (its last entry, else its snapshot): what
    /// the driver reports to the core as `Input::Persisted` once the write returned.
    pub fn persisted_position(&self) -> Option<(Index, crate::raft::Term)> {
        self.entries
            .last()
            .map(|e| (e.index, e.term))
            .or_else(|| self.snapshot.as_ref().map(|s| (s.meta.index, s.meta.term)))
    }
}

/// Checks that `entries` may be written to a log whose snapshot ends at `snapshot_index`
/// and whose last entry is `last_index`: they start inside `snapshot_index + 1..=last_index
/// + 1` and are contiguous. Shared by every store so that all refuse the same writes.
pub(crate) fn check_entries(
    entries: &[Entry],
    snapshot_index: Index,
    last_index: Index,
) -> Result<(), StorageError> {
    let Some(first) = entries.first().map(|e| e.index) else {
        return Ok(());
    };
    if first > last_index + 1 {
        return Err(LogMisuse::Gap {
            max_first: last_index + 1,
            first,
        }
        .into());
    }
    if first <= snapshot_index {
        return Err(LogMisuse::BelowSnapshot {
            index: first,
            snapshot_index,
        }
        .into());
    }
    for pair in entries.windows(2) {
        if pair[1].index != pair[0].index + 1 {
            return Err(LogMisuse::NotContiguous {
                index: pair[1].index,
            }
            .into());
        }
    }
    Ok(())
}

/// Checks that entries `lo..hi` can be read from a log holding `first_index..=last_index`:
/// none compacted away, none beyond the last. Shared by every store so that all refuse
/// the same reads.
pub(crate) fn check_range(
    lo: Index,
    hi: Index,
    first_index: Index,
    last_index: Index,
) -> Result<(), StorageError> {
    if lo < first_index {
        return Err(LogMisuse::Compacted {
            index: lo,
            first_index,
        }
        .into());
    }
    if hi > last_index + 1 {
        return Err(LogMisuse::Unavailable {
            index: hi - 1,
            last_index,
        }
        .into());
    }
    Ok(())
}

/// Whether a store whose snapshot ends at `snapshot_index` and whose last entry is
/// `last_index` has anything to compact for a snapshot at `index`: `false` when that
/// prefix is already compacted, an error when the snapshot reaches past the log. Shared by
/// every store so that all answer `compact` alike.
pub(crate) fn needs_compaction(
    index: Index,
    snapshot_index: Index,
    last_index: Index,
) -> Result<bool, StorageError> {
    if index <= snapshot_index {
        return Ok(false);
    }
    if index > last_index {
        return Err(LogMisuse::Unavailable { index, last_index }.into());
    }
    Ok(true)
}

/// The log and hard-state store of one node.
///
/// Contract (checked by [`conformance`]):
/// - `write` is all-or-nothing as seen after a restart and is durable when it returns `Ok`.
///   Order inside a batch: snapshot, then entries, then hard state.
/// - Entries are contiguous; a write may start anywhere in `first_index..=last_index + 1`
///   and replaces everything from its first index on. Starting beyond `last_index + 1` is
///   a [`LogMisuse::Gap`] and changes nothing. Every call that breaks these rules is
///   refused with a [`StorageError::Misuse`] and changes nothing; a
///   [`StorageError::Fatal`] means the store can no longer be trusted.
/// - `compact` stores a locally taken snapshot and drops entries up to its index; entries
///   after it stay.
/// - `initial_state` returns exactly what was durably written: the hard state, the latest
///   snapshot and every entry after it.
pub trait Storage {
    /// Everything durable, to build the core from at start-up
    /// ([`Raft::new`](crate::raft::Raft::new)).
    fn initial_state(&self) -> Result<InitialState, StorageError>;
    /// Writes `batch` durably, all or nothing; when it returns `Ok` the driver may report
    /// [`WriteBatch::persisted_position`] to the core.
    fn write(&mut self, batch: &WriteBatch) -> Result<(), StorageError>;
    /// Records a snapshot the node took itself and drops the entries up to its index. A
    /// snapshot at or below the current one changes nothing; one past the last entry is a
    /// [`LogMisuse::Unavailable`].
    fn compact(&mut self, snapshot: &Snapshot) -> Result<(), StorageError>;
    /// Entries in `[lo, hi)`.
    fn entries(&self, lo: Index, hi: Index) -> Result<Vec<Entry>, StorageError>;
    /// Index of the first entry in the log (snapshot index + 1).
    fn first_index(&self) -> Index;
    /// Index of the last entry in the log (the snapshot index when no entry follows it,
    /// 0 for an empty store).
    fn last_index(&self) -> Index;
    /// Where the latest snapshot stands in the log, if there is one.
    fn snapshot_meta(&self) -> Option<SnapshotMeta>;
    /// Where this store keeps snapshot bytes: the log store records only a snapshot's
    /// handle, the runtime streams the bytes in and out of here.
    fn snapshot_store(&self) -> Arc<SnapshotStore>;
    /// Whether [`Storage::write`] may block the calling thread for long (a sync to disk).
    /// The group's worker runs on a thread of its own for such a store, and as a task of
    /// the async runtime for one that never blocks (one thread hand-off less per message).
    fn writes_block(&self) -> bool {
        true
    }
}
