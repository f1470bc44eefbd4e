//! Snapshot transfer between bonded members (DESIGN §8): chunked, resumable, verified.
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
//! The receiver hashes as it receives, refuses anything beyond the announced size, and
//! hands the snapshot to its worker only once all bytes are in and the SHA-256 matches
//! the offer. A transfer cut off half-way is parked (one per node) and resumed from where
//! it stopped when the same snapshot (same sender, index, term and digest) is offered
//! again; a different snapshot replaces it.
//!
//! **Contract.** [`Partial`] and [`ResumeSlot`] are pure; [`send_snapshot`] and
//! [`receive_snapshot`] run over any byte stream (QUIC streams in production, in-memory
//! pipes in tests) and put every network await under a timeout. Nothing here decides
//! *whether* a snapshot is needed: that is the core's job.
use std::sync::Mutex;
use std::time::Duration;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

use crate::net::{read_frame, read_message, write_frame, write_message, FrameError};
use crate::raft::{Index, Message, MessageBody, NodeId, Snapshot, SnapshotMeta, Term};

/// Bytes per chunk on the wire.
pub const CHUNK_BYTES: usize = 1 << 20;
/// Largest snapshot a member accepts. The received bytes are held in memory until the
/// worker restores them, so this bounds what a (bonded, attested) peer can make us hold.
pub const SNAPSHOT_BYTES_MAX: u64 = 8 << 30;
/// Bound on every single read or write of a transfer (not on the whole transfer, whose
/// length depends on the snapshot's size).
pub const STEP_TIMEOUT: Duration = Duration::from_secs(30);

/// Why a transfer did not complete.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TransferError {
    #[error("snapshot of {size} bytes exceeds the limit of {SNAPSHOT_BYTES_MAX}")]
    TooLarge { size: u64 },
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
    #[error("offer names sender {claimed}, but the bond is with {peer}")]
    WrongSender { claimed: NodeId, peer: NodeId },
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
pub enum Reply {
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

/// The bytes of one snapshot received so far, hashed as they arrive.
pub struct Partial {
    key: TransferKey,
    size: u64,
    data: Vec<u8>,
    hasher: ring::digest::Context,
}

impl Partial {
    /// A fresh transfer of `size` bytes.
    pub fn start(key: TransferKey, size: u64) -> Result<Self, TransferError> {
        if size > SNAPSHOT_BYTES_MAX {
            return Err(TransferError::TooLarge { size });
        }
        // Reserve a little up front only: the announced size is the peer's word.
        let initial = size.min(CHUNK_BYTES as u64 * 4) as usize;
        Ok(Self {
            key,
            size,
            data: Vec::with_capacity(initial),
            hasher: ring::digest::Context::new(&ring::digest::SHA256),
        })
    }

    pub fn key(&self) -> TransferKey {
        self.key
    }

    /// Bytes received so far: where a resumed transfer continues.
    pub fn received(&self) -> u64 {
        self.data.len() as u64
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
        self.hasher.update(chunk);
        self.data.extend_from_slice(chunk);
        Ok(())
    }

    /// The whole snapshot, if every byte is in and the digest matches.
    pub fn finish(self) -> Result<Bytes, TransferError> {
        if !self.is_complete() {
            return Err(TransferError::Incomplete {
                received: self.received(),
                size: self.size,
            });
        }
        if self.hasher.finish().as_ref() != self.key.sha256 {
            return Err(TransferError::Digest {
                index: self.key.index,
            });
        }
        Ok(Bytes::from(self.data))
    }
}

/// Where an interrupted transfer waits to be resumed. Holds at most one: only the leader
/// sends snapshots, and a newer snapshot makes an older partial one useless.
#[derive(Default)]
pub struct ResumeSlot {
    parked: Mutex<Option<Partial>>,
}

impl ResumeSlot {
    /// The partial transfer to continue for `offer`, or a fresh one.
    pub fn open(&self, offer: &Offer) -> Result<Partial, TransferError> {
        let key = offer.key();
        let parked = self.lock().take();
        match parked {
            Some(partial) if partial.key == key && partial.size == offer.size => Ok(partial),
            _ => Partial::start(key, offer.size),
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

/// SHA-256 of a snapshot's bytes.
pub fn sha256(data: &[u8]) -> [u8; 32] {
    let mut out = [0u8; 32];
    out.copy_from_slice(ring::digest::digest(&ring::digest::SHA256, data).as_ref());
    out
}

/// The offer for an `InstallSnapshot` message, and its bytes. `digest` is the snapshot's
/// SHA-256 (computed by the caller, which may cache it across retries).
pub fn offer_for(message: &Message, digest: [u8; 32]) -> Result<(Offer, Bytes), TransferError> {
    let MessageBody::InstallSnapshot { snapshot } = &message.body else {
        return Err(TransferError::NotASnapshot);
    };
    let offer = Offer {
        from: message.from,
        to: message.to,
        term: message.term,
        meta: snapshot.meta.clone(),
        size: snapshot.data.len() as u64,
        sha256: digest,
    };
    Ok((offer, snapshot.data.clone()))
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

/// Sends one snapshot: the offer, then the bytes from wherever the receiver says it
/// already is. Returns how many bytes were sent (less than the size on a resume).
pub async fn send_snapshot<R, W>(
    recv: &mut R,
    send: &mut W,
    offer: &Offer,
    data: &Bytes,
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
    for chunk in data[offset as usize..].chunks(CHUNK_BYTES) {
        step("sending a snapshot chunk", write_frame(send, chunk)).await?;
    }
    step("flushing the snapshot", async {
        send.flush().await.map_err(FrameError::from)
    })
    .await?;
    Ok(offer.size - offset)
}

/// Receives one snapshot from `peer`, resuming a parked partial transfer of the same
/// snapshot. On success returns the `InstallSnapshot` message for the worker; on an
/// interrupted stream the partial transfer is parked in `slot` for the next offer.
pub async fn receive_snapshot<R, W>(
    recv: &mut R,
    send: &mut W,
    peer: NodeId,
    slot: &ResumeSlot,
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
        slot.open(&offer)
    };
    let mut partial = match opened {
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
    if let Err(e) = step("replying to the offer", write_message(send, &resume)).await {
        slot.park(partial);
        return Err(e);
    }
    while !partial.is_complete() {
        let chunk = match step("receiving a snapshot chunk", read_frame(recv)).await {
            Ok(chunk) => chunk,
            Err(e) => {
                // Cut off (or timed out): keep what arrived for the next offer.
                slot.park(partial);
                return Err(e);
            }
        };
        // A bad chunk discards the partial transfer: its bytes cannot be trusted.
        partial.push(&chunk)?;
    }
    let data = partial.finish()?;
    Ok(Message {
        from: offer.from,
        to: offer.to,
        term: offer.term,
        body: MessageBody::InstallSnapshot {
            snapshot: Snapshot {
                meta: offer.meta,
                data,
            },
        },
    })
}

#[cfg(test)]
mod tests;
