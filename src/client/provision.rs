//! Provisioning the group key to a node that starts without it (`[provision]` in
//! `node.toml`; in a TD the only way, architecture.md §12): the node binds its endpoint, serves the
//! client protocol to the keys allowed to provision it, and waits.
//!
//! The sender (`tessera provision`, or any [`crate::client::Client`] with
//! [`crate::client::NodeTrust::Verify`]) first asks for the node's tickets and checks them
//! against its policy for the key the connection authenticated, then sends
//! [`ClientRequest::ProvisionGroupKey`]. So the key only ever crosses a connection whose
//! far end holds the private key an approved image's quote is bound to: a key generated
//! inside the TD that never leaves it. The node keeps the key in memory.
//!
//! While it waits the node answers only [`ClientRequest::Attestation`] and the key itself;
//! keys outside the allow list are hung up on after the handshake. The first key received
//! wins: the same key sent again is acknowledged, another one refused.
//!
//! This module owns the waiting node's side only; it makes no decision about the group,
//! which the node starts with the key once it has one.
use std::sync::Arc;
use std::time::Duration;

use iroh::endpoint::{Connection, Incoming, VarInt};
use iroh::{Endpoint, PublicKey};
use serde::{Deserialize, Serialize};
use tokio::sync::{watch, Semaphore};

use super::server::{receive_request, send_response};
use super::{ClientRequest, ClientResponse, CLOSE_UNAUTHORIZED, CONNECTION_IDLE_TIMEOUT};
use crate::groups::GroupKey;
use crate::net::ALPN_CLIENT;
use crate::tickets::{Clock, Ticket};

/// Connections a waiting node serves at once (handshakes included).
pub(crate) const PROVISION_CONNECTIONS_MAX: usize = 16;
/// Bound on one QUIC handshake while waiting.
pub(crate) const PROVISION_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

/// A group key on the wire. Its `Debug` output never shows the bytes, so a request can be
/// logged.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupKeyBytes(pub [u8; 32]);

impl std::fmt::Debug for GroupKeyBytes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("GroupKeyBytes(..)")
    }
}

impl From<&GroupKey> for GroupKeyBytes {
    fn from(key: &GroupKey) -> Self {
        Self(*key.as_bytes())
    }
}

/// What a waiting node needs to answer.
#[derive(Clone)]
pub struct AwaitKey {
    /// Keys that may send the group key (`[provision] allow`).
    pub allow: Vec<PublicKey>,
    /// The network this node's tickets are issued for.
    pub network_id: String,
    /// This node's current tickets.
    pub tickets: watch::Receiver<Vec<Ticket>>,
    /// Unix seconds, stated in attestation answers.
    pub clock: Clock,
}

/// Why no key arrived.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProvisionError {
    /// The endpoint closed (the node is shutting down) before an allowed key sent one.
    #[error("the endpoint closed while waiting for the group key")]
    EndpointClosed,
}

/// Serves provisioning on `endpoint` until an allowed key sends the group key; returns it.
/// Connections still open afterwards are served until they go idle (a late sender gets its
/// acknowledgement); new ones are left to whoever accepts on the endpoint next.
pub async fn await_group_key(
    endpoint: &Endpoint,
    wait: AwaitKey,
) -> Result<GroupKey, ProvisionError> {
    let (key_tx, mut key_rx) = watch::channel(None::<GroupKey>);
    let key_tx = Arc::new(key_tx);
    let slots = Arc::new(Semaphore::new(PROVISION_CONNECTIONS_MAX));
    loop {
        tokio::select! {
            changed = key_rx.changed() => {
                if changed.is_ok() {
                    if let Some(key) = key_rx.borrow_and_update().clone() {
                        return Ok(key);
                    }
                }
            }
            incoming = endpoint.accept() => {
                let Some(incoming) = incoming else {
                    return Err(ProvisionError::EndpointClosed);
                };
                let Ok(slot) = slots.clone().try_acquire_owned() else {
                    incoming.refuse();
                    continue;
                };
                let (wait, key_tx) = (wait.clone(), key_tx.clone());
                tokio::spawn(async move {
                    if let Some(conn) = handshake(incoming).await {
                        serve(&conn, &wait, &key_tx).await;
                    }
                    drop(slot);
                });
            }
        }
    }
}

async fn handshake(incoming: Incoming) -> Option<Connection> {
    let accepting = incoming.accept().ok()?;
    match tokio::time::timeout(PROVISION_HANDSHAKE_TIMEOUT, accepting).await {
        Ok(Ok(conn)) => Some(conn),
        _ => None,
    }
}

async fn serve(conn: &Connection, wait: &AwaitKey, key_tx: &watch::Sender<Option<GroupKey>>) {
    if conn.alpn() != ALPN_CLIENT {
        conn.close(
            VarInt::from_u32(0),
            b"waiting for the group key: only the client protocol is served",
        );
        return;
    }
    let sender = conn.remote_id();
    if !wait.allow.contains(&sender) {
        tracing::warn!(key = %sender, "provisioning refused: key not in [provision] allow");
        conn.close(
            VarInt::from_u32(CLOSE_UNAUTHORIZED),
            b"this node is waiting for its group key and serves only the keys in its [provision] allow",
        );
        return;
    }
    loop {
        let (mut send, mut recv) =
            match tokio::time::timeout(CONNECTION_IDLE_TIMEOUT, conn.accept_bi()).await {
                Ok(Ok(streams)) => streams,
                Err(_) => {
                    conn.close(VarInt::from_u32(0), b"idle");
                    return;
                }
                Ok(Err(_)) => return,
            };
        let response = match receive_request(&mut recv).await {
            Ok(Ok(request)) => answer(&sender, request, wait, key_tx),
            Ok(Err(bad)) => bad,
            // A stream that broke or stalled: nothing to answer.
            Err(_) => continue,
        };
        let _ = send_response(&mut send, &response).await;
    }
}

fn answer(
    sender: &PublicKey,
    request: ClientRequest,
    wait: &AwaitKey,
    key_tx: &watch::Sender<Option<GroupKey>>,
) -> ClientResponse {
    match request {
        ClientRequest::Attestation => ClientResponse::Attestation {
            network_id: wait.network_id.clone(),
            tickets: wait.tickets.borrow().clone(),
            now: (wait.clock)(),
        },
        ClientRequest::ProvisionGroupKey { key } => {
            let key = GroupKey::from_bytes(key.0);
            let mut outcome = Ok(());
            key_tx.send_if_modified(|held| match held {
                None => {
                    *held = Some(key.clone());
                    true
                }
                // By public id (an HMAC): timing says nothing about the held key's bytes.
                Some(had) if had.public_id() == key.public_id() => false,
                Some(_) => {
                    outcome = Err(());
                    false
                }
            });
            match outcome {
                Ok(()) => {
                    tracing::info!(from = %sender, key_id = %hex::encode(&key.public_id()[..8]), "group key provisioned");
                    ClientResponse::Provisioned {
                        key_id: key.public_id(),
                    }
                }
                Err(()) => ClientResponse::Error(
                    "this node was already provisioned with another group key".into(),
                ),
            }
        }
        _ => ClientResponse::Error(
            "this node is waiting for its group key ([provision] in its node.toml): it \
             serves nothing else until an allowed key sends it with `tessera provision`"
                .into(),
        ),
    }
}

/// How a running node answers [`ClientRequest::ProvisionGroupKey`]: it already holds the
/// key whose public id is `own_key_id`, so the same key is acknowledged (a sender retrying
/// after a lost answer) and any other refused. Keys are compared by their public ids (an
/// HMAC), so the comparison's timing says nothing about the key's bytes.
pub(crate) fn answer_when_running(own_key_id: &[u8; 32], sent: &GroupKeyBytes) -> ClientResponse {
    if &GroupKey::from_bytes(sent.0).public_id() == own_key_id {
        ClientResponse::Provisioned {
            key_id: *own_key_id,
        }
    } else {
        ClientResponse::Error("this node already runs with another group key".into())
    }
}
