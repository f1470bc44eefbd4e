//! Verification cost of a real TDX quote with its collateral in memory (parse, collateral
//! windows, DCAP chain and signatures, policy). Prints ns per verification.
//!
//! Run: `cargo bench -p tessera-attestation --bench verify`
use std::time::Instant;

use tessera_attestation::{
    verify, verify_fresh, Collateral, CollateralWatermark, Policy, VerificationCache,
};

const VECTORS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/vectors/tdx/");
const POLICY: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../policies/example.toml");
/// Inside the collateral's validity window (tests/vectors/README.md).
const NOW: u64 = 1_752_919_234;
const ITERATIONS: u32 = 500;
const WARMUP: u32 = 20;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let quote = std::fs::read(format!("{VECTORS}quote_uptodate.bin"))?;
    let collateral = Collateral::from_json(&std::fs::read(format!(
        "{VECTORS}quote_uptodate.collateral.json"
    ))?)?;
    let policy = Policy::from_toml_str(&std::fs::read_to_string(POLICY)?)?;

    for _ in 0..WARMUP {
        verify(&quote, &collateral, &policy, NOW, None)?;
    }
    let mut samples = Vec::with_capacity(ITERATIONS as usize);
    let start = Instant::now();
    for _ in 0..ITERATIONS {
        let t = Instant::now();
        let verified = verify(&quote, &collateral, &policy, NOW, None)?;
        samples.push(t.elapsed().as_nanos());
        std::hint::black_box(verified);
    }
    let total = start.elapsed().as_nanos();
    samples.sort_unstable();
    let pct = |p: usize| samples[(samples.len() - 1) * p / 100];
    println!(
        "verify real TDX quote (v4, Intel root, example policy): {} ns/verify mean, p50 {} ns, p99 {} ns, {} iterations",
        total / u128::from(ITERATIONS),
        pct(50),
        pct(99),
        ITERATIONS
    );

    // A cache hit: key computation (SHA-256 over quote, collateral and policy digest),
    // lookup and the watermark check of the cached verdict's collateral.
    let watermark = CollateralWatermark::default();
    let mut cache = VerificationCache::default();
    let key = VerificationCache::key(&quote, &collateral, &policy, None);
    let verified = verify_fresh(&quote, &collateral, &policy, NOW, None, &watermark)?;
    cache.insert(key, verified, NOW);
    let start = Instant::now();
    for _ in 0..ITERATIONS {
        let key = VerificationCache::key(&quote, &collateral, &policy, None);
        std::hint::black_box(cache.get(&key, NOW, &watermark).is_some());
    }
    println!(
        "cache hit (key + lookup + watermark check): {} ns/lookup",
        start.elapsed().as_nanos() / u128::from(ITERATIONS)
    );
    Ok(())
}
