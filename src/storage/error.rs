//! Storage errors, grouped by what the caller must do about them: stop the node (the
//! store cannot be trusted) or fix its own call (the store is intact).
use crate::raft::Index;

/// A storage failure.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum StorageError {
    /// The store cannot be trusted any more: the node must stop participating, and
    /// nothing after this error may be acknowledged as durable.
    #[error(transparent)]
    Fatal(#[from] FatalStorageError),
    /// The caller broke the log contract ([`Storage`](super::Storage)); nothing was
    /// changed and the store is intact. A bug in the caller, never the disk's doing.
    #[error(transparent)]
    Misuse(#[from] LogMisuse),
}

impl StorageError {
    /// Whether the store can no longer be trusted and the node must stop.
    pub fn is_fatal(&self) -> bool {
        matches!(self, StorageError::Fatal(_))
    }
}

/// The disk or the data on it failed. A write that returns one of these may or may not be
/// durable; a read that returns one cannot be answered.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FatalStorageError {
    /// An operation of the underlying store failed (`op` names it: `open`, `write`,
    /// `seal`, …).
    #[error("storage I/O failed during {op}: {reason}")]
    Io {
        /// The operation that failed.
        op: &'static str,
        /// What the underlying store or the OS said.
        reason: String,
    },
    /// Stored data fails a check (a tag, the chain, the format): tampered with, or
    /// damaged.
    #[error("stored data is corrupt: {what}")]
    Corrupt {
        /// Which data failed which check.
        what: String,
    },
}

/// A call that breaks the log contract of [`Storage`](super::Storage). Every store
/// refuses the same calls (the shared checks in the parent module), before it touches
/// anything.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum LogMisuse {
    /// A write starting beyond `last_index + 1` would leave a hole in the log.
    #[error("entries must continue the log: expected index at most {max_first}, got {first}")]
    Gap {
        /// The highest index the write could have started at: `last_index + 1`.
        max_first: Index,
        /// The index it started at.
        first: Index,
    },
    /// The entries of one write skip or repeat an index.
    #[error("entries are not contiguous at index {index}")]
    NotContiguous {
        /// The index of the first entry that does not follow the one before it.
        index: Index,
    },
    /// A read of entries the snapshot replaced.
    #[error("entry {index} was compacted; the log starts at {first_index}")]
    Compacted {
        /// The first index asked for.
        index: Index,
        /// The first index the log still holds.
        first_index: Index,
    },
    /// A read (or a compaction) past the last entry.
    #[error("entry {index} is beyond the last index {last_index}")]
    Unavailable {
        /// The highest index asked for (or the snapshot's index, for a compaction).
        index: Index,
        /// The last index the log holds.
        last_index: Index,
    },
    /// A write replacing entries the snapshot covers: they are committed and gone.
    #[error("cannot truncate entry {index}: it is covered by the snapshot at {snapshot_index}")]
    BelowSnapshot {
        /// The first index of the write.
        index: Index,
        /// The last index the snapshot covers.
        snapshot_index: Index,
    },
}
