//! Issue 13, item 2 ("old collateral is accepted"): the collateral freshness watermark and
//! the collateral age limit, fed collateral from the mock PKI with chosen dates, evaluation
//! data numbers and CRL numbers. Every refusal has its twin: the same collateral passes
//! where nothing newer was seen, or under the pure `verify`. Fixed times.
#![cfg(feature = "mock")]
mod common;

use common::*;
use tessera_attestation::freshness::{CollateralPiece, CrlStamp, EvalStamp, FreshnessError};
use tessera_attestation::pipeline::{appraise_fresh, COLLATERAL_ROLLBACK_CHECK};
use tessera_attestation::policy::{PolicyViolation, DEFAULT_COLLATERAL_AGE_SECS};
use tessera_attestation::provider::mock::{MockConfig, MockProvider, MOCK_COLLATERAL_ISSUED_AT};
use tessera_attestation::verify::{DcapCheck, DcapError};
use tessera_attestation::{
    verify, verify_fresh, Collateral, CollateralWatermark, Policy, QuoteProvider,
    VerificationCache, VerifiedQuote, VerifyError,
};

const DAY: u64 = 86_400;
/// Issue date of the default mock collateral.
const T: u64 = MOCK_COLLATERAL_ISSUED_AT;
/// Verification time: inside the window of collateral issued at T or a few days later.
const NOW: u64 = T + 5 * DAY;

fn make(config: MockConfig) -> (Vec<u8>, Collateral) {
    let provider = MockProvider::new(config).unwrap();
    let quote = provider.quote(&[0x42; 64]).unwrap();
    (quote.into_bytes(), provider.collateral().unwrap())
}

fn mock_policy() -> Policy {
    policy_file("mock.toml")
}

fn fresh(
    config: MockConfig,
    policy: &Policy,
    watermark: &CollateralWatermark,
) -> Result<VerifiedQuote, VerifyError> {
    let (q, c) = make(config);
    verify_fresh(&q, &c, policy, NOW, None, watermark)
}

fn eval(number: u32, issued_at: u64) -> MockConfig {
    MockConfig::default().with_eval(number, issued_at)
}

fn freshness_error(err: VerifyError) -> FreshnessError {
    match err {
        VerifyError::Freshness(e) => e,
        other => panic!("expected a freshness refusal, got {other:?}"),
    }
}

#[test]
fn older_tcb_info_after_newer_for_the_same_fmspc_is_refused_naming_it() {
    let watermark = CollateralWatermark::default();
    let policy = mock_policy();
    let newer = fresh(eval(18, T), &policy, &watermark).unwrap();
    assert_eq!(newer.collateral_freshness.tcb_info().eval_data_number, 18);

    // A lower evaluation data number, though issued later: from before a TCB recovery.
    let (q, c) = make(eval(17, T + DAY));
    let err = verify_fresh(&q, &c, &policy, NOW, None, &watermark).unwrap_err();
    assert_eq!(err.check_name(), COLLATERAL_ROLLBACK_CHECK);
    let text = err.to_string();
    assert_eq!(
        freshness_error(err),
        FreshnessError::TcbInfoOlder {
            fmspc: "544553530000".to_owned(),
            presented: EvalStamp {
                eval_data_number: 17,
                issued_at: T + DAY
            },
            newest: EvalStamp {
                eval_data_number: 18,
                issued_at: T
            },
        }
    );
    assert!(
        text.contains("TCB Info for FMSPC 544553530000")
            && text.contains("evaluation data number 17 issued 2026-01-02T00:00:00Z")
            && text.contains("newest evaluation data number 18 issued 2026-01-01T00:00:00Z"),
        "{text}"
    );
    // The appraisal names the check, before the policy checks.
    let a = appraise_fresh(&q, &c, &policy, NOW, None, &watermark);
    let names: Vec<&str> = a.checks.iter().map(|c| c.name).collect();
    let at = names
        .iter()
        .position(|n| *n == COLLATERAL_ROLLBACK_CHECK)
        .unwrap();
    assert!(!a.checks[at].ok && names[at - 1] == "dcap", "{names:?}");

    // The same number reissued earlier is older too.
    let err = fresh(eval(18, T - DAY), &policy, &watermark).unwrap_err();
    assert_eq!(freshness_error(err).piece(), CollateralPiece::TcbInfo);

    // Twins: DCAP alone accepts the old collateral (the hole this closes), a verifier that
    // saw nothing newer accepts it, and as new or newer passes this one.
    assert!(verify(&q, &c, &policy, NOW, None).is_ok());
    assert!(verify_fresh(&q, &c, &policy, NOW, None, &CollateralWatermark::default()).is_ok());
    fresh(eval(18, T), &policy, &watermark).unwrap();
    fresh(eval(18, T + DAY), &policy, &watermark).unwrap();
    fresh(eval(19, T), &policy, &watermark).unwrap();
}

#[test]
fn older_qe_identity_is_refused() {
    let watermark = CollateralWatermark::default();
    let policy = mock_policy();
    fresh(eval(18, T), &policy, &watermark).unwrap();
    let older_qe = MockConfig {
        qe_identity_eval_data_number: Some(17),
        ..eval(18, T)
    };
    let err = freshness_error(fresh(older_qe.clone(), &policy, &watermark).unwrap_err());
    match &err {
        FreshnessError::QeIdentityOlder {
            id,
            presented,
            newest,
        } => {
            assert_eq!(id, "TD_QE");
            assert_eq!(
                (presented.eval_data_number, newest.eval_data_number),
                (17, 18)
            );
        }
        other => panic!("{other:?}"),
    }
    assert!(err.to_string().contains("QE Identity TD_QE"), "{err}");
    // Twin: a verifier that saw nothing newer accepts it.
    fresh(older_qe, &policy, &CollateralWatermark::default()).unwrap();
}

#[test]
fn older_pck_crl_after_newer_is_refused_by_number_then_by_this_update() {
    let watermark = CollateralWatermark::default();
    let policy = mock_policy();
    fresh(
        MockConfig::default().with_pck_crl(5, T + DAY),
        &policy,
        &watermark,
    )
    .unwrap();
    // A lower CRL number: older, whatever its thisUpdate says.
    let err = freshness_error(
        fresh(
            MockConfig::default().with_pck_crl(4, T + 2 * DAY),
            &policy,
            &watermark,
        )
        .unwrap_err(),
    );
    assert_eq!(
        err,
        FreshnessError::CrlOlder {
            piece: CollateralPiece::PckCrl,
            issuer: "Tessera Mock SGX PCK Platform CA".to_owned(),
            presented: CrlStamp {
                number: Some(4),
                this_update: T + 2 * DAY
            },
            newest: CrlStamp {
                number: Some(5),
                this_update: T + DAY
            },
        }
    );
    assert!(
        err.to_string()
            .contains("PCK CRL of CA \"Tessera Mock SGX PCK Platform CA\"")
            && err.to_string().contains("CRL number 4")
            && err.to_string().contains("newest CRL number 5"),
        "{err}"
    );
    // The same number with an earlier thisUpdate: older too.
    let err = fresh(
        MockConfig::default().with_pck_crl(5, T),
        &policy,
        &watermark,
    )
    .unwrap_err();
    assert_eq!(freshness_error(err).piece(), CollateralPiece::PckCrl);
    // Twins: the same CRL again and a newer one pass.
    fresh(
        MockConfig::default().with_pck_crl(5, T + DAY),
        &policy,
        &watermark,
    )
    .unwrap();
    fresh(
        MockConfig::default().with_pck_crl(6, T + DAY),
        &policy,
        &watermark,
    )
    .unwrap();
}

#[test]
fn older_root_ca_crl_after_newer_is_refused() {
    let watermark = CollateralWatermark::default();
    let policy = mock_policy();
    let with_root_crl = |number: u64| MockConfig {
        root_ca_crl_number: number,
        ..MockConfig::default()
    };
    fresh(with_root_crl(3), &policy, &watermark).unwrap();
    let err = freshness_error(fresh(with_root_crl(2), &policy, &watermark).unwrap_err());
    assert_eq!(err.piece(), CollateralPiece::RootCaCrl);
    assert!(
        err.to_string()
            .contains("root CA CRL of CA \"Tessera Mock SGX Root CA\""),
        "{err}"
    );
    fresh(with_root_crl(3), &policy, &watermark).unwrap();
}

/// The case of the issue: platform B's PCK was revoked. Platform A's collateral carries
/// the CRL that revokes it; B keeps presenting the CRL from before.
#[test]
fn a_revoked_platform_cannot_keep_showing_the_crl_from_before_its_revocation() {
    let policy = mock_policy();
    let platform_b = |crl_number: u64, revoked: Vec<u64>| MockConfig {
        pck_serial: 5,
        revoked_pck_serials: revoked,
        ..MockConfig::default().with_pck_crl(crl_number, T)
    };
    let before = platform_b(1, Vec::new());
    // With only DCAP, B is accepted with the old CRL, and rejected with the new one.
    let (q, c) = make(before.clone());
    assert!(verify(&q, &c, &policy, NOW, None).is_ok());
    let (q2, c2) = make(platform_b(2, vec![5]));
    let err = verify(&q2, &c2, &policy, NOW, None).unwrap_err();
    assert!(
        matches!(
            err,
            VerifyError::Dcap(DcapError::Check {
                check: DcapCheck::PckRevoked,
                ..
            })
        ),
        "{err}"
    );

    let watermark = CollateralWatermark::default();
    // Platform A (serial 4) presents CRL 2, which revokes B's PCK (serial 5): accepted.
    let platform_a = MockConfig {
        revoked_pck_serials: vec![5],
        ..MockConfig::default().with_pck_crl(2, T + DAY)
    };
    fresh(platform_a, &policy, &watermark).unwrap();
    // B, still showing CRL 1: refused.
    let err = freshness_error(verify_fresh(&q, &c, &policy, NOW, None, &watermark).unwrap_err());
    assert_eq!(err.piece(), CollateralPiece::PckCrl);
}

/// Only collateral that passed every signature check, of a quote that was accepted, may
/// raise the watermark; otherwise a forged item with a far-future date or number would lock
/// every honest peer out.
#[test]
fn collateral_that_failed_verification_does_not_raise_the_watermark() {
    let watermark = CollateralWatermark::default();
    let policy = mock_policy();

    // A TCB Info claiming evaluation data number 99 and a nextUpdate in 2100, under the
    // signature of the genuine one.
    let (q, genuine) = make(MockConfig::default());
    let mut forged = genuine.clone();
    let tcb_info = &mut forged.as_dcap_mut().tcb_info;
    assert!(tcb_info.contains("\"tcbEvaluationDataNumber\":17"));
    *tcb_info = tcb_info
        .replace(
            "\"tcbEvaluationDataNumber\":17",
            "\"tcbEvaluationDataNumber\":99",
        )
        .replace("2026-01-31T00:00:00Z", "2100-01-01T00:00:00Z");
    let err = verify_fresh(&q, &forged, &policy, NOW, None, &watermark).unwrap_err();
    assert!(
        matches!(
            err,
            VerifyError::Dcap(DcapError::Check {
                check: DcapCheck::TcbInfo,
                ..
            })
        ),
        "{err}"
    );

    // Genuine collateral, evaluation data number 99, issued a year from now: not valid yet.
    let err = fresh(eval(99, NOW + 365 * DAY), &policy, &watermark).unwrap_err();
    assert!(
        matches!(
            err,
            VerifyError::Dcap(DcapError::CollateralNotYetValid { .. })
        ),
        "{err}"
    );

    // A PCK CRL numbered 99, signed by another PKI's PCK CA of the same name.
    let (_, other_pki) = make(MockConfig {
        seed: [0xaa; 32],
        ..MockConfig::default().with_pck_crl(99, T)
    });
    let mut forged = genuine.clone();
    forged.as_dcap_mut().pck_crl = other_pki.as_dcap().pck_crl.clone();
    let err = verify_fresh(&q, &forged, &policy, NOW, None, &watermark).unwrap_err();
    assert!(matches!(err, VerifyError::Dcap(_)), "{err}");

    // Genuine, newer collateral, but the quote is refused by the policy (a debug TD).
    let err = fresh(eval(18, T).debug(), &policy, &watermark).unwrap_err();
    assert!(
        matches!(err, VerifyError::Policy(PolicyViolation::DebugTd { .. })),
        "{err}"
    );

    // None of it moved the watermark: the genuine collateral of number 17 passes.
    assert_eq!(watermark.generation(), 0);
    assert_eq!(
        watermark.newest_tcb_info([0x54, 0x45, 0x53, 0x53, 0, 0]),
        None
    );
    verify_fresh(&q, &genuine, &policy, NOW, None, &watermark).unwrap();
    // Twin: the accepted verdict did raise it.
    assert_ne!(watermark.generation(), 0);
    assert_eq!(
        watermark
            .newest_tcb_info([0x54, 0x45, 0x53, 0x53, 0, 0])
            .map(|s| s.eval_data_number),
        Some(17)
    );
}

#[test]
fn a_different_fmspc_has_its_own_tcb_info_watermark() {
    let watermark = CollateralWatermark::default();
    let any_fmspc = mock_policy_with("allowed_fmspcs = [\"544553530000\"]", "allowed_fmspcs = []");
    let other = [1, 2, 3, 4, 5, 6];
    fresh(eval(18, T), &any_fmspc, &watermark).unwrap();
    // FMSPC 010203040506 with TCB Info 17 (its QE Identity as new as the newest seen):
    // another platform model, whose TCB Info has its own sequence.
    let other_17 = MockConfig {
        fmspc: other,
        qe_identity_eval_data_number: Some(18),
        ..eval(17, T)
    };
    fresh(other_17.clone(), &any_fmspc, &watermark).unwrap();
    assert_eq!(watermark.fmspcs_tracked(), 2);
    // Negative twin: once that model has seen 18, its 17 is refused too...
    fresh(
        MockConfig {
            fmspc: other,
            ..eval(18, T)
        },
        &any_fmspc,
        &watermark,
    )
    .unwrap();
    let err = freshness_error(fresh(other_17, &any_fmspc, &watermark).unwrap_err());
    assert!(
        matches!(&err, FreshnessError::TcbInfoOlder { fmspc, .. } if fmspc == "010203040506"),
        "{err}"
    );
    // ... and the QE Identity is one for every platform: an older one is refused whatever
    // the FMSPC.
    let err = freshness_error(
        fresh(
            MockConfig {
                fmspc: [9; 6],
                ..eval(17, T)
            },
            &any_fmspc,
            &watermark,
        )
        .unwrap_err(),
    );
    assert_eq!(err.piece(), CollateralPiece::QeIdentity);
}

#[test]
fn the_verdict_cache_does_not_bypass_the_watermark() {
    let watermark = CollateralWatermark::default();
    let policy = mock_policy();
    let (q17, c17) = make(eval(17, T));
    let v17 = verify_fresh(&q17, &c17, &policy, NOW, None, &watermark).unwrap();
    let key17 = VerificationCache::key(&q17, &c17, &policy, None);
    let mut cache = VerificationCache::default();
    cache.insert(key17, v17.clone(), NOW);
    assert_eq!(cache.get(&key17, NOW, &watermark), Some(&v17));

    // Newer collateral is accepted (from the same platform, or any other of its model).
    let (q18, c18) = make(eval(18, T));
    let v18 = verify_fresh(&q18, &c18, &policy, NOW, None, &watermark).unwrap();
    let key18 = VerificationCache::key(&q18, &c18, &policy, None);
    cache.insert(key18, v18.clone(), NOW);

    // The cached verdict on the old collateral is no longer served; verifying it again is
    // refused. Twin: the verdict on the new collateral is.
    assert_eq!(cache.get(&key17, NOW, &watermark), None);
    assert!(matches!(
        verify_fresh(&q17, &c17, &policy, NOW, None, &watermark),
        Err(VerifyError::Freshness(_))
    ));
    assert_eq!(cache.get(&key18, NOW, &watermark), Some(&v18));
}

/// Issue 13, item 2: a policy that omits `max_collateral_age_secs` refuses collateral
/// older than 30 days, though it is still inside its validity window.
#[test]
fn the_default_collateral_age_limit_applies() {
    let long_lived = MockConfig {
        collateral_validity_secs: 90 * DAY,
        ..MockConfig::default()
    };
    let (q, c) = make(long_lived);
    let policy = mock_policy();
    let text = std::fs::read_to_string(format!("{POLICIES}mock.toml")).unwrap();
    assert!(!text
        .lines()
        .any(|line| line.starts_with("max_collateral_age_secs")));
    assert_eq!(
        policy.tcb.max_collateral_age_secs,
        DEFAULT_COLLATERAL_AGE_SECS
    );

    let err = verify(&q, &c, &policy, T + 31 * DAY, None).unwrap_err();
    assert_eq!(
        err,
        VerifyError::Policy(PolicyViolation::CollateralTooOld {
            age_secs: 31 * DAY,
            max_secs: 30 * DAY
        })
    );
    // Twins: 30 days old passes, and so does 31 under a policy that allows 40.
    assert!(verify(&q, &c, &policy, T + 30 * DAY, None).is_ok());
    let forty = mock_policy_with(
        "allowed_fmspcs = [\"544553530000\"]",
        "allowed_fmspcs = [\"544553530000\"]\nmax_collateral_age_secs = 3456000",
    );
    assert!(verify(&q, &c, &forty, T + 31 * DAY, None).is_ok());
}

/// `max_collateral_age_secs` counts from the oldest of the TCB Info, the QE Identity and
/// the PCK CRL (its thisUpdate), not from the root CA CRL.
#[test]
fn the_collateral_age_counts_from_the_pck_crl_this_update() {
    let ten_days = mock_policy_with(
        "allowed_fmspcs = [\"544553530000\"]",
        "allowed_fmspcs = [\"544553530000\"]\nmax_collateral_age_secs = 864000",
    );
    let now = T + 12 * DAY;
    // TCB Info and QE Identity 2 days old, the PCK CRL 12 days old.
    let old_crl = eval(17, T + 10 * DAY).with_pck_crl(1, T);
    let (q, c) = make(old_crl);
    let err = verify(&q, &c, &ten_days, now, None).unwrap_err();
    assert_eq!(
        err,
        VerifyError::Policy(PolicyViolation::CollateralTooOld {
            age_secs: 12 * DAY,
            max_secs: 10 * DAY
        })
    );
    // Twin: the same with a PCK CRL as new as the rest passes...
    let (q, c) = make(eval(17, T + 10 * DAY).with_pck_crl(1, T + 10 * DAY));
    let v = verify(&q, &c, &ten_days, now, None).unwrap();
    // ... and its verdict ends when the oldest of them turns 10 days old.
    assert_eq!(v.valid_until, T + 20 * DAY);
    // An old root CA CRL does not count (Intel reissues it about yearly).
    let old_root_crl = MockConfig {
        root_ca_crl_this_update: Some(T),
        ..eval(17, T + 10 * DAY).with_pck_crl(1, T + 10 * DAY)
    };
    let (q, c) = make(old_root_crl);
    assert!(verify(&q, &c, &ten_days, now, None).is_ok());
}
