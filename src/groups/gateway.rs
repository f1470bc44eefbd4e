//! [`Groups`]: the gateway of one iroh endpoint to every group it takes part in.
//!
//! It owns the table of joined groups (one entry per [`GroupId`]; joining the same group
//! again returns the existing handle) and the bond protocol's accept side,
//! [`BondProtocol`], which an iroh [`Router`] mounts on [`ALPN_BOND`]: each incoming bond
//! names its group in its first small frame, and the gateway hands it to that group's
//! bonds. It does no consensus and no ticket validation itself: a connection for a group
//! this node has not joined is refused after a few hundred bytes and an HMAC-free lookup.
//!
//! Work for unauthenticated peers stays bounded here, as in the bonds: QUIC handshakes in
//! progress ([`CONNECTING_MAX`], per source [`CONNECTING_PER_SOURCE_MAX`]) and bond
//! handshakes before they finish ([`HANDSHAKES_MAX`], [`HANDSHAKES_PER_SOURCE_MAX`]), over
//! every group at once.
//!
//! Shutdown goes through the router ([`Router::shutdown`] calls
//! [`ProtocolHandler::shutdown`]) or [`Groups::shutdown`]: every group's worker stops, its
//! bonds close, and their tasks are awaited.
use std::any::Any;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use iroh::endpoint::{Accepting, Connection};
use iroh::protocol::{AcceptError, ProtocolHandler, Router};
use iroh::{Endpoint, EndpointAddr};
use tokio::sync::watch;

use super::bond::{
    node_id_of, refuse_on, Acceptor, BondConfig, BondStats, Bonds, Dial, FirstFrame, Refusal,
    CONNECTING_MAX, CONNECTING_PER_SOURCE_MAX, DIAL_TIMEOUT, HANDSHAKES_MAX,
    HANDSHAKES_PER_SOURCE_MAX,
};
use super::formation::founding_set;
use super::id::{GroupId, GroupKey};
use super::{start, ConsensusConfig, Group, MemberOptions, StartError, WorkerConfig};
use crate::machine::StateMachine;
use crate::net::{accept_within, AcceptFailure, Budget, BudgetPermit, Source, ALPN_BOND};
use crate::raft::{Membership, RaftConfig};
use crate::storage::{MemoryStorage, Storage};
use crate::tickets::{Admission, Clock, TdxTicketIssuer, Ticket, TicketValidator};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// What every group on one endpoint shares.
#[derive(Clone)]
pub struct GroupsConfig {
    /// The network this node belongs to: tickets name it, and peers of another refuse us.
    pub network_id: String,
    /// Seconds since the Unix epoch, as tickets are checked against.
    pub clock: Clock,
    /// The tickets this node presents to its peers (see
    /// [`keep_tickets_fresh`](super::keep_tickets_fresh)); none by default. Replaced by
    /// the gateway's own when an [`issuer`](Self::issuer) is given.
    pub tickets: watch::Receiver<Vec<Ticket>>,
    /// Issues this node's tickets: the gateway issues the first when it is created and
    /// renews them at half their lifetime, until it shuts down.
    pub issuer: Option<Arc<TdxTicketIssuer>>,
}

impl GroupsConfig {
    /// A node of `network_id` that presents no tickets (add them with
    /// [`GroupsConfig::with_tickets`]).
    pub fn new(network_id: impl Into<String>, clock: Clock) -> Self {
        Self {
            network_id: network_id.into(),
            clock,
            tickets: watch::channel(Vec::new()).1,
            issuer: None,
        }
    }

    /// Tickets issued by `issuer` for the endpoint's key, issued when the gateway is
    /// created and renewed by it at half their lifetime (retried with backoff when issuing
    /// fails), so that peers always hold a valid one.
    pub fn with_issuer(mut self, issuer: Arc<TdxTicketIssuer>) -> Self {
        self.issuer = Some(issuer);
        self
    }

    /// The tickets this node presents, kept fresh by whoever sends on the channel
    /// (rather than by the gateway, as [`with_issuer`](Self::with_issuer) does).
    pub fn with_tickets(mut self, tickets: watch::Receiver<Vec<Ticket>>) -> Self {
        self.tickets = tickets;
        self
    }
}

/// Why [`GroupBuilder::join`] failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum JoinError {
    /// The member could not start (its storage or snapshot, say).
    #[error("could not start the member: {0}")]
    Start(#[from] StartError),
    /// The group runs here already, with a state machine of another type.
    #[error("group {0} is already joined on this endpoint with another state machine type")]
    OtherMachine(GroupId),
    /// [`Groups::shutdown`] ran: the gateway takes no new member.
    #[error("the gateway is shut down")]
    ShutDown,
}

/// One joined group in the gateway's table.
struct Joined {
    /// Which member this is: a member that stops leaves the table only if it is still the
    /// one there (a new member of the same group may have taken its place).
    serial: u64,
    /// Where bonds that name this group go.
    acceptor: Arc<dyn Acceptor>,
    /// The application's handle, a `Group<M>`.
    handle: Box<dyn Any + Send + Sync>,
    /// Stops the member: its worker, then its bonds.
    stop: Box<dyn Fn() -> futures_stop::Stop + Send + Sync>,
}

mod futures_stop {
    /// A boxed future that stops one member.
    pub(super) type Stop = std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>;
}

struct Inner {
    endpoint: Endpoint,
    config: GroupsConfig,
    joined: Mutex<BTreeMap<GroupId, Joined>>,
    /// The next [`Joined::serial`].
    serials: std::sync::atomic::AtomicU64,
    shut_down: std::sync::atomic::AtomicBool,
    /// QUIC handshakes in progress on the bond ALPN, in all and per source.
    connecting: Budget,
    /// Bond handshakes before they finish, in all and per source, over every group.
    handshakes: Budget,
    /// Connections refused before they reached a group (over budget, unknown group).
    stats: watch::Sender<BondStats>,
    /// Ends the gateway's own tasks (ticket renewal) at shutdown.
    cancel: CancellationToken,
    tasks: TaskTracker,
}

/// The gateway of one endpoint to its groups. Cheap to clone.
#[derive(Clone)]
pub struct Groups {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Groups {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Groups")
            .field(
                "endpoint",
                &self.inner.endpoint.id().fmt_short().to_string(),
            )
            .field("groups", &self.list())
            .finish()
    }
}

impl Groups {
    /// The gateway of `endpoint`. Mount [`Groups::bond_protocol`] on the endpoint's router
    /// (or use [`Groups::spawn_router`]) so that peers can bond. With an
    /// [`issuer`](GroupsConfig::with_issuer) it issues this node's first ticket now and
    /// must run inside a tokio runtime.
    pub fn new(endpoint: Endpoint, mut config: GroupsConfig) -> Self {
        let cancel = CancellationToken::new();
        let tasks = TaskTracker::new();
        if let Some(issuer) = config.issuer.clone() {
            let stop = cancel.clone().cancelled_owned();
            let (tickets, renewal) = super::ticket_renewal::first_and_renewal(
                issuer,
                *endpoint.id().as_bytes(),
                config.clock.clone(),
                stop,
            );
            config.tickets = tickets;
            match tokio::runtime::Handle::try_current() {
                Ok(runtime) => {
                    tasks.spawn_on(renewal, &runtime);
                }
                Err(_) => tracing::error!(
                    "the groups gateway was created outside a tokio runtime: its tickets will not be renewed"
                ),
            }
        }
        tasks.close();
        Self {
            inner: Arc::new(Inner {
                endpoint,
                config,
                joined: Mutex::new(BTreeMap::new()),
                serials: std::sync::atomic::AtomicU64::new(0),
                shut_down: std::sync::atomic::AtomicBool::new(false),
                connecting: Budget::new(
                    "QUIC handshakes",
                    CONNECTING_MAX,
                    CONNECTING_PER_SOURCE_MAX,
                ),
                handshakes: Budget::new(
                    "bond handshakes",
                    HANDSHAKES_MAX,
                    HANDSHAKES_PER_SOURCE_MAX,
                ),
                stats: watch::channel(BondStats::default()).0,
                cancel,
                tasks,
            }),
        }
    }

    /// The tickets this node presents to its peers now (and every renewal): give them to
    /// the endpoint's other protocols (the client service, discovery).
    pub fn tickets(&self) -> watch::Receiver<Vec<Ticket>> {
        self.inner.config.tickets.clone()
    }

    /// The handler of [`ALPN_BOND`] for an iroh [`Router`].
    pub fn bond_protocol(&self) -> BondProtocol {
        BondProtocol {
            groups: self.clone(),
            pending: Arc::default(),
        }
    }

    /// A router on the endpoint that serves the bond protocol only. An application with
    /// protocols of its own builds the router itself and mounts [`Groups::bond_protocol`].
    pub fn spawn_router(&self) -> Router {
        Router::builder(self.inner.endpoint.clone())
            .accept(ALPN_BOND, self.bond_protocol())
            .spawn()
    }

    /// The budget of incoming QUIC handshakes in progress (in all and per source) that the
    /// bond protocol holds. Give it to the endpoint's other protocol handlers
    /// ([`crate::client::ClientProtocol`], [`crate::discovery::Discovery::protocol`]) so
    /// that one flood, on any ALPN, costs only its source's share of one budget.
    pub fn connecting_budget(&self) -> Budget {
        self.inner.connecting.clone()
    }

    /// The endpoint this gateway serves.
    pub fn endpoint(&self) -> &Endpoint {
        &self.inner.endpoint
    }

    /// Starts building a member of the group of `key`.
    pub fn with_key(&self, key: GroupKey) -> GroupBuilder<'_> {
        GroupBuilder::new(self, key)
    }

    /// The groups joined on this endpoint now.
    pub fn list(&self) -> Vec<GroupId> {
        self.lock().keys().copied().collect()
    }

    /// The handle of a joined group, if it runs state machine `M`.
    pub fn get<M: StateMachine>(&self, id: GroupId) -> Option<Group<M>> {
        self.lock()
            .get(&id)
            .and_then(|joined| joined.handle.downcast_ref::<Group<M>>().cloned())
    }

    /// Connections refused before they reached a group: over budget (`Busy`), a group
    /// not joined here (`WrongGroup`), no first frame (`Timeout`, `Malformed`).
    pub fn stats(&self) -> watch::Receiver<BondStats> {
        self.inner.stats.subscribe()
    }

    /// Stops every group (worker, bonds, their tasks) and refuses further joins. The
    /// router's shutdown calls this.
    pub async fn shutdown(&self) {
        self.inner
            .shut_down
            .store(true, std::sync::atomic::Ordering::SeqCst);
        let stops: Vec<_> = {
            let mut joined = self.lock();
            std::mem::take(&mut *joined)
                .into_values()
                .map(|j| (j.stop)())
                .collect()
        };
        for stop in stops {
            stop.await;
        }
        self.inner.cancel.cancel();
        self.inner.tasks.wait().await;
    }

    /// For tests and tools: routes bonds that name `bonds`' group to these bonds, which
    /// were started by hand ([`Bonds::start`]) without a member. Returns false when that
    /// group is joined here already. Feature `test-util`.
    #[cfg(any(test, feature = "test-util"))]
    pub fn serve_bonds<C: Send + 'static>(
        &self,
        bonds: &Arc<Bonds>,
        inbox: super::Inbox<C>,
    ) -> bool {
        let mut joined = self.lock();
        let id = bonds.group_id();
        if joined.contains_key(&id) {
            return false;
        }
        let closing = bonds.clone();
        joined.insert(
            id,
            Joined {
                serial: self.next_serial(),
                acceptor: bonds.acceptor(inbox),
                handle: Box::new(()),
                stop: Box::new(move || {
                    let bonds = closing.clone();
                    Box::pin(async move { bonds.close().await })
                }),
            },
        );
        true
    }

    /// Forgets group `id` if member `serial` is still the one joined (it stopped).
    pub(super) fn detach(&self, id: GroupId, serial: u64) {
        let mut joined = self.lock();
        if joined.get(&id).is_some_and(|j| j.serial == serial) {
            joined.remove(&id);
        }
    }

    fn next_serial(&self) -> u64 {
        self.inner
            .serials
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<GroupId, Joined>> {
        self.inner.joined.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn acceptor(&self, id: GroupId) -> Option<Arc<dyn Acceptor>> {
        self.lock().get(&id).map(|j| j.acceptor.clone())
    }
}

/// The accept side of the bond protocol, for an iroh [`Router`] ([`Groups::bond_protocol`]).
#[derive(Clone)]
pub struct BondProtocol {
    groups: Groups,
    /// Handshake permits taken in `on_accepting` (or why not), by connection, until
    /// `accept` runs.
    pending: Arc<Mutex<HashMap<usize, Pending>>>,
}

type Pending = Result<BudgetPermit, crate::net::OverBudget>;

impl BondProtocol {
    fn lock_pending(&self) -> std::sync::MutexGuard<'_, HashMap<usize, Pending>> {
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl std::fmt::Debug for BondProtocol {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BondProtocol").finish_non_exhaustive()
    }
}

impl ProtocolHandler for BondProtocol {
    async fn on_accepting(&self, accepting: Accepting) -> Result<Connection, AcceptError> {
        // Bounded, in all and per source: a flood of connections cannot make us run
        // unboundedly many QUIC handshakes, nor lock out other hosts.
        let inner = &self.groups.inner;
        let (conn, source) = accept_within(&inner.connecting, accepting, DIAL_TIMEOUT)
            .await
            .inspect_err(|failure| {
                if matches!(failure, AcceptFailure::OverBudget(_)) {
                    inner.stats.send_modify(|s| s.count(Refusal::Busy));
                }
            })?;
        // Taken now, while the source address is known, and held until the bond's
        // handshake ends; over budget, `accept` closes the connection as busy.
        let handshake = inner.handshakes.try_acquire(source);
        self.lock_pending().insert(conn.stable_id(), handshake);
        Ok(conn)
    }

    async fn accept(&self, conn: Connection) -> Result<(), AcceptError> {
        let inner = &self.groups.inner;
        // Not through `on_accepting` (the router always calls it first): budgeted as a
        // source of its own.
        let permit = self.lock_pending().remove(&conn.stable_id());
        let permit = permit.unwrap_or_else(|| inner.handshakes.try_acquire(Source::Other));
        let permit = match permit {
            Ok(permit) => permit,
            Err(over) => {
                refuse_on(&inner.stats, &conn, Refusal::Busy, &over.to_string());
                return Ok(());
            }
        };
        let first = match FirstFrame::read(&conn).await {
            Ok(first) => first,
            Err((why, detail)) => {
                refuse_on(&inner.stats, &conn, why, &detail);
                return Ok(());
            }
        };
        match self.groups.acceptor(first.group_id()) {
            Some(acceptor) => acceptor.accept(conn, first, permit).await,
            None => refuse_on(
                &inner.stats,
                &conn,
                Refusal::WrongGroup,
                "no group with this id here (the key, consensus config, state machine or \
                 validators differ)",
            ),
        }
        Ok(())
    }

    async fn shutdown(&self) {
        self.groups.shutdown().await;
    }
}

/// Builds a member of one group on a [`Groups`] gateway:
/// `groups.with_key(key).with_state_machine(m).require_ticket(v).with_peers(p).join().await?`.
///
/// Formation by default: a fresh node founds the group with the peers it was given once
/// every one of them is bonded and confirms the same founding set, and joins instead if
/// one of them already is in a group (architecture.md §7.2). With no peers it founds a
/// group of one at once. A node with state never founds again.
pub struct GroupBuilder<'g, M = (), S = MemoryStorage> {
    groups: &'g Groups,
    settings: Settings,
    machine: M,
    storage: S,
}

/// Everything a [`GroupBuilder`] holds besides the machine and the storage.
struct Settings {
    key: GroupKey,
    raft: RaftConfig,
    worker: WorkerConfig,
    validators: Vec<Arc<dyn TicketValidator>>,
    peers: Vec<EndpointAddr>,
    formation: Formation,
    request_timeout: Duration,
}

/// How a fresh member comes into a group.
#[derive(Clone, Copy, Debug)]
enum Formation {
    /// Found with the peers once all confirm the same set (or join a group one is in).
    Expect(Option<usize>),
    /// Found with the peers at once, unconfirmed: every founder lists the same set.
    AtOnce,
    /// Never found: wait to be added to a group one of the peers is in.
    JoinOnly,
}

impl<'g> GroupBuilder<'g> {
    fn new(groups: &'g Groups, key: GroupKey) -> Self {
        Self {
            groups,
            settings: Settings {
                key,
                raft: RaftConfig::default(),
                worker: WorkerConfig::default(),
                validators: Vec::new(),
                peers: Vec::new(),
                formation: Formation::Expect(None),
                request_timeout: Duration::from_secs(10),
            },
            machine: (),
            storage: MemoryStorage::new(),
        }
    }
}

impl<'g, M, S> GroupBuilder<'g, M, S> {
    /// The replicated state machine (part of the group id: members must agree).
    pub fn with_state_machine<M2: StateMachine>(self, machine: M2) -> GroupBuilder<'g, M2, S> {
        GroupBuilder {
            groups: self.groups,
            settings: self.settings,
            machine,
            storage: self.storage,
        }
    }

    /// Where the log, hard state and snapshots live (memory by default).
    pub fn with_storage<S2: Storage + Send + 'static>(
        self,
        storage: S2,
    ) -> GroupBuilder<'g, M, S2> {
        GroupBuilder {
            groups: self.groups,
            settings: self.settings,
            machine: self.machine,
            storage,
        }
    }

    /// Consensus parameters (part of the group id: members must agree). Default:
    /// [`ConsensusConfig::default`].
    pub fn with_consensus(mut self, config: &ConsensusConfig) -> Self {
        self.settings.raft = config.raft().clone();
        self.settings.worker = config.worker().clone();
        self
    }

    /// Peers must present a ticket this validator accepts (validators add up: all must
    /// pass; their signatures are part of the group id).
    pub fn require_ticket(mut self, validator: Arc<dyn TicketValidator>) -> Self {
        self.settings.validators.push(validator);
        self
    }

    /// Peers to bond with; a fresh node founds the group with them (see the type's doc).
    pub fn with_peers(mut self, peers: Vec<EndpointAddr>) -> Self {
        self.settings.peers = peers;
        self
    }

    /// A fresh node founds only if this node and its peers count `n`, once every founder
    /// is bonded and has confirmed the same set; with another count it only joins.
    /// `n = 1` makes a group of one at once.
    pub fn bootstrap_expect(mut self, n: usize) -> Self {
        self.settings.formation = Formation::Expect(Some(n.max(1)));
        self
    }

    /// A fresh node founds the group with itself and its peers as voters at once, without
    /// waiting for them to confirm: for static configurations where every founder is
    /// given the same peers. Only the smaller key of each founding pair dials.
    pub fn found_at_once(mut self) -> Self {
        self.settings.formation = Formation::AtOnce;
        self
    }

    /// A fresh node never founds a group: it waits to be added to the group one of its
    /// peers is in.
    pub fn join_only(mut self) -> Self {
        self.settings.formation = Formation::JoinOnly;
        self
    }

    /// Upper bound on one `execute` or `query`, retries included.
    pub fn with_request_timeout(mut self, timeout: Duration) -> Self {
        self.settings.request_timeout = timeout;
        self
    }
}

impl<M: StateMachine, S: Storage + Send + 'static> GroupBuilder<'_, M, S> {
    /// The id of the group this builder joins. It covers the machine as members run it:
    /// inside the exactly-once session table ([`crate::machine::Sessions`]), whose own
    /// bounds and format version members must agree on too.
    pub fn group_id(&self) -> GroupId {
        let signatures: Vec<[u8; 32]> = self
            .settings
            .validators
            .iter()
            .map(|v| v.signature())
            .collect();
        let machine = crate::machine::sessions_signature(
            &self.machine.signature(),
            &crate::machine::SessionConfig::default(),
        );
        GroupId::derive(
            &self.settings.key,
            &self.settings.raft,
            self.settings.worker.tick.as_micros() as u64,
            &machine,
            &signatures,
        )
    }

    /// Starts the member (or returns the handle of the one already running on this
    /// endpoint for the same group id). Must run inside a tokio runtime.
    pub async fn join(self) -> Result<Group<M>, JoinError> {
        let groups = self.groups.clone();
        let inner = &groups.inner;
        let id = self.group_id();
        // The table stays locked from the check to the insert: two joins of one id race
        // to one member, and a join racing the gateway's shutdown either sees the flag
        // (set before shutdown takes the table) or is in the table shutdown takes.
        let mut joined = groups.lock();
        if inner.shut_down.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(JoinError::ShutDown);
        }
        if let Some(existing) = joined.get(&id) {
            match existing.handle.downcast_ref::<Group<M>>() {
                None => return Err(JoinError::OtherMachine(id)),
                Some(group) if group.status().stopped.is_none() => return Ok(group.clone()),
                // It stopped by itself (a storage failure, say): its bonds are closed and
                // a new member starts in its place.
                Some(_) => {
                    if let Some(stopped) = joined.remove(&id) {
                        tokio::spawn((stopped.stop)());
                    }
                }
            }
        }
        let endpoint = inner.endpoint.clone();
        let me = node_id_of(&endpoint.id());
        let peer_ids = || self.settings.peers.iter().map(|p| node_id_of(&p.id));
        let mut worker = self.settings.worker.clone();
        let (bootstrap, dial) = match self.settings.formation {
            Formation::AtOnce => (
                Some(Membership::with_voters(
                    std::iter::once(me).chain(peer_ids()),
                )),
                Dial::SmallerKey,
            ),
            Formation::JoinOnly => (None, Dial::All),
            Formation::Expect(expect) => {
                let expect = expect.unwrap_or(1 + self.settings.peers.len());
                if expect == 1 {
                    (Some(Membership::with_voters([me])), Dial::All)
                } else {
                    worker.founders = match founding_set(me, peer_ids(), expect) {
                        Ok(founders) => Some(founders),
                        Err(e) => {
                            tracing::warn!(node = %me, "{e}");
                            None
                        }
                    };
                    // A joiner, or a founder that may be known to none of the others,
                    // dials everyone it was given.
                    (None, Dial::All)
                }
            }
        };
        let options = MemberOptions {
            node: me,
            group_id: id,
            network_id: inner.config.network_id.clone(),
            raft: self.settings.raft.clone(),
            worker,
            seed: u64::from_le_bytes(endpoint.id().as_bytes()[..8].try_into().unwrap_or_default()),
            request_timeout: self.settings.request_timeout,
            bootstrap,
        };
        let config = BondConfig {
            group_id: id,
            group_key: self.settings.key.clone(),
            network_id: inner.config.network_id.clone(),
            tickets: inner.config.tickets.clone(),
            admission: Arc::new(Admission::new(self.settings.validators.clone())),
            clock: inner.config.clock.clone(),
            snapshots: self.storage.snapshot_store(),
        };
        let mut started = None;
        let peers = self.settings.peers.clone();
        let group = start(options, self.machine, self.storage, |inbox, _snapshots| {
            let bonds = Bonds::start(endpoint, config, inbox.clone(), peers, dial);
            started = Some((bonds.clone(), bonds.acceptor(inbox)));
            bonds
        })?;
        let Some((bonds, acceptor)) = started else {
            return Err(JoinError::Start(StartError::Thread(std::io::Error::other(
                "transport not started",
            ))));
        };
        // Snapshots are taken only from the leader the worker follows, in its term.
        bonds.follow_group(group.status_receiver());
        let gateway = Arc::downgrade(&groups.inner);
        let serial = groups.next_serial();
        group.attach(
            bonds,
            Box::new(move || {
                if let Some(inner) = gateway.upgrade() {
                    Groups { inner }.detach(id, serial);
                }
            }),
        );
        let stopping = group.clone();
        joined.insert(
            id,
            Joined {
                serial,
                acceptor,
                handle: Box::new(group.clone()),
                stop: Box::new(move || {
                    let group = stopping.clone();
                    Box::pin(async move { group.shutdown().await })
                }),
            },
        );
        Ok(group)
    }
}
