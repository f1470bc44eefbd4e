//! TDX quotes through the Linux configfs-tsm report interface (Linux ≥ 6.7,
//! `Documentation/ABI/testing/configfs-tsm`). Our own code: the crates that wrap this ABI
//! are AGPL and tessera is MIT/Apache.
//!
//! Per quote: `mkdir` a fresh entry under the report directory, check that `provider` reads
//! `tdx_guest`, read `generation`, write the 64 bytes to `inblob`, read `outblob`, re-read
//! `generation` and fail if it moved by more than one (another writer raced us), and
//! `rmdir` the entry on every path.
//!
//! IO contract: touches only entries it creates under its root directory.
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use super::{ProviderError, ProviderKind, Quote, QuoteProvider};

/// Where the kernel exposes TSM reports.
pub const DEFAULT_REPORT_ROOT: &str = "/sys/kernel/config/tsm/report";
/// What `provider` reads in a TD.
pub const TDX_PROVIDER: &str = "tdx_guest";
/// Largest quote read from `outblob`.
pub const OUTBLOB_LEN_MAX: u64 = 64 * 1024;
/// Largest small attribute (`provider`, `generation`) read.
const ATTRIBUTE_LEN_MAX: u64 = 256;

static ENTRY_COUNTER: AtomicU64 = AtomicU64::new(0);

/// Quote provider over configfs-tsm.
#[derive(Clone, Debug)]
pub struct ConfigfsTsmProvider {
    root: PathBuf,
}

impl Default for ConfigfsTsmProvider {
    fn default() -> Self {
        ConfigfsTsmProvider::new()
    }
}

impl ConfigfsTsmProvider {
    /// The provider on the kernel's report directory.
    pub fn new() -> ConfigfsTsmProvider {
        ConfigfsTsmProvider::with_root(DEFAULT_REPORT_ROOT)
    }

    /// The provider on another directory (tests imitate configfs in a temporary directory).
    pub fn with_root(root: impl Into<PathBuf>) -> ConfigfsTsmProvider {
        ConfigfsTsmProvider { root: root.into() }
    }

    /// The report directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Whether this machine can produce TDX quotes: the report directory exists and a
    /// fresh entry's `provider` reads `tdx_guest`. Creates and removes one entry.
    pub fn detect(&self) -> Result<(), ProviderError> {
        self.with_entry(check_provider)
    }

    fn with_entry<T>(
        &self,
        f: impl FnOnce(&Path) -> Result<T, ProviderError>,
    ) -> Result<T, ProviderError> {
        if !self.root.is_dir() {
            return Err(ProviderError::TsmUnavailable {
                path: self.root.clone(),
            });
        }
        let name = format!(
            "tessera-{}-{}",
            std::process::id(),
            ENTRY_COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        let entry = self.root.join(name);
        fs::create_dir(&entry).map_err(|source| ProviderError::Io {
            op: "mkdir",
            path: entry.clone(),
            source,
        })?;
        let result = f(&entry);
        // rmdir on every path; a failure to clean up is reported unless an earlier error is.
        let removed = fs::remove_dir(&entry).map_err(|source| ProviderError::Io {
            op: "rmdir",
            path: entry.clone(),
            source,
        });
        match (result, removed) {
            (Ok(v), Ok(())) => Ok(v),
            (Ok(_), Err(e)) => Err(e),
            (Err(e), _) => Err(e),
        }
    }
}

impl QuoteProvider for ConfigfsTsmProvider {
    fn quote(&self, report_data: &[u8; 64]) -> Result<Quote, ProviderError> {
        self.with_entry(|entry| quote_in_entry(entry, report_data))
    }

    fn kind(&self) -> ProviderKind {
        ProviderKind::Tdx
    }
}

/// The steps inside one report entry.
pub(crate) fn quote_in_entry(entry: &Path, report_data: &[u8; 64]) -> Result<Quote, ProviderError> {
    check_provider(entry)?;
    let before = read_generation(entry)?;
    let inblob = entry.join("inblob");
    let mut file = fs::OpenOptions::new()
        .write(true)
        .open(&inblob)
        .map_err(|source| io("open", &inblob, source))?;
    file.write_all(report_data)
        .map_err(|source| io("write", &inblob, source))?;
    drop(file);
    let outblob = entry.join("outblob");
    let quote = read_limited(&outblob, OUTBLOB_LEN_MAX)?;
    let after = read_generation(entry)?;
    check_generation(before, after)?;
    if quote.is_empty() {
        return Err(ProviderError::EmptyQuote);
    }
    Ok(Quote::from_bytes(quote))
}

/// Our write moves the generation by one; more means another writer used the entry
/// between our write and our read, so the outblob may not be over our report data.
fn check_generation(before: u64, after: u64) -> Result<(), ProviderError> {
    match after.checked_sub(before) {
        Some(0 | 1) => Ok(()),
        _ => Err(ProviderError::Raced { before, after }),
    }
}

fn check_provider(entry: &Path) -> Result<(), ProviderError> {
    let path = entry.join("provider");
    let provider = read_text(&path)?;
    if provider != TDX_PROVIDER {
        return Err(ProviderError::NotTdx { provider });
    }
    Ok(())
}

fn read_generation(entry: &Path) -> Result<u64, ProviderError> {
    let path = entry.join("generation");
    let text = read_text(&path)?;
    text.parse().map_err(|_| ProviderError::BadAttribute {
        path,
        detail: format!("generation {text:?} is not a number"),
    })
}

fn read_text(path: &Path) -> Result<String, ProviderError> {
    let bytes = read_limited(path, ATTRIBUTE_LEN_MAX)?;
    let text = String::from_utf8(bytes).map_err(|_| ProviderError::BadAttribute {
        path: path.to_owned(),
        detail: "not UTF-8".to_owned(),
    })?;
    Ok(text.trim().to_owned())
}

fn read_limited(path: &Path, len_max: u64) -> Result<Vec<u8>, ProviderError> {
    use std::io::Read;
    let file = fs::File::open(path).map_err(|source| io("read", path, source))?;
    let mut out = Vec::new();
    file.take(len_max + 1)
        .read_to_end(&mut out)
        .map_err(|source| io("read", path, source))?;
    if out.len() as u64 > len_max {
        return Err(ProviderError::BadAttribute {
            path: path.to_owned(),
            detail: format!("longer than {len_max} bytes"),
        });
    }
    Ok(out)
}

fn io(op: &'static str, path: &Path, source: std::io::Error) -> ProviderError {
    ProviderError::Io {
        op,
        path: path.to_owned(),
        source,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fresh temporary directory under the target dir, removed on drop.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new(tag: &str) -> TempDir {
            let path = std::env::temp_dir().join(format!(
                "tessera-configfs-test-{tag}-{}-{}",
                std::process::id(),
                ENTRY_COUNTER.fetch_add(1, Ordering::Relaxed)
            ));
            fs::create_dir_all(&path).unwrap();
            TempDir(path)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    fn entries(root: &Path) -> Vec<PathBuf> {
        fs::read_dir(root)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect()
    }

    /// Imitates a configfs report entry: attribute files the kernel would create.
    fn populate(entry: &Path, provider: &str, generation_before: u64) {
        fs::create_dir_all(entry).unwrap();
        fs::write(entry.join("provider"), format!("{provider}\n")).unwrap();
        fs::write(entry.join("generation"), format!("{generation_before}\n")).unwrap();
        fs::write(entry.join("inblob"), b"").unwrap();
        fs::write(entry.join("outblob"), b"QUOTE BYTES").unwrap();
    }

    #[test]
    fn missing_root_says_tsm_is_unavailable() {
        let tmp = TempDir::new("missing");
        let provider = ConfigfsTsmProvider::with_root(tmp.0.join("tsm/report"));
        let err = provider.quote(&[0; 64]).unwrap_err();
        assert!(matches!(err, ProviderError::TsmUnavailable { .. }), "{err}");
        assert!(err.to_string().contains("Linux >= 6.7"));
        assert!(provider.detect().is_err());
    }

    #[test]
    fn entry_is_removed_when_the_provider_attribute_is_missing() {
        // A plain directory: mkdir works, but no attributes appear (not configfs).
        let tmp = TempDir::new("noattr");
        let provider = ConfigfsTsmProvider::with_root(&tmp.0);
        let err = provider.quote(&[1; 64]).unwrap_err();
        assert!(matches!(err, ProviderError::Io { op: "read", .. }), "{err}");
        assert!(
            entries(&tmp.0).is_empty(),
            "entry left behind: {:?}",
            entries(&tmp.0)
        );
        // Twice: fresh entries each time, none left.
        assert!(provider.quote(&[1; 64]).is_err());
        assert!(entries(&tmp.0).is_empty());
    }

    #[test]
    fn mkdir_failure_is_reported_and_nothing_is_left() {
        let tmp = TempDir::new("file-root");
        let root = tmp.0.join("report");
        fs::write(&root, b"not a directory").unwrap();
        let err = ConfigfsTsmProvider::with_root(&root)
            .quote(&[0; 64])
            .unwrap_err();
        assert!(matches!(err, ProviderError::TsmUnavailable { .. }), "{err}");
    }

    #[test]
    fn reads_the_quote_from_a_tdx_entry() {
        let tmp = TempDir::new("ok");
        let entry = tmp.0.join("e");
        populate(&entry, "tdx_guest", 3);
        // A kernel bumps generation on the inblob write; a plain file does not move it.
        let quote = quote_in_entry(&entry, &[7; 64]).unwrap();
        assert_eq!(quote.as_bytes(), b"QUOTE BYTES");
        assert_eq!(fs::read(entry.join("inblob")).unwrap(), vec![7; 64]);
    }

    #[test]
    fn refuses_a_non_tdx_provider() {
        let tmp = TempDir::new("sev");
        let entry = tmp.0.join("e");
        populate(&entry, "sev_guest", 0);
        let err = quote_in_entry(&entry, &[7; 64]).unwrap_err();
        assert!(
            matches!(&err, ProviderError::NotTdx { provider } if provider == "sev_guest"),
            "{err}"
        );
    }

    #[test]
    fn empty_outblob_is_an_error() {
        let tmp = TempDir::new("empty");
        let entry = tmp.0.join("e");
        populate(&entry, "tdx_guest", 0);
        fs::write(entry.join("outblob"), b"").unwrap();
        assert!(matches!(
            quote_in_entry(&entry, &[7; 64]),
            Err(ProviderError::EmptyQuote)
        ));
    }

    #[test]
    fn generation_moving_by_more_than_one_is_a_race() {
        assert!(check_generation(5, 6).is_ok());
        assert!(check_generation(5, 5).is_ok());
        assert!(matches!(
            check_generation(5, 7),
            Err(ProviderError::Raced {
                before: 5,
                after: 7
            })
        ));
        assert!(matches!(
            check_generation(5, 4),
            Err(ProviderError::Raced { .. })
        ));
        // A generation that is not a number is refused.
        let tmp = TempDir::new("race");
        let entry = tmp.0.join("e");
        populate(&entry, "tdx_guest", 5);
        fs::write(entry.join("generation"), "seven\n").unwrap();
        assert!(matches!(
            quote_in_entry(&entry, &[0; 64]),
            Err(ProviderError::BadAttribute { .. })
        ));
    }
}
