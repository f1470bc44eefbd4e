//! The group worker: the thin driver of a [`Member`] (which makes every decision: the
//! consensus core, request tables, formation, membership) against real storage, a real
//! state machine, a [`Transport`] and the system clock.
//!
//! It waits only on its inbox (with the tick as timeout) and on storage writes, which are
//! synchronous and durable (group commit: all that arrived since the last write goes into
//! one batch). With a store whose writes block (a sync to disk) it has an OS thread of its
//! own; with one that never blocks it is a task of the caller's runtime, one hand-off less
//! per message ([`Placement`]). It keeps the local callers' reply channels, applies
//! entries, runs queries and writes snapshot files; it decides nothing.
use std::collections::{BTreeMap, BTreeSet};
use std::sync::mpsc::{Receiver, TryRecvError};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use tokio::sync::{oneshot, watch, Notify};

use super::error::{Rejection, StopReason};
use super::member::{self, Action, Member, Now, Request, RequestId};
use super::transport::{InboxItem, PeerFrame, Transport};
use crate::group_id::GroupId;
use crate::machine::{ApplyContext, Sessions, StateMachine};
use crate::probe::{self, Hop};
use crate::raft::{
    Entry, EntryPayload, Incarnation, Index, Membership, MembershipChange, NodeId, Raft, Role,
    Snapshot, Term,
};
use crate::storage::snapshot_store::SnapshotWriter;
use crate::storage::{SnapshotHandle, SnapshotStore, Storage, WriteTiming};

/// Most inbox items handled before the worker writes and answers (bounds latency).
pub(crate) const ITEMS_PER_ROUND_MAX: usize = 4096;

/// A worker task woken this soon after it began to wait is under load: the task that woke
/// it is one of many feeding the inbox (the runtime runs a woken task right after its
/// waker, so without a yield every round would take one item). It yields once, so that the
/// others push theirs and the next round takes them all (group commit). Woken later, the
/// inbox is quiet and the item is taken at once: one client in sequence pays no yield.
const YIELD_IF_WOKEN_WITHIN: Duration = Duration::from_micros(10);

/// Where a worker runs.
pub(crate) enum Placement {
    /// A task of this async runtime: for a store whose writes never block, when the caller
    /// runs in a runtime. Messages reach the worker without waking another thread.
    Task(tokio::runtime::Handle),
    /// An OS thread of its own: for a store whose writes block (a sync to disk), so that a
    /// sync never holds up the runtime's other tasks; or when there is no runtime.
    Thread,
}

impl Placement {
    /// Where to run the worker of a store whose writes block (`writes_block`) or not.
    pub(crate) fn for_storage(writes_block: bool) -> Self {
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) if !writes_block => Placement::Task(runtime),
            _ => Placement::Thread,
        }
    }
}

/// The running worker, to wait for at shutdown.
pub(crate) enum WorkerHandle {
    /// A task of the runtime the group was started in.
    Task(tokio::task::JoinHandle<()>),
    /// A thread of its own.
    Thread(std::thread::JoinHandle<()>),
}

impl WorkerHandle {
    /// Waits until the worker has stopped, without blocking the runtime.
    pub(crate) async fn join(self) {
        match self {
            WorkerHandle::Task(task) => {
                let _ = task.await;
            }
            WorkerHandle::Thread(thread) => {
                let _ = tokio::task::spawn_blocking(move || thread.join()).await;
            }
        }
    }
}

/// What one round of taking items from the inbox came to.
enum Round {
    /// This many items were handled (a `Shutdown` that waits for a hand-over among them).
    Handled(usize),
    /// Stop now: shutdown asked for, or every sender gone.
    Stop,
}

/// Why a client request did not complete; the handle decides whether to retry.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RequestError {
    #[error("no leader is known")]
    NoLeader,
    #[error("the outcome is unknown (leader changed or request lost); retry")]
    Unknown,
    /// Too many of this member's requests wait for the leader's answer: nothing was sent.
    #[error("too many requests wait for the leader's answer; retry later")]
    Busy,
    #[error("refused: {0}")]
    Refused(Rejection),
    #[error("the node stopped: {0}")]
    Stopped(StopReason),
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
    /// An operator's membership change (leader only): answered with the index the new
    /// configuration was appended at.
    ChangeMembership {
        change: MembershipChange,
        reply: oneshot::Sender<Result<Index, RequestError>>,
    },
}

/// What the worker publishes after every round.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GroupStatus {
    /// This member (`None` before the worker's first round).
    pub node: Option<NodeId>,
    /// Its role in the current term.
    pub role: Option<Role>,
    /// The current term.
    pub term: Term,
    /// The leader of the current term, once known.
    pub leader: Option<NodeId>,
    /// The highest log index known committed.
    pub commit_index: Index,
    /// The highest log index applied to the state machine here.
    pub applied_index: Index,
    /// Index of the latest snapshot (taken here or installed from the leader); the log
    /// before it is compacted away.
    pub snapshot_index: Index,
    /// The latest configuration in this member's log (committed or not).
    pub membership: Membership,
    /// Which founding this member's log descends from (`None` while it is fresh); bonds
    /// refuse members of another ([`crate::raft::Incarnation`]).
    pub incarnation: Option<Incarnation>,
    /// Set when the node stopped participating, with the reason (e.g. a storage error).
    pub stopped: Option<StopReason>,
}

/// Static parameters of a worker.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WorkerConfig {
    /// The length of one tick of the core's timers.
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
    /// As leader, remove a member that has had no bond this long (`None`: never): one
    /// whose bond went down, or one this leader has never been bonded with (a member that
    /// died before it was elected). It is added again, as a learner, when it bonds again.
    pub removal_timeout: Option<Duration>,
    /// The configured founding set, this member included (architecture.md §7.2): a fresh member
    /// writes the first configuration, with them as voters, once every one of them is
    /// bonded and has confirmed the same set; it joins instead if one of them is already
    /// in a group (architecture.md §7.2). `None`: it only joins.
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

/// A random number from the system's generator (the clock if it has none: the member
/// only needs ids unlikely to repeat an earlier life's).
fn random_u64() -> u64 {
    let mut bytes = [0u8; 8];
    match ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes) {
        Ok(()) => u64::from_le_bytes(bytes),
        Err(_) => SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64),
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

/// A local caller the member owes an answer, by the request id the worker gave it.
enum Pending {
    /// `execute`: the command's output.
    Output(Reply),
    /// `feed`: the index the command was appended at.
    Index(oneshot::Sender<Result<Index, RequestError>>),
    /// A strong query, run once its read point is applied.
    Read {
        query: Bytes,
        reply: Reply,
    },
    Leave(oneshot::Sender<Result<(), RequestError>>),
}

impl Pending {
    /// Delivers the member's answer; an answer of another kind than the request (never
    /// produced by the member) is reported as an unknown outcome.
    fn answer(self, result: Result<member::Reply, RequestError>) {
        let mismatch = || RequestError::Unknown;
        match self {
            Self::Output(reply) => {
                let _ = reply.send(result.and_then(|r| match r {
                    member::Reply::Output(out) => Ok(out),
                    _ => Err(mismatch()),
                }));
            }
            Self::Index(reply) => {
                let _ = reply.send(result.and_then(|r| match r {
                    member::Reply::Index(index) => Ok(index),
                    _ => Err(mismatch()),
                }));
            }
            Self::Read { reply, .. } => {
                let _ = reply.send(result.and_then(|_| Err(mismatch())));
            }
            Self::Leave(reply) => {
                let _ = reply.send(result.and_then(|r| match r {
                    member::Reply::Left => Ok(()),
                    _ => Err(mismatch()),
                }));
            }
        }
    }
}

pub(crate) struct Worker<M: StateMachine, S: Storage> {
    id: NodeId,
    /// The group and network the machine learns from [`ApplyContext`].
    group: GroupId,
    network_id: String,
    config: WorkerConfig,
    /// Every decision: the core, the request tables, formation, membership.
    member: Member,
    machine: Sessions<M>,
    storage: S,
    /// Where the storage keeps snapshot bytes (the log records only their handles).
    snapshots: Arc<SnapshotStore>,
    /// Received snapshots stepped into the core this round: released (deleted unless
    /// installed) once the round's actions are carried out.
    delivered_snapshots: Vec<SnapshotHandle>,
    /// A snapshot written by this worker whose file is being synced on a thread of its
    /// own (a large one takes seconds): compacted once that is done.
    snapshot_in_progress: Option<SnapshotInProgress>,
    /// Latency of every durable write (the fsync metric).
    write_timing: Arc<WriteTiming>,
    transport: Arc<dyn Transport>,
    inbox: Receiver<InboxItem<ClientRequest>>,
    status: watch::Sender<GroupStatus>,
    /// Local callers waiting for the member, by the id the worker gave their request.
    pending: BTreeMap<RequestId, Pending>,
    /// The latest leave request (see [`Worker::cancel_abandoned`]).
    leave_request: Option<RequestId>,
    next_request: u64,
    /// A shutdown was asked for; the member is handing leadership over first.
    stopping: bool,
}

impl<M: StateMachine, S: Storage> Worker<M, S> {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
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
        let snapshots = storage.snapshot_store();
        let member = Member::new(
            config.clone(),
            raft,
            machine.leadership_preference(),
            random_u64(),
            machine.clock_ms(),
        );
        Self {
            id,
            group: GroupId([0; 32]),
            network_id: String::new(),
            config,
            member,
            machine,
            storage,
            snapshots,
            delivered_snapshots: Vec::new(),
            snapshot_in_progress: None,
            write_timing,
            transport,
            inbox,
            status,
            pending: BTreeMap::new(),
            leave_request: None,
            next_request: 0,
            stopping: false,
        }
    }

    /// The group (and its network) this worker's member belongs to, as the state machine
    /// sees it in [`ApplyContext`]; a group of all-zero id on no network without it.
    #[must_use]
    pub(crate) fn in_group(mut self, group: GroupId, network_id: impl Into<String>) -> Self {
        self.group = group;
        self.network_id = network_id.into();
        self
    }

    fn now() -> Now {
        Now {
            instant: Instant::now(),
            unix_ms: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64),
        }
    }

    /// Runs until shutdown or until every handle and the transport let go of the inbox.
    /// `wake` is the inbox's ([`Inbox::waker`](super::Inbox)): notified on every push.
    ///
    /// Async so that it can run as a task of the caller's runtime when its storage never
    /// blocks, and on a thread of its own (with a one-thread runtime) when it does: it
    /// awaits only its inbox and the tick.
    pub(crate) async fn run(mut self, wake: Arc<Notify>) {
        let mut next_tick = Instant::now() + self.config.tick;
        self.process_ready();
        loop {
            match self.take_round() {
                Round::Stop => break,
                Round::Handled(0) => {
                    let waiting_since = Instant::now();
                    let item_came = tokio::select! {
                        () = wake.notified() => true,
                        () = tokio::time::sleep_until(next_tick.into()) => false,
                    };
                    if item_came {
                        if waiting_since.elapsed() < YIELD_IF_WOKEN_WITHIN {
                            tokio::task::yield_now().await;
                        }
                        continue;
                    }
                }
                Round::Handled(_) => {}
            }
            let now = Self::now();
            if now.instant >= next_tick {
                next_tick = now.instant + self.config.tick;
                self.cancel_abandoned();
                self.member.handle_tick(now);
            }
            self.finish_snapshot(false);
            self.process_ready();
            if self.stopping && !self.member.handing_over(Self::now()) {
                break;
            }
        }
        self.shutdown();
    }

    /// Takes what is queued, up to [`ITEMS_PER_ROUND_MAX`] items (group commit: all of it
    /// goes into one write).
    fn take_round(&mut self) -> Round {
        let mut handled = 0;
        while handled < ITEMS_PER_ROUND_MAX {
            match self.inbox.try_recv() {
                Ok(InboxItem::Shutdown) if self.stop_asked() => return Round::Stop,
                Ok(item) => self.handle_item(item),
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => return Round::Stop,
            }
            handled += 1;
        }
        Round::Handled(handled)
    }

    /// A shutdown was asked for: whether to stop now. A leader hands leadership over
    /// first and stops once its successor's election has reached it (or its core gave
    /// up, after an election timeout); the worker runs on until then.
    fn stop_asked(&mut self) -> bool {
        if self.stopping {
            return false;
        }
        self.stopping = true;
        !self.member.hand_over(Self::now())
    }

    fn shutdown(&mut self) {
        // A snapshot being synced is completed (and compacted) rather than left behind.
        self.finish_snapshot(true);
        let reason = self
            .member
            .stopped()
            .cloned()
            .unwrap_or(StopReason::ShutDown);
        self.member.stop(reason.clone());
        self.process_ready();
        for (_, pending) in std::mem::take(&mut self.pending) {
            pending.answer(Err(RequestError::Stopped(reason.clone())));
        }
        self.status.send_modify(|s| s.stopped = Some(reason));
    }

    /// A leave whose caller went away (it gave up waiting) is not pursued. Only the
    /// latest leave is looked at (the member answers an earlier one when a later one comes),
    /// not every request in flight.
    fn cancel_abandoned(&mut self) {
        let Some(id) = self.leave_request else {
            return;
        };
        match self.pending.get(&id) {
            Some(Pending::Leave(reply)) if reply.is_closed() => {
                self.pending.remove(&id);
                self.member.handle_cancel(id);
                self.leave_request = None;
            }
            Some(_) => {}
            None => self.leave_request = None,
        }
    }

    fn handle_item(&mut self, item: InboxItem<ClientRequest>) {
        match item {
            InboxItem::Frame { from, frame } => {
                // A received snapshot is kept for this delivery until the core has had it.
                if let PeerFrame::Raft(m) = &frame {
                    probe::mark_message(m, Hop::FollowerInbox, Hop::LeaderResponseInbox);
                    if let Some(handle) = super::snapshot_transfer::handle_of(m) {
                        self.delivered_snapshots.push(handle);
                    }
                }
                self.member.handle_frame(Self::now(), from, frame);
            }
            InboxItem::PeerReachable { peer, reachable } => {
                self.member.handle_reachable(Self::now(), peer, reachable)
            }
            InboxItem::Client(request) => {
                probe::mark(Hop::LeaderInbox);
                self.handle_client(request)
            }
            InboxItem::Shutdown => {}
        }
    }

    fn handle_client(&mut self, request: ClientRequest) {
        let (request, pending) = match request {
            ClientRequest::WeakQuery { query, reply } => {
                let result = match self.member.stopped() {
                    Some(reason) => Err(RequestError::Stopped(reason.clone())),
                    None => self.run_query(&query),
                };
                let _ = reply.send(result);
                return;
            }
            ClientRequest::TransferLeadership { to } => {
                let id = self.next_request_id();
                self.member
                    .handle_request(Self::now(), id, Request::TransferLeadership(to));
                return;
            }
            ClientRequest::Execute { command, reply } => {
                (Request::Execute(command), Pending::Output(reply))
            }
            ClientRequest::Feed { command, reply } => {
                (Request::Feed(command), Pending::Index(reply))
            }
            ClientRequest::StrongQuery { query, reply } => {
                (Request::StrongRead, Pending::Read { query, reply })
            }
            ClientRequest::Leave { reply } => (Request::Leave, Pending::Leave(reply)),
            ClientRequest::ChangeMembership { change, reply } => {
                (Request::ChangeMembership(change), Pending::Index(reply))
            }
        };
        let id = self.next_request_id();
        if matches!(pending, Pending::Leave(_)) {
            self.leave_request = Some(id);
        }
        self.pending.insert(id, pending);
        self.member.handle_request(Self::now(), id, request);
    }

    fn next_request_id(&mut self) -> RequestId {
        self.next_request += 1;
        RequestId(self.next_request)
    }

    /// Carries out the member's actions until it has nothing more to say.
    fn process_ready(&mut self) {
        while let Some(action) = self.member.poll_action() {
            self.carry_out(action);
        }
        // Also once stopped: a delivered snapshot nobody will install must not stay.
        for handle in std::mem::take(&mut self.delivered_snapshots) {
            self.snapshots.release(&handle);
        }
        self.publish_status();
    }

    /// Executes one action of the member, in the order the member's contract demands.
    fn carry_out(&mut self, action: Action) {
        match action {
            Action::Send { to, frame } => {
                if let PeerFrame::Raft(m) = &frame {
                    probe::mark_message(m, Hop::LeaderSend, Hop::FollowerSend);
                }
                self.transport.send(to, frame)
            }
            Action::Write { batch, then } => {
                if !batch.is_empty() {
                    let started = Instant::now();
                    let written = self.storage.write(&batch);
                    self.write_timing
                        .record(started.elapsed(), batch.entries.len());
                    if let Err(e) = written {
                        // Never acknowledge what is not durable: stop participating.
                        tracing::error!(node = %self.id, error = %e, "storage write failed; node stops");
                        self.member.stop(StopReason::Storage(e));
                        return;
                    }
                }
                let persisted = batch.persisted_position();
                for m in then {
                    probe::mark_message(&m, Hop::LeaderSend, Hop::FollowerSend);
                    self.transport.send(m.to, PeerFrame::Raft(m));
                }
                if let Some((index, term)) = persisted {
                    self.member.handle_persisted(index, term);
                }
            }
            Action::Install(snapshot) => {
                if let Err(e) = self.install(&snapshot) {
                    tracing::error!(node = %self.id, index = snapshot.meta.index, error = %e, "snapshot from the leader does not restore; node stops");
                    self.member.stop(StopReason::Snapshot(e.to_string()));
                }
            }
            Action::Apply(entry) => {
                let mut entries = vec![entry];
                while let Some(next) = self.member.poll_apply() {
                    entries.push(next);
                }
                let outputs = self.apply(&entries);
                probe::mark_applied(entries.last().map_or(0, |e| e.index));
                for (entry, output) in entries.iter().zip(outputs) {
                    self.member.handle_applied(entry.index, entry.term, output);
                }
            }
            Action::Serve(id) => match self.pending.remove(&id) {
                Some(Pending::Read { query, reply }) => {
                    let _ = reply.send(self.run_query(&query));
                }
                Some(other) => other.answer(Err(RequestError::Unknown)),
                None => {}
            },
            Action::TakeSnapshot { index } => self.start_snapshot(index),
            Action::Answer { id, result } => {
                if let Some(pending) = self.pending.remove(&id) {
                    probe::mark(Hop::Answered);
                    pending.answer(result);
                }
            }
            Action::Observe(_) => {}
            Action::DisconnectForeign(peer) => self.transport.disconnect_foreign(peer),
        }
    }

    /// Applies consecutive committed entries to the state machine in one
    /// [`StateMachine::apply_batch`]: per entry, the encoded output of its command (`None`
    /// for entries that carry none, and for a command that does not decode, which every
    /// replica skips alike).
    fn apply(&mut self, entries: &[Entry]) -> Vec<Option<Bytes>> {
        let mut outputs = vec![None; entries.len()];
        let mut batch = Vec::with_capacity(entries.len());
        let mut slots = Vec::with_capacity(entries.len());
        for (slot, entry) in entries.iter().enumerate() {
            let EntryPayload::Command(data) = &entry.payload else {
                continue;
            };
            match postcard::from_bytes(data) {
                Ok(command) => {
                    let ctx = ApplyContext::new(entry.index, entry.term, entry.timestamp_ms)
                        .in_group(self.group, &self.network_id);
                    batch.push((command, ctx));
                    slots.push(slot);
                }
                Err(e) => {
                    tracing::warn!(node = %self.id, index = entry.index, error = %e, "committed command does not decode; skipped");
                }
            }
        }
        if batch.is_empty() {
            return outputs;
        }
        let applied = self.machine.apply_batch(batch);
        for (slot, output) in slots.into_iter().zip(applied) {
            outputs[slot] = postcard::to_allocvec(&output).ok().map(Bytes::from);
        }
        outputs
    }

    fn run_query(&self, query: &[u8]) -> Result<Bytes, RequestError> {
        let query: M::Query = postcard::from_bytes(query)
            .map_err(|e| RequestError::Refused(Rejection::UndecodableQuery(e.to_string())))?;
        let result = self.machine.query(&query);
        postcard::to_allocvec(&result)
            .map(Bytes::from)
            .map_err(|e| RequestError::Refused(Rejection::UnencodableResult(e.to_string())))
    }

    /// Streams the state machine into the snapshot store and syncs the file on a thread
    /// of its own: syncing is what takes long (seconds for a GiB), and this thread must
    /// keep the consensus core ticking.
    fn start_snapshot(&mut self, index: Index) {
        let writer = match self.write_snapshot() {
            Ok(writer) => writer,
            Err(e) => {
                tracing::warn!(node = %self.id, error = %e, "snapshot failed; log not compacted");
                self.member.handle_snapshot_taken(index, None);
                return;
            }
        };
        let syncing = std::thread::Builder::new()
            .name(format!("tessera-snapshot-{}", self.id))
            .spawn(move || writer.finish(None).map_err(|e| e.to_string()));
        match syncing {
            Ok(syncing) => self.snapshot_in_progress = Some(SnapshotInProgress { index, syncing }),
            // The writer went with the closure: its file is discarded.
            Err(e) => {
                tracing::warn!(node = %self.id, error = %e, "snapshot not synced; log not compacted");
                self.member.handle_snapshot_taken(index, None);
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
                self.member.handle_snapshot_taken(done.index, None);
                return;
            }
            Err(_) => {
                tracing::error!(node = %self.id, "the snapshot sync thread panicked; log not compacted");
                self.member.handle_snapshot_taken(done.index, None);
                return;
            }
        };
        // Not taken when the core has moved on meanwhile (a snapshot installed from the
        // leader, even at this very index) or has stopped: the core's snapshot must be
        // this one, or the log store would be told of one and the pins of another.
        let taken = self
            .member
            .handle_snapshot_taken(done.index, Some(handle.encode()));
        let snapshot = self.member.raft().snapshot().filter(|_| taken).cloned();
        let Some(snapshot) = snapshot else {
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

    fn publish_status(&self) {
        let raft = self.member.raft();
        let status = GroupStatus {
            node: Some(self.id),
            role: Some(raft.role()),
            term: raft.term(),
            leader: raft.leader(),
            commit_index: raft.commit_index(),
            applied_index: raft.applied_index(),
            snapshot_index: raft.snapshot_index(),
            membership: raft.membership().clone(),
            incarnation: raft.incarnation(),
            stopped: self.member.stopped().cloned(),
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
