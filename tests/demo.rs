//! `make demo` runs `tessera demo`: it must succeed and tell the story the README promises.
use std::process::Command;

#[test]
fn the_demo_attests_refuses_fails_over_and_loses_nothing() {
    let out = Command::new(env!("CARGO_BIN_EXE_tessera"))
        .arg("demo")
        .output()
        .expect("tessera demo runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "demo failed:\n{stdout}\n{stderr}");
    assert_eq!(stdout.matches("  attested  ").count(), 3, "{stdout}");
    assert!(stdout.contains("bonded over iroh"), "{stdout}");
    for (who, why) in [
        ("mallory (other image)", "quote rejected by policy"),
        ("forger (bad signature)", "quote rejected by DCAP"),
        ("replayer (alpha's quote)", "quote rejected by binding"),
    ] {
        let line = stdout
            .lines()
            .find(|l| l.starts_with(&format!("  REFUSED   {who}")))
            .unwrap_or_else(|| panic!("{who} not refused:\n{stdout}"));
        assert!(
            line.contains("BadTicket") && line.contains(why),
            "{who}: {line}"
        );
    }
    assert!(stdout.contains("took over and accepted writes"), "{stdout}");
    assert!(stdout.contains("no acknowledged write lost"), "{stdout}");
}
