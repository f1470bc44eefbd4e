//! What can go wrong in one simulated run, drawn from its seed (TigerBeetle's VOPR idea:
//! options are randomised per run, so a few hundred seeds cover many mixes).
use crate::raft::SplitMix64;

/// Nominal interval between a node's ticks; with skew each node's differs by up to
/// [`TICK_SKEW_PERCENT_MAX`].
pub(crate) const TICK_MS: u64 = 10;
/// Most a node's tick interval differs from [`TICK_MS`], in percent: clocks of real
/// machines run at slightly different rates, so election timeouts are not in lockstep.
pub(crate) const TICK_SKEW_PERCENT_MAX: u64 = 20;
/// Bounds of a long-tail message delay: long enough that terms move on meanwhile.
pub(crate) const LONG_DELAY_MS_MIN: u64 = 500;
pub(crate) const LONG_DELAY_MS_MAX: u64 = 5_000;
/// How long a client waits for an answer before it retries.
pub(crate) const CLIENT_TIMEOUT_MS: u64 = 400;
/// Bounds of how long a client keeps retrying before it gives up: two to five of its
/// timeouts.
pub(crate) const CLIENT_GIVE_UP_MS_MIN: u64 = 800;
pub(crate) const CLIENT_GIVE_UP_MS_MAX: u64 = 2_000;
/// Probability that a client that finished an operation leaves and a new client (a new
/// id, a new session) takes its place, when churn is on and the spacing allows it.
pub(crate) const CLIENT_RETIRE_PROBABILITY: f64 = 0.3;
/// Bounds of the margin of a session TTL over the longest a retry can still be in flight
/// ([`FaultPlan::retry_horizon_ms`]): it also covers the recovery after healing, when
/// clients retry without giving up.
pub(crate) const SESSION_TTL_MARGIN_MS_MIN: u64 = 500;
pub(crate) const SESSION_TTL_MARGIN_MS_MAX: u64 = 2_000;
/// Bounds of a pause (`docker pause`): from a few election timeouts to many.
pub(crate) const PAUSE_MS_MIN: u64 = 50;
pub(crate) const PAUSE_MS_MAX: u64 = 2_000;
/// How far a node's wall clock jumps, either way.
pub(crate) const CLOCK_JUMP_MS_MIN: u64 = 60_000;
pub(crate) const CLOCK_JUMP_MS_MAX: u64 = 10 * 3_600_000;

/// Fault probabilities and rates of one run.
#[derive(Clone, Debug)]
pub(crate) struct FaultPlan {
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
    /// Clients sometimes leave and are replaced by new ones, so that more clients than
    /// the session table holds pass through a run (only with `client_give_up_ms`).
    pub client_churn: bool,
    /// Session table holding one session more than there are concurrent clients, so
    /// that churn evicts sessions; `false`: the default `sessions_max`.
    pub small_session_table: bool,
    /// Session TTL on the session clock; only with `client_give_up_ms`, and longer than
    /// [`FaultPlan::retry_horizon_ms`].
    pub session_ttl_ms: Option<u64>,
    /// Take a state-machine snapshot (and compact the log) every this many applied
    /// entries; `None` never.
    pub snapshot_every: Option<u64>,
}

/// Relative weights of the fault kinds.
#[derive(Clone, Debug)]
pub(crate) struct FaultWeights {
    pub partition_symmetric: u32,
    pub partition_one_way: u32,
    pub heal: u32,
    pub crash: u32,
    pub restart: u32,
    pub slow_disk: u32,
    pub pause: u32,
    pub membership_change: u32,
    pub transfer_leader: u32,
    pub clock_jump: u32,
    pub fresh_identity: u32,
    pub graceful_stop: u32,
}

/// One injected fault.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum FaultKind {
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
    /// A node's wall clock jumps hours ahead or back (the host owns the TD's clock).
    ClockJump,
    /// A member's machine reboots as a new identity, its disk wiped.
    FreshIdentity,
    /// A member is shut down gracefully (a leader hands leadership over first) and
    /// restarts from its disk later.
    GracefulStop,
}

impl FaultPlan {
    /// Draws a plan. Every kind of fault is enabled in most runs; each is switched off in
    /// some so that runs without it exist too.
    pub(crate) fn draw(rng: &mut SplitMix64, nodes: usize) -> Self {
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
            clock_jump: weight(1),
            fresh_identity: weight(1),
            graceful_stop: weight(2),
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
        let client_give_up_ms = rng
            .chance(0.7)
            .then(|| rng.range(CLIENT_GIVE_UP_MS_MIN, CLIENT_GIVE_UP_MS_MAX + 1));
        let client_churn = client_give_up_ms.is_some() && rng.chance(0.8);
        let small_session_table = client_churn && rng.chance(0.8);
        let ttl_margin_ms = rng
            .chance(0.6)
            .then(|| rng.range(SESSION_TTL_MARGIN_MS_MIN, SESSION_TTL_MARGIN_MS_MAX + 1));
        let mut plan = Self {
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
            client_give_up_ms,
            client_churn,
            small_session_table,
            session_ttl_ms: None,
            weights,
            snapshot_every: match rng.range(0, 4) {
                0 => None,
                1 => Some(rng.range(5, 20)),
                2 => Some(rng.range(20, 100)),
                _ => Some(rng.range(100, 400)),
            },
        };
        plan.session_ttl_ms = ttl_margin_ms
            .zip(plan.retry_horizon_ms())
            .map(|(margin_ms, horizon_ms)| horizon_ms + margin_ms);
        plan
    }

    /// Longest a message can take from its sender to the node that handles it: the
    /// longest delay, plus the longest pause of the receiver (it arrives at once into
    /// the backlog and waits there).
    pub(crate) fn message_age_ms_max(&self) -> u64 {
        let delay_ms = if self.long_delay_probability > 0.0 {
            LONG_DELAY_MS_MAX.max(self.delay_ms_max)
        } else {
            self.delay_ms_max
        };
        let pause_ms = if self.weights.pause > 0 {
            PAUSE_MS_MAX
        } else {
            0
        };
        delay_ms + pause_ms
    }

    /// Longest time from the call of an operation to the last moment a copy of its
    /// command can still be proposed: clients send the last retry before they give up,
    /// and that copy arrives within [`FaultPlan::message_age_ms_max`]; `None` when clients
    /// never give up. One client timeout more: an operation that passed its give-up time
    /// without reaching a retry point when the faults stop is retried to the end instead. A session expiring within this horizon after its client's latest
    /// command could let a retry apply twice (session.rs, "Bounds and their risk").
    pub(crate) fn retry_horizon_ms(&self) -> Option<u64> {
        self.client_give_up_ms
            .map(|give_up_ms| give_up_ms + CLIENT_TIMEOUT_MS + self.message_age_ms_max())
    }

    /// Least time between two client departures, `None` without churn.
    ///
    /// Why: with `sessions_max` one above the number of concurrent clients, a client's
    /// session is evicted only after two clients have left since its latest command
    /// (the other `sessions_max - 1` sessions more recent than its own, at most
    /// `clients - 2` of them live clients other than it and the newcomer). Every command
    /// applied between a command's first copy and its last one was proposed within the
    /// retry horizon, by a client that sent it at most one message age earlier. Spacing
    /// departures by more than the horizon plus one message age therefore means no
    /// session is evicted while a copy of its client's latest command can still arrive,
    /// so a command never applies twice and the checker's exactly-once expectation holds.
    pub(crate) fn client_retire_spacing_ms(&self) -> Option<u64> {
        let horizon_ms = self.retry_horizon_ms()?;
        self.client_churn
            .then(|| horizon_ms + self.message_age_ms_max() + 1)
    }

    /// Picks the next fault kind by weight; `None` when every weight is zero.
    pub(crate) fn pick(&self, rng: &mut SplitMix64) -> Option<FaultKind> {
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
            (w.clock_jump, FaultKind::ClockJump),
            (w.fresh_identity, FaultKind::FreshIdentity),
            (w.graceful_stop, FaultKind::GracefulStop),
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
