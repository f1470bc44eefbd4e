//! A cluster of mock-attested members in one process over loopback iroh: the embedded
//! default behind `tessera demo` and `tessera bench`, and a fixture for tests.
//!
//! Everything but the quote provider is production code: real iroh endpoints (relays,
//! address lookup and port mapper off), the bond handshake with the group-key proof,
//! ticket validation of mock TDX quotes through the full DCAP pipeline against
//! `policies/mock.toml`, the group worker and the consensus core. The mock collateral has
//! a fixed validity window, so the cluster's clock runs from inside it.
//!
//! The cluster itself (`LocalCluster`, `mock_validator`, `MOCK_POLICY`) needs the
//! `mock-attestation` feature; the helpers `tessera node` and `tessera kv` share with it
//! ([`random_secret`], [`TICKET_LIFETIME_SECS`], [`loopback_endpoint`]) are in every build.
#[cfg(feature = "mock-attestation")]
use std::sync::Arc;

use iroh::{Endpoint, EndpointAddr, SecretKey};
#[cfg(feature = "mock-attestation")]
use tessera_attestation::provider::mock::{MockConfig, MockProvider};
#[cfg(feature = "mock-attestation")]
use tessera_attestation::Policy;

#[cfg(feature = "mock-attestation")]
use crate::groups::{keep_tickets_fresh, node_id_of, GroupBuilder};
use crate::groups::{GroupKey, JoinedGroup, WorkerConfig};
use crate::machine::KvStore;
use crate::net::{endpoint::bound_addr, local_endpoint, Listen, ALPN_BOND};
use crate::raft::{NodeId, RaftConfig};
#[cfg(feature = "mock-attestation")]
use crate::storage::Storage;
#[cfg(feature = "mock-attestation")]
use crate::tickets::{clock_from, Clock, MockTdxValidator, TdxTicketIssuer, TicketValidator};

/// The policy mock-attested members verify each other against.
#[cfg(feature = "mock-attestation")]
pub const MOCK_POLICY: &str = include_str!("../policies/mock.toml");
/// Network id of local clusters.
pub const NETWORK: &str = "tessera-local";
/// Default lifetime of a member's ticket.
pub const TICKET_LIFETIME_SECS: u64 = 300;

/// Why a local cluster could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClusterError {
    #[error("mock attestation: {0}")]
    Attestation(String),
    #[error("endpoint: {0}")]
    Endpoint(#[from] crate::net::EndpointError),
    #[error("endpoint has no bound address")]
    NoAddress,
    #[error("member: {0}")]
    Start(#[from] crate::groups::StartError),
    #[error("storage for member {index}: {reason}")]
    Storage { index: usize, reason: String },
    #[error("no system randomness")]
    Randomness,
}

/// One member.
pub struct ClusterMember {
    pub node: NodeId,
    pub endpoint: Endpoint,
    pub addr: EndpointAddr,
    pub joined: JoinedGroup<KvStore>,
}

/// What a cluster is made of.
#[derive(Clone, Debug)]
pub struct ClusterOptions {
    pub nodes: usize,
    pub raft: RaftConfig,
    pub worker: WorkerConfig,
    pub key: GroupKey,
    /// Lifetime of each member's ticket; renewed at half of it.
    pub ticket_lifetime_secs: u64,
    /// `None`: the members found the group with each other as voters. `Some(n)`: they
    /// found it once all `n` are bonded and have confirmed the same founding set
    /// ([`GroupBuilder::bootstrap_expect`]).
    pub bootstrap_expect: Option<usize>,
}

impl ClusterOptions {
    pub fn new(nodes: usize, key: GroupKey) -> Self {
        Self {
            nodes,
            raft: RaftConfig::default(),
            worker: WorkerConfig::default(),
            key,
            ticket_lifetime_secs: TICKET_LIFETIME_SECS,
            bootstrap_expect: None,
        }
    }
}

/// Members that founded a group together.
#[cfg(feature = "mock-attestation")]
pub struct LocalCluster {
    pub members: Vec<ClusterMember>,
    pub options: ClusterOptions,
    clock: Clock,
}

/// A random iroh secret key.
pub fn random_secret() -> Result<SecretKey, ClusterError> {
    let mut b = [0u8; 32];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut b)
        .map_err(|_| ClusterError::Randomness)?;
    Ok(SecretKey::from_bytes(&b))
}

/// The mock-root validator for [`MOCK_POLICY`].
#[cfg(feature = "mock-attestation")]
pub fn mock_validator() -> Result<Arc<dyn TicketValidator>, ClusterError> {
    let policy =
        Policy::from_toml_str(MOCK_POLICY).map_err(|e| ClusterError::Attestation(e.to_string()))?;
    Ok(Arc::new(
        MockTdxValidator::new(policy).map_err(|e| ClusterError::Attestation(e.to_string()))?,
    ))
}

/// A loopback endpoint accepting bonds.
pub async fn loopback_endpoint(
    secret: SecretKey,
) -> Result<(Endpoint, EndpointAddr), ClusterError> {
    let ep = local_endpoint(
        secret,
        &Listen {
            bind: std::net::SocketAddr::from(([127, 0, 0, 1], 0)),
            alpns: vec![ALPN_BOND.to_vec()],
            relay: None,
        },
    )
    .await?;
    let addr =
        EndpointAddr::new(ep.id()).with_ip_addr(bound_addr(&ep).ok_or(ClusterError::NoAddress)?);
    Ok((ep, addr))
}

#[cfg(feature = "mock-attestation")]
impl LocalCluster {
    /// Starts `options.nodes` founding members; `storage(i)` gives member `i` its store.
    pub async fn start<S, F>(options: ClusterOptions, mut storage: F) -> Result<Self, ClusterError>
    where
        S: Storage + Send + 'static,
        F: FnMut(usize) -> Result<S, String>,
    {
        let clock = clock_from(MockConfig::default().valid_now());
        let mut endpoints = Vec::new();
        for _ in 0..options.nodes {
            endpoints.push(loopback_endpoint(random_secret()?).await?);
        }
        let addrs: Vec<EndpointAddr> = endpoints.iter().map(|(_, a)| a.clone()).collect();
        let mut members = Vec::new();
        for (i, (ep, addr)) in endpoints.into_iter().enumerate() {
            let peers = addrs.iter().filter(|a| a.id != ep.id()).cloned().collect();
            let store = storage(i).map_err(|reason| ClusterError::Storage { index: i, reason })?;
            let builder = member_builder(&options, &clock, MockConfig::default(), &ep)?;
            let builder = match options.bootstrap_expect {
                None => builder.with_peers(peers, true),
                Some(n) => builder.with_peers(peers, false).bootstrap_expect(n),
            };
            let joined = builder.join(ep.clone(), KvStore::new(), store)?;
            members.push(ClusterMember {
                node: node_id_of(&ep.id()),
                endpoint: ep,
                addr,
                joined,
            });
        }
        Ok(Self {
            members,
            options,
            clock,
        })
    }

    /// A new peer that tries to join with its own quote configuration and group options
    /// (key, consensus config, ticket lifetime); it dials every member the cluster started
    /// with.
    pub async fn candidate<S: Storage + Send + 'static>(
        &self,
        mock: MockConfig,
        options: &ClusterOptions,
        storage: S,
    ) -> Result<ClusterMember, ClusterError> {
        let peers = self.members.iter().map(|m| m.addr.clone()).collect();
        self.candidate_dialling(peers, mock, options, storage).await
    }

    /// A new peer like [`LocalCluster::candidate`] that dials `peers` (members that joined
    /// later included).
    pub async fn candidate_dialling<S: Storage + Send + 'static>(
        &self,
        peers: Vec<EndpointAddr>,
        mock: MockConfig,
        options: &ClusterOptions,
        storage: S,
    ) -> Result<ClusterMember, ClusterError> {
        let (ep, addr) = loopback_endpoint(random_secret()?).await?;
        let mut builder = member_builder(options, &self.clock, mock, &ep)?.with_peers(peers, false);
        if let Some(n) = options.bootstrap_expect {
            builder = builder.bootstrap_expect(n);
        }
        let joined = builder.join(ep.clone(), KvStore::new(), storage)?;
        Ok(ClusterMember {
            node: node_id_of(&ep.id()),
            endpoint: ep,
            addr,
            joined,
        })
    }

    pub fn clock(&self) -> Clock {
        self.clock.clone()
    }

    /// Index of the member with node id `node`.
    pub fn index_of(&self, node: NodeId) -> Option<usize> {
        self.members.iter().position(|m| m.node == node)
    }
}

#[cfg(feature = "mock-attestation")]
fn member_builder(
    options: &ClusterOptions,
    clock: &Clock,
    mock: MockConfig,
    ep: &Endpoint,
) -> Result<GroupBuilder, ClusterError> {
    let provider = MockProvider::new(mock).map_err(|e| ClusterError::Attestation(e.to_string()))?;
    let collateral = provider
        .collateral()
        .map_err(|e| ClusterError::Attestation(e.to_string()))?;
    let issuer = TdxTicketIssuer::new(
        Box::new(provider),
        collateral,
        NETWORK.into(),
        options.ticket_lifetime_secs,
    );
    let tickets = keep_tickets_fresh(Arc::new(issuer), *ep.id().as_bytes(), clock.clone())
        .map_err(|e| ClusterError::Attestation(e.to_string()))?;
    Ok(
        GroupBuilder::new(options.key.clone(), NETWORK, clock.clone())
            .with_consensus_config(options.raft.clone(), options.worker.clone())
            .require_ticket(mock_validator()?)
            .with_tickets(tickets),
    )
}
