//! The simulated world: virtual time, an event queue, the network, nodes and clients.
//! Everything happens in one thread in an order fixed by the seed.
use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap};
use std::num::NonZeroU32;
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::checks::{Checkers, Violation};
use super::client::{History, InFlight, Outcome, SimClient};
use super::faults::{
    FaultKind, FaultPlan, CLIENT_RETIRE_PROBABILITY, CLIENT_TIMEOUT_MS, CLOCK_JUMP_MS_MAX,
    CLOCK_JUMP_MS_MIN, LONG_DELAY_MS_MAX, LONG_DELAY_MS_MIN, PAUSE_MS_MAX, PAUSE_MS_MIN,
};
use super::node::{DiskWrite, Pending, Reply, Request, SimNode, Waiter};
use super::SimOptions;
#[cfg(test)]
use crate::groups::formation::Formation;
use crate::groups::member::{Action, Member, Now, Reply as MemberReply, Request as MemberRequest};
use crate::groups::worker::{RequestError, WorkerConfig};
use crate::groups::PeerFrame;
use crate::lincheck::kv::KvOutput as LinOutput;
use crate::lincheck::Operation;
use crate::machine::{
    ApplyContext, ClientId, KvQuery, KvQueryResult, KvStore, LeadershipPreference, ReplicatedKv,
    SessionCommand, SessionConfig, SessionOutput, Sessions, StateMachine,
};
use crate::raft::{
    EntryPayload, Event, Index, Membership, MembershipChange, Message, NodeId, Raft, RaftConfig,
    Role, SplitMix64,
};
use crate::storage::{MemoryStorage, Storage, WriteBatch};

const CLIENT_THINK_MS_MAX: u64 = 20;
const KEYS: u64 = 3;
/// Most events a paused node queues; further messages to it are dropped, as a full
/// socket buffer would. Ticks, disk completions and bond statuses are always kept.
const PAUSE_BACKLOG_MAX: usize = 4096;
/// A follower answers a command it forwarded "unknown" after this long without the
/// leader's answer (the client then retries it, same sequence).
const FORWARD_TIMEOUT_MS: u64 = 300;
/// The leader removes a member unreachable this long (it joins again when it comes back).
const REMOVAL_TIMEOUT_MS: u64 = 4_000;

#[derive(Clone, Debug)]
enum EventKind {
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

#[derive(Clone, Debug)]
struct Scheduled {
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

pub struct World {
    pub options: SimOptions,
    pub plan: FaultPlan,
    pub rng: SplitMix64,
    pub now_ms: u64,
    /// The members' monotonic clock reads `epoch + now_ms` (only differences count).
    epoch: Instant,
    /// How far each node's wall clock is off (the host sets it; faults make it jump).
    wall_offset_ms: Vec<i64>,
    /// Logical clock for the history: bumps on every event, so call/return order is exact.
    pub step: u64,
    queue: BinaryHeap<Reverse<Scheduled>>,
    next_seq: u64,
    pub nodes: Vec<SimNode>,
    pub ids: Vec<NodeId>,
    pub clients: Vec<SimClient>,
    pub history: History,
    pub checkers: Checkers,
    /// Directed links that drop everything: (from, to).
    blocked: BTreeSet<(NodeId, NodeId)>,
    /// Bonds up (both ends up, neither direction blocked), as pairs of indexes (i < j).
    bonds: BTreeSet<(usize, usize)>,
    /// Paused nodes and what queued up for each, oldest first: a paused process takes no
    /// tick, message or disk completion until it resumes (`docker pause`).
    paused: BTreeMap<usize, Vec<EventKind>>,
    /// Fresh starts: the configured founding set (the first voters).
    founders: Option<BTreeSet<NodeId>>,
    pub faults_enabled: bool,
    pub clients_issue_new: bool,
    next_write_id: u64,
    /// The highest node id given out (replacements take the next).
    next_identity: u64,
    /// The disks of identities that are gone, as they were when the identity died.
    retired_disks: BTreeMap<NodeId, MemoryStorage>,
    /// An operator's request is being carried out (its membership change is not the
    /// member's own).
    operator_acting: bool,
    /// Bounds of every replica's session table.
    session_config: SessionConfig,
    /// Every client id of the run, departed ones included (for counting evictions).
    client_ids: Vec<ClientId>,
    last_retirement_ms: Option<u64>,
    /// Indexes up to here had their session evictions and expiries counted.
    session_drops_counted_through: Index,
    pub log: Vec<String>,
    pub stats: Stats,
}

#[derive(Clone, Debug, Default)]
pub struct Stats {
    pub messages_sent: u64,
    pub messages_dropped: u64,
    pub crashes: u64,
    pub partitions: u64,
    pub membership_changes: u64,
    pub transfers: u64,
    pub snapshots_installed: u64,
    /// Messages that took a long-tail delay.
    pub long_delays: u64,
    /// Pauses, and the events queued during them that were delivered on resume.
    pub pauses: u64,
    pub backlog_delivered: u64,
    /// Operations whose clients gave up, leaving the outcome unknown.
    pub give_ups: u64,
    /// Clients that left and were replaced by a new one, and sessions the replicas'
    /// tables dropped because they were full or idle past the TTL.
    pub client_departures: u64,
    pub sessions_evicted: u64,
    pub sessions_expired: u64,
    pub ops_completed: u64,
    /// Retries answered from the session table instead of being applied again.
    pub duplicates: u64,
    /// Runs that started every node fresh (0 or 1), and founders that wrote the first
    /// configuration in them.
    pub fresh_starts: u64,
    pub foundings: u64,
    /// Commands a follower forwarded to the leader, and read points it asked of it.
    pub forwards: u64,
    pub follower_reads: u64,
    /// Membership changes a leader's member made by itself (joiners, departures).
    pub automatic_changes: u64,
    pub clock_jumps: u64,
    /// Members whose machine came back as a new identity.
    pub identities_replaced: u64,
    /// Of those, the ones that asked to leave the group first (a graceful shutdown).
    pub left_before_reboot: u64,
}

impl World {
    pub fn new(
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
    fn new_member(&mut self, node: usize, raft: Raft) -> Member {
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

    fn new_core(&mut self, node: usize, state: crate::raft::InitialState) -> Raft {
        let seed = self.rng.next_u64();
        Raft::new(self.ids[node], self.raft_config(), seed, state).expect("valid simulator config")
    }

    fn schedule(&mut self, delay_ms: u64, kind: EventKind) {
        self.next_seq += 1;
        self.queue.push(Reverse(Scheduled {
            at_ms: self.now_ms + delay_ms,
            seq: self.next_seq,
            kind,
        }));
    }

    fn note(&mut self, line: String) {
        if self.options.verbose {
            eprintln!("[{:>7} ms] {line}", self.now_ms);
        }
        self.log.push(format!("[{:>7} ms] {line}", self.now_ms));
        if self.log.len() > 400 {
            self.log.drain(..200);
        }
    }

    /// Runs events until `until_ms` or until `done` holds.
    pub fn run_until(
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
                Some(node) if self.nodes[node].is_up() && !self.blocked.contains(&(from, to)) => {
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
            } => {
                let current = self.clients[client].current.as_ref();
                if current.is_some_and(|c| c.op == op && c.attempt == attempt) {
                    let started_ms = current.map_or(self.now_ms, |c| c.started_ms);
                    // Clients give up only under faults: after healing every operation
                    // must complete, which is what the liveness phase checks.
                    let give_up = self.faults_enabled
                        && self
                            .plan
                            .client_give_up_ms
                            .is_some_and(|after_ms| self.now_ms - started_ms >= after_ms);
                    if give_up {
                        self.give_up(client);
                    } else {
                        self.send_attempt(client, None);
                    }
                }
            }
            EventKind::ClientNext { client } => self.client_next(client),
            EventKind::Fault => {
                if self.faults_enabled {
                    self.inject_fault()?;
                    let interval = self.plan.fault_interval_ms;
                    let delay = self.rng.range(interval / 2, interval * 3 / 2 + 1);
                    self.schedule(delay, EventKind::Fault);
                }
            }
            EventKind::Restart { node } => self.restart(node)?,
            EventKind::Reboot { node, identity } => {
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
            }
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

    // ----- nodes -----

    /// The slot node `id` runs in, `None` for an identity that is gone (replaced).
    fn slot(&self, id: NodeId) -> Option<usize> {
        self.ids.iter().position(|x| *x == id)
    }

    /// The time as node `node`'s driver reads it.
    fn now_of(&self, node: usize) -> Now {
        Now {
            instant: self.epoch + Duration::from_millis(self.now_ms),
            unix_ms: self.now_ms.saturating_add_signed(self.wall_offset_ms[node]),
        }
    }

    /// Gives node `node`'s member one input and carries out what it asks for.
    fn drive(
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
        let (founded, refused) = (member.founded(), member.inputs_refused());
        input(member, now);
        if member.inputs_refused() > refused {
            return Err(Violation {
                property: "correct peers never send invalid messages",
                detail: format!("{id}'s core refused an input (see the log)"),
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
        self.drain(node)
    }

    /// Carries out node `node`'s actions, as the worker does, until there are none.
    fn drain(&mut self, node: usize) -> Result<(), Violation> {
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
                            let ctx = ApplyContext {
                                index: entry.index,
                                term: entry.term,
                                timestamp_ms: entry.timestamp_ms,
                            };
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
            Err(RequestError::NoLeader) => Reply::NotLeader(None),
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

    /// Queues `batch` on node `node`'s disk; `then` leaves when it (and every write
    /// before it) is durable.
    fn write(
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

    fn complete_write(&mut self, node: usize, write: u64) -> Result<(), Violation> {
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

    fn crash(&mut self, node: usize) -> Result<(), Violation> {
        let n = &mut self.nodes[node];
        if !n.is_up() {
            return Ok(());
        }
        // Writes in flight may or may not have reached the disk: a random prefix did.
        let reached = self.rng.range(0, n.disk_queue.len() as u64 + 1) as usize;
        let mut durable = Vec::new();
        for w in n.disk_queue.drain(..).take(reached) {
            // A write that reached the disk is whole; storage validated it on the way in.
            let _ = n.durable.write(&w.batch);
            durable.extend(w.positions);
        }
        n.member = None;
        n.incarnation += 1;
        // A paused process that is killed loses what queued up for it.
        self.paused.remove(&node);
        n.disk_busy_until_ms = 0;
        n.requests.clear();
        n.last_commit_seen = 0;
        self.stats.crashes += 1;
        let id = self.ids[node];
        self.note(format!(
            "{id} crashes ({reached} in-flight writes reached the disk)"
        ));
        self.update_reachability();
        // What reached the disk is durable: its log positions are now someone's log.
        self.checkers.on_durable(self.ids[node], &durable)
    }

    fn restart(&mut self, node: usize) -> Result<(), Violation> {
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

    // ----- network -----

    /// A frame on the bond `from` → `to`. Consensus traffic and the requests forwarded
    /// beside it may be lost, duplicated or take a long detour (a bond that broke and
    /// came back, a congested path); the bond's own signalling (formation, preference,
    /// leave) arrives, quickly, while the bond is up.
    fn send_frame(&mut self, from: NodeId, to: NodeId, frame: PeerFrame) {
        self.stats.messages_sent += 1;
        match frame {
            PeerFrame::Forward { .. } => self.stats.forwards += 1,
            PeerFrame::ReadIndex { .. } => self.stats.follower_reads += 1,
            _ => {}
        }
        if self.blocked.contains(&(from, to)) {
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
    fn delay(&mut self) -> u64 {
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
    fn update_reachability(&mut self) {
        for i in 0..self.nodes.len() {
            for j in i + 1..self.nodes.len() {
                let (a, b) = (self.ids[i], self.ids[j]);
                let up = self.nodes[i].is_up()
                    && self.nodes[j].is_up()
                    && !self.blocked.contains(&(a, b))
                    && !self.blocked.contains(&(b, a));
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

    // ----- clients -----

    fn reply(&mut self, waiter: Waiter, reply: Reply) {
        if self.rng.chance(self.plan.drop_probability) {
            return;
        }
        // A client that left gets no answer: its process is gone.
        let Some(client) = self.clients.iter().position(|c| c.id == waiter.client) else {
            return;
        };
        let delay = self.delay();
        self.schedule(
            delay,
            EventKind::ToClient {
                client,
                op: waiter.op,
                reply,
            },
        );
    }

    fn client_next(&mut self, client: usize) {
        if self.clients[client].current.is_some() || !self.clients_issue_new {
            return;
        }
        let (request, input) = self.clients[client].next_operation(&mut self.rng, KEYS);
        let op = self.history.len();
        self.history.push(Operation {
            client_id: self.clients[client].id.0,
            input,
            call: self.step,
            output: LinOutput::Unknown,
            return_time: crate::lincheck::RETURN_TIME_UNKNOWN,
        });
        self.clients[client].current = Some(InFlight {
            op,
            request,
            attempt: 0,
            started_ms: self.now_ms,
        });
        self.send_attempt(client, None);
    }

    /// The client stops retrying its operation: the history keeps it with an unknown
    /// output (lincheck's convention for an operation that may or may not have taken
    /// effect, at any time after its call), and the next operation takes the next
    /// sequence number. A retry still in the network is answered `Stale` once the next
    /// sequence is applied, or applies the command once before it, both of which the
    /// unknown outcome allows.
    fn give_up(&mut self, client: usize) {
        let Some(current) = self.clients[client].current.take() else {
            return;
        };
        self.stats.give_ups += 1;
        if self.options.verbose {
            let id = self.clients[client].id;
            self.note(format!(
                "{id:?} gives up on operation {} (outcome unknown)",
                current.op
            ));
        }
        self.maybe_retire(client);
        let think = self.rng.range(0, CLIENT_THINK_MS_MAX);
        self.schedule(think, EventKind::ClientNext { client });
    }

    /// Between operations, a client may leave and a new one (new id, new session, the
    /// sequence from 1) take its place, so that more clients than the session table holds
    /// pass through the run. Departures are spaced (`FaultPlan::client_retire_spacing_ms`)
    /// so that eviction never drops a session whose client may still have a command in
    /// flight.
    fn maybe_retire(&mut self, client: usize) {
        let Some(spacing_ms) = self.plan.client_retire_spacing_ms() else {
            return;
        };
        if !self.faults_enabled
            || self
                .last_retirement_ms
                .is_some_and(|at_ms| self.now_ms - at_ms < spacing_ms)
            || !self.rng.chance(CLIENT_RETIRE_PROBABILITY)
        {
            return;
        }
        let id = ClientId(self.client_ids.len() as u64 + 1);
        self.client_ids.push(id);
        self.last_retirement_ms = Some(self.now_ms);
        self.stats.client_departures += 1;
        let old = std::mem::replace(&mut self.clients[client], SimClient::new(id));
        self.note(format!("{:?} leaves; {id:?} takes its place", old.id));
    }

    /// Applies a client command on `node`'s machine, checking exactly-once and counting
    /// the sessions the table dropped (once per index, on the first node to apply it).
    fn apply_command(
        &mut self,
        node: usize,
        command: SessionCommand<crate::machine::KvCommand>,
        ctx: &ApplyContext,
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

    fn send_attempt(&mut self, client: usize, target: Option<NodeId>) {
        let ids = self.ids.clone();
        let c = &mut self.clients[client];
        let Some(current) = c.current.as_mut() else {
            return;
        };
        current.attempt += 1;
        let (op, attempt, request) = (current.op, current.attempt, current.request.clone());
        if let Some(t) = target {
            c.leader_guess = Some(t);
        }
        let node_id = c.target(&ids);
        // A guess may name an identity that is gone: then the next node in turn.
        let node = match self.slot(node_id) {
            Some(node) => node,
            None => {
                let next = self.clients[client].target(&ids);
                self.slot(next).unwrap_or(0)
            }
        };
        if !self.rng.chance(self.plan.drop_probability) {
            let delay = self.delay();
            self.schedule(
                delay,
                EventKind::ToNode {
                    node,
                    client,
                    op,
                    request,
                },
            );
        }
        self.schedule(
            CLIENT_TIMEOUT_MS,
            EventKind::ClientTimeout {
                client,
                op,
                attempt,
            },
        );
    }

    /// A client's request reaches node `node`: its member takes it (a follower forwards
    /// commands and asks the leader for read points, as the worker does).
    fn on_request(
        &mut self,
        node: usize,
        client: usize,
        op: usize,
        request: Request,
    ) -> Result<(), Violation> {
        if !self.nodes[node].is_up() || self.paused.contains_key(&node) {
            return Ok(());
        }
        let waiter = Waiter {
            client: self.clients[client].id,
            op,
        };
        let id = self.nodes[node].next_request_id();
        let (request, read_key) = match request {
            Request::Command(command) => {
                let data = Bytes::from(postcard::to_allocvec(&command).expect("commands encode"));
                (MemberRequest::Execute(data), None)
            }
            Request::Read { key } => (MemberRequest::StrongRead, Some(key)),
        };
        self.nodes[node]
            .requests
            .insert(id, Pending { waiter, read_key });
        self.drive(node, |m, now| m.handle_request(now, id, request))
    }

    fn on_reply(&mut self, client: usize, op: usize, reply: Reply) -> Result<(), Violation> {
        let c = &mut self.clients[client];
        if c.current.as_ref().is_none_or(|cur| cur.op != op) {
            return Ok(()); // an answer to an operation already finished
        }
        if matches!(
            reply,
            Reply::Output(crate::machine::SessionOutput::Duplicate(_))
        ) {
            self.stats.duplicates += 1;
        }
        let c = &mut self.clients[client];
        match c.on_reply(reply) {
            Outcome::Done(output) => {
                c.current = None;
                let record = &mut self.history[op];
                record.output = output;
                record.return_time = self.step;
                self.stats.ops_completed += 1;
                self.maybe_retire(client);
                let think = self.rng.range(0, CLIENT_THINK_MS_MAX);
                self.schedule(think, EventKind::ClientNext { client });
            }
            Outcome::RetryAt(hint) => {
                let backoff = self.rng.range(1, 15);
                if let Some(h) = hint {
                    self.clients[client].leader_guess = Some(h);
                }
                let attempt = self.clients[client]
                    .current
                    .as_ref()
                    .map_or(0, |c| c.attempt);
                // Retry through the timeout path so that only one retry is ever pending.
                self.schedule(
                    backoff,
                    EventKind::ClientTimeout {
                        client,
                        op,
                        attempt,
                    },
                );
            }
            Outcome::Bug(detail) => {
                return Err(Violation {
                    property: "exactly-once client sessions",
                    detail,
                });
            }
        }
        Ok(())
    }

    // ----- faults -----

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

    /// Ends a pause: everything that queued up is delivered now, in the order it came.
    fn resume(&mut self, node: usize) {
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

    fn current_leader(&self) -> Option<(usize, &Raft)> {
        self.nodes
            .iter()
            .enumerate()
            .filter_map(|(i, n)| n.raft().map(|r| (i, r)))
            .filter(|(_, r)| r.role() == Role::Leader)
            .max_by_key(|(_, r)| r.term())
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
    pub fn heal(&mut self) -> Result<(), Violation> {
        self.faults_enabled = false;
        self.plan.drop_probability = 0.0;
        self.plan.duplicate_probability = 0.0;
        self.plan.long_delay_probability = 0.0;
        self.blocked.clear();
        for n in &mut self.nodes {
            n.disk_slow_until_ms = 0;
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

    /// Whether every client is idle and a leader is known by every live member.
    pub fn settled(&self) -> bool {
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
    pub fn check_convergence(&self) -> Result<(), Violation> {
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
    pub fn describe_nodes(&self) -> String {
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
    pub fn pending_ops(&self) -> usize {
        self.clients.iter().filter(|c| c.current.is_some()).count()
    }
}
