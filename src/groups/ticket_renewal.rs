//! Keeps this node's own tickets fresh: issued at start and again whenever half their
//! lifetime has passed, published on a watch channel that the bonds (and discovery) read.
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::tickets::{Clock, TdxTicketIssuer, Ticket, TicketError};

/// Issues this node's tickets now and again whenever half their lifetime has passed, so
/// that peers always hold an unexpired one. Stops when every receiver is gone.
pub fn keep_tickets_fresh(
    issuer: Arc<TdxTicketIssuer>,
    peer_key: [u8; 32],
    clock: Clock,
) -> Result<watch::Receiver<Vec<Ticket>>, TicketError> {
    let first = issuer.issue(peer_key, None, clock())?;
    let (tx, rx) = watch::channel(vec![first]);
    tokio::spawn(async move {
        loop {
            let (issued, expires) = {
                let current = tx.borrow();
                let expires = current.iter().map(|t| t.expires_at).min().unwrap_or(0);
                (clock(), expires)
            };
            let half = expires.saturating_sub(issued) / 2;
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(half.max(1))) => {}
                _ = tx.closed() => return,
            }
            let issuer = issuer.clone();
            let now = clock();
            match tokio::task::spawn_blocking(move || issuer.issue(peer_key, None, now)).await {
                Ok(Ok(ticket)) => {
                    if tx.send(vec![ticket]).is_err() {
                        return;
                    }
                }
                Ok(Err(e)) => tracing::error!(error = %e, "could not renew this node's ticket"),
                Err(e) => tracing::error!(error = %e, "ticket renewal task failed"),
            }
        }
    });
    Ok(rx)
}
