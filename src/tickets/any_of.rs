//! `AnyOf`: accept a ticket that any of several validators of one kind accepts.
//!
//! This is the policy-rollover path (architecture.md §3): a group moving from policy A to policy B
//! first runs `AnyOf[A, B]` everywhere (a new GroupId, since the signature covers both),
//! then `B` alone once every member runs the new image.
use std::sync::Arc;

use super::{PeerContext, Ticket, TicketError, TicketValidator, Validated};

const ANY_OF_DOMAIN: &[u8] = b"tessera/tickets/any-of/v1";

/// Accepts what any alternative accepts.
pub struct AnyOf {
    kind: String,
    alternatives: Vec<Arc<dyn TicketValidator>>,
}

impl AnyOf {
    /// All alternatives must read the same ticket kind, and there must be at least one.
    pub fn new(alternatives: Vec<Arc<dyn TicketValidator>>) -> Result<Self, TicketError> {
        let Some(first) = alternatives.first() else {
            return Err(TicketError::Validator(
                "AnyOf needs at least one alternative".into(),
            ));
        };
        let kind = first.kind().to_string();
        if let Some(other) = alternatives.iter().find(|v| v.kind() != kind) {
            return Err(TicketError::Validator(format!(
                "AnyOf alternatives must read one ticket kind: {kind} and {}",
                other.kind()
            )));
        }
        Ok(Self { kind, alternatives })
    }
}

impl TicketValidator for AnyOf {
    fn kind(&self) -> &str {
        &self.kind
    }

    /// Covers every alternative's signature, in order.
    fn signature(&self) -> [u8; 32] {
        let mut h = ring::digest::Context::new(&ring::digest::SHA256);
        h.update(ANY_OF_DOMAIN);
        h.update(&(self.alternatives.len() as u64).to_le_bytes());
        for v in &self.alternatives {
            h.update(&v.signature());
        }
        let mut out = [0u8; 32];
        out.copy_from_slice(h.finish().as_ref());
        out
    }

    fn validate(&self, ticket: &Ticket, ctx: &PeerContext) -> Result<Validated, TicketError> {
        let mut errors = Vec::new();
        for v in &self.alternatives {
            match v.validate(ticket, ctx) {
                Ok(ok) => return Ok(ok),
                Err(e) => errors.push(e),
            }
        }
        Err(TicketError::NoAlternative(errors))
    }

    /// Changes when any alternative's does: each only grows, so their sum changes exactly
    /// when one of them does (wrapping only after 2^64 raises).
    fn generation(&self) -> u64 {
        self.alternatives
            .iter()
            .fold(0u64, |sum, v| sum.wrapping_add(v.generation()))
    }

    fn collateral_watermarks(&self) -> Vec<Arc<tessera_attestation::CollateralWatermark>> {
        self.alternatives
            .iter()
            .flat_map(|v| v.collateral_watermarks())
            .collect()
    }
}
