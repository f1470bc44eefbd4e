//! The verification pipeline (architecture.md §4.2): parse → DCAP → collateral freshness → policy
//! on the TCB → policy on the TD → binding. [`appraise`] records every check; [`verify`]
//! returns the verdict.
//!
//! [`verify`] and [`appraise`] are pure: one quote, judged alone (the `tessera verify`
//! command). A verifier that judges peers over time uses [`verify_fresh`] /
//! [`appraise_fresh`] with the [`CollateralWatermark`] it owns: they also refuse collateral
//! older than the newest it has accepted, and raise it with each accepted verdict
//! (architecture.md §13).
//!
//! IO contract: no clock, no network, no file system. `now` is Unix seconds.
use std::borrow::Cow;

use crate::binding::{check_binding, BindingContext, BindingError, Claims};
use crate::freshness::{CollateralFreshness, CollateralWatermark, FreshnessError};
use crate::policy::{evaluate, matching_profile, Policy, PolicyViolation, TrustRoot};
use crate::quote::{parse_quote, Measurements, ParseError, ParsedQuote, TdBodyKind};
use crate::tcb::{PlatformFlags, TcbStatus};
use crate::verify::{verify_dcap, Collateral, DcapError, DcapVerified, INTEL_SGX_ROOT_CA_DER};

/// The claims sent with a quote and what the verifier expects of them.
#[derive(Clone, Copy, Debug)]
pub struct Binding<'a> {
    /// Claims presented next to the quote.
    pub claims: &'a Claims,
    /// Authenticated peer key and expected network.
    pub context: &'a BindingContext,
}

/// A quote that passed every check.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerifiedQuote {
    /// Quote format version (4 or 5).
    pub version: u16,
    /// TD report body kind.
    pub body: TdBodyKind,
    /// Measurements and attributes of the TD.
    pub measurements: Measurements,
    /// Report data of the quote.
    pub report_data: [u8; 64],
    /// TCB status after DCAP appraisal.
    pub tcb_status: TcbStatus,
    /// Advisories that apply to the platform's TCB level.
    pub advisory_ids: Vec<String>,
    /// FMSPC of the platform.
    pub fmspc: [u8; 6],
    /// PCK platform flags.
    pub platform: PlatformFlags,
    /// TCB evaluation data number of the collateral.
    pub tcb_eval_data_number: u32,
    /// Label of the measurement profile that matched.
    pub matched_profile: String,
    /// The binding claims, when they were checked.
    pub claims: Option<Claims>,
    /// Earliest expiry over the collateral (Unix seconds).
    pub collateral_expires_at: u64,
    /// When this verdict stops holding: earliest of collateral expiry, claims expiry and
    /// claims age limit (Unix seconds).
    pub valid_until: u64,
    /// Where the collateral stands; a verdict holds only while no newer collateral for the
    /// same platform model, QE identity or CA has been accepted
    /// ([`CollateralWatermark::check`]).
    pub collateral_freshness: CollateralFreshness,
}

/// A quote was rejected (or could not be checked). Each variant names the stage; the
/// inner error names the check and expected vs actual.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum VerifyError {
    /// The bytes are not a TD quote we can read.
    #[error("quote rejected at parsing: {0}")]
    Parse(#[from] ParseError),
    /// The policy asks for a root this build does not have.
    #[error("trust_root = \"{root}\" is not in this build: the mock root comes only with the `mock` feature (`mock-attestation` of tessera), which production builds leave off")]
    TrustRootUnavailable {
        /// The policy's root.
        root: TrustRoot,
    },
    /// DCAP verification failed (collateral, chain, signatures, TCB level).
    #[error("quote rejected by DCAP verification: {0}")]
    Dcap(#[from] DcapError),
    /// The collateral verified, but this verifier has already accepted newer collateral
    /// for the same platform model, QE identity or CA.
    #[error("quote rejected: its collateral is older than the newest seen: {0}")]
    Freshness(#[from] FreshnessError),
    /// The quote verified but the policy refuses it.
    #[error("quote rejected by policy: {0}")]
    Policy(#[from] PolicyViolation),
    /// The quote is not bound to the presented claims, peer or network, or is stale.
    #[error("quote rejected by binding: {0}")]
    Binding(#[from] BindingError),
}

impl VerifyError {
    /// The name of the failed check (as in [`CheckOutcome::name`]).
    pub fn check_name(&self) -> &'static str {
        match self {
            VerifyError::Parse(_) => "parse",
            VerifyError::TrustRootUnavailable { .. } => "trust_root",
            VerifyError::Dcap(e) => e.check_name(),
            VerifyError::Freshness(_) => COLLATERAL_ROLLBACK_CHECK,
            VerifyError::Policy(v) => v.check_name(),
            VerifyError::Binding(b) => b.check_name(),
        }
    }
}

/// Name of the freshness check: collateral older than the newest accepted.
pub const COLLATERAL_ROLLBACK_CHECK: &str = "collateral_rollback";

/// One check of an appraisal.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckOutcome {
    /// Stable name of the check.
    pub name: &'static str,
    /// Whether it passed.
    pub ok: bool,
    /// What was found (pass) or why it failed.
    pub detail: String,
}

/// Every check run on a quote, and the verdict.
#[derive(Clone, Debug)]
pub struct Appraisal {
    /// Checks in the order they ran. Stages after a failed parse or DCAP step do not run.
    pub checks: Vec<CheckOutcome>,
    /// The parsed quote, when parsing succeeded.
    pub parsed: Option<ParsedQuote>,
    /// DCAP results, when DCAP verification succeeded.
    pub dcap: Option<DcapVerified>,
    /// Accepted quote, or the first failure.
    pub outcome: Result<VerifiedQuote, VerifyError>,
}

impl Appraisal {
    /// Whether the quote was accepted.
    pub fn accepted(&self) -> bool {
        self.outcome.is_ok()
    }
}

/// Verifies a quote with its collateral against a policy at `now`, checking the binding
/// when claims are given. Returns the accepted quote or the first failed check.
pub fn verify(
    quote: &[u8],
    collateral: &Collateral,
    policy: &Policy,
    now: u64,
    binding: Option<Binding<'_>>,
) -> Result<VerifiedQuote, VerifyError> {
    appraise(quote, collateral, policy, now, binding).outcome
}

/// Like [`verify`], and also refuses collateral older than the newest `watermark` has
/// accepted; an accepted verdict raises `watermark` to its collateral.
pub fn verify_fresh(
    quote: &[u8],
    collateral: &Collateral,
    policy: &Policy,
    now: u64,
    binding: Option<Binding<'_>>,
    watermark: &CollateralWatermark,
) -> Result<VerifiedQuote, VerifyError> {
    appraise_fresh(quote, collateral, policy, now, binding, watermark).outcome
}

/// The root certificate for a trust root.
pub fn trust_root_der(root: TrustRoot) -> Result<Cow<'static, [u8]>, VerifyError> {
    match root {
        TrustRoot::Intel => Ok(Cow::Borrowed(INTEL_SGX_ROOT_CA_DER)),
        #[cfg(feature = "mock")]
        TrustRoot::Mock => Ok(Cow::Borrowed(crate::provider::mock::mock_root_der())),
        #[cfg(not(feature = "mock"))]
        TrustRoot::Mock => Err(VerifyError::TrustRootUnavailable { root }),
    }
}

/// Domain tag of [`validator_digest`].
pub const VALIDATOR_DIGEST_DOMAIN: &[u8] = b"tessera/tdx-validator/v1\0";

/// Digest of everything that decides acceptance under `policy` (architecture.md §3, the TDX ticket
/// validator's signature): SHA-256 over a domain tag, the canonical policy digest and the
/// SHA-256 of the trusted root certificate.
pub fn validator_digest(policy: &Policy) -> Result<[u8; 32], VerifyError> {
    let root = trust_root_der(policy.trust_root)?;
    let root_digest = ring::digest::digest(&ring::digest::SHA256, &root);
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    ctx.update(VALIDATOR_DIGEST_DOMAIN);
    ctx.update(&policy.digest());
    ctx.update(root_digest.as_ref());
    let mut out = [0u8; 32];
    out.copy_from_slice(ctx.finish().as_ref());
    Ok(out)
}

/// Like [`verify`], recording every check.
pub fn appraise(
    quote: &[u8],
    collateral: &Collateral,
    policy: &Policy,
    now: u64,
    binding: Option<Binding<'_>>,
) -> Appraisal {
    appraise_with(quote, collateral, policy, now, binding, None)
}

/// Like [`verify_fresh`], recording every check.
pub fn appraise_fresh(
    quote: &[u8],
    collateral: &Collateral,
    policy: &Policy,
    now: u64,
    binding: Option<Binding<'_>>,
    watermark: &CollateralWatermark,
) -> Appraisal {
    appraise_with(quote, collateral, policy, now, binding, Some(watermark))
}

fn appraise_with(
    quote: &[u8],
    collateral: &Collateral,
    policy: &Policy,
    now: u64,
    binding: Option<Binding<'_>>,
    watermark: Option<&CollateralWatermark>,
) -> Appraisal {
    let mut checks = Vec::new();
    let appraisal = |checks: Vec<CheckOutcome>, parsed, dcap, outcome| Appraisal {
        checks,
        parsed,
        dcap,
        outcome,
    };

    // 1. Parse.
    let parsed = match parse_quote(quote) {
        Ok(p) => p,
        Err(e) => {
            checks.push(fail("parse", &e));
            return appraisal(checks, None, None, Err(e.into()));
        }
    };
    checks.push(pass(
        "parse",
        format!(
            "TDX quote v{} with a {:?} body, {} bytes",
            parsed.version,
            parsed.body,
            quote.len()
        ),
    ));

    // 2. DCAP.
    let root = match trust_root_der(policy.trust_root) {
        Ok(r) => r,
        Err(e) => {
            checks.push(fail("trust_root", &e));
            return appraisal(checks, Some(parsed), None, Err(e));
        }
    };
    let dcap = match verify_dcap(quote, &parsed, collateral, &root, now) {
        Ok(d) => d,
        Err(e) => {
            checks.push(fail(e.check_name(), &e));
            return appraisal(checks, Some(parsed), None, Err(e.into()));
        }
    };
    checks.push(pass(
        "collateral_validity",
        format!(
            "every collateral item valid at {}; earliest expiry {}",
            crate::verify::format_unix(now),
            crate::verify::format_unix(dcap.collateral_expires_at)
        ),
    ));
    checks.push(pass(
        "dcap",
        format!(
            "PCK chain, CRLs, QE identity and quote signature verified to the {} root; TCB {}",
            policy.trust_root, dcap.tcb_status
        ),
    ));

    // 3. Freshness: before the policy, so that stale collateral is the reason given even
    // when it also breaks the policy (its TCB status may be why it is presented).
    let mut first_error: Option<VerifyError> = None;
    if let Some(watermark) = watermark {
        match watermark.check(&dcap.freshness, now) {
            Ok(()) => checks.push(pass(
                COLLATERAL_ROLLBACK_CHECK,
                format!(
                    "no older than the newest accepted: {}",
                    dcap.freshness.describe()
                ),
            )),
            Err(e) => {
                checks.push(fail(COLLATERAL_ROLLBACK_CHECK, &e));
                first_error = Some(e.into());
            }
        }
    }

    // 4–5. Policy.
    for (name, result) in evaluate(policy, &parsed, &dcap, now) {
        match result {
            Ok(detail) => checks.push(pass(name, detail)),
            Err(v) => {
                checks.push(fail(name, &v));
                first_error.get_or_insert(VerifyError::Policy(v));
            }
        }
    }

    // 6. Binding.
    let mut valid_until = dcap.collateral_expires_at;
    // A verdict (and a cached one) ends when the collateral grows too old for the policy.
    valid_until = valid_until.min(
        dcap.collateral_issued_at
            .saturating_add(policy.tcb.max_collateral_age_secs),
    );
    if let Some(b) = binding {
        let results = check_binding(
            &parsed.report_data,
            b.claims,
            b.context,
            policy.binding.max_quote_age_secs,
            now,
        );
        for (name, result) in results {
            match result {
                Ok(detail) => checks.push(pass(name, detail)),
                Err(e) => {
                    checks.push(fail(name, &e));
                    first_error.get_or_insert(VerifyError::Binding(e));
                }
            }
        }
        let age_limit = b
            .claims
            .issued_at
            .saturating_add(policy.binding.max_quote_age_secs);
        valid_until = valid_until.min(b.claims.expires_at).min(age_limit);
    } else {
        checks.push(pass("binding", "not checked (no claims given)".to_owned()));
    }

    let outcome = match first_error {
        Some(e) => Err(e),
        None => Ok(VerifiedQuote {
            version: parsed.version,
            body: parsed.body,
            measurements: parsed.measurements.clone(),
            report_data: parsed.report_data,
            tcb_status: dcap.tcb_status,
            advisory_ids: dcap.advisory_ids.clone(),
            fmspc: dcap.fmspc,
            platform: dcap.platform,
            tcb_eval_data_number: dcap.tcb_eval_data_number,
            matched_profile: matching_profile(policy, &parsed)
                .map(|p| p.label.clone())
                .unwrap_or_default(),
            claims: binding.map(|b| b.claims.clone()),
            collateral_expires_at: dcap.collateral_expires_at,
            valid_until,
            collateral_freshness: dcap.freshness.clone(),
        }),
    };
    // Only an accepted verdict raises the watermark, checking again under the same lock:
    // another verdict may have raised it since the check above.
    let outcome = match (outcome, watermark) {
        (Ok(verified), Some(watermark)) => {
            match watermark.check_and_raise(&verified.collateral_freshness, now) {
                Ok(()) => Ok(verified),
                Err(e) => {
                    checks.push(fail(COLLATERAL_ROLLBACK_CHECK, &e));
                    Err(e.into())
                }
            }
        }
        (outcome, _) => outcome,
    };
    appraisal(checks, Some(parsed), Some(dcap), outcome)
}

fn pass(name: &'static str, detail: String) -> CheckOutcome {
    CheckOutcome {
        name,
        ok: true,
        detail,
    }
}

fn fail(name: &'static str, error: &dyn std::fmt::Display) -> CheckOutcome {
    CheckOutcome {
        name,
        ok: false,
        detail: error.to_string(),
    }
}
