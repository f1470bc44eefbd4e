//! The client side: dial one node over `tessera/client/1` and send requests, one per
//! bi-stream, each under [`REQUEST_TIMEOUT`] plus the IO bounds.
//!
//! [`Client::execute`] is exactly-once end to end: the client owns a session (a random
//! id) and numbers its commands; a timeout, a lost connection or a
//! [`ClientResponse::Retry`] sends the very same `(session, seq)` again (redialling the
//! node when the connection is gone) until an answer arrives or its patience runs out, and
//! only then reports the outcome as unknown.
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use iroh::endpoint::{Connection, ConnectionError, VarInt};
use iroh::{Endpoint, EndpointAddr, SecretKey};

use super::{ClientRequest, ClientResponse, CLOSE_UNAUTHORIZED, IO_TIMEOUT, REQUEST_TIMEOUT};
use crate::net::{local_endpoint, read_message, write_message, EndpointError, Listen, ALPN_CLIENT};

/// Bound on connecting to a node.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long [`Client::execute`] keeps retrying one command by default.
pub const EXECUTE_PATIENCE: Duration = Duration::from_secs(60);
/// Pause between two attempts of one command.
const RETRY_PAUSE: Duration = Duration::from_millis(200);

/// Why a client request failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    #[error("client endpoint: {0}")]
    Endpoint(#[from] EndpointError),
    #[error("node {node} has no address to dial")]
    NoAddress { node: String },
    #[error("cannot connect to {node}: {reason}")]
    Connect { node: String, reason: String },
    #[error("timed out connecting to {0}")]
    ConnectTimeout(String),
    #[error("the node refused this client (key {key}): {reason}")]
    Unauthorized { key: String, reason: String },
    #[error("the node closed the connection: {0}")]
    Closed(String),
    #[error("protocol error: {0}")]
    Protocol(String),
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("the node refused the command: {0}")]
    Refused(String),
    #[error(
        "the outcome is unknown after {attempts} attempts over {waited:?} (the command \
         applies at most once; command {seq} of session {session:#x}); last: {last}"
    )]
    OutcomeUnknown {
        attempts: u32,
        waited: Duration,
        session: u64,
        seq: u64,
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

/// A connection to one node's client protocol, with this client's session.
pub struct Client {
    endpoint: Endpoint,
    conn: Connection,
    addr: EndpointAddr,
    node: String,
    /// This client's session id (random) and the sequence number of its next command.
    session: u64,
    next_seq: u64,
}

impl Client {
    /// Dials `node` from a fresh endpoint with key `secret` (for `[client] allow` lists) on
    /// an ephemeral port of the node's address family (loopback for a loopback node).
    pub async fn connect(node: EndpointAddr, secret: SecretKey) -> Result<Self, ClientError> {
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
        let conn = match dial(&endpoint, &node).await {
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
                        // Gone: dial again (the session lives in the group, not the connection).
                        if let Ok(Ok(conn)) =
                            tokio::time::timeout_at(deadline, dial(&self.endpoint, &self.addr))
                                .await
                        {
                            self.conn = conn;
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
        let (mut send, mut recv) = self.conn.open_bi().await.map_err(|e| self.lost(e))?;
        write_message(&mut send, request)
            .await
            .map_err(|e| self.frame_error(e))?;
        send.finish()
            .map_err(|e| ClientError::Protocol(e.to_string()))?;
        read_message(&mut recv, "client response")
            .await
            .map_err(|e| self.frame_error(e))
    }

    /// Turns a failed stream into the reason the node gave, if it closed the connection.
    fn frame_error(&self, e: crate::net::FrameError) -> ClientError {
        match self.conn.close_reason() {
            Some(reason) => self.lost(reason),
            None => ClientError::Protocol(e.to_string()),
        }
    }

    fn lost(&self, e: ConnectionError) -> ClientError {
        match e {
            ConnectionError::ApplicationClosed(close)
                if close.error_code == VarInt::from_u32(CLOSE_UNAUTHORIZED) =>
            {
                ClientError::Unauthorized {
                    key: self.endpoint.id().to_string(),
                    reason: String::from_utf8_lossy(&close.reason).into_owned(),
                }
            }
            ConnectionError::ApplicationClosed(close) => {
                ClientError::Closed(String::from_utf8_lossy(&close.reason).into_owned())
            }
            other => ClientError::Closed(other.to_string()),
        }
    }

    /// Closes the connection and the endpoint.
    pub async fn close(self) {
        self.conn.close(VarInt::from_u32(0), b"done");
        let _ = tokio::time::timeout(IO_TIMEOUT, self.endpoint.close()).await;
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
