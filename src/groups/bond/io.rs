//! A live bond's streams: the writer (frames coalesced, tickets renewed, pings, snapshots
//! routed to streams of their own), the read-ahead reader with its byte budget, and the
//! allowance for ticket renewals.
use super::*;
use crate::probe::{self, Hop};

/// The sending side of a bond's snapshot transfers: at most one in flight. The core
/// offers the same snapshot again while it waits; a transfer already under way for it
/// carries on instead of starting over.
pub(super) struct SnapshotSender {
    pub(super) bonds: Arc<Bonds>,
    pub(super) conn: Connection,
    pub(super) current: Option<((Index, Term), AbortOnDrop)>,
}

impl SnapshotSender {
    fn start(&mut self, message: Message) {
        let MessageBody::InstallSnapshot { snapshot } = &message.body else {
            return;
        };
        let key = (snapshot.meta.index, snapshot.meta.term);
        if let Some((current, task)) = &self.current {
            if *current == key && !task.0.is_finished() {
                return;
            }
        }
        let bonds = self.bonds.clone();
        let conn = self.conn.clone();
        let task = tokio::spawn(async move {
            let sent = async {
                let (offer, handle) = snapshot_transfer::offer_for(&message)?;
                let (mut send, mut recv) = tokio::time::timeout(DIAL_TIMEOUT, conn.open_bi())
                    .await
                    .map_err(|_| snapshot_transfer::TransferError::Timeout("opening a stream"))?
                    .map_err(|e| {
                        snapshot_transfer::TransferError::Frame(FrameError::Io(
                            std::io::Error::other(e),
                        ))
                    })?;
                let store = &bonds.config.snapshots;
                let bytes =
                    snapshot_transfer::send_snapshot(&mut recv, &mut send, &offer, store, &handle)
                        .await?;
                let _ = send.finish();
                Ok::<_, snapshot_transfer::TransferError>(bytes)
            };
            match sent.await {
                Ok(bytes) => {
                    tracing::debug!(index = key.0, bytes, "snapshot sent");
                    bonds.stats.send_modify(|s| s.snapshots_out += 1);
                }
                Err(e) => {
                    tracing::warn!(index = key.0, error = %e, "snapshot transfer to peer failed");
                    bonds.stats.send_modify(|s| s.snapshot_failures += 1);
                }
            }
        });
        self.current = Some((key, AbortOnDrop(task)));
    }

    /// The message to put on the bond stream for `frame`, or `None` when it is a snapshot
    /// (which goes on a stream of its own).
    fn route(&mut self, frame: PeerFrame) -> Option<BondMessage> {
        match frame {
            PeerFrame::Raft(message)
                if matches!(message.body, MessageBody::InstallSnapshot { .. }) =>
            {
                self.start(message);
                None
            }
            frame => Some(BondMessage::Frame(frame)),
        }
    }
}

/// Messages read ahead of the bond loop.
pub(super) const INCOMING_MESSAGES_MAX: usize = 1024;
/// Bytes of messages read ahead of the bond loop (frames are up to 16 MiB each: counting
/// messages alone would let one bond buffer 16 GiB).
pub(super) const READ_AHEAD_BYTES_MAX: usize = 32 << 20;
/// Ticket renewals a bond takes in a burst, and how fast that allowance refills: each
/// costs a full quote verification, and a correct peer renews at half its tickets'
/// lifetime (at most once a second).
pub const RENEWALS_BURST: u32 = 3;
pub(super) const RENEWAL_REFILL: Duration = Duration::from_secs(1);

/// A token bucket for a bond's ticket renewals.
#[derive(Debug)]
pub(super) struct RenewalAllowance {
    tokens: u32,
    refilled_at: tokio::time::Instant,
}

impl RenewalAllowance {
    pub(super) fn new(now: tokio::time::Instant) -> Self {
        Self {
            tokens: RENEWALS_BURST,
            refilled_at: now,
        }
    }

    /// Takes one renewal if the allowance has one at `now`.
    pub(super) fn take(&mut self, now: tokio::time::Instant) -> bool {
        let periods = now.saturating_duration_since(self.refilled_at).as_millis()
            / RENEWAL_REFILL.as_millis().max(1);
        if periods > 0 {
            let periods = u32::try_from(periods).unwrap_or(u32::MAX);
            self.tokens = self.tokens.saturating_add(periods).min(RENEWALS_BURST);
            self.refilled_at += RENEWAL_REFILL * periods.min(RENEWALS_BURST);
            if self.tokens == RENEWALS_BURST {
                self.refilled_at = now;
            }
        }
        if self.tokens == 0 {
            return false;
        }
        self.tokens -= 1;
        true
    }
}

pub(super) struct AbortOnDrop(pub(super) tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A message read ahead, holding its size in the bond's read-ahead budget until handled.
type ReadAhead = (
    Result<BondMessage, FrameError>,
    Option<tokio::sync::OwnedSemaphorePermit>,
);

/// Reads the bond's messages ahead of the bond loop, at most [`INCOMING_MESSAGES_MAX`]
/// messages and [`READ_AHEAD_BYTES_MAX`] bytes: a frame is read only once its size fits.
pub(super) async fn read_messages(mut recv: RecvStream, tx: mpsc::Sender<ReadAhead>) {
    let budget = Arc::new(tokio::sync::Semaphore::new(READ_AHEAD_BYTES_MAX));
    loop {
        let (message, permit) = match crate::net::read_frame(&mut recv).await {
            Ok(body) => {
                // Frames are at most FRAME_BYTES_MAX < READ_AHEAD_BYTES_MAX: always fits.
                let size = u32::try_from(body.len()).unwrap_or(u32::MAX);
                let Ok(permit) = budget.clone().acquire_many_owned(size.max(1)).await else {
                    return;
                };
                let message =
                    postcard::from_bytes::<BondMessage>(&body).map_err(|e| FrameError::Decode {
                        what: "bond message",
                        reason: e.to_string(),
                    });
                (message, Some(permit))
            }
            Err(e) => (Err(e), None),
        };
        let stop = message.is_err();
        if tx.send((message, permit)).await.is_err() || stop {
            return;
        }
    }
}

/// Most frames coalesced into one stream write.
const FRAMES_PER_WRITE_MAX: usize = 256;

pub(super) async fn write_bond(
    mut send: SendStream,
    mut rx: mpsc::Receiver<PeerFrame>,
    mut tickets: watch::Receiver<Vec<Ticket>>,
    mut snapshots: SnapshotSender,
) {
    let mut ping = tokio::time::interval(PING_INTERVAL);
    let mut buf = Vec::new();
    loop {
        let message = tokio::select! {
            frame = rx.recv() => match frame {
                Some(frame) => match snapshots.route(frame) {
                    Some(message) => message,
                    None => continue,
                },
                None => return,
            },
            changed = tickets.changed() => match changed {
                Ok(()) => BondMessage::Tickets(tickets.borrow_and_update().clone()),
                Err(_) => return,
            },
            _ = ping.tick() => BondMessage::Ping,
        };
        // Coalesce what is already queued into one write: fewer syscalls and packets. A
        // frame that does not encode (over the frame limit) is dropped alone; `buf` keeps
        // the others.
        buf.clear();
        // The latency probe's hops this write carries (feature `latency-probe`).
        let mut written = Vec::new();
        let mut encode = |buf: &mut Vec<u8>, message: &BondMessage| {
            if let (true, BondMessage::Frame(PeerFrame::Raft(m))) = (probe::ENABLED, message) {
                if let Some(carried) = probe::carried(m) {
                    probe::mark_carried(carried, Hop::LeaderWriter, Hop::FollowerWriter);
                    written.push(carried);
                }
            }
            if let Err(e) = encode_message(buf, message) {
                tracing::warn!(error = %e, "bond frame not sent");
            }
        };
        encode(&mut buf, &message);
        for _ in 0..FRAMES_PER_WRITE_MAX {
            let Ok(frame) = rx.try_recv() else { break };
            if let Some(message) = snapshots.route(frame) {
                encode(&mut buf, &message);
            }
        }
        if buf.is_empty() {
            continue;
        }
        if let Err(e) = tokio::io::AsyncWriteExt::write_all(&mut send, &buf).await {
            tracing::debug!(error = %e, "bond write failed");
            return;
        }
        for carried in written {
            probe::mark_carried(carried, Hop::LeaderWritten, Hop::FollowerWritten);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renewals_come_in_a_small_burst_then_one_per_refill() {
        let start = tokio::time::Instant::now();
        let mut allowance = RenewalAllowance::new(start);
        for i in 0..RENEWALS_BURST {
            assert!(allowance.take(start), "renewal {i} of the burst");
        }
        assert!(!allowance.take(start), "beyond the burst");
        assert!(!allowance.take(start + RENEWAL_REFILL / 2));
        assert!(
            allowance.take(start + RENEWAL_REFILL),
            "one more per refill"
        );
        assert!(!allowance.take(start + RENEWAL_REFILL));
        // A long quiet spell refills the burst, no more.
        let later = start + RENEWAL_REFILL * 100;
        for _ in 0..RENEWALS_BURST {
            assert!(allowance.take(later));
        }
        assert!(!allowance.take(later));
    }
}
