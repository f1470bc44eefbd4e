//! The discovery driver: runs an [`Exchange`] on a node's iroh endpoint over the
//! `tessera/discovery/1` ALPN and hands discovered group members to a [`PeerDialer`]
//! (the bond layer).
//!
//! Protocol, one connection per exchange: the dialer opens a bi-stream and sends its
//! catalog as [`CatalogFrame::Entry`] frames closed by [`CatalogFrame::End`]; the acceptor
//! reads it all, answers with its own catalog the same way, and waits for the dialer to
//! close the connection once it has read the answer (so no side closes on data in flight).
//! Each frame is bounded by [`ENTRY_FRAME_BYTES_MAX`] before allocation, a catalog by
//! [`EXCHANGE_ENTRIES_MAX`] and [`EXCHANGE_BYTES_MAX`], the whole exchange by
//! [`EXCHANGE_TIMEOUT`]. A peer that breaks any of this gets its connection closed with a
//! reason and a log line, and the failure is counted; entries that do not verify are
//! dropped one by one and counted by the catalog merge.
//!
//! **Contract.** Thin: every decision (what to send, when, to whom, whom to dial) is the
//! [`Exchange`]'s; this module moves bytes, reads the clock, bounds concurrency and runs
//! the ticket checks the exchange asks for (the group's validators, off the executor). It
//! never admits a peer to a group: it only asks the bond layer to dial, and the bond
//! handshake decides.
use std::sync::{Arc, Mutex};
use std::time::Duration;

use iroh::endpoint::{Accepting, Connection, RecvStream, SendStream, VarInt};
use iroh::protocol::{AcceptError, ProtocolHandler};
use iroh::{Endpoint, EndpointAddr, PublicKey};
use serde::{Deserialize, Serialize};
use tokio::sync::{watch, Notify, Semaphore};

use super::exchange::{
    DiscoveryStats, Exchange, OwnEntry, EXCHANGE_BYTES_MAX, EXCHANGE_ENTRIES_MAX,
};
use super::{EntryError, PeerEntry, SignedPeerEntry, ENTRY_BYTES_MAX};
use crate::net::{
    encode_message, read_message_limited, Budget, FrameError, ServingBudget, ALPN_DISCOVERY,
};
use crate::tickets::{Admission, Clock, PeerContext, Ticket, TicketValidator};

/// Bound on one whole exchange (connect, both catalogs, close).
pub(crate) const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest catalog frame: one entry, its signature and the encoding overhead.
pub const ENTRY_FRAME_BYTES_MAX: usize = ENTRY_BYTES_MAX + 256;
/// Exchanges we answer at once; further discovery connections are closed as busy.
pub const INCOMING_EXCHANGES_MAX: usize = 8;
/// Exchanges answered at once from one source ([`crate::net::Source`]): one host that
/// opens exchanges and stalls them holds at most this many of the slots.
pub const INCOMING_EXCHANGES_PER_SOURCE_MAX: usize = INCOMING_EXCHANGES_MAX / 2;
/// Exchanges we start at once; a round's further peers wait for the next round.
pub(crate) const OUTGOING_EXCHANGES_MAX: usize = 8;
/// How often the driver wakes when nothing else wakes it.
pub(crate) const DRIVER_TICK: Duration = Duration::from_secs(1);
/// Encoded catalog bytes buffered before they are written to the stream.
const WRITE_CHUNK_BYTES: usize = 1 << 20;

/// Close codes of a discovery connection.
pub(crate) const CLOSE_DONE: u32 = 0;
/// Close code: the peer sent a frame that does not decode (or of another wire version, or
/// on an unknown ALPN), or our own catalog did not encode.
pub const CLOSE_MALFORMED: u32 = 1;
/// Close code: the peer's catalog broke a limit (a frame too large, too many entries or
/// bytes).
pub const CLOSE_LIMIT: u32 = 2;
pub(crate) const CLOSE_TIMEOUT: u32 = 3;
/// Close code: too many exchanges are answered now (from the peer's source, or in all);
/// the peer tries again in a later round.
pub const CLOSE_BUSY: u32 = 4;

/// One frame of a catalog on the wire.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum CatalogFrame {
    /// One entry of the sender's catalog (its own entry comes first).
    Entry(SignedPeerEntry),
    /// The sender's catalog is complete.
    End,
}

/// [`CatalogFrame`] by reference, for sending entries the catalog shares without copying
/// them. Same variants in the same order: the same bytes on the wire.
#[derive(Serialize)]
enum CatalogFrameRef<'a> {
    Entry(&'a SignedPeerEntry),
    #[allow(dead_code)] // sent as `CatalogFrame::End`; here to keep the variant indices
    End,
}

/// Why an exchange failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ExchangeError {
    // The peer misbehaved.
    /// The peer sent a frame that is too large, of another wire version or that does not
    /// decode, or its stream ended before [`CatalogFrame::End`].
    #[error("bad catalog frame: {0}")]
    Frame(FrameError),
    /// The peer's catalog has more entries than one exchange may carry.
    #[error("catalog of more than {max} entries")]
    TooManyEntries {
        /// Entries one exchange may carry (a full catalog and the sender's own entry).
        max: usize,
    },
    /// The peer's catalog has more entry bytes than one exchange may carry.
    #[error("catalog of more than {max} bytes")]
    TooManyBytes {
        /// Entry and signature bytes one exchange may carry.
        max: usize,
    },
    /// The exchange (or the dial before it) did not finish within the bound on one
    /// exchange, 10 s.
    #[error("exchange did not finish within {0:?}")]
    Timeout(Duration),
    // The network failed.
    /// Dialling, opening the stream, or reading or writing it failed in the transport
    /// (the peer is unreachable, or closed the connection).
    #[error("connection: {0}")]
    Connection(String),
    // Local.
    /// Our own catalog did not encode: a local bug, not the peer's fault.
    #[error("our catalog does not encode: {0}")]
    Encode(FrameError),
}

impl ExchangeError {
    /// The name the failure is counted under.
    pub fn kind(&self) -> &'static str {
        match self {
            ExchangeError::Frame(_) => "Frame",
            ExchangeError::TooManyEntries { .. } => "TooManyEntries",
            ExchangeError::TooManyBytes { .. } => "TooManyBytes",
            ExchangeError::Timeout(_) => "Timeout",
            ExchangeError::Connection(_) => "Connection",
            ExchangeError::Encode(_) => "Encode",
        }
    }

    fn close_code(&self) -> u32 {
        match self {
            ExchangeError::Frame(FrameError::Length { .. })
            | ExchangeError::TooManyEntries { .. }
            | ExchangeError::TooManyBytes { .. } => CLOSE_LIMIT,
            ExchangeError::Frame(_) | ExchangeError::Encode(_) => CLOSE_MALFORMED,
            ExchangeError::Timeout(_) => CLOSE_TIMEOUT,
            ExchangeError::Connection(_) => CLOSE_DONE,
        }
    }
}

fn frame_error(e: FrameError) -> ExchangeError {
    match e {
        FrameError::Io(e) => ExchangeError::Connection(e.to_string()),
        other => ExchangeError::Frame(other),
    }
}

/// Why discovery could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DiscoveryError {
    /// This node's own entry could not be encoded and signed with the endpoint's key.
    #[error("this node's own entry cannot be signed: {0}")]
    OwnEntry(#[from] EntryError),
}

/// The bond layer, as discovery sees it. Implemented by [`crate::groups::Bonds`].
pub trait PeerDialer: Send + Sync {
    /// Whether a bond with `peer` is up now (either side dialled).
    fn is_bonded(&self, peer: &PublicKey) -> bool;
    /// `peer` says it is in our group: try to bond with it. Must not block.
    fn dial(&self, peer: EndpointAddr);
    /// `peer`'s entry is gone: stop re-dialling it (a live bond may stay).
    fn forget(&self, peer: &PublicKey);
}

/// What a node runs discovery with.
pub struct DiscoveryConfig {
    /// The network this node is in (`network_id` in node.toml): only entries for it are
    /// taken, and discovered members' tickets are checked against it.
    pub network_id: String,
    /// This node's entry; its tickets are replaced by the latest of `tickets` if given.
    pub own: OwnEntry,
    /// Renewed tickets: each change publishes a new version of our entry.
    pub tickets: Option<watch::Receiver<Vec<Ticket>>>,
    /// Members of this group found in catalogs are handed to the dialer.
    pub group: Option<crate::group_id::GroupId>,
    /// Peers to exchange with from the start (`bootstrap` in node.toml).
    pub bootstrap: Vec<EndpointAddr>,
    /// Unix seconds: dates our entry and expires and checks the others'.
    pub clock: Clock,
    /// The group's ticket validator: a discovered member is dialled only once its entry's
    /// tickets pass it (bound to the key that signed the entry). `None` only for a group
    /// that admits peers without tickets.
    pub validator: Option<Arc<dyn TicketValidator>>,
}

struct Shared {
    endpoint: Endpoint,
    exchange: Mutex<Exchange>,
    clock: Clock,
    stats: watch::Sender<DiscoveryStats>,
    wake: Notify,
    outgoing: Arc<Semaphore>,
    /// Exchanges peers started that we answer now, in total and per source.
    incoming: ServingBudget,
    network_id: String,
    admission: Option<Admission>,
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, Exchange> {
        self.exchange.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Publishes `exchange`'s counters, taking (and so releasing) its lock first: a
    /// reader holds the watch's lock while its `wait_for` closure runs, and that closure
    /// may call [`Discovery::entry`], which takes the exchange's lock. Sending while
    /// holding the exchange's lock would invert that order and deadlock.
    fn publish_stats(&self, exchange: std::sync::MutexGuard<'_, Exchange>) {
        let stats = exchange.stats().clone();
        drop(exchange);
        self.stats.send_if_modified(|s| {
            let changed = *s != stats;
            if changed {
                *s = stats;
            }
            changed
        });
    }

    fn failed(&self, conn: &Connection, e: &ExchangeError) {
        tracing::warn!(peer = %conn.remote_id().fmt_short(), error = %e, "discovery exchange failed");
        let reason = e.to_string();
        conn.close(
            VarInt::from_u32(e.close_code()),
            &reason.as_bytes()[..reason.len().min(512)],
        );
        let mut exchange = self.lock();
        exchange.handle_exchange_failed(e.kind());
        self.publish_stats(exchange);
    }

    /// Merges a peer's catalog off the executor (signature checks are CPU work).
    async fn merge(self: &Arc<Self>, entries: Vec<SignedPeerEntry>) {
        let shared = self.clone();
        let merged = tokio::task::spawn_blocking(move || {
            let now = (shared.clock)();
            let mut exchange = shared.lock();
            let new = exchange.handle_catalog(entries, now);
            shared.publish_stats(exchange);
            new
        })
        .await;
        match merged {
            Ok(new) if new > 0 => self.wake.notify_one(),
            Ok(_) => {}
            Err(e) => tracing::error!(error = %e, "catalog merge task failed"),
        }
    }
}

/// Discovery running on a node. Dropping it stops it.
pub struct Discovery {
    shared: Arc<Shared>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for Discovery {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

impl Discovery {
    /// Starts discovery on `endpoint`: exchanges with the bootstrap peers and then with
    /// catalog peers, and hands group members to `dialer`. Peers' exchanges are answered
    /// once [`Discovery::protocol`] is mounted on the endpoint's router for
    /// [`ALPN_DISCOVERY`]. Must run inside a tokio runtime.
    pub fn start(
        endpoint: Endpoint,
        mut config: DiscoveryConfig,
        dialer: Option<Arc<dyn PeerDialer>>,
    ) -> Result<Self, DiscoveryError> {
        if let Some(tickets) = &mut config.tickets {
            config.own.tickets = tickets.borrow_and_update().clone();
        }
        let now = (config.clock)();
        let exchange = Exchange::new(
            endpoint.secret_key().clone(),
            config.network_id.clone(),
            config.own.clone(),
            config.group,
            config.bootstrap,
            now,
        )?;
        let stats = watch::channel(exchange.stats().clone()).0;
        let shared = Arc::new(Shared {
            endpoint,
            exchange: Mutex::new(exchange),
            clock: config.clock,
            stats,
            wake: Notify::new(),
            outgoing: Arc::new(Semaphore::new(OUTGOING_EXCHANGES_MAX)),
            incoming: ServingBudget::new(
                "discovery exchanges",
                INCOMING_EXCHANGES_MAX,
                INCOMING_EXCHANGES_PER_SOURCE_MAX,
            ),
            network_id: config.network_id,
            admission: config.validator.map(|v| Admission::new(vec![v])),
        });
        let tasks = vec![tokio::spawn(drive(
            shared.clone(),
            config.own,
            config.tickets,
            dialer,
        ))];
        Ok(Self { shared, tasks })
    }

    /// The handler that answers peers' exchanges, for an iroh router on
    /// [`ALPN_DISCOVERY`].
    /// QUIC handshakes in progress hold units of `connecting` (pass the gateway's,
    /// [`crate::groups::Groups::connecting_budget`], to share one bound).
    pub fn protocol(&self, connecting: Budget) -> DiscoveryProtocol {
        DiscoveryProtocol {
            shared: self.shared.clone(),
            connecting,
        }
    }

    /// Watches the counters.
    pub fn stats(&self) -> watch::Receiver<DiscoveryStats> {
        self.shared.stats.subscribe()
    }

    /// The entry held for `peer`, if any.
    pub fn entry(&self, peer: &PublicKey) -> Option<PeerEntry> {
        self.shared.lock().catalog().get(peer.as_bytes())
    }

    /// Every entry held.
    pub fn entries(&self) -> Vec<PeerEntry> {
        self.shared.lock().catalog().entries().collect()
    }

    /// Our own entry as published now.
    pub fn own_entry(&self) -> PeerEntry {
        self.shared.lock().own_entry().clone()
    }
}

/// Answers peers' discovery exchanges ([`Discovery::protocol`]): at most
/// `INCOMING_EXCHANGES_MAX` at once, further ones are closed as busy.
#[derive(Clone)]
pub struct DiscoveryProtocol {
    shared: Arc<Shared>,
    connecting: Budget,
}

impl std::fmt::Debug for DiscoveryProtocol {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DiscoveryProtocol").finish_non_exhaustive()
    }
}

impl ProtocolHandler for DiscoveryProtocol {
    async fn on_accepting(&self, accepting: Accepting) -> Result<Connection, AcceptError> {
        let busy = (CLOSE_BUSY, &b"too many discovery exchanges"[..]);
        let conn = self
            .shared
            .incoming
            .accept(&self.connecting, accepting, EXCHANGE_TIMEOUT, busy)
            .await?;
        Ok(conn)
    }

    async fn accept(&self, conn: Connection) -> Result<(), AcceptError> {
        // Held while the exchange is answered: a unit of the per-source budget.
        let Some(_permit) = self.shared.incoming.take(&conn) else {
            conn.close(VarInt::from_u32(CLOSE_BUSY), b"not admitted");
            return Ok(());
        };
        if conn.alpn() != ALPN_DISCOVERY {
            conn.close(VarInt::from_u32(CLOSE_MALFORMED), b"unknown protocol");
            return Ok(());
        }
        answer(&self.shared, conn).await;
        Ok(())
    }
}

/// The acceptor's side of one exchange.
async fn answer(shared: &Arc<Shared>, conn: Connection) {
    let ours = shared.lock().outgoing();
    let exchange = async {
        let (mut send, mut recv) = conn
            .accept_bi()
            .await
            .map_err(|e| ExchangeError::Connection(e.to_string()))?;
        let theirs = read_catalog(&mut recv).await?;
        write_catalog(&mut send, &ours).await?;
        Ok::<_, ExchangeError>((theirs, send))
    };
    match tokio::time::timeout(EXCHANGE_TIMEOUT, exchange).await {
        Ok(Ok((theirs, _send))) => {
            shared.merge(theirs).await;
            // The dialer closes once it has read our catalog; keep the stream (and so
            // the data in flight) until then.
            let _ = tokio::time::timeout(EXCHANGE_TIMEOUT, conn.closed()).await;
        }
        Ok(Err(e)) => shared.failed(&conn, &e),
        Err(_) => shared.failed(&conn, &ExchangeError::Timeout(EXCHANGE_TIMEOUT)),
    }
}

/// The dialer's side of one exchange with `peer`.
async fn exchange_with(shared: &Arc<Shared>, peer: EndpointAddr) {
    let ours = shared.lock().outgoing();
    let id = peer.id;
    let connect = async {
        shared
            .endpoint
            .connect(peer, ALPN_DISCOVERY)
            .await
            .map_err(|e| ExchangeError::Connection(e.to_string()))
    };
    let conn = match tokio::time::timeout(EXCHANGE_TIMEOUT, connect).await {
        Ok(Ok(conn)) => conn,
        Ok(Err(e)) => {
            tracing::debug!(peer = %id.fmt_short(), error = %e, "discovery dial failed");
            shared.lock().handle_exchange_failed(e.kind());
            return;
        }
        Err(_) => {
            tracing::debug!(peer = %id.fmt_short(), "discovery dial timed out");
            shared.lock().handle_exchange_failed("Timeout");
            return;
        }
    };
    let exchange = async {
        let (mut send, mut recv) = conn
            .open_bi()
            .await
            .map_err(|e| ExchangeError::Connection(e.to_string()))?;
        write_catalog(&mut send, &ours).await?;
        read_catalog(&mut recv).await
    };
    match tokio::time::timeout(EXCHANGE_TIMEOUT, exchange).await {
        Ok(Ok(theirs)) => {
            conn.close(VarInt::from_u32(CLOSE_DONE), b"done");
            shared.merge(theirs).await;
        }
        Ok(Err(e)) => shared.failed(&conn, &e),
        Err(_) => shared.failed(&conn, &ExchangeError::Timeout(EXCHANGE_TIMEOUT)),
    }
}

/// Writes `entries` and [`CatalogFrame::End`], in chunks, and finishes the stream.
async fn write_catalog(
    send: &mut SendStream,
    entries: &[Arc<SignedPeerEntry>],
) -> Result<(), ExchangeError> {
    let mut buf = Vec::new();
    for entry in entries {
        encode_message(&mut buf, &CatalogFrameRef::Entry(entry)).map_err(ExchangeError::Encode)?;
        if buf.len() >= WRITE_CHUNK_BYTES {
            write_all(send, &buf).await?;
            buf.clear();
        }
    }
    encode_message(&mut buf, &CatalogFrame::End).map_err(ExchangeError::Encode)?;
    write_all(send, &buf).await?;
    send.finish()
        .map_err(|e| ExchangeError::Connection(e.to_string()))
}

async fn write_all(send: &mut SendStream, buf: &[u8]) -> Result<(), ExchangeError> {
    tokio::io::AsyncWriteExt::write_all(send, buf)
        .await
        .map_err(|e| ExchangeError::Connection(e.to_string()))
}

/// Reads a catalog up to [`CatalogFrame::End`], within the limits.
async fn read_catalog(recv: &mut RecvStream) -> Result<Vec<SignedPeerEntry>, ExchangeError> {
    let mut entries = Vec::new();
    let mut bytes = 0usize;
    loop {
        let frame: CatalogFrame =
            read_message_limited(recv, "catalog frame", ENTRY_FRAME_BYTES_MAX)
                .await
                .map_err(frame_error)?;
        match frame {
            CatalogFrame::End => return Ok(entries),
            CatalogFrame::Entry(entry) => {
                if entries.len() == EXCHANGE_ENTRIES_MAX {
                    return Err(ExchangeError::TooManyEntries {
                        max: EXCHANGE_ENTRIES_MAX,
                    });
                }
                bytes = bytes.saturating_add(entry.entry.len() + entry.signature.len());
                if bytes > EXCHANGE_BYTES_MAX {
                    return Err(ExchangeError::TooManyBytes {
                        max: EXCHANGE_BYTES_MAX,
                    });
                }
                entries.push(entry);
            }
        }
    }
}

/// The driver: timers, our own entry, rounds of exchanges, and dial requests.
async fn drive(
    shared: Arc<Shared>,
    mut own: OwnEntry,
    mut tickets: Option<watch::Receiver<Vec<Ticket>>>,
    dialer: Option<Arc<dyn PeerDialer>>,
) {
    let mut tick = tokio::time::interval(DRIVER_TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let renewed = async {
            match &mut tickets {
                Some(t) => t.changed().await.is_ok(),
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = tick.tick() => {}
            _ = shared.wake.notified() => {}
            ok = renewed => match (ok, &mut tickets) {
                (true, Some(t)) => {
                    own.tickets = t.borrow_and_update().clone();
                    let now = (shared.clock)();
                    if let Err(e) = shared.lock().handle_own(own.clone(), now) {
                        tracing::error!(error = %e, "could not publish renewed tickets");
                    }
                }
                _ => tickets = None, // the ticket source is gone: keep the last ones
            },
        }
        if shared.endpoint.is_closed() {
            return;
        }
        // Off the executor: polling for bonds may verify tickets (DCAP, ~ms each).
        let polled = {
            let (shared, dialer) = (shared.clone(), dialer.clone());
            tokio::task::spawn_blocking(move || poll(&shared, dialer.as_deref())).await
        };
        let (round, commands) = match polled {
            Ok(polled) => polled,
            Err(e) => {
                tracing::error!(error = %e, "discovery poll task failed");
                continue;
            }
        };
        for peer in round.unwrap_or_default() {
            let Ok(permit) = shared.outgoing.clone().try_acquire_owned() else {
                tracing::debug!("discovery round cut short: too many exchanges in flight");
                break;
            };
            let shared = shared.clone();
            tokio::spawn(async move {
                exchange_with(&shared, peer).await;
                drop(permit);
            });
        }
        if let Some(d) = &dialer {
            for peer in commands.forget {
                d.forget(&peer);
            }
            for peer in commands.dial {
                tracing::info!(peer = %peer.id.fmt_short(), "discovered a group member; dialling it");
                d.dial(peer);
            }
        }
    }
}

/// One wake-up of the exchange: timers, the next round, and the members to dial.
fn poll(
    shared: &Shared,
    dialer: Option<&dyn PeerDialer>,
) -> (Option<Vec<EndpointAddr>>, super::BondCommands) {
    let now = (shared.clock)();
    let mut exchange = shared.lock();
    exchange.handle_timeout(now);
    let round = exchange.poll_round(now);
    let commands = match dialer {
        Some(d) => exchange.poll_bonds(
            |k| d.is_bonded(k),
            |entry| check_tickets(shared.admission.as_ref(), &shared.network_id, entry, now),
        ),
        None => Default::default(),
    };
    shared.publish_stats(exchange);
    (round, commands)
}

/// Whether `entry`'s tickets pass the group's validators, bound to the key that signed the
/// entry (as the bond handshake will check them against the key the connection proves).
fn check_tickets(
    admission: Option<&Admission>,
    network_id: &str,
    entry: &PeerEntry,
    now: u64,
) -> Result<(), String> {
    let Some(admission) = admission else {
        return Ok(()); // the group admits without tickets: nothing to check
    };
    let ctx = PeerContext {
        peer_key: entry.peer_key,
        network_id: network_id.to_string(),
        group_scope: None,
        now,
    };
    admission
        .admit(&entry.tickets, &ctx)
        .map(|_| ())
        .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_frame_sent_by_reference_is_the_frame_on_the_wire() {
        let entry = SignedPeerEntry {
            entry: vec![1, 2, 3],
            signature: vec![4; 64],
        };
        let (mut by_ref, mut owned) = (Vec::new(), Vec::new());
        encode_message(&mut by_ref, &CatalogFrameRef::Entry(&entry)).expect("encode");
        encode_message(&mut owned, &CatalogFrame::Entry(entry)).expect("encode");
        assert_eq!(by_ref, owned);
        let (mut end_ref, mut end) = (Vec::new(), Vec::new());
        encode_message(&mut end_ref, &CatalogFrameRef::End).expect("encode");
        encode_message(&mut end, &CatalogFrame::End).expect("encode");
        assert_eq!(end_ref, end);
    }
}
