//! A key-value store model: byte-string keys and values, checked one key at a time.

use std::collections::BTreeMap;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use super::hash::hash_of;
use super::model::{Model, Operation};

/// What a client asks the store.
#[derive(Clone, PartialEq, Eq, Hash)]
pub enum KvInput {
    /// Read the key's value.
    Get {
        /// The key.
        key: Vec<u8>,
    },
    /// Set the key's value.
    Put {
        /// The key.
        key: Vec<u8>,
        /// The new value.
        value: Vec<u8>,
    },
    /// Concatenate `value` to the key's value; a missing key counts as empty.
    Append {
        /// The key.
        key: Vec<u8>,
        /// The bytes to append.
        value: Vec<u8>,
    },
    /// Remove the key.
    Delete {
        /// The key.
        key: Vec<u8>,
    },
    /// Set the key to `new` if its value is `expected` (`None`: the key is missing).
    Cas {
        /// The key.
        key: Vec<u8>,
        /// The value required for the swap; `None` requires the key to be missing.
        expected: Option<Vec<u8>>,
        /// The value after a successful swap.
        new: Vec<u8>,
    },
}

impl KvInput {
    /// The key the operation touches.
    pub fn key(&self) -> &[u8] {
        match self {
            Self::Get { key }
            | Self::Put { key, .. }
            | Self::Append { key, .. }
            | Self::Delete { key }
            | Self::Cas { key, .. } => key,
        }
    }
}

/// What the client got back.
#[derive(Clone, PartialEq, Eq, Hash)]
pub enum KvOutput {
    /// The value read, `None` if the key was missing.
    Get(Option<Vec<u8>>),
    /// The put was applied.
    Put,
    /// The append was applied.
    Append,
    /// The delete was applied.
    Delete,
    /// The compare-and-swap completed; `true` if it swapped.
    Cas(bool),
    /// The client never learned the outcome (timeout, crash): the operation may or may
    /// not have taken effect, at any time after its call.
    Unknown,
}

/// The value of one key in the model (`None`: missing).
///
/// The search clones and hashes a state on every step, so the bytes are shared and their
/// hash is computed once, when the value is made.
#[derive(Clone, Default)]
pub struct KvState {
    value: Option<Arc<[u8]>>,
    hash: u64,
}

impl KvState {
    /// A state holding `value`, or a missing key.
    pub fn new(value: Option<&[u8]>) -> Self {
        Self {
            hash: hash_of(&value),
            value: value.map(Arc::from),
        }
    }

    /// The value, `None` if the key is missing.
    pub fn value(&self) -> Option<&[u8]> {
        self.value.as_deref()
    }
}

impl PartialEq for KvState {
    fn eq(&self, other: &Self) -> bool {
        self.hash == other.hash
            && match (&self.value, &other.value) {
                (Some(a), Some(b)) => Arc::ptr_eq(a, b) || a == b,
                (None, None) => true,
                _ => false,
            }
    }
}

impl Eq for KvState {}

impl Hash for KvState {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_u64(self.hash);
    }
}

impl fmt::Debug for KvState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.value() {
            Some(value) => Bytes(value).fmt(f),
            None => f.write_str("missing"),
        }
    }
}

/// The key-value store specification, partitioned per key: the model state is the value
/// of one key ([`KvState`]).
///
/// An output of the wrong kind for its input (a `Put` answered with `Get(..)`) is
/// impossible from every state, so it makes the history non-linearizable.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KvModel {
    absent_equals_empty: bool,
}

impl KvModel {
    /// A store that tells a missing key from one holding the empty value, like
    /// tessera's own key-value machine.
    pub const fn new() -> Self {
        Self {
            absent_equals_empty: false,
        }
    }

    /// A store where a missing key and the empty value are the same thing, as in
    /// Porcupine's key-value model (the `kv/` test vectors): a key holding the empty
    /// value is missing, reads of it return `None`, and `Cas` compares accordingly.
    pub const fn absent_equals_empty() -> Self {
        Self {
            absent_equals_empty: true,
        }
    }

    /// The state holding `value`, with the empty value made missing if they are the
    /// same thing in this model.
    fn state(&self, value: Option<&[u8]>) -> KvState {
        match value {
            Some(v) if self.absent_equals_empty && v.is_empty() => KvState::new(None),
            other => KvState::new(other),
        }
    }

    fn same(&self, a: Option<&[u8]>, b: Option<&[u8]>) -> bool {
        if self.absent_equals_empty {
            a.unwrap_or_default() == b.unwrap_or_default()
        } else {
            a == b
        }
    }
}

impl Model for KvModel {
    type State = KvState;
    type Input = KvInput;
    type Output = KvOutput;

    fn init(&self) -> KvState {
        KvState::new(None)
    }

    fn step(&self, state: &KvState, input: &KvInput, output: &KvOutput) -> Option<KvState> {
        let unknown = *output == KvOutput::Unknown;
        let kind_matches = |expected: KvOutput| unknown || *output == expected;
        match input {
            KvInput::Get { .. } => match output {
                KvOutput::Get(read) if self.same(read.as_deref(), state.value()) => {
                    Some(state.clone())
                }
                _ if unknown => Some(state.clone()),
                _ => None,
            },
            KvInput::Put { value, .. } => {
                kind_matches(KvOutput::Put).then(|| self.state(Some(value)))
            }
            KvInput::Append { value, .. } => kind_matches(KvOutput::Append).then(|| {
                let old = state.value().unwrap_or_default();
                let mut joined = Vec::with_capacity(old.len() + value.len());
                joined.extend_from_slice(old);
                joined.extend_from_slice(value);
                self.state(Some(&joined))
            }),
            KvInput::Delete { .. } => kind_matches(KvOutput::Delete).then(|| self.state(None)),
            KvInput::Cas { expected, new, .. } => {
                let matches = self.same(expected.as_deref(), state.value());
                let consistent = match output {
                    KvOutput::Cas(swapped) => *swapped == matches,
                    _ => unknown,
                };
                consistent.then(|| {
                    if matches {
                        self.state(Some(new))
                    } else {
                        state.clone()
                    }
                })
            }
        }
    }

    fn output_is_unknown(&self, output: &KvOutput) -> bool {
        *output == KvOutput::Unknown
    }

    /// One partition per key, in key order.
    fn partition(&self, history: &[Operation<KvInput, KvOutput>]) -> Vec<Vec<usize>> {
        let mut by_key: BTreeMap<&[u8], Vec<usize>> = BTreeMap::new();
        for (index, op) in history.iter().enumerate() {
            by_key.entry(op.input.key()).or_default().push(index);
        }
        by_key.into_values().collect()
    }
}

/// Shows bytes as an escaped string literal, so explanations stay readable.
pub(crate) struct Bytes<'a>(pub(crate) &'a [u8]);

impl fmt::Debug for Bytes<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "\"{}\"", self.0.escape_ascii())
    }
}

struct OptBytes<'a>(Option<&'a [u8]>);

impl fmt::Debug for OptBytes<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(bytes) => write!(f, "Some({:?})", Bytes(bytes)),
            None => f.write_str("None"),
        }
    }
}

impl fmt::Debug for KvInput {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Get { key } => f.debug_struct("Get").field("key", &Bytes(key)).finish(),
            Self::Put { key, value } => f
                .debug_struct("Put")
                .field("key", &Bytes(key))
                .field("value", &Bytes(value))
                .finish(),
            Self::Append { key, value } => f
                .debug_struct("Append")
                .field("key", &Bytes(key))
                .field("value", &Bytes(value))
                .finish(),
            Self::Delete { key } => f.debug_struct("Delete").field("key", &Bytes(key)).finish(),
            Self::Cas { key, expected, new } => f
                .debug_struct("Cas")
                .field("key", &Bytes(key))
                .field("expected", &OptBytes(expected.as_deref()))
                .field("new", &Bytes(new))
                .finish(),
        }
    }
}

impl fmt::Debug for KvOutput {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Get(value) => write!(f, "Get({:?})", OptBytes(value.as_deref())),
            Self::Put => f.write_str("Put"),
            Self::Append => f.write_str("Append"),
            Self::Delete => f.write_str("Delete"),
            Self::Cas(swapped) => write!(f, "Cas({swapped})"),
            Self::Unknown => f.write_str("Unknown"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn get(key: &str) -> KvInput {
        KvInput::Get { key: key.into() }
    }

    fn cas(expected: Option<&str>, new: &str) -> KvInput {
        KvInput::Cas {
            key: b"k".to_vec(),
            expected: expected.map(Into::into),
            new: new.into(),
        }
    }

    fn state(value: Option<&str>) -> KvState {
        KvState::new(value.map(str::as_bytes))
    }

    fn read(value: Option<&str>) -> KvOutput {
        KvOutput::Get(value.map(|v| v.as_bytes().to_vec()))
    }

    #[test]
    fn strict_model_tells_missing_from_empty() {
        let m = KvModel::new();
        let (missing, empty) = (state(None), state(Some("")));
        assert_eq!(
            m.step(&missing, &get("k"), &read(None)),
            Some(missing.clone())
        );
        assert_eq!(m.step(&missing, &get("k"), &read(Some(""))), None);
        assert_eq!(m.step(&empty, &get("k"), &read(None)), None);
        assert_eq!(
            m.step(&missing, &cas(None, "a"), &KvOutput::Cas(true)),
            Some(state(Some("a")))
        );
        assert_eq!(m.step(&empty, &cas(None, "a"), &KvOutput::Cas(true)), None);
        assert_eq!(
            m.step(&empty, &cas(None, "a"), &KvOutput::Cas(false)),
            Some(empty)
        );
    }

    #[test]
    fn porcupine_model_merges_missing_and_empty() {
        let m = KvModel::absent_equals_empty();
        let put_empty = KvInput::Put {
            key: b"k".to_vec(),
            value: Vec::new(),
        };
        assert_eq!(
            m.step(&state(Some("x")), &put_empty, &KvOutput::Put),
            Some(state(None))
        );
        assert_eq!(
            m.step(&state(None), &get("k"), &read(Some(""))),
            Some(state(None))
        );
        assert_eq!(
            m.step(&state(None), &cas(Some(""), "a"), &KvOutput::Cas(true)),
            Some(state(Some("a")))
        );
        assert_eq!(m.step(&state(Some("a")), &get("k"), &read(None)), None);
    }

    #[test]
    fn append_concatenates_and_unknown_applies_the_effect() {
        let m = KvModel::new();
        let append = |v: &str| KvInput::Append {
            key: b"k".to_vec(),
            value: v.into(),
        };
        let s = m
            .step(&state(None), &append("ab"), &KvOutput::Append)
            .unwrap_or_default();
        assert_eq!(s, state(Some("ab")));
        assert_eq!(
            m.step(&s, &append("c"), &KvOutput::Unknown),
            Some(state(Some("abc")))
        );
        assert_eq!(
            m.step(&s, &append("c"), &KvOutput::Put),
            None,
            "wrong output kind"
        );
        assert_eq!(
            m.step(&state(Some("a")), &cas(Some("a"), "b"), &KvOutput::Unknown),
            Some(state(Some("b")))
        );
        assert_eq!(
            m.step(&state(Some("z")), &cas(Some("a"), "b"), &KvOutput::Unknown),
            Some(state(Some("z")))
        );
        let delete = KvInput::Delete { key: b"k".to_vec() };
        assert_eq!(m.step(&s, &delete, &KvOutput::Delete), Some(state(None)));
        assert_eq!(format!("{s:?} {:?}", state(None)), r#""ab" missing"#);
    }

    #[test]
    fn partitions_by_key_in_key_order() {
        let op = |key: &str| Operation {
            client_id: 0,
            input: get(key),
            call: 0,
            output: KvOutput::Get(None),
            return_time: 1,
        };
        let history = [op("b"), op("a"), op("b")];
        assert_eq!(
            KvModel::new().partition(&history),
            vec![vec![1], vec![0, 2]]
        );
    }

    #[test]
    fn debug_shows_bytes_as_text() {
        let input = KvInput::Put {
            key: b"k\n".to_vec(),
            value: b"v".to_vec(),
        };
        assert_eq!(format!("{input:?}"), r#"Put { key: "k\n", value: "v" }"#);
        assert_eq!(
            format!("{:?}", KvOutput::Get(Some(b"x".to_vec()))),
            r#"Get(Some("x"))"#
        );
    }
}
