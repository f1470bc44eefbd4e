//! The accept side of a group's bonds: what the gateway hands a connection whose first
//! frame named this group to, and how a refusal is counted and sent.
use super::*;

/// A group's side of the gateway's routing table: runs a bond whose first frame named
/// this group.
pub(crate) trait Acceptor: Send + Sync {
    fn accept(
        &self,
        conn: Connection,
        first: FirstFrame,
        permit: BudgetPermit,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>;
}

pub(super) struct RoutedBonds<C> {
    pub(super) bonds: Arc<Bonds>,
    pub(super) inbox: Inbox<C>,
}

impl<C: Send + 'static> Acceptor for RoutedBonds<C> {
    fn accept(
        &self,
        conn: Connection,
        first: FirstFrame,
        permit: BudgetPermit,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>> {
        let (bonds, inbox) = (self.bonds.clone(), self.inbox.clone());
        Box::pin(async move {
            let opening = Opening::Accepted(Box::new(first));
            let cancel = bonds.cancel.clone();
            // Tracked too: closing the bonds waits for the bonds peers dialled.
            let _tracked = bonds.tasks.token();
            cancel
                .run_until_cancelled(bonds.serve(conn, opening, inbox, Some(permit)))
                .await;
        })
    }
}

/// Logs a refusal, counts it in `stats` (before the peer can see the close) and closes
/// the connection with its reason code.
pub(crate) fn refuse_on(
    stats: &watch::Sender<BondStats>,
    conn: &Connection,
    why: Refusal,
    detail: &str,
) {
    tracing::warn!(peer = %conn.remote_id().fmt_short(), reason = ?why, detail, "bond refused");
    let record = RefusalRecord {
        peer: node_id_of(&conn.remote_id()),
        reason: why,
        detail: detail.to_string(),
    };
    stats.send_modify(|s| s.record(record));
    let reason = format!("{why:?}: {detail}");
    conn.close(
        VarInt::from_u32(why as u32),
        &reason.as_bytes()[..reason.len().min(512)],
    );
}
