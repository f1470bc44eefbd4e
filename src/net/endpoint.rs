//! The iroh endpoint of a node, configured to contact nothing it was not told about.
//!
//! Facts for iroh 1.4 (architecture.md §5, checked with strace and a packet capture): the port
//! mapper is on by default and multicasts UPnP even with relays off, and the `N0` presets
//! resolve DNS and publish to pkarr. So we start from `presets::Minimal` and switch off
//! relays, address lookup, the port mapper and the net-report probes explicitly. Peers are
//! dialled at the addresses configuration or discovery gives. A relay (for peers behind
//! NAT) is used only when the operator configures one: [`Listen::relay`].
use std::net::SocketAddr;

use iroh::endpoint::{presets, PortmapperConfig};
use iroh::{Endpoint, NetReportConfig, RelayMode, RelayUrl, SecretKey};

/// ALPN of the bond protocol between group members (architecture.md §6).
pub const ALPN_BOND: &[u8] = b"tessera/bond/1";
/// ALPN of the client protocol (`tessera kv`, `tessera status`).
pub const ALPN_CLIENT: &[u8] = b"tessera/client/1";
/// ALPN of the catalog exchange between nodes of one network (architecture.md §5).
pub const ALPN_DISCOVERY: &[u8] = b"tessera/discovery/1";

/// Where and how a node listens.
#[derive(Clone, Debug)]
pub struct Listen {
    /// Local UDP address to bind (port 0 picks a free port).
    pub bind: SocketAddr,
    /// ALPNs the endpoint accepts.
    pub alpns: Vec<Vec<u8>>,
    /// The relay server this node keeps a connection to and peers may reach it through.
    /// `None` (the default everywhere): no relay, nothing contacted but the peers dialled.
    pub relay: Option<RelayUrl>,
}

/// The endpoint could not be created.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EndpointError {
    /// iroh refused the listen address before binding.
    #[error("listen address {addr} is not usable: {reason}")]
    BadAddress {
        /// The address from [`Listen::bind`].
        addr: SocketAddr,
        /// iroh's message.
        reason: String,
    },
    /// Binding the socket failed (the port is taken, or the address is not local).
    #[error("cannot bind {addr}: {reason}")]
    Bind {
        /// The address from [`Listen::bind`].
        addr: SocketAddr,
        /// iroh's message.
        reason: String,
    },
    /// The system random number generator failed in [`random_secret`].
    #[error("the system has no randomness for a new secret key")]
    Randomness,
}

/// A new random iroh secret key (a node identity), from the system's generator.
pub fn random_secret() -> Result<SecretKey, EndpointError> {
    let mut b = [0u8; 32];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut b)
        .map_err(|_| EndpointError::Randomness)?;
    Ok(SecretKey::from_bytes(&b))
}

/// Binds an endpoint that uses no public address lookup, no port mapper, no net-report
/// probes, and no relay unless [`Listen::relay`] names one.
pub async fn local_endpoint(secret: SecretKey, listen: &Listen) -> Result<Endpoint, EndpointError> {
    let addr = listen.bind;
    let relay = match &listen.relay {
        Some(url) => RelayMode::custom([url.clone()]),
        None => RelayMode::Disabled,
    };
    Endpoint::builder(presets::Minimal)
        .secret_key(secret)
        .alpns(listen.alpns.clone())
        .relay_mode(relay)
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

/// Most addresses a node advertises (the discovery entry's limit).
const ADVERTISED_ADDRS_MAX: usize = 16;

/// The addresses peers should dial this node at: `listen` itself, or, for a node listening
/// on every interface (`0.0.0.0` / `::`), the local interface addresses iroh found, with
/// the bound port (an unspecified address cannot be dialled).
pub fn advertised_addrs(endpoint: &Endpoint, listen: SocketAddr) -> Vec<SocketAddr> {
    if !listen.ip().is_unspecified() {
        return vec![listen];
    }
    endpoint
        .addr()
        .ip_addrs()
        .copied()
        .filter(|a| !a.ip().is_unspecified())
        .take(ADVERTISED_ADDRS_MAX)
        .collect()
}

/// The first address the endpoint is bound to (for dialling it on loopback).
pub fn bound_addr(endpoint: &Endpoint) -> Option<SocketAddr> {
    endpoint.bound_sockets().into_iter().next()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secret() -> SecretKey {
        let mut bytes = [0u8; 32];
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes)
            .expect("randomness");
        SecretKey::from_bytes(&bytes)
    }

    /// An endpoint with a relay configured (here one that cannot be reached) still binds
    /// and connects to peers directly, and does not claim an unreachable relay as its home.
    #[tokio::test]
    async fn a_configured_relay_does_not_stop_direct_connections() {
        const ALPN: &[u8] = b"tessera/test/1";
        let loopback = SocketAddr::from(([127, 0, 0, 1], 0));
        // A loopback port nothing listens on: the relay is unreachable, nothing leaves.
        let relay: RelayUrl = "http://127.0.0.1:9".parse().expect("url");
        let with_relay = Listen {
            bind: loopback,
            alpns: vec![ALPN.to_vec()],
            relay: Some(relay.clone()),
        };
        let without = Listen {
            bind: loopback,
            alpns: vec![ALPN.to_vec()],
            relay: None,
        };
        let a = local_endpoint(secret(), &with_relay).await.expect("a");
        let b = local_endpoint(secret(), &without).await.expect("b");
        assert_eq!(
            a.addr().relay_urls().cloned().collect::<Vec<_>>(),
            Vec::<RelayUrl>::new(),
            "an unreachable relay is never reported as home"
        );
        assert!(b.addr().relay_urls().next().is_none());
        let accept = tokio::spawn({
            let b = b.clone();
            async move { b.accept().await.expect("incoming").await.expect("accepted") }
        });
        let to_b = iroh::EndpointAddr::new(b.id()).with_ip_addr(bound_addr(&b).expect("bound"));
        let conn = tokio::time::timeout(std::time::Duration::from_secs(10), a.connect(to_b, ALPN))
            .await
            .expect("connect in time")
            .expect("direct connection despite the relay setting");
        let accepted = accept.await.expect("accept task");
        assert_eq!(accepted.remote_id(), a.id());
        conn.close(0u32.into(), b"done");
        a.close().await;
        b.close().await;
    }

    /// A node on a concrete address advertises it; one on every interface advertises
    /// dialable interface addresses with its bound port, never `0.0.0.0`.
    #[tokio::test]
    async fn advertised_addresses_are_dialable() {
        let listen = |bind: &str| Listen {
            bind: bind.parse().expect("addr"),
            alpns: Vec::new(),
            relay: None,
        };
        let local = local_endpoint(secret(), &listen("127.0.0.1:0"))
            .await
            .expect("ep");
        let bound = bound_addr(&local).expect("bound");
        assert_eq!(advertised_addrs(&local, bound), vec![bound]);
        let any = local_endpoint(secret(), &listen("0.0.0.0:0"))
            .await
            .expect("ep");
        let bound = bound_addr(&any).expect("bound");
        assert!(bound.ip().is_unspecified());
        for addr in advertised_addrs(&any, bound) {
            assert!(!addr.ip().is_unspecified(), "{addr}");
            assert_eq!(addr.port(), bound.port(), "{addr}");
        }
        local.close().await;
        any.close().await;
    }
}
