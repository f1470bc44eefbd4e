//! What the config helpers refuse, one type per operation. Each message names what was
//! wrong (the path, the text, the expected form), so that a caller building a
//! [`ConfigError`](super::ConfigError) only adds the file and the field.
use std::net::AddrParseError;
use std::path::PathBuf;

use super::CONFIG_FILE_BYTES_MAX;

/// Why a config, policy or key file could not be read. The message starts with the path.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FileError {
    /// The file could not be opened, inspected or read.
    #[error("{}: {source}", .path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The file is larger than any config file may be ([`CONFIG_FILE_BYTES_MAX`]).
    #[error("{}: larger than {CONFIG_FILE_BYTES_MAX} bytes", .path.display())]
    TooLarge {
        /// The file.
        path: PathBuf,
    },
    /// A secret that group or others may read: whoever else can read it holds the secret.
    #[error("{}: mode {mode:o} lets group or others read it; chmod 600", .path.display())]
    NotPrivate {
        /// The file.
        path: PathBuf,
        /// The permission bits found (`mode & 0o777`).
        mode: u32,
    },
}

/// Why [`read_secret_key`](super::read_secret_key) refused a key file.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SecretKeyError {
    /// The file could not be read, or is not private.
    #[error(transparent)]
    File(#[from] FileError),
    /// The file does not hold hex text.
    #[error("{}: not hex: {source}", .path.display())]
    NotHex {
        /// The key file.
        path: PathBuf,
        /// The hex decoder's error.
        #[source]
        source: hex::FromHexError,
    },
    /// The file holds hex of another length than a key's 32 bytes.
    #[error("{}: {bytes} bytes, expected 32 (64 hex characters)", .path.display())]
    Length {
        /// The key file.
        path: PathBuf,
        /// How many bytes the hex decoded to.
        bytes: usize,
    },
}

/// Why [`parse_peer`](super::parse_peer) refused `<node id>@<ip:port>` text.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ParsePeerError {
    /// No `@` between a node id and an address.
    #[error("expected <node id>@<ip:port>, got {text:?}")]
    MissingAt {
        /// The text as given.
        text: String,
    },
    /// The part before `@` is not an iroh public key.
    #[error("expected <node id>@<ip:port>, got {text:?} (node id: {source})")]
    NodeId {
        /// The whole text as given.
        text: String,
        /// Why the node id does not parse.
        #[source]
        source: iroh::KeyParsingError,
    },
    /// The part after `@` is not an `ip:port`.
    #[error("expected <node id>@<ip:port>, got {text:?} (address: {source})")]
    Address {
        /// The whole text as given.
        text: String,
        /// Why the address does not parse.
        #[source]
        source: AddrParseError,
    },
}

/// Why [`parse_node`](super::parse_node) refused a node name.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ParseNodeError {
    /// Neither `<node id>@<ip:port>` nor a bare `<ip:port>`.
    #[error("expected <node id>@<ip:port> or <ip:port>, got {text:?}")]
    Unrecognized {
        /// The text as given.
        text: String,
    },
    /// It has an `@`, so it names a node id, but not a valid one (or not a valid address).
    #[error(transparent)]
    Peer(#[from] ParsePeerError),
}

/// Why [`check_config_id`](super::check_config_id) refused to let this TD run its config.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigIdError {
    /// The TD's own quote does not parse: nothing to compare against.
    #[error("cannot read this TD's own quote: {0}")]
    OwnQuote(#[source] tessera_attestation::quote::ParseError),
    /// The host started the TD with another config id than the config's: the node's quotes
    /// would vouch for a configuration it does not have.
    #[error(
        "this TD was started with MRCONFIGID {} but its configuration (node.toml and its \
         policies) has id {}: the host passed another configuration than the one it \
         measured (start the TD with the id `tessera config-id` prints)",
        hex::encode(.measured),
        hex::encode(.config_id)
    )]
    Mismatch {
        /// MRCONFIGID of the TD's own quote.
        measured: [u8; 48],
        /// The id of the config this node runs.
        config_id: [u8; 48],
    },
}
