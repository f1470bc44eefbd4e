//! The client protocol (`tessera/client/1`): how `tessera kv` and `tessera status` talk to
//! a node that serves the built-in key-value store.
//!
//! One request per bi-stream: the client opens a stream, writes one [`ClientRequest`]
//! frame (the framed postcard codec of [`crate::net`]) and finishes its side; the node
//! answers with one [`ClientResponse`] frame. Clients are authenticated by their iroh key:
//! the node serves only keys its `[client] allow` list names ([`ClientAllow`]; by default
//! nobody) and closes other connections with [`CLOSE_UNAUTHORIZED`].
//!
//! Nodes are authenticated the other way round by attestation: before a client sends any
//! request of its own on a connection it asks for the node's tickets and checks them
//! against its policy for the key the connection authenticated ([`NodeTrust::Verify`]), so
//! an impostor outside any TD (which the host can run on the node's address) never sees a
//! command. [`NodeTrust::Insecure`] skips that, for nodes that are not attested.
//!
//! **IO contract.** `server` reads requests and writes answers under a timeout each, runs
//! at most [`REQUESTS_IN_FLIGHT_MAX`] requests at once and holds at most
//! [`CONNECTIONS_MAX`] client connections, [`CONNECTIONS_PER_SOURCE_MAX`] of them from one
//! source address; it makes no decision about the group itself, it
//! calls the [`crate::groups::Group`] handle. `connect` is the client side, dialling only
//! the address it is given.
pub(crate) mod connect;
pub(crate) mod provision;
pub(crate) mod server;

use std::time::Duration;

use iroh::PublicKey;
use serde::{Deserialize, Serialize};

use crate::machine::{ClientId, KvCommand, KvOutput, KvQuery, KvQueryResult};
use crate::raft::{Index, NodeId, Term};

pub use connect::{Client, ClientError, NodeTrust, EXECUTE_PATIENCE};
pub use provision::{await_group_key, AwaitKey, GroupKeyBytes, ProvisionError};
pub use server::{role_name, ClientProtocol, ClientService, ClientStats};

/// Largest request frame a node reads: room for the largest KV command (a compare-and-swap
/// of a maximal key with two maximal values is about 132 KiB).
pub const REQUEST_BYTES_MAX: usize = 256 << 10;
/// Requests a node runs at once, over all client connections.
pub const REQUESTS_IN_FLIGHT_MAX: usize = 256;
/// Client connections a node holds at once.
pub const CONNECTIONS_MAX: usize = 128;
/// Client connections a node holds at once from one source ([`crate::net::Source`]: an
/// IP address, an IPv6 /64): one host that opens and keeps connections (its clients may be
/// allowed, or any key may be) takes at most half, and other hosts still get in.
pub const CONNECTIONS_PER_SOURCE_MAX: usize = CONNECTIONS_MAX / 2;
/// Bound on reading one request or writing one answer.
pub const IO_TIMEOUT: Duration = Duration::from_secs(10);
/// Bound on running one request against the group.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);
/// A client connection with no new stream for this long is closed.
pub const CONNECTION_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Close code of a connection whose client key is not allowed.
pub const CLOSE_UNAUTHORIZED: u32 = 401;
/// Close code of a connection refused because the node holds too many.
pub const CLOSE_BUSY: u32 = 503;

/// Which client keys a node serves (`[client] allow` in `node.toml`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClientAllow {
    /// Every client key (for development, or behind a network boundary).
    Any,
    /// Only these keys. Empty (the default) refuses everyone.
    Keys(Vec<PublicKey>),
}

impl Default for ClientAllow {
    fn default() -> Self {
        ClientAllow::Keys(Vec::new())
    }
}

impl ClientAllow {
    /// Whether `key` may use the client protocol under this list. (A node also serves its
    /// operators and provisioners, whatever the list says.)
    pub fn allows(&self, key: &PublicKey) -> bool {
        match self {
            ClientAllow::Any => true,
            ClientAllow::Keys(keys) => keys.contains(key),
        }
    }
}

/// What a client asks.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ClientRequest {
    /// Apply a command through the log (from any member: followers forward), exactly once
    /// per (`session`, `seq`): the same request sent again (after a timeout, a lost
    /// connection or a [`ClientResponse::Retry`], to this node or another) returns the
    /// first outcome instead of applying twice. A client picks a random `session` and
    /// numbers its commands 1, 2, 3, … in it, one at a time. Sessions are per client key:
    /// the node derives the replicated session from the key the connection authenticated
    /// and `session` ([`session_client`]), so no client can touch another's.
    Execute {
        /// The client's session id, random, chosen once per client run.
        session: u64,
        /// The command's number in the session: 1, 2, 3, …; the same number to retry.
        seq: u64,
        /// The key-value command to apply.
        command: KvCommand,
    },
    /// Read: `strong` is linearizable (read-index), otherwise this node's local state.
    Query {
        /// What to read.
        query: KvQuery,
        /// Linearizable (confirmed with a quorum through the leader, slower) rather than
        /// this node's applied state (fast, possibly stale).
        strong: bool,
    },
    /// This node's view of the group.
    Status,
    /// This node's current tickets, for a client to verify before it sends anything else
    /// ([`NodeTrust::Verify`]).
    Attestation,
    /// Remove `node` from the group (an operator's call: only keys in `[client] operators`
    /// may make it). The leader commits the change and does not add the node back while
    /// its bond stays up; other members refuse, naming the leader. Answered with the
    /// node's [`ClientResponse::Status`] once the change is committed. Sending it again is
    /// harmless: a node that is no longer a member is reported as such.
    RemoveMember {
        /// The member to remove, by its node id (as [`NodeStatus::members`] lists it).
        node: NodeId,
    },
    /// The group key, for a node started with `[provision]` instead of a key file. Only
    /// keys in the node's `[provision] allow` may send it, and a sender checks the node's
    /// attestation first ([`NodeTrust::Verify`]; `tessera provision` never skips it): the
    /// key reaches only an approved image, over a connection to the key it attested.
    /// Answered with [`ClientResponse::Provisioned`]; sending the same key again (to a node
    /// that already has it) gets the same answer, another key an error.
    ProvisionGroupKey {
        /// The group's 32-byte secret key.
        key: provision::GroupKeyBytes,
    },
}

/// What a node answers.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ClientResponse {
    /// Answer to [`ClientRequest::Execute`]: the command applied (now, or before, for a
    /// request sent again), with its output.
    Executed(KvOutput),
    /// Answer to [`ClientRequest::Query`]: what was read.
    Queried(KvQueryResult),
    /// Answer to [`ClientRequest::Status`], and to [`ClientRequest::RemoveMember`] once the
    /// removal is committed.
    Status(NodeStatus),
    /// The node's tickets (a TDX quote bound to the key the client's connection
    /// authenticated), the network id they are issued for, and the node's clock (Unix
    /// seconds): what [`NodeTrust::Verify`] checks.
    Attestation {
        /// The network the node's tickets are issued for.
        network_id: String,
        /// The node's current tickets.
        tickets: Vec<crate::tickets::Ticket>,
        /// The node's clock when it answered, Unix seconds.
        now: u64,
    },
    /// The node holds the group key whose public id ([`crate::groups::GroupKey::public_id`])
    /// this is: the one just sent, or the same key it already had.
    Provisioned {
        /// The public id of the key the node holds (an HMAC: it reveals nothing of the key).
        key_id: [u8; 32],
    },
    /// The request failed; the message says why. Sending it again gives the same answer.
    Error(String),
    /// The outcome is not known yet (no leader, a leader change, a timeout): send the very
    /// same request again (same session and sequence); a command applies at most once.
    Retry(String),
}

/// The replicated session of a remote client: the client's key and its chosen `session`,
/// hashed (SHA-256 with a domain tag, first 8 bytes). Two keys never share a session, so a
/// client cannot make another's commands stale or read its cached outputs.
pub fn session_client(key: &PublicKey, session: u64) -> ClientId {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    ctx.update(b"tessera/client-session/v1");
    ctx.update(key.as_bytes());
    ctx.update(&session.to_le_bytes());
    let digest = ctx.finish();
    let mut id = [0u8; 8];
    id.copy_from_slice(&digest.as_ref()[..8]);
    ClientId(u64::from_le_bytes(id))
}

/// How a configuration lists a member.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum MemberKind {
    /// Votes in elections and counts toward the commit quorum.
    Voter,
    /// Receives the log without a vote, until it is promoted to voter (a new member
    /// catching up).
    Learner,
    /// Receives the log and is never given a vote.
    Observer,
}

/// One member as the answering node sees it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberStatus {
    /// The member's id in the consensus core (derived from its iroh key).
    pub node: NodeId,
    /// The member's iroh key, when the answering node knows it (itself, its bootstrap
    /// peers, peers that have bonded with it).
    pub key: Option<[u8; 32]>,
    /// How the group's configuration lists it.
    pub kind: MemberKind,
    /// The answering node believes this member leads.
    pub leader: bool,
    /// This member is the answering node.
    pub this_node: bool,
    /// The answering node has a live bond with this member.
    pub bonded: bool,
}

/// The answering node's view of its group.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeStatus {
    /// The node's iroh public key.
    pub node_key: [u8; 32],
    /// The node's id in the consensus core.
    pub node: NodeId,
    /// `leader`, `follower`, `candidate`, `pre-candidate`, or `starting`.
    pub role: String,
    /// The node's current Raft term.
    pub term: Term,
    /// The member the node believes leads in `term`; `None` while it knows of none.
    pub leader: Option<NodeId>,
    /// The index of the last log entry the node knows to be committed.
    pub commit_index: Index,
    /// The index of the last entry the node has applied to its state machine (at most
    /// `commit_index`).
    pub applied_index: Index,
    /// Every member of the group's current configuration.
    pub members: Vec<MemberStatus>,
    /// Bonds open right now.
    pub bonds_live: u64,
    /// Handshakes refused or bonds closed by this node, by reason.
    pub bonds_refused: Vec<(String, u64)>,
    /// When this node's own ticket expires (Unix seconds, the node's clock).
    pub ticket_expires_at: Option<u64>,
    /// The node's clock (Unix seconds) when it answered.
    pub now: u64,
    /// Set when the node stopped participating, with the reason.
    pub stopped: Option<String>,
}
