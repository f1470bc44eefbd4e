//! The bond handshake: the dialer's small proof of the group key first (read by the
//! gateway, which routes by the group id in it), the acceptor's proof, then tickets both
//! ways, validated against the key iroh authenticated, and a confirmation from each side.
use super::*;

/// Domain of the group-key proof's HMAC and of the TLS exporter label.
pub(super) const PROOF_DOMAIN: &[u8] = b"tessera/bond/v1";

#[derive(Serialize, Deserialize)]
enum Confirm {
    Accepted,
}

/// The first handshake frame: small, and all a peer without the group key gets to send.
#[derive(Serialize, Deserialize)]
struct ProofHello {
    group_id: [u8; 32],
    proof: [u8; 32],
    /// The sender's incarnation, `None` while it is fresh.
    incarnation: Option<Incarnation>,
}

/// The second handshake frame, sent and read only once the peer's proof verified.
#[derive(Serialize, Deserialize)]
struct TicketsHello {
    tickets: Vec<Ticket>,
}

/// How a bond's connection came about.
pub(super) enum Opening {
    /// We dialled: we open the stream and send our proof first.
    Dialled,
    /// The peer dialled; the gateway read its first frame to route it here.
    Accepted(Box<FirstFrame>),
}

/// The dialer's first frame, read by the gateway on the stream the dialer opened.
pub(crate) struct FirstFrame {
    send: SendStream,
    recv: RecvStream,
    hello: ProofHello,
}

impl FirstFrame {
    /// Accepts the stream a dialer opens and reads its small first frame, within
    /// [`FIRST_FRAME_TIMEOUT`]: all an unauthenticated peer gets to make us do.
    pub(crate) async fn read(conn: &Connection) -> Result<Self, (Refusal, String)> {
        let first = async {
            let (send, mut recv) = conn
                .accept_bi()
                .await
                .map_err(|e| (Refusal::Malformed, e.to_string()))?;
            let hello = read_proof(&mut recv).await?;
            Ok((send, recv, hello))
        };
        let (send, recv, hello) = within_first_frame_deadline(first).await?;
        Ok(Self { send, recv, hello })
    }

    /// The group the dialer wants to bond in.
    pub(crate) fn group_id(&self) -> GroupId {
        GroupId(self.hello.group_id)
    }
}

/// Runs `first` (the exchange of group-key proofs) within [`FIRST_FRAME_TIMEOUT`], on
/// either side: a silent peer holds a permit for seconds, not the whole handshake's bound.
async fn within_first_frame_deadline<T>(
    first: impl std::future::Future<Output = Result<T, (Refusal, String)>>,
) -> Result<T, (Refusal, String)> {
    tokio::time::timeout(FIRST_FRAME_TIMEOUT, first)
        .await
        .map_err(|_| {
            (
                Refusal::Timeout,
                format!("no group-key proof within {FIRST_FRAME_TIMEOUT:?}"),
            )
        })?
}

async fn read_proof(recv: &mut RecvStream) -> Result<ProofHello, (Refusal, String)> {
    read_message_limited(recv, "bond proof", PROOF_FRAME_BYTES_MAX)
        .await
        .map_err(|e| (Refusal::Malformed, e.to_string()))
}

impl Bonds {
    pub(super) fn proof(&self, conn: &Connection, dialer: bool) -> Result<[u8; 32], String> {
        let mut exporter = [0u8; 32];
        conn.export_keying_material(&mut exporter, PROOF_DOMAIN, &self.config.group_id.0)
            .map_err(|e| format!("no keying material on this connection: {e:?}"))?;
        let key = hmac::Key::new(hmac::HMAC_SHA256, self.config.group_key.as_bytes());
        let mut msg = Vec::with_capacity(PROOF_DOMAIN.len() + 32 + 8);
        msg.extend_from_slice(PROOF_DOMAIN);
        msg.extend_from_slice(&exporter);
        msg.extend_from_slice(if dialer { b"dialer" } else { b"acceptor" });
        let mut proof = [0u8; 32];
        proof.copy_from_slice(hmac::sign(&key, &msg).as_ref());
        Ok(proof)
    }

    /// This member's incarnation, as its worker last published it.
    pub(super) fn incarnation(&self) -> Option<Incarnation> {
        self.group_status.get().and_then(|s| s.borrow().incarnation)
    }

    /// Validates `tickets` of the connection's peer, off the executor.
    pub(super) async fn admit(
        &self,
        conn: &Connection,
        tickets: Vec<Ticket>,
    ) -> Result<u64, TicketError> {
        let admission = self.config.admission.clone();
        let ctx = PeerContext {
            peer_key: *conn.remote_id().as_bytes(),
            network_id: self.config.network_id.clone(),
            group_scope: None,
            now: (self.config.clock)(),
        };
        let verdicts = tokio::task::spawn_blocking(move || admission.admit(&tickets, &ctx))
            .await
            .map_err(|e| TicketError::Validator(format!("validation task failed: {e}")))??;
        Ok(verdicts.iter().map(|v| v.expires_at).min().unwrap_or(0))
    }

    pub(super) async fn handshake(
        &self,
        conn: &Connection,
        opening: Opening,
    ) -> Result<(SendStream, RecvStream, u64, watch::Receiver<Vec<Ticket>>), (Refusal, String)>
    {
        let malformed = |e: String| (Refusal::Malformed, e);
        let dialer = matches!(opening, Opening::Dialled);
        let ours = ProofHello {
            group_id: self.config.group_id.0,
            proof: self.proof(conn, dialer).map_err(malformed)?,
            incarnation: self.incarnation(),
        };
        let (mut send, mut recv, theirs) = match opening {
            // The dialer speaks first: the acceptor routes by the group id it names.
            Opening::Dialled => {
                let first = async {
                    let (mut send, mut recv) =
                        conn.open_bi().await.map_err(|e| malformed(e.to_string()))?;
                    write_message(&mut send, &ours)
                        .await
                        .map_err(|e| malformed(e.to_string()))?;
                    let theirs = read_proof(&mut recv).await?;
                    Ok::<_, (Refusal, String)>((send, recv, theirs))
                };
                // Due soon after the connection, as the acceptor's own first read is.
                within_first_frame_deadline(first).await?
            }
            Opening::Accepted(first) => {
                let FirstFrame {
                    mut send,
                    recv,
                    hello,
                } = *first;
                write_message(&mut send, &ours)
                    .await
                    .map_err(|e| malformed(e.to_string()))?;
                (send, recv, hello)
            }
        };
        if theirs.group_id != self.config.group_id.0 {
            return Err((
                Refusal::WrongGroup,
                "the peer derives another group id (key, consensus config, state machine or validators differ)".into(),
            ));
        }
        // Their proof was made with their role: the opposite of ours.
        let expected = self.proof(conn, !dialer).map_err(malformed)?;
        if !constant_time_eq(&expected, &theirs.proof) {
            return Err((
                Refusal::BadProof,
                "group key proof does not verify on this connection".into(),
            ));
        }
        // Both hold a log: it must descend from the same founding. (A fresh side joins
        // whichever group adds it; its incarnation is then that group's.)
        if let (Some(ours), Some(theirs)) = (self.incarnation(), theirs.incarnation) {
            if ours != theirs {
                return Err((
                    Refusal::OtherIncarnation,
                    format!(
                        "the peer's log descends from another founding of this group id \
                         (incarnation {theirs}, ours {ours}): a separately founded group"
                    ),
                ));
            }
        }
        // The tickets sent here are marked seen on this receiver: the writer sends every
        // later renewal, and none can slip between the hello and the writer starting.
        let mut tickets = self.config.tickets.clone();
        let ours = TicketsHello {
            tickets: tickets.borrow_and_update().clone(),
        };
        write_message(&mut send, &ours)
            .await
            .map_err(|e| malformed(e.to_string()))?;
        let theirs: TicketsHello =
            read_message_limited(&mut recv, "bond tickets", TICKETS_FRAME_BYTES_MAX)
                .await
                .map_err(|e| malformed(e.to_string()))?;
        if theirs.tickets.len() > TICKETS_PER_PEER_MAX {
            return Err(malformed(format!(
                "{} tickets presented, at most {TICKETS_PER_PEER_MAX} are read",
                theirs.tickets.len()
            )));
        }
        let expires_at = self
            .admit(conn, theirs.tickets)
            .await
            .map_err(|e| (Refusal::BadTicket, e.to_string()))?;
        // Both sides must accept before either counts the bond: a side that refuses closes
        // the connection instead of confirming.
        write_message(&mut send, &Confirm::Accepted)
            .await
            .map_err(|e| malformed(e.to_string()))?;
        match read_message::<_, Confirm>(&mut recv, "bond confirmation").await {
            Ok(Confirm::Accepted) => Ok((send, recv, expires_at, tickets)),
            Err(e) => Err((
                Refusal::RefusedByPeer,
                format!(
                    "the peer did not confirm the bond: {e} ({:?})",
                    conn.close_reason()
                ),
            )),
        }
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The streams of a bond whose handshake [`dial_raw`] completed.
#[cfg(any(test, feature = "test-util"))]
pub struct RawBond {
    /// The QUIC connection to the peer.
    pub connection: Connection,
    /// Our side of the bond's stream, positioned after the handshake.
    pub send: SendStream,
    /// The peer's side of the bond's stream, positioned after the handshake.
    pub recv: RecvStream,
}

/// For tests and tools: dials `peer` and runs the bond handshake exactly as a member does
/// (the same code, so the peer admits and counts the bond), then hands over the raw
/// streams instead of running the bond, so that the caller can speak — or break — the
/// protocol after the handshake. Needs what a member needs: the group key and a ticket
/// the peer accepts. Feature `test-util`.
#[cfg(any(test, feature = "test-util"))]
pub async fn dial_raw(
    endpoint: &Endpoint,
    config: BondConfig,
    peer: EndpointAddr,
) -> Result<RawBond, String> {
    let (bonds, _) = Bonds::unstarted(endpoint.id(), config, BTreeSet::new());
    let connection = tokio::time::timeout(DIAL_TIMEOUT, endpoint.connect(peer, ALPN_BOND))
        .await
        .map_err(|_| "dial timed out".to_string())?
        .map_err(|e| format!("dial failed: {e}"))?;
    let (send, recv, _, _) = tokio::time::timeout(
        HANDSHAKE_TIMEOUT,
        bonds.handshake(&connection, Opening::Dialled),
    )
    .await
    .map_err(|_| "handshake timed out".to_string())?
    .map_err(|(why, detail)| format!("{why:?}: {detail}"))?;
    Ok(RawBond {
        connection,
        send,
        recv,
    })
}
