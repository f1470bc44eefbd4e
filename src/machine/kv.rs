//! The built-in key-value store: byte-string keys and values in an ordered map.
//!
//! Every command is checked against named [`KvLimits`] before it touches the map; a command
//! over a limit becomes a [`KvOutput::Rejected`] output that every replica computes the same
//! way, so an oversized request costs one log entry and changes nothing.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, BufWriter, Read, Write};
use std::ops::Bound;

use serde::{Deserialize, Serialize};

use super::stream::{
    expect_end, read_bytes, read_header, read_varint, write_bytes, write_header, write_varint,
};
use super::{ApplyContext, SignatureBuilder, SnapshotError, StateMachine};

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

    fn apply(&mut self, command: KvCommand, _ctx: &ApplyContext<'_>) -> KvOutput {
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
        // About the size (the data, at least two length bytes per entry, the header), so
        // that a large store is not copied through a chain of doubling buffers.
        let capacity = usize::try_from(self.data_bytes)
            .unwrap_or(0)
            .saturating_add(self.entries.len().saturating_mul(2))
            .saturating_add(64);
        let mut out = Vec::with_capacity(capacity);
        self.snapshot_to(&mut out)?;
        Ok(out)
    }

    fn restore(&mut self, snapshot: &[u8]) -> Result<(), SnapshotError> {
        self.restore_from(&mut &snapshot[..])
    }

    /// Writes the header, then the entries as postcard encodes a `Vec<(&[u8], &[u8])>`:
    /// the entry count, then each key and value as varint length and bytes, in key order.
    ///
    /// Entry by entry through a buffer of `IO_BUFFER_BYTES`, so memory does not grow with
    /// the store.
    fn snapshot_to(&self, out: &mut dyn Write) -> Result<(), SnapshotError> {
        let mut out = BufWriter::with_capacity(IO_BUFFER_BYTES, out);
        write_header(&mut out, SNAPSHOT_FORMAT_VERSION, &self.signature())?;
        // usize → u64 is lossless on every target Rust supports.
        write_varint(&mut out, self.entries.len() as u64)?;
        for (key, value) in &self.entries {
            write_bytes(&mut out, key)?;
            write_bytes(&mut out, value)?;
        }
        out.flush()
            .map_err(SnapshotError::io("writing the snapshot"))
    }

    /// Decodes the entries as they are read, checking every length against the limits
    /// before reading (or allocating for) what it announces.
    ///
    /// The decoding is canonical: varints in their shortest form, keys strictly increasing
    /// and nothing after the last entry. So a snapshot that restores is byte-for-byte what
    /// [`snapshot`](StateMachine::snapshot) writes for the restored state, and equal state
    /// always means equal snapshot bytes.
    fn restore_from(&mut self, input: &mut dyn Read) -> Result<(), SnapshotError> {
        let mut input = BufReader::with_capacity(IO_BUFFER_BYTES, input);
        read_header(&mut input, SNAPSHOT_FORMAT_VERSION, &self.signature())?;
        let restored = self.read_entries(&mut input)?;
        expect_end(&mut input)?;
        *self = restored;
        Ok(())
    }
}

/// Buffer size for writing and reading snapshots: large enough that an unbuffered file
/// sees few system calls, small next to any state worth streaming.
const IO_BUFFER_BYTES: usize = 64 * 1024;

impl KvStore {
    /// Reads the entries of a snapshot (after its header) into a new store with this
    /// store's limits, refusing whatever restored state would break them.
    ///
    /// Memory is bounded by the limits, not by the counts the input announces: a length is
    /// checked before its bytes are read, and the entry count is never used to allocate.
    /// The number of entries is itself bounded by `data_bytes_max + 1`, because keys are
    /// distinct, so all but one (the empty key) have at least one byte.
    fn read_entries<R: BufRead>(&self, input: &mut R) -> Result<Self, SnapshotError> {
        let invalid = |reason: String| SnapshotError::Invalid { reason };
        let limits = self.limits;
        let count = read_varint(input, "the entry count")?;
        if count > limits.data_bytes_max.saturating_add(1) {
            return Err(invalid(format!(
                "{count} entries cannot have distinct keys within the data limit of {} \
                 bytes",
                limits.data_bytes_max
            )));
        }
        // Adds `len` to the running total, refusing to go over the data limit.
        let add = |data_bytes: u64, len: u64| {
            let total = data_bytes.saturating_add(len);
            if total > limits.data_bytes_max {
                return Err(invalid(format!(
                    "entries exceed the data limit of {} bytes",
                    limits.data_bytes_max
                )));
            }
            Ok(total)
        };
        let mut entries: BTreeMap<Vec<u8>, Vec<u8>> = BTreeMap::new();
        let mut data_bytes: u64 = 0;
        for _ in 0..count {
            let key_bytes = read_varint(input, "a key length")?;
            if key_bytes > limits.key_bytes_max {
                return Err(invalid(
                    KvRejection::KeyTooLarge {
                        key_bytes,
                        key_bytes_max: limits.key_bytes_max,
                    }
                    .to_string(),
                ));
            }
            data_bytes = add(data_bytes, key_bytes)?;
            let key = read_bytes(input, key_bytes, "a key")?;
            // Strict order makes the encoding canonical (and every insertion below an append).
            if entries
                .last_key_value()
                .is_some_and(|(previous, _)| *previous >= key)
            {
                return Err(invalid("keys are not in strictly increasing order".into()));
            }
            let value_bytes = read_varint(input, "a value length")?;
            if value_bytes > limits.value_bytes_max {
                return Err(invalid(
                    KvRejection::ValueTooLarge {
                        value_bytes,
                        value_bytes_max: limits.value_bytes_max,
                    }
                    .to_string(),
                ));
            }
            data_bytes = add(data_bytes, value_bytes)?;
            let value = read_bytes(input, value_bytes, "a value")?;
            entries.insert(key, value);
        }
        Ok(Self {
            limits,
            entries,
            data_bytes,
        })
    }
}

#[cfg(test)]
mod tests;
