//! A large snapshot is taken, transferred and restored without ever being held in memory
//! whole (issue 6: "a snapshot of 1 GiB state installs without holding it all in memory at
//! once"). Measured exactly, with a counting global allocator: this test binary has one
//! test, so nothing else allocates meanwhile. The 1 GiB figure itself comes from
//! `tessera bench --snapshot-install 1024` (docs/benchmarks.md); this checks the same
//! path at 64 MiB on every CI run.
use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tessera::groups::testing::{offer_for, receive_snapshot, send_snapshot, ResumeSlot};
use tessera::machine::{
    ApplyContext, ClientId, KvCommand, KvStore, ReplicatedKv, SessionCommand, StateMachine,
    VALUE_BYTES_MAX_DEFAULT,
};
use tessera::raft::{Membership, Message, MessageBody, NodeId, Snapshot, SnapshotMeta};
use tessera::storage::SnapshotStore;

/// Counts live heap bytes and their peak.
struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded unchanged to the system allocator.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            let live = LIVE.fetch_add(layout.size(), Ordering::SeqCst) + layout.size();
            PEAK.fetch_max(live, Ordering::SeqCst);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded unchanged to the system allocator.
        unsafe { System.dealloc(ptr, layout) };
        LIVE.fetch_sub(layout.size(), Ordering::SeqCst);
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Runs `f` and returns its result with the most heap it held at once above what was live
/// before it started.
fn peak_growth<T>(f: impl FnOnce() -> T) -> (T, usize) {
    let base = LIVE.load(Ordering::SeqCst);
    PEAK.store(base, Ordering::SeqCst);
    let out = f();
    (out, PEAK.load(Ordering::SeqCst).saturating_sub(base))
}

const STATE_BYTES: u64 = 64 << 20;
/// Headroom for buffers (file readers and writers, 1 MiB chunks, the channel between the
/// tasks), far below the snapshot's size.
const SLACK_BYTES: usize = 8 << 20;

fn filled_machine() -> ReplicatedKv {
    let mut machine = ReplicatedKv::new(KvStore::new());
    let keys = STATE_BYTES / VALUE_BYTES_MAX_DEFAULT;
    for k in 0..keys {
        let ctx = ApplyContext::new(k + 1, 1, 1);
        let command = SessionCommand {
            client: ClientId(k % 8),
            seq: k,
            command: KvCommand::Put {
                key: format!("k{k:08}").into_bytes(),
                value: vec![(k % 251) as u8; VALUE_BYTES_MAX_DEFAULT as usize],
            },
        };
        machine.apply(command, &ctx);
    }
    machine
}

#[test]
fn a_large_snapshot_is_written_sent_and_restored_without_a_whole_copy_in_memory() {
    let dir = tempfile::tempdir().expect("tempdir");
    let leader_store =
        Arc::new(SnapshotStore::open_dir(dir.path().join("leader"), test_key()).expect("store"));
    let follower_store =
        Arc::new(SnapshotStore::open_dir(dir.path().join("follower"), test_key()).expect("store"));
    let machine = filled_machine();

    // Taking the snapshot: streamed into a file.
    let (handle, taking) = peak_growth(|| {
        let mut writer = leader_store.writer().expect("writer");
        machine.snapshot_to(&mut writer).expect("snapshot");
        writer.finish(None).expect("stored")
    });
    assert!(handle.size >= STATE_BYTES, "{} bytes", handle.size);
    assert!(
        taking < SLACK_BYTES,
        "taking a {} MiB snapshot held {} MiB at once",
        handle.size >> 20,
        taking >> 20
    );

    // Sending it to a follower, which writes it into its own store as it arrives.
    let message = Message {
        from: NodeId(1),
        to: NodeId(2),
        term: 1,
        body: MessageBody::InstallSnapshot {
            snapshot: Snapshot {
                meta: SnapshotMeta {
                    index: 10,
                    term: 1,
                    membership: Membership::with_voters([NodeId(1), NodeId(2)]),
                    membership_index: 0,
                    incarnation: None,
                    timestamp_ms: 0,
                },
                data: handle.encode(),
            },
        },
    };
    let (offer, sent_handle) = offer_for(&message).expect("offer");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let (received, sending) = peak_growth(|| {
        runtime.block_on(async {
            let (a, b) = tokio::io::duplex(1 << 20);
            let ((mut leader_rx, mut leader_tx), (mut follower_rx, mut follower_tx)) =
                (tokio::io::split(a), tokio::io::split(b));
            let slot = ResumeSlot::default();
            let (sent, received) = tokio::join!(
                send_snapshot(
                    &mut leader_rx,
                    &mut leader_tx,
                    &offer,
                    &leader_store,
                    &sent_handle
                ),
                receive_snapshot(
                    &mut follower_rx,
                    &mut follower_tx,
                    NodeId(1),
                    &|_| Ok(()),
                    &slot,
                    &follower_store
                ),
            );
            assert_eq!(sent.expect("sent"), handle.size);
            received.expect("received")
        })
    });
    assert_eq!(received, message, "the follower holds the same snapshot");
    assert!(
        sending < SLACK_BYTES,
        "transferring a {} MiB snapshot held {} MiB at once",
        handle.size >> 20,
        sending >> 20
    );

    // Restoring it: the restored state is the only large allocation.
    let mut restored = ReplicatedKv::new(KvStore::new());
    let ((), restoring) = peak_growth(|| {
        let mut reader = follower_store.reader(&handle).expect("reader");
        restored.restore_from(&mut reader).expect("restores");
    });
    assert_eq!(restored, machine);
    let state = machine.inner().data_bytes() as usize;
    println!(
        "snapshot of {} KiB: held at most {} KiB taking it, {} KiB sending and receiving it, \
         {} KiB restoring {} KiB of state",
        handle.size >> 10,
        taking >> 10,
        sending >> 10,
        restoring >> 10,
        state >> 10
    );
    assert!(
        restoring < state + SLACK_BYTES,
        "restoring {} MiB of state held {} MiB at once (the snapshot itself must not be in memory)",
        state >> 20,
        restoring >> 20
    );
}

fn test_key() -> tessera::storage::StorageKey {
    tessera::storage::StorageKey::derive(&[4; 32], &[1; 32])
}
