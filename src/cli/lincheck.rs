//! `tessera lincheck`: checks a recorded client history for linearizability with the
//! project's checker (`tessera::lincheck`) and prints the verdict; on a failure, the
//! operations around the point where no order fits, with their lines in the file.
//!
//! Exit status: 0 linearizable, 1 not linearizable, 2 no verdict (a limit ran out) or a
//! file that cannot be read or parsed.
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, ValueEnum};
use tessera::lincheck::KvModel;
use tessera::lincheck::RegisterModel;
use tessera::lincheck::{
    check, parse_jepsen_etcd_log, parse_porcupine_kv, CheckLimits, CheckOutcome,
};
use tessera::lincheck::{parse_history_jsonl, ParsedHistory};

/// Largest history file read (a history is read whole).
const HISTORY_BYTES_MAX: u64 = 1 << 30;

#[derive(Args, Debug)]
pub struct LincheckArgs {
    /// The history file.
    pub history: PathBuf,
    /// Its format: `tessera` (JSON lines, what `tessera workload` writes; see
    /// docs/history-format.md), `porcupine-kv` (Porcupine's key-value logs) or
    /// `jepsen-etcd` (Jepsen's etcd register logs).
    #[arg(long, value_enum, default_value = "tessera")]
    pub format: HistoryFormat,
    /// Search steps before giving up without a verdict (deterministic: the same history
    /// and limit always give the same answer).
    #[arg(long, default_value_t = CheckLimits::STEPS_MAX_DEFAULT)]
    pub steps_max: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum HistoryFormat {
    Tessera,
    PorcupineKv,
    JepsenEtcd,
}

pub fn run(args: LincheckArgs) -> ExitCode {
    let path = args.history.display().to_string();
    let text = match read_history(&args.history) {
        Ok(text) => text,
        Err(e) => {
            eprintln!("tessera lincheck: {path}: {e}");
            return ExitCode::from(2);
        }
    };
    let limits = CheckLimits {
        steps_max: args.steps_max,
        ..CheckLimits::default()
    };
    // Each format: its operations (for the summary), the verdict, and the lines of each
    // operation in the file (for the failure report).
    let parsed = match args.format {
        HistoryFormat::Tessera => parse_history_jsonl(&text).map(|h: ParsedHistory| {
            let verdict = check(&KvModel::new(), &h.operations, limits);
            let unknown = h
                .operations
                .iter()
                .filter(|o| o.return_time == u64::MAX)
                .count();
            (h.operations.len(), unknown, verdict, Some(h.lines))
        }),
        HistoryFormat::PorcupineKv => parse_porcupine_kv(&text).map(|ops| {
            let verdict = check(&KvModel::absent_equals_empty(), &ops, limits);
            let unknown = ops.iter().filter(|o| o.return_time == u64::MAX).count();
            (ops.len(), unknown, verdict, None)
        }),
        HistoryFormat::JepsenEtcd => parse_jepsen_etcd_log(&text).map(|ops| {
            let verdict = check(&RegisterModel, &ops, limits);
            let unknown = ops.iter().filter(|o| o.return_time == u64::MAX).count();
            (ops.len(), unknown, verdict, None)
        }),
    };
    let (operations, unknown, verdict, lines) = match parsed {
        Ok(parsed) => parsed,
        Err(e) => {
            eprintln!("tessera lincheck: {path}: {e}");
            return ExitCode::from(2);
        }
    };
    let summary = format!("{operations} operations, {unknown} with an unknown outcome");
    match &verdict {
        CheckOutcome::Linearizable => {
            println!("{path}: linearizable ({summary})");
            ExitCode::SUCCESS
        }
        CheckOutcome::NotLinearizable {
            longest_prefix,
            next_candidates,
            explanation,
            ..
        } => {
            println!("{path}: NOT linearizable ({summary})");
            println!("{explanation}");
            if let Some(lines) = lines {
                let at = |index: &usize| match lines.get(*index) {
                    Some((call, Some(done))) => format!("lines {call}–{done}"),
                    Some((call, None)) => format!("line {call} (never completed)"),
                    None => "unknown line".to_owned(),
                };
                if let Some(last) = longest_prefix.last() {
                    println!(
                        "the longest order that fits ends with the operation at {}",
                        at(last)
                    );
                }
                let candidates: Vec<String> = next_candidates.iter().map(at).collect();
                println!(
                    "none of the operations that could come next fits: {}",
                    candidates.join(", ")
                );
            }
            ExitCode::from(1)
        }
        CheckOutcome::Unknown { .. } => {
            println!("{path}: no verdict ({summary}): {verdict}");
            ExitCode::from(2)
        }
    }
}

fn read_history(path: &std::path::Path) -> std::io::Result<String> {
    use std::io::Read as _;
    let file = std::fs::File::open(path)?;
    let mut text = String::new();
    file.take(HISTORY_BYTES_MAX + 1).read_to_string(&mut text)?;
    if text.len() as u64 > HISTORY_BYTES_MAX {
        return Err(std::io::Error::other(format!(
            "larger than {HISTORY_BYTES_MAX} bytes"
        )));
    }
    Ok(text)
}
