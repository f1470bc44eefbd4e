//! Deterministic simulation of a Raft group (architecture.md §9.2, after FoundationDB and
//! TigerBeetle's VOPR).
//!
//! One seed fixes everything: the cluster size (3, 5 or 7 unless given), the fault mix,
//! every message delay (some take a long tail of seconds, so they arrive terms later),
//! loss and duplicate, every partition, crash, pause (the node stops, what is sent to it
//! queues up and arrives at once when it resumes, its timers fire late), slow disk,
//! membership change and leader transfer, each node's tick interval (skewed by up to
//! ±20 %), every election timeout inside the cores, and the clients: when they give up
//! (the outcome stays unknown), when one leaves for a new one, and the session table's
//! bounds (in some seeds one session above the concurrent clients, so sessions are
//! evicted, and a TTL, so they expire). Each node runs the real
//! `Member` (`groups/member.rs`), the runtime's decisions as the worker makes
//! them (formation, forwarding to the leader, follower reads through the leader's read
//! point, automatic membership, snapshots), around the real [`Raft`](crate::raft::Raft)
//! core, and the real replicated key-value machine; only the network, the bonds and the
//! disk are simulated. Clients send to any node: a follower forwards. A disk write becomes
//! durable after a latency; a crash keeps a random prefix of the writes in flight and
//! loses the rest.
//!
//! About one seed in three starts every node fresh: the founders (the first voters) form
//! the group through the runtime's own formation rule, with bonds coming up, going down
//! and carrying statuses in the seed's order; the other nodes join once added.
//!
//! A run has two phases:
//! 1. **safety**: clients issue operations while faults are injected; after every event
//!    the checks (`sim/checks.rs`) run (election safety, log matching, leader completeness, state-machine
//!    safety, durability of committed entries, one configuration change at a time) and
//!    each core validates its own state;
//! 2. **liveness**: faults stop, the network heals, every node restarts; within a bounded
//!    virtual time a leader must be known to every member and every pending client
//!    operation must complete. Replicas must then hold identical states.
//!
//! Finally the whole client history goes through the [linearizability
//! checker](crate::lincheck). A failure names the property, prints the seed and the command
//! that replays it exactly: `make sim SEED=<n>`.
pub(crate) mod checks;
mod client;
mod disk;
mod driver;
mod events;
pub(crate) mod faults;
mod nemesis;
mod network;
mod node;
mod workload;
mod world;

use std::fmt;

use crate::lincheck::{self, kv::KvModel, CheckLimits, CheckOutcome};
use crate::raft::SplitMix64;
use checks::Violation;
use faults::FaultPlan;
pub use world::Stats;
use world::World;

/// What to simulate.
#[derive(Clone, Debug)]
pub struct SimOptions {
    /// Fixes everything else that is drawn: the same seed replays the same run.
    pub seed: u64,
    /// Cluster size; drawn from {3, 5, 7} when `None`.
    pub nodes: Option<usize>,
    /// Length of the fault phase in virtual milliseconds; drawn when `None`.
    pub safety_ms: Option<u64>,
    /// Bound on the liveness phase in virtual milliseconds.
    pub liveness_ms: u64,
    /// Print the run's notable events as they happen.
    pub verbose: bool,
    /// Start every node fresh and let them form the group through the runtime's
    /// `Formation` (`groups/formation.rs`), statuses exchanged over bonds
    /// that come up in a seeded order; `None`: drawn per seed (about one in three).
    pub fresh_start: Option<bool>,
    /// Test only: the reference runtime's quorum rule, to prove the checks catch it.
    #[cfg(test)]
    pub dangerous_reference_quorum: bool,
    /// Test only: founders chosen from a partial view (the `n` smallest fresh peers heard
    /// so far), to prove the checks catch the fork it allows. Implies a fresh start.
    #[cfg(test)]
    pub dangerous_formation: Option<usize>,
}

impl SimOptions {
    /// Options for `seed` with everything else drawn from it, and a liveness bound of
    /// [`LIVENESS_MS_DEFAULT`].
    pub fn new(seed: u64) -> Self {
        Self {
            seed,
            nodes: None,
            safety_ms: None,
            liveness_ms: LIVENESS_MS_DEFAULT,
            verbose: false,
            fresh_start: None,
            #[cfg(test)]
            dangerous_reference_quorum: false,
            #[cfg(test)]
            dangerous_formation: None,
        }
    }
}

/// Default bound on the time from heal to a settled cluster: a few election timeouts
/// plus restart and catch-up, with a wide margin.
pub const LIVENESS_MS_DEFAULT: u64 = 20_000;

/// What a passing run did.
#[derive(Clone, Debug)]
pub struct SimReport {
    /// The seed that was run.
    pub seed: u64,
    /// Cluster size (given or drawn).
    pub nodes: usize,
    /// Virtual time the whole run took, in milliseconds.
    pub virtual_ms: u64,
    /// Client operations in the checked history, completed or with an unknown outcome.
    pub operations: usize,
    /// The highest log index known committed anywhere.
    pub committed_index: u64,
    /// Terms that had a leader.
    pub leaders: usize,
    /// Counts of the faults injected and of what the cluster did under them.
    pub stats: world::Stats,
    /// Each node's tick interval (skewed per node in most runs).
    pub tick_ms: Vec<u64>,
    /// Virtual milliseconds from heal to a settled cluster.
    pub recovery_ms: u64,
}

/// Which kind of check failed; distinct process exit codes per kind (VOPR style).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FailureKind {
    /// A safety property broke during the run (one of the checks listed in the module
    /// docs, a core's own validation, storage or decoding), or the replicas did not
    /// converge to identical states.
    Safety,
    /// After healing, the cluster did not settle within [`SimOptions::liveness_ms`]: no
    /// client operation pending, and every member following one leader and applied up to
    /// its commit index.
    Liveness,
    /// The client history is not linearizable, or the checker gave no verdict within its
    /// limits.
    Linearizability,
}

impl FailureKind {
    /// The process exit code `tessera sim` reports this kind with: 10 for safety, 11 for
    /// liveness, 12 for linearizability.
    pub fn exit_code(self) -> u8 {
        match self {
            FailureKind::Safety => 10,
            FailureKind::Liveness => 11,
            FailureKind::Linearizability => 12,
        }
    }
}

/// A failed run: what broke, where, and how to replay it.
#[derive(Clone, Debug)]
pub struct SimFailure {
    /// The seed that failed; `make sim SEED=<seed>` replays it.
    pub seed: u64,
    /// Which kind of check failed.
    pub kind: FailureKind,
    /// The property violated, e.g. "election safety".
    pub property: String,
    /// What the check saw.
    pub detail: String,
    /// Virtual time of the failure, in milliseconds from the start of the run.
    pub at_ms: u64,
    /// The last notable events before the failure.
    pub recent: Vec<String>,
}

impl fmt::Display for SimFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "sim: seed {} FAILED at {} ms: {} violated: {}",
            self.seed, self.at_ms, self.property, self.detail
        )?;
        for line in self.recent.iter().rev().take(12).rev() {
            writeln!(f, "    {line}")?;
        }
        write!(f, "replay: make sim SEED={}", self.seed)
    }
}

/// Runs one seed.
pub fn run(options: SimOptions) -> Result<SimReport, SimFailure> {
    let mut rng = SplitMix64::new(options.seed ^ 0x7e55_e4a0_5eed_0001);
    let nodes = options
        .nodes
        .unwrap_or_else(|| [3, 5, 7][rng.range(0, 3) as usize]);
    let clients = rng.range(2, 6) as usize;
    let safety_ms = options.safety_ms.unwrap_or_else(|| rng.range(2_000, 6_000));
    let plan = FaultPlan::draw(&mut rng, nodes);
    let liveness_ms = options.liveness_ms;
    let seed = options.seed;
    if options.verbose {
        eprintln!("sim: seed {seed}: {nodes} nodes, {clients} clients, {safety_ms} ms of faults, plan {plan:?}");
    }
    let mut world = World::new(options, plan, rng, nodes, clients);
    let fail = |world: &World, kind, property: &str, detail: String| SimFailure {
        seed,
        kind,
        property: property.to_owned(),
        detail,
        at_ms: world.now_ms,
        recent: world.log.clone(),
    };
    let stop_to_failure =
        |world: &World, v: Violation| fail(world, FailureKind::Safety, v.property, v.detail);

    // Phase 1: safety under faults.
    if let Err(stop) = world.run_until(safety_ms, |_| false) {
        return Err(stop_to_failure(&world, stop));
    }
    // Phase 2: liveness after healing. Clients finish what they started, then stop.
    world.clients_issue_new = false;
    if let Err(stop) = world.heal() {
        return Err(stop_to_failure(&world, stop));
    }
    let healed_at = world.now_ms;
    match world.run_until(healed_at + liveness_ms, World::settled) {
        Ok(true) => {}
        Ok(false) => {
            let pending = world.pending_ops();
            return Err(fail(
                &world,
                FailureKind::Liveness,
                "liveness after healing",
                format!(
                    "no settled leader or {pending} client operations still pending {liveness_ms} ms after heal; nodes:{}",
                    world.describe_nodes()
                ),
            ));
        }
        Err(stop) => return Err(stop_to_failure(&world, stop)),
    }
    let recovery_ms = world.now_ms - healed_at;
    if let Err(v) = world.check_convergence() {
        return Err(fail(&world, FailureKind::Safety, v.property, v.detail));
    }

    // Every client operation is now complete; the history must be linearizable.
    let limits = CheckLimits {
        steps_max: 20_000_000,
        ..CheckLimits::default()
    };
    match lincheck::check(&KvModel::new(), &world.history, limits) {
        CheckOutcome::Linearizable => {}
        CheckOutcome::NotLinearizable { explanation, .. } => {
            return Err(fail(
                &world,
                FailureKind::Linearizability,
                "linearizability of client history",
                explanation,
            ));
        }
        CheckOutcome::Unknown { reason } => {
            return Err(fail(
                &world,
                FailureKind::Linearizability,
                "linearizability of client history",
                format!("checker gave no verdict: {reason:?}"),
            ));
        }
    }
    Ok(SimReport {
        seed,
        nodes,
        virtual_ms: world.now_ms,
        operations: world.history.len(),
        committed_index: world.checkers.committed_index(),
        leaders: world.checkers.leader_count(),
        stats: world.stats.clone(),
        tick_ms: world.plan.tick_ms.clone(),
        recovery_ms,
    })
}

/// Runs seeds `first..first + count`, returning the reports and the failures.
pub fn run_seeds(
    first: u64,
    count: u64,
    nodes: Option<usize>,
) -> (Vec<SimReport>, Vec<SimFailure>) {
    let mut reports = Vec::new();
    let mut failures = Vec::new();
    for seed in first..first + count {
        let mut options = SimOptions::new(seed);
        options.nodes = nodes;
        match run(options) {
            Ok(r) => reports.push(r),
            Err(f) => failures.push(f),
        }
    }
    (reports, failures)
}

#[cfg(test)]
mod tests;
