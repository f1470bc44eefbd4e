//! The host's configuration, from QEMU's fw_cfg (`-fw_cfg name=opt/tessera/<name>,file=…`),
//! copied into memory before anything reads it.
//!
//! Everything here is host-controlled input: names are checked (no path tricks), sizes are
//! bounded, and the copy is made once, so what the node reads cannot change under it.
use std::io::Read;
use std::path::Path;

/// Where the qemu_fw_cfg driver shows the host's `opt/tessera/*` entries.
pub const FW_CFG_DIR: &str = "/sys/firmware/qemu_fw_cfg/by_name/opt/tessera";
/// Largest entry copied (node.toml, a policy, a key: all far smaller).
pub const ENTRY_BYTES_MAX: u64 = 1 << 20;
/// Most entries copied.
pub const ENTRIES_MAX: usize = 32;

/// Copies every entry of `from` (one directory per entry, its bytes in `raw`) to a file of
/// the same name in `to`, mode 0600. Returns the names copied, sorted. No `from` directory
/// (no fw_cfg, or nothing passed) copies nothing.
pub fn copy_all(from: &Path, to: &Path) -> Result<Vec<String>, String> {
    use std::os::unix::fs::OpenOptionsExt;
    let entries = match std::fs::read_dir(from) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(format!("{}: {e}", from.display())),
    };
    let mut names = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| format!("{}: {e}", from.display()))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        check_name(&name)?;
        names.push(name);
        if names.len() > ENTRIES_MAX {
            return Err(format!(
                "more than {ENTRIES_MAX} entries under {}",
                from.display()
            ));
        }
    }
    names.sort();
    for name in &names {
        let source = from.join(name).join("raw");
        let file =
            std::fs::File::open(&source).map_err(|e| format!("{}: {e}", source.display()))?;
        let mut bytes = Vec::new();
        file.take(ENTRY_BYTES_MAX + 1)
            .read_to_end(&mut bytes)
            .map_err(|e| format!("{}: {e}", source.display()))?;
        if bytes.len() as u64 > ENTRY_BYTES_MAX {
            return Err(format!(
                "{}: larger than {ENTRY_BYTES_MAX} bytes",
                source.display()
            ));
        }
        let target = to.join(name);
        let mut out = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&target)
            .map_err(|e| format!("{}: {e}", target.display()))?;
        std::io::Write::write_all(&mut out, &bytes)
            .map_err(|e| format!("{}: {e}", target.display()))?;
    }
    Ok(names)
}

/// An entry name becomes a file name in /run/tessera: letters, digits, `.`, `_`, `-`, not
/// starting with a dot.
fn check_name(name: &str) -> Result<(), String> {
    let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-');
    if name.is_empty() || name.len() > 64 || name.starts_with('.') || !name.chars().all(allowed) {
        return Err(format!(
            "fw_cfg entry opt/tessera/{name:?}: names are 1-64 of [A-Za-z0-9._-], not starting with a dot"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(dir: &Path, name: &str, bytes: &[u8]) {
        std::fs::create_dir_all(dir.join(name)).expect("mkdir");
        std::fs::write(dir.join(name).join("raw"), bytes).expect("write");
    }

    #[test]
    fn copies_each_entry_to_a_private_file() {
        let from = tempdir("from");
        let to = tempdir("to");
        entry(&from, "node.toml", b"listen = \"0.0.0.0:7000\"\n");
        entry(&from, "network", b"address 10.0.2.15/24\n");
        let names = copy_all(&from, &to).expect("copy");
        assert_eq!(names, vec!["network".to_string(), "node.toml".to_string()]);
        assert_eq!(
            std::fs::read(to.join("node.toml")).expect("read"),
            b"listen = \"0.0.0.0:7000\"\n"
        );
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(to.join("network"))
            .expect("meta")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn no_fw_cfg_copies_nothing() {
        let to = tempdir("to-empty");
        assert_eq!(
            copy_all(&to.join("absent"), &to).expect("copy"),
            Vec::<String>::new()
        );
    }

    #[test]
    fn refuses_hostile_entries() {
        for (name, bytes) in [
            (".hidden", &b"x"[..]),
            ("a b", &b"x"[..]),
            ("big", &vec![b'x'; ENTRY_BYTES_MAX as usize + 1][..]),
        ] {
            let from = tempdir("hostile-from");
            let to = tempdir("hostile-to");
            entry(&from, name, bytes);
            let error = copy_all(&from, &to).expect_err(name);
            assert!(
                error.contains("names are") || error.contains("larger than"),
                "{name}: {error}"
            );
            assert!(!to.join(name).exists(), "{name} must not be copied");
        }
    }

    #[test]
    fn refuses_a_second_copy_over_a_file() {
        let from = tempdir("twice-from");
        let to = tempdir("twice-to");
        entry(&from, "node.toml", b"a");
        copy_all(&from, &to).expect("first copy");
        assert!(
            copy_all(&from, &to).is_err(),
            "a copy never replaces what the node may have read"
        );
    }

    fn tempdir(tag: &str) -> std::path::PathBuf {
        use std::sync::atomic::{AtomicU32, Ordering};
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "tessera-init-{tag}-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("tempdir");
        dir
    }
}
