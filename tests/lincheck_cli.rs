//! `tessera lincheck`: the built binary on histories with known verdicts (the published
//! vectors in each format it reads, and tessera's own format), its exit codes (0
//! linearizable, 1 not, 2 undecided or unreadable) and the failure report.
use std::process::{Command, Output};

const BIN: &str = env!("CARGO_BIN_EXE_tessera");
const ROOT: &str = env!("CARGO_MANIFEST_DIR");

fn lincheck(args: &[&str]) -> Output {
    Command::new(BIN)
        .arg("lincheck")
        .args(args)
        .output()
        .expect("run tessera lincheck")
}

fn vector(path: &str) -> String {
    format!("{ROOT}/tests/vectors/linearizability/{path}")
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn published_histories_get_their_verdicts_and_exit_codes() {
    let cases = [
        ("kv/c10-ok.txt", "porcupine-kv", 0),
        ("kv/c10-bad.txt", "porcupine-kv", 1),
        // etcd_002 is linearizable, etcd_000 is not (tests/lincheck_vectors.rs).
        ("jepsen/etcd_002.log", "jepsen-etcd", 0),
        ("jepsen/etcd_000.log", "jepsen-etcd", 1),
    ];
    for (file, format, code) in cases {
        let out = lincheck(&[&vector(file), "--format", format]);
        assert_eq!(out.status.code(), Some(code), "{file}: {}", stdout(&out));
        let expected = if code == 0 {
            "linearizable ("
        } else {
            "NOT linearizable"
        };
        assert!(stdout(&out).contains(expected), "{file}: {}", stdout(&out));
    }
}

fn write_history(name: &str, text: &str) -> std::path::PathBuf {
    let path = std::env::temp_dir().join(format!("tessera-lincheck-{}-{name}", std::process::id()));
    std::fs::write(&path, text).expect("write history");
    path
}

#[test]
fn a_tessera_history_is_checked_and_a_failure_names_the_lines() {
    let good = write_history(
        "good.jsonl",
        concat!(
            r#"{"process":0,"type":"invoke","f":"put","key":"k","value":"v1","time":10}"#,
            "\n",
            r#"{"process":1,"type":"invoke","f":"get","key":"k","time":11}"#,
            "\n",
            r#"{"process":0,"type":"ok","f":"put","key":"k","value":"v1","time":20}"#,
            "\n",
            r#"{"process":1,"type":"ok","f":"get","key":"k","value":"v1","time":21}"#,
            "\n",
        ),
    );
    let out = lincheck(&[good.to_str().expect("path")]);
    assert_eq!(out.status.code(), Some(0), "{}", stdout(&out));
    assert!(stdout(&out).contains("2 operations, 0 with an unknown outcome"));

    // A read that returns the old value after a write was acknowledged to everyone.
    let bad = write_history(
        "bad.jsonl",
        concat!(
            r#"{"process":0,"type":"invoke","f":"put","key":"k","value":"v1","time":10}"#,
            "\n",
            r#"{"process":0,"type":"ok","f":"put","key":"k","value":"v1","time":20}"#,
            "\n",
            r#"{"process":1,"type":"invoke","f":"get","key":"k","time":30}"#,
            "\n",
            r#"{"process":1,"type":"ok","f":"get","key":"k","value":null,"time":40}"#,
            "\n",
        ),
    );
    let out = lincheck(&[bad.to_str().expect("path")]);
    assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
    let report = stdout(&out);
    assert!(report.contains("NOT linearizable"), "{report}");
    assert!(
        report.contains("lines 3–4"),
        "names the lines of the stale read: {report}"
    );

    let broken = write_history("broken.jsonl", "{\"process\":0,\"type\":\"ok\"}\n");
    let out = lincheck(&[broken.to_str().expect("path")]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("line 1"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = lincheck(&["/nonexistent/history.jsonl"]);
    assert_eq!(out.status.code(), Some(2));
    for path in [good, bad, broken] {
        let _ = std::fs::remove_file(path);
    }
}
