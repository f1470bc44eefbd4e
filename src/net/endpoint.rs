//! The iroh endpoint of a node, configured to contact nothing it was not told about.
//!
//! Facts for iroh 1.4 (DESIGN §5, checked with strace and a packet capture): the port
//! mapper is on by default and multicasts UPnP even with relays off, and the `N0` presets
//! resolve DNS and publish to pkarr. So we start from `presets::Minimal` and switch off
//! relays, address lookup, the port mapper and the net-report probes explicitly. Peers are
//! dialled at the addresses configuration or discovery gives.
use std::net::SocketAddr;

use iroh::endpoint::{presets, PortmapperConfig};
use iroh::{Endpoint, NetReportConfig, RelayMode, SecretKey};

/// ALPN of the bond protocol between group members (DESIGN §6).
pub const ALPN_BOND: &[u8] = b"tessera/bond/1";
/// ALPN of the client protocol (`tessera kv`, `tessera status`).
pub const ALPN_CLIENT: &[u8] = b"tessera/client/1";
/// ALPN of the catalog exchange between nodes of one network (DESIGN §5).
pub const ALPN_DISCOVERY: &[u8] = b"tessera/discovery/1";

/// Where and how a node listens.
#[derive(Clone, Debug)]
pub struct Listen {
    /// Local UDP address to bind (port 0 picks a free port).
    pub bind: SocketAddr,
    /// ALPNs the endpoint accepts.
    pub alpns: Vec<Vec<u8>>,
}

/// The endpoint could not be created.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EndpointError {
    #[error("listen address {addr} is not usable: {reason}")]
    BadAddress { addr: SocketAddr, reason: String },
    #[error("cannot bind {addr}: {reason}")]
    Bind { addr: SocketAddr, reason: String },
}

/// Binds an endpoint that uses no relay, no public address lookup, no port mapper and no
/// net-report probes.
pub async fn local_endpoint(secret: SecretKey, listen: &Listen) -> Result<Endpoint, EndpointError> {
    let addr = listen.bind;
    Endpoint::builder(presets::Minimal)
        .secret_key(secret)
        .alpns(listen.alpns.clone())
        .relay_mode(RelayMode::Disabled)
        .clear_address_lookup()
        .portmapper_config(PortmapperConfig::Disabled)
        .net_report_config(NetReportConfig::minimal())
        .clear_ip_transports()
        .bind_addr(addr)
        .map_err(|e| EndpointError::BadAddress {
            addr,
            reason: e.to_string(),
        })?
        .bind()
        .await
        .map_err(|e| EndpointError::Bind {
            addr,
            reason: e.to_string(),
        })
}

/// The first address the endpoint is bound to (for dialling it on loopback).
pub fn bound_addr(endpoint: &Endpoint) -> Option<SocketAddr> {
    endpoint.bound_sockets().into_iter().next()
}
