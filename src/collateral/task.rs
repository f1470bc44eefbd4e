//! The async driver of the collateral refresh: quotes this TD, fetches from the PCCS, hands
//! the result to the sans-IO [`Refresher`] and applies its [`Outcome`] (swap the shared
//! bundle, write the cache, publish the status, log). No decisions here: when to fetch and
//! what to install are the refresher's.
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tessera_attestation::{Policy, QuoteProvider};
use tokio::sync::watch;

use super::fetch::PccsClient;
use super::refresh::{Origin, Outcome, RefreshSettings, Refresher, Refusal};
use super::{cache, CollateralStatus, SharedCollateral};
use crate::clock::Clock;

/// Domain of the report data of the quote the refresh checks collateral against. That
/// quote never leaves the node; the tag keeps it from ever equalling a ticket's claims
/// hash.
pub(crate) const OWN_QUOTE_DOMAIN: &[u8] = b"tessera/collateral-check/v1";
/// Longest sleep between two looks at the schedule: a clock that jumps (a suspended VM)
/// is noticed within this.
const SCHEDULE_LOOK_SECS_MAX: u64 = 300;

/// Report data of the quote collateral is checked against: SHA-512 of
/// `OWN_QUOTE_DOMAIN`.
pub fn own_quote_report_data() -> [u8; 64] {
    let digest = ring::digest::digest(&ring::digest::SHA512, OWN_QUOTE_DOMAIN);
    let mut report_data = [0u8; 64];
    report_data.copy_from_slice(digest.as_ref());
    report_data
}

/// The node could not get a first bundle.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    /// No usable cache and the first fetch failed.
    #[error(
        "no collateral to start with: {cache}; and the first fetch from {url} failed: {fetch}"
    )]
    NoCollateral {
        /// The PCCS asked.
        url: String,
        /// What became of the cache.
        cache: String,
        /// Why the fetch brought nothing.
        fetch: Refusal,
    },
}

/// The refresh of one node's collateral from one PCCS.
pub struct PccsRefresh {
    refresher: Refresher,
    client: PccsClient,
    provider: Arc<dyn QuoteProvider + Send + Sync>,
    cache: Option<PathBuf>,
    shared: Option<SharedCollateral>,
    status: watch::Sender<CollateralStatus>,
}

impl PccsRefresh {
    /// A refresh from `client`'s server on `settings`, judging by `policies` against quotes
    /// of `provider` (this TD), keeping the last good bundle in `cache` if given.
    pub fn new(
        client: PccsClient,
        settings: RefreshSettings,
        policies: Vec<Policy>,
        provider: Arc<dyn QuoteProvider + Send + Sync>,
        cache: Option<PathBuf>,
    ) -> PccsRefresh {
        let refresher = Refresher::new(settings, policies);
        let (status, _) = watch::channel(refresher.status().clone());
        PccsRefresh {
            refresher,
            client,
            provider,
            cache,
            shared: None,
            status,
        }
    }

    /// Compares what the PCCS serves with the collateral peers have shown `watermarks`
    /// (the node's validators'; see [`Refresher::set_peer_watermarks`]).
    #[must_use]
    pub fn with_peer_watermarks(
        mut self,
        watermarks: Vec<Arc<tessera_attestation::CollateralWatermark>>,
    ) -> Self {
        self.refresher.set_peer_watermarks(watermarks);
        self
    }

    /// The status as it changes (for metrics).
    pub fn status(&self) -> watch::Receiver<CollateralStatus> {
        self.status.subscribe()
    }

    /// The decisions' state.
    pub fn refresher(&self) -> &Refresher {
        &self.refresher
    }

    /// The shared current bundle, once there is one.
    pub fn shared(&self) -> Option<SharedCollateral> {
        self.shared.clone()
    }

    /// Gets a first bundle at `now`: the cache if it verifies, else a fetch. The fetch the
    /// cache stands in for is still due at once ([`PccsRefresh::run`] does it).
    pub async fn start(&mut self, now: u64) -> Result<SharedCollateral, StartError> {
        let cache = self.load_cache(now).await;
        if let Some(shared) = &self.shared {
            return Ok(shared.clone());
        }
        match self.refresh_once(now).await {
            Outcome::Refused(fetch) => Err(StartError::NoCollateral {
                url: self.client.base().to_owned(),
                cache,
                fetch,
            }),
            Outcome::Installed { .. } | Outcome::Unchanged => match &self.shared {
                Some(shared) => Ok(shared.clone()),
                // Installed always sets the shared bundle (apply); not reachable.
                None => Err(StartError::NoCollateral {
                    url: self.client.base().to_owned(),
                    cache,
                    fetch: Refusal::NoPolicy,
                }),
            },
        }
    }

    /// Offers the cached bundle to the refresher at `now`. Says what became of it.
    pub async fn load_cache(&mut self, now: u64) -> String {
        let Some(path) = self.cache.clone() else {
            return "no cache".into();
        };
        let cached = match cache::read(&path) {
            Ok(Some(collateral)) => collateral,
            Ok(None) => return format!("no cached collateral in {}", path.display()),
            Err(e) => {
                tracing::warn!(error = %e, "cached collateral unreadable; ignored");
                return format!("cached collateral unreadable: {e}");
            }
        };
        let quote = match self.own_quote().await {
            Ok(quote) => quote,
            Err(e) => return format!("cannot quote this TD to check the cache: {e}"),
        };
        let outcome = self
            .refresher
            .handle_candidate(now, &quote, cached, Origin::Cache);
        let note = match &outcome {
            Outcome::Refused(r) => format!("cached collateral {} refused: {r}", path.display()),
            _ => format!("cached collateral {} used", path.display()),
        };
        self.apply(&outcome, Origin::Cache);
        note
    }

    /// One fetch at `now`, judged and applied.
    pub async fn refresh_once(&mut self, now: u64) -> Outcome {
        let outcome = match self.own_quote().await {
            Err(e) => self.refresher.handle_failure(now, Refusal::OwnQuote(e)),
            Ok(quote) => match self.client.fetch(&quote).await {
                Err(e) => self.refresher.handle_failure(now, Refusal::Fetch(e)),
                Ok(candidate) => {
                    self.refresher
                        .handle_candidate(now, &quote, candidate, Origin::Fetched)
                }
            },
        };
        self.apply(&outcome, Origin::Fetched);
        outcome
    }

    /// Fetches whenever the refresher says, forever (the node's runtime ends it).
    pub async fn run(mut self, clock: Clock) {
        loop {
            let now = clock();
            let due = self.refresher.next_fetch_at();
            if due > now {
                let pause = (due - now).min(SCHEDULE_LOOK_SECS_MAX);
                tokio::time::sleep(Duration::from_secs(pause)).await;
                continue;
            }
            self.refresh_once(now).await;
        }
    }

    async fn own_quote(&self) -> Result<Vec<u8>, String> {
        let report_data = own_quote_report_data();
        let provider = self.provider.clone();
        // configfs-tsm is file IO in the kernel: off the async threads.
        tokio::task::spawn_blocking(move || provider.quote(&report_data))
            .await
            .map_err(|e| e.to_string())?
            .map(|q| q.into_bytes())
            .map_err(|e| e.to_string())
    }

    fn apply(&mut self, outcome: &Outcome, origin: Origin) {
        let url = self.client.base().to_owned();
        let from = match origin {
            Origin::Fetched => "pccs",
            Origin::Cache => "cache",
        };
        match outcome {
            Outcome::Installed { replaced } => {
                if let Some(bundle) = self.refresher.current() {
                    match &self.shared {
                        Some(shared) => shared.replace(bundle.collateral.clone()),
                        None => {
                            self.shared = Some(SharedCollateral::new(bundle.collateral.clone()))
                        }
                    }
                    if let (Origin::Fetched, Some(path)) = (origin, &self.cache) {
                        if let Err(e) = cache::write(path, &bundle.collateral) {
                            tracing::warn!(error = %e, "cannot cache the new collateral; a restart during a PCCS outage would have none");
                        }
                    }
                    tracing::info!(
                        from,
                        %url,
                        collateral = %bundle.describe(),
                        replaced = %replaced.as_ref().map_or("nothing".to_owned(), |b| b.freshness.describe()),
                        "collateral installed"
                    );
                }
            }
            Outcome::Unchanged => {
                tracing::info!(from, %url, "collateral refreshed: unchanged");
            }
            Outcome::Refused(refusal) => {
                let kept = self
                    .refresher
                    .current()
                    .map_or("none".to_owned(), |b| b.describe());
                tracing::warn!(
                    from,
                    %url,
                    reason = refusal.reason(),
                    error = %refusal,
                    failures_in_a_row = self.refresher.failures_in_a_row(),
                    kept = %kept,
                    "collateral refresh brought nothing new; the last good collateral stays"
                );
            }
        }
        self.status.send_replace(self.refresher.status().clone());
    }
}
