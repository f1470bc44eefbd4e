//! Durability of a running group, in one process: what a node does when its disk fails,
//! and a whole cluster restarted from RocksDB data directories. Waits are on published
//! state (`Group::when`) with generous upper bounds; nothing sleeps to synchronise.
mod common;

use common::{fails_over_keeping_every_write, ix, put, start_cluster, strong_get, within};
use tessera::groups::testing::LocalNetwork;
use tessera::groups::{Consistency, Group, GroupError, StopReason};
use tessera::machine::{KvQuery, KvStore};
use tessera::storage::INJECTED_FAILURE;
use tessera::storage::{FaultSwitch, FaultyStorage, MemoryStorage, Storage};

const SIZE: u64 = 3;

/// Starts `SIZE` members, snapshotting every `snapshot_every` entries, member `id` on
/// `storage(id)`.
fn start_durable_cluster<S: Storage + Send + 'static>(
    snapshot_every: Option<u64>,
    storage: impl FnMut(u64) -> S,
) -> (LocalNetwork, Vec<Group<KvStore>>) {
    start_cluster(SIZE, |o| o.worker.snapshot_every = snapshot_every, storage)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_whose_disk_fails_stops_acknowledging_and_the_others_carry_on() {
    let switches: Vec<FaultSwitch> = (0..SIZE).map(|_| FaultSwitch::new()).collect();
    let (_net, groups) = start_durable_cluster(None, |id| {
        FaultyStorage::new(MemoryStorage::new(), switches[(id - 1) as usize].clone())
    });
    let old = within("election", groups[0].when().leader_elected())
        .await
        .expect("leader");
    let leader = &groups[ix(old)];

    // The twin before the fault: the same kind of write on the same node succeeds.
    let mut acknowledged = Vec::new();
    for i in 0..20 {
        let key = format!("k{i}");
        leader
            .execute(put(&key, &i.to_string()))
            .await
            .expect("write while the disk is healthy");
        acknowledged.push(key);
    }
    assert_eq!(switches[ix(old)].injected(), 0, "no fault injected yet");

    switches[ix(old)].fail();
    let err = leader
        .execute(put("during", "failure"))
        .await
        .expect_err("a write the leader could not make durable must not be acknowledged");
    match &err {
        GroupError::Stopped(StopReason::Storage(why)) => assert!(
            why.is_fatal() && why.to_string().contains(INJECTED_FAILURE),
            "the error names the storage failure: {why}"
        ),
        other => panic!("expected Stopped, got {other:?}"),
    }
    assert!(
        switches[ix(old)].injected() >= 1,
        "the failure came from the injected fault"
    );
    let reason = within("the node reports it stopped", leader.when().offline())
        .await
        .expect("status");
    assert!(
        matches!(&reason, StopReason::Storage(why) if why.to_string().contains(INJECTED_FAILURE)),
        "status says why: {reason}"
    );

    // The disk comes back, the node does not: it no longer knows what it made durable.
    switches[ix(old)].heal();
    assert!(
        matches!(
            leader.execute(put("after-heal", "x")).await,
            Err(GroupError::Stopped(_))
        ),
        "a stopped node keeps refusing writes"
    );
    assert!(
        matches!(
            leader
                .query(
                    KvQuery::Get {
                        key: b"k0".to_vec()
                    },
                    Consistency::Strong
                )
                .await,
            Err(GroupError::Stopped(_))
        ),
        "and strong reads"
    );

    // The other two elect a new leader and keep every write acknowledged before.
    let survivor = &groups[(ix(old) + 1) % SIZE as usize];
    fails_over_keeping_every_write(survivor, old, &acknowledged, ("after-failover", "y")).await;
    assert_eq!(
        strong_get(survivor, "after-failover").await.as_deref(),
        Some(&b"y"[..])
    );
    for g in &groups {
        g.shutdown().await;
    }
}

/// Needs the `rocksdb` feature (`cargo test --features rocksdb`).
#[cfg(feature = "rocksdb")]
mod rocks {
    use super::*;
    use std::path::{Path, PathBuf};
    use tessera::machine::KvCommand;
    use tessera::storage::RocksDbStorage;

    fn test_key() -> tessera::storage::StorageKey {
        tessera::storage::StorageKey::derive(&[0x17; 32], &[1; 32])
    }

    fn open_rocks(path: &Path) -> RocksDbStorage {
        RocksDbStorage::open(path, test_key())
            .unwrap_or_else(|e| panic!("open {}: {e}", path.display()))
    }

    /// Names of the files in a data directory's snapshot directory.
    fn snapshot_files(path: &Path) -> Vec<String> {
        let dir = path.join(tessera::storage::SNAPSHOT_DIR);
        let mut names: Vec<String> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("ls {}: {e}", dir.display()))
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    /// The value of `key` in `g`'s local state, without asking anyone (a weak read).
    async fn local_get(g: &Group<KvStore>, key: &str) -> Option<Vec<u8>> {
        let query = KvQuery::Get {
            key: key.as_bytes().to_vec(),
        };
        match g.query(query, Consistency::Weak).await.expect("weak read") {
            tessera::machine::KvQueryResult::Get { value } => value,
            other => panic!("unexpected {other:?}"),
        }
    }

    /// A follower cut off while the others move on can only catch up from a snapshot (the
    /// leader compacted its log). The snapshot reaches its disk as a file, replaces the
    /// older one, and the follower restarted alone, with no peer to ask, has the state
    /// from that file.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_follower_restarts_from_the_snapshot_file_it_installed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let paths: Vec<PathBuf> = (1..=SIZE)
            .map(|id| dir.path().join(format!("node-{id}")))
            .collect();
        let (net, groups) =
            start_durable_cluster(Some(10), |id| open_rocks(&paths[(id - 1) as usize]));
        let leader = within("election", groups[0].when().leader_elected())
            .await
            .expect("leader");
        let follower = (1..=SIZE)
            .map(tessera::raft::NodeId)
            .find(|n| *n != leader)
            .expect("a follower");
        for other in (1..=SIZE).map(tessera::raft::NodeId) {
            if other != follower {
                net.cut(other, follower);
            }
        }
        for i in 0..45 {
            groups[ix(leader)]
                .execute(put(&format!("k{i}"), &format!("v{i}")))
                .await
                .expect("write while the follower is cut off");
        }
        let target = groups[ix(leader)].status().commit_index;
        within(
            "the leader compacts past the follower",
            groups[ix(leader)].when().snapshot_at(40),
        )
        .await
        .expect("snapshot");
        net.heal();
        let f = &groups[ix(follower)];
        within("the follower catches up", f.when().applied(target))
            .await
            .expect("caught up");
        let installed = f.status().snapshot_index;
        assert!(
            installed >= 40,
            "caught up through a snapshot: {:?}",
            f.status()
        );
        f.shutdown().await;
        let files = snapshot_files(&paths[ix(follower)]);
        assert_eq!(
            files.len(),
            1,
            "one snapshot file, nothing left over: {files:?}"
        );
        assert!(files[0].ends_with(".snap"), "{files:?}");

        // Alone on a network of its own: whatever it has comes from its own disk.
        let members = tessera::raft::Membership::with_voters((1..=SIZE).map(tessera::raft::NodeId));
        let alone = LocalNetwork::new();
        let restarted = tessera::groups::start(
            common::options(follower.0, &members),
            KvStore::new(),
            open_rocks(&paths[ix(follower)]),
            move |inbox, snapshots| {
                alone.register(follower, inbox, snapshots);
                alone.transport(follower)
            },
        )
        .expect("restarts");
        within("restored from disk", restarted.when().applied(installed))
            .await
            .expect("applied the snapshot");
        for i in 0..40 {
            assert_eq!(
                local_get(&restarted, &format!("k{i}")).await.as_deref(),
                Some(format!("v{i}").as_bytes()),
                "k{i} from the snapshot file"
            );
        }
        restarted.shutdown().await;
        for g in &groups {
            g.shutdown().await;
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_whole_cluster_restarted_from_disk_keeps_its_state_and_term() {
        let dir = tempfile::tempdir().expect("tempdir");
        let paths: Vec<PathBuf> = (1..=SIZE)
            .map(|id| dir.path().join(format!("node-{id}")))
            .collect();
        // Snapshot often so the restart goes through snapshot + log tail, not only the log.
        const SNAPSHOT_EVERY: u64 = 25;
        const KEYS: usize = 80;

        let (net, groups) = start_durable_cluster(Some(SNAPSHOT_EVERY), |id| {
            open_rocks(&paths[(id - 1) as usize])
        });
        within("election", groups[0].when().leader_elected())
            .await
            .expect("leader");
        let mut expected = std::collections::BTreeMap::new();
        for i in 0..KEYS {
            let key = format!("k{}", i % 50);
            let value = format!("v{i}");
            groups[i % SIZE as usize]
                .execute(put(&key, &value))
                .await
                .expect("write");
            expected.insert(key, value);
        }
        groups[0]
            .execute(KvCommand::Delete {
                key: b"k7".to_vec(),
            })
            .await
            .expect("delete");
        expected.remove("k7");
        let before: Vec<_> = groups.iter().map(|g| g.status()).collect();
        let old_term = before.iter().map(|s| s.term).max().unwrap_or(0);
        let old_commit = before.iter().map(|s| s.commit_index).max().unwrap_or(0);
        assert!(
            old_commit > SNAPSHOT_EVERY,
            "enough entries for a snapshot ({old_commit})"
        );
        for g in &groups {
            g.shutdown().await;
        }
        drop(groups);
        drop(net);
        for path in &paths {
            let files = snapshot_files(path);
            assert!(
                files.len() == 1 && files[0].ends_with(".snap"),
                "{}: the latest snapshot file only, superseded ones deleted: {files:?}",
                path.display()
            );
        }

        let (_net, groups) = start_durable_cluster(Some(SNAPSHOT_EVERY), |id| {
            open_rocks(&paths[(id - 1) as usize])
        });
        let leader = within("election after restart", groups[0].when().leader_elected())
            .await
            .expect("leader");
        for g in &groups {
            for (key, value) in &expected {
                assert_eq!(
                    strong_get(g, key).await.as_deref(),
                    Some(value.as_bytes()),
                    "{key} after restart"
                );
            }
            assert_eq!(
                strong_get(g, "k7").await,
                None,
                "a deleted key stays deleted"
            );
        }
        let after = groups[ix(leader)].status();
        assert!(
            after.term >= old_term,
            "term went back: {} < {old_term}",
            after.term
        );
        assert!(
            after.commit_index >= old_commit,
            "commit went back: {} < {old_commit}",
            after.commit_index
        );
        // The restarted group still commits.
        groups[ix(leader)]
            .execute(put("after-restart", "z"))
            .await
            .expect("write after restart");
        for g in &groups {
            g.shutdown().await;
        }
    }
}
