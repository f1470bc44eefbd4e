//! `tessera measure`: the measurements a TD image will have, computed offline, and a policy
//! that pins them (architecture.md §4.5). The arithmetic is `tessera_attestation::measure`; this
//! front end reads the files, prints the registers and writes the policy.
//!
//! Exit codes: 0 computed (and the policy written), 1 the quote given with
//! `--rtmr0-from-quote` is not a boot of this firmware (its MRTD differs), 2 bad input or
//! usage (unreadable or malformed files, bad options).
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{anyhow, bail, Context, Result};
use clap::Args;
use serde_json::json;
use tessera_attestation::measure::rtmr::{firmware_cmdline, CMDLINE_LEN_MAX};
use tessera_attestation::measure::{
    measure_image, Digest48, ImageInputs, ImageMeasurements, KernelHeader, PageOrder, RtmrLog,
};
use tessera_attestation::quote::{parse_quote, Measurements, QUOTE_LEN_MAX};
use tessera_attestation::Policy;

use super::attest::{read_limited, toml_string};

/// Largest firmware image read (OVMF images are a few MiB).
const FIRMWARE_LEN_MAX: u64 = 64 << 20;
/// Largest kernel read.
const KERNEL_LEN_MAX: u64 = 256 << 20;
/// Largest initrd read.
const INITRD_LEN_MAX: u64 = 1 << 30;
/// Largest `--memory` (QEMU's own limit is far above any TD here).
const MEMORY_BYTES_MAX: u64 = 16 << 40;
/// Longest policy name or profile label (the policy's own limit).
const LABEL_LEN_MAX: usize = tessera_attestation::policy::LABEL_LEN_MAX;

/// Arguments of `tessera measure`.
#[derive(Args, Debug)]
pub struct MeasureArgs {
    /// The TDVF (TDX OVMF) firmware image, as given to QEMU with -bios.
    #[arg(long, value_name = "FILE")]
    firmware: PathBuf,
    /// The kernel, a bzImage with an EFI stub, as given to QEMU with -kernel.
    #[arg(long, value_name = "FILE")]
    kernel: PathBuf,
    /// The initrd, as given to QEMU with -initrd; omit for a boot without one.
    #[arg(long, value_name = "FILE")]
    initrd: Option<PathBuf>,
    /// The kernel command line, as given to QEMU with -append (OVMF's " initrd=initrd" is
    /// added here when there is an initrd: do not include it).
    #[arg(long, value_name = "TEXT", required_unless_present = "cmdline_file")]
    cmdline: Option<String>,
    /// Read the command line from a file instead (one trailing newline is dropped, as
    /// `-append "$(cat FILE)"` would).
    #[arg(long, value_name = "FILE", conflicts_with = "cmdline")]
    cmdline_file: Option<PathBuf>,
    /// Guest memory, as QEMU's -m: a number with a K, M, G or T suffix (powers of 1024); a
    /// bare number is MiB. RTMR1 depends on it when there is an initrd (QEMU places the
    /// initrd below the top of low memory and writes its address into the kernel header).
    #[arg(long, value_name = "SIZE", default_value = "2G")]
    memory: String,
    /// Number of vCPUs (QEMU -smp). It changes only RTMR0 (ACPI tables), which is not
    /// computed here: it is recorded in the profile label.
    #[arg(long, value_name = "N")]
    cpus: Option<u32>,
    /// MRTD in the two-pass order (each firmware section's pages all added, then all
    /// extended), as some QEMU/KVM versions do; default: single pass (each page added then
    /// extended).
    #[arg(long)]
    two_pass: bool,
    /// Hash the kernel file as it is, without QEMU's setup-header patch: for QEMU versions
    /// that leave the header of confidential guests alone, or firmware that reads QEMU's
    /// unpatched copy (fw_cfg etc/boot/kernel).
    #[arg(long)]
    kernel_unpatched: bool,
    /// Take RTMR0 from this quote of a real boot of the same image on the same host shape.
    /// Its MRTD must be this firmware's; its RTMR1 and RTMR2 are compared with the computed
    /// ones. Without it RTMR0 is left open (any value accepted).
    #[arg(long, value_name = "FILE")]
    rtmr0_from_quote: Option<PathBuf>,
    /// Print one JSON object instead of the human report.
    #[arg(long)]
    json: bool,
    /// Write a complete policy pinning these measurements to FILE (strict defaults: Intel
    /// root, no debug TD, UpToDate TCB only).
    #[arg(long, value_name = "FILE")]
    policy_out: Option<PathBuf>,
    /// Name of the written policy (default: the policy file's name without `.toml`).
    #[arg(long, value_name = "NAME", requires = "policy_out")]
    policy_name: Option<String>,
    /// Pin MRCONFIGID in the written policy: the id of the node.toml the TD is started
    /// with (`tessera config-id`, 96 hex). A provisioner's policy should: the key then
    /// only reaches a node that runs exactly that config.
    #[arg(long, value_name = "HEX", requires = "policy_out")]
    mr_config_id: Option<String>,
}

/// The quote's MRTD is not this firmware's: RTMR0 from it would describe another image.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct QuoteMismatch(String);

/// Runs `tessera measure` and returns the process exit code.
pub fn run(args: &MeasureArgs) -> ExitCode {
    match measure(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tessera measure: {e:#}");
            ExitCode::from(e.downcast_ref::<QuoteMismatch>().map_or(2, |_| 1))
        }
    }
}

/// RTMR0 and the comparison with a quote, when one was given.
struct FromQuote {
    path: PathBuf,
    measurements: Measurements,
}

fn measure(args: &MeasureArgs) -> Result<()> {
    if let Some(id) = &args.mr_config_id {
        if id.len() != 96 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
            bail!("--mr-config-id: expected 96 hex digits (tessera config-id), got {id:?}");
        }
    }
    let memory_bytes = parse_memory(&args.memory)?;
    let firmware = read_limited(&args.firmware, FIRMWARE_LEN_MAX, "firmware")?;
    let kernel = read_limited(&args.kernel, KERNEL_LEN_MAX, "kernel")?;
    let initrd = match &args.initrd {
        Some(path) => Some(read_limited(path, INITRD_LEN_MAX, "initrd")?),
        None => None,
    };
    let cmdline = match (&args.cmdline, &args.cmdline_file) {
        (Some(text), None) => text.clone(),
        (None, Some(path)) => {
            let bytes = read_limited(path, CMDLINE_LEN_MAX as u64, "command line file")?;
            let mut text = String::from_utf8(bytes)
                .with_context(|| format!("command line file {} is not UTF-8", path.display()))?;
            if text.ends_with('\n') {
                text.pop();
            }
            text
        }
        _ => bail!("give the command line with --cmdline or --cmdline-file"),
    };
    let page_order = if args.two_pass {
        PageOrder::TwoPass
    } else {
        PageOrder::SinglePass
    };
    let kernel_header = if args.kernel_unpatched {
        KernelHeader::AsFile
    } else {
        KernelHeader::QemuPatched
    };
    let m = measure_image(&ImageInputs {
        firmware: &firmware,
        kernel: &kernel,
        initrd: initrd.as_deref(),
        cmdline: &cmdline,
        memory_bytes,
        page_order,
        kernel_header,
    })?;
    let quote = match &args.rtmr0_from_quote {
        Some(path) => Some(read_quote(path, &m, page_order)?),
        None => None,
    };
    let passed = firmware_cmdline(&cmdline, initrd.is_some())?;
    let report = Report {
        args,
        m: &m,
        quote: quote.as_ref(),
        memory_bytes,
        initrd_len: initrd.as_ref().map(Vec::len),
        page_order,
        kernel_header,
        passed_cmdline: &passed,
    };
    let policy = match &args.policy_out {
        Some(path) => {
            let (text, policy) = report.policy(path)?;
            std::fs::write(path, text)
                .with_context(|| format!("cannot write policy {}", path.display()))?;
            Some((path, policy))
        }
        None => None,
    };
    if args.json {
        let mut value = report.json();
        if let Some((path, policy)) = &policy {
            value["policy"] = json!({
                "file": path.display().to_string(),
                "name": policy.name,
                "digest": policy.digest_hex(),
            });
        }
        println!("{}", serde_json::to_string_pretty(&value)?);
    } else {
        report.print();
        if let Some((path, policy)) = &policy {
            println!();
            println!(
                "policy  {} written (name {:?}, digest {})",
                path.display(),
                policy.name,
                policy.digest_hex()
            );
        }
    }
    if let Some(q) = &quote {
        for (name, computed, quoted) in [
            ("RTMR1", m.rtmr1.value(), q.measurements.rtmr[1]),
            ("RTMR2", m.rtmr2.value(), q.measurements.rtmr[2]),
        ] {
            if computed != quoted {
                eprintln!(
                    "tessera measure: warning: the quote's {name} {} differs from the computed {}: \
                     the quote booted another kernel, command line, initrd or memory size, or this \
                     computation does not model the host's QEMU/OVMF (try --kernel-unpatched for RTMR1)",
                    hex::encode(quoted),
                    hex::encode(computed)
                );
            }
        }
    }
    Ok(())
}

/// Reads and parses the quote, and checks it is a boot of this firmware.
fn read_quote(path: &Path, m: &ImageMeasurements, order: PageOrder) -> Result<FromQuote> {
    let bytes = read_limited(path, QUOTE_LEN_MAX as u64, "quote")?;
    let parsed = parse_quote(&bytes).with_context(|| format!("quote {}", path.display()))?;
    if parsed.measurements.mr_td != m.mr_td.value {
        return Err(QuoteMismatch(format!(
            "quote {}: its MRTD {} is not this firmware's {} ({} order): RTMR0 from it would \
             describe another image (or the host's VMM uses the other page order: try {})",
            path.display(),
            hex::encode(parsed.measurements.mr_td),
            hex::encode(m.mr_td.value),
            order.as_str(),
            match order {
                PageOrder::SinglePass => "--two-pass",
                PageOrder::TwoPass => "without --two-pass",
            }
        ))
        .into());
    }
    Ok(FromQuote {
        path: path.to_owned(),
        measurements: parsed.measurements,
    })
}

/// `--memory`: QEMU's `-m` syntax without fractions.
fn parse_memory(text: &str) -> Result<u64> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (digits, suffix) = text.split_at(split);
    let shift = match suffix {
        "" | "M" | "m" | "MiB" => 20,
        "K" | "k" | "KiB" => 10,
        "G" | "g" | "GiB" => 30,
        "T" | "t" | "TiB" => 40,
        _ => bail!("--memory {text:?}: expected a number with K, M, G or T (e.g. 2G, 4096M)"),
    };
    let n: u64 = digits
        .parse()
        .map_err(|_| anyhow!("--memory {text:?}: expected a number with K, M, G or T (e.g. 2G)"))?;
    let bytes = n
        .checked_mul(1 << shift)
        .filter(|&b| b > 0 && b <= MEMORY_BYTES_MAX)
        .ok_or_else(|| anyhow!("--memory {text:?}: must be more than 0 and at most 16T"))?;
    Ok(bytes)
}

fn human_bytes(n: u64) -> String {
    for (shift, unit) in [(40, "TiB"), (30, "GiB"), (20, "MiB"), (10, "KiB")] {
        if n >= 1 << shift && n % (1 << shift) == 0 {
            return format!("{} {unit}", n >> shift);
        }
    }
    format!("{n} bytes")
}

fn file_name(path: &Path) -> String {
    path.file_name().map_or_else(
        || path.display().to_string(),
        |n| n.to_string_lossy().into_owned(),
    )
}

/// Cuts `s` to at most `max` bytes on a character boundary.
fn truncate(mut s: String, max: usize) -> String {
    if s.len() > max {
        let mut end = max;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
    }
    s
}

struct Report<'a> {
    args: &'a MeasureArgs,
    m: &'a ImageMeasurements,
    quote: Option<&'a FromQuote>,
    memory_bytes: u64,
    initrd_len: Option<usize>,
    page_order: PageOrder,
    kernel_header: KernelHeader,
    passed_cmdline: &'a str,
}

impl Report<'_> {
    fn rtmr0(&self) -> Option<Digest48> {
        self.quote.map(|q| q.measurements.rtmr[0])
    }

    fn mrtd_detail(&self) -> String {
        format!(
            "firmware {}: TDVF metadata with {} sections, {} pages added, {} 256-byte chunks extended ({} order)",
            self.args.firmware.display(),
            self.m.mr_td.sections,
            self.m.mr_td.pages_added,
            self.m.mr_td.chunks_extended,
            self.page_order.as_str()
        )
    }

    fn rtmr0_detail(&self) -> String {
        match self.quote {
            Some(q) => format!(
                "firmware configuration (ACPI tables, memory map, CPUs, boot variables), from the quote {}: valid for this host shape only",
                q.path.display()
            ),
            None => "firmware configuration (ACPI tables, memory map, CPUs, boot variables): depends on the host, not computed; open (any value) unless taken from a real boot with --rtmr0-from-quote".to_owned(),
        }
    }

    fn rtmr1_detail(&self) -> String {
        format!(
            "kernel {} ({}, memory {}, initrd {}); not checked against an independent reference",
            self.args.kernel.display(),
            match self.kernel_header {
                KernelHeader::QemuPatched => "setup header as QEMU patches it",
                KernelHeader::AsFile => "file as it is, no header patch",
            },
            human_bytes(self.memory_bytes),
            self.initrd_len
                .map_or("none".to_owned(), |n| format!("{n} bytes"))
        )
    }

    fn rtmr2_detail(&self) -> String {
        match &self.args.initrd {
            Some(path) => format!(
                "command line as OVMF passes it (with \" initrd=initrd\"), then the initrd {}",
                path.display()
            ),
            None => "command line as OVMF passes it (no initrd)".to_owned(),
        }
    }

    fn compare(&self, index: usize, computed: &Digest48) -> Option<&'static str> {
        self.quote.map(|q| {
            if &q.measurements.rtmr[index] == computed {
                "matches the quote"
            } else {
                "DIFFERS from the quote"
            }
        })
    }

    fn print(&self) {
        let line = |name: &str, value: Option<Digest48>, detail: String| {
            println!(
                "{name:<6} {}",
                value.map_or("(open)".to_owned(), hex::encode)
            );
            println!("       {detail}");
        };
        let events = |log: &RtmrLog| {
            for e in &log.events {
                println!("         {}  {}", hex::encode(e.digest), e.what);
            }
        };
        line("MRTD", Some(self.m.mr_td.value), self.mrtd_detail());
        line("RTMR0", self.rtmr0(), self.rtmr0_detail());
        let rtmr1 = self.m.rtmr1.value();
        line("RTMR1", Some(rtmr1), self.rtmr1_detail());
        if let Some(c) = self.compare(1, &rtmr1) {
            println!("       {c}");
        }
        events(&self.m.rtmr1);
        let rtmr2 = self.m.rtmr2.value();
        line("RTMR2", Some(rtmr2), self.rtmr2_detail());
        if let Some(c) = self.compare(2, &rtmr2) {
            println!("       {c}");
        }
        events(&self.m.rtmr2);
        line(
            "RTMR3",
            Some([0; 48]),
            "runtime: zero at boot, nothing in the image extends it".to_owned(),
        );
    }

    fn json(&self) -> serde_json::Value {
        let events = |log: &RtmrLog| {
            log.events
                .iter()
                .map(|e| json!({ "digest": hex::encode(e.digest), "what": e.what }))
                .collect::<Vec<_>>()
        };
        json!({
            "mr_td": hex::encode(self.m.mr_td.value),
            "rtmr0": self.rtmr0().map(hex::encode),
            "rtmr1": hex::encode(self.m.rtmr1.value()),
            "rtmr2": hex::encode(self.m.rtmr2.value()),
            "rtmr3": hex::encode([0u8; 48]),
            "rtmr0_source": self.quote.map(|q| q.path.display().to_string()),
            "rtmr1_independently_verified": false,
            "page_order": self.page_order.as_str(),
            "kernel_header": self.kernel_header.as_str(),
            "memory_bytes": self.memory_bytes,
            "cpus": self.args.cpus,
            "initrd_bytes": self.initrd_len,
            "cmdline_as_passed": self.passed_cmdline,
            "tdvf": {
                "sections": self.m.mr_td.sections,
                "pages_added": self.m.mr_td.pages_added,
                "chunks_extended": self.m.mr_td.chunks_extended,
            },
            "events": { "rtmr1": events(&self.m.rtmr1), "rtmr2": events(&self.m.rtmr2) },
            "quote": self.quote.map(|q| json!({
                "file": q.path.display().to_string(),
                "rtmr1_matches": q.measurements.rtmr[1] == self.m.rtmr1.value(),
                "rtmr2_matches": q.measurements.rtmr[2] == self.m.rtmr2.value(),
            })),
        })
    }

    /// The policy text, validated by the policy parser.
    fn policy(&self, path: &Path) -> Result<(String, Policy)> {
        let name = match &self.args.policy_name {
            Some(name) => name.clone(),
            None => path
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .filter(|s| !s.is_empty())
                .unwrap_or_else(|| "tessera-image".to_owned()),
        };
        let label = truncate(
            format!(
                "{} + {}{} on q35, memory {}{}",
                file_name(&self.args.firmware),
                file_name(&self.args.kernel),
                self.args
                    .initrd
                    .as_deref()
                    .map_or(String::new(), |p| format!(" + {}", file_name(p))),
                human_bytes(self.memory_bytes),
                self.args
                    .cpus
                    .map_or(String::new(), |n| format!(", {n} vCPUs")),
            ),
            LABEL_LEN_MAX,
        );
        let mut out = String::new();
        let mut line = |s: &str| {
            out.push_str(s);
            out.push('\n');
        };
        line("# Generated by `tessera measure` (schema: docs/architecture.md §4.3), from:");
        line(&format!("#   firmware  {:?}", self.args.firmware));
        line(&format!("#   kernel    {:?}", self.args.kernel));
        match &self.args.initrd {
            Some(p) => line(&format!("#   initrd    {p:?}")),
            None => line("#   initrd    none"),
        }
        line(&format!(
            "#   cmdline   {:?}",
            truncate(self.passed_cmdline.to_owned(), 2048)
        ));
        line(&format!(
            "#   memory {}, MRTD {} order, kernel header {}",
            human_bytes(self.memory_bytes),
            self.page_order.as_str(),
            self.kernel_header.as_str()
        ));
        line("# RTMR1 was not checked against an independent reference: compare it with the quote");
        line("# of a real boot before relying on this policy.");
        match self.quote {
            Some(q) => line(&format!(
                "# RTMR0 comes from the quote {:?} and holds for that host shape only.",
                q.path
            )),
            None => line("# RTMR0 is left open: it depends on the host (take it from a real boot with --rtmr0-from-quote)."),
        }
        line("#");
        line("# Unknown keys are errors; every hex field has a fixed length. `tessera policy check` prints");
        line("# the canonical digest, which changes exactly when what the policy accepts changes.");
        line("");
        line(&format!(
            "name = {:<24} # human label, shown in reports",
            toml_string(&truncate(name, LABEL_LEN_MAX))
        ));
        line("version = 1                     # bump on every change (it is part of the digest)");
        line("trust_root = \"intel\"            # DCAP chains must end at the Intel SGX Root CA");
        line("");
        line("[tcb]");
        line("allowed_statuses = [\"UpToDate\"]           # TCB statuses accepted; add e.g. \"SWHardeningNeeded\" knowingly");
        line("rejected_advisories = []                  # reject platforms whose TCB level lists any of these (INTEL-SA-…)");
        line("# min_tcb_eval_data_number = 17           # optional: refuse collateral older than a TCB recovery event");
        line("allow_dynamic_platform = false            # platforms that can add CPU packages after registration");
        line("allow_cached_keys = false                 # platforms whose keys Intel's registration service caches");
        line(
            "allow_smt = false                         # platforms running with hyper-threading on",
        );
        line("allowed_fmspcs = []                       # platform models accepted (6 bytes hex); empty = any");
        line("max_collateral_age_secs = 2592000         # TCB Info, QE Identity, PCK CRL at most 30 days old when verified (default 30 days)");
        line("");
        line("[td]");
        line("allow_debug = false                       # a debug TD's memory is readable by the host: never in production");
        line("# attributes = \"0000001000000000\"         # optional: TD attributes of a real boot (`tessera policy from-quote`)");
        line("# attributes_mask = \"ffffffff00000000\"    # which attribute bits to compare");
        line("# xfam = \"e702060000000000\"               # optional: extended CPU features the TD may use");
        line("# mr_seam = [\"…96 hex…\"]                  # optional allow list of TDX module measurements");
        line("");
        line("[[td.profiles]]                           # the TD must match at least one profile; absent fields match anything");
        line(&format!("label = {}", toml_string(&label)));
        line(&format!(
            "mr_td = \"{}\"  # firmware (TDVF): the pages QEMU adds, {} order",
            hex::encode(self.m.mr_td.value),
            self.page_order.as_str()
        ));
        match self.rtmr0() {
            Some(r) => line(&format!(
                "rtmr0 = \"{}\"  # firmware configuration, from a real boot: this host shape only",
                hex::encode(r)
            )),
            None => line(
                "# rtmr0 absent: firmware configuration depends on the host; any value accepted",
            ),
        }
        line(&format!(
            "rtmr1 = \"{}\"  # kernel (Authenticode hash, {} header) and OVMF's boot events",
            hex::encode(self.m.rtmr1.value()),
            self.kernel_header.as_str()
        ));
        line(&format!(
            "rtmr2 = \"{}\"  # kernel command line{}",
            hex::encode(self.m.rtmr2.value()),
            if self.args.initrd.is_some() {
                " and initrd"
            } else {
                " (no initrd)"
            }
        ));
        line(&format!(
            "rtmr3 = \"{}\"  # runtime: zero at boot",
            hex::encode([0u8; 48])
        ));
        match &self.args.mr_config_id {
            Some(id) => line(&format!(
                "mr_config_id = \"{id}\"  # the node.toml and policies the host passes (tessera config-id)"
            )),
            None => line("# mr_config_id = \"…96 hex…\"              # optional: the config's id (tessera config-id; MRCONFIGID)"),
        }
        line("");
        line("[binding]");
        line("max_quote_age_secs = 600                  # a peer's claims may be at most 10 minutes old (plus 30 s clock skew)");
        let policy = Policy::from_toml_str(&out)
            .context("internal: the generated policy does not validate")?;
        Ok((out, policy))
    }
}

#[cfg(test)]
mod tests;
