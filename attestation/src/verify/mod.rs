//! DCAP verification of a TD quote with its collateral: validity windows, PCK chain to the
//! trusted root, CRLs, QE report and identity, attestation key binding, quote signature and
//! TCB level. No policy decisions here except dcap-qvl's fixed ones (revoked TCB, migratable
//! TD, SEPT_VE_DISABLE); the debug bit is left to the policy so it is reported as such.
//!
//! IO contract: pure function of its inputs. `now` is a parameter; no clock, no network.
mod collateral;
mod time;

pub use collateral::{
    Collateral, CollateralError, ValidityItem, CHAIN_CERTS_MAX, COLLATERAL_JSON_LEN_MAX,
};
pub use time::{format_unix, parse_rfc3339_utc};

use crate::freshness::CollateralFreshness;
use crate::quote::ParsedQuote;
use crate::tcb::{PlatformFlags, TcbStatus};

/// The Intel SGX Root CA certificate (DER), the production trust anchor of DCAP.
/// SHA-256 fingerprint 44A0196B2B99F889B8E149E95B807A350E7424964399E885A7CBB8CCFAB674D3.
pub const INTEL_SGX_ROOT_CA_DER: &[u8] = include_bytes!("intel_sgx_root_ca.der");

/// Which DCAP check failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum DcapCheck {
    /// The trusted root certificate itself (unparsable, or revoked by its own CRL).
    RootCa,
    /// The root CA CRL is not signed by the trusted root: the collateral belongs to another PKI.
    RootCaCrl,
    /// The PCK CRL does not parse.
    PckCrl,
    /// The PCK certificate chain does not lead to the trusted root.
    PckCertChain,
    /// The PCK certificate (or its CA) is on a CRL.
    PckRevoked,
    /// TCB Info: signer chain, signature, or it does not match the quote (FMSPC, TEE type).
    TcbInfo,
    /// QE Identity: signer chain, signature, or the QE report does not match it.
    QeIdentity,
    /// The QE report is not signed by the PCK key.
    QeReportSignature,
    /// The QE report data does not commit to the attestation key.
    AttestationKeyBinding,
    /// The quote (header and TD report) is not signed by the attestation key.
    QuoteSignature,
    /// No TCB level of the collateral matches the platform: the TCB cannot be appraised.
    TcbUnappraisable,
    /// The TCB level of the platform is Revoked.
    TcbRevoked,
    /// The TDX module signer or attributes do not match the TCB Info.
    TdxModule,
    /// TD attributes that DCAP refuses outright (migratable, reserved bits, no SEPT_VE_DISABLE).
    TdAttributes,
    /// Anything else dcap-qvl reported.
    Other,
}

impl DcapCheck {
    /// Stable name of the check, as shown in reports.
    pub fn name(self) -> &'static str {
        match self {
            DcapCheck::RootCa => "root_ca",
            DcapCheck::RootCaCrl => "root_ca_crl",
            DcapCheck::PckCrl => "pck_crl",
            DcapCheck::PckCertChain => "pck_cert_chain",
            DcapCheck::PckRevoked => "pck_revocation",
            DcapCheck::TcbInfo => "tcb_info",
            DcapCheck::QeIdentity => "qe_identity",
            DcapCheck::QeReportSignature => "qe_report_signature",
            DcapCheck::AttestationKeyBinding => "attestation_key_binding",
            DcapCheck::QuoteSignature => "quote_signature",
            DcapCheck::TcbUnappraisable => "tcb_level",
            DcapCheck::TcbRevoked => "tcb_revoked",
            DcapCheck::TdxModule => "tdx_module",
            DcapCheck::TdAttributes => "td_attributes_dcap",
            DcapCheck::Other => "dcap",
        }
    }
}

impl std::fmt::Display for DcapCheck {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// DCAP verification failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DcapError {
    /// The collateral is malformed.
    #[error(transparent)]
    Collateral(#[from] CollateralError),
    /// A collateral item (or certificate) expired before `now`.
    #[error("collateral expired: {item} expired at {} ({expired_at}), now is {} ({now})", format_unix(*expired_at), format_unix(*now))]
    CollateralExpired {
        /// Which item.
        item: String,
        /// Its end of validity (notAfter / nextUpdate, Unix seconds).
        expired_at: u64,
        /// The verification time.
        now: u64,
    },
    /// A collateral item (or certificate) is not valid yet at `now`.
    #[error("collateral not yet valid: {item} is valid from {} ({valid_from}), now is {} ({now})", format_unix(*valid_from), format_unix(*now))]
    CollateralNotYetValid {
        /// Which item.
        item: String,
        /// Its start of validity (Unix seconds).
        valid_from: u64,
        /// The verification time.
        now: u64,
    },
    /// A DCAP check failed.
    #[error("DCAP check {check} failed: {detail}")]
    Check {
        /// Which check.
        check: DcapCheck,
        /// What went wrong.
        detail: String,
    },
}

impl DcapError {
    /// The name of the failed check.
    pub fn check_name(&self) -> &'static str {
        match self {
            DcapError::Collateral(_) => "collateral_format",
            DcapError::CollateralExpired { .. } | DcapError::CollateralNotYetValid { .. } => {
                "collateral_validity"
            }
            DcapError::Check { check, .. } => check.name(),
        }
    }
}

/// What DCAP established about a quote. The TD measurements are in [`ParsedQuote`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DcapVerified {
    /// Converged TCB status (platform, TDX module and QE).
    pub tcb_status: TcbStatus,
    /// Intel security advisories that apply to this TCB level.
    pub advisory_ids: Vec<String>,
    /// FMSPC of the platform, from the PCK certificate.
    pub fmspc: [u8; 6],
    /// Platform flags from the PCK certificate.
    pub platform: PlatformFlags,
    /// Lower of the TCB Info and QE Identity evaluation data numbers.
    pub tcb_eval_data_number: u32,
    /// Oldest issue date of the TCB Info, the QE Identity and the PCK CRL (Unix seconds).
    pub collateral_issued_at: u64,
    /// Last second at which every collateral item and certificate is valid (Unix seconds).
    pub collateral_expires_at: u64,
    /// Where the signature-checked collateral stands, for the freshness watermark.
    pub freshness: CollateralFreshness,
}

/// Verifies `quote` (already parsed as `parsed`) with `collateral` at `now` against the
/// root certificate `root_der`.
pub fn verify_dcap(
    quote: &[u8],
    parsed: &ParsedQuote,
    collateral: &Collateral,
    root_der: &[u8],
    now: u64,
) -> Result<DcapVerified, DcapError> {
    let window = collateral.check_validity(&parsed.pck_chain_pem, now)?;
    let chain = collateral
        .as_dcap()
        .pck_certificate_chain
        .as_deref()
        .map(str::as_bytes)
        .unwrap_or(&parsed.pck_chain_pem);
    check_chain_root(chain, root_der)?;
    let verifier = dcap_qvl::verify::QuoteVerifier::new(root_der.to_vec())
        // The debug bits are the policy's business (`td.allow_debug`, which refuses every TUD
        // bit, where dcap-qvl would check only bits 0 and 4-6), reported as a named check.
        .allow_debug(true);
    let claims = verifier
        .verify_with_policy(quote, collateral.as_dcap().clone(), now, &AcceptAll)
        .map_err(|e| classify(&format!("{e:#}")))?;
    // Only now, with every signature over the collateral checked, may its dates and
    // numbers count for the watermark.
    let freshness = CollateralFreshness::from_verified(collateral, claims.platform.pck.fmspc)?;
    Ok(DcapVerified {
        tcb_status: TcbStatus::from_dcap(claims.tcb.status),
        advisory_ids: claims.tcb.advisory_ids.clone(),
        fmspc: claims.platform.pck.fmspc,
        platform: PlatformFlags::from_dcap(&claims.platform.pck),
        tcb_eval_data_number: claims.tcb.eval_data_number,
        collateral_issued_at: window.issued_at,
        collateral_expires_at: window.expires_at,
        freshness,
    })
}

/// The PCK chain carried with the quote must parse strictly (PEM `CERTIFICATE` blocks of
/// well-formed X.509, nothing else) and end at exactly the trusted root. dcap-qvl ignores
/// the chain's copy of the root (it uses the trust anchor), which would leave those bytes
/// of the quote malleable and make a quote of another PKI fail with a vaguer reason.
fn check_chain_root(pem: &[u8], root_der: &[u8]) -> Result<(), DcapError> {
    use x509_parser::prelude::{FromDer, X509Certificate};
    let chain_error = |detail: String| DcapError::Check {
        check: DcapCheck::PckCertChain,
        detail,
    };
    let mut certs = Vec::new();
    for block in x509_parser::pem::Pem::iter_from_buffer(pem) {
        let block = block.map_err(|e| {
            chain_error(format!(
                "the quote's PEM certificate chain does not parse: {e}"
            ))
        })?;
        if block.label != "CERTIFICATE" {
            return Err(chain_error(format!(
                "unexpected PEM block {:?} in the quote's certificate chain",
                block.label
            )));
        }
        match X509Certificate::from_der(&block.contents) {
            Ok(([], _)) => {}
            _ => {
                return Err(chain_error(
                    "a certificate of the quote's chain is malformed".to_owned(),
                ))
            }
        }
        certs.push(block.contents);
        if certs.len() > CHAIN_CERTS_MAX {
            return Err(chain_error(format!(
                "more than {CHAIN_CERTS_MAX} certificates in the quote's chain"
            )));
        }
    }
    // The text must be exactly the canonical encoding of those certificates (as Intel's QE
    // and PCS write it), so no byte of the chain is free to change.
    let text = pem.strip_suffix(b"\0").unwrap_or(pem);
    let canonical = canonical_pem(&certs, "\n");
    if text != canonical.as_bytes() && text != canonical_pem(&certs, "\r\n").as_bytes() {
        return Err(chain_error(
            "the quote's PEM certificate chain is not canonically encoded".to_owned(),
        ));
    }
    let subject = |der: &[u8]| -> String {
        X509Certificate::from_der(der)
            .ok()
            .and_then(|(_, c)| {
                c.subject()
                    .iter_common_name()
                    .next()
                    .and_then(|cn| cn.as_str().ok())
                    .map(str::to_owned)
            })
            .unwrap_or_else(|| "?".to_owned())
    };
    match certs.as_slice() {
        [_leaf, _ca, .., root] if root.as_slice() == root_der => Ok(()),
        [_leaf, _ca, .., root] => Err(chain_error(format!(
            "the quote's certificate chain ends at {:?}, not at the trusted root {:?}",
            subject(root),
            subject(root_der)
        ))),
        _ => Err(chain_error(format!(
            "the quote's certificate chain has {} certificate(s), expected PCK leaf, PCK CA and root",
            certs.len()
        ))),
    }
}

/// PEM of `certs` with 64-column base64 and the given line ending.
fn canonical_pem(certs: &[Vec<u8>], eol: &str) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for der in certs {
        let mut b64 = String::with_capacity(der.len().div_ceil(3) * 4);
        for chunk in der.chunks(3) {
            let n = chunk.iter().fold(0u32, |acc, b| (acc << 8) | u32::from(*b))
                << (8 * (3 - chunk.len()));
            for i in 0..4 {
                if i <= chunk.len() {
                    b64.push(char::from(ALPHABET[((n >> (18 - 6 * i)) & 0x3f) as usize]));
                } else {
                    b64.push('=');
                }
            }
        }
        out.push_str("-----BEGIN CERTIFICATE-----");
        out.push_str(eol);
        for line in b64.as_bytes().chunks(64) {
            out.push_str(std::str::from_utf8(line).unwrap_or_default());
            out.push_str(eol);
        }
        out.push_str("-----END CERTIFICATE-----");
        out.push_str(eol);
    }
    out
}

/// dcap-qvl's claims policy hook: accept everything; our policy runs afterwards.
struct AcceptAll;

impl dcap_qvl::Policy for AcceptAll {
    fn validate(&self, _claims: &dcap_qvl::QuoteClaims) -> anyhow::Result<()> {
        Ok(())
    }
}

/// Maps a dcap-qvl error message (an `anyhow` chain, checked against dcap-qvl 0.7.1) to the
/// check it reports. Unknown messages map to [`DcapCheck::Other`] with the full text.
fn classify(message: &str) -> DcapError {
    const RULES: &[(&str, DcapCheck, &str)] = &[
        ("Failed to load root ca", DcapCheck::RootCa, "the trusted root certificate does not parse"),
        ("Failed to parse root CA CRL", DcapCheck::RootCaCrl, "the root CA CRL is not signed by the trusted root: the collateral belongs to another PKI"),
        ("Failed to parse PCK CRL", DcapCheck::PckCrl, "the PCK CRL does not parse"),
        ("CertRevoked", DcapCheck::PckRevoked, "a certificate of the PCK chain is revoked by its CRL"),
        ("TCB status is invalid: Revoked", DcapCheck::TcbRevoked, "the platform TCB level is Revoked"),
        ("No matching TCB level found", DcapCheck::TcbUnappraisable, "the TCB could not be appraised: no TCB level of the collateral matches the platform SVNs"),
        ("below minimum required from TDX module", DcapCheck::TcbUnappraisable, "the TCB could not be appraised: the TDX module SVN is below every TDX module TCB level"),
        ("No TDX module identity", DcapCheck::TcbUnappraisable, "the TCB could not be appraised: the TCB Info has no identity for this TDX module"),
        ("TEE_TCB_SVN2", DcapCheck::TcbUnappraisable, "the TCB could not be appraised: the current TCB (TEE_TCB_SVN2) matches no TCB level"),
        ("ISV enclave report signature is invalid", DcapCheck::QuoteSignature, "the quote signature does not verify with the attestation key"),
        ("Signature is invalid for qe_report", DcapCheck::QeReportSignature, "the QE report signature does not verify with the PCK key"),
        ("QE report hash mismatch", DcapCheck::AttestationKeyBinding, "the QE report data does not commit to the attestation key and QE authentication data"),
        ("Invalid QE auth data length", DcapCheck::AttestationKeyBinding, "QE authentication data has the wrong length"),
        ("Signature is invalid for tcb_info", DcapCheck::TcbInfo, "the TCB Info signature does not verify"),
        ("Signature is invalid for qe_identity", DcapCheck::QeIdentity, "the QE Identity signature does not verify"),
        ("TCB Info", DcapCheck::TcbInfo, "TCB Info rejected"),
        ("TcbInfo", DcapCheck::TcbInfo, "TCB Info rejected"),
        ("Fmspc mismatch", DcapCheck::TcbInfo, "the TCB Info is for another FMSPC than the PCK certificate"),
        ("non-TDX TCB info", DcapCheck::TcbInfo, "the TCB Info is not a TDX TCB Info (id TDX, version 3)"),
        ("QE Identity", DcapCheck::QeIdentity, "QE Identity rejected"),
        ("QeIdentity", DcapCheck::QeIdentity, "QE Identity rejected"),
        ("QE MRSIGNER", DcapCheck::QeIdentity, "the QE report does not match the QE Identity"),
        ("QE ISVPRODID", DcapCheck::QeIdentity, "the QE report does not match the QE Identity"),
        ("QE MISCSELECT", DcapCheck::QeIdentity, "the QE report does not match the QE Identity"),
        ("QE ATTRIBUTES", DcapCheck::QeIdentity, "the QE report does not match the QE Identity"),
        ("QE report validation failed", DcapCheck::QeIdentity, "the QE report does not match the QE Identity"),
        ("QE TCB", DcapCheck::QeIdentity, "the QE report does not match the QE Identity"),
        ("TDX module", DcapCheck::TdxModule, "the TDX module identity does not match the TCB Info"),
        ("Debug mode", DcapCheck::TdAttributes, "TD attributes refused by DCAP"),
        ("TD profiling", DcapCheck::TdAttributes, "TD attributes refused by DCAP"),
        ("Reserved bits in TD attributes", DcapCheck::TdAttributes, "TD attributes refused by DCAP"),
        ("TD migration is enabled", DcapCheck::TdAttributes, "TD attributes refused by DCAP"),
        ("SERVTD_EXT", DcapCheck::TdAttributes, "TD attributes refused by DCAP"),
        ("SEPT_VE_DISABLE", DcapCheck::TdAttributes, "TD attributes refused by DCAP"),
        ("MR service TD", DcapCheck::TdAttributes, "TD attributes refused by DCAP"),
        ("certificate chain", DcapCheck::PckCertChain, "a certificate chain does not lead to the trusted root"),
        ("PCK", DcapCheck::PckCertChain, "the PCK certificate chain is invalid"),
    ];
    for (needle, check, summary) in RULES {
        if message.contains(needle) {
            return DcapError::Check {
                check: *check,
                detail: format!("{summary} (dcap-qvl: {message})"),
            };
        }
    }
    DcapError::Check {
        check: DcapCheck::Other,
        detail: message.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classify_names_known_failures() {
        let cases = [
            (
                "Failed to verify certificate chain: CertRevoked",
                DcapCheck::PckRevoked,
            ),
            (
                "Failed to parse root CA CRL: InvalidCrlSignatureForPublicKey",
                DcapCheck::RootCaCrl,
            ),
            ("No matching TCB level found", DcapCheck::TcbUnappraisable),
            (
                "ISV enclave report signature is invalid",
                DcapCheck::QuoteSignature,
            ),
            ("TCB status is invalid: Revoked", DcapCheck::TcbRevoked),
            (
                "Failed to verify certificate chain: UnknownIssuer",
                DcapCheck::PckCertChain,
            ),
        ];
        for (message, check) in cases {
            match classify(message) {
                DcapError::Check { check: got, detail } => {
                    assert_eq!(got, check, "{message}");
                    assert!(detail.contains(message));
                }
                other => panic!("unexpected {other:?}"),
            }
        }
        assert!(matches!(
            classify("something new"),
            DcapError::Check {
                check: DcapCheck::Other,
                ..
            }
        ));
    }

    #[test]
    fn intel_root_is_the_published_certificate() {
        let digest = ring::digest::digest(&ring::digest::SHA256, INTEL_SGX_ROOT_CA_DER);
        assert_eq!(
            hex::encode_upper(digest.as_ref()),
            "44A0196B2B99F889B8E149E95B807A350E7424964399E885A7CBB8CCFAB674D3"
        );
    }
}
