//! What can go wrong in one simulated run, drawn from its seed (TigerBeetle's VOPR idea:
//! options are randomised per run, so a few hundred seeds cover many mixes).
use crate::raft::SplitMix64;

/// Nominal interval between a node's ticks; with skew each node's differs by up to
/// [`TICK_SKEW_PERCENT_MAX`].
pub const TICK_MS: u64 = 10;
/// Most a node's tick interval differs from [`TICK_MS`], in percent: clocks of real
/// machines run at slightly different rates, so election timeouts are not in lockstep.
pub const TICK_SKEW_PERCENT_MAX: u64 = 20;
/// Bounds of a long-tail message delay: long enough that terms move on meanwhile.
pub const LONG_DELAY_MS_MIN: u64 = 500;
pub const LONG_DELAY_MS_MAX: u64 = 5_000;
/// Bounds of how long a client keeps retrying before it gives up: two to five of its
/// timeouts (`CLIENT_TIMEOUT_MS` in `world.rs`).
pub const CLIENT_GIVE_UP_MS_MIN: u64 = 800;
pub const CLIENT_GIVE_UP_MS_MAX: u64 = 2_000;
/// Bounds of a pause (`docker pause`): from a few election timeouts to many.
pub const PAUSE_MS_MIN: u64 = 50;
pub const PAUSE_MS_MAX: u64 = 2_000;

/// Fault probabilities and rates of one run.
#[derive(Clone, Debug)]
pub struct FaultPlan {
    /// Probability that a message (or client request/reply) is lost.
    pub drop_probability: f64,
    /// Probability that a message is delivered twice.
    pub duplicate_probability: f64,
    /// One-way network delay is uniform in `[delay_ms_min, delay_ms_max]`; different
    /// delays reorder messages.
    pub delay_ms_min: u64,
    pub delay_ms_max: u64,
    /// Probability that a message takes a long-tail delay in
    /// `[LONG_DELAY_MS_MIN, LONG_DELAY_MS_MAX]` instead (congestion, a retransmission
    /// after a timeout): it arrives after elections have moved the terms on.
    pub long_delay_probability: f64,
    /// Each node's tick interval in milliseconds, within ±[`TICK_SKEW_PERCENT_MAX`] of
    /// [`TICK_MS`] (all [`TICK_MS`] in runs without skew).
    pub tick_ms: Vec<u64>,
    /// Disk write latency when the disk is fast, and when a node's disk is slow.
    pub disk_ms_fast: u64,
    pub disk_ms_slow_max: u64,
    /// Mean time between injected faults.
    pub fault_interval_ms: u64,
    /// Relative weights of the fault kinds (0 disables a kind for this run).
    pub weights: FaultWeights,
    /// A client gives up on an operation at its first retry this long after the call,
    /// records the outcome as unknown and goes on with its next sequence number; `None`:
    /// clients retry until they get an answer.
    pub client_give_up_ms: Option<u64>,
    /// Take a state-machine snapshot (and compact the log) every this many applied
    /// entries; `None` never.
    pub snapshot_every: Option<u64>,
}

/// Relative weights of the fault kinds.
#[derive(Clone, Debug)]
pub struct FaultWeights {
    pub partition_symmetric: u32,
    pub partition_one_way: u32,
    pub heal: u32,
    pub crash: u32,
    pub restart: u32,
    pub slow_disk: u32,
    pub pause: u32,
    pub membership_change: u32,
    pub transfer_leader: u32,
}

/// One injected fault.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FaultKind {
    PartitionSymmetric,
    PartitionOneWay,
    Heal,
    Crash,
    Restart,
    SlowDisk,
    /// A node stops processing for a while; what is sent to it queues up.
    Pause,
    MembershipChange,
    TransferLeader,
}

impl FaultPlan {
    /// Draws a plan. Every kind of fault is enabled in most runs; each is switched off in
    /// some so that runs without it exist too.
    pub fn draw(rng: &mut SplitMix64, nodes: usize) -> Self {
        let mut weight = |base: u32| if rng.chance(0.85) { base } else { 0 };
        let weights = FaultWeights {
            partition_symmetric: weight(3),
            partition_one_way: weight(2),
            heal: 4,
            crash: weight(2),
            restart: 3,
            slow_disk: weight(2),
            pause: weight(2),
            membership_change: weight(2),
            transfer_leader: weight(1),
        };
        let delay_ms_max = rng.range(1, 30);
        let long_delay_probability = if rng.chance(0.7) {
            rng.range(1, 20) as f64 / 1000.0
        } else {
            0.0
        };
        let skew_ms_max = if rng.chance(0.8) {
            TICK_MS * TICK_SKEW_PERCENT_MAX / 100
        } else {
            0
        };
        let tick_ms = (0..nodes)
            .map(|_| rng.range(TICK_MS - skew_ms_max, TICK_MS + skew_ms_max + 1))
            .collect();
        Self {
            drop_probability: if rng.chance(0.8) {
                rng.range(0, 15) as f64 / 100.0
            } else {
                0.0
            },
            duplicate_probability: if rng.chance(0.7) {
                rng.range(0, 8) as f64 / 100.0
            } else {
                0.0
            },
            delay_ms_min: rng.range(0, delay_ms_max / 2 + 1),
            delay_ms_max,
            long_delay_probability,
            tick_ms,
            disk_ms_fast: rng.range(0, 2),
            disk_ms_slow_max: rng.range(5, 60),
            fault_interval_ms: rng.range(80, 800),
            client_give_up_ms: rng
                .chance(0.7)
                .then(|| rng.range(CLIENT_GIVE_UP_MS_MIN, CLIENT_GIVE_UP_MS_MAX + 1)),
            weights,
            snapshot_every: match rng.range(0, 4) {
                0 => None,
                1 => Some(rng.range(5, 20)),
                2 => Some(rng.range(20, 100)),
                _ => Some(rng.range(100, 400)),
            },
        }
    }

    /// Picks the next fault kind by weight; `None` when every weight is zero.
    pub fn pick(&self, rng: &mut SplitMix64) -> Option<FaultKind> {
        let w = &self.weights;
        let table = [
            (w.partition_symmetric, FaultKind::PartitionSymmetric),
            (w.partition_one_way, FaultKind::PartitionOneWay),
            (w.heal, FaultKind::Heal),
            (w.crash, FaultKind::Crash),
            (w.restart, FaultKind::Restart),
            (w.slow_disk, FaultKind::SlowDisk),
            (w.pause, FaultKind::Pause),
            (w.membership_change, FaultKind::MembershipChange),
            (w.transfer_leader, FaultKind::TransferLeader),
        ];
        let total: u64 = table.iter().map(|(w, _)| u64::from(*w)).sum();
        if total == 0 {
            return None;
        }
        let mut roll = rng.range(0, total);
        for (w, kind) in table {
            if roll < u64::from(w) {
                return Some(kind);
            }
            roll -= u64::from(w);
        }
        None
    }
}
