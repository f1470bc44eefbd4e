//! Discovery over real iroh on loopback: a node that knows one member learns the others
//! from catalog exchange and bonds with them; a raw client speaking
//! `tessera/discovery/1` with garbage, over-large frames, forged or foreign entries neither
//! crashes a node nor gets those entries into its catalog, and a good exchange still works.
//! One host holding discovery exchanges or client connections open gets only its share of
//! them (the nodes here serve the client protocol too).
//!
//! Waits are on watches (bond and discovery statistics) with timeouts, never on sleeps.
mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use iroh::endpoint::{ConnectionError, VarInt};
use iroh::protocol::Router;
use iroh::{Endpoint, EndpointAddr, SecretKey};
use tessera::client::{ClientAllow, ClientProtocol, ClientRequest, ClientResponse, ClientService};
use tessera::cluster::{mock_validator, random_secret, NETWORK};
use tessera::discovery::{
    CatalogFrame, Discovery, DiscoveryConfig, DiscoveryStats, OwnEntry, PeerDialer, PeerEntry,
    SignedPeerEntry,
};
use tessera::discovery::{CLOSE_LIMIT, CLOSE_MALFORMED, ENTRY_FRAME_BYTES_MAX};
use tessera::groups::{keep_tickets_fresh, Bonds, Group, GroupKey, Groups, GroupsConfig};
use tessera::machine::KvStore;
use tessera::net::bound_addr;
use tessera::net::{
    encode_message, local_endpoint, read_message, write_message, Listen, ALPN_BOND, ALPN_CLIENT,
    ALPN_DISCOVERY, WIRE_VERSION,
};
use tessera::tickets::{clock_from, Clock, TdxTicketIssuer};
use tessera_attestation::provider::mock::{MockConfig, MockProvider};

const WAIT: Duration = Duration::from_secs(30);

struct Node {
    endpoint: Endpoint,
    addr: EndpointAddr,
    group: Group<KvStore>,
    bonds: Arc<Bonds>,
    discovery: Discovery,
    _router: Router,
}

fn clock() -> Clock {
    clock_from(MockConfig::default().valid_now())
}

async fn endpoint(alpns: Vec<Vec<u8>>) -> (Endpoint, EndpointAddr) {
    let ep = local_endpoint(
        random_secret().expect("secret"),
        &Listen {
            bind: SocketAddr::from(([127, 0, 0, 1], 0)),
            alpns,
            relay: None,
        },
    )
    .await
    .expect("endpoint");
    let addr = EndpointAddr::new(ep.id()).with_ip_addr(bound_addr(&ep).expect("bound"));
    (ep, addr)
}

/// A mock-attested member with discovery; `peers` are its only configured peers (and its
/// bootstrap peers for discovery).
async fn node(
    (endpoint, addr): (Endpoint, EndpointAddr),
    peers: Vec<EndpointAddr>,
    founding: bool,
    clock: &Clock,
) -> Node {
    let provider = MockProvider::new(MockConfig::default()).expect("mock provider");
    let collateral = provider.collateral().expect("collateral");
    let issuer = TdxTicketIssuer::new(Box::new(provider), collateral, NETWORK.into(), 300);
    let tickets = keep_tickets_fresh(Arc::new(issuer), *endpoint.id().as_bytes(), clock.clone())
        .expect("tickets");
    let groups = Groups::new(
        endpoint.clone(),
        GroupsConfig::new(NETWORK, clock.clone()).with_tickets(tickets.clone()),
    );
    let builder = groups
        .with_key(GroupKey::from_bytes([7; 32]))
        .with_state_machine(KvStore::new())
        .with_consensus(&common::fast_consensus().build().expect("consensus"))
        .require_ticket(mock_validator().expect("validator"))
        .with_peers(peers.clone());
    let builder = if founding {
        builder.found_at_once()
    } else {
        builder.join_only()
    };
    let group = builder.join().await.expect("join");
    let bonds = group.bonds().expect("bonds");
    let discovery = Discovery::start(
        endpoint.clone(),
        DiscoveryConfig {
            network_id: NETWORK.into(),
            own: OwnEntry {
                addrs: addr.ip_addrs().copied().collect(),
                groups: vec![group.id()],
                tickets: Vec::new(),
            },
            tickets: Some(tickets.clone()),
            group: Some(group.id()),
            bootstrap: peers,
            clock: clock.clone(),
            validator: Some(mock_validator().expect("validator")),
        },
        Some(bonds.clone() as Arc<dyn PeerDialer>),
    )
    .expect("discovery");
    let service = ClientService::new(
        group.clone(),
        bonds.clone(),
        ClientAllow::Any,
        endpoint.id(),
        NETWORK.into(),
        tickets.clone(),
        clock.clone(),
    );
    let router = Router::builder(endpoint.clone())
        .accept(ALPN_BOND, groups.bond_protocol())
        .accept(
            ALPN_CLIENT,
            ClientProtocol::new(Arc::new(service), groups.connecting_budget()),
        )
        .accept(
            ALPN_DISCOVERY,
            discovery.protocol(groups.connecting_budget()),
        )
        .spawn();
    Node {
        endpoint,
        addr,
        group,
        bonds,
        discovery,
        _router: router,
    }
}

async fn both_alpns() -> (Endpoint, EndpointAddr) {
    endpoint(vec![
        ALPN_BOND.to_vec(),
        ALPN_DISCOVERY.to_vec(),
        ALPN_CLIENT.to_vec(),
    ])
    .await
}

async fn wait_bonded(from: &Node, to: &Node, why: &str) {
    let mut stats = from.bonds.stats();
    let bonds = from.bonds.clone();
    let to_id = to.endpoint.id();
    if tokio::time::timeout(WAIT, stats.wait_for(|_| bonds.is_bonded(&to_id)))
        .await
        .is_err()
    {
        panic!(
            "{why}: not bonded; bonds {:?}, discovery {:?}",
            from.bonds.stats().borrow(),
            from.discovery.stats().borrow()
        );
    }
}

async fn wait_discovery(
    node: &Node,
    what: &str,
    mut until: impl FnMut(&DiscoveryStats) -> bool,
) -> DiscoveryStats {
    let mut stats = node.discovery.stats();
    let got = match tokio::time::timeout(WAIT, stats.wait_for(|s| until(s))).await {
        Ok(Ok(s)) => Some(s.clone()),
        _ => None,
    };
    got.unwrap_or_else(|| panic!("{what}: {:?}", node.discovery.stats().borrow()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_knows_one_member_learns_the_others_and_bonds_with_them() {
    let clock = clock();
    let (ea, eb, ec) = (both_alpns().await, both_alpns().await, both_alpns().await);
    let (addr_a, addr_b) = (ea.1.clone(), eb.1.clone());
    // A and B found the group knowing each other; C joins knowing only A.
    let a = node(ea, vec![addr_b.clone()], true, &clock).await;
    let b = node(eb, vec![addr_a.clone()], true, &clock).await;
    wait_bonded(&a, &b, "founding members").await;
    let c = node(ec, vec![addr_a.clone()], false, &clock).await;

    wait_bonded(&c, &a, "C with its configured peer A").await;
    wait_bonded(&c, &b, "C with B, learned through discovery").await;
    wait_bonded(&b, &c, "B with C").await;

    // C learned B's signed entry (not configured anywhere on C) and B learned C's.
    let learned = c
        .discovery
        .entry(&b.endpoint.id())
        .expect("C holds B's entry");
    assert_eq!(
        learned.addrs,
        b.addr.ip_addrs().copied().collect::<Vec<_>>()
    );
    assert_eq!(learned.groups, vec![c.group.id().0]);
    assert!(
        !learned.tickets.is_empty(),
        "entries carry the peer's tickets"
    );
    let c_id = c.endpoint.id();
    wait_discovery(&b, "B learns C's entry through A", |_| {
        b.discovery.entry(&c_id).is_some()
    })
    .await;
    let stats = c.discovery.stats().borrow().clone();
    assert!(stats.learned >= 2, "{stats:?}");
    assert_eq!(
        stats.refused_total() - stats.refused.get("Stale").copied().unwrap_or(0),
        0
    );
    // The one who dialled is the smaller key of the pair, and there is one bond each way.
    let dialled = if c.endpoint.id().as_bytes() < b.endpoint.id().as_bytes() {
        &c
    } else {
        &b
    };
    assert!(dialled.discovery.stats().borrow().dials >= 1);
    assert_eq!(b.bonds.stats().borrow().live, 2);
    assert_eq!(c.bonds.stats().borrow().live, 2);
}

fn entry_of(secret: &SecretKey, network: &str, now: u64) -> PeerEntry {
    PeerEntry {
        peer_key: *secret.public().as_bytes(),
        addrs: vec![SocketAddr::from(([127, 0, 0, 1], 9))],
        network_id: network.into(),
        groups: Vec::new(),
        tickets: Vec::new(),
        version: 1,
        issued_at: now,
    }
}

async fn expect_closed_with(conn: &iroh::endpoint::Connection, code: u32, what: &str) {
    match tokio::time::timeout(WAIT, conn.closed()).await {
        Ok(ConnectionError::ApplicationClosed(close)) => {
            assert_eq!(
                close.error_code,
                VarInt::from_u32(code),
                "{what}: {close:?}"
            )
        }
        other => panic!("{what}: expected an application close, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_oversized_forged_and_foreign_catalogs_are_refused_and_harmless() {
    let clock = clock();
    let n = node(both_alpns().await, Vec::new(), true, &clock).await;
    let (client, _) = endpoint(Vec::new()).await;

    // Garbage: a frame that does not decode.
    let conn = client
        .connect(n.addr.clone(), ALPN_DISCOVERY)
        .await
        .expect("connect");
    let (mut send, _recv) = conn.open_bi().await.expect("stream");
    let garbage = [0, 0, 0, 5, WIRE_VERSION, 0xff, 0xff, 0xff, 0xff];
    tokio::io::AsyncWriteExt::write_all(&mut send, &garbage)
        .await
        .expect("write");
    expect_closed_with(&conn, CLOSE_MALFORMED, "garbage").await;

    // A frame announced larger than an entry can be: refused before it is read.
    let conn = client
        .connect(n.addr.clone(), ALPN_DISCOVERY)
        .await
        .expect("connect");
    let (mut send, _recv) = conn.open_bi().await.expect("stream");
    let len = (ENTRY_FRAME_BYTES_MAX as u32 + 1).to_be_bytes();
    tokio::io::AsyncWriteExt::write_all(&mut send, &[&len[..], &[WIRE_VERSION]].concat())
        .await
        .expect("write");
    expect_closed_with(&conn, CLOSE_LIMIT, "over-large frame").await;

    // A well-formed catalog: one forged entry, one for another network, one good one.
    let now = clock();
    let (forger, stranger, good) = (
        random_secret().expect("secret"),
        random_secret().expect("secret"),
        random_secret().expect("secret"),
    );
    let mut forged = entry_of(&forger, NETWORK, now).sign(&forger).expect("sign");
    forged.signature[10] ^= 0x40;
    let foreign = entry_of(&stranger, "another-network", now)
        .sign(&stranger)
        .expect("sign");
    let fine = entry_of(&good, NETWORK, now).sign(&good).expect("sign");
    // Anyone can name the group (its id is public): an entry that does, with no ticket
    // that verifies, is held but never dialled.
    let impostor = random_secret().expect("secret");
    let mut claims_membership = entry_of(&impostor, NETWORK, now);
    claims_membership.groups = vec![n.group.id().0];
    let claims_membership = claims_membership.sign(&impostor).expect("sign");
    let mut buf = Vec::new();
    for e in [forged, foreign, fine, claims_membership] {
        encode_message(&mut buf, &CatalogFrame::Entry(e)).expect("encode");
    }
    encode_message(&mut buf, &CatalogFrame::End).expect("encode");
    let conn = client
        .connect(n.addr.clone(), ALPN_DISCOVERY)
        .await
        .expect("connect");
    let (mut send, mut recv) = conn.open_bi().await.expect("stream");
    tokio::io::AsyncWriteExt::write_all(&mut send, &buf)
        .await
        .expect("write");
    send.finish().expect("finish");
    // The node answers with its catalog: its own signed entry first.
    let mut answer: Vec<SignedPeerEntry> = Vec::new();
    while let CatalogFrame::Entry(e) = read_message::<_, CatalogFrame>(&mut recv, "catalog frame")
        .await
        .expect("the node answers")
    {
        answer.push(e);
    }
    conn.close(VarInt::from_u32(0), b"done");
    let theirs = answer[0].open().expect("the node's entry verifies");
    assert_eq!(theirs.peer_key, *n.endpoint.id().as_bytes());
    assert_eq!(theirs.groups, vec![n.group.id().0]);

    let stats = wait_discovery(
        &n,
        "the good entries taken, the impostor's ticket refused",
        |s| s.learned >= 2 && s.tickets_refused >= 1,
    )
    .await;
    assert_eq!(stats.dials, 0, "the impostor is not dialled: {stats:?}");
    assert_eq!(stats.refused.get("BadSignature"), Some(&1), "{stats:?}");
    assert_eq!(stats.refused.get("OtherNetwork"), Some(&1), "{stats:?}");
    assert_eq!(stats.failed.get("Frame"), Some(&2), "{stats:?}");
    assert!(n.discovery.entry(&good.public()).is_some());
    assert!(n.discovery.entry(&forger.public()).is_none());
    assert!(n.discovery.entry(&stranger.public()).is_none());
    assert!(n.discovery.entry(&impostor.public()).is_some());
    assert_eq!(n.discovery.entries().len(), 2);

    // Still serving: a second, real node exchanges with it and learns its entry.
    let m = node(both_alpns().await, vec![n.addr.clone()], false, &clock).await;
    wait_discovery(&m, "a good exchange after the garbage", |s| s.learned >= 2).await;
    assert!(m.discovery.entry(&n.endpoint.id()).is_some());
    assert!(m.discovery.entry(&good.public()).is_some(), "gossiped on");
}

/// Opens `total` connections on `alpn` to `target` from one host (127.0.0.1) and sends
/// nothing on them. Asserts that the `total - share` closed first are closed with `busy`
/// and that `share` stay open; returns the endpoint and the connections, kept alive.
async fn flood_from_one_host(
    target: &EndpointAddr,
    alpn: &[u8],
    total: usize,
    share: usize,
    busy: u32,
) -> (Endpoint, Vec<iroh::endpoint::Connection>) {
    let (flooder, _) = endpoint(Vec::new()).await;
    let mut closes = tokio::task::JoinSet::new();
    let mut conns = Vec::new();
    for _ in 0..total {
        let conn = tokio::time::timeout(WAIT, flooder.connect(target.clone(), alpn))
            .await
            .expect("connect in time")
            .expect("connect");
        let watched = conn.clone();
        closes.spawn(async move { watched.closed().await });
        conns.push(conn);
    }
    // Those past the share are closed first (the share is kept until its idle timeout).
    for i in 0..total - share {
        let closed = tokio::time::timeout(WAIT, closes.join_next())
            .await
            .expect("closed in time")
            .expect("a close")
            .expect("the watch ran");
        match closed {
            ConnectionError::ApplicationClosed(close) => {
                assert_eq!(close.error_code, VarInt::from_u32(busy), "{i}: {close:?}")
            }
            other => panic!("connection {i} past the share ended otherwise: {other:?}"),
        }
    }
    assert_eq!(closes.len(), share, "the share is held");
    (flooder, conns)
}

/// One host that opens discovery exchanges and never speaks holds at most its share of
/// the answering slots: its connections past the share are closed as busy at once, and an
/// exchange from another address (127.0.0.2) is answered meanwhile. (Before, eight such
/// connections locked every peer out until the exchange timeout, 10 s.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_exchanges_from_one_host_do_not_lock_out_another() {
    use tessera::discovery::{
        CLOSE_BUSY, INCOMING_EXCHANGES_MAX, INCOMING_EXCHANGES_PER_SOURCE_MAX,
    };
    let clock = clock();
    let n = node(both_alpns().await, Vec::new(), true, &clock).await;
    let (_flooder, stalled) = flood_from_one_host(
        &n.addr,
        ALPN_DISCOVERY,
        INCOMING_EXCHANGES_MAX,
        INCOMING_EXCHANGES_PER_SOURCE_MAX,
        CLOSE_BUSY,
    )
    .await;

    // Another host exchanges meanwhile and gets the node's catalog.
    let newcomer = endpoint_on_127_0_0_2().await;
    let conn = newcomer
        .connect(n.addr.clone(), ALPN_DISCOVERY)
        .await
        .expect("connect");
    let (mut send, mut recv) = conn.open_bi().await.expect("stream");
    let mut buf = Vec::new();
    encode_message(&mut buf, &CatalogFrame::End).expect("encode");
    tokio::io::AsyncWriteExt::write_all(&mut send, &buf)
        .await
        .expect("write");
    send.finish().expect("finish");
    let first = read_message::<_, CatalogFrame>(&mut recv, "catalog frame")
        .await
        .expect("another host is answered while one floods");
    let CatalogFrame::Entry(entry) = first else {
        panic!("the node's own entry comes first: {first:?}");
    };
    assert_eq!(
        entry.open().expect("verifies").peer_key,
        *n.endpoint.id().as_bytes()
    );
    conn.close(VarInt::from_u32(0), b"done");
    for conn in stalled {
        conn.close(VarInt::from_u32(0), b"done");
    }
}

/// An endpoint on another loopback address than the tests' 127.0.0.1: another source.
async fn endpoint_on_127_0_0_2() -> Endpoint {
    local_endpoint(
        random_secret().expect("secret"),
        &Listen {
            bind: SocketAddr::from(([127, 0, 0, 2], 0)),
            alpns: Vec::new(),
            relay: None,
        },
    )
    .await
    .expect("endpoint on 127.0.0.2")
}

/// One host that opens as many client connections as a node holds in all, and keeps
/// them, gets its share: the connections past it are closed as busy, and a client on
/// another address is served meanwhile. (Before, the one host took every slot.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_client_connections_from_one_host_do_not_lock_out_another() {
    use tessera::client::{CLOSE_BUSY, CONNECTIONS_MAX, CONNECTIONS_PER_SOURCE_MAX};
    let clock = clock();
    let n = node(both_alpns().await, Vec::new(), true, &clock).await;
    let (_flooder, held) = flood_from_one_host(
        &n.addr,
        ALPN_CLIENT,
        CONNECTIONS_MAX,
        CONNECTIONS_PER_SOURCE_MAX,
        CLOSE_BUSY,
    )
    .await;

    let newcomer = endpoint_on_127_0_0_2().await;
    let conn = newcomer
        .connect(n.addr.clone(), ALPN_CLIENT)
        .await
        .expect("connect");
    let (mut send, mut recv) = conn.open_bi().await.expect("stream");
    write_message(&mut send, &ClientRequest::Status)
        .await
        .expect("ask");
    let answer: ClientResponse = read_message(&mut recv, "client answer")
        .await
        .expect("another host is served while one holds its share");
    assert!(matches!(answer, ClientResponse::Status(_)), "{answer:?}");
    conn.close(VarInt::from_u32(0), b"done");
    for conn in held {
        conn.close(VarInt::from_u32(0), b"done");
    }
}
