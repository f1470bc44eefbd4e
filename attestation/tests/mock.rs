//! The mock provider: its quotes pass the same DCAP verification under the mock root and
//! every bad case is rejected with its named reason. Fixed times from the mock config.
#![cfg(feature = "mock")]
mod common;

use common::*;
use tessera_attestation::binding::{BindingContext, BindingError, Claims};
use tessera_attestation::policy::PolicyViolation;
use tessera_attestation::provider::mock::{default_measurement, MockConfig, MockProvider};
use tessera_attestation::quote::parse_quote;
use tessera_attestation::tcb::PlatformFlag;
use tessera_attestation::verify::{DcapCheck, DcapError};
use tessera_attestation::{
    verify, verify_fresh, Binding, Collateral, CollateralWatermark, PlatformFlags, Policy,
    QuoteProvider, TcbStatus, VerificationCache, VerifiedQuote, VerifyError,
};

const NOW: u64 = 1_767_225_600 + 86_400; // MockConfig::default().valid_now()

fn make(config: MockConfig, report_data: &[u8; 64]) -> (Vec<u8>, Collateral) {
    let provider = MockProvider::new(config).unwrap();
    let quote = provider.quote(report_data).unwrap();
    (quote.into_bytes(), provider.collateral().unwrap())
}

fn check(config: MockConfig, policy: &Policy) -> Result<VerifiedQuote, VerifyError> {
    let (q, c) = make(config, &[0x42; 64]);
    verify(&q, &c, policy, NOW, None)
}

fn mock_policy() -> Policy {
    policy_file("mock.toml")
}

fn dcap_check(err: &VerifyError) -> Option<DcapCheck> {
    match err {
        VerifyError::Dcap(DcapError::Check { check, .. }) => Some(*check),
        _ => None,
    }
}

#[test]
fn default_mock_quote_is_accepted_under_the_mock_root_with_the_mock_policy() {
    assert_eq!(MockConfig::default().valid_now(), NOW);
    let v = check(MockConfig::default(), &mock_policy()).unwrap();
    assert_eq!(v.tcb_status, TcbStatus::UpToDate);
    assert_eq!(v.measurements.mr_td, default_measurement("mr_td"));
    assert_eq!(v.report_data, [0x42; 64]);
    assert_eq!(v.version, 4);
    assert_eq!(v.matched_profile, "mock default measurements");
}

#[test]
fn validator_digest_covers_policy_and_root() {
    let mock = mock_policy();
    let intel_text = mock_policy_with("trust_root = \"mock\"", "trust_root = \"intel\"");
    let a = tessera_attestation::validator_digest(&mock).unwrap();
    assert_eq!(
        a,
        tessera_attestation::validator_digest(&mock_policy()).unwrap()
    );
    assert_ne!(
        a,
        tessera_attestation::validator_digest(&intel_text).unwrap()
    );
    let other = mock_policy_with("version = 1", "version = 2");
    assert_ne!(a, tessera_attestation::validator_digest(&other).unwrap());
}

#[test]
fn mock_quote_is_rejected_under_the_intel_root() {
    let intel = mock_policy_with("trust_root = \"mock\"", "trust_root = \"intel\"");
    let err = check(MockConfig::default(), &intel).unwrap_err();
    assert_eq!(dcap_check(&err), Some(DcapCheck::PckCertChain), "{err}");
    assert!(
        err.to_string().contains(
            "ends at \"Tessera Mock SGX Root CA\", not at the trusted root \"Intel SGX Root CA\""
        ),
        "{err}"
    );
    // With genuine Intel collateral it fails all the same.
    let (q, _) = make(MockConfig::default(), &[0; 64]);
    let err = verify(
        &q,
        &collateral("quote_uptodate"),
        &policy_file("example.toml"),
        UPTODATE_NOW,
        None,
    )
    .unwrap_err();
    assert_eq!(dcap_check(&err), Some(DcapCheck::PckCertChain), "{err}");
}

/// Replaces the last certificate of a quote's PEM chain with `root_pem`.
fn with_chain_root(chain: &[u8], root_pem: &str) -> String {
    let chain = String::from_utf8(chain.to_vec()).unwrap();
    let start = chain.rfind("-----BEGIN CERTIFICATE-----").unwrap();
    format!("{}{root_pem}", &chain[..start])
}

#[test]
fn quote_from_another_seed_is_rejected_under_the_mock_root() {
    let forged = MockConfig {
        seed: [0xaa; 32],
        ..MockConfig::default()
    };
    let (q, _) = make(forged, &[0x42; 64]);
    let (genuine_q, genuine_c) = make(MockConfig::default(), &[0x42; 64]);
    let err = verify(&q, &genuine_c, &mock_policy(), NOW, None).unwrap_err();
    assert_eq!(dcap_check(&err), Some(DcapCheck::PckCertChain), "{err}");
    // Claiming the genuine root at the end of the chain does not help: the forged PCK CA
    // is not issued by it.
    let genuine_chain = String::from_utf8(parse_quote(&genuine_q).unwrap().pck_chain_pem).unwrap();
    let root_pem = &genuine_chain[genuine_chain.rfind("-----BEGIN CERTIFICATE-----").unwrap()..];
    let mut c = genuine_c.clone();
    c.as_dcap_mut().pck_certificate_chain = Some(with_chain_root(
        &parse_quote(&q).unwrap().pck_chain_pem,
        root_pem,
    ));
    let err = verify(&q, &c, &mock_policy(), NOW, None).unwrap_err();
    assert_eq!(dcap_check(&err), Some(DcapCheck::PckCertChain), "{err}");
    assert!(
        err.to_string().contains("dcap-qvl"),
        "rejected by DCAP, not our root check: {err}"
    );
    // Twin: the genuine quote with the same collateral passes.
    assert!(verify(&genuine_q, &genuine_c, &mock_policy(), NOW, None).is_ok());
}

#[test]
fn quote_chain_must_parse_strictly() {
    let (q, c) = make(MockConfig::default(), &[0; 64]);
    let chain = String::from_utf8(parse_quote(&q).unwrap().pck_chain_pem).unwrap();
    for broken in [
        chain.replacen("BEGIN CERTIFICATE", "BEGIN CERTIFICATX", 3),
        chain.replacen(
            "-----BEGIN CERTIFICATE-----\nMII",
            "-----BEGIN CERTIFICATE-----\nMIJ",
            3,
        ),
        chain[..chain.find("-----END CERTIFICATE-----").unwrap() + 26].to_owned(),
    ] {
        let mut c = c.clone();
        c.as_dcap_mut().pck_certificate_chain = Some(broken);
        let err = verify(&q, &c, &mock_policy(), NOW, None).unwrap_err();
        assert!(matches!(err, VerifyError::Dcap(_)), "{err}");
    }
}

#[test]
fn every_non_revoked_status_is_rejected_by_default_and_accepted_when_allowed() {
    for status in [
        TcbStatus::OutOfDate,
        TcbStatus::SWHardeningNeeded,
        TcbStatus::ConfigurationNeeded,
        TcbStatus::ConfigurationAndSWHardeningNeeded,
        TcbStatus::OutOfDateConfigurationNeeded,
    ] {
        let config = MockConfig::default().with_tcb_status(status, &["INTEL-SA-00615"]);
        let err = check(config.clone(), &mock_policy()).unwrap_err();
        assert_eq!(
            err,
            VerifyError::Policy(PolicyViolation::TcbStatusNotAllowed {
                status,
                allowed: vec![TcbStatus::UpToDate]
            })
        );
        assert!(err.to_string().contains(status.as_str()));
        let allowing = mock_policy_with(
            "allowed_statuses = [\"UpToDate\"]",
            &format!("allowed_statuses = [\"UpToDate\", \"{status}\"]"),
        );
        let v = check(config, &allowing).unwrap();
        assert_eq!(v.tcb_status, status);
        assert_eq!(v.advisory_ids, ["INTEL-SA-00615"]);
    }
}

#[test]
fn revoked_tcb_is_always_rejected_and_cannot_be_allowed() {
    let err = check(
        MockConfig::default().with_tcb_status(TcbStatus::Revoked, &[]),
        &mock_policy(),
    )
    .unwrap_err();
    assert_eq!(dcap_check(&err), Some(DcapCheck::TcbRevoked), "{err}");
    let text = std::fs::read_to_string(format!("{POLICIES}mock.toml"))
        .unwrap()
        .replace(
            "allowed_statuses = [\"UpToDate\"]",
            "allowed_statuses = [\"UpToDate\", \"Revoked\"]",
        );
    assert!(Policy::from_toml_str(&text).is_err());
}

#[test]
fn rejected_advisory_is_named() {
    let config = MockConfig::default().with_tcb_status(
        TcbStatus::SWHardeningNeeded,
        &["INTEL-SA-00837", "INTEL-SA-00615"],
    );
    let policy = mock_policy_with(
        "allowed_statuses = [\"UpToDate\"]",
        "allowed_statuses = [\"UpToDate\", \"SWHardeningNeeded\"]\nrejected_advisories = [\"intel-sa-00837\"]",
    );
    let err = check(config.clone(), &policy).unwrap_err();
    assert_eq!(
        err,
        VerifyError::Policy(PolicyViolation::AdvisoryRejected {
            ids: vec!["INTEL-SA-00837".to_owned()]
        })
    );
    let twin = config.with_tcb_status(TcbStatus::SWHardeningNeeded, &["INTEL-SA-00615"]);
    assert!(check(twin, &policy).is_ok());
}

#[test]
fn revoked_pck_is_rejected() {
    let err = check(MockConfig::default().revoked_pck(), &mock_policy()).unwrap_err();
    assert_eq!(dcap_check(&err), Some(DcapCheck::PckRevoked), "{err}");
}

#[test]
fn stale_collateral_is_rejected_naming_the_expired_item_and_accepted_in_its_own_window() {
    let stale = MockConfig::default().stale_collateral();
    let (q, c) = make(stale.clone(), &[0; 64]);
    let err = verify(&q, &c, &mock_policy(), NOW, None).unwrap_err();
    match &err {
        VerifyError::Dcap(DcapError::CollateralExpired { item, .. }) => {
            assert_eq!(item, "root CA CRL")
        }
        other => panic!("expected CollateralExpired, got {other:?}"),
    }
    assert!(verify(&q, &c, &mock_policy(), stale.valid_now(), None).is_ok());
}

#[test]
fn debug_td_is_rejected_unless_the_policy_allows_it() {
    let err = check(MockConfig::default().debug(), &mock_policy()).unwrap_err();
    assert!(
        matches!(err, VerifyError::Policy(PolicyViolation::DebugTd { .. })),
        "{err}"
    );
    assert!(err.to_string().contains("debug TD"));
    let text = std::fs::read_to_string(format!("{POLICIES}mock.toml"))
        .unwrap()
        .replace("allow_debug = false", "allow_debug = true")
        .replace(
            "attributes_mask = \"ffffffff00000000\"",
            "attributes_mask = \"feffffff00000000\"",
        );
    let allowing_debug = Policy::from_toml_str(&text).unwrap();
    let v = check(MockConfig::default().debug(), &allowing_debug).unwrap();
    assert!(v.measurements.debug());
}

/// Issue 13, item 8: with `allow_debug = false` every TUD bit is refused, not only DEBUG.
/// The policy pins no attributes, so the debug check alone stands between such a TD and
/// acceptance (the shipped policies' attribute mask would catch these bits too).
#[test]
fn any_tud_bit_is_rejected_unless_the_policy_allows_debug() {
    let unpinned = |allow_debug: bool| {
        let text = std::fs::read_to_string(format!("{POLICIES}mock.toml"))
            .unwrap()
            .replace("attributes = \"0000001000000000\"\n", "")
            .replace("attributes_mask = \"ffffffff00000000\"\n", "")
            .replace(
                "allow_debug = false",
                &format!("allow_debug = {allow_debug}"),
            );
        assert!(!text.contains("attributes"), "{text}");
        Policy::from_toml_str(&text).unwrap()
    };
    let (strict, lenient) = (unpinned(false), unpinned(true));
    assert!(check(MockConfig::default(), &strict).is_ok());
    // Bits 1-3 and 7 are reserved: DCAP refuses them whatever the policy says.
    for bit in [1, 2, 3, 7] {
        let mut config = MockConfig::default();
        config.td_attributes[0] |= 1 << bit;
        for policy in [&strict, &lenient] {
            let err = check(config.clone(), policy).unwrap_err();
            assert_eq!(
                dcap_check(&err),
                Some(DcapCheck::TdAttributes),
                "bit {bit}: {err}"
            );
        }
    }
    // Bit 0 (DEBUG) and bits 4-6 (profiling): the policy decides. Before issue 13 bits
    // 4-6 passed a policy that pins no attributes.
    for bit in [0, 4, 5, 6] {
        let mut config = MockConfig::default();
        config.td_attributes[0] |= 1 << bit;
        let err = check(config.clone(), &strict).unwrap_err();
        match &err {
            VerifyError::Policy(PolicyViolation::DebugTd { tud, .. }) => {
                assert_eq!(*tud, 1 << bit, "bit {bit}")
            }
            other => panic!("TUD bit {bit}: expected DebugTd, got {other:?}"),
        }
        assert!(err.to_string().contains("allow_debug = false"), "{err}");
        // The twin: a policy that allows debug TDs accepts the same quote.
        let v = check(config, &lenient).unwrap_or_else(|e| panic!("TUD bit {bit}: {e}"));
        assert_eq!(v.measurements.tud(), 1 << bit);
    }
}

#[test]
fn other_mrtd_or_rtmr_is_rejected_naming_the_register() {
    let err = check(MockConfig::default().with_mr_td([1; 48]), &mock_policy()).unwrap_err();
    assert!(err.to_string().contains("mr_td expected"), "{err}");
    let err = check(MockConfig::default().with_rtmr(1, [2; 48]), &mock_policy()).unwrap_err();
    assert!(err.to_string().contains("rtmr1 expected"), "{err}");
    let err = check(MockConfig::default().with_rtmr(3, [3; 48]), &mock_policy()).unwrap_err();
    assert!(err.to_string().contains("rtmr3 expected"), "{err}");
}

#[test]
fn corrupted_signature_is_rejected() {
    let err = check(MockConfig::default().corrupt_signature(), &mock_policy()).unwrap_err();
    assert_eq!(dcap_check(&err), Some(DcapCheck::QuoteSignature), "{err}");
}

#[test]
fn platform_flags_and_fmspc_are_enforced() {
    let smt = MockConfig::default().with_platform(PlatformFlags {
        smt_enabled: Some(true),
        ..MockConfig::default().platform
    });
    let err = check(smt.clone(), &mock_policy()).unwrap_err();
    assert_eq!(
        err,
        VerifyError::Policy(PolicyViolation::PlatformFlagNotAllowed {
            flag: PlatformFlag::Smt
        })
    );
    assert!(check(
        smt,
        &mock_policy_with("allow_smt = false", "allow_smt = true")
    )
    .is_ok());
    let other_fmspc = MockConfig {
        fmspc: [1, 2, 3, 4, 5, 6],
        ..MockConfig::default()
    };
    let err = check(other_fmspc, &mock_policy()).unwrap_err();
    assert!(
        matches!(
            err,
            VerifyError::Policy(PolicyViolation::FmspcNotAllowed { .. })
        ),
        "{err}"
    );
}

fn claims(peer_key: [u8; 32]) -> Claims {
    Claims {
        peer_key,
        network_id: "tessera-test".to_owned(),
        group_scope: None,
        issued_at: NOW - 5,
        expires_at: NOW + 3_600,
        nonce: [3; 32],
    }
}

fn context(peer_key: [u8; 32]) -> BindingContext {
    BindingContext {
        peer_key,
        network_id: Some("tessera-test".to_owned()),
        group_scope: None,
    }
}

#[test]
fn bound_quote_is_accepted_and_wrong_report_data_is_rejected() {
    let claims = claims([9; 32]);
    let ctx = context([9; 32]);
    let binding = Some(Binding {
        claims: &claims,
        context: &ctx,
    });
    let (q, c) = make(MockConfig::default(), &claims.report_data());
    let v = verify(&q, &c, &mock_policy(), NOW, binding).unwrap();
    assert_eq!(v.claims.as_ref(), Some(&claims));
    assert_eq!(v.valid_until, NOW - 5 + 600); // claims age limit comes first

    let (q, c) = make(
        MockConfig::default().wrong_report_data(),
        &claims.report_data(),
    );
    let err = verify(&q, &c, &mock_policy(), NOW, binding).unwrap_err();
    assert!(
        matches!(
            err,
            VerifyError::Binding(BindingError::ReportDataMismatch { .. })
        ),
        "{err}"
    );
}

#[test]
fn quote_replayed_by_another_key_or_too_late_is_rejected() {
    let claims = claims([9; 32]);
    let (q, c) = make(MockConfig::default(), &claims.report_data());
    let thief = context([10; 32]);
    let err = verify(
        &q,
        &c,
        &mock_policy(),
        NOW,
        Some(Binding {
            claims: &claims,
            context: &thief,
        }),
    )
    .unwrap_err();
    assert!(
        matches!(
            err,
            VerifyError::Binding(BindingError::PeerKeyMismatch { .. })
        ),
        "{err}"
    );
    let ctx = context([9; 32]);
    let err = verify(
        &q,
        &c,
        &mock_policy(),
        NOW + 700,
        Some(Binding {
            claims: &claims,
            context: &ctx,
        }),
    )
    .unwrap_err();
    assert!(
        matches!(err, VerifyError::Binding(BindingError::TooOld { .. })),
        "{err}"
    );
    let other_net = BindingContext {
        network_id: Some("prod".to_owned()),
        ..ctx.clone()
    };
    let err = verify(
        &q,
        &c,
        &mock_policy(),
        NOW,
        Some(Binding {
            claims: &claims,
            context: &other_net,
        }),
    )
    .unwrap_err();
    assert!(
        matches!(
            err,
            VerifyError::Binding(BindingError::NetworkMismatch { .. })
        ),
        "{err}"
    );
}

#[test]
fn mock_output_is_deterministic_per_seed_and_config() {
    let a = make(MockConfig::default(), &[5; 64]);
    let b = make(MockConfig::default(), &[5; 64]);
    assert_eq!(a.0, b.0);
    assert_eq!(a.1, b.1);
    let c = make(MockConfig::default().debug(), &[5; 64]);
    assert_ne!(a.0, c.0);
    // Same root for every config of the default seed.
    let p1 = MockProvider::new(MockConfig::default()).unwrap();
    let p2 = MockProvider::new(MockConfig::default().revoked_pck().debug()).unwrap();
    assert_eq!(p1.root_der(), p2.root_der());
    assert_eq!(
        p1.root_der(),
        tessera_attestation::provider::mock::mock_root_der()
    );
}

#[test]
fn verification_cache_is_bounded_and_expires() {
    let claims = claims([9; 32]);
    let ctx = context([9; 32]);
    let binding = Some(Binding {
        claims: &claims,
        context: &ctx,
    });
    let (q, c) = make(MockConfig::default(), &claims.report_data());
    let policy = mock_policy();
    let watermark = CollateralWatermark::default();
    let v = verify_fresh(&q, &c, &policy, NOW, binding, &watermark).unwrap();
    let key = VerificationCache::key(&q, &c, &policy, binding);
    // Every input is in the key.
    assert_ne!(key, VerificationCache::key(&q, &c, &policy, None));
    assert_ne!(
        key,
        VerificationCache::key(&q, &c, &policy_file("example.toml"), binding)
    );
    let mut cache = VerificationCache::new(2);
    assert!(cache.get(&key, NOW, &watermark).is_none());
    cache.insert(key, v.clone(), NOW);
    assert_eq!(cache.get(&key, NOW, &watermark), Some(&v));
    assert_eq!(cache.get(&key, v.valid_until, &watermark), Some(&v));
    assert!(cache.get(&key, v.valid_until + 1, &watermark).is_none());
    // Bounded: a third entry evicts the one that expires first.
    let mut later = v.clone();
    later.valid_until += 100;
    cache.insert([1; 32], later.clone(), NOW);
    cache.insert([2; 32], later.clone(), NOW);
    assert_eq!(cache.len(), 2);
    assert!(cache.get(&key, NOW, &watermark).is_none());
    assert!(
        cache.get(&[1; 32], NOW, &watermark).is_some()
            && cache.get(&[2; 32], NOW, &watermark).is_some()
    );
    // An already expired verdict is not stored.
    let mut fresh = VerificationCache::default();
    fresh.insert(key, v.clone(), v.valid_until + 1);
    assert!(fresh.is_empty());
}

/// A verdict ends when the collateral grows older than the policy allows, so a cached
/// verdict cannot outlive `max_collateral_age_secs`.
#[test]
fn a_verdict_ends_when_the_collateral_becomes_too_old() {
    let issued_at = MockConfig::default().collateral_issued_at;
    let mut policy = mock_policy();
    let unbounded = check(MockConfig::default(), &policy).unwrap();
    policy.tcb.max_collateral_age_secs = NOW - issued_at + 100;
    let bounded = check(MockConfig::default(), &policy).unwrap();
    assert_eq!(bounded.valid_until, NOW + 100);
    assert!(unbounded.valid_until > bounded.valid_until, "{unbounded:?}");
}
