//! The world's event queue: what can happen next (a tick, a frame, a disk completion, a
//! client's request or answer, a fault, ...), in the order of virtual time and then of
//! scheduling, and where each event goes. A paused node's events queue up instead.
use std::cmp::Reverse;

use super::checks::Violation;
use super::node::{Reply, Request};
use super::world::World;
use crate::groups::PeerFrame;
use crate::raft::NodeId;

/// Most events a paused node queues; further messages to it are dropped, as a full
/// socket buffer would. Ticks, disk completions and bond statuses are always kept.
const PAUSE_BACKLOG_MAX: usize = 4096;

/// What can happen next in the world.
#[derive(Clone, Debug)]
pub(super) enum EventKind {
    Tick {
        node: usize,
        incarnation: u64,
    },
    /// A frame on the bond `from` → `to`.
    Deliver {
        from: NodeId,
        to: NodeId,
        frame: PeerFrame,
    },
    DiskDone {
        node: usize,
        incarnation: u64,
        write: u64,
    },
    ToNode {
        node: usize,
        client: usize,
        op: usize,
        request: Request,
    },
    ToClient {
        client: usize,
        op: usize,
        reply: Reply,
    },
    ClientTimeout {
        client: usize,
        op: usize,
        attempt: u64,
    },
    ClientNext {
        client: usize,
    },
    Fault,
    Restart {
        node: usize,
    },
    EndSlowDisk {
        node: usize,
    },
    /// The end of a pause: the node's backlog is delivered.
    Resume {
        node: usize,
        incarnation: u64,
    },
    /// The end of a graceful reboot's leave: node `node`, still `identity`, reboots as a
    /// new identity whether its leave completed or not (as `tessera node` waits at most
    /// its leave timeout before it exits).
    Reboot {
        node: usize,
        identity: NodeId,
    },
    /// Node `node`'s bond to `peer` came up or went down (its transport tells it).
    Bond {
        node: usize,
        incarnation: u64,
        peer: NodeId,
        up: bool,
    },
}

/// An event and when it happens: in virtual time, then in the order it was scheduled.
#[derive(Clone, Debug)]
pub(super) struct Scheduled {
    at_ms: u64,
    seq: u64,
    kind: EventKind,
}

impl PartialEq for Scheduled {
    fn eq(&self, other: &Self) -> bool {
        (self.at_ms, self.seq) == (other.at_ms, other.seq)
    }
}
impl Eq for Scheduled {}
impl PartialOrd for Scheduled {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Scheduled {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.at_ms, self.seq).cmp(&(other.at_ms, other.seq))
    }
}

impl World {
    /// Schedules `kind` `delay_ms` from now, after what is already scheduled for then.
    pub(super) fn schedule(&mut self, delay_ms: u64, kind: EventKind) {
        self.next_seq += 1;
        self.queue.push(Reverse(Scheduled {
            at_ms: self.now_ms + delay_ms,
            seq: self.next_seq,
            kind,
        }));
    }

    /// Runs events until `until_ms` or until `done` holds.
    pub(super) fn run_until(
        &mut self,
        until_ms: u64,
        mut done: impl FnMut(&World) -> bool,
    ) -> Result<bool, Violation> {
        while let Some(Reverse(next)) = self.queue.peek() {
            if next.at_ms > until_ms {
                break;
            }
            let Some(Reverse(event)) = self.queue.pop() else {
                break;
            };
            self.now_ms = event.at_ms;
            self.step += 1;
            self.dispatch(event.kind)?;
            if done(self) {
                return Ok(true);
            }
        }
        self.now_ms = self.now_ms.max(until_ms);
        Ok(done(self))
    }

    fn dispatch(&mut self, kind: EventKind) -> Result<(), Violation> {
        let target = match &kind {
            EventKind::Tick { node, .. }
            | EventKind::DiskDone { node, .. }
            | EventKind::ToNode { node, .. }
            | EventKind::Bond { node, .. } => Some(*node),
            EventKind::Deliver { to, .. } => self.slot(*to),
            _ => None,
        };
        if let Some(backlog) = target.and_then(|node| self.paused.get_mut(&node)) {
            let message = matches!(kind, EventKind::Deliver { .. } | EventKind::ToNode { .. });
            if message && backlog.len() >= PAUSE_BACKLOG_MAX {
                self.stats.messages_dropped += 1;
            } else {
                // Its next tick included: the node's timers fire late, at resume.
                backlog.push(kind);
            }
            return Ok(());
        }
        match kind {
            EventKind::Tick { node, incarnation } => {
                if self.nodes[node].incarnation == incarnation && self.nodes[node].is_up() {
                    self.drive(node, |m, now| m.handle_tick(now))?;
                    let tick_ms = self.plan.tick_ms[node];
                    self.schedule(tick_ms, EventKind::Tick { node, incarnation });
                }
            }
            EventKind::Deliver { from, to, frame } => match self.slot(to) {
                Some(node)
                    if self.nodes[node].is_up()
                        && !self.blocked.contains(&(from, to))
                        && !self.foreign.contains(&(from, to)) =>
                {
                    self.drive(node, |m, now| m.handle_frame(now, from, frame))?;
                }
                // Lost, or to an identity that is gone.
                _ => self.stats.messages_dropped += 1,
            },
            EventKind::DiskDone {
                node,
                incarnation,
                write,
            } => {
                if self.nodes[node].incarnation == incarnation {
                    self.complete_write(node, write)?;
                }
            }
            EventKind::ToNode {
                node,
                client,
                op,
                request,
            } => self.on_request(node, client, op, request)?,
            EventKind::ToClient { client, op, reply } => self.on_reply(client, op, reply)?,
            EventKind::ClientTimeout {
                client,
                op,
                attempt,
            } => self.on_client_timeout(client, op, attempt),
            EventKind::ClientNext { client } => self.client_next(client),
            EventKind::Fault => self.on_fault_timer()?,
            EventKind::Restart { node } => self.restart(node)?,
            EventKind::Reboot { node, identity } => self.on_reboot_deadline(node, identity)?,
            EventKind::EndSlowDisk { node } => {
                if self.nodes[node].disk_slow_until_ms <= self.now_ms {
                    self.nodes[node].disk_slow_until_ms = 0;
                }
            }
            EventKind::Resume { node, incarnation } => {
                if self.nodes[node].incarnation == incarnation {
                    self.resume(node);
                }
            }
            EventKind::Bond {
                node,
                incarnation,
                peer,
                up,
            } => {
                if self.nodes[node].incarnation == incarnation {
                    self.drive(node, |m, now| m.handle_reachable(now, peer, up))?;
                }
            }
        }
        Ok(())
    }
}
