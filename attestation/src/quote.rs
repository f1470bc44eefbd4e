//! Parsing of untrusted quote bytes into the fields verification and policy need.
//!
//! Accepts DCAP quotes v4 (TD 1.0 body) and v5 (TD 1.0, TD 1.5 and TD 1.5ex bodies) with
//! ECDSA P-256 attestation keys. SGX quotes are refused: tessera only admits trust domains.
//! Never panics on any input (see the truncation tests and the fuzz target).
use dcap_qvl::quote::{Quote as DcapQuote, Report};
use parity_scale_codec::Decode;
use serde::Serialize;

/// Largest quote accepted, in bytes. Real TDX quotes are about 5 KiB; the PEM chain inside
/// is the only variable part.
pub const QUOTE_LEN_MAX: usize = 64 * 1024;
/// Length of the quote header.
pub const HEADER_LEN: usize = 48;
/// TEE type of TDX in the quote header.
pub const TEE_TYPE_TDX: u32 = 0x81;
/// TEE type of SGX in the quote header.
pub const TEE_TYPE_SGX: u32 = 0x00;
/// Attestation key type ECDSA-256 with P-256.
pub const ATTESTATION_KEY_TYPE_ECDSA_P256: u16 = 2;

/// Why quote bytes could not be parsed as a TD quote.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ParseError {
    /// Fewer bytes than a header.
    #[error("quote too short: {len} bytes, a header alone is {HEADER_LEN}")]
    TooShort {
        /// Bytes given.
        len: usize,
    },
    /// More bytes than [`QUOTE_LEN_MAX`].
    #[error("quote too long: {len} bytes, at most {QUOTE_LEN_MAX} accepted")]
    TooLong {
        /// Bytes given.
        len: usize,
    },
    /// An SGX enclave quote (or a v5 quote with an SGX body).
    #[error("not a TD quote: TEE type {tee_type:#x} is SGX, expected TDX ({TEE_TYPE_TDX:#x})")]
    NotTdQuote {
        /// TEE type in the header.
        tee_type: u32,
    },
    /// A TEE type that is neither SGX nor TDX.
    #[error("unknown TEE type {tee_type:#x}, expected TDX ({TEE_TYPE_TDX:#x})")]
    UnknownTeeType {
        /// TEE type in the header.
        tee_type: u32,
    },
    /// Quote version other than 4 or 5.
    #[error("unsupported quote version {version}, expected 4 or 5")]
    UnsupportedVersion {
        /// Version in the header.
        version: u16,
    },
    /// Attestation key type other than ECDSA P-256.
    #[error("unsupported attestation key type {key_type}, expected {ATTESTATION_KEY_TYPE_ECDSA_P256} (ECDSA P-256)")]
    UnsupportedKeyType {
        /// Key type in the header.
        key_type: u16,
    },
    /// Non-zero bytes after the end of the quote structure (zero padding is accepted: real
    /// quotes come padded).
    #[error("{count} non-zero bytes after the end of the quote at offset {offset}")]
    TrailingBytes {
        /// Where the quote structure ends.
        offset: usize,
        /// How many bytes follow it.
        count: usize,
    },
    /// The structure does not decode (truncated, bad lengths, unknown body type, ...).
    #[error("malformed quote: {detail}")]
    Malformed {
        /// What the decoder said.
        detail: String,
    },
}

/// Which TD report body the quote carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum TdBodyKind {
    /// TDX 1.0 report (v4, or v5 body type 2).
    Td10,
    /// TDX 1.5 report (v5 body type 3).
    Td15,
    /// TDX 1.5ex report (v5 body type 4).
    Td15Ex,
}

/// The measured and security-relevant fields of a TD report.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Measurements {
    /// MRTD: the initial contents of the TD (firmware).
    pub mr_td: [u8; 48],
    /// RTMR0..RTMR3: runtime-extended registers (firmware config, kernel, cmdline+initrd, app).
    pub rtmr: [[u8; 48]; 4],
    /// MRCONFIGID: software-defined configuration id set by the host at launch.
    pub mr_config_id: [u8; 48],
    /// MROWNER.
    pub mr_owner: [u8; 48],
    /// MROWNERCONFIG.
    pub mr_owner_config: [u8; 48],
    /// TD attributes (little-endian bit field; bit 0 is DEBUG).
    pub td_attributes: [u8; 8],
    /// XFAM: extended features the TD may use.
    pub xfam: [u8; 8],
    /// MR_SEAM: measurement of the TDX module.
    pub mr_seam: [u8; 48],
    /// TEE_TCB_SVN: TDX module and platform SVNs.
    pub tee_tcb_svn: [u8; 16],
}

impl Measurements {
    /// Whether the DEBUG bit (bit 0 of the TD attributes) is set.
    pub fn debug(&self) -> bool {
        self.td_attributes[0] & 0x01 != 0
    }

    /// The TUD ("TD under debug") byte of the TD attributes: bit 0 DEBUG, bits 4-6
    /// profiling and debug features, bits 1-3 and 7 reserved. A TD with any of them set is
    /// not in its production state.
    pub fn tud(&self) -> u8 {
        self.td_attributes[0]
    }
}

/// A parsed TD quote. Nothing here is verified yet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParsedQuote {
    /// Quote format version (4 or 5).
    pub version: u16,
    /// Report body kind.
    pub body: TdBodyKind,
    /// Measurements and attributes.
    pub measurements: Measurements,
    /// The 64 bytes of report data the TD asked to be signed.
    pub report_data: [u8; 64],
    /// Length of the signed region (header and body) at the start of the quote.
    pub signed_len: usize,
    /// Length of the quote structure; bytes after it (if any) are zero padding.
    pub len: usize,
    /// PEM chain (PCK leaf, PCK CA, root) from certification data type 5, if present.
    pub pck_chain_pem: Vec<u8>,
}

impl ParsedQuote {
    /// DER of the certificates in the quote's PEM chain (leaf first); empty if the quote
    /// carries no chain or it does not parse. Untrusted: for display and root detection.
    pub fn pck_chain_der(&self) -> Vec<Vec<u8>> {
        x509_parser::pem::Pem::iter_from_buffer(&self.pck_chain_pem)
            .take(crate::verify::CHAIN_CERTS_MAX)
            .map_while(Result::ok)
            .map(|pem| pem.contents)
            .collect()
    }
}

/// Parses quote bytes. Refuses SGX quotes and versions other than 4 and 5.
pub fn parse_quote(bytes: &[u8]) -> Result<ParsedQuote, ParseError> {
    let header = bytes
        .get(..HEADER_LEN)
        .ok_or(ParseError::TooShort { len: bytes.len() })?;
    if bytes.len() > QUOTE_LEN_MAX {
        return Err(ParseError::TooLong { len: bytes.len() });
    }
    let version = u16::from_le_bytes([header[0], header[1]]);
    let key_type = u16::from_le_bytes([header[2], header[3]]);
    let tee_type = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
    match tee_type {
        TEE_TYPE_TDX => {}
        TEE_TYPE_SGX => return Err(ParseError::NotTdQuote { tee_type }),
        other => return Err(ParseError::UnknownTeeType { tee_type: other }),
    }
    if version != 4 && version != 5 {
        return Err(ParseError::UnsupportedVersion { version });
    }
    if key_type != ATTESTATION_KEY_TYPE_ECDSA_P256 {
        return Err(ParseError::UnsupportedKeyType { key_type });
    }
    let mut rest = bytes;
    let quote = DcapQuote::decode(&mut rest).map_err(|e| ParseError::Malformed {
        detail: e.to_string(),
    })?;
    let len = bytes.len() - rest.len();
    if rest.iter().any(|b| *b != 0) {
        return Err(ParseError::TrailingBytes {
            offset: len,
            count: rest.len(),
        });
    }
    let (body, td) = match &quote.report {
        Report::TD10(r) => (TdBodyKind::Td10, r),
        Report::TD15(r) => (TdBodyKind::Td15, &r.base),
        Report::TD15Ex(r) => (TdBodyKind::Td15Ex, &r.base.base),
        Report::SgxEnclave(_) => return Err(ParseError::NotTdQuote { tee_type }),
    };
    let measurements = Measurements {
        mr_td: td.mr_td,
        rtmr: [td.rt_mr0, td.rt_mr1, td.rt_mr2, td.rt_mr3],
        mr_config_id: td.mr_config_id,
        mr_owner: td.mr_owner,
        mr_owner_config: td.mr_owner_config,
        td_attributes: td.td_attributes,
        xfam: td.xfam,
        mr_seam: td.mr_seam,
        tee_tcb_svn: td.tee_tcb_svn,
    };
    Ok(ParsedQuote {
        version,
        body,
        report_data: td.report_data,
        measurements,
        signed_len: quote.signed_length(),
        len,
        pck_chain_pem: quote
            .raw_cert_chain()
            .map(<[u8]>::to_vec)
            .unwrap_or_default(),
    })
}
