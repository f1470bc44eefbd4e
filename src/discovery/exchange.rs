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
use crate::groups::GroupId;
use crate::tickets::Ticket;

/// Our own entry is re-signed (new version, fresh `issued_at`) after this long, well before
/// peers let it expire after [`ENTRY_TTL_SECS`].
pub const REPUBLISH_SECS: u64 = ENTRY_TTL_SECS / 3;
/// A round of exchanges happens at least this often, news or not.
pub const ROUND_INTERVAL_SECS: u64 = 30;
/// Rounds prompted by news (a new own entry, entries learned) are at least this far apart,
/// so that news spreading through a network cannot turn into a storm of rounds.
pub const ROUND_GAP_SECS: u64 = 1;
/// Catalog peers contacted in one round (bootstrap peers come on top, every round).
pub const ROUND_PEERS_MAX: usize = 8;
/// Most entries one exchange carries: a full catalog and the sender's own entry.
pub const EXCHANGE_ENTRIES_MAX: usize = CATALOG_ENTRIES_MAX + 1;
/// Most entry bytes (entries and signatures) one exchange carries: about 150 real entries
/// (~28 KiB each, see [`super::ENTRY_BYTES_MAX`]). A larger catalog goes out over several
/// exchanges ([`Exchange::outgoing`] resumes where the last one stopped). It bounds what a
/// node buffers per exchange in flight.
pub const EXCHANGE_BYTES_MAX: usize = 4 << 20;
/// Most peers not known before that one exchange may add to the catalog: news spreads
/// over a few rounds, and one peer cannot fill the catalog with keys it made up.
pub const NEW_PEERS_PER_EXCHANGE_MAX: usize = 32;
/// Most peers handed to the bond layer per poll.
pub const DIALS_PER_POLL_MAX: usize = 16;
/// Most handed peers that are not bonded at a time: the bond layer keeps a dialler per
/// handed peer until it is forgotten, so this bounds those diallers.
pub const DIAL_POOL_MAX: usize = 16;
/// Most ticket checks per poll (each is a DCAP verification on a cache miss, ~ms of CPU).
pub const TICKET_CHECKS_PER_POLL_MAX: usize = 4;

/// What this node says about itself; the exchange signs, versions and dates it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OwnEntry {
    /// Where peers can reach this node (unspecified addresses are not published).
    pub addrs: Vec<SocketAddr>,
    pub groups: Vec<GroupId>,
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
    /// Polls that left members undialled because [`DIAL_POOL_MAX`] were pending.
    pub dial_pool_full: u64,
    /// Entries held now.
    pub catalog_entries: u64,
    /// The version of our own entry now.
    pub own_version: u64,
}

impl DiscoveryStats {
    pub fn refused_total(&self) -> u64 {
        self.refused.values().sum()
    }

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
pub fn endpoint_addr(entry: &EntryHead) -> Option<EndpointAddr> {
    let id = PublicKey::from_bytes(&entry.peer_key).ok()?;
    Some(
        entry
            .addrs
            .iter()
            .fold(EndpointAddr::new(id), |a, s| a.with_ip_addr(*s)),
    )
}

/// The name an entry refusal is counted under.
pub fn entry_error_kind(e: &EntryError) -> &'static str {
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
    /// [`EXCHANGE_ENTRIES_MAX`] and [`EXCHANGE_BYTES_MAX`]. The entries are shared with the
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

    /// A peer's catalog arrived: merges it, taking at most [`NEW_PEERS_PER_EXCHANGE_MAX`]
    /// peers not known before; refusals are counted by reason. Learning something makes a
    /// round due, so that news spreads (at most every [`ROUND_GAP_SECS`]). Returns how
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
    /// next [`ROUND_PEERS_MAX`] catalog peers in key order (continuing where the last
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
    /// entry is gone. At most [`DIAL_POOL_MAX`] handed peers are unbonded at a time, at
    /// most [`TICKET_CHECKS_PER_POLL_MAX`] entries are checked per poll, and an entry
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

    pub fn catalog(&self) -> &Catalog {
        &self.catalog
    }

    pub fn own_entry(&self) -> &PeerEntry {
        &self.own
    }

    pub fn stats(&self) -> &DiscoveryStats {
        &self.stats
    }
}

#[cfg(test)]
mod tests {
    use super::super::ENTRY_BYTES_MAX;
    use super::*;

    const NOW: u64 = 1_000_000;
    const GROUP: GroupId = GroupId([9; 32]);

    fn secret(b: u8) -> SecretKey {
        SecretKey::from_bytes(&[b; 32])
    }

    fn own(port: u16, groups: Vec<GroupId>) -> OwnEntry {
        OwnEntry {
            addrs: vec![SocketAddr::from(([127, 0, 0, 1], port))],
            groups,
            tickets: Vec::new(),
        }
    }

    /// What `x` sends, as a peer receives it.
    fn sent(x: &mut Exchange) -> Vec<SignedPeerEntry> {
        x.outgoing().iter().map(|s| (**s).clone()).collect()
    }

    /// A ticket check that accepts everything.
    fn any(_: &PeerEntry) -> Result<(), String> {
        Ok(())
    }

    fn node(b: u8, group: Option<GroupId>) -> Exchange {
        let groups = group.into_iter().collect();
        Exchange::new(
            secret(b),
            "net",
            own(4000 + b as u16, groups),
            group,
            Vec::new(),
            NOW,
        )
        .expect("exchange")
    }

    #[test]
    fn our_fresh_entry_goes_first_and_a_peer_learns_it() {
        let (mut a, mut b) = (node(1, Some(GROUP)), node(2, Some(GROUP)));
        let out = sent(&mut a);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].open().expect("opens"), *a.own_entry());
        assert_eq!(a.own_entry().version, NOW);
        assert_eq!(b.handle_catalog(out.clone(), NOW), 1);
        assert_eq!(b.handle_catalog(out, NOW), 0, "the same version is no news");
        assert_eq!(b.stats().learned, 1);
        assert_eq!(b.stats().exchanges, 2);
        // B passes A's entry on, after its own.
        let relayed = sent(&mut b);
        assert_eq!(relayed.len(), 2);
        assert_eq!(
            relayed[0].open().expect("opens").peer_key,
            *secret(2).public().as_bytes()
        );
    }

    #[test]
    fn members_of_our_group_are_dialled_once_unless_bonded_and_forgotten_when_gone() {
        let mut c = node(3, Some(GROUP));
        let mut a = node(1, Some(GROUP));
        let mut b = node(2, Some(GROUP));
        let mut outsider = node(4, Some(GroupId([8; 32])));
        let incoming = [sent(&mut a), sent(&mut b), sent(&mut outsider)].concat();
        assert_eq!(c.handle_catalog(incoming, NOW), 3);
        let bonded_a = |k: &PublicKey| *k == secret(1).public();
        let commands = c.poll_bonds(bonded_a, any);
        assert_eq!(
            commands.dial.iter().map(|p| p.id).collect::<Vec<_>>(),
            vec![secret(2).public()],
            "A is bonded already and the outsider is in another group"
        );
        assert_eq!(
            commands.dial[0].ip_addrs().copied().collect::<Vec<_>>(),
            vec![SocketAddr::from(([127, 0, 0, 1], 4002))]
        );
        assert_eq!(
            c.poll_bonds(bonded_a, any),
            BondCommands::default(),
            "asked once"
        );
        assert_eq!(
            c.poll_bonds(|_| false, any).dial.len(),
            1,
            "A is no longer bonded"
        );
        // Our own entry keeps being re-published; the others expire.
        c.handle_timeout(NOW + ENTRY_TTL_SECS);
        assert!(c.catalog().is_empty());
        let commands = c.poll_bonds(|_| false, any);
        assert!(commands.dial.is_empty());
        assert_eq!(commands.forget.len(), 2);
        assert_eq!(c.stats().dials, 2);
    }

    #[test]
    fn a_node_without_a_group_dials_nobody() {
        let mut c = node(3, None);
        c.handle_catalog(sent(&mut node(1, Some(GROUP))), NOW);
        assert_eq!(c.poll_bonds(|_| false, any), BondCommands::default());
    }

    #[test]
    fn foreign_forged_and_echoed_entries_are_dropped_and_counted() {
        let mut b = node(2, Some(GROUP));
        let foreign = sent(
            &mut Exchange::new(secret(5), "other-net", own(1, vec![]), None, vec![], NOW)
                .expect("exchange"),
        );
        let mut forged = sent(&mut node(6, Some(GROUP)));
        forged[0].signature[0] ^= 1;
        let echo = sent(&mut b);
        let good = sent(&mut node(1, Some(GROUP)));
        let n = b.handle_catalog([foreign, forged, echo, good].concat(), NOW);
        assert_eq!(n, 1);
        let s = b.stats();
        assert_eq!(s.refused.get("OtherNetwork"), Some(&1));
        assert_eq!(s.refused.get("BadSignature"), Some(&1));
        assert_eq!(s.refused_total(), 2);
        assert_eq!(s.own_echoes, 1);
        assert_eq!(b.catalog().len(), 1);
        assert!(b.catalog().get(secret(6).public().as_bytes()).is_none());
        assert!(b.catalog().get(secret(2).public().as_bytes()).is_none());
    }

    #[test]
    fn our_entry_is_republished_before_it_expires_and_on_change() {
        let mut a = node(1, Some(GROUP));
        assert_eq!(a.poll_round(NOW).map(|p| p.len()), Some(0), "first round");
        a.handle_timeout(NOW + REPUBLISH_SECS - 1);
        assert_eq!(a.own_entry().version, NOW);
        a.handle_timeout(NOW + REPUBLISH_SECS);
        assert_eq!(a.own_entry().version, NOW + REPUBLISH_SECS);
        assert_eq!(a.own_entry().issued_at, NOW + REPUBLISH_SECS);
        assert!(
            a.poll_round(NOW + REPUBLISH_SECS).is_some(),
            "a new entry is news"
        );
        // A peer holding the old version takes the new one.
        let mut b = node(2, Some(GROUP));
        let at = NOW + REPUBLISH_SECS;
        assert_eq!(b.handle_catalog(sent(&mut a), at), 1);
        // Unchanged: no new version. Changed: a new version.
        assert_eq!(a.handle_own(own(4001, vec![GROUP]), at), Ok(false));
        assert_eq!(a.handle_own(own(4999, vec![GROUP]), at), Ok(true));
        assert_eq!(a.own_entry().version, at + 1);
        assert_eq!(b.handle_catalog(sent(&mut a), at), 1);
        assert_eq!(
            b.catalog()
                .get(secret(1).public().as_bytes())
                .map(|e| e.addrs[0].port()),
            Some(4999)
        );
    }

    #[test]
    fn unspecified_addresses_are_not_published() {
        let mut o = own(0, vec![]);
        o.addrs.push(SocketAddr::from(([0, 0, 0, 0], 7001)));
        o.addrs.push(SocketAddr::from(([127, 0, 0, 1], 7002)));
        let a = Exchange::new(secret(1), "net", o, None, vec![], NOW).expect("exchange");
        assert_eq!(
            a.own_entry().addrs,
            vec![SocketAddr::from(([127, 0, 0, 1], 7002))]
        );
    }

    #[test]
    fn rounds_are_spaced_periodic_and_reach_every_peer() {
        let boot = EndpointAddr::new(secret(200).public());
        let mut a = Exchange::new(secret(1), "net", own(1, vec![]), None, vec![boot], NOW)
            .expect("exchange");
        let mut peers: Vec<Exchange> = (10..30).map(|b| node(b, None)).collect();
        a.handle_catalog(peers.iter_mut().flat_map(sent).collect(), NOW);
        let mut seen = BTreeSet::new();
        let first = a.poll_round(NOW).expect("a round is due at start");
        assert_eq!(
            first.len(),
            ROUND_PEERS_MAX + 1,
            "catalog peers and the bootstrap peer"
        );
        seen.extend(first.iter().map(|p| p.id));
        assert!(a.poll_round(NOW).is_none(), "not due again");
        let mut t = NOW;
        for _ in 0..3 {
            t += ROUND_INTERVAL_SECS;
            a.handle_timeout(t);
            let round = a.poll_round(t).expect("periodic round");
            assert!(round.iter().any(|p| p.id == secret(200).public()));
            seen.extend(round.iter().map(|p| p.id));
        }
        assert_eq!(seen.len(), 21, "every catalog peer and the bootstrap peer");
        // News makes a round due, but not sooner than the gap.
        a.handle_catalog(sent(&mut node(40, None)), t);
        assert!(a.poll_round(t).is_none());
        assert!(a.poll_round(t + ROUND_GAP_SECS).is_some());
    }

    /// A group member's entry signed by `secret(b)` at `version`, with a ticket of
    /// `ticket_bytes` bytes.
    fn member(b: u8, version: u64, ticket_bytes: usize) -> SignedPeerEntry {
        PeerEntry {
            peer_key: *secret(b).public().as_bytes(),
            addrs: vec![SocketAddr::from(([127, 0, 0, 1], 4000 + b as u16))],
            network_id: "net".into(),
            groups: vec![GROUP.0],
            tickets: vec![Ticket {
                kind: "tdx".into(),
                bytes: vec![b; ticket_bytes],
                expires_at: NOW + 300,
            }],
            version,
            issued_at: NOW,
        }
        .sign(&secret(b))
        .expect("sign")
    }

    #[test]
    fn one_exchange_adds_at_most_new_peers_per_exchange_max() {
        let mut c = node(1, Some(GROUP));
        let flood: Vec<SignedPeerEntry> = (10..110).map(|b| member(b, 1, 16)).collect();
        assert_eq!(
            c.handle_catalog(flood.clone(), NOW),
            NEW_PEERS_PER_EXCHANGE_MAX
        );
        assert_eq!(c.catalog().len(), NEW_PEERS_PER_EXCHANGE_MAX);
        assert_eq!(
            c.stats().refused.get("NewPeersLimit").copied(),
            Some((100 - NEW_PEERS_PER_EXCHANGE_MAX) as u64)
        );
        // The next exchange adds the next batch; known peers' updates are not limited.
        let updates: Vec<SignedPeerEntry> = (10..10 + NEW_PEERS_PER_EXCHANGE_MAX as u8)
            .map(|b| member(b, 2, 16))
            .collect();
        assert_eq!(
            c.handle_catalog([updates, flood].concat(), NOW),
            2 * NEW_PEERS_PER_EXCHANGE_MAX
        );
        assert_eq!(c.catalog().len(), 2 * NEW_PEERS_PER_EXCHANGE_MAX);
    }

    #[test]
    fn outgoing_shares_the_catalog_and_resumes_where_the_byte_limit_cut_it() {
        let mut a = node(1, Some(GROUP));
        // Entries near the largest size: more than one exchange's bytes in all.
        let big = ENTRY_BYTES_MAX - 1024;
        let n = EXCHANGE_BYTES_MAX / big + 20;
        for b in 0..n {
            let entry = member(10 + b as u8, 1, big - 200);
            assert!(entry.entry.len() <= ENTRY_BYTES_MAX);
            assert_eq!(a.catalog.insert(entry, NOW), Ok(true));
        }
        let first = a.outgoing();
        let bytes: usize = first
            .iter()
            .map(|s| s.entry.len() + s.signature.len())
            .sum();
        assert!(bytes <= EXCHANGE_BYTES_MAX, "{bytes}");
        assert!(first.len() < n + 1, "cut short by bytes: {}", first.len());
        let held: Vec<Arc<SignedPeerEntry>> = a.catalog.signed_entries().collect();
        assert!(
            first[1..]
                .iter()
                .all(|s| held.iter().any(|h| Arc::ptr_eq(s, h))),
            "outgoing entries are the catalog's own, not copies"
        );
        let second = a.outgoing();
        assert_eq!(second[0], first[0], "our own entry leads every exchange");
        let keys = |out: &[Arc<SignedPeerEntry>]| -> Vec<[u8; 32]> {
            out[1..]
                .iter()
                .filter_map(|s| peer_key_of(&s.entry))
                .collect()
        };
        let (k1, k2) = (keys(&first), keys(&second));
        assert!(
            k2[0] > k1[k1.len() - 1],
            "the second exchange continues after the first"
        );
        let all: BTreeSet<[u8; 32]> = k1.iter().chain(&k2).copied().collect();
        assert_eq!(all.len(), n, "two exchanges carry the whole catalog");
    }

    #[test]
    fn members_are_dialled_only_once_their_tickets_verify() {
        let mut c = node(1, Some(GROUP));
        c.handle_catalog(vec![member(2, 1, 16), member(3, 1, 16)], NOW);
        let refused_key = *secret(3).public().as_bytes();
        let mut checked = Vec::new();
        let mut check = |e: &PeerEntry| {
            checked.push(e.peer_key);
            if e.peer_key == refused_key {
                Err("no alternative accepts the ticket".to_string())
            } else {
                Ok(())
            }
        };
        let commands = c.poll_bonds(|_| false, &mut check);
        assert_eq!(
            commands.dial.iter().map(|p| p.id).collect::<Vec<_>>(),
            vec![secret(2).public()],
            "the member whose ticket fails is not dialled"
        );
        assert_eq!(c.stats().tickets_refused, 1);
        assert_eq!(c.poll_bonds(|_| false, &mut check), BondCommands::default());
        assert_eq!(checked.len(), 2, "an entry version is checked once");
        // A new version (renewed tickets) is checked again, and dialled if it passes.
        c.handle_catalog(vec![member(3, 2, 16)], NOW);
        let commands = c.poll_bonds(|_| false, |_: &PeerEntry| Ok(()));
        assert_eq!(
            commands.dial.iter().map(|p| p.id).collect::<Vec<_>>(),
            vec![secret(3).public()]
        );
    }

    #[test]
    fn at_most_dial_pool_max_handed_peers_are_unbonded() {
        let mut c = node(1, Some(GROUP));
        let total = DIAL_POOL_MAX + 20;
        let entries: Vec<SignedPeerEntry> =
            (10..10 + total as u8).map(|b| member(b, 1, 16)).collect();
        while c.catalog().len() < total {
            c.handle_catalog(entries.clone(), NOW);
        }
        let mut handed = Vec::new();
        for _ in 0..total {
            let commands = c.poll_bonds(|_| false, any);
            assert!(commands.dial.len() <= TICKET_CHECKS_PER_POLL_MAX);
            handed.extend(commands.dial.into_iter().map(|p| p.id));
        }
        assert_eq!(handed.len(), DIAL_POOL_MAX, "the pool is full");
        assert!(c.stats().dial_pool_full > 0);
        // Bonds free the pool: the peers that bonded no longer count.
        let bonded: BTreeSet<PublicKey> = handed.iter().take(4).copied().collect();
        let commands = c.poll_bonds(|k| bonded.contains(k), any);
        assert_eq!(commands.dial.len(), 4);
        assert!(commands.dial.iter().all(|p| !handed.contains(&p.id)));
    }
}
