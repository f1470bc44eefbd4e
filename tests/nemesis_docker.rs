//! The short version of `make test-nemesis` that `make test` runs: three node containers,
//! two seeded faults, concurrent clients whose history must be linearizable
//! (scripts/test-nemesis.sh, with the binary this test build made). Needs Docker: without
//! a reachable daemon it says loudly that it skipped, and passes.
use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_tessera");
const ROOT: &str = env!("CARGO_MANIFEST_DIR");

fn docker_reachable() -> bool {
    Command::new("docker")
        .arg("info")
        .output()
        .is_ok_and(|out| out.status.success())
}

#[test]
fn a_short_nemesis_run_keeps_the_history_linearizable() {
    if !docker_reachable() {
        eprintln!(
            "\n*** SKIPPED the container nemesis test: no reachable Docker daemon \
             (`docker info` failed). `make test-nemesis` runs it where Docker is. ***\n"
        );
        return;
    }
    let out = Command::new(format!("{ROOT}/scripts/test-nemesis.sh"))
        .env("TESSERA_BIN", BIN)
        .env("TESSERA_NEMESIS_ROUNDS", "2")
        .env("TESSERA_NEMESIS_FAULT_SECS", "2")
        // Its own subnet, so that it does not meet a `make test-cluster` of the default.
        .env("TESSERA_TEST_SUBNET", "172.31.251.0/24")
        .output()
        .expect("run scripts/test-nemesis.sh");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stdout.contains("PASS test-nemesis"),
        "test-nemesis failed (exit {:?}):\n{stdout}\n{stderr}",
        out.status.code()
    );
    eprintln!("{}", stdout.lines().last().unwrap_or_default());
}
