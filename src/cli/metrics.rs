//! Prometheus text metrics of a running node on `GET /metrics` (architecture.md §12): term, role,
//! commit and applied index, apply lag, bonds (live, established, closed, refused by
//! reason), the node's ticket expiry, its collateral (age, fetches) and client-protocol
//! counters.
//!
//! A deliberately tiny HTTP/1.1 responder: one request per connection, the request head
//! read under a timeout and a size limit, at most [`CONNECTIONS_MAX`] at once.
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tessera::client::role_name;
use tessera::client::{ClientService, MemberKind};
use tessera::collateral::CollateralStatus;
use tessera::storage::WriteTimes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};

/// Largest request head read.
const REQUEST_HEAD_BYTES_MAX: usize = 8 << 10;
/// Bound on reading the request and writing the answer.
const IO_TIMEOUT: Duration = Duration::from_secs(5);
/// Scrapes served at once; further connections are dropped.
const CONNECTIONS_MAX: usize = 16;

const ROLES: [&str; 5] = [
    "leader",
    "follower",
    "candidate",
    "pre-candidate",
    "starting",
];

/// Serves metrics on `listener` until the runtime stops.
pub async fn serve(
    listener: TcpListener,
    service: Arc<ClientService>,
    collateral: watch::Receiver<CollateralStatus>,
) {
    let permits = Arc::new(Semaphore::new(CONNECTIONS_MAX));
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                tracing::debug!(error = %e, "metrics accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            continue; // dropped: too many scrapes at once
        };
        let service = service.clone();
        let collateral = collateral.borrow().clone();
        tokio::spawn(async move {
            let answered = answer(stream, &service, &collateral);
            if let Err(e) = tokio::time::timeout(IO_TIMEOUT, answered).await {
                tracing::debug!(error = %e, "metrics request timed out");
            }
            drop(permit);
        });
    }
}

async fn answer(mut stream: TcpStream, service: &ClientService, collateral: &CollateralStatus) {
    let mut head = Vec::with_capacity(1024);
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
        if head.len() > REQUEST_HEAD_BYTES_MAX {
            let _ = respond(&mut stream, "431 Request Header Fields Too Large", "").await;
            return;
        }
    }
    let line = head.split(|b| *b == b'\r').next().unwrap_or_default();
    let line = String::from_utf8_lossy(line);
    let mut parts = line.split(' ');
    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let (status, body) = match (method, path) {
        ("GET", "/metrics") => ("200 OK", render(service, collateral)),
        ("GET", _) => ("404 Not Found", "not found; try /metrics\n".to_string()),
        _ => ("405 Method Not Allowed", "only GET\n".to_string()),
    };
    let _ = respond(&mut stream, status, &body).await;
}

async fn respond(stream: &mut TcpStream, status: &str, body: &str) -> std::io::Result<()> {
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body.as_bytes()).await?;
    stream.shutdown().await
}

fn escape_label(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// The metrics page.
pub fn render(service: &ClientService, collateral: &CollateralStatus) -> String {
    let status = service.group.status();
    let bonds = service.bonds.stats().borrow().clone();
    let mut out = String::new();
    let mut metric = |name: &str, kind: &str, help: &str, samples: &[(String, u64)]| {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} {kind}");
        for (labels, value) in samples {
            let _ = writeln!(out, "{name}{labels} {value}");
        }
    };
    let one = |v: u64| vec![(String::new(), v)];
    metric(
        "tessera_term",
        "gauge",
        "Current Raft term.",
        &one(status.term),
    );
    let role = role_name(status.role);
    let roles: Vec<(String, u64)> = ROLES
        .iter()
        .map(|r| (format!("{{role=\"{r}\"}}"), u64::from(*r == role)))
        .collect();
    metric(
        "tessera_role",
        "gauge",
        "1 for this node's current role.",
        &roles,
    );
    metric(
        "tessera_commit_index",
        "gauge",
        "Highest log index known committed.",
        &one(status.commit_index),
    );
    metric(
        "tessera_applied_index",
        "gauge",
        "Highest log index applied to the state machine.",
        &one(status.applied_index),
    );
    metric(
        "tessera_snapshot_index",
        "gauge",
        "Log index of the latest snapshot (the log before it is compacted).",
        &one(status.snapshot_index),
    );
    metric(
        "tessera_apply_lag",
        "gauge",
        "Committed entries not yet applied.",
        &one(status.commit_index.saturating_sub(status.applied_index)),
    );
    let members = service.status().members;
    let kinds: Vec<(String, u64)> = [
        ("voter", MemberKind::Voter),
        ("learner", MemberKind::Learner),
        ("observer", MemberKind::Observer),
    ]
    .iter()
    .map(|(label, kind)| {
        (
            format!("{{kind=\"{label}\"}}"),
            members.iter().filter(|m| m.kind == *kind).count() as u64,
        )
    })
    .collect();
    metric(
        "tessera_members",
        "gauge",
        "Members of the latest configuration.",
        &kinds,
    );
    metric(
        "tessera_stopped",
        "gauge",
        "1 if the node stopped participating (e.g. a storage error).",
        &one(u64::from(status.stopped.is_some())),
    );
    metric(
        "tessera_bonds_live",
        "gauge",
        "Bonds open now.",
        &one(bonds.live),
    );
    metric(
        "tessera_bonds_established_total",
        "counter",
        "Bond handshakes that succeeded.",
        &one(bonds.bonded),
    );
    metric(
        "tessera_bonds_closed_total",
        "counter",
        "Bonds that ended.",
        &one(bonds.closed),
    );
    // The group's refusals and its gateway's (connections that never reached the group:
    // over budget, another group id, a bad first frame).
    // Keyed by label, so the lines come in the order of their labels.
    let mut refused_by_reason: BTreeMap<&'static str, u64> = BTreeMap::new();
    let gateway = service.gateway.as_ref().map(|g| g.borrow().refused.clone());
    for (reason, n) in bonds.refused.iter().chain(gateway.iter().flatten()) {
        *refused_by_reason.entry(reason.label()).or_default() += n;
    }
    let refused: Vec<(String, u64)> = refused_by_reason
        .iter()
        .map(|(reason, n)| (format!("{{reason=\"{}\"}}", escape_label(reason)), *n))
        .collect();
    metric(
        "tessera_bonds_refused_total",
        "counter",
        "Handshakes refused or bonds closed by this node (and its gateway), by reason.",
        &refused,
    );
    metric(
        "tessera_bond_frames_received_total",
        "counter",
        "Consensus frames received from bonded peers.",
        &one(bonds.frames_in),
    );
    if let Some(expires) = service.ticket_expires_at() {
        metric(
            "tessera_ticket_expires_in_seconds",
            "gauge",
            "Seconds until this node's own ticket expires (renewed at half its lifetime).",
            &one(expires.saturating_sub((service.clock)())),
        );
    }
    render_collateral(&mut metric, collateral, (service.clock)());
    let writes = service.group.storage_writes();
    metric(
        "tessera_storage_entries_written_total",
        "counter",
        "Log entries made durable.",
        &one(writes.entries),
    );
    let stats = &service.stats;
    metric(
        "tessera_client_requests_total",
        "counter",
        "Client requests answered.",
        &one(stats.requests.load(Ordering::Relaxed)),
    );
    metric(
        "tessera_client_request_errors_total",
        "counter",
        "Client requests answered with an error.",
        &one(stats.request_errors.load(Ordering::Relaxed)),
    );
    metric(
        "tessera_client_unauthorized_total",
        "counter",
        "Client connections refused: key not allowed.",
        &one(stats.unauthorized.load(Ordering::Relaxed)),
    );
    metric(
        "tessera_client_busy_total",
        "counter",
        "Client connections or requests refused at a limit.",
        &one(stats.busy.load(Ordering::Relaxed)),
    );
    if let Some(discovery) = &service.discovery {
        let d = discovery.borrow().clone();
        let by =
            |label: &str, counts: &std::collections::BTreeMap<String, u64>| -> Vec<(String, u64)> {
                counts
                    .iter()
                    .map(|(k, n)| (format!("{{{label}=\"{}\"}}", escape_label(k)), *n))
                    .collect()
            };
        metric(
            "tessera_discovery_exchanges_total",
            "counter",
            "Catalog exchanges completed.",
            &one(d.exchanges),
        );
        metric(
            "tessera_discovery_exchanges_failed_total",
            "counter",
            "Catalog exchanges that failed, by kind.",
            &by("kind", &d.failed),
        );
        metric(
            "tessera_discovery_entries_learned_total",
            "counter",
            "Peer entries taken into the catalog.",
            &one(d.learned),
        );
        metric(
            "tessera_discovery_entries_refused_total",
            "counter",
            "Peer entries dropped, by reason.",
            &by("reason", &d.refused),
        );
        metric(
            "tessera_discovery_catalog_entries",
            "gauge",
            "Peer entries held now.",
            &one(d.catalog_entries),
        );
    }
    write_histogram(
        &mut out,
        "tessera_storage_write_seconds",
        "Durable writes, one synced batch each: the fsync latency.",
        &writes,
    );
    out
}

/// This node's collateral: how old the current bundle is, how long it still verifies, and
/// the fetches from `pccs_url`.
fn render_collateral(
    metric: &mut impl FnMut(&str, &str, &str, &[(String, u64)]),
    status: &CollateralStatus,
    now: u64,
) {
    let source = format!("{{source=\"{}\"}}", status.source.name());
    if let Some(issued_at) = status.issued_at {
        metric(
            "tessera_collateral_age_seconds",
            "gauge",
            "Age of the oldest item (TCB Info, QE Identity, PCK CRL) of the collateral this node presents.",
            &[(source.clone(), now.saturating_sub(issued_at))],
        );
    }
    if let Some(valid_until) = status.valid_until {
        metric(
            "tessera_collateral_valid_for_seconds",
            "gauge",
            "Seconds until this node's collateral expires or exceeds its policy's age limit.",
            &[(source, valid_until.saturating_sub(now))],
        );
    }
    metric(
        "tessera_collateral_fetches_total",
        "counter",
        "Collateral fetches from pccs_url that brought a verified bundle (new or unchanged).",
        &[(String::new(), status.fetches_ok)],
    );
    let failures: Vec<(String, u64)> = status
        .fetch_failures
        .iter()
        .map(|(reason, n)| (format!("{{reason=\"{}\"}}", escape_label(reason)), *n))
        .collect();
    metric(
        "tessera_collateral_fetch_failures_total",
        "counter",
        "Collateral fetches that failed or whose bundle was refused (the last good one stays), by reason.",
        &failures,
    );
}

/// A Prometheus histogram of durable-write latency.
fn write_histogram(out: &mut String, name: &str, help: &str, writes: &WriteTimes) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} histogram");
    for (bound, n) in &writes.buckets {
        let _ = writeln!(out, "{name}_bucket{{le=\"{bound}\"}} {n}");
    }
    let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {}", writes.writes);
    let _ = writeln!(out, "{name}_sum {}", writes.seconds_total);
    let _ = writeln!(out, "{name}_count {}", writes.writes);
}

#[cfg(test)]
mod tests {
    use super::escape_label;

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape_label("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}
