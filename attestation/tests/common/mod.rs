//! Shared fixtures: the real vectors in `tests/vectors/tdx/` (repository paths, so CI's
//! fresh clone has them) and the policies in `policies/`.
#![allow(dead_code)]
use tessera_attestation::{Collateral, Policy};

pub const VECTORS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/vectors/tdx/");
pub const POLICIES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../policies/");

/// A time inside every validity window of quote_uptodate's collateral (README).
pub const UPTODATE_NOW: u64 = 1_752_919_234;
/// The last second of that window (the PCK CRL's nextUpdate, 2025-07-19T10:00:35Z, is
/// already outside: a CRL is expired at its nextUpdate).
pub const UPTODATE_WINDOW_END: u64 = 1_752_919_234;
/// Inside quote_outdated's window (2026-02-18T10:58:51 .. 2026-03-20T10:41:15).
pub const OUTDATED_NOW: u64 = 1_772_000_000;

pub const UPTODATE_MR_TD: &str = "91eb2b44d141d4ece09f0c75c2c53d247a3c68edd7fafe8a3520c942a604a407de03ae6dc5f87f27428b2538873118b7";
pub const UPTODATE_RTMR0: &str = "44c0197b39157fdd7a4dcc44767f9d6b0bb3977c7a8e347b8492f827fe9d9e5c48aca29b220b80b6a540cf994b9bc9c0";

pub fn quote(name: &str) -> Vec<u8> {
    std::fs::read(format!("{VECTORS}{name}.bin")).unwrap()
}

pub fn collateral(name: &str) -> Collateral {
    Collateral::from_json(&std::fs::read(format!("{VECTORS}{name}.collateral.json")).unwrap())
        .unwrap()
}

pub fn policy_file(name: &str) -> Policy {
    Policy::from_toml_str(&std::fs::read_to_string(format!("{POLICIES}{name}")).unwrap()).unwrap()
}

/// The example policy with some text replaced (to make negative twins).
pub fn example_policy_with(from: &str, to: &str) -> Policy {
    let text = std::fs::read_to_string(format!("{POLICIES}example.toml")).unwrap();
    assert!(text.contains(from), "example.toml has no {from:?}");
    Policy::from_toml_str(&text.replace(from, to)).unwrap()
}

/// The mock policy with some text replaced.
pub fn mock_policy_with(from: &str, to: &str) -> Policy {
    let text = std::fs::read_to_string(format!("{POLICIES}mock.toml")).unwrap();
    assert!(text.contains(from), "mock.toml has no {from:?}");
    Policy::from_toml_str(&text.replace(from, to)).unwrap()
}
