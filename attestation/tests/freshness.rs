//! Issue 13, item 2 ("old collateral is accepted"): the collateral age limit, fed
//! collateral from the mock PKI with chosen dates. Every refusal has its twin. Fixed times.
#![cfg(feature = "mock")]
mod common;

use common::*;
use tessera_attestation::policy::{PolicyViolation, DEFAULT_COLLATERAL_AGE_SECS};
use tessera_attestation::provider::mock::{MockConfig, MockProvider, MOCK_COLLATERAL_ISSUED_AT};
use tessera_attestation::{verify, Collateral, QuoteProvider, VerifyError};

const DAY: u64 = 86_400;
/// Issue date of the default mock collateral.
const T: u64 = MOCK_COLLATERAL_ISSUED_AT;

fn make(config: MockConfig) -> (Vec<u8>, Collateral) {
    let provider = MockProvider::new(config).unwrap();
    let quote = provider.quote(&[0x42; 64]).unwrap();
    (quote.into_bytes(), provider.collateral().unwrap())
}

fn eval(number: u32, issued_at: u64) -> MockConfig {
    MockConfig::default().with_eval(number, issued_at)
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
    let policy = policy_file("mock.toml");
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
