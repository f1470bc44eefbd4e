//! Discovery (DESIGN §5): signed peer entries and the catalog a node keeps of them.
//!
//! A [`PeerEntry`] says who a peer is (its iroh key), where to reach it, which network and
//! groups it is in, the tickets it presents and when it said so. The peer signs the entry
//! with its own key; a [`Catalog`] accepts only entries whose signature verifies under the
//! key they name, for its own network, not issued in the future, not expired, and newer
//! than what it holds (larger version wins). Catalogs are bounded.
//!
//! [`exchange`] decides what a node publishes, when it exchanges catalogs and which
//! discovered members it asks the bond layer to dial; [`service`] runs that over the
//! `tessera/discovery/1` ALPN.
//!
//! **Contract.** This module and [`exchange`] are pure: no network, no clock (`now` is
//! passed in). Only [`service`] does IO. An entry never admits a peer to a group by
//! itself — only a bond handshake does (it re-checks the tickets against the key the
//! connection authenticated).
use std::collections::BTreeMap;

use iroh::{PublicKey, SecretKey, Signature};
use serde::{Deserialize, Serialize};

use crate::groups::GroupId;
use crate::tickets::Ticket;

/// How long an entry stays valid after it was issued.
pub const ENTRY_TTL_SECS: u64 = 600;
/// Allowed clock skew for `issued_at` in the future.
pub const CLOCK_SKEW_SECS: u64 = 30;
/// Most entries a catalog keeps.
pub const CATALOG_ENTRIES_MAX: usize = 4096;
/// Largest encoded entry accepted.
pub const ENTRY_BYTES_MAX: usize = 256 << 10;
/// Most addresses in one entry.
pub const ADDRS_MAX: usize = 16;
pub mod exchange;
pub mod service;

pub use exchange::{BondCommands, DiscoveryStats, Exchange, OwnEntry};
pub use service::{
    CatalogFrame, Discovery, DiscoveryConfig, DiscoveryError, ExchangeError, PeerDialer,
};

const SIGNATURE_DOMAIN: &[u8] = b"tessera/discovery/entry/v1";

/// What a peer says about itself.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerEntry {
    pub peer_key: [u8; 32],
    pub addrs: Vec<std::net::SocketAddr>,
    pub network_id: String,
    pub groups: Vec<[u8; 32]>,
    pub tickets: Vec<Ticket>,
    /// Increases with every change the peer publishes.
    pub version: u64,
    /// Unix seconds.
    pub issued_at: u64,
}

/// A [`PeerEntry`] as the peer signed it: the exact encoded bytes and the signature.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedPeerEntry {
    pub entry: Vec<u8>,
    pub signature: Vec<u8>,
}

/// Why an entry was not taken into a catalog.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EntryError {
    #[error("entry of {0} bytes exceeds {ENTRY_BYTES_MAX}")]
    TooLarge(usize),
    #[error("entry does not decode: {0}")]
    Malformed(String),
    #[error("entry names key {0} which is not a valid ed25519 key")]
    BadKey(String),
    #[error("entry signature does not verify under the key it names")]
    BadSignature,
    #[error("entry is for network {got:?}, this node is in {want:?}")]
    OtherNetwork { got: String, want: String },
    #[error("entry lists {0} addresses, at most {ADDRS_MAX}")]
    TooManyAddrs(usize),
    #[error("entry issued at {issued_at} is in the future (now {now})")]
    FromTheFuture { issued_at: u64, now: u64 },
    #[error("entry issued at {issued_at} expired at {expired_at} (now {now})")]
    Expired {
        issued_at: u64,
        expired_at: u64,
        now: u64,
    },
    #[error("entry version {got} is not newer than the known version {known}")]
    Stale { got: u64, known: u64 },
    #[error("catalog is full ({CATALOG_ENTRIES_MAX} entries)")]
    Full,
}

impl PeerEntry {
    /// Signs the entry with the peer's key (which must be the entry's `peer_key`).
    pub fn sign(&self, secret: &SecretKey) -> Result<SignedPeerEntry, EntryError> {
        if secret.public().as_bytes() != &self.peer_key {
            return Err(EntryError::BadSignature);
        }
        let entry =
            postcard::to_allocvec(self).map_err(|e| EntryError::Malformed(e.to_string()))?;
        let signature = secret.sign(&signed_message(&entry)).to_bytes().to_vec();
        Ok(SignedPeerEntry { entry, signature })
    }

    pub fn group_ids(&self) -> impl Iterator<Item = GroupId> + '_ {
        self.groups.iter().map(|g| GroupId(*g))
    }
}

fn signed_message(entry: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(SIGNATURE_DOMAIN.len() + entry.len());
    m.extend_from_slice(SIGNATURE_DOMAIN);
    m.extend_from_slice(entry);
    m
}

impl SignedPeerEntry {
    /// Checks size, encoding and signature; returns the entry.
    pub fn open(&self) -> Result<PeerEntry, EntryError> {
        if self.entry.len() > ENTRY_BYTES_MAX {
            return Err(EntryError::TooLarge(self.entry.len()));
        }
        let entry: PeerEntry =
            postcard::from_bytes(&self.entry).map_err(|e| EntryError::Malformed(e.to_string()))?;
        let key = PublicKey::from_bytes(&entry.peer_key)
            .map_err(|_| EntryError::BadKey(hex::encode(entry.peer_key)))?;
        let signature: [u8; 64] = self
            .signature
            .as_slice()
            .try_into()
            .map_err(|_| EntryError::BadSignature)?;
        key.verify(
            &signed_message(&self.entry),
            &Signature::from_bytes(&signature),
        )
        .map_err(|_| EntryError::BadSignature)?;
        Ok(entry)
    }
}

/// The entries a node knows, one per peer key.
#[derive(Debug)]
pub struct Catalog {
    network_id: String,
    entries: BTreeMap<[u8; 32], (PeerEntry, SignedPeerEntry)>,
    max: usize,
}

impl Catalog {
    pub fn new(network_id: impl Into<String>) -> Self {
        Self {
            network_id: network_id.into(),
            entries: BTreeMap::new(),
            max: CATALOG_ENTRIES_MAX,
        }
    }

    /// Takes `signed` if it is valid and newer than what is known. Returns whether the
    /// catalog changed.
    pub fn insert(&mut self, signed: SignedPeerEntry, now: u64) -> Result<bool, EntryError> {
        let entry = signed.open()?;
        if entry.network_id != self.network_id {
            return Err(EntryError::OtherNetwork {
                got: entry.network_id,
                want: self.network_id.clone(),
            });
        }
        if entry.addrs.len() > ADDRS_MAX {
            return Err(EntryError::TooManyAddrs(entry.addrs.len()));
        }
        if entry.issued_at > now.saturating_add(CLOCK_SKEW_SECS) {
            return Err(EntryError::FromTheFuture {
                issued_at: entry.issued_at,
                now,
            });
        }
        let expired_at = entry.issued_at.saturating_add(ENTRY_TTL_SECS);
        if expired_at <= now {
            return Err(EntryError::Expired {
                issued_at: entry.issued_at,
                expired_at,
                now,
            });
        }
        if let Some((known, _)) = self.entries.get(&entry.peer_key) {
            if entry.version <= known.version {
                if entry.version == known.version {
                    return Ok(false); // already known: not news, not an error
                }
                return Err(EntryError::Stale {
                    got: entry.version,
                    known: known.version,
                });
            }
        } else if self.entries.len() >= self.max {
            self.expire(now);
            if self.entries.len() >= self.max {
                return Err(EntryError::Full);
            }
        }
        self.entries.insert(entry.peer_key, (entry, signed));
        Ok(true)
    }

    /// Drops expired entries; returns how many.
    pub fn expire(&mut self, now: u64) -> usize {
        let before = self.entries.len();
        self.entries
            .retain(|_, (e, _)| e.issued_at.saturating_add(ENTRY_TTL_SECS) > now);
        before - self.entries.len()
    }

    pub fn get(&self, peer_key: &[u8; 32]) -> Option<&PeerEntry> {
        self.entries.get(peer_key).map(|(e, _)| e)
    }

    /// Peers that say they are in `group`.
    pub fn members_of(&self, group: GroupId) -> Vec<&PeerEntry> {
        self.entries
            .values()
            .map(|(e, _)| e)
            .filter(|e| e.group_ids().any(|g| g == group))
            .collect()
    }

    /// Every entry, in key order.
    pub fn entries(&self) -> impl Iterator<Item = &PeerEntry> {
        self.entries.values().map(|(e, _)| e)
    }

    /// Every entry as signed, to send to a peer.
    pub fn signed_entries(&self) -> Vec<SignedPeerEntry> {
        self.entries.values().map(|(_, s)| s.clone()).collect()
    }

    /// Merges a peer's catalog; returns how many entries were new, and the refusals.
    pub fn merge(&mut self, incoming: Vec<SignedPeerEntry>, now: u64) -> (usize, Vec<EntryError>) {
        let mut new = 0;
        let mut refused = Vec::new();
        for s in incoming {
            match self.insert(s, now) {
                Ok(true) => new += 1,
                Ok(false) => {}
                Err(e) => refused.push(e),
            }
        }
        (new, refused)
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests;
