//! Role changes, elections (with pre-vote) and the passage of logical time.
use super::message::MessageBody;
use super::progress::{Progress, ProgressState};
use super::ready::{Event, Rejection, Role};
use super::types::{Entry, EntryPayload, NodeId, Term};
use super::Raft;

/// How an election starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Campaign {
    /// Ask first, without changing terms (thesis §9.6).
    PreVote,
    /// A real election in `term + 1`.
    Election,
    /// A real election on the leader's request: voters ignore their leader lease.
    Transfer,
}

impl Raft {
    pub(super) fn become_follower(&mut self, term: Term, leader: Option<super::NodeId>) {
        if term > self.term {
            self.term = term;
            self.vote = None;
        }
        if self.role == Role::Leader {
            self.reject_reads(Rejection::LeadershipLost);
            self.progress.clear();
            if let Some(to) = self.transfer_target.take() {
                self.ready.events.push(Event::TransferAborted { to });
            }
        }
        self.role = Role::Follower;
        self.leader = leader;
        self.votes.clear();
        self.reset_election_timer();
    }

    pub(super) fn campaign(&mut self, kind: Campaign) {
        if !self.promotable() {
            return;
        }
        let vote_term = match kind {
            Campaign::PreVote => {
                self.role = Role::PreCandidate;
                self.leader = None;
                self.term + 1
            }
            Campaign::Election | Campaign::Transfer => {
                if self.role == Role::Leader {
                    return;
                }
                self.term += 1;
                self.vote = Some(self.id);
                self.role = Role::Candidate;
                self.leader = None;
                self.term
            }
        };
        self.votes.clear();
        self.reset_election_timer();
        if self.poll(self.id, true) {
            return; // a single-voter group wins at once
        }
        let last_index = self.log.last_index();
        let last_term = self.log.last_term();
        let voters: Vec<NodeId> = self
            .membership
            .voters
            .iter()
            .copied()
            .filter(|v| *v != self.id)
            .collect();
        for voter in voters {
            match kind {
                Campaign::PreVote => self.send_with_term(
                    voter,
                    vote_term,
                    MessageBody::PreVote {
                        last_index,
                        last_term,
                    },
                ),
                // Our vote for ourselves must be durable before anyone can count on it.
                Campaign::Election | Campaign::Transfer => self.send_after_persist(
                    voter,
                    vote_term,
                    MessageBody::Vote {
                        last_index,
                        last_term,
                        transfer: kind == Campaign::Transfer,
                    },
                ),
            }
        }
    }

    /// Records a vote and acts on the outcome; returns true when the election was won.
    pub(super) fn poll(&mut self, from: NodeId, granted: bool) -> bool {
        self.votes.insert(from, granted);
        let view = self.quorum_view();
        let won = view.is_quorum(|id| self.votes.get(&id) == Some(&true));
        let lost = view.is_quorum(|id| self.votes.get(&id) == Some(&false));
        drop(view);
        if won {
            match self.role {
                Role::PreCandidate => self.campaign(Campaign::Election),
                Role::Candidate => self.become_leader(),
                _ => {}
            }
            true
        } else {
            if lost {
                self.become_follower(self.term, None);
            }
            false
        }
    }

    pub(super) fn handle_vote_request(
        &mut self,
        from: NodeId,
        term: Term,
        pre_vote: bool,
        last_index: u64,
        last_term: Term,
    ) {
        let can_vote = self.vote == Some(from)
            || (self.vote.is_none() && self.leader.is_none())
            || (pre_vote && term > self.term);
        let granted = can_vote && self.log.is_up_to_date(last_index, last_term);
        if pre_vote {
            // A granted pre-vote echoes the candidate's future term; a refusal carries ours.
            let reply_term = if granted { term } else { self.term };
            self.send_after_persist(from, reply_term, MessageBody::PreVoteResponse { granted });
        } else {
            if granted {
                self.vote = Some(from);
                self.election_elapsed = 0;
            }
            self.send_after_persist(from, self.term, MessageBody::VoteResponse { granted });
        }
    }

    fn become_leader(&mut self) {
        debug_assert_eq!(self.role, Role::Candidate);
        self.role = Role::Leader;
        self.leader = Some(self.id);
        self.votes.clear();
        self.heartbeat_elapsed = 0;
        self.election_elapsed = 0;
        self.transfer_target = None;
        self.progress.clear();
        self.sync_progress_with_membership();
        // The no-op of Raft §8: committing it commits every earlier entry and lets
        // read-index and membership changes proceed.
        let entry = Entry {
            term: self.term,
            index: self.log.last_index() + 1,
            timestamp_ms: self.last_timestamp_ms,
            payload: EntryPayload::Noop,
        };
        self.term_start_index = entry.index;
        self.append_local(vec![entry]);
        self.bcast_append(false);
        self.maybe_commit();
    }

    /// Gives every member (but us) a progress entry and drops those that left.
    pub(super) fn sync_progress_with_membership(&mut self) {
        let members: Vec<NodeId> = self
            .membership
            .members()
            .filter(|m| *m != self.id)
            .collect();
        self.progress.retain(|id, _| members.contains(id));
        let next = self.log.last_index() + 1;
        for member in members {
            self.progress.entry(member).or_insert_with(|| {
                let mut p = Progress::new(next);
                p.recent_active = true;
                p
            });
        }
    }

    pub(super) fn tick(&mut self) {
        if self.role == Role::Leader {
            self.tick_leader();
            return;
        }
        self.election_elapsed += 1;
        if self.promotable() && self.election_elapsed >= self.randomized_election_ticks {
            let kind = if self.config.pre_vote {
                Campaign::PreVote
            } else {
                Campaign::Election
            };
            self.campaign(kind);
        }
    }

    fn tick_leader(&mut self) {
        self.heartbeat_elapsed += 1;
        self.election_elapsed += 1;
        if self.election_elapsed >= self.config.election_ticks {
            self.election_elapsed = 0;
            if self.config.check_quorum {
                let view = self.quorum_view();
                let active = view.is_quorum(|id| {
                    id == self.id || self.progress.get(&id).is_some_and(|p| p.recent_active)
                });
                drop(view);
                if !active {
                    self.become_follower(self.term, None);
                    return;
                }
            }
            for p in self.progress.values_mut() {
                p.silent_rounds = if p.recent_active {
                    0
                } else {
                    p.silent_rounds.saturating_add(1)
                };
                p.recent_active = false;
            }
            if let Some(to) = self.transfer_target.take() {
                self.ready.events.push(Event::TransferAborted { to });
            }
        }
        let election_ticks = self.config.election_ticks;
        let mut stuck = Vec::new();
        for (id, p) in self.progress.iter_mut() {
            if let ProgressState::Snapshot { .. } = p.state {
                p.snapshot_ticks += 1;
                if p.snapshot_ticks > election_ticks {
                    // The snapshot was probably lost on the way: start over.
                    p.become_probe();
                    stuck.push(*id);
                }
            }
        }
        for id in stuck {
            self.maybe_send_append(id, true);
        }
        if self.heartbeat_elapsed >= self.config.heartbeat_ticks {
            self.heartbeat_elapsed = 0;
            self.bcast_heartbeat();
        }
        self.maybe_promote_learner();
    }
}
