//! A simulated node: the real member (the runtime's decisions around the real core), the
//! real state machine, and a disk that makes writes durable only after a delay, so a crash
//! can lose what was not yet synced.
use std::collections::{BTreeMap, VecDeque};

use crate::groups::member::{Member, RequestId};
use crate::machine::{ClientId, KvCommand, ReplicatedKv, SessionCommand};
use crate::raft::{Index, Message, NodeId, Raft, Term};
use crate::storage::{MemoryStorage, WriteBatch};

/// A write on its way to the disk, and what waits for it.
pub(super) struct DiskWrite {
    pub id: u64,
    pub batch: WriteBatch,
    pub persisted: Option<(Index, Term)>,
    /// `persisted_messages` of this Ready and of later Readies that had nothing to write.
    pub messages: Vec<Message>,
    /// The log positions its entries take, durable once it completes.
    pub positions: super::checks::Positions,
}

/// A client request a node accepted and still owes an answer to.
#[derive(Clone, Debug)]
pub(super) struct Waiter {
    pub client: ClientId,
    pub op: usize,
}

/// A client request handed to a node's member, by the member's request id.
#[derive(Clone, Debug)]
pub(super) struct Pending {
    pub waiter: Waiter,
    /// The key of a strong read, run when the member says its read point is applied.
    pub read_key: Option<Vec<u8>>,
}

pub(super) struct SimNode {
    /// Bumped on every crash; events of an earlier incarnation are ignored.
    pub incarnation: u64,
    /// The runtime's decisions and the core, as the worker runs them (`None`: down).
    pub member: Option<Member>,
    pub machine: ReplicatedKv,
    /// What survives a crash.
    pub durable: MemoryStorage,
    /// Writes not yet durable, oldest first; they complete in order.
    pub disk_queue: VecDeque<DiskWrite>,
    pub disk_busy_until_ms: u64,
    pub disk_slow_until_ms: u64,
    /// Client requests the member owes an answer to.
    pub requests: BTreeMap<RequestId, Pending>,
    pub next_request: u64,
    pub last_commit_seen: Index,
    /// The configuration in force when the core took its latest input: the one a leader
    /// counts a commit under in that step. The core counts (`maybe_commit` over its
    /// membership, `src/raft/replication.rs`) before any configuration it appends in the
    /// same step (an automatic promotion follows the count), and appends nothing before
    /// it, so this is exactly the configuration of the quorum it used.
    pub step_membership: Option<crate::raft::Membership>,
    /// A graceful shutdown was asked for: the member stops once its hand-over (if it
    /// leads) is over.
    pub stopping: bool,
}

impl SimNode {
    pub(super) fn new(machine: ReplicatedKv) -> Self {
        Self {
            incarnation: 0,
            member: None,
            machine,
            durable: MemoryStorage::new(),
            disk_queue: VecDeque::new(),
            disk_busy_until_ms: 0,
            disk_slow_until_ms: 0,
            requests: BTreeMap::new(),
            next_request: 0,
            last_commit_seen: 0,
            step_membership: None,
            stopping: false,
        }
    }

    pub(super) fn is_up(&self) -> bool {
        self.member.is_some()
    }

    /// The core, while up.
    pub(super) fn raft(&self) -> Option<&Raft> {
        self.member.as_ref().map(Member::raft)
    }

    /// A request id for the member, unique for this node's life.
    pub(super) fn next_request_id(&mut self) -> RequestId {
        self.next_request += 1;
        RequestId(self.next_request)
    }
}

/// A client request as it travels to a node.
#[derive(Clone, Debug)]
pub(super) enum Request {
    /// A state-machine command through the log, exactly once per (client, seq).
    Command(SessionCommand<KvCommand>),
    /// A linearizable read through read-index.
    Read { key: Vec<u8> },
}

/// A node's answer to a client.
#[derive(Clone, Debug)]
pub(super) enum Reply {
    Output(crate::machine::SessionOutput<crate::machine::KvOutput>),
    Read(Option<Vec<u8>>),
    /// Not the leader; try `leader` if known.
    NotLeader(Option<NodeId>),
    /// The proposal was overwritten or its fate is unknown here: retry (same seq).
    Retry,
}
