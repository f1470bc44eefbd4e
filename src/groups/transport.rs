//! What the group worker needs from the network, and an in-process implementation.
//!
//! The worker never awaits the network: it hands frames to a [`Transport`] (which must not
//! block; it may drop, Raft tolerates loss) and receives frames through its [`Inbox`]. A
//! transport over iroh bonds (attested, HMAC-proven, architecture.md §6) implements the same trait;
//! `LocalNetwork` (feature `test-util`, `local_network.rs`) connects workers inside one
//! process for tests.
use std::sync::mpsc::{SyncSender, TrySendError};
use std::sync::Arc;

use tokio::sync::Notify;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::raft::{Incarnation, Message, NodeId};

/// Most frames waiting in one worker's inbox before senders see `Full`.
pub const INBOX_FRAMES_MAX: usize = 16 * 1024;

/// A frame between two group members.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum PeerFrame {
    /// Consensus traffic.
    Raft(Message),
    /// A follower forwards a client command to the leader.
    Forward {
        /// The sender's id for the request, echoed in the answer.
        request_id: u64,
        /// The encoded (session) command.
        command: Bytes,
    },
    /// The leader's answer to a forwarded command: the encoded output, or why not.
    ForwardReply {
        /// The id of the request this answers.
        request_id: u64,
        /// The encoded output, or why the leader did not take the command.
        result: Result<Bytes, ForwardRefusal>,
    },
    /// A follower asks the leader for a read point (read-index through the leader).
    ReadIndex {
        /// The sender's id for the request, echoed in the answer.
        request_id: u64,
    },
    /// The leader's read point for a forwarded read.
    ReadIndexReply {
        /// The id of the request this answers.
        request_id: u64,
        /// The index to apply up to before reading, or why not.
        result: Result<u64, ForwardRefusal>,
    },
    /// Sent to every newly bonded peer, and to every bonded peer when it changes: whether
    /// this member is fresh (and with which founding set) or already in a group. Only
    /// fresh members read it (architecture.md §7.2).
    Formation(super::formation::FormationStatus),
    /// A follower forwards a command whose caller wants only its log index
    /// ([`Group::feed`](super::Group::feed)), not its output.
    ForwardFeed {
        /// The sender's id for the request, echoed in the answer.
        request_id: u64,
        /// The encoded (session) command.
        command: Bytes,
    },
    /// The leader's answer to a forwarded feed: the index it appended the command at (not
    /// yet committed), or why not.
    ForwardFeedReply {
        /// The id of the request this answers.
        request_id: u64,
        /// The index the command was appended at, or why not.
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
    /// Sent on every new bond once the sender holds a log, and to every bonded peer when it
    /// first does: the founding its log descends from ([`Incarnation`]). A member takes no
    /// other frame from a peer of another incarnation, and drops its bond
    /// ([`Transport::disconnect_foreign`]): the bond handshake refuses such a peer when both
    /// sides already hold a log, and this catches the pair where one of them was still fresh.
    Incarnation(Incarnation),
}

/// Why a leader did not take a forwarded request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum ForwardRefusal {
    /// The receiver does not lead (any more); the leader it knows of, if any.
    #[error("not the leader (leader hint: {0:?})")]
    NotLeader(Option<NodeId>),
    /// Leadership changed while the command was in flight: it may or may not commit.
    #[error("the command's outcome is unknown here; retry with the same session sequence")]
    Unknown,
    /// The leader refused the command for good.
    #[error("rejected: {0}")]
    Rejected(super::error::Rejection),
}

/// Everything that can wake a worker.
#[derive(Debug)]
pub enum InboxItem<C> {
    /// A frame from a peer.
    Frame {
        /// The peer it came from (authenticated by the transport).
        from: NodeId,
        /// The frame.
        frame: PeerFrame,
    },
    /// A bond to `peer` came up (`reachable`) or its last one went down.
    PeerReachable {
        /// The peer.
        peer: NodeId,
        /// Whether a bond to it is up now.
        reachable: bool,
    },
    /// A request of a local handle.
    Client(C),
    /// Stop the worker.
    Shutdown,
}

/// The sending side of a worker's inbox. Cloneable; never blocks.
pub struct Inbox<C> {
    tx: SyncSender<InboxItem<C>>,
    /// Wakes the worker (a task or a thread waiting on it) after a push.
    wake: Arc<Notify>,
}

impl<C> Clone for Inbox<C> {
    fn clone(&self) -> Self {
        Self {
            tx: self.tx.clone(),
            wake: self.wake.clone(),
        }
    }
}

/// The inbox is full or the worker is gone.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum InboxError {
    /// [`INBOX_FRAMES_MAX`] items wait already: the item is dropped.
    #[error("the worker's inbox is full")]
    Full,
    /// The worker is gone.
    #[error("the worker has stopped")]
    Closed,
}

impl<C> Inbox<C> {
    /// The inbox whose worker receives from the other end of `tx`.
    pub fn new(tx: SyncSender<InboxItem<C>>) -> Self {
        Self {
            tx,
            wake: Arc::new(Notify::new()),
        }
    }

    /// Queues `item` without blocking; fails when the inbox is full or closed.
    pub fn push(&self, item: InboxItem<C>) -> Result<(), InboxError> {
        self.tx.try_send(item).map_err(|e| match e {
            TrySendError::Full(_) => InboxError::Full,
            TrySendError::Disconnected(_) => InboxError::Closed,
        })?;
        self.wake.notify_one();
        Ok(())
    }

    /// What the worker waits on: notified after every push (a push while the worker is
    /// busy leaves a permit, so no wake-up is lost).
    pub(crate) fn waker(&self) -> Arc<Notify> {
        self.wake.clone()
    }
}

/// Delivery of frames to peers. Implementations must not block and may drop frames.
pub trait Transport: Send + Sync + 'static {
    /// Hands `frame` over for delivery to `to`; returns at once, delivered or not.
    fn send(&self, to: NodeId, frame: PeerFrame);

    /// Ends every bond with `peer` and refuses it from now on: its log descends from
    /// another founding of this group id than ours ([`PeerFrame::Incarnation`]). Returns at
    /// once.
    fn disconnect_foreign(&self, peer: NodeId);
}
