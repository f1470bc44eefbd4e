//! What the core refuses, grouped by who is at fault (as rustls groups its errors), so
//! that a driver decides what to do by the group and never by reading a message: drop a
//! peer's frame, stop the node, or report its own bug.
//!
//! Every refusal leaves the core's state unchanged.
use super::config::ConfigError;
use super::types::{Index, NodeId, Term};

/// Why [`Raft::step`](super::Raft::step) refused an input.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum StepError {
    /// A frame from a peer that no correct peer sends. The core is unchanged; the driver
    /// drops the frame (and counts it: a correct group never produces one).
    #[error(transparent)]
    Peer(#[from] PeerError),
    /// Evidence that two groups share this id or that a member lies about what it holds.
    /// The core is unchanged, but the driver must stop the node: nothing more may be
    /// applied or acknowledged, or the member would serve a forked log.
    #[error(transparent)]
    Safety(#[from] SafetyViolation),
    /// An input no correct driver gives: a bug in the driver. The core is unchanged; the
    /// driver reports the bug loudly (it cannot be the peers' doing).
    #[error(transparent)]
    Misuse(#[from] DriverMisuse),
}

/// A frame that cannot come from a correct peer. Dropping it is safe: the core did not
/// look further than the check that refused it.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PeerError {
    /// The frame names another node as its recipient: the transport (or the sender)
    /// mixed up identities.
    #[error("message addressed to {to} delivered to {me}")]
    Misrouted {
        /// The recipient the frame names.
        to: NodeId,
        /// This node, which received it.
        me: NodeId,
    },
    /// The frame breaks the message's own rules (`reason` names the one broken).
    #[error("malformed {kind} from {from}: {reason}")]
    Malformed {
        /// The message kind, as [`MessageBody::kind`](super::MessageBody::kind) names it.
        kind: &'static str,
        /// The peer that sent the frame.
        from: NodeId,
        /// The rule the frame breaks.
        reason: &'static str,
    },
}

/// Evidence that the Raft safety argument does not hold for this group: two groups share
/// the id, or a member is not what it claims (architecture.md §7.2). Carries the sender,
/// to be reported with the stop.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SafetyViolation {
    /// Another node leads the term this node leads: at most one leader is elected per
    /// term (Raft §5.2), so a second one is from another group or lies.
    #[error("{from} claims to lead term {term}, which this node leads")]
    SecondLeader {
        /// The other node claiming leadership.
        from: NodeId,
        /// The term both claim to lead.
        term: Term,
    },
    /// A leader asks to overwrite an entry this node knows is committed; committed
    /// entries never change (Raft §5.4, Leader Completeness).
    #[error("append from {from} conflicts with committed entry {index}")]
    CommittedConflict {
        /// The leader that sent the conflicting append.
        from: NodeId,
        /// The committed index whose entry the append would replace.
        index: Index,
    },
}

/// An input that breaks the core's documented contract. Only the driver can cause one.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DriverMisuse {
    /// `Input::Compact` beyond the applied index: a snapshot can only hold what the state
    /// machine applied.
    #[error("cannot compact to {index}: only {applied} is applied")]
    CompactBeyondApplied {
        /// The index the driver asked to compact to.
        index: Index,
        /// The core's applied index at the time.
        applied: Index,
    },
}

/// Why [`Raft::bootstrap`](super::Raft::bootstrap) refused to write a first
/// configuration. Nothing was written.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BootstrapError {
    /// The node holds state: it has been part of a group and never founds another one.
    /// Expected when a founder's log arrived before formation decided to found.
    #[error("bootstrap needs a fresh node (term {term}, last index {last_index})")]
    NotFresh {
        /// The node's current term.
        term: Term,
        /// The last index of the node's log (the snapshot point when no entry follows it).
        last_index: Index,
    },
    /// A group without voters could never elect a leader: the driver's membership is
    /// wrong.
    #[error("bootstrap membership has no voters")]
    NoVoters,
}

/// What storage recovered cannot be the durable state of a correct node: the store is
/// corrupt or buggy, and the node must not start from it.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RecoveryError {
    /// An entry does not follow the one before it (or the snapshot point).
    #[error(
        "recovered state is inconsistent: recovered entries are not contiguous \
         (expected index {expected}, got {got})"
    )]
    NotContiguous {
        /// The index the next entry should have had.
        expected: Index,
        /// The index it had.
        got: Index,
    },
    /// Terms in a log never decrease (Raft §5.3).
    #[error(
        "recovered state is inconsistent: recovered entry terms decrease \
         (entry {index} has term {term} after term {previous})"
    )]
    TermsDecrease {
        /// Index of the entry whose term is too low.
        index: Index,
        /// That entry's term.
        term: Term,
        /// The term of the entry (or snapshot point) before it.
        previous: Term,
    },
    /// A node never holds an entry of a term above its own current term: the term is
    /// durable no later than the entries written in it.
    #[error(
        "recovered state is inconsistent: log has term {log_term} above the hard state's \
         term {hard_state_term}"
    )]
    TermAboveHardState {
        /// The term of the last recovered entry.
        log_term: Term,
        /// The term recorded in the recovered hard state.
        hard_state_term: Term,
    },
}

/// Why [`Raft::new`](super::Raft::new) could not build a core.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum NewRaftError {
    /// The parameters cannot work: the caller's configuration is wrong.
    #[error("invalid configuration: {0}")]
    Config(#[from] ConfigError),
    /// The recovered state is inconsistent (see [`RecoveryError`]).
    #[error(transparent)]
    State(#[from] RecoveryError),
}
