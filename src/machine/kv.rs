//! The built-in key-value store: byte-string keys and values in an ordered map.
//!
//! Every command is checked against named [`KvLimits`] before it touches the map; a command
//! over a limit becomes a [`KvOutput::Rejected`] output that every replica computes the same
//! way, so an oversized request costs one log entry and changes nothing.

use std::collections::BTreeMap;
use std::ops::Bound;

use serde::{Deserialize, Serialize};

use super::{
    decode_snapshot, encode_snapshot, encodes_exactly, ApplyContext, SignatureBuilder,
    SnapshotError, StateMachine,
};

/// Default largest key, in bytes.
pub const KEY_BYTES_MAX_DEFAULT: u64 = 4 * 1024;
/// Default largest value, in bytes. Small on purpose: a `Get` through the log caches its
/// value in the session table, so this bounds that table's memory too.
pub const VALUE_BYTES_MAX_DEFAULT: u64 = 64 * 1024;
/// Default largest total of key and value bytes the store holds.
pub const DATA_BYTES_MAX_DEFAULT: u64 = 1024 * 1024 * 1024;
/// Default largest number of entries one [`KvQuery::Range`] returns.
pub const RANGE_LIMIT_MAX_DEFAULT: u32 = 1024;

/// Domain tag of the signature; bump the version when command semantics change.
const SIGNATURE_DOMAIN: &str = "tessera.machine.kv.v1";
/// Version of the snapshot byte format.
const SNAPSHOT_FORMAT_VERSION: u16 = 1;

/// The limits every replica enforces identically. All are part of the signature.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KvLimits {
    /// Largest key accepted, in bytes.
    pub key_bytes_max: u64,
    /// Largest value accepted (and largest value an `Append` may produce), in bytes.
    pub value_bytes_max: u64,
    /// Largest sum of key and value lengths over all entries. Per-entry allocator overhead
    /// is not counted.
    pub data_bytes_max: u64,
    /// Largest number of entries a range query returns; larger requested limits are
    /// clamped to it.
    pub range_limit_max: u32,
}

impl Default for KvLimits {
    fn default() -> Self {
        Self {
            key_bytes_max: KEY_BYTES_MAX_DEFAULT,
            value_bytes_max: VALUE_BYTES_MAX_DEFAULT,
            data_bytes_max: DATA_BYTES_MAX_DEFAULT,
            range_limit_max: RANGE_LIMIT_MAX_DEFAULT,
        }
    }
}

/// A change to the store, replicated through the log.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum KvCommand {
    /// Sets `key` to `value`, creating or replacing it.
    Put {
        /// The key.
        key: Vec<u8>,
        /// The new value.
        value: Vec<u8>,
    },
    /// Removes `key` if present.
    Delete {
        /// The key.
        key: Vec<u8>,
    },
    /// Replaces the value of `key` only if it currently equals `expected`.
    CompareAndSwap {
        /// The key.
        key: Vec<u8>,
        /// The value the key must hold; `None` means the key must be absent.
        expected: Option<Vec<u8>>,
        /// The value to store on a match; `None` deletes the key.
        new: Option<Vec<u8>>,
    },
    /// Concatenates `value` to the current value; a missing key counts as empty (and is
    /// created, even when `value` is empty).
    Append {
        /// The key.
        key: Vec<u8>,
        /// The bytes to add at the end.
        value: Vec<u8>,
    },
    /// Reads `key` through the log: linearizable without a read-index round.
    Get {
        /// The key.
        key: Vec<u8>,
    },
}

/// What a [`KvCommand`] did.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum KvOutput {
    /// A `Put` stored its value.
    Put,
    /// A `Delete` ran.
    Delete {
        /// Whether the key existed (and so was removed).
        removed: bool,
    },
    /// A `CompareAndSwap` matched and stored (or deleted, for `new: None`).
    Swapped,
    /// A `CompareAndSwap` did not match; nothing changed.
    SwapFailed {
        /// The value the key holds (`None`: absent), which differed from `expected`.
        current: Option<Vec<u8>>,
    },
    /// An `Append` ran.
    Append {
        /// Length of the value after the append.
        len_bytes: u64,
    },
    /// A `Get` read the key.
    Get {
        /// The value (`None`: absent).
        value: Option<Vec<u8>>,
    },
    /// The command broke a limit and changed nothing.
    Rejected(KvRejection),
}

/// Why a command was rejected. Computed from the command and the replicated state only, so
/// every replica rejects the same commands the same way.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum KvRejection {
    /// A key is longer than [`KvLimits::key_bytes_max`].
    #[error("key of {key_bytes} bytes exceeds the limit of {key_bytes_max}")]
    KeyTooLarge {
        /// Length of the key.
        key_bytes: u64,
        /// The limit.
        key_bytes_max: u64,
    },
    /// A value (for `Append`: the value the append would produce; for `CompareAndSwap`:
    /// `expected` or `new`) is longer than [`KvLimits::value_bytes_max`].
    #[error("value of {value_bytes} bytes exceeds the limit of {value_bytes_max}")]
    ValueTooLarge {
        /// Length of the offending value.
        value_bytes: u64,
        /// The limit.
        value_bytes_max: u64,
    },
    /// Storing the command would take the store over [`KvLimits::data_bytes_max`].
    #[error("store would hold {data_bytes} bytes, over the limit of {data_bytes_max}")]
    StoreFull {
        /// Total key and value bytes the store would hold after the command.
        data_bytes: u64,
        /// The limit.
        data_bytes_max: u64,
    },
}

/// A read evaluated against local state, outside the log.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum KvQuery {
    /// The value of `key`.
    Get {
        /// The key.
        key: Vec<u8>,
    },
    /// Entries whose key starts with `prefix`, in key order, at most `limit` of them
    /// (itself clamped to [`KvLimits::range_limit_max`]).
    Range {
        /// The key prefix; empty matches every key.
        prefix: Vec<u8>,
        /// The most entries wanted.
        limit: u32,
    },
    /// The number of keys.
    Len,
}

/// What a [`KvQuery`] returns.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum KvQueryResult {
    /// Answer to [`KvQuery::Get`].
    Get {
        /// The value (`None`: absent).
        value: Option<Vec<u8>>,
    },
    /// Answer to [`KvQuery::Range`].
    Range {
        /// Matching entries in key order.
        entries: Vec<(Vec<u8>, Vec<u8>)>,
        /// Whether more matching entries exist past the returned ones.
        more: bool,
    },
    /// Answer to [`KvQuery::Len`].
    Len {
        /// Number of keys.
        keys: u64,
    },
}

/// The built-in replicated key-value store.
///
/// Keys and values are byte strings held in a `BTreeMap`, so iteration (ranges, snapshots)
/// is in key order on every replica.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KvStore {
    limits: KvLimits,
    entries: BTreeMap<Vec<u8>, Vec<u8>>,
    /// Sum of key and value lengths over `entries`; kept in step on every change.
    data_bytes: u64,
}

/// Length of a byte string as the `u64` the limits use (lossless on every Rust target).
fn len_u64(bytes: &[u8]) -> u64 {
    bytes.len() as u64
}

impl KvStore {
    /// An empty store with the default limits.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty store with `limits`.
    #[must_use]
    pub fn with_limits(limits: KvLimits) -> Self {
        Self {
            limits,
            ..Self::default()
        }
    }

    /// The limits this store enforces.
    #[must_use]
    pub fn limits(&self) -> KvLimits {
        self.limits
    }

    /// The value of `key`, if present.
    #[must_use]
    pub fn get(&self, key: &[u8]) -> Option<&[u8]> {
        self.entries.get(key).map(Vec::as_slice)
    }

    /// Number of keys.
    #[must_use]
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the store has no keys.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Sum of key and value lengths over all entries.
    #[must_use]
    pub fn data_bytes(&self) -> u64 {
        self.data_bytes
    }

    fn check_key(&self, key: &[u8]) -> Result<(), KvRejection> {
        if len_u64(key) > self.limits.key_bytes_max {
            return Err(KvRejection::KeyTooLarge {
                key_bytes: len_u64(key),
                key_bytes_max: self.limits.key_bytes_max,
            });
        }
        Ok(())
    }

    fn check_value(&self, value: &[u8]) -> Result<(), KvRejection> {
        if len_u64(value) > self.limits.value_bytes_max {
            return Err(KvRejection::ValueTooLarge {
                value_bytes: len_u64(value),
                value_bytes_max: self.limits.value_bytes_max,
            });
        }
        Ok(())
    }

    /// Checks every size in the command, whatever the state: an oversized command is
    /// rejected even when it would otherwise be a no-op (a failing CAS, say).
    fn check_command(&self, command: &KvCommand) -> Result<(), KvRejection> {
        match command {
            KvCommand::Put { key, value } | KvCommand::Append { key, value } => {
                self.check_key(key)?;
                self.check_value(value)
            }
            KvCommand::Delete { key } | KvCommand::Get { key } => self.check_key(key),
            KvCommand::CompareAndSwap { key, expected, new } => {
                self.check_key(key)?;
                if let Some(expected) = expected {
                    self.check_value(expected)?;
                }
                if let Some(new) = new {
                    self.check_value(new)?;
                }
                Ok(())
            }
        }
    }

    /// Data bytes after setting `key` to a value of `value_bytes`, or the rejection if that
    /// goes over the limit.
    fn data_bytes_after_set(&self, key: &[u8], value_bytes: u64) -> Result<u64, KvRejection> {
        let old_entry_bytes = self
            .entries
            .get(key)
            .map_or(0, |old| len_u64(key) + len_u64(old));
        // Sizes are bounded by the limits and by memory, so neither step can wrap; saturate
        // anyway so a broken limit rejects instead of panicking.
        let data_bytes = (self.data_bytes - old_entry_bytes)
            .saturating_add(len_u64(key))
            .saturating_add(value_bytes);
        if data_bytes > self.limits.data_bytes_max {
            return Err(KvRejection::StoreFull {
                data_bytes,
                data_bytes_max: self.limits.data_bytes_max,
            });
        }
        Ok(data_bytes)
    }

    fn set(&mut self, key: Vec<u8>, value: Vec<u8>) -> Result<(), KvRejection> {
        self.data_bytes = self.data_bytes_after_set(&key, len_u64(&value))?;
        self.entries.insert(key, value);
        Ok(())
    }

    fn remove(&mut self, key: &[u8]) -> bool {
        match self.entries.remove(key) {
            Some(old) => {
                self.data_bytes -= len_u64(key) + len_u64(&old);
                true
            }
            None => false,
        }
    }

    fn execute(&mut self, command: KvCommand) -> Result<KvOutput, KvRejection> {
        self.check_command(&command)?;
        let output = match command {
            KvCommand::Put { key, value } => {
                self.set(key, value)?;
                KvOutput::Put
            }
            KvCommand::Delete { key } => KvOutput::Delete {
                removed: self.remove(&key),
            },
            KvCommand::CompareAndSwap { key, expected, new } => {
                let current = self.entries.get(&key);
                if current != expected.as_ref() {
                    return Ok(KvOutput::SwapFailed {
                        current: current.cloned(),
                    });
                }
                match new {
                    Some(new) => self.set(key, new)?,
                    None => {
                        self.remove(&key);
                    }
                }
                KvOutput::Swapped
            }
            KvCommand::Append { key, value } => {
                let old_bytes = self.entries.get(&key).map_or(0, |old| len_u64(old));
                let new_bytes = old_bytes.saturating_add(len_u64(&value));
                if new_bytes > self.limits.value_bytes_max {
                    return Err(KvRejection::ValueTooLarge {
                        value_bytes: new_bytes,
                        value_bytes_max: self.limits.value_bytes_max,
                    });
                }
                self.data_bytes = self.data_bytes_after_set(&key, new_bytes)?;
                self.entries
                    .entry(key)
                    .or_default()
                    .extend_from_slice(&value);
                KvOutput::Append {
                    len_bytes: new_bytes,
                }
            }
            KvCommand::Get { key } => KvOutput::Get {
                value: self.entries.get(&key).cloned(),
            },
        };
        Ok(output)
    }

    fn range(&self, prefix: &[u8], limit: u32) -> KvQueryResult {
        let limit = limit.min(self.limits.range_limit_max) as usize;
        let mut matching = self
            .entries
            .range::<[u8], _>((Bound::Included(prefix), Bound::Unbounded))
            .take_while(|(key, _)| key.starts_with(prefix));
        let entries: Vec<(Vec<u8>, Vec<u8>)> = matching
            .by_ref()
            .take(limit)
            .map(|(key, value)| (key.clone(), value.clone()))
            .collect();
        let more = matching.next().is_some();
        KvQueryResult::Range { entries, more }
    }

    /// Asserts the internal invariants: the byte count matches the entries and every entry
    /// is within the limits. Restored state goes through the same checks as errors.
    #[cfg(test)]
    pub(crate) fn validate(&self) {
        let counted: u64 = self
            .entries
            .iter()
            .map(|(key, value)| len_u64(key) + len_u64(value))
            .sum();
        assert_eq!(counted, self.data_bytes, "data_bytes out of step");
        assert!(self.data_bytes <= self.limits.data_bytes_max);
        for (key, value) in &self.entries {
            assert!(len_u64(key) <= self.limits.key_bytes_max);
            assert!(len_u64(value) <= self.limits.value_bytes_max);
        }
    }
}

impl KvStore {
    /// The snapshot body of the current state, borrowing every key and value.
    fn snapshot_body(&self) -> KvSnapshotBody<'_> {
        KvSnapshotBody {
            entries: self
                .entries
                .iter()
                .map(|(key, value)| (key.as_slice(), value.as_slice()))
                .collect(),
        }
    }
}

/// Snapshot body: entries in strictly increasing key order, borrowed when decoding so a
/// large snapshot is not copied twice.
#[derive(Serialize, Deserialize)]
struct KvSnapshotBody<'a> {
    #[serde(borrow)]
    entries: Vec<(&'a [u8], &'a [u8])>,
}

impl StateMachine for KvStore {
    type Command = KvCommand;
    type Output = KvOutput;
    type Query = KvQuery;
    type QueryResult = KvQueryResult;

    fn signature(&self) -> [u8; 32] {
        SignatureBuilder::new(SIGNATURE_DOMAIN)
            .u64(self.limits.key_bytes_max)
            .u64(self.limits.value_bytes_max)
            .u64(self.limits.data_bytes_max)
            .u64(u64::from(self.limits.range_limit_max))
            .finish()
    }

    fn apply(&mut self, command: KvCommand, _ctx: &ApplyContext) -> KvOutput {
        // Every rejection is decided before any change, so a rejected command leaves the
        // state exactly as it was.
        self.execute(command).unwrap_or_else(KvOutput::Rejected)
    }

    fn query(&self, query: &KvQuery) -> KvQueryResult {
        match query {
            KvQuery::Get { key } => KvQueryResult::Get {
                value: self.entries.get(key).cloned(),
            },
            KvQuery::Range { prefix, limit } => self.range(prefix, *limit),
            KvQuery::Len => KvQueryResult::Len {
                keys: self.entries.len() as u64,
            },
        }
    }

    fn snapshot(&self) -> Result<Vec<u8>, SnapshotError> {
        encode_snapshot(
            SNAPSHOT_FORMAT_VERSION,
            self.signature(),
            &self.snapshot_body(),
        )
    }

    fn restore(&mut self, snapshot: &[u8]) -> Result<(), SnapshotError> {
        let body: KvSnapshotBody<'_> =
            decode_snapshot(snapshot, SNAPSHOT_FORMAT_VERSION, &self.signature())?;
        let invalid = |reason: String| SnapshotError::Invalid { reason };
        let mut entries = BTreeMap::new();
        let mut data_bytes: u64 = 0;
        let mut previous: Option<&[u8]> = None;
        for (key, value) in body.entries {
            // Strict order makes the encoding canonical: a snapshot that restores is
            // byte-for-byte what `snapshot()` would write.
            if previous.is_some_and(|previous| previous >= key) {
                return Err(invalid("keys are not in strictly increasing order".into()));
            }
            previous = Some(key);
            self.check_key(key)
                .and_then(|()| self.check_value(value))
                .map_err(|rejection| invalid(rejection.to_string()))?;
            data_bytes = data_bytes
                .saturating_add(len_u64(key))
                .saturating_add(len_u64(value));
            if data_bytes > self.limits.data_bytes_max {
                return Err(invalid(format!(
                    "entries exceed the data limit of {} bytes",
                    self.limits.data_bytes_max
                )));
            }
            entries.insert(key.to_vec(), value.to_vec());
        }
        let restored = Self {
            limits: self.limits,
            entries,
            data_bytes,
        };
        // The decoder accepts some non-canonical forms (overlong varints); refuse them so
        // that equal state always means equal snapshot bytes.
        let body = restored.snapshot_body();
        if !encodes_exactly(SNAPSHOT_FORMAT_VERSION, self.signature(), &body, snapshot)? {
            return Err(invalid("non-canonical encoding".into()));
        }
        drop(body);
        *self = restored;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::machine::SnapshotError;

    const CTX: ApplyContext = ApplyContext {
        index: 1,
        term: 1,
        timestamp_ms: 1_700_000_000_000,
    };

    fn b(s: &str) -> Vec<u8> {
        s.as_bytes().to_vec()
    }

    fn put(key: &str, value: &str) -> KvCommand {
        KvCommand::Put {
            key: b(key),
            value: b(value),
        }
    }

    fn cas(key: &str, expected: Option<&str>, new: Option<&str>) -> KvCommand {
        KvCommand::CompareAndSwap {
            key: b(key),
            expected: expected.map(b),
            new: new.map(b),
        }
    }

    fn get(kv: &mut KvStore, key: &str) -> KvOutput {
        kv.apply(KvCommand::Get { key: b(key) }, &CTX)
    }

    fn value(v: &str) -> KvOutput {
        KvOutput::Get { value: Some(b(v)) }
    }

    const ABSENT: KvOutput = KvOutput::Get { value: None };

    fn small_limits() -> KvLimits {
        KvLimits {
            key_bytes_max: 4,
            value_bytes_max: 8,
            data_bytes_max: 20,
            range_limit_max: 3,
        }
    }

    #[test]
    fn put_then_get_reads_the_value_and_get_of_absent_key_is_none() {
        let mut kv = KvStore::new();
        assert_eq!(get(&mut kv, "a"), ABSENT);
        assert_eq!(kv.apply(put("a", "1"), &CTX), KvOutput::Put);
        assert_eq!(get(&mut kv, "a"), value("1"));
        assert_eq!(kv.apply(put("a", "2"), &CTX), KvOutput::Put);
        assert_eq!(get(&mut kv, "a"), value("2"));
        assert_eq!(
            kv.query(&KvQuery::Get { key: b("a") }),
            KvQueryResult::Get {
                value: Some(b("2"))
            }
        );
        assert_eq!(
            kv.query(&KvQuery::Get { key: b("b") }),
            KvQueryResult::Get { value: None }
        );
        kv.validate();
    }

    #[test]
    fn delete_reports_whether_it_removed_something() {
        let mut kv = KvStore::new();
        kv.apply(put("a", "1"), &CTX);
        let delete = KvCommand::Delete { key: b("a") };
        assert_eq!(
            kv.apply(delete.clone(), &CTX),
            KvOutput::Delete { removed: true }
        );
        assert_eq!(get(&mut kv, "a"), ABSENT);
        assert_eq!(kv.apply(delete, &CTX), KvOutput::Delete { removed: false });
        assert!(kv.is_empty());
        assert_eq!(kv.data_bytes(), 0);
    }

    #[test]
    fn cas_on_matching_value_swaps() {
        let mut kv = KvStore::new();
        kv.apply(put("a", "1"), &CTX);
        assert_eq!(
            kv.apply(cas("a", Some("1"), Some("2")), &CTX),
            KvOutput::Swapped
        );
        assert_eq!(get(&mut kv, "a"), value("2"));
    }

    #[test]
    fn cas_on_other_value_fails_with_the_current_value_and_changes_nothing() {
        let mut kv = KvStore::new();
        kv.apply(put("a", "1"), &CTX);
        let before = kv.clone();
        assert_eq!(
            kv.apply(cas("a", Some("9"), Some("2")), &CTX),
            KvOutput::SwapFailed {
                current: Some(b("1"))
            }
        );
        assert_eq!(kv, before);
    }

    #[test]
    fn cas_expecting_absent_creates_an_absent_key() {
        let mut kv = KvStore::new();
        assert_eq!(kv.apply(cas("a", None, Some("1")), &CTX), KvOutput::Swapped);
        assert_eq!(get(&mut kv, "a"), value("1"));
    }

    #[test]
    fn cas_expecting_absent_fails_on_a_present_key() {
        let mut kv = KvStore::new();
        kv.apply(put("a", "1"), &CTX);
        assert_eq!(
            kv.apply(cas("a", None, Some("2")), &CTX),
            KvOutput::SwapFailed {
                current: Some(b("1"))
            }
        );
        assert_eq!(get(&mut kv, "a"), value("1"));
    }

    #[test]
    fn cas_expecting_a_value_fails_on_an_absent_key() {
        let mut kv = KvStore::new();
        assert_eq!(
            kv.apply(cas("a", Some("1"), Some("2")), &CTX),
            KvOutput::SwapFailed { current: None }
        );
        assert!(kv.is_empty());
    }

    #[test]
    fn cas_expecting_empty_value_does_not_match_absent_key() {
        let mut kv = KvStore::new();
        assert_eq!(
            kv.apply(cas("a", Some(""), Some("1")), &CTX),
            KvOutput::SwapFailed { current: None }
        );
        kv.apply(put("a", ""), &CTX);
        assert_eq!(
            kv.apply(cas("a", None, Some("1")), &CTX),
            KvOutput::SwapFailed {
                current: Some(Vec::new())
            }
        );
        assert_eq!(
            kv.apply(cas("a", Some(""), Some("1")), &CTX),
            KvOutput::Swapped
        );
    }

    #[test]
    fn cas_with_new_none_deletes() {
        let mut kv = KvStore::new();
        kv.apply(put("a", "1"), &CTX);
        assert_eq!(kv.apply(cas("a", Some("1"), None), &CTX), KvOutput::Swapped);
        assert_eq!(get(&mut kv, "a"), ABSENT);
        assert_eq!(kv.data_bytes(), 0);
        // Absent → absent is a successful swap that changes nothing.
        assert_eq!(kv.apply(cas("a", None, None), &CTX), KvOutput::Swapped);
        assert!(kv.is_empty());
    }

    #[test]
    fn append_concatenates_and_a_missing_key_counts_as_empty() {
        let mut kv = KvStore::new();
        let append = |v: &str| KvCommand::Append {
            key: b("log"),
            value: b(v),
        };
        assert_eq!(
            kv.apply(append("ab"), &CTX),
            KvOutput::Append { len_bytes: 2 }
        );
        assert_eq!(
            kv.apply(append("cd"), &CTX),
            KvOutput::Append { len_bytes: 4 }
        );
        assert_eq!(get(&mut kv, "log"), value("abcd"));
        // An empty append to a missing key creates it, empty.
        assert_eq!(
            kv.apply(
                KvCommand::Append {
                    key: b("e"),
                    value: Vec::new()
                },
                &CTX
            ),
            KvOutput::Append { len_bytes: 0 }
        );
        assert_eq!(
            get(&mut kv, "e"),
            KvOutput::Get {
                value: Some(Vec::new())
            }
        );
        kv.validate();
    }

    #[test]
    fn range_returns_prefix_matches_in_order_up_to_the_limit() {
        let mut kv = KvStore::new();
        for key in ["a", "a/1", "a/2", "a/3", "a0", "b/1", "a/"] {
            kv.apply(put(key, key), &CTX);
        }
        let range = |prefix: &str, limit| {
            kv.query(&KvQuery::Range {
                prefix: b(prefix),
                limit,
            })
        };
        let pairs = |keys: &[&str]| -> Vec<(Vec<u8>, Vec<u8>)> {
            keys.iter().map(|k| (b(k), b(k))).collect()
        };
        assert_eq!(
            range("a/", 10),
            KvQueryResult::Range {
                entries: pairs(&["a/", "a/1", "a/2", "a/3"]),
                more: false
            }
        );
        assert_eq!(
            range("a/", 2),
            KvQueryResult::Range {
                entries: pairs(&["a/", "a/1"]),
                more: true
            }
        );
        // Exactly as many matches as the limit: nothing more.
        assert_eq!(
            range("a/", 4),
            KvQueryResult::Range {
                entries: pairs(&["a/", "a/1", "a/2", "a/3"]),
                more: false
            }
        );
        assert_eq!(
            range("a/", 0),
            KvQueryResult::Range {
                entries: Vec::new(),
                more: true
            }
        );
        assert_eq!(
            range("c", 10),
            KvQueryResult::Range {
                entries: Vec::new(),
                more: false
            }
        );
        assert_eq!(
            range("", 100),
            KvQueryResult::Range {
                entries: pairs(&["a", "a/", "a/1", "a/2", "a/3", "a0", "b/1"]),
                more: false
            }
        );
        assert_eq!(kv.query(&KvQuery::Len), KvQueryResult::Len { keys: 7 });
    }

    #[test]
    fn range_limit_is_clamped_to_the_named_maximum() {
        let mut kv = KvStore::with_limits(small_limits());
        for key in ["k1", "k2", "k3", "k4"] {
            assert_eq!(kv.apply(put(key, ""), &CTX), KvOutput::Put);
        }
        assert_eq!(
            kv.query(&KvQuery::Range {
                prefix: b("k"),
                limit: u32::MAX
            }),
            KvQueryResult::Range {
                entries: ["k1", "k2", "k3"]
                    .iter()
                    .map(|k| (b(k), Vec::new()))
                    .collect(),
                more: true
            }
        );
    }

    /// Every command kind carrying an oversized key is rejected the same way, and changes
    /// nothing; a key exactly at the limit is accepted.
    #[test]
    fn oversized_key_is_rejected_by_every_command() {
        let mut kv = KvStore::with_limits(small_limits());
        kv.apply(put("k", "v"), &CTX);
        let before = kv.clone();
        let long = "12345";
        let commands = [
            put(long, "v"),
            KvCommand::Delete { key: b(long) },
            cas(long, None, Some("v")),
            KvCommand::Append {
                key: b(long),
                value: b("v"),
            },
            KvCommand::Get { key: b(long) },
        ];
        let expected = KvOutput::Rejected(KvRejection::KeyTooLarge {
            key_bytes: 5,
            key_bytes_max: 4,
        });
        for command in commands {
            assert_eq!(kv.apply(command.clone(), &CTX), expected, "{command:?}");
            assert_eq!(kv, before, "{command:?} changed the state");
        }
        assert_eq!(kv.apply(put("1234", "v"), &CTX), KvOutput::Put);
    }

    #[test]
    fn oversized_value_is_rejected_and_the_limit_itself_is_accepted() {
        let mut kv = KvStore::with_limits(small_limits());
        let too_large = KvOutput::Rejected(KvRejection::ValueTooLarge {
            value_bytes: 9,
            value_bytes_max: 8,
        });
        assert_eq!(kv.apply(put("k", "123456789"), &CTX), too_large);
        assert_eq!(kv.apply(cas("k", Some("123456789"), None), &CTX), too_large);
        assert_eq!(kv.apply(cas("k", None, Some("123456789")), &CTX), too_large);
        assert!(kv.is_empty());
        assert_eq!(kv.apply(put("k", "12345678"), &CTX), KvOutput::Put);
    }

    #[test]
    fn append_past_the_value_limit_is_rejected_and_keeps_the_old_value() {
        let mut kv = KvStore::with_limits(small_limits());
        let append = |v: &str| KvCommand::Append {
            key: b("k"),
            value: b(v),
        };
        assert_eq!(
            kv.apply(append("12345"), &CTX),
            KvOutput::Append { len_bytes: 5 }
        );
        assert_eq!(
            kv.apply(append("6789"), &CTX),
            KvOutput::Rejected(KvRejection::ValueTooLarge {
                value_bytes: 9,
                value_bytes_max: 8
            })
        );
        assert_eq!(get(&mut kv, "k"), value("12345"));
        assert_eq!(
            kv.apply(append("678"), &CTX),
            KvOutput::Append { len_bytes: 8 }
        );
    }

    #[test]
    fn a_full_store_rejects_growth_but_allows_shrinking() {
        // data_bytes_max = 20: two entries of 1 + 8 bytes fill 18.
        let mut kv = KvStore::with_limits(small_limits());
        assert_eq!(kv.apply(put("a", "12345678"), &CTX), KvOutput::Put);
        assert_eq!(kv.apply(put("b", "12345678"), &CTX), KvOutput::Put);
        assert_eq!(
            kv.apply(put("c", "12"), &CTX),
            KvOutput::Rejected(KvRejection::StoreFull {
                data_bytes: 21,
                data_bytes_max: 20
            })
        );
        assert_eq!(
            kv.apply(cas("c", None, Some("12")), &CTX),
            KvOutput::Rejected(KvRejection::StoreFull {
                data_bytes: 21,
                data_bytes_max: 20
            })
        );
        // Replacing a value counts only the difference.
        assert_eq!(kv.apply(put("a", "1"), &CTX), KvOutput::Put);
        assert_eq!(kv.data_bytes(), 11);
        assert_eq!(kv.apply(put("c", "12"), &CTX), KvOutput::Put);
        assert_eq!(
            kv.apply(KvCommand::Delete { key: b("b") }, &CTX),
            KvOutput::Delete { removed: true }
        );
        assert_eq!(kv.data_bytes(), 5);
        kv.validate();
    }

    #[test]
    fn signature_is_stable_and_covers_every_limit() {
        let base = KvStore::new().signature();
        assert_eq!(base, KvStore::new().signature());
        let d = KvLimits::default();
        let variants = [
            KvLimits {
                key_bytes_max: d.key_bytes_max + 1,
                ..d
            },
            KvLimits {
                value_bytes_max: d.value_bytes_max + 1,
                ..d
            },
            KvLimits {
                data_bytes_max: d.data_bytes_max + 1,
                ..d
            },
            KvLimits {
                range_limit_max: d.range_limit_max + 1,
                ..d
            },
        ];
        for limits in variants {
            assert_ne!(KvStore::with_limits(limits).signature(), base, "{limits:?}");
        }
    }

    fn sample() -> KvStore {
        let mut kv = KvStore::new();
        kv.apply(put("a", "1"), &CTX);
        kv.apply(put("b", ""), &CTX);
        kv.apply(put("", "empty key"), &CTX);
        kv
    }

    #[test]
    fn snapshot_restore_round_trip_gives_an_equal_store() {
        let kv = sample();
        let bytes = kv.snapshot().expect("snapshot");
        let mut restored = KvStore::new();
        restored.apply(put("stale", "gone after restore"), &CTX);
        restored.restore(&bytes).expect("restore");
        assert_eq!(restored, kv);
        assert_eq!(restored.snapshot().expect("snapshot"), bytes);
        restored.validate();
    }

    #[test]
    fn restore_of_garbage_or_truncated_bytes_is_an_error_and_changes_nothing() {
        let bytes = sample().snapshot().expect("snapshot");
        let mut kv = KvStore::new();
        kv.apply(put("keep", "me"), &CTX);
        let before = kv.clone();
        for len in 0..bytes.len() {
            assert!(kv.restore(&bytes[..len]).is_err(), "prefix of {len} bytes");
        }
        let mut trailing = bytes.clone();
        trailing.push(0);
        assert!(matches!(
            kv.restore(&trailing),
            Err(SnapshotError::Decode { .. })
        ));
        assert!(kv.restore(&[0xff; 64]).is_err());
        assert_eq!(kv, before);
    }

    #[test]
    fn restore_refuses_a_snapshot_taken_with_other_limits() {
        let bytes = sample().snapshot().expect("snapshot");
        let mut kv = KvStore::with_limits(small_limits());
        assert!(matches!(
            kv.restore(&bytes),
            Err(SnapshotError::SignatureMismatch { .. })
        ));
    }

    #[test]
    fn restore_refuses_another_format_version() {
        let mut bytes = sample().snapshot().expect("snapshot");
        // The header starts with the version, a one-byte varint for small values.
        bytes[0] = 2;
        assert_eq!(
            KvStore::new().restore(&bytes),
            Err(SnapshotError::UnsupportedVersion {
                expected: 1,
                found: 2
            })
        );
    }

    fn forged(entries: Vec<(&[u8], &[u8])>) -> Vec<u8> {
        let kv = KvStore::new();
        encode_snapshot(
            SNAPSHOT_FORMAT_VERSION,
            kv.signature(),
            &KvSnapshotBody { entries },
        )
        .expect("encode")
    }

    #[test]
    fn restore_refuses_unordered_or_duplicate_keys() {
        let valid = forged(vec![(b"a", b"1"), (b"b", b"2")]);
        assert!(KvStore::new().restore(&valid).is_ok());
        for entries in [
            vec![(&b"b"[..], &b"2"[..]), (b"a", b"1")],
            vec![(b"a", b"1"), (b"a", b"2")],
        ] {
            assert!(matches!(
                KvStore::new().restore(&forged(entries)),
                Err(SnapshotError::Invalid { .. })
            ));
        }
    }

    #[test]
    fn restore_refuses_a_non_canonical_encoding_of_valid_state() {
        let canonical = forged(vec![(b"a", b"1")]);
        assert!(KvStore::new().restore(&canonical).is_ok());
        // Byte 33 (after the version byte and the 32-byte signature) is the entry count, 1;
        // 0x81 0x00 is an overlong varint for the same 1.
        assert_eq!(canonical[33], 1);
        let mut overlong = canonical.clone();
        overlong[33] = 0x81;
        overlong.insert(34, 0x00);
        assert!(matches!(
            KvStore::new().restore(&overlong),
            Err(SnapshotError::Invalid { .. })
        ));
    }

    #[test]
    fn restore_refuses_entries_over_the_limits() {
        let long_key = vec![b'k'; KEY_BYTES_MAX_DEFAULT as usize + 1];
        let bytes = forged(vec![(&long_key, b"v")]);
        assert!(matches!(
            KvStore::new().restore(&bytes),
            Err(SnapshotError::Invalid { .. })
        ));
        let key_at_limit = vec![b'k'; KEY_BYTES_MAX_DEFAULT as usize];
        assert!(KvStore::new()
            .restore(&forged(vec![(&key_at_limit, b"v")]))
            .is_ok());
    }
}
