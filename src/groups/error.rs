//! What a [`Group`](super::Group) call can fail with, by fault: the member stopped
//! ([`StopReason`]), the group refused the request for good ([`Rejection`]), or the call
//! ran out of time (the outcome may still come, exactly once).
use serde::{Deserialize, Serialize};

use crate::machine::ClientId;
use crate::raft::{Index, MembershipError, NodeId, SafetyViolation};
use crate::storage::StorageError;

/// Why a group operation failed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum GroupError {
    /// No answer within the handle's request timeout (retries included). A command
    /// may still be applied, once: its retries carry the same session sequence number.
    #[error("timed out after {0:?}; a command may still apply, exactly once")]
    Timeout(std::time::Duration),
    /// The member stopped taking part in its group; no call on it succeeds again.
    #[error("the member stopped: {0}")]
    Stopped(StopReason),
    /// The group refused the request for good: retrying the same request does not help.
    #[error("refused: {0}")]
    Refused(Rejection),
    /// An operator's request (membership change, leave) whose outcome is unknown: the
    /// leader changed or the answer was lost. Check the membership and ask again.
    #[error("the outcome is unknown (leader changed or answer lost)")]
    Unknown,
    /// Too many of this member's requests wait for the leader's answer already (the
    /// leader is slow or out of reach): nothing was sent; retry later.
    #[error("too many requests wait for the leader's answer; retry later")]
    Busy,
    /// The command, query or an answer does not (de)serialize with postcard: a bug in
    /// the state machine's types.
    #[error("encoding failed: {0}")]
    Encoding(String),
    /// Something that should not happen did (an answer of the wrong kind, say).
    #[error("internal error: {0}")]
    Internal(String),
}

impl From<super::worker::RequestError> for GroupError {
    fn from(e: super::worker::RequestError) -> Self {
        use super::worker::RequestError;
        match e {
            RequestError::NoLeader => GroupError::Refused(Rejection::NotLeader { leader: None }),
            RequestError::Unknown => GroupError::Unknown,
            RequestError::Busy => GroupError::Busy,
            RequestError::Refused(rejection) => GroupError::Refused(rejection),
            RequestError::Stopped(reason) => GroupError::Stopped(reason),
        }
    }
}

/// Why a member stopped taking part in its group. A stopped member answers nothing more.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum StopReason {
    /// [`Group::shutdown`](super::Group::shutdown), or its gateway's.
    #[error("shut down")]
    ShutDown,
    /// The worker is gone (its thread ended) without saying why.
    #[error("the worker has stopped")]
    WorkerGone,
    /// A durable write failed: nothing after it may be acknowledged.
    #[error("storage write failed: {0}")]
    Storage(StorageError),
    /// A snapshot the leader sent verified but does not restore into the state machine.
    #[error("snapshot from the leader does not restore: {0}")]
    Snapshot(String),
    /// The core saw another leader of its term or a committed entry overwritten: the
    /// member stops rather than serve a forked log.
    #[error("consensus safety violated: {0}")]
    SafetyViolated(SafetyViolation),
}

/// Why the group refused a request: what no retry of the same request changes.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
#[non_exhaustive]
pub enum Rejection {
    /// The encoded command is larger than the core accepts.
    #[error("command of {bytes} bytes exceeds the limit of {max_bytes}")]
    TooLarge {
        /// Its encoded size.
        bytes: u64,
        /// The core's `max_proposal_bytes`.
        max_bytes: u64,
    },
    /// More commands in one proposal than the core accepts at once.
    #[error("{count} proposals at once exceed the limit of {max}")]
    TooManyProposals {
        /// How many were proposed.
        count: u64,
        /// The core's `max_proposals_per_batch`.
        max: u64,
    },
    /// The membership change cannot be made (see the inner error).
    #[error("invalid membership change: {0}")]
    Membership(MembershipError),
    /// Leadership can only go to a voter.
    #[error("{0} is not a voter")]
    NotAVoter(NodeId),
    /// An operator's request (membership) went to a member that does not lead.
    #[error("not the leader{}", leader.map_or(", and no leader is known".to_string(), |l| format!("; ask {l}")))]
    NotLeader {
        /// The leader this member knows of, if any.
        leader: Option<NodeId>,
    },
    /// A later request of the same kind (membership change, leave) took over this one.
    #[error("a later request of the same kind took over")]
    Superseded,
    /// A group of one would be left with no member.
    #[error("the only member of a group cannot leave it")]
    OnlyMember,
    /// The membership change was appended at `index` but a leadership change overwrote it.
    #[error("the change appended at {index} is not in the committed configuration (leadership changed); try again")]
    ChangeLost {
        /// Where the change was appended.
        index: Index,
    },
    /// The query's bytes do not decode as the state machine's query type.
    #[error("the query does not decode: {0}")]
    UndecodableQuery(String),
    /// The state machine's answer to a query does not encode.
    #[error("the query's result does not encode: {0}")]
    UnencodableResult(String),
    /// A caller's own session ([`Group::execute_as`](super::Group::execute_as)) is past
    /// this sequence number.
    #[error("session {client:?} is at {last_seq}, past this call's {seq}")]
    StaleSession {
        /// The caller's session.
        client: ClientId,
        /// The last sequence number the group applied for it.
        last_seq: u64,
        /// The sequence number of this call.
        seq: u64,
    },
}
