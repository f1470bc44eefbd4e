use super::*;
use crate::tickets::Ticket;

fn secret(b: u8) -> SecretKey {
    SecretKey::from_bytes(&[b; 32])
}

fn entry(secret: &SecretKey, version: u64, issued_at: u64) -> PeerEntry {
    PeerEntry {
        peer_key: *secret.public().as_bytes(),
        addrs: vec!["127.0.0.1:4000".parse().expect("addr")],
        network_id: "net".into(),
        groups: vec![[9; 32]],
        tickets: Vec::new(),
        version,
        issued_at,
    }
}

const NOW: u64 = 1_000_000;

#[test]
fn a_signed_entry_is_taken_and_newer_versions_replace_it() {
    let k = secret(1);
    let mut c = Catalog::new("net");
    assert_eq!(
        c.insert(entry(&k, 1, NOW).sign(&k).expect("sign"), NOW),
        Ok(true)
    );
    assert_eq!(
        c.insert(entry(&k, 1, NOW).sign(&k).expect("sign"), NOW),
        Ok(false),
        "same version is no news"
    );
    let mut newer = entry(&k, 2, NOW);
    newer.addrs = vec!["127.0.0.1:5000".parse().expect("addr")];
    assert_eq!(c.insert(newer.sign(&k).expect("sign"), NOW), Ok(true));
    assert_eq!(
        c.get(k.public().as_bytes()).map(|e| e.addrs[0].port()),
        Some(5000)
    );
    assert_eq!(
        c.insert(entry(&k, 1, NOW).sign(&k).expect("sign"), NOW),
        Err(EntryError::Stale { got: 1, known: 2 })
    );
    assert_eq!(c.members_of(GroupId([9; 32])).count(), 1);
    assert_eq!(c.members_of(GroupId([8; 32])).count(), 0);
}

#[test]
fn forged_tampered_and_foreign_entries_are_refused() {
    let (k, other) = (secret(1), secret(2));
    let mut c = Catalog::new("net");
    // Signed by another key than the one it names.
    let mut forged = entry(&other, 1, NOW).sign(&other).expect("sign");
    let mut claims_k = entry(&k, 1, NOW);
    claims_k.version = 7;
    forged.entry = postcard::to_allocvec(&claims_k).expect("encode");
    assert_eq!(c.insert(forged, NOW), Err(EntryError::BadSignature));
    assert!(
        entry(&k, 1, NOW).sign(&other).is_err(),
        "signing someone else's entry"
    );
    // A flipped bit anywhere in the signed bytes.
    let good = entry(&k, 1, NOW).sign(&k).expect("sign");
    for i in 0..good.entry.len() {
        let mut bad = good.clone();
        bad.entry[i] ^= 1;
        assert!(c.insert(bad, NOW).is_err(), "flip at byte {i} accepted");
    }
    let mut bad_sig = good.clone();
    bad_sig.signature[0] ^= 1;
    assert_eq!(c.insert(bad_sig, NOW), Err(EntryError::BadSignature));
    let mut short = good.clone();
    short.signature.truncate(10);
    assert_eq!(c.insert(short, NOW), Err(EntryError::BadSignature));
    // Garbage and oversized bytes.
    let garbage = SignedPeerEntry {
        entry: vec![0xff; 40],
        signature: vec![0; 64],
    };
    assert!(matches!(
        c.insert(garbage, NOW),
        Err(EntryError::Malformed(_))
    ));
    let huge = SignedPeerEntry {
        entry: vec![0; ENTRY_BYTES_MAX + 1],
        signature: vec![0; 64],
    };
    assert!(matches!(c.insert(huge, NOW), Err(EntryError::TooLarge(_))));
    // Another network.
    let mut foreign = entry(&k, 1, NOW);
    foreign.network_id = "elsewhere".into();
    assert!(matches!(
        c.insert(foreign.sign(&k).expect("sign"), NOW),
        Err(EntryError::OtherNetwork { .. })
    ));
    assert!(c.is_empty());
}

#[test]
fn entries_expire_and_future_ones_are_refused() {
    let k = secret(1);
    let mut c = Catalog::new("net");
    let old = entry(&k, 1, NOW - ENTRY_TTL_SECS);
    assert!(matches!(
        c.insert(old.sign(&k).expect("sign"), NOW),
        Err(EntryError::Expired { .. })
    ));
    let future = entry(&k, 1, NOW + CLOCK_SKEW_SECS + 1);
    assert!(matches!(
        c.insert(future.sign(&k).expect("sign"), NOW),
        Err(EntryError::FromTheFuture { .. })
    ));
    assert_eq!(
        c.insert(entry(&k, 1, NOW).sign(&k).expect("sign"), NOW),
        Ok(true)
    );
    assert_eq!(c.expire(NOW + ENTRY_TTL_SECS - 1), 0);
    assert_eq!(c.expire(NOW + ENTRY_TTL_SECS), 1);
    assert!(c.is_empty());
}

#[test]
fn merging_catalogs_spreads_entries_and_reports_refusals() {
    let mut a = Catalog::new("net");
    let mut b = Catalog::new("net");
    for i in 1..=5u8 {
        let k = secret(i);
        let target = if i % 2 == 0 { &mut a } else { &mut b };
        target
            .insert(entry(&k, 1, NOW).sign(&k).expect("sign"), NOW)
            .expect("insert");
    }
    let mut incoming: Vec<SignedPeerEntry> = b.signed_entries().map(|s| (*s).clone()).collect();
    incoming.push(SignedPeerEntry {
        entry: vec![1, 2, 3],
        signature: vec![],
    });
    let (new, refused) = a.merge(incoming, NOW, usize::MAX);
    assert_eq!((new, refused.len()), (3, 1));
    assert_eq!(a.len(), 5);
    let (new, refused) = b.merge(a.signed_entries().map(|s| (*s).clone()).collect(), NOW, 2);
    assert_eq!((new, refused.len()), (2, 0));
    assert_eq!(b.len(), 5);
}

#[test]
fn a_full_catalog_makes_room_only_by_expiry() {
    let mut c = Catalog::new("net");
    c.max = 2;
    for i in 1..=2u8 {
        let k = secret(i);
        c.insert(entry(&k, 1, NOW).sign(&k).expect("sign"), NOW)
            .expect("insert");
    }
    let k3 = secret(3);
    assert_eq!(
        c.insert(entry(&k3, 1, NOW).sign(&k3).expect("sign"), NOW),
        Err(EntryError::Full)
    );
    let later = NOW + ENTRY_TTL_SECS;
    assert_eq!(
        c.insert(entry(&k3, 1, later).sign(&k3).expect("sign"), later),
        Ok(true)
    );
    assert_eq!(c.len(), 1);
}

#[test]
fn a_catalog_holds_at_most_catalog_entries_max() {
    let mut c = Catalog::new("net");
    for i in 0..CATALOG_ENTRIES_MAX {
        let k = SecretKey::from_bytes(&{
            let mut b = [0u8; 32];
            b[..8].copy_from_slice(&(i as u64 + 1).to_le_bytes());
            b
        });
        assert_eq!(
            c.insert(entry(&k, 1, NOW).sign(&k).expect("sign"), NOW),
            Ok(true)
        );
    }
    let one_more = secret(0xee);
    assert_eq!(
        c.insert(entry(&one_more, 1, NOW).sign(&one_more).expect("sign"), NOW),
        Err(EntryError::Full)
    );
    assert_eq!(c.len(), CATALOG_ENTRIES_MAX);
}

/// The size of a real entry: a TDX ticket as large as the largest test vector's quote and
/// collateral, plus claims, with every address and group an entry may name.
fn real_sized_entry(k: &SecretKey) -> PeerEntry {
    let quote = include_bytes!("../../tests/vectors/tdx/quote_outdated.bin").len();
    let collateral = include_bytes!("../../tests/vectors/tdx/quote_outdated.collateral.json").len();
    let claims = 256;
    let mut e = entry(k, 1, NOW);
    e.addrs = vec!["[2001:db8::1]:7001".parse().expect("addr"); ADDRS_MAX];
    e.groups = vec![[7; 32]; GROUPS_MAX];
    e.tickets = vec![Ticket {
        kind: "tdx".into(),
        bytes: vec![0xab; quote + collateral + claims],
        expires_at: NOW + 300,
    }];
    e
}

#[test]
fn entries_are_capped_near_their_real_size() {
    let k = secret(1);
    let real = real_sized_entry(&k).sign(&k).expect("sign");
    assert!(
        real.entry.len() * 2 <= ENTRY_BYTES_MAX,
        "a real entry ({} bytes) fits twice",
        real.entry.len()
    );
    assert!(
        real.entry.len() * 4 > ENTRY_BYTES_MAX,
        "the cap ({ENTRY_BYTES_MAX}) stays near a real entry ({} bytes)",
        real.entry.len()
    );
    let mut c = Catalog::new("net");
    assert_eq!(c.insert(real, NOW), Ok(true));
    // Just over the cap: refused before it is decoded.
    let mut over = real_sized_entry(&k);
    over.version = 2;
    let grow = ENTRY_BYTES_MAX + 1 - over.clone().sign(&k).expect("sign").entry.len();
    over.tickets[0].bytes.extend(std::iter::repeat_n(0, grow));
    let over = over.sign(&k).expect("sign");
    assert_eq!(over.entry.len(), ENTRY_BYTES_MAX + 1);
    assert_eq!(
        c.insert(over, NOW),
        Err(EntryError::TooLarge(ENTRY_BYTES_MAX + 1))
    );
    // Too many groups.
    let mut groups = entry(&k, 3, NOW);
    groups.groups = vec![[1; 32]; GROUPS_MAX + 1];
    assert_eq!(
        c.insert(groups.sign(&k).expect("sign"), NOW),
        Err(EntryError::TooManyGroups(GROUPS_MAX + 1))
    );
}

#[test]
fn an_entry_is_held_once_as_its_signed_bytes() {
    let k = secret(1);
    let signed = real_sized_entry(&k).sign(&k).expect("sign");
    let raw = signed.entry.len() + signed.signature.len();
    let mut c = Catalog::new("net");
    c.insert(signed.clone(), NOW).expect("insert");
    let held = c.held_bytes();
    assert!(held >= raw, "{held} < {raw}");
    assert!(
        held < raw + raw / 10,
        "held {held} bytes for {raw} signed bytes: the tickets are kept once"
    );
    // What is held decodes to what was signed.
    assert_eq!(c.get(k.public().as_bytes()), signed.open().ok());
}
