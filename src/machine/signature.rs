//! The digest behind [`StateMachine::signature`](super::StateMachine::signature).

use ring::digest;

/// Builds a machine signature: SHA-256 over a domain tag, then fields in order.
///
/// Every input is length-prefixed (8-byte little-endian length), so no two different field
/// lists hash the same bytes: `("ab", "c")` and `("a", "bc")` differ. The domain tag names
/// the machine and should carry a version (`"tessera.machine.kv.v1"`), so a change of
/// semantics is a change of tag.
#[derive(Clone)]
pub struct SignatureBuilder {
    context: digest::Context,
}

impl SignatureBuilder {
    /// Starts a signature for the machine named by `domain`.
    #[must_use]
    pub fn new(domain: &str) -> Self {
        Self {
            context: digest::Context::new(&digest::SHA256),
        }
        .bytes(domain.as_bytes())
    }

    /// Adds a byte-string field.
    #[must_use]
    pub fn bytes(mut self, field: &[u8]) -> Self {
        // usize → u64 is lossless on every target Rust supports.
        self.context.update(&(field.len() as u64).to_le_bytes());
        self.context.update(field);
        self
    }

    /// Adds an integer field (as its 8 little-endian bytes).
    #[must_use]
    pub fn u64(self, field: u64) -> Self {
        self.bytes(&field.to_le_bytes())
    }

    /// Adds an optional integer field; `None` and every `Some` hash differently.
    #[must_use]
    pub fn option_u64(self, field: Option<u64>) -> Self {
        match field {
            None => self.bytes(&[]),
            Some(value) => self.u64(value),
        }
    }

    /// The 32-byte SHA-256 digest.
    #[must_use]
    pub fn finish(self) -> [u8; 32] {
        let digest = self.context.finish();
        let mut out = [0u8; 32];
        out.copy_from_slice(digest.as_ref());
        out
    }
}

impl std::fmt::Debug for SignatureBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SignatureBuilder").finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_are_length_prefixed() {
        let ab_c = SignatureBuilder::new("t").bytes(b"ab").bytes(b"c").finish();
        let a_bc = SignatureBuilder::new("t").bytes(b"a").bytes(b"bc").finish();
        assert_ne!(ab_c, a_bc);
    }

    #[test]
    fn domain_separates_and_is_stable() {
        let a = SignatureBuilder::new("one").u64(7).finish();
        let b = SignatureBuilder::new("two").u64(7).finish();
        assert_ne!(a, b);
        assert_eq!(a, SignatureBuilder::new("one").u64(7).finish());
    }

    #[test]
    fn option_none_differs_from_some_zero() {
        let none = SignatureBuilder::new("t").option_u64(None).finish();
        let zero = SignatureBuilder::new("t").option_u64(Some(0)).finish();
        assert_ne!(none, zero);
    }

    #[test]
    fn matches_sha256_of_the_documented_encoding() {
        // new("") hashes one empty field: an 8-byte zero length and nothing else.
        let expected = digest::digest(&digest::SHA256, &[0u8; 8]);
        assert_eq!(
            SignatureBuilder::new("").finish().as_slice(),
            expected.as_ref()
        );
    }
}
