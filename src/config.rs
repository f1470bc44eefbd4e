//! `node.toml`: the one configuration file of `tessera node` (architecture.md §12), its schema,
//! and the validation that turns it into typed settings.
//!
//! Every error names the file and the field (`node.toml: bootstrap[1]: expected <node
//! id>@<ip:port>, got "x"`), so an operator can fix a config without reading code.
//! Unknown keys are errors. Relative paths are resolved against the directory of the
//! config file, so a config and its key and policy files can move together.
//!
//! ```toml
//! data_dir = "data"
//! listen = "127.0.0.1:7001"
//! bootstrap = ["<64 hex node id>@127.0.0.1:7002", "127.0.0.1:7003"]
//!                                       # <id>@<ip:port>, or a bare <ip:port>: whoever
//!                                       #   listens there now (a TD has a new id at every
//!                                       #   boot; see net::announce)
//! bootstrap_expect = 3                  # the default. The founders are this node and its
//!                                       #   bootstrap peers, and must be 3: a fresh node
//!                                       #   founds once all of them are bonded and confirm
//!                                       #   the same set, else joins the group one of them
//!                                       #   is in; another count: it only joins;
//!                                       #   1 = a single-node group
//! group_key_file = "group.key"          # 64 hex characters, mode 0600. Refused with
//!                                       #   attestation = "tdx" (the host reads the
//!                                       #   disk): there the key is provisioned instead
//! policies = ["policies/mock.toml"]     # several: accepted if any one accepts (rollover)
//! attestation = "mock"                  # "tdx" | "mock" (never chosen silently)
//! pccs_url = "https://pccs.internal:8081" # where this node's DCAP collateral comes from: a
//!                                       #   PCCS, or Intel's PCS
//!                                       #   (https://api.trustedservices.intel.com);
//!                                       #   fetched at start and every
//!                                       #   collateral_refresh_secs, installed only if it
//!                                       #   verifies this node's own quote and is no older
//!                                       #   than the current; cached in <data_dir>
//! collateral_refresh_secs = 14400       # with pccs_url: 4 hours by default, 60..=604800;
//!                                       #   sooner when the collateral nears its expiry
//! collateral_fetch_timeout_secs = 30    # with pccs_url: bound on each request, 1..=300
//! # collateral_file = "collateral.json" # instead of pccs_url (air-gapped): read once at
//!                                       #   start, never refreshed. One of the two is
//!                                       #   required with "tdx"; with "mock" neither is
//!                                       #   (the mock has its own)
//! secret_key_file = "node.key"          # optional, development only; absent: a fresh key.
//!                                       #   Refused with attestation = "tdx" (a key on
//!                                       #   host-visible disk) and with storage = "memory"
//!                                       #   (a restart keeps the identity, forgets the vote)
//! network_id = "tessera-dev"
//! relay_url = "https://relay.example.net" # optional: a relay for peers behind NAT (every
//!                                       #   member names the same); absent: no relay
//! storage = "rocksdb"                   # the default: durable, in <data_dir>/raft (0700,
//!                                       #   locked); "memory" forgets everything on restart
//! log_level = "info"                    # a tracing filter
//! metrics = "127.0.0.1:9101"            # optional: Prometheus text on GET /metrics
//!
//! [timers]
//! tick_ms = 50
//! election_ticks = 10
//! heartbeat_ticks = 2
//! removal_timeout_secs = 300            # the leader removes a member unreachable this
//!                                       #   long; 0 = never (a dead voter with a waiting
//!                                       #   replacement goes much sooner, see README)
//!
//! [provision]                           # instead of group_key_file: the node waits for
//! allow = ["<64 hex>"]                  #   `tessera provision` from one of these keys,
//!                                       #   which sends the key only after checking the
//!                                       #   node's quote; the key stays in memory
//!
//! [client]
//! allow = "any"                         # or a list of client public keys; default: nobody
//! operators = ["<64 hex>"]              # keys that may remove members (`tessera member
//!                                       #   remove`); served as clients too; default: none
//!
//! [mock]                                # TEST ONLY, with attestation = "mock": intruders
//! mr_td = "<96 hex>"                    #   for the container tests (a quote of another
//! pki_seed = "<64 hex>"                 #   image; one not chaining to the mock root)
//! ```
//!
//! Loading the schema ([`NodeConfig::load`]) reads only the config file; the files it points
//! to are read by [`NodeConfig::group_key`], [`NodeConfig::secret_key`] and
//! [`NodeConfig::validator`], whose errors name the field that pointed there.
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use iroh::{EndpointAddr, PublicKey, SecretKey};
use serde::Deserialize;
use tessera_attestation::{Policy, TrustRoot};

use crate::client::ClientAllow;
use crate::groups::{ConsensusConfig, ConsensusConfigError, GroupKey, WorkerConfig};
use crate::raft::RaftConfig;
#[cfg(feature = "mock-attestation")]
use crate::tickets::MockTdxValidator;
use crate::tickets::{AnyOf, TdxValidator, TicketValidator};

mod error;
pub use error::{ConfigIdError, FileError, ParseNodeError, ParsePeerError, SecretKeyError};

/// Domain tag of [`NodeConfig::config_id`].
const CONFIG_ID_DOMAIN: &[u8] = b"tessera/config-id/v1";

/// Checks a quote of this node's own TD against the id of the config it runs
/// ([`NodeConfig::config_id`]): the host sets MRCONFIGID when it starts the TD, and a node
/// whose configuration is not the one its quotes name must not run (its quotes would
/// vouch for a configuration it does not have).
pub fn check_config_id(own_quote: &[u8], config_id: &[u8; 48]) -> Result<(), ConfigIdError> {
    let quote =
        tessera_attestation::quote::parse_quote(own_quote).map_err(ConfigIdError::OwnQuote)?;
    let measured = quote.measurements.mr_config_id;
    if &measured == config_id {
        return Ok(());
    }
    Err(ConfigIdError::Mismatch {
        measured,
        config_id: *config_id,
    })
}

/// Largest config, policy or key file read.
pub const CONFIG_FILE_BYTES_MAX: u64 = 1 << 20;
/// Largest accepted `timers.tick_ms`.
pub const TICK_MS_MAX: u64 = 10_000;
/// Largest accepted `timers.removal_timeout_secs` (a week).
pub const REMOVAL_TIMEOUT_SECS_MAX: u64 = 7 * 24 * 3600;

/// A config that cannot be used. The message names the file and, where there is one, the
/// field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The config file could not be read.
    #[error("{file}: {reason}")]
    Read {
        /// The config file's path, as given.
        file: String,
        /// The I/O error, or that it exceeds [`CONFIG_FILE_BYTES_MAX`].
        reason: String,
    },
    /// The file is not valid TOML or does not fit the schema (the message names the key).
    #[error("{file}: {reason}")]
    Schema {
        /// The config file's path, as given.
        file: String,
        /// The TOML parser's message, with the offending key or line.
        reason: String,
    },
    /// A field holds a value that is not allowed.
    #[error("{file}: {field}: {reason}")]
    Field {
        /// The config file's path, as given.
        file: String,
        /// The field's TOML path (`timers.tick_ms`, `bootstrap[1]`, `policies[0]`).
        field: String,
        /// What is wrong with it and what is expected.
        reason: String,
    },
}

/// How this node proves what it runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttestationMode {
    /// Quotes from this TD through configfs-tsm, verified against Intel's root.
    Tdx,
    /// Quotes from the mock provider (test PKI). Only with policies that trust the mock root,
    /// and only in builds with the `mock-attestation` feature: elsewhere refused at load.
    Mock,
}

/// Whether this build carries the mock provider and the mock root (feature
/// `mock-attestation`). Production builds do not: they refuse `attestation = "mock"` and
/// policies with `trust_root = "mock"`.
pub const MOCK_ATTESTATION_BUILT: bool = cfg!(feature = "mock-attestation");

/// Why a build without the `mock-attestation` feature refuses a mock setting.
const NO_MOCK_IN_THIS_BUILD: &str =
    "this binary was built without the `mock-attestation` feature, as production builds \
     are, so it carries no mock root (whose keys are public); mock attestation is for tests \
     and the demo (build with `--features mock-attestation`)";

/// Where the log and hard state live.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StorageKind {
    /// `storage = "memory"`: nothing survives a restart, so the node rejoins as a new
    /// member (tests and demos; refused with `secret_key_file`).
    Memory,
    /// Durable: RocksDB in `<data_dir>/raft` (mode 0700, locked against a second node).
    RocksDb,
}

/// Consensus timing (`[timers]`). Every member must agree: it is part of the group id.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timers {
    /// Length of one tick in milliseconds, the resolution of every consensus timer;
    /// 1..=[`TICK_MS_MAX`], default 50.
    pub tick_ms: u64,
    /// The shortest election timeout, in ticks (followers draw theirs in `[t, 2t)`); must
    /// exceed `heartbeat_ticks`. Default 10.
    pub election_ticks: u64,
    /// How often a leader sends heartbeats, in ticks; at least 1, default 2.
    pub heartbeat_ticks: u64,
    /// The leader removes a member unreachable this long (0: never). Node-local: only the
    /// leader's own setting matters while it leads.
    pub removal_timeout_secs: u64,
}

impl Default for Timers {
    fn default() -> Self {
        let raft = RaftConfig::default();
        Self {
            tick_ms: WorkerConfig::default().tick.as_millis() as u64,
            election_ticks: raft.election_ticks,
            heartbeat_ticks: raft.heartbeat_ticks,
            removal_timeout_secs: WorkerConfig::default()
                .removal_timeout
                .map_or(0, |t| t.as_secs()),
        }
    }
}

/// A validated `node.toml`.
#[derive(Clone, Debug)]
pub struct NodeConfig {
    /// The file this came from (for error messages).
    pub file: PathBuf,
    /// Where the node keeps its state (the RocksDB log in `raft/`, cached collateral);
    /// resolved against the config file's directory.
    pub data_dir: PathBuf,
    /// The UDP address the iroh endpoint binds (port 0 picks one); the same port number
    /// over TCP serves the node's announcement ([`crate::net::announce`]).
    pub listen: SocketAddr,
    /// Peers to dial at start, named by id.
    pub bootstrap: Vec<EndpointAddr>,
    /// Peers named by address alone: the node asks each who listens there now
    /// ([`crate::net::announce`]) and dials that id, again whenever it changes.
    pub bootstrap_addresses: Vec<SocketAddr>,
    /// A relay server for peers behind NAT (every member of the network should name the
    /// same one). Absent: no relay, nothing is contacted but the peers.
    pub relay_url: Option<iroh::RelayUrl>,
    /// A fresh node founds a new group only when it and its bootstrap peers count exactly
    /// this many and every one of them is bonded and confirms the same founding set
    /// (architecture.md §7.2); if one of them is in a group already it joins that group,
    /// and with another count it only joins. Default 3; 1 makes a single-node group.
    pub bootstrap_expect: usize,
    /// Where the group key comes from: a file, or a provisioner after it checked this
    /// node's attestation (`[provision]`).
    pub group_key: GroupKeySource,
    /// Attestation policy files (at least one), resolved against the config file's
    /// directory; with several, a peer is accepted if any one accepts it (rollover). Read
    /// by [`NodeConfig::load_policies`] and [`NodeConfig::validator`].
    pub policies: Vec<PathBuf>,
    /// How this node's quotes are made and its peers' verified.
    pub attestation: AttestationMode,
    /// DCAP collateral (dcap-qvl JSON) for this platform's quotes, read once (air-gapped).
    /// With `tdx`, this or [`NodeConfig::pccs`] is required.
    pub collateral_file: Option<PathBuf>,
    /// A PCCS (or Intel's PCS) this node fetches and refreshes its collateral from.
    pub pccs: Option<PccsSettings>,
    /// A file holding this node's iroh secret key (development only): `None` gives a fresh
    /// identity at every start. Refused with `tdx` attestation and with memory storage.
    pub secret_key_file: Option<PathBuf>,
    /// The network's name, bound into every ticket: a ticket made for another network
    /// does not admit. Not empty.
    pub network_id: String,
    /// `[timers]`, validated.
    pub timers: Timers,
    /// `timers` as the group runs them.
    pub consensus: ConsensusConfig,
    /// Where the log and hard state live; default [`StorageKind::RocksDb`].
    pub storage: StorageKind,
    /// A `tracing` filter directive (`"info"`, `"tessera=debug"`); default `"info"`.
    pub log_level: String,
    /// Where to serve Prometheus metrics (`GET /metrics`); `None`: not served.
    pub metrics: Option<SocketAddr>,
    /// Which client keys may use the client protocol (`[client] allow`); default nobody.
    pub client: ClientAllow,
    /// Keys that may change the membership (`[client] operators`).
    pub operators: Vec<PublicKey>,
    /// `[mock]`: test switches of the mock provider (intruders in the container tests).
    pub mock: MockOverrides,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    data_dir: PathBuf,
    listen: String,
    #[serde(default)]
    bootstrap: Vec<String>,
    bootstrap_expect: Option<u64>,
    relay_url: Option<String>,
    group_key_file: Option<PathBuf>,
    #[serde(default)]
    provision: Option<RawProvision>,
    policies: Vec<PathBuf>,
    attestation: String,
    collateral_file: Option<PathBuf>,
    pccs_url: Option<String>,
    collateral_refresh_secs: Option<u64>,
    collateral_fetch_timeout_secs: Option<u64>,
    secret_key_file: Option<PathBuf>,
    network_id: String,
    #[serde(default)]
    timers: RawTimers,
    /// Durable unless asked otherwise: a node that forgets acknowledged writes on restart
    /// must be a deliberate choice.
    #[serde(default = "default_storage")]
    storage: String,
    #[serde(default = "default_log_level")]
    log_level: String,
    metrics: Option<String>,
    #[serde(default)]
    client: RawClient,
    mock: Option<RawMock>,
}

/// `[mock]`: test switches of the mock provider, to make intruders for the container
/// tests. Only with `attestation = "mock"`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMock {
    mr_td: Option<String>,
    pki_seed: Option<String>,
}

/// What `[mock]` changes in this node's mock quotes (test only: intruders for the container
/// tests). Empty unless asked for, and refused without `attestation = "mock"`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MockOverrides {
    /// `mock.mr_td`: the measurement the quotes carry instead of the mock's own.
    pub mr_td: Option<[u8; 48]>,
    /// `mock.pki_seed`: another mock PKI, whose quotes do not chain to the mock root (a
    /// forged signature, as a verifier sees it).
    pub pki_seed: Option<[u8; 32]>,
}

/// `N` bytes from hex text, or why not.
fn hex_array<const N: usize>(text: &str) -> Result<[u8; N], String> {
    let bytes = hex::decode(text.trim()).map_err(|e| format!("not hex: {e}"))?;
    <[u8; N]>::try_from(bytes.as_slice()).map_err(|_| {
        format!(
            "expected {N} bytes ({} hex digits), got {}",
            2 * N,
            bytes.len()
        )
    })
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawTimers {
    tick_ms: Option<u64>,
    election_ticks: Option<u64>,
    heartbeat_ticks: Option<u64>,
    removal_timeout_secs: Option<u64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawProvision {
    allow: Vec<toml::Value>,
}

/// `pccs_url` and its settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PccsSettings {
    /// Base URL of the PCCS or PCS (`http://` or `https://`, with a host).
    pub url: String,
    /// Normal pause between fetches (`collateral_refresh_secs`).
    pub refresh_secs: u64,
    /// Bound on each request (`collateral_fetch_timeout_secs`).
    pub fetch_timeout_secs: u64,
}

/// Largest accepted `collateral_fetch_timeout_secs`.
pub const COLLATERAL_FETCH_TIMEOUT_SECS_MAX: u64 = 300;

/// Where a node's group key comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum GroupKeySource {
    /// `group_key_file`, read at start (development, or a host the operator trusts).
    File(PathBuf),
    /// `[provision] allow`: the node starts without the key and waits for one of these keys
    /// to send it over the client protocol (`tessera provision`), after the sender has
    /// checked the node's attestation. The key is kept in memory only.
    Provisioned {
        /// The provisioners' public keys (never empty).
        allow: Vec<PublicKey>,
    },
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawClient {
    allow: Option<toml::Value>,
    operators: Option<toml::Value>,
}

/// Largest `bootstrap_expect` accepted (a founding set larger than any sane voter count
/// is a typo).
const BOOTSTRAP_EXPECT_MAX: u64 = 64;
/// Founding members a fresh node waits for when `bootstrap_expect` is not given.
const BOOTSTRAP_EXPECT_DEFAULT: u64 = 3;

fn default_storage() -> String {
    "rocksdb".into()
}

fn default_log_level() -> String {
    "info".into()
}

/// How a configuration or a command line names a node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NodeName {
    /// `<node id>@<ip:port>`.
    Id(EndpointAddr),
    /// A bare `<ip:port>`: whoever listens there now.
    Address(SocketAddr),
}

/// Reads `<node id>@<ip:port>` or a bare `<ip:port>`.
pub fn parse_node(text: &str) -> Result<NodeName, ParseNodeError> {
    if !text.contains('@') {
        if let Ok(addr) = text.parse::<SocketAddr>() {
            return Ok(NodeName::Address(addr));
        }
        return Err(ParseNodeError::Unrecognized { text: text.into() });
    }
    Ok(NodeName::Id(parse_peer(text)?))
}

/// Reads `<node id>@<ip:port>`: the node id is the peer's iroh public key (64 hex).
pub fn parse_peer(text: &str) -> Result<EndpointAddr, ParsePeerError> {
    let (id, addr) = text
        .split_once('@')
        .ok_or_else(|| ParsePeerError::MissingAt { text: text.into() })?;
    let id: PublicKey = id.parse().map_err(|source| ParsePeerError::NodeId {
        text: text.into(),
        source,
    })?;
    let addr: SocketAddr = addr.parse().map_err(|source| ParsePeerError::Address {
        text: text.into(),
        source,
    })?;
    Ok(EndpointAddr::new(id).with_ip_addr(addr))
}

/// Reads a private key file (hex), refusing one that group or others may read.
fn read_private_file(path: &Path) -> Result<String, FileError> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(path)
            .map_err(|source| FileError::Io {
                path: path.into(),
                source,
            })?
            .permissions()
            .mode();
        if mode & 0o077 != 0 {
            return Err(FileError::NotPrivate {
                path: path.into(),
                mode: mode & 0o777,
            });
        }
    }
    read_limited(path)
}

/// Reads a text file of at most [`CONFIG_FILE_BYTES_MAX`] bytes.
fn read_limited(path: &Path) -> Result<String, FileError> {
    use std::io::Read;
    let io = |source| FileError::Io {
        path: path.into(),
        source,
    };
    let file = std::fs::File::open(path).map_err(io)?;
    let mut text = String::new();
    file.take(CONFIG_FILE_BYTES_MAX + 1)
        .read_to_string(&mut text)
        .map_err(io)?;
    if text.len() as u64 > CONFIG_FILE_BYTES_MAX {
        return Err(FileError::TooLarge { path: path.into() });
    }
    Ok(text)
}

/// Reads an iroh secret key file (64 hex characters, mode 0600).
pub fn read_secret_key(path: &Path) -> Result<SecretKey, SecretKeyError> {
    let text = read_private_file(path)?;
    let bytes = hex::decode(text.trim()).map_err(|source| SecretKeyError::NotHex {
        path: path.into(),
        source,
    })?;
    let bytes: [u8; 32] = bytes
        .try_into()
        .map_err(|b: Vec<u8>| SecretKeyError::Length {
            path: path.into(),
            bytes: b.len(),
        })?;
    Ok(SecretKey::from_bytes(&bytes))
}

/// Writes `key` as hex to a new file with mode 0600 (refuses to overwrite).
pub fn write_secret_key(path: &Path, key: &SecretKey) -> std::io::Result<()> {
    write_private_file(path, &hex::encode(key.to_bytes()))
}

/// Writes `text` and a newline to a new file that only its owner may read.
pub fn write_private_file(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(path)?;
    file.write_all(text.as_bytes())?;
    file.write_all(b"\n")?;
    file.sync_all()
}

impl NodeConfig {
    /// Reads and validates `path`.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = read_limited(path).map_err(|e| ConfigError::Read {
            file: path.display().to_string(),
            reason: e.to_string(),
        })?;
        Self::from_toml_str(&text, path)
    }

    /// Validates `text` as if read from `file` (relative paths resolve against its
    /// directory).
    pub fn from_toml_str(text: &str, file: &Path) -> Result<Self, ConfigError> {
        let name = file.display().to_string();
        let raw: RawConfig = toml::from_str(text).map_err(|e| ConfigError::Schema {
            file: name.clone(),
            reason: e.to_string().trim_end().to_string(),
        })?;
        let field = |field: &str, reason: String| ConfigError::Field {
            file: name.clone(),
            field: field.to_string(),
            reason,
        };
        let base = file.parent().unwrap_or(Path::new("")).to_path_buf();
        let resolve = |p: &Path| -> PathBuf {
            if p.is_absolute() {
                p.to_path_buf()
            } else {
                base.join(p)
            }
        };

        if raw.data_dir.as_os_str().is_empty() {
            return Err(field("data_dir", "must not be empty".into()));
        }
        let listen = parse_socket_addr(&raw.listen).map_err(|r| field("listen", r))?;
        let mut bootstrap = Vec::with_capacity(raw.bootstrap.len());
        let mut bootstrap_addresses = Vec::new();
        for (i, entry) in raw.bootstrap.iter().enumerate() {
            match parse_node(entry).map_err(|e| field(&format!("bootstrap[{i}]"), e.to_string()))? {
                NodeName::Id(peer) => bootstrap.push(peer),
                NodeName::Address(addr) => bootstrap_addresses.push(addr),
            }
        }
        let bootstrap_expect = match raw.bootstrap_expect {
            None => BOOTSTRAP_EXPECT_DEFAULT as usize,
            Some(n) if (1..=BOOTSTRAP_EXPECT_MAX).contains(&n) => n as usize,
            Some(n) => {
                return Err(field(
                    "bootstrap_expect",
                    format!("must be in 1..={BOOTSTRAP_EXPECT_MAX}, got {n}"),
                ))
            }
        };
        let relay_url = match &raw.relay_url {
            None => None,
            Some(text) => Some(parse_relay_url(text).map_err(|r| field("relay_url", r))?),
        };
        let group_key = match (&raw.group_key_file, &raw.provision) {
            (Some(_), Some(_)) => {
                return Err(field(
                    "provision",
                    "given with group_key_file: the group key comes from one place".into(),
                ))
            }
            (None, None) => {
                return Err(field(
                    "group_key_file",
                    "missing: name the group key file, or a [provision] allow list of the \
                     keys that may send the key to this node"
                        .into(),
                ))
            }
            (Some(path), None) if path.as_os_str().is_empty() => {
                return Err(field("group_key_file", "must not be empty".into()));
            }
            (Some(path), None) => GroupKeySource::File(resolve(path)),
            (None, Some(provision)) => {
                let allow = parse_keys("provision.allow", &provision.allow)
                    .map_err(|(f, r)| field(&f, r))?;
                if allow.is_empty() {
                    return Err(field(
                        "provision.allow",
                        "empty: nobody could send this node its group key".into(),
                    ));
                }
                GroupKeySource::Provisioned { allow }
            }
        };
        if raw.policies.is_empty() {
            return Err(field(
                "policies",
                "at least one policy file is needed".into(),
            ));
        }
        let attestation = match raw.attestation.as_str() {
            "tdx" => AttestationMode::Tdx,
            "mock" => AttestationMode::Mock,
            other => {
                return Err(field(
                    "attestation",
                    format!("expected \"tdx\" or \"mock\", got {other:?}"),
                ))
            }
        };
        if attestation == AttestationMode::Mock && !MOCK_ATTESTATION_BUILT {
            return Err(field(
                "attestation",
                format!("\"mock\" refused: {NO_MOCK_IN_THIS_BUILD}"),
            ));
        }
        let mock = match &raw.mock {
            None => MockOverrides::default(),
            Some(_) if attestation != AttestationMode::Mock => {
                return Err(field(
                    "mock",
                    "test switches of the mock provider: only with attestation = \"mock\"".into(),
                ))
            }
            Some(m) => MockOverrides {
                mr_td: m
                    .mr_td
                    .as_deref()
                    .map(hex_array::<48>)
                    .transpose()
                    .map_err(|r| field("mock.mr_td", r))?,
                pki_seed: m
                    .pki_seed
                    .as_deref()
                    .map(hex_array::<32>)
                    .transpose()
                    .map_err(|r| field("mock.pki_seed", r))?,
            },
        };
        let pccs = parse_pccs(&raw).map_err(|(f, r)| field(f, r))?;
        if attestation == AttestationMode::Tdx && raw.collateral_file.is_none() && pccs.is_none() {
            return Err(field(
                "collateral_file",
                "required with attestation = \"tdx\": name a PCCS with pccs_url (fetched and \
                 refreshed), or a collateral file (air-gapped, read once)"
                    .into(),
            ));
        }
        if raw.network_id.trim().is_empty() {
            return Err(field("network_id", "must not be empty".into()));
        }
        let timers = validate_timers(&raw.timers).map_err(|(f, r)| field(f, r))?;
        let consensus = consensus_of(&timers).map_err(|e| field("timers", e.to_string()))?;
        let storage = match raw.storage.as_str() {
            "memory" => StorageKind::Memory,
            "rocksdb" => StorageKind::RocksDb,
            other => {
                return Err(field(
                    "storage",
                    format!("expected \"memory\" or \"rocksdb\", got {other:?}"),
                ))
            }
        };
        // A node key on disk is a development convenience with two combinations that
        // break the model (architecture.md §3, §13), refused here so that no node starts with them.
        if raw.secret_key_file.is_some() {
            if attestation == AttestationMode::Tdx {
                return Err(field(
                    "secret_key_file",
                    "refused with attestation = \"tdx\": the host can read this file, and \
                     whoever holds the key can pass as this attested node; inside a TD the \
                     key is generated at boot and never leaves it (remove secret_key_file)"
                        .into(),
                ));
            }
            if storage == StorageKind::Memory {
                return Err(field(
                    "secret_key_file",
                    "refused with storage = \"memory\": a restart would keep this identity \
                     but forget its term and vote, so it could vote twice in one term (two \
                     leaders); use storage = \"rocksdb\", or remove secret_key_file (a \
                     fresh identity on every start)"
                        .into(),
                ));
            }
        }
        if attestation == AttestationMode::Tdx && matches!(group_key, GroupKeySource::File(_)) {
            return Err(field(
                "group_key_file",
                "refused with attestation = \"tdx\": the host can read this file, and the \
                 group key admits members; list who may send it in [provision] allow and \
                 send it with `tessera provision`, which checks this node's quote first"
                    .into(),
            ));
        }
        if raw.log_level.trim().is_empty() {
            return Err(field("log_level", "must not be empty".into()));
        }
        let metrics = raw
            .metrics
            .as_deref()
            .map(parse_socket_addr)
            .transpose()
            .map_err(|r| field("metrics", r))?;
        let client = parse_allow(raw.client.allow.as_ref()).map_err(|(f, r)| field(&f, r))?;
        let operators = match raw.client.operators.as_ref() {
            None => Vec::new(),
            Some(toml::Value::Array(items)) => {
                parse_keys("client.operators", items).map_err(|(f, r)| field(&f, r))?
            }
            Some(other) => {
                return Err(field(
                    "client.operators",
                    format!("expected a list of operator public keys (64 hex), got {other}"),
                ))
            }
        };

        Ok(Self {
            file: file.to_path_buf(),
            data_dir: resolve(&raw.data_dir),
            listen,
            bootstrap,
            bootstrap_addresses,
            bootstrap_expect,
            relay_url,
            group_key,
            policies: raw.policies.iter().map(|p| resolve(p)).collect(),
            attestation,
            collateral_file: raw.collateral_file.as_deref().map(resolve),
            pccs,
            secret_key_file: raw.secret_key_file.as_deref().map(resolve),
            network_id: raw.network_id,
            timers,
            consensus,
            storage,
            log_level: raw.log_level,
            metrics,
            client,
            operators,
            mock,
        })
    }

    /// An error about `field` of this config.
    pub fn error(&self, field: &str, reason: impl Into<String>) -> ConfigError {
        ConfigError::Field {
            file: self.file.display().to_string(),
            field: field.to_string(),
            reason: reason.into(),
        }
    }

    /// Reads the group key from `group_key_file`; `None` when it is to be provisioned.
    pub fn group_key(&self) -> Result<Option<GroupKey>, ConfigError> {
        match &self.group_key {
            GroupKeySource::File(path) => GroupKey::from_file(path)
                .map(Some)
                .map_err(|e| self.error("group_key_file", e.to_string())),
            GroupKeySource::Provisioned { .. } => Ok(None),
        }
    }

    /// The config id: SHA-384 over this `node.toml` and every policy file it names, each
    /// by file name and content, in order. A TD's host puts it into MRCONFIGID when it
    /// starts the TD (`enclave-image/run-tdx.sh`, from `tessera config-id`); the node
    /// refuses to start when its own TD report says otherwise ([`check_config_id`]), and a
    /// provisioner's policy pins it (`mr_config_id`), so a node the host started with
    /// another config than the one its quote names never gets the group key.
    ///
    /// Names are file names without directories: the host's directory and the TD's copy
    /// (`/run/tessera`) give the same id.
    pub fn config_id(&self) -> Result<[u8; 48], ConfigError> {
        let mut files = vec![("config", self.file.clone())];
        files.extend(self.policies.iter().map(|p| ("policies", p.clone())));
        let mut hash = ring::digest::Context::new(&ring::digest::SHA384);
        hash.update(CONFIG_ID_DOMAIN);
        hash.update(&(files.len() as u64).to_le_bytes());
        for (field, path) in files {
            let name = path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            let text = read_limited(&path).map_err(|e| self.error(field, e.to_string()))?;
            hash.update(&(name.len() as u64).to_le_bytes());
            hash.update(name.as_bytes());
            hash.update(&(text.len() as u64).to_le_bytes());
            hash.update(text.as_bytes());
        }
        let mut id = [0u8; 48];
        id.copy_from_slice(hash.finish().as_ref());
        Ok(id)
    }

    /// Reads the node's secret key (`secret_key_file`), if the config names one.
    pub fn secret_key(&self) -> Result<Option<SecretKey>, ConfigError> {
        self.secret_key_file
            .as_deref()
            .map(read_secret_key)
            .transpose()
            .map_err(|e| self.error("secret_key_file", e.to_string()))
    }

    /// Reads and checks each policy (`policies[i]`).
    pub fn load_policies(&self) -> Result<Vec<Policy>, ConfigError> {
        let mut policies = Vec::with_capacity(self.policies.len());
        for (i, path) in self.policies.iter().enumerate() {
            let at = format!("policies[{i}]");
            let text = read_limited(path).map_err(|e| self.error(&at, e.to_string()))?;
            let policy = Policy::from_toml_str(&text)
                .map_err(|e| self.error(&at, format!("{}: {e}", path.display())))?;
            match (self.attestation, policy.trust_root) {
                (_, TrustRoot::Mock) if !MOCK_ATTESTATION_BUILT => {
                    return Err(self.error(
                        &at,
                        format!(
                            "{}: trust_root = \"mock\" refused: {NO_MOCK_IN_THIS_BUILD}",
                            path.display()
                        ),
                    ))
                }
                (AttestationMode::Tdx, TrustRoot::Mock) => {
                    return Err(self.error(
                        &at,
                        format!(
                            "{}: trusts the mock root, whose keys are public; only attestation = \"mock\" may use it",
                            path.display()
                        ),
                    ))
                }
                (AttestationMode::Mock, root) if root != TrustRoot::Mock => {
                    return Err(self.error(
                        &at,
                        format!(
                            "{}: trusts {root}; attestation = \"mock\" needs policies with trust_root = \"mock\"",
                            path.display()
                        ),
                    ))
                }
                _ => {}
            }
            policies.push(policy);
        }
        Ok(policies)
    }

    /// The group's ticket validator: one policy, or any of several (policy rollover).
    pub fn validator(&self) -> Result<Arc<dyn TicketValidator>, ConfigError> {
        let mut alternatives: Vec<Arc<dyn TicketValidator>> = Vec::new();
        for (i, policy) in self.load_policies()?.into_iter().enumerate() {
            let at = format!("policies[{i}]");
            let validator: Arc<dyn TicketValidator> = match self.attestation {
                #[cfg(feature = "mock-attestation")]
                AttestationMode::Mock => Arc::new(
                    MockTdxValidator::new(policy).map_err(|e| self.error(&at, e.to_string()))?,
                ),
                // `load` refuses "mock" in this build; refused again rather than trusted.
                #[cfg(not(feature = "mock-attestation"))]
                AttestationMode::Mock => {
                    return Err(self.error(
                        "attestation",
                        format!("\"mock\" refused: {NO_MOCK_IN_THIS_BUILD}"),
                    ))
                }
                AttestationMode::Tdx => {
                    Arc::new(TdxValidator::new(policy).map_err(|e| self.error(&at, e.to_string()))?)
                }
            };
            alternatives.push(validator);
        }
        if alternatives.len() == 1 {
            if let Some(only) = alternatives.pop() {
                return Ok(only);
            }
        }
        Ok(Arc::new(
            AnyOf::new(alternatives).map_err(|e| self.error("policies", e.to_string()))?,
        ))
    }
}

/// An `http(s)://host[:port]` relay URL.
fn parse_relay_url(text: &str) -> Result<iroh::RelayUrl, String> {
    let url: iroh::RelayUrl = text
        .parse()
        .map_err(|e| format!("expected an http(s) URL, got {text:?} ({e})"))?;
    match url.scheme() {
        "https" | "http" if url.host_str().is_some() => Ok(url),
        _ => Err(format!("expected an http(s) URL with a host, got {text:?}")),
    }
}

/// `pccs_url` and the settings that go with it; `None` without `pccs_url`.
fn parse_pccs(raw: &RawConfig) -> Result<Option<PccsSettings>, (&'static str, String)> {
    use crate::collateral::fetch::FETCH_TIMEOUT_SECS_DEFAULT;
    use crate::collateral::refresh::{REFRESH_SECS_DEFAULT, REFRESH_SECS_MAX, REFRESH_SECS_MIN};
    let Some(text) = &raw.pccs_url else {
        for (name, given) in [
            (
                "collateral_refresh_secs",
                raw.collateral_refresh_secs.is_some(),
            ),
            (
                "collateral_fetch_timeout_secs",
                raw.collateral_fetch_timeout_secs.is_some(),
            ),
        ] {
            if given {
                return Err((
                    name,
                    "only with pccs_url (a collateral file is never refreshed)".into(),
                ));
            }
        }
        return Ok(None);
    };
    if raw.collateral_file.is_some() {
        return Err((
            "pccs_url",
            "given with collateral_file: the collateral comes from one place (pccs_url to \
             fetch and refresh it, collateral_file when air-gapped)"
                .into(),
        ));
    }
    let url = reqwest::Url::parse(text).map_err(|e| {
        (
            "pccs_url",
            format!("expected an http(s) URL, got {text:?} ({e})"),
        )
    })?;
    if !matches!(url.scheme(), "http" | "https")
        || url.host_str().is_none()
        || url.query().is_some()
        || url.fragment().is_some()
    {
        return Err((
            "pccs_url",
            format!("expected an http(s) URL with a host and no query, got {text:?}"),
        ));
    }
    let refresh_secs = raw.collateral_refresh_secs.unwrap_or(REFRESH_SECS_DEFAULT);
    if !(REFRESH_SECS_MIN..=REFRESH_SECS_MAX).contains(&refresh_secs) {
        return Err((
            "collateral_refresh_secs",
            format!("must be in {REFRESH_SECS_MIN}..={REFRESH_SECS_MAX}, got {refresh_secs}"),
        ));
    }
    let fetch_timeout_secs = raw
        .collateral_fetch_timeout_secs
        .unwrap_or(FETCH_TIMEOUT_SECS_DEFAULT);
    if !(1..=COLLATERAL_FETCH_TIMEOUT_SECS_MAX).contains(&fetch_timeout_secs) {
        return Err((
            "collateral_fetch_timeout_secs",
            format!("must be in 1..={COLLATERAL_FETCH_TIMEOUT_SECS_MAX}, got {fetch_timeout_secs}"),
        ));
    }
    Ok(Some(PccsSettings {
        // As written (trailing slash and all): the fetcher normalises the base.
        url: text.trim().to_owned(),
        refresh_secs,
        fetch_timeout_secs,
    }))
}

fn parse_socket_addr(text: &str) -> Result<SocketAddr, String> {
    text.parse()
        .map_err(|e| format!("expected <ip:port>, got {text:?} ({e})"))
}

/// `[timers]` (validated) as a [`ConsensusConfig`]: ticks become durations.
fn consensus_of(timers: &Timers) -> Result<ConsensusConfig, ConsensusConfigError> {
    let ticks = |n: u64| Duration::from_millis(timers.tick_ms.saturating_mul(n));
    let removal = timers.removal_timeout_secs;
    ConsensusConfig::builder()
        .tick(ticks(1))
        .heartbeat_interval(ticks(timers.heartbeat_ticks))
        .election_timeout(ticks(timers.election_ticks))
        .removal_timeout((removal > 0).then(|| Duration::from_secs(removal)))
        .build()
}

fn validate_timers(raw: &RawTimers) -> Result<Timers, (&'static str, String)> {
    let default = Timers::default();
    let timers = Timers {
        tick_ms: raw.tick_ms.unwrap_or(default.tick_ms),
        election_ticks: raw.election_ticks.unwrap_or(default.election_ticks),
        heartbeat_ticks: raw.heartbeat_ticks.unwrap_or(default.heartbeat_ticks),
        removal_timeout_secs: raw
            .removal_timeout_secs
            .unwrap_or(default.removal_timeout_secs),
    };
    if timers.removal_timeout_secs > REMOVAL_TIMEOUT_SECS_MAX {
        return Err((
            "timers.removal_timeout_secs",
            format!(
                "must be at most {REMOVAL_TIMEOUT_SECS_MAX} (0: never), got {}",
                timers.removal_timeout_secs
            ),
        ));
    }
    if timers.tick_ms == 0 || timers.tick_ms > TICK_MS_MAX {
        return Err((
            "timers.tick_ms",
            format!("must be in 1..={TICK_MS_MAX}, got {}", timers.tick_ms),
        ));
    }
    if timers.heartbeat_ticks == 0 {
        return Err(("timers.heartbeat_ticks", "must be at least 1".into()));
    }
    if timers.election_ticks <= timers.heartbeat_ticks {
        return Err((
            "timers.election_ticks",
            format!(
                "must be greater than timers.heartbeat_ticks ({}), got {}",
                timers.heartbeat_ticks, timers.election_ticks
            ),
        ));
    }
    Ok(timers)
}

fn parse_allow(value: Option<&toml::Value>) -> Result<ClientAllow, (String, String)> {
    let expected = "expected \"any\" or a list of client public keys (64 hex)";
    match value {
        None => Ok(ClientAllow::default()),
        Some(toml::Value::String(s)) if s == "any" => Ok(ClientAllow::Any),
        Some(toml::Value::Array(items)) => parse_keys("client.allow", items)
            .map(ClientAllow::Keys)
            .map_err(|(at, reason)| (at, reason.replace(KEYS_EXPECTED, expected))),
        Some(other) => Err(("client.allow".into(), format!("{expected}, got {other}"))),
    }
}

const KEYS_EXPECTED: &str = "expected a public key (64 hex)";

/// A list of public keys at `field` (`field[i]` named in errors).
fn parse_keys(field: &str, items: &[toml::Value]) -> Result<Vec<PublicKey>, (String, String)> {
    let mut keys = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let at = format!("{field}[{i}]");
        let Some(text) = item.as_str() else {
            return Err((at, format!("{KEYS_EXPECTED}, got {item}")));
        };
        let key: PublicKey = text
            .parse()
            .map_err(|e| (at, format!("not a public key: {text:?} ({e})")))?;
        keys.push(key);
    }
    Ok(keys)
}

#[cfg(test)]
mod tests;
