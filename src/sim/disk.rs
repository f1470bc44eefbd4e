//! Each node's simulated disk: a write becomes durable after a latency (longer while the
//! disk is slow) and writes complete in order; a crash keeps a random prefix of the
//! writes in flight and loses the rest; a restart recovers from what is durable.
use super::checks::Violation;
use super::events::EventKind;
use super::node::DiskWrite;
use super::world::World;
use crate::groups::PeerFrame;
use crate::machine::{KvStore, ReplicatedKv, Sessions, StateMachine};
use crate::raft::Message;
use crate::storage::{Storage, WriteBatch};

impl World {
    /// Queues `batch` on node `node`'s disk; `then` leaves when it (and every write
    /// before it) is durable.
    pub(super) fn write(
        &mut self,
        node: usize,
        batch: WriteBatch,
        then: Vec<Message>,
    ) -> Result<(), Violation> {
        let id = self.ids[node];
        if batch.is_empty() {
            match self.nodes[node].disk_queue.back_mut() {
                // These depend on writes still in flight: they leave with the last of them.
                Some(last) => last.messages.extend(then),
                None => {
                    for m in then {
                        self.send_frame(id, m.to, PeerFrame::Raft(m));
                    }
                }
            }
            return Ok(());
        }
        if let Some(s) = &batch.snapshot {
            self.checkers.on_snapshot_installed(id, &s.meta)?;
        }
        let positions = self.checkers.on_append(id, &batch.entries)?;
        let persisted = batch.persisted_position();
        self.next_write_id += 1;
        let write = self.next_write_id;
        let slow = self.nodes[node].disk_slow_until_ms > self.now_ms;
        let latency = if slow {
            self.rng.range(1, self.plan.disk_ms_slow_max)
        } else {
            self.plan.disk_ms_fast
        };
        let n = &mut self.nodes[node];
        let done_at = n.disk_busy_until_ms.max(self.now_ms) + latency;
        n.disk_busy_until_ms = done_at;
        n.disk_queue.push_back(DiskWrite {
            id: write,
            batch,
            persisted,
            messages: then,
            positions,
        });
        let incarnation = n.incarnation;
        let delay = done_at - self.now_ms;
        self.schedule(
            delay,
            EventKind::DiskDone {
                node,
                incarnation,
                write,
            },
        );
        Ok(())
    }

    pub(super) fn complete_write(&mut self, node: usize, write: u64) -> Result<(), Violation> {
        let n = &mut self.nodes[node];
        let Some(front) = n.disk_queue.pop_front() else {
            return Ok(());
        };
        debug_assert_eq!(front.id, write, "disk writes complete in order");
        if let Err(e) = n.durable.write(&front.batch) {
            return Err(Violation {
                property: "storage accepts what the core asks to write",
                detail: format!("{}: {e}", self.ids[node]),
            });
        }
        self.checkers.on_durable(self.ids[node], &front.positions)?;
        let id = self.ids[node];
        for m in front.messages {
            self.send_frame(id, m.to, PeerFrame::Raft(m));
        }
        if let Some((index, term)) = front.persisted {
            self.drive(node, |m, _| m.handle_persisted(index, term))?;
        }
        Ok(())
    }

    pub(super) fn crash(&mut self, node: usize) -> Result<(), Violation> {
        self.go_down(node, false)
    }

    /// The process of `node` ends: killed (`graceful` false), or at the end of a graceful
    /// shutdown, whose writes have all completed (the worker writes synchronously).
    pub(super) fn go_down(&mut self, node: usize, graceful: bool) -> Result<(), Violation> {
        let n = &mut self.nodes[node];
        if !n.is_up() {
            return Ok(());
        }
        // Writes in flight may or may not have reached the disk: a random prefix did.
        let reached = if graceful {
            n.disk_queue.len()
        } else {
            self.rng.range(0, n.disk_queue.len() as u64 + 1) as usize
        };
        let mut durable = Vec::new();
        for w in n.disk_queue.drain(..).take(reached) {
            // A write that reached the disk is whole; storage validated it on the way in.
            let _ = n.durable.write(&w.batch);
            durable.extend(w.positions);
        }
        n.member = None;
        n.stopping = false;
        n.incarnation += 1;
        // A paused process that is killed loses what queued up for it.
        self.paused.remove(&node);
        n.disk_busy_until_ms = 0;
        n.requests.clear();
        n.last_commit_seen = 0;
        let id = self.ids[node];
        if graceful {
            self.stats.graceful_stops += 1;
            self.note(format!(
                "{id} stops gracefully ({reached} writes completed)"
            ));
        } else {
            self.stats.crashes += 1;
            self.note(format!(
                "{id} crashes ({reached} in-flight writes reached the disk)"
            ));
        }
        self.update_reachability();
        // What reached the disk is durable: its log positions are now someone's log.
        self.checkers.on_durable(self.ids[node], &durable)
    }

    pub(super) fn restart(&mut self, node: usize) -> Result<(), Violation> {
        if self.nodes[node].is_up() {
            return Ok(());
        }
        let id = self.ids[node];
        let state = self.nodes[node]
            .durable
            .initial_state()
            .map_err(|e| Violation {
                property: "recovery",
                detail: format!("{id}: storage cannot recover: {e}"),
            })?;
        let mut machine: ReplicatedKv = Sessions::with_config(KvStore::new(), self.session_config);
        if let Some(s) = &state.snapshot {
            machine.restore(&s.data).map_err(|e| Violation {
                property: "recovery",
                detail: format!("{id}: snapshot does not restore: {e}"),
            })?;
        }
        self.checkers
            .on_restart(id, state.snapshot.as_ref().map(|s| &s.meta), &state.entries)?;
        let raft = self.new_core(node, state);
        self.nodes[node].machine = machine;
        let member = self.new_member(node, raft);
        let n = &mut self.nodes[node];
        n.member = Some(member);
        let incarnation = n.incarnation;
        self.note(format!("{id} restarts from disk"));
        let tick_ms = self.plan.tick_ms[node];
        self.schedule(tick_ms, EventKind::Tick { node, incarnation });
        self.drain(node)?;
        self.update_reachability();
        Ok(())
    }
}
