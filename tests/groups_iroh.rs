//! Groups over real iroh on loopback: mock-attested members bond and replicate; peers with
//! bad tickets, another group key, another consensus config or a stolen group id never
//! bond; garbage from a raw iroh client does not hurt a member; a bonded peer that renews
//! with a bad ticket or sends a malformed message loses that bond and nothing else changes.
//!
//! Waits are on watches (`when()`, bond statistics) with timeouts, never on sleeps.
mod common;

use std::sync::Arc;
use std::time::Duration;

use iroh::endpoint::{ApplicationClose, ConnectionError, VarInt};
use tessera::cluster::{
    loopback_endpoint, mock_validator, random_secret, ClusterMember, ClusterOptions, LocalCluster,
    NETWORK,
};
use tessera::groups::testing::dial_raw;
use tessera::groups::{
    node_id_of, BondConfig, BondStats, Bonds, Consistency, Dial, Group, GroupKey, Groups,
    GroupsConfig, Inbox, InboxItem, Refusal,
};
use tessera::machine::{KvCommand, KvQuery, KvQueryResult, KvStore};
use tessera::net::{ALPN_BOND, WIRE_VERSION};
use tessera::raft::NodeId;
use tessera::storage::MemoryStorage;
use tessera::tickets::{Admission, TdxTicketIssuer, Ticket};
use tessera_attestation::provider::mock::{MockConfig, MockProvider};
use tokio::sync::watch;

const WAIT: Duration = Duration::from_secs(20);

fn options(nodes: usize) -> ClusterOptions {
    let mut o = ClusterOptions::new(nodes, GroupKey::from_bytes([7; 32]));
    o.consensus = common::fast_consensus().build().expect("consensus");
    o
}

async fn bonded_cluster(nodes: usize) -> LocalCluster {
    let cluster = LocalCluster::start(options(nodes), |_| Ok(MemoryStorage::new()))
        .await
        .expect("cluster");
    for m in &cluster.members {
        let mut rx = m.bonds.stats();
        let live = nodes as u64 - 1;
        if tokio::time::timeout(WAIT, rx.wait_for(|s| s.live == live))
            .await
            .is_err()
        {
            panic!(
                "member {} did not bond with all peers: {:?}",
                m.node,
                m.bonds.stats().borrow()
            );
        }
    }
    cluster
}

fn put(k: &str, v: &str) -> KvCommand {
    KvCommand::Put {
        key: k.as_bytes().to_vec(),
        value: v.as_bytes().to_vec(),
    }
}

async fn get(m: &ClusterMember, k: &str) -> Option<Vec<u8>> {
    let q = KvQuery::Get {
        key: k.as_bytes().to_vec(),
    };
    match m
        .group
        .query(q, Consistency::Strong)
        .await
        .expect("strong read")
    {
        KvQueryResult::Get { value } => value,
        other => panic!("unexpected query result {other:?}"),
    }
}

/// A fresh, well-attested member with memory storage joining `cluster`.
async fn memory_joiner(cluster: &LocalCluster) -> ClusterMember {
    cluster
        .candidate(
            MockConfig::default(),
            &cluster.options,
            MemoryStorage::new(),
        )
        .await
        .expect("joiner")
}

async fn leader_index(cluster: &LocalCluster, via: usize) -> usize {
    let leader = tokio::time::timeout(WAIT, cluster.members[via].group.when().leader_elected())
        .await
        .expect("a leader within the wait")
        .expect("leader");
    cluster.index_of(leader).expect("the leader is a member")
}

async fn forms_replicates_and_fails_over(nodes: usize) {
    let cluster = bonded_cluster(nodes).await;
    let members = &cluster.members;
    let leader = leader_index(&cluster, 0).await;
    let follower = (leader + 1) % nodes;
    members[leader]
        .group
        .execute(put("a", "1"))
        .await
        .expect("write at the leader");
    members[follower]
        .group
        .execute(put("b", "2"))
        .await
        .expect("write through a follower");
    let batch: Vec<KvCommand> = (0..50)
        .map(|i| put(&format!("m{i}"), &i.to_string()))
        .collect();
    let results = members[follower].group.execute_many(batch).await;
    assert_eq!(results.len(), 50);
    assert!(results.iter().all(|r| r.is_ok()), "{results:?}");
    for m in members {
        assert_eq!(
            get(m, "a").await.as_deref(),
            Some(&b"1"[..]),
            "strong read after write at {}",
            m.node
        );
        assert_eq!(
            get(m, "b").await.as_deref(),
            Some(&b"2"[..]),
            "strong read after write at {}",
            m.node
        );
    }

    // Failover: the leader stops; the others elect a new one and keep every write.
    let old = members[leader].node;
    members[leader].group.shutdown().await;
    members[leader].endpoint.close().await;
    let survivor = &members[follower];
    let new_leader =
        tokio::time::timeout(WAIT, survivor.group.when().leader_changed_from(Some(old)))
            .await
            .expect("a new leader within the wait")
            .expect("new leader");
    assert_ne!(new_leader, old);
    survivor
        .group
        .execute(put("c", "3"))
        .await
        .expect("write after failover");
    let mut missing = Vec::new();
    for i in 0..50 {
        for m in members.iter().filter(|m| m.node != old) {
            if get(m, &format!("m{i}")).await != Some(i.to_string().into_bytes()) {
                missing.push((m.node, i));
            }
        }
    }
    assert!(missing.is_empty(), "lost in failover: {missing:?}");
    for k in ["a", "b", "c", "m0", "m49"] {
        assert!(get(survivor, k).await.is_some(), "{k} lost in failover");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_members_bond_replicate_and_fail_over() {
    forms_replicates_and_fails_over(3).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_members_bond_replicate_and_fail_over() {
    forms_replicates_and_fails_over(5).await;
}

fn refused(members: &[ClusterMember], reason: Refusal) -> u64 {
    members
        .iter()
        .flat_map(|m| [m.bonds.stats(), m.groups.stats()])
        .map(|stats| stats.borrow().refused.get(&reason).copied().unwrap_or(0))
        .sum()
}

/// Waits until the members together counted `at_least` refusals for `reason`.
async fn wait_refused(members: &[ClusterMember], reason: Refusal, at_least: u64) {
    let deadline = tokio::time::Instant::now() + WAIT;
    // A group's own refusals, and its gateway's (before a connection reaches a group).
    let mut watches: Vec<watch::Receiver<BondStats>> = members
        .iter()
        .flat_map(|m| [m.bonds.stats(), m.groups.stats()])
        .collect();
    while refused(members, reason) < at_least {
        let any_change = async {
            let (tx, mut rx) = tokio::sync::mpsc::channel(1);
            let tasks: Vec<_> = watches
                .iter_mut()
                .map(|w| {
                    let mut w = w.clone();
                    let tx = tx.clone();
                    tokio::spawn(async move {
                        let _ = w.changed().await;
                        let _ = tx.send(()).await;
                    })
                })
                .collect();
            let _ = rx.recv().await;
            tasks.iter().for_each(|t| t.abort());
        };
        if tokio::time::timeout_at(deadline, any_change).await.is_err() {
            let now: Vec<_> = members
                .iter()
                .map(|m| {
                    (
                        m.bonds.stats().borrow().refused.clone(),
                        m.groups.stats().borrow().refused.clone(),
                    )
                })
                .collect();
            panic!("timed out waiting for {at_least} refusals of {reason}; refusals now {now:?}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peers_with_bad_tickets_or_other_groups_never_bond() {
    let cluster = bonded_cluster(3).await;
    let members = &cluster.members;
    let same = cluster.options.clone();
    let expiring = ClusterOptions {
        ticket_lifetime_secs: 0,
        ..same.clone()
    };
    let mut bad = Vec::new();
    for (mock, opts) in [
        (MockConfig::default().with_mr_td([0x42; 48]), &same), // another image
        (MockConfig::default().debug(), &same),                // a debug TD
        (MockConfig::default().corrupt_signature(), &same),    // a forged quote
        (MockConfig::default().revoked_pck(), &same),          // a revoked platform key
        (MockConfig::default(), &expiring),                    // an expired ticket
    ] {
        bad.push(
            cluster
                .candidate(mock, opts, MemoryStorage::new())
                .await
                .expect("candidate"),
        );
    }
    // Each dials all three members; each member refuses each.
    wait_refused(members, Refusal::BadTicket, 3 * bad.len() as u64).await;

    let other_key = ClusterOptions {
        key: GroupKey::from_bytes([8; 32]),
        ..same.clone()
    };
    let other_config = ClusterOptions {
        consensus: common::fast_consensus()
            .election_timeout(Duration::from_millis(220))
            .build()
            .expect("consensus"),
        ..same.clone()
    };
    for opts in [&other_key, &other_config] {
        bad.push(
            cluster
                .candidate(MockConfig::default(), opts, MemoryStorage::new())
                .await
                .expect("candidate"),
        );
    }
    wait_refused(members, Refusal::WrongGroup, 3 * 2).await;

    // A replayer presents a genuine member's ticket on its own connection, and a thief
    // copied the public group id but lacks the key: neither can bond.
    let provider = MockProvider::new(MockConfig::default()).expect("mock");
    let collateral = provider.collateral().expect("collateral");
    let issuer = TdxTicketIssuer::new(Box::new(provider), collateral, NETWORK.into(), 300);
    let stolen_ticket = issuer
        .issue(
            *members[0].endpoint.id().as_bytes(),
            None,
            cluster.clock()(),
        )
        .expect("ticket");
    let mut outsiders = Vec::new();
    for (ticket_of_other, key) in [
        (true, same.key.clone()),
        (false, GroupKey::from_bytes([9; 32])),
    ] {
        let (ep, _) = loopback_endpoint(random_secret().expect("key"))
            .await
            .expect("endpoint");
        let ticket = if ticket_of_other {
            stolen_ticket.clone()
        } else {
            issuer
                .issue(*ep.id().as_bytes(), None, cluster.clock()())
                .expect("ticket")
        };
        let (tx, rx) = std::sync::mpsc::sync_channel::<InboxItem<()>>(1024);
        let bonds = Bonds::start(
            ep,
            BondConfig {
                group_id: members[0].group.id(),
                group_key: key,
                network_id: NETWORK.into(),
                tickets: watch::channel(vec![ticket]).1,
                admission: Arc::new(Admission::new(vec![mock_validator().expect("validator")])),
                clock: cluster.clock(),
                snapshots: Default::default(),
            },
            Inbox::new(tx),
            members.iter().map(|m| m.addr.clone()).collect(),
            Dial::All,
        );
        outsiders.push((bonds, rx));
    }
    // The replayer is refused by all three (its own counter of refusals by peers).
    let mut replayer = outsiders[0].0.stats();
    let refused_thrice =
        |s: &BondStats| s.refused.get(&Refusal::RefusedByPeer).copied().unwrap_or(0) >= 3;
    if tokio::time::timeout(WAIT, replayer.wait_for(refused_thrice))
        .await
        .is_err()
    {
        panic!(
            "the replayer was not refused by every member: {:?}",
            outsiders[0].0.stats().borrow()
        );
    }
    wait_refused(members, Refusal::BadProof, 3).await;

    // Nobody bad ever bonded, voted or received entries; the group still works.
    for b in &bad {
        let s = b.bonds.stats().borrow().clone();
        assert_eq!(s.bonded, 0, "a bad peer bonded: {s:?}");
        assert_eq!(s.frames_in, 0, "a bad peer received frames: {s:?}");
        assert_eq!(
            b.group.status().commit_index,
            0,
            "a bad peer received log entries"
        );
        assert_eq!(
            b.group.status().leader,
            None,
            "a bad peer learned of a leader"
        );
    }
    for (bonds, _) in &outsiders {
        assert_eq!(bonds.stats().borrow().bonded, 0);
    }
    for m in members {
        let s = m.bonds.stats().borrow().clone();
        assert_eq!(s.live, 2, "members keep exactly their honest bonds: {s:?}");
        assert_eq!(s.bonded, 2, "no bad peer ever bonded: {s:?}");
        assert_eq!(m.group.status().membership.voters.len(), 3);
    }
    let leader = leader_index(&cluster, 0).await;
    members[leader]
        .group
        .execute(put("still", "works"))
        .await
        .expect("write");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_from_a_raw_iroh_client_is_refused_and_harmless() {
    let cluster = bonded_cluster(3).await;
    let members = &cluster.members;
    let (raw, _) = loopback_endpoint(random_secret().expect("key"))
        .await
        .expect("endpoint");
    let payloads: Vec<Vec<u8>> = vec![
        vec![0xff, 0xff, 0xff, 0xff],                // absurd length
        vec![0, 0, 0, 0],                            // zero length
        vec![0, 0, 0, 3, 9, 1, 2],                   // unknown version
        vec![0, 0, 0, 5, 1, 0xde, 0xad, 0xbe, 0xef], // not a hello
        b"GET / HTTP/1.1\r\n\r\n".to_vec(),
    ];
    for (i, payload) in payloads.iter().enumerate() {
        let conn = raw
            .connect(members[0].addr.clone(), ALPN_BOND)
            .await
            .expect("connect");
        let (mut send, mut recv) = conn.open_bi().await.expect("stream");
        send.write_all(payload).await.expect("send garbage");
        let _ = send.finish();
        // The member sends its hello and then closes the connection on us.
        let _ = tokio::time::timeout(WAIT, recv.read_to_end(1 << 20)).await;
        wait_refused(&members[..1], Refusal::Malformed, i as u64 + 1).await;
    }
    let leader = leader_index(&cluster, 0).await;
    members[leader]
        .group
        .execute(put("after", "garbage"))
        .await
        .expect("write");
    assert_eq!(members[0].bonds.stats().borrow().live, 2);
}

/// The close code of a connection the member ended, once it ends.
async fn close_code(conn: &iroh::endpoint::Connection, what: &str) -> VarInt {
    match tokio::time::timeout(WAIT, conn.closed()).await {
        Ok(ConnectionError::ApplicationClosed(ApplicationClose { error_code, .. })) => error_code,
        Ok(other) => panic!("{what}: ended otherwise: {other:?}"),
        Err(_) => panic!("{what}: the member kept the connection"),
    }
}

/// One host opening more bond connections than the whole handshake budget and never
/// speaking gets only its own share: the rest are refused as busy, the share is closed
/// when the first-frame deadline passes, and a peer from another address bonds meanwhile
/// (before the change, 64 silent connections locked every peer out for 10 s).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_connections_from_one_host_do_not_lock_out_another() {
    use tessera::groups::testing::{HANDSHAKES_MAX, HANDSHAKES_PER_SOURCE_MAX};
    let cluster = bonded_cluster(3).await;
    let target = &cluster.members[0];
    let (flooder, _) = loopback_endpoint(random_secret().expect("key"))
        .await
        .expect("endpoint");
    let mut silent = Vec::new();
    for _ in 0..HANDSHAKES_MAX + 4 {
        let conn = tokio::time::timeout(WAIT, flooder.connect(target.addr.clone(), ALPN_BOND))
            .await
            .expect("connect in time")
            .expect("connect");
        silent.push(conn);
    }
    wait_refused(&cluster.members[..1], Refusal::Busy, 1).await;

    // Another host (127.0.0.2: another source address on loopback) bonds meanwhile.
    let newcomer = tessera::net::local_endpoint(
        random_secret().expect("key"),
        &tessera::net::Listen {
            bind: "127.0.0.2:0".parse().expect("addr"),
            alpns: vec![ALPN_BOND.to_vec()],
            relay: None,
        },
    )
    .await
    .expect("endpoint on 127.0.0.2");
    let ticket = issuer(MockConfig::default())
        .issue(*newcomer.id().as_bytes(), None, cluster.clock()())
        .expect("ticket");
    let config = outsider_config(&cluster, target, ticket);
    let bond = dial_raw(&newcomer, config, target.addr.clone())
        .await
        .expect("a peer from another address bonds while one host floods");

    // The flooder's connections end: over its share as busy, its share by the deadline.
    let mut codes = std::collections::BTreeMap::<u32, usize>::new();
    for conn in &silent {
        let code = close_code(conn, "a silent connection").await;
        *codes
            .entry(u32::try_from(code.into_inner()).expect("small code"))
            .or_default() += 1;
    }
    // (The exact split depends on how fast the flood went: a permit freed by the deadline
    // may be taken by a later connection of the flood.)
    let busy = codes.get(&(Refusal::Busy as u32)).copied().unwrap_or(0);
    let timed_out = codes.get(&(Refusal::Timeout as u32)).copied().unwrap_or(0);
    assert_eq!(
        busy + timed_out,
        silent.len(),
        "busy or timed out, nothing else: {codes:?}"
    );
    assert!(busy >= 1, "the per-source share was enforced: {codes:?}");
    assert!(
        timed_out >= HANDSHAKES_PER_SOURCE_MAX,
        "the share held was closed at the first-frame deadline: {codes:?}"
    );
    bond.connection.close(VarInt::from_u32(0), b"done");
}

/// A stranger's first frame is read with a small limit: a hello that announces megabytes
/// is refused at its length, before any ticket is read or verified.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_first_frame_is_refused_before_anything_is_read() {
    let cluster = bonded_cluster(3).await;
    let target = &cluster.members[0];
    let (raw, _) = loopback_endpoint(random_secret().expect("key"))
        .await
        .expect("endpoint");
    let conn = raw
        .connect(target.addr.clone(), ALPN_BOND)
        .await
        .expect("connect");
    let (mut send, _recv) = conn.open_bi().await.expect("stream");
    // 4 MiB announced (the old hello could be 16 MiB): only the length is sent.
    send.write_all(&(4u32 << 20).to_be_bytes())
        .await
        .expect("send a length");
    let code = close_code(&conn, "a 4 MiB first frame").await;
    assert_eq!(code, VarInt::from_u32(Refusal::Malformed as u32));
    // Refused by the endpoint's gateway: the frame that names the group was never read.
    let mut gateway = target.groups.stats();
    let refused = tokio::time::timeout(
        WAIT,
        gateway.wait_for(|s| {
            s.recent_refusals
                .iter()
                .any(|r| r.reason == Refusal::Malformed && r.detail.contains("length"))
        }),
    )
    .await;
    assert!(
        refused.is_ok(),
        "not refused for its length: {:?}",
        target.groups.stats().borrow()
    );
}

/// Two groups founded separately with the same key and settings share a group id; their
/// logs descend from different first entries. Members of one refuse bonds with members of
/// the other, naming why, and neither group's data reaches the other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_of_a_separately_founded_group_with_the_same_id_never_bond() {
    let first = bonded_cluster(3).await;
    let second = bonded_cluster(3).await;
    assert_eq!(
        first.members[0].group.id(),
        second.members[0].group.id(),
        "same key and settings: the same group id"
    );
    let incarnation = |c: &LocalCluster| {
        c.members[0]
            .group
            .status()
            .incarnation
            .expect("a formed member knows its incarnation")
    };
    assert_ne!(incarnation(&first), incarnation(&second));
    let leader = leader_index(&first, 0).await;
    first.members[leader]
        .group
        .execute(put("only", "first"))
        .await
        .expect("write");
    // Each side learns of the other at run time (as discovery would tell it).
    let (a, b) = (&first.members[0], &second.members[0]);
    a.bonds.add_peer(b.addr.clone());
    b.bonds.add_peer(a.addr.clone());
    // The one that dials refuses the other's hello, or is refused by it: either way one
    // side names the incarnation.
    let either = |s: &BondStats| {
        s.refused
            .get(&Refusal::OtherIncarnation)
            .copied()
            .unwrap_or(0)
            >= 1
    };
    let (mut wa, mut wb) = (a.bonds.stats(), b.bonds.stats());
    let named = tokio::time::timeout(WAIT, async {
        tokio::select! {
            _ = wa.wait_for(either) => {},
            _ = wb.wait_for(either) => {},
        }
    })
    .await;
    assert!(
        named.is_ok(),
        "no refusal named the incarnation: {:?} / {:?}",
        a.bonds.stats().borrow(),
        b.bonds.stats().borrow()
    );
    for (m, other) in [(a, b), (b, a)] {
        assert!(
            !m.bonds.is_bonded(&other.endpoint.id()),
            "bonded across groups"
        );
        assert!(!m.group.status().membership.contains(other.node));
    }
    let second_leader = leader_index(&second, 0).await;
    assert_eq!(get(&second.members[second_leader], "only").await, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renewed_tickets_keep_a_bond_and_expired_ones_close_it() {
    use std::sync::atomic::{AtomicU64, Ordering};
    let t0 = MockConfig::default().valid_now();
    let now = Arc::new(AtomicU64::new(t0));
    let clock: tessera::tickets::Clock = {
        let now = now.clone();
        Arc::new(move || now.load(Ordering::SeqCst))
    };
    let provider = MockProvider::new(MockConfig::default()).expect("mock");
    let collateral = provider.collateral().expect("collateral");
    let issuer = TdxTicketIssuer::new(Box::new(provider), collateral, NETWORK.into(), 300);
    let key = GroupKey::from_bytes([7; 32]);
    let group_id = tessera::groups::GroupId([1; 32]);
    let mut sides = Vec::new();
    let mut routers = Vec::new();
    let mut endpoints = Vec::new();
    for _ in 0..2 {
        endpoints.push(
            loopback_endpoint(random_secret().expect("key"))
                .await
                .expect("endpoint"),
        );
    }
    for (i, (ep, _)) in endpoints.iter().enumerate() {
        let (tickets_tx, tickets_rx) = watch::channel(vec![issuer
            .issue(*ep.id().as_bytes(), None, t0)
            .expect("ticket")]);
        let (tx, rx) = std::sync::mpsc::sync_channel::<InboxItem<()>>(1024);
        let other = endpoints[1 - i].1.clone();
        let bonds = Bonds::start(
            ep.clone(),
            BondConfig {
                group_id,
                group_key: key.clone(),
                network_id: NETWORK.into(),
                tickets: tickets_rx,
                admission: Arc::new(Admission::new(vec![mock_validator().expect("validator")])),
                clock: clock.clone(),
                snapshots: Default::default(),
            },
            Inbox::new(tx.clone()),
            vec![other],
            Dial::SmallerKey,
        );
        // The side that does not dial accepts through its endpoint's gateway.
        let groups = Groups::new(ep.clone(), GroupsConfig::new(NETWORK, clock.clone()));
        assert!(groups.serve_bonds(&bonds, Inbox::new(tx)));
        routers.push(groups.spawn_router());
        sides.push((bonds, tickets_tx, rx));
    }
    for (bonds, _, _) in &sides {
        let mut s = bonds.stats();
        tokio::time::timeout(WAIT, s.wait_for(|s| s.live == 1))
            .await
            .expect("bonded")
            .expect("stats");
    }
    // Later, side 1 renews its ticket: side 0 accepts the renewal and the bond stays.
    now.store(t0 + 200, Ordering::SeqCst);
    let renewed = issuer
        .issue(*endpoints[1].0.id().as_bytes(), None, t0 + 200)
        .expect("ticket");
    sides[1].1.send(vec![renewed]).expect("publish");
    let mut s0 = sides[0].0.stats();
    tokio::time::timeout(WAIT, s0.wait_for(|s| s.renewals == 1))
        .await
        .expect("renewal")
        .expect("stats");
    assert_eq!(sides[0].0.stats().borrow().live, 1);
    // Past side 0's (never renewed) ticket: side 1 closes the bond.
    now.store(t0 + 400, Ordering::SeqCst);
    let mut s1 = sides[1].0.stats();
    let expired = |s: &BondStats| {
        s.refused.get(&Refusal::TicketExpired).copied().unwrap_or(0) >= 1 && s.live == 0
    };
    if tokio::time::timeout(WAIT, s1.wait_for(expired))
        .await
        .is_err()
    {
        panic!(
            "the bond outlived the peer's ticket: {:?}",
            sides[1].0.stats().borrow()
        );
    }
    // And the redialled handshake refuses the stale ticket.
    let stale = |s: &BondStats| s.refused.get(&Refusal::BadTicket).copied().unwrap_or(0) >= 1;
    let (mut a, mut b) = (sides[0].0.stats(), sides[1].0.stats());
    let refused_again = async {
        tokio::select! {
            r = a.wait_for(stale) => r.is_ok(),
            r = b.wait_for(stale) => r.is_ok(),
        }
    };
    assert!(
        tokio::time::timeout(WAIT, refused_again)
            .await
            .unwrap_or(false),
        "the stale ticket bonded again"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_attested_joiner_catches_up_through_a_snapshot_and_becomes_a_voter() {
    let mut o = options(3);
    o.consensus = common::fast_consensus()
        .snapshot_every_entries(Some(50))
        .build()
        .expect("consensus");
    let cluster = LocalCluster::start(o, |_| Ok(MemoryStorage::new()))
        .await
        .expect("cluster");
    let leader = leader_index(&cluster, 0).await;
    for i in 0..200 {
        cluster.members[leader]
            .group
            .execute(put(&format!("k{i}"), &i.to_string()))
            .await
            .expect("write");
    }
    // The log before the last snapshot is gone: the joiner can only catch up from one.
    let joiner = memory_joiner(&cluster).await;
    let me = joiner.node;
    let mut status = joiner.group.when();
    let voter = tokio::time::timeout(WAIT, status.membership_is(|m| m.voters.contains(&me))).await;
    assert!(
        voter.is_ok(),
        "the joiner did not become a voter: {:?}",
        joiner.group.status()
    );
    assert_eq!(get(&joiner, "k0").await.as_deref(), Some(&b"0"[..]));
    assert_eq!(get(&joiner, "k199").await.as_deref(), Some(&b"199"[..]));
    let status = cluster.members[leader].group.status();
    assert_eq!(status.membership.voters.len(), 4, "{status:?}");
}

/// A snapshot larger than any frame may be (16 MiB) reaches a late joiner in chunks on a
/// stream of its own, and is verified and installed there. Snapshots are taken by size.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_larger_than_a_frame_reaches_a_late_joiner_in_chunks() {
    const VALUES: usize = 320; // 320 x 64 KiB = 20 MiB of state
    let mut o = options(3);
    // Snapshots by size only: the log is compacted every 4 MiB of commands, so the joiner
    // can only catch up through a snapshot if that policy works.
    o.consensus = common::fast_consensus()
        .snapshot_every_entries(None)
        .snapshot_every_bytes(Some(4 << 20))
        .build()
        .expect("consensus");
    let cluster = LocalCluster::start(o, |_| Ok(MemoryStorage::new()))
        .await
        .expect("cluster");
    let leader = leader_index(&cluster, 0).await;
    let value = |i: usize| vec![(i % 251) as u8; 64 * 1024];
    for batch in (0..VALUES).collect::<Vec<_>>().chunks(8) {
        let commands = batch
            .iter()
            .map(|&i| KvCommand::Put {
                key: format!("big{i}").into_bytes(),
                value: value(i),
            })
            .collect();
        let results = cluster.members[leader].group.execute_many(commands).await;
        assert!(results.iter().all(|r| r.is_ok()), "{results:?}");
    }
    let joiner = memory_joiner(&cluster).await;
    let target = cluster.members[leader].group.status().commit_index;
    let caught_up = tokio::time::timeout(WAIT, joiner.group.when().applied(target)).await;
    let stats = joiner.bonds.stats().borrow().clone();
    assert!(caught_up.is_ok(), "the joiner did not catch up: {stats:?}");
    assert!(
        stats.snapshots_in >= 1,
        "no snapshot was received: {stats:?}"
    );
    for i in [0, VALUES / 2, VALUES - 1] {
        assert_eq!(
            get(&joiner, &format!("big{i}")).await,
            Some(value(i)),
            "value {i} at the joiner"
        );
    }
}

/// `bootstrap_expect`: members that only know each other's addresses form one group once
/// enough are bonded; a fresh member arriving later with the same setting joins that group
/// instead of bootstrapping another.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_form_a_group_once_the_expected_number_is_bonded() {
    let mut o = options(3);
    o.bootstrap_expect = Some(3);
    let cluster = LocalCluster::start(o, |_| Ok(MemoryStorage::new()))
        .await
        .expect("cluster");
    let leader = leader_index(&cluster, 0).await;
    let voters = cluster.members[leader]
        .group
        .status()
        .membership
        .voters
        .clone();
    let members: std::collections::BTreeSet<_> = cluster.members.iter().map(|m| m.node).collect();
    assert_eq!(
        voters, members,
        "the founders are exactly the bonded members"
    );
    cluster.members[leader]
        .group
        .execute(put("formed", "yes"))
        .await
        .expect("write");

    // A late fresh member expecting 2 would find enough fresh-looking peers only if the
    // formed members did not say they are formed: it must join, not bootstrap.
    let mut late = cluster.options.clone();
    late.bootstrap_expect = Some(2);
    let joiner = cluster
        .candidate(MockConfig::default(), &late, MemoryStorage::new())
        .await
        .expect("joiner");
    let me = joiner.node;
    let mut when = joiner.group.when();
    let member = tokio::time::timeout(
        WAIT,
        when.membership_is(|m| m.voters.contains(&me) || m.learners.contains(&me)),
    )
    .await;
    assert!(
        member.is_ok(),
        "the late member was not added: {:?}",
        joiner.group.status()
    );
    let status = joiner.group.status();
    assert!(
        status.membership.voters.is_superset(&members),
        "the late member holds the founders' configuration, not one of its own: {status:?}"
    );
    assert_eq!(get(&joiner, "formed").await.as_deref(), Some(&b"yes"[..]));
}

/// Waits until `bonds`' counters satisfy `f`; panics with `what` and the counters if they
/// do not within the wait.
async fn wait_stats(bonds: &Bonds, what: &str, f: impl FnMut(&BondStats) -> bool) {
    let mut rx = bonds.stats();
    if tokio::time::timeout(WAIT, rx.wait_for(f)).await.is_err() {
        panic!("{what}: not within {WAIT:?}; {:?}", bonds.stats().borrow());
    }
}

/// A mock-attested ticket issuer; `mock` chooses what the quotes claim.
fn issuer(mock: MockConfig) -> TdxTicketIssuer {
    let provider = MockProvider::new(mock).expect("mock");
    let collateral = provider.collateral().expect("collateral");
    TdxTicketIssuer::new(Box::new(provider), collateral, NETWORK.into(), 300)
}

/// A member whose own ticket is renewed by the test instead of by `keep_tickets_fresh`
/// joins `cluster` (becoming a voter), renews once with a good ticket, then with the one
/// `bad` makes for its key at the given time. Each member must close its bond with `BadTicket` on that
/// renewal, and the peer must get no log entry after.
/// A group member started by hand, beside a local cluster.
struct Peer {
    group: Group<KvStore>,
    bonds: Arc<Bonds>,
}

async fn a_bad_renewal_closes_a_live_bond(bad: impl FnOnce([u8; 32], u64) -> Ticket) {
    let cluster = bonded_cluster(3).await;
    let members = &cluster.members;
    let good = issuer(MockConfig::default());
    let (ep, _) = loopback_endpoint(random_secret().expect("key"))
        .await
        .expect("endpoint");
    let key = *ep.id().as_bytes();
    let me = node_id_of(&ep.id());
    let (tickets, tickets_rx) = watch::channel(vec![good
        .issue(key, None, cluster.clock()())
        .expect("ticket")]);
    let o = &cluster.options;
    let groups = Groups::new(
        ep.clone(),
        GroupsConfig::new(NETWORK, cluster.clock()).with_tickets(tickets_rx),
    );
    let _router = groups.spawn_router();
    let group = groups
        .with_key(o.key.clone())
        .with_state_machine(KvStore::new())
        .with_consensus(&o.consensus)
        .require_ticket(mock_validator().expect("validator"))
        .with_peers(members.iter().map(|m| m.addr.clone()).collect())
        .join_only()
        .join()
        .await
        .expect("joins");
    let peer = Peer {
        bonds: group.bonds().expect("bonds"),
        group,
    };
    wait_stats(&peer.bonds, "the peer bonds with every member", |s| {
        s.live == 3
    })
    .await;
    let leader = leader_index(&cluster, 0).await;
    members[leader]
        .group
        .execute(put("before", "1"))
        .await
        .expect("write");
    tokio::time::timeout(
        WAIT,
        peer.group.when().membership_is(|m| m.voters.contains(&me)),
    )
    .await
    .expect("the peer becomes a voter")
    .expect("status");

    // The twin: a good renewal is accepted by every member and the bonds stay.
    tickets
        .send(vec![good
            .issue(key, None, cluster.clock()())
            .expect("ticket")])
        .expect("publish");
    for m in members {
        wait_stats(&m.bonds, "a good renewal is accepted", |s| s.renewals >= 1).await;
    }
    assert_eq!(
        peer.bonds.stats().borrow().live,
        3,
        "good renewals keep bonds"
    );

    tickets
        .send(vec![bad(key, cluster.clock()())])
        .expect("publish");
    for m in members {
        let renewal_refused = |s: &BondStats| {
            s.recent_refusals.iter().any(|r| {
                r.peer == me
                    && r.reason == Refusal::BadTicket
                    && r.detail.starts_with("renewed tickets")
            })
        };
        wait_stats(
            &m.bonds,
            "the member closes the bond on the bad renewal",
            renewal_refused,
        )
        .await;
        let s = m.bonds.stats().borrow().clone();
        assert!(
            s.refused[&Refusal::BadTicket] >= 1,
            "counted by reason: {s:?}"
        );
        assert_eq!(
            s.renewals, 1,
            "the bad renewal is not counted as one: {s:?}"
        );
    }
    wait_stats(&peer.bonds, "the peer has no bond left", |s| s.live == 0).await;

    // The peer gets nothing after: its redials are refused, it receives no frame, and the
    // group commits without it. (Counted frames stop once its bonds are down; the peer's
    // worker may still be working through the last ones, so its commit index is compared
    // with the first index given out after, not with a snapshot.)
    let frames_before = peer.bonds.stats().borrow().frames_in;
    let bonded_before = peer.bonds.stats().borrow().bonded;
    let follower = &members[(leader + 1) % 3];
    let first_after = follower
        .group
        .feed(put("after0", "x"))
        .await
        .expect("feed through a follower");
    for i in 1..10 {
        follower
            .group
            .execute(put(&format!("after{i}"), "x"))
            .await
            .expect("the group commits without the peer");
    }
    tokio::time::timeout(
        WAIT,
        members[leader].group.when().committed(first_after + 9),
    )
    .await
    .expect("ten entries commit without the peer")
    .expect("status");
    // Its redials reach the members and are refused at the handshake.
    wait_refused(members, Refusal::BadTicket, 3 + 3).await;
    let s = peer.bonds.stats().borrow().clone();
    assert_eq!(s.bonded, bonded_before, "the peer bonded again: {s:?}");
    assert_eq!(
        s.frames_in, frames_before,
        "the peer received frames: {s:?}"
    );
    let status = peer.group.status();
    assert!(
        status.commit_index < first_after,
        "the peer learned of an entry appended after its bonds closed: {status:?}"
    );
    assert_eq!(get(follower, "after0").await.as_deref(), Some(&b"x"[..]));
    assert_eq!(get(follower, "after9").await.as_deref(), Some(&b"x"[..]));
    peer.group.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renewal_for_another_key_closes_a_live_bond() {
    let other = [0x5a; 32];
    a_bad_renewal_closes_a_live_bond(|_, now| {
        issuer(MockConfig::default())
            .issue(other, None, now)
            .expect("ticket")
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renewal_with_another_measurement_closes_a_live_bond() {
    a_bad_renewal_closes_a_live_bond(|key, now| {
        issuer(MockConfig::default().with_mr_td([0x42; 48]))
            .issue(key, None, now)
            .expect("ticket")
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_message_on_a_live_bond_closes_only_that_bond() {
    let cluster = bonded_cluster(3).await;
    let members = &cluster.members;
    let leader = leader_index(&cluster, 0).await;
    let target = &members[leader];
    let issuer = issuer(MockConfig::default());
    // A snapshot sent as an ordinary frame, naming bytes the member may hold (any handle
    // would do): snapshots only ever come through the verified transfer on a stream of
    // their own, so this is refused, not handed to the worker.
    let inline_snapshot = {
        let frame = tessera::groups::PeerFrame::Raft(tessera::raft::Message {
            from: tessera::raft::NodeId(1),
            to: target.node,
            term: 1_000,
            body: tessera::raft::MessageBody::InstallSnapshot {
                snapshot: tessera::raft::Snapshot {
                    meta: tessera::raft::SnapshotMeta::default(),
                    data: tessera::storage::SnapshotHandle {
                        size: 0,
                        sha256: [0; 32],
                    }
                    .encode(),
                },
            },
        });
        let mut buf = Vec::new();
        tessera::net::encode_message(
            &mut buf,
            &tessera::groups::testing::BondMessage::Frame(frame),
        )
        .expect("encodes");
        buf
    };
    let garbage: [(&str, Vec<u8>); 4] = [
        (
            "a frame that is no bond message",
            vec![0, 0, 0, 5, WIRE_VERSION, 0xde, 0xad, 0xbe, 0xef],
        ),
        ("an absurd length", vec![0xff, 0xff, 0xff, 0xff]),
        ("an unknown version", vec![0, 0, 0, 2, WIRE_VERSION + 1, 0]),
        ("a snapshot on the message stream", inline_snapshot),
    ];
    for (i, (what, bytes)) in garbage.iter().enumerate() {
        let (ep, _) = loopback_endpoint(random_secret().expect("key"))
            .await
            .expect("endpoint");
        let ticket = issuer
            .issue(*ep.id().as_bytes(), None, cluster.clock()())
            .expect("ticket");
        let config = outsider_config(&cluster, target, ticket);
        let bonded = target.bonds.stats().borrow().bonded;
        let mut raw = dial_raw(&ep, config, target.addr.clone())
            .await
            .expect("the real handshake succeeds");
        // The member counts the bond: what follows arrives on a live bond.
        wait_stats(&target.bonds, "the member bonds", |s| {
            s.bonded == bonded + 1 && s.live == 3
        })
        .await;
        raw.send.write_all(bytes).await.expect("send garbage");
        let closed = tokio::time::timeout(WAIT, raw.connection.closed())
            .await
            .unwrap_or_else(|_| panic!("{what}: the member kept the bond"));
        match closed {
            ConnectionError::ApplicationClosed(ApplicationClose { error_code, .. }) => {
                assert_eq!(
                    error_code,
                    VarInt::from_u32(Refusal::Malformed as u32),
                    "{what}: closed with the Malformed code"
                )
            }
            other => panic!("{what}: the bond ended otherwise: {other:?}"),
        }
        wait_refused(&members[leader..=leader], Refusal::Malformed, i as u64 + 1).await;
        let s = target.bonds.stats().borrow().clone();
        let last = s.recent_refusals.last().expect("a refusal record");
        assert_eq!(
            (last.peer, last.reason),
            (node_id_of(&ep.id()), Refusal::Malformed),
            "{what}: {s:?}"
        );
        wait_stats(&target.bonds, "only the bad bond closes", |s| s.live == 2).await;
    }
    // The member still leads and replicates to the others over the bonds it kept.
    for m in members {
        let s = m.bonds.stats().borrow().clone();
        assert_eq!(s.live, 2, "honest bonds stay: {s:?}");
        assert_eq!(
            s.refused.get(&Refusal::Malformed).copied().unwrap_or(0),
            if m.node == target.node { 4 } else { 0 },
            "{s:?}"
        );
    }
    target
        .group
        .execute(put("after", "garbage"))
        .await
        .expect("write");
    for m in members {
        assert_eq!(get(m, "after").await.as_deref(), Some(&b"garbage"[..]));
    }
}

/// Each renewal costs a quote verification: a bonded peer that renews faster than a small
/// burst and then one per refill loses its bond (sound tickets or not), and nothing else.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_renewing_faster_than_allowed_loses_its_bond() {
    use tessera::groups::testing::{BondMessage, RENEWALS_BURST};
    let cluster = bonded_cluster(3).await;
    let leader = leader_index(&cluster, 0).await;
    let target = &cluster.members[leader];
    let (ep, _) = loopback_endpoint(random_secret().expect("key"))
        .await
        .expect("endpoint");
    let ticket = issuer(MockConfig::default())
        .issue(*ep.id().as_bytes(), None, cluster.clock()())
        .expect("ticket");
    let config = outsider_config(&cluster, target, ticket.clone());
    let mut raw = dial_raw(&ep, config, target.addr.clone())
        .await
        .expect("the real handshake succeeds");
    wait_stats(&target.bonds, "the member bonds", |s| s.live == 3).await;
    let mut burst = Vec::new();
    for _ in 0..=RENEWALS_BURST {
        tessera::net::encode_message(&mut burst, &BondMessage::Tickets(vec![ticket.clone()]))
            .expect("encodes");
    }
    raw.send.write_all(&burst).await.expect("send renewals");
    let code = close_code(&raw.connection, "renewals beyond the burst").await;
    assert_eq!(code, VarInt::from_u32(Refusal::Malformed as u32));
    wait_stats(&target.bonds, "refused for its renewal rate", |s| {
        s.recent_refusals
            .iter()
            .any(|r| r.reason == Refusal::Malformed && r.detail.contains("renewals faster"))
    })
    .await;
    wait_stats(&target.bonds, "only that bond closes", |s| s.live == 2).await;
}

/// What a peer outside `cluster` needs to bond with `target` by the real handshake
/// ([`dial_raw`]): the group's id and key, the mock validator, and `ticket` as its own.
fn outsider_config(cluster: &LocalCluster, target: &ClusterMember, ticket: Ticket) -> BondConfig {
    BondConfig {
        group_id: target.group.id(),
        group_key: cluster.options.key.clone(),
        network_id: NETWORK.into(),
        tickets: watch::channel(vec![ticket]).1,
        admission: Arc::new(Admission::new(vec![mock_validator().expect("validator")])),
        clock: cluster.clock(),
        snapshots: Default::default(),
    }
}

/// What every member of `members` agrees the voters are, once they all hold the same view
/// and it is `expected`; panics with their views if that does not happen within the wait.
async fn wait_voters(members: &[&ClusterMember], expected: &std::collections::BTreeSet<NodeId>) {
    for m in members {
        let mut when = m.group.when();
        let reached =
            tokio::time::timeout(WAIT, when.membership_is(|s| s.voters == *expected)).await;
        assert!(
            reached.is_ok(),
            "{} never saw voters {expected:?}: {:?}",
            m.node,
            m.group.status()
        );
    }
}

/// Stops `member` as a process would, after leaving the group when `leave` is set (what
/// `tessera node` does without a key file), or at once (a crash).
async fn stop(member: &ClusterMember, leave: bool) {
    if leave {
        member.group.leave(WAIT).await.expect("leave the group");
    }
    let group = member.group.clone();
    tokio::spawn(async move { group.shutdown().await })
        .await
        .expect("shutdown");
    member.endpoint.close().await;
}

/// Members without key files come back as new identities (as a TD does at every boot).
/// Two of three are restarted one second apart, each leaving the group on the way out:
/// the group never waits for a voter that cannot come back, writes resume at once, and it
/// ends with three live voters holding every write.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_of_three_members_restarted_as_new_identities_keep_the_group_writable() {
    let cluster = bonded_cluster(3).await;
    let leader = leader_index(&cluster, 0).await;
    cluster.members[leader]
        .group
        .execute(put("before", "1"))
        .await
        .expect("write");
    let mut replacements: Vec<ClusterMember> = Vec::new();
    for (round, i) in [0usize, 1].into_iter().enumerate() {
        if round > 0 {
            // The scenario: the second restart follows the first by a second.
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        stop(&cluster.members[i], true).await;
        // A restarted member dials the members alive now (the first replacement too: it
        // may lead by then, and a leader adds only peers it is bonded with).
        let live = cluster.members[i + 1..]
            .iter()
            .chain(replacements.iter())
            .map(|m| m.addr.clone())
            .collect();
        let joiner = cluster
            .candidate_dialling(
                live,
                MockConfig::default(),
                &cluster.options,
                MemoryStorage::new(),
            )
            .await
            .expect("joiner");
        replacements.push(joiner);
    }
    let last = replacements.last().expect("replacement");
    last.group
        .execute(put("after", "2"))
        .await
        .expect("a write after both restarts");
    let expected: std::collections::BTreeSet<NodeId> = [
        cluster.members[2].node,
        replacements[0].node,
        replacements[1].node,
    ]
    .into_iter()
    .collect();
    let live: Vec<&ClusterMember> = std::iter::once(&cluster.members[2])
        .chain(replacements.iter())
        .collect();
    wait_voters(&live, &expected).await;
    for m in &live {
        assert_eq!(
            get(m, "before").await.as_deref(),
            Some(&b"1"[..]),
            "{}",
            m.node
        );
        assert_eq!(
            get(m, "after").await.as_deref(),
            Some(&b"2"[..]),
            "{}",
            m.node
        );
    }
}

/// A member that crashes (no leave) and comes back as a new identity: its replacement is
/// promoted only once the dead voter has been removed, and the group ends with three
/// voters, all alive.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crashed_member_is_replaced_by_its_new_identity() {
    let cluster = bonded_cluster(3).await;
    let leader = leader_index(&cluster, 0).await;
    let victim = (leader + 1) % 3;
    let survivor = (leader + 2) % 3;
    stop(&cluster.members[victim], false).await;
    let replacement = memory_joiner(&cluster).await;
    let expected: std::collections::BTreeSet<NodeId> = [
        cluster.members[leader].node,
        cluster.members[survivor].node,
        replacement.node,
    ]
    .into_iter()
    .collect();
    wait_voters(
        &[
            &cluster.members[leader],
            &cluster.members[survivor],
            &replacement,
        ],
        &expected,
    )
    .await;
    replacement
        .group
        .execute(put("replaced", "yes"))
        .await
        .expect("write through the replacement");
}
