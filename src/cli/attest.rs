//! `tessera quote`, `tessera verify`, `tessera policy`: the attestation commands.
//!
//! Exit codes of `verify`: 0 accepted, 1 rejected (including quote bytes that do not parse
//! as a TD quote), 2 bad input or usage (unreadable files, collateral, policy or claims that
//! do not parse, bad hex). `quote`: 0 written, 1 the provider failed, 2 usage.
//! `policy check`: 0 valid, 1 invalid, 2 unreadable. `policy from-quote`: 0 printed, 2 bad input.
//!
//! The verification itself reads no clock; this front end passes the wall clock as `now`
//! unless `--now` is given.
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail, Context, Result};
use clap::{Args, Subcommand, ValueEnum};
use serde_json::json;
use tessera_attestation::provider::configfs::ConfigfsTsmProvider;
#[cfg(feature = "mock-attestation")]
use tessera_attestation::provider::mock::{mock_root_der, MockConfig, MockProvider};
use tessera_attestation::quote::{parse_quote, QUOTE_LEN_MAX};
use tessera_attestation::verify::{format_unix, COLLATERAL_JSON_LEN_MAX};
#[cfg(feature = "mock-attestation")]
use tessera_attestation::TcbStatus;
use tessera_attestation::{
    appraise, Appraisal, Binding, BindingContext, Claims, Collateral, Policy, QuoteProvider,
};

/// Largest policy or claims file read.
const SMALL_FILE_LEN_MAX: u64 = 256 * 1024;

/// Attestation subcommands, flattened into the top-level command list.
#[derive(Subcommand, Debug)]
pub enum AttestCommand {
    /// Produce a TDX quote over 64 bytes of report data (in a TD, or with the mock provider).
    Quote(Box<QuoteArgs>),
    /// Verify a quote with its collateral against a policy, listing every check.
    Verify(Box<VerifyArgs>),
    /// Check a policy file or derive one from a quote.
    Policy {
        #[command(subcommand)]
        command: PolicyCommand,
    },
}

/// Where `tessera quote` gets its quote.
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProviderArg {
    /// This TD, through configfs-tsm (/sys/kernel/config/tsm/report).
    Tdx,
    /// The mock provider (test PKI; verifies only under `trust_root = "mock"`). Only in
    /// builds with the `mock-attestation` feature.
    Mock,
}

/// Arguments of `tessera quote`.
#[derive(Args, Debug)]
pub struct QuoteArgs {
    /// Quote provider.
    #[arg(long, value_enum)]
    provider: ProviderArg,
    /// Report data: 64 bytes as 128 hex digits.
    #[arg(long, value_name = "HEX")]
    report_data: String,
    /// Where to write the quote.
    #[arg(long, value_name = "FILE")]
    out: PathBuf,
    /// Where to write the collateral (mock only: it makes its own; real collateral comes
    /// from Intel PCS or a PCCS and is not fetched by tessera).
    #[arg(long, value_name = "FILE")]
    collateral_out: Option<PathBuf>,
    /// Mock: MRTD (96 hex digits).
    #[arg(long, value_name = "HEX")]
    mock_mrtd: Option<String>,
    /// Mock: RTMR0.
    #[arg(long, value_name = "HEX")]
    mock_rtmr0: Option<String>,
    /// Mock: RTMR1.
    #[arg(long, value_name = "HEX")]
    mock_rtmr1: Option<String>,
    /// Mock: RTMR2.
    #[arg(long, value_name = "HEX")]
    mock_rtmr2: Option<String>,
    /// Mock: RTMR3.
    #[arg(long, value_name = "HEX")]
    mock_rtmr3: Option<String>,
    /// Mock: MRCONFIGID.
    #[arg(long, value_name = "HEX")]
    mock_mr_config_id: Option<String>,
    /// Mock: set the DEBUG TD attribute.
    #[arg(long)]
    mock_debug: bool,
    /// Mock: TCB status the collateral gives the platform (e.g. OutOfDate).
    #[arg(long, value_name = "STATUS")]
    mock_tcb_status: Option<String>,
    /// Mock: start of the collateral validity (Unix seconds; default one hour ago). It is
    /// valid for 30 days.
    #[arg(long, value_name = "UNIX_SECS")]
    mock_issued_at: Option<u64>,
    /// Mock: revoke the PCK certificate in the collateral.
    #[arg(long)]
    mock_revoked_pck: bool,
    /// Mock: corrupt the quote signature.
    #[arg(long)]
    mock_corrupt_signature: bool,
}

/// Arguments of `tessera verify`.
#[derive(Args, Debug)]
pub struct VerifyArgs {
    /// The quote (raw bytes).
    #[arg(long, value_name = "FILE")]
    quote: PathBuf,
    /// Its collateral (dcap-qvl QuoteCollateralV3 JSON, as in tests/vectors/tdx/).
    #[arg(long, value_name = "FILE")]
    collateral: PathBuf,
    /// The policy (TOML).
    #[arg(long, value_name = "FILE")]
    policy: PathBuf,
    /// Verification time (Unix seconds); default: the system clock.
    #[arg(long, value_name = "UNIX_SECS")]
    now: Option<u64>,
    /// Print one JSON object instead of the human report.
    #[arg(long)]
    json: bool,
    /// Binding claims (JSON) whose hash must be the quote's report data.
    #[arg(long, value_name = "FILE", requires = "peer_key")]
    claims: Option<PathBuf>,
    /// The authenticated peer key the claims must name (64 hex digits).
    #[arg(long, value_name = "HEX", requires = "claims")]
    peer_key: Option<String>,
    /// The network id the claims must name (default: not checked).
    #[arg(long, value_name = "ID", requires = "claims")]
    network_id: Option<String>,
}

/// `tessera policy …`.
#[derive(Subcommand, Debug)]
pub enum PolicyCommand {
    /// Validate a policy file and print its canonical digest.
    Check {
        /// The policy file.
        file: PathBuf,
    },
    /// Print a policy pinning a quote's MRTD, RTMR0-3, TD attributes and XFAM.
    FromQuote {
        /// The quote.
        #[arg(long, value_name = "FILE")]
        quote: PathBuf,
        /// Policy name.
        #[arg(long, value_name = "NAME", default_value = "from-quote")]
        name: String,
    },
}

/// Runs one attestation subcommand and returns the process exit code.
pub fn run(command: AttestCommand) -> ExitCode {
    let result = match command {
        AttestCommand::Quote(args) => run_quote(&args).map(|()| 0),
        AttestCommand::Verify(args) => run_verify(&args),
        AttestCommand::Policy {
            command: PolicyCommand::Check { file },
        } => run_policy_check(&file),
        AttestCommand::Policy {
            command: PolicyCommand::FromQuote { quote, name },
        } => run_from_quote(&quote, &name).map(|()| 0),
    };
    match result {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("tessera: {e:#}");
            ExitCode::from(e.downcast_ref::<ProviderFailed>().map_or(2, |_| 1))
        }
    }
}

/// A quote provider failed (exit 1, not a usage error).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct ProviderFailed(String);

fn wall_clock() -> Result<u64> {
    Ok(SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .context("system clock is before 1970")?
        .as_secs())
}

pub(crate) fn read_limited(path: &Path, len_max: u64, what: &str) -> Result<Vec<u8>> {
    use std::io::Read;
    let file = std::fs::File::open(path)
        .with_context(|| format!("cannot read {what} {}", path.display()))?;
    let mut bytes = Vec::new();
    file.take(len_max + 1)
        .read_to_end(&mut bytes)
        .with_context(|| format!("cannot read {what} {}", path.display()))?;
    if bytes.len() as u64 > len_max {
        bail!("{what} {} is larger than {len_max} bytes", path.display());
    }
    Ok(bytes)
}

fn hex_array<const N: usize>(what: &str, s: &str) -> Result<[u8; N]> {
    let mut out = [0u8; N];
    hex::decode_to_slice(s.trim(), &mut out)
        .map_err(|e| anyhow!("{what}: expected {} hex digits ({N} bytes): {e}", 2 * N))?;
    Ok(out)
}

pub(crate) fn load_policy(path: &Path) -> Result<Policy> {
    let bytes = read_limited(path, SMALL_FILE_LEN_MAX, "policy")?;
    let text = String::from_utf8(bytes)
        .with_context(|| format!("policy {} is not UTF-8", path.display()))?;
    Policy::from_toml_str(&text).with_context(|| format!("policy {}", path.display()))
}

fn run_quote(args: &QuoteArgs) -> Result<()> {
    let report_data: [u8; 64] = hex_array("--report-data", &args.report_data)?;
    let mock_flags = args.mock_mrtd.is_some()
        || args.mock_rtmr0.is_some()
        || args.mock_rtmr1.is_some()
        || args.mock_rtmr2.is_some()
        || args.mock_rtmr3.is_some()
        || args.mock_mr_config_id.is_some()
        || args.mock_debug
        || args.mock_tcb_status.is_some()
        || args.mock_issued_at.is_some()
        || args.mock_revoked_pck
        || args.mock_corrupt_signature;
    match args.provider {
        ProviderArg::Tdx => {
            if mock_flags {
                bail!("--mock-* options need --provider mock");
            }
            if args.collateral_out.is_some() {
                bail!("--collateral-out is only available with --provider mock: tessera fetches no collateral; get it from Intel PCS or your PCCS");
            }
            let quote = ConfigfsTsmProvider::new()
                .quote(&report_data)
                .map_err(|e| ProviderFailed(e.to_string()))?;
            write(&args.out, quote.as_bytes(), "quote")?;
            eprintln!(
                "tessera quote: wrote {} ({} bytes, TDX via configfs-tsm)",
                args.out.display(),
                quote.as_bytes().len()
            );
        }
        ProviderArg::Mock => run_mock_quote(args, &report_data)?,
    }
    Ok(())
}

/// `tessera quote --provider mock`.
#[cfg(feature = "mock-attestation")]
fn run_mock_quote(args: &QuoteArgs, report_data: &[u8; 64]) -> Result<()> {
    let mut config = MockConfig {
        collateral_issued_at: match args.mock_issued_at {
            Some(t) => t,
            None => wall_clock()?.saturating_sub(3_600),
        },
        ..MockConfig::default()
    };
    if let Some(h) = &args.mock_mrtd {
        config.mr_td = hex_array("--mock-mrtd", h)?;
    }
    for (i, value) in [
        &args.mock_rtmr0,
        &args.mock_rtmr1,
        &args.mock_rtmr2,
        &args.mock_rtmr3,
    ]
    .into_iter()
    .enumerate()
    {
        if let Some(h) = value {
            config.rtmr[i] = hex_array(&format!("--mock-rtmr{i}"), h)?;
        }
    }
    if let Some(h) = &args.mock_mr_config_id {
        config.mr_config_id = hex_array("--mock-mr-config-id", h)?;
    }
    if args.mock_debug {
        config = config.debug();
    }
    if let Some(s) = &args.mock_tcb_status {
        let status: TcbStatus = s.parse().map_err(|e| anyhow!("--mock-tcb-status: {e}"))?;
        config = config.with_tcb_status(status, &[]);
    }
    config.revoke_pck = args.mock_revoked_pck;
    config.corrupt_signature = args.mock_corrupt_signature;
    let provider = MockProvider::new(config).map_err(|e| ProviderFailed(e.to_string()))?;
    let quote = provider
        .quote(report_data)
        .map_err(|e| ProviderFailed(e.to_string()))?;
    write(&args.out, quote.as_bytes(), "quote")?;
    if let Some(path) = &args.collateral_out {
        let collateral = provider
            .collateral()
            .map_err(|e| ProviderFailed(e.to_string()))?;
        write(path, collateral.to_json().as_bytes(), "collateral")?;
    }
    eprintln!(
        "tessera quote: wrote {} ({} bytes, MOCK provider: verifies only under trust_root = \"mock\")",
        args.out.display(),
        quote.as_bytes().len()
    );
    Ok(())
}

/// `tessera quote --provider mock` in a build without the mock provider.
#[cfg(not(feature = "mock-attestation"))]
fn run_mock_quote(_: &QuoteArgs, _: &[u8; 64]) -> Result<()> {
    bail!(
        "--provider mock: this binary was built without the `mock-attestation` feature, as \
         production builds are, so it has no mock provider (build with `--features mock-attestation`)"
    )
}

fn write(path: &Path, bytes: &[u8], what: &str) -> Result<()> {
    std::fs::write(path, bytes).with_context(|| format!("cannot write {what} {}", path.display()))
}

fn run_verify(args: &VerifyArgs) -> Result<u8> {
    let quote = read_limited(&args.quote, QUOTE_LEN_MAX as u64, "quote")?;
    let collateral_bytes = read_limited(
        &args.collateral,
        COLLATERAL_JSON_LEN_MAX as u64,
        "collateral",
    )?;
    let collateral = Collateral::from_json(&collateral_bytes)
        .with_context(|| format!("collateral {}", args.collateral.display()))?;
    let policy = load_policy(&args.policy)?;
    let now = match args.now {
        Some(t) => t,
        None => wall_clock()?,
    };
    let binding_inputs = match (&args.claims, &args.peer_key) {
        (Some(path), Some(key)) => {
            let claims = Claims::from_json(&read_limited(path, SMALL_FILE_LEN_MAX, "claims")?)
                .with_context(|| format!("claims {}", path.display()))?;
            let context = BindingContext {
                peer_key: hex_array("--peer-key", key)?,
                network_id: args.network_id.clone(),
                group_scope: None,
            };
            Some((claims, context))
        }
        (None, None) => None,
        _ => bail!("--claims and --peer-key go together"),
    };
    let binding = binding_inputs
        .as_ref()
        .map(|(claims, context)| Binding { claims, context });
    let appraisal = appraise(&quote, &collateral, &policy, now, binding);
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&report_json(&appraisal, &policy, now))?
        );
    } else {
        print_report(&appraisal, &policy, now, &args.quote);
    }
    Ok(if appraisal.accepted() { 0 } else { 1 })
}

fn report_json(a: &Appraisal, policy: &Policy, now: u64) -> serde_json::Value {
    let measurements = a.parsed.as_ref().map(|p| {
        let m = &p.measurements;
        json!({
            "mr_td": hex::encode(m.mr_td),
            "rtmr0": hex::encode(m.rtmr[0]),
            "rtmr1": hex::encode(m.rtmr[1]),
            "rtmr2": hex::encode(m.rtmr[2]),
            "rtmr3": hex::encode(m.rtmr[3]),
            "mr_config_id": hex::encode(m.mr_config_id),
            "mr_owner": hex::encode(m.mr_owner),
            "mr_owner_config": hex::encode(m.mr_owner_config),
            "mr_seam": hex::encode(m.mr_seam),
            "td_attributes": hex::encode(m.td_attributes),
            "xfam": hex::encode(m.xfam),
            "tee_tcb_svn": hex::encode(m.tee_tcb_svn),
            "debug": m.debug(),
        })
    });
    let dcap = a.dcap.as_ref();
    json!({
        "accepted": a.accepted(),
        "tcb_status": dcap.map(|d| d.tcb_status.as_str()),
        "advisory_ids": dcap.map(|d| d.advisory_ids.clone()).unwrap_or_default(),
        "fmspc": dcap.map(|d| hex::encode_upper(d.fmspc)),
        "platform": dcap.map(|d| json!({
            "dynamic_platform": d.platform.dynamic_platform,
            "cached_keys": d.platform.cached_keys,
            "smt_enabled": d.platform.smt_enabled,
        })),
        "tcb_eval_data_number": dcap.map(|d| d.tcb_eval_data_number),
        "quote_version": a.parsed.as_ref().map(|p| p.version),
        "report_data": a.parsed.as_ref().map(|p| hex::encode(p.report_data)),
        "measurements": measurements,
        "checks": a.checks.iter().map(|c| json!({ "name": c.name, "ok": c.ok, "detail": c.detail })).collect::<Vec<_>>(),
        "failed_check": a.outcome.as_ref().err().and_then(|_| a.checks.iter().find(|c| !c.ok)).map(|c| c.name),
        "reason": a.outcome.as_ref().err().map(|e| e.to_string()),
        "valid_until": a.outcome.as_ref().ok().map(|v| v.valid_until),
        "policy": { "name": policy.name, "version": policy.version, "digest": policy.digest_hex(), "trust_root": policy.trust_root.to_string() },
        "now": now,
    })
}

fn print_report(a: &Appraisal, policy: &Policy, now: u64, quote_path: &Path) {
    println!("quote   {}", quote_path.display());
    println!(
        "policy  {} v{} (trust root {}, digest {})",
        policy.name,
        policy.version,
        policy.trust_root,
        policy.digest_hex()
    );
    println!("now     {} ({now})", format_unix(now));
    if let Some(p) = &a.parsed {
        println!("mr_td   {}", hex::encode(p.measurements.mr_td));
    }
    println!();
    for check in &a.checks {
        println!(
            "[{}] {:<22} {}",
            if check.ok { " ok " } else { "FAIL" },
            check.name,
            check.detail
        );
    }
    if a.dcap.is_none() {
        println!(
            "       (policy and binding checks not run: the quote did not pass {})",
            if a.parsed.is_none() {
                "parsing"
            } else {
                "DCAP verification"
            }
        );
    }
    println!();
    match &a.outcome {
        Ok(v) => println!(
            "ACCEPTED: TCB {}, profile {:?}; valid until {}",
            v.tcb_status,
            v.matched_profile,
            format_unix(v.valid_until)
        ),
        Err(e) => println!("REJECTED: {e}"),
    }
}

fn run_policy_check(file: &Path) -> Result<u8> {
    let bytes = read_limited(file, SMALL_FILE_LEN_MAX, "policy")?;
    let text = String::from_utf8(bytes)
        .with_context(|| format!("policy {} is not UTF-8", file.display()))?;
    match Policy::from_toml_str(&text) {
        Ok(policy) => {
            println!(
                "ok: {} v{} (trust root {}, {} profile(s))",
                policy.name,
                policy.version,
                policy.trust_root,
                policy.td.profiles.len()
            );
            println!("digest {}", policy.digest_hex());
            Ok(0)
        }
        Err(e) => {
            eprintln!("invalid policy {}: {e}", file.display());
            Ok(1)
        }
    }
}

/// Whether `root` is the mock provider's root certificate. A build without the mock
/// provider cannot tell, and writes `trust_root = "intel"`: such a policy never accepts a
/// mock quote, which is the safe side.
#[cfg(feature = "mock-attestation")]
fn is_mock_root(root: &[u8]) -> bool {
    root == mock_root_der()
}

#[cfg(not(feature = "mock-attestation"))]
fn is_mock_root(_: &[u8]) -> bool {
    false
}

fn run_from_quote(path: &Path, name: &str) -> Result<()> {
    let bytes = read_limited(path, QUOTE_LEN_MAX as u64, "quote")?;
    let parsed = parse_quote(&bytes).with_context(|| format!("quote {}", path.display()))?;
    let mock = parsed
        .pck_chain_der()
        .last()
        .is_some_and(|root| is_mock_root(root));
    let m = &parsed.measurements;
    let label = format!("{} (measured from {})", name, path.display());
    let mut out = String::new();
    out.push_str(&format!(
        "# Generated by `tessera policy from-quote` from {}. The quote's signature was NOT checked:\n\
         # verify it before trusting these values. RTMR0 depends on the host shape.\n",
        path.display()
    ));
    out.push_str(&format!("name = {}\nversion = 1\n", toml_string(name)));
    out.push_str(&format!(
        "trust_root = \"{}\"{}\n\n",
        if mock { "mock" } else { "intel" },
        if mock {
            "   # the quote chains to the mock test root"
        } else {
            ""
        }
    ));
    out.push_str("[tcb]\nallowed_statuses = [\"UpToDate\"]\n\n");
    out.push_str(&format!(
        "[td]\nallow_debug = false\nattributes = \"{}\"\nattributes_mask = \"ffffffffffffffff\"\nxfam = \"{}\"\nxfam_mask = \"ffffffffffffffff\"\n\n",
        hex::encode(m.td_attributes),
        hex::encode(m.xfam)
    ));
    out.push_str(&format!(
        "[[td.profiles]]\nlabel = {}\n",
        toml_string(&label)
    ));
    out.push_str(&format!("mr_td = \"{}\"\n", hex::encode(m.mr_td)));
    for (i, r) in m.rtmr.iter().enumerate() {
        out.push_str(&format!("rtmr{i} = \"{}\"\n", hex::encode(r)));
    }
    out.push_str("\n[binding]\nmax_quote_age_secs = 600\n");
    // What we print must be a valid policy.
    Policy::from_toml_str(&out).context("internal: generated policy does not validate")?;
    print!("{out}");
    Ok(())
}

/// A TOML basic string.
pub(crate) fn toml_string(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| "\"\"".to_owned())
}
