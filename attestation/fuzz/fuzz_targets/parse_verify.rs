//! Parse and verify arbitrary quote bytes against the real collateral and the mock's, under
//! both trust roots. Must never panic; must never accept (the input is not a real quote
//! with matching report data... except by breaking ECDSA).
//!
//! Run: `cd attestation/fuzz && cargo +nightly fuzz run parse_verify`
//! Seed corpus: `mkdir -p corpus/parse_verify && cp ../../tests/vectors/tdx/*.bin corpus/parse_verify/`
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use tessera_attestation::provider::mock::{MockConfig, MockProvider};
use tessera_attestation::{appraise, quote::parse_quote, Collateral, Policy};

struct Fixtures {
    real: Collateral,
    mock: Collateral,
    intel: Policy,
    mock_policy: Policy,
}

fn fixtures() -> &'static Fixtures {
    static F: OnceLock<Fixtures> = OnceLock::new();
    F.get_or_init(|| {
        let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../..");
        let read = |p: &str| std::fs::read(format!("{root}/{p}")).expect("fixture");
        Fixtures {
            real: Collateral::from_json(&read("tests/vectors/tdx/quote_uptodate.collateral.json"))
                .expect("collateral"),
            mock: MockProvider::new(MockConfig::default())
                .expect("mock")
                .collateral()
                .expect("collateral"),
            intel: Policy::from_toml_str(
                &String::from_utf8(read("policies/example.toml")).expect("utf8"),
            )
            .expect("policy"),
            mock_policy: Policy::from_toml_str(
                &String::from_utf8(read("policies/mock.toml")).expect("utf8"),
            )
            .expect("policy"),
        }
    })
}

fuzz_target!(|data: &[u8]| {
    let f = fixtures();
    let _ = parse_quote(data);
    let a = appraise(data, &f.real, &f.intel, 1_752_919_234, None);
    let b = appraise(
        data,
        &f.mock,
        &f.mock_policy,
        MockConfig::default().valid_now(),
        None,
    );
    // Only the two genuine quotes (and their zero padding) may pass; anything else the
    // fuzzer finds that is accepted is a forgery.
    if a.accepted() || b.accepted() {
        assert!(data.len() >= 4_000, "accepted a short input");
    }
});
