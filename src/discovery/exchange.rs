//! The catalog exchange core: what a node publishes about itself, when it exchanges
//! catalogs and with whom, what it makes of a peer's catalog, and which discovered group
//! members it asks the bond layer to dial.
//!
//! **Contract.** Pure, like [`Catalog`]: no network, no clock, no tasks; `now` (unix
//! seconds) is passed in. Inputs are `handle_*` calls, outputs are `poll_*` calls; the
//! async driver ([`super::service`]) moves catalogs over `tessera/discovery/1` and calls
//! them in this order on every wake-up: `handle_timeout(now)`, `poll_round(now)`,
//! `poll_bonds(..)`; and `handle_catalog` / `handle_exchange_failed` when an exchange
//! ends. It must not admit anyone: an entry only makes a peer a *candidate* to dial, the
//! bond handshake (group key proof, tickets against the authenticated key) decides. It
//! does check a candidate's tickets first (through the check the driver passes to
//! [`Exchange::poll_bonds`]), so that an entry anyone can sign with our public group id
//! does not make the bond layer dial it, and keeps at most [`DIAL_POOL_MAX`] handed peers
//! unbonded at a time.
use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::Arc;

use iroh::{EndpointAddr, PublicKey, SecretKey};

use super::{
    Catalog, EntryError, EntryHead, PeerEntry, SignedPeerEntry, CATALOG_ENTRIES_MAX, ENTRY_TTL_SECS,
};
use crate::group_id::GroupId;
use crate::tickets::Ticket;

/// Our own entry is re-signed (new version, fresh `issued_at`) after this long, well before
/// peers let it expire after [`ENTRY_TTL_SECS`].
pub(crate) const REPUBLISH_SECS: u64 = ENTRY_TTL_SECS / 3;
/// A round of exchanges happens at least this often, news or not.
pub(crate) const ROUND_INTERVAL_SECS: u64 = 30;
/// Rounds prompted by news (a new own entry, entries learned) are at least this far apart,
/// so that news spreading through a network cannot turn into a storm of rounds.
pub(crate) const ROUND_GAP_SECS: u64 = 1;
/// Catalog peers contacted in one round (bootstrap peers come on top, every round).
pub(crate) const ROUND_PEERS_MAX: usize = 8;
/// Most entries one exchange carries: a full catalog and the sender's own entry.
pub(crate) const EXCHANGE_ENTRIES_MAX: usize = CATALOG_ENTRIES_MAX + 1;
/// Most entry bytes (entries and signatures) one exchange carries: about 150 real entries
/// (~28 KiB each, see [`super::ENTRY_BYTES_MAX`]). A larger catalog goes out over several
/// exchanges ([`Exchange::outgoing`] resumes where the last one stopped). It bounds what a
/// node buffers per exchange in flight.
pub(crate) const EXCHANGE_BYTES_MAX: usize = 4 << 20;
/// Most peers not known before that one exchange may add to the catalog: news spreads
/// over a few rounds, and one peer cannot fill the catalog with keys it made up.
pub(crate) const NEW_PEERS_PER_EXCHANGE_MAX: usize = 32;
/// Most peers handed to the bond layer per poll.
pub(crate) const DIALS_PER_POLL_MAX: usize = 16;
/// Most handed peers that are not bonded at a time: the bond layer keeps a dialler per
/// handed peer until it is forgotten, so this bounds those diallers.
pub(crate) const DIAL_POOL_MAX: usize = 16;
/// Most ticket checks per poll (each is a DCAP verification on a cache miss, ~ms of CPU).
pub(crate) const TICKET_CHECKS_PER_POLL_MAX: usize = 4;

/// What this node says about itself; the exchange signs, versions and dates it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OwnEntry {
    /// Where peers can reach this node (unspecified addresses are not published).
    pub addrs: Vec<SocketAddr>,
    /// The groups this node is a member of: nodes of these groups that find the entry
    /// dial it.
    pub groups: Vec<GroupId>,
    /// The tickets peers check before they dial this node (with
    /// [`DiscoveryConfig::tickets`](super::DiscoveryConfig::tickets), the latest renewal).
    pub tickets: Vec<Ticket>,
}

/// Counters a test or the metrics endpoint can watch.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DiscoveryStats {
    /// Exchanges completed (either side).
    pub exchanges: u64,
    /// Exchanges that failed, by [`super::ExchangeError::kind`].
    pub failed: BTreeMap<String, u64>,
    /// Entries taken into the catalog (new peers and newer versions).
    pub learned: u64,
    /// Entries dropped, by reason (`BadSignature`, `OtherNetwork`, `Stale`, …).
    pub refused: BTreeMap<String, u64>,
    /// Copies of our own entry that came back (ignored: only we speak for our key).
    pub own_echoes: u64,
    /// Peers handed to the bond layer to dial.
    pub dials: u64,
    /// Group members not dialled because their tickets did not verify.
    pub tickets_refused: u64,
    /// Polls that left members undialled because `DIAL_POOL_MAX` were pending.
    pub dial_pool_full: u64,
    /// Entries held now.
    pub catalog_entries: u64,
    /// The version of our own entry now.
    pub own_version: u64,
}

impl DiscoveryStats {
    /// Entries refused, all reasons together.
    pub fn refused_total(&self) -> u64 {
        self.refused.values().sum()
    }

    /// Exchanges failed, all kinds together.
    pub fn failed_total(&self) -> u64 {
        self.failed.values().sum()
    }
}

/// What the bond layer should do after a poll.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BondCommands {
    /// Group members we are not bonded with and have not asked for yet.
    pub dial: Vec<EndpointAddr>,
    /// Peers asked for earlier whose entry is gone (expired): stop re-dialling them.
    pub forget: Vec<PublicKey>,
}

/// The outcome of a ticket check of one entry version.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Verdict {
    version: u64,
    accepted: bool,
}

/// One node's side of catalog exchange. See the module doc for the call order.
pub struct Exchange {
    secret: SecretKey,
    own: PeerEntry,
    signed: SignedPeerEntry,
    catalog: Catalog,
    group: Option<GroupId>,
    bootstrap: Vec<EndpointAddr>,
    round_due: bool,
    last_round_at: Option<u64>,
    /// Where the next round continues through the catalog.
    cursor: Option<[u8; 32]>,
    /// Where the next [`Exchange::outgoing`] continues through the catalog.
    send_cursor: Option<[u8; 32]>,
    /// Peers handed to the bond layer and not forgotten since.
    handed: BTreeSet<[u8; 32]>,
    /// Ticket checks of group members' entries, by key, for the version checked (an entry
    /// is checked once per version; a new version, e.g. renewed tickets, is checked again).
    verdicts: BTreeMap<[u8; 32], Verdict>,
    stats: DiscoveryStats,
}

impl std::fmt::Debug for Exchange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Exchange")
            .field("own", &self.own)
            .field("catalog_entries", &self.catalog.len())
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

/// The key an encoded entry names, without decoding the rest (its tickets). Postcard
/// encodes fields in order and `peer_key` comes first.
fn peer_key_of(entry: &[u8]) -> Option<[u8; 32]> {
    #[derive(serde::Deserialize)]
    struct KeyOnly {
        peer_key: [u8; 32],
    }
    postcard::from_bytes::<KeyOnly>(entry)
        .ok()
        .map(|k| k.peer_key)
}

fn published(addrs: &[SocketAddr]) -> Vec<SocketAddr> {
    addrs
        .iter()
        .filter(|a| !a.ip().is_unspecified() && a.port() != 0)
        .take(super::ADDRS_MAX)
        .copied()
        .collect()
}

/// The address to dial the peer an entry describes at.
pub(crate) fn endpoint_addr(entry: &EntryHead) -> Option<EndpointAddr> {
    let id = PublicKey::from_bytes(&entry.peer_key).ok()?;
    Some(
        entry
            .addrs
            .iter()
            .fold(EndpointAddr::new(id), |a, s| a.with_ip_addr(*s)),
    )
}

/// The name an entry refusal is counted under.
pub(crate) fn entry_error_kind(e: &EntryError) -> &'static str {
    match e {
        EntryError::TooLarge(_) => "TooLarge",
        EntryError::Malformed(_) => "Malformed",
        EntryError::BadKey(_) => "BadKey",
        EntryError::BadSignature => "BadSignature",
        EntryError::OtherNetwork { .. } => "OtherNetwork",
        EntryError::TooManyAddrs(_) => "TooManyAddrs",
        EntryError::TooManyGroups(_) => "TooManyGroups",
        EntryError::NewPeersLimit { .. } => "NewPeersLimit",
        EntryError::FromTheFuture { .. } => "FromTheFuture",
        EntryError::Expired { .. } => "Expired",
        EntryError::Stale { .. } => "Stale",
        EntryError::Full => "Full",
        #[allow(unreachable_patterns)]
        _ => "Other",
    }
}

impl Exchange {
    /// Starts with our own entry signed by `secret` at version `now` (so that a restarted
    /// node's entry supersedes the one peers still hold), and the `bootstrap` peers to
    /// exchange with; members of `group` found in catalogs are handed to the bond layer.
    pub fn new(
        secret: SecretKey,
        network_id: impl Into<String>,
        own: OwnEntry,
        group: Option<GroupId>,
        bootstrap: Vec<EndpointAddr>,
        now: u64,
    ) -> Result<Self, EntryError> {
        let network_id = network_id.into();
        let me = secret.public();
        let entry = PeerEntry {
            peer_key: *me.as_bytes(),
            addrs: published(&own.addrs),
            network_id: network_id.clone(),
            groups: own.groups.iter().map(|g| g.0).collect(),
            tickets: own.tickets,
            version: now.max(1),
            issued_at: now,
        };
        let signed = entry.sign(&secret)?;
        let bootstrap = bootstrap.into_iter().filter(|p| p.id != me).collect();
        let stats = DiscoveryStats {
            own_version: entry.version,
            ..DiscoveryStats::default()
        };
        Ok(Self {
            secret,
            own: entry,
            signed,
            catalog: Catalog::new(network_id),
            group,
            bootstrap,
            round_due: true,
            last_round_at: None,
            cursor: None,
            send_cursor: None,
            handed: BTreeSet::new(),
            verdicts: BTreeMap::new(),
            stats,
        })
    }

    fn me(&self) -> &[u8; 32] {
        &self.own.peer_key
    }

    /// Re-signs our entry with a larger version and `issued_at = now`, and asks for a round.
    fn republish(&mut self, now: u64) -> Result<(), EntryError> {
        let mut next = self.own.clone();
        next.version = self.own.version.saturating_add(1).max(now);
        next.issued_at = now;
        self.signed = next.sign(&self.secret)?;
        self.own = next;
        self.stats.own_version = self.own.version;
        self.round_due = true;
        Ok(())
    }

    /// Our own entry changed (addresses, groups, renewed tickets): publishes a new version
    /// if anything differs. Returns whether it did.
    pub fn handle_own(&mut self, own: OwnEntry, now: u64) -> Result<bool, EntryError> {
        let addrs = published(&own.addrs);
        let groups: Vec<[u8; 32]> = own.groups.iter().map(|g| g.0).collect();
        if addrs == self.own.addrs && groups == self.own.groups && own.tickets == self.own.tickets {
            return Ok(false);
        }
        let previous = self.own.clone();
        self.own.addrs = addrs;
        self.own.groups = groups;
        self.own.tickets = own.tickets;
        if let Err(e) = self.republish(now) {
            self.own = previous;
            return Err(e);
        }
        Ok(true)
    }

    /// Expires entries, re-publishes our own entry before peers would drop it, and makes
    /// a round due when the interval has passed.
    pub fn handle_timeout(&mut self, now: u64) {
        self.catalog.expire(now);
        if now >= self.own.issued_at.saturating_add(REPUBLISH_SECS) {
            if let Err(e) = self.republish(now) {
                // Only a key that does not match our own entry fails here: a local bug.
                tracing::error!(error = %e, "could not re-sign this node's discovery entry");
            }
        }
        if self
            .last_round_at
            .is_none_or(|t| now >= t.saturating_add(ROUND_INTERVAL_SECS))
        {
            self.round_due = true;
        }
        self.stats.catalog_entries = self.catalog.len() as u64;
    }

    /// What we send in an exchange: our own fresh entry first, then what we hold, within
    /// `EXCHANGE_ENTRIES_MAX` and `EXCHANGE_BYTES_MAX`. The entries are shared with the
    /// catalog, not copied. When the limits cut the catalog short, the next call starts
    /// where this one stopped, so every entry goes out over a few exchanges.
    pub fn outgoing(&mut self) -> Vec<Arc<SignedPeerEntry>> {
        let size = |s: &SignedPeerEntry| s.entry.len() + s.signature.len();
        let mut bytes = size(&self.signed);
        let mut out = Vec::with_capacity(self.catalog.len().min(EXCHANGE_ENTRIES_MAX - 1) + 1);
        out.push(Arc::new(self.signed.clone()));
        let mut last = None;
        let mut cut = false;
        for (key, signed) in self.catalog.signed_entries_from(self.send_cursor) {
            bytes = bytes.saturating_add(size(signed));
            if out.len() == EXCHANGE_ENTRIES_MAX || bytes > EXCHANGE_BYTES_MAX {
                cut = true;
                break;
            }
            out.push(signed.clone());
            last = Some(*key);
        }
        self.send_cursor = if cut { last } else { None };
        out
    }

    /// A peer's catalog arrived: merges it, taking at most `NEW_PEERS_PER_EXCHANGE_MAX`
    /// peers not known before; refusals are counted by reason. Learning something makes a
    /// round due, so that news spreads (at most every `ROUND_GAP_SECS`). Returns how
    /// many entries were taken.
    pub fn handle_catalog(&mut self, entries: Vec<SignedPeerEntry>, now: u64) -> usize {
        let me = *self.me();
        let (echoes, theirs): (Vec<_>, Vec<_>) = entries
            .into_iter()
            .partition(|s| peer_key_of(&s.entry) == Some(me));
        let (new, refused) = self.catalog.merge(theirs, now, NEW_PEERS_PER_EXCHANGE_MAX);
        self.stats.exchanges += 1;
        self.stats.own_echoes += echoes.len() as u64;
        self.stats.learned += new as u64;
        for e in &refused {
            *self
                .stats
                .refused
                .entry(entry_error_kind(e).to_string())
                .or_default() += 1;
        }
        self.stats.catalog_entries = self.catalog.len() as u64;
        if new > 0 {
            self.round_due = true;
        }
        new
    }

    /// An exchange failed (`kind` names why, see [`super::ExchangeError::kind`]).
    pub fn handle_exchange_failed(&mut self, kind: &str) {
        *self.stats.failed.entry(kind.to_string()).or_default() += 1;
    }

    /// The peers to exchange with now, if a round is due: every bootstrap peer and the
    /// next `ROUND_PEERS_MAX` catalog peers in key order (continuing where the last
    /// round stopped, so that every peer is reached over a few rounds).
    pub fn poll_round(&mut self, now: u64) -> Option<Vec<EndpointAddr>> {
        if !self.round_due
            || self
                .last_round_at
                .is_some_and(|t| now < t.saturating_add(ROUND_GAP_SECS))
        {
            return None;
        }
        self.round_due = false;
        self.last_round_at = Some(now);
        let mut peers: BTreeMap<PublicKey, EndpointAddr> =
            self.bootstrap.iter().map(|p| (p.id, p.clone())).collect();
        let after = self.cursor;
        let mut keys: Vec<&EntryHead> = self
            .catalog
            .heads()
            .filter(|e| after.is_none_or(|c| e.peer_key > c))
            .take(ROUND_PEERS_MAX)
            .collect();
        if keys.len() < ROUND_PEERS_MAX {
            let wrapped = self
                .catalog
                .heads()
                .take(ROUND_PEERS_MAX - keys.len())
                .filter(|e| after.is_some_and(|c| e.peer_key <= c));
            keys.extend(wrapped.collect::<Vec<_>>());
        }
        self.cursor = keys.last().map(|e| e.peer_key);
        for entry in keys {
            if let Some(addr) = endpoint_addr(entry) {
                peers.entry(addr.id).or_insert(addr);
            }
        }
        Some(peers.into_values().collect())
    }

    /// Members of our group (as their entries say) that we are not bonded with, have not
    /// handed over yet and whose tickets `check_tickets` accepts; and handed peers whose
    /// entry is gone. At most `DIAL_POOL_MAX` handed peers are unbonded at a time, at
    /// most `TICKET_CHECKS_PER_POLL_MAX` entries are checked per poll, and an entry
    /// version is checked once: a refused one waits for the peer's next version.
    ///
    /// `check_tickets` is CPU work (a DCAP verification on a cache miss): the driver calls
    /// this off the async executor.
    pub fn poll_bonds(
        &mut self,
        is_bonded: impl Fn(&PublicKey) -> bool,
        mut check_tickets: impl FnMut(&PeerEntry) -> Result<(), String>,
    ) -> BondCommands {
        let mut commands = BondCommands::default();
        let Some(group) = self.group else {
            return commands;
        };
        let me = *self.me();
        let members: BTreeSet<[u8; 32]> =
            self.catalog.members_of(group).map(|e| e.peer_key).collect();
        let gone: Vec<[u8; 32]> = self.handed.difference(&members).copied().collect();
        for key in gone {
            self.handed.remove(&key);
            if let Ok(k) = PublicKey::from_bytes(&key) {
                commands.forget.push(k);
            }
        }
        let catalog = &self.catalog;
        self.verdicts
            .retain(|key, v| catalog.head(key).is_some_and(|h| h.version == v.version));
        let mut pending = self
            .handed
            .iter()
            .filter_map(|k| PublicKey::from_bytes(k).ok())
            .filter(|k| !is_bonded(k))
            .count();
        let mut checks_left = TICKET_CHECKS_PER_POLL_MAX;
        let candidates: Vec<(EndpointAddr, u64)> = self
            .catalog
            .members_of(group)
            .filter(|e| e.peer_key != me && !self.handed.contains(&e.peer_key))
            .filter_map(|e| Some((endpoint_addr(e)?, e.version)))
            .filter(|(addr, _)| !is_bonded(&addr.id))
            .collect();
        for (addr, version) in candidates {
            if commands.dial.len() == DIALS_PER_POLL_MAX {
                break;
            }
            if pending >= DIAL_POOL_MAX {
                self.stats.dial_pool_full += 1;
                break;
            }
            let key = *addr.id.as_bytes();
            let accepted = match self.verdicts.get(&key) {
                Some(v) if v.version == version => v.accepted,
                _ => {
                    if checks_left == 0 {
                        continue;
                    }
                    checks_left -= 1;
                    let Some(entry) = self.catalog.get(&key) else {
                        continue;
                    };
                    let accepted = match check_tickets(&entry) {
                        Ok(()) => true,
                        Err(reason) => {
                            tracing::info!(peer = %addr.id.fmt_short(), %reason, "a discovered group member's tickets do not verify; not dialling it");
                            self.stats.tickets_refused += 1;
                            false
                        }
                    };
                    self.verdicts.insert(key, Verdict { version, accepted });
                    accepted
                }
            };
            if !accepted {
                continue;
            }
            self.handed.insert(key);
            pending += 1;
            commands.dial.push(addr);
        }
        self.stats.dials += commands.dial.len() as u64;
        commands
    }

    /// The peers' entries held (never our own).
    pub fn catalog(&self) -> &Catalog {
        &self.catalog
    }

    /// Our own entry as last signed: its version and `issued_at` move with every
    /// re-publication.
    pub fn own_entry(&self) -> &PeerEntry {
        &self.own
    }

    /// The counters now.
    pub fn stats(&self) -> &DiscoveryStats {
        &self.stats
    }
}

#[cfg(test)]
mod tests;
