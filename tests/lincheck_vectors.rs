//! The linearizability checker against histories with verdicts nobody here produced:
//! Porcupine's test data (`tests/vectors/linearizability/`, see its README).

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Instant;

use tessera::lincheck::KvModel;
use tessera::lincheck::RegisterModel;
use tessera::lincheck::{
    check, parse_jepsen_etcd_log, parse_porcupine_kv, CheckLimits, CheckOutcome,
};

/// The etcd logs the vectors README lists as linearizable; every other one is not.
const ETCD_LINEARIZABLE: [u32; 23] = [
    2, 5, 7, 18, 25, 31, 38, 45, 48, 49, 51, 53, 56, 67, 75, 76, 80, 87, 92, 98, 100, 101, 102,
];

/// Fewer files than this means the vectors were not found, not that all passed.
const ETCD_FILES_MIN: usize = 100;

fn vectors(dir: &str) -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/vectors/linearizability")
        .join(dir);
    let mut files: Vec<PathBuf> = fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        .map(|entry| entry.expect("directory entry").path())
        .collect();
    files.sort();
    files
}

fn file_name(path: &Path) -> &str {
    path.file_name()
        .and_then(|n| n.to_str())
        .expect("UTF-8 file name")
}

/// The verdict as a bool, failing on `Unknown`: every vector must be decided.
fn decided(name: &str, outcome: &CheckOutcome) -> bool {
    match outcome {
        CheckOutcome::Linearizable => true,
        CheckOutcome::NotLinearizable { .. } => false,
        CheckOutcome::Unknown { reason } => panic!("{name}: undecided: {reason}"),
    }
}

#[test]
fn jepsen_etcd_logs_get_the_published_verdicts() {
    let files = vectors("jepsen");
    assert!(
        files.len() >= ETCD_FILES_MIN,
        "only {} etcd logs found",
        files.len()
    );
    let started = Instant::now();
    let mut wrong = Vec::new();
    for path in &files {
        let name = file_name(path);
        let number: u32 = name
            .strip_prefix("etcd_")
            .and_then(|n| n.strip_suffix(".log"))
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("unexpected file {name}"));
        let text = fs::read_to_string(path).expect("readable log");
        let history = parse_jepsen_etcd_log(&text).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(!history.is_empty(), "{name}: empty history");
        let outcome = check(&RegisterModel, &history, CheckLimits::default());
        let expected = ETCD_LINEARIZABLE.contains(&number);
        if decided(name, &outcome) != expected {
            wrong.push(format!(
                "{name}: expected linearizable = {expected}, got {outcome}"
            ));
        }
    }
    eprintln!(
        "{} etcd logs decided in {:?}",
        files.len(),
        started.elapsed()
    );
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[test]
fn porcupine_kv_histories_get_the_published_verdicts() {
    let files = vectors("kv");
    assert_eq!(files.len(), 6, "kv histories found: {files:?}");
    let started = Instant::now();
    for path in &files {
        let name = file_name(path);
        let expected = if name.ends_with("-ok.txt") {
            true
        } else {
            assert!(name.ends_with("-bad.txt"), "unexpected file {name}");
            false
        };
        let text = fs::read_to_string(path).expect("readable history");
        let history = parse_porcupine_kv(&text).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(!history.is_empty(), "{name}: empty history");
        let outcome = check(
            &KvModel::absent_equals_empty(),
            &history,
            CheckLimits::default(),
        );
        assert_eq!(decided(name, &outcome), expected, "{name}: {outcome}");
        if let CheckOutcome::NotLinearizable { explanation, .. } = &outcome {
            eprintln!("{name}: {explanation}");
        }
    }
    eprintln!(
        "{} kv histories decided in {:?}",
        files.len(),
        started.elapsed()
    );
}

/// The kv histories never write the empty value, so tessera's own strict model (missing
/// is not empty) must reach the same verdicts as Porcupine's.
#[test]
fn porcupine_kv_verdicts_hold_under_the_strict_model() {
    for path in vectors("kv") {
        let name = file_name(&path);
        let text = fs::read_to_string(&path).expect("readable history");
        let history = parse_porcupine_kv(&text).unwrap_or_else(|e| panic!("{name}: {e}"));
        let outcome = check(&KvModel::new(), &history, CheckLimits::default());
        assert_eq!(
            decided(name, &outcome),
            name.ends_with("-ok.txt"),
            "{name}: {outcome}"
        );
    }
}

/// Parsers take untrusted text: every prefix and every one-byte corruption of a real file
/// must give a history or an error naming a line, never a panic.
#[test]
fn parsers_never_panic_on_damaged_vectors() {
    let etcd = fs::read_to_string(&vectors("jepsen")[0]).expect("readable log");
    let kv = fs::read_to_string(&vectors("kv")[0]).expect("readable history");
    for (text, parse) in [
        (
            etcd.as_str(),
            (|t: &str| {
                parse_jepsen_etcd_log(t)
                    .map(|_| ())
                    .map_err(|e| e.to_string())
            }) as fn(&str) -> Result<(), String>,
        ),
        (kv.as_str(), |t: &str| {
            parse_porcupine_kv(t).map(|_| ()).map_err(|e| e.to_string())
        }),
    ] {
        let sample: String = text.lines().take(30).collect::<Vec<_>>().join("\n");
        let mut errors = 0;
        for end in (0..=sample.len()).filter(|&i| sample.is_char_boundary(i)) {
            if let Err(e) = parse(&sample[..end]) {
                assert!(e.starts_with("line "), "{e}");
                errors += 1;
            }
        }
        for at in 0..sample.len() {
            for replacement in [b' ', b'\t', b'\n', b':', b'[', b'"', b'x', b'9', b'-'] {
                let mut damaged = sample.clone().into_bytes();
                damaged[at] = replacement;
                if let Ok(damaged) = String::from_utf8(damaged) {
                    if let Err(e) = parse(&damaged) {
                        assert!(e.starts_with("line "), "{e}");
                        errors += 1;
                    }
                }
            }
        }
        assert!(errors > 0, "no damaged input was rejected");
    }
}
