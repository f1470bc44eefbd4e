//! Groups: identity ([`GroupKey`], [`GroupId`]), the [`Groups`] gateway of an iroh endpoint
//! (an iroh `ProtocolHandler` that routes incoming bonds to the groups joined on it, and
//! the [`GroupBuilder`] that joins them), bonds over iroh ([`Bonds`]), and the runtime: a
//! worker that drives one member's consensus core against real storage, a state
//! machine and a transport, and the async [`Group`] handle applications use.
//!
//! **IO contract.** The worker does storage IO (synchronously: on its own thread when the
//! store's writes block, as a task of the runtime when they never do) and
//! hands frames to a [`Transport`]; it never makes a protocol decision itself (the sans-IO
//! `member` does). The handle talks to the worker only through its bounded inbox.
// Some public items of `bond` and `snapshot_transfer` are reachable only through
// `testing` (feature test-util): without it they are crate-internal, and a few unused.
#[cfg_attr(not(any(test, feature = "test-util")), allow(unreachable_pub))]
pub(crate) mod bond;
mod consensus;
mod error;
pub(crate) mod formation;
mod gateway;
mod group;
#[cfg(any(test, feature = "test-util"))]
mod local_network;
pub use crate::group_id as id;
pub(crate) mod member;
#[cfg_attr(
    not(any(test, feature = "test-util")),
    allow(unreachable_pub, dead_code)
)]
pub(crate) mod snapshot_transfer;
mod ticket_renewal;
pub(crate) mod transport;
pub(crate) mod worker;

use std::marker::PhantomData;
use std::sync::{Arc, Mutex};

pub use bond::{node_id_of, BondConfig, BondEvent, BondStats, Bonds, Dial, Refusal, RefusalRecord};
pub use consensus::{ConsensusConfig, ConsensusConfigBuilder, ConsensusConfigError};
pub use error::{GroupError, Rejection, StopReason};
pub use gateway::{BondProtocol, GroupBuilder, Groups, GroupsConfig, JoinError};
pub use group::{Consistency, Group, When};
pub use id::{GroupId, GroupKey};
pub use ticket_renewal::keep_tickets_fresh;
pub use transport::{Inbox, InboxItem, PeerFrame, Transport, INBOX_FRAMES_MAX};
pub use worker::{GroupStatus, WorkerConfig};

/// Hooks for tests (feature `test-util`), not for running groups: an in-process network
/// for workers, and the internals a test needs to speak (or break) the bond and snapshot
/// protocols by hand.
#[cfg(any(test, feature = "test-util"))]
pub mod testing {
    pub use super::bond::{
        dial_raw, BondMessage, RawBond, HANDSHAKES_MAX, HANDSHAKES_PER_SOURCE_MAX, RENEWALS_BURST,
    };
    pub use super::local_network::LocalNetwork;
    pub use super::snapshot_transfer::{offer_for, receive_snapshot, send_snapshot, ResumeSlot};
}

use crate::machine::{LeadershipPreference, Sessions, StateMachine};
use crate::raft::{Membership, NodeId, Raft, RaftConfig};
use crate::storage::{SnapshotHandle, SnapshotStore, Storage};
use group::{GroupShared, SessionPool};
use worker::{Placement, Worker, WorkerHandle};

/// Everything needed to start one member.
#[derive(Clone, Debug)]
pub struct MemberOptions {
    /// This member's id in the core.
    pub node: NodeId,
    /// The group's id ([`Group::id`]).
    pub group_id: GroupId,
    /// The network the group belongs to (empty: none), for [`crate::machine::ApplyContext`].
    pub network_id: String,
    /// The core's parameters (in ticks).
    pub raft: RaftConfig,
    /// The worker's parameters (the tick, snapshots, membership).
    pub worker: WorkerConfig,
    /// Seed of the core's election-timeout generator.
    pub seed: u64,
    /// Upper bound on one `execute` or `query` including retries.
    pub request_timeout: std::time::Duration,
    /// The initial voters, for a member whose storage is empty and that should form a new
    /// group with them. Ignored when storage already holds state (never bootstrap twice).
    pub bootstrap: Option<Membership>,
}

/// Why a member could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    /// The stored state could not be read.
    #[error("storage: {0}")]
    Storage(#[from] crate::storage::StorageError),
    /// The stored snapshot does not restore into the state machine.
    #[error("stored snapshot does not restore: {0}")]
    Snapshot(#[from] crate::machine::SnapshotError),
    /// The stored snapshot's bytes are missing or do not match their digest.
    #[error("stored snapshot: {0}")]
    SnapshotStore(#[from] crate::storage::SnapshotStoreError),
    /// The core refuses the configuration or the recovered state.
    #[error("consensus core: {0}")]
    Core(#[from] crate::raft::NewRaftError),
    /// The founding configuration could not be written.
    #[error("bootstrap: {0}")]
    Bootstrap(#[from] crate::raft::BootstrapError),
    /// The operating system would not start the worker thread.
    #[error("could not start the worker thread: {0}")]
    Thread(#[from] std::io::Error),
}

/// Starts a member: recovers from `storage`, bootstraps if asked and fresh, connects the
/// transport `connect` returns for the worker's inbox (and the storage's snapshot store,
/// which snapshots are sent from and received into), and starts the worker: a task of the
/// current async runtime when the store's writes never block
/// ([`Storage::writes_block`]), an OS thread of its
/// own otherwise or outside a runtime.
pub fn start<M, S>(
    options: MemberOptions,
    machine: M,
    storage: S,
    connect: impl FnOnce(Inbox<worker::ClientRequest>, Arc<SnapshotStore>) -> Arc<dyn Transport>,
) -> Result<Group<M>, StartError>
where
    M: StateMachine,
    S: Storage + Send + 'static,
{
    let state = storage.initial_state()?;
    let write_blocks = storage.writes_block();
    let mut sessions = Sessions::new(machine);
    let snapshots = storage.snapshot_store();
    let kept = match &state.snapshot {
        Some(snapshot) => {
            // The log records the snapshot's handle; its bytes stream from the store,
            // checked against the handle's digest as they are read.
            let handle = SnapshotHandle::decode(&snapshot.data)?;
            sessions.restore_from(&mut snapshots.reader(&handle)?)?;
            Some(handle)
        }
        None => None,
    };
    // Whatever the log does not refer to is left over from before a crash.
    snapshots.sweep(kept.as_ref())?;
    // The member's own leadership preference (architecture.md §7.2) is enforced by its core too.
    let mut raft_config = options.raft.clone();
    match sessions.leadership_preference() {
        LeadershipPreference::Normal => {}
        LeadershipPreference::Reluctant => raft_config.reluctant = true,
        LeadershipPreference::Observer => raft_config.observer = true,
    }
    let mut raft = Raft::new(options.node, raft_config, options.seed, state)?;
    // Never bootstrap twice: only a node with no state at all forms a group.
    if raft.is_fresh() {
        if let Some(members) = options.bootstrap.clone() {
            raft.bootstrap(members)?;
        }
    }
    let (tx, rx) = std::sync::mpsc::sync_channel(INBOX_FRAMES_MAX);
    let inbox = Inbox::new(tx);
    let transport = connect(inbox.clone(), snapshots);
    let (status_tx, status_rx) = tokio::sync::watch::channel(GroupStatus::default());
    let write_timing = Arc::new(crate::storage::WriteTiming::default());
    let worker = Worker::new(
        options.node,
        options.worker.clone(),
        raft,
        sessions,
        storage,
        write_timing.clone(),
        transport,
        rx,
        status_tx,
    )
    .in_group(options.group_id, options.network_id.clone());
    let wake = inbox.waker();
    let placement = Placement::for_storage(write_blocks);
    let handle = match placement {
        Placement::Task(runtime) => WorkerHandle::Task(runtime.spawn(worker.run(wake))),
        Placement::Thread => {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_time()
                .build()?;
            WorkerHandle::Thread(
                std::thread::Builder::new()
                    .name(format!("tessera-group-{}", options.node))
                    .spawn(move || runtime.block_on(worker.run(wake)))?,
            )
        }
    };
    // Client ids must be unique across every handle of the group: start this handle's
    // range at a random point.
    let mut random = [0u8; 8];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut random)
        .map_err(|_| std::io::Error::other("no system randomness for client ids"))?;
    let shared = GroupShared {
        inbox,
        status: status_rx,
        sessions: Mutex::new(SessionPool {
            free: Vec::new(),
            next_client: u64::from_le_bytes(random),
        }),
        timeout: options.request_timeout,
        worker: Mutex::new(Some(handle)),
        write_timing,
        id: options.group_id,
        network: std::sync::OnceLock::new(),
    };
    Ok(Group {
        shared: Arc::new(shared),
        _machine: PhantomData,
    })
}
