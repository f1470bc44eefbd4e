//! Tickets (architecture.md §3): what a peer presents to prove it may bond, and the validators that
//! decide. A ticket is `(kind, bytes, expires_at)`; for TDX the bytes are a quote, its
//! collateral and the binding claims (`tdx`).
//!
//! **Contract.** A [`TicketValidator`] is a function of the ticket, the key the transport
//! authenticated, the binding context, `now`, and what the validator has learnt from the
//! verdicts it gave before (the TDX validators' collateral watermark: the newest collateral
//! accepted, older refused); no clock, no network. Its [`TicketValidator::signature`]
//! covers everything that decides acceptance, so members with different validators derive
//! different group ids; its [`TicketValidator::generation`] changes whenever what it has
//! learnt may withdraw an earlier verdict. [`Admission`] runs every validator of a group
//! on a peer's tickets and caches accepted verdicts (bounded, by ticket hash, until they
//! expire or a validator's generation changes). Validation costs about a millisecond of
//! CPU: async callers run [`Admission::admit`] on a blocking thread.
pub(crate) mod any_of;
pub(crate) mod tdx;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

pub use any_of::AnyOf;
#[cfg(feature = "mock-attestation")]
pub use tdx::MockTdxValidator;
pub use tdx::{TdxTicketIssuer, TdxValidator, TDX_KIND};

/// Largest ticket accepted (a TDX quote with its collateral is about 10–20 KiB).
pub const TICKET_BYTES_MAX: usize = 256 << 10;
/// Default lifetime of a member's ticket (renewed at half of it).
pub const TICKET_LIFETIME_SECS: u64 = 300;
/// Accepted verdicts kept by an [`Admission`] cache.
pub const ADMISSION_CACHE_MAX: usize = 1024;

pub use crate::clock::{clock_from, system_clock, Clock};

/// A credential a peer presents.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ticket {
    /// Which validator reads it (e.g. `"tdx"`).
    pub kind: String,
    /// The credential itself, opaque here and read by the validator of `kind` (for TDX:
    /// quote, collateral and claims); at most [`TICKET_BYTES_MAX`] bytes are accepted.
    pub bytes: Vec<u8>,
    /// Unix seconds after which the holder must present a fresh ticket.
    pub expires_at: u64,
}

/// Who presents the ticket, and where: what the ticket must be bound to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerContext {
    /// The key the transport authenticated (never a key the ticket merely claims).
    pub peer_key: [u8; 32],
    /// The network the verifier belongs to.
    pub network_id: String,
    /// The group the ticket is for, when tickets are scoped to one group.
    pub group_scope: Option<[u8; 32]>,
    /// Unix seconds.
    pub now: u64,
}

/// A ticket that passed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Validated {
    /// The kind of the ticket that passed (the validator's [`TicketValidator::kind`]).
    pub kind: String,
    /// Unix seconds after which the verdict no longer holds.
    pub expires_at: u64,
    /// What was established, for logs (e.g. TCB status and matched profile).
    pub detail: String,
}

/// Why a peer's tickets are refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TicketError {
    /// The peer presented no ticket of a kind one of the group's validators reads.
    #[error("no {kind} ticket presented")]
    Missing {
        /// The ticket kind that was required.
        kind: String,
    },
    /// The ticket cannot be read: over [`TICKET_BYTES_MAX`], or its bytes do not decode.
    #[error("{kind} ticket is malformed: {reason}")]
    Malformed {
        /// The ticket's kind.
        kind: String,
        /// What does not decode, or the size.
        reason: String,
    },
    /// The ticket decoded but failed a verification check (quote signature, collateral,
    /// policy, binding to the peer's key, ...).
    #[error("{kind} ticket rejected at check `{check}`: {reason}")]
    Rejected {
        /// The ticket's kind.
        kind: String,
        /// The failed check's short name; also the refusal code ([`TicketError::code`]).
        check: &'static str,
        /// Why the check failed.
        reason: String,
    },
    /// The ticket's own `expires_at` is not after `now`: the peer must present a fresh one.
    #[error("{kind} ticket expired at {expires_at} (now {now})")]
    Expired {
        /// The ticket's kind.
        kind: String,
        /// The ticket's expiry, Unix seconds.
        expires_at: u64,
        /// The verifier's time, Unix seconds.
        now: u64,
    },
    /// No alternative of an [`AnyOf`] accepted the ticket: each one's refusal, in order.
    #[error("no alternative accepts the ticket: {}", .0.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("; "))]
    NoAlternative(Vec<TicketError>),
    /// Not the ticket's fault: a validator could not be built (a policy with the wrong
    /// trust root, an [`AnyOf`] without alternatives or of mixed kinds), or an issuer
    /// could not make a ticket (no randomness, the quote provider failed).
    #[error("validator unusable: {0}")]
    Validator(String),
}

impl TicketError {
    /// A short reason code for metrics and refusal counters.
    pub fn code(&self) -> &'static str {
        match self {
            TicketError::Missing { .. } => "missing",
            TicketError::Malformed { .. } => "malformed",
            TicketError::Rejected { check, .. } => check,
            TicketError::Expired { .. } => "expired",
            TicketError::NoAlternative(_) => "no_alternative",
            TicketError::Validator(_) => "validator",
        }
    }
}

/// Decides whether a ticket admits a peer.
pub trait TicketValidator: Send + Sync {
    /// The ticket kind this validator reads.
    fn kind(&self) -> &str;
    /// Stable digest of everything that decides acceptance (architecture.md §3); part of the GroupId.
    fn signature(&self) -> [u8; 32];
    /// Checks `ticket` for the peer in `ctx`.
    fn validate(&self, ticket: &Ticket, ctx: &PeerContext) -> Result<Validated, TicketError>;
    /// A number that changes whenever this validator's state changes so that an earlier
    /// verdict may no longer hold (e.g. newer collateral was accepted, so older collateral
    /// is now refused). Caches of verdicts re-validate when it changes. A stateless
    /// validator keeps the default, 0.
    fn generation(&self) -> u64 {
        0
    }
    /// The collateral watermarks this validator keeps (the newest collateral it has
    /// accepted from peers; none for a validator that keeps none). The node's collateral
    /// refresh compares what its PCCS serves with them: collateral older than peers have
    /// shown would get this node's own tickets refused.
    fn collateral_watermarks(&self) -> Vec<Arc<tessera_attestation::CollateralWatermark>> {
        Vec::new()
    }
}

/// Accepted verdicts of one set of tickets, and the validators' generation they were
/// given at.
struct CachedVerdicts {
    verdicts: Vec<Validated>,
    generation: u64,
}

/// Every validator of a group, with a bounded cache of accepted verdicts.
pub struct Admission {
    validators: Vec<Arc<dyn TicketValidator>>,
    cache: Mutex<HashMap<[u8; 32], CachedVerdicts>>,
    cache_max: usize,
}

impl Admission {
    /// Admission by `validators`: a peer is admitted when each of them accepts one of the
    /// peer's tickets of its kind; with no validators, every peer is. Their order counts:
    /// their signatures, in order, go into the group id ([`Admission::signatures`]).
    pub fn new(validators: Vec<Arc<dyn TicketValidator>>) -> Self {
        Self {
            validators,
            cache: Mutex::new(HashMap::new()),
            cache_max: ADMISSION_CACHE_MAX,
        }
    }

    /// The validators' signatures in order (inputs of the GroupId).
    pub fn signatures(&self) -> Vec<[u8; 32]> {
        self.validators.iter().map(|v| v.signature()).collect()
    }

    /// Admits a peer when every validator accepts one of its tickets of the validator's
    /// kind. Returns the verdicts; the peer must re-present tickets before the earliest
    /// `expires_at`. CPU-heavy on a cache miss: call it off the async executor.
    pub fn admit(
        &self,
        tickets: &[Ticket],
        ctx: &PeerContext,
    ) -> Result<Vec<Validated>, TicketError> {
        let key = cache_key(tickets, ctx, &self.signatures());
        // Read before validating: a verdict stored with the generation from before a
        // concurrent raise is re-validated on its next use, never served stale.
        let generation = self.generation();
        if let Some(hit) = self.lock().get(&key) {
            if hit.generation == generation && hit.verdicts.iter().all(|v| v.expires_at > ctx.now) {
                return Ok(hit.verdicts.clone());
            }
        }
        let mut verdicts = Vec::with_capacity(self.validators.len());
        for validator in &self.validators {
            let kind = validator.kind();
            let mut mine = tickets.iter().filter(|t| t.kind == kind).peekable();
            if mine.peek().is_none() {
                return Err(TicketError::Missing {
                    kind: kind.to_string(),
                });
            }
            let mut last_error = None;
            let mut accepted = None;
            for ticket in mine {
                match check_envelope(ticket, ctx).and_then(|()| validator.validate(ticket, ctx)) {
                    Ok(v) => {
                        accepted = Some(v);
                        break;
                    }
                    Err(e) => last_error = Some(e),
                }
            }
            match accepted {
                Some(v) => verdicts.push(v),
                None => {
                    return Err(last_error.unwrap_or(TicketError::Missing {
                        kind: kind.to_string(),
                    }))
                }
            }
        }
        let mut cache = self.lock();
        if cache.len() >= self.cache_max {
            cache.retain(|_, c| {
                c.generation == generation && c.verdicts.iter().all(|v| v.expires_at > ctx.now)
            });
            if cache.len() >= self.cache_max {
                cache.clear();
            }
        }
        cache.insert(
            key,
            CachedVerdicts {
                verdicts: verdicts.clone(),
                generation,
            },
        );
        Ok(verdicts)
    }

    /// The validators' generations combined: each only grows, so the sum changes when any
    /// of them does.
    fn generation(&self) -> u64 {
        self.validators
            .iter()
            .fold(0u64, |sum, v| sum.wrapping_add(v.generation()))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<[u8; 32], CachedVerdicts>> {
        self.cache.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn check_envelope(ticket: &Ticket, ctx: &PeerContext) -> Result<(), TicketError> {
    if ticket.bytes.len() > TICKET_BYTES_MAX {
        return Err(TicketError::Malformed {
            kind: ticket.kind.clone(),
            reason: format!("{} bytes exceeds {TICKET_BYTES_MAX}", ticket.bytes.len()),
        });
    }
    if ticket.expires_at <= ctx.now {
        return Err(TicketError::Expired {
            kind: ticket.kind.clone(),
            expires_at: ticket.expires_at,
            now: ctx.now,
        });
    }
    Ok(())
}

fn cache_key(tickets: &[Ticket], ctx: &PeerContext, signatures: &[[u8; 32]]) -> [u8; 32] {
    let mut h = ring::digest::Context::new(&ring::digest::SHA256);
    let mut field = |b: &[u8]| {
        h.update(&(b.len() as u64).to_le_bytes());
        h.update(b);
    };
    field(b"tessera/admission-cache/v1");
    for s in signatures {
        field(s);
    }
    field(&ctx.peer_key);
    field(ctx.network_id.as_bytes());
    field(ctx.group_scope.as_ref().map_or(&[][..], |s| &s[..]));
    for t in tickets {
        field(t.kind.as_bytes());
        field(&t.bytes);
        field(&t.expires_at.to_le_bytes());
    }
    let mut out = [0u8; 32];
    out.copy_from_slice(h.finish().as_ref());
    out
}

#[cfg(test)]
mod tests;
