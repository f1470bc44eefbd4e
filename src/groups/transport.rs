//! What the group worker needs from the network, and an in-process implementation.
//!
//! The worker never awaits the network: it hands frames to a [`Transport`] (which must not
//! block; it may drop, Raft tolerates loss) and receives frames through its [`Inbox`]. A
//! transport over iroh bonds (attested, HMAC-proven, architecture.md §6) implements the same trait;
//! [`LocalNetwork`] connects workers inside one process for tests and the demo.
use std::collections::BTreeMap;
use std::sync::mpsc::{SyncSender, TrySendError};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::raft::{Message, MessageBody, NodeId};
use crate::storage::{SnapshotHandle, SnapshotStore};

/// Most frames waiting in one worker's inbox before senders see `Full`.
pub const INBOX_FRAMES_MAX: usize = 16 * 1024;

/// A frame between two group members.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum PeerFrame {
    /// Consensus traffic.
    Raft(Message),
    /// A follower forwards a client command to the leader.
    Forward { request_id: u64, command: Bytes },
    /// The leader's answer to a forwarded command: the encoded output, or why not.
    ForwardReply {
        request_id: u64,
        result: Result<Bytes, ForwardRefusal>,
    },
    /// A follower asks the leader for a read point (read-index through the leader).
    ReadIndex { request_id: u64 },
    /// The leader's read point for a forwarded read.
    ReadIndexReply {
        request_id: u64,
        result: Result<u64, ForwardRefusal>,
    },
    /// Sent to every newly bonded peer, and to every bonded peer when it changes: whether
    /// this member is fresh (and with which founding set) or already in a group. Only
    /// fresh members read it ([`super::formation`]).
    Formation(super::formation::FormationStatus),
    /// A follower forwards a command whose caller wants only its log index
    /// ([`Group::feed`](super::Group::feed)), not its output.
    ForwardFeed { request_id: u64, command: Bytes },
    /// The leader's answer to a forwarded feed: the index it appended the command at (not
    /// yet committed), or why not.
    ForwardFeedReply {
        request_id: u64,
        result: Result<u64, ForwardRefusal>,
    },
    /// The sender asks the leader to remove it from the group (it is leaving for good),
    /// again on every tick until the leader answers [`PeerFrame::Left`].
    Leave,
    /// The leader's answer to [`PeerFrame::Leave`]: a configuration without the sender is
    /// committed (a removed member hears nothing more of the log, so it is told).
    Left,
    /// Sent on every new bond: how the sender wants to take part. A leader adds a bonded
    /// peer only once it has said so: an `Observer` as an observer (never a voter), any
    /// other as a learner promoted once caught up.
    Preference(crate::machine::LeadershipPreference),
}

/// Why a leader did not take a forwarded request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum ForwardRefusal {
    #[error("not the leader (leader hint: {0:?})")]
    NotLeader(Option<NodeId>),
    #[error("the command's outcome is unknown here; retry with the same session sequence")]
    Unknown,
    #[error("rejected: {0}")]
    Rejected(super::error::Rejection),
}

/// Everything that can wake a worker.
#[derive(Debug)]
pub enum InboxItem<C> {
    Frame { from: NodeId, frame: PeerFrame },
    PeerReachable { peer: NodeId, reachable: bool },
    Client(C),
    Shutdown,
}

/// The sending side of a worker's inbox. Cloneable; never blocks.
pub struct Inbox<C> {
    tx: SyncSender<InboxItem<C>>,
}

impl<C> Clone for Inbox<C> {
    fn clone(&self) -> Self {
        Self {
            tx: self.tx.clone(),
        }
    }
}

/// The inbox is full or the worker is gone.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum InboxError {
    #[error("the worker's inbox is full")]
    Full,
    #[error("the worker has stopped")]
    Closed,
}

impl<C> Inbox<C> {
    pub fn new(tx: SyncSender<InboxItem<C>>) -> Self {
        Self { tx }
    }

    pub fn push(&self, item: InboxItem<C>) -> Result<(), InboxError> {
        self.tx.try_send(item).map_err(|e| match e {
            TrySendError::Full(_) => InboxError::Full,
            TrySendError::Disconnected(_) => InboxError::Closed,
        })
    }
}

/// Delivery of frames to peers. Implementations must not block and may drop frames.
pub trait Transport: Send + Sync + 'static {
    fn send(&self, to: NodeId, frame: PeerFrame);
}

/// Type-erased frame sink of one worker, as the local network holds it.
type FrameSink = Box<dyn Fn(NodeId, PeerFrame) -> Result<(), InboxError> + Send + Sync>;

/// An in-process network: frames go straight into the target worker's inbox. Links can be
/// cut to test partitions; a cut is symmetric unless made with [`LocalNetwork::cut_one_way`].
///
/// It reports no bonds (`InboxItem::PeerReachable`): members never learn of one another
/// as bonded peers, so automatic membership adds nobody and, after `removal_timeout`,
/// counts every other member as away (see `WorkerConfig::removal_timeout`).
///
/// A snapshot's data names bytes in the sender's snapshot store; on the way the network
/// copies them into the receiver's store (as a transfer over a bond would) and counts the
/// delivery there.
#[derive(Clone, Default)]
pub struct LocalNetwork {
    inner: Arc<Mutex<LocalNetworkInner>>,
}

#[derive(Default)]
struct LocalNetworkInner {
    sinks: BTreeMap<NodeId, (FrameSink, Arc<SnapshotStore>)>,
    cut: std::collections::BTreeSet<(NodeId, NodeId)>,
}

impl LocalNetwork {
    pub fn new() -> Self {
        Self::default()
    }

    /// Connects a worker's inbox (and its snapshot store) as `id`. Replaces an earlier
    /// registration of `id`.
    pub fn register<C: Send + 'static>(
        &self,
        id: NodeId,
        inbox: Inbox<C>,
        snapshots: Arc<SnapshotStore>,
    ) {
        let sink: FrameSink =
            Box::new(move |from, frame| inbox.push(InboxItem::Frame { from, frame }));
        self.lock().sinks.insert(id, (sink, snapshots));
    }

    /// Disconnects `id` (its process stopped).
    pub fn unregister(&self, id: NodeId) {
        self.lock().sinks.remove(&id);
    }

    /// A transport for the worker `me`.
    pub fn transport(&self, me: NodeId) -> Arc<dyn Transport> {
        Arc::new(LocalTransport {
            me,
            network: self.clone(),
        })
    }

    pub fn cut(&self, a: NodeId, b: NodeId) {
        let mut inner = self.lock();
        inner.cut.insert((a, b));
        inner.cut.insert((b, a));
    }

    pub fn cut_one_way(&self, from: NodeId, to: NodeId) {
        self.lock().cut.insert((from, to));
    }

    pub fn heal(&self) {
        self.lock().cut.clear();
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, LocalNetworkInner> {
        // A panic while holding this lock cannot leave the maps half-updated.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

struct LocalTransport {
    me: NodeId,
    network: LocalNetwork,
}

impl LocalTransport {
    /// For a frame carrying a snapshot: copies its bytes from our store into `to`'s and
    /// returns `to`'s store, where the delivery is counted. `Err`: the frame cannot be
    /// delivered (the bytes are gone, or not a snapshot handle).
    fn carry_snapshot(
        &self,
        to: NodeId,
        frame: &PeerFrame,
    ) -> Result<Option<(Arc<SnapshotStore>, SnapshotHandle)>, ()> {
        let PeerFrame::Raft(Message {
            body: MessageBody::InstallSnapshot { snapshot },
            ..
        }) = frame
        else {
            return Ok(None);
        };
        let handle = SnapshotHandle::decode(&snapshot.data).map_err(|_| ())?;
        let (ours, theirs) = {
            let inner = self.network.lock();
            let store = |id| inner.sinks.get(&id).map(|(_, s)| s.clone());
            store(self.me).zip(store(to)).ok_or(())?
        };
        // Counted before the copy appears, so that nothing deletes it in between.
        theirs.delivered(&handle);
        match theirs.copy_from(&ours, &handle) {
            Ok(()) => Ok(Some((theirs, handle))),
            Err(e) => {
                theirs.release(&handle);
                tracing::warn!(from = %self.me, %to, error = %e, "snapshot not carried");
                Err(())
            }
        }
    }
}

impl Transport for LocalTransport {
    fn send(&self, to: NodeId, frame: PeerFrame) {
        if self.network.lock().cut.contains(&(self.me, to)) {
            return;
        }
        let Ok(snapshot) = self.carry_snapshot(to, &frame) else {
            return;
        };
        let delivered = {
            let inner = self.network.lock();
            // A full or closed inbox drops the frame, as a congested link would.
            inner
                .sinks
                .get(&to)
                .is_some_and(|(sink, _)| sink(self.me, frame).is_ok())
        };
        if let (false, Some((store, handle))) = (delivered, snapshot) {
            store.release(&handle);
        }
    }
}
