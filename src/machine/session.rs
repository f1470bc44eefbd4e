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
//!
//! # Snapshots
//!
//! A snapshot is the session table followed by the inner machine's own snapshot, which is
//! streamed through ([`StateMachine::snapshot_to`], [`StateMachine::restore_from`]): only
//! the table is held in memory, so `Sessions<M>` streams as well as `M` does. The table's
//! encoding may take at most `sessions_max` × 1 MiB (plus 20 bytes), checked before it is
//! read. A larger table (cached outputs averaging over 1 MiB per allowed session) fails to
//! snapshot with [`SnapshotError::Encode`] rather than be written into a snapshot that no
//! replica would restore.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufReader, Read, Write};
use std::num::NonZeroU32;

use serde::{Deserialize, Serialize};

use super::stream::{
    encodes_exactly, read_bytes, read_header, read_varint, write_bytes, write_header,
};
use super::{ApplyContext, LeadershipPreference, SignatureBuilder, SnapshotError, StateMachine};

/// The signature of a session table with `config` around a machine whose signature is
/// `inner`: what a member's group id covers, since every member runs its machine inside
/// one.
pub(crate) fn signature_of(inner: &[u8; 32], config: &SessionConfig) -> [u8; 32] {
    SignatureBuilder::new(SIGNATURE_DOMAIN)
        .bytes(inner)
        .u64(u64::from(config.sessions_max.get()))
        .option_u64(config.session_ttl_ms)
        .finish()
}

/// Default most sessions kept: above the 4096 concurrent clients the benchmarks run.
pub const SESSIONS_MAX_DEFAULT: u32 = 16 * 1024;

/// Domain tag of the signature; bump the version when session semantics or the snapshot
/// format change (v2: snapshot format 2), so that members that could not restore each
/// other's snapshots derive different group ids and never bond.
const SIGNATURE_DOMAIN: &str = "tessera.machine.sessions.v2";
/// Version of the snapshot byte format. 1 embedded the inner snapshot as a length-prefixed
/// byte string; 2 makes it the tail of the stream (see `snapshot_to` below).
const SNAPSHOT_FORMAT_VERSION: u16 = 2;

/// Most bytes one session may take in a snapshot, on average over `sessions_max`: its four
/// integers and its cached output. 16 times a [`KvStore`](super::KvStore) output holding a
/// value of the default `value_bytes_max`.
const SESSION_SNAPSHOT_BYTES_MAX: u64 = 1024 * 1024;

/// Most bytes of the table's encoding besides its sessions: the clock and the session
/// count, 10-byte varints at most.
const TABLE_SNAPSHOT_FIXED_BYTES_MAX: u64 = 20;

/// Buffer size for reading snapshots: an unbuffered file sees few system calls.
const READ_BUFFER_BYTES: usize = 64 * 1024;

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

/// The session table as a snapshot writes it: the clock, then the sessions in client
/// order, borrowed.
#[derive(Serialize)]
struct TableRef<'a, O> {
    clock_ms: u64,
    sessions: Vec<(ClientId, &'a Session<O>)>,
}

/// The session table as a snapshot reads it: same layout as [`TableRef`].
#[derive(Deserialize)]
struct Table<O> {
    clock_ms: u64,
    sessions: Vec<(ClientId, Session<O>)>,
}

/// A restored session table, checked and ready to replace the current one.
struct RestoredTable<O> {
    clock_ms: u64,
    sessions: BTreeMap<ClientId, Session<O>>,
    by_recency: BTreeSet<(u64, ClientId)>,
}

impl<M: StateMachine> Sessions<M> {
    /// Most bytes the encoded session table may take in a snapshot, checked when writing
    /// and before reading so that a forged or corrupt length cannot make a restore read
    /// the inner machine's (possibly very large) snapshot into memory as the table.
    fn table_bytes_max(&self) -> u64 {
        u64::from(self.config.sessions_max.get())
            .saturating_mul(SESSION_SNAPSHOT_BYTES_MAX)
            .saturating_add(TABLE_SNAPSHOT_FIXED_BYTES_MAX)
    }

    /// The encoding of the session table.
    fn encode_table(&self) -> Result<Vec<u8>, SnapshotError> {
        let table = TableRef {
            clock_ms: self.clock_ms,
            sessions: self.sessions.iter().map(|(c, s)| (*c, s)).collect(),
        };
        let bytes = postcard::to_stdvec(&table).map_err(|e| SnapshotError::Encode {
            reason: e.to_string(),
        })?;
        // usize → u64 is lossless on every target Rust supports.
        if bytes.len() as u64 > self.table_bytes_max() {
            return Err(SnapshotError::Encode {
                reason: format!(
                    "the session table takes {} bytes, over the limit of {} for {} sessions",
                    bytes.len(),
                    self.table_bytes_max(),
                    self.config.sessions_max
                ),
            });
        }
        Ok(bytes)
    }

    /// Decodes the session table and checks every invariant of it, without changing
    /// `self`.
    fn decode_table(&self, bytes: &[u8]) -> Result<RestoredTable<M::Output>, SnapshotError> {
        let (table, rest) = postcard::take_from_bytes::<Table<M::Output>>(bytes).map_err(|e| {
            SnapshotError::Decode {
                reason: e.to_string(),
            }
        })?;
        if !rest.is_empty() {
            return Err(SnapshotError::Decode {
                reason: format!("{} trailing bytes after the session table", rest.len()),
            });
        }
        let invalid = |reason: String| SnapshotError::Invalid { reason };
        let sessions_max = self.config.sessions_max.get() as usize;
        if table.sessions.len() > sessions_max {
            return Err(invalid(format!(
                "{} sessions, over the limit of {sessions_max}",
                table.sessions.len()
            )));
        }
        let mut sessions = BTreeMap::new();
        let mut by_recency = BTreeSet::new();
        let mut previous: Option<ClientId> = None;
        for (client, session) in table.sessions {
            // Strict order makes the encoding canonical.
            if previous.is_some_and(|previous| previous >= client) {
                return Err(invalid(
                    "clients are not in strictly increasing order".into(),
                ));
            }
            previous = Some(client);
            if session.last_seen_ms > table.clock_ms {
                return Err(invalid(format!(
                    "{client:?} last seen at {} ms, after the session clock {} ms",
                    session.last_seen_ms, table.clock_ms
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
            &TableRef {
                clock_ms: table.clock_ms,
                sessions: sessions.iter().map(|(c, s)| (*c, s)).collect(),
            },
            bytes,
        )?;
        if !canonical {
            return Err(invalid("non-canonical encoding".into()));
        }
        Ok(RestoredTable {
            clock_ms: table.clock_ms,
            sessions,
            by_recency,
        })
    }
}

impl<M: StateMachine> StateMachine for Sessions<M> {
    type Command = SessionCommand<M::Command>;
    type Output = SessionOutput<M::Output>;
    type Query = M::Query;
    type QueryResult = M::QueryResult;

    fn signature(&self) -> [u8; 32] {
        signature_of(&self.inner.signature(), &self.config)
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
        let mut out = Vec::new();
        self.snapshot_to(&mut out)?;
        Ok(out)
    }

    fn restore(&mut self, snapshot: &[u8]) -> Result<(), SnapshotError> {
        self.restore_from(&mut &snapshot[..])
    }

    /// Writes `header ‖ varint(table length) ‖ table ‖ inner snapshot`: the header as every
    /// machine of this module writes it, the postcard encoding of the session table (the
    /// clock, then the sessions in client order) as a byte string, then the inner
    /// machine's [`snapshot_to`](StateMachine::snapshot_to) to the end.
    ///
    /// Only the table, bounded by `sessions_max`, is encoded in memory; the inner state
    /// streams as the inner machine writes it.
    fn snapshot_to(&self, out: &mut dyn Write) -> Result<(), SnapshotError> {
        let table = self.encode_table()?;
        write_header(out, SNAPSHOT_FORMAT_VERSION, &self.signature())?;
        write_bytes(out, &table)?;
        self.inner.snapshot_to(out)
    }

    /// Reads and checks the header and the session table, then hands the rest of the
    /// input to the inner machine's [`restore_from`](StateMachine::restore_from), which
    /// must use all of it. The table is committed only once the inner restore succeeded,
    /// so on any error nothing changes.
    fn restore_from(&mut self, input: &mut dyn Read) -> Result<(), SnapshotError> {
        let mut input = BufReader::with_capacity(READ_BUFFER_BYTES, input);
        read_header(&mut input, SNAPSHOT_FORMAT_VERSION, &self.signature())?;
        let table_bytes = read_varint(&mut input, "the session table length")?;
        if table_bytes > self.table_bytes_max() {
            return Err(SnapshotError::Invalid {
                reason: format!(
                    "a session table of {table_bytes} bytes, over the limit of {} for {} \
                     sessions",
                    self.table_bytes_max(),
                    self.config.sessions_max
                ),
            });
        }
        let table = read_bytes(&mut input, table_bytes, "the session table")?;
        let restored = self.decode_table(&table)?;
        drop(table);
        // Everything of ours is checked; the inner restore is the last fallible step and
        // leaves the inner machine unchanged on error, so a failure changes nothing. It
        // reads through our buffer, which may already hold the start of its snapshot.
        self.inner.restore_from(&mut input)?;
        self.sessions = restored.sessions;
        self.by_recency = restored.by_recency;
        self.clock_ms = restored.clock_ms;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::machine::stream::encode_snapshot;
    use crate::machine::stream::testing::{assert_failing_reader_changes_nothing, Sink, Trickle};
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

    /// The format, built independently of the streaming writer: header, the postcard
    /// encoding of the table as a byte string, then the inner snapshot to the end.
    fn reference_snapshot(machine: &Sessions<KvStore>) -> Vec<u8> {
        let table = postcard::to_stdvec(&TableRef {
            clock_ms: machine.clock_ms,
            sessions: machine.sessions.iter().map(|(c, s)| (*c, s)).collect(),
        })
        .expect("table");
        let mut bytes = encode_snapshot(SNAPSHOT_FORMAT_VERSION, machine.signature(), &table[..]);
        bytes.extend_from_slice(&machine.inner().snapshot().expect("inner"));
        bytes
    }

    fn five_clients() -> Sessions<KvStore> {
        let mut machine = bounded(8, Some(60_000));
        run(
            &mut machine,
            (1..=5)
                .map(|c| cmd(c, 1, append(&"v".repeat(c as usize * 40))))
                .collect(),
        );
        machine
    }

    #[test]
    fn the_snapshot_is_exactly_the_encoding_of_its_body() {
        let machine = five_clients();
        let bytes = machine.snapshot().expect("snapshot");
        assert_eq!(bytes, reference_snapshot(&machine));
        let mut restored = bounded(8, Some(60_000));
        restored.restore(&bytes).expect("restores");
        assert_eq!(restored.snapshot().expect("snapshot"), bytes);
    }

    #[test]
    fn snapshot_to_and_restore_from_stream_the_snapshot_bytes() {
        let machine = five_clients();
        let bytes = machine.snapshot().expect("snapshot");
        let mut sink = Sink {
            trickle: true,
            ..Sink::default()
        };
        machine.snapshot_to(&mut sink).expect("snapshot_to");
        assert_eq!(sink.bytes, bytes);

        let mut restored = bounded(8, Some(60_000));
        run(&mut restored, vec![cmd(9, 1, append("stale"))]);
        let mut input = Trickle::new(&bytes);
        restored.restore_from(&mut input).expect("restore_from");
        assert_eq!(restored, machine);
        restored.validate();
        let mut from_slice = bounded(8, Some(60_000));
        from_slice.restore(&bytes).expect("restore");
        assert_eq!(from_slice, restored);
    }

    #[test]
    fn snapshot_to_a_failing_writer_is_an_io_error() {
        let machine = five_clients();
        let len = machine.snapshot().expect("snapshot").len();
        // In the header, the table and the inner snapshot.
        for fail_at in [0, 10, 100, len - 10] {
            let mut sink = Sink {
                fail_at: Some(fail_at),
                ..Sink::default()
            };
            assert!(
                matches!(
                    machine.snapshot_to(&mut sink),
                    Err(SnapshotError::Io { .. })
                ),
                "failing at {fail_at}"
            );
        }
    }

    #[test]
    fn restore_from_a_reader_that_fails_is_an_io_error_and_changes_nothing() {
        let bytes = five_clients().snapshot().expect("snapshot");
        let mut machine = bounded(8, Some(60_000));
        run(&mut machine, vec![cmd(9, 1, append("keep"))]);
        assert_failing_reader_changes_nothing(&mut machine, &bytes);
    }

    /// Format 1 embedded the inner snapshot as a byte string inside the body.
    #[test]
    fn a_snapshot_of_format_version_1_is_refused() {
        #[derive(Serialize)]
        struct BodyV1<'a> {
            clock_ms: u64,
            sessions: Vec<(ClientId, &'a Session<KvOutput>)>,
            inner: &'a [u8],
        }
        let mut machine = five_clients();
        let inner = machine.inner().snapshot().expect("inner");
        let v1 = encode_snapshot(
            1,
            machine.signature(),
            &BodyV1 {
                clock_ms: machine.clock_ms,
                sessions: machine.sessions.iter().map(|(c, s)| (*c, s)).collect(),
                inner: &inner,
            },
        );
        let before = machine.clone();
        assert_eq!(
            machine.restore(&v1),
            Err(SnapshotError::UnsupportedVersion {
                expected: 2,
                found: 1
            })
        );
        assert_eq!(machine, before);
    }

    /// Where the table starts in the snapshot of a small machine: after the header and a
    /// one-byte table length.
    const TABLE_AT: usize = 1 + 32 + 1;

    #[test]
    fn restore_refuses_a_table_length_over_the_limit_or_beyond_the_input() {
        let mut machine = bounded(2, None);
        run(&mut machine, vec![cmd(1, 1, append("x"))]);
        let before = machine.clone();
        let signature = machine.signature();
        let table_bytes_max = machine.table_bytes_max();
        let with_table_length = |len: u64, rest: &[u8]| {
            let mut bytes = encode_snapshot(SNAPSHOT_FORMAT_VERSION, signature, &());
            crate::machine::stream::write_varint(&mut bytes, len).expect("varint");
            bytes.extend_from_slice(rest);
            bytes
        };
        let good = machine.snapshot().expect("snapshot");
        let table_len = u64::from(good[TABLE_AT - 1]);
        let rest = &good[TABLE_AT..];
        // Refused before reading: 2^60 bytes, and one byte over the limit.
        let over = [1 << 60, table_bytes_max + 1];
        for len in over {
            assert!(
                matches!(
                    machine.restore(&with_table_length(len, rest)),
                    Err(SnapshotError::Invalid { .. })
                ),
                "{len}"
            );
        }
        // Within the limit but beyond the input: read as far as it goes, then refused.
        assert!(matches!(
            machine.restore(&with_table_length(table_bytes_max, rest)),
            Err(SnapshotError::Decode { .. })
        ));
        // One byte too few or too many for the table.
        for len in [table_len - 1, table_len + 1] {
            assert!(
                matches!(
                    machine.restore(&with_table_length(len, rest)),
                    Err(SnapshotError::Decode { .. })
                ),
                "{len}"
            );
        }
        assert_eq!(machine, before);
        assert_eq!(machine.restore(&with_table_length(table_len, rest)), Ok(()));
    }

    #[test]
    fn restore_refuses_overlong_varints_in_the_table_and_its_length() {
        let mut machine = bounded(2, None);
        run(&mut machine, vec![cmd(1, 1, append("x"))]);
        let good = machine.snapshot().expect("snapshot");
        let mut overlong_length = good.clone();
        overlong_length[TABLE_AT - 1] |= 0x80;
        overlong_length.insert(TABLE_AT, 0x00);
        // The clock (0, the first byte of the table) as 0x80 0x00, the length one more.
        let mut overlong_clock = good.clone();
        assert_eq!(overlong_clock[TABLE_AT], 0);
        overlong_clock[TABLE_AT - 1] += 1;
        overlong_clock[TABLE_AT] = 0x80;
        overlong_clock.insert(TABLE_AT + 1, 0x00);
        for bytes in [overlong_length, overlong_clock] {
            assert!(matches!(
                machine.restore(&bytes),
                Err(SnapshotError::Invalid { .. })
            ));
        }
        let mut overlong_version = good.clone();
        overlong_version[0] |= 0x80;
        overlong_version.insert(1, 0x00);
        assert!(matches!(
            machine.restore(&overlong_version),
            Err(SnapshotError::Invalid { .. })
        ));
        let mut trailing = good;
        trailing.push(0);
        assert!(matches!(
            machine.restore(&trailing),
            Err(SnapshotError::Decode { .. })
        ));
    }

    /// Outputs averaging more than the allowance per session make the table too large:
    /// the snapshot is refused before anything is written, rather than written and then
    /// refused by every restore.
    #[test]
    fn a_table_over_the_limit_is_not_snapshotted() {
        let mut machine = Sessions::with_config(
            KvStore::with_limits(KvLimits {
                value_bytes_max: 2 * 1024 * 1024,
                ..KvLimits::default()
            }),
            SessionConfig {
                sessions_max: NonZeroU32::MIN,
                session_ttl_ms: None,
            },
        );
        let value = vec![b'v'; 1024 * 1024 + 100];
        let put = KvCommand::Put { key: b("k"), value };
        run(&mut machine, vec![cmd(1, 1, put), cmd(1, 2, get_k())]);
        let mut sink = Sink::default();
        assert!(matches!(
            machine.snapshot_to(&mut sink),
            Err(SnapshotError::Encode { .. })
        ));
        assert!(sink.bytes.is_empty());
        // Once the cached output is small again, it is.
        run(
            &mut machine,
            vec![cmd(1, 3, KvCommand::Delete { key: b("k") })],
        );
        assert!(machine.snapshot().is_ok());
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
                matches!(
                    machine.restore(&good[..len]),
                    Err(SnapshotError::Decode { .. })
                ),
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
        let table = postcard::to_stdvec(&TableRef {
            clock_ms,
            sessions: sessions.iter().map(|(c, s)| (*c, s)).collect(),
        })
        .expect("table");
        let mut bytes = encode_snapshot(SNAPSHOT_FORMAT_VERSION, machine.signature(), &table[..]);
        bytes.extend_from_slice(inner);
        bytes
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
