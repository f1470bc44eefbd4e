//! TDX tickets: a quote whose report data binds the peer's key (DESIGN §4.4), the DCAP
//! collateral to verify it with, and the claims. Collateral is signed by the platform
//! vendor's PKI, so receiving it from the peer itself is safe: the verifier checks it
//! against its own trust root.
//!
//! [`TdxValidator`] runs the attestation crate's whole pipeline with one policy;
//! [`MockTdxValidator`] is the same validator with a policy that trusts the mock root, for
//! tests and the demo — there is no separate "mock" code path to get wrong.
use serde::{Deserialize, Serialize};
use tessera_attestation::{
    validator_digest, verify, Binding, BindingContext, Claims, Collateral, Policy, QuoteProvider,
    TrustRoot,
};

use super::{PeerContext, Ticket, TicketError, TicketValidator, Validated};

/// Ticket kind of TDX quotes.
pub const TDX_KIND: &str = "tdx";

#[derive(Serialize, Deserialize)]
struct TdxTicketBody {
    quote: Vec<u8>,
    /// Collateral in dcap-qvl's JSON form.
    collateral: Vec<u8>,
    claims: Claims,
}

/// Validates TDX tickets against one policy.
pub struct TdxValidator {
    policy: Policy,
    signature: [u8; 32],
}

impl TdxValidator {
    pub fn new(policy: Policy) -> Result<Self, TicketError> {
        let signature =
            validator_digest(&policy).map_err(|e| TicketError::Validator(e.to_string()))?;
        Ok(Self { policy, signature })
    }

    pub fn policy(&self) -> &Policy {
        &self.policy
    }
}

impl TicketValidator for TdxValidator {
    fn kind(&self) -> &str {
        TDX_KIND
    }

    fn signature(&self) -> [u8; 32] {
        self.signature
    }

    fn validate(&self, ticket: &Ticket, ctx: &PeerContext) -> Result<Validated, TicketError> {
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
        let verified = verify(
            &body.quote,
            &collateral,
            &self.policy,
            ctx.now,
            Some(binding),
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
}

/// A [`TdxValidator`] whose policy trusts the mock root. Refuses a policy that trusts
/// Intel's root, so a test set-up cannot silently run against production trust.
pub struct MockTdxValidator;

impl MockTdxValidator {
    #[allow(clippy::new_ret_no_self)]
    pub fn new(policy: Policy) -> Result<TdxValidator, TicketError> {
        if policy.trust_root != TrustRoot::Mock {
            return Err(TicketError::Validator(format!(
                "the mock validator needs a policy with trust_root = \"mock\", policy {} trusts {}",
                policy.name, policy.trust_root
            )));
        }
        TdxValidator::new(policy)
    }
}

/// Makes a node's TDX tickets: fresh claims bound to its key, a quote over them, and the
/// collateral that verifies the quote.
pub struct TdxTicketIssuer {
    provider: Box<dyn QuoteProvider + Send + Sync>,
    collateral: Collateral,
    network_id: String,
    lifetime_secs: u64,
}

impl TdxTicketIssuer {
    pub fn new(
        provider: Box<dyn QuoteProvider + Send + Sync>,
        collateral: Collateral,
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
            collateral: self.collateral.to_json().into_bytes(),
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
