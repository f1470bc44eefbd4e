//! Tests of the catalog exchange core: publishing, rounds, limits, and which members are dialled.
use super::super::ENTRY_BYTES_MAX;
use super::*;

const NOW: u64 = 1_000_000;
const GROUP: GroupId = GroupId([9; 32]);

fn secret(b: u8) -> SecretKey {
    SecretKey::from_bytes(&[b; 32])
}

fn own(port: u16, groups: Vec<GroupId>) -> OwnEntry {
    OwnEntry {
        addrs: vec![SocketAddr::from(([127, 0, 0, 1], port))],
        groups,
        tickets: Vec::new(),
    }
}

/// What `x` sends, as a peer receives it.
fn sent(x: &mut Exchange) -> Vec<SignedPeerEntry> {
    x.outgoing().iter().map(|s| (**s).clone()).collect()
}

/// A ticket check that accepts everything.
fn any(_: &PeerEntry) -> Result<(), String> {
    Ok(())
}

fn node(b: u8, group: Option<GroupId>) -> Exchange {
    let groups = group.into_iter().collect();
    Exchange::new(
        secret(b),
        "net",
        own(4000 + b as u16, groups),
        group,
        Vec::new(),
        NOW,
    )
    .expect("exchange")
}

#[test]
fn our_fresh_entry_goes_first_and_a_peer_learns_it() {
    let (mut a, mut b) = (node(1, Some(GROUP)), node(2, Some(GROUP)));
    let out = sent(&mut a);
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].open().expect("opens"), *a.own_entry());
    assert_eq!(a.own_entry().version, NOW);
    assert_eq!(b.handle_catalog(out.clone(), NOW), 1);
    assert_eq!(b.handle_catalog(out, NOW), 0, "the same version is no news");
    assert_eq!(b.stats().learned, 1);
    assert_eq!(b.stats().exchanges, 2);
    // B passes A's entry on, after its own.
    let relayed = sent(&mut b);
    assert_eq!(relayed.len(), 2);
    assert_eq!(
        relayed[0].open().expect("opens").peer_key,
        *secret(2).public().as_bytes()
    );
}

#[test]
fn members_of_our_group_are_dialled_once_unless_bonded_and_forgotten_when_gone() {
    let mut c = node(3, Some(GROUP));
    let mut a = node(1, Some(GROUP));
    let mut b = node(2, Some(GROUP));
    let mut outsider = node(4, Some(GroupId([8; 32])));
    let incoming = [sent(&mut a), sent(&mut b), sent(&mut outsider)].concat();
    assert_eq!(c.handle_catalog(incoming, NOW), 3);
    let bonded_a = |k: &PublicKey| *k == secret(1).public();
    let commands = c.poll_bonds(bonded_a, any);
    assert_eq!(
        commands.dial.iter().map(|p| p.id).collect::<Vec<_>>(),
        vec![secret(2).public()],
        "A is bonded already and the outsider is in another group"
    );
    assert_eq!(
        commands.dial[0].ip_addrs().copied().collect::<Vec<_>>(),
        vec![SocketAddr::from(([127, 0, 0, 1], 4002))]
    );
    assert_eq!(
        c.poll_bonds(bonded_a, any),
        BondCommands::default(),
        "asked once"
    );
    assert_eq!(
        c.poll_bonds(|_| false, any).dial.len(),
        1,
        "A is no longer bonded"
    );
    // Our own entry keeps being re-published; the others expire.
    c.handle_timeout(NOW + ENTRY_TTL_SECS);
    assert!(c.catalog().is_empty());
    let commands = c.poll_bonds(|_| false, any);
    assert!(commands.dial.is_empty());
    assert_eq!(commands.forget.len(), 2);
    assert_eq!(c.stats().dials, 2);
}

#[test]
fn a_node_without_a_group_dials_nobody() {
    let mut c = node(3, None);
    c.handle_catalog(sent(&mut node(1, Some(GROUP))), NOW);
    assert_eq!(c.poll_bonds(|_| false, any), BondCommands::default());
}

#[test]
fn foreign_forged_and_echoed_entries_are_dropped_and_counted() {
    let mut b = node(2, Some(GROUP));
    let foreign = sent(
        &mut Exchange::new(secret(5), "other-net", own(1, vec![]), None, vec![], NOW)
            .expect("exchange"),
    );
    let mut forged = sent(&mut node(6, Some(GROUP)));
    forged[0].signature[0] ^= 1;
    let echo = sent(&mut b);
    let good = sent(&mut node(1, Some(GROUP)));
    let n = b.handle_catalog([foreign, forged, echo, good].concat(), NOW);
    assert_eq!(n, 1);
    let s = b.stats();
    assert_eq!(s.refused.get("OtherNetwork"), Some(&1));
    assert_eq!(s.refused.get("BadSignature"), Some(&1));
    assert_eq!(s.refused_total(), 2);
    assert_eq!(s.own_echoes, 1);
    assert_eq!(b.catalog().len(), 1);
    assert!(b.catalog().get(secret(6).public().as_bytes()).is_none());
    assert!(b.catalog().get(secret(2).public().as_bytes()).is_none());
}

#[test]
fn our_entry_is_republished_before_it_expires_and_on_change() {
    let mut a = node(1, Some(GROUP));
    assert_eq!(a.poll_round(NOW).map(|p| p.len()), Some(0), "first round");
    a.handle_timeout(NOW + REPUBLISH_SECS - 1);
    assert_eq!(a.own_entry().version, NOW);
    a.handle_timeout(NOW + REPUBLISH_SECS);
    assert_eq!(a.own_entry().version, NOW + REPUBLISH_SECS);
    assert_eq!(a.own_entry().issued_at, NOW + REPUBLISH_SECS);
    assert!(
        a.poll_round(NOW + REPUBLISH_SECS).is_some(),
        "a new entry is news"
    );
    // A peer holding the old version takes the new one.
    let mut b = node(2, Some(GROUP));
    let at = NOW + REPUBLISH_SECS;
    assert_eq!(b.handle_catalog(sent(&mut a), at), 1);
    // Unchanged: no new version. Changed: a new version.
    assert_eq!(a.handle_own(own(4001, vec![GROUP]), at), Ok(false));
    assert_eq!(a.handle_own(own(4999, vec![GROUP]), at), Ok(true));
    assert_eq!(a.own_entry().version, at + 1);
    assert_eq!(b.handle_catalog(sent(&mut a), at), 1);
    assert_eq!(
        b.catalog()
            .get(secret(1).public().as_bytes())
            .map(|e| e.addrs[0].port()),
        Some(4999)
    );
}

#[test]
fn unspecified_addresses_are_not_published() {
    let mut o = own(0, vec![]);
    o.addrs.push(SocketAddr::from(([0, 0, 0, 0], 7001)));
    o.addrs.push(SocketAddr::from(([127, 0, 0, 1], 7002)));
    let a = Exchange::new(secret(1), "net", o, None, vec![], NOW).expect("exchange");
    assert_eq!(
        a.own_entry().addrs,
        vec![SocketAddr::from(([127, 0, 0, 1], 7002))]
    );
}

#[test]
fn rounds_are_spaced_periodic_and_reach_every_peer() {
    let boot = EndpointAddr::new(secret(200).public());
    let mut a =
        Exchange::new(secret(1), "net", own(1, vec![]), None, vec![boot], NOW).expect("exchange");
    let mut peers: Vec<Exchange> = (10..30).map(|b| node(b, None)).collect();
    a.handle_catalog(peers.iter_mut().flat_map(sent).collect(), NOW);
    let mut seen = BTreeSet::new();
    let first = a.poll_round(NOW).expect("a round is due at start");
    assert_eq!(
        first.len(),
        ROUND_PEERS_MAX + 1,
        "catalog peers and the bootstrap peer"
    );
    seen.extend(first.iter().map(|p| p.id));
    assert!(a.poll_round(NOW).is_none(), "not due again");
    let mut t = NOW;
    for _ in 0..3 {
        t += ROUND_INTERVAL_SECS;
        a.handle_timeout(t);
        let round = a.poll_round(t).expect("periodic round");
        assert!(round.iter().any(|p| p.id == secret(200).public()));
        seen.extend(round.iter().map(|p| p.id));
    }
    assert_eq!(seen.len(), 21, "every catalog peer and the bootstrap peer");
    // News makes a round due, but not sooner than the gap.
    a.handle_catalog(sent(&mut node(40, None)), t);
    assert!(a.poll_round(t).is_none());
    assert!(a.poll_round(t + ROUND_GAP_SECS).is_some());
}

/// A group member's entry signed by `secret(b)` at `version`, with a ticket of
/// `ticket_bytes` bytes.
fn member(b: u8, version: u64, ticket_bytes: usize) -> SignedPeerEntry {
    PeerEntry {
        peer_key: *secret(b).public().as_bytes(),
        addrs: vec![SocketAddr::from(([127, 0, 0, 1], 4000 + b as u16))],
        network_id: "net".into(),
        groups: vec![GROUP.0],
        tickets: vec![Ticket {
            kind: "tdx".into(),
            bytes: vec![b; ticket_bytes],
            expires_at: NOW + 300,
        }],
        version,
        issued_at: NOW,
    }
    .sign(&secret(b))
    .expect("sign")
}

#[test]
fn one_exchange_adds_at_most_new_peers_per_exchange_max() {
    let mut c = node(1, Some(GROUP));
    let flood: Vec<SignedPeerEntry> = (10..110).map(|b| member(b, 1, 16)).collect();
    assert_eq!(
        c.handle_catalog(flood.clone(), NOW),
        NEW_PEERS_PER_EXCHANGE_MAX
    );
    assert_eq!(c.catalog().len(), NEW_PEERS_PER_EXCHANGE_MAX);
    assert_eq!(
        c.stats().refused.get("NewPeersLimit").copied(),
        Some((100 - NEW_PEERS_PER_EXCHANGE_MAX) as u64)
    );
    // The next exchange adds the next batch; known peers' updates are not limited.
    let updates: Vec<SignedPeerEntry> = (10..10 + NEW_PEERS_PER_EXCHANGE_MAX as u8)
        .map(|b| member(b, 2, 16))
        .collect();
    assert_eq!(
        c.handle_catalog([updates, flood].concat(), NOW),
        2 * NEW_PEERS_PER_EXCHANGE_MAX
    );
    assert_eq!(c.catalog().len(), 2 * NEW_PEERS_PER_EXCHANGE_MAX);
}

#[test]
fn outgoing_shares_the_catalog_and_resumes_where_the_byte_limit_cut_it() {
    let mut a = node(1, Some(GROUP));
    // Entries near the largest size: more than one exchange's bytes in all.
    let big = ENTRY_BYTES_MAX - 1024;
    let n = EXCHANGE_BYTES_MAX / big + 20;
    for b in 0..n {
        let entry = member(10 + b as u8, 1, big - 200);
        assert!(entry.entry.len() <= ENTRY_BYTES_MAX);
        assert_eq!(a.catalog.insert(entry, NOW), Ok(true));
    }
    let first = a.outgoing();
    let bytes: usize = first
        .iter()
        .map(|s| s.entry.len() + s.signature.len())
        .sum();
    assert!(bytes <= EXCHANGE_BYTES_MAX, "{bytes}");
    assert!(first.len() < n + 1, "cut short by bytes: {}", first.len());
    let held: Vec<Arc<SignedPeerEntry>> = a.catalog.signed_entries().collect();
    assert!(
        first[1..]
            .iter()
            .all(|s| held.iter().any(|h| Arc::ptr_eq(s, h))),
        "outgoing entries are the catalog's own, not copies"
    );
    let second = a.outgoing();
    assert_eq!(second[0], first[0], "our own entry leads every exchange");
    let keys = |out: &[Arc<SignedPeerEntry>]| -> Vec<[u8; 32]> {
        out[1..]
            .iter()
            .filter_map(|s| peer_key_of(&s.entry))
            .collect()
    };
    let (k1, k2) = (keys(&first), keys(&second));
    assert!(
        k2[0] > k1[k1.len() - 1],
        "the second exchange continues after the first"
    );
    let all: BTreeSet<[u8; 32]> = k1.iter().chain(&k2).copied().collect();
    assert_eq!(all.len(), n, "two exchanges carry the whole catalog");
}

#[test]
fn members_are_dialled_only_once_their_tickets_verify() {
    let mut c = node(1, Some(GROUP));
    c.handle_catalog(vec![member(2, 1, 16), member(3, 1, 16)], NOW);
    let refused_key = *secret(3).public().as_bytes();
    let mut checked = Vec::new();
    let mut check = |e: &PeerEntry| {
        checked.push(e.peer_key);
        if e.peer_key == refused_key {
            Err("no alternative accepts the ticket".to_string())
        } else {
            Ok(())
        }
    };
    let commands = c.poll_bonds(|_| false, &mut check);
    assert_eq!(
        commands.dial.iter().map(|p| p.id).collect::<Vec<_>>(),
        vec![secret(2).public()],
        "the member whose ticket fails is not dialled"
    );
    assert_eq!(c.stats().tickets_refused, 1);
    assert_eq!(c.poll_bonds(|_| false, &mut check), BondCommands::default());
    assert_eq!(checked.len(), 2, "an entry version is checked once");
    // A new version (renewed tickets) is checked again, and dialled if it passes.
    c.handle_catalog(vec![member(3, 2, 16)], NOW);
    let commands = c.poll_bonds(|_| false, |_: &PeerEntry| Ok(()));
    assert_eq!(
        commands.dial.iter().map(|p| p.id).collect::<Vec<_>>(),
        vec![secret(3).public()]
    );
}

#[test]
fn at_most_dial_pool_max_handed_peers_are_unbonded() {
    let mut c = node(1, Some(GROUP));
    let total = DIAL_POOL_MAX + 20;
    let entries: Vec<SignedPeerEntry> = (10..10 + total as u8).map(|b| member(b, 1, 16)).collect();
    while c.catalog().len() < total {
        c.handle_catalog(entries.clone(), NOW);
    }
    let mut handed = Vec::new();
    for _ in 0..total {
        let commands = c.poll_bonds(|_| false, any);
        assert!(commands.dial.len() <= TICKET_CHECKS_PER_POLL_MAX);
        handed.extend(commands.dial.into_iter().map(|p| p.id));
    }
    assert_eq!(handed.len(), DIAL_POOL_MAX, "the pool is full");
    assert!(c.stats().dial_pool_full > 0);
    // Bonds free the pool: the peers that bonded no longer count.
    let bonded: BTreeSet<PublicKey> = handed.iter().take(4).copied().collect();
    let commands = c.poll_bonds(|k| bonded.contains(k), any);
    assert_eq!(commands.dial.len(), 4);
    assert!(commands.dial.iter().all(|p| !handed.contains(&p.id)));
}
