//! `tessera measure`: the built binary against the independent values of
//! tests/vectors/measure/ (MRTD, RTMR2), its JSON, the policy it writes (which the policy
//! parser must load), RTMR0 from a quote, and its exit codes (0 computed, 1 the quote is
//! of another firmware, 2 bad input).
use std::process::{Command, Output};

use serde_json::Value;
use tessera_attestation::{Policy, TcbStatus, TrustRoot};

const BIN: &str = env!("CARGO_BIN_EXE_tessera");
const ROOT: &str = env!("CARGO_MANIFEST_DIR");
const MRTD_SINGLE_PASS: &str = "6e540be4917f24f74cc3292b59803d06dc7c38eb4a3c1fd6be9c735ba74bb7a23e25f98da94779d17508b243e4fb582b";
const MRTD_TWO_PASS: &str = "e9f135ce5bcbb476142fc01fe5f4e6e674562a1593d8780f1109526a69c38affce8f941187a21133ed62f65e7017783c";
const RTMR2_KATA: &str = "b595f9f179d8b699d1420000d36c1fba82e9853545e719caa6ddbb82fa2041a23b4459876af4a253a1c20c5956529b9a";

fn vector(name: &str) -> String {
    format!("{ROOT}/tests/vectors/{name}")
}

/// A fresh directory for one test (tempfile's), removed when dropped.
struct Scratch(tempfile::TempDir);

impl Scratch {
    fn new(tag: &str) -> Scratch {
        Scratch(
            tempfile::Builder::new()
                .prefix(&format!("tessera-measure-{tag}-"))
                .tempdir()
                .unwrap(),
        )
    }

    fn path(&self, name: &str) -> String {
        self.0.path().join(name).to_str().unwrap().to_owned()
    }

    fn write(&self, name: &str, contents: &[u8]) -> String {
        let path = self.path(name);
        std::fs::write(&path, contents).unwrap();
        path
    }
}

fn run(args: &[&str]) -> Output {
    Command::new(BIN).args(args).output().unwrap()
}

fn json_of(out: &Output) -> Value {
    assert_eq!(
        out.status.code(),
        Some(0),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// A minimal bzImage-shaped PE32+: DOS header, PE header with one section, and a Linux
/// setup header (protocol 2.15, loaded high, initrd allowed above 4 GiB).
fn synthetic_kernel() -> Vec<u8> {
    let mut k: Vec<u8> = (0..0x800).map(|i| (i * 13 % 253) as u8).collect();
    let mut put = |at: usize, bytes: &[u8]| k[at..at + bytes.len()].copy_from_slice(bytes);
    put(0, b"MZ");
    put(0x3c, &0x40u32.to_le_bytes());
    put(0x40, b"PE\0\0");
    put(0x46, &1u16.to_le_bytes()); // one section
    put(0x54, &240u16.to_le_bytes()); // SizeOfOptionalHeader
    put(0x58, &0x20bu16.to_le_bytes()); // PE32+
    put(0x58 + 60, &0x400u32.to_le_bytes()); // SizeOfHeaders
    put(0x58 + 108, &16u32.to_le_bytes()); // NumberOfRvaAndSizes
    put(0x58 + 112 + 32, &[0; 8]); // no certificate table
    let section = 0x58 + 240;
    put(section, &[0; 40]);
    put(section, b".text\0\0\0");
    put(section + 16, &0x400u32.to_le_bytes());
    put(section + 20, &0x400u32.to_le_bytes());
    put(0x1f1, &[1]);
    put(0x202, b"HdrS");
    put(0x206, &0x020fu16.to_le_bytes());
    put(0x210, &[0, 0x01]);
    put(0x218, &[0; 8]);
    put(0x224, &[0; 8]);
    put(0x236, &0x0003u16.to_le_bytes());
    k
}

struct Image {
    dir: Scratch,
    kernel: String,
    initrd: String,
}

fn image(tag: &str) -> Image {
    let dir = Scratch::new(tag);
    let kernel = dir.write("vmlinuz", &synthetic_kernel());
    let initrd = dir.write("initrd.img", b"a small initrd");
    Image {
        dir,
        kernel,
        initrd,
    }
}

fn measure(img: &Image, extra: &[&str]) -> Output {
    measure_files(
        &vector("measure/synthetic_tdvf_2MiB.fd"),
        &img.kernel,
        extra,
    )
}

fn measure_files(firmware: &str, kernel: &str, extra: &[&str]) -> Output {
    let cmdline = vector("measure/rtmr2_cmdline_no_initrd.txt");
    let mut args = vec![
        "measure",
        "--firmware",
        firmware,
        "--kernel",
        kernel,
        "--cmdline-file",
        &cmdline,
    ];
    args.extend_from_slice(extra);
    run(&args)
}

#[test]
fn json_reproduces_the_vectors_and_the_written_policy_loads() {
    let img = image("json");
    let policy_path = img.dir.path("kata.toml");
    let out = measure(
        &img,
        &["--json", "--cpus", "2", "--policy-out", &policy_path],
    );
    let v = json_of(&out);
    assert_eq!(v["mr_td"], MRTD_SINGLE_PASS);
    assert_eq!(v["rtmr2"], RTMR2_KATA);
    assert_eq!(v["rtmr0"], Value::Null);
    assert_eq!(v["rtmr3"], "0".repeat(96));
    assert_eq!(v["page_order"], "single-pass");
    assert_eq!(v["kernel_header"], "qemu-patched");
    assert_eq!(v["memory_bytes"], 2u64 << 30);
    assert_eq!(v["rtmr1_independently_verified"], false);
    assert_eq!(v["events"]["rtmr1"].as_array().unwrap().len(), 5);
    assert_eq!(v["events"]["rtmr2"].as_array().unwrap().len(), 1);
    let rtmr1 = v["rtmr1"].as_str().unwrap();
    assert_eq!(rtmr1.len(), 96);

    let text = std::fs::read_to_string(&policy_path).unwrap();
    let policy = Policy::from_toml_str(&text).unwrap();
    assert_eq!(policy.name, "kata");
    assert_eq!(policy.trust_root, TrustRoot::Intel);
    assert!(!policy.td.allow_debug);
    assert_eq!(policy.tcb.allowed_statuses, vec![TcbStatus::UpToDate]);
    assert!(!policy.tcb.allow_dynamic_platform && !policy.tcb.allow_cached_keys);
    assert_eq!(policy.td.profiles.len(), 1);
    let p = &policy.td.profiles[0];
    let hex = |h: &Option<tessera_attestation::policy::HexBytes<48>>| {
        h.as_ref().map(|h| hex::encode(h.0))
    };
    assert_eq!(hex(&p.mr_td).as_deref(), Some(MRTD_SINGLE_PASS));
    assert_eq!(hex(&p.rtmr0), None, "RTMR0 is left open");
    assert_eq!(hex(&p.rtmr1).as_deref(), Some(rtmr1));
    assert_eq!(hex(&p.rtmr2).as_deref(), Some(RTMR2_KATA));
    assert_eq!(hex(&p.rtmr3), Some("0".repeat(96)));
    assert!(p.label.contains("2 vCPUs"), "{}", p.label);
    assert_eq!(v["policy"]["digest"], policy.digest_hex());
    // Every setting is commented, as in policies/example.toml.
    for line in text.lines() {
        let setting = !line.starts_with('#') && !line.starts_with('[') && line.contains(" = ");
        if setting && !line.starts_with("label") {
            assert!(line.contains(" # "), "uncommented setting: {line}");
        }
    }
    // And `tessera policy check` accepts it.
    let check = run(&["policy", "check", &policy_path]);
    assert_eq!(check.status.code(), Some(0));
}

#[test]
fn two_pass_gives_the_two_pass_value_and_an_initrd_changes_rtmr1_and_rtmr2() {
    let img = image("order");
    let base = json_of(&measure(&img, &["--json"]));
    let two = json_of(&measure(&img, &["--json", "--two-pass"]));
    assert_eq!(two["mr_td"], MRTD_TWO_PASS);
    assert_eq!(two["rtmr1"], base["rtmr1"]);
    let with_initrd = json_of(&measure(&img, &["--json", "--initrd", &img.initrd]));
    assert_ne!(with_initrd["rtmr2"], base["rtmr2"]);
    assert_ne!(with_initrd["rtmr1"], base["rtmr1"]);
    assert_eq!(with_initrd["events"]["rtmr2"].as_array().unwrap().len(), 2);
    assert!(with_initrd["cmdline_as_passed"]
        .as_str()
        .unwrap()
        .ends_with(" initrd=initrd"));
    // The memory size moves the initrd, hence RTMR1; the unpatched kernel does not move.
    let more = json_of(&measure(
        &img,
        &["--json", "--initrd", &img.initrd, "--memory", "2560M"],
    ));
    assert_ne!(more["rtmr1"], with_initrd["rtmr1"]);
    let unpatched = |memory: &str| {
        json_of(&measure(
            &img,
            &[
                "--json",
                "--initrd",
                &img.initrd,
                "--memory",
                memory,
                "--kernel-unpatched",
            ],
        ))["rtmr1"]
            .clone()
    };
    assert_eq!(unpatched("2G"), unpatched("2560M"));
}

#[test]
fn rtmr0_comes_from_a_quote_of_this_firmware_and_not_of_another() {
    let img = image("quote");
    let base = json_of(&measure(&img, &["--json"]));
    let rtmr0 = "ab".repeat(48);
    let quote = img.dir.path("q.bin");
    let made = run(&[
        "quote",
        "--provider",
        "mock",
        "--report-data",
        &"00".repeat(64),
        "--out",
        &quote,
        "--mock-mrtd",
        base["mr_td"].as_str().unwrap(),
        "--mock-rtmr0",
        &rtmr0,
        "--mock-rtmr1",
        base["rtmr1"].as_str().unwrap(),
    ]);
    assert_eq!(made.status.code(), Some(0), "{made:?}");
    let policy_path = img.dir.path("p.toml");
    let out = measure(
        &img,
        &[
            "--json",
            "--rtmr0-from-quote",
            &quote,
            "--policy-out",
            &policy_path,
        ],
    );
    let v = json_of(&out);
    assert_eq!(v["rtmr0"], rtmr0);
    assert_eq!(v["quote"]["rtmr1_matches"], true);
    assert_eq!(v["quote"]["rtmr2_matches"], false);
    assert!(String::from_utf8_lossy(&out.stderr).contains("RTMR2"));
    let policy = Policy::from_toml_str(&std::fs::read_to_string(&policy_path).unwrap()).unwrap();
    let p = &policy.td.profiles[0];
    assert_eq!(p.rtmr0.as_ref().map(|h| hex::encode(h.0)), Some(rtmr0));

    // A real TDX quote of another firmware: refused (exit 1), nothing written.
    let other = img.dir.path("other.toml");
    let out = measure(
        &img,
        &[
            "--rtmr0-from-quote",
            &vector("tdx/quote_uptodate.bin"),
            "--policy-out",
            &other,
        ],
    );
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("MRTD"), "{stderr}");
    assert!(!std::path::Path::new(&other).exists());
}

#[test]
fn the_human_report_names_each_register_and_what_it_covers() {
    let img = image("human");
    let out = measure(&img, &[]);
    assert_eq!(out.status.code(), Some(0));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(&format!("MRTD   {MRTD_SINGLE_PASS}")),
        "{text}"
    );
    assert!(text.contains("RTMR0  (open)"), "{text}");
    assert!(text.contains(&format!("RTMR2  {RTMR2_KATA}")), "{text}");
    assert!(text.contains("not checked against an independent reference"));
    assert!(text.contains("Exit Boot Services Invocation"));
}

#[test]
fn bad_inputs_exit_2_naming_the_input() {
    let img = image("bad");
    let garbage = img.dir.write("garbage.fd", &[0x5a; 65536]);
    let fw = vector("measure/synthetic_tdvf_2MiB.fd");
    let cases: [(&str, &str, &[&str], &str); 5] = [
        (&garbage, &img.kernel, &[], "firmware: no OVMF GUID table"),
        (&img.kernel, &img.kernel, &[], "firmware: "),
        (&fw, &fw, &[], "kernel: "),
        (
            &fw,
            &fw,
            &["--kernel-unpatched"],
            "kernel: kernel is not a PE image",
        ),
        (&fw, &img.kernel, &["--memory", "2X"], "--memory"),
    ];
    for (firmware, kernel, extra, expected) in cases {
        let out = measure_files(firmware, kernel, extra);
        assert_eq!(out.status.code(), Some(2), "{extra:?}: {out:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(expected), "{expected:?}: {stderr}");
    }
    let empty = img.dir.write("empty.img", b"");
    let out = measure(&img, &["--initrd", &empty]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("initrd"));
}

/// `tessera config-id` names a node.toml and its policies (hex, or base64 for QEMU's
/// `mrconfigid`), changes with either, and `--mr-config-id` pins it in the written policy.
#[test]
fn the_config_id_is_printed_and_pinned_in_the_policy() {
    let img = image("config-id");
    let policy = std::fs::read_to_string(format!("{ROOT}/policies/mock.toml")).unwrap();
    img.dir.write("mock.toml", policy.as_bytes());
    let node_toml = |tick: u32| {
        format!(
            "data_dir = \"data\"\nlisten = \"0.0.0.0:7000\"\nbootstrap_expect = 1\n\
             group_key_file = \"group.key\"\npolicies = [\"mock.toml\"]\nattestation = \"mock\"\n\
             network_id = \"config-id-test\"\nstorage = \"memory\"\n[timers]\ntick_ms = {tick}\n"
        )
    };
    let config = img.dir.write("node.toml", node_toml(20).as_bytes());
    let id_of = |extra: &[&str]| {
        let mut args = vec!["config-id", "--config", &config];
        args.extend_from_slice(extra);
        let out = run(&args);
        assert_eq!(
            out.status.code(),
            Some(0),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap().trim().to_string()
    };
    let id = id_of(&[]);
    assert_eq!(id.len(), 96, "{id}");
    assert!(id.bytes().all(|b| b.is_ascii_hexdigit()), "{id}");
    let b64 = id_of(&["--base64"]);
    assert_eq!(b64.len(), 64, "48 bytes in base64: {b64}");
    let decoded = data_encoding::BASE64
        .decode(b64.as_bytes())
        .expect("base64");
    assert_eq!(hex::encode(decoded), id, "the same id in base64");
    img.dir.write("node.toml", node_toml(21).as_bytes());
    assert_ne!(id_of(&[]), id, "another node.toml, another id");
    img.dir.write("node.toml", node_toml(20).as_bytes());
    assert_eq!(id_of(&[]), id);

    let policy_path = img.dir.path("provisioner.toml");
    let out = measure(&img, &["--policy-out", &policy_path, "--mr-config-id", &id]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let written = Policy::from_toml_str(&std::fs::read_to_string(&policy_path).unwrap()).unwrap();
    let pinned = written.td.profiles[0]
        .mr_config_id
        .as_ref()
        .map(|h| hex::encode(h.0));
    assert_eq!(pinned.as_deref(), Some(id.as_str()));

    let out = measure(
        &img,
        &["--policy-out", &policy_path, "--mr-config-id", "xyz"],
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--mr-config-id: expected 96 hex"));
    let missing = run(&["config-id", "--config", &img.dir.path("absent.toml")]);
    assert_eq!(missing.status.code(), Some(2));
}
