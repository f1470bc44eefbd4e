//! The DCAP collateral of this node's own quotes: where it comes from, when it is replaced,
//! and the current bundle that every new ticket carries (architecture.md §4.2, §12, §13).
//!
//! Collateral expires (TCB Info and the PCK CRL after about a month), and every validator
//! refuses collateral older than the newest it has accepted (`tessera_attestation::
//! freshness`). A node that kept the bundle it started with would be refused by all its
//! peers on the same day, so a node configured with `pccs_url` fetches a new bundle every
//! `collateral_refresh_secs`, and more often once the current one nears its expiry or its
//! policy's age limit. `collateral_file` (air-gapped) is read once, as before.
//!
//! This module owns:
//! - `refresh`: the decisions, sans-IO with `now` as input: when the next fetch is due,
//!   and whether a fetched or cached bundle is installed. One is installed only if it
//!   verifies this node's own quote under its own policies and trust root (the verification
//!   a peer runs) and is no older, piece by piece, than the one it replaces; otherwise the
//!   last good one is kept and the refusal says why.
//! - `fetch`: the PCCS client (HTTP GET with a timeout on every request and a bound on
//!   every answer), speaking the protocol of `tessera_attestation::pccs`.
//! - [`cache`]: the last good bundle in the data directory (written atomically, mode 0600),
//!   read at start and verified again like a fetched one, never trusted as it is.
//! - `task`: the thin async driver that quotes, fetches, asks `refresh` and applies its
//!   answer (swap the shared bundle, write the cache, publish the status, log).
//! - [`SharedCollateral`]: the current bundle, read by the ticket issuer for every ticket.
//!
//! It must not: contact any server but the one `pccs_url` names; install anything it has
//! not verified against this node's own quote; make decisions in the async driver.
use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use tessera_attestation::Collateral;

pub mod cache;
pub(crate) mod fetch;
pub(crate) mod refresh;
pub(crate) mod task;

pub use fetch::{FetchError, PccsClient};
pub use refresh::{assess, Bundle, Origin, Outcome, RefreshSettings, Refresher, Refusal};
pub use task::{own_quote_report_data, PccsRefresh, StartError};

/// The collateral bundle this node presents now, shared between the refresh task (which
/// replaces it) and the ticket issuer (which puts it in every new ticket). Tickets already
/// issued keep the bundle they were made with until they are renewed (at half their
/// lifetime).
#[derive(Clone, Debug)]
pub struct SharedCollateral {
    current: Arc<RwLock<Arc<Collateral>>>,
}

impl SharedCollateral {
    /// A shared bundle starting with `collateral`.
    pub fn new(collateral: Collateral) -> SharedCollateral {
        SharedCollateral {
            current: Arc::new(RwLock::new(Arc::new(collateral))),
        }
    }

    /// The current bundle.
    pub fn current(&self) -> Arc<Collateral> {
        // A writer only swaps an Arc: a poisoned lock still holds a whole bundle.
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Makes `collateral` the bundle of every ticket issued from now on.
    pub fn replace(&self, collateral: Collateral) {
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(collateral);
    }
}

/// Where the current bundle came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SourceKind {
    /// `collateral_file`, read once.
    File,
    /// The mock provider's own collateral (`attestation = "mock"` without `pccs_url`).
    Mock,
    /// `pccs_url`, refreshed.
    Pccs,
}

impl SourceKind {
    /// Label for logs and metrics.
    pub fn name(self) -> &'static str {
        match self {
            SourceKind::File => "file",
            SourceKind::Mock => "mock",
            SourceKind::Pccs => "pccs",
        }
    }
}

/// What the metrics and logs say about the collateral: published by the refresh task (or
/// once at start for a file), read by `/metrics`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CollateralStatus {
    /// Where the bundle comes from.
    pub source: SourceKind,
    /// Issue date of the oldest dated item of the current bundle (TCB Info, QE Identity,
    /// PCK CRL), when it verified this node's own quote.
    pub issued_at: Option<u64>,
    /// When the current bundle stops verifying: its earliest expiry or its policy's age
    /// limit, whichever comes first.
    pub valid_until: Option<u64>,
    /// Fetches whose bundle was installed, or equal to the current one.
    pub fetches_ok: u64,
    /// Fetches that failed or whose bundle was refused, by [`Refusal::reason`].
    pub fetch_failures: BTreeMap<&'static str, u64>,
    /// Why the last fetch failed, while it has not succeeded since.
    pub last_error: Option<String>,
}

impl CollateralStatus {
    /// A status for `source` with nothing fetched yet.
    pub fn new(source: SourceKind) -> CollateralStatus {
        CollateralStatus {
            source,
            issued_at: None,
            valid_until: None,
            fetches_ok: 0,
            fetch_failures: BTreeMap::new(),
            last_error: None,
        }
    }

    /// A status for a bundle that does not change (a file, the mock's own).
    pub fn fixed(source: SourceKind, bundle: Option<&Bundle>) -> CollateralStatus {
        CollateralStatus {
            issued_at: bundle.map(|b| b.issued_at),
            valid_until: bundle.map(|b| b.valid_until),
            ..CollateralStatus::new(source)
        }
    }
}
