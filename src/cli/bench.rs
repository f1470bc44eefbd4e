//! `tessera bench`: throughput and latency of a local cluster over loopback iroh with mock
//! attestation (the same stack as `tessera demo`), then failover time.
//!
//! Phases: concurrent clients for `--duration` seconds (at the leader, or through a
//! follower with `--via follower`), one sequential client for a few seconds (latency), and
//! with `--failover`, the leader crashes (its endpoint closes first, so it hands nothing
//! over) and the time until a survivor acknowledges a write is measured; `--handover` shuts
//! it down gracefully instead (it hands leadership over first); both at once need five
//! members. With `--catch-up` a new member then catches up from the log; with
//! `--snapshot-install <MiB>` the leader's state is first filled to that size and a new
//! member catches up from a snapshot of it (time, and the process's peak memory growth
//! during the install). Prints a summary, or one JSON object with `--json`.
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::{Args, ValueEnum};
use tessera::cluster::{ClusterOptions, LocalCluster};
use tessera::groups::{Group, GroupKey};
use tessera::machine::{KvCommand, KvStore, VALUE_BYTES_MAX_DEFAULT};
use tessera::storage::MemoryStorage;
#[cfg(feature = "rocksdb")]
use tessera::storage::RocksDbStorage;
use tessera_attestation::provider::mock::MockConfig;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum StorageKind {
    Memory,
    Rocksdb,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Via {
    Leader,
    Follower,
}

#[derive(Args, Debug)]
pub struct BenchArgs {
    #[arg(long, default_value_t = 3)]
    pub nodes: usize,
    /// Concurrent clients, each with one outstanding command.
    #[arg(long, default_value_t = 1000)]
    pub clients: usize,
    /// Seconds of the concurrent phase.
    #[arg(long, default_value_t = 10)]
    pub duration: u64,
    #[arg(long, value_enum, default_value_t = StorageKind::Memory)]
    pub storage: StorageKind,
    /// Where clients send their commands.
    #[arg(long, value_enum, default_value_t = Via::Leader)]
    pub via: Via,
    /// Seconds of the sequential (one client) phase; 0 skips it.
    #[arg(long, default_value_t = 3)]
    pub sequential: u64,
    /// Also crash the leader and measure the time until a survivor accepts a write.
    #[arg(long)]
    pub failover: bool,
    /// Also shut the leader down gracefully (it hands leadership over first) and measure
    /// the time until a survivor accepts a write (after `--failover`'s crash, if both).
    #[arg(long)]
    pub handover: bool,
    /// Also add a new member after the load and measure how fast it catches up from the
    /// leader's log (snapshots are off for this run, so the whole log is replicated).
    #[arg(long)]
    pub catch_up: bool,
    /// Also fill the state to this many MiB (values of the largest size), let every member
    /// snapshot it, then add a new member, which must install the snapshot: measures the
    /// install and the process's peak memory growth meanwhile. Snapshots are taken only
    /// once, when the fill is complete. At most 1024 (the store's default data limit).
    #[arg(long, value_name = "MIB")]
    pub snapshot_install: Option<u64>,
    /// Print one JSON object.
    #[arg(long)]
    pub json: bool,
}

/// Bytes of state a key of the fill holds: its value and its key (`fill/` + 8 digits).
const FILL_ENTRY_BYTES: u64 = VALUE_BYTES_MAX_DEFAULT + 13;

fn command(client: usize, n: u64) -> KvCommand {
    KvCommand::Put {
        key: format!("c{client}").into_bytes(),
        value: n.to_le_bytes().to_vec(),
    }
}

fn percentile(sorted: &[u32], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    f64::from(sorted[i]) / 1000.0
}

/// Runs `clients` closed-loop clients against `group` for `duration`; returns the
/// latencies (µs) of acknowledged commands and the number of errors.
async fn load(group: Arc<Group<KvStore>>, clients: usize, duration: Duration) -> (Vec<u32>, u64) {
    let deadline = Instant::now() + duration;
    let mut tasks = Vec::with_capacity(clients);
    for c in 0..clients {
        let group = group.clone();
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            let mut errors = 0u64;
            let mut n = 0u64;
            while Instant::now() < deadline {
                let t = Instant::now();
                match group.execute(command(c, n)).await {
                    Ok(_) => lat.push(t.elapsed().as_micros().min(u128::from(u32::MAX)) as u32),
                    Err(_) => errors += 1,
                }
                n += 1;
            }
            (lat, errors)
        }));
    }
    let mut all = Vec::new();
    let mut errors = 0;
    for t in tasks {
        if let Ok((lat, e)) = t.await {
            all.extend(lat);
            errors += e;
        }
    }
    all.sort_unstable();
    (all, errors)
}

/// One client in sequence for `duration` with the latency probe on (feature
/// `latency-probe`): per hop of the write's path, the median time from the hop before it
/// that was reached, in microseconds, and the median of the whole.
async fn latency_breakdown(group: Arc<Group<KvStore>>, duration: Duration) -> serde_json::Value {
    use tessera::probe::{self, Hop};
    let deadline = Instant::now() + duration;
    let mut steps: Vec<Vec<u64>> = vec![Vec::new(); Hop::COUNT];
    let mut totals = Vec::new();
    let mut n = 0;
    while Instant::now() < deadline {
        probe::start();
        let ok = group.execute(command(0, n)).await.is_ok();
        let marks = probe::finish();
        n += 1;
        if !ok {
            continue;
        }
        let mut previous = marks[Hop::Execute as usize];
        for hop in Hop::ALL.into_iter().skip(1) {
            let at = marks[hop as usize];
            if at >= previous && previous > 0 {
                steps[hop as usize].push(at - previous);
                previous = at;
            }
        }
        totals.push(marks[Hop::Done as usize] - marks[Hop::Execute as usize]);
    }
    let median_us = |v: &mut Vec<u64>| {
        v.sort_unstable();
        v.get(v.len() / 2).map(|ns| *ns as f64 / 1000.0)
    };
    let hops: Vec<serde_json::Value> = Hop::ALL
        .into_iter()
        .skip(1)
        .map(|hop| {
            let v = &mut steps[hop as usize];
            serde_json::json!({
                "hop": format!("{hop:?}"),
                "reached": v.len(),
                "p50_us_since_previous": median_us(v),
            })
        })
        .collect();
    serde_json::json!({ "commands": totals.len(), "p50_us": median_us(&mut totals), "hops": hops })
}

async fn run(args: BenchArgs) -> Result<serde_json::Value> {
    if args.nodes == 0 || args.clients == 0 {
        bail!("--nodes and --clients must be at least 1");
    }
    let leaders_stopped = usize::from(args.failover) + usize::from(args.handover);
    if leaders_stopped > 0 && args.nodes < 1 + 2 * leaders_stopped {
        bail!(
            "--failover and --handover each stop a leader: {} nodes leave no majority \
             ({} needed)",
            args.nodes,
            1 + 2 * leaders_stopped
        );
    }
    let mut options = ClusterOptions::new(args.nodes, GroupKey::generate()?);
    if let Some(mib) = args.snapshot_install {
        if mib == 0 || mib > 1024 || args.catch_up {
            bail!("--snapshot-install takes 1..=1024 MiB and does not go with --catch-up");
        }
        // One snapshot per member, once the fill is (nearly) complete.
        options.consensus = options
            .consensus
            .to_builder()
            .snapshot_every_entries(None)
            .snapshot_every_bytes(Some(fill_keys(mib) * FILL_ENTRY_BYTES * 99 / 100))
            .max_voters(args.nodes)
            .build()?;
    }
    if args.catch_up {
        options.consensus = options
            .consensus
            .to_builder()
            .snapshot_every_entries(None)
            .snapshot_every_bytes(None)
            // The new member stays a learner: stopping it afterwards must not cost a quorum.
            .max_voters(args.nodes)
            .build()?;
    }
    let scratch = std::env::temp_dir().join(format!("tessera-bench-{}", std::process::id()));
    let cluster = match args.storage {
        StorageKind::Memory => LocalCluster::start(options, |_| Ok(MemoryStorage::new())).await?,
        #[cfg(feature = "rocksdb")]
        StorageKind::Rocksdb => {
            let result = LocalCluster::start(options, |i| {
                RocksDbStorage::open(
                    scratch.join(format!("node-{i}")),
                    bench_storage_key(i as u8),
                )
                .map_err(|e| e.to_string())
            })
            .await;
            result?
        }
        #[cfg(not(feature = "rocksdb"))]
        StorageKind::Rocksdb => {
            bail!("--storage rocksdb: this build has no RocksDB store (build with `--features rocksdb`)")
        }
    };
    let report = measure(&args, cluster, &scratch).await;
    if args.storage == StorageKind::Rocksdb {
        let _ = std::fs::remove_dir_all(&scratch);
    }
    report
}

/// Keys the fill writes for `mib` MiB of state.
fn fill_keys(mib: u64) -> u64 {
    (mib << 20) / FILL_ENTRY_BYTES
}

/// Writes `keys` values of the largest size through `group`, 16 writers at a time.
async fn fill(group: Arc<Group<KvStore>>, keys: u64) -> Result<()> {
    const WRITERS: u64 = 16;
    let mut tasks = Vec::new();
    for w in 0..WRITERS {
        let group = group.clone();
        tasks.push(tokio::spawn(async move {
            for k in (w..keys).step_by(WRITERS as usize) {
                let command = KvCommand::Put {
                    key: format!("fill/{k:08}").into_bytes(),
                    value: vec![(k % 251) as u8; VALUE_BYTES_MAX_DEFAULT as usize],
                };
                group.execute(command).await?;
            }
            Ok::<_, tessera::groups::GroupError>(())
        }));
    }
    for t in tasks {
        t.await.context("fill task")??;
    }
    Ok(())
}

/// A field of `/proc/self/status` in KiB (`VmRSS`, `VmHWM`), if readable.
fn proc_status_kib(field: &str) -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with(field))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Fills the state to `mib` MiB, waits for every member's snapshot, then adds a member
/// and measures its install of the snapshot.
async fn snapshot_install(
    args: &BenchArgs,
    cluster: &LocalCluster,
    handles: &[Arc<Group<KvStore>>],
    leader_ix: usize,
    mib: u64,
    scratch: &std::path::Path,
) -> Result<serde_json::Value> {
    let keys = fill_keys(mib);
    let term_before = handles[leader_ix].status().term;
    let started = Instant::now();
    fill(handles[leader_ix].clone(), keys).await?;
    let fill_s = started.elapsed().as_secs_f64();
    let target = handles[leader_ix].status().commit_index;
    for (i, h) in handles.iter().enumerate() {
        tokio::time::timeout(Duration::from_secs(300), h.when().snapshot_at(1))
            .await
            .with_context(|| format!("member {i} took no snapshot within 300 s"))??;
    }
    let snapshot_s = started.elapsed().as_secs_f64() - fill_s;
    if !args.json {
        eprintln!(
            "bench: {keys} keys ({mib} MiB) written in {fill_s:.1} s and snapshotted; a new member installs the snapshot …"
        );
    }
    // From here on VmHWM is the peak of the install (Linux: clear_refs 5 resets it).
    let reset = std::fs::write("/proc/self/clear_refs", "5").is_ok();
    let rss_before = proc_status_kib("VmRSS");
    let (joiner, seconds) = add_member(args, cluster, target, scratch).await?;
    let peak = proc_status_kib("VmHWM");
    let snapshots_in = joiner.bonds.stats().borrow().snapshots_in;
    let installed = joiner.group.status().snapshot_index;
    joiner.group.shutdown().await;
    if snapshots_in == 0 || installed == 0 {
        bail!("the new member caught up without installing a snapshot");
    }
    let state_bytes = keys * FILL_ENTRY_BYTES;
    let term_after = handles.iter().map(|h| h.status().term).max().unwrap_or(0);
    Ok(serde_json::json!({
        // Elections while members were busy writing their snapshots show up here.
        "elections": term_after.saturating_sub(term_before),
        "state_mib": state_bytes as f64 / f64::from(1 << 20),
        "keys": keys,
        "fill_s": fill_s,
        "snapshot_s": snapshot_s,
        "install_s": seconds,
        "install_mib_per_sec": state_bytes as f64 / f64::from(1 << 20) / seconds,
        "rss_before_mib": rss_before.map(|k| k / 1024),
        "peak_rss_growth_mib": if reset { peak.zip(rss_before).map(|(p, b)| p.saturating_sub(b) / 1024) } else { None },
    }))
}

/// Adds a member and waits until it has applied `target`. Returns it and the seconds
/// that took.
async fn add_member(
    args: &BenchArgs,
    cluster: &LocalCluster,
    target: u64,
    scratch: &std::path::Path,
) -> Result<(tessera::cluster::ClusterMember, f64)> {
    let started = Instant::now();
    let joiner = match args.storage {
        StorageKind::Memory => {
            cluster
                .candidate(
                    MockConfig::default(),
                    &cluster.options,
                    MemoryStorage::new(),
                )
                .await?
        }
        #[cfg(feature = "rocksdb")]
        StorageKind::Rocksdb => {
            let storage = RocksDbStorage::open(scratch.join("joiner"), bench_storage_key(u8::MAX))?;
            cluster
                .candidate(MockConfig::default(), &cluster.options, storage)
                .await?
        }
        #[cfg(not(feature = "rocksdb"))]
        StorageKind::Rocksdb => {
            let _ = scratch;
            bail!("--storage rocksdb: this build has no RocksDB store")
        }
    };
    tokio::time::timeout(
        Duration::from_secs(300),
        joiner.group.when().applied(target),
    )
    .await
    .context("the new member did not catch up within 300 s")??;
    Ok((joiner, started.elapsed().as_secs_f64()))
}

/// Adds a member and measures how long it takes to apply everything the leader has
/// committed. Returns `(entries, seconds)`.
async fn catch_up(
    args: &BenchArgs,
    cluster: &LocalCluster,
    leader: &Group<KvStore>,
    scratch: &std::path::Path,
) -> Result<(u64, f64)> {
    let target = leader.status().commit_index;
    let (joiner, seconds) = add_member(args, cluster, target, scratch).await?;
    joiner.group.shutdown().await;
    Ok((target, seconds))
}

async fn measure(
    args: &BenchArgs,
    cluster: LocalCluster,
    scratch: &std::path::Path,
) -> Result<serde_json::Value> {
    let peers = args.nodes as u64 - 1;
    for m in &cluster.members {
        let mut rx = m.bonds.stats();
        tokio::time::timeout(Duration::from_secs(20), rx.wait_for(|s| s.live == peers))
            .await
            .context("members did not bond")??;
    }
    let leader = tokio::time::timeout(
        Duration::from_secs(20),
        cluster.members[0].group.when().leader_elected(),
    )
    .await
    .context("no leader")??;
    let leader_ix = cluster.index_of(leader).context("leader is a member")?;
    let target_ix = match args.via {
        Via::Leader => leader_ix,
        Via::Follower if args.nodes > 1 => (leader_ix + 1) % args.nodes,
        Via::Follower => bail!("--via follower needs at least 2 nodes"),
    };
    let mut handles: Vec<Arc<Group<KvStore>>> = Vec::new();
    let cluster = Arc::new(cluster);
    // The handle is shared by every client task; it is cheap to share through an Arc.
    for m in &cluster.members {
        handles.push(Arc::new(m.group.clone()));
    }
    let target = handles[target_ix].clone();
    if !args.json {
        eprintln!(
            "bench: {} nodes bonded, leader {}; {} clients via {:?} for {} s …",
            args.nodes, leader, args.clients, args.via, args.duration
        );
    }
    // Warm-up: sessions and connections.
    let _ = load(
        target.clone(),
        args.clients.min(64),
        Duration::from_millis(500),
    )
    .await;
    let writes_before = handles[leader_ix].storage_writes();
    let term_before = handles[leader_ix].status().term;
    let started = Instant::now();
    let (lat, errors) = load(
        target.clone(),
        args.clients,
        Duration::from_secs(args.duration),
    )
    .await;
    let elapsed = started.elapsed().as_secs_f64();
    let throughput = lat.len() as f64 / elapsed;
    // Elections under load: each one moves the term (a pre-vote that fails does not).
    let elections = handles[leader_ix].status().term.saturating_sub(term_before);
    // The leader's durable writes during the concurrent phase: one sync each.
    let writes = handles[leader_ix].storage_writes();
    let syncs = writes.writes - writes_before.writes;
    let synced_entries = writes.entries - writes_before.entries;
    let sync_ms_mean = if syncs == 0 {
        f64::NAN
    } else {
        (writes.seconds_total - writes_before.seconds_total) * 1000.0 / syncs as f64
    };

    let (seq_p50, seq_p99) = if args.sequential > 0 {
        let (seq, _) = load(target.clone(), 1, Duration::from_secs(args.sequential)).await;
        (percentile(&seq, 0.5), percentile(&seq, 0.99))
    } else {
        (f64::NAN, f64::NAN)
    };

    let breakdown = if tessera::probe::ENABLED && args.sequential > 0 {
        Some(latency_breakdown(target.clone(), Duration::from_secs(args.sequential)).await)
    } else {
        None
    };

    let catch_up = if args.catch_up {
        if !args.json {
            eprintln!("bench: a new member catches up from the log …");
        }
        let (entries, seconds) = catch_up(args, &cluster, &handles[leader_ix], scratch).await?;
        Some(serde_json::json!({
            "entries": entries,
            "seconds": seconds,
            "entries_per_sec": (entries as f64 / seconds).round(),
        }))
    } else {
        None
    };

    let snapshot_install = match args.snapshot_install {
        Some(mib) => {
            Some(snapshot_install(args, &cluster, &handles, leader_ix, mib, scratch).await?)
        }
        None => None,
    };

    let mut stopped = Vec::new();
    let failover_ms = if args.failover {
        Some(fail_over(&cluster, &handles, &mut stopped, Stop::Crash).await?)
    } else {
        None
    };
    let handover_ms = if args.handover {
        Some(fail_over(&cluster, &handles, &mut stopped, Stop::Graceful).await?)
    } else {
        None
    };
    for m in &cluster.members {
        m.group.shutdown().await;
    }
    Ok(serde_json::json!({
        "nodes": args.nodes,
        "clients": args.clients,
        "via": format!("{:?}", args.via).to_lowercase(),
        "storage": format!("{:?}", args.storage).to_lowercase(),
        "duration_s": elapsed,
        "commands": lat.len(),
        "errors": errors,
        "commands_per_sec": throughput.round(),
        "elections_during_load": elections,
        "latency_ms": { "p50": percentile(&lat, 0.5), "p99": percentile(&lat, 0.99), "max": percentile(&lat, 1.0) },
        "sequential_latency_ms": { "p50": seq_p50, "p99": seq_p99 },
        "latency_breakdown": breakdown,
        "leader_durable_writes": {
            "per_sec": (syncs as f64 / elapsed).round(),
            "entries_per_write": if syncs == 0 { f64::NAN } else { synced_entries as f64 / syncs as f64 },
            "mean_ms": sync_ms_mean,
        },
        "catch_up": catch_up,
        "snapshot_install": snapshot_install,
        "failover_ms": failover_ms,
        "handover_ms": handover_ms,
        "tick_ms": 50,
    }))
}

/// How [`fail_over`] stops the leader.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stop {
    /// Its endpoint closes first (its bonds with it), then it stops: it hands nothing over,
    /// and the survivors elect a leader once their election timeout runs out.
    Crash,
    /// `Group::shutdown`: it hands leadership over, then its endpoint closes.
    Graceful,
}

/// Stops the current leader as `how` says and returns the milliseconds until a survivor
/// acknowledges a write. `stopped` holds the members stopped so far (never survivors).
async fn fail_over(
    cluster: &LocalCluster,
    handles: &[Arc<Group<KvStore>>],
    stopped: &mut Vec<usize>,
    how: Stop,
) -> Result<f64> {
    let survivor_ix = (0..handles.len())
        .find(|i| !stopped.contains(i))
        .context("a member still running")?;
    let leader = tokio::time::timeout(
        Duration::from_secs(20),
        handles[survivor_ix].when().leader_elected(),
    )
    .await
    .context("no leader to stop")??;
    let leader_ix = cluster.index_of(leader).context("leader is a member")?;
    let survivor_ix = (0..handles.len())
        .find(|i| *i != leader_ix && !stopped.contains(i))
        .context("a survivor")?;
    let member = &cluster.members[leader_ix];
    let stop = Instant::now();
    let crashed = match how {
        Stop::Crash => {
            member.endpoint.close().await;
            // Its worker winds down on the side (it may try to hand over, in vain).
            let group = member.group.clone();
            Some(tokio::spawn(async move { group.shutdown().await }))
        }
        Stop::Graceful => {
            member.group.shutdown().await;
            member.endpoint.close().await;
            None
        }
    };
    stopped.push(leader_ix);
    let survivor = &handles[survivor_ix];
    let mut n = 0;
    loop {
        if survivor.execute(command(usize::MAX, n)).await.is_ok() {
            break;
        }
        n += 1;
        if stop.elapsed() > Duration::from_secs(30) {
            bail!("no survivor accepted a write within 30 s of the leader stopping ({how:?})");
        }
    }
    let elapsed_ms = stop.elapsed().as_secs_f64() * 1000.0;
    if let Some(worker) = crashed {
        worker.await.context("the crashed leader's shutdown")?;
    }
    Ok(elapsed_ms)
}

pub fn bench(args: BenchArgs) -> ExitCode {
    let json = args.json;
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("tessera bench: cannot start the async runtime: {e}");
            return ExitCode::from(2);
        }
    };
    match runtime.block_on(run(args)) {
        Ok(report) => {
            if json {
                println!("{report}");
            } else {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&report).unwrap_or_default()
                );
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("tessera bench FAILED: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// The storage key of bench member `member`: the bench's stores are scratch data, never
/// reopened by another run, so a fixed group key is enough.
#[cfg(feature = "rocksdb")]
fn bench_storage_key(member: u8) -> tessera::storage::StorageKey {
    tessera::storage::StorageKey::derive(&[0xBE; 32], &[member; 32])
}
