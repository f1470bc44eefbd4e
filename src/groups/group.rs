//! The [`Group`] handle: what an application holds. Async, cheap to clone, and safe to use
//! from many tasks at once.
//!
//! Every `execute` and `feed` runs in an exactly-once client session (architecture.md §7.3): the command carries
//! a `(client id, sequence)` pair that the replicated [`Sessions`](crate::machine::Sessions)
//! table remembers, so the handle can retry through leader changes, lost forwards and
//! timeouts without the command ever applying twice. A session is used by one call at a
//! time; the handle keeps a pool of them, one per concurrent call.
use std::marker::PhantomData;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{oneshot, watch};
use tokio::time::Instant;

use super::error::{GroupError, Rejection, StopReason};
use super::transport::{Inbox, InboxItem};
use super::worker::{ClientRequest, GroupStatus, RequestError};
use crate::machine::{ClientId, SessionCommand, SessionOutput, StateMachine};
use crate::raft::{Index, Membership, MembershipChange, NodeId};

/// Pause between retries when no leader is known or the outcome was unknown.
const RETRY_BACKOFF: Duration = Duration::from_millis(20);

/// How fresh a query's answer must be.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Consistency {
    /// Read local state as it is: fast, possibly stale.
    Weak,
    /// Linearizable: read-index through the leader, answered after local apply catches up.
    Strong,
}

pub(super) struct GroupShared {
    pub inbox: Inbox<ClientRequest>,
    pub status: watch::Receiver<GroupStatus>,
    pub sessions: Mutex<SessionPool>,
    pub timeout: Duration,
    pub worker: Mutex<Option<super::worker::WorkerHandle>>,
    /// Latency of the worker's durable writes.
    pub write_timing: Arc<crate::storage::WriteTiming>,
    pub id: super::GroupId,
    /// The member's bonds and how to leave its gateway's table, when it runs over iroh.
    pub network: std::sync::OnceLock<Network>,
}

/// What a member over iroh holds beyond its worker.
pub(super) struct Network {
    pub bonds: Arc<super::Bonds>,
    pub detach: Box<dyn Fn() + Send + Sync>,
}

/// Free client sessions of this handle: (client id, next sequence number).
pub(super) struct SessionPool {
    pub free: Vec<(ClientId, u64)>,
    pub next_client: u64,
}

impl SessionPool {
    fn acquire(&mut self) -> (ClientId, u64) {
        self.free.pop().unwrap_or_else(|| {
            let id = ClientId(self.next_client);
            self.next_client = self.next_client.wrapping_add(1);
            (id, 1)
        })
    }

    fn release(&mut self, client: ClientId, used_seq: u64) {
        self.free.push((client, used_seq + 1));
    }
}

/// A member's handle on its group.
pub struct Group<M: StateMachine> {
    pub(super) shared: Arc<GroupShared>,
    pub(super) _machine: PhantomData<fn() -> M>,
}

impl<M: StateMachine> Clone for Group<M> {
    fn clone(&self) -> Self {
        Self {
            shared: self.shared.clone(),
            _machine: PhantomData,
        }
    }
}

impl<M: StateMachine> Group<M> {
    /// Applies `command` through the log and returns its output, from any member
    /// (followers forward to the leader). Linearizable, exactly once.
    pub async fn execute(&self, command: M::Command) -> Result<M::Output, GroupError> {
        let (client, seq) = self.lock_sessions().acquire();
        let result = self.execute_as(client, seq, command).await;
        self.lock_sessions().release(client, seq);
        result
    }

    /// Executes `commands` concurrently (each exactly once, each in its own session, so the
    /// worker can put them into one append) and returns their results in order. No order
    /// among them is promised; call [`Group::execute`] in sequence for that.
    pub async fn execute_many(
        &self,
        commands: Vec<M::Command>,
    ) -> Vec<Result<M::Output, GroupError>> {
        let mut set = tokio::task::JoinSet::new();
        let count = commands.len();
        for (i, command) in commands.into_iter().enumerate() {
            let group = self.clone();
            set.spawn(async move { (i, group.execute(command).await) });
        }
        let mut results: Vec<Option<Result<M::Output, GroupError>>> =
            (0..count).map(|_| None).collect();
        while let Some(joined) = set.join_next().await {
            match joined {
                Ok((i, r)) => results[i] = Some(r),
                Err(e) => tracing::error!(error = %e, "execute_many task failed"),
            }
        }
        results
            .into_iter()
            .map(|r| r.unwrap_or_else(|| Err(GroupError::Internal("execute task failed".into()))))
            .collect()
    }

    /// Appends `command` to the log and returns the index the leader gave it, as soon as
    /// the leader has appended it: without waiting for commit or apply (architecture.md §7.3).
    /// Works from any member (followers forward to the leader).
    ///
    /// The command runs in an exactly-once session like [`Group::execute`]: when a reply
    /// is lost the handle retries, and the log may then hold the command twice; the
    /// session applies it once, at or before the returned index. So once
    /// [`When::committed`] reaches the index, a [`Consistency::Strong`] query sees the
    /// command's effect — unless leadership changed before the entry committed: a new
    /// leader may then overwrite the index with other entries and the command is lost.
    /// Use `execute` when the outcome matters.
    pub async fn feed(&self, command: M::Command) -> Result<Index, GroupError> {
        let (client, seq) = self.lock_sessions().acquire();
        let result = async {
            let encoded = Bytes::from(
                postcard::to_allocvec(&SessionCommand {
                    client,
                    seq,
                    command,
                })
                .map_err(|e| GroupError::Encoding(e.to_string()))?,
            );
            self.retrying(|reply| ClientRequest::Feed {
                command: encoded.clone(),
                reply,
            })
            .await
        }
        .await;
        self.lock_sessions().release(client, seq);
        result
    }

    /// Applies `command` as command `seq` of session `client`, for a caller that keeps its
    /// own session across calls (a remote client retrying after a lost answer): the same
    /// `(client, seq)` sent again returns the first outcome and applies nothing. Commands
    /// of one session must be issued one at a time with increasing `seq`; an older `seq`
    /// than the session's last is refused. Client ids must not collide with those of
    /// other callers (this handle's own sessions start at a random id).
    pub async fn execute_as(
        &self,
        client: ClientId,
        seq: u64,
        command: M::Command,
    ) -> Result<M::Output, GroupError> {
        let encoded = postcard::to_allocvec(&SessionCommand {
            client,
            seq,
            command,
        })
        .map_err(|e| GroupError::Encoding(e.to_string()))?;
        let encoded = Bytes::from(encoded);
        let bytes = self
            .retrying(|reply| ClientRequest::Execute {
                command: encoded.clone(),
                reply,
            })
            .await?;
        let output: SessionOutput<M::Output> =
            postcard::from_bytes(&bytes).map_err(|e| GroupError::Encoding(e.to_string()))?;
        match output {
            SessionOutput::Applied(o) | SessionOutput::Duplicate(o) => Ok(o),
            SessionOutput::Stale { last_seq } => {
                Err(GroupError::Refused(Rejection::StaleSession {
                    client,
                    last_seq,
                    seq,
                }))
            }
        }
    }

    /// Evaluates `query` against the state machine with the given consistency.
    pub async fn query(
        &self,
        query: M::Query,
        consistency: Consistency,
    ) -> Result<M::QueryResult, GroupError> {
        let encoded = Bytes::from(
            postcard::to_allocvec(&query).map_err(|e| GroupError::Encoding(e.to_string()))?,
        );
        let bytes = self
            .retrying(|reply| match consistency {
                Consistency::Weak => ClientRequest::WeakQuery {
                    query: encoded.clone(),
                    reply,
                },
                Consistency::Strong => ClientRequest::StrongQuery {
                    query: encoded.clone(),
                    reply,
                },
            })
            .await?;
        postcard::from_bytes(&bytes).map_err(|e| GroupError::Encoding(e.to_string()))
    }

    /// Sends requests built by `make` until one completes, the node stops or the timeout
    /// passes. Only requests that are safe to repeat come through here.
    async fn retrying<T>(
        &self,
        make: impl Fn(oneshot::Sender<Result<T, RequestError>>) -> ClientRequest,
    ) -> Result<T, GroupError> {
        let timeout = self.shared.timeout;
        let deadline = Instant::now() + timeout;
        loop {
            let (tx, rx) = oneshot::channel();
            match self.shared.inbox.push(InboxItem::Client(make(tx))) {
                Ok(()) => {}
                Err(super::transport::InboxError::Closed) => return Err(self.gone()),
                Err(super::transport::InboxError::Full) => {
                    self.backoff(deadline).await?;
                    continue;
                }
            }
            match tokio::time::timeout_at(deadline, rx).await {
                Err(_) => return Err(GroupError::Timeout(timeout)),
                Ok(Err(_)) => return Err(self.gone()),
                Ok(Ok(Ok(answer))) => return Ok(answer),
                Ok(Ok(Err(
                    RequestError::NoLeader | RequestError::Unknown | RequestError::Busy,
                ))) => self.backoff(deadline).await?,
                Ok(Ok(Err(RequestError::Stopped(why)))) => return Err(GroupError::Stopped(why)),
                Ok(Ok(Err(other))) => return Err(other.into()),
            }
        }
    }

    async fn backoff(&self, deadline: Instant) -> Result<(), GroupError> {
        if Instant::now() + RETRY_BACKOFF >= deadline {
            return Err(GroupError::Timeout(self.shared.timeout));
        }
        tokio::time::sleep(RETRY_BACKOFF).await;
        Ok(())
    }

    /// What a call learns once the worker is gone: why it stopped, as it said last.
    fn gone(&self) -> GroupError {
        let reason = self.shared.status.borrow().stopped.clone();
        GroupError::Stopped(reason.unwrap_or(StopReason::WorkerGone))
    }

    fn lock_sessions(&self) -> std::sync::MutexGuard<'_, SessionPool> {
        self.shared
            .sessions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    /// The latest status the worker published.
    pub fn status(&self) -> GroupStatus {
        self.shared.status.borrow().clone()
    }

    /// Durable writes so far: how many, how many entries, how long they took.
    pub fn storage_writes(&self) -> crate::storage::WriteTimes {
        self.shared.write_timing.read()
    }

    /// The worker's published status, to watch from outside (the bonds use it).
    pub(crate) fn status_receiver(&self) -> watch::Receiver<GroupStatus> {
        self.shared.status.clone()
    }

    /// Waits for changes of the group's state.
    pub fn when(&self) -> When {
        When {
            status: self.shared.status.clone(),
        }
    }

    /// Asks the leader (this node, if it leads) to hand leadership to `to`.
    pub fn transfer_leadership(&self, to: NodeId) -> Result<(), GroupError> {
        self.shared
            .inbox
            .push(InboxItem::Client(ClientRequest::TransferLeadership { to }))
            .map_err(|_| self.gone())
    }

    /// Leaves the group for good (architecture.md §3: a TD's identity dies with it, so a member
    /// that stops should not stay a voter the others wait for): hands leadership over if
    /// this member leads, has the leader remove it, and returns once that removal is
    /// committed. The leader does not add it back while its bond stays up. Call
    /// [`Group::shutdown`] afterwards. Fails with [`GroupError::Timeout`] if that takes
    /// longer than `timeout` (no leader, a partition), and is refused for the only member.
    pub async fn leave(&self, timeout: Duration) -> Result<(), GroupError> {
        let (tx, rx) = oneshot::channel();
        self.shared
            .inbox
            .push(InboxItem::Client(ClientRequest::Leave { reply: tx }))
            .map_err(|_| self.gone())?;
        match tokio::time::timeout(timeout, rx).await {
            Err(_) => Err(GroupError::Timeout(timeout)),
            Ok(Err(_)) => Err(self.gone()),
            Ok(Ok(Ok(()))) => Ok(()),
            Ok(Ok(Err(RequestError::Stopped(why)))) => Err(GroupError::Stopped(why)),
            Ok(Ok(Err(other))) => Err(other.into()),
        }
    }

    /// The group's configuration as this member knows it: voters, learners, observers.
    pub fn members(&self) -> Membership {
        self.status().membership
    }

    /// Adds `node` as a learner (promoted to voter once caught up, if the group has room)
    /// and returns once that configuration is committed. Leader only: on another member
    /// it is refused, naming the leader. A member bonded and attested is added
    /// automatically anyway; this is for a peer the operator wants in now.
    pub async fn add_member(&self, node: NodeId) -> Result<(), GroupError> {
        self.change_membership(MembershipChange::AddLearner(node), |m| m.contains(node))
            .await
    }

    /// Removes `node` from the group and returns once that configuration is committed; the
    /// leader does not add it back automatically while its bond stays up. Leader only: on
    /// another member it is refused, naming the leader.
    pub async fn remove_member(&self, node: NodeId) -> Result<(), GroupError> {
        self.change_membership(MembershipChange::Remove(node), |m| !m.contains(node))
            .await
    }

    /// Proposes `change`, waits for its commit and checks that the committed configuration
    /// has the change (`holds`): a change overwritten after a leadership change is
    /// reported, not taken for done.
    async fn change_membership(
        &self,
        change: MembershipChange,
        holds: impl Fn(&Membership) -> bool,
    ) -> Result<(), GroupError> {
        let timeout = self.shared.timeout;
        let work = async {
            let (tx, rx) = oneshot::channel();
            self.shared
                .inbox
                .push(InboxItem::Client(ClientRequest::ChangeMembership {
                    change,
                    reply: tx,
                }))
                .map_err(|_| self.gone())?;
            let index = match rx.await {
                Err(_) => return Err(self.gone()),
                Ok(Ok(index)) => index,
                Ok(Err(RequestError::Stopped(why))) => return Err(GroupError::Stopped(why)),
                Ok(Err(other)) => return Err(other.into()),
            };
            self.when().committed(index).await?;
            let membership = self.members();
            if holds(&membership) {
                Ok(())
            } else {
                tracing::debug!(?change, index, ?membership, "membership change overwritten");
                Err(GroupError::Refused(Rejection::ChangeLost { index }))
            }
        };
        tokio::time::timeout(timeout, work)
            .await
            .map_err(|_| GroupError::Timeout(timeout))?
    }

    /// The group's id.
    pub fn id(&self) -> super::GroupId {
        self.shared.id
    }

    /// The member's bonds, when it runs over iroh (joined through a
    /// [`Groups`](super::Groups) gateway).
    pub fn bonds(&self) -> Option<Arc<super::Bonds>> {
        self.shared.network.get().map(|n| n.bonds.clone())
    }

    /// Connects the member to its bonds and its gateway (once).
    pub(super) fn attach(&self, bonds: Arc<super::Bonds>, detach: Box<dyn Fn() + Send + Sync>) {
        let _ = self.shared.network.set(Network { bonds, detach });
    }

    /// Stops this member: its worker (waiting for its thread or task without blocking the
    /// runtime), then its bonds and their tasks; the gateway forgets the group. Every
    /// handle sees the group stopped. Idempotent.
    ///
    /// A leader hands leadership over first, to the voter furthest along, and stops once
    /// that voter's election has reached it (at most a second or so later): the group
    /// goes on with a new leader at once instead of after an election timeout. This is not
    /// a [`Group::leave`]: the member stays in the configuration and may come back.
    pub async fn shutdown(&self) {
        let _ = self.shared.inbox.push(InboxItem::Shutdown);
        let worker = self
            .shared
            .worker
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(worker) = worker {
            worker.join().await;
        }
        if let Some(network) = self.shared.network.get() {
            (network.detach)();
            network.bonds.close().await;
        }
    }
}

/// Waits on the group's published state (leader elected, commit reached, …).
pub struct When {
    status: watch::Receiver<GroupStatus>,
}

impl When {
    /// Waits until `f` holds, or fails once the member stopped without it holding: a
    /// stopped member's state never changes again.
    async fn wait(
        &mut self,
        mut f: impl FnMut(&GroupStatus) -> bool,
    ) -> Result<GroupStatus, GroupError> {
        let status = self
            .status
            .wait_for(|s| f(s) || s.stopped.is_some())
            .await
            .map(|s| s.clone())
            .map_err(|_| GroupError::Stopped(StopReason::WorkerGone))?;
        match &status.stopped {
            Some(reason) if !f(&status) => Err(GroupError::Stopped(reason.clone())),
            _ => Ok(status),
        }
    }

    /// A leader is known; returns it.
    pub async fn leader_elected(&mut self) -> Result<NodeId, GroupError> {
        let s = self
            .wait(|s| s.leader.is_some() || s.stopped.is_some())
            .await?;
        s.leader
            .ok_or_else(|| GroupError::Stopped(s.stopped.unwrap_or(StopReason::WorkerGone)))
    }

    /// A leader other than `old` is known; returns it.
    pub async fn leader_changed_from(&mut self, old: Option<NodeId>) -> Result<NodeId, GroupError> {
        let s = self
            .wait(|s| (s.leader.is_some() && s.leader != old) || s.stopped.is_some())
            .await?;
        s.leader
            .ok_or_else(|| GroupError::Stopped(s.stopped.unwrap_or(StopReason::WorkerGone)))
    }

    /// This node holds a group's log (it founded or joined one): its incarnation is known.
    pub async fn formed(&mut self) -> Result<crate::raft::Incarnation, GroupError> {
        let s = self
            .wait(|s| s.incarnation.is_some() || s.stopped.is_some())
            .await?;
        s.incarnation
            .ok_or_else(|| GroupError::Stopped(s.stopped.unwrap_or(StopReason::WorkerGone)))
    }

    /// This node knows the log is committed up to at least `index`.
    pub async fn committed(&mut self, index: Index) -> Result<(), GroupError> {
        self.wait(|s| s.commit_index >= index).await.map(|_| ())
    }

    /// This node has applied up to at least `index`.
    pub async fn applied(&mut self, index: Index) -> Result<(), GroupError> {
        self.wait(|s| s.applied_index >= index).await.map(|_| ())
    }

    /// This node holds a snapshot at `index` or later (taken here or installed).
    pub async fn snapshot_at(&mut self, index: Index) -> Result<(), GroupError> {
        self.wait(|s| s.snapshot_index >= index).await.map(|_| ())
    }

    /// The configuration differs from `old`.
    pub async fn membership_changed(
        &mut self,
        old: &crate::raft::Membership,
    ) -> Result<crate::raft::Membership, GroupError> {
        self.wait(|s| &s.membership != old)
            .await
            .map(|s| s.membership)
    }

    /// The membership this node knows satisfies `f` (e.g. it includes a new voter).
    pub async fn membership_is(
        &mut self,
        f: impl Fn(&crate::raft::Membership) -> bool,
    ) -> Result<crate::raft::Membership, GroupError> {
        self.wait(|s| f(&s.membership)).await.map(|s| s.membership)
    }

    /// The member is online: a leader is known, the member holds the group's log, and it
    /// has applied everything it knows to be committed. Returns the leader.
    pub async fn online(&mut self) -> Result<NodeId, GroupError> {
        let s = self
            .wait(|s| {
                s.stopped.is_some()
                    || (s.leader.is_some()
                        && s.incarnation.is_some()
                        && s.applied_index >= s.commit_index)
            })
            .await?;
        match (s.stopped, s.leader) {
            (None, Some(leader)) => Ok(leader),
            (stopped, _) => Err(GroupError::Stopped(
                stopped.unwrap_or(StopReason::WorkerGone),
            )),
        }
    }

    /// The node stopped participating (shutdown or a fatal storage error).
    pub async fn offline(&mut self) -> Result<StopReason, GroupError> {
        let s = self.wait(|s| s.stopped.is_some()).await?;
        Ok(s.stopped.unwrap_or(StopReason::WorkerGone))
    }
}
