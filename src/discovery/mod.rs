//! Discovery (architecture.md §5): signed peer entries and the catalog a node keeps of them.
//!
//! A [`PeerEntry`] says who a peer is (its iroh key), where to reach it, which network and
//! groups it is in, the tickets it presents and when it said so. The peer signs the entry
//! with its own key; a [`Catalog`] accepts only entries whose signature verifies under the
//! key they name, for its own network, not issued in the future, not expired, and newer
//! than what it holds (larger version wins).
//!
//! Everything an unauthenticated peer can make a node hold is bounded: an entry by
//! [`ENTRY_BYTES_MAX`] (near a real entry's size), the catalog by [`CATALOG_ENTRIES_MAX`]
//! (each entry stored once, as its signed bytes, beside a small [`EntryHead`]), the new
//! peers one exchange may add by `exchange::NEW_PEERS_PER_EXCHANGE_MAX`, and the peers
//! handed to the bond layer to dial by `exchange::DIAL_POOL_MAX`, each only once its
//! tickets verify.
//!
//! `exchange` decides what a node publishes, when it exchanges catalogs and which
//! discovered members it asks the bond layer to dial; `service` runs that over the
//! `tessera/discovery/1` ALPN.
//!
//! **Contract.** This module and `exchange` are pure: no network, no clock (`now` is
//! passed in). Only `service` does IO. An entry never admits a peer to a group by
//! itself — only a bond handshake does (it re-checks the tickets against the key the
//! connection authenticated).
use std::collections::BTreeMap;
use std::sync::Arc;

use iroh::{PublicKey, SecretKey, Signature};
use serde::{Deserialize, Serialize};

use crate::group_id::GroupId;
use crate::tickets::Ticket;

/// How long an entry stays valid after it was issued.
pub const ENTRY_TTL_SECS: u64 = 600;
/// Allowed clock skew for `issued_at` in the future.
pub const CLOCK_SKEW_SECS: u64 = 30;
/// Most entries a catalog keeps: a few groups' members and then some. With
/// [`ENTRY_BYTES_MAX`] this bounds a catalog at 16 MiB of entry bytes, whatever peers send.
pub const CATALOG_ENTRIES_MAX: usize = 256;
/// Largest encoded entry accepted. A real entry is dominated by its TDX ticket: the quote
/// (5,006 bytes in `tests/vectors/tdx`, up to ~8 KiB with a longer certification chain),
/// the DCAP collateral it is verified with (16,072 and 18,793 bytes of JSON in the same
/// vectors) and the claims (~150 bytes), plus addresses, groups and the key (< 1 KiB):
/// about 20–28 KiB. 64 KiB leaves room for larger CRLs and TCB Info, and for a second
/// ticket during a policy rollover.
pub const ENTRY_BYTES_MAX: usize = 64 << 10;
/// Most addresses in one entry.
pub const ADDRS_MAX: usize = 16;
/// Most groups one entry names.
pub const GROUPS_MAX: usize = 16;
pub(crate) mod exchange;
pub(crate) mod service;

pub use exchange::{BondCommands, DiscoveryStats, Exchange, OwnEntry};
pub use service::{
    CatalogFrame, Discovery, DiscoveryConfig, DiscoveryError, DiscoveryProtocol, ExchangeError,
    PeerDialer, CLOSE_BUSY, CLOSE_LIMIT, CLOSE_MALFORMED, ENTRY_FRAME_BYTES_MAX,
    INCOMING_EXCHANGES_MAX, INCOMING_EXCHANGES_PER_SOURCE_MAX,
};

const SIGNATURE_DOMAIN: &[u8] = b"tessera/discovery/entry/v1";

/// What a peer says about itself.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerEntry {
    /// The peer's iroh public key (its node id): the entry must be signed by it, and it
    /// is the key a dial to the peer authenticates.
    pub peer_key: [u8; 32],
    /// Where the peer can be dialled; at most [`ADDRS_MAX`].
    pub addrs: Vec<std::net::SocketAddr>,
    /// The network the peer is in; a [`Catalog`] refuses entries for another network.
    pub network_id: String,
    /// The ids of the groups the peer says it is a member of, at most [`GROUPS_MAX`]. A
    /// claim only: the bond handshake decides.
    pub groups: Vec<[u8; 32]>,
    /// The peer's tickets, checked against the group's validators before a discovered
    /// member is dialled.
    pub tickets: Vec<Ticket>,
    /// Increases with every change the peer publishes.
    pub version: u64,
    /// Unix seconds.
    pub issued_at: u64,
}

/// A [`PeerEntry`] as the peer signed it: the exact encoded bytes and the signature.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedPeerEntry {
    /// The [`PeerEntry`], postcard-encoded, exactly as signed; at most
    /// [`ENTRY_BYTES_MAX`] bytes are accepted.
    pub entry: Vec<u8>,
    /// The Ed25519 signature (64 bytes) by the entry's `peer_key` over a domain tag and
    /// `entry`.
    pub signature: Vec<u8>,
}

/// Why an entry was not taken into a catalog.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EntryError {
    /// The encoded entry is over [`ENTRY_BYTES_MAX`] (its size in bytes); not decoded.
    #[error("entry of {0} bytes exceeds {ENTRY_BYTES_MAX}")]
    TooLarge(usize),
    /// The bytes do not decode as a [`PeerEntry`] (or, in [`PeerEntry::sign`], the entry
    /// does not encode).
    #[error("entry does not decode: {0}")]
    Malformed(String),
    /// `peer_key` (in hex) is not a valid Ed25519 public key.
    #[error("entry names key {0} which is not a valid ed25519 key")]
    BadKey(String),
    /// The signature is not 64 bytes or does not verify under `peer_key`. Also returned
    /// by [`PeerEntry::sign`] when the secret key is not the entry's key.
    #[error("entry signature does not verify under the key it names")]
    BadSignature,
    /// The entry is for another network than the catalog's.
    #[error("entry is for network {got:?}, this node is in {want:?}")]
    OtherNetwork {
        /// The entry's network.
        got: String,
        /// The catalog's network.
        want: String,
    },
    /// The entry lists more than [`ADDRS_MAX`] addresses (how many).
    #[error("entry lists {0} addresses, at most {ADDRS_MAX}")]
    TooManyAddrs(usize),
    /// The entry names more than [`GROUPS_MAX`] groups (how many).
    #[error("entry names {0} groups, at most {GROUPS_MAX}")]
    TooManyGroups(usize),
    /// `issued_at` is more than [`CLOCK_SKEW_SECS`] ahead of this node's clock.
    #[error("entry issued at {issued_at} is in the future (now {now})")]
    FromTheFuture {
        /// The entry's `issued_at`, Unix seconds.
        issued_at: u64,
        /// This node's time, Unix seconds.
        now: u64,
    },
    /// [`ENTRY_TTL_SECS`] have passed since the entry was issued.
    #[error("entry issued at {issued_at} expired at {expired_at} (now {now})")]
    Expired {
        /// The entry's `issued_at`, Unix seconds.
        issued_at: u64,
        /// `issued_at` plus [`ENTRY_TTL_SECS`].
        expired_at: u64,
        /// This node's time, Unix seconds.
        now: u64,
    },
    /// The catalog holds a newer version for this peer. (The same version again is not an
    /// error: it is ignored.)
    #[error("entry version {got} is not newer than the known version {known}")]
    Stale {
        /// The version received.
        got: u64,
        /// The version held.
        known: u64,
    },
    /// The catalog holds [`CATALOG_ENTRIES_MAX`] unexpired entries: a peer not known yet
    /// is refused until some expire.
    #[error("catalog is full ({CATALOG_ENTRIES_MAX} entries)")]
    Full,
    /// This exchange has already added as many peers not known before as one exchange
    /// may; the rest may come in a later round.
    #[error("more than {max} new peers in one exchange")]
    NewPeersLimit {
        /// New peers one exchange may add.
        max: usize,
    },
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

    /// The groups the peer names, as [`GroupId`]s.
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

/// What a catalog keeps of an entry besides its signed bytes: the small fields it decides
/// on every poll. The tickets (nearly all of an entry's bytes) stay only in the signed
/// bytes, decoded again when needed ([`Catalog::get`], ticket checks before a dial).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EntryHead {
    /// The peer's iroh public key ([`PeerEntry::peer_key`]).
    pub peer_key: [u8; 32],
    /// Where the peer can be dialled ([`PeerEntry::addrs`]).
    pub addrs: Vec<std::net::SocketAddr>,
    /// The groups the peer names ([`PeerEntry::groups`]).
    pub groups: Vec<[u8; 32]>,
    /// The entry's version ([`PeerEntry::version`]).
    pub version: u64,
    /// When the entry was issued, Unix seconds; it expires [`ENTRY_TTL_SECS`] later.
    pub issued_at: u64,
}

impl EntryHead {
    fn of(entry: &PeerEntry) -> Self {
        Self {
            peer_key: entry.peer_key,
            addrs: entry.addrs.clone(),
            groups: entry.groups.clone(),
            version: entry.version,
            issued_at: entry.issued_at,
        }
    }

    /// The groups the peer names, as [`GroupId`]s.
    pub fn group_ids(&self) -> impl Iterator<Item = GroupId> + '_ {
        self.groups.iter().map(|g| GroupId(*g))
    }

    /// Bytes this head holds (for [`Catalog::held_bytes`]).
    fn held_bytes(&self) -> usize {
        std::mem::size_of::<Self>()
            + self.addrs.len() * std::mem::size_of::<std::net::SocketAddr>()
            + self.groups.len() * 32
    }
}

struct Held {
    head: EntryHead,
    /// Shared with exchanges in flight ([`Catalog::signed_entries`]): sending the catalog
    /// copies pointers, not entries.
    signed: Arc<SignedPeerEntry>,
}

/// The entries a node knows, one per peer key, at most [`CATALOG_ENTRIES_MAX`].
pub struct Catalog {
    network_id: String,
    entries: BTreeMap<[u8; 32], Held>,
    max: usize,
}

impl std::fmt::Debug for Catalog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Catalog")
            .field("network_id", &self.network_id)
            .field("entries", &self.entries.len())
            .finish_non_exhaustive()
    }
}

impl Catalog {
    /// An empty catalog of `network_id`: entries for any other network are refused.
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
        let mut unlimited = usize::MAX;
        self.insert_limited(signed, now, &mut unlimited)
    }

    /// As [`Catalog::insert`], taking a peer not known yet only while `new_peers_left` is
    /// above zero (and counting it down): one exchange cannot fill the catalog.
    fn insert_limited(
        &mut self,
        signed: SignedPeerEntry,
        now: u64,
        new_peers_left: &mut usize,
    ) -> Result<bool, EntryError> {
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
        if entry.groups.len() > GROUPS_MAX {
            return Err(EntryError::TooManyGroups(entry.groups.len()));
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
        if let Some(known) = self.entries.get(&entry.peer_key) {
            if entry.version <= known.head.version {
                if entry.version == known.head.version {
                    return Ok(false); // already known: not news, not an error
                }
                return Err(EntryError::Stale {
                    got: entry.version,
                    known: known.head.version,
                });
            }
        } else {
            if *new_peers_left == 0 {
                return Err(EntryError::NewPeersLimit {
                    max: exchange::NEW_PEERS_PER_EXCHANGE_MAX,
                });
            }
            if self.entries.len() >= self.max {
                self.expire(now);
                if self.entries.len() >= self.max {
                    return Err(EntryError::Full);
                }
            }
            *new_peers_left -= 1;
        }
        let head = EntryHead::of(&entry);
        // `entry` (with its decoded tickets) is dropped here: only the signed bytes stay.
        self.entries.insert(
            head.peer_key,
            Held {
                head,
                signed: Arc::new(signed),
            },
        );
        Ok(true)
    }

    /// Drops expired entries; returns how many.
    pub fn expire(&mut self, now: u64) -> usize {
        let before = self.entries.len();
        self.entries
            .retain(|_, held| held.head.issued_at.saturating_add(ENTRY_TTL_SECS) > now);
        before - self.entries.len()
    }

    /// The entry held for `peer_key`, decoded from its signed bytes.
    pub fn get(&self, peer_key: &[u8; 32]) -> Option<PeerEntry> {
        self.entries
            .get(peer_key)
            .and_then(|held| postcard::from_bytes(&held.signed.entry).ok())
    }

    /// The head of the entry held for `peer_key`.
    pub fn head(&self, peer_key: &[u8; 32]) -> Option<&EntryHead> {
        self.entries.get(peer_key).map(|held| &held.head)
    }

    /// Peers that say they are in `group`.
    pub fn members_of(&self, group: GroupId) -> impl Iterator<Item = &EntryHead> {
        self.heads()
            .filter(move |e| e.group_ids().any(|g| g == group))
    }

    /// Every entry's head, in key order.
    pub fn heads(&self) -> impl Iterator<Item = &EntryHead> {
        self.entries.values().map(|held| &held.head)
    }

    /// Every entry, decoded, in key order.
    pub fn entries(&self) -> impl Iterator<Item = PeerEntry> + '_ {
        self.entries
            .values()
            .filter_map(|held| postcard::from_bytes(&held.signed.entry).ok())
    }

    /// Every entry as signed, in key order, shared with the catalog (no entry is copied).
    pub fn signed_entries(&self) -> impl Iterator<Item = Arc<SignedPeerEntry>> + '_ {
        self.entries.values().map(|held| held.signed.clone())
    }

    /// The signed entries with keys after `after` (all with `None`), then the others: a
    /// send that stops early resumes where it stopped the next time.
    pub fn signed_entries_from(
        &self,
        after: Option<[u8; 32]>,
    ) -> impl Iterator<Item = (&[u8; 32], &Arc<SignedPeerEntry>)> + '_ {
        use std::ops::Bound::{Excluded, Unbounded};
        type Range = (std::ops::Bound<[u8; 32]>, std::ops::Bound<[u8; 32]>);
        let tail: Range = match after {
            Some(k) => (Excluded(k), Unbounded),
            None => (Unbounded, Unbounded),
        };
        // The entries up to `after` come last; none when starting from the beginning.
        let head = after
            .map(|k| self.entries.range(..=k))
            .into_iter()
            .flatten();
        let tail = self.entries.range::<[u8; 32], Range>(tail);
        tail.chain(head).map(|(k, held)| (k, &held.signed))
    }

    /// Merges a peer's catalog; returns how many entries were new, and the refusals. At
    /// most `new_peers_max` peers not known before are taken.
    pub fn merge(
        &mut self,
        incoming: Vec<SignedPeerEntry>,
        now: u64,
        new_peers_max: usize,
    ) -> (usize, Vec<EntryError>) {
        let mut new = 0;
        let mut refused = Vec::new();
        let mut new_peers_left = new_peers_max;
        for s in incoming {
            match self.insert_limited(s, now, &mut new_peers_left) {
                Ok(true) => new += 1,
                Ok(false) => {}
                Err(e) => refused.push(e),
            }
        }
        (new, refused)
    }

    /// Bytes the entries take: each entry's signed bytes once, and its head.
    pub fn held_bytes(&self) -> usize {
        self.entries
            .values()
            .map(|held| {
                held.signed.entry.len() + held.signed.signature.len() + held.head.held_bytes()
            })
            .sum()
    }

    /// Entries held (expired ones included until [`Catalog::expire`] drops them).
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether no entry is held.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests;
