//! TDX tickets: a quote whose report data binds the peer's key (architecture.md §4.4), the DCAP
//! collateral to verify it with, and the claims. Collateral is signed by the platform
//! vendor's PKI, so receiving it from the peer itself is safe: the verifier checks it
//! against its own trust root.
//!
//! [`TdxValidator`] runs the attestation crate's whole pipeline with one policy that trusts
//! Intel's root, and only such a policy: it refuses `trust_root = "mock"` when built and
//! again before every verification, so no configuration makes the production validator
//! accept a quote signed by the mock PKI, whose keys are public. `MockTdxValidator`
//! (feature `mock-attestation`, for tests and the demo) is the other half: the same
//! pipeline, a policy that must trust the mock root. Both call one function; there is no
//! separate "mock" verification path to get wrong.
//!
//! Each validator owns a collateral watermark (`tessera_attestation::freshness`): once it
//! has accepted collateral, it refuses older collateral for the same platform model, QE
//! identity or CA, and its [`TicketValidator::generation`] moves so that cached verdicts
//! are checked again.
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tessera_attestation::{
    validator_digest, verify_fresh, Binding, BindingContext, Claims, Collateral,
    CollateralWatermark, Policy, QuoteProvider, TrustRoot,
};

use super::{PeerContext, Ticket, TicketError, TicketValidator, Validated};
use crate::collateral::SharedCollateral;

/// Ticket kind of TDX quotes.
pub const TDX_KIND: &str = "tdx";

#[derive(Serialize, Deserialize)]
struct TdxTicketBody {
    quote: Vec<u8>,
    /// Collateral in dcap-qvl's JSON form.
    collateral: Vec<u8>,
    claims: Claims,
}

/// Validates TDX tickets against one policy whose DCAP chains end at Intel's root.
///
/// Invariant: `policy.trust_root` is [`TrustRoot::Intel`]. [`TdxValidator::new`] refuses
/// any other root, and [`TicketValidator::validate`] checks it again before it verifies,
/// so that the production validator fails closed even if the invariant were broken.
pub struct TdxValidator {
    pipeline: Pipeline,
}

impl TdxValidator {
    /// A validator for `policy`. Refused unless the policy trusts Intel's root: a policy
    /// with `trust_root = "mock"` accepts quotes anyone can make (the mock PKI's keys are
    /// public); tests and the demo use `MockTdxValidator` (feature `mock-attestation`) for it.
    pub fn new(policy: Policy) -> Result<Self, TicketError> {
        if policy.trust_root != TrustRoot::Intel {
            return Err(TicketError::Validator(format!(
                "policy {}: trust_root = \"{}\" refused: the TDX validator trusts only Intel's \
                 root (the mock root's keys are public; it is for tests and the demo)",
                policy.name, policy.trust_root
            )));
        }
        Ok(Self {
            pipeline: Pipeline::new(policy)?,
        })
    }

    /// The policy quotes are verified against (it trusts Intel's root).
    pub fn policy(&self) -> &Policy {
        &self.pipeline.policy
    }
}

impl TicketValidator for TdxValidator {
    fn kind(&self) -> &str {
        TDX_KIND
    }

    fn signature(&self) -> [u8; 32] {
        self.pipeline.signature
    }

    fn validate(&self, ticket: &Ticket, ctx: &PeerContext) -> Result<Validated, TicketError> {
        // Unreachable through `new`; checked anyway so that this validator never accepts a
        // quote under any root but Intel's, whatever happens to the invariant.
        let root = self.pipeline.policy.trust_root;
        if root != TrustRoot::Intel {
            return Err(TicketError::Rejected {
                kind: TDX_KIND.into(),
                check: "trust_root",
                reason: format!(
                    "the TDX validator verifies only to Intel's root, its policy names {root}"
                ),
            });
        }
        self.pipeline.validate(ticket, ctx)
    }

    fn generation(&self) -> u64 {
        self.pipeline.generation()
    }

    fn collateral_watermarks(&self) -> Vec<Arc<CollateralWatermark>> {
        vec![self.pipeline.watermark.clone()]
    }
}

/// What both TDX validators hold and run: the policy, its digest (the validator's
/// signature) and the collateral watermark, the newest signature-checked collateral this
/// validator has accepted per platform model, QE identity and CA (architecture.md §13).
struct Pipeline {
    policy: Policy,
    signature: [u8; 32],
    watermark: Arc<CollateralWatermark>,
}

impl Pipeline {
    fn new(policy: Policy) -> Result<Self, TicketError> {
        let signature =
            validator_digest(&policy).map_err(|e| TicketError::Validator(e.to_string()))?;
        Ok(Self {
            policy,
            signature,
            watermark: Arc::new(CollateralWatermark::default()),
        })
    }

    fn validate(&self, ticket: &Ticket, ctx: &PeerContext) -> Result<Validated, TicketError> {
        validate_tdx(&self.policy, &self.watermark, ticket, ctx)
    }

    fn generation(&self) -> u64 {
        self.watermark.generation()
    }
}

/// The pipeline both validators run: decode the ticket, verify quote, collateral and
/// binding against `policy`, refusing collateral older than `watermark` has accepted.
/// Each peer supplies its own collateral, and DCAP alone accepts it until its nextUpdate:
/// the watermark is what stops a peer from showing the CRL from before its PCK was revoked,
/// or the TCB Info from before a TCB recovery, once this validator has seen newer ones.
/// (A peer that cannot refresh its collateral is locked out after such an event; that is
/// the point.)
fn validate_tdx(
    policy: &Policy,
    watermark: &CollateralWatermark,
    ticket: &Ticket,
    ctx: &PeerContext,
) -> Result<Validated, TicketError> {
    let malformed = |reason: String| TicketError::Malformed {
        kind: TDX_KIND.into(),
        reason,
    };
    let body: TdxTicketBody =
        postcard::from_bytes(&ticket.bytes).map_err(|e| malformed(e.to_string()))?;
    let collateral = Collateral::from_json(&body.collateral)
        .map_err(|e| malformed(format!("collateral: {e}")))?;
    let context = BindingContext {
        peer_key: ctx.peer_key,
        network_id: Some(ctx.network_id.clone()),
        group_scope: ctx.group_scope,
    };
    let binding = Binding {
        claims: &body.claims,
        context: &context,
    };
    let verified = verify_fresh(
        &body.quote,
        &collateral,
        policy,
        ctx.now,
        Some(binding),
        watermark,
    )
    .map_err(|e| TicketError::Rejected {
        kind: TDX_KIND.into(),
        check: e.check_name(),
        reason: e.to_string(),
    })?;
    Ok(Validated {
        kind: TDX_KIND.into(),
        expires_at: verified.valid_until.min(ticket.expires_at),
        detail: format!(
            "TCB {:?}, profile {}, MRTD {}",
            verified.tcb_status,
            verified.matched_profile,
            hex::encode(&verified.measurements.mr_td[..8])
        ),
    })
}

/// The TDX pipeline with a policy that trusts the mock root, for tests and the demo.
/// Refuses a policy that trusts Intel's root, so a test set-up cannot silently run against
/// production trust. Only in builds with the `mock-attestation` feature.
#[cfg(feature = "mock-attestation")]
pub struct MockTdxValidator {
    pipeline: Pipeline,
}

#[cfg(feature = "mock-attestation")]
impl MockTdxValidator {
    /// A validator for `policy`, which must trust the mock root (`trust_root = "mock"`);
    /// any other root is refused with [`TicketError::Validator`].
    pub fn new(policy: Policy) -> Result<Self, TicketError> {
        if policy.trust_root != TrustRoot::Mock {
            return Err(TicketError::Validator(format!(
                "the mock validator needs a policy with trust_root = \"mock\", policy {} trusts {}",
                policy.name, policy.trust_root
            )));
        }
        Ok(Self {
            pipeline: Pipeline::new(policy)?,
        })
    }

    /// The policy quotes are verified against (it trusts the mock root).
    pub fn policy(&self) -> &Policy {
        &self.pipeline.policy
    }
}

#[cfg(feature = "mock-attestation")]
impl TicketValidator for MockTdxValidator {
    fn kind(&self) -> &str {
        TDX_KIND
    }

    fn signature(&self) -> [u8; 32] {
        self.pipeline.signature
    }

    fn validate(&self, ticket: &Ticket, ctx: &PeerContext) -> Result<Validated, TicketError> {
        self.pipeline.validate(ticket, ctx)
    }

    fn generation(&self) -> u64 {
        self.pipeline.generation()
    }

    fn collateral_watermarks(&self) -> Vec<Arc<CollateralWatermark>> {
        vec![self.pipeline.watermark.clone()]
    }
}

/// Makes a node's TDX tickets: fresh claims bound to its key, a quote over them, and the
/// collateral that verifies the quote. The collateral is read from a [`SharedCollateral`]
/// for every ticket, so a refreshed bundle (`crate::collateral`) goes into the next ticket.
pub struct TdxTicketIssuer {
    provider: Arc<dyn QuoteProvider + Send + Sync>,
    collateral: SharedCollateral,
    network_id: String,
    lifetime_secs: u64,
}

impl TdxTicketIssuer {
    /// An issuer whose collateral never changes.
    pub fn new(
        provider: Box<dyn QuoteProvider + Send + Sync>,
        collateral: Collateral,
        network_id: String,
        lifetime_secs: u64,
    ) -> Self {
        Self::with_shared_collateral(
            Arc::from(provider),
            SharedCollateral::new(collateral),
            network_id,
            lifetime_secs,
        )
    }

    /// An issuer that puts `collateral`'s current bundle into each ticket.
    pub fn with_shared_collateral(
        provider: Arc<dyn QuoteProvider + Send + Sync>,
        collateral: SharedCollateral,
        network_id: String,
        lifetime_secs: u64,
    ) -> Self {
        Self {
            provider,
            collateral,
            network_id,
            lifetime_secs,
        }
    }

    /// The bundle new tickets carry.
    pub fn collateral(&self) -> &SharedCollateral {
        &self.collateral
    }

    /// A ticket for `peer_key`, valid from `now` for the issuer's lifetime.
    pub fn issue(
        &self,
        peer_key: [u8; 32],
        group_scope: Option<[u8; 32]>,
        now: u64,
    ) -> Result<Ticket, TicketError> {
        let mut nonce = [0u8; 32];
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut nonce).map_err(
            |_| TicketError::Validator("no system randomness for the claims nonce".into()),
        )?;
        // The verifier also caps the verdict at the collateral's expiry (`valid_until`).
        let expires_at = now.saturating_add(self.lifetime_secs);
        let claims = Claims {
            peer_key,
            network_id: self.network_id.clone(),
            group_scope,
            issued_at: now,
            expires_at,
            nonce,
        };
        let quote = self
            .provider
            .quote(&claims.report_data())
            .map_err(|e| TicketError::Validator(format!("quote provider: {e}")))?;
        let body = TdxTicketBody {
            quote: quote.into_bytes(),
            collateral: self.collateral.current().to_json().into_bytes(),
            claims,
        };
        let bytes =
            postcard::to_allocvec(&body).map_err(|e| TicketError::Validator(e.to_string()))?;
        Ok(Ticket {
            kind: TDX_KIND.into(),
            bytes,
            expires_at,
        })
    }
}

#[cfg(test)]
mod tests {
    use tessera_attestation::provider::mock::{MockConfig, MockProvider};

    use super::*;

    const MOCK_POLICY: &str = include_str!("../../policies/mock.toml");

    /// The second line of defence: a `TdxValidator` that somehow holds a mock-root policy
    /// (which `new` refuses) still rejects a genuine mock-signed ticket, before verifying.
    #[test]
    fn a_tdx_validator_holding_a_mock_policy_still_rejects_a_mock_signed_quote() {
        let policy = Policy::from_toml_str(MOCK_POLICY).expect("mock policy");
        let forced = TdxValidator {
            pipeline: Pipeline::new(policy).expect("pipeline"),
        };
        let config = MockConfig::default();
        let now = config.valid_now();
        let provider = MockProvider::new(config).expect("mock provider");
        let collateral = provider.collateral().expect("collateral");
        let issuer = TdxTicketIssuer::new(Box::new(provider), collateral, "net".into(), 300);
        let key = [7u8; 32];
        let ticket = issuer.issue(key, None, now).expect("ticket");
        let ctx = PeerContext {
            peer_key: key,
            network_id: "net".into(),
            group_scope: None,
            now,
        };
        // The same ticket passes the mock validator: the refusal is the root, nothing else.
        MockTdxValidator::new(forced.policy().clone())
            .expect("mock validator")
            .validate(&ticket, &ctx)
            .expect("a genuine mock ticket passes the mock validator");
        let e = forced.validate(&ticket, &ctx).expect_err("fails closed");
        assert!(
            matches!(
                e,
                TicketError::Rejected {
                    check: "trust_root",
                    ..
                }
            ),
            "{e}"
        );
    }
}
