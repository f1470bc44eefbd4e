use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncWrite, DuplexStream, ReadHalf, WriteHalf};

use super::*;
use crate::raft::Membership;

const LEADER: NodeId = NodeId(1);
const FOLLOWER: NodeId = NodeId(2);

fn snapshot_message(len: usize, index: Index) -> Message {
    // Not all zeros, so a chunk in the wrong place changes the digest.
    let data: Vec<u8> = (0..len).map(|i| (i * 31 % 251) as u8).collect();
    Message {
        from: LEADER,
        to: FOLLOWER,
        term: 3,
        body: MessageBody::InstallSnapshot {
            snapshot: Snapshot {
                meta: SnapshotMeta {
                    index,
                    term: 2,
                    membership: Membership::default(),
                    membership_index: 0,
                },
                data: Bytes::from(data),
            },
        },
    }
}

fn offer_of(message: &Message) -> (Offer, Bytes) {
    let MessageBody::InstallSnapshot { snapshot } = &message.body else {
        unreachable!("test messages are snapshots")
    };
    offer_for(message, sha256(&snapshot.data)).expect("an InstallSnapshot message")
}

type Half = (ReadHalf<DuplexStream>, WriteHalf<DuplexStream>);

fn pipe() -> (Half, Half) {
    let (a, b) = tokio::io::duplex(256 << 10);
    (tokio::io::split(a), tokio::io::split(b))
}

/// A writer that fails once it has passed on `remaining` bytes: a connection cut mid-way.
struct CutAfter<W> {
    inner: W,
    remaining: usize,
}

impl<W: AsyncWrite + Unpin> AsyncWrite for CutAfter<W> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        if self.remaining == 0 {
            return Poll::Ready(Err(std::io::ErrorKind::BrokenPipe.into()));
        }
        let n = buf.len().min(self.remaining);
        let polled = Pin::new(&mut self.inner).poll_write(cx, &buf[..n]);
        if let Poll::Ready(Ok(written)) = polled {
            self.remaining -= written;
        }
        polled
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Runs one transfer: the leader sends `offer`/`data` (its writes cut after `cut` bytes if
/// given), the follower receives into `slot`.
async fn transfer(
    offer: &Offer,
    data: &Bytes,
    slot: &ResumeSlot,
    cut: Option<usize>,
) -> (Result<u64, TransferError>, Result<Message, TransferError>) {
    let ((mut leader_rx, leader_tx), (mut follower_rx, mut follower_tx)) = pipe();
    let sending = async move {
        match cut {
            Some(remaining) => {
                let mut tx = CutAfter {
                    inner: leader_tx,
                    remaining,
                };
                send_snapshot(&mut leader_rx, &mut tx, offer, data).await
            }
            None => {
                let mut tx = leader_tx;
                send_snapshot(&mut leader_rx, &mut tx, offer, data).await
            }
        }
        // The sender's halves drop here, as a closed stream would.
    };
    // The receiver's halves drop when it returns, so a sender still writing sees the end.
    let receiving =
        async move { receive_snapshot(&mut follower_rx, &mut follower_tx, LEADER, slot).await };
    tokio::join!(sending, receiving)
}

#[tokio::test]
async fn a_snapshot_of_many_chunks_arrives_whole() {
    let message = snapshot_message(5 * CHUNK_BYTES + 123, 40);
    let (offer, data) = offer_of(&message);
    let slot = ResumeSlot::default();
    let (sent, received) = transfer(&offer, &data, &slot, None).await;
    assert_eq!(sent.expect("sent"), data.len() as u64);
    assert_eq!(received.expect("received"), message);
    assert_eq!(slot.parked_bytes(), 0);
}

#[tokio::test]
async fn a_cut_transfer_resumes_where_it_stopped() {
    let message = snapshot_message(6 * CHUNK_BYTES, 40);
    let (offer, data) = offer_of(&message);
    let slot = ResumeSlot::default();
    // Cut in the middle of the fourth chunk: three whole chunks were received.
    let cut = 3 * (CHUNK_BYTES + 5) + CHUNK_BYTES / 2 + 200;
    let (sent, received) = transfer(&offer, &data, &slot, Some(cut)).await;
    assert!(sent.is_err(), "the sender saw the cut");
    assert!(received.is_err(), "the receiver saw the cut");
    assert_eq!(slot.parked_bytes(), 3 * CHUNK_BYTES as u64);

    let (sent, received) = transfer(&offer, &data, &slot, None).await;
    assert_eq!(
        sent.expect("resumed"),
        3 * CHUNK_BYTES as u64,
        "only the missing half is sent again"
    );
    assert_eq!(received.expect("received"), message);
}

#[tokio::test]
async fn another_snapshot_replaces_a_parked_one() {
    let old = snapshot_message(4 * CHUNK_BYTES, 40);
    let (old_offer, old_data) = offer_of(&old);
    let slot = ResumeSlot::default();
    let _ = transfer(&old_offer, &old_data, &slot, Some(2 * CHUNK_BYTES + 100)).await;
    assert!(slot.parked_bytes() > 0);

    let newer = snapshot_message(4 * CHUNK_BYTES, 80);
    let (offer, data) = offer_of(&newer);
    let (sent, received) = transfer(&offer, &data, &slot, None).await;
    assert_eq!(
        sent.expect("sent"),
        data.len() as u64,
        "sent from the start"
    );
    assert_eq!(received.expect("received"), newer);
}

#[tokio::test]
async fn bytes_that_do_not_match_the_digest_are_never_delivered() {
    let message = snapshot_message(2 * CHUNK_BYTES + 7, 40);
    let (mut offer, data) = offer_of(&message);
    offer.sha256[0] ^= 1;
    let slot = ResumeSlot::default();
    let (_, received) = transfer(&offer, &data, &slot, None).await;
    assert!(matches!(received, Err(TransferError::Digest { index: 40 })));
    assert_eq!(slot.parked_bytes(), 0, "untrusted bytes are not kept");
}

#[tokio::test]
async fn an_oversized_offer_is_declined_before_any_byte_is_held() {
    let message = snapshot_message(10, 40);
    let (mut offer, data) = offer_of(&message);
    offer.size = SNAPSHOT_BYTES_MAX + 1;
    let slot = ResumeSlot::default();
    let (sent, received) = transfer(&offer, &data, &slot, None).await;
    assert!(matches!(received, Err(TransferError::TooLarge { .. })));
    assert!(matches!(sent, Err(TransferError::Declined(reason)) if reason.contains("exceeds")));
}

#[tokio::test]
async fn an_offer_in_another_members_name_is_declined() {
    let mut message = snapshot_message(10, 40);
    message.from = NodeId(9);
    let (offer, data) = offer_of(&message);
    let slot = ResumeSlot::default();
    let (sent, received) = transfer(&offer, &data, &slot, None).await;
    assert!(matches!(
        received,
        Err(TransferError::WrongSender {
            claimed: NodeId(9),
            peer: LEADER
        })
    ));
    assert!(matches!(sent, Err(TransferError::Declined(_))));
}

#[tokio::test]
async fn a_sender_that_sends_more_than_it_announced_is_cut_off() {
    let message = snapshot_message(CHUNK_BYTES, 40);
    let (mut offer, data) = offer_of(&message);
    offer.size = 1000; // announces less than it then sends
    let slot = ResumeSlot::default();
    let (_, received) = transfer(&offer, &data, &slot, None).await;
    assert!(matches!(
        received,
        Err(TransferError::Overrun {
            received: 0,
            size: 1000,
            ..
        })
    ));
}

#[test]
fn partial_refuses_empty_chunks_and_unfinished_results() {
    let key = TransferKey {
        from: LEADER,
        index: 1,
        term: 1,
        sha256: sha256(b"abc"),
    };
    let mut partial = Partial::start(key, 3).expect("small");
    assert!(matches!(partial.push(b""), Err(TransferError::EmptyChunk)));
    partial.push(b"ab").expect("fits");
    assert!(!partial.is_complete());
    let mut done = Partial::start(key, 3).expect("small");
    done.push(b"abc").expect("fits");
    assert_eq!(
        done.finish().expect("digest matches"),
        Bytes::from_static(b"abc")
    );
    assert!(
        matches!(
            partial.finish(),
            Err(TransferError::Incomplete {
                received: 2,
                size: 3
            })
        ),
        "two of three bytes are not a snapshot"
    );
}

#[test]
fn offer_for_refuses_other_messages() {
    let message = Message {
        from: LEADER,
        to: FOLLOWER,
        term: 1,
        body: MessageBody::TimeoutNow,
    };
    assert!(matches!(
        offer_for(&message, [0; 32]),
        Err(TransferError::NotASnapshot)
    ));
}
