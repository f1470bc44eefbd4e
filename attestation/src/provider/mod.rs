//! Quote providers: where quotes come from.
//!
//! - [`configfs::ConfigfsTsmProvider`]: a real TD, through the Linux configfs-tsm report
//!   interface (Linux ≥ 6.7). Touches only its configfs directory.
//! - [`mock::MockProvider`] (feature `mock`): a test PKI built in code, for CI, the demo and
//!   every rejection path. Never chosen silently: callers name it.
pub mod configfs;
#[cfg(feature = "mock")]
pub mod mock;

use std::path::PathBuf;

/// A raw DCAP quote as produced by a provider.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Quote {
    bytes: Vec<u8>,
}

impl Quote {
    /// Wraps quote bytes.
    pub fn from_bytes(bytes: Vec<u8>) -> Quote {
        Quote { bytes }
    }

    /// The bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// The bytes, owned.
    pub fn into_bytes(self) -> Vec<u8> {
        self.bytes
    }
}

/// Which kind of provider made a quote.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ProviderKind {
    /// A real TD through configfs-tsm.
    Tdx,
    /// The mock provider (test PKI).
    Mock,
}

/// Something that produces TD quotes over caller-chosen report data.
///
/// Contract: the returned quote carries exactly `report_data` in its TD report (a provider
/// must not alter it; the mock's `wrong_report_data` knob exists to test that verifiers
/// notice). Calls may block (the TDX quoting path takes milliseconds to seconds); run them
/// off async executors.
pub trait QuoteProvider {
    /// Produces a quote over `report_data`.
    fn quote(&self, report_data: &[u8; 64]) -> Result<Quote, ProviderError>;
    /// Which kind of provider this is.
    fn kind(&self) -> ProviderKind;
}

/// A quote could not be produced.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProviderError {
    /// The kernel has no configfs-tsm report interface (not a TD, kernel older than 6.7,
    /// or configfs not mounted).
    #[error("TSM reports unavailable: {path} does not exist (not running in a TD, kernel without CONFIG_TSM_REPORTS (Linux >= 6.7), or configfs not mounted at /sys/kernel/config)")]
    TsmUnavailable {
        /// The report directory looked for.
        path: PathBuf,
    },
    /// The TSM provider is not TDX (e.g. SEV-SNP), so this is not a TD.
    #[error("not a TDX guest: TSM provider is {provider:?}, expected \"tdx_guest\"")]
    NotTdx {
        /// What `provider` read.
        provider: String,
    },
    /// Another writer used the same report entry concurrently.
    #[error("TSM report raced with another writer: generation moved from {before} to {after}")]
    Raced {
        /// Generation before our write.
        before: u64,
        /// Generation after reading the quote.
        after: u64,
    },
    /// The kernel returned no quote.
    #[error("TSM report returned an empty outblob")]
    EmptyQuote,
    /// A file system operation failed.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was attempted.
        op: &'static str,
        /// On which path.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// An attribute had unexpected content.
    #[error("unexpected content in {path}: {detail}")]
    BadAttribute {
        /// Which attribute.
        path: PathBuf,
        /// What was wrong.
        detail: String,
    },
    /// The mock provider could not build its PKI or quote.
    #[error("mock provider: {0}")]
    Mock(String),
}
