//! Collateral: dcap-qvl's `QuoteCollateralV3` in its serde JSON form (the format of the
//! test vectors), and the validity windows of everything in it.
use dcap_qvl::QuoteCollateralV3;
use x509_parser::prelude::{FromDer, X509Certificate};
use x509_parser::revocation_list::CertificateRevocationList;

use super::time::parse_rfc3339_utc;
use super::DcapError;

/// Largest collateral JSON accepted, in bytes (real collateral is 15–20 KiB).
pub const COLLATERAL_JSON_LEN_MAX: usize = 1024 * 1024;
/// Most certificates read from one PEM chain.
pub const CHAIN_CERTS_MAX: usize = 8;

/// Collateral is malformed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CollateralError {
    /// Not the JSON form of `QuoteCollateralV3`.
    #[error("collateral is not valid collateral JSON: {0}")]
    Json(String),
    /// Larger than [`COLLATERAL_JSON_LEN_MAX`].
    #[error("collateral too large: {len} bytes, at most {COLLATERAL_JSON_LEN_MAX}")]
    TooLong {
        /// Bytes given.
        len: usize,
    },
    /// One item does not parse.
    #[error("collateral item {item} is malformed: {detail}")]
    Malformed {
        /// Which item.
        item: String,
        /// Why.
        detail: String,
    },
}

/// Verification collateral for one quote: CRLs, TCB Info, QE Identity and their signer
/// chains, as fetched from Intel PCS or a PCCS.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Collateral {
    inner: QuoteCollateralV3,
}

/// A dated item of the collateral.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ValidityItem {
    /// Human name (e.g. `TCB Info`, `PCK CRL`, `certificate 'Intel SGX Root CA' (TCB Info signer chain)`).
    pub name: String,
    /// Start of validity (Unix seconds).
    pub not_before: u64,
    /// End of validity (Unix seconds); `None` for a CRL without nextUpdate.
    pub not_after: Option<u64>,
    /// Whether `not_after` itself is already outside the window (a CRL's nextUpdate is;
    /// a certificate's notAfter and a JSON nextUpdate are not), as webpki and dcap-qvl judge.
    pub end_exclusive: bool,
}

impl ValidityItem {
    /// The last second at which the item is valid.
    pub fn last_valid(&self) -> Option<u64> {
        self.not_after.map(|end| {
            if self.end_exclusive {
                end.saturating_sub(1)
            } else {
                end
            }
        })
    }
}

/// Items whose issue date counts toward the collateral's age ([`Window::issued_at`]).
const FRESHNESS_ITEMS: [&str; 3] = ["TCB Info", "QE Identity", "PCK CRL"];

/// The window in which every item is valid.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Window {
    /// Oldest issue date of the TCB Info, the QE Identity and the PCK CRL.
    pub issued_at: u64,
    /// Last second at which every item is valid.
    pub expires_at: u64,
}

impl Collateral {
    /// Parses the JSON form (as written by dcap-qvl and found in `tests/vectors/tdx/`).
    pub fn from_json(bytes: &[u8]) -> Result<Collateral, CollateralError> {
        if bytes.len() > COLLATERAL_JSON_LEN_MAX {
            return Err(CollateralError::TooLong { len: bytes.len() });
        }
        let inner: QuoteCollateralV3 =
            serde_json::from_slice(bytes).map_err(|e| CollateralError::Json(e.to_string()))?;
        Ok(Collateral { inner })
    }

    /// The JSON form, readable by [`Collateral::from_json`].
    pub fn to_json(&self) -> String {
        // Serializing plain strings and byte vectors cannot fail.
        serde_json::to_string_pretty(&self.inner).unwrap_or_default()
    }

    /// Wraps dcap-qvl's collateral.
    pub fn from_dcap(inner: QuoteCollateralV3) -> Collateral {
        Collateral { inner }
    }

    /// dcap-qvl's collateral.
    pub fn as_dcap(&self) -> &QuoteCollateralV3 {
        &self.inner
    }

    /// Mutable access, for tests that tamper with collateral.
    pub fn as_dcap_mut(&mut self) -> &mut QuoteCollateralV3 {
        &mut self.inner
    }

    /// Deterministic bytes identifying this collateral (for cache keys).
    pub fn canonical_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(&self.inner).unwrap_or_default()
    }

    /// Every dated item: TCB Info, QE Identity, both CRLs, and each certificate of the
    /// signer chains and of the PCK chain (`pck_chain_pem`, from the quote, unless the
    /// collateral carries its own).
    pub fn validity_items(
        &self,
        pck_chain_pem: &[u8],
    ) -> Result<Vec<ValidityItem>, CollateralError> {
        let c = &self.inner;
        let mut items = vec![
            json_item("TCB Info", &c.tcb_info)?,
            json_item("QE Identity", &c.qe_identity)?,
            crl_item("root CA CRL", &c.root_ca_crl)?,
            crl_item("PCK CRL", &c.pck_crl)?,
        ];
        chain_items(
            &mut items,
            "TCB Info signer chain",
            c.tcb_info_issuer_chain.as_bytes(),
        )?;
        chain_items(
            &mut items,
            "QE Identity signer chain",
            c.qe_identity_issuer_chain.as_bytes(),
        )?;
        chain_items(
            &mut items,
            "PCK CRL issuer chain",
            c.pck_crl_issuer_chain.as_bytes(),
        )?;
        let pck_chain = c
            .pck_certificate_chain
            .as_deref()
            .map(str::as_bytes)
            .unwrap_or(pck_chain_pem);
        chain_items(&mut items, "PCK chain", pck_chain)?;
        Ok(items)
    }

    /// Checks that every item is valid at `now`; names the first one that is not (the one
    /// that expired earliest, or started latest).
    pub(crate) fn check_validity(
        &self,
        pck_chain_pem: &[u8],
        now: u64,
    ) -> Result<Window, DcapError> {
        let items = self.validity_items(pck_chain_pem)?;
        let expired = items
            .iter()
            .filter_map(|i| {
                i.last_valid()
                    .filter(|last| *last < now)
                    .map(|last| (last, i))
            })
            .min_by_key(|(end, _)| *end);
        if let Some((_, item)) = expired {
            return Err(DcapError::CollateralExpired {
                item: item.name.clone(),
                expired_at: item.not_after.unwrap_or_default(),
                now,
            });
        }
        let early = items
            .iter()
            .filter(|i| i.not_before > now)
            .max_by_key(|i| i.not_before);
        if let Some(item) = early {
            return Err(DcapError::CollateralNotYetValid {
                item: item.name.clone(),
                valid_from: item.not_before,
                now,
            });
        }
        let expires_at = items
            .iter()
            .filter_map(ValidityItem::last_valid)
            .min()
            .unwrap_or(u64::MAX);
        // The issue dates that say how fresh the collateral is: TCB Info, QE Identity and
        // the PCK CRL (which Intel reissues with them; an old one may predate a
        // revocation). Not the root CA CRL: Intel reissues it about once a year, and its
        // nextUpdate bounds it anyway.
        let issued_at = items
            .iter()
            .filter(|i| FRESHNESS_ITEMS.contains(&i.name.as_str()))
            .map(|i| i.not_before)
            .min()
            .unwrap_or(0);
        Ok(Window {
            issued_at,
            expires_at,
        })
    }
}

fn malformed(item: &str, detail: impl std::fmt::Display) -> CollateralError {
    CollateralError::Malformed {
        item: item.to_owned(),
        detail: detail.to_string(),
    }
}

#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct Dated {
    issue_date: String,
    next_update: String,
}

fn json_item(name: &str, json: &str) -> Result<ValidityItem, CollateralError> {
    let dated: Dated = serde_json::from_str(json).map_err(|e| malformed(name, e))?;
    let not_before = parse_rfc3339_utc(&dated.issue_date)
        .ok_or_else(|| malformed(name, format!("bad issueDate {:?}", dated.issue_date)))?;
    let not_after = parse_rfc3339_utc(&dated.next_update)
        .ok_or_else(|| malformed(name, format!("bad nextUpdate {:?}", dated.next_update)))?;
    Ok(ValidityItem {
        name: name.to_owned(),
        not_before,
        not_after: Some(not_after),
        end_exclusive: false,
    })
}

fn crl_item(name: &str, der: &[u8]) -> Result<ValidityItem, CollateralError> {
    let (_, crl) = CertificateRevocationList::from_der(der).map_err(|e| malformed(name, e))?;
    let not_before = unix(crl.last_update().timestamp())
        .ok_or_else(|| malformed(name, "thisUpdate before 1970"))?;
    let not_after = match crl.next_update() {
        Some(t) => {
            Some(unix(t.timestamp()).ok_or_else(|| malformed(name, "nextUpdate before 1970"))?)
        }
        None => None,
    };
    Ok(ValidityItem {
        name: name.to_owned(),
        not_before,
        not_after,
        end_exclusive: true,
    })
}

fn chain_items(
    items: &mut Vec<ValidityItem>,
    chain: &str,
    pem: &[u8],
) -> Result<(), CollateralError> {
    for (index, block) in x509_parser::pem::Pem::iter_from_buffer(pem).enumerate() {
        if index >= CHAIN_CERTS_MAX {
            return Err(malformed(
                chain,
                format!("more than {CHAIN_CERTS_MAX} certificates"),
            ));
        }
        let block = block.map_err(|e| malformed(chain, e))?;
        let (_, cert) =
            X509Certificate::from_der(&block.contents).map_err(|e| malformed(chain, e))?;
        let cn = cert
            .subject()
            .iter_common_name()
            .next()
            .and_then(|cn| cn.as_str().ok())
            .unwrap_or("?");
        let name = format!("certificate '{cn}' ({chain})");
        let validity = cert.validity();
        let not_before = unix(validity.not_before.timestamp())
            .ok_or_else(|| malformed(&name, "notBefore before 1970"))?;
        let not_after = unix(validity.not_after.timestamp())
            .ok_or_else(|| malformed(&name, "notAfter before 1970"))?;
        items.push(ValidityItem {
            name,
            not_before,
            not_after: Some(not_after),
            end_exclusive: false,
        });
    }
    Ok(())
}

fn unix(timestamp: i64) -> Option<u64> {
    u64::try_from(timestamp).ok()
}
