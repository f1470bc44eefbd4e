//! `tessera quote`, `tessera verify`, `tessera policy`: the built binary, its exit codes
//! (0 accepted, 1 rejected, 2 bad input) and its JSON. Fixed times; every positive test has
//! a negative twin.
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};

use serde_json::Value;
use tessera_attestation::Claims;

const BIN: &str = env!("CARGO_BIN_EXE_tessera");
const ROOT: &str = env!("CARGO_MANIFEST_DIR");
const UPTODATE_NOW: u64 = 1_752_919_234;
const OUTDATED_NOW: u64 = 1_772_000_000;
const MOCK_ISSUED_AT: u64 = 1_767_225_600;
const MOCK_NOW: u64 = MOCK_ISSUED_AT + 86_400;
const MR_TD: &str = "91eb2b44d141d4ece09f0c75c2c53d247a3c68edd7fafe8a3520c942a604a407de03ae6dc5f87f27428b2538873118b7";
const RTMR0: &str = "44c0197b39157fdd7a4dcc44767f9d6b0bb3977c7a8e347b8492f827fe9d9e5c48aca29b220b80b6a540cf994b9bc9c0";

fn vector(name: &str) -> String {
    format!("{ROOT}/tests/vectors/tdx/{name}")
}

fn policy(name: &str) -> String {
    format!("{ROOT}/policies/{name}")
}

/// A fresh directory for one test, removed when dropped.
struct Scratch(PathBuf);

impl Scratch {
    fn new(tag: &str) -> Scratch {
        static N: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "tessera-cli-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }

    fn path(&self, name: &str) -> String {
        self.0.join(name).to_str().unwrap().to_owned()
    }

    fn write(&self, name: &str, contents: &str) -> String {
        let path = self.path(name);
        std::fs::write(&path, contents).unwrap();
        path
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn run(args: &[&str]) -> Output {
    Command::new(BIN).args(args).output().unwrap()
}

fn code(out: &Output) -> i32 {
    out.status.code().unwrap()
}

fn stdout(out: &Output) -> String {
    String::from_utf8(out.stdout.clone()).unwrap()
}

fn stderr(out: &Output) -> String {
    String::from_utf8(out.stderr.clone()).unwrap()
}

fn verify_json(
    quote: &str,
    collateral: &str,
    policy: &str,
    now: u64,
    extra: &[&str],
) -> (i32, Value) {
    let now = now.to_string();
    let mut args = vec![
        "verify",
        "--quote",
        quote,
        "--collateral",
        collateral,
        "--policy",
        policy,
        "--now",
        &now,
        "--json",
    ];
    args.extend_from_slice(extra);
    let out = run(&args);
    let json: Value = serde_json::from_str(&stdout(&out))
        .unwrap_or_else(|e| panic!("{e}: {}{}", stdout(&out), stderr(&out)));
    (code(&out), json)
}

fn uptodate(policy_path: &str, now: u64) -> (i32, Value) {
    verify_json(
        &vector("quote_uptodate.bin"),
        &vector("quote_uptodate.collateral.json"),
        policy_path,
        now,
        &[],
    )
}

fn example_with(scratch: &Scratch, from: &str, to: &str) -> String {
    let text = std::fs::read_to_string(policy("example.toml")).unwrap();
    assert!(text.contains(from));
    scratch.write("policy.toml", &text.replace(from, to))
}

#[test]
fn verify_accepts_the_real_uptodate_quote_with_the_example_policy() {
    let (code, json) = uptodate(&policy("example.toml"), UPTODATE_NOW);
    assert_eq!(code, 0, "{json}");
    assert_eq!(json["accepted"], true);
    assert_eq!(json["tcb_status"], "UpToDate");
    assert_eq!(json["advisory_ids"], serde_json::json!([]));
    assert_eq!(json["fmspc"], "B0C06F000000");
    let m = &json["measurements"];
    assert_eq!(m["mr_td"], MR_TD);
    assert_eq!(m["rtmr0"], RTMR0);
    assert_eq!(m["rtmr3"], "0".repeat(96));
    assert_eq!(m["mr_config_id"], "0".repeat(96));
    assert_eq!(m["td_attributes"], "0000001000000000");
    assert_eq!(m["xfam"], "e702060000000000");
    assert!(m["rtmr1"].is_string() && m["rtmr2"].is_string());
    let checks = json["checks"].as_array().unwrap();
    assert!(checks.len() >= 10);
    assert!(checks
        .iter()
        .all(|c| c["ok"] == true && c["name"].is_string() && c["detail"].is_string()));
    assert!(json["reason"].is_null());
}

#[test]
fn verify_rejects_the_real_quote_one_day_past_its_window_naming_what_expired() {
    let (code, json) = uptodate(&policy("example.toml"), UPTODATE_NOW + 86_400);
    assert_eq!(code, 1);
    assert_eq!(json["accepted"], false);
    assert_eq!(json["failed_check"], "collateral_validity");
    assert!(
        json["reason"].as_str().unwrap().contains("PCK CRL expired"),
        "{json}"
    );
    assert!(json["tcb_status"].is_null());
}

#[test]
fn verify_rejects_the_real_quote_under_a_strict_policy_naming_the_flag() {
    let scratch = Scratch::new("strict");
    let strict = example_with(
        &scratch,
        "allow_dynamic_platform = true",
        "allow_dynamic_platform = false",
    );
    let (code, json) = uptodate(&strict, UPTODATE_NOW);
    assert_eq!(code, 1);
    assert_eq!(json["tcb_status"], "UpToDate");
    assert_eq!(json["failed_check"], "platform_flags");
    assert!(json["reason"]
        .as_str()
        .unwrap()
        .contains("dynamic_platform"));
}

#[test]
fn verify_rejects_the_v5_quote_as_unappraisable_and_the_sgx_quote_as_not_td() {
    let (code, json) = verify_json(
        &vector("quote_outdated.bin"),
        &vector("quote_outdated.collateral.json"),
        &policy("example.toml"),
        OUTDATED_NOW,
        &[],
    );
    assert_eq!(code, 1);
    assert_eq!(json["failed_check"], "tcb_level");
    assert!(json["reason"]
        .as_str()
        .unwrap()
        .contains("TCB could not be appraised"));
    assert_eq!(json["quote_version"], 5);

    let (code, json) = verify_json(
        &vector("sgx_quote.bin"),
        &vector("sgx_quote.collateral.json"),
        &policy("example.toml"),
        UPTODATE_NOW,
        &[],
    );
    assert_eq!(code, 1);
    assert_eq!(json["failed_check"], "parse");
    assert!(json["reason"].as_str().unwrap().contains("not a TD quote"));
    assert!(json["measurements"].is_null());
}

#[test]
fn verify_human_output_lists_every_check() {
    let now = UPTODATE_NOW.to_string();
    let ok = run(&[
        "verify",
        "--quote",
        &vector("quote_uptodate.bin"),
        "--collateral",
        &vector("quote_uptodate.collateral.json"),
        "--policy",
        &policy("example.toml"),
        "--now",
        &now,
    ]);
    assert_eq!(code(&ok), 0);
    let text = stdout(&ok);
    for name in [
        "parse",
        "dcap",
        "tcb_status",
        "platform_flags",
        "debug",
        "td_attributes",
        "xfam",
        "measurements",
    ] {
        assert!(text.contains(&format!("[ ok ] {name}")), "{name} in {text}");
    }
    assert!(text.contains("ACCEPTED"));
    let scratch = Scratch::new("human");
    let strict = example_with(&scratch, "allow_smt = true", "allow_smt = false");
    let bad = run(&[
        "verify",
        "--quote",
        &vector("quote_uptodate.bin"),
        "--collateral",
        &vector("quote_uptodate.collateral.json"),
        "--policy",
        &strict,
        "--now",
        &now,
    ]);
    assert_eq!(code(&bad), 1);
    assert!(stdout(&bad).contains("[FAIL] platform_flags"));
    assert!(stdout(&bad).contains("REJECTED"));
}

#[test]
fn verify_bad_input_exits_2() {
    let scratch = Scratch::new("bad");
    let q = vector("quote_uptodate.bin");
    let c = vector("quote_uptodate.collateral.json");
    let p = policy("example.toml");
    let missing = scratch.path("missing.bin");
    let garbage = scratch.write("garbage.json", "{\"not\": \"collateral\"}");
    let unknown_key = example_with(&scratch, "version = 1 ", "version = 1\ncolour = 3 ");
    let claims = scratch.write("claims.json", "{}");
    for args in [
        vec![
            "verify",
            "--quote",
            &missing,
            "--collateral",
            &c,
            "--policy",
            &p,
        ],
        vec![
            "verify",
            "--quote",
            &q,
            "--collateral",
            &garbage,
            "--policy",
            &p,
        ],
        vec![
            "verify",
            "--quote",
            &q,
            "--collateral",
            &c,
            "--policy",
            &unknown_key,
        ],
        vec![
            "verify",
            "--quote",
            &q,
            "--collateral",
            &c,
            "--policy",
            &p,
            "--claims",
            &claims,
        ],
        vec![
            "verify",
            "--quote",
            &q,
            "--collateral",
            &c,
            "--policy",
            &p,
            "--claims",
            &claims,
            "--peer-key",
            "00",
        ],
        vec!["verify", "--quote", &q, "--collateral", &c],
        vec![
            "verify",
            "--quote",
            &q,
            "--collateral",
            &c,
            "--policy",
            &p,
            "--now",
            "yesterday",
        ],
    ] {
        let out = run(&args);
        assert_eq!(code(&out), 2, "{args:?}: {}", stderr(&out));
    }
    // Twin: the same files, well formed, give a verdict.
    assert_eq!(
        code(&run(&[
            "verify",
            "--quote",
            &q,
            "--collateral",
            &c,
            "--policy",
            &p,
            "--now",
            "1752919234"
        ])),
        0
    );
}

fn mock_quote(scratch: &Scratch, report_data: &str, extra: &[&str]) -> (String, String) {
    let q = scratch.path("q.bin");
    let c = scratch.path("c.json");
    let issued = MOCK_ISSUED_AT.to_string();
    let mut args = vec![
        "quote",
        "--provider",
        "mock",
        "--report-data",
        report_data,
        "--out",
        &q,
        "--collateral-out",
        &c,
        "--mock-issued-at",
        &issued,
    ];
    args.extend_from_slice(extra);
    let out = run(&args);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    (q, c)
}

#[test]
fn mock_quote_verifies_under_the_mock_policy_and_is_rejected_under_the_intel_root() {
    let scratch = Scratch::new("mock");
    let (q, c) = mock_quote(&scratch, &"ab".repeat(64), &[]);
    let (code, json) = verify_json(&q, &c, &policy("mock.toml"), MOCK_NOW, &[]);
    assert_eq!(code, 0, "{json}");
    assert_eq!(json["tcb_status"], "UpToDate");
    assert_eq!(json["report_data"], "ab".repeat(64));
    let (code, json) = verify_json(&q, &c, &policy("example.toml"), MOCK_NOW, &[]);
    assert_eq!(code, 1);
    assert_eq!(json["failed_check"], "pck_cert_chain");
    assert!(
        json["reason"]
            .as_str()
            .unwrap()
            .contains("not at the trusted root \"Intel SGX Root CA\""),
        "{json}"
    );
}

#[test]
fn mock_knobs_are_rejected_with_their_reasons() {
    let cases: [(&[&str], &str); 4] = [
        (&["--mock-mrtd", &"11".repeat(48)], "mr_td expected"),
        (&["--mock-debug"], "debug TD"),
        (
            &["--mock-tcb-status", "OutOfDate"],
            "TCB status OutOfDate is not allowed",
        ),
        (&["--mock-revoked-pck"], "revoked"),
    ];
    for (extra, needle) in cases {
        let scratch = Scratch::new("knob");
        let (q, c) = mock_quote(&scratch, &"00".repeat(64), extra);
        let (code, json) = verify_json(&q, &c, &policy("mock.toml"), MOCK_NOW, &[]);
        assert_eq!(code, 1, "{extra:?}");
        assert!(
            json["reason"].as_str().unwrap().contains(needle),
            "{extra:?}: {json}"
        );
    }
    let scratch = Scratch::new("sig");
    let (q, c) = mock_quote(&scratch, &"00".repeat(64), &["--mock-corrupt-signature"]);
    let (code, json) = verify_json(&q, &c, &policy("mock.toml"), MOCK_NOW, &[]);
    assert_eq!(
        (code, json["failed_check"].as_str()),
        (1, Some("quote_signature"))
    );
}

#[test]
fn binding_is_checked_when_claims_are_given() {
    let scratch = Scratch::new("claims");
    let claims = Claims {
        peer_key: [0x5a; 32],
        network_id: "tessera-cli-test".to_owned(),
        group_scope: None,
        issued_at: MOCK_NOW - 10,
        expires_at: MOCK_NOW + 3_600,
        nonce: [1; 32],
    };
    let claims_path = scratch.write("claims.json", &claims.to_json());
    let (q, c) = mock_quote(&scratch, &hex::encode(claims.report_data()), &[]);
    let key = hex::encode([0x5a; 32]);
    let (code, json) = verify_json(
        &q,
        &c,
        &policy("mock.toml"),
        MOCK_NOW,
        &[
            "--claims",
            &claims_path,
            "--peer-key",
            &key,
            "--network-id",
            "tessera-cli-test",
        ],
    );
    assert_eq!(code, 0, "{json}");
    let names: Vec<&str> = json["checks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert!(names.contains(&"binding_report_data") && names.contains(&"binding_peer_key"));
    // Another peer presenting the same quote and claims.
    let other = hex::encode([0x5b; 32]);
    let (code, json) = verify_json(
        &q,
        &c,
        &policy("mock.toml"),
        MOCK_NOW,
        &["--claims", &claims_path, "--peer-key", &other],
    );
    assert_eq!(code, 1);
    assert_eq!(json["failed_check"], "binding_peer_key");
    // Claims that are not the ones quoted.
    let forged = Claims {
        nonce: [2; 32],
        ..claims.clone()
    };
    let forged_path = scratch.write("forged.json", &forged.to_json());
    let (code, json) = verify_json(
        &q,
        &c,
        &policy("mock.toml"),
        MOCK_NOW,
        &["--claims", &forged_path, "--peer-key", &key],
    );
    assert_eq!(code, 1);
    assert_eq!(json["failed_check"], "binding_report_data");
    // Too late.
    let (code, json) = verify_json(
        &q,
        &c,
        &policy("mock.toml"),
        MOCK_NOW + 3_000,
        &["--claims", &claims_path, "--peer-key", &key],
    );
    assert_eq!(code, 1);
    assert_eq!(json["failed_check"], "binding_freshness");
}

#[test]
fn policy_check_prints_the_digest_or_rejects() {
    let out = run(&["policy", "check", &policy("example.toml")]);
    assert_eq!(code(&out), 0);
    let expected = tessera_attestation::Policy::from_toml_str(
        &std::fs::read_to_string(policy("example.toml")).unwrap(),
    )
    .unwrap()
    .digest_hex();
    assert!(
        stdout(&out).contains(&format!("digest {expected}")),
        "{}",
        stdout(&out)
    );
    let scratch = Scratch::new("check");
    let bad = example_with(
        &scratch,
        "allowed_statuses = [\"UpToDate\"]",
        "allowed_statuses = [\"UpToDate\", \"Revoked\"]",
    );
    let out = run(&["policy", "check", &bad]);
    assert_eq!(code(&out), 1);
    assert!(stderr(&out).contains("Revoked is never acceptable"));
    assert_eq!(
        code(&run(&["policy", "check", &scratch.path("none.toml")])),
        2
    );
}

#[test]
fn policy_from_quote_pins_the_measurements() {
    let out = run(&[
        "policy",
        "from-quote",
        "--quote",
        &vector("quote_uptodate.bin"),
        "--name",
        "sample",
    ]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let text = stdout(&out);
    assert!(text.contains(&format!("mr_td = \"{MR_TD}\"")));
    assert!(text.contains(&format!("rtmr0 = \"{RTMR0}\"")));
    assert!(text.contains("trust_root = \"intel\""));
    assert!(text.contains("xfam = \"e702060000000000\""));
    let p = tessera_attestation::Policy::from_toml_str(&text).unwrap();
    assert_eq!(p.name, "sample");

    // A mock quote's policy trusts the mock root and accepts it; another image is rejected.
    let scratch = Scratch::new("from-quote");
    let (q, c) = mock_quote(&scratch, &"00".repeat(64), &[]);
    let out = run(&["policy", "from-quote", "--quote", &q]);
    assert_eq!(code(&out), 0);
    assert!(stdout(&out).contains("trust_root = \"mock\""));
    let generated = scratch.write("generated.toml", &stdout(&out));
    assert_eq!(verify_json(&q, &c, &generated, MOCK_NOW, &[]).0, 0);
    let other = Scratch::new("from-quote-other");
    let (q2, c2) = mock_quote(
        &other,
        &"00".repeat(64),
        &["--mock-rtmr2", &"22".repeat(48)],
    );
    let (code2, json) = verify_json(&q2, &c2, &generated, MOCK_NOW, &[]);
    assert_eq!(code2, 1);
    assert!(json["reason"].as_str().unwrap().contains("rtmr2 expected"));
    // Not a quote.
    assert_eq!(
        code(&run(&[
            "policy",
            "from-quote",
            "--quote",
            &vector("quote_uptodate.collateral.json")
        ])),
        2
    );
}

#[test]
fn quote_usage_errors_and_tdx_outside_a_td() {
    let scratch = Scratch::new("quote");
    let out_path = scratch.path("q.bin");
    // Report data must be 128 hex digits.
    assert_eq!(
        code(&run(&[
            "quote",
            "--provider",
            "mock",
            "--report-data",
            "00",
            "--out",
            &out_path
        ])),
        2
    );
    assert_eq!(
        code(&run(&[
            "quote",
            "--provider",
            "sev",
            "--report-data",
            &"00".repeat(64),
            "--out",
            &out_path
        ])),
        2
    );
    // Real collateral is never fetched.
    let c = scratch.path("c.json");
    assert_eq!(
        code(&run(&[
            "quote",
            "--provider",
            "tdx",
            "--report-data",
            &"00".repeat(64),
            "--out",
            &out_path,
            "--collateral-out",
            &c
        ])),
        2
    );
    assert_eq!(
        code(&run(&[
            "quote",
            "--provider",
            "tdx",
            "--report-data",
            &"00".repeat(64),
            "--out",
            &out_path,
            "--mock-debug"
        ])),
        2
    );
    let out = run(&[
        "quote",
        "--provider",
        "tdx",
        "--report-data",
        &"00".repeat(64),
        "--out",
        &out_path,
    ]);
    if Path::new("/sys/kernel/config/tsm/report").exists() {
        // Inside a TD: a quote is written.
        assert_eq!(code(&out), 0, "{}", stderr(&out));
    } else {
        assert_eq!(code(&out), 1);
        assert!(
            stderr(&out).contains("TSM reports unavailable"),
            "{}",
            stderr(&out)
        );
        assert!(!Path::new(&out_path).exists());
    }
}

/// Every committed policy (the example, the mock's, the enclave image's, which `make image`
/// writes) loads and passes `tessera policy check`: a hand edit that breaks one fails here.
#[test]
fn every_committed_policy_passes_policy_check() {
    let mut names: Vec<String> = std::fs::read_dir(format!("{ROOT}/policies"))
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| name.ends_with(".toml"))
        .collect();
    names.sort();
    for expected in ["example.toml", "mock.toml", "tessera-enclave.toml"] {
        assert!(
            names.iter().any(|n| n == expected),
            "policies/{expected} is missing: {names:?}"
        );
    }
    for name in &names {
        let out = run(&["policy", "check", &policy(name)]);
        assert_eq!(code(&out), 0, "policies/{name}: {}", stderr(&out));
    }
}
