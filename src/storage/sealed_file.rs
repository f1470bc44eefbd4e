//! Sealed snapshot files: a snapshot's bytes on the host's disk, encrypted and authenticated
//! in chunks so that a snapshot of any size streams through in bounded memory.
//!
//! **What it owns.** The file format and its streaming writer and reader. It knows nothing
//! about which snapshot a file holds (the snapshot store names files; the log store's sealed
//! record holds the snapshot's SHA-256, which the store checks over the whole).
//!
//! **Format.** `[magic 8][epoch 16]` then chunks, each `[last u8][ciphertext][tag 16]`, of
//! [`CHUNK_BYTES`] plaintext bytes except the last (which may be shorter; empty only
//! for an empty snapshot). Every
//! file has a random epoch and its own key derived from the storage key and the epoch; chunk
//! `i` is sealed with nonce `i` and associated data binding the epoch, `i` and the last-chunk
//! flag, so chunks cannot be reordered, dropped, moved between files, or the file cut short
//! at a chunk boundary without the read failing. Because every chunk but the last has the
//! same size, a read can start at any plaintext offset (a transfer resumed part way).
use std::io::{Read, Seek, SeekFrom, Write};

use ring::aead::{self, Aad, LessSafeKey, Nonce};
use ring::rand::SecureRandom;

use super::seal::{StorageKey, TAG_BYTES};

/// Plaintext bytes per chunk.
pub(crate) const CHUNK_BYTES: usize = 64 << 10;
const MAGIC: &[u8; 8] = b"tsnapf\x00\x01";
const EPOCH_BYTES: usize = 16;
/// Bytes before the first chunk.
pub(crate) const HEADER_BYTES: u64 = (MAGIC.len() + EPOCH_BYTES) as u64;
/// Bytes of a full chunk on disk: flag, ciphertext, tag.
const SEALED_CHUNK_BYTES: usize = 1 + CHUNK_BYTES + TAG_BYTES;
const AAD_DOMAIN: &[u8] = b"tessera/snapshot-file/v1";

/// The size on disk of a sealed file holding `plain` bytes.
pub(crate) fn sealed_len(plain: u64) -> u64 {
    // At least one chunk (the last), which may be full or, for an empty snapshot, empty.
    let chunks = plain.div_ceil(CHUNK_BYTES as u64).max(1);
    HEADER_BYTES + plain + chunks * (1 + TAG_BYTES as u64)
}

fn aad(epoch: &[u8; EPOCH_BYTES], chunk: u64, last: bool) -> Aad<Vec<u8>> {
    let mut out = Vec::with_capacity(AAD_DOMAIN.len() + EPOCH_BYTES + 9);
    out.extend_from_slice(AAD_DOMAIN);
    out.extend_from_slice(epoch);
    out.extend_from_slice(&chunk.to_be_bytes());
    out.push(u8::from(last));
    Aad::from(out)
}

fn nonce(chunk: u64) -> Nonce {
    let mut bytes = [0u8; aead::NONCE_LEN];
    bytes[aead::NONCE_LEN - 8..].copy_from_slice(&chunk.to_be_bytes());
    Nonce::assume_unique_for_key(bytes)
}

fn invalid(what: String) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, what)
}

/// Writes a sealed file into `inner`. [`finish`](Self::finish) writes the last chunk: a
/// writer dropped unfinished leaves a file every read refuses.
pub(crate) struct SealedWriter<W: Write> {
    inner: W,
    key: LessSafeKey,
    epoch: [u8; EPOCH_BYTES],
    chunk: u64,
    buf: Vec<u8>,
}

impl<W: Write> SealedWriter<W> {
    /// Starts a sealed file in `inner` (writes its header).
    pub(crate) fn new(mut inner: W, key: &StorageKey) -> std::io::Result<Self> {
        let mut epoch = [0u8; EPOCH_BYTES];
        ring::rand::SystemRandom::new()
            .fill(&mut epoch)
            .map_err(|_| std::io::Error::other("no system randomness for a snapshot file"))?;
        inner.write_all(MAGIC)?;
        inner.write_all(&epoch)?;
        Ok(SealedWriter {
            inner,
            key: key.file_key(&epoch),
            epoch,
            chunk: 0,
            buf: Vec::with_capacity(CHUNK_BYTES),
        })
    }

    fn seal_chunk(&mut self, last: bool) -> std::io::Result<()> {
        let tag = self
            .key
            .seal_in_place_separate_tag(
                nonce(self.chunk),
                aad(&self.epoch, self.chunk, last),
                &mut self.buf,
            )
            .map_err(|_| std::io::Error::other("sealing a snapshot chunk failed"))?;
        self.inner.write_all(&[u8::from(last)])?;
        self.inner.write_all(&self.buf)?;
        self.inner.write_all(tag.as_ref())?;
        self.buf.clear();
        self.chunk += 1;
        Ok(())
    }

    /// Seals what is buffered as the last chunk: the inner writer, for the caller to sync.
    pub(crate) fn finish(mut self) -> std::io::Result<W> {
        self.seal_chunk(true)?;
        Ok(self.inner)
    }
}

impl<W: Write> Write for SealedWriter<W> {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        if data.is_empty() {
            return Ok(0);
        }
        // A full chunk is sealed only once more data follows it: the last one is sealed
        // by `finish`, flagged as last.
        if self.buf.len() == CHUNK_BYTES {
            self.seal_chunk(false)?;
        }
        let n = data.len().min(CHUNK_BYTES - self.buf.len());
        self.buf.extend_from_slice(&data[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// Reads a sealed file's plaintext, checking every chunk before handing out its bytes.
pub(crate) struct SealedReader<R: Read> {
    inner: R,
    /// The file, for errors.
    name: String,
    key: LessSafeKey,
    epoch: [u8; EPOCH_BYTES],
    chunk: u64,
    /// The current chunk's plaintext and how much of it was handed out.
    plain: Vec<u8>,
    pos: usize,
    done: bool,
}

impl<R: Read + Seek> SealedReader<R> {
    /// Reads the sealed file `inner` (called `name` in errors) from plaintext byte
    /// `offset` on.
    pub(crate) fn new(
        mut inner: R,
        key: &StorageKey,
        offset: u64,
        name: &str,
    ) -> std::io::Result<Self> {
        let mut header = [0u8; HEADER_BYTES as usize];
        inner
            .read_exact(&mut header)
            .map_err(|e| invalid(format!("{name}: not a sealed snapshot file: {e}")))?;
        if &header[..MAGIC.len()] != MAGIC {
            return Err(invalid(format!(
                "{name}: not a sealed snapshot file (bad magic)"
            )));
        }
        let mut epoch = [0u8; EPOCH_BYTES];
        epoch.copy_from_slice(&header[MAGIC.len()..]);
        // Start in the chunk holding byte `offset - 1`, so that an offset at the end of a
        // full last chunk still finds that chunk (and its end).
        let (chunk, skip) = match offset {
            0 => (0, 0),
            _ => (
                (offset - 1) / CHUNK_BYTES as u64,
                ((offset - 1) % CHUNK_BYTES as u64) as usize + 1,
            ),
        };
        if chunk > 0 {
            inner.seek(SeekFrom::Start(
                HEADER_BYTES + chunk * SEALED_CHUNK_BYTES as u64,
            ))?;
        }
        let mut reader = SealedReader {
            inner,
            name: name.to_owned(),
            key: key.file_key(&epoch),
            epoch,
            chunk,
            plain: Vec::new(),
            pos: 0,
            done: false,
        };
        if skip > 0 {
            reader.next_chunk()?;
            if skip > reader.plain.len() {
                return Err(invalid(format!(
                    "{name}: offset {offset} is beyond the end of the snapshot"
                )));
            }
            reader.pos = skip;
        }
        Ok(reader)
    }
}

impl<R: Read> SealedReader<R> {
    /// Reads, checks and decrypts the next chunk into `plain`.
    fn next_chunk(&mut self) -> std::io::Result<()> {
        let mut sealed = vec![0u8; SEALED_CHUNK_BYTES];
        let mut got = 0;
        while got < sealed.len() {
            match self.inner.read(&mut sealed[got..])? {
                0 => break,
                n => got += n,
            }
        }
        sealed.truncate(got);
        let chunk = self.chunk;
        let Some((&flag, body)) = sealed.split_first() else {
            return Err(invalid(format!(
                "{}: ends before chunk {chunk} (cut short)",
                self.name
            )));
        };
        let last = match flag {
            0 if got == SEALED_CHUNK_BYTES => false,
            1 => true,
            _ => {
                return Err(invalid(format!(
                    "{}: chunk {chunk} is damaged (flag {flag}, {got} bytes)",
                    self.name
                )))
            }
        };
        let mut body = body.to_vec();
        let plain_len = self
            .key
            .open_in_place(nonce(chunk), aad(&self.epoch, chunk, last), &mut body)
            .map_err(|_| {
                invalid(format!(
                    "{}: chunk {chunk} failed authentication (altered, moved, cut or \
                     sealed under another key)",
                    self.name
                ))
            })?
            .len();
        if last {
            // Nothing may follow the last chunk.
            let mut probe = [0u8; 1];
            if self.inner.read(&mut probe)? != 0 {
                return Err(invalid(format!(
                    "{}: bytes after its last chunk {chunk}",
                    self.name
                )));
            }
        }
        body.truncate(plain_len);
        self.plain = body;
        self.pos = 0;
        self.chunk += 1;
        self.done = last;
        Ok(())
    }
}

impl<R: Read> Read for SealedReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        while self.pos == self.plain.len() {
            if self.done {
                return Ok(0);
            }
            self.next_chunk()?;
        }
        let n = buf.len().min(self.plain.len() - self.pos);
        buf[..n].copy_from_slice(&self.plain[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    fn key(member: u8) -> StorageKey {
        StorageKey::derive(&[3; 32], &[member; 32])
    }

    fn plain(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i % 251) as u8).collect()
    }

    fn seal(data: &[u8], key: &StorageKey) -> Vec<u8> {
        let mut w = SealedWriter::new(Vec::new(), key).expect("writer");
        // Odd write sizes cross chunk boundaries.
        for part in data.chunks(7_777) {
            w.write_all(part).expect("write");
        }
        w.finish().expect("finish")
    }

    fn unseal(file: &[u8], key: &StorageKey, offset: u64) -> std::io::Result<Vec<u8>> {
        let mut out = Vec::new();
        SealedReader::new(Cursor::new(file), key, offset, "test.snap")?.read_to_end(&mut out)?;
        Ok(out)
    }

    #[test]
    fn every_size_reads_back_from_every_kind_of_offset() {
        let k = key(1);
        for len in [
            0,
            1,
            CHUNK_BYTES - 1,
            CHUNK_BYTES,
            CHUNK_BYTES + 1,
            3 * CHUNK_BYTES + 5,
        ] {
            let data = plain(len);
            let file = seal(&data, &k);
            assert_eq!(file.len() as u64, sealed_len(len as u64), "size of {len}");
            assert_eq!(unseal(&file, &k, 0).expect("read"), data, "len {len}");
            for offset in [1, CHUNK_BYTES - 1, CHUNK_BYTES, CHUNK_BYTES + 3, len] {
                if offset <= len {
                    assert_eq!(
                        unseal(&file, &k, offset as u64).expect("read from offset"),
                        &data[offset..],
                        "len {len} from {offset}"
                    );
                }
            }
        }
    }

    #[test]
    fn the_plaintext_is_not_in_the_file() {
        let data = b"the confidential state of the machine".repeat(100);
        let file = seal(&data, &key(1));
        assert!(!file.windows(16).any(|w| w == &data[..16]));
    }

    #[test]
    fn damage_truncation_reordering_and_another_key_are_refused() {
        let k = key(1);
        let data = plain(3 * CHUNK_BYTES + 100);
        let file = seal(&data, &k);
        let chunk = |i: usize| {
            let start = HEADER_BYTES as usize + i * SEALED_CHUNK_BYTES;
            start..(start + SEALED_CHUNK_BYTES).min(file.len())
        };
        let mut cases: Vec<(&str, Vec<u8>)> = Vec::new();
        for at in [
            0,
            9,
            HEADER_BYTES as usize,
            HEADER_BYTES as usize + 500,
            file.len() - 1,
        ] {
            let mut f = file.clone();
            f[at] ^= 0x20;
            cases.push(("flipped byte", f));
        }
        cases.push(("cut at a chunk boundary", file[..chunk(2).end].to_vec()));
        cases.push(("cut inside a chunk", file[..file.len() - 3].to_vec()));
        let mut swapped = file.clone();
        let (a, b) = (chunk(0), chunk(1));
        swapped[a.clone()].copy_from_slice(&file[b.clone()]);
        swapped[b].copy_from_slice(&file[a]);
        cases.push(("two chunks swapped", swapped));
        let mut longer = file.clone();
        longer.push(0);
        cases.push(("a byte appended", longer));
        for (what, f) in cases {
            assert!(unseal(&f, &k, 0).is_err(), "{what} must be refused");
        }
        let err = unseal(&file, &key(2), 0).expect_err("another member's key");
        assert!(err.to_string().contains("failed authentication"), "{err}");
        // A chunk of another file (another epoch) in place of this one's.
        let other = seal(&data, &k);
        let mut mixed = file.clone();
        mixed[chunk(1)].copy_from_slice(&other[chunk(1)]);
        assert!(
            unseal(&mixed, &k, 0).is_err(),
            "a chunk moved between files"
        );
    }
}
