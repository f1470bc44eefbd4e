//! Messages exchanged between cores. The driver moves them; it never looks inside.
use serde::{Deserialize, Serialize};

use super::types::{Entry, Index, NodeId, Snapshot, Term};

/// A message from one core to another.
///
/// `term` is the sender's current term, except for pre-votes, which carry the term the
/// sender *would* campaign in (Raft thesis §9.6) without having moved to it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    pub from: NodeId,
    pub to: NodeId,
    pub term: Term,
    pub body: MessageBody,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum MessageBody {
    /// "Would you vote for me if I started an election?" Changes no state anywhere.
    PreVote {
        last_index: Index,
        last_term: Term,
    },
    PreVoteResponse {
        granted: bool,
    },
    /// RequestVote (Raft §5.2). `transfer` marks an election started on the leader's request
    /// (`TimeoutNow`), which voters honour even while they still hear from that leader.
    Vote {
        last_index: Index,
        last_term: Term,
        transfer: bool,
    },
    VoteResponse {
        granted: bool,
    },
    /// AppendEntries (Raft §5.3). May carry no entries (a probe or a commit update).
    Append {
        prev_index: Index,
        prev_term: Term,
        entries: Vec<Entry>,
        commit: Index,
    },
    /// Reply to `Append` or `InstallSnapshot`.
    ///
    /// On success `index` is the last index now known to match the leader. On rejection
    /// `index` is the rejected `prev_index` and (`hint_index`, `hint_term`) let the leader
    /// skip a whole conflicting term at once.
    AppendResponse {
        success: bool,
        index: Index,
        hint_index: Index,
        hint_term: Term,
    },
    /// Leader liveness and commit propagation. `commit` never exceeds what the follower is
    /// known to hold; `read_seq` identifies read-index rounds (Raft thesis §6.4).
    Heartbeat {
        commit: Index,
        read_seq: u64,
    },
    HeartbeatResponse {
        read_seq: u64,
    },
    /// The whole snapshot in one message. Chunking with resume belongs to the transport
    /// (storage issue); the core only needs to know when it was installed.
    InstallSnapshot {
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
