//! Crash consistency of [`RocksDbStorage`] with real processes and real SIGKILLs.
//!
//! The parent test re-executes this test binary as a child (`crash_child_writer`) that
//! appends to a store as fast as it can, group-committing random batches with a hard state,
//! compacting now and then (the snapshot's bytes written to a file of the store's
//! [`SnapshotStore`], as the group runtime does, and its handle recorded in the log
//! store), and printing a line after every write that returned `Ok`. The
//! parent kills the child with SIGKILL after a random number of those acknowledgements,
//! reopens the store and checks: every acknowledged entry is there with its exact content,
//! the log is contiguous after the snapshot, everything beyond the acknowledged prefix is
//! well formed, the hard state and snapshot did not go back, the snapshot's file reads back
//! whole and verified, and the start-up sweep leaves only that file. The same directory is reused
//! round after round, so every round also recovers what the previous kills left.
//!
//! `TESSERA_CRASH_ROUNDS` sets the number of rounds (default: a fast variant);
//! `TESSERA_CRASH_SEED` replays a run (the seed is printed at the start).
#![cfg(feature = "rocksdb")]
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};

use bytes::Bytes;
use tessera::raft::{
    Entry, EntryPayload, HardState, Index, Membership, NodeId, Snapshot, SnapshotMeta, SplitMix64,
    Term,
};
use tessera::storage::{
    FatalStorageError, RocksDbStorage, SnapshotHandle, Storage, StorageError, WriteBatch,
    SNAPSHOT_DIR,
};

const CHILD_TEST: &str = "crash_child_writer";
const CHILD_DIR_ENV: &str = "TESSERA_CRASH_CHILD_DIR";
const CHILD_SEED_ENV: &str = "TESSERA_CRASH_CHILD_SEED";
const ROUNDS_ENV: &str = "TESSERA_CRASH_ROUNDS";
const SEED_ENV: &str = "TESSERA_CRASH_SEED";
const ROUNDS_DEFAULT: u64 = 10;
/// Most entries in one child write.
const BATCH_ENTRIES_MAX: u64 = 32;
/// Most acknowledgements the parent reads before it kills the child.
const ACKS_BEFORE_KILL_MAX: u64 = 150;
/// The child compacts once this many entries follow the snapshot, keeping a tail.
const COMPACT_AFTER_ENTRIES: u64 = 400;
const COMPACT_KEEP_ENTRIES: u64 = 100;

/// The content of entry `index` written in `term`: deterministic, of varying length, so
/// the parent can check any entry it finds without having seen it acknowledged.
fn expected_entry(index: Index, term: Term) -> Entry {
    let len = 40 + ((index * 7 + term) % 200) as usize;
    let payload: Vec<u8> = (0..len)
        .map(|j| (index as usize ^ (term as usize * 31) ^ j) as u8)
        .collect();
    Entry {
        term,
        index,
        timestamp_ms: index,
        payload: EntryPayload::Command(Bytes::from(payload)),
    }
}

/// The state-machine bytes of the snapshot at `index`: large enough (about 1 MiB) that
/// kills land in the middle of writing one.
fn snapshot_bytes(index: Index) -> Vec<u8> {
    let len = (1 << 20) + (index % 4096) as usize;
    (0..len)
        .map(|j| (index as usize).wrapping_mul(131) as u8 ^ j as u8)
        .collect()
}

/// The key both the child and the parent open the store with.
fn test_key() -> tessera::storage::StorageKey {
    tessera::storage::StorageKey::derive(&[0xC7; 32], &[1; 32])
}

/// The child: a no-op unless the parent set the data directory.
#[test]
fn crash_child_writer() {
    let Some(dir) = std::env::var_os(CHILD_DIR_ENV) else {
        return;
    };
    let seed = std::env::var(CHILD_SEED_ENV)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let mut rng = SplitMix64::new(seed);
    let mut store = RocksDbStorage::open(&dir, test_key()).expect("child opens the store");
    let state = store.initial_state().expect("child reads the store");
    // A new term per life, as a restarted node would vote in a new election.
    let term = state.hard_state.term + 1;
    let mut commit = state.hard_state.commit;
    let mut out = std::io::stdout().lock();
    loop {
        let first = store.last_index() + 1;
        let last = first + rng.range(0, BATCH_ENTRIES_MAX);
        let batch = WriteBatch {
            snapshot: None,
            entries: (first..=last).map(|i| expected_entry(i, term)).collect(),
            // What was acknowledged before counts as committed (as after a quorum ack).
            hard_state: Some(HardState {
                term,
                vote: Some(NodeId(1)),
                commit,
            }),
        };
        store.write(&batch).expect("child write");
        writeln!(out, "acked {first} {last} {term} {commit}").expect("stdout");
        out.flush().expect("stdout");
        commit = last;
        let snapshot_index = store.first_index() - 1;
        if last - snapshot_index >= COMPACT_AFTER_ENTRIES {
            let at = last - COMPACT_KEEP_ENTRIES;
            let at_term = store.entries(at, at + 1).expect("entry to compact at")[0].term;
            let snapshots = store.snapshot_store();
            let mut file = snapshots.writer().expect("child starts a snapshot file");
            file.write_all(&snapshot_bytes(at))
                .expect("child writes the snapshot");
            let handle = file.finish(None).expect("child syncs the snapshot");
            store
                .compact(&Snapshot {
                    meta: SnapshotMeta {
                        index: at,
                        term: at_term,
                        membership: Membership::with_voters([NodeId(1)]),
                        membership_index: 0,
                        incarnation: None,
                        timestamp_ms: 0,
                    },
                    data: handle.encode(),
                })
                .expect("child compacts");
            snapshots.make_current(&handle);
            writeln!(out, "compacted {at}").expect("stdout");
            out.flush().expect("stdout");
        }
    }
}

/// What the parent saw acknowledged, over all rounds.
#[derive(Default)]
struct Acknowledged {
    /// Index → term of every acknowledged entry not yet known to be compacted.
    entries: BTreeMap<Index, Term>,
    term: Term,
    commit: Index,
    compacted: Index,
}

impl Acknowledged {
    fn record(&mut self, line: &str) -> Result<(), String> {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let num = |i: usize| -> Result<u64, String> {
            fields
                .get(i)
                .and_then(|f| f.parse().ok())
                .ok_or_else(|| format!("bad child line {line:?}"))
        };
        match fields.first() {
            Some(&"acked") => {
                let (first, last, term, commit) = (num(1)?, num(2)?, num(3)?, num(4)?);
                for i in first..=last {
                    self.entries.insert(i, term);
                }
                self.term = self.term.max(term);
                self.commit = self.commit.max(commit);
            }
            Some(&"compacted") => self.compacted = self.compacted.max(num(1)?),
            _ => return Err(format!("unexpected child line {line:?}")),
        }
        Ok(())
    }
}

/// Reopens the store after a kill and checks it against what was acknowledged.
fn check_recovery(path: &Path, acked: &mut Acknowledged, context: &str) {
    let store = RocksDbStorage::open(path, test_key())
        .unwrap_or_else(|e| panic!("{context}: reopen failed: {e}"));
    let state = store
        .initial_state()
        .unwrap_or_else(|e| panic!("{context}: recovered state unreadable: {e}"));
    let hs = state.hard_state;
    assert!(hs.term >= acked.term, "{context}: term went back: {hs:?}");
    assert!(
        hs.commit >= acked.commit,
        "{context}: commit went back below the acknowledged {}: {hs:?}",
        acked.commit
    );
    let snapshot_index = state.snapshot.as_ref().map_or(0, |s| s.meta.index);
    assert!(
        snapshot_index >= acked.compacted,
        "{context}: snapshot at {snapshot_index} is older than the acknowledged compaction at {}",
        acked.compacted
    );
    let snapshots = store.snapshot_store();
    let kept = state.snapshot.as_ref().map(|s| {
        let handle = SnapshotHandle::decode(&s.data)
            .unwrap_or_else(|e| panic!("{context}: snapshot data is no handle: {e}"));
        let mut bytes = Vec::new();
        std::io::Read::read_to_end(
            &mut snapshots
                .reader(&handle)
                .unwrap_or_else(|e| panic!("{context}: snapshot file missing: {e}")),
            &mut bytes,
        )
        .unwrap_or_else(|e| panic!("{context}: snapshot file damaged: {e}"));
        assert!(
            bytes == snapshot_bytes(s.meta.index),
            "{context}: snapshot file content at {}",
            s.meta.index
        );
        handle
    });
    // What a crash left (an unfinished file, a snapshot never recorded) goes at start-up.
    snapshots
        .sweep(kept.as_ref())
        .unwrap_or_else(|e| panic!("{context}: sweep: {e}"));
    let files: Vec<String> = std::fs::read_dir(path.join(SNAPSHOT_DIR))
        .expect("snapshot directory")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        files.len(),
        usize::from(kept.is_some()),
        "{context}: only the recorded snapshot's file is left: {files:?}"
    );
    assert_eq!(store.first_index(), snapshot_index + 1, "{context}");
    // Contiguous after the snapshot, and every entry, acknowledged or not, well formed.
    let mut previous_term = state.snapshot.as_ref().map_or(0, |s| s.meta.term);
    for (offset, e) in state.entries.iter().enumerate() {
        let index = snapshot_index + 1 + offset as u64;
        assert_eq!(e.index, index, "{context}: log not contiguous");
        assert_eq!(
            *e,
            expected_entry(index, e.term),
            "{context}: entry {index} content"
        );
        assert!(
            e.term >= previous_term && e.term <= hs.term,
            "{context}: entry {index} term {}",
            e.term
        );
        previous_term = e.term;
    }
    assert_eq!(
        store.last_index(),
        snapshot_index + state.entries.len() as u64
    );
    // Every acknowledged entry after the snapshot is there, from the term it was written in.
    acked.entries = acked.entries.split_off(&(snapshot_index + 1));
    for (&index, &term) in &acked.entries {
        let found = state.entries.get((index - snapshot_index - 1) as usize);
        assert_eq!(
            found,
            Some(&expected_entry(index, term)),
            "{context}: acknowledged entry {index} (term {term}) lost or altered; log ends at {}",
            store.last_index()
        );
    }
}

#[test]
fn killed_writers_never_lose_an_acknowledged_entry() {
    let rounds: u64 = std::env::var(ROUNDS_ENV)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(ROUNDS_DEFAULT);
    let seed: u64 = std::env::var(SEED_ENV)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_nanos() as u64)
        });
    println!("storage crash test: {rounds} rounds, replay with {SEED_ENV}={seed}");
    let mut rng = SplitMix64::new(seed);
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("data");
    let exe = std::env::current_exe().expect("test binary path");
    let mut acked = Acknowledged::default();
    let mut total_acks = 0;
    for round in 0..rounds {
        let context = format!("round {round} ({SEED_ENV}={seed})");
        let kill_after = rng.range(1, ACKS_BEFORE_KILL_MAX + 1);
        let mut child = Command::new(&exe)
            .args(["--exact", CHILD_TEST, "--nocapture", "--test-threads", "1"])
            .env(CHILD_DIR_ENV, &path)
            .env(CHILD_SEED_ENV, rng.next_u64().to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn the child writer");
        let stdout = child.stdout.take().expect("child stdout is piped");
        let mut lines = BufReader::new(stdout).lines();
        let mut acks = 0;
        while acks < kill_after {
            let Some(Ok(line)) = lines.next() else {
                let status = child.wait();
                panic!("{context}: the child ended after {acks} acknowledgements: {status:?}");
            };
            // The test harness prints its own lines ("running 1 test") before ours.
            if !(line.starts_with("acked ") || line.starts_with("compacted ")) {
                continue;
            }
            acked
                .record(&line)
                .unwrap_or_else(|e| panic!("{context}: {e}"));
            if line.starts_with("acked ") {
                acks += 1;
            }
            if round == 0 && acks == 1 {
                // A second process on a directory in use must be turned away, clearly.
                match RocksDbStorage::open(&path, test_key()) {
                    Err(StorageError::Fatal(FatalStorageError::Io { op: "open", reason })) => {
                        assert!(
                            reason.contains("in use by another process (lock held)"),
                            "{context}: unclear lock error: {reason}"
                        )
                    }
                    other => panic!("{context}: opened a store in use: {other:?}"),
                }
            }
        }
        // `Child::kill` is SIGKILL on Unix: no destructor, no flush, no chance to finish.
        child.kill().expect("SIGKILL the child");
        let status = child.wait().expect("reap the child");
        assert!(!status.success(), "{context}: the child was not killed");
        total_acks += acks;
        check_recovery(&path, &mut acked, &context);
    }
    println!(
        "storage crash test: {rounds} kills after {total_acks} acknowledged writes, nothing lost"
    );
}
