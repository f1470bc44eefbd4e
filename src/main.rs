//! The `tessera` command line.
use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod cli;

/// mimalloc rather than the system allocator: under load a member allocates and frees
/// small buffers at a high rate on every thread (frames, entries, outputs), and glibc's
/// malloc spent a third of the time of a loaded leader on it (docs/benchmarks.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
    /// Compute offline the MRTD, RTMR1 and RTMR2 a TD image will have, and write a policy.
    ///
    /// For a QEMU direct kernel boot of a TDVF (TDX OVMF) firmware: MRTD from the firmware's
    /// TDVF metadata, RTMR1 from the kernel (its Authenticode-style PE hash after QEMU's
    /// setup-header patch, which depends on the initrd size and --memory, then OVMF's boot
    /// events), RTMR2 from the command line as OVMF passes it and the initrd. RTMR3 is zero.
    ///
    /// RTMR0 (firmware configuration: ACPI tables, memory map, CPU count) depends on the
    /// host's QEMU and machine shape and is not computed: computing it from the ACPI tables
    /// QEMU generates (--acpi-tables) is not supported. Take it from a quote of a real boot
    /// of the same image on the same host shape (--rtmr0-from-quote), or leave it open.
    ///
    /// MRTD and RTMR2's command-line event are checked against independent published
    /// values; RTMR1 is not: compare it with a real boot's quote before relying on it.
    Measure(cli::measure::MeasureArgs),
    /// Run the deterministic simulator (one seed with --seed, many with --seeds).
    Sim(cli::sim::SimArgs),
    /// Check a recorded client history for linearizability (exit 0 yes, 1 no, 2 undecided).
    Lincheck(cli::lincheck::LincheckArgs),
    /// Concurrent clients doing get/put/cas through the given nodes, recording a history.
    Workload(cli::workload::WorkloadArgs),
    /// The embedded default: a narrated run of a local three-node group.
    #[cfg(feature = "mock-attestation")]
    Demo,
    /// Throughput, latency and failover of a local cluster over loopback iroh.
    #[cfg(feature = "mock-attestation")]
    Bench(cli::bench::BenchArgs),
    /// Not in this build: `demo` runs mock-attested members (feature `mock-attestation`).
    #[cfg(not(feature = "mock-attestation"))]
    #[command(hide = true)]
    Demo,
    /// Not in this build: `bench` runs mock-attested members (feature `mock-attestation`).
    #[cfg(not(feature = "mock-attestation"))]
    #[command(hide = true)]
    Bench {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true, hide = true)]
        _args: Vec<String>,
    },
    /// Run one member of a group, configured by node.toml, until SIGINT or SIGTERM.
    Node(cli::node::NodeArgs),
    /// Write a node secret key (or, with --group, a group key) to a new 0600 file.
    Keygen(cli::node::KeygenArgs),
    /// Key-value client: put, get, del, cas, scan through a node.
    Kv(cli::kv::KvArgs),
    /// Show the group as a table: members, roles, term, commit/applied, bonds, ticket expiry.
    Status(cli::status::StatusArgs),
    /// List the group's members, or remove one (an operator's key, through the leader).
    Member(cli::member::MemberArgs),
    /// Send the group key to a node started with [provision], after checking its quote.
    Provision(cli::provision::ProvisionArgs),
    /// Print the id of a node.toml and its policies: the MRCONFIGID to start its TD with.
    ConfigId(cli::node::ConfigIdArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Attest(command) => cli::attest::run(command),
        Command::Measure(args) => cli::measure::run(&args),
        Command::Sim(args) => cli::sim::run(args),
        Command::Lincheck(args) => cli::lincheck::run(args),
        Command::Workload(args) => cli::workload::run(args),
        #[cfg(feature = "mock-attestation")]
        Command::Demo => cli::demo::demo(),
        #[cfg(feature = "mock-attestation")]
        Command::Bench(args) => cli::bench::bench(args),
        #[cfg(not(feature = "mock-attestation"))]
        Command::Demo => cli::without_mock_attestation("demo"),
        #[cfg(not(feature = "mock-attestation"))]
        Command::Bench { .. } => cli::without_mock_attestation("bench"),
        Command::Node(args) => cli::node::run(args),
        Command::Keygen(args) => cli::node::keygen(args),
        Command::Kv(args) => cli::kv::run(args),
        Command::Status(args) => cli::status::run(args),
        Command::Member(args) => cli::member::run(args),
        Command::Provision(args) => cli::provision::run(args),
        Command::ConfigId(args) => cli::node::config_id(args),
    }
}
