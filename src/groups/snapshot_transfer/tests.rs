use std::io::Write as _;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, DuplexStream, ReadHalf, WriteHalf};

use super::*;
use crate::raft::Membership;

const LEADER: NodeId = NodeId(1);
const FOLLOWER: NodeId = NodeId(2);

/// The two members' snapshot stores: the leader's in memory, the follower's in files (the
/// directory lives as long as the value).
struct Stores {
    leader: Arc<SnapshotStore>,
    follower: Arc<SnapshotStore>,
    _dir: tempfile::TempDir,
}

fn stores() -> Stores {
    let dir = tempfile::tempdir().expect("tempdir");
    let follower = SnapshotStore::open_dir(
        dir.path().join("snapshots"),
        crate::storage::StorageKey::derive(&[4; 32], &[1; 32]),
    )
    .expect("store");
    Stores {
        leader: Arc::new(SnapshotStore::memory()),
        follower: Arc::new(follower),
        _dir: dir,
    }
}

/// An `InstallSnapshot` of `len` bytes, stored in `store`.
fn snapshot_message(store: &Arc<SnapshotStore>, len: usize, index: Index) -> Message {
    // Not all zeros, so a chunk in the wrong place changes the digest.
    let data: Vec<u8> = (0..len)
        .map(|i| ((i * 31 + index as usize) % 251) as u8)
        .collect();
    let mut writer = store.writer().expect("writer");
    writer.write_all(&data).expect("write");
    let handle = writer.finish(None).expect("stored");
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
                    incarnation: None,
                    timestamp_ms: 0,
                },
                data: handle.encode(),
            },
        },
    }
}

fn offer_of(message: &Message) -> (Offer, SnapshotHandle) {
    offer_for(message).expect("an InstallSnapshot message")
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

/// The receiver's gate in tests that are not about it: every offer is welcome.
fn any_offer(_: &Offer) -> Result<(), TransferError> {
    Ok(())
}

/// Runs one transfer: the leader sends `offer` with the bytes of `handle` (its writes cut
/// after `cut` bytes if given), the follower receives into `slot` and its store.
async fn transfer(
    stores: &Stores,
    offer: &Offer,
    handle: &SnapshotHandle,
    slot: &ResumeSlot,
    cut: Option<usize>,
) -> (Result<u64, TransferError>, Result<Message, TransferError>) {
    transfer_gated(stores, offer, handle, slot, cut, &any_offer).await
}

/// [`transfer`] with the receiver's gate on offers.
async fn transfer_gated(
    stores: &Stores,
    offer: &Offer,
    handle: &SnapshotHandle,
    slot: &ResumeSlot,
    cut: Option<usize>,
    allowed: &(dyn Fn(&Offer) -> Result<(), TransferError> + Sync),
) -> (Result<u64, TransferError>, Result<Message, TransferError>) {
    let data = &stores.leader;
    let ((mut leader_rx, leader_tx), (mut follower_rx, mut follower_tx)) = pipe();
    let sending = async move {
        match cut {
            Some(remaining) => {
                let mut tx = CutAfter {
                    inner: leader_tx,
                    remaining,
                };
                send_snapshot(&mut leader_rx, &mut tx, offer, data, handle).await
            }
            None => {
                let mut tx = leader_tx;
                send_snapshot(&mut leader_rx, &mut tx, offer, data, handle).await
            }
        }
        // The sender's halves drop here, as a closed stream would.
    };
    // The receiver's halves drop when it returns, so a sender still writing sees the end.
    let store = &stores.follower;
    let receiving = async move {
        receive_snapshot(
            &mut follower_rx,
            &mut follower_tx,
            LEADER,
            allowed,
            slot,
            store,
        )
        .await
    };
    tokio::join!(sending, receiving)
}

/// The bytes `store` holds for the snapshot of `message`, read back verified.
fn stored_bytes(store: &SnapshotStore, message: &Message) -> Vec<u8> {
    let (_, handle) = offer_of(message);
    let mut out = Vec::new();
    std::io::Read::read_to_end(&mut store.reader(&handle).expect("stored"), &mut out)
        .expect("verified read");
    out
}

/// Files in the follower's snapshot directory (complete and unfinished).
fn follower_files(stores: &Stores) -> usize {
    let dir = stores.follower.dir().expect("a file store");
    std::fs::read_dir(dir).expect("ls").count()
}

#[tokio::test]
async fn a_snapshot_of_many_chunks_arrives_whole() {
    let stores = stores();
    let message = snapshot_message(&stores.leader, 5 * CHUNK_BYTES + 123, 40);
    let (offer, handle) = offer_of(&message);
    let slot = ResumeSlot::default();
    let (sent, received) = transfer(&stores, &offer, &handle, &slot, None).await;
    assert_eq!(sent.expect("sent"), handle.size);
    assert_eq!(
        received.expect("received"),
        message,
        "the same snapshot, named by the same content handle"
    );
    assert_eq!(
        stored_bytes(&stores.follower, &message),
        stored_bytes(&stores.leader, &message)
    );
    assert_eq!(slot.parked_bytes(), 0);
    assert_eq!(
        follower_files(&stores),
        1,
        "one synced snapshot file, no leftovers"
    );
}

#[tokio::test]
async fn a_cut_transfer_resumes_where_it_stopped() {
    let stores = stores();
    let message = snapshot_message(&stores.leader, 6 * CHUNK_BYTES, 40);
    let (offer, handle) = offer_of(&message);
    let slot = ResumeSlot::default();
    // Cut in the middle of the fourth chunk: three whole chunks were received.
    let cut = 3 * (CHUNK_BYTES + 5) + CHUNK_BYTES / 2 + 200;
    let (sent, received) = transfer(&stores, &offer, &handle, &slot, Some(cut)).await;
    assert!(sent.is_err(), "the sender saw the cut");
    assert!(received.is_err(), "the receiver saw the cut");
    assert_eq!(slot.parked_bytes(), 3 * CHUNK_BYTES as u64);
    assert!(
        stores.follower.list().expect("list").is_empty(),
        "a partial snapshot is not a snapshot"
    );

    let (sent, received) = transfer(&stores, &offer, &handle, &slot, None).await;
    assert_eq!(
        sent.expect("resumed"),
        3 * CHUNK_BYTES as u64,
        "only the missing half is sent again"
    );
    assert_eq!(received.expect("received"), message);
    assert_eq!(
        stored_bytes(&stores.follower, &message),
        stored_bytes(&stores.leader, &message)
    );
}

/// A reader that passes on `remaining` bytes, then never yields another one and says so
/// (once the receiver is waiting for more than those bytes).
struct StallAfter<R> {
    inner: R,
    remaining: usize,
    stalled: Arc<tokio::sync::Notify>,
}

impl<R: AsyncRead + Unpin> AsyncRead for StallAfter<R> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if self.remaining == 0 {
            self.stalled.notify_one();
            return Poll::Pending;
        }
        let want = buf.remaining().min(self.remaining);
        let mut limited = tokio::io::ReadBuf::new(buf.initialize_unfilled_to(want));
        let polled = Pin::new(&mut self.inner).poll_read(cx, &mut limited);
        let got = limited.filled().len();
        if let Poll::Ready(Ok(())) = polled {
            buf.advance(got);
            self.remaining -= got;
        }
        polled
    }
}

/// The usual end of a transfer whose connection is lost: the bond closes and aborts the
/// receiving task, so the receiver's future is dropped mid-transfer. What arrived is
/// parked all the same, and the next offer resumes from it.
#[tokio::test]
async fn a_transfer_whose_receiver_is_dropped_mid_way_is_parked_and_resumed() {
    let stores = stores();
    let message = snapshot_message(&stores.leader, 5 * CHUNK_BYTES, 40);
    let (offer, handle) = offer_of(&message);
    let slot = ResumeSlot::default();
    let ((mut leader_rx, mut leader_tx), (follower_rx, mut follower_tx)) = pipe();
    let stalled = Arc::new(tokio::sync::Notify::new());
    // The offer frame, then two whole chunks (4-byte length, version byte, bytes).
    let offer_frame = {
        let mut buf = Vec::new();
        crate::net::encode_message(&mut buf, &offer).expect("offer encodes");
        buf.len()
    };
    let mut follower_rx = StallAfter {
        inner: follower_rx,
        remaining: offer_frame + 2 * (CHUNK_BYTES + 5),
        stalled: stalled.clone(),
    };
    {
        let store = &stores.follower;
        let receiving = receive_snapshot(
            &mut follower_rx,
            &mut follower_tx,
            LEADER,
            &any_offer,
            &slot,
            store,
        );
        let sending = send_snapshot(
            &mut leader_rx,
            &mut leader_tx,
            &offer,
            &stores.leader,
            &handle,
        );
        tokio::pin!(receiving, sending);
        // Both run until the receiver waits for bytes that will not come (the sender is
        // then blocked on the full pipe); then both are dropped, as an aborted task's
        // future is.
        tokio::select! {
            _ = stalled.notified() => {}
            r = &mut receiving => panic!("the receiver finished: {r:?}"),
            r = &mut sending => panic!("the sender finished: {r:?}"),
        }
    }
    assert_eq!(
        slot.parked_bytes(),
        2 * CHUNK_BYTES as u64,
        "two chunks parked"
    );
    let (sent, received) = transfer(&stores, &offer, &handle, &slot, None).await;
    assert_eq!(sent.expect("resumed"), 3 * CHUNK_BYTES as u64);
    assert_eq!(received.expect("received"), message);
    assert_eq!(
        stored_bytes(&stores.follower, &message),
        stored_bytes(&stores.leader, &message)
    );
}

#[tokio::test]
async fn another_snapshot_replaces_a_parked_one() {
    let stores = stores();
    let old = snapshot_message(&stores.leader, 4 * CHUNK_BYTES, 40);
    let (old_offer, old_handle) = offer_of(&old);
    let slot = ResumeSlot::default();
    let cut = Some(2 * CHUNK_BYTES + 100);
    let _ = transfer(&stores, &old_offer, &old_handle, &slot, cut).await;
    assert!(slot.parked_bytes() > 0);

    let newer = snapshot_message(&stores.leader, 4 * CHUNK_BYTES, 80);
    let (offer, handle) = offer_of(&newer);
    let (sent, received) = transfer(&stores, &offer, &handle, &slot, None).await;
    assert_eq!(sent.expect("sent"), handle.size, "sent from the start");
    assert_eq!(received.expect("received"), newer);
    assert_eq!(
        follower_files(&stores),
        1,
        "the replaced partial file is gone, the new snapshot is there"
    );
}

#[tokio::test]
async fn a_received_snapshot_is_kept_until_its_delivery_is_released() {
    let stores = stores();
    let slot = ResumeSlot::default();
    let first = snapshot_message(&stores.leader, 1000, 40);
    let (offer, handle) = offer_of(&first);
    let message = transfer(&stores, &offer, &handle, &slot, None)
        .await
        .1
        .expect("received");
    assert_eq!(handle_of(&message), Some(handle));
    assert!(stores.follower.contains(&handle), "kept for the worker");
    // The worker's core refused it (say, it was stale): released, nothing uses it.
    stores.follower.release(&handle);
    assert!(!stores.follower.contains(&handle));
    assert_eq!(follower_files(&stores), 0);
}

#[tokio::test]
async fn bytes_that_do_not_match_the_digest_are_never_delivered() {
    let stores = stores();
    let message = snapshot_message(&stores.leader, 2 * CHUNK_BYTES + 7, 40);
    let (mut offer, handle) = offer_of(&message);
    offer.sha256[0] ^= 1;
    let slot = ResumeSlot::default();
    let (_, received) = transfer(&stores, &offer, &handle, &slot, None).await;
    assert!(matches!(received, Err(TransferError::Digest { index: 40 })));
    assert_eq!(slot.parked_bytes(), 0, "untrusted bytes are not kept");
    assert_eq!(follower_files(&stores), 0, "nor left on disk");
}

#[tokio::test]
async fn an_oversized_offer_is_declined_before_any_byte_is_held() {
    let stores = stores();
    let message = snapshot_message(&stores.leader, 10, 40);
    let (mut offer, handle) = offer_of(&message);
    offer.size = stores.follower.size_limit() + 1;
    let slot = ResumeSlot::default();
    let (sent, received) = transfer(&stores, &offer, &handle, &slot, None).await;
    assert!(matches!(received, Err(TransferError::TooLarge { .. })));
    assert!(matches!(sent, Err(TransferError::Declined(reason)) if reason.contains("exceeds")));
    assert_eq!(follower_files(&stores), 0);
}

#[tokio::test]
async fn an_offer_in_another_members_name_is_declined() {
    let stores = stores();
    let mut message = snapshot_message(&stores.leader, 10, 40);
    message.from = NodeId(9);
    let (offer, handle) = offer_of(&message);
    let slot = ResumeSlot::default();
    let (sent, received) = transfer(&stores, &offer, &handle, &slot, None).await;
    assert!(matches!(
        received,
        Err(TransferError::WrongSender {
            claimed: NodeId(9),
            peer: LEADER
        })
    ));
    assert!(matches!(sent, Err(TransferError::Declined(_))));
}

/// A bonded member that is not the leader this one follows (or is, but in another term)
/// cannot make it take a snapshot: declined before a byte is held.
#[tokio::test]
async fn an_offer_from_anyone_but_the_current_leader_in_its_term_is_declined() {
    let stores = stores();
    let message = snapshot_message(&stores.leader, 10, 40);
    let (offer, handle) = offer_of(&message);
    let status = |leader: Option<NodeId>, term| crate::groups::GroupStatus {
        leader,
        term,
        ..Default::default()
    };
    let refusals = [
        status(None, offer.term),
        status(Some(NodeId(7)), offer.term),
        status(Some(LEADER), offer.term + 1),
    ];
    for following in refusals {
        let gate = |o: &Offer| from_current_leader(o, &following);
        let slot = ResumeSlot::default();
        let (sent, received) = transfer_gated(&stores, &offer, &handle, &slot, None, &gate).await;
        assert!(
            matches!(received, Err(TransferError::NotFromLeader { .. })),
            "{following:?}: {received:?}"
        );
        assert!(matches!(sent, Err(TransferError::Declined(_))), "{sent:?}");
        assert_eq!(follower_files(&stores), 0, "bytes were held");
    }
    let current = status(Some(LEADER), offer.term);
    let gate = |o: &Offer| from_current_leader(o, &current);
    let slot = ResumeSlot::default();
    let (_, received) = transfer_gated(&stores, &offer, &handle, &slot, None, &gate).await;
    assert!(received.is_ok(), "the current leader's offer: {received:?}");
}

#[tokio::test]
async fn a_sender_that_sends_more_than_it_announced_is_cut_off() {
    let stores = stores();
    let message = snapshot_message(&stores.leader, CHUNK_BYTES, 40);
    let (mut offer, mut handle) = offer_of(&message);
    // Announces less than it then sends.
    offer.size = 1000;
    handle.size = CHUNK_BYTES as u64;
    let slot = ResumeSlot::default();
    let (_, received) = transfer(&stores, &offer, &handle, &slot, None).await;
    assert!(matches!(
        received,
        Err(TransferError::Overrun {
            received: 0,
            size: 1000,
            ..
        })
    ));
    assert_eq!(follower_files(&stores), 0);
}

#[test]
fn partial_refuses_empty_chunks_and_unfinished_results() {
    let store = Arc::new(SnapshotStore::memory());
    let mut sha256 = [0u8; 32];
    sha256.copy_from_slice(ring::digest::digest(&ring::digest::SHA256, b"abc").as_ref());
    let key = TransferKey {
        from: LEADER,
        index: 1,
        term: 1,
        sha256,
    };
    let mut partial = Partial::start(key, 3, &store).expect("small");
    assert!(matches!(partial.push(b""), Err(TransferError::EmptyChunk)));
    partial.push(b"ab").expect("fits");
    assert!(!partial.is_complete());
    let mut done = Partial::start(key, 3, &store).expect("small");
    done.push(b"abc").expect("fits");
    assert_eq!(
        done.finish(&store).expect("digest matches"),
        SnapshotHandle { size: 3, sha256 }
    );
    assert!(
        matches!(
            partial.finish(&store),
            Err(TransferError::Incomplete {
                received: 2,
                size: 3
            })
        ),
        "two of three bytes are not a snapshot"
    );
}

#[test]
fn offer_for_refuses_other_messages_and_data_that_is_no_handle() {
    let message = Message {
        from: LEADER,
        to: FOLLOWER,
        term: 1,
        body: MessageBody::TimeoutNow,
    };
    assert!(matches!(
        offer_for(&message),
        Err(TransferError::NotASnapshot)
    ));
    let raw = Message {
        from: LEADER,
        to: FOLLOWER,
        term: 1,
        body: MessageBody::InstallSnapshot {
            snapshot: Snapshot {
                meta: SnapshotMeta::default(),
                data: bytes::Bytes::from_static(b"raw machine bytes"),
            },
        },
    };
    assert!(matches!(
        offer_for(&raw),
        Err(TransferError::Store(SnapshotStoreError::NotAHandle { .. }))
    ));
}
