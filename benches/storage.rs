//! Durable write speed of `RocksDbStorage`: synced batch writes per second and entries per
//! second for batches of 1, 16 and 256 entries of 100 payload bytes (each write also
//! carries a hard state, as the worker's writes do), with write latency percentiles; and,
//! for reference, the latency of a bare 4 KiB write + fdatasync on the same filesystem.
//!
//! Every write is one `Storage::write` = one RocksDB batch with `sync = true`, so writes per
//! second is fsyncs per second. Prints one JSON object per line.
//!
//! Run: `cargo bench --bench storage`. `TESSERA_BENCH_SECONDS` (default 3) sets the time
//! per batch size; `TESSERA_BENCH_DIR` the directory (default: the system temp dir — make
//! sure it is a real disk, not tmpfs, or fsync costs nothing).
use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde_json::json;
use tessera::raft::{Entry, EntryPayload, HardState, NodeId};
use tessera::storage::{RocksDbStorage, Storage, WriteBatch};

const ENTRY_PAYLOAD_BYTES: usize = 100;
const BATCH_SIZES: [u64; 3] = [1, 16, 256];
const SECONDS_DEFAULT: u64 = 3;
const WARMUP_WRITES: u64 = 20;
const RAW_FSYNC_SAMPLES: usize = 500;
const RAW_FSYNC_BYTES: usize = 4096;

fn percentile_us(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[rank].as_secs_f64() * 1e6
}

fn latency_json(mut samples: Vec<Duration>) -> serde_json::Value {
    samples.sort();
    json!({
        "p50": percentile_us(&samples, 0.50).round(),
        "p99": percentile_us(&samples, 0.99).round(),
        "max": percentile_us(&samples, 1.0).round(),
    })
}

/// The filesystem type `path` lives on, from /proc/mounts (longest matching mount point).
fn filesystem_of(path: &Path) -> String {
    let Ok(path) = path.canonicalize() else {
        return "unknown".into();
    };
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
    mounts
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            Some((*f.get(1)?, *f.get(2)?))
        })
        .filter(|(mount, _)| path.starts_with(mount))
        .max_by_key(|(mount, _)| mount.len())
        .map_or_else(|| "unknown".into(), |(_, fs)| fs.to_string())
}

fn synced_writes(dir: &Path, batch_entries: u64, run: Duration) -> serde_json::Value {
    let mut store = RocksDbStorage::open(
        dir.join(format!("batch-{batch_entries}")),
        tessera::storage::StorageKey::derive(&[0xBE; 32], &[1; 32]),
    )
    .expect("open the bench store");
    let payload = Bytes::from(vec![0xA5u8; ENTRY_PAYLOAD_BYTES]);
    let write = |store: &mut RocksDbStorage| {
        let first = store.last_index() + 1;
        let batch = WriteBatch {
            snapshot: None,
            entries: (first..first + batch_entries)
                .map(|index| Entry {
                    term: 1,
                    index,
                    timestamp_ms: index,
                    payload: EntryPayload::Command(payload.clone()),
                })
                .collect(),
            hard_state: Some(HardState {
                term: 1,
                vote: Some(NodeId(1)),
                commit: first - 1,
            }),
        };
        let t = Instant::now();
        store.write(&batch).expect("synced write");
        t.elapsed()
    };
    for _ in 0..WARMUP_WRITES {
        write(&mut store);
    }
    let mut latencies = Vec::new();
    let start = Instant::now();
    while start.elapsed() < run {
        latencies.push(write(&mut store));
    }
    let seconds = start.elapsed().as_secs_f64();
    let writes = latencies.len() as f64;
    json!({
        "bench": "rocksdb_synced_write",
        "batch_entries": batch_entries,
        "entry_payload_bytes": ENTRY_PAYLOAD_BYTES,
        "writes": latencies.len(),
        "seconds": (seconds * 100.0).round() / 100.0,
        "writes_per_s": (writes / seconds).round(),
        "entries_per_s": (writes * batch_entries as f64 / seconds).round(),
        "write_latency_us": latency_json(latencies),
    })
}

fn raw_fsync(dir: &Path) -> serde_json::Value {
    let mut file = std::fs::File::create(dir.join("raw-fsync")).expect("create");
    let block = vec![0x5Au8; RAW_FSYNC_BYTES];
    let mut latencies = Vec::with_capacity(RAW_FSYNC_SAMPLES);
    for _ in 0..RAW_FSYNC_SAMPLES {
        let t = Instant::now();
        file.write_all(&block).expect("write");
        file.sync_data().expect("fdatasync");
        latencies.push(t.elapsed());
    }
    json!({
        "bench": "raw_append_fdatasync",
        "bytes": RAW_FSYNC_BYTES,
        "samples": RAW_FSYNC_SAMPLES,
        "latency_us": latency_json(latencies),
    })
}

fn main() {
    // `cargo bench` passes `--bench`; there are no options to parse.
    let seconds = std::env::var("TESSERA_BENCH_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(SECONDS_DEFAULT);
    let base = std::env::var_os("TESSERA_BENCH_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    let dir = tempfile::tempdir_in(&base).expect("bench directory");
    let fs = filesystem_of(dir.path());
    println!(
        "{}",
        json!({
            "bench": "environment",
            "dir": dir.path().display().to_string(),
            "filesystem": fs,
            "cpus": std::thread::available_parallelism().map_or(0, |n| n.get()),
            "seconds_per_case": seconds,
        })
    );
    if fs == "tmpfs" || fs == "ramfs" {
        eprintln!("warning: {fs} ignores fsync; these figures say nothing about a disk");
    }
    println!("{}", raw_fsync(dir.path()));
    for batch in BATCH_SIZES {
        println!(
            "{}",
            synced_writes(dir.path(), batch, Duration::from_secs(seconds))
        );
    }
}
