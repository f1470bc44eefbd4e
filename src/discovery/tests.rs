use super::*;

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
    assert_eq!(c.members_of(GroupId([9; 32])).len(), 1);
    assert!(c.members_of(GroupId([8; 32])).is_empty());
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
    let mut incoming = b.signed_entries();
    incoming.push(SignedPeerEntry {
        entry: vec![1, 2, 3],
        signature: vec![],
    });
    let (new, refused) = a.merge(incoming, NOW);
    assert_eq!((new, refused.len()), (3, 1));
    assert_eq!(a.len(), 5);
    let (new, refused) = b.merge(a.signed_entries(), NOW);
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
