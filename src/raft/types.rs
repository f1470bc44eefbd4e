//! Plain data of the consensus core: identifiers, log entries, hard state, snapshots.
use std::fmt;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::membership::Membership;

/// A Raft term. Term 0 means "nothing yet".
pub type Term = u64;
/// A log index. Index 0 is the empty prefix; the first real entry has index 1.
pub type Index = u64;

/// Identity of a group member inside the consensus core.
///
/// The group layer maps authenticated peer keys to these small ids; the core never sees
/// keys, it only needs a total order and equality.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct NodeId(pub u64);

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "n{}", self.0)
    }
}

/// What a log entry carries.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum EntryPayload {
    /// Appended by every new leader at the start of its term (Raft §5.4.2, §8): committing
    /// it commits everything before it and lets read-index serve reads.
    Noop,
    /// An opaque client command for the state machine.
    Command(Bytes),
    /// A new membership; takes effect as soon as it is in the log (Raft thesis §4.1).
    Membership(Membership),
}

/// One entry of the replicated log.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// The term in which a leader created the entry (1 for the bootstrap entry).
    pub term: Term,
    /// Position in the log, from 1.
    pub index: Index,
    /// Chosen by the leader that created the entry, never decreasing along the log:
    /// the deterministic "now" a state machine sees in `apply`.
    pub timestamp_ms: u64,
    /// What the entry carries.
    pub payload: EntryPayload,
}

impl Entry {
    /// Approximate encoded size, used for the batch and message byte limits.
    pub fn size_bytes(&self) -> usize {
        const HEADER_BYTES: usize = 32;
        HEADER_BYTES
            + match &self.payload {
                EntryPayload::Noop => 0,
                EntryPayload::Command(data) => data.len(),
                EntryPayload::Membership(m) => 16 * m.len(),
            }
    }
}

/// The state that must be on stable storage before the node answers a vote or an append
/// (Raft §5, Figure 2). `commit` is kept too so that a restart does not have to wait for
/// a leader to learn what it had already applied; it may lag, never lead.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HardState {
    /// The latest term this node has seen.
    pub term: Term,
    /// The candidate this node voted for in `term`, if any.
    pub vote: Option<NodeId>,
    /// A commit index this node knew of (it may lag the true one).
    pub commit: Index,
}

/// What a snapshot stands for: the log prefix up to `index` and the membership in force there.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotMeta {
    /// The last log index the snapshot covers.
    pub index: Index,
    /// The term of the entry at `index`.
    pub term: Term,
    /// The configuration in force at `index`.
    pub membership: Membership,
    /// Index of the configuration entry `membership` came from (0 for the bootstrap set).
    pub membership_index: Index,
    /// The incarnation of the log the snapshot stands for (it outlives entry 1).
    pub incarnation: Option<Incarnation>,
    /// The wall-clock stamp of the entry at `index`: the floor for the stamps of later
    /// entries, kept by a core that restarts or installs from this snapshot (stamps never
    /// go back, even when the log before them is gone).
    pub timestamp_ms: u64,
}

/// Which founding a log descends from: the SHA-256 (domain-tagged) of its first entry, the
/// founding configuration. Founders that agree on their set write identical first entries,
/// so one formation has one incarnation; a group founded separately under the same group id
/// (another founding set) has another, and its members must never exchange consensus
/// traffic with this one's (their indices and terms mean different things).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Incarnation(pub [u8; 32]);

impl Incarnation {
    const DOMAIN: &'static [u8] = b"tessera/incarnation/v1";

    /// The incarnation whose first entry is `entry`.
    pub fn of_first_entry(entry: &Entry) -> Self {
        let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
        ctx.update(Self::DOMAIN);
        ctx.update(&entry.term.to_le_bytes());
        ctx.update(&entry.index.to_le_bytes());
        // postcard is deterministic for these types (no maps with unordered keys).
        match postcard::to_allocvec(&entry.payload) {
            Ok(payload) => ctx.update(&payload),
            // Unreachable for the payload types; a distinct marker keeps it total.
            Err(_) => ctx.update(b"unencodable"),
        }
        let mut out = [0u8; 32];
        out.copy_from_slice(ctx.finish().as_ref());
        Incarnation(out)
    }
}

impl fmt::Debug for Incarnation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Incarnation({self})")
    }
}

impl fmt::Display for Incarnation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in &self.0[..8] {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

/// A state-machine snapshot together with its position in the log.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Snapshot {
    /// Where in the log the snapshot stands.
    pub meta: SnapshotMeta,
    /// The state-machine snapshot, opaque to the core: what the driver passed in
    /// [`Input::Compact`](super::Input::Compact), or what a leader sent.
    pub data: Bytes,
}
