//! Helpers shared by the group tests (`groups_local`, `storage_durable`, and the iroh
//! tests that take [`fast_consensus`]):
//! members on a [`LocalNetwork`] with fast ticks, bounded waits, key-value commands and
//! strong reads. Waits are on published state; nothing here sleeps to synchronise.
// Each test crate compiles this module and uses a part of it.
#![allow(dead_code)]

use std::time::Duration;

use tessera::groups::testing::LocalNetwork;
use tessera::groups::{self, Consistency, Group, MemberOptions, WorkerConfig};
use tessera::machine::{KvCommand, KvQuery, KvQueryResult, KvStore};
use tessera::raft::{Membership, NodeId, RaftConfig};
use tessera::storage::{MemoryStorage, Storage};

/// Upper bound on every wait for the cluster to do something.
pub const BOUND: Duration = Duration::from_secs(20);

/// Options of member `id` of a group founded by `members`: 10 ms ticks, elections after
/// 10 ticks, a snapshot every 50 entries.
pub fn options(id: u64, members: &Membership) -> MemberOptions {
    MemberOptions {
        node: NodeId(id),
        group_id: tessera::groups::GroupId([7; 32]),
        network_id: "test-net".into(),
        raft: RaftConfig {
            election_ticks: 10,
            heartbeat_ticks: 2,
            ..RaftConfig::default()
        },
        worker: WorkerConfig {
            tick: Duration::from_millis(10),
            forward_timeout: Duration::from_millis(500),
            snapshot_every: Some(50),
            ..WorkerConfig::default()
        },
        seed: id,
        request_timeout: Duration::from_secs(10),
        bootstrap: Some(members.clone()),
    }
}

/// Starts members `1..=size` of one group on a fresh in-process network, member `id` with
/// [`options`] changed by `configure` and on `storage(id)`. Member `id` is at index
/// [`ix`]`(NodeId(id))` of the returned handles.
pub fn start_cluster<S: Storage + Send + 'static>(
    size: u64,
    configure: impl Fn(&mut MemberOptions),
    mut storage: impl FnMut(u64) -> S,
) -> (LocalNetwork, Vec<Group<KvStore>>) {
    let net = LocalNetwork::new();
    let members = Membership::with_voters((1..=size).map(NodeId));
    let groups = (1..=size)
        .map(|id| {
            let net = net.clone();
            let mut options = options(id, &members);
            configure(&mut options);
            groups::start(
                options,
                KvStore::new(),
                storage(id),
                move |inbox, snapshots| {
                    net.register(NodeId(id), inbox, snapshots);
                    net.transport(NodeId(id))
                },
            )
            .expect("member starts")
        })
        .collect();
    (net, groups)
}

/// [`start_cluster`] with default options and memory storage.
pub fn start_memory_cluster(size: u64) -> (LocalNetwork, Vec<Group<KvStore>>) {
    start_cluster(size, |_| {}, |_| MemoryStorage::new())
}

/// Index of member `node` among the handles [`start_cluster`] returned.
pub fn ix(node: NodeId) -> usize {
    (node.0 - 1) as usize
}

/// Runs `f`, panicking with `what` if it takes longer than [`BOUND`].
pub async fn within<T>(what: &str, f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(BOUND, f)
        .await
        .unwrap_or_else(|_| panic!("{what} did not happen within {BOUND:?}"))
}

pub fn put(key: &str, value: &str) -> KvCommand {
    KvCommand::Put {
        key: key.as_bytes().to_vec(),
        value: value.as_bytes().to_vec(),
    }
}

/// The value of `key`, read linearizably through `g`.
pub async fn strong_get(g: &Group<KvStore>, key: &str) -> Option<Vec<u8>> {
    match g
        .query(
            KvQuery::Get {
                key: key.as_bytes().to_vec(),
            },
            Consistency::Strong,
        )
        .await
        .expect("strong read")
    {
        KvQueryResult::Get { value } => value,
        other => panic!("unexpected {other:?}"),
    }
}

/// After the leader `old` is gone: `survivor` sees another leader, accepts the write
/// `after`, and reads back every acknowledged key `acknowledged[i]` with value `i`.
pub async fn fails_over_keeping_every_write(
    survivor: &Group<KvStore>,
    old: NodeId,
    acknowledged: &[String],
    after: (&str, &str),
) {
    let new = within("failover", survivor.when().leader_changed_from(Some(old)))
        .await
        .expect("new leader");
    assert_ne!(new, old);
    survivor
        .execute(put(after.0, after.1))
        .await
        .expect("the majority accepts writes after failover");
    for (i, key) in acknowledged.iter().enumerate() {
        assert_eq!(
            strong_get(survivor, key).await,
            Some(i.to_string().into_bytes()),
            "{key} was acknowledged and must survive"
        );
    }
}

/// 20 ms ticks, heartbeats every 40 ms, elections after 200–400 ms of silence: groups
/// over loopback form and fail over quickly.
pub fn fast_consensus() -> tessera::groups::ConsensusConfigBuilder {
    tessera::groups::ConsensusConfig::builder()
        .tick(Duration::from_millis(20))
        .heartbeat_interval(Duration::from_millis(40))
        .election_timeout(Duration::from_millis(200))
}
