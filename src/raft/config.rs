//! Static parameters of one core. Every field that must agree across a group is part of
//! the group id (groups layer); the core only checks that the values make sense.

/// Parameters of a [`Raft`](super::Raft) core. Times are in ticks: the driver decides how
/// long a tick is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RaftConfig {
    /// A follower that hears nothing from a leader for a random time in
    /// `[election_ticks, 2 * election_ticks)` starts an election.
    pub election_ticks: u64,
    /// How often a leader sends heartbeats. Must be well below `election_ticks`.
    pub heartbeat_ticks: u64,
    /// Multiplier on the election timeout of a node that prefers not to lead.
    pub reluctant_factor: u64,
    /// Whether this node prefers not to lead (`LeadershipPreference::Reluctant`).
    pub reluctant: bool,
    /// Whether this node must never stand for election (`LeadershipPreference::Observer`),
    /// even if a configuration names it a voter. Node-local, like `reluctant`.
    pub observer: bool,
    /// Pre-vote (thesis §9.6): a partitioned node cannot inflate terms on return.
    pub pre_vote: bool,
    /// A leader that has not heard from a quorum for an election timeout steps down.
    pub check_quorum: bool,
    /// Most entries in one append message.
    pub max_entries_per_message: usize,
    /// Most payload bytes in one append message (at least one entry is always sent).
    pub max_bytes_per_message: usize,
    /// Most unacknowledged append messages to one follower (pipelining window).
    pub max_inflight_messages: usize,
    /// Largest accepted command, in bytes.
    pub max_proposal_bytes: usize,
    /// Most proposals accepted in one `Propose` input.
    pub max_proposals_per_batch: usize,
    /// Leader promotes caught-up learners while there are fewer voters than this.
    pub max_voters: usize,
    /// Whether the leader promotes caught-up learners by itself.
    pub auto_promote: bool,
    /// A learner within this many entries of the leader's log counts as caught up.
    pub promotion_lag_entries: u64,
    /// A voter the leader has not heard from for this many election timeouts in a row is
    /// removed when a caught-up learner is waiting to take its place (a restarted TD comes
    /// back as a new identity: the dead one goes before the new one is promoted, so
    /// replacements never raise the voter count while dead voters still count). 0: never.
    pub replace_after_rounds: u64,
    /// Most read-index requests waiting for confirmation at once.
    pub max_pending_reads: usize,
    /// Test only: count quorums the way the reference runtime did (a majority of the
    /// reachable voters). Unsafe under partitions; exists so the simulator and the
    /// container nemesis (feature `dangerous-reference-quorum`) can prove they catch split
    /// brain.
    #[cfg(any(test, feature = "dangerous-reference-quorum"))]
    pub dangerous_reference_quorum: bool,
}

impl Default for RaftConfig {
    fn default() -> Self {
        Self {
            election_ticks: 10,
            heartbeat_ticks: 2,
            reluctant_factor: 3,
            reluctant: false,
            observer: false,
            pre_vote: true,
            check_quorum: true,
            max_entries_per_message: 1024,
            max_bytes_per_message: 1 << 20,
            max_inflight_messages: 64,
            max_proposal_bytes: 1 << 20,
            max_proposals_per_batch: 4096,
            max_voters: 5,
            auto_promote: true,
            promotion_lag_entries: 64,
            replace_after_rounds: 4,
            max_pending_reads: 4096,
            #[cfg(any(test, feature = "dangerous-reference-quorum"))]
            dangerous_reference_quorum: false,
        }
    }
}

/// A configuration value that cannot work.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// `heartbeat_ticks` is 0 or not below `election_ticks`: followers would time out
    /// between two heartbeats of a healthy leader.
    #[error(
        "heartbeat_ticks ({heartbeat}) must be at least 1 and below election_ticks ({election})"
    )]
    Timers {
        /// The configured `heartbeat_ticks`.
        heartbeat: u64,
        /// The configured `election_ticks`.
        election: u64,
    },
    /// A limit or factor that must be positive is 0.
    #[error("{field} must be at least 1")]
    Zero {
        /// Name of the offending [`RaftConfig`] field.
        field: &'static str,
    },
}

impl RaftConfig {
    /// Checks the values; a core is only built from a validated configuration.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.heartbeat_ticks == 0 || self.heartbeat_ticks >= self.election_ticks {
            return Err(ConfigError::Timers {
                heartbeat: self.heartbeat_ticks,
                election: self.election_ticks,
            });
        }
        let positive = [
            ("reluctant_factor", self.reluctant_factor as usize),
            ("max_entries_per_message", self.max_entries_per_message),
            ("max_bytes_per_message", self.max_bytes_per_message),
            ("max_inflight_messages", self.max_inflight_messages),
            ("max_proposal_bytes", self.max_proposal_bytes),
            ("max_proposals_per_batch", self.max_proposals_per_batch),
            ("max_voters", self.max_voters),
            ("max_pending_reads", self.max_pending_reads),
        ];
        for (field, value) in positive {
            if value == 0 {
                return Err(ConfigError::Zero { field });
            }
        }
        Ok(())
    }
}
