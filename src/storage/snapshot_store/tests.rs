use std::io::{Read, Write};
use std::sync::Arc;

use super::*;

fn key() -> StorageKey {
    StorageKey::derive(&[4; 32], &[1; 32])
}

fn stores() -> Vec<(tempfile::TempDir, Arc<SnapshotStore>)> {
    let memory = tempfile::tempdir().expect("tempdir");
    let files = tempfile::tempdir().expect("tempdir");
    let dir = files.path().join("snapshots");
    vec![
        (memory, Arc::new(SnapshotStore::memory())),
        (
            files,
            Arc::new(SnapshotStore::open_dir(dir, key()).expect("open")),
        ),
    ]
}

fn put(store: &Arc<SnapshotStore>, bytes: &[u8]) -> SnapshotHandle {
    let mut w = store.writer().expect("writer");
    // Several writes, as a machine streaming its state does.
    for part in bytes.chunks(7) {
        w.write_all(part).expect("write");
    }
    assert_eq!(w.written(), bytes.len() as u64);
    w.finish(None).expect("finish")
}

fn read_all(store: &SnapshotStore, handle: &SnapshotHandle) -> std::io::Result<Vec<u8>> {
    let mut out = Vec::new();
    store
        .reader(handle)
        .expect("reader")
        .read_to_end(&mut out)?;
    Ok(out)
}

fn digest(bytes: &[u8]) -> [u8; 32] {
    let mut out = [0u8; 32];
    out.copy_from_slice(ring::digest::digest(&ring::digest::SHA256, bytes).as_ref());
    out
}

#[test]
fn a_written_snapshot_reads_back_under_its_content_handle() {
    for (_dir, store) in stores() {
        let bytes: Vec<u8> = (0..10_000u32).flat_map(|i| i.to_le_bytes()).collect();
        let handle = put(&store, &bytes);
        assert_eq!(handle.size, bytes.len() as u64);
        assert_eq!(handle.sha256, digest(&bytes));
        assert!(store.contains(&handle));
        assert_eq!(read_all(&store, &handle).expect("verified read"), bytes);
        let mut tail = Vec::new();
        store
            .raw_reader(&handle, 1000)
            .expect("raw")
            .read_to_end(&mut tail)
            .expect("read");
        assert_eq!(tail, bytes[1000..], "a resumed send starts at the offset");
        assert_eq!(store.list().expect("list"), vec![store.name_of(&handle)]);
    }
}

#[test]
fn the_handle_encoding_round_trips_and_other_bytes_are_refused() {
    let handle = SnapshotHandle {
        size: 42,
        sha256: [7; 32],
    };
    assert_eq!(
        SnapshotHandle::decode(&handle.encode()).expect("decode"),
        handle
    );
    let encoded = handle.encode();
    for len in 0..encoded.len() {
        assert!(
            SnapshotHandle::decode(&encoded[..len]).is_err(),
            "a {len}-byte prefix"
        );
    }
    let mut longer = encoded.to_vec();
    longer.push(0);
    assert!(SnapshotHandle::decode(&longer).is_err(), "trailing byte");
    assert!(matches!(
        SnapshotHandle::decode(b"a raw state-machine snapshot, not a handle"),
        Err(SnapshotStoreError::NotAHandle { .. })
    ));
    let mut other_version = encoded.to_vec();
    other_version[HANDLE_MAGIC.len()] = 9;
    assert!(matches!(
        SnapshotHandle::decode(&other_version),
        Err(SnapshotStoreError::HandleVersion { found: 9 })
    ));
}

#[test]
fn an_unfinished_or_refused_writer_leaves_nothing_behind() {
    for (_dir, store) in stores() {
        let mut w = store.writer().expect("writer");
        w.write_all(b"half a snapshot").expect("write");
        drop(w);
        assert!(store.list().expect("list").is_empty());
        if let Some(dir) = store.dir() {
            assert_eq!(
                std::fs::read_dir(dir).expect("ls").count(),
                0,
                "no .part left"
            );
        }
        let mut w = store.writer().expect("writer");
        w.write_all(b"bytes").expect("write");
        match w.finish(Some(&[0; 32])) {
            Err(SnapshotStoreError::Digest { size: 5, .. }) => {}
            other => panic!("bytes with another digest must be refused, got {other:?}"),
        }
        assert!(store.list().expect("list").is_empty());
        if let Some(dir) = store.dir() {
            assert_eq!(std::fs::read_dir(dir).expect("ls").count(), 0);
        }
    }
}

#[test]
fn a_damaged_or_replaced_file_fails_the_verified_read_and_names_the_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Arc::new(SnapshotStore::open_dir(dir.path().join("s"), key()).expect("open"));
    let bytes = b"confidential state ".repeat(5000);
    let handle = put(&store, &bytes);
    let path = store.path_of(&handle).expect("a file store");
    let sealed = std::fs::read(&path).expect("read the file");
    assert!(
        !sealed.windows(19).any(|w| w == b"confidential state "),
        "the file does not hold the snapshot in the clear"
    );
    let damage = |f: &dyn Fn(&mut Vec<u8>)| {
        let mut b = sealed.clone();
        f(&mut b);
        std::fs::write(&path, &b).expect("write");
    };
    let name = path.display().to_string();
    for (what, f) in [
        (
            "flipped byte",
            &(|b: &mut Vec<u8>| b[100] ^= 1) as &dyn Fn(&mut Vec<u8>),
        ),
        ("truncated", &|b: &mut Vec<u8>| b.truncate(b.len() - 10)),
        ("extended", &|b: &mut Vec<u8>| b.push(0)),
    ] {
        damage(f);
        let err = read_all(&store, &handle).expect_err(what);
        assert_eq!(err.kind(), std::io::ErrorKind::InvalidData, "{what}");
        assert!(
            err.to_string().contains(&name),
            "{what}: names the file: {err}"
        );
    }
    // Another snapshot's intact file under this one's name: authentic, but not this state.
    let other = put(&store, &b"another state ".repeat(5000));
    std::fs::copy(store.path_of(&other).expect("file"), &path).expect("cp");
    let err = read_all(&store, &handle).expect_err("another snapshot's file");
    assert!(
        err.to_string().contains("SHA-256")
            || err.to_string().contains("longer")
            || err.to_string().contains("shorter"),
        "{err}"
    );
    // Sealed under another member's key: refused.
    let stranger = Arc::new(
        SnapshotStore::open_dir(dir.path().join("t"), StorageKey::derive(&[4; 32], &[2; 32]))
            .expect("open"),
    );
    let theirs = put(&stranger, &bytes);
    std::fs::copy(stranger.path_of(&theirs).expect("file"), &path).expect("cp");
    let err = read_all(&store, &handle).expect_err("another member's file");
    assert!(err.to_string().contains("failed authentication"), "{err}");
    std::fs::remove_file(&path).expect("rm");
    assert!(matches!(
        store.reader(&handle),
        Err(SnapshotStoreError::Missing { .. })
    ));
}

/// The host lists the snapshot directory: no file name is the SHA-256 of a state (which
/// would let it confirm a guess of the whole state), and another member's store names the
/// same content otherwise. A file left under its SHA-256 by an older store is found,
/// renamed and read.
#[test]
fn snapshot_files_are_not_named_by_the_plaintexts_digest() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Arc::new(SnapshotStore::open_dir(dir.path().join("s"), key()).expect("open"));
    let bytes = b"a guessable state".to_vec();
    let handle = put(&store, &bytes);
    let names: Vec<String> = std::fs::read_dir(dir.path().join("s"))
        .expect("ls")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names.len(), 1, "{names:?}");
    assert!(
        !names[0].contains(&handle.hex()),
        "named by the digest: {names:?}"
    );
    let other =
        SnapshotStore::open_dir(dir.path().join("t"), StorageKey::derive(&[4; 32], &[2; 32]))
            .expect("open");
    assert_ne!(other.name_of(&handle), store.name_of(&handle));
    // An older store's file name.
    let keyed = store.path_of(&handle).expect("file");
    let legacy = dir.path().join("s").join(handle.legacy_file_name());
    std::fs::rename(&keyed, &legacy).expect("mv");
    let reopened = SnapshotStore::open_dir(dir.path().join("s"), key()).expect("reopen");
    assert!(reopened.contains(&handle));
    assert_eq!(read_all(&reopened, &handle).expect("read"), bytes);
    assert!(keyed.exists() && !legacy.exists());
    reopened.sweep(Some(&handle)).expect("sweep");
    assert_eq!(read_all(&reopened, &handle).expect("kept"), bytes);
}

#[test]
fn superseded_snapshots_are_deleted_once_nothing_uses_them() {
    for (_dir, store) in stores() {
        let a = put(&store, b"snapshot a");
        store.make_current(&a);
        // Received twice (the leader resent it), handed to the worker twice.
        let b = put(&store, b"snapshot b");
        store.delivered(&b);
        store.delivered(&b);
        assert_eq!(
            store.list().expect("list").len(),
            2,
            "current and delivered kept"
        );
        store.release(&b);
        assert!(
            store.contains(&b),
            "one delivery is still in the worker's inbox"
        );
        store.release(&b);
        assert!(
            !store.contains(&b),
            "refused by the worker both times: deleted"
        );
        assert!(store.contains(&a));

        // Installed: it becomes current, the previous current goes.
        let c = put(&store, b"snapshot c");
        store.delivered(&c);
        store.make_current(&c);
        assert!(
            !store.contains(&a),
            "the previous current one is superseded"
        );
        store.release(&c);
        assert!(
            store.contains(&c),
            "the current one stays when its delivery is released"
        );
        store.make_current(&c);
        assert!(
            store.contains(&c),
            "making the current one current again keeps it"
        );

        // A current one still delivered (a resend in the inbox) outlives being superseded.
        store.delivered(&c);
        let d = put(&store, b"snapshot d");
        store.make_current(&d);
        assert!(store.contains(&c), "still delivered");
        store.release(&c);
        assert!(!store.contains(&c));
        // Releasing what was never delivered changes nothing.
        store.release(&d);
        assert!(store.contains(&d));
    }
}

#[test]
fn a_served_snapshot_whose_compaction_failed_stays_until_superseded() {
    for (_dir, store) in stores() {
        let durable = put(&store, b"recorded in the log store");
        store.make_current(&durable);
        // Taken and served, but the log store could not record it (disk full).
        let served = put(&store, b"served, not recorded");
        store.serve(&served);
        assert!(
            store.contains(&durable) && store.contains(&served),
            "both in use"
        );
        // The next one is served too and also fails: the previous served one goes, the
        // recorded one stays.
        let next = put(&store, b"served next");
        store.serve(&next);
        assert!(!store.contains(&served));
        assert!(store.contains(&durable) && store.contains(&next));
        // A compaction that succeeds supersedes the recorded one.
        store.make_current(&next);
        assert!(!store.contains(&durable));
        assert!(store.contains(&next));
        // One the core did not take is discarded, unless it is in use.
        let unused = put(&store, b"not taken by the core");
        store.discard(&unused);
        assert!(!store.contains(&unused));
        store.discard(&next);
        assert!(store.contains(&next), "the current one is never discarded");
    }
}

#[test]
fn sweep_keeps_only_the_referenced_snapshot_and_removes_stray_files() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("s");
    let store = Arc::new(SnapshotStore::open_dir(&path, key()).expect("open"));
    let keep = put(&store, b"keep");
    let other = put(&store, b"other");
    // What a crash in the middle of a write leaves, and an unrelated file.
    std::fs::write(path.join("0123.part"), b"torn").expect("write");
    std::fs::write(path.join("README"), b"not ours").expect("write");
    drop(store);
    let store = Arc::new(SnapshotStore::open_dir(&path, key()).expect("reopen"));
    store.sweep(Some(&keep)).expect("sweep");
    assert!(store.contains(&keep));
    assert!(!store.contains(&other));
    assert!(!path.join("0123.part").exists());
    assert!(
        path.join("README").exists(),
        "files that are not ours are left alone"
    );
    store.sweep(None).expect("sweep");
    assert!(store.list().expect("list").is_empty());
}

#[test]
fn copy_between_stores_keeps_the_handle() {
    let all = stores();
    for (_a, from) in &all {
        for (_b, to) in &all {
            let bytes = format!("copied {:p} {:p}", from.as_ref(), to.as_ref()).into_bytes();
            let handle = put(from, &bytes);
            to.copy_from(from, &handle).expect("copy");
            assert_eq!(read_all(to, &handle).expect("read"), bytes);
        }
    }
    let (_dir, empty) = &all[0];
    let missing = SnapshotHandle {
        size: 1,
        sha256: [1; 32],
    };
    assert!(matches!(
        Arc::new(SnapshotStore::memory()).copy_from(empty, &missing),
        Err(SnapshotStoreError::Missing { .. })
    ));
}

#[test]
fn a_snapshot_directory_open_to_others_is_refused() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().expect("tempdir");
    let created = dir.path().join("new");
    SnapshotStore::open_dir(&created, key()).expect("created");
    let mode = std::fs::metadata(&created)
        .expect("stat")
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o700);
    std::fs::set_permissions(&created, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    match SnapshotStore::open_dir(&created, key()) {
        Err(SnapshotStoreError::Directory { reason, .. }) => {
            assert!(reason.contains("0755"), "{reason}")
        }
        other => panic!("a world-readable snapshot directory must be refused, got {other:?}"),
    }
}
