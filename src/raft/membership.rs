//! Group membership as recorded in the log, and the quorum rule over it.
//!
//! Quorum is always a strict majority of the *voters of one configuration*. Nothing here
//! knows about reachability: the reference runtime's "majority of whoever is reachable"
//! rule is exactly what lets two partitions both commit (architecture.md §7.2).
use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use super::types::{Index, NodeId};

/// Voters, learners and observers of a group, as written in a configuration entry.
///
/// The three sets are disjoint. Learners replicate and may be promoted; observers replicate
/// and are never promoted (a node whose state machine prefers `Observer`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Membership {
    /// Members that vote in elections and count towards every quorum.
    pub voters: BTreeSet<NodeId>,
    /// Members that receive the log without voting; the leader may promote them once
    /// caught up.
    pub learners: BTreeSet<NodeId>,
    /// Members that receive the log and are never promoted.
    pub observers: BTreeSet<NodeId>,
}

/// The role a configuration gives a node.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum MemberRole {
    /// In [`Membership::voters`]: votes and counts towards quorums.
    Voter,
    /// In [`Membership::learners`]: replicates, may be promoted.
    Learner,
    /// In [`Membership::observers`]: replicates, never promoted.
    Observer,
}

/// One single-server change (Raft thesis §4.1): the voter set changes by at most one node.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum MembershipChange {
    /// Start replicating to a new node without giving it a vote.
    AddLearner(NodeId),
    /// Start replicating to a node that will never vote.
    AddObserver(NodeId),
    /// Give a learner a vote.
    Promote(NodeId),
    /// Take a voter's vote away but keep replicating to it.
    Demote(NodeId),
    /// Stop replicating to a node altogether.
    Remove(NodeId),
}

/// Why a membership change is not valid against a configuration.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error, serde::Serialize, serde::Deserialize)]
#[non_exhaustive]
pub enum MembershipError {
    /// `AddLearner` or `AddObserver` of a node that already has a role.
    #[error("{0} is already a member")]
    AlreadyMember(NodeId),
    /// `Promote` of a node that is not a learner (observers are never promoted).
    #[error("{0} is not a learner, only learners can be promoted")]
    NotLearner(NodeId),
    /// `Demote` of a node that is not a voter.
    #[error("{0} is not a voter")]
    NotVoter(NodeId),
    /// `Remove` of a node that has no role.
    #[error("{0} is not a member")]
    NotMember(NodeId),
    /// `Demote` or `Remove` of the only voter: a group without voters can never elect a
    /// leader again.
    #[error("removing {0} would leave the group without voters")]
    LastVoter(NodeId),
}

impl Membership {
    /// A configuration whose voters are `voters` and nothing else.
    pub fn with_voters(voters: impl IntoIterator<Item = NodeId>) -> Self {
        Self {
            voters: voters.into_iter().collect(),
            ..Self::default()
        }
    }

    /// Number of members of any role.
    pub fn len(&self) -> usize {
        self.voters.len() + self.learners.len() + self.observers.len()
    }

    /// Whether the configuration names no member at all (the default, before bootstrap).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The role `id` has in this configuration, or `None` when it is not a member.
    pub fn role_of(&self, id: NodeId) -> Option<MemberRole> {
        if self.voters.contains(&id) {
            Some(MemberRole::Voter)
        } else if self.learners.contains(&id) {
            Some(MemberRole::Learner)
        } else if self.observers.contains(&id) {
            Some(MemberRole::Observer)
        } else {
            None
        }
    }

    /// Whether `id` votes in this configuration.
    pub fn is_voter(&self, id: NodeId) -> bool {
        self.voters.contains(&id)
    }

    /// Whether `id` has any role (voter, learner or observer) in this configuration.
    pub fn contains(&self, id: NodeId) -> bool {
        self.role_of(id).is_some()
    }

    /// Every member, in id order.
    pub fn members(&self) -> impl Iterator<Item = NodeId> + '_ {
        let mut all: Vec<NodeId> = self
            .voters
            .iter()
            .chain(&self.learners)
            .chain(&self.observers)
            .copied()
            .collect();
        all.sort_unstable();
        all.into_iter()
    }

    /// Strict majority of the voters.
    pub fn quorum(&self) -> usize {
        self.voters.len() / 2 + 1
    }

    /// Whether the voters for which `yes` holds form a strict majority.
    pub fn is_quorum(&self, yes: impl Fn(NodeId) -> bool) -> bool {
        !self.voters.is_empty() && self.voters.iter().filter(|v| yes(**v)).count() >= self.quorum()
    }

    /// The largest index that a strict majority of voters has reached, given each voter's
    /// match index. Returns 0 when there are no voters.
    pub fn quorum_index(&self, matched: impl Fn(NodeId) -> Index) -> Index {
        if self.voters.is_empty() {
            return 0;
        }
        let mut indexes: Vec<Index> = self.voters.iter().map(|v| matched(*v)).collect();
        indexes.sort_unstable_by(|a, b| b.cmp(a));
        indexes[self.quorum() - 1]
    }

    /// The configuration after `change`, or why the change is invalid.
    pub fn apply(&self, change: MembershipChange) -> Result<Membership, MembershipError> {
        let mut next = self.clone();
        match change {
            MembershipChange::AddLearner(id) | MembershipChange::AddObserver(id) => {
                if self.contains(id) {
                    return Err(MembershipError::AlreadyMember(id));
                }
                if matches!(change, MembershipChange::AddLearner(_)) {
                    next.learners.insert(id);
                } else {
                    next.observers.insert(id);
                }
            }
            MembershipChange::Promote(id) => {
                if !next.learners.remove(&id) {
                    return Err(MembershipError::NotLearner(id));
                }
                next.voters.insert(id);
            }
            MembershipChange::Demote(id) => {
                if !self.voters.contains(&id) {
                    return Err(MembershipError::NotVoter(id));
                }
                if self.voters.len() == 1 {
                    return Err(MembershipError::LastVoter(id));
                }
                next.voters.remove(&id);
                next.learners.insert(id);
            }
            MembershipChange::Remove(id) => {
                if !self.contains(id) {
                    return Err(MembershipError::NotMember(id));
                }
                if self.voters.len() == 1 && self.voters.contains(&id) {
                    return Err(MembershipError::LastVoter(id));
                }
                next.voters.remove(&id);
                next.learners.remove(&id);
                next.observers.remove(&id);
            }
        }
        debug_assert!(
            self.voters.symmetric_difference(&next.voters).count() <= 1,
            "a single-server change moved more than one vote"
        );
        Ok(next)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(v: &[u64]) -> Vec<NodeId> {
        v.iter().map(|i| NodeId(*i)).collect()
    }

    #[test]
    fn quorum_is_strict_majority_of_voters() {
        // (voters, quorum) — table-driven as in raft-rs' quorum tests.
        for (n, q) in [(1, 1), (2, 2), (3, 2), (4, 3), (5, 3), (6, 4), (7, 4)] {
            let m = Membership::with_voters((1..=n).map(NodeId));
            assert_eq!(m.quorum(), q, "{n} voters");
        }
    }

    #[test]
    fn learners_and_observers_never_count_towards_quorum() {
        let mut m = Membership::with_voters(ids(&[1, 2, 3]));
        m.learners.insert(NodeId(4));
        m.observers.insert(NodeId(5));
        // 1 voter + 2 non-voters acknowledging is not a quorum of 3 voters.
        let acked = ids(&[1, 4, 5]);
        assert!(!m.is_quorum(|id| acked.contains(&id)));
        let acked = ids(&[1, 2]);
        assert!(m.is_quorum(|id| acked.contains(&id)));
    }

    #[test]
    fn quorum_index_takes_the_majority_th_largest_match() {
        let cases: &[(&[u64], &[u64], u64)] = &[
            (&[1], &[7], 7),
            (&[1, 2, 3], &[5, 3, 9], 5),
            (&[1, 2, 3], &[0, 0, 9], 0),
            (&[1, 2, 3, 4], &[4, 4, 2, 1], 2),
            (&[1, 2, 3, 4, 5], &[10, 1, 8, 2, 9], 8),
        ];
        for (voters, matched, want) in cases {
            let m = Membership::with_voters(ids(voters));
            let got = m.quorum_index(|id| {
                let pos = voters.iter().position(|v| *v == id.0).unwrap();
                matched[pos]
            });
            assert_eq!(got, *want, "voters {voters:?} matched {matched:?}");
        }
    }

    #[test]
    fn empty_voter_set_has_no_quorum() {
        let m = Membership::default();
        assert!(!m.is_quorum(|_| true));
        assert_eq!(m.quorum_index(|_| 100), 0);
    }

    #[test]
    fn changes_move_at_most_one_vote_and_reject_nonsense() {
        let m = Membership::with_voters(ids(&[1, 2, 3]));
        let m2 = m.apply(MembershipChange::AddLearner(NodeId(4))).unwrap();
        assert_eq!(m2.role_of(NodeId(4)), Some(MemberRole::Learner));
        let m3 = m2.apply(MembershipChange::Promote(NodeId(4))).unwrap();
        assert_eq!(m3.voters.len(), 4);
        assert_eq!(
            m.apply(MembershipChange::Promote(NodeId(2))),
            Err(MembershipError::NotLearner(NodeId(2)))
        );
        assert_eq!(
            m.apply(MembershipChange::AddLearner(NodeId(1))),
            Err(MembershipError::AlreadyMember(NodeId(1)))
        );
        assert_eq!(
            m.apply(MembershipChange::Remove(NodeId(9))),
            Err(MembershipError::NotMember(NodeId(9)))
        );
        let single = Membership::with_voters(ids(&[1]));
        assert_eq!(
            single.apply(MembershipChange::Remove(NodeId(1))),
            Err(MembershipError::LastVoter(NodeId(1)))
        );
        assert_eq!(
            single.apply(MembershipChange::Demote(NodeId(1))),
            Err(MembershipError::LastVoter(NodeId(1)))
        );
        let demoted = m.apply(MembershipChange::Demote(NodeId(3))).unwrap();
        assert_eq!(demoted.role_of(NodeId(3)), Some(MemberRole::Learner));
        let removed = demoted.apply(MembershipChange::Remove(NodeId(3))).unwrap();
        assert!(!removed.contains(NodeId(3)));
    }
}
