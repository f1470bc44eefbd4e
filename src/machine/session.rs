//! Exactly-once client sessions (architecture.md §7.3, Raft dissertation §6.3).
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

mod batch;

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

impl<O> Session<O> {
    fn map_output<P>(self, f: impl FnOnce(O) -> P) -> Session<P> {
        Session {
            last_seq: self.last_seq,
            last_index: self.last_index,
            last_seen_ms: self.last_seen_ms,
            output: f(self.output),
        }
    }

    /// This session with its output borrowed (it encodes as the session itself).
    fn borrowed(&self) -> Session<&O> {
        Session {
            last_seq: self.last_seq,
            last_index: self.last_index,
            last_seen_ms: self.last_seen_ms,
            output: &self.output,
        }
    }
}

impl<O> Session<Option<O>> {
    /// This session as a snapshot records it: `None` while its output is not applied.
    fn recorded(&self) -> Option<Session<&O>> {
        let output = self.output.as_ref()?;
        Some(Session {
            last_seq: self.last_seq,
            last_index: self.last_index,
            last_seen_ms: self.last_seen_ms,
            output,
        })
    }
}

/// See [`Sessions::admit`].
enum Verdict<C, O> {
    /// Answered from the session table; the inner machine is not involved.
    Answered(SessionOutput<O>),
    /// A new command, for the inner machine.
    New(C),
}

/// Exactly-once wrapper around a state machine; itself a [`StateMachine`].
///
/// Commands are [`SessionCommand`]s; queries go straight to the inner machine. The session
/// table is replicated state: it is in the snapshot with the inner machine, and its
/// parameters are in the signature.
///
/// A batch ([`apply_batch`](StateMachine::apply_batch)) reaches the inner machine as
/// runs of new commands, each one call of the inner `apply_batch`: a run ends only where a
/// command's verdict needs the output of one still in the run (a retry of it, or a later
/// command of the same client). See `session/batch.rs`.
#[derive(Clone, Debug, PartialEq)]
pub struct Sessions<M: StateMachine> {
    inner: M,
    config: SessionConfig,
    /// Each client's last command and its output. The output is `None` only inside
    /// [`apply_batch`](StateMachine::apply_batch), for a new command whose run the inner
    /// machine has not applied yet (see `session/batch.rs`).
    sessions: BTreeMap<ClientId, Session<Option<M::Output>>>,
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
    fn touch(&mut self, client: ClientId, ctx: &ApplyContext<'_>) {
        if let Some(session) = self.sessions.get_mut(&client) {
            self.by_recency.remove(&(session.last_index, client));
            session.last_index = ctx.index;
            session.last_seen_ms = self.clock_ms;
            self.by_recency.insert((ctx.index, client));
        }
    }

    /// The session layer's verdict on one command, taken in log order: answered from the
    /// table (a retry, or a stale sequence number), or new, for the inner machine. A new
    /// command's client has room in the table afterwards, and no session until
    /// its output is recorded (in a batch, one without an output until its run is applied).
    fn admit(
        &mut self,
        command: SessionCommand<M::Command>,
        ctx: &ApplyContext<'_>,
    ) -> Verdict<M::Command, M::Output> {
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
                Verdict::Answered(SessionOutput::Stale { last_seq })
            }
            Some(last_seq) if seq == last_seq => {
                self.touch(client, ctx);
                let output = self
                    .sessions
                    .get(&client)
                    .and_then(|session| session.output.clone())
                    .expect("a session present a moment ago, with its output (a run is applied before its clients' next commands)");
                Verdict::Answered(SessionOutput::Duplicate(output))
            }
            known => {
                if known.is_some() {
                    self.remove_session(client);
                } else {
                    // Unknown (new, evicted or expired): accepted as new; see the module
                    // doc for the risk.
                    self.make_room();
                }
                Verdict::New(command)
            }
        }
    }

    /// Records `client`'s new command `seq`, decided at log index `index` (its output
    /// `None` while its run waits to be applied: `session/batch.rs`).
    fn record(&mut self, client: ClientId, seq: u64, index: u64, output: Option<M::Output>) {
        self.sessions.insert(
            client,
            Session {
                last_seq: seq,
                last_index: index,
                last_seen_ms: self.clock_ms,
                output,
            },
        );
        self.by_recency.insert((index, client));
    }

    /// Asserts the table's invariants (tests and the simulator call it after each step).
    #[cfg(test)]
    pub(crate) fn validate(&self) {
        assert!(
            self.sessions.values().all(|s| s.output.is_some()),
            "a session without its output outside a batch"
        );
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
    sessions: Vec<(ClientId, Session<&'a O>)>,
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
        let sessions = self
            .sessions
            .iter()
            .map(|(c, s)| {
                let session = s.recorded().ok_or_else(|| SnapshotError::Encode {
                    reason: "a session's output is not applied yet (inside a batch)".into(),
                })?;
                Ok((*c, session))
            })
            .collect::<Result<Vec<_>, SnapshotError>>()?;
        let table = TableRef {
            clock_ms: self.clock_ms,
            sessions,
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
                sessions: sessions.iter().map(|(c, s)| (*c, s.borrowed())).collect(),
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

    fn apply(&mut self, command: Self::Command, ctx: &ApplyContext<'_>) -> Self::Output {
        let (client, seq) = (command.client, command.seq);
        match self.admit(command, ctx) {
            Verdict::Answered(output) => output,
            Verdict::New(command) => {
                let output = self.inner.apply(command, ctx);
                self.record(client, seq, ctx.index, Some(output.clone()));
                SessionOutput::Applied(output)
            }
        }
    }

    fn apply_batch(&mut self, batch: Vec<(Self::Command, ApplyContext<'_>)>) -> Vec<Self::Output> {
        self.apply_in_runs(batch)
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
        self.sessions = restored
            .sessions
            .into_iter()
            .map(|(c, s)| (c, s.map_output(Some)))
            .collect();
        self.by_recency = restored.by_recency;
        self.clock_ms = restored.clock_ms;
        Ok(())
    }
}

#[cfg(test)]
mod tests;
