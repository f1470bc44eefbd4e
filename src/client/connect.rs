//! The client side: dial one node over `tessera/client/1` and send requests, one per
//! bi-stream, each under [`REQUEST_TIMEOUT`] plus the IO bounds.
//!
//! [`Client::execute`] is exactly-once end to end: the client owns a session (a random
//! id) and numbers its commands; a timeout, a lost connection or a
//! [`ClientResponse::Retry`] sends the very same `(session, seq)` again (redialling the
//! node when the connection is gone) until an answer arrives or its patience runs out, and
//! only then reports the outcome as unknown.
//!
//! Every connection, the first and each redial, is checked as [`NodeTrust`] says before
//! this client sends anything of its own on it: with [`NodeTrust::Verify`] the node must
//! present tickets its policy accepts, bound to the key the connection authenticated.
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use iroh::endpoint::{Connection, ConnectionError, VarInt};
use iroh::{Endpoint, EndpointAddr, SecretKey};

use super::{ClientRequest, ClientResponse, CLOSE_UNAUTHORIZED, IO_TIMEOUT, REQUEST_TIMEOUT};
use crate::net::{local_endpoint, read_message, write_message, EndpointError, Listen, ALPN_CLIENT};
use crate::tickets::{Admission, Clock, PeerContext, TicketValidator};

/// Bound on connecting to a node.
pub(crate) const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long [`Client::execute`] keeps retrying one command by default.
pub const EXECUTE_PATIENCE: Duration = Duration::from_secs(60);
/// Pause between two attempts of one command.
const RETRY_PAUSE: Duration = Duration::from_millis(200);

/// Why a client request failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The client's own endpoint could not be created.
    #[error("client endpoint: {0}")]
    Endpoint(#[from] EndpointError),
    /// The node's address names no IP address to dial (the client dials nothing else).
    #[error("node {node} has no address to dial")]
    NoAddress {
        /// The node's id.
        node: String,
    },
    /// The QUIC connection failed: nothing listens there, another key answers, or the
    /// handshake was refused.
    #[error("cannot connect to {node}: {reason}")]
    Connect {
        /// The node's id.
        node: String,
        /// iroh's message.
        reason: String,
    },
    /// No connection within the connect bound (5 s); the node's id.
    #[error("timed out connecting to {0}")]
    ConnectTimeout(String),
    /// The node closed the connection with [`CLOSE_UNAUTHORIZED`]: this client's key is
    /// not in its `[client] allow` (nor an operator or provisioner key). Not retried.
    #[error("the node refused this client (key {key}): {reason}")]
    Unauthorized {
        /// This client's public key, to add to the node's allow list.
        key: String,
        /// The node's close reason.
        reason: String,
    },
    /// With [`NodeTrust::Verify`]: the node's tickets did not pass the client's validator
    /// (or it did not answer the attestation request with tickets). The connection was
    /// closed before any request of the client's own was sent. Not retried.
    #[error(
        "node {node} did not prove it runs an image the client's policy approves, so \
         nothing was sent to it: {reason}"
    )]
    NotAttested {
        /// The node's id.
        node: String,
        /// Why the check failed.
        reason: String,
    },
    /// The connection is gone (closed by the node, idle, or lost); the close reason.
    /// [`Client::execute`] redials and sends again.
    #[error("the node closed the connection: {0}")]
    Closed(String),
    /// An answer that does not fit the protocol (undecodable, or the wrong kind of
    /// response), or a local failure (the stream would not finish, no randomness for a
    /// session id).
    #[error("protocol error: {0}")]
    Protocol(String),
    /// No answer within the bound (for [`Client::request`]: the request timeout plus the
    /// read and write bounds, 35 s).
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    /// The node answered a command with [`ClientResponse::Error`]: it will not apply, and
    /// sending it again would be refused too.
    #[error("the node refused the command: {0}")]
    Refused(String),
    /// [`Client::execute`] ran out of patience without an answer: the command applied
    /// once or not at all, and this client cannot tell which. Read the state to find out;
    /// its sequence number is never reused.
    #[error(
        "the outcome is unknown after {attempts} attempts over {waited:?} (the command \
         applies at most once; command {seq} of session {session:#x}); last: {last}"
    )]
    OutcomeUnknown {
        /// How many times the request was sent.
        attempts: u32,
        /// Time from the first attempt until giving up.
        waited: Duration,
        /// This client's session id.
        session: u64,
        /// The command's sequence number in the session.
        seq: u64,
        /// Why the last attempt got no answer.
        last: String,
    },
}

impl ClientError {
    /// Whether the same request may get an answer if sent again (to this node).
    fn is_transient(&self) -> bool {
        matches!(
            self,
            Self::Connect { .. } | Self::ConnectTimeout(_) | Self::Closed(_) | Self::Timeout(_)
        )
    }
}

/// How a client decides that the node it dialled may receive its requests.
#[derive(Clone)]
pub enum NodeTrust {
    /// The node must present tickets that `validator` accepts for the key the connection
    /// authenticated: a quote of an approved image, bound to that key, issued for
    /// `network_id` (any network the node names, when `None`).
    Verify {
        /// The client's policy for nodes (a [`crate::tickets::TdxValidator`], say).
        validator: Arc<dyn TicketValidator>,
        /// The network the tickets must be issued for; `None`: the one the node states.
        network_id: Option<String>,
        /// Unix seconds for the validity checks. `None`: the node's own clock, as it states
        /// it; only for the mock root, whose collateral has a fixed window that mock nodes
        /// run their clocks in (the mock proves nothing anyway: its keys are public).
        clock: Option<Clock>,
    },
    /// No check: whoever holds the key may be an impostor outside any TD. For nodes that
    /// are not attested (development); named so on purpose.
    Insecure,
}

impl std::fmt::Debug for NodeTrust {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NodeTrust::Verify { network_id, .. } => f
                .debug_struct("Verify")
                .field("network_id", network_id)
                .finish_non_exhaustive(),
            NodeTrust::Insecure => f.write_str("Insecure"),
        }
    }
}

/// A connection to one node's client protocol, with this client's session.
pub struct Client {
    endpoint: Endpoint,
    conn: Connection,
    addr: EndpointAddr,
    node: String,
    trust: NodeTrust,
    /// This client's session id (random) and the sequence number of its next command.
    session: u64,
    next_seq: u64,
}

impl Client {
    /// Dials `node` from a fresh endpoint with key `secret` (for `[client] allow` lists) on
    /// an ephemeral port of the node's address family (loopback for a loopback node), and
    /// checks the node as `trust` says before returning.
    pub async fn connect(
        node: EndpointAddr,
        secret: SecretKey,
        trust: NodeTrust,
    ) -> Result<Self, ClientError> {
        let name = node.id.to_string();
        let target = node
            .ip_addrs()
            .next()
            .copied()
            .ok_or_else(|| ClientError::NoAddress { node: name.clone() })?;
        let bind_ip = match target.ip() {
            IpAddr::V4(ip) if ip.is_loopback() => IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            IpAddr::V6(ip) if ip.is_loopback() => IpAddr::V6(Ipv6Addr::LOCALHOST),
            IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
        };
        let endpoint = local_endpoint(
            secret,
            &Listen {
                bind: SocketAddr::new(bind_ip, 0),
                alpns: Vec::new(),
                relay: None,
            },
        )
        .await?;
        let conn = match open(&endpoint, &node, &trust).await {
            Ok(conn) => conn,
            Err(e) => {
                endpoint.close().await;
                return Err(e);
            }
        };
        let mut session = [0u8; 8];
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut session)
            .map_err(|_| ClientError::Protocol("no system randomness for a session id".into()))?;
        Ok(Self {
            endpoint,
            conn,
            addr: node,
            node: name,
            trust,
            session: u64::from_le_bytes(session),
            next_seq: 1,
        })
    }

    /// This client's session id and the sequence number its next command will carry.
    pub fn session(&self) -> (u64, u64) {
        (self.session, self.next_seq)
    }

    /// Applies `command` exactly once: sends it as the next command of this client's
    /// session and, on a timeout, a lost connection or a `Retry` answer, sends the same
    /// request again (redialling the node if needed) until it is answered or `patience`
    /// has passed; then the outcome is [`ClientError::OutcomeUnknown`]. A definite refusal
    /// ([`ClientError::Refused`], [`ClientError::Unauthorized`]) is returned at once.
    pub async fn execute(
        &mut self,
        command: crate::machine::KvCommand,
        patience: Duration,
    ) -> Result<crate::machine::KvOutput, ClientError> {
        let seq = self.next_seq;
        let request = ClientRequest::Execute {
            session: self.session,
            seq,
            command,
        };
        let started = tokio::time::Instant::now();
        let deadline = started + patience;
        let mut attempts = 0u32;
        let last = loop {
            attempts += 1;
            let why = match tokio::time::timeout_at(deadline, self.request(&request)).await {
                Err(_) => format!("no answer within {patience:?}"),
                Ok(Ok(ClientResponse::Executed(output))) => {
                    self.next_seq = seq + 1;
                    return Ok(output);
                }
                Ok(Ok(ClientResponse::Retry(why))) => why,
                Ok(Ok(ClientResponse::Error(why))) => {
                    // Refused as such: the session moves on (a retry would be refused too).
                    self.next_seq = seq + 1;
                    return Err(ClientError::Refused(why));
                }
                Ok(Ok(other)) => {
                    return Err(ClientError::Protocol(format!(
                        "unexpected answer to a command: {other:?}"
                    )))
                }
                Ok(Err(e)) if e.is_transient() => {
                    if self.conn.close_reason().is_some() {
                        // Gone: dial again (the session lives in the group, not the
                        // connection), and check the node again before resending.
                        let redial = open(&self.endpoint, &self.addr, &self.trust);
                        match tokio::time::timeout_at(deadline, redial).await {
                            Ok(Ok(conn)) => self.conn = conn,
                            Ok(Err(e @ ClientError::NotAttested { .. })) => return Err(e),
                            Ok(Err(_)) | Err(_) => {}
                        }
                    }
                    e.to_string()
                }
                Ok(Err(e)) => return Err(e),
            };
            if tokio::time::Instant::now() + RETRY_PAUSE >= deadline {
                break why;
            }
            tracing::debug!(node = %self.node, attempt = attempts, reason = %why, "command outcome unknown; sending it again");
            tokio::time::sleep(RETRY_PAUSE).await;
        };
        // Never reuse this sequence number for another command: it may still apply.
        self.next_seq = seq + 1;
        Err(ClientError::OutcomeUnknown {
            attempts,
            waited: started.elapsed(),
            session: self.session,
            seq,
            last,
        })
    }

    /// The node this client talks to (its public key).
    pub fn node(&self) -> &str {
        &self.node
    }

    /// Sends `request` and waits for the answer.
    pub async fn request(&self, request: &ClientRequest) -> Result<ClientResponse, ClientError> {
        let bound = REQUEST_TIMEOUT + 2 * IO_TIMEOUT;
        match tokio::time::timeout(bound, self.exchange(request)).await {
            Ok(result) => result,
            Err(_) => Err(ClientError::Timeout(bound)),
        }
    }

    async fn exchange(&self, request: &ClientRequest) -> Result<ClientResponse, ClientError> {
        exchange(&self.endpoint, &self.conn, request).await
    }

    /// Closes the connection and the endpoint.
    pub async fn close(self) {
        self.conn.close(VarInt::from_u32(0), b"done");
        let _ = tokio::time::timeout(IO_TIMEOUT, self.endpoint.close()).await;
    }
}

/// One request on a fresh bi-stream of `conn`.
async fn exchange(
    endpoint: &Endpoint,
    conn: &Connection,
    request: &ClientRequest,
) -> Result<ClientResponse, ClientError> {
    let (mut send, mut recv) = conn.open_bi().await.map_err(|e| lost(endpoint, e))?;
    write_message(&mut send, request)
        .await
        .map_err(|e| frame_error(endpoint, conn, e))?;
    send.finish()
        .map_err(|e| ClientError::Protocol(e.to_string()))?;
    read_message(&mut recv, "client response")
        .await
        .map_err(|e| frame_error(endpoint, conn, e))
}

/// Turns a failed stream into the reason the node gave, if it closed the connection.
fn frame_error(endpoint: &Endpoint, conn: &Connection, e: crate::net::FrameError) -> ClientError {
    match conn.close_reason() {
        Some(reason) => lost(endpoint, reason),
        None => ClientError::Protocol(e.to_string()),
    }
}

fn lost(endpoint: &Endpoint, e: ConnectionError) -> ClientError {
    match e {
        ConnectionError::ApplicationClosed(close)
            if close.error_code == VarInt::from_u32(CLOSE_UNAUTHORIZED) =>
        {
            ClientError::Unauthorized {
                key: endpoint.id().to_string(),
                reason: String::from_utf8_lossy(&close.reason).into_owned(),
            }
        }
        ConnectionError::ApplicationClosed(close) => {
            ClientError::Closed(String::from_utf8_lossy(&close.reason).into_owned())
        }
        other => ClientError::Closed(other.to_string()),
    }
}

/// Dials `node` and checks it as `trust` says; a node that fails the check is hung up on.
async fn open(
    endpoint: &Endpoint,
    node: &EndpointAddr,
    trust: &NodeTrust,
) -> Result<Connection, ClientError> {
    let conn = dial(endpoint, node).await?;
    let NodeTrust::Verify {
        validator,
        network_id,
        clock,
    } = trust
    else {
        return Ok(conn);
    };
    let not_attested = |reason: String| ClientError::NotAttested {
        node: node.id.to_string(),
        reason,
    };
    let request = exchange(endpoint, &conn, &ClientRequest::Attestation);
    let answer = match tokio::time::timeout(REQUEST_TIMEOUT, request).await {
        Ok(Ok(answer)) => answer,
        Ok(Err(e)) => {
            conn.close(VarInt::from_u32(0), b"not verified");
            return Err(e);
        }
        Err(_) => {
            conn.close(VarInt::from_u32(0), b"not verified");
            return Err(ClientError::Timeout(REQUEST_TIMEOUT));
        }
    };
    let verdict = match answer {
        ClientResponse::Attestation {
            network_id: stated,
            tickets,
            now,
        } => {
            let ctx = PeerContext {
                // The key this connection authenticated, never one the node claims.
                peer_key: *conn.remote_id().as_bytes(),
                network_id: network_id.clone().unwrap_or(stated),
                group_scope: None,
                now: clock.as_ref().map_or(now, |clock| clock()),
            };
            let admission = Admission::new(vec![validator.clone()]);
            match tokio::task::spawn_blocking(move || admission.admit(&tickets, &ctx)).await {
                Ok(Ok(_)) => Ok(()),
                Ok(Err(e)) => Err(not_attested(e.to_string())),
                Err(e) => Err(not_attested(format!("the verification task failed: {e}"))),
            }
        }
        ClientResponse::Error(e) => Err(not_attested(format!(
            "it answered the attestation request with an error: {e}"
        ))),
        other => Err(not_attested(format!(
            "it answered the attestation request with {other:?}"
        ))),
    };
    match verdict {
        Ok(()) => Ok(conn),
        Err(e) => {
            conn.close(VarInt::from_u32(0), b"not attested");
            Err(e)
        }
    }
}

/// Dials `node`'s client protocol from `endpoint`, under [`CONNECT_TIMEOUT`].
async fn dial(endpoint: &Endpoint, node: &EndpointAddr) -> Result<Connection, ClientError> {
    match tokio::time::timeout(CONNECT_TIMEOUT, endpoint.connect(node.clone(), ALPN_CLIENT)).await {
        Ok(Ok(conn)) => Ok(conn),
        Ok(Err(e)) => Err(ClientError::Connect {
            node: node.id.to_string(),
            reason: e.to_string(),
        }),
        Err(_) => Err(ClientError::ConnectTimeout(node.id.to_string())),
    }
}
