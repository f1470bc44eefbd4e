//! Which node identity a data directory's records belong to.
//!
//! Raft state is only meaningful for the identity that wrote it: its term and vote are
//! that identity's promises, its log is what that identity acknowledged. A node without a
//! key file (always, inside a TD) has a new identity at every start, so on its previous
//! identity's directory it must start as a new member and never read those records as its
//! own (architecture.md §3). This module records the owner's node id beside the records
//! ([`OWNER_FILE`]) and decides, at start, whether the records are this node's, may be
//! adopted, or belong to a dead identity and are set aside (renamed, kept for an operator
//! until the next one replaces them, never opened again).
//!
//! The caller holds the directory's lock (the store is open) while it checks, and sets
//! aside only a directory it just had locked.
use std::io::Write as _;
use std::path::{Path, PathBuf};

/// The file, inside the store's directory, naming the node id that owns the records.
pub const OWNER_FILE: &str = "tessera-owner";
/// Prefix of a set-aside directory's name, beside the store's directory.
pub const RETIRED_PREFIX: &str = "retired-";
/// Largest owner file read (a hex node id and a newline).
const OWNER_FILE_BYTES_MAX: u64 = 256;

/// Whose records a store's directory holds, as seen by node `id`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Owner {
    /// Written by this very identity (or empty): use them.
    This,
    /// No owner recorded (a directory from before owners were recorded): a node with a
    /// persistent identity (a key file) takes them as its own.
    Unrecorded,
    /// Another identity's: never to be read by this one.
    Other(String),
}

/// Why the owner could not be read or recorded.
#[derive(Debug, thiserror::Error)]
pub enum OwnerError {
    /// Reading, writing, syncing or renaming a file or directory failed.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory concerned.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The owner file is empty or holds something other than hex digits: damaged, or not
    /// written by tessera.
    #[error("{path}: not an owner record (expected a node id of hex digits)")]
    Malformed {
        /// The owner file.
        path: PathBuf,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> OwnerError + '_ {
    move |source| OwnerError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Reads the owner of the records in `dir` as node `id` sees it. A directory with no
/// records yet (nothing but the owner file, or nothing) counts as this node's.
pub fn owner(dir: &Path, id: &str, has_records: bool) -> Result<Owner, OwnerError> {
    let path = dir.join(OWNER_FILE);
    let text = match std::fs::File::open(&path) {
        Ok(file) => {
            let mut text = String::new();
            std::io::Read::read_to_string(
                &mut std::io::Read::take(file, OWNER_FILE_BYTES_MAX),
                &mut text,
            )
            .map_err(io(&path))?;
            text
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Ok(if has_records {
                Owner::Unrecorded
            } else {
                Owner::This
            });
        }
        Err(e) => return Err(io(&path)(e)),
    };
    let recorded = text.trim();
    if recorded.is_empty() || !recorded.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(OwnerError::Malformed { path });
    }
    Ok(if recorded == id {
        Owner::This
    } else {
        Owner::Other(recorded.to_owned())
    })
}

/// Records node `id` as the owner of the records in `dir` (synced).
pub fn record(dir: &Path, id: &str) -> Result<(), OwnerError> {
    let path = dir.join(OWNER_FILE);
    let tmp = dir.join(format!("{OWNER_FILE}.tmp"));
    let mut file = std::fs::File::create(&tmp).map_err(io(&tmp))?;
    file.write_all(format!("{id}\n").as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(io(&tmp))?;
    std::fs::rename(&tmp, &path).map_err(io(&path))?;
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io(dir))
}

/// Moves `dir` (another identity's records, `previous` its owner) aside, beside it, as
/// `retired-<first 16 digits of previous>`; an earlier set-aside directory is deleted
/// first, so at most one is kept. Returns where it went.
pub fn set_aside(dir: &Path, previous: &str) -> Result<PathBuf, OwnerError> {
    let parent = dir.parent().unwrap_or(Path::new("."));
    let short: String = previous.chars().take(16).collect();
    let to = parent.join(format!("{RETIRED_PREFIX}{short}"));
    if let Ok(entries) = std::fs::read_dir(parent) {
        for entry in entries.flatten() {
            let name = entry.file_name();
            if name.to_string_lossy().starts_with(RETIRED_PREFIX) {
                let old = entry.path();
                std::fs::remove_dir_all(&old).map_err(io(&old))?;
            }
        }
    }
    std::fs::rename(dir, &to).map_err(io(dir))?;
    std::fs::File::open(parent)
        .and_then(|d| d.sync_all())
        .map_err(io(parent))?;
    Ok(to)
}

#[cfg(test)]
mod tests {
    use super::*;

    const ME: &str = "aa11";
    const DEAD: &str = "bb22";

    #[test]
    fn a_directory_is_this_nodes_once_recorded_and_anothers_otherwise() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert_eq!(owner(dir.path(), ME, false).expect("owner"), Owner::This);
        assert_eq!(
            owner(dir.path(), ME, true).expect("owner"),
            Owner::Unrecorded,
            "records with no owner are not silently this node's"
        );
        record(dir.path(), ME).expect("record");
        assert_eq!(owner(dir.path(), ME, true).expect("owner"), Owner::This);
        assert_eq!(
            owner(dir.path(), DEAD, true).expect("owner"),
            Owner::Other(ME.into())
        );
    }

    #[test]
    fn a_damaged_owner_record_is_an_error_naming_the_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        for bad in ["", "not hex\n", "\u{0}\u{1}"] {
            std::fs::write(dir.path().join(OWNER_FILE), bad).expect("write");
            let e = owner(dir.path(), ME, true).expect_err("refused");
            assert!(e.to_string().contains(OWNER_FILE), "{e}");
        }
    }

    #[test]
    fn another_identitys_records_are_set_aside_and_only_the_last_kept() {
        let data = tempfile::tempdir().expect("tempdir");
        let store = data.path().join("raft");
        for (n, previous) in ["cc33", DEAD].iter().enumerate() {
            std::fs::create_dir_all(&store).expect("mkdir");
            std::fs::write(store.join("LOG"), format!("records {n}")).expect("write");
            record(&store, previous).expect("record");
            let to = set_aside(&store, previous).expect("set aside");
            assert!(
                !store.exists(),
                "the store's directory is free for a new one"
            );
            assert_eq!(
                std::fs::read_to_string(to.join("LOG")).expect("kept"),
                format!("records {n}")
            );
        }
        let retired: Vec<String> = std::fs::read_dir(data.path())
            .expect("ls")
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(retired, vec![format!("{RETIRED_PREFIX}{DEAD}")]);
    }
}
