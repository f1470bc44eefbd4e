//! The simulated network: frames on bonds, lost, duplicated or delayed as the seed's plan
//! says, and the bonds themselves, which follow the nodes and the network's cuts.
use super::events::EventKind;
use super::faults::{LONG_DELAY_MS_MAX, LONG_DELAY_MS_MIN};
use super::world::World;
use crate::groups::PeerFrame;
use crate::raft::NodeId;

impl World {
    /// A frame on the bond `from` → `to`. Consensus traffic and the requests forwarded
    /// beside it may be lost, duplicated or take a long detour (a bond that broke and
    /// came back, a congested path); the bond's own signalling (formation, preference,
    /// leave) arrives, quickly, while the bond is up.
    pub(super) fn send_frame(&mut self, from: NodeId, to: NodeId, frame: PeerFrame) {
        self.stats.messages_sent += 1;
        match frame {
            PeerFrame::Forward { .. } => self.stats.forwards += 1,
            PeerFrame::ReadIndex { .. } => self.stats.follower_reads += 1,
            _ => {}
        }
        if self.blocked.contains(&(from, to)) || self.foreign.contains(&(from, to)) {
            self.stats.messages_dropped += 1;
            return;
        }
        let lossy = matches!(
            frame,
            PeerFrame::Raft(_)
                | PeerFrame::Forward { .. }
                | PeerFrame::ForwardReply { .. }
                | PeerFrame::ForwardFeed { .. }
                | PeerFrame::ForwardFeedReply { .. }
                | PeerFrame::ReadIndex { .. }
                | PeerFrame::ReadIndexReply { .. }
        );
        if !lossy {
            let delay = self.short_delay();
            self.schedule(delay, EventKind::Deliver { from, to, frame });
            return;
        }
        if self.rng.chance(self.plan.drop_probability) {
            self.stats.messages_dropped += 1;
            return;
        }
        if self.rng.chance(self.plan.duplicate_probability) {
            let delay = self.delay();
            let frame = frame.clone();
            self.schedule(delay, EventKind::Deliver { from, to, frame });
        }
        let delay = self.delay();
        self.schedule(delay, EventKind::Deliver { from, to, frame });
    }

    /// One-way delay of a message: usually short, sometimes a long tail.
    pub(super) fn delay(&mut self) -> u64 {
        if self.rng.chance(self.plan.long_delay_probability) {
            self.stats.long_delays += 1;
            return self.rng.range(LONG_DELAY_MS_MIN, LONG_DELAY_MS_MAX + 1);
        }
        self.short_delay()
    }

    fn short_delay(&mut self) -> u64 {
        self.rng
            .range(self.plan.delay_ms_min, self.plan.delay_ms_max + 1)
    }

    /// Bonds follow the network: a bond is up while both ends are up and neither
    /// direction is cut. Each change reaches both ends' members as their transport would
    /// report it (a paused end learns it when it resumes).
    pub(super) fn update_reachability(&mut self) {
        for i in 0..self.nodes.len() {
            for j in i + 1..self.nodes.len() {
                let (a, b) = (self.ids[i], self.ids[j]);
                let up = self.nodes[i].is_up()
                    && self.nodes[j].is_up()
                    && !self.blocked.contains(&(a, b))
                    && !self.blocked.contains(&(b, a))
                    && !self.foreign.contains(&(a, b));
                let changed = if up {
                    self.bonds.insert((i, j))
                } else {
                    self.bonds.remove(&(i, j))
                };
                if !changed {
                    continue;
                }
                // Both ends learn of the bond before any frame crosses it (as from a
                // transport), so now; the frames' seeded delays order the rest.
                for (node, peer) in [(i, b), (j, a)] {
                    if self.nodes[node].is_up() {
                        let incarnation = self.nodes[node].incarnation;
                        self.schedule(
                            0,
                            EventKind::Bond {
                                node,
                                incarnation,
                                peer,
                                up,
                            },
                        );
                    }
                }
            }
        }
    }
}
