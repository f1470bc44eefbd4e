//! Group identity (architecture.md §3): the secret [`GroupKey`] and the public [`GroupId`] derived
//! from everything members must agree on.
//!
//! The key is never derivable from public data (the reference runtime derived it from a
//! validator, which made it public). The id covers the key's public id, every consensus
//! parameter that must agree, the state machine's signature and each validator's
//! signature in order: members that differ in any of them derive different ids and never
//! bond.
use std::fmt;
use std::path::Path;

use crate::raft::RaftConfig;

const GROUP_ID_DOMAIN: &[u8] = b"tessera/group-id/v1";
const KEY_ID_LABEL: &[u8] = b"tessera group id";
const HKDF_SALT: &[u8] = b"tessera/group-key/v1";

/// The group's shared secret (32 bytes). Its `Debug` output never shows the bytes.
#[derive(Clone, PartialEq, Eq)]
pub struct GroupKey([u8; 32]);

/// Why a group key could not be loaded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum GroupKeyError {
    /// [`GroupKey::from_file`] could not read the file, or its Unix mode lets group or
    /// others read it.
    #[error("group key file {path}: {reason}")]
    File {
        /// The key file, as given.
        path: String,
        /// What went wrong: the I/O error, the offending mode, or the format error.
        reason: String,
    },
    /// The text is not 64 hex characters: the decoder's message, or the byte count.
    #[error("group key must be 64 hex characters (32 bytes): {0}")]
    Format(String),
    /// The system random number generator failed in [`GroupKey::generate`].
    #[error("no system randomness for a new group key")]
    Randomness,
}

impl GroupKey {
    /// A key from its 32 raw bytes (from a provisioning message, say, or a test).
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    /// A fresh random key (for a new group; the operator distributes it).
    pub fn generate() -> Result<Self, GroupKeyError> {
        let mut k = [0u8; 32];
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut k)
            .map_err(|_| GroupKeyError::Randomness)?;
        Ok(Self(k))
    }

    /// A key derived with HKDF-SHA256 from an operator secret and a group name.
    pub fn derive(operator_secret: &[u8], group_name: &str) -> Self {
        let salt = ring::hkdf::Salt::new(ring::hkdf::HKDF_SHA256, HKDF_SALT);
        let prk = salt.extract(operator_secret);
        let info = [group_name.as_bytes()];
        let mut out = [0u8; 32];
        // 32 bytes is always a valid HKDF-SHA256 output length.
        if let Ok(okm) = prk.expand(&info, ring::hkdf::HKDF_SHA256) {
            let _ = okm.fill(&mut out);
        }
        Self(out)
    }

    /// Parses 64 hex characters (surrounding whitespace ignored).
    pub fn from_hex(text: &str) -> Result<Self, GroupKeyError> {
        let bytes = hex::decode(text.trim()).map_err(|e| GroupKeyError::Format(e.to_string()))?;
        let bytes: [u8; 32] = bytes
            .try_into()
            .map_err(|b: Vec<u8>| GroupKeyError::Format(format!("{} bytes", b.len())))?;
        Ok(Self(bytes))
    }

    /// Reads a key file: hex, and not readable by group or others on Unix.
    pub fn from_file(path: &Path) -> Result<Self, GroupKeyError> {
        let err = |reason: String| GroupKeyError::File {
            path: path.display().to_string(),
            reason,
        };
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(path)
                .map_err(|e| err(e.to_string()))?
                .permissions()
                .mode();
            if mode & 0o077 != 0 {
                return Err(err(format!(
                    "mode {:o} lets group or others read it; chmod 600",
                    mode & 0o777
                )));
            }
        }
        let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
        Self::from_hex(&text).map_err(|e| err(e.to_string()))
    }

    /// The raw 32 bytes: secret, so never log or send them outside an attested channel.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// The key's public id: HMAC(key, "tessera group id"). Reveals nothing about the key.
    pub fn public_id(&self) -> [u8; 32] {
        let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &self.0);
        let mut out = [0u8; 32];
        out.copy_from_slice(ring::hmac::sign(&key, KEY_ID_LABEL).as_ref());
        out
    }
}

impl fmt::Debug for GroupKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "GroupKey(id {})", hex::encode(&self.public_id()[..6]))
    }
}

/// The public identity of a group.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct GroupId(pub [u8; 32]);

impl fmt::Debug for GroupId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "GroupId({})", hex::encode(&self.0[..8]))
    }
}

impl fmt::Display for GroupId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

/// Consensus parameters every member must share, with the tick length that turns ticks
/// into time. Node-local choices (`reluctant`, `observer`) are left out.
pub fn consensus_fields(raft: &RaftConfig, tick_micros: u64) -> Vec<(&'static str, u64)> {
    vec![
        ("tick_micros", tick_micros),
        ("election_ticks", raft.election_ticks),
        ("heartbeat_ticks", raft.heartbeat_ticks),
        ("reluctant_factor", raft.reluctant_factor),
        ("pre_vote", raft.pre_vote as u64),
        ("check_quorum", raft.check_quorum as u64),
        (
            "max_entries_per_message",
            raft.max_entries_per_message as u64,
        ),
        ("max_bytes_per_message", raft.max_bytes_per_message as u64),
        ("max_inflight_messages", raft.max_inflight_messages as u64),
        ("max_proposal_bytes", raft.max_proposal_bytes as u64),
        (
            "max_proposals_per_batch",
            raft.max_proposals_per_batch as u64,
        ),
        ("max_voters", raft.max_voters as u64),
        ("auto_promote", raft.auto_promote as u64),
        ("promotion_lag_entries", raft.promotion_lag_entries),
        ("max_pending_reads", raft.max_pending_reads as u64),
        ("replace_after_rounds", raft.replace_after_rounds),
    ]
}

impl GroupId {
    /// SHA-256 over a domain tag and, length-prefixed and in order: the key's public id,
    /// every consensus field (name and value), the state machine signature and each
    /// validator signature.
    pub fn derive(
        key: &GroupKey,
        raft: &RaftConfig,
        tick_micros: u64,
        machine_signature: &[u8; 32],
        validator_signatures: &[[u8; 32]],
    ) -> Self {
        let mut h = ring::digest::Context::new(&ring::digest::SHA256);
        let mut field = |b: &[u8]| {
            h.update(&(b.len() as u64).to_le_bytes());
            h.update(b);
        };
        field(GROUP_ID_DOMAIN);
        field(&key.public_id());
        let fields = consensus_fields(raft, tick_micros);
        field(&(fields.len() as u64).to_le_bytes());
        for (name, value) in fields {
            field(name.as_bytes());
            field(&value.to_le_bytes());
        }
        field(machine_signature);
        field(&(validator_signatures.len() as u64).to_le_bytes());
        for s in validator_signatures {
            field(s);
        }
        let mut out = [0u8; 32];
        out.copy_from_slice(h.finish().as_ref());
        Self(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(key: &GroupKey, raft: &RaftConfig, tick: u64, sm: [u8; 32], v: &[[u8; 32]]) -> GroupId {
        GroupId::derive(key, raft, tick, &sm, v)
    }

    #[test]
    fn every_input_changes_the_id() {
        let key = GroupKey::from_bytes([1; 32]);
        let raft = RaftConfig::default();
        let base = id(&key, &raft, 50_000, [2; 32], &[[3; 32], [4; 32]]);
        assert_eq!(
            base,
            id(&key, &raft, 50_000, [2; 32], &[[3; 32], [4; 32]]),
            "deterministic"
        );
        assert_ne!(
            base,
            id(
                &GroupKey::from_bytes([9; 32]),
                &raft,
                50_000,
                [2; 32],
                &[[3; 32], [4; 32]]
            )
        );
        assert_ne!(base, id(&key, &raft, 10_000, [2; 32], &[[3; 32], [4; 32]]));
        assert_ne!(base, id(&key, &raft, 50_000, [5; 32], &[[3; 32], [4; 32]]));
        assert_ne!(
            base,
            id(&key, &raft, 50_000, [2; 32], &[[4; 32], [3; 32]]),
            "validator order counts"
        );
        assert_ne!(base, id(&key, &raft, 50_000, [2; 32], &[[3; 32]]));
        // Every consensus field, one at a time.
        let variants: Vec<RaftConfig> = vec![
            RaftConfig {
                election_ticks: raft.election_ticks + 1,
                ..raft.clone()
            },
            RaftConfig {
                heartbeat_ticks: raft.heartbeat_ticks + 1,
                ..raft.clone()
            },
            RaftConfig {
                reluctant_factor: raft.reluctant_factor + 1,
                ..raft.clone()
            },
            RaftConfig {
                pre_vote: !raft.pre_vote,
                ..raft.clone()
            },
            RaftConfig {
                check_quorum: !raft.check_quorum,
                ..raft.clone()
            },
            RaftConfig {
                max_entries_per_message: raft.max_entries_per_message + 1,
                ..raft.clone()
            },
            RaftConfig {
                max_bytes_per_message: raft.max_bytes_per_message + 1,
                ..raft.clone()
            },
            RaftConfig {
                max_inflight_messages: raft.max_inflight_messages + 1,
                ..raft.clone()
            },
            RaftConfig {
                max_proposal_bytes: raft.max_proposal_bytes + 1,
                ..raft.clone()
            },
            RaftConfig {
                max_proposals_per_batch: raft.max_proposals_per_batch + 1,
                ..raft.clone()
            },
            RaftConfig {
                max_voters: raft.max_voters + 1,
                ..raft.clone()
            },
            RaftConfig {
                auto_promote: !raft.auto_promote,
                ..raft.clone()
            },
            RaftConfig {
                promotion_lag_entries: raft.promotion_lag_entries + 1,
                ..raft.clone()
            },
            RaftConfig {
                max_pending_reads: raft.max_pending_reads + 1,
                ..raft.clone()
            },
            RaftConfig {
                replace_after_rounds: raft.replace_after_rounds + 1,
                ..raft.clone()
            },
        ];
        assert_eq!(
            variants.len() + 1,
            consensus_fields(&raft, 0).len(),
            "a field is not covered"
        );
        for (i, v) in variants.iter().enumerate() {
            assert_ne!(
                base,
                id(&key, v, 50_000, [2; 32], &[[3; 32], [4; 32]]),
                "field {i} not covered"
            );
        }
        // A node-local preference does not split the group.
        let reluctant = RaftConfig {
            reluctant: !raft.reluctant,
            ..raft.clone()
        };
        assert_eq!(
            base,
            id(&key, &reluctant, 50_000, [2; 32], &[[3; 32], [4; 32]])
        );
    }

    #[test]
    fn the_key_is_not_shown_and_parses_strictly() {
        let key = GroupKey::from_bytes([0xab; 32]);
        assert!(!format!("{key:?}").contains("abab"));
        assert_eq!(
            GroupKey::from_hex(&format!(" {}\n", hex::encode([0xab; 32]))).expect("hex"),
            key
        );
        assert!(GroupKey::from_hex("abcd").is_err());
        assert!(GroupKey::from_hex(&"zz".repeat(32)).is_err());
        assert_ne!(
            GroupKey::derive(b"secret", "a"),
            GroupKey::derive(b"secret", "b")
        );
    }

    #[cfg(unix)]
    #[test]
    fn a_key_file_readable_by_others_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("tessera-key-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("group.key");
        std::fs::write(&path, hex::encode([5u8; 32])).expect("write");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        let e = GroupKey::from_file(&path).expect_err("world readable");
        assert!(e.to_string().contains("chmod 600"), "{e}");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        assert_eq!(
            GroupKey::from_file(&path).expect("private"),
            GroupKey::from_bytes([5; 32])
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
