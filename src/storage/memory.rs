//! An in-memory [`Storage`]: for tests and the simulator (which models the disk around it).
use std::sync::Arc;

use super::{check_range, needs_compaction, SnapshotStore, Storage, StorageError, WriteBatch};
use crate::raft::{Entry, HardState, Index, InitialState, Snapshot, SnapshotMeta};

/// A [`Storage`] that keeps everything in memory: every write is "durable" at once and
/// nothing survives the process. Used by tests, the simulator and the in-process demo.
/// A clone copies the log and the hard state but shares the snapshot bytes
/// ([`Storage::snapshot_store`]).
#[derive(Clone, Debug, Default)]
pub struct MemoryStorage {
    hard_state: HardState,
    snapshot: Option<Snapshot>,
    /// Entries after the snapshot point; `entries[i].index == snapshot_index + 1 + i`.
    entries: Vec<Entry>,
    /// Snapshot bytes, in memory too (shared by clones, like the rest of a "disk").
    snapshots: Arc<SnapshotStore>,
}

impl MemoryStorage {
    /// An empty store: no hard state, no snapshot, no entries.
    pub fn new() -> Self {
        Self::default()
    }

    fn snapshot_index(&self) -> Index {
        self.snapshot.as_ref().map_or(0, |s| s.meta.index)
    }

    fn check_entries(&self, entries: &[Entry]) -> Result<(), StorageError> {
        super::check_entries(entries, self.snapshot_index(), self.last_index())
    }
}

impl Storage for MemoryStorage {
    fn initial_state(&self) -> Result<InitialState, StorageError> {
        Ok(InitialState {
            hard_state: self.hard_state,
            snapshot: self.snapshot.clone(),
            entries: self.entries.clone(),
        })
    }

    fn write(&mut self, batch: &WriteBatch) -> Result<(), StorageError> {
        // Validate everything against the state after the snapshot, then mutate: a failed
        // write changes nothing.
        let mut staged = None;
        if let Some(snapshot) = &batch.snapshot {
            staged = Some(MemoryStorage {
                hard_state: self.hard_state,
                snapshot: Some(snapshot.clone()),
                entries: Vec::new(),
                snapshots: self.snapshots.clone(),
            });
        }
        let base = staged.as_ref().unwrap_or(self);
        base.check_entries(&batch.entries)?;
        if let Some(staged) = staged {
            *self = staged;
        }
        if let Some(first) = batch.entries.first().map(|e| e.index) {
            let keep = (first - self.snapshot_index() - 1) as usize;
            self.entries.truncate(keep);
            self.entries.extend(batch.entries.iter().cloned());
        }
        if let Some(hs) = batch.hard_state {
            self.hard_state = hs;
        }
        Ok(())
    }

    fn compact(&mut self, snapshot: &Snapshot) -> Result<(), StorageError> {
        let index = snapshot.meta.index;
        if !needs_compaction(index, self.snapshot_index(), self.last_index())? {
            return Ok(());
        }
        let drop = (index - self.snapshot_index()) as usize;
        self.entries.drain(..drop);
        self.snapshot = Some(snapshot.clone());
        Ok(())
    }

    fn entries(&self, lo: Index, hi: Index) -> Result<Vec<Entry>, StorageError> {
        check_range(lo, hi, self.first_index(), self.last_index())?;
        let base = self.snapshot_index() + 1;
        Ok(self.entries[(lo - base) as usize..(hi.max(lo) - base) as usize].to_vec())
    }

    fn first_index(&self) -> Index {
        self.snapshot_index() + 1
    }

    fn last_index(&self) -> Index {
        self.snapshot_index() + self.entries.len() as Index
    }

    fn snapshot_store(&self) -> Arc<SnapshotStore> {
        self.snapshots.clone()
    }

    fn snapshot_meta(&self) -> Option<SnapshotMeta> {
        self.snapshot.as_ref().map(|s| s.meta.clone())
    }

    fn writes_block(&self) -> bool {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::conformance::{self, StorageHarness};

    struct Harness;

    impl StorageHarness for Harness {
        type S = MemoryStorage;
        fn fresh(&mut self) -> MemoryStorage {
            MemoryStorage::new()
        }
        fn reopen(&mut self, store: MemoryStorage) -> MemoryStorage {
            store
        }
    }

    #[test]
    fn memory_storage_passes_the_conformance_suite() {
        conformance::run_all(&mut Harness);
    }
}
