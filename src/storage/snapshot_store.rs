//! [`SnapshotStore`]: where a member keeps the bytes of its state-machine snapshots.
//!
//! **What it owns.** Snapshot *bytes*, by content: each stored snapshot is named by its
//! SHA-256 and size ([`SnapshotHandle`]). A durable node keeps them as files in a private
//! directory next to its log (`<store>/snapshots/<sha256>.snap`, mode 0700); a memory node
//! keeps them in memory. The log store records only the small handle (as the snapshot's
//! data); the runtime writes a snapshot here as it is produced or received and restores
//! the state machine by streaming it back, so a large snapshot is never held in memory
//! whole (architecture.md §8).
//!
//! **What it must not do.** Decide which snapshot is current: the worker tells it which one
//! the core serves ([`SnapshotStore::serve`]) and which one the log store durably refers
//! to ([`SnapshotStore::make_current`]). It deletes a file only when nothing can still use
//! it: a superseded served or current snapshot, a received one whose every delivery to the
//! worker was released ([`SnapshotStore::delivered`], [`SnapshotStore::release`]; the same
//! content can be delivered twice, e.g. when the leader resends), one the worker discards,
//! and at start-up ([`SnapshotStore::sweep`]) everything the log store does not refer to.
//! The decision and the deletion happen under one lock, and a receiver counts its delivery
//! before the file appears under its name, so a file is never deleted while a delivery
//! of it is being made.
//!
//! **Confidentiality.** A file store seals every file under the member's storage key
//! ([`super::sealed_file`]): the host that owns the disk cannot read a snapshot, and a file
//! altered, cut short or taken from elsewhere fails its read. A file is named by a MAC of
//! its handle under the same key ([`StorageKey::snapshot_name`]), not by the plaintext's
//! SHA-256, which would let the host confirm a guess of a whole state. (Its size is still
//! visible.) A file named by its SHA-256, as stores before this naming wrote them, is
//! renamed when it is first looked for.
//!
//! **Durability.** A snapshot becomes visible under its final name only after its bytes
//! are synced, by an atomic rename followed by a sync of the directory: a crash leaves a
//! complete snapshot or a stray `.part` file (removed by the next sweep), never a torn
//! snapshot under a valid name. Reads verify size and SHA-256 as they go, so a file
//! damaged on disk fails the restore instead of restoring wrong state.
use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::seal::StorageKey;
use super::sealed_file::{sealed_len, SealedReader, SealedWriter};

/// The start of an encoded [`SnapshotHandle`]: tells a handle from anything else.
const HANDLE_MAGIC: &[u8; 12] = b"tessera/snap";
/// Version of the handle encoding that follows the magic.
const HANDLE_VERSION: u8 = 1;
/// Buffer of snapshot file readers and writers: snapshots are written entry by entry.
const FILE_BUFFER_BYTES: usize = 1 << 20;
/// Largest snapshot a memory store accepts from a peer (it holds the bytes in memory).
pub(crate) const MEMORY_SNAPSHOT_BYTES_MAX: u64 = 8 << 30;
/// Largest snapshot a file store accepts from a peer (it holds the bytes on disk).
pub(crate) const FILE_SNAPSHOT_BYTES_MAX: u64 = 64 << 30;
/// File name suffixes in a snapshot directory.
const SNAPSHOT_SUFFIX: &str = ".snap";
const PARTIAL_SUFFIX: &str = ".part";

/// Names one stored snapshot by its content: what the log store keeps as the snapshot's
/// data, and what a transfer announces.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct SnapshotHandle {
    /// Length of the snapshot's plaintext, in bytes (a sealed file is larger).
    pub size: u64,
    /// SHA-256 of the snapshot's plaintext.
    pub sha256: [u8; 32],
}

impl SnapshotHandle {
    /// The encoding stored as a snapshot's data: magic, version, then `size` (8 bytes,
    /// little-endian) and `sha256`.
    pub fn encode(&self) -> Bytes {
        let mut out = HANDLE_MAGIC.to_vec();
        out.push(HANDLE_VERSION);
        out.extend_from_slice(&self.size.to_le_bytes());
        out.extend_from_slice(&self.sha256);
        Bytes::from(out)
    }

    /// Reads a handle written by [`encode`](Self::encode).
    pub fn decode(data: &[u8]) -> Result<Self, SnapshotStoreError> {
        let not_a_handle = || SnapshotStoreError::NotAHandle { len: data.len() };
        let rest = data.strip_prefix(HANDLE_MAGIC).ok_or_else(not_a_handle)?;
        let (&version, rest) = rest.split_first().ok_or_else(not_a_handle)?;
        if version != HANDLE_VERSION {
            return Err(SnapshotStoreError::HandleVersion { found: version });
        }
        if rest.len() != 8 + 32 {
            return Err(not_a_handle());
        }
        let (size, sha256) = rest.split_at(8);
        Ok(Self {
            size: u64::from_le_bytes(size.try_into().map_err(|_| not_a_handle())?),
            sha256: sha256.try_into().map_err(|_| not_a_handle())?,
        })
    }

    /// Lower-case hex of the digest (file name stem, log and error messages).
    pub fn hex(&self) -> String {
        hex::encode(self.sha256)
    }

    /// The file name stores before keyed names gave it ([`SnapshotStore::path_of`]).
    fn legacy_file_name(&self) -> String {
        format!("{}{SNAPSHOT_SUFFIX}", self.hex())
    }
}

impl std::fmt::Display for SnapshotHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({} bytes)", &self.hex()[..16], self.size)
    }
}

/// Why a snapshot could not be stored or read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SnapshotStoreError {
    /// Reading or writing snapshot bytes failed (or, for `naming`, the system had no
    /// randomness for a file name).
    #[error("snapshot store I/O failed while {op} {path}: {reason}")]
    Io {
        /// What was being done: `creating`, `writing`, `syncing`, `renaming`, …
        op: &'static str,
        /// The file or directory concerned, or a description of the snapshot when no
        /// file is (copying, transfers).
        path: String,
        /// The underlying error.
        reason: String,
    },
    /// The snapshot directory cannot be used: not a directory, accessible to group or
    /// others, or impossible to create.
    #[error("snapshot directory {path}: {reason}")]
    Directory {
        /// The directory.
        path: String,
        /// What is wrong with it, and how to fix it.
        reason: String,
    },
    /// A snapshot's data in the log store is not an encoded [`SnapshotHandle`]: most
    /// likely a log store from before snapshots were kept as files.
    #[error("{len} bytes are not a snapshot handle (a log store written before snapshots were kept as files holds the snapshot itself: start such a node on a fresh data directory)")]
    NotAHandle {
        /// Length of the data that failed to decode.
        len: usize,
    },
    /// An encoded handle of a version this build does not know.
    #[error("snapshot handle version {found} is not supported (expected {HANDLE_VERSION})")]
    HandleVersion {
        /// The version byte found.
        found: u8,
    },
    /// The store holds no snapshot with this handle (never stored, or already deleted).
    #[error("snapshot {handle} is not in the store")]
    Missing {
        /// The handle asked for.
        handle: SnapshotHandle,
    },
    /// A finished snapshot's bytes do not have the SHA-256 the caller expected (a
    /// transfer delivered other bytes); they were discarded.
    #[error("snapshot of {size} bytes has SHA-256 {actual}, expected {expected}")]
    Digest {
        /// Bytes written.
        size: u64,
        /// The expected SHA-256, in hex.
        expected: String,
        /// The SHA-256 of what was written, in hex.
        actual: String,
    },
}

fn io_error<'a>(
    op: &'static str,
    path: &'a Path,
) -> impl Fn(std::io::Error) -> SnapshotStoreError + 'a {
    move |e| SnapshotStoreError::Io {
        op,
        path: path.display().to_string(),
        reason: e.to_string(),
    }
}

/// Where the bytes live.
#[derive(Debug)]
enum Backend {
    Memory(Mutex<BTreeMap<[u8; 32], Bytes>>),
    /// Sealed files in a directory, under the member's storage key.
    Directory(PathBuf, StorageKey),
}

/// Which stored snapshots are in use (see [`SnapshotStore::make_current`]).
#[derive(Debug, Default)]
struct Pins {
    /// The snapshot the log store refers to.
    current: Option<SnapshotHandle>,
    /// The snapshot the core sends to followers: the current one, or a newer one whose
    /// compaction failed to reach the log store.
    served: Option<SnapshotHandle>,
    /// Received snapshots handed to the worker and not yet released by it, by digest:
    /// how many deliveries are outstanding.
    delivered: BTreeMap<[u8; 32], usize>,
}

impl Pins {
    fn in_use(&self, handle: &SnapshotHandle) -> bool {
        self.current.as_ref() == Some(handle)
            || self.served.as_ref() == Some(handle)
            || self.delivered.contains_key(&handle.sha256)
    }
}

/// The snapshot bytes of one member. See the module docs.
#[derive(Debug)]
pub struct SnapshotStore {
    backend: Backend,
    pins: Mutex<Pins>,
}

impl Default for SnapshotStore {
    fn default() -> Self {
        Self::memory()
    }
}

impl SnapshotStore {
    /// A store in memory (for memory log stores: nothing survives the process).
    pub fn memory() -> Self {
        Self {
            backend: Backend::Memory(Mutex::new(BTreeMap::new())),
            pins: Mutex::default(),
        }
    }

    /// A store of files in `dir`, sealed under `key`, created with mode 0700 if missing;
    /// an existing directory that group or others may access is refused. Call it only
    /// while holding the data directory's lock (the log store's): [`sweep`](Self::sweep)
    /// deletes files.
    pub fn open_dir(dir: impl AsRef<Path>, key: StorageKey) -> Result<Self, SnapshotStoreError> {
        let dir = dir.as_ref().to_path_buf();
        super::private_dir(&dir).map_err(|reason| SnapshotStoreError::Directory {
            path: dir.display().to_string(),
            reason,
        })?;
        // A directory just created must itself be durable before a file in it is relied
        // on: sync its entry in the parent (and the directory, for what a crash left).
        for d in [Some(dir.as_path()), dir.parent()].into_iter().flatten() {
            File::open(d)
                .and_then(|f| f.sync_all())
                .map_err(io_error("syncing", d))?;
        }
        Ok(Self {
            backend: Backend::Directory(dir, key),
            pins: Mutex::default(),
        })
    }

    /// Largest snapshot this store takes from a peer: the disk of a file store, and for a
    /// memory store the memory, that a (bonded, attested) peer can make it fill.
    pub fn size_limit(&self) -> u64 {
        match self.backend {
            Backend::Memory(_) => MEMORY_SNAPSHOT_BYTES_MAX,
            Backend::Directory(..) => FILE_SNAPSHOT_BYTES_MAX,
        }
    }

    /// The directory of a file store (`None` in memory).
    pub fn dir(&self) -> Option<&Path> {
        match &self.backend {
            Backend::Directory(dir, _) => Some(dir),
            Backend::Memory(_) => None,
        }
    }

    /// Starts a new snapshot. Nothing is visible until [`SnapshotWriter::finish`]; a
    /// writer dropped unfinished leaves nothing behind.
    pub fn writer(self: &Arc<Self>) -> Result<SnapshotWriter, SnapshotStoreError> {
        let sink = match &self.backend {
            Backend::Memory(_) => Sink::Memory(Vec::new()),
            Backend::Directory(dir, key) => {
                let path = dir.join(format!("{}{PARTIAL_SUFFIX}", random_stem()?));
                let file = std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(&path)
                    .map_err(io_error("creating", &path))?;
                let file =
                    SealedWriter::new(BufWriter::with_capacity(FILE_BUFFER_BYTES, file), key)
                        .map_err(io_error("writing", &path))?;
                Sink::File {
                    file: Box::new(file),
                    path,
                }
            }
        };
        Ok(SnapshotWriter {
            store: self.clone(),
            sink: Some(sink),
            written: 0,
            hasher: ring::digest::Context::new(&ring::digest::SHA256),
        })
    }

    /// Whether the store holds `handle`.
    pub fn contains(&self, handle: &SnapshotHandle) -> bool {
        match &self.backend {
            Backend::Memory(map) => lock(map).contains_key(&handle.sha256),
            Backend::Directory(..) => self
                .path_of(handle)
                .and_then(|path| std::fs::metadata(path).ok())
                .is_some_and(|m| m.is_file() && m.len() == sealed_len(handle.size)),
        }
    }

    /// Reads `handle` from its start, verifying size and SHA-256 as it goes: the last read
    /// fails (`InvalidData`) instead of reaching the end when the bytes do not match.
    pub fn reader(&self, handle: &SnapshotHandle) -> Result<SnapshotReader, SnapshotStoreError> {
        Ok(SnapshotReader {
            inner: self.raw_reader(handle, 0)?,
            expected: *handle,
            read: 0,
            hasher: ring::digest::Context::new(&ring::digest::SHA256),
        })
    }

    /// Reads `handle` from byte `offset` on, unverified: for sending (the receiver checks
    /// the digest of the whole).
    pub fn raw_reader(
        &self,
        handle: &SnapshotHandle,
        offset: u64,
    ) -> Result<Box<dyn Read + Send>, SnapshotStoreError> {
        let offset = offset.min(handle.size);
        match &self.backend {
            Backend::Memory(map) => {
                let bytes = lock(map)
                    .get(&handle.sha256)
                    .cloned()
                    .ok_or(SnapshotStoreError::Missing { handle: *handle })?;
                let mut cursor = std::io::Cursor::new(bytes);
                cursor.set_position(offset);
                Ok(Box::new(cursor))
            }
            Backend::Directory(_, key) => {
                let path = self
                    .path_of(handle)
                    .ok_or(SnapshotStoreError::Missing { handle: *handle })?;
                let file = File::open(&path).map_err(|e| match e.kind() {
                    std::io::ErrorKind::NotFound => SnapshotStoreError::Missing { handle: *handle },
                    _ => io_error("opening", &path)(e),
                })?;
                let reader = SealedReader::new(
                    BufReader::with_capacity(FILE_BUFFER_BYTES, file),
                    key,
                    offset,
                    &path.display().to_string(),
                )
                .map_err(io_error("reading", &path))?;
                Ok(Box::new(reader))
            }
        }
    }

    /// Copies `handle` from `other` into this store (nothing to do if it is here already).
    /// What an in-process transport does instead of a transfer over the network.
    pub fn copy_from(
        self: &Arc<Self>,
        other: &SnapshotStore,
        handle: &SnapshotHandle,
    ) -> Result<(), SnapshotStoreError> {
        if self.contains(handle) {
            return Ok(());
        }
        if let (Backend::Memory(to), Backend::Memory(from)) = (&self.backend, &other.backend) {
            let bytes = lock(from)
                .get(&handle.sha256)
                .cloned()
                .ok_or(SnapshotStoreError::Missing { handle: *handle })?;
            lock(to).insert(handle.sha256, bytes);
            return Ok(());
        }
        let mut writer = self.writer()?;
        let mut reader = other.reader(handle)?;
        std::io::copy(&mut reader, &mut writer).map_err(|e| SnapshotStoreError::Io {
            op: "copying",
            path: handle.to_string(),
            reason: e.to_string(),
        })?;
        writer.finish(Some(&handle.sha256)).map(|_| ())
    }

    /// `handle` is what the core now sends to followers (a snapshot just taken, before
    /// the log store has recorded it): the previously served one is deleted unless
    /// something still uses it.
    pub fn serve(&self, handle: &SnapshotHandle) {
        let mut pins = lock(&self.pins);
        let previous = pins.served.replace(*handle);
        self.delete_unused(&pins, previous);
    }

    /// `handle` is what the log store now durably refers to, and what the core serves:
    /// the previous current and served ones are deleted unless something still uses them.
    pub fn make_current(&self, handle: &SnapshotHandle) {
        let mut pins = lock(&self.pins);
        let previous = pins.current.replace(*handle);
        let served = pins.served.replace(*handle);
        self.delete_unused(&pins, previous);
        self.delete_unused(&pins, served);
    }

    /// A received `handle` is being handed to the worker (in an `InstallSnapshot`): kept
    /// until that delivery is [released](Self::release). Count it before the file appears
    /// under its name.
    pub fn delivered(&self, handle: &SnapshotHandle) {
        *lock(&self.pins).delivered.entry(handle.sha256).or_default() += 1;
    }

    /// One delivery of `handle` is done with (the worker installed it or refused it; or it
    /// never reached the worker). Once none is left and nothing else uses it, it is
    /// deleted. A handle that was never delivered is left alone.
    pub fn release(&self, handle: &SnapshotHandle) {
        let mut pins = lock(&self.pins);
        let Some(count) = pins.delivered.get_mut(&handle.sha256) else {
            return;
        };
        *count -= 1;
        if *count == 0 {
            pins.delivered.remove(&handle.sha256);
        }
        self.delete_unused(&pins, Some(*handle));
    }

    /// `handle` was written but will not be used (the core did not take it): deleted
    /// unless something else uses the same content.
    pub fn discard(&self, handle: &SnapshotHandle) {
        let pins = lock(&self.pins);
        self.delete_unused(&pins, Some(*handle));
    }

    /// Deletes `handle`'s bytes if it is given and `pins` (held by the caller, so that no
    /// delivery can start in between) says nothing uses it.
    fn delete_unused(&self, pins: &Pins, handle: Option<SnapshotHandle>) {
        if let Some(handle) = handle.filter(|h| !pins.in_use(h)) {
            self.delete(&handle);
        }
    }

    /// At start-up: deletes everything but `keep` (the snapshot the log store refers to),
    /// including unfinished `.part` files a crash left, and makes `keep` current.
    pub fn sweep(&self, keep: Option<&SnapshotHandle>) -> Result<(), SnapshotStoreError> {
        {
            let mut pins = lock(&self.pins);
            pins.current = keep.copied();
            pins.served = keep.copied();
            pins.delivered.clear();
        }
        match &self.backend {
            Backend::Memory(map) => {
                lock(map).retain(|sha, _| keep.is_some_and(|k| k.sha256 == *sha));
                Ok(())
            }
            Backend::Directory(dir, _) => {
                let keep_name = keep
                    .and_then(|k| self.path_of(k))
                    .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()));
                let entries = std::fs::read_dir(dir).map_err(io_error("listing", dir))?;
                for entry in entries {
                    let entry = entry.map_err(io_error("listing", dir))?;
                    let name = entry.file_name();
                    let name = name.to_string_lossy();
                    let ours = name.ends_with(SNAPSHOT_SUFFIX) || name.ends_with(PARTIAL_SUFFIX);
                    if ours && Some(name.as_ref()) != keep_name.as_deref() {
                        let path = entry.path();
                        std::fs::remove_file(&path).map_err(io_error("removing", &path))?;
                        tracing::info!(file = %path.display(), "removed a snapshot file no longer referred to");
                    }
                }
                Ok(())
            }
        }
    }

    /// Where `handle`'s file is (`None` in memory). A file a store before keyed names
    /// left under the plaintext's SHA-256 is renamed to its keyed name first.
    fn path_of(&self, handle: &SnapshotHandle) -> Option<PathBuf> {
        let Backend::Directory(dir, key) = &self.backend else {
            return None;
        };
        let path = dir.join(file_name(key, handle));
        let legacy = dir.join(handle.legacy_file_name());
        if !path.exists() && legacy.exists() {
            let renamed = std::fs::rename(&legacy, &path)
                .and_then(|()| File::open(dir).and_then(|d| d.sync_all()));
            match renamed {
                Ok(()) => {
                    tracing::info!(file = %path.display(), "renamed a snapshot file to its keyed name")
                }
                Err(e) => {
                    tracing::warn!(file = %legacy.display(), error = %e, "could not rename a snapshot file to its keyed name")
                }
            }
        }
        Some(path)
    }

    /// The name `handle` is stored under: its SHA-256 in memory, in a directory the keyed
    /// name (a MAC of the handle under the storage key; for tests and diagnostics).
    pub fn name_of(&self, handle: &SnapshotHandle) -> [u8; 32] {
        match &self.backend {
            Backend::Memory(_) => handle.sha256,
            Backend::Directory(_, key) => key.snapshot_name(handle.size, &handle.sha256),
        }
    }

    /// The names ([`SnapshotStore::name_of`]) of every complete snapshot held (for tests
    /// and diagnostics).
    pub fn list(&self) -> Result<Vec<[u8; 32]>, SnapshotStoreError> {
        match &self.backend {
            Backend::Memory(map) => Ok(lock(map).keys().copied().collect()),
            Backend::Directory(dir, _) => {
                let mut out = Vec::new();
                for entry in std::fs::read_dir(dir).map_err(io_error("listing", dir))? {
                    let entry = entry.map_err(io_error("listing", dir))?;
                    let name = entry.file_name();
                    let name = name.to_string_lossy();
                    let Some(stem) = name.strip_suffix(SNAPSHOT_SUFFIX) else {
                        continue;
                    };
                    let mut sha = [0u8; 32];
                    if hex::decode_to_slice(stem, &mut sha).is_ok() {
                        out.push(sha);
                    }
                }
                out.sort_unstable();
                Ok(out)
            }
        }
    }

    fn delete(&self, handle: &SnapshotHandle) {
        match &self.backend {
            Backend::Memory(map) => {
                lock(map).remove(&handle.sha256);
            }
            Backend::Directory(dir, key) => {
                let path = dir.join(file_name(key, handle));
                // A reader still streaming it keeps its open file; nothing else needs it.
                if let Err(e) = std::fs::remove_file(&path) {
                    if e.kind() != std::io::ErrorKind::NotFound {
                        tracing::warn!(file = %path.display(), error = %e, "could not remove a superseded snapshot");
                    }
                }
            }
        }
    }
}

/// The name of `handle`'s file in a store sealed under `key`.
fn file_name(key: &StorageKey, handle: &SnapshotHandle) -> String {
    let name = key.snapshot_name(handle.size, &handle.sha256);
    format!("{}{SNAPSHOT_SUFFIX}", hex::encode(name))
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Every critical section here leaves its data consistent: a panic cannot tear it.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A fresh random file-name stem for an unfinished snapshot.
fn random_stem() -> Result<String, SnapshotStoreError> {
    let mut b = [0u8; 16];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut b).map_err(|_| {
        SnapshotStoreError::Io {
            op: "naming",
            path: "a new snapshot file".into(),
            reason: "no system randomness".into(),
        }
    })?;
    Ok(hex::encode(b))
}

enum Sink {
    Memory(Vec<u8>),
    File {
        /// Boxed: the writer carries its key and a chunk buffer.
        file: Box<SealedWriter<BufWriter<File>>>,
        path: PathBuf,
    },
}

/// A snapshot being written: hashed and counted as it goes.
pub struct SnapshotWriter {
    store: Arc<SnapshotStore>,
    /// `None` once finished.
    sink: Option<Sink>,
    written: u64,
    hasher: ring::digest::Context,
}

impl SnapshotWriter {
    /// Bytes written so far.
    pub fn written(&self) -> u64 {
        self.written
    }

    /// Makes the snapshot durable and visible under its handle. With `expected`, refuses
    /// (and discards) bytes whose SHA-256 is another.
    pub fn finish(
        mut self,
        expected: Option<&[u8; 32]>,
    ) -> Result<SnapshotHandle, SnapshotStoreError> {
        let digest = self.hasher.clone().finish();
        let mut sha256 = [0u8; 32];
        sha256.copy_from_slice(digest.as_ref());
        let handle = SnapshotHandle {
            size: self.written,
            sha256,
        };
        if let Some(expected) = expected.filter(|e| **e != sha256) {
            // Dropping the writer discards the bytes.
            return Err(SnapshotStoreError::Digest {
                size: self.written,
                expected: hex::encode(expected),
                actual: handle.hex(),
            });
        }
        match self.sink.take() {
            Some(Sink::Memory(bytes)) => {
                if let Backend::Memory(map) = &self.store.backend {
                    lock(map).insert(sha256, Bytes::from(bytes));
                }
            }
            Some(Sink::File { file, path }) => {
                let result = finish_file(file, &path, &self.store, &handle);
                if result.is_err() {
                    let _ = std::fs::remove_file(&path);
                }
                result?;
            }
            None => {}
        }
        Ok(handle)
    }
}

/// Syncs the file, renames it to its final name and syncs the directory.
fn finish_file(
    file: Box<SealedWriter<BufWriter<File>>>,
    path: &Path,
    store: &SnapshotStore,
    handle: &SnapshotHandle,
) -> Result<(), SnapshotStoreError> {
    let file = file
        .finish()
        .map_err(io_error("writing", path))?
        .into_inner()
        .map_err(|e| io_error("writing", path)(e.into_error()))?;
    file.sync_all().map_err(io_error("syncing", path))?;
    drop(file);
    let Backend::Directory(dir, key) = &store.backend else {
        return Ok(());
    };
    let target = dir.join(file_name(key, handle));
    std::fs::rename(path, &target).map_err(io_error("renaming", path))?;
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_error("syncing", dir))
}

impl Write for SnapshotWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = match self.sink.as_mut() {
            Some(Sink::Memory(bytes)) => {
                bytes.extend_from_slice(buf);
                buf.len()
            }
            Some(Sink::File { file, .. }) => file.write(buf)?,
            None => return Err(std::io::Error::other("snapshot writer already finished")),
        };
        self.hasher.update(&buf[..n]);
        self.written += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match self.sink.as_mut() {
            Some(Sink::File { file, .. }) => file.flush(),
            _ => Ok(()),
        }
    }
}

impl Drop for SnapshotWriter {
    fn drop(&mut self) {
        if let Some(Sink::File { path, .. }) = self.sink.take() {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// A stored snapshot read back and checked against its handle as it is read.
pub struct SnapshotReader {
    inner: Box<dyn Read + Send>,
    expected: SnapshotHandle,
    read: u64,
    hasher: ring::digest::Context,
}

impl Read for SnapshotReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        let n = self.inner.read(buf)?;
        self.read += n as u64;
        if self.read > self.expected.size {
            return Err(mismatch(&self.expected, "is longer than recorded"));
        }
        self.hasher.update(&buf[..n]);
        if n == 0 || self.read == self.expected.size {
            if self.read < self.expected.size {
                return Err(mismatch(&self.expected, "is shorter than recorded"));
            }
            if self.hasher.clone().finish().as_ref() != self.expected.sha256 {
                return Err(mismatch(&self.expected, "does not match its SHA-256"));
            }
        }
        Ok(n)
    }
}

fn mismatch(handle: &SnapshotHandle, what: &str) -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::InvalidData,
        format!("stored snapshot {handle} {what}"),
    )
}

#[cfg(test)]
mod tests;
