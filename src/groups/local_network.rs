//! An in-process network for tests (feature `test-util`): workers inside one process,
//! frames straight into inboxes, links that can be cut, bonds that follow the links.
use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};

use super::transport::{Inbox, InboxError, InboxItem, PeerFrame, Transport};
use crate::raft::{Message, MessageBody, NodeId};
use crate::storage::{SnapshotHandle, SnapshotStore};

/// What the network hands a worker's inbox.
enum Delivery {
    Frame(NodeId, PeerFrame),
    /// The bond with this peer came up (`true`) or went down.
    Bond(NodeId, bool),
}

/// Type-erased inbox of one worker, as the local network holds it.
type Sink = Box<dyn Fn(Delivery) -> Result<(), InboxError> + Send + Sync>;

/// An in-process network: frames go straight into the target worker's inbox. Links can be
/// cut to test partitions; a cut is symmetric unless made with [`LocalNetwork::cut_one_way`].
///
/// Bonds follow the links, as iroh bonds do: two registered workers are bonded while
/// neither direction between them is cut (a one-way cut ends the bond too, as a QUIC
/// connection whose packets are lost one way idles out). Each change reaches both
/// workers as `InboxItem::PeerReachable`, before any frame that crosses the new bond. A
/// pair a member disconnected ([`Transport::disconnect_foreign`]) never bonds again, as
/// the bond handshake refuses it.
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
    sinks: BTreeMap<NodeId, (Sink, Arc<SnapshotStore>)>,
    /// Directed links that drop everything: (from, to).
    cut: BTreeSet<(NodeId, NodeId)>,
    /// Pairs refused for good, both ways (a member found the other of another founding).
    refused: BTreeSet<(NodeId, NodeId)>,
}

impl LocalNetworkInner {
    fn bonded(&self, a: NodeId, b: NodeId) -> bool {
        a != b
            && self.sinks.contains_key(&a)
            && self.sinks.contains_key(&b)
            && !self.cut.contains(&(a, b))
            && !self.cut.contains(&(b, a))
            && !self.refused.contains(&(a, b))
    }

    /// Every bonded pair, each once (smaller id first).
    fn bonds(&self) -> BTreeSet<(NodeId, NodeId)> {
        let ids: Vec<NodeId> = self.sinks.keys().copied().collect();
        let mut bonds = BTreeSet::new();
        for (i, a) in ids.iter().enumerate() {
            for b in &ids[i + 1..] {
                if self.bonded(*a, *b) {
                    bonds.insert((*a, *b));
                }
            }
        }
        bonds
    }

    /// Tells both ends of every bond that `change` brought up or took down. A full inbox
    /// misses the news, as a worker that cannot keep up misses frames.
    fn change(&mut self, change: impl FnOnce(&mut Self)) {
        let before = self.bonds();
        change(self);
        let after = self.bonds();
        let report = |inner: &Self, (a, b): (NodeId, NodeId), up: bool| {
            for (node, peer) in [(a, b), (b, a)] {
                if let Some((sink, _)) = inner.sinks.get(&node) {
                    let _ = sink(Delivery::Bond(peer, up));
                }
            }
        };
        for pair in before.difference(&after) {
            report(self, *pair, false);
        }
        for pair in after.difference(&before) {
            report(self, *pair, true);
        }
    }
}

impl LocalNetwork {
    /// A network with nobody on it and no link cut.
    pub fn new() -> Self {
        Self::default()
    }

    /// Connects a worker's inbox (and its snapshot store) as `id`, bonded with every
    /// registered worker it has a link to. Replaces an earlier registration of `id` (whose
    /// bonds go down first).
    pub fn register<C: Send + 'static>(
        &self,
        id: NodeId,
        inbox: Inbox<C>,
        snapshots: Arc<SnapshotStore>,
    ) {
        let sink: Sink = Box::new(move |delivery| {
            inbox.push(match delivery {
                Delivery::Frame(from, frame) => InboxItem::Frame { from, frame },
                Delivery::Bond(peer, reachable) => InboxItem::PeerReachable { peer, reachable },
            })
        });
        let mut inner = self.lock();
        inner.change(|inner| {
            inner.sinks.remove(&id);
        });
        inner.change(|inner| {
            inner.sinks.insert(id, (sink, snapshots));
        });
    }

    /// Disconnects `id` (its process stopped): its bonds go down.
    pub fn unregister(&self, id: NodeId) {
        self.lock().change(|inner| {
            inner.sinks.remove(&id);
        });
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
        self.lock().change(|inner| {
            inner.cut.insert((a, b));
            inner.cut.insert((b, a));
        });
    }

    /// Drops every frame from `from` to `to` (not the other way) until
    /// [`heal`](Self::heal).
    pub fn cut_one_way(&self, from: NodeId, to: NodeId) {
        self.lock().change(|inner| {
            inner.cut.insert((from, to));
        });
    }

    /// Restores every cut link (not the pairs refused for good).
    pub fn heal(&self) {
        self.lock().change(|inner| inner.cut.clear());
    }

    /// Whether `a` and `b` are bonded now.
    pub fn is_bonded(&self, a: NodeId, b: NodeId) -> bool {
        self.lock().bonded(a, b)
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
        if !self.network.lock().bonded(self.me, to) {
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
                .is_some_and(|(sink, _)| sink(Delivery::Frame(self.me, frame)).is_ok())
        };
        if let (false, Some((store, handle))) = (delivered, snapshot) {
            store.release(&handle);
        }
    }

    fn disconnect_foreign(&self, peer: NodeId) {
        let me = self.me;
        self.network.lock().change(|inner| {
            inner.refused.insert((me, peer));
            inner.refused.insert((peer, me));
        });
    }
}
