//! Budgets for the work a node does for a peer it has not authenticated yet: QUIC
//! handshakes in progress, bond handshakes before the group-key proof. Each budget bounds
//! the total and, separately, what one source may hold, so that one host opening silent
//! connections exhausts its own share and not everyone's.
//!
//! A source is the remote IP address (an IPv6 address counts by its /64, which one host
//! usually holds whole), or the endpoint id of a relayed peer. [`Budget::try_acquire`]
//! never waits: a connection over budget is refused at once.
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use iroh::endpoint::{Accepting, Connection, IncomingAddr};
use iroh::protocol::AcceptError;

/// Where a connection comes from, for per-source budgets.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Source {
    /// An IPv4 address, or the /64 prefix of an IPv6 address.
    Ip(IpAddr),
    /// A peer reached through a relay, by the endpoint id it claims there.
    Relayed([u8; 32]),
    /// Any other transport: one shared source.
    Other,
}

impl Source {
    /// The source of an IP address: IPv4 as it is, IPv6 by its /64 prefix (an IPv4-mapped
    /// IPv6 address as the IPv4 address).
    pub fn of_ip(ip: IpAddr) -> Self {
        match ip {
            IpAddr::V4(v4) => Source::Ip(IpAddr::V4(v4)),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => Source::Ip(IpAddr::V4(v4)),
                None => {
                    let prefix = u128::from(v6) & !((1u128 << 64) - 1);
                    Source::Ip(IpAddr::V6(prefix.into()))
                }
            },
        }
    }

    /// The source of a connection being accepted from `addr`.
    pub fn of_addr(addr: &IncomingAddr) -> Self {
        match addr {
            IncomingAddr::Ip(addr) => Self::of_ip(addr.ip()),
            IncomingAddr::Relay { endpoint_id, .. } => Source::Relayed(*endpoint_id.as_bytes()),
            _ => Source::Other,
        }
    }
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Source::Ip(ip @ IpAddr::V6(_)) => write!(f, "{ip}/64"),
            Source::Ip(ip) => write!(f, "{ip}"),
            Source::Relayed(id) => write!(f, "relayed peer {}", hex::encode(&id[..5])),
            Source::Other => f.write_str("other transport"),
        }
    }
}

/// Why [`Budget::try_acquire`] refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum OverBudget {
    /// The whole budget is in use, whatever the source.
    #[error("{what}: {max} in progress, the most allowed")]
    Total {
        /// The budget's name, as given to [`Budget::new`].
        what: &'static str,
        /// The total bound.
        max: usize,
    },
    /// This source already holds its share; other sources may still get in.
    #[error("{what}: {max} in progress from {from}, the most allowed from one source")]
    Source {
        /// The budget's name, as given to [`Budget::new`].
        what: &'static str,
        /// The source that is at its share.
        from: Source,
        /// The per-source bound (never more than the total).
        max: usize,
    },
}

/// A bounded count of things in progress, in total and per [`Source`].
#[derive(Clone)]
pub struct Budget {
    what: &'static str,
    total_max: usize,
    per_source_max: usize,
    held: Arc<Mutex<Held>>,
}

#[derive(Default)]
struct Held {
    total: usize,
    by_source: HashMap<Source, usize>,
}

impl Budget {
    /// A budget named `what` (in refusals) of `total_max` in all and `per_source_max` per
    /// source.
    pub fn new(what: &'static str, total_max: usize, per_source_max: usize) -> Self {
        Self {
            what,
            total_max,
            per_source_max: per_source_max.min(total_max),
            held: Arc::default(),
        }
    }

    /// Takes one unit for `source` if both bounds allow; it is given back when the permit
    /// drops.
    pub fn try_acquire(&self, source: Source) -> Result<BudgetPermit, OverBudget> {
        let mut held = self.lock();
        if held.total >= self.total_max {
            return Err(OverBudget::Total {
                what: self.what,
                max: self.total_max,
            });
        }
        let mine = held.by_source.entry(source).or_default();
        if *mine >= self.per_source_max {
            return Err(OverBudget::Source {
                what: self.what,
                from: source,
                max: self.per_source_max,
            });
        }
        *mine += 1;
        held.total += 1;
        Ok(BudgetPermit {
            held: self.held.clone(),
            source,
        })
    }

    /// Units held now (in total, and by `source`).
    pub fn in_use(&self, source: Source) -> (usize, usize) {
        let held = self.lock();
        (
            held.total,
            held.by_source.get(&source).copied().unwrap_or(0),
        )
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Held> {
        self.held.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// One unit of a [`Budget`], returned on drop.
pub struct BudgetPermit {
    held: Arc<Mutex<Held>>,
    source: Source,
}

impl Drop for BudgetPermit {
    fn drop(&mut self) {
        let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        held.total = held.total.saturating_sub(1);
        if let Some(n) = held.by_source.get_mut(&self.source) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                held.by_source.remove(&self.source);
            }
        }
    }
}

/// A [`Budget`] for the connections a protocol handler serves after their QUIC handshake
/// (client sessions, discovery exchanges), in total and per [`Source`].
///
/// A connection's source is known only while it is being accepted (`on_accepting`), and
/// iroh's router hands the connection to `accept` right after, in the same task:
/// [`ServingBudget::accept`] takes the unit in the first and keeps it under the connection's
/// stable id, [`ServingBudget::take`] hands it to the second, which holds it while it
/// serves. Every unit kept counts against the budget, so what is kept stays bounded by it.
#[derive(Clone)]
pub struct ServingBudget {
    budget: Budget,
    admitted: Arc<Mutex<HashMap<usize, BudgetPermit>>>,
}

impl ServingBudget {
    /// A budget named `what` of `total_max` connections served at once, `per_source_max`
    /// of them from one source.
    pub fn new(what: &'static str, total_max: usize, per_source_max: usize) -> Self {
        Self {
            budget: Budget::new(what, total_max, per_source_max),
            admitted: Arc::default(),
        }
    }

    /// Completes an incoming handshake as [`accept_within`] does (holding a unit of
    /// `connecting` meanwhile), then takes a unit of this budget for the connection's
    /// source and keeps it for [`ServingBudget::take`]. Over this budget the connection is
    /// closed with `busy` (code and reason) and refused.
    pub async fn accept(
        &self,
        connecting: &Budget,
        accepting: Accepting,
        timeout: std::time::Duration,
        busy: (u32, &'static [u8]),
    ) -> Result<Connection, AcceptFailure> {
        let (conn, source) = accept_within(connecting, accepting, timeout).await?;
        match self.budget.try_acquire(source) {
            Ok(permit) => {
                self.lock().insert(conn.stable_id(), permit);
                Ok(conn)
            }
            Err(over) => {
                tracing::warn!(detail = %over, "connection refused: over budget");
                conn.close(iroh::endpoint::VarInt::from_u32(busy.0), busy.1);
                Err(AcceptFailure::OverBudget(over))
            }
        }
    }

    /// The unit [`ServingBudget::accept`] kept for `conn`: `None` for a connection it did
    /// not admit, which must not be served.
    pub fn take(&self, conn: &Connection) -> Option<BudgetPermit> {
        self.lock().remove(&conn.stable_id())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<usize, BudgetPermit>> {
        self.admitted.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> Source {
        Source::of_ip(s.parse().expect("ip"))
    }

    #[test]
    fn one_source_takes_only_its_share_and_gets_it_back() {
        let budget = Budget::new("test", 5, 2);
        let a = ip("192.0.2.1");
        let first = budget.try_acquire(a).expect("first");
        let _second = budget.try_acquire(a).expect("second");
        assert_eq!(
            budget.try_acquire(a).err(),
            Some(OverBudget::Source {
                what: "test",
                from: a,
                max: 2
            })
        );
        // Others still get in while `a` is at its share.
        let _b = budget.try_acquire(ip("192.0.2.2")).expect("another source");
        drop(first);
        assert_eq!(budget.in_use(a), (2, 1));
        budget
            .try_acquire(a)
            .expect("a unit given back is usable again");
    }

    #[test]
    fn the_total_bounds_all_sources_together() {
        let budget = Budget::new("test", 3, 2);
        let held: Vec<_> = (1..=3)
            .map(|i| {
                budget
                    .try_acquire(ip(&format!("192.0.2.{i}")))
                    .expect("under total")
            })
            .collect();
        assert!(matches!(
            budget.try_acquire(ip("192.0.2.9")),
            Err(OverBudget::Total { max: 3, .. })
        ));
        drop(held);
        assert_eq!(budget.in_use(ip("192.0.2.1")), (0, 0));
    }

    #[test]
    fn an_ipv6_host_counts_as_one_source_across_its_slash_64() {
        assert_eq!(ip("2001:db8:1:2::1"), ip("2001:db8:1:2:ffff::9"));
        assert_ne!(ip("2001:db8:1:2::1"), ip("2001:db8:1:3::1"));
        assert_eq!(ip("::ffff:192.0.2.7"), ip("192.0.2.7"));
        let budget = Budget::new("test", 10, 1);
        let _one = budget.try_acquire(ip("2001:db8::1")).expect("first");
        assert!(budget.try_acquire(ip("2001:db8::2")).is_err());
    }
}

/// Why [`accept_within`] gave up on an incoming connection.
#[derive(Debug, thiserror::Error)]
pub enum AcceptFailure {
    /// The budget had no unit left for the connection's source (or in total): refused
    /// before the handshake went on.
    #[error("refused: {0}")]
    OverBudget(OverBudget),
    /// The QUIC handshake failed, or did not complete within the timeout.
    #[error("the QUIC handshake failed or timed out: {0}")]
    Handshake(AcceptError),
}

impl From<AcceptFailure> for AcceptError {
    fn from(failure: AcceptFailure) -> Self {
        match failure {
            AcceptFailure::OverBudget(over) => AcceptError::from_err(over),
            AcceptFailure::Handshake(e) => e,
        }
    }
}

/// Completes an incoming QUIC handshake that an iroh router handed a protocol handler
/// (`ProtocolHandler::on_accepting`), holding a unit of `budget` for its source until it
/// completes, and giving up after `timeout`. Over budget it is refused at once: a flood of
/// handshakes from one host, on any ALPN that shares `budget`, costs only that host's share.
pub async fn accept_within(
    budget: &Budget,
    accepting: Accepting,
    timeout: std::time::Duration,
) -> Result<(Connection, Source), AcceptFailure> {
    let source = Source::of_addr(&accepting.remote_addr());
    let _permit = budget.try_acquire(source).map_err(|over| {
        tracing::warn!(detail = %over, "incoming connection refused: over budget");
        AcceptFailure::OverBudget(over)
    })?;
    match tokio::time::timeout(timeout, accepting).await {
        Ok(Ok(conn)) => Ok((conn, source)),
        Ok(Err(e)) => Err(AcceptFailure::Handshake(AcceptError::from_err(e))),
        Err(elapsed) => Err(AcceptFailure::Handshake(AcceptError::from_err(elapsed))),
    }
}
