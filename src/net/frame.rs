//! Length-prefixed, versioned frames: `u32 big-endian length ‖ version byte ‖ payload`.
//!
//! The length is checked against [`FRAME_BYTES_MAX`] before anything is allocated, so a
//! peer cannot make us reserve memory by announcing a huge frame; the version byte lets a
//! later protocol revision be refused cleanly instead of misparsed.
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Version byte of every frame.
pub const WIRE_VERSION: u8 = 2;
/// Largest frame (version byte + payload) accepted or sent.
pub const FRAME_BYTES_MAX: usize = 16 << 20;

/// Why a frame could not be read or written.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FrameError {
    /// A frame's length is 0 or over the limit: announced by the peer (on read, before
    /// anything was allocated for it), or that of our own message (on write).
    #[error("frame length {len} outside 1..={max}")]
    Length {
        /// The length in bytes, version byte included.
        len: usize,
        /// The limit in force: [`FRAME_BYTES_MAX`], or the smaller one the reader asked for.
        max: usize,
    },
    /// The peer speaks another wire version than [`WIRE_VERSION`].
    #[error("frame version {got} (this node speaks {WIRE_VERSION})")]
    Version {
        /// The version byte received.
        got: u8,
    },
    /// The stream ended before a whole frame arrived (also at a clean end between frames).
    #[error("stream ended")]
    Closed,
    /// Reading or writing the stream failed for another reason than its end.
    #[error("stream I/O: {0}")]
    Io(std::io::Error),
    /// The frame arrived whole but its payload is not a valid postcard encoding of the
    /// expected type.
    #[error("frame payload does not decode as {what}: {reason}")]
    Decode {
        /// The name the caller gave the expected message, for the error.
        what: &'static str,
        /// The decoder's message.
        reason: String,
    },
    /// The message could not be serialized with postcard.
    #[error("message does not encode: {0}")]
    Encode(String),
}

impl From<std::io::Error> for FrameError {
    fn from(e: std::io::Error) -> Self {
        if e.kind() == std::io::ErrorKind::UnexpectedEof {
            FrameError::Closed
        } else {
            FrameError::Io(e)
        }
    }
}

/// Writes one frame carrying `payload`.
pub async fn write_frame<W: AsyncWrite + Unpin>(
    out: &mut W,
    payload: &[u8],
) -> Result<(), FrameError> {
    let len = payload.len() + 1;
    if len > FRAME_BYTES_MAX {
        return Err(FrameError::Length {
            len,
            max: FRAME_BYTES_MAX,
        });
    }
    let mut buf = Vec::with_capacity(4 + len);
    buf.extend_from_slice(&(len as u32).to_be_bytes());
    buf.push(WIRE_VERSION);
    buf.extend_from_slice(payload);
    out.write_all(&buf).await?;
    Ok(())
}

/// Appends `message` as one frame to `buf` (to coalesce several frames into one write).
/// On error `buf` is left as it was.
pub fn encode_message<T: Serialize>(buf: &mut Vec<u8>, message: &T) -> Result<(), FrameError> {
    let payload = postcard::to_allocvec(message).map_err(|e| FrameError::Encode(e.to_string()))?;
    let len = payload.len() + 1;
    if len > FRAME_BYTES_MAX {
        return Err(FrameError::Length {
            len,
            max: FRAME_BYTES_MAX,
        });
    }
    buf.extend_from_slice(&(len as u32).to_be_bytes());
    buf.push(WIRE_VERSION);
    buf.extend_from_slice(&payload);
    Ok(())
}

/// Reads one frame and returns its payload.
pub async fn read_frame<R: AsyncRead + Unpin>(input: &mut R) -> Result<Vec<u8>, FrameError> {
    read_frame_limited(input, FRAME_BYTES_MAX).await
}

/// Reads one frame of at most `max` bytes (version byte included, capped at
/// [`FRAME_BYTES_MAX`]) and returns its payload; the length is checked before allocation.
pub async fn read_frame_limited<R: AsyncRead + Unpin>(
    input: &mut R,
    max: usize,
) -> Result<Vec<u8>, FrameError> {
    let max = max.min(FRAME_BYTES_MAX);
    let mut len = [0u8; 4];
    input.read_exact(&mut len).await?;
    let len = u32::from_be_bytes(len) as usize;
    if len == 0 || len > max {
        return Err(FrameError::Length { len, max });
    }
    let mut version = [0u8; 1];
    input.read_exact(&mut version).await?;
    if version[0] != WIRE_VERSION {
        return Err(FrameError::Version { got: version[0] });
    }
    let mut body = vec![0u8; len - 1];
    input.read_exact(&mut body).await?;
    Ok(body)
}

/// Writes `message` as one postcard frame.
pub async fn write_message<W: AsyncWrite + Unpin, T: Serialize>(
    out: &mut W,
    message: &T,
) -> Result<(), FrameError> {
    let bytes = postcard::to_allocvec(message).map_err(|e| FrameError::Encode(e.to_string()))?;
    write_frame(out, &bytes).await
}

/// Reads one postcard frame as a `T` (`what` names it in errors).
pub async fn read_message<R: AsyncRead + Unpin, T: DeserializeOwned>(
    input: &mut R,
    what: &'static str,
) -> Result<T, FrameError> {
    read_message_limited(input, what, FRAME_BYTES_MAX).await
}

/// [`read_message`] with a smaller frame limit `max` (see [`read_frame_limited`]).
pub async fn read_message_limited<R: AsyncRead + Unpin, T: DeserializeOwned>(
    input: &mut R,
    what: &'static str,
    max: usize,
) -> Result<T, FrameError> {
    let body = read_frame_limited(input, max).await?;
    postcard::from_bytes(&body).map_err(|e| FrameError::Decode {
        what,
        reason: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn block_on<F: std::future::Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime")
            .block_on(f)
    }

    #[test]
    fn a_message_round_trips() {
        block_on(async {
            let (mut a, mut b) = tokio::io::duplex(1024);
            write_message(&mut a, &("hello", 7u32))
                .await
                .expect("write");
            let got: (String, u32) = read_message(&mut b, "pair").await.expect("read");
            assert_eq!(got, ("hello".to_string(), 7));
        });
    }

    #[test]
    fn an_oversized_length_is_refused_before_allocation() {
        block_on(async {
            let mut input: &[u8] = &[0xff, 0xff, 0xff, 0xff, WIRE_VERSION];
            match read_frame(&mut input).await {
                Err(FrameError::Length { len, .. }) => assert_eq!(len, u32::MAX as usize),
                other => panic!("expected a length error, got {other:?}"),
            }
            let mut zero: &[u8] = &[0, 0, 0, 0];
            assert!(matches!(
                read_frame(&mut zero).await,
                Err(FrameError::Length { len: 0, .. })
            ));
        });
    }

    #[test]
    fn coalesced_frames_read_back_one_by_one() {
        block_on(async {
            let mut buf = Vec::new();
            encode_message(&mut buf, &1u32).expect("one");
            encode_message(&mut buf, &"two").expect("two");
            let mut input = &buf[..];
            assert_eq!(
                read_message::<_, u32>(&mut input, "u32")
                    .await
                    .expect("first"),
                1
            );
            assert_eq!(
                read_message::<_, String>(&mut input, "str")
                    .await
                    .expect("second"),
                "two"
            );
            assert!(matches!(
                read_frame(&mut input).await,
                Err(FrameError::Closed)
            ));
        });
    }

    #[test]
    fn a_frame_over_a_smaller_limit_is_refused_and_one_at_it_is_read() {
        block_on(async {
            let mut buf = Vec::new();
            write_frame(&mut buf, &[7u8; 9]).await.expect("write");
            let mut input = &buf[..];
            assert!(matches!(
                read_frame_limited(&mut input, 9).await,
                Err(FrameError::Length { len: 10, max: 9 })
            ));
            let mut input = &buf[..];
            assert_eq!(
                read_frame_limited(&mut input, 10).await.expect("read"),
                vec![7u8; 9]
            );
        });
    }

    #[test]
    fn another_version_is_refused() {
        block_on(async {
            let mut input: &[u8] = &[0, 0, 0, 2, 9, 1];
            assert!(matches!(
                read_frame(&mut input).await,
                Err(FrameError::Version { got: 9 })
            ));
        });
    }

    #[test]
    fn truncated_frames_and_garbage_payloads_are_errors() {
        block_on(async {
            let mut full = Vec::new();
            write_message(&mut full, &vec![1u64, 2, 3])
                .await
                .expect("write");
            for cut in 0..full.len() {
                let mut input = &full[..cut];
                assert!(read_frame(&mut input).await.is_err(), "cut at {cut}");
            }
            let mut garbage: &[u8] = &[0, 0, 0, 3, WIRE_VERSION, 0xff, 0xff];
            let r: Result<Vec<u64>, _> = read_message(&mut garbage, "list").await;
            assert!(matches!(r, Err(FrameError::Decode { what: "list", .. })));
        });
    }
}
