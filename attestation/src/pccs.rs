//! The PCCS / Intel PCS v4 API as data: which URLs hold the collateral of this platform's
//! quotes, and how their answers become a [`Collateral`] (architecture.md §4.2, §13).
//!
//! This module owns the protocol only: the request paths and query strings a PCCS (Intel's
//! reference caching service) and Intel's PCS both answer, the response headers that carry
//! the issuer chains (URL-encoded PEM), and the body formats (DER or hex CRLs, the signed
//! JSON of the TCB Info and QE Identity). It must not do IO or trust anything it parses:
//! answers are untrusted bytes from the network, so every malformed answer is an error
//! value, never a panic, and what it assembles is verified afterwards like any peer's
//! collateral (signatures to the trust root, validity, freshness). The transport, the
//! timeouts and the size bounds on reading are the caller's (`tessera::collateral`);
//! [`PCCS_ANSWER_BYTES_MAX`] is the bound it must apply.
//!
//! Same paths as dcap-qvl's `collateral` module (whose client needs an HTTP stack we do not
//! build): `GET {base}/sgx/certification/v4/pckcrl?ca={platform|processor}&encoding=der`,
//! `GET {base}/tdx/certification/v4/tcb?fmspc={FMSPC}&update=standard`,
//! `GET {base}/tdx/certification/v4/qe/identity?update=standard` and, from a PCCS only,
//! `GET {base}/sgx/certification/v4/rootcacrl` (hex). Intel's PCS serves no root CA CRL:
//! it is read from the CRL distribution point of the root certificate instead
//! ([`root_ca_crl_distribution_point`]).
use serde::Deserialize;
use x509_parser::extensions::{DistributionPointName, GeneralName, ParsedExtension};
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::quote::parse_quote;
use crate::verify::{Collateral, CHAIN_CERTS_MAX};

/// Largest answer body read from a PCCS, in bytes. Real ones are under 20 KiB (a
/// Processor CA CRL of a large fleet stays far below this).
pub const PCCS_ANSWER_BYTES_MAX: usize = 512 * 1024;
/// Intel's PCS, which serves no root CA CRL (see the module doc).
pub const INTEL_PCS_URL: &str = "https://api.trustedservices.intel.com";
/// Longest issuer chain header accepted, in bytes (URL-encoded PEM of 2–3 certificates is
/// about 3 KiB).
pub const ISSUER_CHAIN_HEADER_LEN_MAX: usize = 64 * 1024;

/// An answer from a PCCS: status, headers and the body as read (bounded by the caller).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PccsAnswer {
    /// HTTP status code.
    pub status: u16,
    /// Response headers, names as received.
    pub headers: Vec<(String, String)>,
    /// The body.
    pub body: Vec<u8>,
}

impl PccsAnswer {
    /// Refuses an answer whose status is not 2xx, naming the item it was for.
    pub fn require_success(&self, item: PccsItem) -> Result<(), PccsError> {
        ok_status(item, self)
    }

    /// The first header named `name` (ASCII case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Which item of the collateral an answer was for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum PccsItem {
    /// The PCK CRL (`pckcrl`).
    PckCrl,
    /// The TDX TCB Info (`tcb`).
    TcbInfo,
    /// The TDX QE Identity (`qe/identity`).
    QeIdentity,
    /// The root CA CRL (`rootcacrl`, or the root certificate's CRL distribution point).
    RootCaCrl,
}

impl std::fmt::Display for PccsItem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            PccsItem::PckCrl => "PCK CRL",
            PccsItem::TcbInfo => "TCB Info",
            PccsItem::QeIdentity => "QE Identity",
            PccsItem::RootCaCrl => "root CA CRL",
        })
    }
}

/// A PCCS answer, or this platform's quote, that cannot be used. Grouped by fault: the
/// quote (local), the server's answer (remote).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PccsError {
    /// This platform's own quote does not name its platform model and CA.
    #[error("cannot tell which collateral this platform needs from its quote: {0}")]
    Quote(String),
    /// The server answered with a status other than 2xx.
    #[error("{item}: the server answered HTTP {status}")]
    Status {
        /// Which item.
        item: PccsItem,
        /// The status code.
        status: u16,
    },
    /// An answer lacks the header that carries its issuer chain.
    #[error("{item}: the answer has no {header} header")]
    MissingHeader {
        /// Which item.
        item: PccsItem,
        /// The header expected.
        header: &'static str,
    },
    /// An answer does not have the expected format.
    #[error("{item}: malformed answer: {detail}")]
    Malformed {
        /// Which item.
        item: PccsItem,
        /// What is wrong.
        detail: String,
    },
}

/// What to ask a PCCS for: the collateral of one platform model (FMSPC) under one PCK CA,
/// read from this platform's own quote.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CollateralRequest {
    /// FMSPC of the platform (from the PCK certificate's SGX extension).
    pub fmspc: [u8; 6],
    /// The PCK CA that issued the platform's PCK certificate: `platform` or `processor`.
    pub ca: &'static str,
    /// The PCK certificate chain carried in the quote, kept in the collateral so that it
    /// verifies offline.
    pub pck_chain_pem: String,
}

/// The URLs of one platform's collateral at one server.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PccsUrls {
    /// The PCK CRL of the request's CA, DER.
    pub pck_crl: String,
    /// The TDX TCB Info of the request's FMSPC.
    pub tcb_info: String,
    /// The TDX QE Identity.
    pub qe_identity: String,
    /// The root CA CRL (hex), when the server is a PCCS; `None` for Intel's PCS, which has
    /// no such endpoint.
    pub root_ca_crl: Option<String>,
}

impl CollateralRequest {
    /// Reads FMSPC, PCK CA and PCK chain from `quote` (this platform's own quote, whose
    /// certification data carries the PCK chain, as configfs-tsm quotes do).
    pub fn for_quote(quote: &[u8]) -> Result<CollateralRequest, PccsError> {
        let parsed = parse_quote(quote).map_err(|e| PccsError::Quote(e.to_string()))?;
        let leaf =
            parsed.pck_chain_der().into_iter().next().ok_or_else(|| {
                PccsError::Quote("the quote carries no PCK certificate chain".into())
            })?;
        let extension = dcap_qvl::intel::parse_pck_extension(&leaf)
            .map_err(|e| PccsError::Quote(format!("PCK certificate: {e:#}")))?;
        let ca = dcap_qvl::intel::pck_ca(&leaf)
            .map_err(|e| PccsError::Quote(format!("PCK certificate issuer: {e:#}")))?
            .as_id_str();
        let pck_chain_pem = String::from_utf8(parsed.pck_chain_pem)
            .map_err(|_| PccsError::Quote("the PCK chain is not text (PEM)".into()))?;
        Ok(CollateralRequest {
            fmspc: extension.fmspc,
            ca,
            pck_chain_pem,
        })
    }

    /// The URLs under `base` (a PCCS or PCS base URL, with or without the
    /// `/{sgx,tdx}/certification/v4` suffix and trailing slashes).
    pub fn urls(&self, base: &str) -> PccsUrls {
        let base = base
            .trim_end_matches('/')
            .trim_end_matches("/sgx/certification/v4")
            .trim_end_matches("/tdx/certification/v4")
            .trim_end_matches('/');
        let fmspc = hex::encode_upper(self.fmspc);
        let is_pcs = base.eq_ignore_ascii_case(INTEL_PCS_URL);
        PccsUrls {
            pck_crl: format!(
                "{base}/sgx/certification/v4/pckcrl?ca={}&encoding=der",
                self.ca
            ),
            tcb_info: format!("{base}/tdx/certification/v4/tcb?fmspc={fmspc}&update=standard"),
            qe_identity: format!("{base}/tdx/certification/v4/qe/identity?update=standard"),
            root_ca_crl: (!is_pcs).then(|| format!("{base}/sgx/certification/v4/rootcacrl")),
        }
    }

    /// Builds the collateral from the answers for the PCK CRL, TCB Info and QE Identity and
    /// the root CA CRL (DER, see [`root_ca_crl_der`]). Checks formats only: signatures and
    /// dates are the verifier's.
    pub fn assemble(
        &self,
        pck_crl: &PccsAnswer,
        tcb_info: &PccsAnswer,
        qe_identity: &PccsAnswer,
        root_ca_crl: Vec<u8>,
    ) -> Result<Collateral, PccsError> {
        let (pck_crl_issuer_chain, pck_crl) = {
            let item = PccsItem::PckCrl;
            ok_status(item, pck_crl)?;
            let chain = issuer_chain(item, pck_crl, &["SGX-PCK-CRL-Issuer-Chain"])?;
            (chain, crl_der(item, &pck_crl.body)?)
        };
        let (tcb_info_issuer_chain, tcb_info, tcb_info_signature) = {
            let item = PccsItem::TcbInfo;
            ok_status(item, tcb_info)?;
            // The TDX API names it TCB-Info-Issuer-Chain, the SGX one SGX-TCB-Info-...
            let chain = issuer_chain(
                item,
                tcb_info,
                &["TCB-Info-Issuer-Chain", "SGX-TCB-Info-Issuer-Chain"],
            )?;
            let signed: SignedTcbInfo = signed_json(item, &tcb_info.body)?;
            let signature = signature(item, &signed.signature)?;
            (chain, signed.tcb_info.get().to_owned(), signature)
        };
        let (qe_identity_issuer_chain, qe_identity, qe_identity_signature) = {
            let item = PccsItem::QeIdentity;
            ok_status(item, qe_identity)?;
            let chain = issuer_chain(item, qe_identity, &["SGX-Enclave-Identity-Issuer-Chain"])?;
            let signed: SignedQeIdentity = signed_json(item, &qe_identity.body)?;
            let signature = signature(item, &signed.signature)?;
            (chain, signed.enclave_identity.get().to_owned(), signature)
        };
        Ok(Collateral::from_dcap(dcap_qvl::QuoteCollateralV3 {
            pck_crl_issuer_chain,
            root_ca_crl,
            pck_crl,
            tcb_info_issuer_chain,
            tcb_info,
            tcb_info_signature,
            qe_identity_issuer_chain,
            qe_identity,
            qe_identity_signature,
            pck_certificate_chain: Some(self.pck_chain_pem.clone()),
        }))
    }
}

/// The root CA CRL from a PCCS `rootcacrl` answer (hex) or a CRL distribution point (DER).
pub fn root_ca_crl_der(answer: &PccsAnswer) -> Result<Vec<u8>, PccsError> {
    ok_status(PccsItem::RootCaCrl, answer)?;
    crl_der(PccsItem::RootCaCrl, &answer.body)
}

/// The CRL distribution point (an http(s) URL) of the last certificate of the issuer chain
/// in a QE Identity answer: the root certificate, whose CRL Intel's PCS does not serve.
/// Only the URL is taken from the (still unverified) chain; the CRL fetched from it is
/// verified against the trusted root like the rest.
pub fn root_ca_crl_distribution_point(qe_identity: &PccsAnswer) -> Result<String, PccsError> {
    let item = PccsItem::QeIdentity;
    let chain = issuer_chain(item, qe_identity, &["SGX-Enclave-Identity-Issuer-Chain"])?;
    let root = x509_parser::pem::Pem::iter_from_buffer(chain.as_bytes())
        .take(CHAIN_CERTS_MAX)
        .map_while(Result::ok)
        .last()
        .ok_or_else(|| malformed(item, "the issuer chain holds no certificate"))?;
    let (_, cert) = X509Certificate::from_der(&root.contents)
        .map_err(|e| malformed(item, format!("root certificate: {e}")))?;
    for extension in cert.extensions() {
        let ParsedExtension::CRLDistributionPoints(points) = extension.parsed_extension() else {
            continue;
        };
        for point in points.iter() {
            let Some(DistributionPointName::FullName(names)) = &point.distribution_point else {
                continue;
            };
            for name in names {
                if let GeneralName::URI(uri) = name {
                    if uri.starts_with("https://") || uri.starts_with("http://") {
                        return Ok((*uri).to_owned());
                    }
                }
            }
        }
    }
    Err(malformed(
        PccsItem::RootCaCrl,
        "the root certificate names no http(s) CRL distribution point",
    ))
}

#[derive(Deserialize)]
struct SignedTcbInfo<'a> {
    /// Kept as the exact bytes served: the signature is over them.
    #[serde(rename = "tcbInfo", borrow)]
    tcb_info: &'a serde_json::value::RawValue,
    signature: String,
}

#[derive(Deserialize)]
struct SignedQeIdentity<'a> {
    #[serde(rename = "enclaveIdentity", borrow)]
    enclave_identity: &'a serde_json::value::RawValue,
    signature: String,
}

fn malformed(item: PccsItem, detail: impl std::fmt::Display) -> PccsError {
    PccsError::Malformed {
        item,
        detail: detail.to_string(),
    }
}

fn ok_status(item: PccsItem, answer: &PccsAnswer) -> Result<(), PccsError> {
    if (200..300).contains(&answer.status) {
        Ok(())
    } else {
        Err(PccsError::Status {
            item,
            status: answer.status,
        })
    }
}

fn issuer_chain(
    item: PccsItem,
    answer: &PccsAnswer,
    names: &[&'static str],
) -> Result<String, PccsError> {
    let header =
        names
            .iter()
            .find_map(|name| answer.header(name))
            .ok_or(PccsError::MissingHeader {
                item,
                header: names.first().copied().unwrap_or("issuer chain"),
            })?;
    if header.len() > ISSUER_CHAIN_HEADER_LEN_MAX {
        return Err(malformed(
            item,
            format!("issuer chain header longer than {ISSUER_CHAIN_HEADER_LEN_MAX} bytes"),
        ));
    }
    let pem = percent_decode(header).ok_or_else(|| malformed(item, "bad URL encoding"))?;
    if !pem.contains("-----BEGIN CERTIFICATE-----") {
        return Err(malformed(item, "the issuer chain holds no PEM certificate"));
    }
    Ok(pem)
}

/// Decodes `%XX` escapes (the PCCS encodes issuer chains as a URI component). `None` on a
/// bad escape or text that is not UTF-8.
fn percent_decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        if b == b'%' {
            let hex = bytes.get(i + 1..i + 3)?;
            let hex = std::str::from_utf8(hex).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// A CRL body: DER as asked (`encoding=der`), or hex as a PCCS serves the root CA CRL.
fn crl_der(item: PccsItem, body: &[u8]) -> Result<Vec<u8>, PccsError> {
    if body.is_empty() {
        return Err(malformed(item, "empty body"));
    }
    // DER starts with a SEQUENCE tag (0x30 is also the digit '0'); a hex CRL is all hex
    // digits and starts "30".
    let text = body.trim_ascii();
    if text.iter().all(u8::is_ascii_hexdigit) {
        return hex::decode(text).map_err(|e| malformed(item, format!("hex CRL: {e}")));
    }
    Ok(body.to_vec())
}

fn signed_json<'a, T: Deserialize<'a>>(item: PccsItem, body: &'a [u8]) -> Result<T, PccsError> {
    serde_json::from_slice(body).map_err(|e| malformed(item, format!("JSON: {e}")))
}

fn signature(item: PccsItem, hex_text: &str) -> Result<Vec<u8>, PccsError> {
    let signature =
        hex::decode(hex_text).map_err(|e| malformed(item, format!("signature: {e}")))?;
    // ECDSA P-256, raw r‖s.
    if signature.len() != 64 {
        return Err(malformed(
            item,
            format!("signature of {} bytes, expected 64", signature.len()),
        ));
    }
    Ok(signature)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request() -> CollateralRequest {
        CollateralRequest {
            fmspc: [0xb0, 0xc0, 0x6f, 0, 0, 0],
            ca: "platform",
            pck_chain_pem: String::new(),
        }
    }

    #[test]
    fn urls_follow_the_v4_api_whatever_suffix_the_base_has() {
        let want = PccsUrls {
            pck_crl: "https://pccs.local:8081/sgx/certification/v4/pckcrl?ca=platform&encoding=der"
                .into(),
            tcb_info:
                "https://pccs.local:8081/tdx/certification/v4/tcb?fmspc=B0C06F000000&update=standard"
                    .into(),
            qe_identity: "https://pccs.local:8081/tdx/certification/v4/qe/identity?update=standard"
                .into(),
            root_ca_crl: Some("https://pccs.local:8081/sgx/certification/v4/rootcacrl".into()),
        };
        for base in [
            "https://pccs.local:8081",
            "https://pccs.local:8081/",
            "https://pccs.local:8081/sgx/certification/v4",
            "https://pccs.local:8081/tdx/certification/v4/",
        ] {
            assert_eq!(request().urls(base), want, "{base}");
        }
        // Intel's PCS has no rootcacrl endpoint.
        assert_eq!(request().urls(INTEL_PCS_URL).root_ca_crl, None);
    }

    #[test]
    fn crl_bodies_may_be_der_or_hex_and_not_empty() {
        let der = vec![0x30, 0x82, 0x01, 0x00, 0xff];
        assert_eq!(crl_der(PccsItem::PckCrl, &der).unwrap(), der);
        assert_eq!(crl_der(PccsItem::RootCaCrl, b"30820100ff\n").unwrap(), der);
        assert!(crl_der(PccsItem::RootCaCrl, b"").is_err());
        assert!(crl_der(PccsItem::RootCaCrl, b"308").is_err(), "odd hex");
    }

    #[test]
    fn percent_decoding_refuses_bad_escapes() {
        assert_eq!(percent_decode("a%20b%0A").as_deref(), Some("a b\n"));
        assert_eq!(percent_decode("%2"), None);
        assert_eq!(percent_decode("%zz"), None);
        assert_eq!(percent_decode("%ff"), None, "not UTF-8");
    }

    /// Untrusted answers: a wrong status, a missing header, bad JSON and a short signature
    /// are errors naming the item, never panics.
    #[test]
    fn malformed_answers_are_errors_naming_the_item() {
        let chain = "-----BEGIN%20CERTIFICATE-----%0Ax%0A-----END%20CERTIFICATE-----";
        let ok = |header: &str, body: &str| PccsAnswer {
            status: 200,
            headers: vec![(header.to_owned(), chain.to_owned())],
            body: body.as_bytes().to_vec(),
        };
        let crl = ok("SGX-PCK-CRL-Issuer-Chain", "30820100");
        let tcb = ok(
            "TCB-Info-Issuer-Chain",
            &format!(
                r#"{{"tcbInfo":{{"a":1}},"signature":"{}"}}"#,
                "ab".repeat(64)
            ),
        );
        let qe = ok(
            "SGX-Enclave-Identity-Issuer-Chain",
            &format!(
                r#"{{"enclaveIdentity":{{"b":2}},"signature":"{}"}}"#,
                "cd".repeat(64)
            ),
        );
        let c = request()
            .assemble(&crl, &tcb, &qe, vec![0x30])
            .expect("well-formed answers");
        assert_eq!(c.as_dcap().tcb_info, r#"{"a":1}"#, "the exact bytes served");
        assert_eq!(c.as_dcap().qe_identity, r#"{"b":2}"#);

        let mut down = tcb.clone();
        down.status = 503;
        let e = request().assemble(&crl, &down, &qe, vec![]).unwrap_err();
        assert_eq!(
            e,
            PccsError::Status {
                item: PccsItem::TcbInfo,
                status: 503
            }
        );
        let mut bare = qe.clone();
        bare.headers.clear();
        let e = request().assemble(&crl, &tcb, &bare, vec![]).unwrap_err();
        assert!(
            matches!(
                e,
                PccsError::MissingHeader {
                    item: PccsItem::QeIdentity,
                    ..
                }
            ),
            "{e}"
        );
        for body in ["not json", r#"{"tcbInfo":{},"signature":"abcd"}"#] {
            let e = request()
                .assemble(&crl, &ok("TCB-Info-Issuer-Chain", body), &qe, vec![])
                .unwrap_err();
            assert!(
                matches!(
                    e,
                    PccsError::Malformed {
                        item: PccsItem::TcbInfo,
                        ..
                    }
                ),
                "{e}"
            );
        }
    }

    #[test]
    fn a_mock_quote_names_its_platform_model_and_ca() {
        use crate::provider::mock::{MockConfig, MockProvider, MOCK_FMSPC};
        use crate::QuoteProvider;
        let provider = MockProvider::new(MockConfig::default()).unwrap();
        let quote = provider.quote(&[0; 64]).unwrap();
        let request = CollateralRequest::for_quote(quote.as_bytes()).unwrap();
        assert_eq!(request.fmspc, MOCK_FMSPC);
        assert!(
            ["platform", "processor"].contains(&request.ca),
            "{}",
            request.ca
        );
        assert!(request.pck_chain_pem.contains("BEGIN CERTIFICATE"));
    }

    #[test]
    fn a_quote_that_is_not_one_says_so() {
        let e = CollateralRequest::for_quote(b"garbage").unwrap_err();
        assert!(matches!(e, PccsError::Quote(_)), "{e}");
    }
}
