//! [`GroupBuilder`]: joins a group over iroh. It derives the [`GroupId`] from everything
//! members must agree on, starts the bonds on the node's endpoint, keeps the node's own
//! tickets fresh, and starts the worker that drives the consensus core.
use std::sync::Arc;
use std::time::Duration;

use iroh::endpoint::Connection;
use iroh::{Endpoint, EndpointAddr};
use tokio::sync::{mpsc, watch};

use super::bond::{node_id_of, BondConfig, Bonds, Dial};
use super::formation::founding_set;
use super::id::{GroupId, GroupKey};
use super::{start, Group, MemberOptions, StartError, WorkerConfig};
use crate::machine::StateMachine;
use crate::raft::{Membership, RaftConfig};
use crate::storage::Storage;
use crate::tickets::{Admission, Clock, TdxTicketIssuer, Ticket, TicketError, TicketValidator};

/// A member of a group over iroh.
pub struct JoinedGroup<M: StateMachine> {
    pub group: Group<M>,
    pub bonds: Arc<Bonds>,
    pub id: GroupId,
}

/// Builds a member: consensus parameters, validators, tickets, peers.
pub struct GroupBuilder {
    key: GroupKey,
    network_id: String,
    raft: RaftConfig,
    worker: WorkerConfig,
    validators: Vec<Arc<dyn TicketValidator>>,
    tickets: Option<watch::Receiver<Vec<Ticket>>>,
    peers: Vec<EndpointAddr>,
    bootstrap: bool,
    bootstrap_expect: Option<usize>,
    clock: Clock,
    request_timeout: Duration,
    other_alpns: Option<mpsc::Sender<Connection>>,
}

impl GroupBuilder {
    pub fn new(key: GroupKey, network_id: impl Into<String>, clock: Clock) -> Self {
        Self {
            key,
            network_id: network_id.into(),
            raft: RaftConfig::default(),
            worker: WorkerConfig::default(),
            validators: Vec::new(),
            tickets: None,
            peers: Vec::new(),
            bootstrap: false,
            bootstrap_expect: None,
            clock,
            request_timeout: Duration::from_secs(10),
            other_alpns: None,
        }
    }

    pub fn with_consensus_config(mut self, raft: RaftConfig, worker: WorkerConfig) -> Self {
        self.raft = raft;
        self.worker = worker;
        self
    }

    /// Peers must present a ticket this validator accepts (validators add up: all must pass).
    pub fn require_ticket(mut self, validator: Arc<dyn TicketValidator>) -> Self {
        self.validators.push(validator);
        self
    }

    /// The tickets this node presents (see [`keep_tickets_fresh`]).
    pub fn with_tickets(mut self, tickets: watch::Receiver<Vec<Ticket>>) -> Self {
        self.tickets = Some(tickets);
        self
    }

    /// Peers to bond with. With `bootstrap`, a fresh node forms a new group whose voters
    /// are itself and these peers (every founding member must list the same set).
    pub fn with_peers(mut self, peers: Vec<EndpointAddr>, bootstrap: bool) -> Self {
        self.peers = peers;
        self.bootstrap = bootstrap;
        self
    }

    /// Instead of founding at once: the founding set is this node and its peers, which must
    /// count `n` members; a fresh node founds only once every founder is bonded and has
    /// confirmed the same set, and joins instead if one of them is already in a group
    /// ([`WorkerConfig::founders`], [`super::formation`]). A node whose set has another size
    /// only joins. `n = 1` makes a single-node group at once.
    pub fn bootstrap_expect(mut self, n: usize) -> Self {
        self.bootstrap_expect = Some(n.max(1));
        self.bootstrap = false;
        self
    }

    pub fn with_request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = timeout;
        self
    }

    /// Hands connections the endpoint accepts on ALPNs other than the bond's (such as
    /// [`crate::net::ALPN_CLIENT`]) to `connections` instead of closing them.
    pub fn route_other_alpns(mut self, connections: mpsc::Sender<Connection>) -> Self {
        self.other_alpns = Some(connections);
        self
    }

    /// The id this builder's group has with state machine `machine`.
    pub fn group_id<M: StateMachine>(&self, machine: &M) -> GroupId {
        let signatures: Vec<[u8; 32]> = self.validators.iter().map(|v| v.signature()).collect();
        GroupId::derive(
            &self.key,
            &self.raft,
            self.worker.tick.as_micros() as u64,
            &machine.signature(),
            &signatures,
        )
    }

    /// Starts the member on `endpoint` (which must accept [`crate::net::ALPN_BOND`]).
    /// Must run inside a tokio runtime.
    pub fn join<M, S>(
        self,
        endpoint: Endpoint,
        machine: M,
        storage: S,
    ) -> Result<JoinedGroup<M>, StartError>
    where
        M: StateMachine,
        S: Storage + Send + 'static,
    {
        let id = self.group_id(&machine);
        let me = node_id_of(&endpoint.id());
        let bootstrap = self.bootstrap.then(|| {
            Membership::with_voters(
                std::iter::once(me).chain(self.peers.iter().map(|p| node_id_of(&p.id))),
            )
        });
        let single = self.bootstrap_expect == Some(1);
        let bootstrap = bootstrap.or_else(|| single.then(|| Membership::with_voters([me])));
        let mut worker = self.worker.clone();
        if let Some(expect) = self.bootstrap_expect.filter(|_| !single) {
            let peers = self.peers.iter().map(|p| node_id_of(&p.id));
            worker.founders = match founding_set(me, peers, expect) {
                Ok(founders) => Some(founders),
                Err(e) => {
                    tracing::warn!(node = %me, "{e}");
                    None
                }
            };
        }
        let options = MemberOptions {
            node: me,
            raft: self.raft.clone(),
            worker,
            seed: u64::from_le_bytes(endpoint.id().as_bytes()[..8].try_into().unwrap_or_default()),
            request_timeout: self.request_timeout,
            bootstrap,
        };
        let config = BondConfig {
            group_id: id,
            group_key: self.key.clone(),
            network_id: self.network_id.clone(),
            tickets: self
                .tickets
                .clone()
                .unwrap_or_else(|| watch::channel(Vec::new()).1),
            admission: Arc::new(Admission::new(self.validators.clone())),
            clock: self.clock.clone(),
            snapshots: storage.snapshot_store(),
        };
        let mut bonds = None;
        let peers = self.peers.clone();
        let group = start(options, machine, storage, |inbox, _snapshots| {
            // Founders listed each other: one dials. Anyone else (a joiner, or a member
            // waiting for `bootstrap_expect` peers, who may be known to none of them)
            // dials everyone it was given.
            let dial = if self.bootstrap {
                Dial::SmallerKey
            } else {
                Dial::All
            };
            let b = Bonds::start_with_other_alpns(
                endpoint,
                config,
                inbox,
                peers,
                dial,
                self.other_alpns.clone(),
            );
            bonds = Some(b.clone());
            b
        })?;
        let bonds = bonds
            .ok_or_else(|| StartError::Thread(std::io::Error::other("transport not started")))?;
        // Snapshots are taken only from the leader the worker follows, in its term.
        bonds.follow_group(group.status_receiver());
        Ok(JoinedGroup { group, bonds, id })
    }
}

/// Issues this node's tickets now and again whenever half their lifetime has passed, so
/// that peers always hold an unexpired one. Stops when every receiver is gone.
pub fn keep_tickets_fresh(
    issuer: Arc<TdxTicketIssuer>,
    peer_key: [u8; 32],
    clock: Clock,
) -> Result<watch::Receiver<Vec<Ticket>>, TicketError> {
    let first = issuer.issue(peer_key, None, clock())?;
    let (tx, rx) = watch::channel(vec![first]);
    tokio::spawn(async move {
        loop {
            let (issued, expires) = {
                let current = tx.borrow();
                let expires = current.iter().map(|t| t.expires_at).min().unwrap_or(0);
                (clock(), expires)
            };
            let half = expires.saturating_sub(issued) / 2;
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(half.max(1))) => {}
                _ = tx.closed() => return,
            }
            let issuer = issuer.clone();
            let now = clock();
            match tokio::task::spawn_blocking(move || issuer.issue(peer_key, None, now)).await {
                Ok(Ok(ticket)) => {
                    if tx.send(vec![ticket]).is_err() {
                        return;
                    }
                }
                Ok(Err(e)) => tracing::error!(error = %e, "could not renew this node's ticket"),
                Err(e) => tracing::error!(error = %e, "ticket renewal task failed"),
            }
        }
    });
    Ok(rx)
}
