//! Formation: whether a fresh member founds a new group, joins an existing one, or waits
//! (architecture.md §7.2). Sans-IO: the worker feeds it bond events and the peers' [`Formation`]
//! frames and asks it what to do; it never touches the network or the core.
//!
//! **The rule.** The founders are a configured set: this member plus the ids of its
//! `bootstrap` peers, like etcd's initial cluster, and `bootstrap_expect` must count them
//! (a member whose set has another size only ever joins). A founder writes the first
//! configuration (those founders as voters) only once *every* other founder is bonded and
//! has said, on that bond, that it is fresh and was configured with the same founding set
//! (the same digest). Any founder that says it is already in a group turns this member
//! into a joiner of that group, for good. Because the first entry is a pure function of
//! the founding set, founders that found independently write identical logs: there is one
//! group, never two.
//!
//! **What a founder listens to.** While it waits, a founder takes consensus traffic only
//! from its founders: a leader of some other group with the same id (started beside this
//! one with other peers) could otherwise give it a log and make it a member there after
//! it told its founders it was fresh. Once it joins or holds state, it takes traffic from
//! every bonded member (all of them attested and holding the group key).
//!
//! A founder's answer counts only while its bond is up: one that went away may since have
//! joined something else, so it must answer again.
//!
//! [`Formation`]: super::PeerFrame::Formation
use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::raft::{Membership, NodeId};

/// Most founders in one founding set (a larger set is a configuration mistake).
pub(crate) const FOUNDERS_MAX: usize = 64;

/// Domain tag of the founding-set digest.
const FOUNDERS_DIGEST_DOMAIN: &[u8] = b"tessera/founders/v1";

/// What a member says about itself on every new bond (and again when it changes).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum FormationStatus {
    /// No state at all. `founders`: the digest of the founding set it would found with, or
    /// `None` when it only joins.
    Fresh { founders: Option<[u8; 32]> },
    /// It holds a configuration: it is in a group (it founded one or joined one).
    Formed,
}

/// The SHA-256 of a founding set: a domain tag, then every member's id in ascending order.
pub(crate) fn founders_digest(founders: &BTreeSet<NodeId>) -> [u8; 32] {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    ctx.update(FOUNDERS_DIGEST_DOMAIN);
    ctx.update(&(founders.len() as u64).to_le_bytes());
    for id in founders {
        ctx.update(&id.0.to_le_bytes());
    }
    let mut out = [0u8; 32];
    out.copy_from_slice(ctx.finish().as_ref());
    out
}

/// What this member intends.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Plan {
    /// Found with `founders` once all of them confirm `digest`.
    Found {
        founders: BTreeSet<NodeId>,
        digest: [u8; 32],
    },
    /// Join whatever group adds it; never found.
    Join,
    /// Holds state (founded, joined, or recovered from disk): formation is over.
    Formed,
    /// The rule the review found unsafe, kept only so that tests can show the harness
    /// catches its fork: found with the `expect` smallest ids among the fresh peers heard
    /// so far, and take anyone's log.
    #[cfg(test)]
    DangerousSmallestBonded {
        expect: usize,
        fresh: BTreeSet<NodeId>,
    },
}

/// Why a configured founding set cannot be used: the member only joins.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub(crate) enum FoundingSetError {
    #[error(
        "the founding set (this node and its {peers} bootstrap peers) has {size} members \
         but bootstrap_expect is {expect}: this node will only join an existing group"
    )]
    SizeMismatch {
        peers: usize,
        size: usize,
        expect: usize,
    },
    #[error("the founding set has {size} members, more than {FOUNDERS_MAX}")]
    TooLarge { size: usize },
}

/// Checks a configured founding set: `me` plus `peers`, of exactly `expect` members.
pub(crate) fn founding_set(
    me: NodeId,
    peers: impl IntoIterator<Item = NodeId>,
    expect: usize,
) -> Result<BTreeSet<NodeId>, FoundingSetError> {
    let mut founders: BTreeSet<NodeId> = peers.into_iter().collect();
    founders.insert(me);
    let size = founders.len();
    if size > FOUNDERS_MAX {
        return Err(FoundingSetError::TooLarge { size });
    }
    if size != expect {
        return Err(FoundingSetError::SizeMismatch {
            peers: size - 1,
            size,
            expect,
        });
    }
    Ok(founders)
}

/// What the worker should do after an input.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Decision {
    /// Nothing yet.
    Wait,
    /// Write the first configuration with these voters (every founder writes the same).
    Found(Membership),
}

/// One member's formation state. See the [module docs](self).
#[derive(Debug)]
pub(crate) struct Formation {
    me: NodeId,
    plan: Plan,
    /// What bonded founders said, cleared when their bond goes down.
    answers: BTreeMap<NodeId, FormationStatus>,
    /// Founders already reported as configured differently (logged once each).
    mismatched: BTreeSet<NodeId>,
}

impl Formation {
    /// A member that founds with `founders` (which must contain `me`) once they all
    /// confirm; `None`: one that only joins. `fresh`: whether the core holds no state.
    pub(crate) fn new(me: NodeId, founders: Option<BTreeSet<NodeId>>, fresh: bool) -> Self {
        let plan = match founders {
            _ if !fresh => Plan::Formed,
            Some(mut founders) => {
                founders.insert(me);
                let digest = founders_digest(&founders);
                Plan::Found { founders, digest }
            }
            None => Plan::Join,
        };
        Self {
            me,
            plan,
            answers: BTreeMap::new(),
            mismatched: BTreeSet::new(),
        }
    }

    /// What to tell a peer about this member.
    pub(crate) fn status(&self) -> FormationStatus {
        match &self.plan {
            Plan::Found { digest, .. } => FormationStatus::Fresh {
                founders: Some(*digest),
            },
            Plan::Join => FormationStatus::Fresh { founders: None },
            Plan::Formed => FormationStatus::Formed,
            #[cfg(test)]
            Plan::DangerousSmallestBonded { .. } => FormationStatus::Fresh { founders: None },
        }
    }

    /// Whether formation is over (this member holds state).
    pub(crate) fn is_formed(&self) -> bool {
        self.plan == Plan::Formed
    }

    /// Whether consensus traffic from `peer` may reach the core (see the module docs).
    pub(crate) fn accepts_raft_from(&self, peer: NodeId) -> bool {
        match &self.plan {
            Plan::Found { founders, .. } => founders.contains(&peer),
            Plan::Join | Plan::Formed => true,
            #[cfg(test)]
            Plan::DangerousSmallestBonded { .. } => true,
        }
    }

    /// The core now holds state (it founded, or took a founder's or a group's log).
    /// Returns whether that is news, so the worker tells its bonded peers.
    pub(crate) fn handle_formed(&mut self) -> bool {
        let news = self.plan != Plan::Formed;
        self.plan = Plan::Formed;
        self.answers.clear();
        news
    }

    /// A bond to `peer` went down: its answer no longer counts.
    pub(crate) fn handle_bond_down(&mut self, peer: NodeId) {
        self.answers.remove(&peer);
        #[cfg(test)]
        if let Plan::DangerousSmallestBonded { fresh, .. } = &mut self.plan {
            fresh.remove(&peer);
        }
    }

    /// `peer` (bonded now) said `status`. Ignored once formation is over.
    pub(crate) fn handle_status(&mut self, peer: NodeId, status: FormationStatus) -> Decision {
        #[cfg(test)]
        if let Plan::DangerousSmallestBonded { expect, fresh } = &mut self.plan {
            return match status {
                FormationStatus::Formed => {
                    self.plan = Plan::Join;
                    Decision::Wait
                }
                FormationStatus::Fresh { .. } => {
                    fresh.insert(peer);
                    let mut candidates = fresh.clone();
                    candidates.insert(self.me);
                    if candidates.len() < *expect {
                        return Decision::Wait;
                    }
                    let founders: BTreeSet<NodeId> = candidates.into_iter().take(*expect).collect();
                    if !founders.contains(&self.me) {
                        self.plan = Plan::Join;
                        return Decision::Wait;
                    }
                    Decision::Found(Membership::with_voters(founders))
                }
            };
        }
        let Plan::Found { founders, digest } = &self.plan else {
            return Decision::Wait;
        };
        if !founders.contains(&peer) || peer == self.me {
            // Only founders' answers decide; a joiner's or a stranger's do not.
            return Decision::Wait;
        }
        match status {
            FormationStatus::Formed => {
                tracing::info!(node = %self.me, founder = %peer, "a founder is already in a group: joining it instead of founding");
                self.plan = Plan::Join;
                self.answers.clear();
                return Decision::Wait;
            }
            FormationStatus::Fresh { founders: theirs } if theirs != Some(*digest) => {
                if self.mismatched.insert(peer) {
                    tracing::warn!(node = %self.me, founder = %peer, "this founder was configured with another founding set (bootstrap peers and bootstrap_expect must name the same members everywhere): not founding");
                }
            }
            FormationStatus::Fresh { .. } => {
                self.mismatched.remove(&peer);
            }
        }
        self.answers.insert(peer, status);
        self.decide()
    }

    /// Founds when every other founder's current answer is "fresh, same set".
    fn decide(&mut self) -> Decision {
        let Plan::Found { founders, digest } = &self.plan else {
            return Decision::Wait;
        };
        let confirmed = founders.iter().filter(|f| **f != self.me).all(|f| {
            self.answers.get(f)
                == Some(&FormationStatus::Fresh {
                    founders: Some(*digest),
                })
        });
        if !confirmed {
            return Decision::Wait;
        }
        let membership = Membership::with_voters(founders.iter().copied());
        Decision::Found(membership)
    }

    /// The unsafe rule (see `Plan::DangerousSmallestBonded`), for tests only.
    #[cfg(test)]
    pub(crate) fn dangerous_smallest_bonded(me: NodeId, expect: usize) -> Self {
        Self {
            me,
            plan: Plan::DangerousSmallestBonded {
                expect,
                fresh: BTreeSet::new(),
            },
            answers: BTreeMap::new(),
            mismatched: BTreeSet::new(),
        }
    }

    /// A founder whose set is itself alone founds at once.
    pub(crate) fn poll_initial(&mut self) -> Decision {
        self.decide()
    }
}

#[cfg(test)]
mod tests;
