//! An in-process network for tests (feature `test-util`): workers inside one process,
//! frames straight into inboxes, links that can be cut.
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use super::transport::{Inbox, InboxError, InboxItem, PeerFrame, Transport};
use crate::raft::{Message, MessageBody, NodeId};
use crate::storage::{SnapshotHandle, SnapshotStore};

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
    /// A network with nobody on it and no link cut.
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

    /// Drops every frame between `a` and `b`, both ways, until [`heal`](Self::heal).
    pub fn cut(&self, a: NodeId, b: NodeId) {
        let mut inner = self.lock();
        inner.cut.insert((a, b));
        inner.cut.insert((b, a));
    }

    /// Drops every frame from `from` to `to` (not the other way) until
    /// [`heal`](Self::heal).
    pub fn cut_one_way(&self, from: NodeId, to: NodeId) {
        self.lock().cut.insert((from, to));
    }

    /// Restores every cut link.
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
