//! Bonds over iroh (DESIGN §6): the [`Transport`] between group members on real QUIC
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
use tokio::sync::{mpsc, watch};
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

/// Frames queued towards one peer before further ones are dropped.
pub const OUTGOING_FRAMES_MAX: usize = 8192;
/// Bound on the whole handshake, ticket validation included.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Incoming bond handshakes in progress at once; further bond connections are refused.
pub const HANDSHAKES_MAX: usize = 64;
/// Incoming bond handshakes in progress from one source address.
pub const HANDSHAKES_PER_SOURCE_MAX: usize = 8;
/// Incoming QUIC handshakes (any ALPN) in progress at once, and from one source address.
pub const CONNECTING_MAX: usize = 128;
pub const CONNECTING_PER_SOURCE_MAX: usize = 16;
/// The peer's first handshake frame (its group-key proof) must arrive within this.
pub const FIRST_FRAME_TIMEOUT: Duration = Duration::from_secs(3);
/// Largest first handshake frame: a group id, an HMAC and framing.
pub const PROOF_FRAME_BYTES_MAX: usize = 128;
/// Tickets a peer may present at once (one per validator kind, with room for a rollover).
pub const TICKETS_PER_PEER_MAX: usize = 4;
/// Largest tickets frame: [`TICKETS_PER_PEER_MAX`] tickets of the largest size, framed.
pub const TICKETS_FRAME_BYTES_MAX: usize =
    TICKETS_PER_PEER_MAX * (crate::tickets::TICKET_BYTES_MAX + 64) + 64;
/// Bound on dialling a peer.
pub const DIAL_TIMEOUT: Duration = Duration::from_secs(5);
/// How often a bond sends a ping.
pub const PING_INTERVAL: Duration = Duration::from_secs(2);
/// A bond that receives nothing for this long is closed.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(10);
const REDIAL_DELAY_MIN: Duration = Duration::from_millis(50);
const REDIAL_DELAY_MAX: Duration = Duration::from_secs(5);
/// Keys of peers that bonded, remembered for naming members ([`Bonds::key_of`]).
pub const KNOWN_KEYS_MAX: usize = 1024;
/// Peers learned at run time waiting to get a dialler; further ones are refused.
pub const DIAL_REQUESTS_MAX: usize = 256;
const PROOF_DOMAIN: &[u8] = b"tessera/bond/v1";

/// Which of the given peers a member dials.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dial {
    /// Founding members know each other: only the smaller key of a pair dials, so each
    /// pair has exactly one bond.
    SmallerKey,
    /// A joiner is unknown to the members: it dials every peer it was given.
    All,
}

/// Reason codes a refusing side closes the connection with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    Malformed = 1,
    WrongGroup = 2,
    BadProof = 3,
    BadTicket = 4,
    Timeout = 5,
    TicketExpired = 6,
    /// Not a refusal of ours: the peer refused us (counted so that it is visible).
    RefusedByPeer = 7,
    /// Too many handshakes in progress (in all, or from the peer's address).
    Busy = 8,
    /// The peer's log descends from another founding of this group id
    /// ([`crate::raft::Incarnation`]): another group that happens to share the id.
    OtherIncarnation = 9,
}

/// What a member brings to its bonds.
#[derive(Clone)]
pub struct BondConfig {
    pub group_id: GroupId,
    /// The group's secret key (never sent; only proven).
    pub group_key: GroupKey,
    pub network_id: String,
    /// Our current tickets; a change is sent to every bonded peer.
    pub tickets: watch::Receiver<Vec<Ticket>>,
    /// The group's validators.
    pub admission: Arc<Admission>,
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
    /// Handshakes refused or bonds closed by us, by reason (`WrongGroup`, `BadTicket:…`).
    pub refused: BTreeMap<String, u64>,
    /// Consensus frames received from bonded peers.
    pub frames_in: u64,
    /// Renewed tickets accepted from bonded peers.
    pub renewals: u64,
    /// Snapshots received whole and verified, and sent whole.
    pub snapshots_in: u64,
    pub snapshots_out: u64,
    /// Snapshot transfers that failed (cut off, declined, bad digest), both directions.
    pub snapshot_failures: u64,
    /// The latest refusals (at most [`RECENT_REFUSALS_MAX`]), oldest first.
    pub recent_refusals: Vec<RefusalRecord>,
}

/// Refusals kept in [`BondStats::recent_refusals`].
pub const RECENT_REFUSALS_MAX: usize = 32;

/// One refused handshake or closed bond.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RefusalRecord {
    pub peer: NodeId,
    pub reason: Refusal,
    pub detail: String,
}

impl BondStats {
    pub fn refused_total(&self) -> u64 {
        self.refused.values().sum()
    }

    /// Counts `record` and keeps it among the recent ones.
    pub(crate) fn record(&mut self, record: RefusalRecord) {
        *self
            .refused
            .entry(format!("{:?}", record.reason))
            .or_default() += 1;
        if self.recent_refusals.len() == RECENT_REFUSALS_MAX {
            self.recent_refusals.remove(0);
        }
        self.recent_refusals.push(record);
    }

    /// Counts a connection refused before it named a peer key or group (over budget).
    pub(crate) fn count(&mut self, reason: Refusal) {
        *self.refused.entry(format!("{reason:?}")).or_default() += 1;
    }
}

/// What travels on a bond after the handshake.
#[derive(Debug, Serialize, Deserialize)]
pub enum BondMessage {
    Frame(PeerFrame),
    /// Fresh tickets, sent before the previous ones expire.
    Tickets(Vec<Ticket>),
    Ping,
}

#[derive(Serialize, Deserialize)]
enum Confirm {
    Accepted,
}

/// The first handshake frame: small, and all a peer without the group key gets to send.
#[derive(Serialize, Deserialize)]
struct ProofHello {
    group_id: [u8; 32],
    proof: [u8; 32],
    /// The sender's incarnation, `None` while it is fresh.
    incarnation: Option<Incarnation>,
}

/// How a bond's connection came about.
enum Opening {
    /// We dialled: we open the stream and send our proof first.
    Dialled,
    /// The peer dialled; the gateway read its first frame to route it here.
    Accepted(Box<FirstFrame>),
}

/// The dialer's first frame, read by the gateway on the stream the dialer opened.
pub(crate) struct FirstFrame {
    send: SendStream,
    recv: RecvStream,
    hello: ProofHello,
}

impl FirstFrame {
    /// Accepts the stream a dialer opens and reads its small first frame, within
    /// [`FIRST_FRAME_TIMEOUT`]: all an unauthenticated peer gets to make us do.
    pub(crate) async fn read(conn: &Connection) -> Result<Self, (Refusal, String)> {
        let first = async {
            let (send, mut recv) = conn
                .accept_bi()
                .await
                .map_err(|e| (Refusal::Malformed, e.to_string()))?;
            let hello = read_proof(&mut recv).await?;
            Ok((send, recv, hello))
        };
        let (send, recv, hello) = tokio::time::timeout(FIRST_FRAME_TIMEOUT, first)
            .await
            .map_err(|_| {
                (
                    Refusal::Timeout,
                    format!("no group-key proof within {FIRST_FRAME_TIMEOUT:?}"),
                )
            })??;
        Ok(Self { send, recv, hello })
    }

    /// The group the dialer wants to bond in.
    pub(crate) fn group_id(&self) -> GroupId {
        GroupId(self.hello.group_id)
    }
}

async fn read_proof(recv: &mut RecvStream) -> Result<ProofHello, (Refusal, String)> {
    read_message_limited(recv, "bond proof", PROOF_FRAME_BYTES_MAX)
        .await
        .map_err(|e| (Refusal::Malformed, e.to_string()))
}

/// A group's side of the gateway's routing table: runs a bond whose first frame named
/// this group.
pub(crate) trait Acceptor: Send + Sync {
    fn accept(
        &self,
        conn: Connection,
        first: FirstFrame,
        permit: BudgetPermit,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>;
}

struct RoutedBonds<C> {
    bonds: Arc<Bonds>,
    inbox: Inbox<C>,
}

impl<C: Send + 'static> Acceptor for RoutedBonds<C> {
    fn accept(
        &self,
        conn: Connection,
        first: FirstFrame,
        permit: BudgetPermit,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>> {
        let (bonds, inbox) = (self.bonds.clone(), self.inbox.clone());
        Box::pin(async move {
            let opening = Opening::Accepted(Box::new(first));
            let cancel = bonds.cancel.clone();
            // Tracked too: closing the bonds waits for the bonds peers dialled.
            let _tracked = bonds.tasks.token();
            cancel
                .run_until_cancelled(bonds.serve(conn, opening, inbox, Some(permit)))
                .await;
        })
    }
}

/// Logs a refusal, counts it in `stats` (before the peer can see the close) and closes
/// the connection with its reason code.
pub(crate) fn refuse_on(
    stats: &watch::Sender<BondStats>,
    conn: &Connection,
    why: Refusal,
    detail: &str,
) {
    tracing::warn!(peer = %conn.remote_id().fmt_short(), reason = ?why, detail, "bond refused");
    let record = RefusalRecord {
        peer: node_id_of(&conn.remote_id()),
        reason: why,
        detail: detail.to_string(),
    };
    stats.send_modify(|s| s.record(record));
    let reason = format!("{why:?}: {detail}");
    conn.close(
        VarInt::from_u32(why as u32),
        &reason.as_bytes()[..reason.len().min(512)],
    );
}

/// The second handshake frame, sent and read only once the peer's proof verified.
#[derive(Serialize, Deserialize)]
struct TicketsHello {
    tickets: Vec<Ticket>,
}

/// The small id the consensus core uses for a peer key: the first 8 bytes of its SHA-256.
pub fn node_id_of(key: &PublicKey) -> NodeId {
    let digest = ring::digest::digest(&ring::digest::SHA256, key.as_bytes());
    let mut id = [0u8; 8];
    id.copy_from_slice(&digest.as_ref()[..8]);
    NodeId(u64::from_le_bytes(id))
}

/// The bonds of one member, and its [`Transport`].
pub struct Bonds {
    me: PublicKey,
    config: BondConfig,
    /// The outgoing queues of the live bonds, per peer. Usually one; two when both sides
    /// dialled at once (joiners dial everyone): frames go on the newest, and the peer
    /// counts as unreachable only once none is left.
    peers: Mutex<BTreeMap<NodeId, Vec<mpsc::Sender<PeerFrame>>>>,
    stats: watch::Sender<BondStats>,
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
    /// [`super::Groups`] gateway, which routes them here by group id
    /// ([`Bonds::acceptor`]). Every task it spawns is tracked and ends with
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

    fn proof(&self, conn: &Connection, dialer: bool) -> Result<[u8; 32], String> {
        let mut exporter = [0u8; 32];
        conn.export_keying_material(&mut exporter, PROOF_DOMAIN, &self.config.group_id.0)
            .map_err(|e| format!("no keying material on this connection: {e:?}"))?;
        let key = hmac::Key::new(hmac::HMAC_SHA256, self.config.group_key.as_bytes());
        let mut msg = Vec::with_capacity(PROOF_DOMAIN.len() + 32 + 8);
        msg.extend_from_slice(PROOF_DOMAIN);
        msg.extend_from_slice(&exporter);
        msg.extend_from_slice(if dialer { b"dialer" } else { b"acceptor" });
        let mut proof = [0u8; 32];
        proof.copy_from_slice(hmac::sign(&key, &msg).as_ref());
        Ok(proof)
    }

    fn refuse(&self, conn: &Connection, why: Refusal, detail: &str) {
        refuse_on(&self.stats, conn, why, detail);
    }

    /// This member's incarnation, as its worker last published it.
    fn incarnation(&self) -> Option<Incarnation> {
        self.group_status.get().and_then(|s| s.borrow().incarnation)
    }

    /// Validates `tickets` of the connection's peer, off the executor.
    async fn admit(&self, conn: &Connection, tickets: Vec<Ticket>) -> Result<u64, TicketError> {
        let admission = self.config.admission.clone();
        let ctx = PeerContext {
            peer_key: *conn.remote_id().as_bytes(),
            network_id: self.config.network_id.clone(),
            group_scope: None,
            now: (self.config.clock)(),
        };
        let verdicts = tokio::task::spawn_blocking(move || admission.admit(&tickets, &ctx))
            .await
            .map_err(|e| TicketError::Validator(format!("validation task failed: {e}")))??;
        Ok(verdicts.iter().map(|v| v.expires_at).min().unwrap_or(0))
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
        let first = {
            let mut peers = self.lock_peers();
            let queues = peers.entry(peer).or_default();
            queues.push(tx.clone());
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
        let result = self.read_bond(&conn, recv, peer, expires_at, &inbox).await;
        drop((writer, receiver));
        match &result {
            Ok(()) => conn.close(VarInt::from_u32(0), b"bye"),
            Err((why, detail)) => self.refuse(&conn, *why, detail),
        }
        let still_bonded = {
            let mut peers = self.lock_peers();
            if let Some(queues) = peers.get_mut(&peer) {
                queues.retain(|q| !q.same_channel(&tx));
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
        }
        tracing::info!(peer = %peer_key.fmt_short(), %peer, "bond closed");
        true
    }

    async fn handshake(
        &self,
        conn: &Connection,
        opening: Opening,
    ) -> Result<(SendStream, RecvStream, u64, watch::Receiver<Vec<Ticket>>), (Refusal, String)>
    {
        let malformed = |e: String| (Refusal::Malformed, e);
        let dialer = matches!(opening, Opening::Dialled);
        let ours = ProofHello {
            group_id: self.config.group_id.0,
            proof: self.proof(conn, dialer).map_err(malformed)?,
            incarnation: self.incarnation(),
        };
        let (mut send, mut recv, theirs) = match opening {
            // The dialer speaks first: the acceptor routes by the group id it names.
            Opening::Dialled => {
                let first = async {
                    let (mut send, mut recv) =
                        conn.open_bi().await.map_err(|e| malformed(e.to_string()))?;
                    write_message(&mut send, &ours)
                        .await
                        .map_err(|e| malformed(e.to_string()))?;
                    let theirs = read_proof(&mut recv).await?;
                    Ok::<_, (Refusal, String)>((send, recv, theirs))
                };
                // Due soon after the connection, as the acceptor's own first read is.
                tokio::time::timeout(FIRST_FRAME_TIMEOUT, first)
                    .await
                    .map_err(|_| {
                        (
                            Refusal::Timeout,
                            format!("no group-key proof within {FIRST_FRAME_TIMEOUT:?}"),
                        )
                    })??
            }
            Opening::Accepted(first) => {
                let FirstFrame {
                    mut send,
                    recv,
                    hello,
                } = *first;
                write_message(&mut send, &ours)
                    .await
                    .map_err(|e| malformed(e.to_string()))?;
                (send, recv, hello)
            }
        };
        if theirs.group_id != self.config.group_id.0 {
            return Err((
                Refusal::WrongGroup,
                "the peer derives another group id (key, consensus config, state machine or validators differ)".into(),
            ));
        }
        // Their proof was made with their role: the opposite of ours.
        let expected = self.proof(conn, !dialer).map_err(malformed)?;
        if !constant_time_eq(&expected, &theirs.proof) {
            return Err((
                Refusal::BadProof,
                "group key proof does not verify on this connection".into(),
            ));
        }
        // Both hold a log: it must descend from the same founding. (A fresh side joins
        // whichever group adds it; its incarnation is then that group's.)
        if let (Some(ours), Some(theirs)) = (self.incarnation(), theirs.incarnation) {
            if ours != theirs {
                return Err((
                    Refusal::OtherIncarnation,
                    format!(
                        "the peer's log descends from another founding of this group id \
                         (incarnation {theirs}, ours {ours}): a separately founded group"
                    ),
                ));
            }
        }
        // The tickets sent here are marked seen on this receiver: the writer sends every
        // later renewal, and none can slip between the hello and the writer starting.
        let mut tickets = self.config.tickets.clone();
        let ours = TicketsHello {
            tickets: tickets.borrow_and_update().clone(),
        };
        write_message(&mut send, &ours)
            .await
            .map_err(|e| malformed(e.to_string()))?;
        let theirs: TicketsHello =
            read_message_limited(&mut recv, "bond tickets", TICKETS_FRAME_BYTES_MAX)
                .await
                .map_err(|e| malformed(e.to_string()))?;
        if theirs.tickets.len() > TICKETS_PER_PEER_MAX {
            return Err(malformed(format!(
                "{} tickets presented, at most {TICKETS_PER_PEER_MAX} are read",
                theirs.tickets.len()
            )));
        }
        let expires_at = self
            .admit(conn, theirs.tickets)
            .await
            .map_err(|e| (Refusal::BadTicket, e.to_string()))?;
        // Both sides must accept before either counts the bond: a side that refuses closes
        // the connection instead of confirming.
        write_message(&mut send, &Confirm::Accepted)
            .await
            .map_err(|e| malformed(e.to_string()))?;
        match read_message::<_, Confirm>(&mut recv, "bond confirmation").await {
            Ok(Confirm::Accepted) => Ok((send, recv, expires_at, tickets)),
            Err(e) => Err((
                Refusal::RefusedByPeer,
                format!(
                    "the peer did not confirm the bond: {e} ({:?})",
                    conn.close_reason()
                ),
            )),
        }
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

    fn lock_peers(
        &self,
    ) -> std::sync::MutexGuard<'_, BTreeMap<NodeId, Vec<mpsc::Sender<PeerFrame>>>> {
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

/// The sending side of a bond's snapshot transfers: at most one in flight. The core
/// offers the same snapshot again while it waits; a transfer already under way for it
/// carries on instead of starting over.
struct SnapshotSender {
    bonds: Arc<Bonds>,
    conn: Connection,
    current: Option<((Index, Term), AbortOnDrop)>,
}

impl SnapshotSender {
    fn start(&mut self, message: Message) {
        let MessageBody::InstallSnapshot { snapshot } = &message.body else {
            return;
        };
        let key = (snapshot.meta.index, snapshot.meta.term);
        if let Some((current, task)) = &self.current {
            if *current == key && !task.0.is_finished() {
                return;
            }
        }
        let bonds = self.bonds.clone();
        let conn = self.conn.clone();
        let task = tokio::spawn(async move {
            let sent = async {
                let (offer, handle) = snapshot_transfer::offer_for(&message)?;
                let (mut send, mut recv) = tokio::time::timeout(DIAL_TIMEOUT, conn.open_bi())
                    .await
                    .map_err(|_| snapshot_transfer::TransferError::Timeout("opening a stream"))?
                    .map_err(|e| {
                        snapshot_transfer::TransferError::Frame(FrameError::Io(
                            std::io::Error::other(e),
                        ))
                    })?;
                let store = &bonds.config.snapshots;
                let bytes =
                    snapshot_transfer::send_snapshot(&mut recv, &mut send, &offer, store, &handle)
                        .await?;
                let _ = send.finish();
                Ok::<_, snapshot_transfer::TransferError>(bytes)
            };
            match sent.await {
                Ok(bytes) => {
                    tracing::debug!(index = key.0, bytes, "snapshot sent");
                    bonds.stats.send_modify(|s| s.snapshots_out += 1);
                }
                Err(e) => {
                    tracing::warn!(index = key.0, error = %e, "snapshot transfer to peer failed");
                    bonds.stats.send_modify(|s| s.snapshot_failures += 1);
                }
            }
        });
        self.current = Some((key, AbortOnDrop(task)));
    }

    /// The message to put on the bond stream for `frame`, or `None` when it is a snapshot
    /// (which goes on a stream of its own).
    fn route(&mut self, frame: PeerFrame) -> Option<BondMessage> {
        match frame {
            PeerFrame::Raft(message)
                if matches!(message.body, MessageBody::InstallSnapshot { .. }) =>
            {
                self.start(message);
                None
            }
            frame => Some(BondMessage::Frame(frame)),
        }
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
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
        if let Some(tx) = self.lock_peers().get(&to).and_then(|queues| queues.last()) {
            // A full queue drops the frame, as a congested link would; Raft retransmits.
            let _ = tx.try_send(frame);
        }
    }
}

/// Messages read ahead of the bond loop.
const INCOMING_MESSAGES_MAX: usize = 1024;
/// Bytes of messages read ahead of the bond loop (frames are up to 16 MiB each: counting
/// messages alone would let one bond buffer 16 GiB).
pub const READ_AHEAD_BYTES_MAX: usize = 32 << 20;
/// Ticket renewals a bond takes in a burst, and how fast that allowance refills: each
/// costs a full quote verification, and a correct peer renews at half its tickets'
/// lifetime (at most once a second).
pub const RENEWALS_BURST: u32 = 3;
pub const RENEWAL_REFILL: Duration = Duration::from_secs(1);

/// A token bucket for a bond's ticket renewals.
#[derive(Debug)]
struct RenewalAllowance {
    tokens: u32,
    refilled_at: tokio::time::Instant,
}

impl RenewalAllowance {
    fn new(now: tokio::time::Instant) -> Self {
        Self {
            tokens: RENEWALS_BURST,
            refilled_at: now,
        }
    }

    /// Takes one renewal if the allowance has one at `now`.
    fn take(&mut self, now: tokio::time::Instant) -> bool {
        let periods = now.saturating_duration_since(self.refilled_at).as_millis()
            / RENEWAL_REFILL.as_millis().max(1);
        if periods > 0 {
            let periods = u32::try_from(periods).unwrap_or(u32::MAX);
            self.tokens = self.tokens.saturating_add(periods).min(RENEWALS_BURST);
            self.refilled_at += RENEWAL_REFILL * periods.min(RENEWALS_BURST);
            if self.tokens == RENEWALS_BURST {
                self.refilled_at = now;
            }
        }
        if self.tokens == 0 {
            return false;
        }
        self.tokens -= 1;
        true
    }
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A message read ahead, holding its size in the bond's read-ahead budget until handled.
type ReadAhead = (
    Result<BondMessage, FrameError>,
    Option<tokio::sync::OwnedSemaphorePermit>,
);

/// Reads the bond's messages ahead of the bond loop, at most [`INCOMING_MESSAGES_MAX`]
/// messages and [`READ_AHEAD_BYTES_MAX`] bytes: a frame is read only once its size fits.
async fn read_messages(mut recv: RecvStream, tx: mpsc::Sender<ReadAhead>) {
    let budget = Arc::new(tokio::sync::Semaphore::new(READ_AHEAD_BYTES_MAX));
    loop {
        let (message, permit) = match crate::net::read_frame(&mut recv).await {
            Ok(body) => {
                // Frames are at most FRAME_BYTES_MAX < READ_AHEAD_BYTES_MAX: always fits.
                let size = u32::try_from(body.len()).unwrap_or(u32::MAX);
                let Ok(permit) = budget.clone().acquire_many_owned(size.max(1)).await else {
                    return;
                };
                let message =
                    postcard::from_bytes::<BondMessage>(&body).map_err(|e| FrameError::Decode {
                        what: "bond message",
                        reason: e.to_string(),
                    });
                (message, Some(permit))
            }
            Err(e) => (Err(e), None),
        };
        let stop = message.is_err();
        if tx.send((message, permit)).await.is_err() || stop {
            return;
        }
    }
}

/// Most frames coalesced into one stream write.
const FRAMES_PER_WRITE_MAX: usize = 256;

async fn write_bond(
    mut send: SendStream,
    mut rx: mpsc::Receiver<PeerFrame>,
    mut tickets: watch::Receiver<Vec<Ticket>>,
    mut snapshots: SnapshotSender,
) {
    let mut ping = tokio::time::interval(PING_INTERVAL);
    let mut buf = Vec::new();
    loop {
        let message = tokio::select! {
            frame = rx.recv() => match frame {
                Some(frame) => match snapshots.route(frame) {
                    Some(message) => message,
                    None => continue,
                },
                None => return,
            },
            changed = tickets.changed() => match changed {
                Ok(()) => BondMessage::Tickets(tickets.borrow_and_update().clone()),
                Err(_) => return,
            },
            _ = ping.tick() => BondMessage::Ping,
        };
        // Coalesce what is already queued into one write: fewer syscalls and packets. A
        // frame that does not encode (over the frame limit) is dropped alone; `buf` keeps
        // the others.
        buf.clear();
        let encode = |buf: &mut Vec<u8>, message: &BondMessage| {
            if let Err(e) = encode_message(buf, message) {
                tracing::warn!(error = %e, "bond frame not sent");
            }
        };
        encode(&mut buf, &message);
        for _ in 0..FRAMES_PER_WRITE_MAX {
            let Ok(frame) = rx.try_recv() else { break };
            if let Some(message) = snapshots.route(frame) {
                encode(&mut buf, &message);
            }
        }
        if buf.is_empty() {
            continue;
        }
        if let Err(e) = tokio::io::AsyncWriteExt::write_all(&mut send, &buf).await {
            tracing::debug!(error = %e, "bond write failed");
            return;
        }
    }
}

/// The streams of a bond whose handshake [`dial_raw`] completed.
#[doc(hidden)]
pub struct RawBond {
    pub connection: Connection,
    pub send: SendStream,
    pub recv: RecvStream,
}

/// For tests and tools: dials `peer` and runs the bond handshake exactly as a member does
/// (the same code, so the peer admits and counts the bond), then hands over the raw
/// streams instead of running the bond, so that the caller can speak — or break — the
/// protocol after the handshake. Needs what a member needs: the group key and a ticket
/// the peer accepts.
#[doc(hidden)]
pub async fn dial_raw(
    endpoint: &Endpoint,
    config: BondConfig,
    peer: EndpointAddr,
) -> Result<RawBond, String> {
    let (bonds, _) = Bonds::unstarted(endpoint.id(), config, BTreeSet::new());
    let connection = tokio::time::timeout(DIAL_TIMEOUT, endpoint.connect(peer, ALPN_BOND))
        .await
        .map_err(|_| "dial timed out".to_string())?
        .map_err(|e| format!("dial failed: {e}"))?;
    let (send, recv, _, _) = tokio::time::timeout(
        HANDSHAKE_TIMEOUT,
        bonds.handshake(&connection, Opening::Dialled),
    )
    .await
    .map_err(|_| "handshake timed out".to_string())?
    .map_err(|(why, detail)| format!("{why:?}: {detail}"))?;
    Ok(RawBond {
        connection,
        send,
        recv,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renewals_come_in_a_small_burst_then_one_per_refill() {
        let start = tokio::time::Instant::now();
        let mut allowance = RenewalAllowance::new(start);
        for i in 0..RENEWALS_BURST {
            assert!(allowance.take(start), "renewal {i} of the burst");
        }
        assert!(!allowance.take(start), "beyond the burst");
        assert!(!allowance.take(start + RENEWAL_REFILL / 2));
        assert!(
            allowance.take(start + RENEWAL_REFILL),
            "one more per refill"
        );
        assert!(!allowance.take(start + RENEWAL_REFILL));
        // A long quiet spell refills the burst, no more.
        let later = start + RENEWAL_REFILL * 100;
        for _ in 0..RENEWALS_BURST {
            assert!(allowance.take(later));
        }
        assert!(!allowance.take(later));
    }
}
