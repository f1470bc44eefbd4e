//! Bonds over iroh (architecture.md §6): the [`Transport`] between group members on real QUIC
//! connections, authenticated by iroh keys, admitted by tickets and proven by the group key.
//!
//! Handshake, on a bi-stream the dialer opens, in two steps. First the dialer sends a
//! small `ProofHello { group id, proof }` (at most [`PROOF_FRAME_BYTES_MAX`], due within
//! [`FIRST_FRAME_TIMEOUT`]) with `proof = HMAC-SHA256(group key, "tessera/bond/v1" ‖
//! exporter ‖ role)`, where `exporter` is the connection's TLS keying-material export (so a
//! proof cannot be replayed on another connection or relayed) and `role` says which side
//! sent it. The acceptor's [`super::Groups`] gateway reads that frame, routes the
//! connection to the group it names (many groups share one endpoint) or refuses it, and
//! the group's bonds answer with their own proof. Only a peer that proved the group key
//! gets our tickets and has its own read (at most [`TICKETS_FRAME_BYTES_MAX`]): a stranger
//! costs a few hundred bytes and an HMAC, never a quote verification or a large buffer.
//! Each side then checks every validator on the tickets against the remote key iroh
//! authenticated (off the async executor, cached). Any failure closes the connection with
//! a reason code and is counted in [`BondStats`] (the gateway's, before routing).
//!
//! Work for unauthenticated peers is budgeted ([`crate::net::Budget`]) by the gateway: QUIC
//! handshakes in progress and bond handshakes before they finish, each in total and per
//! source address, so silent connections from one host exhaust only that host's share.
//!
//! After the handshake the stream carries [`BondMessage`]s: consensus frames, fresh tickets
//! before the old ones expire (a bond whose peer lets its verdict expire is closed), and
//! pings so that quiet bonds (follower to follower) stay open and dead ones are noticed.
//! Snapshots do not ride on that stream: each goes on a stream of its own, in chunks,
//! resumable and checked against its SHA-256 ([`super::snapshot_transfer`]).
//!
//! Among founding members only the peer with the smaller key dials, so a pair has one
//! bond; a joiner dials everyone it knows. The dialer re-dials with back-off when the
//! bond drops. Peers learned at run time (discovery, [`Bonds::add_peer`]) are dialled by
//! the smaller key of the pair too (both sides learn of each other), and not while a bond
//! the other side dialled is up. Every dialler and accepted bond is a task of these bonds,
//! ended and awaited by [`Bonds::close`].
use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use iroh::endpoint::{Connection, RecvStream, SendStream, VarInt};
use iroh::{Endpoint, EndpointAddr, PublicKey};
use ring::hmac;
use serde::{Deserialize, Serialize};
use tokio::sync::{broadcast, mpsc, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::id::{GroupId, GroupKey};
use super::snapshot_transfer::{self, ResumeSlot};
use super::transport::{Inbox, InboxError, InboxItem, PeerFrame, Transport};
use crate::net::{
    encode_message, read_message, read_message_limited, write_message, BudgetPermit, FrameError,
    ALPN_BOND,
};
use crate::raft::{Incarnation, Index, Message, MessageBody, NodeId, Term};
use crate::storage::SnapshotStore;
use crate::tickets::{Admission, Clock, PeerContext, Ticket, TicketError};

mod accept;
mod handshake;
mod io;

use accept::RoutedBonds;
pub(crate) use accept::{refuse_on, Acceptor};
pub(crate) use handshake::FirstFrame;
use handshake::Opening;
#[cfg(any(test, feature = "test-util"))]
pub use handshake::{dial_raw, RawBond};
pub use io::RENEWALS_BURST;
use io::RENEWAL_REFILL;
use io::{
    read_messages, write_bond, AbortOnDrop, RenewalAllowance, SnapshotSender, INCOMING_MESSAGES_MAX,
};

/// Frames queued towards one peer before further ones are dropped.
pub(crate) const OUTGOING_FRAMES_MAX: usize = 8192;
/// Bound on the whole handshake, ticket validation included.
pub(crate) const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Incoming bond handshakes in progress at once; further bond connections are refused.
pub const HANDSHAKES_MAX: usize = 64;
/// Incoming bond handshakes in progress from one source address.
pub const HANDSHAKES_PER_SOURCE_MAX: usize = 8;
/// Incoming QUIC handshakes in progress at once, and from one source address, on every
/// ALPN whose handler shares the gateway's budget ([`super::Groups::connecting_budget`]).
pub(crate) const CONNECTING_MAX: usize = 128;
pub(crate) const CONNECTING_PER_SOURCE_MAX: usize = 16;
/// The peer's first handshake frame (its group-key proof) must arrive within this.
pub(crate) const FIRST_FRAME_TIMEOUT: Duration = Duration::from_secs(3);
/// Largest first handshake frame: a group id, an HMAC and framing.
pub(crate) const PROOF_FRAME_BYTES_MAX: usize = 128;
/// Tickets a peer may present at once (one per validator kind, with room for a rollover).
pub(crate) const TICKETS_PER_PEER_MAX: usize = 4;
/// Largest tickets frame: [`TICKETS_PER_PEER_MAX`] tickets of the largest size, framed.
pub(crate) const TICKETS_FRAME_BYTES_MAX: usize =
    TICKETS_PER_PEER_MAX * (crate::tickets::TICKET_BYTES_MAX + 64) + 64;
/// Bound on dialling a peer.
pub(crate) const DIAL_TIMEOUT: Duration = Duration::from_secs(5);
/// How often a bond sends a ping.
pub(crate) const PING_INTERVAL: Duration = Duration::from_secs(2);
/// A bond that receives nothing for this long is closed.
pub(crate) const IDLE_TIMEOUT: Duration = Duration::from_secs(10);
const REDIAL_DELAY_MIN: Duration = Duration::from_millis(50);
const REDIAL_DELAY_MAX: Duration = Duration::from_secs(5);
/// Keys of peers that bonded, remembered for naming members ([`Bonds::key_of`]).
pub(crate) const KNOWN_KEYS_MAX: usize = 1024;
/// Peers learned at run time waiting to get a dialler; further ones are refused.
pub(crate) const DIAL_REQUESTS_MAX: usize = 256;

/// Which of the given peers a member dials.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dial {
    /// Founding members know each other: only the smaller key of a pair dials, so each
    /// pair has exactly one bond.
    SmallerKey,
    /// A joiner is unknown to the members: it dials every peer it was given.
    All,
}

/// Reason codes a refusing side closes the connection with, and the kinds of refusal
/// [`BondStats::refused`] counts (a code carries no detail, so counters stay few).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Refusal {
    /// A frame that does not decode, or breaks the protocol's order or limits.
    Malformed = 1,
    /// The dialer named a group that is not joined on this endpoint.
    WrongGroup = 2,
    /// The proof of the group key is wrong: the peer does not hold the group's key.
    BadProof = 3,
    /// No ticket of the peer passes this group's validators (quote, policy, binding).
    BadTicket = 4,
    /// The peer did not finish its part of the handshake in time.
    Timeout = 5,
    /// The peer's tickets expired and it sent no fresh one in time.
    TicketExpired = 6,
    /// Not a refusal of ours: the peer refused us (counted so that it is visible).
    RefusedByPeer = 7,
    /// Too many handshakes in progress (in all, or from the peer's address).
    Busy = 8,
    /// The peer's log descends from another founding of this group id
    /// ([`crate::raft::Incarnation`]): another group that happens to share the id.
    OtherIncarnation = 9,
}

impl Refusal {
    /// A stable name for metrics and status output (the variant's name: labels already
    /// scraped stay the same).
    pub fn label(self) -> &'static str {
        match self {
            Refusal::Malformed => "Malformed",
            Refusal::WrongGroup => "WrongGroup",
            Refusal::BadProof => "BadProof",
            Refusal::BadTicket => "BadTicket",
            Refusal::Timeout => "Timeout",
            Refusal::TicketExpired => "TicketExpired",
            Refusal::RefusedByPeer => "RefusedByPeer",
            Refusal::Busy => "Busy",
            Refusal::OtherIncarnation => "OtherIncarnation",
        }
    }
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.label())
    }
}

/// What a member brings to its bonds.
#[derive(Clone)]
pub struct BondConfig {
    /// The group the bonds are for: named in the handshake, covered by the proof.
    pub group_id: GroupId,
    /// The group's secret key (never sent; only proven).
    pub group_key: GroupKey,
    /// The network this node belongs to; peers' tickets must name it.
    pub network_id: String,
    /// Our current tickets; a change is sent to every bonded peer.
    pub tickets: watch::Receiver<Vec<Ticket>>,
    /// The group's validators.
    pub admission: Arc<Admission>,
    /// Unix seconds, as tickets are checked against.
    pub clock: Clock,
    /// The member's snapshot bytes: snapshots are sent from here and received into here
    /// (the worker's storage's [`Storage::snapshot_store`](crate::storage::Storage::snapshot_store)).
    pub snapshots: Arc<SnapshotStore>,
}

/// Counters a test or the metrics endpoint can watch.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BondStats {
    /// Handshakes that succeeded.
    pub bonded: u64,
    /// Bonds that ended.
    pub closed: u64,
    /// Peers bonded right now.
    pub live: u64,
    /// Handshakes refused or bonds closed by us, by reason.
    pub refused: BTreeMap<Refusal, u64>,
    /// Consensus frames received from bonded peers.
    pub frames_in: u64,
    /// Renewed tickets accepted from bonded peers.
    pub renewals: u64,
    /// Snapshots received whole and verified.
    pub snapshots_in: u64,
    /// Snapshots sent whole.
    pub snapshots_out: u64,
    /// Snapshot transfers that failed (cut off, declined, bad digest), both directions.
    pub snapshot_failures: u64,
    /// The latest refusals (at most 32), oldest first.
    pub recent_refusals: Vec<RefusalRecord>,
}

/// Refusals kept in [`BondStats::recent_refusals`].
pub(crate) const RECENT_REFUSALS_MAX: usize = 32;

/// One refused handshake or closed bond.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RefusalRecord {
    /// Who was refused.
    pub peer: NodeId,
    /// The kind of refusal, as counted in [`BondStats::refused`].
    pub reason: Refusal,
    /// What exactly was wrong (a ticket's verdict, say), for the operator.
    pub detail: String,
}

impl BondStats {
    /// Refusals of every kind together.
    pub fn refused_total(&self) -> u64 {
        self.refused.values().sum()
    }

    /// Counts `record` and keeps it among the recent ones.
    pub(crate) fn record(&mut self, record: RefusalRecord) {
        *self.refused.entry(record.reason).or_default() += 1;
        if self.recent_refusals.len() == RECENT_REFUSALS_MAX {
            self.recent_refusals.remove(0);
        }
        self.recent_refusals.push(record);
    }

    /// Counts a connection refused before it named a peer key or group (over budget).
    pub(crate) fn count(&mut self, reason: Refusal) {
        *self.refused.entry(reason).or_default() += 1;
    }
}

/// What travels on a bond after the handshake.
#[derive(Debug, Serialize, Deserialize)]
pub enum BondMessage {
    /// A frame for the peer's member.
    Frame(PeerFrame),
    /// Fresh tickets, sent before the previous ones expire.
    Tickets(Vec<Ticket>),
    /// Keeps an idle bond's connection alive.
    Ping,
}

/// A change of one member's bonds, as [`Bonds::events`] reports it. Peers are named by
/// their iroh key, as the application dialled or configured them.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum BondEvent {
    /// A bond to `peer` came up: it passed the handshake (attested, holds the group
    /// key). Reported for its first bond only (both sides may dial at once).
    Up {
        /// The peer's key.
        peer: PublicKey,
    },
    /// The last bond to `peer` went down.
    Down {
        /// The peer's key.
        peer: PublicKey,
    },
    /// A handshake with `peer` was refused, or a bond with it closed for a fault.
    Refused {
        /// The peer's key (authenticated by QUIC; it is not thereby attested).
        peer: PublicKey,
        /// The kind of refusal, as counted in [`BondStats::refused`].
        reason: Refusal,
        /// What exactly was wrong, for the operator.
        detail: String,
    },
}

/// Events kept for a subscriber that has not read them yet; one further behind misses
/// the oldest ([`tokio::sync::broadcast`]'s `Lagged`) rather than slowing the bonds.
pub(crate) const EVENTS_BUFFERED_MAX: usize = 256;

/// The small id the consensus core uses for a peer key: the first 8 bytes of its SHA-256.
pub fn node_id_of(key: &PublicKey) -> NodeId {
    let digest = ring::digest::digest(&ring::digest::SHA256, key.as_bytes());
    let mut id = [0u8; 8];
    id.copy_from_slice(&digest.as_ref()[..8]);
    NodeId(u64::from_le_bytes(id))
}

/// One live bond, as the member's transport reaches it.
struct LiveBond {
    /// Its outgoing queue.
    frames: mpsc::Sender<PeerFrame>,
    /// Ends it, refused as [`Refusal::OtherIncarnation`] ([`Transport::disconnect_foreign`]).
    foreign: CancellationToken,
}

/// The bonds of one member, and its [`Transport`].
pub struct Bonds {
    me: PublicKey,
    config: BondConfig,
    /// The outgoing queues of the live bonds, per peer. Usually one; two when both sides
    /// dialled at once (joiners dial everyone): frames go on the newest, and the peer
    /// counts as unreachable only once none is left.
    peers: Mutex<BTreeMap<NodeId, Vec<LiveBond>>>,
    stats: watch::Sender<BondStats>,
    /// Bonds up and down, and refusals ([`Bonds::events`]).
    events: broadcast::Sender<BondEvent>,
    /// An incoming snapshot transfer that was cut off, kept to be resumed.
    resume: ResumeSlot,
    /// The key of every peer that bonded, by node id (kept after its bond ends; at most
    /// [`KNOWN_KEYS_MAX`]), so that views of the group can name members by key.
    keys: Mutex<BTreeMap<NodeId, PublicKey>>,
    /// Peers given at start; [`Bonds::add_peer`] leaves them to the start-up dial policy.
    configured: BTreeSet<PublicKey>,
    /// Peers added at run time that have (or are about to get) a dialler.
    added: Mutex<BTreeSet<PublicKey>>,
    dial_requests: mpsc::Sender<EndpointAddr>,
    /// The member's published status ([`Bonds::follow_group`]): who leads in which term,
    /// the only peer a snapshot is taken from. Unset: no snapshot is taken from anyone.
    group_status: std::sync::OnceLock<watch::Receiver<super::GroupStatus>>,
    /// Ends every task of these bonds ([`Bonds::close`]).
    cancel: CancellationToken,
    /// The diallers and the bonds they run.
    tasks: TaskTracker,
}

impl Bonds {
    /// Starts dialling `peers` as `dial` says; frames and bond up/down events go to
    /// `inbox`. Connections peers dial to us arrive through the endpoint's
    /// [`super::Groups`] gateway, which routes them here by group id. Every task it spawns
    /// is tracked and ends with
    /// [`Bonds::close`]. Must run inside a tokio runtime.
    pub fn start<C: Send + 'static>(
        endpoint: Endpoint,
        config: BondConfig,
        inbox: Inbox<C>,
        peers: Vec<EndpointAddr>,
        dial: Dial,
    ) -> Arc<Self> {
        let (bonds, mut requested) =
            Self::unstarted(endpoint.id(), config, peers.iter().map(|p| p.id).collect());
        let bonds = Arc::new(bonds);
        {
            let dialling = bonds.clone();
            let ep = endpoint.clone();
            let inbox = inbox.clone();
            let tasks = bonds.tasks.clone();
            bonds.spawn(async move {
                while let Some(peer) = requested.recv().await {
                    let bonds = dialling.clone();
                    let ep = ep.clone();
                    let inbox = inbox.clone();
                    let cancel = bonds.cancel.clone();
                    tasks.spawn(cancel.run_until_cancelled_owned(async move {
                        bonds.dial_added(ep, peer, inbox).await
                    }));
                }
            });
        }
        for peer in peers {
            if peer.id == bonds.me
                || (dial == Dial::SmallerKey && peer.id.as_bytes() < bonds.me.as_bytes())
            {
                continue;
            }
            let dialler = bonds.clone();
            let ep = endpoint.clone();
            let inbox = inbox.clone();
            bonds.spawn(async move { dialler.dial_forever(ep, peer, inbox).await });
        }
        bonds
    }

    /// Runs `task` until [`Bonds::close`], tracked so that closing can wait for it.
    fn spawn(&self, task: impl std::future::Future<Output = ()> + Send + 'static) {
        self.tasks
            .spawn(self.cancel.clone().run_until_cancelled_owned(task));
    }

    /// Where the gateway hands connections that proved this group's id: the bond runs on
    /// the caller's task (the router's, for that connection) until it ends or the bonds
    /// close.
    pub(crate) fn acceptor<C: Send + 'static>(
        self: &Arc<Self>,
        inbox: Inbox<C>,
    ) -> Arc<dyn Acceptor> {
        Arc::new(RoutedBonds {
            bonds: self.clone(),
            inbox,
        })
    }

    /// Ends every bond and dialler of this member and waits for their tasks.
    pub async fn close(&self) {
        self.cancel.cancel();
        self.tasks.close();
        self.tasks.wait().await;
    }

    /// The bonds of `me`, with nothing accepted or dialled yet, and the queue of peers
    /// [`Bonds::add_peer`] asks to dial (`configured` are left to the start-up policy).
    fn unstarted(
        me: PublicKey,
        config: BondConfig,
        configured: BTreeSet<PublicKey>,
    ) -> (Self, mpsc::Receiver<EndpointAddr>) {
        let (dial_requests, requested) = mpsc::channel(DIAL_REQUESTS_MAX);
        let bonds = Self {
            me,
            config,
            peers: Mutex::new(BTreeMap::new()),
            stats: watch::channel(BondStats::default()).0,
            events: broadcast::channel(EVENTS_BUFFERED_MAX).0,
            resume: ResumeSlot::default(),
            keys: Mutex::new(BTreeMap::new()),
            configured,
            added: Mutex::new(BTreeSet::new()),
            dial_requests,
            group_status: std::sync::OnceLock::new(),
            cancel: CancellationToken::new(),
            tasks: TaskTracker::new(),
        };
        (bonds, requested)
    }

    /// Takes snapshots only from the leader the member follows, in its current term, as
    /// `status` publishes them. Until this is called no snapshot offer is accepted.
    pub fn follow_group(&self, status: watch::Receiver<super::GroupStatus>) {
        let _ = self.group_status.set(status);
    }

    /// The group these bonds belong to.
    pub fn group_id(&self) -> GroupId {
        self.config.group_id
    }

    /// Watches the counters.
    pub fn stats(&self) -> watch::Receiver<BondStats> {
        self.stats.subscribe()
    }

    /// Bonds coming up and going down, and refused peers, from now on: a subscriber more
    /// than 256 events behind misses the oldest (`RecvError::Lagged`); the counters in
    /// [`Bonds::stats`] and [`Bonds::bonded_keys`] stay exact.
    pub fn events(&self) -> broadcast::Receiver<BondEvent> {
        self.events.subscribe()
    }

    /// The keys of the peers bonded right now.
    pub fn bonded_keys(&self) -> Vec<PublicKey> {
        let bonded = self.bonded_peers();
        let keys = self.keys.lock().unwrap_or_else(|p| p.into_inner());
        bonded
            .iter()
            .filter_map(|id| keys.get(id).copied())
            .collect()
    }

    /// The key of `peer`, if it ever bonded with this member.
    pub fn key_of(&self, peer: NodeId) -> Option<PublicKey> {
        self.keys
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&peer)
            .copied()
    }

    /// Peers bonded right now.
    pub fn bonded_peers(&self) -> Vec<NodeId> {
        self.lock_peers().keys().copied().collect()
    }

    /// Whether a bond with `peer` is up now (either side dialled).
    pub fn is_bonded(&self, peer: &PublicKey) -> bool {
        self.lock_peers().contains_key(&node_id_of(peer))
    }

    /// A peer learned at run time (e.g. from discovery) that may be in the group: dials it
    /// with back-off until it bonds or [`Bonds::forget_peer`], if our key is the smaller
    /// of the pair (the other side dials otherwise). The handshake decides as for any
    /// peer. Returns whether a dialler was started; never blocks.
    pub fn add_peer(&self, peer: EndpointAddr) -> bool {
        if peer.id.as_bytes() < self.me.as_bytes() {
            return false;
        }
        self.add_dialled_peer(peer)
    }

    /// A bootstrap peer found at run time (a configured address that now names this id,
    /// e.g. after the node there restarted as a new identity): dialled with back-off, as
    /// peers given at start are, whatever the key order, until [`Bonds::forget_peer`].
    /// Returns whether a dialler was started; never blocks.
    pub fn add_bootstrap_peer(&self, peer: EndpointAddr) -> bool {
        self.add_dialled_peer(peer)
    }

    fn add_dialled_peer(&self, peer: EndpointAddr) -> bool {
        if peer.id == self.me || self.configured.contains(&peer.id) {
            return false;
        }
        let mut added = self.lock_added();
        if added.contains(&peer.id) {
            return false;
        }
        let id = peer.id;
        if self.dial_requests.try_send(peer).is_err() {
            tracing::warn!(peer = %id.fmt_short(), "too many peers to dial; not dialled now");
            return false;
        }
        added.insert(id);
        true
    }

    /// Stops re-dialling a peer given to [`Bonds::add_peer`]; a bond that is up stays.
    pub fn forget_peer(&self, peer: &PublicKey) {
        self.lock_added().remove(peer);
    }

    /// The dialler of a peer added at run time: stops once the peer is forgotten.
    async fn dial_added<C: Send + 'static>(
        self: Arc<Self>,
        ep: Endpoint,
        peer: EndpointAddr,
        inbox: Inbox<C>,
    ) {
        let key = peer.id;
        self.dial_while(ep, peer, inbox, move |bonds| {
            bonds.lock_added().contains(&key)
        })
        .await
    }

    /// The dialler of a peer given at start: dials for as long as the worker runs.
    async fn dial_forever<C: Send + 'static>(
        self: Arc<Self>,
        ep: Endpoint,
        peer: EndpointAddr,
        inbox: Inbox<C>,
    ) {
        self.dial_while(ep, peer, inbox, |_| true).await
    }

    /// Dials `peer` with back-off while `wanted` holds, re-dialling when the bond drops,
    /// but not while a bond the peer dialled is up (one bond per pair is enough). Stops
    /// when the worker is gone.
    async fn dial_while<C: Send + 'static>(
        self: Arc<Self>,
        ep: Endpoint,
        peer: EndpointAddr,
        inbox: Inbox<C>,
        wanted: impl Fn(&Self) -> bool,
    ) {
        let id = node_id_of(&peer.id);
        let mut stats = self.stats();
        let mut delay = REDIAL_DELAY_MIN;
        while wanted(&self) {
            if self.is_bonded(&peer.id) {
                // Woken by any change of the bond counters, e.g. that bond closing.
                if stats.changed().await.is_err() {
                    return;
                }
                continue;
            }
            match tokio::time::timeout(DIAL_TIMEOUT, ep.connect(peer.clone(), ALPN_BOND)).await {
                Ok(Ok(conn)) => {
                    if self
                        .serve(conn, Opening::Dialled, inbox.clone(), None)
                        .await
                    {
                        delay = REDIAL_DELAY_MIN;
                    }
                }
                Ok(Err(e)) => {
                    tracing::debug!(peer = %peer.id.fmt_short(), error = %e, "dial failed")
                }
                Err(_) => tracing::debug!(peer = %peer.id.fmt_short(), "dial timed out"),
            }
            if !self.is_bonded(&peer.id)
                && inbox.push(InboxItem::PeerReachable {
                    peer: id,
                    reachable: false,
                }) == Err(InboxError::Closed)
            {
                return; // the worker is gone
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(REDIAL_DELAY_MAX);
        }
    }

    fn refuse(&self, conn: &Connection, why: Refusal, detail: &str) {
        refuse_on(&self.stats, conn, why, detail);
        // Nobody listening is fine.
        let _ = self.events.send(BondEvent::Refused {
            peer: conn.remote_id(),
            reason: why,
            detail: detail.to_string(),
        });
    }

    /// Runs the handshake and then the bond until it ends. Returns whether it bonded.
    async fn serve<C: Send + 'static>(
        self: &Arc<Self>,
        conn: Connection,
        opening: Opening,
        inbox: Inbox<C>,
        handshake_permit: Option<BudgetPermit>,
    ) -> bool {
        let handshake =
            tokio::time::timeout(HANDSHAKE_TIMEOUT, self.handshake(&conn, opening)).await;
        let (send, recv, expires_at, tickets) = match handshake {
            Ok(Ok(bond)) => bond,
            Ok(Err((why, detail))) => {
                self.refuse(&conn, why, &detail);
                return false;
            }
            Err(_) => {
                self.refuse(&conn, Refusal::Timeout, "handshake did not finish in time");
                return false;
            }
        };
        drop(handshake_permit);
        let peer_key = conn.remote_id();
        let peer = node_id_of(&peer_key);
        {
            let mut keys = self.keys.lock().unwrap_or_else(|p| p.into_inner());
            if keys.len() >= KNOWN_KEYS_MAX && !keys.contains_key(&peer) {
                // Bounded: forget one that is not bonded now.
                let live = self.lock_peers();
                if let Some(gone) = keys.keys().copied().find(|k| !live.contains_key(k)) {
                    keys.remove(&gone);
                }
            }
            keys.insert(peer, peer_key);
        }
        let (tx, rx) = mpsc::channel(OUTGOING_FRAMES_MAX);
        let foreign = CancellationToken::new();
        let first = {
            let mut peers = self.lock_peers();
            let queues = peers.entry(peer).or_default();
            queues.push(LiveBond {
                frames: tx.clone(),
                foreign: foreign.clone(),
            });
            queues.len() == 1
        };
        self.stats.send_modify(|s| {
            s.bonded += 1;
            s.live += u64::from(first);
        });
        let _ = inbox.push(InboxItem::PeerReachable {
            peer,
            reachable: true,
        });
        if first {
            let _ = self.events.send(BondEvent::Up { peer: peer_key });
        }
        tracing::info!(peer = %peer_key.fmt_short(), %peer, "bonded");

        let snapshots = SnapshotSender {
            bonds: self.clone(),
            conn: conn.clone(),
            current: None,
        };
        let writer = AbortOnDrop(tokio::spawn(write_bond(send, rx, tickets, snapshots)));
        let receiver = AbortOnDrop(tokio::spawn(self.clone().receive_snapshots(
            conn.clone(),
            peer,
            inbox.clone(),
        )));
        let result = tokio::select! {
            result = self.read_bond(&conn, recv, peer, expires_at, &inbox) => result,
            () = foreign.cancelled() => Err((
                Refusal::OtherIncarnation,
                "the member found the peer's log descends from another founding of this group id".into(),
            )),
        };
        drop((writer, receiver));
        match &result {
            Ok(()) => conn.close(VarInt::from_u32(0), b"bye"),
            Err((why, detail)) => self.refuse(&conn, *why, detail),
        }
        let still_bonded = {
            let mut peers = self.lock_peers();
            if let Some(queues) = peers.get_mut(&peer) {
                queues.retain(|q| !q.frames.same_channel(&tx));
                if queues.is_empty() {
                    peers.remove(&peer);
                }
            }
            peers.contains_key(&peer)
        };
        self.stats.send_modify(|s| {
            s.closed += 1;
            s.live -= u64::from(!still_bonded);
        });
        if !still_bonded {
            let _ = inbox.push(InboxItem::PeerReachable {
                peer,
                reachable: false,
            });
            let _ = self.events.send(BondEvent::Down { peer: peer_key });
        }
        tracing::info!(peer = %peer_key.fmt_short(), %peer, "bond closed");
        true
    }

    async fn read_bond<C>(
        &self,
        conn: &Connection,
        recv: RecvStream,
        peer: NodeId,
        mut expires_at: u64,
        inbox: &Inbox<C>,
    ) -> Result<(), (Refusal, String)> {
        // Frames are read by their own task: a timeout here must never cancel a read
        // half-way through a frame (that would desynchronise the stream).
        let (tx, mut messages) = mpsc::channel(INCOMING_MESSAGES_MAX);
        let _reader = AbortOnDrop(tokio::spawn(read_messages(recv, tx)));
        let mut last_heard = tokio::time::Instant::now();
        let mut renewals = RenewalAllowance::new(last_heard);
        loop {
            let now = (self.config.clock)();
            if now >= expires_at {
                return Err((
                    Refusal::TicketExpired,
                    format!("the peer's tickets expired at {expires_at} and were not renewed"),
                ));
            }
            let expiry = tokio::time::Instant::now() + Duration::from_secs(expires_at - now);
            let idle = last_heard + IDLE_TIMEOUT;
            let (message, _read_ahead) =
                match tokio::time::timeout_at(expiry.min(idle), messages.recv()).await {
                    Err(_) if tokio::time::Instant::now() >= idle => {
                        return Err((Refusal::Timeout, "bond idle for too long".into()))
                    }
                    Err(_) => continue, // re-check expiry
                    Ok(None) => return Ok(()),
                    Ok(Some((Err(FrameError::Closed), _))) => return Ok(()),
                    // The connection went away (peer stopped, network cut): an ended bond, not
                    // a peer that sent garbage.
                    Ok(Some((Err(FrameError::Io(e)), _))) => {
                        tracing::info!(%peer, error = %e, "bond connection lost");
                        return Ok(());
                    }
                    Ok(Some((Err(e), _))) => return Err((Refusal::Malformed, e.to_string())),
                    // Its read-ahead bytes stay held until this message is handled.
                    Ok(Some((Ok(message), held))) => (message, held),
                };
            last_heard = tokio::time::Instant::now();
            match message {
                BondMessage::Ping => {}
                BondMessage::Tickets(tickets) if tickets.len() > TICKETS_PER_PEER_MAX => {
                    return Err((
                        Refusal::Malformed,
                        format!(
                            "{} renewed tickets, at most {TICKETS_PER_PEER_MAX} are read",
                            tickets.len()
                        ),
                    ))
                }
                BondMessage::Tickets(_) if !renewals.take(last_heard) => {
                    return Err((
                        Refusal::Malformed,
                        format!(
                            "ticket renewals faster than {RENEWALS_BURST} at once and one per \
                             {RENEWAL_REFILL:?} (each costs a quote verification)"
                        ),
                    ))
                }
                BondMessage::Tickets(tickets) => {
                    expires_at = self
                        .admit(conn, tickets)
                        .await
                        .map_err(|e| (Refusal::BadTicket, format!("renewed tickets: {e}")))?;
                    self.stats.send_modify(|s| s.renewals += 1);
                }
                // A snapshot's data names bytes in the receiver's own store, which only the
                // verified transfer on a stream of its own puts there.
                BondMessage::Frame(PeerFrame::Raft(Message {
                    body: MessageBody::InstallSnapshot { .. },
                    ..
                })) => {
                    return Err((
                        Refusal::Malformed,
                        "a snapshot on the message stream (snapshots have streams of their own)"
                            .into(),
                    ))
                }
                BondMessage::Frame(frame) => {
                    if let PeerFrame::Raft(m) = &frame {
                        crate::probe::mark_message(
                            m,
                            crate::probe::Hop::FollowerRead,
                            crate::probe::Hop::LeaderRead,
                        );
                    }
                    // Counted without waking watchers: this is the hot path.
                    self.stats.send_if_modified(|s| {
                        s.frames_in += 1;
                        false
                    });
                    match inbox.push(InboxItem::Frame { from: peer, frame }) {
                        Ok(()) | Err(InboxError::Full) => {} // full: dropped, as a congested link would
                        Err(InboxError::Closed) => return Ok(()),
                    }
                }
            }
        }
    }

    fn lock_peers(&self) -> std::sync::MutexGuard<'_, BTreeMap<NodeId, Vec<LiveBond>>> {
        self.peers.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn lock_added(&self) -> std::sync::MutexGuard<'_, BTreeSet<PublicKey>> {
        self.added.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Receives the snapshots `peer` sends on streams of their own, one at a time, and
    /// hands each verified one to the worker as the `InstallSnapshot` it stands for.
    async fn receive_snapshots<C>(
        self: Arc<Self>,
        conn: Connection,
        peer: NodeId,
        inbox: Inbox<C>,
    ) {
        while let Ok((mut send, mut recv)) = conn.accept_bi().await {
            let from_leader = |offer: &snapshot_transfer::Offer| match self.group_status.get() {
                Some(status) => snapshot_transfer::from_current_leader(offer, &status.borrow()),
                None => Err(snapshot_transfer::TransferError::NotFromLeader {
                    from: offer.from,
                    term: offer.term,
                    leader: None,
                    current_term: 0,
                }),
            };
            let received = snapshot_transfer::receive_snapshot(
                &mut recv,
                &mut send,
                peer,
                &from_leader,
                &self.resume,
                &self.config.snapshots,
            )
            .await;
            let message = match received {
                Ok(message) => message,
                Err(e) => {
                    tracing::warn!(%peer, error = %e, "snapshot transfer from peer failed");
                    self.stats.send_modify(|s| s.snapshot_failures += 1);
                    continue;
                }
            };
            let _ = send.finish();
            self.stats.send_modify(|s| s.snapshots_in += 1);
            let handle = snapshot_transfer::handle_of(&message);
            let frame = PeerFrame::Raft(message);
            if let Err(e) = inbox.push(InboxItem::Frame { from: peer, frame }) {
                // Full: dropped like any frame; the leader offers the snapshot again.
                if let Some(handle) = handle {
                    self.config.snapshots.release(&handle);
                }
                if e == InboxError::Closed {
                    return;
                }
            }
        }
    }
}

impl crate::discovery::PeerDialer for Bonds {
    fn is_bonded(&self, peer: &PublicKey) -> bool {
        Bonds::is_bonded(self, peer)
    }

    fn dial(&self, peer: EndpointAddr) {
        self.add_peer(peer);
    }

    fn forget(&self, peer: &PublicKey) {
        self.forget_peer(peer);
    }
}

impl Transport for Bonds {
    fn send(&self, to: NodeId, frame: PeerFrame) {
        if let Some(bond) = self.lock_peers().get(&to).and_then(|queues| queues.last()) {
            // A full queue drops the frame, as a congested link would; Raft retransmits.
            let _ = bond.frames.try_send(frame);
        }
    }

    fn disconnect_foreign(&self, peer: NodeId) {
        // Each bond's task closes its connection and counts the refusal; a later dial
        // either way is refused in the handshake, both sides now holding a log.
        for bond in self.lock_peers().get(&peer).into_iter().flatten() {
            bond.foreign.cancel();
        }
    }
}

#[cfg(test)]
mod tests;
