//! Snapshot transfer between bonded members (architecture.md §8): chunked, resumable, verified.
//!
//! The consensus core sends a snapshot as one `InstallSnapshot` message. A snapshot can be
//! far larger than a frame (and than anything a bond should hold up), so the bond never
//! puts it on its message stream: the sender opens a stream of its own for it and the
//! protocol there is
//!
//! ```text
//! sender → receiver   Offer { from, to, term, meta, size, sha256 }
//! receiver → sender   Reply::Resume { offset } | Reply::Decline { reason }
//! sender → receiver   raw chunks of at most CHUNK_BYTES, from `offset` to `size`
//! ```
//!
//! The snapshot's data in the message is a [`SnapshotHandle`] into the sender's
//! [`SnapshotStore`]; the bytes are streamed from there, and the receiver writes them into
//! its own store as they arrive (a file, for a durable node), so neither side holds a
//! large snapshot in memory. The receiver hashes as it receives, refuses anything beyond
//! the announced size, and hands the snapshot to its worker (as an `InstallSnapshot`
//! whose handle names the now synced copy in its own store) only once all bytes are in
//! and the SHA-256 matches the offer. A transfer cut off half-way is parked (one per node,
//! its bytes staying in the unfinished file) and resumed from where it stopped when the
//! same snapshot (same sender, index, term and digest) is offered again; a different
//! snapshot replaces it.
//!
//! **Contract.** [`Partial`] and [`ResumeSlot`] decide nothing about the network;
//! [`send_snapshot`] and [`receive_snapshot`] run over any byte stream (QUIC streams in
//! production, in-memory pipes in tests), put every network await under a timeout and do
//! the store's blocking IO off the executor. Nothing here decides *whether* a snapshot is
//! needed: that is the core's job.
use std::io::{Read, Write};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

use crate::net::{read_frame, read_message, write_frame, write_message, FrameError};
use crate::raft::{Index, Message, MessageBody, NodeId, Snapshot, SnapshotMeta, Term};
use crate::storage::snapshot_store::SnapshotWriter;
use crate::storage::{SnapshotHandle, SnapshotStore, SnapshotStoreError};

/// Bytes per chunk on the wire.
pub(crate) const CHUNK_BYTES: usize = 1 << 20;
/// Bound on every single read or write of a transfer (not on the whole transfer, whose
/// length depends on the snapshot's size).
pub(crate) const STEP_TIMEOUT: Duration = Duration::from_secs(30);

/// Why a transfer did not complete.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TransferError {
    #[error("snapshot of {size} bytes exceeds this member's limit of {limit}")]
    TooLarge { size: u64, limit: u64 },
    #[error("chunk of {chunk} bytes goes past the announced size ({received} of {size} received)")]
    Overrun {
        chunk: usize,
        received: u64,
        size: u64,
    },
    #[error("empty chunk before the snapshot was complete")]
    EmptyChunk,
    #[error("snapshot incomplete: {received} of {size} bytes received")]
    Incomplete { received: u64, size: u64 },
    #[error("snapshot at index {index} does not match its announced SHA-256")]
    Digest { index: Index },
    #[error("snapshot store: {0}")]
    Store(#[from] SnapshotStoreError),
    #[error("snapshot {0} while moving snapshot bytes")]
    Blocking(String),
    #[error("offer names sender {claimed}, but the bond is with {peer}")]
    WrongSender { claimed: NodeId, peer: NodeId },
    #[error(
        "offer from {from} in term {term}, but this member follows {leader:?} in term \
         {current_term}: snapshots are taken only from the current leader"
    )]
    NotFromLeader {
        from: NodeId,
        term: Term,
        leader: Option<NodeId>,
        current_term: Term,
    },
    #[error("the receiver declined the snapshot: {0}")]
    Declined(String),
    #[error("resume offset {offset} beyond the snapshot's {size} bytes")]
    BadResume { offset: u64, size: u64 },
    #[error("not an InstallSnapshot message")]
    NotASnapshot,
    #[error("stream: {0}")]
    Frame(#[from] FrameError),
    #[error("{0} timed out")]
    Timeout(&'static str),
}

/// The first message on a snapshot stream: what is coming and how to check it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Offer {
    pub from: NodeId,
    pub to: NodeId,
    pub term: Term,
    pub meta: SnapshotMeta,
    pub size: u64,
    pub sha256: [u8; 32],
}

impl Offer {
    fn key(&self) -> TransferKey {
        TransferKey {
            from: self.from,
            index: self.meta.index,
            term: self.meta.term,
            sha256: self.sha256,
        }
    }
}

/// The receiver's answer to an [`Offer`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum Reply {
    /// Send the bytes from `offset` on (0 for a fresh transfer).
    Resume {
        offset: u64,
    },
    Decline {
        reason: String,
    },
}

/// Which snapshot a partial transfer belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TransferKey {
    pub from: NodeId,
    pub index: Index,
    pub term: Term,
    pub sha256: [u8; 32],
}

/// The bytes of one snapshot received so far, written to the store (and hashed) as they
/// arrive.
pub struct Partial {
    key: TransferKey,
    size: u64,
    writer: SnapshotWriter,
}

impl Partial {
    /// A fresh transfer of `size` bytes into `store` (refused beyond the store's
    /// [`size_limit`](SnapshotStore::size_limit): the announced size is the peer's word).
    pub fn start(
        key: TransferKey,
        size: u64,
        store: &Arc<SnapshotStore>,
    ) -> Result<Self, TransferError> {
        let limit = store.size_limit();
        if size > limit {
            return Err(TransferError::TooLarge { size, limit });
        }
        Ok(Self {
            key,
            size,
            writer: store.writer()?,
        })
    }

    pub fn key(&self) -> TransferKey {
        self.key
    }

    /// Bytes received so far: where a resumed transfer continues.
    pub fn received(&self) -> u64 {
        self.writer.written()
    }

    pub fn is_complete(&self) -> bool {
        self.received() == self.size
    }

    /// Appends one chunk. Refuses bytes beyond the announced size and empty chunks (a
    /// sender making no progress).
    pub fn push(&mut self, chunk: &[u8]) -> Result<(), TransferError> {
        if chunk.is_empty() {
            return Err(TransferError::EmptyChunk);
        }
        if self.received() + chunk.len() as u64 > self.size {
            return Err(TransferError::Overrun {
                chunk: chunk.len(),
                received: self.received(),
                size: self.size,
            });
        }
        self.writer
            .write_all(chunk)
            .map_err(|e| SnapshotStoreError::Io {
                op: "writing a received chunk of",
                path: format!("the snapshot at index {}", self.key.index),
                reason: e.to_string(),
            })?;
        Ok(())
    }

    /// The whole snapshot, synced in `store` and counted there as
    /// [delivered](SnapshotStore::delivered) (before it appears under its name, so that
    /// nothing deletes it in between), if every byte is in and the digest matches;
    /// otherwise its bytes are discarded.
    pub fn finish(self, store: &SnapshotStore) -> Result<SnapshotHandle, TransferError> {
        if !self.is_complete() {
            return Err(TransferError::Incomplete {
                received: self.received(),
                size: self.size,
            });
        }
        let expected = SnapshotHandle {
            size: self.size,
            sha256: self.key.sha256,
        };
        store.delivered(&expected);
        match self.writer.finish(Some(&self.key.sha256)) {
            Ok(handle) => Ok(handle),
            Err(e) => {
                store.release(&expected);
                Err(match e {
                    SnapshotStoreError::Digest { .. } => TransferError::Digest {
                        index: self.key.index,
                    },
                    e => e.into(),
                })
            }
        }
    }
}

/// Where an interrupted transfer waits to be resumed. Holds at most one: only the leader
/// sends snapshots, and a newer snapshot makes an older partial one useless.
#[derive(Default)]
pub struct ResumeSlot {
    parked: Mutex<Option<Partial>>,
}

impl ResumeSlot {
    /// The partial transfer to continue for `offer`, or a fresh one into `store` (a
    /// parked one for another snapshot is discarded).
    pub fn open(
        &self,
        offer: &Offer,
        store: &Arc<SnapshotStore>,
    ) -> Result<Partial, TransferError> {
        let key = offer.key();
        let parked = self.lock().take();
        match parked {
            Some(partial) if partial.key == key && partial.size == offer.size => Ok(partial),
            _ => Partial::start(key, offer.size, store),
        }
    }

    /// Keeps an interrupted transfer for a later [`open`](Self::open).
    pub fn park(&self, partial: Partial) {
        if partial.received() > 0 {
            *self.lock() = Some(partial);
        }
    }

    /// Bytes held by the parked transfer (for tests and metrics).
    pub fn parked_bytes(&self) -> u64 {
        self.lock().as_ref().map_or(0, Partial::received)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Partial>> {
        self.parked.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The offer for an `InstallSnapshot` message, and the handle of its bytes in the
/// sender's store (size and digest come from the handle: nothing is hashed again).
pub fn offer_for(message: &Message) -> Result<(Offer, SnapshotHandle), TransferError> {
    let MessageBody::InstallSnapshot { snapshot } = &message.body else {
        return Err(TransferError::NotASnapshot);
    };
    let handle = SnapshotHandle::decode(&snapshot.data)?;
    let offer = Offer {
        from: message.from,
        to: message.to,
        term: message.term,
        meta: snapshot.meta.clone(),
        size: handle.size,
        sha256: handle.sha256,
    };
    Ok((offer, handle))
}

/// Parks the partial transfer it holds when dropped (see [`receive_snapshot`]).
struct ParkOnDrop<'a> {
    slot: &'a ResumeSlot,
    partial: Option<Partial>,
}

impl Drop for ParkOnDrop<'_> {
    fn drop(&mut self) {
        if let Some(partial) = self.partial.take() {
            self.slot.park(partial);
        }
    }
}

/// The handle an `InstallSnapshot` message names, if it is one and names one.
pub(crate) fn handle_of(message: &Message) -> Option<SnapshotHandle> {
    match &message.body {
        MessageBody::InstallSnapshot { snapshot } => SnapshotHandle::decode(&snapshot.data).ok(),
        _ => None,
    }
}

/// Runs blocking store IO off the async executor.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, TransferError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| TransferError::Blocking(e.to_string()))
}

async fn step<T, F: std::future::Future<Output = Result<T, FrameError>>>(
    what: &'static str,
    f: F,
) -> Result<T, TransferError> {
    match tokio::time::timeout(STEP_TIMEOUT, f).await {
        Ok(result) => Ok(result?),
        Err(_) => Err(TransferError::Timeout(what)),
    }
}

/// Sends one snapshot: the offer, then the bytes of `handle` in `store` from wherever the
/// receiver says it already is. Returns how many bytes were sent (less than the size on a
/// resume).
pub async fn send_snapshot<R, W>(
    recv: &mut R,
    send: &mut W,
    offer: &Offer,
    store: &Arc<SnapshotStore>,
    handle: &SnapshotHandle,
) -> Result<u64, TransferError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    step("sending the snapshot offer", write_message(send, offer)).await?;
    let reply: Reply = step(
        "waiting for the receiver's reply",
        read_message(recv, "snapshot reply"),
    )
    .await?;
    let offset = match reply {
        Reply::Resume { offset } if offset <= offer.size => offset,
        Reply::Resume { offset } => {
            return Err(TransferError::BadResume {
                offset,
                size: offer.size,
            })
        }
        Reply::Decline { reason } => return Err(TransferError::Declined(reason)),
    };
    let (store, handle) = (store.clone(), *handle);
    let mut reader = blocking(move || store.raw_reader(&handle, offset)).await??;
    // The handle's size, not the offer's: the two are one in production, and a test can
    // make a sender that sends more than it announced.
    let total = handle.size.saturating_sub(offset);
    let mut remaining = total;
    while remaining > 0 {
        let want = remaining.min(CHUNK_BYTES as u64) as usize;
        let (back, chunk) = blocking(move || {
            let mut chunk = vec![0u8; want];
            let read = reader.read_exact(&mut chunk).map(|()| chunk);
            (reader, read)
        })
        .await?;
        reader = back;
        let chunk = chunk.map_err(|e| SnapshotStoreError::Io {
            op: "reading",
            path: format!("snapshot {handle} to send"),
            reason: e.to_string(),
        })?;
        step("sending a snapshot chunk", write_frame(send, &chunk)).await?;
        remaining -= want as u64;
    }
    step("flushing the snapshot", async {
        send.flush().await.map_err(FrameError::from)
    })
    .await?;
    Ok(total)
}

/// Receives one snapshot from `peer` into `store`, resuming a parked partial transfer of
/// the same snapshot. On success returns the `InstallSnapshot` message for the worker: its
/// data is the handle of the synced copy, counted as [delivered](SnapshotStore::delivered)
/// (whoever consumes or drops the message releases it). On an interrupted stream the
/// partial transfer is parked in `slot` for the next offer.
/// Accepts an offer only from the leader `status` names, in the term it names: a bonded
/// member that is not the leader must not make this one write (and then install) a
/// snapshot of its choosing.
pub(crate) fn from_current_leader(
    offer: &Offer,
    status: &super::GroupStatus,
) -> Result<(), TransferError> {
    if status.leader == Some(offer.from) && status.term == offer.term {
        return Ok(());
    }
    Err(TransferError::NotFromLeader {
        from: offer.from,
        term: offer.term,
        leader: status.leader,
        current_term: status.term,
    })
}

/// Receives one snapshot transfer from `peer`: declines an offer in another member's name
/// or one `allowed` refuses, before any byte of it is held.
pub async fn receive_snapshot<R, W>(
    recv: &mut R,
    send: &mut W,
    peer: NodeId,
    allowed: &(dyn Fn(&Offer) -> Result<(), TransferError> + Sync),
    slot: &ResumeSlot,
    store: &Arc<SnapshotStore>,
) -> Result<Message, TransferError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let offer: Offer = step(
        "waiting for the snapshot offer",
        read_message(recv, "snapshot offer"),
    )
    .await?;
    let opened = if offer.from != peer {
        Err(TransferError::WrongSender {
            claimed: offer.from,
            peer,
        })
    } else {
        allowed(&offer).and_then(|()| slot.open(&offer, store))
    };
    let partial = match opened {
        Ok(partial) => partial,
        Err(e) => {
            let reason = Reply::Decline {
                reason: e.to_string(),
            };
            // Best effort: the refusal is ours either way.
            let _ = step("declining the snapshot", write_message(send, &reason)).await;
            return Err(e);
        }
    };
    let resume = Reply::Resume {
        offset: partial.received(),
    };
    // From here on an interrupted transfer is parked for the next offer: on a network
    // error, and also when this future is dropped (the bond closed and its tasks were
    // aborted), which is how a lost connection usually ends a transfer.
    let mut parking = ParkOnDrop {
        slot,
        partial: Some(partial),
    };
    step("replying to the offer", write_message(send, &resume)).await?;
    let gone = || TransferError::Blocking("the partial transfer is gone".into());
    while !parking.partial.as_ref().is_some_and(Partial::is_complete) {
        let chunk = step("receiving a snapshot chunk", read_frame(recv)).await?;
        let mut partial = parking.partial.take().ok_or_else(gone)?;
        // A bad chunk discards the partial transfer: its bytes cannot be trusted.
        let (back, pushed) = blocking(move || {
            let pushed = partial.push(&chunk);
            (partial, pushed)
        })
        .await?;
        pushed?;
        parking.partial = Some(back);
    }
    let partial = parking.partial.take().ok_or_else(gone)?;
    let into = store.clone();
    let handle = blocking(move || partial.finish(&into)).await??;
    Ok(Message {
        from: offer.from,
        to: offer.to,
        term: offer.term,
        body: MessageBody::InstallSnapshot {
            snapshot: Snapshot {
                meta: offer.meta,
                data: handle.encode(),
            },
        },
    })
}

#[cfg(test)]
mod tests;
