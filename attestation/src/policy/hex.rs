//! Fixed-length byte strings written as hex in policy files.
use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// `N` bytes, written as `2N` hex digits (either case when read, lowercase when written).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct HexBytes<const N: usize>(pub [u8; N]);

impl<const N: usize> HexBytes<N> {
    /// Parses exactly `2N` hex digits.
    pub fn parse(s: &str) -> Result<Self, String> {
        if s.len() != 2 * N {
            return Err(format!(
                "expected {N} bytes ({} hex digits), got {} characters",
                2 * N,
                s.len()
            ));
        }
        let mut out = [0u8; N];
        hex::decode_to_slice(s, &mut out).map_err(|e| format!("not hex: {e}"))?;
        Ok(HexBytes(out))
    }
}

impl<const N: usize> fmt::Display for HexBytes<N> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl<const N: usize> fmt::Debug for HexBytes<N> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "\"{self}\"")
    }
}

impl<const N: usize> Serialize for HexBytes<N> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.to_string())
    }
}

impl<'de, const N: usize> Deserialize<'de> for HexBytes<N> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = String::deserialize(deserializer)?;
        HexBytes::parse(&s).map_err(serde::de::Error::custom)
    }
}
