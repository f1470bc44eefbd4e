//! The leader's other duties: read-index, leadership transfer, membership changes and
//! promotion of caught-up learners.
use super::membership::MembershipChange;
use super::message::MessageBody;
use super::node::PendingRead;
use super::ready::{Event, ReadState, Rejection, Role};
use super::types::{Entry, EntryPayload, NodeId};
use super::Raft;

impl Raft {
    pub(super) fn read_index(&mut self, id: u64) {
        if self.role != Role::Leader {
            let reason = Rejection::NotLeader {
                leader: self.leader,
            };
            self.ready.events.push(Event::ReadRejected { id, reason });
            return;
        }
        let waiting = self.pending_reads.len() + self.reads_before_commit.len();
        if waiting >= self.config.max_pending_reads {
            let reason = Rejection::TooManyReads {
                max: self.config.max_pending_reads,
            };
            self.ready.events.push(Event::ReadRejected { id, reason });
            return;
        }
        if self.commit < self.term_start_index {
            // Until our no-op commits we do not know the true commit index (thesis §6.4).
            self.reads_before_commit.push(id);
            return;
        }
        self.start_read(id);
    }

    /// Records the read point and starts a heartbeat round that must reach a quorum.
    pub(super) fn start_read(&mut self, id: u64) {
        self.read_seq += 1;
        self.pending_reads.push_back(PendingRead {
            id,
            index: self.commit,
            seq: self.read_seq,
        });
        self.bcast_heartbeat();
        self.process_reads();
    }

    /// Releases, in order, every read whose round a quorum has acknowledged.
    pub(super) fn process_reads(&mut self) {
        while let Some(front) = self.pending_reads.front().copied() {
            let view = self.quorum_view();
            let confirmed = view.is_quorum(|id| {
                id == self.id
                    || self
                        .progress
                        .get(&id)
                        .is_some_and(|p| p.read_ack >= front.seq)
            });
            drop(view);
            if !confirmed {
                return;
            }
            self.pending_reads.pop_front();
            self.ready.read_states.push(ReadState {
                id: front.id,
                index: front.index,
            });
        }
    }

    pub(super) fn transfer_leadership(&mut self, to: NodeId) {
        let rejection = if self.role != Role::Leader {
            Some(Rejection::NotLeader {
                leader: self.leader,
            })
        } else if !self.membership.is_voter(to) {
            Some(Rejection::NotAVoter(to))
        } else if self.transfer_target.is_some() {
            Some(Rejection::TransferInProgress)
        } else {
            None
        };
        if let Some(reason) = rejection {
            self.ready
                .events
                .push(Event::TransferRejected { to, reason });
            return;
        }
        if to == self.id {
            return;
        }
        self.transfer_target = Some(to);
        // The transfer is abandoned if it has not finished within an election timeout.
        self.election_elapsed = 0;
        if self.progress.get(&to).map(|p| p.match_index) == Some(self.log.last_index()) {
            self.send(to, MessageBody::TimeoutNow);
        } else {
            self.maybe_send_append(to, true);
        }
    }

    /// Why a membership change cannot start now, if it cannot.
    fn membership_change_blocked(&self) -> Option<Rejection> {
        if self.role != Role::Leader {
            return Some(Rejection::NotLeader {
                leader: self.leader,
            });
        }
        if self.transfer_target.is_some() {
            return Some(Rejection::TransferInProgress);
        }
        if self.membership_index > self.commit {
            return Some(Rejection::MembershipChangePending);
        }
        // Ongaro's single-server fix: a new leader must commit an entry of its own term
        // before changing the configuration.
        if self.commit < self.term_start_index {
            return Some(Rejection::LeaderNotReady);
        }
        None
    }

    pub(super) fn change_membership(&mut self, change: MembershipChange) {
        if let Some(reason) = self.membership_change_blocked() {
            self.ready
                .events
                .push(Event::MembershipChangeRejected { change, reason });
            return;
        }
        let next = match self.membership.apply(change) {
            Ok(next) => next,
            Err(e) => {
                self.ready.events.push(Event::MembershipChangeRejected {
                    change,
                    reason: e.into(),
                });
                return;
            }
        };
        let index = self.log.last_index() + 1;
        self.append_local(vec![Entry {
            term: self.term,
            index,
            timestamp_ms: self.last_timestamp_ms,
            payload: EntryPayload::Membership(next),
        }]);
        self.ready
            .events
            .push(Event::MembershipChangeProposed { change, index });
        self.bcast_append(false);
    }

    /// Whether `id` answers this leader now. Silent: missed a whole round, or not heard
    /// from yet in this one; a voter whose bond is down (the transport said so) is silent
    /// at once. A new leader starts every progress as recently active (for check-quorum),
    /// so a member also counts as silent until it has acknowledged an append of this
    /// leader (`match_index > 0`): a voter that died just before the election must not
    /// look alive for the new leader's first round.
    fn answering_now(&self, id: NodeId) -> bool {
        id == self.id
            || (!self.unreachable.contains(&id)
                && self
                    .progress
                    .get(&id)
                    .is_some_and(|p| p.recent_active && p.silent_rounds == 0 && p.match_index > 0))
    }

    /// Whether this leader may remove `victim` now without leaving the group unable to
    /// commit: the voters that remain, counting only those that answer, still make a
    /// quorum of the configuration without it. A member asking to leave while another
    /// voter is dead waits for the dead one to be replaced first. `false` when not leading.
    pub fn can_remove_safely(&self, victim: NodeId) -> bool {
        if self.role != Role::Leader {
            return false;
        }
        let mut remaining = self.membership.clone();
        remaining.voters.remove(&victim);
        remaining.learners.remove(&victim);
        remaining.observers.remove(&victim);
        let answering = remaining
            .voters
            .iter()
            .filter(|v| self.answering_now(**v))
            .count();
        !remaining.voters.is_empty() && answering >= remaining.quorum()
    }

    /// Promotes the first caught-up, responsive learner while voters are below the limit,
    /// but never while a voter is silent: a learner that replaces a dead voter (a TD that
    /// restarted as a new identity) waits until that voter is removed, so the voter count
    /// never grows while dead voters still count towards it. A voter silent for
    /// `replace_after_rounds` election timeouts is removed first, when a caught-up learner
    /// is waiting (or more than three voters remain) and the voters that remain and answer
    /// still form a quorum.
    pub(super) fn maybe_promote_learner(&mut self) {
        const VOTERS_KEPT_WITHOUT_REPLACEMENT: usize = 3;
        if !self.config.auto_promote || self.membership_change_blocked().is_some() {
            return;
        }
        let last_index = self.log.last_index();
        let lag = self.config.promotion_lag_entries;
        // Caught up, and it said so: a learner this leader has never had an append
        // acknowledged by (its progress starts "active" at election, and a short log
        // makes anyone look caught up) may be dead, and promoting it would make a voter
        // the group waits for.
        let candidate = self.membership.learners.iter().copied().find(|id| {
            self.progress.get(id).is_some_and(|p| {
                p.recent_active && p.match_index > 0 && p.match_index + lag >= last_index
            })
        });
        let silent_rounds = |id: &NodeId| -> u64 {
            if *id == self.id {
                return 0;
            }
            self.progress.get(id).map_or(u64::MAX, |p| p.silent_rounds)
        };
        let answering_now = |id: &NodeId| self.answering_now(*id);
        let silent: Vec<NodeId> = self
            .membership
            .voters
            .iter()
            .copied()
            .filter(|v| !answering_now(v))
            .collect();
        if silent.is_empty() {
            if let Some(candidate) = candidate {
                if self.membership.voters.len() < self.config.max_voters {
                    self.change_membership(MembershipChange::Promote(candidate));
                }
            }
            return;
        }
        // A dead voter is removed for a caught-up learner waiting to replace it, or, with
        // none waiting, when more than `VOTERS_KEPT_WITHOUT_REPLACEMENT` voters remain: a
        // replacement promoted in the round its predecessor died (when the dead one still
        // looked alive) must not leave that one voting until `removal_timeout`. Removing a
        // dead voter never lowers how many more failures the group survives.
        let replacing =
            candidate.is_some() || self.membership.voters.len() > VOTERS_KEPT_WITHOUT_REPLACEMENT;
        if !replacing {
            return;
        }
        let replace_after = self.config.replace_after_rounds;
        if replace_after == 0 {
            return;
        }
        let dead = silent
            .iter()
            .copied()
            .filter(|v| silent_rounds(v) >= replace_after)
            .max_by_key(|v| silent_rounds(v));
        let Some(dead) = dead else {
            return;
        };
        // Safe only if the voters left, counting those that answer, still make a quorum.
        let mut remaining = self.membership.clone();
        remaining.voters.remove(&dead);
        let answering = remaining.voters.iter().filter(|v| answering_now(v)).count();
        if !remaining.voters.is_empty() && answering >= remaining.quorum() {
            self.change_membership(MembershipChange::Remove(dead));
        }
    }
}
