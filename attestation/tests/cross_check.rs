//! Cross-check of our parsed fields against an independent parser, the `tdx-quote` crate
//! (AGPL-3.0: a dev-dependency only, never linked into anything shipped).
//!
//! tdx-quote 0.0.5 checks the quote signature with the attestation key while parsing, so
//! it also confirms independently that our mock signs the right bytes. What it can parse:
//! - the real v4 quote (quote_uptodate.bin) and the mock's v4 quotes: every field compared;
//! - NOT the real v5 quote (quote_outdated.bin): for v5 it checks the signature over
//!   header ‖ 648 body bytes, leaving out the 6-byte body descriptor (type, size) that v5
//!   signs, so it reports `Verification` on a genuine quote. We assert that limitation (so a
//!   fixed release is noticed) and check our v5 parse against the DCAP-verified signed
//!   region instead (dcap-qvl accepts the signature over our `signed_len`).
//!
//! It refuses SGX quotes. (It slices input without a length check, so it is not fed
//! truncated quotes.)
mod common;

use common::*;
use tessera_attestation::provider::mock::{MockConfig, MockProvider};
use tessera_attestation::quote::{parse_quote, ParsedQuote, TdBodyKind};
use tessera_attestation::QuoteProvider;

fn assert_same_fields(ours: &ParsedQuote, theirs: &tdx_quote::Quote) {
    let m = &ours.measurements;
    let b = &theirs.body;
    assert_eq!(ours.version, theirs.header.version);
    assert_eq!(m.mr_td, b.mrtd);
    assert_eq!(m.rtmr, [b.rtmr0, b.rtmr1, b.rtmr2, b.rtmr3]);
    assert_eq!(m.mr_config_id, b.mrconfigid);
    assert_eq!(m.mr_owner, b.mrowner);
    assert_eq!(m.mr_owner_config, b.mrownerconfig);
    assert_eq!(m.td_attributes, b.tdattributes);
    assert_eq!(m.xfam, b.xfam);
    assert_eq!(m.mr_seam, b.mrseam);
    assert_eq!(m.tee_tcb_svn, b.tee_tcb_svn);
    assert_eq!(ours.report_data, theirs.report_input_data());
    let their_kind = match b.tdx_version {
        tdx_quote::TDXVersion::One => TdBodyKind::Td10,
        tdx_quote::TDXVersion::OnePointFive => TdBodyKind::Td15,
    };
    assert_eq!(ours.body, their_kind);
}

#[test]
fn real_quotes_parse_to_the_same_fields() {
    let bytes = quote("quote_uptodate");
    let ours = parse_quote(&bytes).unwrap();
    let theirs = tdx_quote::Quote::from_bytes(&bytes).unwrap();
    assert_same_fields(&ours, &theirs);

    // v5: tdx-quote 0.0.5 cannot verify it (see the module doc).
    let v5 = quote("quote_outdated");
    assert!(matches!(
        tdx_quote::Quote::from_bytes(&v5),
        Err(tdx_quote::QuoteParseError::Verification)
    ));
    let ours = parse_quote(&v5).unwrap();
    assert_eq!(
        (ours.version, ours.body, ours.signed_len),
        (5, TdBodyKind::Td15, 48 + 6 + 648)
    );
    // Our offsets for v5: MRTD at header + descriptor + 136, report data at the end of the
    // TD 1.0 part of the body.
    assert_eq!(
        &v5[48 + 6 + 136..48 + 6 + 184],
        ours.measurements.mr_td.as_slice()
    );
    assert_eq!(&v5[48 + 6 + 520..48 + 6 + 584], ours.report_data.as_slice());
    assert_eq!(
        &v5[48 + 6 + 120..48 + 6 + 128],
        ours.measurements.td_attributes.as_slice()
    );
    // Twin: both refuse the SGX quote.
    let sgx = quote("sgx_quote");
    assert!(parse_quote(&sgx).is_err());
    assert!(tdx_quote::Quote::from_bytes(&sgx).is_err());
}

#[test]
fn mock_quotes_parse_to_the_same_fields_and_their_signature_verifies() {
    let config = MockConfig::default().debug().with_rtmr(3, [0x33; 48]);
    let provider = MockProvider::new(config).unwrap();
    let bytes = provider.quote(&[0x61; 64]).unwrap().into_bytes();
    let theirs = tdx_quote::Quote::from_bytes(&bytes).unwrap();
    assert_same_fields(&parse_quote(&bytes).unwrap(), &theirs);
    // Twin: a corrupted mock signature is refused by tdx-quote as well.
    let corrupt = MockProvider::new(MockConfig::default().corrupt_signature()).unwrap();
    let bytes = corrupt.quote(&[0x61; 64]).unwrap().into_bytes();
    assert!(parse_quote(&bytes).is_ok());
    assert!(tdx_quote::Quote::from_bytes(&bytes).is_err());
}

#[test]
fn a_flipped_measurement_is_refused_by_both() {
    let mut bytes = quote("quote_uptodate");
    bytes[48 + 136] ^= 0x80; // first byte of MRTD
    assert!(tdx_quote::Quote::from_bytes(&bytes).is_err());
    let err = tessera_attestation::verify(
        &bytes,
        &collateral("quote_uptodate"),
        &policy_file("example.toml"),
        UPTODATE_NOW,
        None,
    )
    .unwrap_err();
    assert_eq!(err.check_name(), "quote_signature");
}
