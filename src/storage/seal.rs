//! Sealed records: how a durable store keeps its records from the host that owns the disk.
//!
//! **What it owns.** The storage key ([`StorageKey`]: derived from the group key and the
//! member's node id, so only this member of this group can read or write its records) and the record format. It does no IO and knows nothing about which records a
//! store keeps or in what order: the store names each record (its [`RecordKind`], its
//! index, and the tag of the record it chains to) and this module seals and opens it.
//!
//! **Format.** A sealed record is
//! `[version u8][epoch 16 bytes][counter u64 BE][ciphertext][tag 16 bytes]`, the AEAD
//! being ChaCha20-Poly1305. Every open of a store picks a random *epoch*, derives the
//! epoch's key from the storage key with HKDF, and numbers the records it seals from 0: a
//! nonce is never reused under one key, whatever the host does to the disk (a counter kept
//! on disk could be rolled back by the host, a random 96-bit nonce would wear out over
//! billions of records). The associated data binds the record to its kind, its index and
//! the tag of the record before it: a record moved to another key, another kind, or next
//! to a record it did not follow fails to open.
//!
//! **What it must not do.** Decide what a failed check means: it reports
//! [`SealError`], and the store turns that into a fatal corruption (never a truncation).
use std::collections::HashMap;
use std::sync::Mutex;

use ring::aead::{self, Aad, LessSafeKey, Nonce, UnboundKey, CHACHA20_POLY1305};
use ring::hkdf;
use ring::rand::SecureRandom;

/// Version byte of a sealed record.
pub(crate) const RECORD_VERSION: u8 = 2;
/// Length of the authentication tag that ends every sealed record.
pub(crate) const TAG_BYTES: usize = 16;
const EPOCH_BYTES: usize = 16;
const COUNTER_BYTES: usize = 8;
const HEADER_BYTES: usize = 1 + EPOCH_BYTES + COUNTER_BYTES;
const _: () = assert!(TAG_BYTES == aead::MAX_TAG_LEN);
/// Bytes a sealed record adds to its body.
pub(crate) const OVERHEAD_BYTES: usize = HEADER_BYTES + TAG_BYTES;
/// Read keys of past epochs kept derived; older ones are derived again when needed.
const EPOCH_KEYS_CACHED_MAX: usize = 64;

const KEY_SALT: &[u8] = b"tessera/storage-key/v1";
const EPOCH_INFO: &[u8] = b"tessera/storage-epoch/v1";
const FILE_INFO: &[u8] = b"tessera/snapshot-file-key/v1";
const NAME_INFO: &[u8] = b"tessera/snapshot-file-name/v1";
const AAD_DOMAIN: &[u8] = b"tessera/storage-record/v2";

/// The tag of a sealed record: what the next record chains to.
pub(crate) type Tag = [u8; TAG_BYTES];

/// What a record holds; part of its associated data, so a record of one kind never opens as
/// another.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum RecordKind {
    /// A log entry, at its index, chained to the entry before it.
    Entry = 1,
    /// The store's tip: hard state and the tags that close the log's chain.
    Tip = 2,
    /// The snapshot: its metadata and data.
    Snapshot = 3,
}

/// Why a sealed record cannot be trusted.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub(crate) enum SealError {
    #[error("record of {len} bytes is shorter than the {OVERHEAD_BYTES} bytes of its seal")]
    Short { len: usize },
    #[error("record version {found} (this build reads version {RECORD_VERSION})")]
    Version { found: u8 },
    #[error(
        "authentication failed: the record was altered, moved, replayed, or sealed under \
         another key (another member or group)"
    )]
    Authentication,
    #[error("no system randomness for a storage epoch")]
    Randomness,
    #[error("{0} records sealed in one epoch")]
    Exhausted(u64),
}

/// The key a member's durable records are sealed under. Derived, never stored.
#[derive(Clone)]
pub struct StorageKey {
    prk: hkdf::Prk,
}

impl std::fmt::Debug for StorageKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StorageKey(..)")
    }
}

impl StorageKey {
    /// The key of member `member` (its node id's bytes) in the group whose key is
    /// `group_key`. Another member, or the same node in another group, gets an unrelated
    /// key: records cannot be moved between them.
    pub fn derive(group_key: &[u8; 32], member: &[u8; 32]) -> Self {
        let salt = hkdf::Salt::new(hkdf::HKDF_SHA256, KEY_SALT);
        let mut ikm = Vec::with_capacity(64);
        ikm.extend_from_slice(group_key);
        ikm.extend_from_slice(member);
        StorageKey {
            prk: salt.extract(&ikm),
        }
    }

    fn epoch_key(&self, epoch: &[u8; EPOCH_BYTES]) -> LessSafeKey {
        self.expand(EPOCH_INFO, epoch)
    }

    /// The key of the sealed snapshot file with epoch `epoch` ([`super::sealed_file`]).
    pub(crate) fn file_key(&self, epoch: &[u8; EPOCH_BYTES]) -> LessSafeKey {
        self.expand(FILE_INFO, epoch)
    }

    /// The name of the snapshot file holding the plaintext of `size` bytes with SHA-256
    /// `sha256`: a MAC of both under this key, so that the host that lists the directory
    /// cannot confirm a guess of a whole state from its digest. The same content gets the
    /// same name (snapshots stay named by content), but only for this member.
    pub(crate) fn snapshot_name(&self, size: u64, sha256: &[u8; 32]) -> [u8; 32] {
        // HKDF-SHA256 can expand to an HMAC-SHA256 key (32 bytes) without fail.
        let okm = self
            .prk
            .expand(&[NAME_INFO], ring::hmac::HMAC_SHA256)
            .expect("HKDF expands to one HMAC key");
        let key = ring::hmac::Key::from(okm);
        let mut ctx = ring::hmac::Context::with_key(&key);
        ctx.update(&size.to_le_bytes());
        ctx.update(sha256);
        let mut name = [0u8; 32];
        name.copy_from_slice(ctx.sign().as_ref());
        name
    }

    fn expand(&self, label: &[u8], epoch: &[u8; EPOCH_BYTES]) -> LessSafeKey {
        let info = [label, epoch.as_slice()];
        // HKDF-SHA256 can expand to 32 bytes (the algorithm's key length) without fail.
        let okm = self
            .prk
            .expand(&info, &CHACHA20_POLY1305)
            .expect("HKDF expands to one AEAD key");
        LessSafeKey::new(UnboundKey::from(okm))
    }
}

/// Seals and opens the records of one open store.
pub(crate) struct Sealer {
    key: StorageKey,
    epoch: [u8; EPOCH_BYTES],
    counter: u64,
    write_key: LessSafeKey,
    read_keys: Mutex<HashMap<[u8; EPOCH_BYTES], LessSafeKey>>,
}

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sealer")
            .field("epoch", &hex::encode(self.epoch))
            .field("counter", &self.counter)
            .finish_non_exhaustive()
    }
}

fn aad(kind: RecordKind, index: u64, chain: &Tag) -> Vec<u8> {
    let mut out = Vec::with_capacity(AAD_DOMAIN.len() + 1 + 8 + TAG_BYTES);
    out.extend_from_slice(AAD_DOMAIN);
    out.push(kind as u8);
    out.extend_from_slice(&index.to_be_bytes());
    out.extend_from_slice(chain);
    out
}

fn nonce(counter: u64) -> Nonce {
    let mut bytes = [0u8; aead::NONCE_LEN];
    bytes[aead::NONCE_LEN - COUNTER_BYTES..].copy_from_slice(&counter.to_be_bytes());
    Nonce::assume_unique_for_key(bytes)
}

/// The tag of a sealed record (its last bytes), without checking it.
pub(crate) fn tag_of(record: &[u8]) -> Option<Tag> {
    let start = record.len().checked_sub(TAG_BYTES)?;
    record[start..].try_into().ok()
}

impl Sealer {
    /// A sealer with a fresh random epoch.
    pub(crate) fn new(key: StorageKey) -> Result<Self, SealError> {
        let mut epoch = [0u8; EPOCH_BYTES];
        ring::rand::SystemRandom::new()
            .fill(&mut epoch)
            .map_err(|_| SealError::Randomness)?;
        let write_key = key.epoch_key(&epoch);
        Ok(Sealer {
            key,
            epoch,
            counter: 0,
            write_key,
            read_keys: Mutex::new(HashMap::new()),
        })
    }

    /// Seals `body` as a record of `kind` at `index`, chained to `chain`: the record and
    /// its tag (what the next record chains to).
    pub(crate) fn seal(
        &mut self,
        kind: RecordKind,
        index: u64,
        chain: &Tag,
        body: &[u8],
    ) -> Result<(Vec<u8>, Tag), SealError> {
        let counter = self.counter;
        self.counter = counter
            .checked_add(1)
            .ok_or(SealError::Exhausted(counter))?;
        let mut out = Vec::with_capacity(OVERHEAD_BYTES + body.len());
        out.push(RECORD_VERSION);
        out.extend_from_slice(&self.epoch);
        out.extend_from_slice(&counter.to_be_bytes());
        out.extend_from_slice(body);
        let tag = self
            .write_key
            .seal_in_place_separate_tag(
                nonce(counter),
                Aad::from(aad(kind, index, chain)),
                &mut out[HEADER_BYTES..],
            )
            // Only a body beyond ChaCha20's 256 GiB per nonce fails; records are far smaller.
            .map_err(|_| SealError::Exhausted(counter))?;
        let mut own = [0u8; TAG_BYTES];
        // Cannot panic: ChaCha20-Poly1305's tag is TAG_BYTES long (asserted at compile time).
        own.copy_from_slice(tag.as_ref());
        out.extend_from_slice(&own);
        Ok((out, own))
    }

    /// Opens a record of `kind` at `index` that must chain to `chain`: its body, or why it
    /// cannot be trusted.
    pub(crate) fn open(
        &self,
        kind: RecordKind,
        index: u64,
        chain: &Tag,
        record: &[u8],
    ) -> Result<Vec<u8>, SealError> {
        if record.len() < OVERHEAD_BYTES {
            return Err(SealError::Short { len: record.len() });
        }
        if record[0] != RECORD_VERSION {
            return Err(SealError::Version { found: record[0] });
        }
        let epoch: [u8; EPOCH_BYTES] = record[1..1 + EPOCH_BYTES]
            .try_into()
            .map_err(|_| SealError::Short { len: record.len() })?;
        let counter_bytes: [u8; COUNTER_BYTES] =
            record[1 + EPOCH_BYTES..HEADER_BYTES]
                .try_into()
                .map_err(|_| SealError::Short { len: record.len() })?;
        let counter = u64::from_be_bytes(counter_bytes);
        let mut in_out = record[HEADER_BYTES..].to_vec();
        let aad = Aad::from(aad(kind, index, chain));
        let opened = if epoch == self.epoch {
            self.write_key
                .open_in_place(nonce(counter), aad, &mut in_out)
        } else {
            let mut keys = self
                .read_keys
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            if !keys.contains_key(&epoch) && keys.len() >= EPOCH_KEYS_CACHED_MAX {
                keys.clear();
            }
            let key = keys
                .entry(epoch)
                .or_insert_with(|| self.key.epoch_key(&epoch));
            key.open_in_place(nonce(counter), aad, &mut in_out)
        };
        let len = opened.map_err(|_| SealError::Authentication)?.len();
        in_out.truncate(len);
        Ok(in_out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(member: u8) -> StorageKey {
        StorageKey::derive(&[7; 32], &[member; 32])
    }

    #[test]
    fn a_record_opens_only_as_what_it_was_sealed_as() {
        let mut sealer = Sealer::new(key(1)).expect("sealer");
        let chain = [3u8; TAG_BYTES];
        let (record, tag) = sealer
            .seal(RecordKind::Entry, 5, &chain, b"put x 1")
            .expect("seal");
        assert_eq!(tag_of(&record), Some(tag), "the record ends with its tag");
        assert_eq!(record.len(), b"put x 1".len() + OVERHEAD_BYTES);
        assert!(
            !record.windows(7).any(|w| w == b"put x 1"),
            "the body is not stored in the clear"
        );
        assert_eq!(
            sealer.open(RecordKind::Entry, 5, &chain, &record),
            Ok(b"put x 1".to_vec())
        );
        let refused = [
            (
                "another index",
                sealer.open(RecordKind::Entry, 6, &chain, &record),
            ),
            (
                "another kind",
                sealer.open(RecordKind::Tip, 5, &chain, &record),
            ),
            (
                "another chain",
                sealer.open(RecordKind::Entry, 5, &[4; TAG_BYTES], &record),
            ),
            (
                "another member's key",
                Sealer::new(key(2))
                    .expect("sealer")
                    .open(RecordKind::Entry, 5, &chain, &record),
            ),
        ];
        for (what, result) in refused {
            assert_eq!(result, Err(SealError::Authentication), "{what}");
        }
        for at in 0..record.len() {
            let mut damaged = record.clone();
            damaged[at] ^= 0x40;
            assert!(
                sealer.open(RecordKind::Entry, 5, &chain, &damaged).is_err(),
                "a flipped byte at {at} is caught"
            );
        }
        assert_eq!(
            sealer.open(RecordKind::Entry, 5, &chain, &record[..10]),
            Err(SealError::Short { len: 10 })
        );
    }

    #[test]
    fn records_of_an_earlier_open_still_open_and_nonces_never_repeat() {
        let mut first = Sealer::new(key(1)).expect("sealer");
        let (a, _) = first
            .seal(RecordKind::Tip, 0, &[0; TAG_BYTES], b"same body")
            .expect("seal");
        let (b, _) = first
            .seal(RecordKind::Tip, 0, &[0; TAG_BYTES], b"same body")
            .expect("seal");
        assert_ne!(a, b, "the same body sealed twice differs (fresh nonce)");
        let second = Sealer::new(key(1)).expect("a later open");
        assert_ne!(first.epoch, second.epoch, "every open has its own epoch");
        assert_eq!(
            second.open(RecordKind::Tip, 0, &[0; TAG_BYTES], &a),
            Ok(b"same body".to_vec())
        );
        assert_eq!(
            tag_of(&a).map(|t| t.to_vec()),
            Some(a[a.len() - 16..].to_vec())
        );
    }
}
