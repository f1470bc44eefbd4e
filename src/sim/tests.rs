//! Simulator tests: many seeds pass, one seed replays identically, and the checks do fail
//! when the core is unsafe.
use super::*;

/// Seeds that `make test` runs. Each mixes every fault kind its plan enables.
const CI_SEEDS: u64 = 300;

fn seed_from_env() -> Option<u64> {
    std::env::var("SEED").ok().and_then(|s| s.parse().ok())
}

#[test]
fn simulator_seeds_pass() {
    if let Some(seed) = seed_from_env() {
        let mut options = SimOptions::new(seed);
        options.verbose = true;
        if let Err(f) = run(options) {
            panic!("{f}");
        }
        return;
    }
    let count = std::env::var("SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(CI_SEEDS);
    let (reports, failures) = run_seeds(0, count, None);
    for f in &failures {
        eprintln!("{f}");
    }
    assert!(
        failures.is_empty(),
        "{} of {count} seeds failed (first: seed {})",
        failures.len(),
        failures[0].seed
    );
    // The runs must actually have exercised the faults and made progress.
    let sum = |f: fn(&SimReport) -> u64| reports.iter().map(f).sum::<u64>();
    eprintln!(
        "sim: {count} seeds: {} crashes, {} partitions, {} pauses ({} events queued and \
         delivered on resume), {} long-tail delays, {} runs with skewed ticks, {} give-ups, \
         {} client departures, {} sessions evicted, {} expired, {} retries deduplicated, \
         {} commands forwarded, {} follower reads, {} automatic membership changes, \
         {} wall-clock jumps, {} members replaced by new identities ({} of them left first), \
         {} graceful shutdowns ({} leaders handed over first)",
        sum(|r| r.stats.crashes),
        sum(|r| r.stats.partitions),
        sum(|r| r.stats.pauses),
        sum(|r| r.stats.backlog_delivered),
        sum(|r| r.stats.long_delays),
        reports
            .iter()
            .filter(|r| r.tick_ms.iter().min() != r.tick_ms.iter().max())
            .count(),
        sum(|r| r.stats.give_ups),
        sum(|r| r.stats.client_departures),
        sum(|r| r.stats.sessions_evicted),
        sum(|r| r.stats.sessions_expired),
        sum(|r| r.stats.duplicates),
        sum(|r| r.stats.forwards),
        sum(|r| r.stats.follower_reads),
        sum(|r| r.stats.automatic_changes),
        sum(|r| r.stats.clock_jumps),
        sum(|r| r.stats.identities_replaced),
        sum(|r| r.stats.left_before_reboot),
        sum(|r| r.stats.graceful_stops),
        sum(|r| r.stats.handovers),
    );
    assert!(sum(|r| r.stats.crashes) > 0, "no crashes injected");
    // The runtime's own paths, through the member, not only the core's.
    assert!(
        sum(|r| r.stats.forwards) > 0,
        "no command was forwarded to a leader"
    );
    assert!(
        sum(|r| r.stats.follower_reads) > 0,
        "no read was served through the leader's read point"
    );
    assert!(
        sum(|r| r.stats.automatic_changes) > 0,
        "no leader changed its membership by itself"
    );
    assert!(
        sum(|r| r.stats.clock_jumps) > 0,
        "no wall clock ever jumped"
    );
    assert!(
        sum(|r| r.stats.left_before_reboot) > 0,
        "no member left gracefully before rebooting as a new identity"
    );
    assert!(sum(|r| r.stats.partitions) > 0, "no partitions injected");
    assert!(
        sum(|r| r.stats.membership_changes) > 0,
        "no membership changes"
    );
    assert!(sum(|r| r.stats.transfers) > 0, "no leader transfers");
    assert!(
        sum(|r| r.stats.handovers) > 0,
        "no leader handed over before a graceful shutdown"
    );
    assert!(
        sum(|r| r.stats.graceful_stops) > sum(|r| r.stats.handovers),
        "no graceful shutdown without a hand-over (a follower's)"
    );
    assert!(
        sum(|r| r.stats.snapshots_installed) > 0,
        "no snapshot was ever installed"
    );
    assert!(sum(|r| r.stats.messages_dropped) > 0, "no message loss");
    assert!(sum(|r| r.stats.long_delays) > 0, "no long-tail delay");
    assert!(sum(|r| r.stats.give_ups) > 0, "no client ever gave up");
    assert!(
        sum(|r| r.stats.sessions_evicted) > 0,
        "no session was ever evicted"
    );
    assert!(
        sum(|r| r.stats.sessions_expired) > 0,
        "no session ever expired"
    );
    assert!(
        sum(|r| r.stats.pauses) > 0 && sum(|r| r.stats.backlog_delivered) > 0,
        "no pause, or no backlog delivered on resume"
    );
    assert!(
        reports.iter().any(|r| {
            let ticks = &r.tick_ms;
            ticks.iter().min() != ticks.iter().max()
        }),
        "no run with skewed ticks"
    );
    assert!(
        sum(|r| r.stats.fresh_starts) > 0,
        "no run formed its group from fresh nodes"
    );
    assert!(
        sum(|r| r.stats.duplicates) > 0,
        "no retry was ever deduplicated"
    );
    assert!(
        reports
            .iter()
            .all(|r| r.operations > 0 && r.committed_index > 0),
        "a run made no progress"
    );
    for n in [3, 5, 7] {
        assert!(
            reports.iter().any(|r| r.nodes == n),
            "no run with {n} nodes"
        );
    }
}

#[test]
fn a_seed_replays_exactly() {
    let a = run(SimOptions::new(4242)).expect("seed 4242 passes");
    let b = run(SimOptions::new(4242)).expect("seed 4242 passes");
    assert_eq!(format!("{:?}", a), format!("{:?}", b));
}

/// Switching the core to the reference runtime's quorum rule (a majority of the reachable
/// voters) must be caught: partitions then let both sides elect and commit.
#[test]
fn reference_quorum_rule_is_caught_as_unsafe() {
    const SEEDS_MAX: u64 = 100;
    for seed in 0..SEEDS_MAX {
        let mut options = SimOptions::new(seed);
        options.dangerous_reference_quorum = true;
        match run(options) {
            Ok(_) => {}
            Err(f) if f.kind != FailureKind::Liveness => {
                eprintln!("unsafe quorum caught at seed {seed}:\n{f}");
                return;
            }
            Err(_) => {}
        }
    }
    panic!("the reference quorum rule went unnoticed for {SEEDS_MAX} seeds");
}

/// Fresh nodes form their group through the runtime's formation rule, whatever order the
/// bonds come up in and whatever faults hit them meanwhile: the founders found it (one
/// group: every safety check holds), the others join, and clients are served.
#[test]
fn fresh_nodes_form_one_group_under_faults() {
    for seed in 0..60 {
        let mut options = SimOptions::new(seed);
        options.fresh_start = Some(true);
        let report = run(options).unwrap_or_else(|f| panic!("{f}"));
        assert!(
            report.stats.foundings >= 1 && report.operations > 0,
            "seed {seed}: nobody founded or nothing was served: {report:?}"
        );
    }
}

/// Founders picked from a partial view (the `n` smallest fresh peers heard so far, the
/// rule the review found) must be caught: members with different views found two groups
/// under one id.
#[test]
fn founders_from_a_partial_view_are_caught_as_unsafe() {
    const SEEDS_MAX: u64 = 200;
    for seed in 0..SEEDS_MAX {
        let mut options = SimOptions::new(seed);
        options.nodes = Some(5);
        options.dangerous_formation = Some(3);
        match run(options) {
            Err(f) if f.kind != FailureKind::Liveness => {
                eprintln!("partial-view formation caught at seed {seed}:\n{f}");
                return;
            }
            _ => {}
        }
    }
    panic!("founders from a partial view went unnoticed for {SEEDS_MAX} seeds");
}
