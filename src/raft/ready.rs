//! What goes into the core and what comes out of it.
//!
//! Order of calls for a driver (documented contract, as raft-rs' `Ready`):
//! 1. feed any number of [`Input`]s with [`Raft::step`](super::Raft::step);
//! 2. take one [`Ready`] with [`Raft::ready`](super::Raft::ready);
//! 3. send `messages` at once; write `snapshot`, `entries` and `hard_state` to storage as
//!    one durable batch (entries replace anything at or after `entries[0].index`);
//! 4. only when that batch (and every earlier one) is durable, send `persisted_messages`
//!    and report [`Input::Persisted`] for the last entry (or the snapshot point);
//! 5. restore `snapshot` into the state machine if present, then apply
//!    `committed_entries` in order; serve `read_states` once the applied index reaches them.
use bytes::Bytes;

use super::membership::{Membership, MembershipChange, MembershipError};
use super::message::Message;
use super::types::{Entry, HardState, Index, NodeId, Snapshot, Term};

/// One input to the core.
#[derive(Clone, Debug)]
pub enum Input {
    /// One unit of logical time passed.
    Tick,
    /// A message from a peer.
    Message(Message),
    /// Client commands to append, in order. `timestamp_ms` is the driver's clock; the core
    /// keeps entry timestamps monotonic.
    Propose {
        commands: Vec<Bytes>,
        timestamp_ms: u64,
    },
    /// A single-server membership change (leader only).
    ChangeMembership(MembershipChange),
    /// Ask for a linearizable read point (read-index, thesis §6.4). `id` is the driver's.
    ReadIndex { id: u64 },
    /// Hand leadership to `to` (thesis §3.10).
    TransferLeadership { to: NodeId },
    /// Storage made the log durable up to (`index`, `term`) (or installed a snapshot there).
    Persisted { index: Index, term: Term },
    /// The driver took a state-machine snapshot at `index` (already applied): the core may
    /// forget the log up to there and will send `data` to followers that are too far behind.
    Compact { index: Index, data: Bytes },
    /// The transport saw a peer become reachable or unreachable (bond up/down).
    PeerReachable { peer: NodeId, reachable: bool },
}

/// The role of a core in its current term.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Follower,
    PreCandidate,
    Candidate,
    Leader,
}

/// Why a request to the core was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Rejection {
    #[error("not the leader (leader hint: {leader:?})")]
    NotLeader { leader: Option<NodeId> },
    #[error("a leadership transfer is in progress")]
    TransferInProgress,
    #[error("command of {bytes} bytes exceeds the limit of {max_bytes}")]
    TooLarge { bytes: usize, max_bytes: usize },
    #[error("{count} proposals in one batch exceed the limit of {max}")]
    TooManyProposals { count: usize, max: usize },
    #[error("another membership change is not committed yet")]
    MembershipChangePending,
    #[error("the leader has not committed an entry of its term yet")]
    LeaderNotReady,
    #[error("invalid membership change: {0}")]
    Membership(#[from] MembershipError),
    #[error("{max} reads are already waiting")]
    TooManyReads { max: usize },
    #[error("leadership was lost before the request completed")]
    LeadershipLost,
    #[error("{0} is not a voter")]
    NotAVoter(NodeId),
}

/// Something the driver may want to act on or report.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// The role, term or known leader changed.
    StateChanged {
        role: Role,
        term: Term,
        leader: Option<NodeId>,
    },
    /// Proposals were appended at `first_index..first_index + count` in `term`. They are
    /// committed only if these indexes are later applied with this term.
    Proposed {
        first_index: Index,
        count: usize,
        term: Term,
    },
    ProposalRejected {
        count: usize,
        reason: Rejection,
    },
    /// A membership change was appended at `index` (by us, as leader).
    MembershipChangeProposed {
        change: MembershipChange,
        index: Index,
    },
    MembershipChangeRejected {
        change: MembershipChange,
        reason: Rejection,
    },
    /// The configuration in force (latest in the log) is now `membership`, from `index`.
    MembershipChanged {
        membership: Membership,
        index: Index,
    },
    ReadRejected {
        id: u64,
        reason: Rejection,
    },
    TransferRejected {
        to: NodeId,
        reason: Rejection,
    },
    /// A transfer did not finish within an election timeout and was abandoned.
    TransferAborted {
        to: NodeId,
    },
}

/// A read point: once the state machine has applied `index`, a read for `id` is linearizable.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReadState {
    pub id: u64,
    pub index: Index,
}

/// Everything the driver must do after a batch of inputs. See the module doc for the order.
#[derive(Clone, Debug, Default)]
pub struct Ready {
    /// Hard state to write, when it changed.
    pub hard_state: Option<HardState>,
    /// A snapshot received from the leader: persist it, then restore the state machine.
    pub snapshot: Option<Snapshot>,
    /// Entries to append; they replace any stored entries from `entries[0].index` on.
    pub entries: Vec<Entry>,
    /// Messages that depend on nothing unpersisted: send now.
    pub messages: Vec<Message>,
    /// Messages to send only once this Ready's writes (and all before) are durable.
    pub persisted_messages: Vec<Message>,
    /// Committed, locally durable entries to apply, in order.
    pub committed_entries: Vec<Entry>,
    pub read_states: Vec<ReadState>,
    pub events: Vec<Event>,
}

impl Ready {
    /// Whether the driver must write (and sync) anything before `persisted_messages` go out.
    pub fn must_persist(&self) -> bool {
        self.hard_state.is_some() || self.snapshot.is_some() || !self.entries.is_empty()
    }

    pub fn is_empty(&self) -> bool {
        !self.must_persist()
            && self.messages.is_empty()
            && self.persisted_messages.is_empty()
            && self.committed_entries.is_empty()
            && self.read_states.is_empty()
            && self.events.is_empty()
    }

    /// The last log position this Ready makes durable, to report as [`Input::Persisted`].
    pub fn persisted_position(&self) -> Option<(Index, Term)> {
        if let Some(last) = self.entries.last() {
            return Some((last.index, last.term));
        }
        self.snapshot.as_ref().map(|s| (s.meta.index, s.meta.term))
    }
}
