//! The node side of the client protocol: authenticates client keys, then answers one
//! request per bi-stream from the node's [`Group`] handle.
//!
//! Connections arrive through an iroh router that mounts [`ClientProtocol`] on
//! [`ALPN_CLIENT`].
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use iroh::endpoint::{Accepting, Connection, RecvStream, SendStream, VarInt};
use iroh::protocol::{AcceptError, ProtocolHandler};
use iroh::PublicKey;
use tokio::io::AsyncReadExt;
use tokio::sync::{watch, Semaphore};

use super::{
    ClientAllow, ClientRequest, ClientResponse, MemberKind, MemberStatus, NodeStatus, CLOSE_BUSY,
    CLOSE_UNAUTHORIZED, CONNECTIONS_MAX, CONNECTIONS_PER_SOURCE_MAX, CONNECTION_IDLE_TIMEOUT,
    IO_TIMEOUT, REQUESTS_IN_FLIGHT_MAX, REQUEST_BYTES_MAX, REQUEST_TIMEOUT,
};
use crate::groups::{node_id_of, Bonds, Consistency, Group, GroupError, Refusal};
use crate::machine::KvStore;
use crate::net::{
    read_message, write_message, AcceptFailure, Budget, FrameError, ServingBudget, ALPN_CLIENT,
};
use crate::raft::{MemberRole, NodeId, Role};
use crate::tickets::{Clock, Ticket};

/// Counters for the metrics endpoint.
#[derive(Debug, Default)]
pub struct ClientStats {
    /// Requests answered (successfully or with an error response).
    pub requests: AtomicU64,
    /// Requests answered with an error response.
    pub request_errors: AtomicU64,
    /// Connections closed because their key is not allowed.
    pub unauthorized: AtomicU64,
    /// Connections or requests refused because the node was at its limit.
    pub busy: AtomicU64,
}

/// What the client protocol serves.
pub struct ClientService {
    /// The node's member of the group that requests run against.
    pub group: Group<KvStore>,
    /// The member's bonds, for the members' keys and bond counts in status answers.
    pub bonds: Arc<Bonds>,
    /// Which client keys are served (`[client] allow`).
    pub allow: ClientAllow,
    /// Keys that may change the group's membership (`[client] operators`); they are served
    /// as clients too.
    pub operators: Vec<PublicKey>,
    /// This node's iroh key.
    pub node_key: PublicKey,
    /// The network this node's tickets are issued for.
    pub network_id: String,
    /// This node's current tickets (for their expiry, and for clients to verify).
    pub tickets: watch::Receiver<Vec<Ticket>>,
    /// Unix seconds, for status and attestation answers.
    pub clock: Clock,
    /// Request and refusal counters, for the metrics page.
    pub stats: ClientStats,
    /// Keys of members this node knows (itself and its bootstrap peers), by node id.
    known_keys: BTreeMap<NodeId, PublicKey>,
    /// Counters of this node's catalog exchange, when it runs one.
    pub discovery: Option<watch::Receiver<crate::discovery::DiscoveryStats>>,
    /// Refusals of the endpoint's gateway, before a connection reaches a group.
    pub gateway: Option<watch::Receiver<crate::groups::BondStats>>,
    requests: Arc<Semaphore>,
    connections: ServingBudget,
    /// Keys that may send the group key (`[provision] allow`), served so that a sender
    /// retrying after a lost answer gets it; and the public id of the key this node holds.
    provisioners: Vec<PublicKey>,
    key_id: Option<[u8; 32]>,
}

impl ClientService {
    /// A service for `group`, serving the keys `allow` lists, with no operators, no
    /// provisioners and no discovery or gateway counters (the `with_*` methods add them).
    pub fn new(
        group: Group<KvStore>,
        bonds: Arc<Bonds>,
        allow: ClientAllow,
        node_key: PublicKey,
        network_id: String,
        tickets: watch::Receiver<Vec<Ticket>>,
        clock: Clock,
    ) -> Self {
        Self {
            group,
            bonds,
            allow,
            operators: Vec::new(),
            node_key,
            network_id,
            tickets,
            clock,
            stats: ClientStats::default(),
            known_keys: BTreeMap::from([(node_id_of(&node_key), node_key)]),
            discovery: None,
            gateway: None,
            requests: Arc::new(Semaphore::new(REQUESTS_IN_FLIGHT_MAX)),
            connections: ServingBudget::new(
                "client connections",
                CONNECTIONS_MAX,
                CONNECTIONS_PER_SOURCE_MAX,
            ),
            provisioners: Vec::new(),
            key_id: None,
        }
    }

    /// Answers [`ClientRequest::ProvisionGroupKey`] from these keys: this node holds the
    /// group key whose public id is `key_id` (the same key is acknowledged, another
    /// refused).
    pub fn with_provisioners(
        mut self,
        keys: impl IntoIterator<Item = PublicKey>,
        key_id: [u8; 32],
    ) -> Self {
        self.provisioners.extend(keys);
        self.key_id = Some(key_id);
        self
    }

    /// Names these peers' keys in status answers (members are otherwise known by node id).
    pub fn with_known_peers(mut self, keys: impl IntoIterator<Item = PublicKey>) -> Self {
        self.known_keys
            .extend(keys.into_iter().map(|k| (node_id_of(&k), k)));
        self
    }

    /// Lets these keys change the group's membership ([`ClientRequest::RemoveMember`]).
    pub fn with_operators(mut self, keys: impl IntoIterator<Item = PublicKey>) -> Self {
        self.operators.extend(keys);
        self
    }

    /// Counts the endpoint gateway's refusals (`Busy`, `WrongGroup`, a bad first frame)
    /// with the group's own on the metrics page.
    pub fn with_gateway(mut self, stats: watch::Receiver<crate::groups::BondStats>) -> Self {
        self.gateway = Some(stats);
        self
    }

    /// Reports these discovery counters on the metrics page.
    pub fn with_discovery(
        mut self,
        stats: watch::Receiver<crate::discovery::DiscoveryStats>,
    ) -> Self {
        self.discovery = Some(stats);
        self
    }

    /// When this node's own ticket expires (the earliest, if it holds several).
    pub fn ticket_expires_at(&self) -> Option<u64> {
        self.tickets.borrow().iter().map(|t| t.expires_at).min()
    }

    /// This node's view of the group.
    pub fn status(&self) -> NodeStatus {
        let s = self.group.status();
        let me = node_id_of(&self.node_key);
        let bonded = self.bonds.bonded_peers();
        let stats = self.bonds.stats().borrow().clone();
        let members = s
            .membership
            .members()
            .filter_map(|node| {
                let kind = match s.membership.role_of(node)? {
                    MemberRole::Voter => MemberKind::Voter,
                    MemberRole::Learner => MemberKind::Learner,
                    MemberRole::Observer => MemberKind::Observer,
                };
                Some(MemberStatus {
                    node,
                    key: self
                        .known_keys
                        .get(&node)
                        .copied()
                        .or_else(|| self.bonds.key_of(node))
                        .map(|k| *k.as_bytes()),
                    kind,
                    leader: s.leader == Some(node),
                    this_node: node == me,
                    bonded: bonded.contains(&node),
                })
            })
            .collect();
        NodeStatus {
            node_key: *self.node_key.as_bytes(),
            node: me,
            role: role_name(s.role).into(),
            term: s.term,
            leader: s.leader,
            commit_index: s.commit_index,
            applied_index: s.applied_index,
            members,
            bonds_live: stats.live,
            bonds_refused: refused_by_label(&stats.refused),
            ticket_expires_at: self.ticket_expires_at(),
            now: (self.clock)(),
            stopped: s.stopped.map(|reason| reason.to_string()),
        }
    }

    async fn answer(&self, client: &PublicKey, request: ClientRequest) -> ClientResponse {
        match request {
            ClientRequest::Status => ClientResponse::Status(self.status()),
            ClientRequest::Attestation => ClientResponse::Attestation {
                network_id: self.network_id.clone(),
                tickets: self.tickets.borrow().clone(),
                now: (self.clock)(),
            },
            ClientRequest::ProvisionGroupKey { key } => match &self.key_id {
                Some(own) if self.provisioners.contains(client) => {
                    super::provision::answer_when_running(own, &key)
                }
                _ => ClientResponse::Error(format!(
                    "not a provisioner: key {client} is not in this node's [provision] allow"
                )),
            },
            ClientRequest::RemoveMember { node } => {
                if !self.operators.contains(client) {
                    return ClientResponse::Error(format!(
                        "not an operator: key {client} is not in this node's [client] operators"
                    ));
                }
                if !self.group.members().contains(node) {
                    return ClientResponse::Error(format!("{node} is not a member"));
                }
                match self.group.remove_member(node).await {
                    Ok(()) => {
                        tracing::info!(%node, operator = %client.fmt_short(), "member removed by an operator");
                        ClientResponse::Status(self.status())
                    }
                    // Unknown whether it committed: asking again is safe.
                    Err(e @ (GroupError::Timeout(_) | GroupError::Stopped(_))) => {
                        ClientResponse::Retry(e.to_string())
                    }
                    Err(e) => ClientResponse::Error(e.to_string()),
                }
            }
            ClientRequest::Execute {
                session,
                seq,
                command,
            } => {
                let session = super::session_client(client, session);
                match self.group.execute_as(session, seq, command).await {
                    Ok(output) => ClientResponse::Executed(output),
                    // Still unknown: the client sends the same (session, seq) again. A node
                    // that stopped meanwhile may have appended it too: not a refusal.
                    Err(
                        e @ (GroupError::Timeout(_) | GroupError::Stopped(_) | GroupError::Busy),
                    ) => ClientResponse::Retry(e.to_string()),
                    Err(e) => ClientResponse::Error(e.to_string()),
                }
            }
            ClientRequest::Query { query, strong } => {
                let consistency = if strong {
                    Consistency::Strong
                } else {
                    Consistency::Weak
                };
                match self.group.query(query, consistency).await {
                    Ok(result) => ClientResponse::Queried(result),
                    Err(e) => ClientResponse::Error(e.to_string()),
                }
            }
        }
    }
}

/// The name `tessera status` and the metrics use for a role.
pub fn role_name(role: Option<Role>) -> &'static str {
    match role {
        Some(Role::Leader) => "leader",
        Some(Role::Follower) => "follower",
        Some(Role::Candidate) => "candidate",
        Some(Role::PreCandidate) => "pre-candidate",
        None => "starting",
    }
}

/// Refusal counts as `tessera status` shows them: by label, in the order of the labels.
fn refused_by_label(refused: &BTreeMap<Refusal, u64>) -> Vec<(String, u64)> {
    let mut by_label: Vec<(String, u64)> = refused
        .iter()
        .map(|(reason, n)| (reason.label().to_owned(), *n))
        .collect();
    by_label.sort();
    by_label
}

/// The client protocol's handler for an iroh [`Router`](iroh::protocol::Router), on
/// [`ALPN_CLIENT`]: each connection from an allowed key is served on the router's task for
/// it, at most [`ClientService`]'s connection limit at once.
#[derive(Clone)]
pub struct ClientProtocol {
    service: Arc<ClientService>,
    connecting: Budget,
}

impl ClientProtocol {
    /// Serves `service`; QUIC handshakes in progress hold units of `connecting` (pass the
    /// gateway's, [`crate::groups::Groups::connecting_budget`], to share one bound).
    pub fn new(service: Arc<ClientService>, connecting: Budget) -> Self {
        Self {
            service,
            connecting,
        }
    }
}

impl std::fmt::Debug for ClientProtocol {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientProtocol").finish_non_exhaustive()
    }
}

impl ProtocolHandler for ClientProtocol {
    async fn on_accepting(&self, accepting: Accepting) -> Result<Connection, AcceptError> {
        let busy = (CLOSE_BUSY, &b"too many client connections"[..]);
        let accepted = self
            .service
            .connections
            .accept(&self.connecting, accepting, IO_TIMEOUT, busy)
            .await;
        if let Err(AcceptFailure::OverBudget(_)) = &accepted {
            self.service.stats.busy.fetch_add(1, Ordering::Relaxed);
        }
        Ok(accepted?)
    }

    async fn accept(&self, conn: Connection) -> Result<(), AcceptError> {
        let service = &self.service;
        // Held while the connection is served: a unit of the per-source budget.
        let Some(_permit) = service.connections.take(&conn) else {
            conn.close(VarInt::from_u32(CLOSE_BUSY), b"not admitted");
            return Ok(());
        };
        if conn.alpn() != ALPN_CLIENT {
            conn.close(VarInt::from_u32(0), b"unknown protocol");
            return Ok(());
        }
        let peer = conn.remote_id();
        if !service.allow.allows(&peer)
            && !service.operators.contains(&peer)
            && !service.provisioners.contains(&peer)
        {
            service.stats.unauthorized.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(client = %peer, "client refused: key not in [client] allow");
            conn.close(
                VarInt::from_u32(CLOSE_UNAUTHORIZED),
                b"client key not allowed by this node ([client] allow)",
            );
            return Ok(());
        }
        serve_connection(service, &conn).await;
        Ok(())
    }
}

async fn serve_connection(service: &Arc<ClientService>, conn: &Connection) {
    loop {
        let (send, recv) = match tokio::time::timeout(CONNECTION_IDLE_TIMEOUT, conn.accept_bi())
            .await
        {
            Err(_) => {
                conn.close(VarInt::from_u32(0), b"idle");
                return;
            }
            Ok(Err(e)) => {
                tracing::debug!(client = %conn.remote_id().fmt_short(), error = %e, "client connection ended");
                return;
            }
            Ok(Ok(streams)) => streams,
        };
        // Every request holds a permit from before its first byte is read until its answer
        // is written: tasks and request buffers stay bounded over all connections.
        let permit = match tokio::time::timeout(
            IO_TIMEOUT,
            service.requests.clone().acquire_owned(),
        )
        .await
        {
            Ok(Ok(permit)) => permit,
            _ => {
                service.stats.busy.fetch_add(1, Ordering::Relaxed);
                let mut send = send;
                let _ = send.reset(VarInt::from_u32(CLOSE_BUSY));
                continue;
            }
        };
        let service = service.clone();
        let client = conn.remote_id();
        tokio::spawn(async move {
            if let Err(e) = serve_stream(&service, &client, send, recv).await {
                tracing::debug!(error = %e, "client request failed");
            }
            drop(permit);
        });
    }
}

async fn serve_stream(
    service: &ClientService,
    client: &PublicKey,
    mut send: SendStream,
    mut recv: RecvStream,
) -> Result<(), FrameError> {
    let response = match receive_request(&mut recv).await? {
        Err(bad) => bad,
        Ok(request) => {
            match tokio::time::timeout(REQUEST_TIMEOUT, service.answer(client, request)).await {
                Ok(response) => response,
                Err(_) => ClientResponse::Retry(format!(
                    "timed out after {REQUEST_TIMEOUT:?}; a command may still apply, once: send it again"
                )),
            }
        }
    };
    service.stats.requests.fetch_add(1, Ordering::Relaxed);
    if matches!(response, ClientResponse::Error(_)) {
        service.stats.request_errors.fetch_add(1, Ordering::Relaxed);
    }
    send_response(&mut send, &response).await
}

/// Reads one request under [`IO_TIMEOUT`]. `Ok(Err(answer))`: a frame arrived that is not
/// a request (too long, another version, undecodable), to be answered with `answer`;
/// `Err`: the stream broke or stalled, and there is nothing to answer.
pub(super) async fn receive_request(
    recv: &mut RecvStream,
) -> Result<Result<ClientRequest, ClientResponse>, FrameError> {
    let request = tokio::time::timeout(IO_TIMEOUT, read_request(recv))
        .await
        .map_err(|_| FrameError::Io(std::io::Error::other("request not received in time")))?;
    match request {
        Ok(request) => Ok(Ok(request)),
        Err(
            e
            @ (FrameError::Length { .. } | FrameError::Version { .. } | FrameError::Decode { .. }),
        ) => Ok(Err(ClientResponse::Error(format!("bad request: {e}")))),
        Err(e) => Err(e),
    }
}

/// Writes `response` and finishes the stream, under [`IO_TIMEOUT`].
pub(super) async fn send_response(
    send: &mut SendStream,
    response: &ClientResponse,
) -> Result<(), FrameError> {
    tokio::time::timeout(IO_TIMEOUT, async {
        write_message(send, response).await?;
        send.finish()
            .map_err(|e| FrameError::Io(std::io::Error::other(e.to_string())))
    })
    .await
    .map_err(|_| FrameError::Io(std::io::Error::other("answer not sent in time")))?
}

/// Reads one request, refusing a length over [`REQUEST_BYTES_MAX`] before allocating.
async fn read_request(recv: &mut RecvStream) -> Result<ClientRequest, FrameError> {
    let mut header = [0u8; 4];
    AsyncReadExt::read_exact(recv, &mut header).await?;
    let len = u32::from_be_bytes(header) as usize;
    if len > REQUEST_BYTES_MAX {
        return Err(FrameError::Length {
            len,
            max: REQUEST_BYTES_MAX,
        });
    }
    let mut framed = (&header[..]).chain(recv);
    read_message(&mut framed, "client request").await
}
