//! Parse arbitrary policy text: never panics; a parsed policy's digest is stable under
//! re-serialization. Run: `cd attestation/fuzz && cargo +nightly fuzz run policy_parse`
#![no_main]

use libfuzzer_sys::fuzz_target;
use tessera_attestation::Policy;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(policy) = Policy::from_toml_str(text) {
        let again = toml::to_string(&policy)
            .ok()
            .and_then(|t| Policy::from_toml_str(&t).ok());
        if let Some(again) = again {
            assert_eq!(again.digest(), policy.digest());
        }
    }
});
