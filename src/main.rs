//! The `tessera` command line.
use clap::{Parser, Subcommand};

/// tessera: confidential replicated groups for Intel TDX.
#[derive(Parser, Debug)]
#[command(name = "tessera", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Print the version and exit.
    Version,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Version => println!("tessera {}", env!("CARGO_PKG_VERSION")),
    }
    Ok(())
}
