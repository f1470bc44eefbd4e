//! `tessera quote`, `tessera verify`, `tessera policy`: the attestation commands.
//!
//! Exit codes of `verify`: 0 accepted, 1 rejected, 2 bad input or usage.
use std::process::ExitCode;

use clap::Subcommand;

/// Attestation subcommands, flattened into the top-level command list.
#[derive(Subcommand, Debug)]
pub enum AttestCommand {
    /// Produce a TDX quote (not yet available in this build).
    Quote,
}

/// Runs one attestation subcommand and returns the process exit code.
pub fn run(command: AttestCommand) -> ExitCode {
    match command {
        AttestCommand::Quote => {
            eprintln!("tessera quote: not available in this build yet");
            ExitCode::from(2)
        }
    }
}
