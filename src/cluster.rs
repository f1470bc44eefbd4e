//! A cluster of mock-attested members in one process over loopback iroh: the embedded
//! default behind `tessera demo` and `tessera bench`, and a fixture for tests.
//!
//! Everything but the quote provider is production code: real iroh endpoints (relays,
//! address lookup and port mapper off), the bond handshake with the group-key proof,
//! ticket validation of mock TDX quotes through the full DCAP pipeline against
//! `policies/mock.toml`, the group worker and the consensus core. The mock collateral has
//! a fixed validity window, so the cluster's clock runs from inside it.
//!
//! Only with the `mock-attestation` feature: a fixture, never on the path of `tessera node`
//! or `tessera kv`, which build on the same public API ([`crate::groups::Groups`]) without
//! it.
use std::sync::Arc;

use iroh::protocol::Router;
use iroh::{Endpoint, EndpointAddr, SecretKey};
use tessera_attestation::provider::mock::{MockConfig, MockProvider};
use tessera_attestation::Policy;

use crate::groups::{keep_tickets_fresh, node_id_of, GroupsConfig};
use crate::groups::{Bonds, ConsensusConfig, Group, GroupKey, Groups};
use crate::machine::KvStore;
use crate::net::{endpoint::bound_addr, local_endpoint, Listen, ALPN_BOND};
use crate::raft::NodeId;
use crate::storage::Storage;
use crate::tickets::{
    clock_from, Clock, MockTdxValidator, TdxTicketIssuer, Ticket, TicketValidator,
};
use tokio::sync::watch;

/// The policy mock-attested members verify each other against.
pub const MOCK_POLICY: &str = include_str!("../policies/mock.toml");
/// Network id of local clusters.
pub const NETWORK: &str = "tessera-local";
pub use crate::net::random_secret;
pub use crate::tickets::TICKET_LIFETIME_SECS;

/// Why a local cluster could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClusterError {
    /// The mock policy, validator, quote provider or ticket issuer could not be set up.
    #[error("mock attestation: {0}")]
    Attestation(String),
    /// A loopback endpoint could not be created.
    #[error("endpoint: {0}")]
    Endpoint(#[from] crate::net::EndpointError),
    /// A loopback endpoint reported no bound socket to dial it at.
    #[error("endpoint has no bound address")]
    NoAddress,
    /// A member could not join (or found) the group.
    #[error("member: {0}")]
    Join(#[from] crate::groups::JoinError),
    /// The `storage` function of [`LocalCluster::start`] failed for one member.
    #[error("storage for member {index}: {reason}")]
    Storage {
        /// The member's index, as passed to the `storage` function.
        index: usize,
        /// The function's error.
        reason: String,
    },
    /// The member joined but has no bonds (not joined through a gateway); should not happen.
    #[error("the member joined without bonds")]
    NoBonds,
}

/// One member: its endpoint, the endpoint's gateway and router, and its group.
pub struct ClusterMember {
    /// The member's id in the consensus core, derived from its endpoint key
    /// ([`crate::groups::node_id_of`]).
    pub node: NodeId,
    /// Its loopback iroh endpoint (a fresh key each time).
    pub endpoint: Endpoint,
    /// Where peers dial it: the endpoint id with its loopback address.
    pub addr: EndpointAddr,
    /// The endpoint's gateway, which issues and renews its mock tickets.
    pub groups: Groups,
    /// Serves the bond protocol; shutting it down stops the member.
    pub router: Router,
    /// The member's handle on the group, a replicated [`KvStore`].
    pub group: Group<KvStore>,
    /// Its bonds to the other members: who is bonded, bond counters, peers to add.
    pub bonds: Arc<Bonds>,
}

/// What a cluster is made of.
#[derive(Clone, Debug)]
pub struct ClusterOptions {
    /// How many founding members [`LocalCluster::start`] starts.
    pub nodes: usize,
    /// The group's consensus parameters; every member must use the same (they are part
    /// of the group id). Default: [`ConsensusConfig::default`].
    pub consensus: ConsensusConfig,
    /// The group's shared secret; a candidate with another key derives another group id
    /// and cannot bond.
    pub key: GroupKey,
    /// Lifetime of each member's ticket; renewed at half of it.
    pub ticket_lifetime_secs: u64,
    /// `None`: the members found the group with each other as voters. `Some(n)`: they
    /// found it once all `n` are bonded and have confirmed the same founding set
    /// ([`crate::groups::GroupBuilder::bootstrap_expect`]).
    pub bootstrap_expect: Option<usize>,
}

impl ClusterOptions {
    /// `nodes` founding members with group key `key`, the default consensus parameters,
    /// tickets of [`TICKET_LIFETIME_SECS`], founding at once (no `bootstrap_expect`).
    pub fn new(nodes: usize, key: GroupKey) -> Self {
        Self {
            nodes,
            consensus: ConsensusConfig::default(),
            key,
            ticket_lifetime_secs: TICKET_LIFETIME_SECS,
            bootstrap_expect: None,
        }
    }
}

/// Members that founded a group together.
pub struct LocalCluster {
    /// The founding members, in the order their storage was made (index `i` got
    /// `storage(i)`).
    pub members: Vec<ClusterMember>,
    /// The options the cluster was started with.
    pub options: ClusterOptions,
    clock: Clock,
}

/// The mock-root validator for [`MOCK_POLICY`].
pub fn mock_validator() -> Result<Arc<dyn TicketValidator>, ClusterError> {
    let policy =
        Policy::from_toml_str(MOCK_POLICY).map_err(|e| ClusterError::Attestation(e.to_string()))?;
    Ok(Arc::new(
        MockTdxValidator::new(policy).map_err(|e| ClusterError::Attestation(e.to_string()))?,
    ))
}

/// A clock inside the mock collateral's validity window.
pub fn mock_clock() -> Clock {
    clock_from(MockConfig::default().valid_now())
}

/// An issuer of mock-attested tickets for [`NETWORK`], quoted by the mock provider `mock`
/// configures, each valid for `lifetime_secs`: give it to
/// [`GroupsConfig::with_issuer`], which keeps the endpoint's tickets fresh.
pub fn mock_issuer(
    mock: MockConfig,
    lifetime_secs: u64,
) -> Result<Arc<TdxTicketIssuer>, ClusterError> {
    let attestation = |e: &dyn std::fmt::Display| ClusterError::Attestation(e.to_string());
    let provider = MockProvider::new(mock).map_err(|e| attestation(&e))?;
    let collateral = provider.collateral().map_err(|e| attestation(&e))?;
    Ok(Arc::new(TdxTicketIssuer::new(
        Box::new(provider),
        collateral,
        NETWORK.into(),
        lifetime_secs,
    )))
}

/// Mock-attested tickets of `endpoint`'s key ([`mock_issuer`]), renewed at half of
/// `lifetime_secs` by a task of their own: for code that hands tickets around itself.
pub fn mock_tickets(
    endpoint: &Endpoint,
    mock: MockConfig,
    clock: &Clock,
    lifetime_secs: u64,
) -> Result<watch::Receiver<Vec<Ticket>>, ClusterError> {
    keep_tickets_fresh(
        mock_issuer(mock, lifetime_secs)?,
        *endpoint.id().as_bytes(),
        clock.clone(),
    )
    .map_err(|e| ClusterError::Attestation(e.to_string()))
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

impl LocalCluster {
    /// Starts `options.nodes` founding members; `storage(i)` gives member `i` its store.
    pub async fn start<S, F>(options: ClusterOptions, mut storage: F) -> Result<Self, ClusterError>
    where
        S: Storage + Send + 'static,
        F: FnMut(usize) -> Result<S, String>,
    {
        let clock = mock_clock();
        let mut endpoints = Vec::new();
        for _ in 0..options.nodes {
            endpoints.push(loopback_endpoint(random_secret()?).await?);
        }
        let addrs: Vec<EndpointAddr> = endpoints.iter().map(|(_, a)| a.clone()).collect();
        let mut members = Vec::new();
        for (i, (ep, addr)) in endpoints.into_iter().enumerate() {
            let peers = addrs.iter().filter(|a| a.id != ep.id()).cloned().collect();
            let store = storage(i).map_err(|reason| ClusterError::Storage { index: i, reason })?;
            let formation = match options.bootstrap_expect {
                None => Formation::AtOnce,
                Some(n) => Formation::Expect(n),
            };
            let member = MemberSetup {
                options: &options,
                clock: &clock,
                mock: MockConfig::default(),
                formation,
            };
            members.push(member.join(ep, addr, peers, store).await?);
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
        let member = MemberSetup {
            options,
            clock: &self.clock,
            mock,
            formation: match options.bootstrap_expect {
                Some(n) => Formation::Expect(n),
                None => Formation::JoinOnly,
            },
        };
        member.join(ep, addr, peers, storage).await
    }

    /// The clock every member reads: Unix seconds from inside the mock collateral's
    /// validity window ([`mock_clock`]), advancing with real time.
    pub fn clock(&self) -> Clock {
        self.clock.clone()
    }

    /// Index of the member with node id `node`.
    pub fn index_of(&self, node: NodeId) -> Option<usize> {
        self.members.iter().position(|m| m.node == node)
    }
}

/// How a cluster member comes into the group.
enum Formation {
    /// Found with the peers at once (every member is given the same set).
    AtOnce,
    /// `bootstrap_expect(n)`.
    Expect(usize),
    /// Never founds.
    JoinOnly,
}

/// What one member of a local cluster is started with.
struct MemberSetup<'a> {
    options: &'a ClusterOptions,
    clock: &'a Clock,
    mock: MockConfig,
    formation: Formation,
}

impl MemberSetup<'_> {
    /// Joins the group on `ep` with mock tickets (the gateway issues and renews them),
    /// through the endpoint's own gateway and a router that serves it.
    async fn join<S: Storage + Send + 'static>(
        self,
        ep: Endpoint,
        addr: EndpointAddr,
        peers: Vec<EndpointAddr>,
        storage: S,
    ) -> Result<ClusterMember, ClusterError> {
        let issuer = mock_issuer(self.mock, self.options.ticket_lifetime_secs)?;
        let groups = Groups::new(
            ep.clone(),
            GroupsConfig::new(NETWORK, self.clock.clone()).with_issuer(issuer),
        );
        let builder = groups
            .with_key(self.options.key.clone())
            .with_state_machine(KvStore::new())
            .with_storage(storage)
            .with_consensus(&self.options.consensus)
            .require_ticket(mock_validator()?)
            .with_peers(peers);
        let builder = match self.formation {
            Formation::AtOnce => builder.found_at_once(),
            Formation::Expect(n) => builder.bootstrap_expect(n),
            Formation::JoinOnly => builder.join_only(),
        };
        let group = builder.join().await?;
        let bonds = group.bonds().ok_or(ClusterError::NoBonds)?;
        let router = groups.spawn_router();
        Ok(ClusterMember {
            node: node_id_of(&ep.id()),
            endpoint: ep,
            addr,
            groups,
            router,
            group,
            bonds,
        })
    }
}
