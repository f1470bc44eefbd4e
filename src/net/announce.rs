//! Who listens at an address now: a node serves its current node id over TCP on its listen
//! port (the QUIC port number, TCP), so that peers and clients configured with a bare
//! `ip:port` can dial it. In a TD every boot is a new identity, so an address is the only
//! name of a node that outlives a restart.
//!
//! One line per connection, then the node closes it:
//! `tessera-node/1 <node id, 64 hex> <fresh|formed>\n`, where `formed` says the node holds
//! a group's log (a starting node stops waiting for the rest of its founders when one says
//! so, and joins).
//!
//! **Trust.** Nothing here is authenticated, by design: the host owns the network and can
//! answer with any id. The id is only a name to dial; a bond still needs the group key and
//! tickets bound to that key, and a client still checks the node's attestation. The worst
//! a lying answer does is make a node dial someone who cannot bond, or wait.
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use iroh::PublicKey;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};

/// The first word of an announcement line.
pub const ANNOUNCE_TAG: &str = "tessera-node/1";
/// Longest line read: the tag, 64 hex digits, a word and separators, with room to spare.
pub const ANNOUNCE_LINE_MAX: usize = 128;
/// Bound on answering one connection.
pub const ANNOUNCE_IO_TIMEOUT: Duration = Duration::from_secs(2);
/// Connections answered at once; more wait in the kernel's backlog.
pub const ANNOUNCE_CONNECTIONS_MAX: usize = 32;

/// What a node says about itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Announcement {
    /// The node's current iroh node id (new at every boot in a TD): the key to dial it by.
    pub id: PublicKey,
    /// The node holds a group's log.
    pub formed: bool,
}

impl Announcement {
    /// The announcement line, newline included.
    pub fn line(&self) -> String {
        let state = if self.formed { "formed" } else { "fresh" };
        format!(
            "{ANNOUNCE_TAG} {} {state}\n",
            hex::encode(self.id.as_bytes())
        )
    }

    /// Reads an announcement line.
    pub fn parse(line: &str) -> Result<Self, ResolveError> {
        let bad = |why: &str| ResolveError::Malformed(format!("{why}: {line:?}"));
        let mut words = line.trim_end_matches('\n').split(' ');
        if words.next() != Some(ANNOUNCE_TAG) {
            return Err(bad("not a tessera node announcement"));
        }
        let id = words.next().ok_or_else(|| bad("no node id"))?;
        if id.len() != 64 {
            return Err(bad("the node id is not 64 hex digits"));
        }
        let id: PublicKey = id.parse().map_err(|_| bad("the node id is not a key"))?;
        let formed = match words.next() {
            Some("formed") => true,
            Some("fresh") => false,
            _ => return Err(bad("expected `fresh` or `formed` after the id")),
        };
        if words.next().is_some() {
            return Err(bad("trailing words"));
        }
        Ok(Self { id, formed })
    }
}

/// Why an address did not say who listens there.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ResolveError {
    /// The TCP connection to the address failed (nothing listens there, say).
    #[error("cannot connect: {0}")]
    Connect(std::io::Error),
    /// No whole line arrived within the timeout given to [`resolve`].
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    /// Reading from the connection failed.
    #[error("read failed: {0}")]
    Read(std::io::Error),
    /// The peer sent more than [`ANNOUNCE_LINE_MAX`] bytes without a newline: not an
    /// announcement.
    #[error("more than {ANNOUNCE_LINE_MAX} bytes without a line end")]
    TooLong,
    /// The answer is not an announcement line (wrong tag, bad id, unknown state word,
    /// trailing words, no line end, not UTF-8); the text says which, with the line.
    #[error("malformed announcement ({0})")]
    Malformed(String),
}

/// Asks `addr` who listens there, under `timeout`.
pub async fn resolve(addr: SocketAddr, timeout: Duration) -> Result<Announcement, ResolveError> {
    tokio::time::timeout(timeout, async {
        let mut stream = TcpStream::connect(addr)
            .await
            .map_err(ResolveError::Connect)?;
        let mut buf = Vec::with_capacity(ANNOUNCE_LINE_MAX);
        let mut chunk = [0u8; ANNOUNCE_LINE_MAX];
        while !buf.contains(&b'\n') {
            let n = stream.read(&mut chunk).await.map_err(ResolveError::Read)?;
            if n == 0 {
                break;
            }
            buf.extend_from_slice(&chunk[..n]);
            if buf.len() > ANNOUNCE_LINE_MAX {
                return Err(ResolveError::TooLong);
            }
        }
        let end = buf.iter().position(|b| *b == b'\n').ok_or_else(|| {
            ResolveError::Malformed("no line end before the connection closed".into())
        })?;
        let line = std::str::from_utf8(&buf[..=end])
            .map_err(|_| ResolveError::Malformed("not UTF-8".into()))?;
        Announcement::parse(line)
    })
    .await
    .unwrap_or(Err(ResolveError::Timeout(timeout)))
}

/// Answers every connection on `listener` with `id` and the current `formed` flag, until
/// the listener fails. At most [`ANNOUNCE_CONNECTIONS_MAX`] are answered at once, each
/// under [`ANNOUNCE_IO_TIMEOUT`]; nothing a connection sends is read.
pub async fn serve(listener: TcpListener, id: PublicKey, formed: watch::Receiver<bool>) {
    let permits = Arc::new(Semaphore::new(ANNOUNCE_CONNECTIONS_MAX));
    loop {
        let Ok(permit) = permits.clone().acquire_owned().await else {
            return;
        };
        let (mut stream, _) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                tracing::warn!(error = %e, "announce listener failed; no longer answering");
                return;
            }
        };
        let line = Announcement {
            id,
            formed: *formed.borrow(),
        }
        .line();
        tokio::spawn(async move {
            let _ = tokio::time::timeout(ANNOUNCE_IO_TIMEOUT, async {
                stream.write_all(line.as_bytes()).await?;
                stream.shutdown().await
            })
            .await;
            drop(permit);
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(b: u8) -> PublicKey {
        iroh::SecretKey::from_bytes(&[b; 32]).public()
    }

    #[test]
    fn a_line_reads_back_and_bad_lines_are_refused_with_the_reason() {
        for formed in [false, true] {
            let a = Announcement { id: key(1), formed };
            assert_eq!(Announcement::parse(&a.line()).expect("parses"), a);
        }
        let id = hex::encode(key(1).as_bytes());
        for (line, why) in [
            ("HTTP/1.1 200 OK\n".to_string(), "not a tessera node"),
            (format!("{ANNOUNCE_TAG}\n"), "no node id"),
            (format!("{ANNOUNCE_TAG} abcd fresh\n"), "64 hex"),
            (
                format!("{ANNOUNCE_TAG} {} fresh\n", "zz".repeat(32)),
                "not a key",
            ),
            (
                format!("{ANNOUNCE_TAG} {id} maybe\n"),
                "`fresh` or `formed`",
            ),
            (format!("{ANNOUNCE_TAG} {id} fresh extra\n"), "trailing"),
        ] {
            match Announcement::parse(&line) {
                Err(ResolveError::Malformed(m)) => assert!(m.contains(why), "{line:?}: {m}"),
                other => panic!("{line:?} must be refused, got {other:?}"),
            }
        }
    }

    async fn listener() -> (TcpListener, SocketAddr) {
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = l.local_addr().expect("addr");
        (l, addr)
    }

    #[tokio::test]
    async fn a_served_announcement_resolves_and_follows_the_formed_flag() {
        let (l, addr) = listener().await;
        let (tx, rx) = watch::channel(false);
        let server = tokio::spawn(serve(l, key(7), rx));
        let first = resolve(addr, Duration::from_secs(5))
            .await
            .expect("resolves");
        assert_eq!(
            first,
            Announcement {
                id: key(7),
                formed: false
            }
        );
        tx.send_replace(true);
        let second = resolve(addr, Duration::from_secs(5))
            .await
            .expect("resolves");
        assert!(second.formed);
        server.abort();
    }

    /// A server the host runs to mislead: silence, an endless line, garbage. Each is an
    /// error, never a hang or an allocation beyond the line limit.
    #[tokio::test]
    async fn silence_endless_lines_and_garbage_are_errors() {
        let (silent, silent_addr) = listener().await;
        let _hold = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((s, _)) = silent.accept().await {
                held.push(s);
            }
        });
        assert!(matches!(
            resolve(silent_addr, Duration::from_millis(300)).await,
            Err(ResolveError::Timeout(_))
        ));
        for (bytes, want) in [
            (vec![b'a'; 4096], "TooLong"),
            (b"garbage\n".to_vec(), "Malformed"),
            (b"no line end".to_vec(), "Malformed"),
        ] {
            let (l, addr) = listener().await;
            let server = tokio::spawn(async move {
                if let Ok((mut s, _)) = l.accept().await {
                    let _ = s.write_all(&bytes).await;
                    let _ = s.shutdown().await;
                }
            });
            let got = resolve(addr, Duration::from_secs(5)).await;
            assert!(format!("{got:?}").contains(want), "{want}: {got:?}");
            server.abort();
        }
    }
}
