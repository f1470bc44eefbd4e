//! Each node's member driven as the worker drives it: one input at a time, then every
//! action it asks for carried out (frames sent, writes queued, entries applied to the
//! machine, snapshots taken, requests answered), with the checks run on each step.
use bytes::Bytes;

use super::checks::Violation;
use super::node::{Pending, Reply};
use super::world::World;
use crate::groups::member::{Action, Member, Now, Reply as MemberReply};
use crate::groups::worker::RequestError;
use crate::machine::{
    ApplyContext, ClientId, KvQuery, KvQueryResult, SessionCommand, SessionOutput, StateMachine,
};
use crate::raft::{EntryPayload, Event, Index, NodeId, Raft, Role};
use crate::storage::Storage;

impl World {
    /// Gives node `node`'s member one input and carries out what it asks for.
    pub(super) fn drive(
        &mut self,
        node: usize,
        input: impl FnOnce(&mut Member, Now),
    ) -> Result<(), Violation> {
        if self.paused.contains_key(&node) {
            return Ok(()); // a paused process takes no input (an operator's command is lost)
        }
        let now = self.now_of(node);
        let id = self.ids[node];
        let n = &mut self.nodes[node];
        let Some(member) = n.member.as_mut() else {
            return Ok(());
        };
        n.step_membership = Some(member.raft().membership().clone());
        let (founded, refused, misuses) = (
            member.founded(),
            member.inputs_refused(),
            member.core_misuses(),
        );
        input(member, now);
        if member.inputs_refused() > refused {
            return Err(Violation {
                property: "correct peers never send invalid messages",
                detail: format!("{id}'s core refused an input (see the log)"),
            });
        }
        if member.core_misuses() > misuses {
            return Err(Violation {
                property: "the member never misuses its core",
                detail: format!("{id}'s core refused an input as misuse (see the log)"),
            });
        }
        if let Some(reason) = member.stopped() {
            return Err(Violation {
                property: "members never stop",
                detail: format!("{id} stopped: {reason}"),
            });
        }
        if let Err(detail) = member.raft().validate() {
            return Err(Violation {
                property: "core state is consistent",
                detail: format!("{id}: {detail}"),
            });
        }
        if !founded && member.founded() {
            let voters = member.raft().membership().voters.clone();
            self.stats.foundings += 1;
            self.note(format!("{id} founds the group with {voters:?}"));
        }
        self.drain(node)?;
        self.finish_graceful_stop(node)
    }

    /// A member asked to stop gracefully goes down once it no longer hands leadership
    /// over (as the worker does), and restarts from its disk later.
    fn finish_graceful_stop(&mut self, node: usize) -> Result<(), Violation> {
        let now = self.now_of(node);
        let n = &self.nodes[node];
        if !n.stopping || n.member.as_ref().is_some_and(|m| m.handing_over(now)) {
            return Ok(());
        }
        self.go_down(node, true)?;
        let back = self.rng.range(50, 2000);
        self.schedule(back, super::events::EventKind::Restart { node });
        Ok(())
    }

    /// Carries out node `node`'s actions, as the worker does, until there are none.
    pub(super) fn drain(&mut self, node: usize) -> Result<(), Violation> {
        let id = self.ids[node];
        loop {
            let Some(action) = self.nodes[node]
                .member
                .as_mut()
                .and_then(Member::poll_action)
            else {
                break;
            };
            match action {
                Action::Send { to, frame } => self.send_frame(id, to, frame),
                Action::Write { batch, then } => self.write(node, batch, then)?,
                Action::Install(snapshot) => {
                    self.stats.snapshots_installed += 1;
                    if let Err(e) = self.nodes[node].machine.restore(&snapshot.data) {
                        return Err(Violation {
                            property: "snapshots restore",
                            detail: format!("{id} could not restore a snapshot: {e}"),
                        });
                    }
                }
                Action::Apply(entry) => {
                    self.checkers.on_apply(id, &entry)?;
                    let output = match &entry.payload {
                        EntryPayload::Command(data) => {
                            let ctx =
                                ApplyContext::new(entry.index, entry.term, entry.timestamp_ms);
                            let command: SessionCommand<crate::machine::KvCommand> =
                                postcard::from_bytes(data).map_err(|e| Violation {
                                    property: "committed commands decode",
                                    detail: format!(
                                        "{id}: entry {} does not decode: {e}",
                                        entry.index
                                    ),
                                })?;
                            let output = self.apply_command(node, command, &ctx)?;
                            Some(Bytes::from(
                                postcard::to_allocvec(&output).expect("outputs encode"),
                            ))
                        }
                        _ => None,
                    };
                    if let Some(member) = self.nodes[node].member.as_mut() {
                        member.handle_applied(entry.index, entry.term, output);
                    }
                }
                Action::Serve(request) => {
                    let pending = self.nodes[node].requests.remove(&request);
                    if let Some(Pending {
                        waiter,
                        read_key: Some(key),
                    }) = pending
                    {
                        let value = match self.nodes[node].machine.query(&KvQuery::Get { key }) {
                            KvQueryResult::Get { value } => value,
                            _ => None,
                        };
                        self.reply(waiter, Reply::Read(value));
                    }
                }
                Action::TakeSnapshot { index } => self.take_snapshot(node, index)?,
                Action::Answer {
                    id: request,
                    result,
                } => {
                    if let Some(pending) = self.nodes[node].requests.remove(&request) {
                        let reply = self.reply_of(id, result)?;
                        self.reply(pending.waiter, reply);
                    }
                }
                Action::Observe(event) => self.on_event(node, event)?,
                Action::DisconnectForeign(peer) => {
                    // The bond ends, and the handshake refuses it from now on.
                    self.stats.foreign_disconnects += 1;
                    self.foreign.insert((id, peer));
                    self.foreign.insert((peer, id));
                    self.update_reachability();
                }
            }
        }
        self.after_apply(node)
    }

    /// What a client hears of a member's answer.
    fn reply_of(
        &self,
        id: NodeId,
        result: Result<MemberReply, RequestError>,
    ) -> Result<Reply, Violation> {
        Ok(match result {
            Ok(MemberReply::Output(bytes)) => {
                Reply::Output(postcard::from_bytes(&bytes).map_err(|e| Violation {
                    property: "outputs decode",
                    detail: format!("{id}: {e}"),
                })?)
            }
            Ok(other) => {
                return Err(Violation {
                    property: "answers match requests",
                    detail: format!("{id} answered a client command with {other:?}"),
                })
            }
            Err(RequestError::NoLeader | RequestError::Busy) => Reply::NotLeader(None),
            // May or may not apply: the client sends the same (client, seq) again.
            Err(RequestError::Unknown | RequestError::Stopped(_)) => Reply::Retry,
            Err(RequestError::Refused(why)) => {
                return Err(Violation {
                    property: "valid client requests are never refused",
                    detail: format!("{id} refused one: {why}"),
                })
            }
        })
    }

    /// The member asked for a snapshot at `index` (its applied index): taken from the
    /// machine at once; the durable log is compacted too when it holds the prefix.
    fn take_snapshot(&mut self, node: usize, index: Index) -> Result<(), Violation> {
        let id = self.ids[node];
        let data = self.nodes[node].machine.snapshot().map_err(|e| Violation {
            property: "snapshots encode",
            detail: format!("{id}: {e}"),
        })?;
        let n = &mut self.nodes[node];
        let Some(member) = n.member.as_mut() else {
            return Ok(());
        };
        if !member.handle_snapshot_taken(index, Some(Bytes::from(data))) {
            return Ok(());
        }
        // The compacted prefix is durable (applied <= persisted): store the snapshot and
        // drop the prefix from the durable log too.
        if let Some(snapshot) = member.raft().snapshot() {
            if snapshot.meta.index <= n.durable.last_index() {
                n.durable.compact(snapshot).map_err(|e| Violation {
                    property: "compaction",
                    detail: format!("{id}: durable compaction failed: {e}"),
                })?;
            }
        }
        Ok(())
    }

    fn on_event(&mut self, node: usize, event: Event) -> Result<(), Violation> {
        let id = self.ids[node];
        match event {
            Event::StateChanged {
                role: Role::Leader,
                term,
                ..
            } => {
                self.checkers.on_leader(id, term)?;
                self.checkers.on_leader_log(id, term)?;
                self.note(format!("{id} is leader of term {term}"));
            }
            Event::MembershipChanged { membership, index } => {
                if self.options.verbose {
                    self.note(format!(
                        "{id} configuration from {index}: voters {:?}",
                        membership.voters
                    ));
                }
                let leader_commit = self.nodes[node]
                    .raft()
                    .filter(|r| r.role() == Role::Leader)
                    .map(Raft::commit_index);
                self.checkers
                    .on_membership(id, index, &membership, leader_commit)?;
            }
            Event::MembershipChangeProposed { change, index } => {
                self.stats.membership_changes += 1;
                if !self.operator_acting {
                    self.stats.automatic_changes += 1;
                }
                self.note(format!("{id} proposes {change:?} at {index}"));
            }
            _ => {}
        }
        Ok(())
    }

    /// Commit bookkeeping and the durability check after a node's actions.
    fn after_apply(&mut self, node: usize) -> Result<(), Violation> {
        let id = self.ids[node];
        let Some(raft) = self.nodes[node].raft() else {
            return Ok(());
        };
        let commit = raft.commit_index();
        let is_leader = raft.role() == Role::Leader;
        let term = raft.term();
        if commit > self.nodes[node].last_commit_seen {
            self.nodes[node].last_commit_seen = commit;
            self.checkers.on_commit(id, term, commit)?;
            if is_leader {
                self.check_durable_quorum(node, commit)?;
            }
        }
        Ok(())
    }

    /// Durability: an entry a leader counts as committed is on stable storage of a
    /// majority of its voters (Raft §5.3 with the persistence rule of Figure 2).
    fn check_durable_quorum(&self, node: usize, commit: u64) -> Result<(), Violation> {
        let Some(raft) = self.nodes[node].raft() else {
            return Ok(());
        };
        #[cfg(test)]
        if self.options.dangerous_reference_quorum {
            return Ok(());
        }
        let Some(term) = raft.term_at(commit) else {
            return Ok(());
        };
        let on_disk = |v: &NodeId| {
            // An identity that is gone counts with the disk it had when it died: what it
            // acknowledged was durable then, and it never votes again.
            let store = match self.slot(*v) {
                Some(slot) => &self.nodes[slot].durable,
                None => match self.retired_disks.get(v) {
                    Some(disk) => disk,
                    None => return false,
                },
            };
            store.snapshot_meta().is_some_and(|m| m.index >= commit)
                || store
                    .entries(commit, commit + 1)
                    .is_ok_and(|e| e.first().is_some_and(|e| e.term == term))
        };
        // The leader counted under the configuration in force when it took the input
        // that advanced its commit (see `SimNode::step_membership`); without a step (a
        // restart or a founding replays no count) it is the current one.
        let counted = self.nodes[node]
            .step_membership
            .as_ref()
            .unwrap_or_else(|| raft.membership());
        let durable = counted.voters.iter().filter(|v| on_disk(v)).count();
        if durable >= counted.quorum() {
            return Ok(());
        }
        Err(Violation {
            property: "durability of committed entries",
            detail: format!(
                "{} committed {commit} (term {term}) but only {durable} of the {} voters it counted ({:?}) have it on disk",
                self.ids[node],
                counted.voters.len(),
                counted.voters,
            ),
        })
    }

    /// Applies a client command on `node`'s machine, checking exactly-once and counting
    /// the sessions the table dropped (once per index, on the first node to apply it).
    fn apply_command(
        &mut self,
        node: usize,
        command: SessionCommand<crate::machine::KvCommand>,
        ctx: &ApplyContext<'_>,
    ) -> Result<SessionOutput<crate::machine::KvOutput>, Violation> {
        let (client, seq) = (command.client, command.seq);
        let machine = &mut self.nodes[node].machine;
        let session_known = machine.session(client).is_some();
        let count_drops = ctx.index > self.session_drops_counted_through;
        let before: Vec<(ClientId, crate::machine::SessionInfo)> = if count_drops {
            self.client_ids
                .iter()
                .filter_map(|id| machine.session(*id).map(|info| (*id, info)))
                .collect()
        } else {
            Vec::new()
        };
        let output = machine.apply(command, ctx);
        if count_drops {
            self.session_drops_counted_through = ctx.index;
            let clock_ms = machine.clock_ms();
            let ttl_ms = self.session_config.session_ttl_ms;
            for (id, info) in before {
                if id == client || machine.session(id).is_some() {
                    continue;
                }
                if ttl_ms.is_some_and(|ttl_ms| clock_ms - info.last_seen_ms > ttl_ms) {
                    self.stats.sessions_expired += 1;
                } else {
                    self.stats.sessions_evicted += 1;
                }
            }
        }
        if matches!(output, SessionOutput::Applied(_)) {
            self.checkers.on_command_applied(
                self.ids[node],
                client.0,
                seq,
                ctx.index,
                session_known,
            )?;
        }
        Ok(output)
    }
}
