//! `tessera sim`: the deterministic simulator. `--seed <n> --verbose` narrates one run.
use std::process::ExitCode;
use std::time::Instant;

use clap::Args;
use tessera::sim::{self, SimOptions};

#[derive(Args, Debug)]
pub struct SimArgs {
    /// Replay exactly this seed, printing its events.
    #[arg(long, conflicts_with = "seeds")]
    pub seed: Option<u64>,
    /// Run this many seeds, starting at --first.
    #[arg(long, default_value_t = 300)]
    pub seeds: u64,
    /// First seed of a multi-seed run.
    #[arg(long, default_value_t = 0)]
    pub first: u64,
    /// Cluster size (3, 5, 7, …); drawn per seed when absent.
    #[arg(long)]
    pub nodes: Option<usize>,
    /// Print every notable event of a single-seed run.
    #[arg(long)]
    pub verbose: bool,
}

pub fn run(args: SimArgs) -> ExitCode {
    if let Some(seed) = args.seed {
        let mut options = SimOptions::new(seed);
        options.nodes = args.nodes;
        options.verbose = args.verbose;
        return match sim::run(options) {
            Ok(r) => {
                println!(
                    "sim: seed {seed} passed: {} nodes, {} ms virtual, {} operations, commit index {}, {} leaders, recovered {} ms after heal; {:?}",
                    r.nodes, r.virtual_ms, r.operations, r.committed_index, r.leaders, r.recovery_ms, r.stats
                );
                ExitCode::SUCCESS
            }
            Err(f) => {
                eprintln!("{f}");
                ExitCode::from(f.kind.exit_code())
            }
        };
    }
    let started = Instant::now();
    let mut failed = Vec::new();
    let mut passed = 0u64;
    for seed in args.first..args.first + args.seeds {
        let mut options = SimOptions::new(seed);
        options.nodes = args.nodes;
        match sim::run(options) {
            Ok(_) => passed += 1,
            Err(f) => {
                eprintln!("{f}");
                failed.push(f);
            }
        }
        let done = seed - args.first + 1;
        if done % 100 == 0 && done < args.seeds {
            eprintln!(
                "sim: {done}/{} seeds run ({} failed) in {:.1?}",
                args.seeds,
                failed.len(),
                started.elapsed()
            );
        }
    }
    println!("sim: {passed} seeds passed, {} failed", failed.len());
    match failed.first() {
        None => ExitCode::SUCCESS,
        Some(f) => {
            let seeds: Vec<String> = failed.iter().map(|f| f.seed.to_string()).collect();
            println!("sim: failing seeds: {}", seeds.join(" "));
            ExitCode::from(f.kind.exit_code())
        }
    }
}
