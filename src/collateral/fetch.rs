//! The PCCS client: GETs the four collateral items of this platform from the one server
//! `pccs_url` names, each under a timeout and a bound on the answer, and assembles them with
//! `tessera_attestation::pccs`. Everything it returns is untrusted until `refresh` has
//! verified it.
//!
//! Transport: reqwest (already in the tree through iroh), HTTP/1.1, for `http://` and
//! `https://`; TLS by rustls on ring with the platform verifier (the system's CA store). No
//! proxies from the environment, no redirects, no connection kept between fetches (they
//! are hours apart). It must not contact any other host, except Intel's CRL distribution
//! point for the root CA CRL when `pccs_url` is Intel's PCS itself, which serves none.
use std::sync::Arc;
use std::time::Duration;

use tessera_attestation::pccs::{
    root_ca_crl_der, root_ca_crl_distribution_point, CollateralRequest, PccsAnswer, PccsError,
    PccsItem, INTEL_PCS_URL, PCCS_ANSWER_BYTES_MAX,
};
use tessera_attestation::Collateral;

/// Default bound on one request (connect, send, whole answer).
pub(crate) const FETCH_TIMEOUT_SECS_DEFAULT: u64 = 30;
/// Most headers kept from one answer.
const ANSWER_HEADERS_MAX: usize = 64;

/// A fetch that brought no collateral. Grouped by fault: the server (timeout, transport,
/// size, answers, via [`PccsError`]), this node (its quote, its HTTP client).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FetchError {
    /// No complete answer within the timeout.
    #[error("{url}: no complete answer within {timeout_ms} ms")]
    Timeout {
        /// What was asked.
        url: String,
        /// The bound.
        timeout_ms: u64,
    },
    /// Connection refused or broken, TLS failure, malformed HTTP.
    #[error("{url}: {detail}")]
    Transport {
        /// What was asked.
        url: String,
        /// What went wrong.
        detail: String,
    },
    /// The answer is larger than [`PCCS_ANSWER_BYTES_MAX`].
    #[error("{url}: answer larger than {limit} bytes")]
    TooLarge {
        /// What was asked.
        url: String,
        /// The bound.
        limit: usize,
    },
    /// The answers do not make collateral (or the quote names no platform).
    #[error(transparent)]
    Pccs(#[from] PccsError),
    /// The HTTP client could not be built.
    #[error("cannot build the HTTP client: {0}")]
    Client(String),
}

impl FetchError {
    /// Short label for metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            FetchError::Timeout { .. } => "timeout",
            FetchError::Transport { .. } => "transport",
            FetchError::TooLarge { .. } => "too_large",
            FetchError::Pccs(PccsError::Status { .. }) => "http_status",
            FetchError::Pccs(PccsError::Quote(_)) => "own_quote",
            FetchError::Pccs(_) => "malformed",
            FetchError::Client(_) => "client",
        }
    }
}

/// A client for one PCCS (or Intel's PCS).
#[derive(Clone, Debug)]
pub struct PccsClient {
    base: String,
    http: reqwest::Client,
    timeout: Duration,
}

impl PccsClient {
    /// A client for the server at `base` (an `http://` or `https://` URL), with `timeout`
    /// on every request.
    pub fn new(base: &str, timeout: Duration) -> Result<PccsClient, FetchError> {
        use rustls_platform_verifier::BuilderVerifierExt;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| FetchError::Client(e.to_string()))?
            .with_platform_verifier()
            .map_err(|e| FetchError::Client(format!("TLS verifier: {e}")))?
            .with_no_client_auth();
        let http = reqwest::Client::builder()
            .tls_backend_preconfigured(tls)
            .no_proxy()
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(timeout)
            .timeout(timeout)
            // Fetches are hours apart, and the first one may run on a runtime of its own.
            .pool_max_idle_per_host(0)
            .user_agent(concat!("tessera/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| FetchError::Client(e.to_string()))?;
        Ok(PccsClient {
            base: base.to_owned(),
            http,
            timeout,
        })
    }

    /// The server's base URL.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// Fetches the collateral for the platform that made `own_quote`.
    pub async fn fetch(&self, own_quote: &[u8]) -> Result<Collateral, FetchError> {
        let request = CollateralRequest::for_quote(own_quote)?;
        let urls = request.urls(&self.base);
        let pck_crl = self.get(PccsItem::PckCrl, &urls.pck_crl).await?;
        let tcb_info = self.get(PccsItem::TcbInfo, &urls.tcb_info).await?;
        let qe_identity = self.get(PccsItem::QeIdentity, &urls.qe_identity).await?;
        let root_ca_crl = match &urls.root_ca_crl {
            Some(url) => root_ca_crl_der(&self.get(PccsItem::RootCaCrl, url).await?)?,
            None => {
                // Intel's PCS (the only base without a rootcacrl URL) names in its root
                // certificate where the root CA CRL is.
                debug_assert!(self.base.starts_with(INTEL_PCS_URL));
                let url = root_ca_crl_distribution_point(&qe_identity)?;
                root_ca_crl_der(&self.get(PccsItem::RootCaCrl, &url).await?)?
            }
        };
        Ok(request.assemble(&pck_crl, &tcb_info, &qe_identity, root_ca_crl)?)
    }

    /// One GET of `item`, whole, under the timeout and the size bound; a status other than
    /// 2xx ends the fetch there, naming the item.
    async fn get(&self, item: PccsItem, url: &str) -> Result<PccsAnswer, FetchError> {
        let timeout_ms = u64::try_from(self.timeout.as_millis()).unwrap_or(u64::MAX);
        let timed_out = || FetchError::Timeout {
            url: url.to_owned(),
            timeout_ms,
        };
        // reqwest's own timeout covers the same; this one also bounds the body loop below.
        let answer = tokio::time::timeout(self.timeout, self.get_unbounded_in_time(url))
            .await
            .map_err(|_| timed_out())?
            .map_err(|e| match e {
                GetError::Timeout => timed_out(),
                GetError::Other(e) => e,
            })?;
        answer.require_success(item)?;
        Ok(answer)
    }

    async fn get_unbounded_in_time(&self, url: &str) -> Result<PccsAnswer, GetError> {
        let transport = |e: reqwest::Error| {
            if e.is_timeout() {
                GetError::Timeout
            } else {
                GetError::Other(FetchError::Transport {
                    url: url.to_owned(),
                    detail: error_chain(&e),
                })
            }
        };
        let too_large = || {
            GetError::Other(FetchError::TooLarge {
                url: url.to_owned(),
                limit: PCCS_ANSWER_BYTES_MAX,
            })
        };
        let mut response = self.http.get(url).send().await.map_err(transport)?;
        if response
            .content_length()
            .is_some_and(|n| n > PCCS_ANSWER_BYTES_MAX as u64)
        {
            return Err(too_large());
        }
        let status = response.status().as_u16();
        let headers = response
            .headers()
            .iter()
            .take(ANSWER_HEADERS_MAX)
            // A header that is not text cannot be an issuer chain; leave it out.
            .filter_map(|(k, v)| Some((k.as_str().to_owned(), v.to_str().ok()?.to_owned())))
            .collect();
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(transport)? {
            if body.len().saturating_add(chunk.len()) > PCCS_ANSWER_BYTES_MAX {
                return Err(too_large());
            }
            body.extend_from_slice(&chunk);
        }
        Ok(PccsAnswer {
            status,
            headers,
            body,
        })
    }
}

enum GetError {
    Timeout,
    Other(FetchError),
}

/// The error and its sources on one line ("connection refused" is in a source).
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}
