//! The simulated world: its state (virtual time, the nodes, the clients, the network's
//! cuts, the history and the checkers), how it is set up from a seed, and what a run asks
//! of it at the end. Everything happens in one thread in an order fixed by the seed; the
//! rest of the world's behaviour lives beside this file, one concern each:
//! [`events`](super::events) (the event queue and its dispatch),
//! [`driver`](super::driver) (each node's member, driven as the worker does),
//! [`disk`](super::disk) (writes, crashes, restarts), [`network`](super::network) (frames
//! and bonds), [`workload`](super::workload) (the clients and their history) and
//! [`nemesis`](super::nemesis) (fault injection and healing).
use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap};
use std::num::NonZeroU32;
use std::time::{Duration, Instant};

use super::checks::{Checkers, Violation};
use super::client::{History, SimClient};
use super::events::{EventKind, Scheduled};
use super::faults::FaultPlan;
use super::node::SimNode;
use super::SimOptions;
#[cfg(test)]
use crate::groups::formation::Formation;
use crate::groups::member::{Member, Now};
use crate::groups::worker::WorkerConfig;
use crate::machine::{
    ClientId, KvStore, LeadershipPreference, SessionConfig, Sessions, StateMachine,
};
use crate::raft::{Index, Membership, NodeId, Raft, RaftConfig, Role, SplitMix64};
use crate::storage::MemoryStorage;

/// A follower answers a command it forwarded "unknown" after this long without the
/// leader's answer (the client then retries it, same sequence).
const FORWARD_TIMEOUT_MS: u64 = 300;
/// The leader removes a member unreachable this long (it joins again when it comes back).
const REMOVAL_TIMEOUT_MS: u64 = 4_000;

pub(super) struct World {
    pub options: SimOptions,
    pub plan: FaultPlan,
    pub rng: SplitMix64,
    pub now_ms: u64,
    /// The members' monotonic clock reads `epoch + now_ms` (only differences count).
    pub(super) epoch: Instant,
    /// How far each node's wall clock is off (the host sets it; faults make it jump).
    pub(super) wall_offset_ms: Vec<i64>,
    /// Logical clock for the history: bumps on every event, so call/return order is exact.
    pub step: u64,
    pub(super) queue: BinaryHeap<Reverse<Scheduled>>,
    pub(super) next_seq: u64,
    pub nodes: Vec<SimNode>,
    pub ids: Vec<NodeId>,
    pub clients: Vec<SimClient>,
    pub history: History,
    pub checkers: Checkers,
    /// Directed links that drop everything: (from, to).
    pub(super) blocked: BTreeSet<(NodeId, NodeId)>,
    /// Pairs a member dropped as holding a log of another founding of the group id
    /// ([`crate::groups::PeerFrame::Incarnation`]), both ways: no bond between them comes
    /// up again, as the bond handshake refuses it once both hold a log.
    pub(super) foreign: BTreeSet<(NodeId, NodeId)>,
    /// Bonds up (both ends up, neither direction blocked), as pairs of indexes (i < j).
    pub(super) bonds: BTreeSet<(usize, usize)>,
    /// Paused nodes and what queued up for each, oldest first: a paused process takes no
    /// tick, message or disk completion until it resumes (`docker pause`).
    pub(super) paused: BTreeMap<usize, Vec<EventKind>>,
    /// Fresh starts: the configured founding set (the first voters).
    pub(super) founders: Option<BTreeSet<NodeId>>,
    pub faults_enabled: bool,
    pub clients_issue_new: bool,
    pub(super) next_write_id: u64,
    /// The highest node id given out (replacements take the next).
    pub(super) next_identity: u64,
    /// The disks of identities that are gone, as they were when the identity died.
    pub(super) retired_disks: BTreeMap<NodeId, MemoryStorage>,
    /// An operator's request is being carried out (its membership change is not the
    /// member's own).
    pub(super) operator_acting: bool,
    /// Bounds of every replica's session table.
    pub(super) session_config: SessionConfig,
    /// Every client id of the run, departed ones included (for counting evictions).
    pub(super) client_ids: Vec<ClientId>,
    pub(super) last_retirement_ms: Option<u64>,
    /// Indexes up to here had their session evictions and expiries counted.
    pub(super) session_drops_counted_through: Index,
    pub log: Vec<String>,
    pub stats: Stats,
}

/// What happened in one simulated run: how hard the faults pushed, and what the members
/// did about them. A run that finds nothing is only as good as these numbers are high.
#[derive(Clone, Debug, Default)]
#[non_exhaustive]
pub struct Stats {
    /// Messages handed to the simulated network.
    pub messages_sent: u64,
    /// Of those, the ones the network lost (drops, cuts, crashed receivers).
    pub messages_dropped: u64,
    /// Node crashes (each restarts from what its disk kept).
    pub crashes: u64,
    /// Network partitions made.
    pub partitions: u64,
    /// Membership changes the workload asked for.
    pub membership_changes: u64,
    /// Leadership transfers asked for.
    pub transfers: u64,
    /// Graceful shutdowns (each restarts from its disk later).
    pub graceful_stops: u64,
    /// Of those, the ones of a leader that handed leadership over before it stopped.
    pub handovers: u64,
    /// Snapshots installed from a leader.
    pub snapshots_installed: u64,
    /// Bonds a member dropped because the peer's log descends from another founding.
    pub foreign_disconnects: u64,
    /// Messages that took a long-tail delay.
    pub long_delays: u64,
    /// Pauses, and the events queued during them that were delivered on resume.
    pub pauses: u64,
    /// Events delivered on resume that had queued during a pause.
    pub backlog_delivered: u64,
    /// Operations whose clients gave up, leaving the outcome unknown.
    pub give_ups: u64,
    /// Clients that left and were replaced by a new one, and sessions the replicas'
    /// tables dropped because they were full or idle past the TTL.
    pub client_departures: u64,
    /// Sessions dropped because the table was full.
    pub sessions_evicted: u64,
    /// Sessions dropped because they were idle past the TTL.
    pub sessions_expired: u64,
    /// Client operations that completed with an answer.
    pub ops_completed: u64,
    /// Retries answered from the session table instead of being applied again.
    pub duplicates: u64,
    /// Runs that started every node fresh (0 or 1), and founders that wrote the first
    /// configuration in them.
    pub fresh_starts: u64,
    /// Founders that wrote the first configuration in a fresh start.
    pub foundings: u64,
    /// Commands a follower forwarded to the leader, and read points it asked of it.
    pub forwards: u64,
    /// Read points a follower asked of the leader.
    pub follower_reads: u64,
    /// Membership changes a leader's member made by itself (joiners, departures).
    pub automatic_changes: u64,
    /// Jumps of a node's wall clock (forwards or backwards).
    pub clock_jumps: u64,
    /// Members whose machine came back as a new identity.
    pub identities_replaced: u64,
    /// Of those, the ones that asked to leave the group first (a graceful shutdown).
    pub left_before_reboot: u64,
}

impl World {
    pub(super) fn new(
        options: SimOptions,
        plan: FaultPlan,
        mut rng: SplitMix64,
        nodes: usize,
        clients: usize,
    ) -> Self {
        let ids: Vec<NodeId> = (1..=nodes as u64).map(NodeId).collect();
        // A small table holds one session more than there are clients at any time: never
        // fewer, or live clients would evict each other and a retry apply twice, which
        // session.rs documents as the table's bound; churn brings more clients through
        // (see `FaultPlan::client_retire_spacing_ms`).
        let session_config = SessionConfig {
            sessions_max: if plan.small_session_table {
                NonZeroU32::MIN.saturating_add(clients as u32)
            } else {
                SessionConfig::default().sessions_max
            },
            session_ttl_ms: plan.session_ttl_ms,
        };
        let machine = || Sessions::with_config(KvStore::new(), session_config);
        let client_ids: Vec<ClientId> = (1..=clients as u64).map(ClientId).collect();
        let mut world = Self {
            options,
            plan,
            now_ms: 0,
            epoch: Instant::now(),
            wall_offset_ms: vec![0; nodes],
            step: 0,
            queue: BinaryHeap::new(),
            next_seq: 0,
            nodes: ids.iter().map(|_| SimNode::new(machine())).collect(),
            ids: ids.clone(),
            clients: client_ids.iter().map(|id| SimClient::new(*id)).collect(),
            client_ids,
            last_retirement_ms: None,
            session_drops_counted_through: 0,
            session_config,
            history: Vec::new(),
            checkers: Checkers::new(),
            blocked: BTreeSet::new(),
            foreign: BTreeSet::new(),
            bonds: BTreeSet::new(),
            paused: BTreeMap::new(),
            founders: None,
            faults_enabled: true,
            clients_issue_new: true,
            next_write_id: 0,
            operator_acting: false,
            next_identity: nodes as u64,
            retired_disks: BTreeMap::new(),
            log: Vec::new(),
            stats: Stats::default(),
            rng: SplitMix64::new(rng.next_u64()),
        };
        // Most runs start with every node a voter; some start with three and let the rest
        // join as learners through membership changes.
        let initial_voters = if nodes > 3 && world.rng.chance(0.3) {
            3
        } else {
            nodes
        };
        let bootstrap = Membership::with_voters(ids.iter().copied().take(initial_voters));
        #[cfg(test)]
        let dangerous_formation = world.options.dangerous_formation.is_some();
        #[cfg(not(test))]
        let dangerous_formation = false;
        let fresh_start = dangerous_formation
            || world
                .options
                .fresh_start
                .unwrap_or_else(|| world.rng.chance(0.35));
        if fresh_start {
            world.stats.fresh_starts = 1;
            world.founders = Some(bootstrap.voters.clone());
            world.note(format!(
                "fresh start: founders {:?}, the rest join",
                bootstrap.voters
            ));
        }
        for i in 0..nodes {
            let mut raft = world.new_core(i, Default::default());
            if i < initial_voters && !fresh_start {
                raft.bootstrap(bootstrap.clone())
                    .expect("fresh core bootstraps");
            }
            world.nodes[i].member = Some(world.new_member(i, raft));
            let phase = world.rng.range(0, world.plan.tick_ms[i]);
            world.schedule(
                phase,
                EventKind::Tick {
                    node: i,
                    incarnation: 0,
                },
            );
        }
        for i in 0..nodes {
            if let Err(v) = world.drain(i) {
                panic!("bootstrap violated an invariant: {v:?}");
            }
        }
        // Bonds come up, in a seeded order: formation statuses and preferences go out.
        world.update_reachability();
        for c in 0..clients {
            let delay = world.rng.range(0, 50);
            world.schedule(delay, EventKind::ClientNext { client: c });
        }
        let first_fault = world.plan.fault_interval_ms;
        world.schedule(first_fault, EventKind::Fault);
        world
    }

    /// The member's settings: the worker's, in simulated time. Automatic membership is on
    /// (bonded peers join as learners, members away for a few seconds are removed); in a
    /// fresh start the founders are the configured set and the rest only join.
    fn member_config(&self, node: usize) -> WorkerConfig {
        let me = self.ids[node];
        WorkerConfig {
            tick: Duration::from_millis(self.plan.tick_ms[node]),
            forward_timeout: Duration::from_millis(FORWARD_TIMEOUT_MS),
            snapshot_every: self.plan.snapshot_every,
            snapshot_bytes: None,
            auto_membership: true,
            removal_timeout: Some(Duration::from_millis(REMOVAL_TIMEOUT_MS)),
            founders: self.founders.as_ref().filter(|f| f.contains(&me)).cloned(),
        }
    }

    /// Node `node`'s member around `raft`.
    pub(super) fn new_member(&mut self, node: usize, raft: Raft) -> Member {
        #[cfg(test)]
        let dangerous = self
            .options
            .dangerous_formation
            .filter(|_| raft.is_fresh())
            .map(|expect| Formation::dangerous_smallest_bonded(self.ids[node], expect));
        let request_ids_from = self.rng.next_u64();
        let member = Member::new(
            self.member_config(node),
            raft,
            LeadershipPreference::Normal,
            request_ids_from,
            self.nodes[node].machine.clock_ms(),
        );
        #[cfg(test)]
        if let Some(formation) = dangerous {
            return member.with_formation(formation);
        }
        member
    }

    fn raft_config(&self) -> RaftConfig {
        RaftConfig {
            election_ticks: 10,
            heartbeat_ticks: 2,
            max_entries_per_message: 64,
            max_inflight_messages: 16,
            max_voters: self.ids.len(),
            promotion_lag_entries: 8,
            #[cfg(test)]
            dangerous_reference_quorum: self.options.dangerous_reference_quorum,
            ..RaftConfig::default()
        }
    }

    pub(super) fn new_core(&mut self, node: usize, state: crate::raft::InitialState) -> Raft {
        let seed = self.rng.next_u64();
        Raft::new(self.ids[node], self.raft_config(), seed, state).expect("valid simulator config")
    }

    pub(super) fn note(&mut self, line: String) {
        if self.options.verbose {
            eprintln!("[{:>7} ms] {line}", self.now_ms);
        }
        self.log.push(format!("[{:>7} ms] {line}", self.now_ms));
        if self.log.len() > 400 {
            self.log.drain(..200);
        }
    }

    /// The slot node `id` runs in, `None` for an identity that is gone (replaced).
    pub(super) fn slot(&self, id: NodeId) -> Option<usize> {
        self.ids.iter().position(|x| *x == id)
    }

    /// The time as node `node`'s driver reads it.
    pub(super) fn now_of(&self, node: usize) -> Now {
        Now {
            instant: self.epoch + Duration::from_millis(self.now_ms),
            unix_ms: self.now_ms.saturating_add_signed(self.wall_offset_ms[node]),
        }
    }

    pub(super) fn current_leader(&self) -> Option<(usize, &Raft)> {
        self.nodes
            .iter()
            .enumerate()
            .filter_map(|(i, n)| n.raft().map(|r| (i, r)))
            .filter(|(_, r)| r.role() == Role::Leader)
            .max_by_key(|(_, r)| r.term())
    }

    /// Whether every client is idle and a leader is known by every live member.
    pub(super) fn settled(&self) -> bool {
        if self.clients.iter().any(|c| c.current.is_some()) {
            return false;
        }
        let Some((_, leader)) = self.current_leader() else {
            return false;
        };
        let leader_id = leader.id();
        let commit = leader.commit_index();
        leader.membership().members().all(|m| {
            self.slot(m)
                .and_then(|slot| self.nodes[slot].raft())
                .is_some_and(|r| r.leader() == Some(leader_id) && r.applied_index() >= commit)
        })
    }

    /// Final convergence: every member that applied as far as the leader holds the same
    /// state (compared through snapshot bytes).
    pub(super) fn check_convergence(&self) -> Result<(), Violation> {
        let Some((li, leader)) = self.current_leader() else {
            return Ok(());
        };
        let applied = leader.applied_index();
        let reference = self.nodes[li].machine.snapshot().ok();
        for m in leader.membership().members() {
            let Some(slot) = self.slot(m) else {
                continue;
            };
            let n = &self.nodes[slot];
            if n.raft().is_some_and(|r| r.applied_index() == applied)
                && n.machine.snapshot().ok() != reference
            {
                return Err(Violation {
                    property: "state-machine safety (replicas converge)",
                    detail: format!(
                        "{m} and {} applied to {applied} but hold different states",
                        self.ids[li]
                    ),
                });
            }
        }
        Ok(())
    }

    /// One line per node: role, term, leader, log and configuration.
    pub(super) fn describe_nodes(&self) -> String {
        let mut out = String::new();
        for (i, n) in self.nodes.iter().enumerate() {
            let id = self.ids[i];
            match n.raft() {
                None => out.push_str(&format!("\n      {id}: down")),
                Some(r) => out.push_str(&format!(
                    "\n      {id}: {:?} term {} leader {:?} last {} commit {} applied {} snapshot {} voters {:?} learners {:?} observers {:?}",
                    r.role(),
                    r.term(),
                    r.leader(),
                    r.last_index(),
                    r.commit_index(),
                    r.applied_index(),
                    r.snapshot_index(),
                    r.membership().voters,
                    r.membership().learners,
                    r.membership().observers,
                )),
            }
        }
        out
    }

    /// Operations whose clients never learned the outcome stay `Unknown` in the history.
    pub(super) fn pending_ops(&self) -> usize {
        self.clients.iter().filter(|c| c.current.is_some()).count()
    }
}
