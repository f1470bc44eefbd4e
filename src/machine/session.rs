//! Exactly-once client sessions (DESIGN §7.3, Raft dissertation §6.3).
//!
//! A client retries a command whose reply it did not get (leader change, timeout). The
//! retry is a new log entry, so without help the command would run twice. [`Sessions`]
//! wraps any machine and remembers, per client, the last sequence number applied and its
//! output: a retry of that sequence returns the remembered output without touching the
//! inner machine. A client has at most one command outstanding, so the last one is all
//! that has to be kept.
//!
//! # Bounds and their risk
//!
//! The table is replicated state and must be bounded: at most
//! [`SessionConfig::sessions_max`] clients, and optionally sessions idle for longer than
//! [`SessionConfig::session_ttl_ms`] expire. A client whose session was dropped is unknown
//! afterwards, and an unknown client's command is accepted as new. If that command was in
//! fact a retry of one already applied, it runs a second time: the one case where
//! exactly-once degrades to at-least-once. It needs a client to stay silent while more
//! than `sessions_max` other clients issue commands (or for longer than the TTL) and then
//! retry an old command, which a live client does within a few election timeouts. Size
//! `sessions_max` above the number of concurrent clients and keep the TTL far above the
//! clients' retry horizon, and it does not happen. Refusing unknown clients instead would
//! need an explicit session-registration command, which the API does not have.
//!
//! Memory: at most `sessions_max` cached outputs, so `sessions_max` × the largest output
//! (for [`KvStore`](super::KvStore), a value of `value_bytes_max`).

use std::collections::{BTreeMap, BTreeSet};
use std::num::NonZeroU32;

use serde::{Deserialize, Serialize};

use super::{
    decode_snapshot, encode_snapshot, encodes_exactly, ApplyContext, LeadershipPreference,
    SignatureBuilder, SnapshotError, StateMachine,
};

/// Default most sessions kept: above the 4096 concurrent clients the benchmarks run.
pub const SESSIONS_MAX_DEFAULT: u32 = 16 * 1024;

/// Domain tag of the signature; bump the version when session semantics change.
const SIGNATURE_DOMAIN: &str = "tessera.machine.sessions.v1";
/// Version of the snapshot byte format.
const SNAPSHOT_FORMAT_VERSION: u16 = 1;

/// Identifies a client across retries and leader changes. Chosen by the client (random
/// 64 bits, say); two clients must not share one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ClientId(pub u64);

/// A command tagged with its client and sequence number.
///
/// The client numbers its commands with increasing `seq` and sends the next one only once
/// the previous has a reply; a retry reuses the same `seq`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionCommand<C> {
    /// Who sent it.
    pub client: ClientId,
    /// The client's sequence number for this command.
    pub seq: u64,
    /// The inner machine's command.
    pub command: C,
}

/// What a [`SessionCommand`] did.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum SessionOutput<O> {
    /// A new sequence number: the command was applied to the inner machine.
    Applied(O),
    /// A retry of the last applied sequence number: not applied again; this is the output
    /// of the first application.
    Duplicate(O),
    /// A sequence number below the last applied one: not applied, and its output is no
    /// longer kept. The client has already moved past it.
    Stale {
        /// The client's last applied sequence number.
        last_seq: u64,
    },
}

impl<O> SessionOutput<O> {
    /// The inner output, for `Applied` and `Duplicate` alike.
    #[must_use]
    pub fn output(&self) -> Option<&O> {
        match self {
            Self::Applied(output) | Self::Duplicate(output) => Some(output),
            Self::Stale { .. } => None,
        }
    }

    /// The inner output, for `Applied` and `Duplicate` alike.
    #[must_use]
    pub fn into_output(self) -> Option<O> {
        match self {
            Self::Applied(output) | Self::Duplicate(output) => Some(output),
            Self::Stale { .. } => None,
        }
    }
}

/// Bounds of the session table. Both are part of the signature: replicas that evict
/// differently would answer retries differently.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SessionConfig {
    /// Most clients remembered. When a new client arrives at a full table, the least
    /// recently active client is evicted: the one whose last command has the lowest log
    /// index, ties broken by the lower [`ClientId`].
    pub sessions_max: NonZeroU32,
    /// A session whose client sent nothing for longer than this expires. Measured on the
    /// session clock: the highest [`ApplyContext::timestamp_ms`] applied so far, so expiry
    /// is deterministic and never runs backwards when a new leader's clock is behind.
    /// `None`: sessions leave only by eviction.
    pub session_ttl_ms: Option<u64>,
}

impl Default for SessionConfig {
    fn default() -> Self {
        Self {
            sessions_max: NonZeroU32::new(SESSIONS_MAX_DEFAULT).unwrap_or(NonZeroU32::MIN),
            session_ttl_ms: None,
        }
    }
}

/// What the table remembers about one client.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SessionInfo {
    /// Last sequence number applied.
    pub last_seq: u64,
    /// Log index of the client's latest command (applied, duplicate or stale).
    pub last_index: u64,
    /// Session clock at the client's latest command.
    pub last_seen_ms: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Session<O> {
    last_seq: u64,
    last_index: u64,
    last_seen_ms: u64,
    output: O,
}

/// Exactly-once wrapper around a state machine; itself a [`StateMachine`].
///
/// Commands are [`SessionCommand`]s; queries go straight to the inner machine. The session
/// table is replicated state: it is in the snapshot with the inner machine, and its
/// parameters are in the signature.
///
/// Commands are applied one at a time (the default
/// [`apply_batch`](StateMachine::apply_batch)): whether a command is new depends on the
/// outputs of earlier ones in the same batch, so the inner machine's batching is not used.
#[derive(Clone, Debug, PartialEq)]
pub struct Sessions<M: StateMachine> {
    inner: M,
    config: SessionConfig,
    sessions: BTreeMap<ClientId, Session<M::Output>>,
    /// `(last_index, client)` of every session; the first is the least recently active.
    /// Because indexes rise in apply order and the clock never falls, this is also
    /// oldest-first by `last_seen_ms`, which lets expiry stop at the first live session.
    by_recency: BTreeSet<(u64, ClientId)>,
    /// Highest `ApplyContext::timestamp_ms` applied so far.
    clock_ms: u64,
}

impl<M: StateMachine + Default> Default for Sessions<M> {
    fn default() -> Self {
        Self::new(M::default())
    }
}

impl<M: StateMachine> Sessions<M> {
    /// Wraps `inner` with the default [`SessionConfig`].
    #[must_use]
    pub fn new(inner: M) -> Self {
        Self::with_config(inner, SessionConfig::default())
    }

    /// Wraps `inner` with `config`.
    #[must_use]
    pub fn with_config(inner: M, config: SessionConfig) -> Self {
        Self {
            inner,
            config,
            sessions: BTreeMap::new(),
            by_recency: BTreeSet::new(),
            clock_ms: 0,
        }
    }

    /// The wrapped machine. Read-only: changing it outside the log would break replicas.
    #[must_use]
    pub fn inner(&self) -> &M {
        &self.inner
    }

    /// The table's bounds.
    #[must_use]
    pub fn config(&self) -> SessionConfig {
        self.config
    }

    /// What the table remembers about `client`, if anything.
    #[must_use]
    pub fn session(&self, client: ClientId) -> Option<SessionInfo> {
        self.sessions.get(&client).map(|session| SessionInfo {
            last_seq: session.last_seq,
            last_index: session.last_index,
            last_seen_ms: session.last_seen_ms,
        })
    }

    /// Number of clients remembered.
    #[must_use]
    pub fn session_count(&self) -> usize {
        self.sessions.len()
    }

    /// The session clock: the highest `timestamp_ms` applied so far.
    #[must_use]
    pub fn clock_ms(&self) -> u64 {
        self.clock_ms
    }

    fn remove_session(&mut self, client: ClientId) {
        if let Some(session) = self.sessions.remove(&client) {
            let was_indexed = self.by_recency.remove(&(session.last_index, client));
            assert!(
                was_indexed,
                "session {client:?} missing from the recency index"
            );
        }
    }

    /// Drops sessions idle for longer than the TTL on the session clock.
    fn expire(&mut self) {
        let Some(ttl_ms) = self.config.session_ttl_ms else {
            return;
        };
        // Expired: clock_ms - last_seen_ms > ttl_ms.
        let Some(cutoff_ms) = self.clock_ms.checked_sub(ttl_ms) else {
            return;
        };
        while let Some(&(_, client)) = self.by_recency.first() {
            let last_seen_ms = self
                .sessions
                .get(&client)
                .map(|session| session.last_seen_ms)
                .expect("recency index names a client without a session");
            if last_seen_ms >= cutoff_ms {
                break;
            }
            self.remove_session(client);
        }
    }

    /// Makes room for one more session by evicting the least recently active ones.
    fn make_room(&mut self) {
        let sessions_max = self.config.sessions_max.get() as usize;
        while self.sessions.len() >= sessions_max {
            let Some(&(_, client)) = self.by_recency.first() else {
                unreachable!("a full session table has an empty recency index");
            };
            self.remove_session(client);
        }
    }

    /// Records `client`'s latest command at `ctx.index`, keeping the index in step.
    fn touch(&mut self, client: ClientId, ctx: &ApplyContext) {
        if let Some(session) = self.sessions.get_mut(&client) {
            self.by_recency.remove(&(session.last_index, client));
            session.last_index = ctx.index;
            session.last_seen_ms = self.clock_ms;
            self.by_recency.insert((ctx.index, client));
        }
    }

    /// Asserts the table's invariants (tests and the simulator call it after each step).
    #[cfg(test)]
    pub(crate) fn validate(&self) {
        assert_eq!(self.sessions.len(), self.by_recency.len());
        assert!(self.sessions.len() <= self.config.sessions_max.get() as usize);
        for (client, session) in &self.sessions {
            assert!(self.by_recency.contains(&(session.last_index, *client)));
            assert!(session.last_seen_ms <= self.clock_ms);
        }
        if let Err(reason) = check_recency_order(&self.sessions, &self.by_recency) {
            panic!("{reason}");
        }
    }
}

/// Checks that the recency order (by last index) is also oldest-first by last-seen time,
/// which expiry relies on to stop at the first live session.
fn check_recency_order<O>(
    sessions: &BTreeMap<ClientId, Session<O>>,
    by_recency: &BTreeSet<(u64, ClientId)>,
) -> Result<(), String> {
    let mut previous_seen_ms = 0;
    for (_, client) in by_recency {
        let last_seen_ms = sessions
            .get(client)
            .map_or(previous_seen_ms, |session| session.last_seen_ms);
        if last_seen_ms < previous_seen_ms {
            return Err(format!(
                "{client:?} was seen at {last_seen_ms} ms, before a less recent client \
                 ({previous_seen_ms} ms)"
            ));
        }
        previous_seen_ms = last_seen_ms;
    }
    Ok(())
}

/// Snapshot body as written: borrows the table.
#[derive(Serialize)]
struct SnapshotBodyRef<'a, O> {
    clock_ms: u64,
    sessions: Vec<(ClientId, &'a Session<O>)>,
    inner: &'a [u8],
}

/// The fields of [`SnapshotBodyRef`] before `inner`, encoded on their own.
#[derive(Serialize)]
struct SnapshotPrefixRef<'a, O> {
    clock_ms: u64,
    sessions: Vec<(ClientId, &'a Session<O>)>,
}

/// Snapshot body as read: same layout as [`SnapshotBodyRef`].
#[derive(Deserialize)]
struct SnapshotBody<'a, O> {
    clock_ms: u64,
    sessions: Vec<(ClientId, Session<O>)>,
    #[serde(borrow)]
    inner: &'a [u8],
}

impl<M: StateMachine> StateMachine for Sessions<M> {
    type Command = SessionCommand<M::Command>;
    type Output = SessionOutput<M::Output>;
    type Query = M::Query;
    type QueryResult = M::QueryResult;

    fn signature(&self) -> [u8; 32] {
        SignatureBuilder::new(SIGNATURE_DOMAIN)
            .bytes(&self.inner.signature())
            .u64(u64::from(self.config.sessions_max.get()))
            .option_u64(self.config.session_ttl_ms)
            .finish()
    }

    fn apply(&mut self, command: Self::Command, ctx: &ApplyContext) -> Self::Output {
        let SessionCommand {
            client,
            seq,
            command,
        } = command;
        self.clock_ms = self.clock_ms.max(ctx.timestamp_ms);
        self.expire();

        match self.sessions.get(&client).map(|session| session.last_seq) {
            Some(last_seq) if seq < last_seq => {
                self.touch(client, ctx);
                SessionOutput::Stale { last_seq }
            }
            Some(last_seq) if seq == last_seq => {
                self.touch(client, ctx);
                let output = self
                    .sessions
                    .get(&client)
                    .map(|session| session.output.clone())
                    .expect("session present a moment ago");
                SessionOutput::Duplicate(output)
            }
            known => {
                if known.is_some() {
                    self.remove_session(client);
                } else {
                    // Unknown (new, evicted or expired): accepted as new; see the module
                    // doc for the risk.
                    self.make_room();
                }
                let output = self.inner.apply(command, ctx);
                self.sessions.insert(
                    client,
                    Session {
                        last_seq: seq,
                        last_index: ctx.index,
                        last_seen_ms: self.clock_ms,
                        output: output.clone(),
                    },
                );
                self.by_recency.insert((ctx.index, client));
                SessionOutput::Applied(output)
            }
        }
    }

    fn query(&self, query: &Self::Query) -> Self::QueryResult {
        self.inner.query(query)
    }

    fn leadership_preference(&self) -> LeadershipPreference {
        self.inner.leadership_preference()
    }

    fn snapshot(&self) -> Result<Vec<u8>, SnapshotError> {
        let mut inner = self.inner.snapshot()?;
        // The encoding of `SnapshotBodyRef` (postcard writes a struct as its fields in
        // order, a byte slice as its varint length then its bytes), built by moving the
        // small prefix in front of the inner machine's bytes instead of copying those
        // (possibly very large) bytes into a second buffer.
        let mut prefix = encode_snapshot(
            SNAPSHOT_FORMAT_VERSION,
            self.signature(),
            &SnapshotPrefixRef {
                clock_ms: self.clock_ms,
                sessions: self.sessions.iter().map(|(c, s)| (*c, s)).collect(),
            },
        )?;
        prefix = postcard::to_extend(&inner.len(), prefix).map_err(|e| SnapshotError::Encode {
            reason: e.to_string(),
        })?;
        inner.splice(0..0, prefix);
        Ok(inner)
    }

    fn restore(&mut self, snapshot: &[u8]) -> Result<(), SnapshotError> {
        let body: SnapshotBody<'_, M::Output> =
            decode_snapshot(snapshot, SNAPSHOT_FORMAT_VERSION, &self.signature())?;
        let invalid = |reason: String| SnapshotError::Invalid { reason };
        let sessions_max = self.config.sessions_max.get() as usize;
        if body.sessions.len() > sessions_max {
            return Err(invalid(format!(
                "{} sessions, over the limit of {sessions_max}",
                body.sessions.len()
            )));
        }
        let mut sessions = BTreeMap::new();
        let mut by_recency = BTreeSet::new();
        let mut previous: Option<ClientId> = None;
        for (client, session) in body.sessions {
            // Strict order makes the encoding canonical.
            if previous.is_some_and(|previous| previous >= client) {
                return Err(invalid(
                    "clients are not in strictly increasing order".into(),
                ));
            }
            previous = Some(client);
            if session.last_seen_ms > body.clock_ms {
                return Err(invalid(format!(
                    "{client:?} last seen at {} ms, after the session clock {} ms",
                    session.last_seen_ms, body.clock_ms
                )));
            }
            by_recency.insert((session.last_index, client));
            sessions.insert(client, session);
        }
        check_recency_order(&sessions, &by_recency).map_err(invalid)?;
        // The decoder accepts some non-canonical forms (overlong varints); refuse them so
        // that equal state always means equal snapshot bytes. The inner machine checks its
        // own part.
        let canonical = encodes_exactly(
            SNAPSHOT_FORMAT_VERSION,
            self.signature(),
            &SnapshotBodyRef {
                clock_ms: body.clock_ms,
                sessions: sessions.iter().map(|(c, s)| (*c, s)).collect(),
                inner: body.inner,
            },
            snapshot,
        )?;
        if !canonical {
            return Err(invalid("non-canonical encoding".into()));
        }
        // Everything of ours is checked; the inner restore is the last fallible step and
        // leaves the inner machine unchanged on error, so a failure changes nothing.
        self.inner.restore(body.inner)?;
        self.sessions = sessions;
        self.by_recency = by_recency;
        self.clock_ms = body.clock_ms;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::machine::{
        KvCommand, KvLimits, KvOutput, KvQuery, KvQueryResult, KvStore, ReplicatedKv,
    };

    fn b(s: &str) -> Vec<u8> {
        s.as_bytes().to_vec()
    }

    fn ctx(index: u64, timestamp_ms: u64) -> ApplyContext {
        ApplyContext {
            index,
            term: 1,
            timestamp_ms,
        }
    }

    fn cmd(client: u64, seq: u64, command: KvCommand) -> SessionCommand<KvCommand> {
        SessionCommand {
            client: ClientId(client),
            seq,
            command,
        }
    }

    fn append(v: &str) -> KvCommand {
        KvCommand::Append {
            key: b("k"),
            value: b(v),
        }
    }

    fn get_k() -> KvCommand {
        KvCommand::Get { key: b("k") }
    }

    fn bounded(sessions_max: u32, session_ttl_ms: Option<u64>) -> Sessions<KvStore> {
        Sessions::with_config(
            KvStore::new(),
            SessionConfig {
                sessions_max: NonZeroU32::new(sessions_max).expect("nonzero"),
                session_ttl_ms,
            },
        )
    }

    /// Applies commands at consecutive indexes starting at 1, all at time 0.
    fn run(
        machine: &mut Sessions<KvStore>,
        commands: Vec<SessionCommand<KvCommand>>,
    ) -> Vec<SessionOutput<KvOutput>> {
        let first = machine
            .sessions
            .values()
            .map(|s| s.last_index)
            .max()
            .unwrap_or(0)
            + 1;
        let batch = commands
            .into_iter()
            .zip(first..)
            .map(|(command, index)| (command, ctx(index, 0)))
            .collect();
        let outputs = machine.apply_batch(batch);
        machine.validate();
        outputs
    }

    fn stored(machine: &Sessions<KvStore>) -> Option<Vec<u8>> {
        machine.inner().get(b"k").map(<[u8]>::to_vec)
    }

    #[test]
    fn the_snapshot_is_exactly_the_encoding_of_its_body() {
        let mut machine = bounded(8, Some(60_000));
        run(
            &mut machine,
            (1..=5)
                .map(|c| cmd(c, 1, append(&"v".repeat(c as usize * 40))))
                .collect(),
        );
        let inner = machine.inner().snapshot().expect("inner");
        let reference = encode_snapshot(
            SNAPSHOT_FORMAT_VERSION,
            machine.signature(),
            &SnapshotBodyRef {
                clock_ms: machine.clock_ms,
                sessions: machine.sessions.iter().map(|(c, s)| (*c, s)).collect(),
                inner: &inner,
            },
        )
        .expect("reference encoding");
        let bytes = machine.snapshot().expect("snapshot");
        assert_eq!(bytes, reference);
        let mut restored = bounded(8, Some(60_000));
        restored.restore(&bytes).expect("restores");
        assert_eq!(restored.snapshot().expect("snapshot"), bytes);
    }

    #[test]
    fn a_command_arriving_three_times_is_applied_once() {
        let mut machine = ReplicatedKv::default();
        let outputs = run(
            &mut machine,
            vec![
                cmd(1, 1, append("x")),
                cmd(1, 1, append("x")),
                cmd(1, 1, append("x")),
            ],
        );
        let first = KvOutput::Append { len_bytes: 1 };
        assert_eq!(
            outputs,
            vec![
                SessionOutput::Applied(first.clone()),
                SessionOutput::Duplicate(first.clone()),
                SessionOutput::Duplicate(first),
            ]
        );
        assert_eq!(stored(&machine), Some(b("x")));
    }

    #[test]
    fn a_duplicate_returns_the_first_output_not_the_current_state() {
        let mut machine = ReplicatedKv::default();
        let outputs = run(
            &mut machine,
            vec![
                cmd(1, 1, get_k()),
                cmd(2, 1, append("y")),
                cmd(1, 1, get_k()),
                cmd(1, 2, get_k()),
            ],
        );
        assert_eq!(
            outputs[2],
            SessionOutput::Duplicate(KvOutput::Get { value: None })
        );
        assert_eq!(
            outputs[3],
            SessionOutput::Applied(KvOutput::Get {
                value: Some(b("y"))
            })
        );
    }

    #[test]
    fn a_lower_seq_is_stale_and_not_applied() {
        let mut machine = ReplicatedKv::default();
        let outputs = run(
            &mut machine,
            vec![
                cmd(1, 1, append("a")),
                cmd(1, 2, append("b")),
                cmd(1, 1, append("a")),
            ],
        );
        assert_eq!(outputs[2], SessionOutput::Stale { last_seq: 2 });
        assert_eq!(stored(&machine), Some(b("ab")));
        assert_eq!(machine.session(ClientId(1)).map(|s| s.last_seq), Some(2));
    }

    #[test]
    fn seq_gaps_are_accepted_and_clients_are_independent() {
        let mut machine = ReplicatedKv::default();
        let outputs = run(
            &mut machine,
            vec![
                cmd(1, 1, append("a")),
                cmd(2, 1, append("b")),
                cmd(1, 7, append("c")),
            ],
        );
        assert!(outputs
            .iter()
            .all(|o| matches!(o, SessionOutput::Applied(_))));
        assert_eq!(stored(&machine), Some(b("abc")));
    }

    #[test]
    fn a_full_table_evicts_the_least_recently_active_client() {
        let mut machine = bounded(2, None);
        run(
            &mut machine,
            vec![
                cmd(1, 1, append("1")), // index 1
                cmd(2, 1, append("2")), // index 2
                cmd(1, 1, append("1")), // index 3: a duplicate still counts as activity
                cmd(3, 1, append("3")), // index 4: evicts client 2 (last index 2)
            ],
        );
        assert!(machine.session(ClientId(1)).is_some());
        assert!(machine.session(ClientId(2)).is_none());
        assert!(machine.session(ClientId(3)).is_some());
        assert_eq!(machine.session_count(), 2);
    }

    /// The documented risk: a retry from an evicted client is taken as new and runs again.
    #[test]
    fn a_retry_from_an_evicted_client_is_applied_again() {
        let mut machine = bounded(1, None);
        let outputs = run(
            &mut machine,
            vec![
                cmd(1, 1, append("x")),
                cmd(2, 1, get_k()),
                cmd(1, 1, append("x")),
            ],
        );
        assert_eq!(
            outputs[2],
            SessionOutput::Applied(KvOutput::Append { len_bytes: 2 })
        );
        assert_eq!(stored(&machine), Some(b("xx")));
    }

    #[test]
    fn eviction_ties_on_index_go_to_the_lower_client_id() {
        for order in [[5u64, 9], [9, 5]] {
            let mut machine = bounded(2, None);
            // Both at index 1: a tie only a misbehaving driver produces, still deterministic.
            for client in order {
                machine.apply(cmd(client, 1, get_k()), &ctx(1, 0));
            }
            machine.apply(cmd(7, 1, get_k()), &ctx(2, 0));
            machine.validate();
            assert!(machine.session(ClientId(5)).is_none(), "order {order:?}");
            assert!(machine.session(ClientId(9)).is_some(), "order {order:?}");
        }
    }

    #[test]
    fn sessions_idle_longer_than_the_ttl_expire() {
        let mut machine = bounded(100, Some(1_000));
        machine.apply(cmd(1, 1, append("a")), &ctx(1, 10_000));
        machine.apply(cmd(2, 1, append("b")), &ctx(2, 10_500));
        // 11_001 - 10_000 > 1_000: client 1 expires; 11_001 - 10_500 does not.
        machine.apply(cmd(3, 1, get_k()), &ctx(3, 11_001));
        assert!(machine.session(ClientId(1)).is_none());
        assert!(machine.session(ClientId(2)).is_some());
        // Exactly the TTL idle is still alive.
        machine.apply(cmd(3, 2, get_k()), &ctx(4, 11_500));
        assert!(machine.session(ClientId(2)).is_some());
        machine.apply(cmd(3, 3, get_k()), &ctx(5, 11_501));
        assert!(machine.session(ClientId(2)).is_none());
        machine.validate();
    }

    #[test]
    fn without_a_ttl_sessions_never_expire() {
        let mut machine = bounded(100, None);
        machine.apply(cmd(1, 1, append("a")), &ctx(1, 0));
        machine.apply(cmd(2, 1, append("b")), &ctx(2, u64::MAX));
        assert!(machine.session(ClientId(1)).is_some());
    }

    #[test]
    fn the_session_clock_never_runs_backwards() {
        let mut machine = bounded(100, Some(1_000));
        machine.apply(cmd(1, 1, append("a")), &ctx(1, 5_000));
        // A new leader with a slow clock: the session clock stays at 5_000.
        machine.apply(cmd(2, 1, append("b")), &ctx(2, 100));
        assert_eq!(machine.clock_ms(), 5_000);
        assert_eq!(
            machine.session(ClientId(2)).map(|s| s.last_seen_ms),
            Some(5_000)
        );
        machine.apply(cmd(3, 1, get_k()), &ctx(3, 6_001));
        assert!(machine.session(ClientId(1)).is_none());
        assert!(machine.session(ClientId(2)).is_none());
        machine.validate();
    }

    #[test]
    fn queries_go_to_the_inner_machine() {
        let mut machine = ReplicatedKv::default();
        run(&mut machine, vec![cmd(1, 1, append("v"))]);
        assert_eq!(
            machine.query(&KvQuery::Get { key: b("k") }),
            KvQueryResult::Get {
                value: Some(b("v"))
            }
        );
        assert_eq!(
            machine.leadership_preference(),
            LeadershipPreference::Normal
        );
    }

    #[test]
    fn signature_covers_the_inner_signature_and_the_session_bounds() {
        let base = bounded(10, None).signature();
        assert_eq!(base, bounded(10, None).signature());
        assert_ne!(base, bounded(11, None).signature());
        assert_ne!(base, bounded(10, Some(0)).signature());
        assert_ne!(base, bounded(10, Some(1)).signature());
        assert_ne!(base, KvStore::new().signature());
        let other_inner = Sessions::with_config(
            KvStore::with_limits(KvLimits {
                key_bytes_max: 1,
                ..KvLimits::default()
            }),
            bounded(10, None).config(),
        );
        assert_ne!(base, other_inner.signature());
    }

    #[test]
    fn the_session_table_survives_snapshot_and_restore() {
        let mut machine = bounded(4, Some(60_000));
        run(
            &mut machine,
            vec![cmd(1, 1, append("x")), cmd(2, 3, get_k())],
        );
        let bytes = machine.snapshot().expect("snapshot");
        let mut restored = bounded(4, Some(60_000));
        restored.restore(&bytes).expect("restore");
        assert_eq!(restored, machine);
        restored.validate();
        // The retry after restore is still recognised.
        assert_eq!(
            restored.apply(cmd(1, 1, append("x")), &ctx(10, 0)),
            SessionOutput::Duplicate(KvOutput::Append { len_bytes: 1 })
        );
        assert_eq!(stored(&restored), Some(b("x")));
    }

    #[test]
    fn restore_replaces_all_previous_state() {
        let empty = ReplicatedKv::default();
        let bytes = empty.snapshot().expect("snapshot");
        let mut machine = ReplicatedKv::default();
        run(&mut machine, vec![cmd(1, 1, append("x"))]);
        machine.restore(&bytes).expect("restore");
        assert_eq!(machine, empty);
    }

    #[test]
    fn a_failed_restore_changes_nothing() {
        let mut machine = ReplicatedKv::default();
        run(&mut machine, vec![cmd(1, 1, append("x"))]);
        let before = machine.clone();
        let good = machine.snapshot().expect("snapshot");
        for len in 0..good.len() {
            assert!(
                machine.restore(&good[..len]).is_err(),
                "prefix of {len} bytes"
            );
        }
        assert!(machine.restore(b"definitely not a snapshot").is_err());
        assert_eq!(machine, before);
    }

    fn forged(
        machine: &Sessions<KvStore>,
        clock_ms: u64,
        sessions: Vec<(ClientId, Session<KvOutput>)>,
        inner: &[u8],
    ) -> Vec<u8> {
        let body = SnapshotBodyRef {
            clock_ms,
            sessions: sessions.iter().map(|(c, s)| (*c, s)).collect(),
            inner,
        };
        encode_snapshot(SNAPSHOT_FORMAT_VERSION, machine.signature(), &body).expect("encode")
    }

    fn session_at(last_index: u64, last_seen_ms: u64) -> Session<KvOutput> {
        Session {
            last_seq: 1,
            last_index,
            last_seen_ms,
            output: KvOutput::Put,
        }
    }

    #[test]
    fn restore_checks_the_table_and_the_inner_snapshot() {
        let mut machine = bounded(2, None);
        let inner = KvStore::new().snapshot().expect("snapshot");
        let ok = forged(
            &machine,
            5,
            vec![
                (ClientId(1), session_at(1, 5)),
                (ClientId(2), session_at(2, 5)),
            ],
            &inner,
        );
        assert_eq!(machine.restore(&ok), Ok(()));
        let before = machine.clone();

        let too_many = forged(
            &machine,
            5,
            (1..=3).map(|c| (ClientId(c), session_at(c, 5))).collect(),
            &inner,
        );
        let unordered = forged(
            &machine,
            5,
            vec![
                (ClientId(2), session_at(1, 5)),
                (ClientId(1), session_at(2, 5)),
            ],
            &inner,
        );
        let from_the_future = forged(&machine, 5, vec![(ClientId(1), session_at(1, 6))], &inner);
        for bytes in [too_many, unordered, from_the_future] {
            assert!(matches!(
                machine.restore(&bytes),
                Err(SnapshotError::Invalid { .. })
            ));
        }
        let bad_inner = forged(&machine, 5, vec![], b"garbage");
        assert!(machine.restore(&bad_inner).is_err());
        assert_eq!(machine, before);
    }

    #[test]
    fn restore_refuses_a_snapshot_from_other_bounds() {
        let bytes = bounded(2, None).snapshot().expect("snapshot");
        assert!(matches!(
            bounded(3, None).restore(&bytes),
            Err(SnapshotError::SignatureMismatch { .. })
        ));
    }
}
