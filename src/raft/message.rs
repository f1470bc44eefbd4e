//! Messages exchanged between cores. The driver moves them; it never looks inside.
use serde::{Deserialize, Serialize};

use super::types::{Entry, Index, NodeId, Snapshot, Term};

/// A message from one core to another.
///
/// `term` is the sender's current term, except for pre-votes, which carry the term the
/// sender *would* campaign in (Raft thesis §9.6) without having moved to it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    /// The sending core.
    pub from: NodeId,
    /// The receiving core; a core refuses a message addressed to another node
    /// ([`PeerError::Misrouted`](super::PeerError::Misrouted)).
    pub to: NodeId,
    /// The sender's term (see above for pre-votes). A receiver in a lower term moves up to
    /// it; a receiver in a higher term ignores the message or answers with its own term.
    pub term: Term,
    /// What the message says.
    pub body: MessageBody,
}

/// The kinds of message the core exchanges, one per Raft RPC and reply.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum MessageBody {
    /// "Would you vote for me if I started an election?" Changes no state anywhere.
    PreVote {
        /// Index of the last entry in the sender's log.
        last_index: Index,
        /// Term of that entry.
        last_term: Term,
    },
    /// Answer to `PreVote`. A grant carries the candidate's future term, a refusal the
    /// voter's current one.
    PreVoteResponse {
        /// Whether the voter would vote: it hears from no leader (or the candidate's term
        /// is ahead) and the candidate's log is at least as up to date as its own.
        granted: bool,
    },
    /// RequestVote (Raft §5.2). `transfer` marks an election started on the leader's request
    /// (`TimeoutNow`), which voters honour even while they still hear from that leader.
    Vote {
        /// Index of the last entry in the candidate's log.
        last_index: Index,
        /// Term of that entry.
        last_term: Term,
        /// Whether the election is a leadership transfer (voters ignore their leader lease).
        transfer: bool,
    },
    /// Answer to `Vote`, sent only once the voter's vote is durable.
    VoteResponse {
        /// Whether the voter voted for the candidate in this term.
        granted: bool,
    },
    /// AppendEntries (Raft §5.3). May carry no entries (a probe or a commit update).
    Append {
        /// Index of the entry just before `entries`; the follower must hold it.
        prev_index: Index,
        /// Term of that entry; a follower whose entry there has another term rejects.
        prev_term: Term,
        /// Entries from `prev_index + 1` on, contiguous, bounded by
        /// `max_entries_per_message` and `max_bytes_per_message`.
        entries: Vec<Entry>,
        /// The leader's commit index; the follower commits up to it, but not past the
        /// last entry this message carries.
        commit: Index,
    },
    /// Reply to `Append` or `InstallSnapshot`.
    ///
    /// On success `index` is the last index now known to match the leader. On rejection
    /// `index` is the rejected `prev_index` and (`hint_index`, `hint_term`) let the leader
    /// skip a whole conflicting term at once.
    AppendResponse {
        /// Whether the follower's log matched at `prev_index` (always true for a snapshot).
        success: bool,
        /// On success, the last index known to match; on rejection, the rejected
        /// `prev_index`.
        index: Index,
        /// On rejection, the follower's last index at or before `prev_index` whose term is
        /// at most `prev_term`: where the logs may still agree. 0 on success.
        hint_index: Index,
        /// On rejection, the follower's term at `hint_index`. 0 on success, and in the
        /// reply to a stale leader (whose only use is to carry the newer term).
        hint_term: Term,
    },
    /// Leader liveness and commit propagation. `commit` never exceeds what the follower is
    /// known to hold; `read_seq` identifies read-index rounds (Raft thesis §6.4).
    Heartbeat {
        /// Commit index for the follower: the leader's, capped at the follower's match index.
        commit: Index,
        /// The leader's latest read-index round; echoed in the response.
        read_seq: u64,
    },
    /// Answer to `Heartbeat`: the follower still follows this leader.
    HeartbeatResponse {
        /// The `read_seq` of the heartbeat answered: confirms every read round up to it.
        read_seq: u64,
    },
    /// The whole snapshot in one message. Chunking with resume belongs to the transport
    /// (storage issue); the core only needs to know when it was installed.
    InstallSnapshot {
        /// The leader's latest snapshot, sent when the follower needs entries the leader
        /// compacted away.
        snapshot: Snapshot,
    },
    /// "Start an election now": the last step of a leadership transfer (thesis §3.10).
    TimeoutNow,
}

impl MessageBody {
    /// A short name for logs and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            MessageBody::PreVote { .. } => "pre_vote",
            MessageBody::PreVoteResponse { .. } => "pre_vote_response",
            MessageBody::Vote { .. } => "vote",
            MessageBody::VoteResponse { .. } => "vote_response",
            MessageBody::Append { .. } => "append",
            MessageBody::AppendResponse { .. } => "append_response",
            MessageBody::Heartbeat { .. } => "heartbeat",
            MessageBody::HeartbeatResponse { .. } => "heartbeat_response",
            MessageBody::InstallSnapshot { .. } => "install_snapshot",
            MessageBody::TimeoutNow => "timeout_now",
        }
    }
}
