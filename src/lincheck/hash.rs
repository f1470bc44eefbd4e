//! Fast, deterministic hashing for the search cache.
//!
//! The cache is keyed by hashes we compute ourselves, so the hasher needs no protection
//! against adversarial keys (collisions only cost a comparison), but it must be cheap
//! for the model states it sees on every search step and identical across runs.

use std::hash::{BuildHasherDefault, Hash, Hasher};

/// SplitMix64's finalizer: a bijection that spreads every input bit over the output.
pub(crate) fn mix64(mut x: u64) -> u64 {
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// Hashes `value` with [`WordHasher`] and spreads the result.
pub(crate) fn hash_of<T: Hash + ?Sized>(value: &T) -> u64 {
    let mut hasher = WordHasher::default();
    value.hash(&mut hasher);
    mix64(hasher.finish())
}

/// A multiply-rotate hasher that consumes eight bytes per round (the FxHash scheme).
#[derive(Default)]
pub(crate) struct WordHasher {
    state: u64,
}

impl WordHasher {
    const SEED: u64 = 0x51_7c_c1_b7_27_22_0a_95;

    fn add(&mut self, word: u64) {
        self.state = (self.state.rotate_left(5) ^ word).wrapping_mul(Self::SEED);
    }
}

impl Hasher for WordHasher {
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for chunk in &mut chunks {
            let mut word = [0u8; 8];
            word.copy_from_slice(chunk);
            self.add(u64::from_le_bytes(word));
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut word = [0u8; 8];
            word[..rest.len()].copy_from_slice(rest);
            // The length keeps "a" and "a\0" apart.
            self.add(u64::from_le_bytes(word) ^ ((rest.len() as u64) << 59));
        }
    }

    fn write_u8(&mut self, n: u8) {
        self.add(u64::from(n));
    }

    fn write_u32(&mut self, n: u32) {
        self.add(u64::from(n));
    }

    fn write_u64(&mut self, n: u64) {
        self.add(n);
    }

    fn write_usize(&mut self, n: usize) {
        self.add(n as u64);
    }

    fn finish(&self) -> u64 {
        self.state
    }
}

/// For maps whose keys are already well-mixed hashes: passes the key through.
#[derive(Default)]
pub(crate) struct PassThroughHasher {
    state: u64,
}

impl Hasher for PassThroughHasher {
    fn write(&mut self, bytes: &[u8]) {
        // Only u64 keys are expected; fold anything else in rather than lose it.
        for &byte in bytes {
            self.state = self.state.rotate_left(8) ^ u64::from(byte);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.state ^= n;
    }

    fn finish(&self) -> u64 {
        self.state
    }
}

/// Builds [`PassThroughHasher`]s.
pub(crate) type PassThroughBuild = BuildHasherDefault<PassThroughHasher>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equal_values_hash_equal_and_trailing_zeros_count() {
        assert_eq!(
            hash_of(&Some(b"abc".to_vec())),
            hash_of(&Some(b"abc".to_vec()))
        );
        assert_ne!(hash_of(&b"a".to_vec()), hash_of(&b"a\0".to_vec()));
        assert_ne!(hash_of(&Some(Vec::<u8>::new())), hash_of(&None::<Vec<u8>>));
        assert_ne!(hash_of(&1u64), hash_of(&2u64));
    }
}
