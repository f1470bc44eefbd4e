//! Admission of TDX tickets made by the mock provider: what passes and every way to fail.
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tessera_attestation::provider::mock::{MockConfig, MockProvider};
use tessera_attestation::Policy;

use super::*;

const MOCK_POLICY: &str = include_str!("../../policies/mock.toml");
const NETWORK: &str = "test-net";

fn policy() -> Policy {
    Policy::from_toml_str(MOCK_POLICY).expect("mock policy")
}

fn issuer(config: MockConfig) -> TdxTicketIssuer {
    let provider = MockProvider::new(config).expect("mock provider");
    let collateral = provider.collateral().expect("collateral");
    TdxTicketIssuer::new(Box::new(provider), collateral, NETWORK.into(), 300)
}

fn now() -> u64 {
    MockConfig::default().valid_now()
}

fn ctx(peer_key: [u8; 32]) -> PeerContext {
    PeerContext {
        peer_key,
        network_id: NETWORK.into(),
        group_scope: None,
        now: now(),
    }
}

fn admission() -> Admission {
    Admission::new(vec![Arc::new(
        MockTdxValidator::new(policy()).expect("validator"),
    )])
}

#[test]
fn a_genuine_ticket_bound_to_the_presenting_key_is_admitted() {
    let key = [7u8; 32];
    let ticket = issuer(MockConfig::default())
        .issue(key, None, now())
        .expect("ticket");
    let verdicts = admission().admit(&[ticket], &ctx(key)).expect("admitted");
    assert_eq!(verdicts.len(), 1);
    assert!(verdicts[0].expires_at > now() && verdicts[0].expires_at <= now() + 300);
    assert!(
        verdicts[0].detail.contains("UpToDate"),
        "{}",
        verdicts[0].detail
    );
}

fn refusal(config: MockConfig, presenter: [u8; 32]) -> TicketError {
    let ticket = issuer(config)
        .issue([7u8; 32], None, now())
        .expect("ticket");
    admission()
        .admit(&[ticket], &ctx(presenter))
        .expect_err("must be refused")
}

#[test]
fn a_wrong_measurement_is_refused_by_the_policy() {
    let e = refusal(MockConfig::default().with_mr_td([0x42; 48]), [7u8; 32]);
    assert!(matches!(e, TicketError::Rejected { .. }), "{e}");
    assert!(e.to_string().contains("policy"), "{e}");
}

#[test]
fn a_debug_td_is_refused() {
    let e = refusal(MockConfig::default().debug(), [7u8; 32]);
    assert!(e.to_string().contains("debug"), "{e}");
}

#[test]
fn a_forged_signature_is_refused() {
    let e = refusal(MockConfig::default().corrupt_signature(), [7u8; 32]);
    assert!(matches!(e, TicketError::Rejected { .. }), "{e}");
}

#[test]
fn a_quote_replayed_by_another_key_is_refused_by_the_binding() {
    let e = refusal(MockConfig::default(), [8u8; 32]);
    assert!(e.to_string().contains("binding"), "{e}");
}

#[test]
fn an_expired_ticket_is_refused_before_verification() {
    let key = [7u8; 32];
    let ticket = issuer(MockConfig::default())
        .issue(key, None, now() - 1000)
        .expect("ticket");
    let e = admission()
        .admit(&[ticket], &ctx(key))
        .expect_err("expired");
    assert!(matches!(e, TicketError::Expired { .. }), "{e}");
}

#[test]
fn a_missing_or_garbage_ticket_is_refused() {
    let key = [7u8; 32];
    let e = admission().admit(&[], &ctx(key)).expect_err("missing");
    assert_eq!(
        e,
        TicketError::Missing {
            kind: TDX_KIND.into()
        }
    );
    let garbage = Ticket {
        kind: TDX_KIND.into(),
        bytes: vec![0xff; 64],
        expires_at: now() + 100,
    };
    let e = admission()
        .admit(&[garbage], &ctx(key))
        .expect_err("garbage");
    assert!(matches!(e, TicketError::Malformed { .. }), "{e}");
    let huge = Ticket {
        kind: TDX_KIND.into(),
        bytes: vec![0; TICKET_BYTES_MAX + 1],
        expires_at: now() + 100,
    };
    assert!(matches!(
        admission().admit(&[huge], &ctx(key)),
        Err(TicketError::Malformed { .. })
    ));
}

#[test]
fn a_mock_ticket_is_refused_by_a_validator_trusting_intel() {
    let intel = Policy::from_toml_str(
        &MOCK_POLICY.replace("trust_root = \"mock\"", "trust_root = \"intel\""),
    )
    .expect("policy");
    assert!(
        MockTdxValidator::new(intel.clone()).is_err(),
        "the mock validator must refuse an Intel policy"
    );
    let admission = Admission::new(vec![Arc::new(TdxValidator::new(intel).expect("validator"))]);
    let key = [7u8; 32];
    let ticket = issuer(MockConfig::default())
        .issue(key, None, now())
        .expect("ticket");
    let e = admission
        .admit(&[ticket], &ctx(key))
        .expect_err("mock root is not Intel's");
    assert!(e.to_string().contains("Intel"), "{e}");
}

#[test]
fn the_tdx_validator_refuses_a_policy_trusting_the_mock_root() {
    let e = TdxValidator::new(policy())
        .err()
        .expect("the production validator must refuse the mock root");
    assert!(matches!(e, TicketError::Validator(_)), "{e}");
    assert!(
        e.to_string().contains("trust_root = \"mock\"") && e.to_string().contains("Intel"),
        "{e}"
    );
}

#[test]
fn any_of_accepts_either_policy_and_its_signature_covers_both() {
    let old = policy();
    let new_measurement = [0x42; 48];
    let new = Policy::from_toml_str(&MOCK_POLICY.replace(
        "mr_td = \"6cb1c262a0f23144e19cfc8e2525aab9e31c16182aa342ad43d60ce499b49cedd4a7a761bbc286fd793f91a837b0027a\"",
        &format!("mr_td = \"{}\"", hex::encode(new_measurement)),
    ))
    .expect("new policy");
    let a: Arc<dyn TicketValidator> = Arc::new(MockTdxValidator::new(old).expect("a"));
    let b: Arc<dyn TicketValidator> = Arc::new(MockTdxValidator::new(new).expect("b"));
    assert_ne!(a.signature(), b.signature());
    let both = AnyOf::new(vec![a.clone(), b.clone()]).expect("any of");
    assert_ne!(both.signature(), a.signature());
    assert_ne!(
        both.signature(),
        AnyOf::new(vec![b, a]).expect("any of").signature()
    );
    let admission = Admission::new(vec![Arc::new(both)]);
    let key = [7u8; 32];
    for config in [
        MockConfig::default(),
        MockConfig::default().with_mr_td(new_measurement),
    ] {
        let ticket = issuer(config).issue(key, None, now()).expect("ticket");
        admission
            .admit(&[ticket], &ctx(key))
            .expect("either image is admitted");
    }
    let other = issuer(MockConfig::default().with_mr_td([0x43; 48]))
        .issue(key, None, now())
        .expect("ticket");
    let e = admission.admit(&[other], &ctx(key)).expect_err("neither");
    assert!(
        matches!(e, TicketError::NoAlternative(ref v) if v.len() == 2),
        "{e}"
    );
}

/// Counts validations, to observe the cache.
struct Counting(AtomicUsize, u64);

impl TicketValidator for Counting {
    fn kind(&self) -> &str {
        "count"
    }
    fn signature(&self) -> [u8; 32] {
        [1; 32]
    }
    fn validate(&self, _: &Ticket, _: &PeerContext) -> Result<Validated, TicketError> {
        self.0.fetch_add(1, Ordering::SeqCst);
        Ok(Validated {
            kind: "count".into(),
            expires_at: self.1,
            detail: String::new(),
        })
    }
}

#[test]
fn accepted_verdicts_are_cached_until_they_expire_and_per_peer() {
    let counting = Arc::new(Counting(AtomicUsize::new(0), 1_000));
    let admission = Admission::new(vec![counting.clone()]);
    let ticket = Ticket {
        kind: "count".into(),
        bytes: vec![1],
        expires_at: 2_000,
    };
    let at = |now, key| PeerContext {
        peer_key: key,
        network_id: NETWORK.into(),
        group_scope: None,
        now,
    };
    admission
        .admit(std::slice::from_ref(&ticket), &at(10, [1; 32]))
        .expect("first");
    admission
        .admit(std::slice::from_ref(&ticket), &at(20, [1; 32]))
        .expect("cached");
    assert_eq!(
        counting.0.load(Ordering::SeqCst),
        1,
        "second admission must come from the cache"
    );
    admission
        .admit(std::slice::from_ref(&ticket), &at(20, [2; 32]))
        .expect("other peer");
    assert_eq!(
        counting.0.load(Ordering::SeqCst),
        2,
        "the cache is keyed by the peer key too"
    );
    admission
        .admit(std::slice::from_ref(&ticket), &at(1_000, [1; 32]))
        .expect("re-validated");
    assert_eq!(
        counting.0.load(Ordering::SeqCst),
        3,
        "an expired verdict is not served from the cache"
    );
}

/// Collateral from before a TCB recovery (a lower TCB evaluation data number) is refused
/// for a platform model once newer collateral was accepted for it; the same number and
/// newer ones still pass, and the order of first sight does not matter otherwise.
#[test]
fn collateral_older_than_the_newest_accepted_for_the_platform_is_refused() {
    let key = [7u8; 32];
    let with_number = |n: u32| {
        let config = MockConfig {
            tcb_eval_data_number: n,
            ..MockConfig::default()
        };
        issuer(config).issue(key, None, now()).expect("ticket")
    };
    let validator = MockTdxValidator::new(policy()).expect("validator");
    validator
        .validate(&with_number(17), &ctx(key))
        .expect("first seen: accepted");
    validator
        .validate(&with_number(18), &ctx(key))
        .expect("newer: accepted");
    validator
        .validate(&with_number(18), &ctx(key))
        .expect("as new: accepted");
    match validator.validate(&with_number(17), &ctx(key)) {
        Err(TicketError::Rejected { check, reason, .. }) => {
            assert_eq!(check, "collateral_rollback");
            assert!(reason.contains("17") && reason.contains("18"), "{reason}");
        }
        other => panic!("older collateral must be refused, got {other:?}"),
    }
    // Another validator has its own memory: what it has not seen, it cannot compare.
    let fresh = MockTdxValidator::new(policy()).expect("validator");
    fresh
        .validate(&with_number(17), &ctx(key))
        .expect("a validator that saw nothing newer accepts it");
}

/// Issue 13: the admission cache does not keep a verdict alive past the watermark. A peer
/// admitted with collateral of number 17 is refused at its next admission once another
/// peer's collateral of number 18 was accepted, though its ticket is the same bytes.
#[test]
fn a_cached_admission_is_withdrawn_once_newer_collateral_was_accepted() {
    let with_number = |n: u32, key: [u8; 32]| {
        let config = MockConfig {
            tcb_eval_data_number: n,
            ..MockConfig::default()
        };
        issuer(config).issue(key, None, now()).expect("ticket")
    };
    let validator = Arc::new(MockTdxValidator::new(policy()).expect("validator"));
    let admission = Admission::new(vec![validator.clone()]);
    let (old_peer, new_peer) = ([7u8; 32], [8u8; 32]);
    let old = with_number(17, old_peer);
    admission
        .admit(std::slice::from_ref(&old), &ctx(old_peer))
        .expect("first seen: admitted");
    let before = validator.generation();
    // Twin: while nothing newer is seen, the peer is admitted again (and raises nothing).
    admission
        .admit(std::slice::from_ref(&old), &ctx(old_peer))
        .expect("as new as anything seen: admitted");
    assert_eq!(validator.generation(), before);
    admission
        .admit(&[with_number(18, new_peer)], &ctx(new_peer))
        .expect("newer collateral: admitted");
    assert_ne!(validator.generation(), before, "the watermark rose");
    match admission.admit(std::slice::from_ref(&old), &ctx(old_peer)) {
        Err(TicketError::Rejected { check, reason, .. }) => {
            assert_eq!(check, "collateral_rollback");
            assert!(reason.contains("TCB Info"), "{reason}");
        }
        other => panic!("the cached verdict must not be served, got {other:?}"),
    }
}
