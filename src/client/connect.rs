//! The client side: dial one node over `tessera/client/1` and send requests, one per
//! bi-stream, each under [`REQUEST_TIMEOUT`] plus the IO bounds.
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use iroh::endpoint::{Connection, ConnectionError, VarInt};
use iroh::{Endpoint, EndpointAddr, SecretKey};

use super::{ClientRequest, ClientResponse, CLOSE_UNAUTHORIZED, IO_TIMEOUT, REQUEST_TIMEOUT};
use crate::net::{local_endpoint, read_message, write_message, EndpointError, Listen, ALPN_CLIENT};

/// Bound on connecting to a node.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

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
}

/// A connection to one node's client protocol.
pub struct Client {
    endpoint: Endpoint,
    conn: Connection,
    node: String,
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
        let conn = match tokio::time::timeout(CONNECT_TIMEOUT, endpoint.connect(node, ALPN_CLIENT))
            .await
        {
            Ok(Ok(conn)) => conn,
            Ok(Err(e)) => {
                endpoint.close().await;
                return Err(ClientError::Connect {
                    node: name,
                    reason: e.to_string(),
                });
            }
            Err(_) => {
                endpoint.close().await;
                return Err(ClientError::ConnectTimeout(name));
            }
        };
        Ok(Self {
            endpoint,
            conn,
            node: name,
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
