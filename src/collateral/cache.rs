//! The last good collateral bundle on disk, `<data_dir>/collateral.json`, so that a node
//! restarted while its PCCS is down still has collateral to present.
//!
//! The host owns the disk (architecture.md §13), so the file is only ever a candidate: the caller
//! verifies what [`read`] returns exactly as it verifies a fetched bundle, and a file that
//! does not verify is refused. Writing is atomic (a temporary file, synced, renamed over
//! the old one, the directory synced), so a crash leaves the old bundle or the new one,
//! never half of one. Mode 0600. This module does no verification itself.
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use tessera_attestation::verify::COLLATERAL_JSON_LEN_MAX;
use tessera_attestation::Collateral;

/// File name of the cache in the data directory.
pub const CACHE_FILE_NAME: &str = "collateral.json";

/// The cache file of a data directory.
pub fn path_in(data_dir: &Path) -> PathBuf {
    data_dir.join(CACHE_FILE_NAME)
}

/// The cache could not be read or written.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CacheError {
    /// Reading or writing the file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The file is larger than any collateral.
    #[error("{path}: larger than {COLLATERAL_JSON_LEN_MAX} bytes")]
    TooLarge {
        /// The file.
        path: String,
    },
    /// The file is not collateral JSON.
    #[error("{path}: {reason}")]
    Malformed {
        /// The file.
        path: String,
        /// Why.
        reason: String,
    },
}

fn io(path: &Path, source: std::io::Error) -> CacheError {
    CacheError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// Reads the cached bundle, unverified; `None` when there is none.
pub fn read(path: &Path) -> Result<Option<Collateral>, CacheError> {
    let file = match std::fs::File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io(path, e)),
    };
    let mut bytes = Vec::new();
    file.take(COLLATERAL_JSON_LEN_MAX as u64 + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| io(path, e))?;
    if bytes.len() > COLLATERAL_JSON_LEN_MAX {
        return Err(CacheError::TooLarge {
            path: path.display().to_string(),
        });
    }
    Collateral::from_json(&bytes)
        .map(Some)
        .map_err(|e| CacheError::Malformed {
            path: path.display().to_string(),
            reason: e.to_string(),
        })
}

/// Replaces the cached bundle with `collateral`, atomically, mode 0600.
pub fn write(path: &Path, collateral: &Collateral) -> Result<(), CacheError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = path.with_extension("json.tmp");
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(&tmp).map_err(|e| io(&tmp, e))?;
    // A leftover temporary file from another umask keeps its mode: set it every time.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        file.set_permissions(std::fs::Permissions::from_mode(0o600))
            .map_err(|e| io(&tmp, e))?;
    }
    file.write_all(collateral.to_json().as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(|e| io(&tmp, e))?;
    drop(file);
    std::fs::rename(&tmp, path).map_err(|e| io(path, e))?;
    // The rename is durable once the directory is.
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io(dir, e))
}

#[cfg(test)]
mod tests {
    use tessera_attestation::provider::mock::{MockConfig, MockProvider};

    use super::*;

    #[test]
    fn a_written_bundle_reads_back_and_is_private() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = path_in(dir.path());
        assert!(read(&path).expect("no file is no bundle").is_none());
        let c = MockProvider::new(MockConfig::default())
            .expect("mock")
            .collateral()
            .expect("collateral");
        write(&path, &c).expect("write");
        write(&path, &c).expect("and again, over the old one");
        assert_eq!(read(&path).expect("read"), Some(c));
        assert!(!path.with_extension("json.tmp").exists());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).expect("meta").permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        std::fs::write(&path, b"{ not collateral").expect("garble");
        assert!(matches!(read(&path), Err(CacheError::Malformed { .. })));
    }
}
