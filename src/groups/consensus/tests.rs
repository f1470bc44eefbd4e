//! Consensus configuration: durations to ticks, what is refused, the serde form.
use std::time::Duration;

use super::*;

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

#[test]
fn the_default_is_the_core_and_worker_defaults_so_group_ids_do_not_move() {
    let config = ConsensusConfig::default();
    assert_eq!(config.raft(), &RaftConfig::default());
    assert_eq!(config.worker(), &WorkerConfig::default());
    assert_eq!(ConsensusConfig::builder().build(), Ok(config));
}

#[test]
fn durations_become_ticks() {
    let config = ConsensusConfig::builder()
        .tick(ms(10))
        .heartbeat_interval(ms(30))
        .election_timeout(ms(200))
        .max_voters(7)
        .snapshot_every_entries(None)
        .build()
        .expect("valid");
    assert_eq!(config.raft().heartbeat_ticks, 3);
    assert_eq!(config.raft().election_ticks, 20);
    assert_eq!(config.raft().max_voters, 7);
    assert_eq!(config.worker().tick, ms(10));
    assert_eq!(config.worker().snapshot_every, None);
    assert_eq!(config.election_timeout(), ms(200));
}

#[test]
fn values_that_cannot_work_are_refused_naming_the_field() {
    let base = || ConsensusConfig::builder().tick(ms(10));
    let cases = [
        (
            base().heartbeat_interval(ms(15)).build(),
            "heartbeat_interval (15ms) must be a whole number of ticks of 10ms",
        ),
        (
            base().election_timeout(ms(205)).build(),
            "election_timeout (205ms) must be a whole number of ticks of 10ms",
        ),
        (
            base().heartbeat_interval(ms(0)).build(),
            "heartbeat_interval must not be zero",
        ),
        (
            base()
                .heartbeat_interval(ms(100))
                .election_timeout(ms(100))
                .build(),
            "election_timeout (100ms) must be longer than heartbeat_interval (100ms)",
        ),
        (
            ConsensusConfig::builder()
                .tick(Duration::from_micros(10))
                .build(),
            "tick must be between 1 ms and 60 s, got 10µs",
        ),
        (
            base().forward_timeout(ms(0)).build(),
            "forward_timeout must not be zero",
        ),
        (
            base().snapshot_every_bytes(Some(0)).build(),
            "snapshot_every_bytes must not be zero",
        ),
        (
            base().max_voters(0).build(),
            "consensus core: max_voters must be at least 1",
        ),
    ];
    for (result, message) in cases {
        let error = result.expect_err(message);
        assert_eq!(error.to_string(), message);
    }
}

#[test]
fn the_serde_form_is_milliseconds_with_zero_for_never_and_round_trips() {
    let config: ConsensusConfig = toml::from_str(
        "tick_ms = 20\nheartbeat_interval_ms = 40\nelection_timeout_ms = 400\nremoval_timeout_ms = 0\n",
    )
    .expect("parses");
    assert_eq!(config.tick(), ms(20));
    assert_eq!(config.raft().heartbeat_ticks, 2);
    assert_eq!(config.raft().election_ticks, 20);
    assert_eq!(config.worker().removal_timeout, None);
    // Unset fields keep their defaults.
    assert_eq!(
        config.worker().forward_timeout,
        WorkerConfig::default().forward_timeout
    );
    let text = toml::to_string(&config).expect("serializes");
    let back: ConsensusConfig = toml::from_str(&text).expect("parses back");
    assert_eq!(back, config);
}

#[test]
fn deserializing_runs_the_same_checks_and_refuses_unknown_fields() {
    let error = toml::from_str::<ConsensusConfig>("tick_ms = 10\nheartbeat_interval_ms = 15\n")
        .expect_err("not whole ticks");
    assert!(
        error
            .to_string()
            .contains("heartbeat_interval (15ms) must be a whole number of ticks"),
        "{error}"
    );
    let error = toml::from_str::<ConsensusConfig>("heartbeat_ms = 100\n").expect_err("unknown");
    assert!(
        error.to_string().contains("unknown field `heartbeat_ms`"),
        "{error}"
    );
}
