//! The nemesis: the faults the seed's plan injects during the safety phase (partitions,
//! crashes, pauses, slow disks, clock jumps, membership changes, leader transfers and
//! members rebooting as new identities, the operator's requests among them), and the heal
//! that ends them before the liveness phase.
use super::checks::Violation;
use super::events::EventKind;
use super::faults::{FaultKind, CLOCK_JUMP_MS_MAX, CLOCK_JUMP_MS_MIN, PAUSE_MS_MAX, PAUSE_MS_MIN};
use super::world::World;
use crate::groups::member::Request as MemberRequest;
use crate::machine::{KvStore, Sessions};
use crate::raft::{MembershipChange, NodeId};
use crate::storage::MemoryStorage;

impl World {
    /// The fault timer fires: while faults are on, one fault from the plan, and the next
    /// one scheduled around the plan's interval.
    pub(super) fn on_fault_timer(&mut self) -> Result<(), Violation> {
        if self.faults_enabled {
            self.inject_fault()?;
            let interval = self.plan.fault_interval_ms;
            let delay = self.rng.range(interval / 2, interval * 3 / 2 + 1);
            self.schedule(delay, EventKind::Fault);
        }
        Ok(())
    }

    fn inject_fault(&mut self) -> Result<(), Violation> {
        let Some(kind) = self.plan.pick(&mut self.rng) else {
            return Ok(());
        };
        let n = self.nodes.len();
        match kind {
            FaultKind::PartitionSymmetric => {
                let mut side = vec![false; n];
                for s in side.iter_mut() {
                    *s = self.rng.chance(0.5);
                }
                // Never a partition with everyone on one side.
                if side.iter().all(|s| *s == side[0]) {
                    let flip = self.rng.range(0, n as u64) as usize;
                    side[flip] = !side[flip];
                }
                self.blocked.clear();
                for i in 0..n {
                    for j in 0..n {
                        if side[i] != side[j] {
                            self.blocked.insert((self.ids[i], self.ids[j]));
                        }
                    }
                }
                self.stats.partitions += 1;
                let minority: Vec<NodeId> =
                    (0..n).filter(|i| side[*i]).map(|i| self.ids[i]).collect();
                self.note(format!("partition {minority:?} | rest"));
                self.update_reachability();
            }
            FaultKind::PartitionOneWay => {
                let a = self.rng.range(0, n as u64) as usize;
                let b = self.rng.range(0, n as u64) as usize;
                if a != b {
                    self.blocked.insert((self.ids[a], self.ids[b]));
                    self.stats.partitions += 1;
                    self.note(format!("link {} -> {} cut", self.ids[a], self.ids[b]));
                    self.update_reachability();
                }
            }
            FaultKind::Heal => {
                if !self.blocked.is_empty() {
                    self.blocked.clear();
                    self.note("network healed".into());
                    self.update_reachability();
                }
            }
            FaultKind::Crash => {
                let down = self.nodes.iter().filter(|x| !x.is_up()).count();
                if down < n.div_ceil(2) {
                    let victim = self.rng.range(0, n as u64) as usize;
                    self.crash(victim)?;
                    let back = self.rng.range(50, 2000);
                    self.schedule(back, EventKind::Restart { node: victim });
                }
            }
            FaultKind::Restart => {
                if let Some(i) = (0..n).find(|i| !self.nodes[*i].is_up()) {
                    self.restart(i)?;
                }
            }
            FaultKind::SlowDisk => {
                let victim = self.rng.range(0, n as u64) as usize;
                let until = self.rng.range(100, 2000);
                self.nodes[victim].disk_slow_until_ms = self.now_ms + until;
                self.schedule(until, EventKind::EndSlowDisk { node: victim });
                self.note(format!("{} disk slow for {until} ms", self.ids[victim]));
            }
            FaultKind::Pause => {
                let unavailable =
                    self.nodes.iter().filter(|x| !x.is_up()).count() + self.paused.len();
                let victim = self.rng.range(0, n as u64) as usize;
                let pausable = self.nodes[victim].is_up() && !self.paused.contains_key(&victim);
                if unavailable < n.div_ceil(2) && pausable {
                    let until = self.rng.range(PAUSE_MS_MIN, PAUSE_MS_MAX + 1);
                    self.paused.insert(victim, Vec::new());
                    let incarnation = self.nodes[victim].incarnation;
                    self.schedule(
                        until,
                        EventKind::Resume {
                            node: victim,
                            incarnation,
                        },
                    );
                    self.stats.pauses += 1;
                    self.note(format!("{} paused for {until} ms", self.ids[victim]));
                }
            }
            FaultKind::MembershipChange => self.change_membership()?,
            FaultKind::TransferLeader => {
                if let Some((leader, raft)) = self.current_leader() {
                    let voters: Vec<NodeId> = raft.membership().voters.iter().copied().collect();
                    let to = voters[self.rng.range(0, voters.len() as u64) as usize];
                    self.stats.transfers += 1;
                    self.note(format!(
                        "{} asked to hand leadership to {to}",
                        self.ids[leader]
                    ));
                    self.operator(leader, MemberRequest::TransferLeadership(to))?;
                }
            }
            FaultKind::FreshIdentity => self.replace_identity()?,
            FaultKind::GracefulStop => self.stop_gracefully()?,
            FaultKind::ClockJump => {
                let victim = self.rng.range(0, n as u64) as usize;
                let jump = self.rng.range(CLOCK_JUMP_MS_MIN, CLOCK_JUMP_MS_MAX + 1) as i64;
                let jump = if self.rng.chance(0.7) { jump } else { -jump };
                self.wall_offset_ms[victim] = self.wall_offset_ms[victim].saturating_add(jump);
                self.stats.clock_jumps += 1;
                self.note(format!("{} wall clock jumps {jump} ms", self.ids[victim]));
            }
        }
        Ok(())
    }

    /// Shuts a member down gracefully, the leader more often than not: a leader hands
    /// leadership over first, and goes down once its successor's election reached it (or
    /// its core gave up); any other member goes down at once. Restarts from its disk.
    fn stop_gracefully(&mut self) -> Result<(), Violation> {
        let n = self.nodes.len();
        let down = self.nodes.iter().filter(|x| !x.is_up()).count();
        if down >= n.div_ceil(2) {
            return Ok(());
        }
        let leader = self.current_leader().map(|(i, _)| i);
        let victim = match leader {
            Some(i) if self.rng.chance(0.7) => i,
            _ => self.rng.range(0, n as u64) as usize,
        };
        if !self.nodes[victim].is_up() || self.nodes[victim].stopping {
            return Ok(());
        }
        self.note(format!("{} asked to shut down", self.ids[victim]));
        self.nodes[victim].stopping = true;
        let mut handing_over = false;
        self.drive(victim, |m, now| handing_over = m.hand_over(now))?;
        if handing_over {
            self.stats.handovers += 1;
        }
        Ok(())
    }

    /// Ends a pause: everything that queued up is delivered now, in the order it came.
    pub(super) fn resume(&mut self, node: usize) {
        let Some(backlog) = self.paused.remove(&node) else {
            return;
        };
        self.stats.backlog_delivered += backlog.len() as u64;
        self.note(format!(
            "{} resumes; {} queued events delivered",
            self.ids[node],
            backlog.len()
        ));
        for kind in backlog {
            self.schedule(0, kind);
        }
    }

    /// A member's machine reboots as a new identity (a TD has a new key at every boot):
    /// its process dies, its disk is wiped (the old records belong to the dead identity),
    /// and it comes back under a new id that joins the group as a new member. The dead
    /// identity stays a voter until the leader replaces it. One at a time: only while
    /// every member of the leader's configuration is a live identity, so that the group
    /// never waits for more dead voters than it can remove.
    fn replace_identity(&mut self) -> Result<(), Violation> {
        let Some((_, leader)) = self.current_leader() else {
            return Ok(());
        };
        let membership = leader.membership().clone();
        let members: Vec<NodeId> = membership.members().collect();
        let all_live = members.iter().all(|id| {
            self.slot(*id)
                .is_some_and(|slot| self.nodes[slot].is_up() && !self.paused.contains_key(&slot))
        });
        if !all_live || members.len() < 2 {
            return Ok(());
        }
        let victim = members[self.rng.range(0, members.len() as u64) as usize];
        if !self.may_lose_for_good(victim) {
            return Ok(());
        }
        let Some(slot) = self.slot(victim) else {
            return Ok(());
        };
        // Half of the reboots are graceful: the member asks to leave first and the machine
        // goes down when the leave is done or its time is up, whichever comes first.
        if self.rng.chance(0.5) {
            self.stats.left_before_reboot += 1;
            self.note(format!("{victim} asks to leave before it reboots"));
            self.operator(slot, MemberRequest::Leave)?;
            let deadline = self.rng.range(20, 2_000);
            self.schedule(
                deadline,
                EventKind::Reboot {
                    node: slot,
                    identity: victim,
                },
            );
            return Ok(());
        }
        self.reboot_as_new_identity(slot, victim)
    }

    /// A graceful reboot's leave is over (done or timed out): node `node`, if still
    /// `identity`, reboots as a new identity.
    pub(super) fn on_reboot_deadline(
        &mut self,
        node: usize,
        identity: NodeId,
    ) -> Result<(), Violation> {
        // The group may have changed while the member was leaving (it may even be
        // a voter again): it goes for good only if the group survives that.
        if self.ids[node] == identity
            && self.nodes[node].is_up()
            && self.may_lose_for_good(identity)
        {
            self.reboot_as_new_identity(node, identity)?;
        } else {
            self.note(format!(
                "{identity} stays: losing it now would end the group"
            ));
        }
        Ok(())
    }

    /// Crashes `slot` (now `victim`) and brings it back later as a fresh identity with a
    /// wiped disk.
    fn reboot_as_new_identity(&mut self, slot: usize, victim: NodeId) -> Result<(), Violation> {
        self.crash(slot)?;
        self.next_identity += 1;
        let fresh = NodeId(self.next_identity);
        self.ids[slot] = fresh;
        let n = &mut self.nodes[slot];
        let disk = std::mem::replace(&mut n.durable, MemoryStorage::new());
        self.retired_disks.insert(victim, disk);
        let n = &mut self.nodes[slot];
        n.machine = Sessions::with_config(KvStore::new(), self.session_config);
        self.stats.identities_replaced += 1;
        self.note(format!("{victim} reboots as a new identity, {fresh}"));
        let back = self.rng.range(20, 500);
        self.schedule(back, EventKind::Restart { node: slot });
        Ok(())
    }

    /// Whether the group survives losing `victim` for good, in the current leader's
    /// configuration: the voters left must still make a quorum, or nobody could ever
    /// remove the dead one (a group of two that loses one for good is stuck in any Raft).
    fn may_lose_for_good(&self, victim: NodeId) -> bool {
        let Some((_, leader)) = self.current_leader() else {
            return false;
        };
        let membership = leader.membership();
        if !membership.voters.contains(&victim) {
            return true;
        }
        // Voters that will answer again: any identity still on a machine (crashed ones
        // restart), not those already gone for good.
        let voters_left = membership
            .voters
            .iter()
            .filter(|v| **v != victim && self.slot(**v).is_some())
            .count();
        voters_left > 0 && voters_left >= membership.quorum()
    }

    fn change_membership(&mut self) -> Result<(), Violation> {
        let Some((leader, raft)) = self.current_leader() else {
            return Ok(());
        };
        let m = raft.membership().clone();
        // A careful operator changes nothing while a dead identity is still a member: the
        // leader removes it first, and removing a live voter now could leave the dead one
        // holding half the votes.
        if m.members().any(|id| self.slot(id).is_none()) {
            return Ok(());
        }
        let outsiders: Vec<NodeId> = self
            .ids
            .iter()
            .copied()
            .filter(|id| !m.contains(*id))
            .collect();
        let change = if !outsiders.is_empty() && self.rng.chance(0.6) {
            let id = outsiders[self.rng.range(0, outsiders.len() as u64) as usize];
            if self.rng.chance(0.15) {
                MembershipChange::AddObserver(id)
            } else {
                MembershipChange::AddLearner(id)
            }
        } else if !m.observers.is_empty() && self.rng.chance(0.3) {
            let obs: Vec<NodeId> = m.observers.iter().copied().collect();
            MembershipChange::Remove(obs[self.rng.range(0, obs.len() as u64) as usize])
        } else {
            let voters: Vec<NodeId> = m.voters.iter().copied().collect();
            let id = voters[self.rng.range(0, voters.len() as u64) as usize];
            if self.rng.chance(0.5) {
                MembershipChange::Demote(id)
            } else {
                MembershipChange::Remove(id)
            }
        };
        self.operator(leader, MemberRequest::ChangeMembership(change))
    }

    /// An operator's request to node `node` (nobody waits for its answer).
    fn operator(&mut self, node: usize, request: MemberRequest) -> Result<(), Violation> {
        let id = self.nodes[node].next_request_id();
        self.operator_acting = true;
        let result = self.drive(node, |m, now| m.handle_request(now, id, request));
        self.operator_acting = false;
        result
    }

    /// Ends the fault phase: heal the network, restart every node, fast disks, no loss.
    pub(super) fn heal(&mut self) -> Result<(), Violation> {
        self.faults_enabled = false;
        self.plan.drop_probability = 0.0;
        self.plan.duplicate_probability = 0.0;
        self.plan.long_delay_probability = 0.0;
        self.blocked.clear();
        for n in &mut self.nodes {
            n.disk_slow_until_ms = 0;
            // A shutdown still handing over is called off: every node stays up from here.
            n.stopping = false;
        }
        self.note("heal: network whole, all nodes restarting, no more faults".into());
        let paused: Vec<usize> = self.paused.keys().copied().collect();
        for node in paused {
            self.resume(node);
        }
        for i in 0..self.nodes.len() {
            self.restart(i)?;
        }
        self.update_reachability();
        Ok(())
    }
}
