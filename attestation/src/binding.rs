//! Binding a quote to a peer (architecture.md §4.4).
//!
//! The TD puts `SHA-512("tessera/attest/v1" ‖ postcard(Claims))` into the 64 bytes of report
//! data. A verifier recomputes it from the claims sent next to the quote, compares all 64
//! bytes, and checks that the claims name the key of the authenticated connection, the
//! expected network (and group scope, if any), and that they are fresh. A quote replayed by
//! another key, for another network, or after its lifetime is rejected.
//!
//! IO contract: pure functions; `now` is a parameter.
use serde::{Deserialize, Serialize};

use crate::verify::format_unix;

/// Domain separation tag hashed before the claims.
pub const BINDING_DOMAIN: &[u8] = b"tessera/attest/v1";
/// How far in the future `issued_at` may be, to absorb clock differences between peers.
pub const CLOCK_SKEW_SECS_MAX: u64 = 30;
/// Longest network id accepted, in bytes.
pub const NETWORK_ID_LEN_MAX: usize = 128;
/// Largest claims JSON accepted, in bytes.
pub const CLAIMS_JSON_LEN_MAX: usize = 4096;

/// What a TD asserts about itself when it asks for a quote.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Claims {
    /// The TD's iroh peer key (ed25519 public key).
    pub peer_key: [u8; 32],
    /// The network (deployment) the TD belongs to.
    pub network_id: String,
    /// Optional group the quote is restricted to (a group id).
    pub group_scope: Option<[u8; 32]>,
    /// When the claims were made (Unix seconds).
    pub issued_at: u64,
    /// When they stop being valid (Unix seconds).
    pub expires_at: u64,
    /// Random nonce: two quotes never share report data.
    pub nonce: [u8; 32],
}

/// JSON form of [`Claims`]: byte strings as hex.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct ClaimsJson {
    peer_key: String,
    network_id: String,
    #[serde(default)]
    group_scope: Option<String>,
    issued_at: u64,
    expires_at: u64,
    nonce: String,
}

impl Claims {
    /// The 64 bytes of report data that commit to these claims.
    pub fn report_data(&self) -> [u8; 64] {
        let mut ctx = ring::digest::Context::new(&ring::digest::SHA512);
        ctx.update(BINDING_DOMAIN);
        // postcard of fixed arrays, a string, integers and an option cannot fail.
        ctx.update(&postcard::to_allocvec(self).unwrap_or_default());
        let mut out = [0u8; 64];
        out.copy_from_slice(ctx.finish().as_ref());
        out
    }

    /// JSON with hex byte strings (the `--claims` file of `tessera verify`).
    pub fn to_json(&self) -> String {
        let json = ClaimsJson {
            peer_key: hex::encode(self.peer_key),
            network_id: self.network_id.clone(),
            group_scope: self.group_scope.map(hex::encode),
            issued_at: self.issued_at,
            expires_at: self.expires_at,
            nonce: hex::encode(self.nonce),
        };
        serde_json::to_string_pretty(&json).unwrap_or_default()
    }

    /// Parses the JSON form.
    pub fn from_json(bytes: &[u8]) -> Result<Claims, BindingError> {
        if bytes.len() > CLAIMS_JSON_LEN_MAX {
            return Err(BindingError::ClaimsMalformed(format!(
                "{} bytes, at most {CLAIMS_JSON_LEN_MAX}",
                bytes.len()
            )));
        }
        let json: ClaimsJson = serde_json::from_slice(bytes)
            .map_err(|e| BindingError::ClaimsMalformed(e.to_string()))?;
        let group_scope = match &json.group_scope {
            Some(h) => Some(hex32("group_scope", h)?),
            None => None,
        };
        let claims = Claims {
            peer_key: hex32("peer_key", &json.peer_key)?,
            network_id: json.network_id,
            group_scope,
            issued_at: json.issued_at,
            expires_at: json.expires_at,
            nonce: hex32("nonce", &json.nonce)?,
        };
        claims.validate()?;
        Ok(claims)
    }

    /// Checks the limits of the claims themselves.
    pub fn validate(&self) -> Result<(), BindingError> {
        if self.network_id.len() > NETWORK_ID_LEN_MAX {
            return Err(BindingError::ClaimsMalformed(format!(
                "network_id is {} bytes, at most {NETWORK_ID_LEN_MAX}",
                self.network_id.len()
            )));
        }
        if self.expires_at < self.issued_at {
            return Err(BindingError::InvalidLifetime {
                issued_at: self.issued_at,
                expires_at: self.expires_at,
            });
        }
        Ok(())
    }
}

fn hex32(field: &str, s: &str) -> Result<[u8; 32], BindingError> {
    let mut out = [0u8; 32];
    hex::decode_to_slice(s, &mut out).map_err(|e| {
        BindingError::ClaimsMalformed(format!("{field}: expected 64 hex digits: {e}"))
    })?;
    Ok(out)
}

/// What the verifier knows independently of the quote: the key that authenticated the
/// connection and the network (and optionally group) it expects.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BindingContext {
    /// Key of the authenticated peer.
    pub peer_key: [u8; 32],
    /// Expected network id; `None` skips the check (offline audit of a single quote).
    pub network_id: Option<String>,
    /// Expected group scope; `None` accepts claims with any or no scope.
    pub group_scope: Option<[u8; 32]>,
}

/// The binding of a quote to its claims does not hold.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BindingError {
    /// Report data is not the hash of the presented claims.
    #[error("report data does not match the claims: expected {expected}, quote has {actual}")]
    ReportDataMismatch {
        /// Hash of the claims (hex).
        expected: String,
        /// Report data in the quote (hex).
        actual: String,
    },
    /// The claims name another key than the authenticated peer.
    #[error("claims are for peer key {actual}, but the peer authenticated as {expected}")]
    PeerKeyMismatch {
        /// Authenticated key (hex).
        expected: String,
        /// Key in the claims (hex).
        actual: String,
    },
    /// The claims are for another network.
    #[error("claims are for network {actual:?}, expected {expected:?}")]
    NetworkMismatch {
        /// Expected network.
        expected: String,
        /// Network in the claims.
        actual: String,
    },
    /// The claims are for another group.
    #[error("claims are scoped to group {actual}, expected {expected}")]
    GroupScopeMismatch {
        /// Expected group (hex).
        expected: String,
        /// Scope in the claims (hex, or "none").
        actual: String,
    },
    /// `issued_at` is further in the future than the skew allowance.
    #[error("claims issued in the future: issued_at {} > now {} + {skew_secs} s", format_unix(*issued_at), format_unix(*now))]
    IssuedInFuture {
        /// Claimed issue time.
        issued_at: u64,
        /// Verification time.
        now: u64,
        /// Allowance.
        skew_secs: u64,
    },
    /// The quote is older than the policy's `max_quote_age_secs`.
    #[error("quote too old: issued at {}, {age_secs} s before now, policy allows {max_age_secs} s", format_unix(*issued_at))]
    TooOld {
        /// Claimed issue time.
        issued_at: u64,
        /// Age at verification time.
        age_secs: u64,
        /// Policy maximum.
        max_age_secs: u64,
    },
    /// `expires_at` has passed.
    #[error("claims expired at {}, now is {}", format_unix(*expires_at), format_unix(*now))]
    Expired {
        /// Claimed expiry.
        expires_at: u64,
        /// Verification time.
        now: u64,
    },
    /// `expires_at` is before `issued_at`.
    #[error("claims expire ({expires_at}) before they are issued ({issued_at})")]
    InvalidLifetime {
        /// Claimed issue time.
        issued_at: u64,
        /// Claimed expiry.
        expires_at: u64,
    },
    /// The claims file does not parse or breaks a limit.
    #[error("claims malformed: {0}")]
    ClaimsMalformed(String),
}

impl BindingError {
    /// The name of the check that failed (as in the appraisal's check list).
    pub fn check_name(&self) -> &'static str {
        match self {
            BindingError::ReportDataMismatch { .. } | BindingError::ClaimsMalformed(_) => {
                "binding_report_data"
            }
            BindingError::PeerKeyMismatch { .. } => "binding_peer_key",
            BindingError::NetworkMismatch { .. } | BindingError::GroupScopeMismatch { .. } => {
                "binding_scope"
            }
            BindingError::IssuedInFuture { .. }
            | BindingError::TooOld { .. }
            | BindingError::Expired { .. }
            | BindingError::InvalidLifetime { .. } => "binding_freshness",
        }
    }
}

/// One binding check: its name and either a pass detail or the failure.
pub type BindingCheck = (&'static str, Result<String, BindingError>);

/// Runs every binding check (report data, peer key, network and group, freshness).
pub fn check_binding(
    report_data: &[u8; 64],
    claims: &Claims,
    context: &BindingContext,
    max_quote_age_secs: u64,
    now: u64,
) -> Vec<BindingCheck> {
    let expected = claims.report_data();
    let report = if expected == *report_data {
        Ok("report data = SHA-512(tessera/attest/v1 ‖ claims)".to_owned())
    } else {
        Err(BindingError::ReportDataMismatch {
            expected: hex::encode(expected),
            actual: hex::encode(report_data),
        })
    };
    let peer = if claims.peer_key == context.peer_key {
        Ok(format!("peer key {}", hex::encode(claims.peer_key)))
    } else {
        Err(BindingError::PeerKeyMismatch {
            expected: hex::encode(context.peer_key),
            actual: hex::encode(claims.peer_key),
        })
    };
    let network = check_scope(claims, context);
    let fresh = check_freshness(claims, max_quote_age_secs, now);
    vec![
        ("binding_report_data", report),
        ("binding_peer_key", peer),
        ("binding_scope", network),
        ("binding_freshness", fresh),
    ]
}

fn check_scope(claims: &Claims, context: &BindingContext) -> Result<String, BindingError> {
    if let Some(expected) = &context.network_id {
        if *expected != claims.network_id {
            return Err(BindingError::NetworkMismatch {
                expected: expected.clone(),
                actual: claims.network_id.clone(),
            });
        }
    }
    if let Some(expected) = context.group_scope {
        if claims.group_scope != Some(expected) {
            return Err(BindingError::GroupScopeMismatch {
                expected: hex::encode(expected),
                actual: claims
                    .group_scope
                    .map(hex::encode)
                    .unwrap_or_else(|| "none".to_owned()),
            });
        }
    }
    Ok(match &context.network_id {
        Some(n) => format!("network {n:?}"),
        None => format!("network {:?} (not checked)", claims.network_id),
    })
}

fn check_freshness(claims: &Claims, max_age_secs: u64, now: u64) -> Result<String, BindingError> {
    claims.validate()?;
    if claims.issued_at > now.saturating_add(CLOCK_SKEW_SECS_MAX) {
        return Err(BindingError::IssuedInFuture {
            issued_at: claims.issued_at,
            now,
            skew_secs: CLOCK_SKEW_SECS_MAX,
        });
    }
    let age_secs = now.saturating_sub(claims.issued_at);
    if age_secs > max_age_secs {
        return Err(BindingError::TooOld {
            issued_at: claims.issued_at,
            age_secs,
            max_age_secs,
        });
    }
    if claims.expires_at < now {
        return Err(BindingError::Expired {
            expires_at: claims.expires_at,
            now,
        });
    }
    Ok(format!(
        "issued {age_secs} s ago (max {max_age_secs} s), expires {}",
        format_unix(claims.expires_at)
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_767_225_600; // 2026-01-01T00:00:00Z

    fn claims() -> Claims {
        Claims {
            peer_key: [7; 32],
            network_id: "tessera-test".to_owned(),
            group_scope: None,
            issued_at: NOW - 10,
            expires_at: NOW + 3_600,
            nonce: [9; 32],
        }
    }

    fn context() -> BindingContext {
        BindingContext {
            peer_key: [7; 32],
            network_id: Some("tessera-test".to_owned()),
            group_scope: None,
        }
    }

    fn failures(checks: &[BindingCheck]) -> Vec<BindingError> {
        checks.iter().filter_map(|(_, r)| r.clone().err()).collect()
    }

    #[test]
    fn report_data_is_sha512_of_domain_and_postcard() {
        let c = claims();
        let mut input = BINDING_DOMAIN.to_vec();
        input.extend(postcard::to_allocvec(&c).unwrap());
        let digest = ring::digest::digest(&ring::digest::SHA512, &input);
        assert_eq!(c.report_data().as_slice(), digest.as_ref());
        // Every field is committed to.
        let mut other = c.clone();
        other.nonce[31] ^= 1;
        assert_ne!(other.report_data(), c.report_data());
    }

    #[test]
    fn matching_claims_pass_every_check() {
        let c = claims();
        let checks = check_binding(&c.report_data(), &c, &context(), 600, NOW);
        assert_eq!(checks.len(), 4);
        assert!(failures(&checks).is_empty(), "{checks:?}");
    }

    #[test]
    fn replay_by_another_key_is_rejected() {
        let c = claims();
        let mut ctx = context();
        ctx.peer_key = [8; 32];
        let errs = failures(&check_binding(&c.report_data(), &c, &ctx, 600, NOW));
        assert!(
            matches!(errs.as_slice(), [BindingError::PeerKeyMismatch { .. }]),
            "{errs:?}"
        );
    }

    #[test]
    fn other_claims_than_the_quoted_ones_are_rejected() {
        let c = claims();
        let mut forged = c.clone();
        forged.peer_key = [1; 32];
        let mut ctx = context();
        ctx.peer_key = [1; 32];
        let errs = failures(&check_binding(&c.report_data(), &forged, &ctx, 600, NOW));
        assert!(
            matches!(errs.as_slice(), [BindingError::ReportDataMismatch { .. }]),
            "{errs:?}"
        );
    }

    #[test]
    fn other_network_or_group_is_rejected() {
        let c = claims();
        let mut ctx = context();
        ctx.network_id = Some("prod".to_owned());
        let errs = failures(&check_binding(&c.report_data(), &c, &ctx, 600, NOW));
        assert!(matches!(
            errs.as_slice(),
            [BindingError::NetworkMismatch { .. }]
        ));
        let mut ctx = context();
        ctx.group_scope = Some([3; 32]);
        let errs = failures(&check_binding(&c.report_data(), &c, &ctx, 600, NOW));
        assert!(matches!(
            errs.as_slice(),
            [BindingError::GroupScopeMismatch { .. }]
        ));
        let mut scoped = c.clone();
        scoped.group_scope = Some([3; 32]);
        assert!(failures(&check_binding(
            &scoped.report_data(),
            &scoped,
            &ctx,
            600,
            NOW
        ))
        .is_empty());
    }

    #[test]
    fn freshness_edges() {
        let c = claims();
        let check = |c: &Claims, now: u64| {
            failures(&check_binding(&c.report_data(), c, &context(), 600, now))
        };
        // Exactly max age old: accepted; one second more: rejected.
        assert!(check(&c, c.issued_at + 600).is_empty());
        assert!(matches!(
            check(&c, c.issued_at + 601).as_slice(),
            [BindingError::TooOld { .. }]
        ));
        // Issued in the future within the skew: accepted; beyond: rejected.
        assert!(check(&c, c.issued_at - CLOCK_SKEW_SECS_MAX).is_empty());
        assert!(matches!(
            check(&c, c.issued_at - CLOCK_SKEW_SECS_MAX - 1).as_slice(),
            [BindingError::IssuedInFuture { .. }]
        ));
        // Expired claims.
        let mut short = c.clone();
        short.expires_at = c.issued_at + 5;
        assert!(check(&short, c.issued_at + 5).is_empty());
        assert!(matches!(
            check(&short, c.issued_at + 6).as_slice(),
            [BindingError::Expired { .. }]
        ));
        // Lifetime inverted.
        let mut inverted = c.clone();
        inverted.expires_at = c.issued_at - 1;
        assert!(matches!(
            check(&inverted, c.issued_at).as_slice(),
            [BindingError::InvalidLifetime { .. }]
        ));
    }

    #[test]
    fn json_round_trip_and_rejects_bad_hex() {
        let mut c = claims();
        c.group_scope = Some([5; 32]);
        assert_eq!(Claims::from_json(c.to_json().as_bytes()).unwrap(), c);
        let bad = c.to_json().replace(&hex::encode([7u8; 32]), "07");
        assert!(matches!(
            Claims::from_json(bad.as_bytes()),
            Err(BindingError::ClaimsMalformed(_))
        ));
        let unknown = c.to_json().replacen('{', "{\"extra\": 1,", 1);
        assert!(Claims::from_json(unknown.as_bytes()).is_err());
    }
}
