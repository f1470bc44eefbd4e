//! Keeps this node's own tickets fresh: issued at start and again whenever half their
//! lifetime has passed, published on a watch channel that the bonds (and discovery) read.
//!
//! A gateway given an issuer ([`GroupsConfig::with_issuer`](super::GroupsConfig::with_issuer))
//! runs this itself, as a task it owns and stops at shutdown; [`keep_tickets_fresh`] is
//! the same loop for callers that manage their tickets' channel themselves.
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::tickets::{Clock, TdxTicketIssuer, Ticket, TicketError};

/// First wait before issuing again after a failure; doubled up to [`RETRY_MAX`].
const RETRY_FIRST: Duration = Duration::from_secs(1);
/// Longest wait between attempts after failures.
const RETRY_MAX: Duration = Duration::from_secs(60);

/// Issues this node's tickets now and again whenever half their lifetime has passed, so
/// that peers always hold an unexpired one. Stops when every receiver is gone. Fails only
/// if the first ticket cannot be issued. Must run inside a tokio runtime.
pub fn keep_tickets_fresh(
    issuer: Arc<TdxTicketIssuer>,
    peer_key: [u8; 32],
    clock: Clock,
) -> Result<watch::Receiver<Vec<Ticket>>, TicketError> {
    let first = issuer.issue(peer_key, None, clock())?;
    let (tx, rx) = watch::channel(vec![first]);
    tokio::spawn(renew(issuer, peer_key, clock, tx, std::future::pending()));
    Ok(rx)
}

/// The first ticket, issued now, and the loop that renews it; `None` as the first value
/// when issuing failed (logged; the loop retries with backoff).
pub(super) fn first_and_renewal(
    issuer: Arc<TdxTicketIssuer>,
    peer_key: [u8; 32],
    clock: Clock,
    stop: impl Future<Output = ()> + Send + 'static,
) -> (
    watch::Receiver<Vec<Ticket>>,
    impl Future<Output = ()> + Send + 'static,
) {
    let first = match issuer.issue(peer_key, None, clock()) {
        Ok(ticket) => vec![ticket],
        Err(e) => {
            tracing::error!(error = %e, "could not issue this node's first ticket; retrying");
            Vec::new()
        }
    };
    let (tx, rx) = watch::channel(first);
    (rx, renew(issuer, peer_key, clock, tx, stop))
}

/// Renews the tickets on `tx` at half their lifetime (or, while there are none, after a
/// growing delay) until `stop` completes or nobody listens.
async fn renew(
    issuer: Arc<TdxTicketIssuer>,
    peer_key: [u8; 32],
    clock: Clock,
    tx: watch::Sender<Vec<Ticket>>,
    stop: impl Future<Output = ()> + Send,
) {
    let mut stop = std::pin::pin!(stop);
    let mut retry = RETRY_FIRST;
    loop {
        let wait = {
            let current = tx.borrow();
            match current.iter().map(|t| t.expires_at).min() {
                Some(expires) => {
                    let half = expires.saturating_sub(clock()) / 2;
                    Duration::from_secs(half.max(1))
                }
                None => retry,
            }
        };
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = tx.closed() => return,
            _ = &mut stop => return,
        }
        let issuer = issuer.clone();
        let now = clock();
        match tokio::task::spawn_blocking(move || issuer.issue(peer_key, None, now)).await {
            Ok(Ok(ticket)) => {
                retry = RETRY_FIRST;
                if tx.send(vec![ticket]).is_err() {
                    return;
                }
            }
            Ok(Err(e)) => {
                retry = (retry * 2).min(RETRY_MAX);
                tracing::error!(error = %e, "could not renew this node's ticket")
            }
            Err(e) => tracing::error!(error = %e, "ticket renewal task failed"),
        }
    }
}
