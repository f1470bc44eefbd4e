//! The module contracts that the compiler does not enforce: the consensus core performs no
//! IO, reads no clock and uses no async runtime (DESIGN §7.1, STYLE "IO contract").
use std::fs;
use std::path::Path;

const FORBIDDEN_IN_CORE: &[&str] = &[
    "tokio",
    "std::time",
    "SystemTime",
    "Instant",
    "std::fs",
    "std::net",
    "std::thread",
    "rand::",
    "getrandom",
];

fn sources(dir: &Path) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for entry in fs::read_dir(dir).expect("source directory exists") {
        let path = entry.expect("readable entry").path();
        if path.is_dir() {
            out.extend(sources(&path));
        } else if path.extension().is_some_and(|e| e == "rs") {
            let text = fs::read_to_string(&path).expect("readable source");
            out.push((path.display().to_string(), text));
        }
    }
    out
}

#[test]
fn the_raft_core_touches_no_clock_no_io_and_no_runtime() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/raft");
    let files = sources(&dir);
    assert!(files.len() >= 5, "found the core's sources");
    let mut offences = Vec::new();
    for (path, text) in &files {
        for (number, line) in text.lines().enumerate() {
            let code = line.split("//").next().unwrap_or("");
            for word in FORBIDDEN_IN_CORE {
                if code.contains(word) {
                    offences.push(format!("{path}:{}: uses `{word}`", number + 1));
                }
            }
        }
    }
    assert!(
        offences.is_empty(),
        "the raft core must stay sans-IO:\n{}",
        offences.join("\n")
    );
}

#[test]
fn the_check_itself_would_notice_an_offence() {
    // Negative twin: the scan finds a forbidden word when one is there.
    let sample = "use std::time::Instant; // clock";
    assert!(FORBIDDEN_IN_CORE
        .iter()
        .any(|w| sample.split("//").next().unwrap_or("").contains(w)));
}

/// What the member (the runtime's decisions) must not touch: it takes the time as an
/// input and hands every effect to its driver (STYLE "sans-IO cores"), so that the
/// simulator can drive it.
const FORBIDDEN_IN_MEMBER: &[&str] = &[
    "tokio",
    "Instant::now",
    "SystemTime",
    "std::fs",
    "std::net",
    "std::thread",
    "std::sync",
    "rand::",
    "getrandom",
    "iroh",
];

#[test]
fn the_member_reads_no_clock_and_does_no_io() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/groups/member.rs");
    let text = fs::read_to_string(&path).expect("the member's source");
    let offences: Vec<String> = text
        .lines()
        .enumerate()
        .flat_map(|(number, line)| {
            let code = line.split("//").next().unwrap_or("").to_string();
            FORBIDDEN_IN_MEMBER
                .iter()
                .filter(move |word| code.contains(*word))
                .map(move |word| format!("member.rs:{}: uses `{word}`", number + 1))
        })
        .collect();
    assert!(
        offences.is_empty(),
        "the member must stay sans-IO:\n{}",
        offences.join("\n")
    );
}

#[test]
fn the_image_measurement_reads_no_file_clock_or_network() {
    // attestation/src/measure: bytes in, digests out (its module doc); the CLI reads files.
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("attestation/src/measure");
    let files = sources(&dir);
    assert!(files.len() >= 4, "found the measurement's sources");
    let offences: Vec<String> = files
        .iter()
        .flat_map(|(path, text)| {
            text.lines().enumerate().flat_map(move |(number, line)| {
                let code = line.split("//").next().unwrap_or("").to_string();
                FORBIDDEN_IN_CORE
                    .iter()
                    .filter(move |word| code.contains(*word))
                    .map(move |word| format!("{path}:{}: uses `{word}`", number + 1))
            })
        })
        .collect();
    assert!(
        offences.is_empty(),
        "the measurement must stay IO-free:\n{}",
        offences.join("\n")
    );
}

/// The collateral refresh decides with `now` as an input and leaves every effect (HTTP,
/// files, sleeping) to its driver (`collateral::task`), so its schedule and its
/// install-or-keep rule are tested at fixed times.
#[test]
fn the_collateral_refresh_decisions_touch_no_clock_no_io_and_no_runtime() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/collateral/refresh.rs");
    let text = fs::read_to_string(&path).expect("refresh.rs");
    let forbidden = [
        "tokio",
        "reqwest",
        "SystemTime",
        "Instant",
        "std::fs",
        "std::net",
        "std::thread",
    ];
    let offences: Vec<String> = text
        .lines()
        .enumerate()
        .filter(|(_, line)| !line.trim_start().starts_with("//"))
        .flat_map(|(n, line)| {
            let code = line.split("//").next().unwrap_or("");
            forbidden
                .iter()
                .filter(move |w| code.contains(*w))
                .map(move |w| format!("refresh.rs:{}: uses `{w}`", n + 1))
        })
        .collect();
    assert!(offences.is_empty(), "{}", offences.join("\n"));
}
