//! `tessera node --config node.toml`: one member of a group, serving the built-in
//! key-value store to clients, until SIGINT or SIGTERM. And `tessera keygen`, which writes
//! the key files a config points to.
//!
//! Start-up reads and checks everything first (config, key files, policies, the quote
//! provider), so a bad config fails before any socket is bound, with a message naming the
//! field. Then it binds the endpoint, answers "who listens here" on TCP at the same port
//! ([`tessera::net::announce`]), asks its bootstrap addresses the same (a fresh node waits
//! until all have answered or one says it is in a group; the answers are asked again
//! every few seconds, and a new id behind an address is dialled), joins the group with its
//! bootstrap peers, runs
//! discovery (catalog exchange with the bootstrap peers and then with the peers learned
//! from them; group members learned that way are dialled), serves the client protocol
//! and, if configured, Prometheus metrics, and prints one line
//! `tessera node: ready node_id=<id> listen=<addr> group=<id>` on stdout.
//!
//! Exit status: 0 after a signal, 1 when the node fails while running, 2 when it cannot
//! start (config, keys, policies, attestation, bind).
use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, Context, Result};
use clap::Args;
use iroh::protocol::Router;
use iroh::{EndpointAddr, PublicKey, SecretKey};
use tessera::client::{await_group_key, AwaitKey};
use tessera::client::{ClientProtocol, ClientService};
use tessera::collateral::own_quote_report_data;
use tessera::collateral::{
    assess, cache as collateral_cache, CollateralStatus, PccsClient, PccsRefresh, RefreshSettings,
    SharedCollateral, SourceKind,
};
use tessera::config::{
    write_private_file, write_secret_key, AttestationMode, GroupKeySource, NodeConfig, StorageKind,
};
use tessera::discovery::{Discovery, DiscoveryConfig, OwnEntry, PeerDialer};
use tessera::groups::Bonds;
use tessera::groups::{keep_tickets_fresh, GroupKey, Groups, GroupsConfig};
use tessera::machine::KvStore;
use tessera::net::random_secret;
use tessera::net::{
    advertised_addrs, announce, bound_addr, local_endpoint, Listen, ALPN_BOND, ALPN_CLIENT,
    ALPN_DISCOVERY,
};
#[cfg(feature = "rocksdb")]
use tessera::storage::{LockedRocksDb, RocksDbStorage, StorageKey};
#[cfg(feature = "mock-attestation")]
use tessera::tickets::clock_from;
use tessera::tickets::TICKET_LIFETIME_SECS;
use tessera::tickets::{system_clock, Clock, TdxTicketIssuer};
use tessera_attestation::provider::configfs::ConfigfsTsmProvider;
#[cfg(feature = "mock-attestation")]
use tessera_attestation::provider::mock::{MockConfig, MockProvider};
use tessera_attestation::{Collateral, CollateralWatermark, QuoteProvider};

use super::metrics;

/// Bound on shutting down: the group's worker and bonds, then the endpoint.
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(10);
/// Bound on leaving the group when a node with an identity of its own process stops.
const LEAVE_TIMEOUT: Duration = Duration::from_secs(5);
/// Bound on asking one bootstrap address who listens there.
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(2);
/// Pause between rounds of asking the bootstrap addresses at start.
const RESOLVE_PAUSE: Duration = Duration::from_millis(250);
/// Rounds at start between two "still waiting" log lines.
const RESOLVE_ROUNDS_PER_NOTE: u32 = 20;
/// How often a running node asks its bootstrap addresses again (a peer that restarted
/// has a new id).
const RERESOLVE_INTERVAL: Duration = Duration::from_secs(3);

#[derive(Args, Debug)]
pub struct NodeArgs {
    /// The node's configuration (see `tessera::config` for the schema).
    #[arg(long)]
    pub config: PathBuf,
}

#[derive(Args, Debug)]
pub struct KeygenArgs {
    /// Where to write the key (hex, mode 0600; an existing file is never overwritten).
    #[arg(long)]
    pub out: PathBuf,
    /// Write a group key (32 random bytes, shared by every member out of band) instead of
    /// a node key.
    #[arg(long)]
    pub group: bool,
}

#[derive(Args, Debug)]
pub struct ConfigIdArgs {
    /// The node.toml whose id to print (the policy files it names are read too).
    #[arg(long)]
    pub config: PathBuf,
    /// Print it in base64, as QEMU's tdx-guest `mrconfigid` property takes it.
    #[arg(long)]
    pub base64: bool,
}

/// `tessera config-id`: the id a TD's host must start it with (MRCONFIGID) for it to run
/// this config, and that a provisioner's policy pins (`mr_config_id`).
pub fn config_id(args: ConfigIdArgs) -> ExitCode {
    let id = NodeConfig::load(&args.config).and_then(|config| config.config_id());
    match id {
        Ok(id) if args.base64 => {
            println!("{}", data_encoding::BASE64.encode(&id));
            ExitCode::SUCCESS
        }
        Ok(id) => {
            println!("{}", hex::encode(id));
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("tessera config-id: {e}");
            ExitCode::from(2)
        }
    }
}

/// A node that could not start (exit 2), as opposed to one that failed while running.
#[derive(Debug)]
struct StartFailure(anyhow::Error);

impl std::fmt::Display for StartFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:#}", self.0)
    }
}

impl std::error::Error for StartFailure {}

fn start_failure(e: impl Into<anyhow::Error>) -> anyhow::Error {
    anyhow::Error::new(StartFailure(e.into()))
}

pub fn run(args: NodeArgs) -> ExitCode {
    match node(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if e.is::<StartFailure>() => {
            eprintln!("tessera node: cannot start: {e}");
            ExitCode::from(2)
        }
        Err(e) => {
            eprintln!("tessera node: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Everything read and checked before the node binds anything.
struct Prepared {
    config: NodeConfig,
    /// `None`: provisioned after start (`[provision]`).
    key: Option<GroupKey>,
    secret: SecretKey,
    fresh_secret: bool,
    validator: Arc<dyn tessera::tickets::TicketValidator>,
    issuer: TdxTicketIssuer,
    /// The refresh from `pccs_url`, to run once the node serves.
    collateral_refresh: Option<PccsRefresh>,
    collateral_status: tokio::sync::watch::Receiver<CollateralStatus>,
    clock: Clock,
    /// The taken data directory when `storage = "rocksdb"`, and whether it holds records.
    #[cfg(feature = "rocksdb")]
    rocks: Option<(LockedRocksDb, bool)>,
}

fn prepare(args: &NodeArgs) -> Result<Prepared> {
    let config = NodeConfig::load(&args.config)?;
    let filter = tracing_subscriber::EnvFilter::try_new(&config.log_level)
        .map_err(|e| config.error("log_level", format!("not a tracing filter: {e}")))?;
    // A second subscriber (never in this binary) would be the only reason this fails.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .try_init();
    let (secret, fresh_secret) = match config.secret_key()? {
        Some(secret) => (secret, false),
        None => (random_secret()?, true),
    };
    // Opened before anything binds: a data directory in use or open to others stops the
    // node here, with the directory named.
    #[cfg(feature = "rocksdb")]
    let rocks = match config.storage {
        StorageKind::RocksDb => Some(
            lock_own_store(&config.data_dir.join("raft"), &secret, fresh_secret)
                .map_err(|e| config.error("data_dir", e))?,
        ),
        StorageKind::Memory => None,
    };
    #[cfg(not(feature = "rocksdb"))]
    if config.storage == StorageKind::RocksDb {
        return Err(config
            .error(
                "storage",
                "this build has no RocksDB store (build with `--features rocksdb`); use storage = \"memory\"",
            )
            .into());
    }
    let key = config.group_key()?;
    let validator = config.validator()?;
    let config_id = config.config_id()?;
    std::fs::create_dir_all(&config.data_dir)
        .map_err(|e| config.error("data_dir", format!("{}: {e}", config.data_dir.display())))?;
    // The provider's own collateral (the mock's), used when the config names no source.
    type Provider = Arc<dyn QuoteProvider + Send + Sync>;
    let (provider, builtin, clock): (Provider, Option<Collateral>, Clock) = match config.attestation
    {
        // `NodeConfig::load` refuses "mock" in a build without the mock provider.
        #[cfg(not(feature = "mock-attestation"))]
        AttestationMode::Mock => {
            return Err(config
                .error("attestation", "\"mock\": this build has no mock provider")
                .into())
        }
        #[cfg(feature = "mock-attestation")]
        AttestationMode::Mock => {
            // The mock "host" starts the mock TD with this config's id, as run-tdx.sh
            // does: its quotes name the config, and policies can pin it.
            let mut mock = MockConfig {
                mr_config_id: config_id,
                ..MockConfig::default()
            };
            // `[mock]` test switches: an intruder with another measurement or PKI.
            if let Some(mr_td) = config.mock.mr_td {
                mock.mr_td = mr_td;
            }
            if let Some(seed) = config.mock.pki_seed {
                mock.seed = seed;
            }
            let provider = MockProvider::new(mock.clone())
                .map_err(|e| config.error("attestation", format!("mock provider: {e}")))?;
            let collateral = provider
                .collateral()
                .map_err(|e| config.error("attestation", format!("mock collateral: {e}")))?;
            // The mock collateral has a fixed validity window: run the clock from inside it.
            (
                Arc::new(provider),
                Some(collateral),
                clock_from(mock.valid_now()),
            )
        }
        AttestationMode::Tdx => {
            let provider = ConfigfsTsmProvider::new();
            provider.detect().map_err(|e| {
                config.error(
                    "attestation",
                    format!("\"tdx\" but this machine cannot produce TDX quotes: {e}"),
                )
            })?;
            // Before anything else: this TD must run the config its quotes will name.
            let own = provider
                .quote(&[0u8; 64])
                .map_err(|e| config.error("attestation", format!("cannot quote this TD: {e}")))?;
            tessera::config::check_config_id(own.as_bytes(), &config_id)
                .map_err(|e| config.error("attestation", e.to_string()))?;
            (Arc::new(provider), None, system_clock())
        }
    };
    // Fetched collateral is compared with what peers show the validators.
    let watermarks = validator.collateral_watermarks();
    let collateral = collateral_source(&config, provider.clone(), builtin, &clock, watermarks)?;
    let issuer = TdxTicketIssuer::with_shared_collateral(
        provider,
        collateral.shared,
        config.network_id.clone(),
        TICKET_LIFETIME_SECS,
    );
    Ok(Prepared {
        config,
        key,
        secret,
        fresh_secret,
        validator,
        issuer,
        collateral_refresh: collateral.refresh,
        collateral_status: collateral.status,
        clock,
        #[cfg(feature = "rocksdb")]
        rocks,
    })
}

/// This node's collateral: the shared bundle its tickets carry, its status for metrics,
/// and the refresh task when it comes from a PCCS.
struct CollateralSetup {
    shared: SharedCollateral,
    status: tokio::sync::watch::Receiver<CollateralStatus>,
    refresh: Option<PccsRefresh>,
}

/// Sets up the collateral source the config names (architecture.md §12): `pccs_url` (the cache in
/// the data directory if it verifies, else a first fetch, which must succeed), or
/// `collateral_file` (read once), or the mock provider's own. A PCCS's bundles are compared
/// with `watermarks`, the newest collateral peers have shown the node's validators.
fn collateral_source(
    config: &NodeConfig,
    provider: Arc<dyn QuoteProvider + Send + Sync>,
    builtin: Option<Collateral>,
    clock: &Clock,
    watermarks: Vec<Arc<CollateralWatermark>>,
) -> Result<CollateralSetup> {
    let policies = config.load_policies()?;
    if let Some(pccs) = &config.pccs {
        let client = PccsClient::new(&pccs.url, Duration::from_secs(pccs.fetch_timeout_secs))
            .map_err(|e| config.error("pccs_url", e.to_string()))?;
        let mut refresh = PccsRefresh::new(
            client,
            RefreshSettings::every(pccs.refresh_secs),
            policies,
            provider,
            Some(collateral_cache::path_in(&config.data_dir)),
        )
        .with_peer_watermarks(watermarks);
        // Before the node's runtime exists: a runtime of its own for the first fetch (the
        // client keeps no connection, so nothing of it outlives this runtime).
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("cannot start a runtime for the first collateral fetch")?;
        let shared = runtime
            .block_on(refresh.start(clock()))
            .map_err(|e| config.error("pccs_url", e.to_string()))?;
        return Ok(CollateralSetup {
            shared,
            status: refresh.status(),
            refresh: Some(refresh),
        });
    }
    let (collateral, source) = match (&config.collateral_file, builtin) {
        (Some(path), _) => {
            let bytes = std::fs::read(path)
                .map_err(|e| config.error("collateral_file", format!("{}: {e}", path.display())))?;
            let collateral = Collateral::from_json(&bytes)
                .map_err(|e| config.error("collateral_file", format!("{}: {e}", path.display())))?;
            (collateral, SourceKind::File)
        }
        (None, Some(collateral)) => (collateral, SourceKind::Mock),
        // `NodeConfig::load` requires a source with "tdx"; not reachable.
        (None, None) => {
            return Err(config
                .error("collateral_file", "required with attestation = \"tdx\"")
                .into())
        }
    };
    // Checked once, for the status and an early warning: tickets with collateral that does
    // not verify this node's own quote are refused by every peer.
    let own = provider
        .quote(&own_quote_report_data())
        .map_err(|e| config.error("attestation", format!("cannot quote this TD: {e}")))?;
    let bundle = match assess(own.as_bytes(), &collateral, &policies, clock()) {
        Ok(bundle) => {
            tracing::info!(source = source.name(), collateral = %bundle.describe(), "collateral loaded");
            Some(bundle)
        }
        Err(e) => {
            tracing::warn!(source = source.name(), error = %e, "this node's collateral does not verify its own quote: peers will refuse its tickets");
            None
        }
    };
    let (_, status) = tokio::sync::watch::channel(CollateralStatus::fixed(source, bundle.as_ref()));
    Ok(CollateralSetup {
        shared: SharedCollateral::new(collateral),
        status,
        refresh: None,
    })
}

/// Takes the RocksDB data directory `dir` as node `secret`'s own (architecture.md §3): records
/// another identity wrote (a previous start without a key file, as in a TD) are set aside
/// and a fresh directory is taken in their place, so this node joins as the new member it
/// is and never takes a dead identity's votes or log for its own. Records with no owner
/// recorded are adopted by a node with a key file (its identity persists) and set aside
/// otherwise. The records are read (unsealed) once the group key is known. Also returns
/// whether the directory holds records.
#[cfg(feature = "rocksdb")]
fn lock_own_store(
    dir: &std::path::Path,
    secret: &SecretKey,
    fresh_secret: bool,
) -> std::result::Result<(LockedRocksDb, bool), String> {
    use tessera::storage::identity::{self, Owner};
    let id = secret.public().to_string();
    // Locking holds the directory: nothing below touches a store in use.
    let store = RocksDbStorage::lock(dir).map_err(|e| e.to_string())?;
    let has_records = store.has_records().map_err(|e| e.to_string())?;
    let previous = match identity::owner(dir, &id, has_records).map_err(|e| e.to_string())? {
        Owner::This => None,
        Owner::Unrecorded if !fresh_secret => None,
        Owner::Unrecorded => Some("unrecorded".to_owned()),
        Owner::Other(previous) => Some(previous),
    };
    let (store, has_records) = match previous {
        None => (store, has_records),
        Some(previous) => {
            drop(store);
            let to = identity::set_aside(dir, &previous).map_err(|e| e.to_string())?;
            tracing::warn!(previous = %previous, moved_to = %to.display(), "the data directory held another identity's records (a restart with a new key): set aside; joining as a new member");
            (RocksDbStorage::lock(dir).map_err(|e| e.to_string())?, false)
        }
    };
    identity::record(dir, &id).map_err(|e| e.to_string())?;
    Ok((store, has_records))
}

fn node(args: NodeArgs) -> Result<()> {
    let prepared = prepare(&args).map_err(start_failure)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
        .map_err(start_failure)?;
    runtime.block_on(serve(prepared))
}

async fn serve(p: Prepared) -> Result<()> {
    let config = &p.config;
    let node_key = p.secret.public();
    #[cfg(feature = "dangerous-reference-quorum")]
    eprintln!(
        "tessera node: WARNING: built with the test-only feature dangerous-reference-quorum: \
         quorums count only the voters reachable now, which is unsafe under partitions"
    );
    if p.fresh_secret {
        println!("tessera node: node id {node_key} (fresh key, kept in memory only)");
    }
    let endpoint = local_endpoint(
        p.secret.clone(),
        &Listen {
            bind: config.listen,
            alpns: vec![
                ALPN_BOND.to_vec(),
                ALPN_CLIENT.to_vec(),
                ALPN_DISCOVERY.to_vec(),
            ],
            relay: config.relay_url.clone(),
        },
    )
    .await
    .map_err(|e| start_failure(config.error("listen", e.to_string())))?;
    let listen = bound_addr(&endpoint).unwrap_or(config.listen);

    #[cfg(feature = "rocksdb")]
    let holds_state = p
        .rocks
        .as_ref()
        .is_some_and(|(_, has_records)| *has_records);
    #[cfg(not(feature = "rocksdb"))]
    let holds_state = false;
    let (formed_tx, formed_rx) = tokio::sync::watch::channel(holds_state);
    match tokio::net::TcpListener::bind(listen).await {
        Ok(listener) => {
            tokio::spawn(announce::serve(listener, node_key, formed_rx));
        }
        // Not fatal: peers that name this node by id still reach it.
        Err(e) => {
            tracing::warn!(%listen, error = %e, "cannot answer who listens here on TCP; peers and clients that name this node by address alone will not find it")
        }
    }

    if let Some(refresh) = p.collateral_refresh {
        tokio::spawn(refresh.run(p.clock.clone()));
    }
    let tickets = keep_tickets_fresh(Arc::new(p.issuer), *node_key.as_bytes(), p.clock.clone())
        .map_err(|e| start_failure(config.error("attestation", format!("first ticket: {e}"))))?;
    let key = match p.key {
        Some(key) => key,
        None => match await_key(config, &endpoint, node_key, listen, &tickets, &p.clock).await? {
            Some(key) => key,
            None => {
                println!("tessera node: stopped before it was provisioned");
                endpoint.close().await;
                return Ok(());
            }
        },
    };
    let key_id = key.public_id();
    // The records are sealed under a key only this member of this group has.
    #[cfg(feature = "rocksdb")]
    let storage_key = StorageKey::derive(key.as_bytes(), node_key.as_bytes());
    // After the key: a node waiting to be provisioned must not first wait for its peers.
    let mut by_address =
        resolve_bootstrap(&config.bootstrap_addresses, node_key, holds_state).await;
    let named: Vec<EndpointAddr> = config
        .bootstrap
        .iter()
        .cloned()
        .chain(
            by_address
                .iter()
                .map(|(addr, id)| EndpointAddr::new(*id).with_ip_addr(*addr)),
        )
        .collect();
    // With a relay, peers can also be reached through it (every member names the same).
    let bootstrap: Vec<_> = named
        .iter()
        .map(|peer| match &config.relay_url {
            Some(url) => peer.clone().with_relay_url(url.clone()),
            None => peer.clone(),
        })
        .collect();
    // One gateway for the endpoint; this node joins one group on it.
    let groups = Groups::new(
        endpoint.clone(),
        GroupsConfig::new(config.network_id.clone(), p.clock.clone()).with_tickets(tickets.clone()),
    );
    let builder = groups
        .with_key(key)
        .with_state_machine(KvStore::new())
        .with_consensus(&config.consensus)
        .require_ticket(p.validator.clone())
        .with_peers(bootstrap.clone())
        .bootstrap_expect(config.bootstrap_expect);
    #[cfg(feature = "rocksdb")]
    let group = match p.rocks {
        Some((locked, _)) => {
            let store = locked
                .unseal(storage_key)
                .map_err(|e| start_failure(config.error("data_dir", e.to_string())))?;
            builder.with_storage(store).join().await
        }
        None => builder.join().await,
    };
    #[cfg(not(feature = "rocksdb"))]
    let group = builder.join().await;
    let group = group.map_err(|e| start_failure(anyhow!("cannot join the group: {e}")))?;
    let bonds = group
        .bonds()
        .ok_or_else(|| start_failure(anyhow!("the group joined without bonds")))?;

    // The node's own entry: its key (signing), listen address, network, group, tickets.
    let discovery = Discovery::start(
        endpoint.clone(),
        DiscoveryConfig {
            network_id: config.network_id.clone(),
            own: OwnEntry {
                addrs: advertised_addrs(&endpoint, listen),
                groups: vec![group.id()],
                tickets: Vec::new(),
            },
            tickets: Some(tickets.clone()),
            group: Some(group.id()),
            bootstrap: bootstrap.clone(),
            clock: p.clock.clone(),
            // Discovered members are dialled only once their tickets pass this node's policy.
            validator: Some(p.validator),
        },
        Some(bonds.clone() as Arc<dyn PeerDialer>),
    )
    .map_err(|e| start_failure(anyhow!("cannot start discovery: {e}")))?;

    let service = Arc::new(
        ClientService::new(
            group.clone(),
            bonds.clone(),
            config.client.clone(),
            node_key,
            config.network_id.clone(),
            tickets,
            p.clock.clone(),
        )
        .with_known_peers(named.iter().map(|a| a.id))
        .with_operators(config.operators.iter().copied())
        .with_provisioners(provisioners(config), key_id)
        .with_discovery(discovery.stats())
        .with_gateway(groups.stats()),
    );
    let router = Router::builder(endpoint.clone())
        .accept(ALPN_BOND, groups.bond_protocol())
        .accept(
            ALPN_CLIENT,
            ClientProtocol::new(service.clone(), groups.connecting_budget()),
        )
        .accept(
            ALPN_DISCOVERY,
            discovery.protocol(groups.connecting_budget()),
        )
        .spawn();
    {
        let mut when = group.when();
        tokio::spawn(async move {
            if when.formed().await.is_ok() {
                formed_tx.send_replace(true);
            }
        });
    }
    if !config.bootstrap_addresses.is_empty() {
        let (addresses, bonds) = (config.bootstrap_addresses.clone(), bonds.clone());
        let known = std::mem::take(&mut by_address);
        tokio::spawn(follow_bootstrap_addresses(
            addresses, known, node_key, bonds,
        ));
    }
    let metrics_addr = match config.metrics {
        Some(addr) => {
            let listener = tokio::net::TcpListener::bind(addr).await.map_err(|e| {
                start_failure(config.error("metrics", format!("cannot bind {addr}: {e}")))
            })?;
            let bound = listener.local_addr().unwrap_or(addr);
            tokio::spawn(metrics::serve(
                listener,
                service.clone(),
                p.collateral_status.clone(),
            ));
            Some(bound)
        }
        None => None,
    };

    tracing::info!(node_id = %node_key, %listen, group = %group.id(), "node ready");
    let metrics_note =
        metrics_addr.map_or(String::new(), |a| format!(" metrics=http://{a}/metrics"));
    println!(
        "tessera node: ready node_id={node_key} listen={listen} group={}{metrics_note}",
        group.id()
    );
    let _ = std::io::stdout().flush();

    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("cannot watch SIGTERM")?;
    let mut when = group.when();
    let outcome = tokio::select! {
        _ = tokio::signal::ctrl_c() => Ok("SIGINT"),
        _ = terminate.recv() => Ok("SIGTERM"),
        stopped = when.offline() => Err(match stopped {
            Ok(reason) => anyhow!("the node stopped participating: {reason}"),
            Err(e) => anyhow!("the node stopped: {e}"),
        }),
    };
    if let Ok(signal) = &outcome {
        tracing::info!(signal, "shutting down");
        // Without a key file this identity dies with the process: leave the group first,
        // so no voter is left behind that the others would wait for (a restart comes back
        // as a new member). With a key file the node comes back as itself: it stays.
        if p.fresh_secret {
            match group.leave(LEAVE_TIMEOUT).await {
                Ok(()) => tracing::info!("left the group"),
                Err(e) => tracing::warn!(error = %e, "could not leave the group before stopping"),
            }
        }
    }
    drop(discovery);
    // The router stops accepting, shuts the gateway down (the group's worker, its bonds
    // and their tasks) and closes the endpoint.
    if tokio::time::timeout(SHUTDOWN_TIMEOUT, router.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("shutdown did not finish within {SHUTDOWN_TIMEOUT:?}");
    }
    outcome.map(|signal| println!("tessera node: stopped ({signal})"))
}

/// The keys in `[provision] allow` (none when the key comes from a file).
fn provisioners(config: &NodeConfig) -> Vec<PublicKey> {
    match &config.group_key {
        GroupKeySource::Provisioned { allow } => allow.clone(),
        GroupKeySource::File(_) => Vec::new(),
    }
}

/// Waits for an allowed provisioner to send the group key (`[provision]`); `None` when a
/// signal stops the node first.
async fn await_key(
    config: &NodeConfig,
    endpoint: &iroh::Endpoint,
    node_key: PublicKey,
    listen: std::net::SocketAddr,
    tickets: &tokio::sync::watch::Receiver<Vec<tessera::tickets::Ticket>>,
    clock: &Clock,
) -> Result<Option<GroupKey>> {
    let wait = AwaitKey {
        allow: provisioners(config),
        network_id: config.network_id.clone(),
        tickets: tickets.clone(),
        clock: clock.clone(),
    };
    tracing::info!(node_id = %node_key, %listen, "waiting for the group key from a provisioner");
    println!("tessera node: waiting for the group key node_id={node_key} listen={listen}");
    let _ = std::io::stdout().flush();
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("cannot watch SIGTERM")?;
    tokio::select! {
        key = await_group_key(endpoint, wait) => Ok(Some(key.map_err(start_failure)?)),
        _ = tokio::signal::ctrl_c() => Ok(None),
        _ = terminate.recv() => Ok(None),
    }
}

/// Asks each bootstrap address who listens there. A fresh node (`holds_state` false) asks
/// until every address has answered or one answer says it is in a group (then it joins
/// that group; the rest are found later), so that founders that name each other by address
/// agree on one founding set. A node with state asks once. Addresses that name this node
/// itself are left out.
async fn resolve_bootstrap(
    addresses: &[SocketAddr],
    me: PublicKey,
    holds_state: bool,
) -> BTreeMap<SocketAddr, PublicKey> {
    let mut found = BTreeMap::new();
    let mut rounds = 0u32;
    loop {
        let mut formed = false;
        for addr in addresses {
            if found.contains_key(addr) {
                continue;
            }
            match announce::resolve(*addr, RESOLVE_TIMEOUT).await {
                Ok(answer) => {
                    formed |= answer.formed;
                    tracing::info!(%addr, node = %answer.id.fmt_short(), formed = answer.formed, "bootstrap address answered");
                    found.insert(*addr, answer.id);
                }
                Err(e) => tracing::debug!(%addr, error = %e, "bootstrap address did not answer"),
            }
        }
        let done = found.len() == addresses.len();
        if done || formed || holds_state {
            found.retain(|_, id| *id != me);
            return found;
        }
        rounds += 1;
        if rounds % RESOLVE_ROUNDS_PER_NOTE == 1 {
            let waiting: Vec<String> = addresses
                .iter()
                .filter(|a| !found.contains_key(a))
                .map(ToString::to_string)
                .collect();
            tracing::info!(waiting = %waiting.join(", "), "a fresh node waits for every bootstrap address to answer (or one that is in a group)");
        }
        tokio::time::sleep(RESOLVE_PAUSE).await;
    }
}

/// Asks the bootstrap addresses again every [`RERESOLVE_INTERVAL`]; an address that now
/// names another id (the node there restarted as a new identity) gets that id dialled.
async fn follow_bootstrap_addresses(
    addresses: Vec<SocketAddr>,
    mut known: BTreeMap<SocketAddr, PublicKey>,
    me: PublicKey,
    bonds: Arc<Bonds>,
) {
    let mut every = tokio::time::interval(RERESOLVE_INTERVAL);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        for addr in &addresses {
            let Ok(answer) = announce::resolve(*addr, RESOLVE_TIMEOUT).await else {
                continue;
            };
            if answer.id == me || known.get(addr) == Some(&answer.id) {
                continue;
            }
            tracing::info!(%addr, node = %answer.id.fmt_short(), "a bootstrap address names a new node; dialling it");
            if let Some(old) = known.insert(*addr, answer.id) {
                bonds.forget_peer(&old);
            }
            bonds.add_bootstrap_peer(EndpointAddr::new(answer.id).with_ip_addr(*addr));
        }
    }
}

pub fn keygen(args: KeygenArgs) -> ExitCode {
    let result = if args.group {
        GroupKey::generate()
            .map_err(anyhow::Error::from)
            .and_then(|key| {
                write_private_file(&args.out, &hex::encode(key.as_bytes()))
                    .with_context(|| format!("cannot write {}", args.out.display()))?;
                eprintln!(
                    "tessera keygen: wrote group key {} (mode 0600); share it with every member out of band",
                    args.out.display()
                );
                println!("{}", hex::encode(key.public_id()));
                Ok(())
            })
    } else {
        random_secret()
            .map_err(anyhow::Error::from)
            .and_then(|secret| {
                write_secret_key(&args.out, &secret)
                    .with_context(|| format!("cannot write {}", args.out.display()))?;
                eprintln!(
                    "tessera keygen: wrote node key {} (mode 0600); its node id:",
                    args.out.display()
                );
                println!("{}", secret.public());
                Ok(())
            })
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tessera keygen: {e:#}");
            ExitCode::from(2)
        }
    }
}
