//! What a [`Group`](super::Group) call can fail with, by fault: the member stopped
//! ([`StopReason`]), the group refused the request for good ([`Rejection`]), or the call
//! ran out of time (the outcome may still come, exactly once).
use serde::{Deserialize, Serialize};

use crate::machine::ClientId;
use crate::raft::{Index, MembershipError, NodeId};

/// Why a group operation failed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum GroupError {
    #[error("timed out after {0:?}; a command may still apply, exactly once")]
    Timeout(std::time::Duration),
    #[error("the member stopped: {0}")]
    Stopped(StopReason),
    #[error("refused: {0}")]
    Refused(Rejection),
    /// An operator's request (membership change, leave) whose outcome is unknown: the
    /// leader changed or the answer was lost. Check the membership and ask again.
    #[error("the outcome is unknown (leader changed or answer lost)")]
    Unknown,
    #[error("encoding failed: {0}")]
    Encoding(String),
    #[error("internal error: {0}")]
    Internal(String),
}

impl From<super::worker::RequestError> for GroupError {
    fn from(e: super::worker::RequestError) -> Self {
        use super::worker::RequestError;
        match e {
            RequestError::NoLeader => GroupError::Refused(Rejection::NotLeader { leader: None }),
            RequestError::Unknown => GroupError::Unknown,
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
    Storage(String),
    /// A snapshot the leader sent verified but does not restore into the state machine.
    #[error("snapshot from the leader does not restore: {0}")]
    Snapshot(String),
    /// The core saw another leader of its term or a committed entry overwritten: the
    /// member stops rather than serve a forked log.
    #[error("consensus safety violated: {0}")]
    SafetyViolated(String),
}

/// Why the group refused a request: what no retry of the same request changes.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
#[non_exhaustive]
pub enum Rejection {
    #[error("command of {bytes} bytes exceeds the limit of {max_bytes}")]
    TooLarge { bytes: u64, max_bytes: u64 },
    #[error("{count} proposals at once exceed the limit of {max}")]
    TooManyProposals { count: u64, max: u64 },
    #[error("invalid membership change: {0}")]
    Membership(MembershipError),
    #[error("{0} is not a voter")]
    NotAVoter(NodeId),
    /// An operator's request (membership) went to a member that does not lead.
    #[error("not the leader{}", leader.map_or(", and no leader is known".to_string(), |l| format!("; ask {l}")))]
    NotLeader { leader: Option<NodeId> },
    /// A later request of the same kind (membership change, leave) took over this one.
    #[error("a later request of the same kind took over")]
    Superseded,
    #[error("the only member of a group cannot leave it")]
    OnlyMember,
    /// The membership change was appended at `index` but a leadership change overwrote it.
    #[error("the change appended at {index} is not in the committed configuration (leadership changed); try again")]
    ChangeLost { index: Index },
    #[error("the query does not decode: {0}")]
    UndecodableQuery(String),
    #[error("the query's result does not encode: {0}")]
    UnencodableResult(String),
    /// A caller's own session ([`Group::execute_as`](super::Group::execute_as)) is past
    /// this sequence number.
    #[error("session {client:?} is at {last_seq}, past this call's {seq}")]
    StaleSession {
        client: ClientId,
        last_seq: u64,
        seq: u64,
    },
}
