//! The exactly-once session layer's cost per command, applied one at a time (`apply`, as
//! the worker did before issue 16) and in batches (`apply_batch`, as it does now: the
//! session layer cuts each batch into runs for the inner machine).
//!
//! 1000 clients each put one 16-byte value per round, in client order, for 200 rounds
//! into a [`KvStore`]; batches of 64 commands (what a loaded leader applies at once). The
//! two machines must end equal. Prints one JSON object per mode. Wall time is noisy on a
//! shared machine; instruction counts are not: `valgrind --tool=callgrind` on the bench
//! binary with `ONLY=one` or `ONLY=batch` compares the two exactly.
//!
//! Run: `cargo bench --bench sessions --no-default-features --features mock-attestation`.
use std::time::Instant;

use tessera::machine::{
    ApplyContext, ClientId, KvCommand, KvStore, ReplicatedKv, SessionCommand, StateMachine,
};

const CLIENTS: u64 = 1000;
const ROUNDS: u64 = 200;
const BATCH: usize = 64;

fn commands() -> Vec<(SessionCommand<KvCommand>, ApplyContext<'static>)> {
    let mut out = Vec::with_capacity((CLIENTS * ROUNDS) as usize);
    let mut index = 1;
    for seq in 1..=ROUNDS {
        for client in 0..CLIENTS {
            let command = SessionCommand {
                client: ClientId(client),
                seq,
                command: KvCommand::Put {
                    key: format!("k{}", client % 64).into_bytes(),
                    value: vec![7; 16],
                },
            };
            out.push((command, ApplyContext::new(index, 1, 1_700_000_000_000)));
            index += 1;
        }
    }
    out
}

fn run(
    mode: &str,
    commands: Vec<(SessionCommand<KvCommand>, ApplyContext<'static>)>,
) -> ReplicatedKv {
    let n = commands.len();
    let mut machine = ReplicatedKv::new(KvStore::new());
    let started = Instant::now();
    if mode == "one" {
        for (command, ctx) in commands {
            std::hint::black_box(machine.apply(command, &ctx));
        }
    } else {
        let mut commands = commands.into_iter().peekable();
        while commands.peek().is_some() {
            let batch: Vec<_> = commands.by_ref().take(BATCH).collect();
            std::hint::black_box(machine.apply_batch(batch));
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    println!(
        "{{\"mode\":\"{mode}\",\"commands\":{n},\"ns_per_command\":{:.1}}}",
        elapsed * 1e9 / n as f64
    );
    machine
}

fn main() {
    let only = std::env::var("ONLY").ok();
    let mut machines = Vec::new();
    for mode in ["one", "batch"] {
        if only.as_deref().is_none_or(|o| o == mode) {
            machines.push(run(mode, commands()));
        }
    }
    if let [one, batch] = &machines[..] {
        assert_eq!(
            one.snapshot().ok(),
            batch.snapshot().ok(),
            "both modes end equal"
        );
    }
}
