//! Log replication: proposals, appends and their responses, commit, snapshots to followers.
use bytes::Bytes;

use super::message::MessageBody;
use super::progress::ProgressState;
use super::ready::{Event, Rejection, Role};
use super::types::{Entry, EntryPayload, Index, NodeId, Term};
use super::{PeerError, Raft, SafetyViolation, StepError};

impl Raft {
    /// Appends client commands (leader only). Returns the index of the first one and the
    /// term; the same outcome is also reported as an [`Event`]. The commands are committed
    /// only if these indexes are later applied with this term.
    pub fn propose(
        &mut self,
        commands: Vec<Bytes>,
        timestamp_ms: u64,
    ) -> Result<(Index, Term), Rejection> {
        let count = commands.len();
        let rejection = if self.role != Role::Leader {
            Some(Rejection::NotLeader {
                leader: self.leader,
            })
        } else if self.transfer_target.is_some() {
            Some(Rejection::TransferInProgress)
        } else if count > self.config.max_proposals_per_batch {
            Some(Rejection::TooManyProposals {
                count,
                max: self.config.max_proposals_per_batch,
            })
        } else {
            commands
                .iter()
                .find(|c| c.len() > self.config.max_proposal_bytes)
                .map(|c| Rejection::TooLarge {
                    bytes: c.len(),
                    max_bytes: self.config.max_proposal_bytes,
                })
        };
        if let Some(reason) = rejection {
            self.ready.events.push(Event::ProposalRejected {
                count,
                reason: reason.clone(),
            });
            return Err(reason);
        }
        // Nothing to append: where the next command would go (only a leader says so).
        if count == 0 {
            return Ok((self.log.last_index() + 1, self.term));
        }
        let timestamp_ms = timestamp_ms.max(self.last_timestamp_ms);
        let first_index = self.log.last_index() + 1;
        let entries = commands
            .into_iter()
            .enumerate()
            .map(|(i, data)| Entry {
                term: self.term,
                index: first_index + i as Index,
                timestamp_ms,
                payload: EntryPayload::Command(data),
            })
            .collect();
        self.append_local(entries);
        self.ready.events.push(Event::Proposed {
            first_index,
            count,
            term: self.term,
        });
        self.bcast_append(false);
        Ok((first_index, self.term))
    }

    pub(super) fn handle_append(
        &mut self,
        from: NodeId,
        prev_index: Index,
        prev_term: Term,
        entries: Vec<Entry>,
        leader_commit: Index,
    ) -> Result<(), StepError> {
        let malformed = |reason| -> StepError {
            PeerError::Malformed {
                kind: "append",
                from,
                reason,
            }
            .into()
        };
        let mut last_term = prev_term;
        for (expected, e) in (prev_index + 1..).zip(entries.iter()) {
            if e.index != expected {
                return Err(malformed("entries are not contiguous after prev_index"));
            }
            if e.term < last_term || e.term > self.term {
                return Err(malformed("entry terms out of order"));
            }
            last_term = e.term;
        }

        if prev_index < self.commit {
            // Everything up to our commit index is settled; tell the leader where we are.
            let index = self.commit;
            self.respond_append(from, true, index, 0, 0);
            return Ok(());
        }
        if !self.log.matches(prev_index, prev_term) {
            let hint = prev_index.min(self.log.last_index());
            let (hint_index, hint_term) = self.log.find_conflict_by_term(hint, prev_term);
            self.respond_append(from, false, prev_index, hint_index, hint_term);
            return Ok(());
        }
        let last_new = prev_index + entries.len() as Index;
        // Skip what we already have; the first entry that differs and everything after it
        // replaces our suffix (Raft §5.3).
        let first_new = entries
            .iter()
            .position(|e| !self.log.matches(e.index, e.term));
        if let Some(pos) = first_new {
            let conflict = entries[pos].index;
            if conflict <= self.commit {
                return Err(SafetyViolation::CommittedConflict {
                    from,
                    index: conflict,
                }
                .into());
            }
            self.append_local(entries.into_iter().skip(pos).collect());
        }
        self.commit_to(leader_commit.min(last_new));
        self.respond_append(from, true, last_new, 0, 0);
        Ok(())
    }

    fn respond_append(
        &mut self,
        to: NodeId,
        success: bool,
        index: Index,
        hint_index: Index,
        hint_term: Term,
    ) {
        self.send_after_persist(
            to,
            self.term,
            MessageBody::AppendResponse {
                success,
                index,
                hint_index,
                hint_term,
            },
        );
    }

    pub(super) fn handle_append_response(
        &mut self,
        from: NodeId,
        success: bool,
        index: Index,
        hint_index: Index,
        hint_term: Term,
    ) {
        let last_index = self.log.last_index();
        let Some(pr) = self.progress.get_mut(&from) else {
            return;
        };
        pr.recent_active = true;
        if !success {
            let rejected = index;
            let stale = match pr.state {
                ProgressState::Replicate => rejected <= pr.match_index,
                ProgressState::Probe => rejected + 1 != pr.next_index,
                ProgressState::Snapshot { .. } => true,
            };
            if stale {
                return;
            }
            let next_probe = if hint_term > 0 {
                self.log.find_conflict_by_term(hint_index, hint_term).0
            } else {
                hint_index
            };
            let pr = self
                .progress
                .get_mut(&from)
                .expect("progress checked above");
            pr.become_probe();
            pr.next_index = rejected.min(next_probe + 1).max(pr.match_index + 1);
            self.maybe_send_append(from, true);
            return;
        }
        let updated = pr.update(index);
        match pr.state {
            ProgressState::Probe if updated => pr.become_replicate(),
            ProgressState::Snapshot { pending_index } if pr.match_index >= pending_index => {
                pr.become_probe();
                pr.become_replicate();
            }
            _ => {}
        }
        let caught_up = pr.match_index == last_index;
        // A commit advance broadcasts to everyone; otherwise keep this follower's pipe full.
        if !(updated && self.maybe_commit()) {
            self.maybe_send_append(from, false);
        }
        if caught_up && self.transfer_target == Some(from) {
            self.send(from, MessageBody::TimeoutNow);
        }
        if updated {
            self.maybe_promote_learner();
        }
    }

    pub(super) fn handle_heartbeat_response(&mut self, from: NodeId, read_seq: u64) {
        let last_index = self.log.last_index();
        let Some(pr) = self.progress.get_mut(&from) else {
            return;
        };
        pr.recent_active = true;
        pr.probe_sent = false;
        pr.read_ack = pr.read_ack.max(read_seq);
        if pr.match_index < last_index {
            // Appends in the window may have been lost (or the follower restarted): let one
            // more go out. If the follower lacks what precedes it, its rejection sends us
            // back to probing; without this a full window of lost appends stalls forever.
            if pr.state == ProgressState::Replicate {
                pr.inflight.pop_front();
            }
            self.maybe_send_append(from, true);
        }
        self.process_reads();
    }

    /// Sends `to` what it is missing, as far as flow control allows. With `allow_empty`, an
    /// empty append goes out even with nothing new (to probe or to carry the commit index).
    pub(super) fn maybe_send_append(&mut self, to: NodeId, allow_empty: bool) -> bool {
        let mut sent = false;
        loop {
            let Some(pr) = self.progress.get(&to) else {
                return sent;
            };
            let blocked = match pr.state {
                ProgressState::Snapshot { .. } => true,
                ProgressState::Probe => pr.probe_sent,
                ProgressState::Replicate => pr.inflight.len() >= self.config.max_inflight_messages,
            };
            if blocked {
                return sent;
            }
            let next = pr.next_index;
            let state = pr.state;
            let Some(prev_term) = self.log.term(next - 1) else {
                // The follower needs entries we compacted away.
                self.send_snapshot(to);
                return true;
            };
            let entries = self.log.slice(
                next,
                self.log.last_index() + 1,
                self.config.max_entries_per_message,
                self.config.max_bytes_per_message,
            );
            if entries.is_empty() && (sent || !allow_empty) {
                return sent;
            }
            let last = entries.last().map(|e| e.index);
            let pr = self.progress.get_mut(&to).expect("progress checked above");
            match pr.state {
                ProgressState::Replicate => {
                    if let Some(last) = last {
                        pr.next_index = last + 1;
                        pr.inflight.push_back(last);
                    }
                }
                _ => pr.probe_sent = true,
            }
            let commit = self.commit;
            self.send(
                to,
                MessageBody::Append {
                    prev_index: next - 1,
                    prev_term,
                    entries,
                    commit,
                },
            );
            sent = true;
            if state != ProgressState::Replicate || last.is_none() {
                return sent;
            }
        }
    }

    fn send_snapshot(&mut self, to: NodeId) {
        let Some(snapshot) = self.snapshot.clone() else {
            return;
        };
        if let Some(pr) = self.progress.get_mut(&to) {
            pr.become_snapshot(snapshot.meta.index);
        }
        self.send(to, MessageBody::InstallSnapshot { snapshot });
    }

    pub(super) fn bcast_append(&mut self, allow_empty: bool) {
        let peers: Vec<NodeId> = self.progress.keys().copied().collect();
        for peer in peers {
            self.maybe_send_append(peer, allow_empty);
        }
    }

    pub(super) fn bcast_heartbeat(&mut self) {
        let read_seq = self.read_seq;
        let msgs: Vec<(NodeId, Index)> = self
            .progress
            .iter()
            .map(|(id, p)| (*id, p.match_index.min(self.commit)))
            .collect();
        for (to, commit) in msgs {
            self.send(to, MessageBody::Heartbeat { commit, read_seq });
        }
    }

    /// Advances the commit index to what a quorum of the voters holds, counting only
    /// entries of the current term (Raft §5.4.2). Returns true when it advanced.
    pub(super) fn maybe_commit(&mut self) -> bool {
        let view = self.quorum_view();
        let quorum_index = view.quorum_index(|id| {
            if id == self.id {
                self.persisted
            } else {
                self.progress.get(&id).map_or(0, |p| p.match_index)
            }
        });
        drop(view);
        if quorum_index <= self.commit || self.log.term(quorum_index) != Some(self.term) {
            return false;
        }
        self.commit_to(quorum_index);
        self.on_commit_advanced();
        true
    }

    fn on_commit_advanced(&mut self) {
        if self.commit >= self.term_start_index && !self.reads_before_commit.is_empty() {
            let ids = std::mem::take(&mut self.reads_before_commit);
            for id in ids {
                self.start_read(id);
            }
        }
        // A leader removed (or demoted) by a now-committed configuration steps down.
        if !self.membership.is_voter(self.id) && self.commit >= self.membership_index {
            self.become_follower(self.term, None);
            return;
        }
        self.bcast_append(true);
    }
}
