//! The `tessera` command line.
use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod cli;

/// tessera: confidential replicated groups for Intel TDX.
#[derive(Parser, Debug)]
#[command(name = "tessera", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    #[command(flatten)]
    Attest(cli::attest::AttestCommand),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Attest(command) => cli::attest::run(command),
    }
}
