//! Command-line front ends. `anyhow` is allowed here and only here.
pub mod attest;
#[cfg(feature = "mock-attestation")]
pub mod bench;
#[cfg(feature = "mock-attestation")]
pub mod demo;
pub mod kv;
pub mod lincheck;
pub mod measure;
pub mod member;
pub mod metrics;
pub mod node;
pub mod provision;
pub mod sim;
pub mod status;
pub mod workload;

/// `tessera demo` and `tessera bench` in a build without the mock provider: say why and how
/// to get one. Exit status 2, as for a usage error.
#[cfg(not(feature = "mock-attestation"))]
pub fn without_mock_attestation(command: &str) -> std::process::ExitCode {
    eprintln!(
        "tessera {command}: not in this build. It runs mock-attested members, and this binary \
         was built without the `mock-attestation` feature, as production builds are, so it \
         carries no mock root. Build with `--features mock-attestation` (`make demo`)."
    );
    std::process::ExitCode::from(2)
}
