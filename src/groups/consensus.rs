//! [`ConsensusConfig`]: how a group runs consensus, in time rather than ticks, checked
//! once when it is built, so that a group never starts from values that cannot work.
//!
//! The consensus core counts ticks ([`RaftConfig`]); the worker decides how long a tick
//! is ([`WorkerConfig::tick`]). Applications think in durations: this module turns one
//! into the other and refuses durations that are not whole ticks, rather than rounding
//! them into timers nobody asked for. Everything here but the node-local fields
//! (`forward_timeout`, `removal_timeout`, the snapshot thresholds) is part of the group
//! id (architecture.md §3): members must agree on it.
//!
//! Serde form (a TOML table, say): `tick_ms`, `heartbeat_interval_ms`,
//! `election_timeout_ms`, `forward_timeout_ms`, `removal_timeout_ms`,
//! `snapshot_every_entries`, `snapshot_every_bytes` and `max_voters`, each optional
//! (the default otherwise); 0 turns off the removal timeout and either snapshot threshold.
//! Unknown fields are refused.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::worker::WorkerConfig;
use crate::raft::{ConfigError as CoreConfigError, RaftConfig};

/// Why a [`ConsensusConfigBuilder`] does not build.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConsensusConfigError {
    /// The tick is shorter than 1 ms or longer than 60 s.
    #[error("tick must be between 1 ms and 60 s, got {0:?}")]
    Tick(Duration),
    /// A timer is not a whole number of ticks (it is not rounded).
    #[error("{field} ({value:?}) must be a whole number of ticks of {tick:?}")]
    NotWholeTicks {
        /// The builder setting, as named in the serde form without its unit.
        field: &'static str,
        /// Its value.
        value: Duration,
        /// The tick it must be a multiple of.
        tick: Duration,
    },
    /// A duration or threshold that must be positive is zero (use `None` for "never").
    #[error("{0} must not be zero")]
    Zero(&'static str),
    /// Followers would stand for election between two heartbeats of a healthy leader.
    #[error(
        "election_timeout ({election:?}) must be longer than heartbeat_interval ({heartbeat:?})"
    )]
    ElectionNotAboveHeartbeat {
        /// The election timeout asked for.
        election: Duration,
        /// The heartbeat interval asked for.
        heartbeat: Duration,
    },
    /// The core refuses the values once in ticks (a limit of zero, say).
    #[error("consensus core: {0}")]
    Core(#[from] CoreConfigError),
}

/// A group's consensus parameters, valid by construction: build one with
/// [`ConsensusConfig::builder`] (or deserialize one: the same checks run), or take the
/// [`Default`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "ConsensusConfigBuilder", into = "ConsensusConfigBuilder")]
pub struct ConsensusConfig {
    settings: ConsensusConfigBuilder,
    raft: RaftConfig,
    worker: WorkerConfig,
}

impl Default for ConsensusConfig {
    fn default() -> Self {
        // The builder's defaults are the core's and the worker's own, which are valid.
        let settings = ConsensusConfigBuilder::default();
        Self {
            raft: RaftConfig::default(),
            worker: WorkerConfig::default(),
            settings,
        }
    }
}

impl ConsensusConfig {
    /// A builder starting from the defaults.
    #[must_use]
    pub fn builder() -> ConsensusConfigBuilder {
        ConsensusConfigBuilder::default()
    }

    /// The values it was built from, to change some and build again.
    #[must_use]
    pub fn to_builder(&self) -> ConsensusConfigBuilder {
        self.settings.clone()
    }

    /// The resolution of every timer.
    #[must_use]
    pub fn tick(&self) -> Duration {
        self.settings.tick
    }

    /// How often a leader sends heartbeats.
    #[must_use]
    pub fn heartbeat_interval(&self) -> Duration {
        self.settings.heartbeat_interval
    }

    /// The shortest election timeout (each follower draws its own in `[t, 2t)`).
    #[must_use]
    pub fn election_timeout(&self) -> Duration {
        self.settings.election_timeout
    }

    /// The core's parameters, in ticks.
    pub(crate) fn raft(&self) -> &RaftConfig {
        &self.raft
    }

    /// The worker's parameters.
    pub(crate) fn worker(&self) -> &WorkerConfig {
        &self.worker
    }
}

impl TryFrom<ConsensusConfigBuilder> for ConsensusConfig {
    type Error = ConsensusConfigError;

    fn try_from(builder: ConsensusConfigBuilder) -> Result<Self, Self::Error> {
        builder.build()
    }
}

impl From<ConsensusConfig> for ConsensusConfigBuilder {
    fn from(config: ConsensusConfig) -> Self {
        config.settings
    }
}

/// Builds a [`ConsensusConfig`]: `ConsensusConfig::builder().heartbeat_interval(d)
/// .election_timeout(e).build()?`. Starts from the defaults (50 ms ticks, heartbeats every
/// 100 ms, elections after 500–1000 ms of silence).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ConsensusConfigBuilder {
    #[serde(rename = "tick_ms", with = "millis")]
    tick: Duration,
    #[serde(rename = "heartbeat_interval_ms", with = "millis")]
    heartbeat_interval: Duration,
    #[serde(rename = "election_timeout_ms", with = "millis")]
    election_timeout: Duration,
    #[serde(rename = "forward_timeout_ms", with = "millis")]
    forward_timeout: Duration,
    #[serde(rename = "removal_timeout_ms", with = "millis_or_never")]
    removal_timeout: Option<Duration>,
    #[serde(with = "count_or_never")]
    snapshot_every_entries: Option<u64>,
    #[serde(with = "count_or_never")]
    snapshot_every_bytes: Option<u64>,
    max_voters: usize,
}

impl Default for ConsensusConfigBuilder {
    fn default() -> Self {
        let (raft, worker) = (RaftConfig::default(), WorkerConfig::default());
        Self {
            tick: worker.tick,
            heartbeat_interval: worker.tick * raft.heartbeat_ticks as u32,
            election_timeout: worker.tick * raft.election_ticks as u32,
            forward_timeout: worker.forward_timeout,
            removal_timeout: worker.removal_timeout,
            snapshot_every_entries: worker.snapshot_every,
            snapshot_every_bytes: worker.snapshot_bytes,
            max_voters: raft.max_voters,
        }
    }
}

impl ConsensusConfigBuilder {
    /// The resolution of every timer (part of the group id). Default 50 ms.
    #[must_use]
    pub fn tick(mut self, tick: Duration) -> Self {
        self.tick = tick;
        self
    }

    /// How often a leader sends heartbeats: a whole number of ticks, below the election
    /// timeout (part of the group id). Default 100 ms.
    #[must_use]
    pub fn heartbeat_interval(mut self, interval: Duration) -> Self {
        self.heartbeat_interval = interval;
        self
    }

    /// How long a follower waits without hearing from a leader before it stands, at least
    /// (a random time up to twice as long): a whole number of ticks (part of the group
    /// id). Default 500 ms.
    #[must_use]
    pub fn election_timeout(mut self, timeout: Duration) -> Self {
        self.election_timeout = timeout;
        self
    }

    /// A request forwarded to the leader without an answer after this long is reported
    /// as of unknown outcome. Default 2 s.
    #[must_use]
    pub fn forward_timeout(mut self, timeout: Duration) -> Self {
        self.forward_timeout = timeout;
        self
    }

    /// As leader, remove a member that has had no bond this long (`None`: never).
    /// Default 300 s.
    #[must_use]
    pub fn removal_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.removal_timeout = timeout;
        self
    }

    /// Snapshot and compact the log every this many applied entries (`None`: never).
    /// Default 10,000.
    #[must_use]
    pub fn snapshot_every_entries(mut self, entries: Option<u64>) -> Self {
        self.snapshot_every_entries = entries;
        self
    }

    /// Snapshot and compact once the commands applied since the last snapshot add up to
    /// this many bytes (`None`: never). Default 64 MiB.
    #[must_use]
    pub fn snapshot_every_bytes(mut self, bytes: Option<u64>) -> Self {
        self.snapshot_every_bytes = bytes;
        self
    }

    /// The leader promotes caught-up learners while the group has fewer voters (part of
    /// the group id). Default 5.
    #[must_use]
    pub fn max_voters(mut self, voters: usize) -> Self {
        self.max_voters = voters;
        self
    }

    /// Checks the values and converts them to ticks.
    pub fn build(self) -> Result<ConsensusConfig, ConsensusConfigError> {
        let tick = self.tick;
        if tick < Duration::from_millis(1) || tick > Duration::from_secs(60) {
            return Err(ConsensusConfigError::Tick(tick));
        }
        let ticks = |field: &'static str, value: Duration| {
            if value.as_nanos() % tick.as_nanos() != 0 {
                return Err(ConsensusConfigError::NotWholeTicks { field, value, tick });
            }
            u64::try_from(value.as_nanos() / tick.as_nanos())
                .map_err(|_| ConsensusConfigError::NotWholeTicks { field, value, tick })
        };
        let heartbeat_ticks = ticks("heartbeat_interval", self.heartbeat_interval)?;
        let election_ticks = ticks("election_timeout", self.election_timeout)?;
        if heartbeat_ticks == 0 {
            return Err(ConsensusConfigError::Zero("heartbeat_interval"));
        }
        if election_ticks <= heartbeat_ticks {
            return Err(ConsensusConfigError::ElectionNotAboveHeartbeat {
                election: self.election_timeout,
                heartbeat: self.heartbeat_interval,
            });
        }
        if self.forward_timeout.is_zero() {
            return Err(ConsensusConfigError::Zero("forward_timeout"));
        }
        for (field, zero) in [
            (
                "removal_timeout",
                self.removal_timeout.is_some_and(|t| t.is_zero()),
            ),
            (
                "snapshot_every_entries",
                self.snapshot_every_entries == Some(0),
            ),
            ("snapshot_every_bytes", self.snapshot_every_bytes == Some(0)),
        ] {
            if zero {
                return Err(ConsensusConfigError::Zero(field));
            }
        }
        let raft = RaftConfig {
            election_ticks,
            heartbeat_ticks,
            max_voters: self.max_voters,
            // A test-only build asked for the unsafe rule (see Cargo.toml).
            #[cfg(feature = "dangerous-reference-quorum")]
            dangerous_reference_quorum: true,
            ..RaftConfig::default()
        };
        raft.validate()?;
        let worker = WorkerConfig {
            tick,
            forward_timeout: self.forward_timeout,
            snapshot_every: self.snapshot_every_entries,
            snapshot_bytes: self.snapshot_every_bytes,
            removal_timeout: self.removal_timeout,
            ..WorkerConfig::default()
        };
        Ok(ConsensusConfig {
            settings: self,
            raft,
            worker,
        })
    }
}

/// A duration as whole milliseconds.
mod millis {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        u64::deserialize(d).map(Duration::from_millis)
    }
}

/// An optional duration as whole milliseconds, 0 for `None` (TOML has no null).
mod millis_or_never {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(d.map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)))
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<Duration>, D::Error> {
        u64::deserialize(d).map(|ms| (ms > 0).then(|| Duration::from_millis(ms)))
    }
}

/// An optional count, 0 for `None`.
mod count_or_never {
    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(n: &Option<u64>, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(n.unwrap_or(0))
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
        u64::deserialize(d).map(|n| (n > 0).then_some(n))
    }
}

#[cfg(test)]
mod tests;
