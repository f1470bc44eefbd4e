//! The group runtime end to end, in one process: three members on an in-process network
//! (the iroh transport plugs into the same `Transport` trait), real workers, the real
//! key-value machine. Waits are on published state with generous upper bounds; nothing
//! sleeps to synchronise.
mod common;

use std::time::Duration;

use common::{
    fails_over_keeping_every_write, ix, put, start_cluster, start_memory_cluster, strong_get,
    within,
};
use tessera::groups::{Consistency, Group};
use tessera::machine::{KvCommand, KvOutput, KvQuery, KvQueryResult, KvStore};
use tessera::raft::NodeId;
use tessera::storage::MemoryStorage;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_through_leader_and_follower_are_read_back_everywhere() {
    let (_net, groups) = start_memory_cluster(3);
    let leader = within("election", groups[0].when().leader_elected())
        .await
        .expect("leader");
    let leader_ix = (leader.0 - 1) as usize;
    let follower_ix = (leader_ix + 1) % 3;

    let out = groups[leader_ix]
        .execute(put("a", "1"))
        .await
        .expect("write at the leader");
    assert_eq!(out, KvOutput::Put);
    let out = groups[follower_ix]
        .execute(put("b", "2"))
        .await
        .expect("write through a follower");
    assert_eq!(out, KvOutput::Put);
    for g in &groups {
        assert_eq!(strong_get(g, "a").await.as_deref(), Some(&b"1"[..]));
        assert_eq!(strong_get(g, "b").await.as_deref(), Some(&b"2"[..]));
    }
    // A compare-and-swap that must fail does fail, through the follower too.
    let out = groups[follower_ix]
        .execute(KvCommand::CompareAndSwap {
            key: b"a".to_vec(),
            expected: Some(b"nope".to_vec()),
            new: Some(b"x".to_vec()),
        })
        .await
        .expect("cas");
    assert_eq!(
        out,
        KvOutput::SwapFailed {
            current: Some(b"1".to_vec())
        }
    );
    for g in &groups {
        g.shutdown().await;
    }
}

/// Writes keys `k0..k{count}` (value `i`) round-robin through every member; returns them.
async fn write_round_robin(groups: &[Group<KvStore>], count: usize) -> Vec<String> {
    let mut acknowledged = Vec::new();
    for i in 0..count {
        let key = format!("k{i}");
        groups[i % groups.len()]
            .execute(put(&key, &i.to_string()))
            .await
            .expect("write");
        acknowledged.push(key);
    }
    acknowledged
}

/// A leader that crashes (cut off from everyone first, so its shutdown can hand nothing
/// over): the others elect a leader once their election timeout runs out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_the_leader_crashes_a_new_one_takes_over_and_no_acknowledged_write_is_lost() {
    let (net, groups) = start_memory_cluster(3);
    let old = within("election", groups[0].when().leader_elected())
        .await
        .expect("leader");
    let acknowledged = write_round_robin(&groups, 100).await;
    for other in (1..=3).map(NodeId).filter(|n| *n != old) {
        net.cut(old, other);
    }
    groups[(old.0 - 1) as usize].shutdown().await;
    let survivor = &groups[(old.0 % 3) as usize];
    fails_over_keeping_every_write(survivor, old, &acknowledged, ("after", "failover")).await;
    for g in &groups {
        g.shutdown().await;
    }
}

/// A leader that shuts down hands leadership over first: the group has its next leader
/// without waiting out an election timeout. Here only member 1 times out within the test's
/// bound (members 2 and 3 wait at least 50 s), so 1 leads first, and a leader after it
/// can come only from its hand-over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_that_shuts_down_hands_over_and_the_group_goes_on_at_once() {
    let (_net, groups) = start_cluster(
        3,
        |options| {
            if options.node != NodeId(1) {
                options.raft.election_ticks = 5_000;
            }
        },
        |_| MemoryStorage::new(),
    );
    let first = within("election", groups[0].when().leader_elected())
        .await
        .expect("leader");
    assert_eq!(first, NodeId(1), "only member 1 can time out in time");
    let acknowledged = write_round_robin(&groups, 20).await;
    groups[0].shutdown().await;
    fails_over_keeping_every_write(&groups[1], first, &acknowledged, ("after", "handover")).await;
    for g in &groups {
        g.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partitioned_leader_cannot_commit_and_the_majority_moves_on() {
    let (net, groups) = start_memory_cluster(3);
    let old = within("election", groups[0].when().leader_elected())
        .await
        .expect("leader");
    let old_ix = (old.0 - 1) as usize;
    groups[old_ix]
        .execute(put("before", "x"))
        .await
        .expect("write");
    for other in 1..=3 {
        if other != old.0 {
            net.cut(old, NodeId(other));
        }
    }
    let majority = &groups[(old_ix + 1) % 3];
    let new = within(
        "election in the majority",
        majority.when().leader_changed_from(Some(old)),
    )
    .await
    .expect("new leader");
    assert_ne!(new, old);
    majority
        .execute(put("during", "y"))
        .await
        .expect("majority commits");
    // The old leader alone cannot answer a strong read or commit a write.
    let cut_off = groups[old_ix].clone();
    let lonely = tokio::time::timeout(
        Duration::from_secs(1),
        cut_off.query(
            KvQuery::Get {
                key: b"during".to_vec(),
            },
            Consistency::Strong,
        ),
    )
    .await;
    assert!(
        lonely.is_err() || lonely.is_ok_and(|r| r.is_err()),
        "a minority served a strong read"
    );
    net.heal();
    // After healing, the old leader follows and sees the majority's write.
    within("old leader rejoins", async {
        loop {
            if let Ok(KvQueryResult::Get { value: Some(v) }) = groups[old_ix]
                .query(
                    KvQuery::Get {
                        key: b"during".to_vec(),
                    },
                    Consistency::Strong,
                )
                .await
            {
                return v;
            }
            tokio::task::yield_now().await;
        }
    })
    .await;
    for g in &groups {
        g.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn feed_returns_increasing_indexes_at_the_leader_and_through_a_follower() {
    let (_net, groups) = start_memory_cluster(3);
    let leader = within("election", groups[0].when().leader_elected())
        .await
        .expect("leader");
    let follower = &groups[(ix(leader) + 1) % 3];
    let mut last = 0;
    for i in 0..40 {
        // Half at the leader, half forwarded by a follower.
        let via = if i < 20 {
            &groups[ix(leader)]
        } else {
            follower
        };
        let index = via
            .feed(put(&format!("f{i}"), &i.to_string()))
            .await
            .expect("feed");
        assert!(index > last, "feed {i} got index {index} after {last}");
        last = index;
    }
    // Concurrent feeds through the follower each get their own index.
    let mut set = tokio::task::JoinSet::new();
    for i in 0..20 {
        let g = follower.clone();
        set.spawn(async move { g.feed(put(&format!("c{i}"), "c")).await });
    }
    let mut indexes = std::collections::BTreeSet::new();
    while let Some(joined) = set.join_next().await {
        let index = joined.expect("task").expect("concurrent feed");
        assert!(index > last, "index {index} reused or went back");
        assert!(indexes.insert(index), "index {index} given twice");
    }
    let highest = indexes.last().copied().expect("twenty indexes");

    // Once the follower knows the highest index committed, every fed command shows.
    within(
        "commit of the fed commands",
        follower.when().committed(highest),
    )
    .await
    .expect("committed");
    for i in 0..40 {
        assert_eq!(
            strong_get(follower, &format!("f{i}")).await,
            Some(i.to_string().into_bytes()),
            "f{i} after commit"
        );
    }
    for i in 0..20 {
        assert_eq!(
            strong_get(&groups[ix(leader)], &format!("c{i}"))
                .await
                .as_deref(),
            Some(&b"c"[..]),
            "c{i} after commit"
        );
    }
    for g in &groups {
        g.shutdown().await;
    }
}

/// The twin: `feed` returns without waiting for commit, so a leader cut off from everyone
/// still hands out an index, and that index never carries the command.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn feed_at_a_cut_off_leader_returns_an_uncommitted_index_that_is_later_overwritten() {
    // Without check-quorum the cut-off leader keeps leading (and appending) until it hears
    // of the newer term: no race between the cut and its stepping down.
    let (net, groups) = start_cluster(3, |o| o.raft.check_quorum = false, |_| MemoryStorage::new());
    let old = within("election", groups[0].when().leader_elected())
        .await
        .expect("leader");
    let lonely = &groups[ix(old)];
    lonely.execute(put("before", "x")).await.expect("write");
    for other in 1..=3 {
        if other != old.0 {
            net.cut(old, NodeId(other));
        }
    }
    let index = within("feed at the cut-off leader", lonely.feed(put("lost", "y")))
        .await
        .expect("the leader appends without its followers");
    assert!(
        lonely.status().commit_index < index,
        "nothing can commit index {index} without a majority: {:?}",
        lonely.status()
    );

    let majority = &groups[(ix(old) + 1) % 3];
    within(
        "election in the majority",
        majority.when().leader_changed_from(Some(old)),
    )
    .await
    .expect("new leader");
    majority
        .execute(put("after", "z"))
        .await
        .expect("majority commits");
    net.heal();
    within("the old leader catches up", lonely.when().applied(index))
        .await
        .expect("applied");
    assert_eq!(
        strong_get(lonely, "lost").await,
        None,
        "the new leader overwrote the uncommitted index"
    );
    assert_eq!(
        strong_get(lonely, "after").await.as_deref(),
        Some(&b"z"[..])
    );
    for g in &groups {
        g.shutdown().await;
    }
}

/// The operator's membership API: the leader removes a member (and keeps it out), adds
/// it back; a follower refuses, naming the leader.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_removes_and_adds_members_through_the_leader() {
    let (_net, groups) = start_memory_cluster(3);
    let leader = within("election", groups[0].when().leader_elected())
        .await
        .expect("leader");
    let leader_ix = ix(leader);
    let follower = NodeId(((leader_ix + 1) % 3) as u64 + 1);
    let other = &groups[(leader_ix + 2) % 3];

    let refused = other
        .remove_member(follower)
        .await
        .expect_err("a follower does not change membership");
    assert!(
        refused.to_string().contains(&format!("ask {leader}")),
        "{refused}"
    );

    groups[leader_ix]
        .remove_member(follower)
        .await
        .expect("the leader removes a member");
    assert!(!groups[leader_ix].members().contains(follower));
    // Every other member learns it, and the removed one is not added back.
    within(
        "the removal reaches the other member",
        other
            .when()
            .membership_is(|m| !m.contains(follower) && m.voters.len() == 2),
    )
    .await
    .expect("membership");
    groups[leader_ix]
        .execute(put("after-removal", "1"))
        .await
        .expect("two voters commit");
    assert!(!groups[leader_ix].members().contains(follower));

    groups[leader_ix]
        .add_member(follower)
        .await
        .expect("the leader adds it back");
    assert!(groups[leader_ix].members().contains(follower));
    for g in &groups {
        g.shutdown().await;
    }
}

/// Two groups founded separately under one id on one network (one key given to two
/// clusters, say), and a fresh member that bonds with all six while it holds no log, so
/// no bond handshake can refuse any of them: it joins one group and serves writes with it.
/// The members of each group drop those of the other, and the joiner those of the group it
/// did not join; nobody stops on the conflict between the two logs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fresh_member_beside_two_foundings_of_one_id_joins_one_and_nobody_stops() {
    use tessera::groups::testing::LocalNetwork;
    use tessera::raft::Membership;

    let net = LocalNetwork::new();
    let start = |id: u64, founders: Option<&[u64]>| {
        let net = net.clone();
        let voters = Membership::with_voters(founders.unwrap_or(&[]).iter().copied().map(NodeId));
        let mut options = common::options(id, &voters);
        options.bootstrap = founders.map(|_| voters);
        tessera::groups::start(
            options,
            KvStore::new(),
            MemoryStorage::new(),
            move |inbox, snapshots| {
                net.register(NodeId(id), inbox, snapshots);
                net.transport(NodeId(id))
            },
        )
        .expect("member starts")
    };
    let founded: Vec<Group<KvStore>> = (1..=3)
        .map(|id| start(id, Some(&[1, 2, 3])))
        .chain((4..=6).map(|id| start(id, Some(&[4, 5, 6]))))
        .collect();
    let (a, b) = (&founded[0], &founded[3]);
    within("group a writes", a.execute(put("a", "1")))
        .await
        .expect("group a writes");
    within("group b writes", b.execute(put("b", "1")))
        .await
        .expect("group b writes");
    let a_incarnation = a.status().incarnation.expect("a founded");
    let b_incarnation = b.status().incarnation.expect("b founded");
    assert_ne!(a_incarnation, b_incarnation);

    let joiner = start(7, None);
    let leader = within("joiner online", joiner.when().online())
        .await
        .expect("joiner online");
    within("joiner takes writes", joiner.execute(put("j", "1")))
        .await
        .expect("a write through the joiner");
    let ours = joiner.status().incarnation.expect("joined");
    let (own, other) = if ours == a_incarnation {
        (1..=3, 4..=6)
    } else {
        assert_eq!(ours, b_incarnation);
        (4..=6, 1..=3)
    };
    assert!(
        own.contains(&leader.0),
        "its leader {leader} is of its own group"
    );
    let own_group = &founded[ix(leader)];
    assert_eq!(strong_get(own_group, "j").await.as_deref(), Some(&b"1"[..]));
    for id in other.clone() {
        assert!(
            !net.is_bonded(NodeId(7), NodeId(id)),
            "still bonded with {id}"
        );
        for mine in own.clone() {
            assert!(
                !net.is_bonded(NodeId(id), NodeId(mine)),
                "{id} and {mine} bonded"
            );
        }
    }
    for id in own {
        assert!(net.is_bonded(NodeId(7), NodeId(id)), "not bonded with {id}");
    }
    for (g, id) in founded.iter().zip(1..).chain([(&joiner, 7)]) {
        assert_eq!(g.status().stopped, None, "member {id} stopped");
    }
    // The other group still works, and does not hold the joiner as a voter.
    let other_group = &founded[ix(NodeId(other.start().to_owned()))];
    within("the other group writes", other_group.execute(put("o", "1")))
        .await
        .expect("the other group writes");
    assert!(!other_group.members().voters.contains(&NodeId(7)));
    for g in founded.iter().chain([&joiner]) {
        g.shutdown().await;
    }
}
