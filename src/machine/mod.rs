//! Replicated state: the [`StateMachine`] trait, the exactly-once session layer and the
//! built-in key-value store.
//!
//! # What this module owns
//!
//! The deterministic state that Raft replicates. Every member applies the same committed
//! commands in the same log order to its own instance and must end in the same state with
//! the same outputs; the log, not the machine, decides what happens and when.
//!
//! - [`StateMachine`], [`ApplyContext`], [`LeadershipPreference`], [`SnapshotError`]: the
//!   contract between the Raft driver and the application.
//! - [`Sessions`]: a wrapper that makes any machine exactly-once for retrying clients
//!   (architecture.md §7.3, Raft dissertation §6.3).
//! - [`KvStore`] and [`ReplicatedKv`]: the built-in key-value store used by the demo, the
//!   CLI, the benchmarks and the simulator.
//! - [`SignatureBuilder`]: the digest behind [`StateMachine::signature`], which is part of
//!   the group id (architecture.md §3).
//!
//! # What it must not do
//!
//! No wall clock, no randomness, no IO and no logging inside `apply`: anything that can
//! differ between replicas would make them diverge. Time reaches a machine only as the
//! leader-chosen [`ApplyContext::timestamp_ms`] recorded in the log. Iteration order comes
//! from ordered maps, never from hash maps. A command that is invalid (too large, say) is
//! turned into a deterministic rejection output, never a panic, because every replica has
//! to reach the same verdict on the same bytes.

mod kv;
mod session;
pub(crate) use session::signature_of as sessions_signature;
mod signature;
mod stream;

#[cfg(test)]
mod proptests;

use std::fmt::Debug;

use serde::{de::DeserializeOwned, Deserialize, Serialize};

use crate::group_id::GroupId;

pub use kv::{
    KvCommand, KvLimits, KvOutput, KvQuery, KvQueryResult, KvRejection, KvStore,
    DATA_BYTES_MAX_DEFAULT, KEY_BYTES_MAX_DEFAULT, RANGE_LIMIT_MAX_DEFAULT,
    VALUE_BYTES_MAX_DEFAULT,
};
pub use session::{
    ClientId, SessionCommand, SessionConfig, SessionInfo, SessionOutput, Sessions,
    SESSIONS_MAX_DEFAULT,
};
pub use signature::SignatureBuilder;

/// The built-in key-value store behind the exactly-once session layer: what the demo, the
/// CLI and the benchmarks replicate.
pub type ReplicatedKv = Sessions<KvStore>;

/// Metadata of the entry being applied. Deterministic across replicas.
///
/// Every field comes from the committed log entry itself or from the group's identity, so
/// every replica sees the same values for the same entry. Build one in a machine's own
/// tests with [`ApplyContext::new`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct ApplyContext<'a> {
    /// Log index of the entry (Raft §5.3); strictly increasing in apply order.
    pub index: u64,
    /// Term in which the entry was created by a leader.
    pub term: u64,
    /// leader-chosen, milliseconds since the Unix epoch
    ///
    /// Recorded in the entry when the leader appended it. It is the only notion of time a
    /// machine may use. It never decreases along the log: a leader stamps each entry with
    /// at least the stamp of the entry before it, even when its clock is behind an earlier
    /// leader's (the floor survives snapshots). It may stand still across such a change.
    pub timestamp_ms: u64,
    /// The group this entry was committed in: one machine type may serve several groups
    /// (on one endpoint or across processes) and tell them apart by it.
    pub group: GroupId,
    /// The network the group belongs to (`network_id` of `node.toml`; empty for members
    /// started without one, e.g. on the in-process test network).
    pub network_id: &'a str,
}

impl<'a> ApplyContext<'a> {
    /// The context of entry `index` of term `term`, stamped `timestamp_ms`, in a group of
    /// all-zero id on no network: what a machine's unit tests need. Add the group with
    /// [`in_group`](Self::in_group).
    #[must_use]
    pub const fn new(index: u64, term: u64, timestamp_ms: u64) -> Self {
        Self {
            index,
            term,
            timestamp_ms,
            group: GroupId([0; 32]),
            network_id: "",
        }
    }

    /// The same context in group `group` of network `network_id`.
    #[must_use]
    pub const fn in_group(self, group: GroupId, network_id: &'a str) -> Self {
        Self {
            group,
            network_id,
            ..self
        }
    }
}

/// A node's preference for holding leadership (architecture.md §7.2).
///
/// Per node, not per group: it is not part of the signature, and members of one group may
/// differ. The Raft core enforces it; the machine only reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum LeadershipPreference {
    /// Ordinary Raft behaviour: a voter that may stand for election.
    #[default]
    Normal,
    /// A voter with a longer election timeout, so it leads only when no `Normal` member
    /// can.
    Reluctant,
    /// A permanent learner: replicates and applies the log but never votes, never stands
    /// for election and never counts toward a quorum.
    Observer,
}

/// Why a snapshot could not be produced or restored.
///
/// A snapshot arrives from another member or from disk, so a bad one is an input error,
/// never a panic. On any error [`StateMachine::restore`] leaves the machine unchanged.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SnapshotError {
    /// The state could not be serialized.
    #[error("snapshot encoding failed: {reason}")]
    Encode {
        /// What the encoder reported.
        reason: String,
    },
    /// The bytes are not a snapshot of this machine's format (truncated, corrupt,
    /// trailing bytes, unknown variant).
    #[error("snapshot decoding failed: {reason}")]
    Decode {
        /// What the decoder reported.
        reason: String,
    },
    /// The snapshot was written by another version of the format.
    #[error("snapshot format version {found} is not supported (expected {expected})")]
    UnsupportedVersion {
        /// The version this build reads.
        expected: u16,
        /// The version found in the snapshot.
        found: u16,
    },
    /// The snapshot was taken from a machine with another signature (another type or
    /// other limits), so its state may not be valid here.
    #[error("snapshot signature mismatch: expected {expected}, found {found}")]
    SignatureMismatch {
        /// Hex of this machine's signature.
        expected: String,
        /// Hex of the signature recorded in the snapshot.
        found: String,
    },
    /// The snapshot decodes but breaks an invariant of the state (a key over the limit,
    /// keys out of order, too many sessions) or is not in canonical form (an overlong
    /// varint), so it is not the snapshot the machine it claims to be would write.
    #[error("snapshot violates an invariant: {reason}")]
    Invalid {
        /// The invariant that does not hold.
        reason: String,
    },
    /// Reading or writing the snapshot stream failed (disk full, a snapshot file that does
    /// not match its recorded digest, ...).
    #[error("snapshot I/O failed while {op}: {reason}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// What the reader or writer reported.
        reason: String,
    },
}

impl SnapshotError {
    /// An [`Io`](Self::Io) error from `op`.
    pub fn io(op: &'static str) -> impl Fn(std::io::Error) -> Self {
        move |e| Self::Io {
            op,
            reason: e.to_string(),
        }
    }
}

/// Application state replicated by Raft.
///
/// # Correctness contract
///
/// The Raft driver relies on these; a machine that breaks one makes replicas diverge.
///
/// - **Determinism.** [`apply`](Self::apply) is a pure function of the current state, the
///   command and the [`ApplyContext`]. It reads no wall clock, no randomness, no
///   environment, no files or network, and does not iterate hash maps whose order may
///   differ between processes. Two machines with equal state fed equal commands return
///   equal outputs and end in equal state (equal [`snapshot`](Self::snapshot) bytes).
/// - **Exactly once, in log order.** The driver calls `apply` (or
///   [`apply_batch`](Self::apply_batch)) exactly once for every committed entry, in
///   increasing index order, with no gaps: after a [`restore`](Self::restore) it continues
///   with the entry after the snapshot's last included index. Retried client requests are
///   new log entries; wrap the machine in [`Sessions`] to deduplicate them.
/// - **Rejections are outputs.** A command that the state does not allow (over a size
///   limit, a failed precondition) yields an output saying so. `apply` must not panic on
///   any command that deserializes: a panic is a broken internal invariant, and the node
///   stops rather than risk divergence.
/// - **Queries do not mutate.** [`query`](Self::query) takes `&self` and must not change
///   observable state through interior mutability either; it may run on any replica at
///   any time between applies.
/// - **Snapshots are the whole state.** `restore(&snapshot()?)` gives a machine equal to
///   the original, with equal future outputs. `restore` replaces all state (nothing of the
///   old state survives) and, on error, leaves the machine unchanged.
/// - **Signature.** [`signature`](Self::signature) is stable across builds and processes
///   and covers every parameter that changes command semantics; members whose signatures
///   differ derive different group ids and never bond.
pub trait StateMachine: Send + 'static {
    /// A state change, replicated through the log.
    type Command: Serialize + DeserializeOwned + Clone + Debug + Send + 'static;
    /// What applying a command returns to the client that proposed it.
    type Output: Serialize + DeserializeOwned + Clone + Debug + PartialEq + Send + 'static;
    /// A read evaluated against local state, outside the log.
    type Query: Serialize + DeserializeOwned + Clone + Debug + Send + 'static;
    /// What a query returns.
    type QueryResult: Serialize + DeserializeOwned + Clone + Debug + PartialEq + Send + 'static;

    /// Stable digest of the machine type and every parameter that changes command semantics;
    /// part of the `GroupId`.
    ///
    /// Build it with [`SignatureBuilder`]: a domain tag naming the machine and its format
    /// version, then every limit or option that an `apply` depends on.
    fn signature(&self) -> [u8; 32];

    /// Applies one committed command and returns its output.
    ///
    /// Called exactly once per committed entry, in log order (see the trait contract).
    fn apply(&mut self, command: Self::Command, ctx: &ApplyContext<'_>) -> Self::Output;

    /// Applies consecutive committed commands, in order, returning one output per command
    /// in the same order.
    ///
    /// Must be equivalent to calling [`apply`](Self::apply) on each element in turn; a
    /// machine overrides it only to amortise work across the batch.
    ///
    /// Default: apply one by one, in order.
    fn apply_batch(&mut self, batch: Vec<(Self::Command, ApplyContext<'_>)>) -> Vec<Self::Output> {
        batch
            .into_iter()
            .map(|(command, ctx)| self.apply(command, &ctx))
            .collect()
    }

    /// Evaluates a read-only query against the current state.
    fn query(&self, query: &Self::Query) -> Self::QueryResult;

    /// This node's leadership preference; per node, not part of the signature.
    fn leadership_preference(&self) -> LeadershipPreference {
        LeadershipPreference::Normal
    }

    /// Serialize the whole state; restore(snapshot()) must give an identical machine.
    ///
    /// The bytes must be deterministic: replicas with equal state produce equal snapshots.
    ///
    /// # Errors
    ///
    /// [`SnapshotError::Encode`] if the state cannot be serialized.
    fn snapshot(&self) -> Result<Vec<u8>, SnapshotError>;

    /// Replaces the whole state with the one in `snapshot`.
    ///
    /// The bytes come from another member or from disk: any input must yield `Ok` or a
    /// [`SnapshotError`], never a panic, and on error the machine is left unchanged.
    ///
    /// # Errors
    ///
    /// A [`SnapshotError`] naming why the bytes are not a valid snapshot for this machine
    /// (undecodable, another format version or signature, or state breaking an invariant).
    fn restore(&mut self, snapshot: &[u8]) -> Result<(), SnapshotError>;

    /// Writes the same bytes as [`snapshot`](Self::snapshot) to `out`.
    ///
    /// The runtime writes snapshots to a file this way, so that a machine whose state is
    /// large is not serialized into one buffer of that size first. Override it to stream;
    /// the default encodes into memory and copies.
    ///
    /// # Errors
    ///
    /// [`SnapshotError::Encode`] if the state cannot be serialized, [`SnapshotError::Io`]
    /// if `out` fails.
    fn snapshot_to(&self, out: &mut dyn std::io::Write) -> Result<(), SnapshotError> {
        let bytes = self.snapshot()?;
        out.write_all(&bytes)
            .map_err(SnapshotError::io("writing the snapshot"))
    }

    /// Replaces the whole state with the snapshot read from `input`, to its end: the same
    /// as [`restore`](Self::restore) of those bytes, with the same guarantees (any input
    /// yields `Ok` or an error, and on error the machine is unchanged).
    ///
    /// The runtime restores from a snapshot file this way; a machine that overrides it
    /// decodes as it reads and never holds the whole snapshot in memory. The default reads
    /// everything into memory first.
    ///
    /// # Errors
    ///
    /// As [`restore`](Self::restore), plus [`SnapshotError::Io`] if `input` fails.
    fn restore_from(&mut self, input: &mut dyn std::io::Read) -> Result<(), SnapshotError> {
        let mut bytes = Vec::new();
        input
            .read_to_end(&mut bytes)
            .map_err(SnapshotError::io("reading the snapshot"))?;
        self.restore(&bytes)
    }
}
