//! [`FaultyStorage`]: a [`Storage`] wrapper that fails on command, for tests of what a node
//! does when its disk fails (full disk, fsync error).
//!
//! **What it owns.** Only the decision to fail: while its [`FaultSwitch`] is on, every
//! `write` and `compact` returns [`FatalStorageError::Io`] *without* reaching the inner store,
//! as a write whose fsync failed must be treated as not durable. Reads pass through. It
//! must not change what the inner store returns in any other way.
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use super::{FatalStorageError, Storage, StorageError, WriteBatch};
use crate::raft::{Entry, Index, InitialState, Snapshot, SnapshotMeta};

/// The reason every injected failure carries, so tests can tell it from a real one.
pub const INJECTED_FAILURE: &str = "injected fsync failure (disk full)";

/// Shared control of one or more [`FaultyStorage`]s; cheap to clone.
#[derive(Clone, Debug, Default)]
pub struct FaultSwitch {
    inner: Arc<SwitchState>,
}

#[derive(Debug, Default)]
struct SwitchState {
    failing: AtomicBool,
    injected: AtomicU64,
}

impl FaultSwitch {
    /// A switch that is off: operations reach the inner store.
    pub fn new() -> Self {
        Self::default()
    }

    /// From now on, writes and compactions fail.
    pub fn fail(&self) {
        self.inner.failing.store(true, Ordering::SeqCst);
    }

    /// From now on, writes and compactions reach the inner store again.
    pub fn heal(&self) {
        self.inner.failing.store(false, Ordering::SeqCst);
    }

    /// Whether writes and compactions fail now.
    pub fn is_failing(&self) -> bool {
        self.inner.failing.load(Ordering::SeqCst)
    }

    /// How many operations have been failed so far (to check a test really injected one).
    pub fn injected(&self) -> u64 {
        self.inner.injected.load(Ordering::SeqCst)
    }

    fn check(&self, op: &'static str) -> Result<(), StorageError> {
        if self.is_failing() {
            self.inner.injected.fetch_add(1, Ordering::SeqCst);
            return Err(FatalStorageError::Io {
                op,
                reason: INJECTED_FAILURE.into(),
            }
            .into());
        }
        Ok(())
    }
}

/// A store whose writes fail while its switch is on. See the module docs.
#[derive(Debug)]
pub struct FaultyStorage<S> {
    inner: S,
    switch: FaultSwitch,
}

impl<S: Storage> FaultyStorage<S> {
    /// Wraps `inner`; it fails while `switch` (or any clone of it) is on.
    pub fn new(inner: S, switch: FaultSwitch) -> Self {
        Self { inner, switch }
    }

    /// The wrapped store, to inspect what actually reached it.
    pub fn inner(&self) -> &S {
        &self.inner
    }

    /// Unwraps the store, dropping the fault injection.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S: Storage> Storage for FaultyStorage<S> {
    fn initial_state(&self) -> Result<InitialState, StorageError> {
        self.inner.initial_state()
    }

    fn write(&mut self, batch: &WriteBatch) -> Result<(), StorageError> {
        self.switch.check("write")?;
        self.inner.write(batch)
    }

    fn compact(&mut self, snapshot: &Snapshot) -> Result<(), StorageError> {
        self.switch.check("compact")?;
        self.inner.compact(snapshot)
    }

    fn entries(&self, lo: Index, hi: Index) -> Result<Vec<Entry>, StorageError> {
        self.inner.entries(lo, hi)
    }

    fn first_index(&self) -> Index {
        self.inner.first_index()
    }

    fn last_index(&self) -> Index {
        self.inner.last_index()
    }

    fn snapshot_store(&self) -> Arc<super::SnapshotStore> {
        self.inner.snapshot_store()
    }

    fn snapshot_meta(&self) -> Option<SnapshotMeta> {
        self.inner.snapshot_meta()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::conformance::{self, entry, StorageHarness};
    use crate::storage::MemoryStorage;

    struct Harness;

    impl StorageHarness for Harness {
        type S = FaultyStorage<MemoryStorage>;
        fn fresh(&mut self) -> Self::S {
            FaultyStorage::new(MemoryStorage::new(), FaultSwitch::new())
        }
        fn reopen(&mut self, store: Self::S) -> Self::S {
            store
        }
    }

    #[test]
    fn with_the_switch_off_it_is_a_conforming_store() {
        conformance::run_all(&mut Harness);
    }

    #[test]
    fn with_the_switch_on_writes_fail_and_change_nothing() {
        let switch = FaultSwitch::new();
        let mut store = FaultyStorage::new(MemoryStorage::new(), switch.clone());
        let batch = |i| WriteBatch {
            entries: vec![entry(i, 1)],
            ..WriteBatch::default()
        };
        store.write(&batch(1)).expect("healthy write");
        switch.fail();
        let err = store.write(&batch(2)).expect_err("injected failure");
        assert_eq!(
            err,
            StorageError::Fatal(FatalStorageError::Io {
                op: "write",
                reason: INJECTED_FAILURE.into()
            })
        );
        assert!(err.is_fatal(), "an fsync failure must stop the node");
        assert_eq!(store.last_index(), 1, "the failed write reached nothing");
        assert_eq!(switch.injected(), 1);
        switch.heal();
        store.write(&batch(2)).expect("healed");
        assert_eq!(store.last_index(), 2);
    }
}
