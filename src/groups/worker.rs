//! The group worker: a thin driver that feeds the sans-IO core and carries out its
//! `Ready`s against real storage, a real state machine and a [`Transport`].
//!
//! One OS thread per group. It blocks only on its inbox (with the tick as timeout) and on
//! storage writes, which are synchronous and durable (group commit: everything that
//! arrived since the last write goes into one batch). It makes no protocol decisions: who
//! leads, what commits and when a read is safe all come from the core.
use std::collections::{BTreeMap, BTreeSet};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use tokio::sync::{oneshot, watch};

use super::formation::{Decision, Formation, FormationStatus};
use super::transport::{ForwardRefusal, InboxItem, PeerFrame, Transport};
use crate::machine::{ApplyContext, LeadershipPreference, Sessions, StateMachine};
use crate::raft::Snapshot;
use crate::raft::{
    EntryPayload, Event, Index, Input, Membership, MembershipChange, NodeId, Raft, ReadState,
    Ready, Rejection, Role, StepError, Term,
};
use crate::storage::snapshot_store::SnapshotWriter;
use crate::storage::{SnapshotHandle, SnapshotStore, Storage, WriteBatch, WriteTiming};

/// Most inbox items handled before the worker writes and answers (bounds latency).
pub const ITEMS_PER_ROUND_MAX: usize = 4096;

/// Why a client request did not complete; the handle decides whether to retry.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RequestError {
    #[error("no leader is known")]
    NoLeader,
    #[error("the outcome is unknown (leader changed or request lost); retry")]
    Unknown,
    #[error("refused: {0}")]
    Refused(String),
    #[error("the node stopped: {0}")]
    Stopped(String),
}

/// A request from a [`Group`](super::Group) handle to its worker.
pub enum ClientRequest {
    /// An encoded `SessionCommand`; answered with the encoded `SessionOutput`.
    Execute {
        command: Bytes,
        reply: oneshot::Sender<Result<Bytes, RequestError>>,
    },
    /// An encoded `SessionCommand` the caller wants appended, not applied: answered with
    /// the log index the leader gave it as soon as the leader has appended it.
    Feed {
        command: Bytes,
        reply: oneshot::Sender<Result<Index, RequestError>>,
    },
    /// A linearizable read point: answered once the local state machine has applied it,
    /// with the encoded query result.
    StrongQuery {
        query: Bytes,
        reply: oneshot::Sender<Result<Bytes, RequestError>>,
    },
    /// Read local state now (may be stale).
    WeakQuery {
        query: Bytes,
        reply: oneshot::Sender<Result<Bytes, RequestError>>,
    },
    TransferLeadership {
        to: NodeId,
    },
    /// Leave the group for good: hand leadership over if this member leads, then have the
    /// leader remove it; answered once the removal is committed. A member whose identity
    /// dies with the process (a TD, which has a new key at every boot) does this before it
    /// stops, so the group never waits for a voter that cannot come back.
    Leave {
        reply: oneshot::Sender<Result<(), RequestError>>,
    },
}

/// What the worker publishes after every round.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GroupStatus {
    pub node: Option<NodeId>,
    pub role: Option<Role>,
    pub term: Term,
    pub leader: Option<NodeId>,
    pub commit_index: Index,
    pub applied_index: Index,
    /// Index of the latest snapshot (taken here or installed from the leader); the log
    /// before it is compacted away.
    pub snapshot_index: Index,
    pub membership: Membership,
    /// Set when the node stopped participating, with the reason (e.g. a storage error).
    pub stopped: Option<String>,
}

/// Static parameters of a worker.
#[derive(Clone, Debug)]
pub struct WorkerConfig {
    pub tick: Duration,
    /// Forwarded requests without an answer after this long are reported `Unknown`.
    pub forward_timeout: Duration,
    /// Snapshot and compact every this many applied entries (`None`: never).
    pub snapshot_every: Option<u64>,
    /// Snapshot and compact once the commands applied since the last snapshot add up to
    /// this many bytes (`None`: never), whichever of the two limits comes first: a log of
    /// few but large commands is bounded too.
    pub snapshot_bytes: Option<u64>,
    /// As leader, add every bonded peer (bonds exist only with attested peers that proved
    /// the group key) that is not a member as a learner; the core promotes caught-up
    /// learners to voters up to `max_voters`.
    pub auto_membership: bool,
    /// As leader, remove a member that has been unreachable this long (`None`: never).
    /// It is added again, as a learner, when it bonds again.
    pub removal_timeout: Option<Duration>,
    /// The configured founding set, this member included (DESIGN §7.2): a fresh member
    /// writes the first configuration, with them as voters, once every one of them is
    /// bonded and has confirmed the same set; it joins instead if one of them is already
    /// in a group ([`super::formation`]). `None`: it only joins.
    pub founders: Option<BTreeSet<NodeId>>,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        Self {
            tick: Duration::from_millis(50),
            forward_timeout: Duration::from_secs(2),
            snapshot_every: Some(10_000),
            snapshot_bytes: Some(64 << 20),
            auto_membership: true,
            removal_timeout: Some(Duration::from_secs(300)),
            founders: None,
        }
    }
}

/// See [`Worker::finish_snapshot`].
struct SnapshotInProgress {
    /// The applied index the snapshot was taken at.
    index: Index,
    /// Syncs the file and gives its handle.
    syncing: std::thread::JoinHandle<Result<SnapshotHandle, String>>,
}

type Reply = oneshot::Sender<Result<Bytes, RequestError>>;
type IndexReply = oneshot::Sender<Result<Index, RequestError>>;

/// A local caller waiting for the leader's answer to a forwarded command.
enum ForwardedReply {
    /// `execute`: the command's output once applied.
    Output(Reply),
    /// `feed`: the index the leader appended the command at.
    Index(IndexReply),
}

impl ForwardedReply {
    fn fail(self, err: RequestError) {
        match self {
            Self::Output(reply) => {
                let _ = reply.send(Err(err));
            }
            Self::Index(reply) => {
                let _ = reply.send(Err(err));
            }
        }
    }
}

/// What a local caller learns from a refusal of the leader (the handle retries the first two).
fn request_error(refusal: ForwardRefusal) -> RequestError {
    match refusal {
        ForwardRefusal::NotLeader(None) => RequestError::NoLeader,
        ForwardRefusal::NotLeader(Some(_)) | ForwardRefusal::Unknown => RequestError::Unknown,
        ForwardRefusal::Rejected(why) => RequestError::Refused(why),
    }
}

/// Removes request `request_id` from `table` if `from` is the member it went to
/// (`asked` reads that from an entry). A bonded member's answer to a request sent to
/// another is dropped: only the member asked may say what became of a command or where a
/// read may be served (request ids are this member's own counter, easy to guess).
fn take_from_asked<T>(
    me: NodeId,
    table: &mut BTreeMap<u64, T>,
    request_id: u64,
    from: NodeId,
    asked: impl Fn(&T) -> NodeId,
) -> Option<T> {
    let to = asked(table.get(&request_id)?);
    if to != from {
        tracing::warn!(node = %me, %from, asked = %to, request_id, "an answer from a member the request did not go to; dropped");
        return None;
    }
    table.remove(&request_id)
}

/// Who is waiting for an entry or a read.
enum Waiter {
    Local(Reply),
    Remote { peer: NodeId, request_id: u64 },
}

enum ReadWaiter {
    /// A strong query of our own: run it once applied reaches the read point.
    Local { query: Bytes, reply: Reply },
    /// A follower's read-index request: send it the read point.
    Remote { peer: NodeId, request_id: u64 },
}

pub struct Worker<M: StateMachine, S: Storage> {
    id: NodeId,
    config: WorkerConfig,
    raft: Raft,
    machine: Sessions<M>,
    storage: S,
    /// Where the storage keeps snapshot bytes (the log records only their handles).
    snapshots: Arc<SnapshotStore>,
    /// Received snapshots stepped into the core this round: released (deleted unless
    /// installed) once the round's Readies are carried out.
    delivered_snapshots: Vec<SnapshotHandle>,
    /// A snapshot written by this worker whose file is being synced on a thread of its
    /// own (a large one takes seconds): compacted once that is done.
    snapshot_in_progress: Option<SnapshotInProgress>,
    /// Latency of every durable write (the fsync metric).
    write_timing: Arc<WriteTiming>,
    transport: Arc<dyn Transport>,
    inbox: Receiver<InboxItem<ClientRequest>>,
    status: watch::Sender<GroupStatus>,
    proposals: BTreeMap<Index, (Term, Waiter)>,
    next_request_id: u64,
    /// Our commands forwarded to the leader: request id → (reply, deadline, leader).
    forwarded: BTreeMap<u64, (ForwardedReply, Instant, NodeId)>,
    /// Follower reads waiting for the leader's read point: request id → (query, reply, deadline).
    forwarded_reads: BTreeMap<u64, (Bytes, Reply, Instant, NodeId)>,
    reads: BTreeMap<u64, ReadWaiter>,
    /// Reads whose read point is known, waiting for apply.
    waiting_reads: Vec<(Index, Bytes, Reply)>,
    last_snapshot_index: Index,
    /// Bytes of commands applied since the last snapshot (taken or installed).
    bytes_since_snapshot: u64,
    stopped: Option<String>,
    /// Peers with a live bond (admitted by the transport).
    bonded: BTreeSet<NodeId>,
    /// Since when each peer has been unreachable.
    unreachable_since: BTreeMap<NodeId, Instant>,
    /// Whether to found, join or wait while the core holds no state.
    formation: Formation,
    /// A [`ClientRequest::Leave`] in progress.
    leaving: Option<oneshot::Sender<Result<(), RequestError>>>,
    /// Members that asked to leave (as leader): never added back automatically while
    /// their bond stays up.
    departed: BTreeSet<NodeId>,
    /// What each bonded peer said of its leadership preference on its bond.
    preferences: BTreeMap<NodeId, LeadershipPreference>,
}

impl<M: StateMachine, S: Storage> Worker<M, S> {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        id: NodeId,
        config: WorkerConfig,
        raft: Raft,
        machine: Sessions<M>,
        storage: S,
        write_timing: Arc<WriteTiming>,
        transport: Arc<dyn Transport>,
        inbox: Receiver<InboxItem<ClientRequest>>,
        status: watch::Sender<GroupStatus>,
    ) -> Self {
        let last_snapshot_index = raft.snapshot_index();
        let snapshots = storage.snapshot_store();
        let formation = Formation::new(id, config.founders.clone(), raft.is_fresh());
        Self {
            id,
            config,
            raft,
            machine,
            storage,
            snapshots,
            delivered_snapshots: Vec::new(),
            snapshot_in_progress: None,
            write_timing,
            transport,
            inbox,
            status,
            proposals: BTreeMap::new(),
            next_request_id: 0,
            forwarded: BTreeMap::new(),
            forwarded_reads: BTreeMap::new(),
            reads: BTreeMap::new(),
            waiting_reads: Vec::new(),
            last_snapshot_index,
            bytes_since_snapshot: 0,
            stopped: None,
            bonded: BTreeSet::new(),
            unreachable_since: BTreeMap::new(),
            formation,
            leaving: None,
            departed: BTreeSet::new(),
            preferences: BTreeMap::new(),
        }
    }

    /// Runs until shutdown or until every handle and the transport let go of the inbox.
    pub fn run(mut self) {
        let mut next_tick = Instant::now() + self.config.tick;
        // A founding set of this member alone founds at once.
        let decision = self.formation.poll_initial();
        self.act_on(decision);
        self.process_ready();
        loop {
            let wait = next_tick.saturating_duration_since(Instant::now());
            match self.inbox.recv_timeout(wait) {
                Ok(InboxItem::Shutdown) => break,
                Ok(item) => {
                    self.handle_item(item);
                    // Group commit: take whatever else is queued before writing once.
                    let mut handled = 1;
                    while handled < ITEMS_PER_ROUND_MAX {
                        match self.inbox.try_recv() {
                            Ok(InboxItem::Shutdown) => return self.shutdown(),
                            Ok(item) => self.handle_item(item),
                            Err(_) => break,
                        }
                        handled += 1;
                    }
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => break,
            }
            let now = Instant::now();
            if now >= next_tick {
                next_tick = now + self.config.tick;
                self.step(Input::Tick);
                self.expire_forwarded(now);
                self.manage_membership(now);
                self.drive_leave();
            }
            self.finish_snapshot(false);
            self.process_ready();
        }
        self.shutdown();
    }

    fn shutdown(&mut self) {
        // A snapshot being synced is completed (and compacted) rather than left behind.
        self.finish_snapshot(true);
        let reason = self.stopped.clone().unwrap_or_else(|| "shut down".into());
        self.fail_everything(RequestError::Stopped(reason.clone()));
        self.status.send_modify(|s| s.stopped = Some(reason));
    }

    fn step(&mut self, input: Input) {
        if self.stopped.is_some() {
            return;
        }
        match self.raft.step(input) {
            Ok(()) => {}
            // Two leaders in one term, or a committed entry overwritten: two groups share
            // this id (or a member is not what it claims). Nothing more may be applied or
            // acknowledged here: stop, loudly, with the evidence.
            Err(e @ (StepError::SecondLeader { .. } | StepError::CommittedConflict { .. })) => {
                tracing::error!(node = %self.id, error = %e, "consensus safety violated: node stops");
                let reason = format!("consensus safety violated: {e}");
                self.stopped = Some(reason.clone());
                self.fail_everything(RequestError::Stopped(reason));
                self.publish_status();
            }
            // A bad frame from a peer: drop it, the core is unchanged.
            Err(e) => tracing::warn!(node = %self.id, error = %e, "input refused by the core"),
        }
    }

    /// Founds the group when formation says so.
    fn act_on(&mut self, decision: Decision) {
        let Decision::Found(founders) = decision else {
            return;
        };
        match self.raft.bootstrap(founders.clone()) {
            Ok(()) => {
                tracing::info!(node = %self.id, voters = ?founders.voters, "every founder confirmed: founded the group")
            }
            // Took a founder's log first: it founded the same group.
            Err(e) => tracing::info!(node = %self.id, reason = %e, "did not found"),
        }
    }

    /// Once the core holds state, formation is over: tells every bonded peer, so founders
    /// still waiting for this one learn that it is in a group.
    fn note_formed(&mut self) {
        if self.raft.is_fresh() || !self.formation.handle_formed() {
            return;
        }
        for peer in &self.bonded {
            self.transport
                .send(*peer, PeerFrame::Formation(FormationStatus::Formed));
        }
    }

    fn now_ms() -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64)
    }

    fn handle_item(&mut self, item: InboxItem<ClientRequest>) {
        match item {
            InboxItem::Frame { from, frame } => self.handle_frame(from, frame),
            InboxItem::PeerReachable { peer, reachable } => {
                if reachable {
                    self.bonded.insert(peer);
                    self.unreachable_since.remove(&peer);
                    // A new bond: a member that left and came back may be added again.
                    self.departed.remove(&peer);
                } else {
                    self.bonded.remove(&peer);
                    self.unreachable_since
                        .entry(peer)
                        .or_insert_with(Instant::now);
                }
                if !reachable {
                    // Whatever we forwarded to it will not be answered.
                    self.fail_forwards(|target| target == peer);
                }
                self.step(Input::PeerReachable { peer, reachable });
                if reachable {
                    let status = self.formation.status();
                    self.transport.send(peer, PeerFrame::Formation(status));
                    let preference = self.machine.leadership_preference();
                    self.transport.send(peer, PeerFrame::Preference(preference));
                } else {
                    self.formation.handle_bond_down(peer);
                    self.preferences.remove(&peer);
                }
            }
            InboxItem::Client(request) => self.handle_client(request),
            InboxItem::Shutdown => {}
        }
    }

    fn handle_client(&mut self, request: ClientRequest) {
        if let Some(reason) = &self.stopped {
            let err = RequestError::Stopped(reason.clone());
            match request {
                ClientRequest::Execute { reply, .. }
                | ClientRequest::StrongQuery { reply, .. }
                | ClientRequest::WeakQuery { reply, .. } => {
                    let _ = reply.send(Err(err));
                }
                ClientRequest::Feed { reply, .. } => {
                    let _ = reply.send(Err(err));
                }
                ClientRequest::Leave { reply } => {
                    let _ = reply.send(Err(err));
                }
                ClientRequest::TransferLeadership { .. } => {}
            }
            return;
        }
        match request {
            ClientRequest::Execute { command, reply } => {
                if self.raft.role() == Role::Leader {
                    self.propose(command, Waiter::Local(reply));
                } else {
                    self.forward(command, ForwardedReply::Output(reply));
                }
            }
            ClientRequest::Feed { command, reply } => {
                if self.raft.role() == Role::Leader {
                    let result = self.append(command).map(|(index, _)| index);
                    let _ = reply.send(result.map_err(request_error));
                } else {
                    self.forward(command, ForwardedReply::Index(reply));
                }
            }
            ClientRequest::WeakQuery { query, reply } => {
                let _ = reply.send(self.run_query(&query));
            }
            ClientRequest::StrongQuery { query, reply } => {
                self.next_request_id += 1;
                let request_id = self.next_request_id;
                if self.raft.role() == Role::Leader {
                    self.reads
                        .insert(request_id, ReadWaiter::Local { query, reply });
                    self.step(Input::ReadIndex { id: request_id });
                } else if let Some(leader) = self.raft.leader() {
                    let deadline = Instant::now() + self.config.forward_timeout;
                    self.forwarded_reads
                        .insert(request_id, (query, reply, deadline, leader));
                    self.transport
                        .send(leader, PeerFrame::ReadIndex { request_id });
                } else {
                    let _ = reply.send(Err(RequestError::NoLeader));
                }
            }
            ClientRequest::TransferLeadership { to } => {
                self.step(Input::TransferLeadership { to });
            }
            ClientRequest::Leave { reply } => {
                let membership = self.raft.membership();
                if membership.contains(self.id) && membership.members().all(|m| m == self.id) {
                    let _ = reply.send(Err(RequestError::Refused(
                        "the only member of a group cannot leave it".into(),
                    )));
                    return;
                }
                self.leaving = Some(reply);
                self.drive_leave();
            }
        }
    }

    /// One step of a [`ClientRequest::Leave`]: done once a configuration without this
    /// member is committed; as leader, hands leadership to another voter first; as
    /// follower, asks the leader to remove it (again on every tick until it does).
    fn drive_leave(&mut self) {
        let Some(reply) = self.leaving.take_if(|r| !r.is_closed()) else {
            return;
        };
        let membership = self.raft.membership();
        if !membership.contains(self.id) && self.raft.commit_index() >= self.raft.membership_index()
        {
            tracing::info!(node = %self.id, "left the group");
            let _ = reply.send(Ok(()));
            return;
        }
        match (self.raft.role(), self.raft.leader()) {
            (Role::Leader, _) => {
                let successor = membership
                    .voters
                    .iter()
                    .copied()
                    .find(|v| *v != self.id && self.bonded.contains(v));
                match successor {
                    Some(to) => self.step(Input::TransferLeadership { to }),
                    // No voter to hand over to (only learners): remove itself as leader.
                    None => self.step(Input::ChangeMembership(MembershipChange::Remove(self.id))),
                }
            }
            (_, Some(leader)) => self.transport.send(leader, PeerFrame::Leave),
            (_, None) => {}
        }
        self.leaving = Some(reply);
    }

    /// Sends a command to the leader for `reply`'s caller, or fails it if none is known.
    fn forward(&mut self, command: Bytes, reply: ForwardedReply) {
        let Some(leader) = self.raft.leader() else {
            return reply.fail(RequestError::NoLeader);
        };
        self.next_request_id += 1;
        let request_id = self.next_request_id;
        let frame = match reply {
            ForwardedReply::Output(_) => PeerFrame::Forward {
                request_id,
                command,
            },
            ForwardedReply::Index(_) => PeerFrame::ForwardFeed {
                request_id,
                command,
            },
        };
        let deadline = Instant::now() + self.config.forward_timeout;
        self.forwarded.insert(request_id, (reply, deadline, leader));
        self.transport.send(leader, frame);
    }

    /// Appends one command to the log (leader only).
    fn append(&mut self, command: Bytes) -> Result<(Index, Term), ForwardRefusal> {
        self.raft
            .propose(vec![command], Self::now_ms())
            .map_err(|reason| match reason {
                Rejection::NotLeader { leader } => ForwardRefusal::NotLeader(leader),
                other => ForwardRefusal::Rejected(other.to_string()),
            })
    }

    fn propose(&mut self, command: Bytes, waiter: Waiter) {
        match self.append(command) {
            Ok((index, term)) => {
                self.proposals.insert(index, (term, waiter));
            }
            Err(refusal) => self.answer(waiter, Err(refusal)),
        }
    }

    fn answer(&mut self, waiter: Waiter, result: Result<Bytes, ForwardRefusal>) {
        match waiter {
            Waiter::Local(reply) => {
                let _ = reply.send(result.map_err(request_error));
            }
            Waiter::Remote { peer, request_id } => {
                self.transport
                    .send(peer, PeerFrame::ForwardReply { request_id, result });
            }
        }
    }

    fn handle_frame(&mut self, from: NodeId, frame: PeerFrame) {
        match frame {
            PeerFrame::Raft(m) => {
                // A received snapshot is kept for this delivery until the core has had it.
                if let Some(handle) = super::snapshot_transfer::handle_of(&m) {
                    self.delivered_snapshots.push(handle);
                }
                if m.from != from {
                    tracing::warn!(node = %self.id, %from, claimed = %m.from, "frame claims another sender; dropped");
                    return;
                }
                if !self.formation.accepts_raft_from(from) {
                    // A founder waiting for its founders takes no other group's log.
                    tracing::debug!(node = %self.id, %from, "consensus traffic from a non-founder while founding; dropped");
                    return;
                }
                self.step(Input::Message(m));
            }
            PeerFrame::Forward {
                request_id,
                command,
            } => {
                if self.raft.role() == Role::Leader && self.stopped.is_none() {
                    self.propose(
                        command,
                        Waiter::Remote {
                            peer: from,
                            request_id,
                        },
                    );
                } else {
                    let refusal = ForwardRefusal::NotLeader(self.raft.leader());
                    self.transport.send(
                        from,
                        PeerFrame::ForwardReply {
                            request_id,
                            result: Err(refusal),
                        },
                    );
                }
            }
            PeerFrame::ForwardFeed {
                request_id,
                command,
            } => {
                let result = if self.raft.role() == Role::Leader && self.stopped.is_none() {
                    self.append(command).map(|(index, _)| index)
                } else {
                    Err(ForwardRefusal::NotLeader(self.raft.leader()))
                };
                self.transport
                    .send(from, PeerFrame::ForwardFeedReply { request_id, result });
            }
            PeerFrame::ForwardReply { request_id, result } => {
                match self.take_forwarded(from, request_id) {
                    Some(ForwardedReply::Output(reply)) => {
                        self.answer(Waiter::Local(reply), result)
                    }
                    // A reply of the wrong kind: the leader is confused; the caller retries.
                    Some(other) => other.fail(RequestError::Unknown),
                    None => {}
                }
            }
            PeerFrame::ForwardFeedReply { request_id, result } => {
                match self.take_forwarded(from, request_id) {
                    Some(ForwardedReply::Index(reply)) => {
                        let _ = reply.send(result.map_err(request_error));
                    }
                    Some(other) => other.fail(RequestError::Unknown),
                    None => {}
                }
            }
            PeerFrame::ReadIndex { request_id } => {
                if self.raft.role() == Role::Leader && self.stopped.is_none() {
                    self.next_request_id += 1;
                    let id = self.next_request_id;
                    self.reads.insert(
                        id,
                        ReadWaiter::Remote {
                            peer: from,
                            request_id,
                        },
                    );
                    self.step(Input::ReadIndex { id });
                } else {
                    let refusal = ForwardRefusal::NotLeader(self.raft.leader());
                    self.transport.send(
                        from,
                        PeerFrame::ReadIndexReply {
                            request_id,
                            result: Err(refusal),
                        },
                    );
                }
            }
            PeerFrame::ReadIndexReply { request_id, result } => {
                let asked =
                    take_from_asked(self.id, &mut self.forwarded_reads, request_id, from, |r| {
                        r.3
                    });
                if let Some((query, reply, _, _)) = asked {
                    match result {
                        Ok(index) => self.waiting_reads.push((index, query, reply)),
                        Err(refusal) => self.answer(Waiter::Local(reply), Err(refusal)),
                    }
                }
            }
            PeerFrame::Leave => {
                // `from` is the peer the bond authenticated: a member can remove only itself.
                if self.raft.role() != Role::Leader {
                    return;
                }
                let membership = self.raft.membership();
                if !membership.contains(from) {
                    // Gone from the latest configuration; once that is committed, say so
                    // (and keep it out: it asked).
                    if self.raft.membership_index() <= self.raft.commit_index() {
                        self.departed.insert(from);
                        self.transport.send(from, PeerFrame::Left);
                    }
                    return;
                }
                if self.departed.insert(from) {
                    tracing::info!(node = %self.id, member = %from, "member asked to leave; removing it");
                }
                if self.raft.membership_index() <= self.raft.commit_index() {
                    self.step(Input::ChangeMembership(MembershipChange::Remove(from)));
                }
            }
            PeerFrame::Preference(preference) => {
                if self.bonded.contains(&from) {
                    self.preferences.insert(from, preference);
                }
            }
            PeerFrame::Left => {
                // Believed only from the leader this member asked, while it is leaving.
                if self.leaving.is_some() && self.raft.leader() == Some(from) {
                    if let Some(reply) = self.leaving.take() {
                        tracing::info!(node = %self.id, leader = %from, "left the group");
                        let _ = reply.send(Ok(()));
                    }
                } else {
                    tracing::warn!(node = %self.id, %from, "a 'left' from a member this one did not ask; ignored");
                }
            }
            PeerFrame::Formation(status) => {
                // Only before formation, and only from a peer whose bond is up.
                if self.formation.is_formed() || !self.bonded.contains(&from) {
                    tracing::debug!(node = %self.id, %from, "formation frame after formation or from an unbonded peer; ignored");
                    return;
                }
                let decision = self.formation.handle_status(from, status);
                self.act_on(decision);
            }
        }
    }

    /// The caller waiting for forwarded request `request_id`, if `from` is the member the
    /// request went to (see [`take_from_asked`]).
    fn take_forwarded(&mut self, from: NodeId, request_id: u64) -> Option<ForwardedReply> {
        take_from_asked(self.id, &mut self.forwarded, request_id, from, |f| f.2)
            .map(|(reply, _, _)| reply)
    }

    /// The leader's automatic membership: bonded non-members join as learners, members
    /// unreachable for `removal_timeout` are removed. One change at a time, each only once
    /// the previous one is committed.
    fn manage_membership(&mut self, now: Instant) {
        if !self.config.auto_membership || self.raft.role() != Role::Leader {
            return;
        }
        if self.raft.membership_index() > self.raft.commit_index() {
            return;
        }
        let membership = self.raft.membership().clone();
        let departed = self
            .departed
            .iter()
            .find(|p| membership.contains(**p) && **p != self.id);
        // A joiner is added once it has said how it takes part: an observer never votes.
        let joiner = self.bonded.iter().find_map(|p| {
            let preference = self.preferences.get(p)?;
            (!membership.contains(*p) && !self.departed.contains(p)).then_some((*p, *preference))
        });
        let change = if let Some(peer) = departed {
            // Asked to leave while another change was in flight: remove it now.
            Some(MembershipChange::Remove(*peer))
        } else if let Some((peer, preference)) = joiner {
            Some(match preference {
                LeadershipPreference::Observer => MembershipChange::AddObserver(peer),
                LeadershipPreference::Normal | LeadershipPreference::Reluctant => {
                    MembershipChange::AddLearner(peer)
                }
            })
        } else if let Some(timeout) = self.config.removal_timeout {
            self.unreachable_since
                .iter()
                .find(|(peer, since)| {
                    **peer != self.id
                        && membership.contains(**peer)
                        && now.duration_since(**since) >= timeout
                })
                .map(|(peer, _)| MembershipChange::Remove(*peer))
        } else {
            None
        };
        if let Some(change) = change {
            tracing::info!(node = %self.id, ?change, "automatic membership change");
            self.step(Input::ChangeMembership(change));
        }
    }

    fn expire_forwarded(&mut self, now: Instant) {
        self.fail_forwarded_where(|deadline, _| deadline <= now);
    }

    /// Fails forwarded requests whose target matches: the handle retries them (with the
    /// same session sequence, so a write that did commit is not applied twice).
    fn fail_forwards(&mut self, target: impl Fn(NodeId) -> bool) {
        self.fail_forwarded_where(|_, to| target(to));
    }

    fn fail_forwarded_where(&mut self, doomed: impl Fn(Instant, NodeId) -> bool) {
        let ids: Vec<u64> = self
            .forwarded
            .iter()
            .filter(|(_, (_, deadline, to))| doomed(*deadline, *to))
            .map(|(id, _)| *id)
            .collect();
        for id in ids {
            if let Some((reply, _, _)) = self.forwarded.remove(&id) {
                reply.fail(RequestError::Unknown);
            }
        }
        let ids: Vec<u64> = self
            .forwarded_reads
            .iter()
            .filter(|(_, (_, _, deadline, to))| doomed(*deadline, *to))
            .map(|(id, _)| *id)
            .collect();
        for id in ids {
            if let Some((_, reply, _, _)) = self.forwarded_reads.remove(&id) {
                let _ = reply.send(Err(RequestError::Unknown));
            }
        }
    }

    /// Takes Readies from the core until it has nothing more to say.
    fn process_ready(&mut self) {
        for _ in 0..64 {
            if self.stopped.is_some() {
                break;
            }
            let ready = self.raft.ready();
            if ready.is_empty() {
                break;
            }
            self.carry_out(ready);
        }
        // Also once stopped: a delivered snapshot nobody will install must not stay.
        for handle in std::mem::take(&mut self.delivered_snapshots) {
            self.snapshots.release(&handle);
        }
        if self.stopped.is_some() {
            return;
        }
        self.note_formed();
        self.serve_waiting_reads();
        self.publish_status();
    }

    /// Executes one Ready in the order the core's contract demands.
    fn carry_out(&mut self, ready: Ready) {
        let Ready {
            hard_state,
            snapshot,
            entries,
            messages,
            persisted_messages,
            committed_entries,
            read_states,
            events,
        } = ready;
        // Appends from a leader may leave before its own write (thesis §10.2.1).
        for m in messages {
            self.transport.send(m.to, PeerFrame::Raft(m));
        }
        let batch = WriteBatch {
            snapshot: snapshot.clone(),
            entries,
            hard_state,
        };
        if !batch.is_empty() {
            let persisted = batch.persisted_position();
            let started = Instant::now();
            let written = self.storage.write(&batch);
            self.write_timing
                .record(started.elapsed(), batch.entries.len());
            if let Err(e) = written {
                // Never acknowledge what is not durable: stop participating.
                tracing::error!(node = %self.id, error = %e, "storage write failed; node stops");
                self.stopped = Some(format!("storage write failed: {e}"));
                self.fail_everything(RequestError::Stopped(format!("storage write failed: {e}")));
                self.publish_status();
                return;
            }
            if let Some((index, term)) = persisted {
                self.step(Input::Persisted { index, term });
            }
        }
        for m in persisted_messages {
            self.transport.send(m.to, PeerFrame::Raft(m));
        }
        if let Some(s) = snapshot {
            if let Err(e) = self.install(&s) {
                tracing::error!(node = %self.id, index = s.meta.index, error = %e, "snapshot from the leader does not restore; node stops");
                self.stopped = Some(format!("snapshot from the leader does not restore: {e}"));
                self.fail_everything(RequestError::Stopped(format!("bad snapshot: {e}")));
                self.publish_status();
                return;
            }
            self.last_snapshot_index = s.meta.index;
            self.bytes_since_snapshot = 0;
            let keep = self.proposals.split_off(&(s.meta.index + 1));
            for (_, (_, waiter)) in std::mem::replace(&mut self.proposals, keep) {
                self.answer(waiter, Err(ForwardRefusal::Unknown));
            }
        }
        self.on_events(events);
        for entry in committed_entries {
            let ctx = ApplyContext {
                index: entry.index,
                term: entry.term,
                timestamp_ms: entry.timestamp_ms,
            };
            if let EntryPayload::Command(data) = &entry.payload {
                self.bytes_since_snapshot += data.len() as u64;
            }
            let output = match &entry.payload {
                EntryPayload::Command(data) => match postcard::from_bytes(data) {
                    Ok(command) => {
                        let out = self.machine.apply(command, &ctx);
                        postcard::to_allocvec(&out).ok().map(Bytes::from)
                    }
                    Err(e) => {
                        // Every replica skips the same undecodable entry the same way.
                        tracing::warn!(node = %self.id, index = entry.index, error = %e, "committed command does not decode; skipped");
                        None
                    }
                },
                _ => None,
            };
            if let Some((term, waiter)) = self.proposals.remove(&entry.index) {
                let result = match output {
                    Some(out) if term == entry.term => Ok(out),
                    _ => Err(ForwardRefusal::Unknown),
                };
                self.answer(waiter, result);
            }
        }
        self.on_read_states(read_states);
        self.maybe_snapshot();
    }

    fn on_events(&mut self, events: Vec<Event>) {
        for event in events {
            if let Event::StateChanged { leader, .. } = &event {
                // Requests forwarded to a former leader will not be answered by it.
                let leader = *leader;
                self.fail_forwards(|target| Some(target) != leader);
            }
            match event {
                Event::StateChanged { role, .. } if role != Role::Leader => {
                    // Proposals we made as leader may or may not commit: the handle retries
                    // with the same session sequence, which is safe either way.
                    for (_, (_, waiter)) in std::mem::take(&mut self.proposals) {
                        self.answer(waiter, Err(ForwardRefusal::Unknown));
                    }
                }
                Event::ReadRejected { id, reason } => {
                    if let Some(w) = self.reads.remove(&id) {
                        let refusal = match reason {
                            Rejection::NotLeader { leader } => ForwardRefusal::NotLeader(leader),
                            other => ForwardRefusal::Rejected(other.to_string()),
                        };
                        match w {
                            ReadWaiter::Local { reply, .. } => {
                                self.answer(Waiter::Local(reply), Err(refusal))
                            }
                            ReadWaiter::Remote { peer, request_id } => self.transport.send(
                                peer,
                                PeerFrame::ReadIndexReply {
                                    request_id,
                                    result: Err(refusal),
                                },
                            ),
                        }
                    }
                }
                _ => {}
            }
        }
    }

    fn on_read_states(&mut self, read_states: Vec<ReadState>) {
        for rs in read_states {
            match self.reads.remove(&rs.id) {
                Some(ReadWaiter::Local { query, reply }) => {
                    self.waiting_reads.push((rs.index, query, reply))
                }
                Some(ReadWaiter::Remote { peer, request_id }) => self.transport.send(
                    peer,
                    PeerFrame::ReadIndexReply {
                        request_id,
                        result: Ok(rs.index),
                    },
                ),
                None => {}
            }
        }
    }

    fn serve_waiting_reads(&mut self) {
        let applied = self.raft.applied_index();
        let (ready, waiting): (Vec<_>, Vec<_>) = std::mem::take(&mut self.waiting_reads)
            .into_iter()
            .partition(|(index, _, _)| *index <= applied);
        self.waiting_reads = waiting;
        for (_, query, reply) in ready {
            let _ = reply.send(self.run_query(&query));
        }
    }

    fn run_query(&self, query: &[u8]) -> Result<Bytes, RequestError> {
        let query: M::Query = postcard::from_bytes(query)
            .map_err(|e| RequestError::Refused(format!("query does not decode: {e}")))?;
        let result = self.machine.query(&query);
        postcard::to_allocvec(&result)
            .map(Bytes::from)
            .map_err(|e| RequestError::Refused(format!("result does not encode: {e}")))
    }

    fn maybe_snapshot(&mut self) {
        let applied = self.raft.applied_index();
        let by_entries = self
            .config
            .snapshot_every
            .is_some_and(|every| applied >= self.last_snapshot_index + every);
        let by_bytes = self
            .config
            .snapshot_bytes
            .is_some_and(|bytes| self.bytes_since_snapshot >= bytes);
        if !(by_entries || by_bytes)
            || applied <= self.last_snapshot_index
            || self.snapshot_in_progress.is_some()
        {
            return;
        }
        let writer = match self.write_snapshot() {
            Ok(writer) => writer,
            Err(e) => {
                tracing::warn!(node = %self.id, error = %e, "snapshot failed; log not compacted");
                return;
            }
        };
        self.last_snapshot_index = applied;
        self.bytes_since_snapshot = 0;
        // Syncing the file is what takes long (seconds for a GiB): not on this thread,
        // which must keep the consensus core ticking. Its bytes are all written already.
        let syncing = std::thread::Builder::new()
            .name(format!("tessera-snapshot-{}", self.id))
            .spawn(move || writer.finish(None).map_err(|e| e.to_string()));
        match syncing {
            Ok(syncing) => {
                self.snapshot_in_progress = Some(SnapshotInProgress {
                    index: applied,
                    syncing,
                })
            }
            // The writer went with the closure: its file is discarded.
            Err(e) => {
                tracing::warn!(node = %self.id, error = %e, "snapshot not synced; log not compacted")
            }
        }
    }

    /// Once the snapshot in progress is durable (or at once, waiting for it, with `wait`):
    /// hands it to the core and records it in the log store, which compacts the log.
    fn finish_snapshot(&mut self, wait: bool) {
        let Some(done) = self
            .snapshot_in_progress
            .take_if(|p| wait || p.syncing.is_finished())
        else {
            return;
        };
        let handle = match done.syncing.join() {
            Ok(Ok(handle)) => handle,
            Ok(Err(e)) => {
                tracing::warn!(node = %self.id, error = %e, "snapshot not synced; log not compacted");
                return;
            }
            Err(_) => {
                tracing::error!(node = %self.id, "the snapshot sync thread panicked; log not compacted");
                return;
            }
        };
        let data = handle.encode();
        self.step(Input::Compact {
            index: done.index,
            data: data.clone(),
        });
        // Not taken when the core has moved on meanwhile (a snapshot installed from the
        // leader, even at this very index) or has stopped: the core's snapshot must be
        // this one, or the log store would be told of one and the pins of another.
        let taken = self
            .raft
            .snapshot()
            .filter(|s| s.data == data && self.stopped.is_none());
        let Some(snapshot) = taken.cloned() else {
            self.snapshots.discard(&handle);
            return;
        };
        self.snapshots.serve(&handle);
        match self.storage.compact(&snapshot) {
            Ok(()) => self.snapshots.make_current(&handle),
            // The core serves the new snapshot, the log store still refers to the previous
            // one: both files stay until a later compaction succeeds.
            Err(e) => tracing::warn!(node = %self.id, error = %e, "storage compaction failed"),
        }
    }

    /// Streams the state machine into a new file of the snapshot store (not synced yet).
    fn write_snapshot(&self) -> Result<SnapshotWriter, String> {
        let mut writer = self.snapshots.writer().map_err(|e| e.to_string())?;
        self.machine
            .snapshot_to(&mut writer)
            .map_err(|e| e.to_string())?;
        Ok(writer)
    }

    /// Restores the state machine from a snapshot the log store now refers to, streaming
    /// (and verifying) its bytes from the snapshot store.
    fn install(&mut self, snapshot: &Snapshot) -> Result<(), String> {
        let handle = SnapshotHandle::decode(&snapshot.data).map_err(|e| e.to_string())?;
        let mut reader = self.snapshots.reader(&handle).map_err(|e| e.to_string())?;
        self.machine
            .restore_from(&mut reader)
            .map_err(|e| e.to_string())?;
        self.snapshots.make_current(&handle);
        tracing::info!(node = %self.id, index = snapshot.meta.index, %handle, "installed a snapshot from the leader");
        Ok(())
    }

    fn fail_everything(&mut self, err: RequestError) {
        for (_, (_, waiter)) in std::mem::take(&mut self.proposals) {
            if let Waiter::Local(reply) = waiter {
                let _ = reply.send(Err(err.clone()));
            }
        }
        for (_, (reply, _, _)) in std::mem::take(&mut self.forwarded) {
            reply.fail(err.clone());
        }
        for (_, (_, reply, _, _)) in std::mem::take(&mut self.forwarded_reads) {
            let _ = reply.send(Err(err.clone()));
        }
        for (_, w) in std::mem::take(&mut self.reads) {
            if let ReadWaiter::Local { reply, .. } = w {
                let _ = reply.send(Err(err.clone()));
            }
        }
        for (_, _, reply) in std::mem::take(&mut self.waiting_reads) {
            let _ = reply.send(Err(err.clone()));
        }
        if let Some(reply) = self.leaving.take() {
            let _ = reply.send(Err(err));
        }
    }

    fn publish_status(&self) {
        let status = GroupStatus {
            node: Some(self.id),
            role: Some(self.raft.role()),
            term: self.raft.term(),
            leader: self.raft.leader(),
            commit_index: self.raft.commit_index(),
            applied_index: self.raft.applied_index(),
            snapshot_index: self.raft.snapshot_index(),
            membership: self.raft.membership().clone(),
            stopped: self.stopped.clone(),
        };
        self.status.send_if_modified(|s| {
            if *s == status {
                false
            } else {
                *s = status;
                true
            }
        });
    }
}

#[cfg(test)]
mod tests;
