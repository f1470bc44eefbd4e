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
        /// The commands, each at most `max_proposal_bytes`, at most
        /// `max_proposals_per_batch` of them.
        commands: Vec<Bytes>,
        /// The driver's wall clock, in milliseconds; raised to the last entry's stamp if
        /// behind it.
        timestamp_ms: u64,
    },
    /// A single-server membership change (leader only).
    ChangeMembership(MembershipChange),
    /// Ask for a linearizable read point (read-index, thesis §6.4). `id` is the driver's.
    ReadIndex {
        /// Chosen by the driver; comes back in the [`ReadState`] or `ReadRejected` event.
        id: u64,
    },
    /// Hand leadership to `to` (thesis §3.10).
    TransferLeadership {
        /// The voter that should lead next.
        to: NodeId,
    },
    /// Storage made the log durable up to (`index`, `term`) (or installed a snapshot there).
    Persisted {
        /// The last durable index, from [`Ready::persisted_position`].
        index: Index,
        /// The term of the entry at `index`; a report for an entry since replaced is ignored.
        term: Term,
    },
    /// The driver took a state-machine snapshot at `index` (already applied): the core may
    /// forget the log up to there and will send `data` to followers that are too far behind.
    Compact {
        /// The last index the snapshot covers; at most the applied index.
        index: Index,
        /// The snapshot's data, opaque to the core and sent as is to lagging followers
        /// (the groups runtime passes an encoded
        /// [`SnapshotHandle`](crate::storage::SnapshotHandle); the bytes stay in its
        /// snapshot store).
        data: Bytes,
    },
    /// The transport saw a peer become reachable or unreachable (bond up/down).
    PeerReachable {
        /// The peer whose bond changed.
        peer: NodeId,
        /// Whether it is reachable now. A leader counts an unreachable voter as silent
        /// when it decides whether removing or replacing a member is safe.
        reachable: bool,
    },
}

/// The role of a core in its current term.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Follows a leader, or waits for one. Every core starts here, and a node that may
    /// not stand for election (a learner, an observer) stays here.
    Follower,
    /// Timed out and asking for pre-votes, still in its old term.
    PreCandidate,
    /// Asks for votes in a new term, after winning the pre-vote (or without one, when
    /// pre-vote is off or a leader handed over leadership).
    Candidate,
    /// Won the election: accepts proposals, reads and membership changes.
    Leader,
}

/// Why a request to the core was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Rejection {
    /// This node does not lead: retry at the leader.
    #[error("not the leader (leader hint: {leader:?})")]
    NotLeader {
        /// The leader this node knows of, if any.
        leader: Option<NodeId>,
    },
    /// A leadership transfer is under way: proposals, membership changes and another
    /// transfer are refused until it finishes or is abandoned (within an election timeout).
    #[error("a leadership transfer is in progress")]
    TransferInProgress,
    /// A command is larger than `max_proposal_bytes`; the whole batch is refused.
    #[error("command of {bytes} bytes exceeds the limit of {max_bytes}")]
    TooLarge {
        /// Size of the first oversized command, in bytes.
        bytes: usize,
        /// The configured `max_proposal_bytes`.
        max_bytes: usize,
    },
    /// One `Propose` carries more than `max_proposals_per_batch` commands.
    #[error("{count} proposals in one batch exceed the limit of {max}")]
    TooManyProposals {
        /// Commands in the refused batch.
        count: usize,
        /// The configured `max_proposals_per_batch`.
        max: usize,
    },
    /// The previous configuration entry is not committed yet: one change at a time.
    #[error("another membership change is not committed yet")]
    MembershipChangePending,
    /// A new leader has not committed its start-of-term no-op; membership changes wait
    /// for it.
    #[error("the leader has not committed an entry of its term yet")]
    LeaderNotReady,
    /// The change does not apply to the configuration in force.
    #[error("invalid membership change: {0}")]
    Membership(#[from] MembershipError),
    /// `max_pending_reads` reads are already waiting for confirmation.
    #[error("{max} reads are already waiting")]
    TooManyReads {
        /// The configured `max_pending_reads`.
        max: usize,
    },
    /// The leader stepped down while reads were waiting; retry at the new leader.
    #[error("leadership was lost before the request completed")]
    LeadershipLost,
    /// A leadership transfer to a node that is not a voter.
    #[error("{0} is not a voter")]
    NotAVoter(NodeId),
}

/// Something the driver may want to act on or report.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// The role, term or known leader changed.
    StateChanged {
        /// The new role.
        role: Role,
        /// The new term.
        term: Term,
        /// The leader now known, if any.
        leader: Option<NodeId>,
    },
    /// Proposals were appended at `first_index..first_index + count` in `term`. They are
    /// committed only if these indexes are later applied with this term.
    Proposed {
        /// Index of the first command of the batch.
        first_index: Index,
        /// Commands in the batch, at consecutive indexes.
        count: usize,
        /// The leader's term the batch was appended in.
        term: Term,
    },
    /// A `Propose` batch was refused as a whole; nothing was appended.
    ProposalRejected {
        /// Commands in the refused batch.
        count: usize,
        /// Why.
        reason: Rejection,
    },
    /// A membership change was appended at `index` (by us, as leader).
    MembershipChangeProposed {
        /// The change asked for (by the driver, or by the leader's automatic promotion or
        /// removal).
        change: MembershipChange,
        /// Index of the configuration entry.
        index: Index,
    },
    /// A membership change was refused; nothing was appended.
    MembershipChangeRejected {
        /// The change asked for.
        change: MembershipChange,
        /// Why.
        reason: Rejection,
    },
    /// The configuration in force (latest in the log) is now `membership`, from `index`.
    MembershipChanged {
        /// The configuration now in force (not necessarily committed).
        membership: Membership,
        /// Index of its configuration entry (0 for none).
        index: Index,
    },
    /// A read-index request will not complete; the driver fails the read.
    ReadRejected {
        /// The driver's id from [`Input::ReadIndex`].
        id: u64,
        /// Why.
        reason: Rejection,
    },
    /// A leadership transfer request was refused; nothing changed.
    TransferRejected {
        /// The requested new leader.
        to: NodeId,
        /// Why.
        reason: Rejection,
    },
    /// A transfer did not finish within an election timeout and was abandoned.
    TransferAborted {
        /// The node that was to lead.
        to: NodeId,
    },
}

/// A read point: once the state machine has applied `index`, a read for `id` is linearizable.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReadState {
    /// The driver's id from [`Input::ReadIndex`].
    pub id: u64,
    /// The leader's commit index when the read was taken in (for a new leader: once its
    /// no-op committed). Serve the read once the state machine has applied this index.
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
    /// Reads confirmed by a quorum, in request order: serve each once applied up to its
    /// index.
    pub read_states: Vec<ReadState>,
    /// State changes and outcomes of requests, in the order they happened.
    pub events: Vec<Event>,
}

impl Ready {
    /// Whether the driver must write (and sync) anything before `persisted_messages` go out.
    pub fn must_persist(&self) -> bool {
        self.hard_state.is_some() || self.snapshot.is_some() || !self.entries.is_empty()
    }

    /// Whether there is nothing at all to do: the driver may skip this Ready.
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
