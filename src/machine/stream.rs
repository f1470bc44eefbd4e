//! The pieces of snapshot encoding shared by the machines of this module, for writing and
//! reading a snapshot as a stream.
//!
//! Every snapshot starts with the postcard encoding of [`SnapshotHeader`]: the format
//! version as a varint, then the 32 signature bytes. Machines write the rest of their state
//! with the same primitives postcard uses (LEB128 varints, byte strings as varint length
//! then bytes), so that a state of any size is written piece by piece and read back while
//! it is decoded, without the whole snapshot in one buffer.
//!
//! Reading is strict where postcard is lenient: a varint must be in its shortest form
//! (postcard accepts overlong ones), so that a snapshot that restores is byte-for-byte what
//! the machine writes, without re-encoding the restored state to compare.
//!
//! The readers take a [`BufRead`]: varints are read a byte at a time, which must not be a
//! system call each. The errors they return follow [`SnapshotError`]: input that ends
//! early or is not an encoding at all is [`Decode`](SnapshotError::Decode), a
//! non-canonical encoding of a valid value is [`Invalid`](SnapshotError::Invalid), and a
//! failing reader or writer is [`Io`](SnapshotError::Io).

use std::io::{BufRead, ErrorKind, Read, Write};

use serde::{Deserialize, Serialize};

use super::SnapshotError;

/// The prefix of every snapshot this module writes: which format, and which machine (by
/// signature, so a snapshot taken with other limits or of another type is refused before
/// its body is read).
#[derive(Serialize, Deserialize)]
struct SnapshotHeader {
    format_version: u16,
    signature: [u8; 32],
}

/// Lower-case hex of a signature, for error messages.
fn hex32(bytes: &[u8; 32]) -> String {
    use std::fmt::Write as _;
    bytes.iter().fold(String::with_capacity(64), |mut out, b| {
        // Writing to a String cannot fail.
        let _ = write!(out, "{b:02x}");
        out
    })
}

/// Most bytes of a LEB128 varint for a `u64`: 9 × 7 bits, then 1.
const VARINT_BYTES_MAX: usize = 10;

/// Most bytes a byte string's buffer is given before its bytes arrive: the rest grows as
/// they are read, so a forged length costs no more memory than the input really holds.
const PREALLOCATE_BYTES_MAX: u64 = 64 * 1024;

/// What reading reports when a reader fails.
const READING: &str = "reading the snapshot";
/// What writing reports when a writer fails.
const WRITING: &str = "writing the snapshot";

/// Writes the header of a snapshot: the postcard encoding of [`SnapshotHeader`].
pub(super) fn write_header<W: Write + ?Sized>(
    out: &mut W,
    format_version: u16,
    signature: &[u8; 32],
) -> Result<(), SnapshotError> {
    let header = postcard::to_stdvec(&SnapshotHeader {
        format_version,
        signature: *signature,
    })
    .map_err(|e| SnapshotError::Encode {
        reason: e.to_string(),
    })?;
    out.write_all(&header).map_err(SnapshotError::io(WRITING))
}

/// Writes `value` as postcard writes an integer or a length: LEB128, shortest form.
pub(super) fn write_varint<W: Write + ?Sized>(
    out: &mut W,
    value: u64,
) -> Result<(), SnapshotError> {
    let mut buf = [0u8; VARINT_BYTES_MAX];
    let mut rest = value;
    let mut len = 0;
    for slot in &mut buf {
        // The low 7 bits; the cast keeps exactly them.
        *slot = (rest & 0x7f) as u8;
        rest >>= 7;
        len += 1;
        if rest == 0 {
            break;
        }
        *slot |= 0x80;
    }
    out.write_all(&buf[..len])
        .map_err(SnapshotError::io(WRITING))
}

/// Writes `bytes` as postcard writes a byte string: varint length, then the bytes.
pub(super) fn write_bytes<W: Write + ?Sized>(
    out: &mut W,
    bytes: &[u8],
) -> Result<(), SnapshotError> {
    // usize → u64 is lossless on every target Rust supports.
    write_varint(out, bytes.len() as u64)?;
    out.write_all(bytes).map_err(SnapshotError::io(WRITING))
}

/// The error for input that ends inside `what`.
fn truncated(what: &str) -> SnapshotError {
    SnapshotError::Decode {
        reason: format!("the snapshot ends inside {what}"),
    }
}

/// Reads one byte; the end of input is an error, since every caller needs more.
fn read_byte<R: BufRead + ?Sized>(input: &mut R, what: &str) -> Result<u8, SnapshotError> {
    loop {
        let byte = match input.fill_buf() {
            Ok(buf) => buf.first().copied(),
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => return Err(SnapshotError::io(READING)(e)),
        };
        let byte = byte.ok_or_else(|| truncated(what))?;
        input.consume(1);
        return Ok(byte);
    }
}

/// Reads a LEB128 varint of at most 64 bits, refusing every form [`write_varint`] would
/// not write.
///
/// # Errors
///
/// [`SnapshotError::Decode`] if the input ends inside it or it does not fit in 64 bits;
/// [`SnapshotError::Invalid`] if it is overlong (a value written with more bytes than it
/// needs, which postcard would accept as the same value); [`SnapshotError::Io`] if the
/// reader fails.
pub(super) fn read_varint<R: BufRead + ?Sized>(
    input: &mut R,
    what: &str,
) -> Result<u64, SnapshotError> {
    let mut value: u64 = 0;
    for i in 0..VARINT_BYTES_MAX {
        let byte = read_byte(input, what)?;
        let payload = u64::from(byte & 0x7f);
        // The tenth byte holds bit 63 only.
        if i == VARINT_BYTES_MAX - 1 && payload > 1 {
            return Err(SnapshotError::Decode {
                reason: format!("{what} does not fit in 64 bits"),
            });
        }
        value |= payload << (7 * i);
        if byte & 0x80 == 0 {
            // A last byte of zero after the first adds nothing: the same value has a
            // shorter encoding.
            if i > 0 && byte == 0 {
                return Err(SnapshotError::Invalid {
                    reason: format!("non-canonical encoding: overlong varint in {what}"),
                });
            }
            return Ok(value);
        }
    }
    Err(SnapshotError::Decode {
        reason: format!("{what} does not fit in 64 bits"),
    })
}

/// Reads exactly `len` bytes. The caller has already checked `len` against its limits;
/// memory still grows only as the bytes arrive, so a limit far above what the input holds
/// costs nothing.
///
/// # Errors
///
/// [`SnapshotError::Decode`] if the input ends first; [`SnapshotError::Io`] if the reader
/// fails.
pub(super) fn read_bytes<R: Read + ?Sized>(
    input: &mut R,
    len: u64,
    what: &str,
) -> Result<Vec<u8>, SnapshotError> {
    // At most PREALLOCATE_BYTES_MAX, so it fits in a usize.
    let capacity = usize::try_from(len.min(PREALLOCATE_BYTES_MAX)).unwrap_or(0);
    let mut bytes = Vec::with_capacity(capacity);
    // `take` stops at `len`: nothing past the byte string is consumed.
    input
        .take(len)
        .read_to_end(&mut bytes)
        .map_err(SnapshotError::io(READING))?;
    // usize → u64 is lossless on every target Rust supports.
    if bytes.len() as u64 != len {
        return Err(truncated(what));
    }
    Ok(bytes)
}

/// Reads the header and checks it before anything else is read: the format version, then
/// the signature.
///
/// # Errors
///
/// [`SnapshotError::UnsupportedVersion`] or [`SnapshotError::SignatureMismatch`] if the
/// snapshot is of another format or machine; otherwise as [`read_varint`].
pub(super) fn read_header<R: BufRead + ?Sized>(
    input: &mut R,
    format_version: u16,
    signature: &[u8; 32],
) -> Result<(), SnapshotError> {
    const WHAT: &str = "the snapshot header";
    let found = read_varint(input, "the snapshot format version")?;
    let found = u16::try_from(found).map_err(|_| SnapshotError::Decode {
        reason: format!("snapshot format version {found} does not fit in 16 bits"),
    })?;
    if found != format_version {
        return Err(SnapshotError::UnsupportedVersion {
            expected: format_version,
            found,
        });
    }
    let mut found = [0u8; 32];
    for byte in &mut found {
        *byte = read_byte(input, WHAT)?;
    }
    if found != *signature {
        return Err(SnapshotError::SignatureMismatch {
            expected: hex32(signature),
            found: hex32(&found),
        });
    }
    Ok(())
}

/// Checks that nothing follows the snapshot.
///
/// # Errors
///
/// [`SnapshotError::Decode`] if a byte follows; [`SnapshotError::Io`] if the reader fails.
pub(super) fn expect_end<R: BufRead + ?Sized>(input: &mut R) -> Result<(), SnapshotError> {
    loop {
        match input.fill_buf() {
            Ok([]) => return Ok(()),
            Ok(_) => {
                return Err(SnapshotError::Decode {
                    reason: "trailing bytes after the snapshot".into(),
                })
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => return Err(SnapshotError::io(READING)(e)),
        }
    }
}

/// Whether the postcard encoding of `value` is exactly `expected`: the canonical-encoding
/// check of a part that is decoded with postcard (which accepts some non-canonical forms),
/// compared while encoding so that no second copy is made.
pub(super) fn encodes_exactly<T: Serialize + ?Sized>(
    value: &T,
    expected: &[u8],
) -> Result<bool, SnapshotError> {
    let mut compare = CompareWriter {
        rest: expected,
        equal: true,
    };
    postcard::to_io(value, &mut compare).map_err(|e| SnapshotError::Encode {
        reason: e.to_string(),
    })?;
    Ok(compare.equal && compare.rest.is_empty())
}

/// A sink that checks what is written against the bytes expected, in order.
struct CompareWriter<'a> {
    rest: &'a [u8],
    equal: bool,
}

impl Write for CompareWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self.rest.strip_prefix(buf) {
            Some(rest) if self.equal => self.rest = rest,
            _ => self.equal = false,
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Encodes `header ‖ body` with postcard: how tests forge snapshots, independently of the
/// streaming writers.
#[cfg(test)]
pub(super) fn encode_snapshot<T: Serialize + ?Sized>(
    format_version: u16,
    signature: [u8; 32],
    body: &T,
) -> Vec<u8> {
    let header = postcard::to_stdvec(&SnapshotHeader {
        format_version,
        signature,
    })
    .expect("encode the header");
    postcard::to_extend(body, header).expect("encode the body")
}

/// Readers and writers for the streaming tests of every machine.
#[cfg(test)]
pub(super) mod testing {
    use std::io::{self, Read, Write};

    use crate::machine::{SnapshotError, StateMachine};

    /// Restores `machine` from `bytes` through a reader that fails after each possible
    /// number of good bytes (up to and including all of them: the check for the end of
    /// input reads too): every attempt must be an I/O error and leave the machine as it was.
    pub(crate) fn assert_failing_reader_changes_nothing<M>(machine: &mut M, bytes: &[u8])
    where
        M: StateMachine + Clone + PartialEq + std::fmt::Debug,
    {
        let before = machine.clone();
        for good in 0..=bytes.len() {
            let mut input = FailAfter {
                rest: bytes,
                good,
                reads: 0,
            };
            assert!(
                matches!(
                    machine.restore_from(&mut input),
                    Err(SnapshotError::Io { .. })
                ),
                "failing after {good} bytes"
            );
        }
        assert_eq!(*machine, before);
    }

    /// Yields its bytes 1 to 7 at a time, as a socket or a pipe may.
    pub(crate) struct Trickle<'a> {
        pub(crate) rest: &'a [u8],
        pub(crate) reads: usize,
    }

    impl<'a> Trickle<'a> {
        pub(crate) fn new(bytes: &'a [u8]) -> Self {
            Self {
                rest: bytes,
                reads: 0,
            }
        }
    }

    impl Read for Trickle<'_> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            self.reads += 1;
            let n = (self.reads % 7 + 1).min(buf.len()).min(self.rest.len());
            buf[..n].copy_from_slice(&self.rest[..n]);
            self.rest = &self.rest[n..];
            Ok(n)
        }
    }

    /// Yields its first `good` bytes (a few at a time, interrupted now and then), then fails.
    pub(crate) struct FailAfter<'a> {
        pub(crate) rest: &'a [u8],
        pub(crate) good: usize,
        pub(crate) reads: usize,
    }

    impl Read for FailAfter<'_> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            self.reads += 1;
            if self.reads % 3 == 0 {
                return Err(io::ErrorKind::Interrupted.into());
            }
            if self.good == 0 {
                return Err(io::Error::other("disk on fire"));
            }
            let n = 5.min(buf.len()).min(self.rest.len()).min(self.good);
            buf[..n].copy_from_slice(&self.rest[..n]);
            self.rest = &self.rest[n..];
            self.good -= n;
            Ok(n)
        }
    }

    /// Keeps what is written and records the largest single write; with `trickle`, takes
    /// only 1 to 7 bytes per call; with `fail_at`, takes that many bytes in all, then fails.
    #[derive(Default)]
    pub(crate) struct Sink {
        pub(crate) bytes: Vec<u8>,
        pub(crate) writes: usize,
        pub(crate) largest_write: usize,
        pub(crate) trickle: bool,
        pub(crate) fail_at: Option<usize>,
    }

    impl Write for Sink {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.writes += 1;
            if self.fail_at.is_some_and(|at| self.bytes.len() >= at) {
                return Err(io::Error::other("disk full"));
            }
            self.largest_write = self.largest_write.max(buf.len());
            let mut n = buf.len();
            if self.trickle {
                n = n.min(self.writes % 7 + 1);
            }
            if let Some(at) = self.fail_at {
                n = n.min(at - self.bytes.len());
            }
            self.bytes.extend_from_slice(&buf[..n]);
            Ok(n)
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn varint(bytes: &[u8]) -> Result<u64, SnapshotError> {
        let mut input = bytes;
        let value = read_varint(&mut input, "a test varint")?;
        assert!(input.is_empty(), "{} bytes left unread", input.len());
        Ok(value)
    }

    #[test]
    fn varints_round_trip_and_match_postcard() {
        for value in [
            0,
            1,
            127,
            128,
            300,
            16_383,
            16_384,
            u64::from(u32::MAX),
            u64::MAX >> 1,
            u64::MAX,
        ] {
            let mut written = Vec::new();
            write_varint(&mut written, value).expect("write");
            assert_eq!(written, postcard::to_stdvec(&value).expect("postcard"));
            assert_eq!(varint(&written), Ok(value));
        }
    }

    #[test]
    fn overlong_varints_are_invalid() {
        for bytes in [&[0x80, 0x00][..], &[0x81, 0x00], &[0xff, 0x80, 0x00]] {
            assert!(
                matches!(varint(bytes), Err(SnapshotError::Invalid { .. })),
                "{bytes:x?}"
            );
        }
    }

    #[test]
    fn varints_past_64_bits_or_cut_short_do_not_decode() {
        let mut eleven = vec![0xff; 10];
        eleven.push(0x01);
        let mut bit_64 = vec![0xff; 9];
        bit_64.push(0x02);
        for bytes in [&eleven[..], &bit_64, &[0x80], &[]] {
            assert!(
                matches!(varint(bytes), Err(SnapshotError::Decode { .. })),
                "{bytes:x?}"
            );
        }
    }

    #[test]
    fn the_header_is_the_postcard_encoding_and_is_checked_in_order() {
        let signature = [7u8; 32];
        let mut written = Vec::new();
        write_header(&mut written, 300, &signature).expect("write");
        assert_eq!(written, encode_snapshot(300, signature, &()));
        assert_eq!(read_header(&mut &written[..], 300, &signature), Ok(()));
        assert_eq!(
            read_header(&mut &written[..], 2, &signature),
            Err(SnapshotError::UnsupportedVersion {
                expected: 2,
                found: 300
            })
        );
        assert!(matches!(
            read_header(&mut &written[..], 300, &[8u8; 32]),
            Err(SnapshotError::SignatureMismatch { .. })
        ));
        // 300 is 0xac 0x02; the same value in three bytes is refused.
        let mut overlong = written.clone();
        overlong[1] |= 0x80;
        overlong.insert(2, 0x00);
        assert!(matches!(
            read_header(&mut &overlong[..], 300, &signature),
            Err(SnapshotError::Invalid { .. })
        ));
        // A version that does not fit the u16 of the header.
        let mut too_large = Vec::new();
        write_varint(&mut too_large, 1 << 16).expect("write");
        too_large.extend_from_slice(&signature);
        assert!(matches!(
            read_header(&mut &too_large[..], 300, &signature),
            Err(SnapshotError::Decode { .. })
        ));
        for len in 0..written.len() {
            assert!(matches!(
                read_header(&mut &written[..len], 300, &signature),
                Err(SnapshotError::Decode { .. })
            ));
        }
    }

    #[test]
    fn read_bytes_takes_exactly_the_length_and_refuses_less() {
        let mut input = &b"abcdef"[..];
        assert_eq!(read_bytes(&mut input, 4, "x"), Ok(b"abcd".to_vec()));
        assert_eq!(input, b"ef");
        // A length far beyond the input is read as far as the input goes, then refused.
        assert!(matches!(
            read_bytes(&mut input, 1 << 60, "x"),
            Err(SnapshotError::Decode { .. })
        ));
    }

    #[test]
    fn expect_end_refuses_a_trailing_byte() {
        assert_eq!(expect_end(&mut &b""[..]), Ok(()));
        assert!(matches!(
            expect_end(&mut &b"x"[..]),
            Err(SnapshotError::Decode { .. })
        ));
    }
}
