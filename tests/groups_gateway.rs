//! The `Groups` gateway over real iroh on loopback: many groups on one endpoint, each
//! bond routed to its group by id, a second join returning the running member, a bond for
//! a group not joined here refused before any ticket is read, and shutdown through the
//! router stopping every group.
mod common;

use std::time::Duration;

use iroh::protocol::Router;
use iroh::EndpointAddr;
use tessera::cluster::{
    loopback_endpoint, mock_clock, mock_issuer, mock_validator, random_secret, NETWORK,
};
use tessera::groups::{
    BondEvent, BondStats, Consistency, Group, GroupError, GroupKey, Groups, GroupsConfig,
    JoinError, Refusal, StopReason,
};
use tessera::machine::{
    ApplyContext, KvCommand, KvQuery, KvQueryResult, KvStore, SignatureBuilder, SnapshotError,
    StateMachine,
};
use tessera::tickets::Clock;

const WAIT: Duration = Duration::from_secs(30);

struct Node {
    groups: Groups,
    router: Router,
    addr: EndpointAddr,
}

async fn node(clock: &Clock) -> Node {
    let (endpoint, addr) = loopback_endpoint(random_secret().expect("key"))
        .await
        .expect("endpoint");
    let issuer = mock_issuer(Default::default(), 300).expect("issuer");
    let config = GroupsConfig::new(NETWORK, clock.clone()).with_issuer(issuer);
    let groups = Groups::new(endpoint, config);
    let router = groups.spawn_router();
    Node {
        groups,
        router,
        addr,
    }
}

async fn join(node: &Node, key: u8, peers: Vec<EndpointAddr>) -> Result<Group<KvStore>, JoinError> {
    node.groups
        .with_key(GroupKey::from_bytes([key; 32]))
        .with_state_machine(KvStore::new())
        .with_consensus(&common::fast_consensus().build().expect("consensus"))
        .require_ticket(mock_validator().expect("validator"))
        .with_peers(peers)
        .join()
        .await
}

fn put(key: &str, value: &str) -> KvCommand {
    KvCommand::Put {
        key: key.as_bytes().to_vec(),
        value: value.as_bytes().to_vec(),
    }
}

async fn get(group: &Group<KvStore>, key: &str) -> Option<Vec<u8>> {
    let query = KvQuery::Get {
        key: key.as_bytes().to_vec(),
    };
    match group.query(query, Consistency::Strong).await.expect("read") {
        KvQueryResult::Get { value } => value,
        other => panic!("unexpected answer {other:?}"),
    }
}

async fn online(group: &Group<KvStore>) {
    tokio::time::timeout(WAIT, group.when().online())
        .await
        .unwrap_or_else(|_| panic!("not online: {:?}", group.status()))
        .expect("online");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_groups_share_each_endpoint_and_keep_their_states_apart() {
    let clock = mock_clock();
    let (a, b) = (node(&clock).await, node(&clock).await);
    // Default formation: each pair founds its group once both are bonded and agree.
    let a1 = join(&a, 1, vec![b.addr.clone()]).await.expect("a joins 1");
    let a2 = join(&a, 2, vec![b.addr.clone()]).await.expect("a joins 2");
    let b1 = join(&b, 1, vec![a.addr.clone()]).await.expect("b joins 1");
    let b2 = join(&b, 2, vec![a.addr.clone()]).await.expect("b joins 2");
    assert_ne!(a1.id(), a2.id());
    assert_eq!((a1.id(), a2.id()), (b1.id(), b2.id()));
    let mut listed = a.groups.list();
    listed.sort();
    let mut expected = vec![a1.id(), a2.id()];
    expected.sort();
    assert_eq!(listed, expected);
    for group in [&a1, &a2, &b1, &b2] {
        online(group).await;
    }
    a1.execute(put("k", "one")).await.expect("write to 1");
    b2.execute(put("k", "two")).await.expect("write to 2");
    assert_eq!(get(&b1, "k").await.as_deref(), Some(&b"one"[..]));
    assert_eq!(get(&a2, "k").await.as_deref(), Some(&b"two"[..]));
    // Each group's members are the two nodes, with one bond per group between them.
    for group in [&a1, &a2] {
        assert_eq!(group.members().voters.len(), 2, "{:?}", group.members());
        assert_eq!(group.bonds().expect("bonds").stats().borrow().live, 1);
    }

    // Joining again returns the running member: same group, same state.
    let again = join(&a, 1, vec![b.addr.clone()])
        .await
        .expect("joins again");
    assert_eq!(again.id(), a1.id());
    assert_eq!(a.groups.list().len(), 2);
    assert_eq!(get(&again, "k").await.as_deref(), Some(&b"one"[..]));

    // A group shut down alone leaves the table, and its handle says so; joining it again
    // starts another member in its place.
    a2.shutdown().await;
    assert_eq!(a.groups.list(), vec![a1.id()]);
    assert!(matches!(
        a2.execute(put("k", "late")).await,
        Err(GroupError::Stopped(StopReason::ShutDown))
    ));
    let restarted = join(&a, 2, vec![b.addr.clone()])
        .await
        .expect("joins 2 again");
    assert_eq!(restarted.status().stopped, None);
    assert_eq!(a.groups.list().len(), 2);

    // Shutting the router down stops every group of the endpoint.
    a.router.shutdown().await.expect("router shutdown");
    for group in [&a1, &restarted] {
        let reason = tokio::time::timeout(WAIT, group.when().offline())
            .await
            .expect("stops")
            .expect("reason");
        assert_eq!(reason, StopReason::ShutDown);
    }
    assert!(a.groups.list().is_empty());
    assert!(matches!(
        join(&a, 3, Vec::new()).await,
        Err(JoinError::ShutDown)
    ));
    b.router.shutdown().await.expect("router shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bond_for_a_group_not_joined_here_is_refused_by_the_gateway() {
    let clock = mock_clock();
    let (a, c) = (node(&clock).await, node(&clock).await);
    let a1 = join(&a, 1, Vec::new()).await.expect("a founds 1 alone");
    online(&a1).await;
    // c knows a's address but holds another group key: another group id.
    let c9 = join(&c, 9, vec![a.addr.clone()]).await.expect("c joins 9");
    let mut stats = a.groups.stats();
    let wrong_group =
        |s: &BondStats| s.refused.get(&Refusal::WrongGroup).copied().unwrap_or(0) >= 1;
    if tokio::time::timeout(WAIT, stats.wait_for(wrong_group))
        .await
        .is_err()
    {
        panic!("no refusal by the gateway: {:?}", a.groups.stats().borrow());
    }
    let refusal = a.groups.stats().borrow().recent_refusals.last().cloned();
    let refusal = refusal.expect("a recent refusal");
    assert_eq!(refusal.peer, tessera::groups::node_id_of(&c.addr.id));
    // The group itself never saw the stranger, and nobody bonded.
    let a_bonds = a1.bonds().expect("bonds");
    assert_eq!(a_bonds.stats().borrow().bonded, 0);
    assert_eq!(c9.bonds().expect("bonds").stats().borrow().bonded, 0);
    assert!(!a1
        .members()
        .contains(tessera::groups::node_id_of(&c.addr.id)));
    a.router.shutdown().await.expect("shutdown");
    c.router.shutdown().await.expect("shutdown");
}

/// A machine whose output is where its command was applied, as [`ApplyContext`] says.
#[derive(Default)]
struct WhereAmI;

impl StateMachine for WhereAmI {
    type Command = ();
    type Output = ([u8; 32], String, u64);
    type Query = ();
    type QueryResult = ();

    fn signature(&self) -> [u8; 32] {
        SignatureBuilder::new("tessera.test.where-am-i.v1").finish()
    }

    fn apply(&mut self, (): (), ctx: &ApplyContext<'_>) -> Self::Output {
        (ctx.group.0, ctx.network_id.to_string(), ctx.index)
    }

    fn query(&self, (): &()) {}

    fn snapshot(&self) -> Result<Vec<u8>, SnapshotError> {
        Ok(Vec::new())
    }

    fn restore(&mut self, _: &[u8]) -> Result<(), SnapshotError> {
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_machine_learns_its_group_and_network_from_the_apply_context() {
    let clock = mock_clock();
    let a = node(&clock).await;
    // No peers: a group of one, founded at once.
    let group = a
        .groups
        .with_key(GroupKey::from_bytes([9; 32]))
        .with_state_machine(WhereAmI)
        .require_ticket(mock_validator().expect("validator"))
        .join()
        .await
        .expect("join");
    let (group_id, network_id, index) = group.execute(()).await.expect("execute");
    assert_eq!(group_id, group.id().0);
    assert_eq!(network_id, NETWORK);
    assert!(
        index > 1,
        "entry 1 is the founding configuration, got {index}"
    );
    group.shutdown().await;
    a.router.shutdown().await.expect("router shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateway_issues_and_renews_its_tickets_until_it_shuts_down() {
    let clock = mock_clock();
    let (endpoint, _) = loopback_endpoint(random_secret().expect("key"))
        .await
        .expect("endpoint");
    // Two-second tickets: renewed every second.
    let issuer = mock_issuer(Default::default(), 2).expect("issuer");
    let groups = Groups::new(
        endpoint.clone(),
        GroupsConfig::new(NETWORK, clock.clone()).with_issuer(issuer),
    );
    let mut tickets = groups.tickets();
    let first = tickets.borrow_and_update().clone();
    assert_eq!(first.len(), 1, "the first ticket is issued at once");
    let context = tessera::tickets::PeerContext {
        peer_key: *endpoint.id().as_bytes(),
        network_id: NETWORK.into(),
        group_scope: None,
        now: clock(),
    };
    let validated = mock_validator()
        .expect("validator")
        .validate(&first[0], &context);
    assert!(
        validated.is_ok(),
        "the ticket binds this endpoint: {validated:?}"
    );
    tokio::time::timeout(WAIT, tickets.changed())
        .await
        .expect("renewed within the bound")
        .expect("renewal runs");
    assert_ne!(*tickets.borrow(), first, "a new ticket");
    // Shutdown ends the renewal task and waits for it.
    tokio::time::timeout(WAIT, groups.shutdown())
        .await
        .expect("shutdown ends the renewal");
    endpoint.close().await;
}

/// Waits for the first event `wanted` accepts, skipping others (a second bond of a pair
/// that dialled at once, say).
async fn event_where(
    events: &mut tokio::sync::broadcast::Receiver<BondEvent>,
    what: &str,
    wanted: impl Fn(&BondEvent) -> bool,
) -> BondEvent {
    tokio::time::timeout(WAIT, async {
        loop {
            let event = events.recv().await.expect("events flow");
            if wanted(&event) {
                return event;
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("no event: {what}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bond_events_name_peers_by_key_up_refused_and_down() {
    let clock = mock_clock();
    let (a, b) = (node(&clock).await, node(&clock).await);
    let a3 = join(&a, 3, vec![b.addr.clone()]).await.expect("a joins");
    let bonds = a3.bonds().expect("bonds over iroh");
    let mut events = bonds.events();
    let _b3 = join(&b, 3, vec![a.addr.clone()]).await.expect("b joins");
    let b_key = b.addr.id;
    let up = event_where(&mut events, "b up", |e| matches!(e, BondEvent::Up { .. })).await;
    assert_eq!(up, BondEvent::Up { peer: b_key });
    assert_eq!(bonds.bonded_keys(), vec![b_key]);

    // A node of the same group that presents no ticket is refused, by key.
    let (endpoint, c_addr) = loopback_endpoint(random_secret().expect("key"))
        .await
        .expect("endpoint");
    let c_key = endpoint.id();
    let groups = Groups::new(endpoint, GroupsConfig::new(NETWORK, clock.clone()));
    let unattested = Node {
        router: groups.spawn_router(),
        groups,
        addr: c_addr,
    };
    let _c3 = join(&unattested, 3, vec![a.addr.clone()])
        .await
        .expect("c joins");
    let refused = event_where(
        &mut events,
        "c refused",
        |e| matches!(e, BondEvent::Refused { peer, .. } if *peer == c_key),
    )
    .await;
    let BondEvent::Refused { reason, .. } = refused else {
        unreachable!("matched above")
    };
    assert_eq!(reason, Refusal::BadTicket);
    assert_eq!(
        bonds.bonded_keys(),
        vec![b_key],
        "the refused peer never bonds"
    );

    b.router.shutdown().await.expect("b stops");
    let down = event_where(&mut events, "b down", |e| {
        matches!(e, BondEvent::Down { .. })
    })
    .await;
    assert_eq!(down, BondEvent::Down { peer: b_key });
    unattested.router.shutdown().await.expect("c stops");
    a.router.shutdown().await.expect("a stops");
}
