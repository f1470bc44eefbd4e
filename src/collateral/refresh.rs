//! The collateral refresh decisions, sans-IO: `now` (Unix seconds) and everything fetched or
//! read are inputs, decisions are outputs. No clock, no network, no file system here; the
//! driver (`task`) does the IO and applies the [`Outcome`].
//!
//! Calls: [`Refresher::next_fetch_at`] says when to fetch; the driver then reports what it
//! got with [`Refresher::handle_candidate`] (a bundle, fetched or from the cache) or
//! [`Refresher::handle_failure`] (no bundle), and installs the candidate if the outcome is
//! [`Outcome::Installed`].
//!
//! Peers: the validators' collateral watermarks ([`Refresher::set_peer_watermarks`]) hold
//! the newest collateral peers have shown. A fetch whose bundle is older than that (a PCCS
//! whose cache lags behind Intel's) is still installed if it is newer than the current
//! one, but counts as a failed fetch (`behind_peers`): peers would refuse this node's
//! tickets with it, so the refresh tries again after the shortest pause, not the interval.
//!
//! Schedule: every `interval_secs` after the last attempt; after a failure, again after
//! `retry_min_secs`, doubling up to `interval_secs`; and never later than
//! `expiry_margin_secs` before the current bundle stops verifying (its earliest expiry or
//! the policy's age limit), but then no more often than `retry_min_secs`, so that a server
//! that keeps serving the same old bundle is not hammered.
use std::sync::Arc;

use tessera_attestation::freshness::FreshnessError;
use tessera_attestation::{
    appraise, Collateral, CollateralFreshness, CollateralWatermark, Policy, TcbStatus, VerifyError,
};

use super::fetch::FetchError;
use super::{CollateralStatus, SourceKind};

/// Default `collateral_refresh_secs`: four hours. Intel reissues TCB Info and the PCK CRL
/// daily to monthly; a few fetches a day keep a node within a day of its peers.
pub(crate) const REFRESH_SECS_DEFAULT: u64 = 4 * 3600;
/// Smallest accepted `collateral_refresh_secs`.
pub(crate) const REFRESH_SECS_MIN: u64 = 60;
/// Largest accepted `collateral_refresh_secs` (a week: collateral lives about a month).
pub(crate) const REFRESH_SECS_MAX: u64 = 7 * 86_400;
/// How long before the current bundle stops verifying the refresh turns urgent.
pub(crate) const EXPIRY_MARGIN_SECS: u64 = 2 * 86_400;
/// Shortest pause between two fetches (after a failure, or while urgent).
pub(crate) const RETRY_MIN_SECS: u64 = 60;

/// When to fetch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RefreshSettings {
    /// Normal pause between fetches.
    pub interval_secs: u64,
    /// Fetch sooner once the current bundle is this close to no longer verifying.
    pub expiry_margin_secs: u64,
    /// Shortest pause between two fetches; the first retry after a failure.
    pub retry_min_secs: u64,
}

impl RefreshSettings {
    /// The defaults with a refresh every `interval_secs`.
    pub fn every(interval_secs: u64) -> RefreshSettings {
        RefreshSettings {
            interval_secs,
            expiry_margin_secs: EXPIRY_MARGIN_SECS,
            retry_min_secs: RETRY_MIN_SECS.min(interval_secs),
        }
    }
}

/// A bundle that verified this node's own quote, with what the schedule and the
/// replacement rule need to know of it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Bundle {
    /// The collateral.
    pub collateral: Collateral,
    /// Issue date of its oldest dated item (TCB Info, QE Identity, PCK CRL).
    pub issued_at: u64,
    /// When it stops verifying: its earliest expiry, or the policy's age limit.
    pub valid_until: u64,
    /// Where it stands in Intel's sequence, piece by piece.
    pub freshness: CollateralFreshness,
    /// This node's TCB status under it.
    pub tcb_status: TcbStatus,
}

impl Bundle {
    /// One line for logs.
    pub fn describe(&self) -> String {
        format!(
            "{} (TCB {:?}, oldest item issued {}, verifies until {})",
            self.freshness.describe(),
            self.tcb_status,
            tessera_attestation::verify::format_unix(self.issued_at),
            tessera_attestation::verify::format_unix(self.valid_until)
        )
    }
}

/// Verifies `own_quote` with `collateral` at `now` under each of `policies`, as this node's
/// own validator would (DCAP to the policy's trust root, then the policy; no binding: the
/// quote is not a ticket). Accepted if any policy accepts, like the validator's `AnyOf`;
/// otherwise the first policy's refusal.
pub fn assess(
    own_quote: &[u8],
    collateral: &Collateral,
    policies: &[Policy],
    now: u64,
) -> Result<Bundle, Refusal> {
    let mut first_error = None;
    for policy in policies {
        let appraisal = appraise(own_quote, collateral, policy, now, None);
        match (appraisal.outcome, appraisal.dcap) {
            (Ok(verified), Some(dcap)) => {
                return Ok(Bundle {
                    collateral: collateral.clone(),
                    issued_at: dcap.collateral_issued_at,
                    valid_until: verified.valid_until,
                    freshness: verified.collateral_freshness,
                    tcb_status: verified.tcb_status,
                })
            }
            // An accepted appraisal always has its DCAP result; not reachable.
            (Ok(_), None) => {}
            (Err(e), _) => {
                first_error.get_or_insert(e);
            }
        }
    }
    Err(first_error.map_or(Refusal::NoPolicy, Refusal::Unverified))
}

/// Where a candidate bundle came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Origin {
    /// Fetched from the PCCS now: counts as a fetch.
    Fetched,
    /// Read from the on-disk cache at start.
    Cache,
}

/// Why a fetch brought no new bundle; the last good one stays.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Refusal {
    /// The PCCS could not be reached, did not answer in time, or answered badly.
    #[error("fetch failed: {0}")]
    Fetch(#[from] FetchError),
    /// This TD could not quote, so nothing could be checked.
    #[error("cannot quote this TD to check the collateral against: {0}")]
    OwnQuote(String),
    /// The bundle does not verify this node's own quote (a bad signature, another PKI,
    /// expired, or a TCB the policy refuses): peers would refuse it too.
    #[error("it does not verify this node's own quote: {0}")]
    Unverified(VerifyError),
    /// The bundle verifies but is older than the current one: peers that have seen the
    /// current one would refuse it.
    #[error("it is older than the current collateral: {0}")]
    Older(FreshnessError),
    /// No policy to verify with (a config always names one).
    #[error("no policy to verify it with")]
    NoPolicy,
    /// The bundle verifies but is older than collateral peers have shown this node's
    /// validators: peers refuse this node's tickets with it. (It is still installed if it
    /// is newer than the current one.)
    #[error("it is older than collateral peers have shown (is the PCCS's cache behind?): {0}")]
    BehindPeers(FreshnessError),
}

impl Refusal {
    /// Short label for metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            Refusal::Fetch(e) => e.reason(),
            Refusal::OwnQuote(_) => "own_quote",
            Refusal::Unverified(_) => "unverified",
            Refusal::Older(_) => "older",
            Refusal::NoPolicy => "no_policy",
            Refusal::BehindPeers(_) => "behind_peers",
        }
    }
}

/// What became of a candidate or a failed fetch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The candidate is the current bundle now; install it.
    Installed {
        /// The bundle replaced, if there was one.
        replaced: Option<Box<Bundle>>,
    },
    /// The candidate is the current bundle already (the same place in every sequence).
    Unchanged,
    /// Nothing changes: the last good bundle (if any) stays.
    Refused(Refusal),
}

/// The state of the refresh: the current bundle, the schedule and the counters.
#[derive(Debug)]
pub struct Refresher {
    settings: RefreshSettings,
    policies: Vec<Policy>,
    /// The newest collateral peers have shown this node's validators.
    peers: Vec<Arc<CollateralWatermark>>,
    current: Option<Bundle>,
    last_attempt_at: Option<u64>,
    failures_in_a_row: u32,
    status: CollateralStatus,
}

impl Refresher {
    /// A refresher with no bundle yet, judging by `policies` (this node's).
    pub fn new(settings: RefreshSettings, policies: Vec<Policy>) -> Refresher {
        Refresher {
            settings,
            policies,
            peers: Vec::new(),
            current: None,
            last_attempt_at: None,
            failures_in_a_row: 0,
            status: CollateralStatus::new(SourceKind::Pccs),
        }
    }

    /// Compares fetched bundles with `watermarks` (the node's validators',
    /// `TicketValidator::collateral_watermarks`) too.
    pub fn set_peer_watermarks(&mut self, watermarks: Vec<Arc<CollateralWatermark>>) {
        self.peers = watermarks;
    }

    /// The current bundle.
    pub fn current(&self) -> Option<&Bundle> {
        self.current.as_ref()
    }

    /// The counters and the current bundle's dates.
    pub fn status(&self) -> &CollateralStatus {
        &self.status
    }

    /// Fetches that failed in a row since the last success.
    pub fn failures_in_a_row(&self) -> u32 {
        self.failures_in_a_row
    }

    /// When the next fetch is due (Unix seconds; at or before `now` means now). Before the
    /// first fetch: now (0).
    pub fn next_fetch_at(&self) -> u64 {
        let Some(last) = self.last_attempt_at else {
            return 0;
        };
        let s = &self.settings;
        let pause = if self.failures_in_a_row == 0 {
            s.interval_secs
        } else {
            // retry_min, doubling, at most the interval.
            let doublings = self.failures_in_a_row.saturating_sub(1).min(32);
            s.retry_min_secs
                .saturating_mul(1u64 << doublings)
                .min(s.interval_secs)
        };
        let mut at = last.saturating_add(pause);
        if let Some(current) = &self.current {
            let urgent = current.valid_until.saturating_sub(s.expiry_margin_secs);
            if urgent < at {
                at = urgent.max(last.saturating_add(s.retry_min_secs));
            }
        }
        at
    }

    /// Judges `candidate` (fetched now, or read from the cache) at `now` against this
    /// node's `own_quote` and the current bundle.
    pub fn handle_candidate(
        &mut self,
        now: u64,
        own_quote: &[u8],
        candidate: Collateral,
        origin: Origin,
    ) -> Outcome {
        let judged = match assess(own_quote, &candidate, &self.policies, now) {
            Err(refusal) => Err(refusal),
            Ok(bundle) => match &self.current {
                Some(current) if bundle.freshness == current.freshness => Ok(None),
                Some(current) => match bundle.freshness.check_not_older_than(&current.freshness) {
                    Ok(()) => Ok(Some(bundle)),
                    Err(e) => Err(Refusal::Older(e)),
                },
                None => Ok(Some(bundle)),
            },
        };
        match judged {
            Err(refusal) => self.refused(now, refusal, origin),
            Ok(new) => {
                if origin == Origin::Fetched {
                    let freshness = new.as_ref().or(self.current.as_ref()).map(|b| &b.freshness);
                    let behind = freshness
                        .and_then(|f| self.peers.iter().find_map(|w| w.check(f, now).err()));
                    if let Some(e) = behind {
                        tracing::warn!(error = %e, "the PCCS serves collateral older than peers have shown; fetching again soon");
                        self.refused(now, Refusal::BehindPeers(e), origin);
                    } else {
                        self.last_attempt_at = Some(now);
                        self.failures_in_a_row = 0;
                        self.status.fetches_ok = self.status.fetches_ok.saturating_add(1);
                        self.status.last_error = None;
                    }
                }
                match new {
                    None => Outcome::Unchanged,
                    Some(bundle) => {
                        self.status.issued_at = Some(bundle.issued_at);
                        self.status.valid_until = Some(bundle.valid_until);
                        let replaced = self.current.replace(bundle).map(Box::new);
                        Outcome::Installed { replaced }
                    }
                }
            }
        }
    }

    /// Records a fetch that brought no bundle at `now`.
    pub fn handle_failure(&mut self, now: u64, refusal: Refusal) -> Outcome {
        self.refused(now, refusal, Origin::Fetched)
    }

    fn refused(&mut self, now: u64, refusal: Refusal, origin: Origin) -> Outcome {
        // A refused cache file is no fetch: it neither delays nor counts as one.
        if origin == Origin::Fetched {
            self.last_attempt_at = Some(now);
            self.failures_in_a_row = self.failures_in_a_row.saturating_add(1);
            let count = self
                .status
                .fetch_failures
                .entry(refusal.reason())
                .or_insert(0);
            *count = count.saturating_add(1);
            self.status.last_error = Some(refusal.to_string());
        }
        Outcome::Refused(refusal)
    }
}

#[cfg(test)]
mod tests {
    use tessera_attestation::provider::mock::{MockConfig, MockProvider};
    use tessera_attestation::QuoteProvider;

    use super::*;

    const MOCK_POLICY: &str = include_str!("../../policies/mock.toml");
    const DAY: u64 = 86_400;

    struct Fixture {
        quote: Vec<u8>,
        now: u64,
        base: MockConfig,
    }

    fn fixture() -> Fixture {
        let base = MockConfig::default();
        let provider = MockProvider::new(base.clone()).expect("mock");
        Fixture {
            quote: provider.quote(&[0; 64]).expect("quote").into_bytes(),
            now: base.valid_now(),
            base,
        }
    }

    /// Collateral of the same mock PKI (same seed), TCB Info and QE Identity of evaluation
    /// data number `eval` issued at `issued_at`.
    fn collateral(base: &MockConfig, eval: u32, issued_at: u64) -> Collateral {
        MockProvider::new(base.clone().with_eval(eval, issued_at))
            .expect("mock")
            .collateral()
            .expect("collateral")
    }

    fn refresher() -> Refresher {
        let policy = Policy::from_toml_str(MOCK_POLICY).expect("policy");
        Refresher::new(RefreshSettings::every(4 * 3600), vec![policy])
    }

    #[test]
    fn a_verified_bundle_is_installed_and_the_same_again_is_unchanged() {
        let f = fixture();
        let mut r = refresher();
        assert_eq!(r.next_fetch_at(), 0, "the first fetch is due at once");
        let c = collateral(&f.base, 17, f.base.collateral_issued_at);
        let out = r.handle_candidate(f.now, &f.quote, c.clone(), Origin::Fetched);
        assert_eq!(out, Outcome::Installed { replaced: None });
        assert_eq!(r.current().map(|b| &b.collateral), Some(&c));
        assert_eq!(r.status().issued_at, Some(f.base.collateral_issued_at));
        assert_eq!(r.status().fetches_ok, 1);
        assert_eq!(r.next_fetch_at(), f.now + 4 * 3600);
        let out = r.handle_candidate(f.now + 10, &f.quote, c, Origin::Fetched);
        assert_eq!(out, Outcome::Unchanged);
        assert_eq!(r.status().fetches_ok, 2);
    }

    #[test]
    fn a_newer_bundle_replaces_and_an_older_one_is_refused_naming_the_piece() {
        let f = fixture();
        let mut r = refresher();
        let t = f.base.collateral_issued_at;
        let newer = collateral(&f.base, 18, t);
        r.handle_candidate(f.now, &f.quote, newer.clone(), Origin::Fetched);
        let older = collateral(&f.base, 17, t);
        match r.handle_candidate(f.now + 1, &f.quote, older, Origin::Fetched) {
            Outcome::Refused(Refusal::Older(e)) => {
                assert_eq!(
                    e.piece(),
                    tessera_attestation::freshness::CollateralPiece::TcbInfo
                )
            }
            other => panic!("expected an older-collateral refusal, got {other:?}"),
        }
        assert_eq!(r.current().map(|b| &b.collateral), Some(&newer), "kept");
        assert_eq!(r.status().fetch_failures.get("older"), Some(&1));
        let newest = collateral(&f.base, 19, t);
        match r.handle_candidate(f.now + 2, &f.quote, newest, Origin::Fetched) {
            Outcome::Installed { replaced: Some(b) } => assert_eq!(b.collateral, newer),
            other => panic!("expected the newest to be installed, got {other:?}"),
        }
    }

    #[test]
    fn a_bundle_with_a_bad_signature_is_refused_and_the_last_good_one_stays() {
        let f = fixture();
        let mut r = refresher();
        let good = collateral(&f.base, 17, f.base.collateral_issued_at);
        r.handle_candidate(f.now, &f.quote, good.clone(), Origin::Fetched);
        let mut bad = collateral(&f.base, 18, f.base.collateral_issued_at);
        bad.as_dcap_mut().tcb_info_signature[5] ^= 1;
        match r.handle_candidate(f.now + 1, &f.quote, bad, Origin::Fetched) {
            Outcome::Refused(Refusal::Unverified(e)) => {
                assert!(e.to_string().contains("TCB"), "{e}")
            }
            other => panic!("expected a refusal, got {other:?}"),
        }
        assert_eq!(r.current().map(|b| &b.collateral), Some(&good));
        assert_eq!(r.failures_in_a_row(), 1);
    }

    /// A refused cache file is not a fetch: the first fetch is still due at once.
    #[test]
    fn a_refused_cache_file_counts_as_no_fetch() {
        let f = fixture();
        let mut r = refresher();
        let mut tampered = collateral(&f.base, 17, f.base.collateral_issued_at);
        tampered.as_dcap_mut().qe_identity_signature[0] ^= 1;
        let out = r.handle_candidate(f.now, &f.quote, tampered, Origin::Cache);
        assert!(
            matches!(out, Outcome::Refused(Refusal::Unverified(_))),
            "{out:?}"
        );
        assert_eq!(r.next_fetch_at(), 0);
        assert!(r.status().fetch_failures.is_empty());
        assert!(r.current().is_none());
    }

    /// Failures back off from the shortest pause, doubling up to the interval; a success
    /// returns to the interval.
    #[test]
    fn failures_back_off_and_a_success_resets_the_schedule() {
        let f = fixture();
        let mut r = refresher();
        let t0 = f.now;
        r.handle_candidate(
            t0,
            &f.quote,
            collateral(&f.base, 17, f.base.collateral_issued_at),
            Origin::Fetched,
        );
        let timeout = || {
            Refusal::Fetch(FetchError::Timeout {
                url: "http://127.0.0.1:1/x".into(),
                timeout_ms: 10,
            })
        };
        let mut now = t0 + 4 * 3600;
        let mut pauses = Vec::new();
        for _ in 0..10 {
            r.handle_failure(now, timeout());
            let next = r.next_fetch_at();
            pauses.push(next - now);
            now = next;
        }
        assert_eq!(
            pauses,
            vec![60, 120, 240, 480, 960, 1920, 3840, 7680, 14400, 14400]
        );
        assert_eq!(r.status().fetch_failures.get("timeout"), Some(&10));
        assert!(r
            .status()
            .last_error
            .as_deref()
            .unwrap_or("")
            .contains("10 ms"));
        r.handle_candidate(
            now,
            &f.quote,
            collateral(&f.base, 17, f.base.collateral_issued_at),
            Origin::Fetched,
        );
        assert_eq!(r.next_fetch_at(), now + 4 * 3600);
        assert_eq!(r.status().last_error, None);
    }

    /// Peers have shown newer collateral than the PCCS serves (its cache lags): the
    /// bundle is still taken (it is newer than nothing), but the fetch counts as failed,
    /// names the piece, and comes again after the shortest pause; once the PCCS catches
    /// up the schedule is back to the interval.
    #[test]
    fn collateral_older_than_peers_have_shown_is_fetched_again_soon() {
        let f = fixture();
        let t = f.base.collateral_issued_at;
        let peers = Arc::new(CollateralWatermark::default());
        let mut r = refresher();
        r.set_peer_watermarks(vec![peers.clone()]);
        // A peer's ticket carried evaluation 18 (its validator raised the watermark).
        let seen = assess(&f.quote, &collateral(&f.base, 18, t), &r.policies, f.now)
            .expect("peer collateral verifies");
        peers
            .check_and_raise(&seen.freshness, f.now)
            .expect("raised");
        let stale = collateral(&f.base, 17, t);
        let out = r.handle_candidate(f.now, &f.quote, stale.clone(), Origin::Fetched);
        assert_eq!(
            out,
            Outcome::Installed { replaced: None },
            "better than none"
        );
        assert_eq!(r.failures_in_a_row(), 1);
        assert_eq!(r.status().fetch_failures.get("behind_peers"), Some(&1));
        let error = r.status().last_error.clone().unwrap_or_default();
        assert!(error.contains("peers") && error.contains("TCB"), "{error}");
        assert_eq!(
            r.next_fetch_at(),
            f.now + 60,
            "again after the shortest pause"
        );
        // The same stale bundle again: unchanged, still behind.
        let out = r.handle_candidate(f.now + 60, &f.quote, stale, Origin::Fetched);
        assert_eq!(out, Outcome::Unchanged);
        assert_eq!(r.failures_in_a_row(), 2);
        // The PCCS caught up.
        let caught_up = collateral(&f.base, 18, t);
        let out = r.handle_candidate(f.now + 180, &f.quote, caught_up, Origin::Fetched);
        assert!(
            matches!(out, Outcome::Installed { replaced: Some(_) }),
            "{out:?}"
        );
        assert_eq!(r.failures_in_a_row(), 0);
        assert_eq!(r.status().last_error, None);
        assert_eq!(r.next_fetch_at(), f.now + 180 + 4 * 3600);
    }

    /// Near the end of the current bundle's life the fetch comes sooner than the interval,
    /// but never more often than the shortest pause.
    #[test]
    fn the_refresh_turns_urgent_near_expiry_and_is_still_paced() {
        let f = fixture();
        let settings = RefreshSettings {
            interval_secs: 40 * DAY,
            expiry_margin_secs: 2 * DAY,
            retry_min_secs: 60,
        };
        let policy = Policy::from_toml_str(MOCK_POLICY).expect("policy");
        let mut r = Refresher::new(settings, vec![policy]);
        let c = collateral(&f.base, 17, f.base.collateral_issued_at);
        r.handle_candidate(f.now, &f.quote, c.clone(), Origin::Fetched);
        let until = r.current().map(|b| b.valid_until).expect("bundle");
        assert!(until < f.now + 30 * DAY, "the bundle lives under 30 days");
        assert_eq!(r.next_fetch_at(), until - 2 * DAY, "not the full interval");
        // Inside the margin the same bundle keeps coming back: fetch again after the pause.
        let late = until - DAY;
        assert_eq!(
            r.handle_candidate(late, &f.quote, c, Origin::Fetched),
            Outcome::Unchanged
        );
        assert_eq!(r.next_fetch_at(), late + 60);
    }
}
