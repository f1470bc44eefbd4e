//! The set of linearized operations of a partition, with an incrementally maintained hash.

use super::hash::mix64;

/// A fixed-size set of operation indices, `0..len`.
///
/// Keeps a Zobrist hash (xor of one pseudo-random word per member) up to date on every
/// insert and remove, so the search can hash the set in O(1) instead of O(len / 64).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Bitset {
    words: Vec<u64>,
    zobrist: u64,
}

impl Bitset {
    /// The empty set over `0..len`.
    pub(crate) fn new(len: usize) -> Self {
        Self {
            words: vec![0; len.div_ceil(64)],
            zobrist: 0,
        }
    }

    /// Adds `index`, which must not be a member.
    pub(crate) fn insert(&mut self, index: usize) {
        let (word, bit) = (index / 64, 1u64 << (index % 64));
        assert_eq!(self.words[word] & bit, 0, "index {index} inserted twice");
        self.words[word] |= bit;
        self.zobrist ^= zobrist_key(index);
    }

    /// Removes `index`, which must be a member.
    pub(crate) fn remove(&mut self, index: usize) {
        let (word, bit) = (index / 64, 1u64 << (index % 64));
        assert_ne!(
            self.words[word] & bit,
            0,
            "index {index} removed but absent"
        );
        self.words[word] &= !bit;
        self.zobrist ^= zobrist_key(index);
    }

    /// The hash of the current members; equal sets have equal hashes.
    pub(crate) fn hash(&self) -> u64 {
        self.zobrist
    }

    /// The members as words, bit `i % 64` of word `i / 64` for index `i`.
    pub(crate) fn words(&self) -> &[u64] {
        &self.words
    }
}

/// The Zobrist word of one index: fixed, so hashes are reproducible across runs.
fn zobrist_key(index: usize) -> u64 {
    mix64((index as u64).wrapping_add(0x9e37_79b9_7f4a_7c15))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_depends_on_members_only() {
        let mut a = Bitset::new(130);
        let mut b = Bitset::new(130);
        a.insert(3);
        a.insert(129);
        b.insert(129);
        b.insert(64);
        b.insert(3);
        b.remove(64);
        assert_eq!(a, b);
        assert_eq!(a.hash(), b.hash());
        a.remove(3);
        assert_ne!(a.hash(), b.hash());
        assert_ne!(a.words(), b.words());
    }

    #[test]
    #[should_panic(expected = "inserted twice")]
    fn double_insert_is_a_bug() {
        let mut a = Bitset::new(8);
        a.insert(1);
        a.insert(1);
    }
}
