//! A small bounded cache of verification verdicts, keyed by what decides them.
//!
//! Verification costs about a millisecond of CPU (see `docs/benchmarks.md`); peers re-send
//! the same quote on every bond. An entry is keyed by SHA-256 over the quote, the
//! collateral, the policy digest and (when checked) the claims and binding context, and is
//! valid until the verdict's `valid_until` (earliest collateral or claims expiry). Only
//! accepted verdicts are cached: a rejection is cheap to repeat and may be transient.
//!
//! The cache never serves a verdict the verifier would now refuse for stale collateral:
//! [`VerificationCache::get`] takes the verifier's [`CollateralWatermark`] and skips an
//! entry whose collateral is older than the newest accepted since it was stored (architecture.md
//! §13). Without that check one cached verdict would keep pre-revocation collateral
//! acceptable until its nextUpdate, which is what the watermark exists to stop.
//!
//! IO contract: no clock; `now` is a parameter.
use std::collections::HashMap;

use crate::binding::BindingContext;
use crate::freshness::CollateralWatermark;
use crate::pipeline::{Binding, VerifiedQuote};
use crate::policy::Policy;
use crate::verify::Collateral;

/// Default bound on the number of entries.
pub const CACHE_ENTRIES_MAX: usize = 1024;

/// Key of a cache entry: SHA-256 over every input of the verdict.
pub type CacheKey = [u8; 32];

/// Bounded verdict cache. Not synchronized: wrap it in a mutex to share it.
#[derive(Debug)]
pub struct VerificationCache {
    entries: HashMap<CacheKey, VerifiedQuote>,
    entries_max: usize,
}

impl Default for VerificationCache {
    fn default() -> Self {
        VerificationCache::new(CACHE_ENTRIES_MAX)
    }
}

impl VerificationCache {
    /// A cache holding at most `entries_max` verdicts (at least one).
    pub fn new(entries_max: usize) -> VerificationCache {
        VerificationCache {
            entries: HashMap::new(),
            entries_max: entries_max.max(1),
        }
    }

    /// The key for a verification.
    pub fn key(
        quote: &[u8],
        collateral: &Collateral,
        policy: &Policy,
        binding: Option<Binding<'_>>,
    ) -> CacheKey {
        let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
        let mut field = |bytes: &[u8]| {
            ctx.update(&(bytes.len() as u64).to_le_bytes());
            ctx.update(bytes);
        };
        field(b"tessera/verify-cache/v1");
        field(quote);
        field(&collateral.canonical_bytes());
        field(&policy.digest());
        match binding {
            None => field(b"no binding"),
            Some(b) => {
                field(&postcard::to_allocvec(b.claims).unwrap_or_default());
                let BindingContext {
                    peer_key,
                    network_id,
                    group_scope,
                } = b.context;
                field(peer_key);
                field(network_id.as_deref().unwrap_or("\u{0}any").as_bytes());
                field(group_scope.as_ref().map(|g| g.as_slice()).unwrap_or(b"any"));
            }
        }
        let mut out = [0u8; 32];
        out.copy_from_slice(ctx.finish().as_ref());
        out
    }

    /// The cached verdict for `key`, if it is still valid at `now` and its collateral is not
    /// older than the newest `watermark` has accepted since.
    pub fn get(
        &self,
        key: &CacheKey,
        now: u64,
        watermark: &CollateralWatermark,
    ) -> Option<&VerifiedQuote> {
        self.entries
            .get(key)
            .filter(|v| now <= v.valid_until)
            .filter(|v| watermark.check(&v.collateral_freshness, now).is_ok())
    }

    /// Stores an accepted verdict. When full, drops expired entries, then the entry that
    /// expires first.
    pub fn insert(&mut self, key: CacheKey, verdict: VerifiedQuote, now: u64) {
        if now > verdict.valid_until {
            return;
        }
        if self.entries.len() >= self.entries_max && !self.entries.contains_key(&key) {
            self.entries.retain(|_, v| now <= v.valid_until);
            if self.entries.len() >= self.entries_max {
                let first = self
                    .entries
                    .iter()
                    .min_by_key(|(_, v)| v.valid_until)
                    .map(|(k, _)| *k);
                if let Some(k) = first {
                    self.entries.remove(&k);
                }
            }
        }
        self.entries.insert(key, verdict);
        debug_assert!(self.entries.len() <= self.entries_max);
    }

    /// Number of entries (valid or not yet evicted).
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the cache is empty.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The bound.
    pub fn entries_max(&self) -> usize {
        self.entries_max
    }
}
