//! `tessera demo`: the embedded default. Three members in one process, each with its own
//! iroh endpoint on loopback, mock TDX attestation, and the replicated key-value store.
//!
//! What is real: iroh QUIC connections (relays, public lookup and port mapper off), the
//! bond handshake (group-key proof bound to the connection, tickets checked against the
//! key iroh authenticated), quotes from the mock provider (byte-valid TDX v4 quotes
//! chaining to the test PKI) verified by the full pipeline against `policies/mock.toml`,
//! the group workers, the consensus core, forwarding, read-index reads, and failover.
//! What is mock: the quote provider and its root of trust.
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use tessera::cluster::{
    loopback_endpoint, mock_validator, random_secret, ClusterMember, ClusterOptions, LocalCluster,
    NETWORK,
};
use tessera::groups::{
    node_id_of, BondConfig, Bonds, Consistency, Dial, GroupKey, Inbox, InboxItem, RefusalRecord,
};
use tessera::machine::{KvCommand, KvQuery, KvQueryResult};
use tessera::raft::NodeId;
use tessera::storage::MemoryStorage;
use tessera::tickets::{Admission, TdxTicketIssuer};
use tessera_attestation::provider::mock::{MockConfig, MockProvider};
use tokio::sync::watch;

const WRITES_PER_PHASE: usize = 20;
const NAMES: [&str; 3] = ["alpha", "bravo", "charlie"];
const WAIT: Duration = Duration::from_secs(10);

fn put(i: usize) -> KvCommand {
    KvCommand::Put {
        key: format!("key-{i:03}").into_bytes(),
        value: format!("value-{i}").into_bytes(),
    }
}

/// Waits until a member logged a refusal of `peer`, and returns it.
async fn refusal_of(cluster: &LocalCluster, peer: NodeId) -> Result<RefusalRecord> {
    let mut rx = cluster.members[0].bonds.stats();
    let found = tokio::time::timeout(
        WAIT,
        rx.wait_for(|s| s.recent_refusals.iter().any(|r| r.peer == peer)),
    )
    .await
    .context("no member refused the candidate in time")?
    .context("bond statistics closed")?;
    let record = found
        .recent_refusals
        .iter()
        .rev()
        .find(|r| r.peer == peer)
        .cloned();
    record.context("refusal vanished")
}

async fn run() -> Result<()> {
    let started = Instant::now();
    println!("tessera demo: three members over iroh on loopback, mock TDX attestation, replicated key-value store");
    println!("  policy policies/mock.toml (trust root: the mock PKI); relays, public discovery and port mapping off");
    println!();

    // 1. The founding members bond: each verifies the others' quotes bound to their keys.
    let key = GroupKey::generate()?;
    let options = ClusterOptions::new(3, key);
    let cluster = LocalCluster::start(options, |_| Ok(MemoryStorage::new())).await?;
    let name_of = |id: NodeId| cluster.index_of(id).map_or("?", |i| NAMES[i]);
    for (i, m) in cluster.members.iter().enumerate() {
        let mut rx = m.bonds.stats();
        tokio::time::timeout(WAIT, rx.wait_for(|s| s.live == 2))
            .await
            .with_context(|| format!("{} did not bond with both peers", NAMES[i]))??;
        println!(
            "  attested  {:<8} node {} at {:?}: bonded with 2 peers (quote verified: TDX v4, TCB UpToDate, bound to its iroh key)",
            NAMES[i],
            m.node,
            m.addr.ip_addrs().next()
        );
    }
    println!("  group id {}", cluster.members[0].group.id());

    // 2. A leader.
    let election = Instant::now();
    let leader = tokio::time::timeout(WAIT, cluster.members[0].group.when().leader_elected())
        .await
        .context("no leader in time")??;
    println!(
        "  leader elected: {} ({leader}) after {:.0?}",
        name_of(leader),
        election.elapsed()
    );
    let leader_ix = cluster.index_of(leader).context("leader is a member")?;
    let follower_ix = (leader_ix + 1) % 3;
    let group = |i: usize| &cluster.members[i].group;

    // 3. Writes through the leader and through a follower (forwarded).
    for i in 0..WRITES_PER_PHASE {
        group(leader_ix).execute(put(i)).await?;
    }
    println!(
        "  {WRITES_PER_PHASE} writes through the leader {} acknowledged",
        NAMES[leader_ix]
    );
    for i in WRITES_PER_PHASE..2 * WRITES_PER_PHASE {
        group(follower_ix).execute(put(i)).await?;
    }
    println!(
        "  {WRITES_PER_PHASE} writes through the follower {} (forwarded to the leader) acknowledged",
        NAMES[follower_ix]
    );
    println!();

    // 4. Peers that must be refused.
    let same = cluster.options.clone();
    let mut candidates: Vec<(&str, ClusterMember)> = Vec::new();
    for (name, mock) in [
        (
            "mallory (other image)",
            MockConfig::default().with_mr_td([0x42; 48]),
        ),
        (
            "forger (bad signature)",
            MockConfig::default().corrupt_signature(),
        ),
    ] {
        candidates.push((
            name,
            cluster.candidate(mock, &same, MemoryStorage::new()).await?,
        ));
    }
    let mut refused = 0;
    for (name, c) in &candidates {
        let r = refusal_of(&cluster, c.node).await?;
        if c.bonds.stats().borrow().bonded != 0 {
            bail!("{name} bonded, but must be refused");
        }
        refused += 1;
        println!("  REFUSED   {name:<24} {:?}: {}", r.reason, r.detail);
    }
    // A replayer presents alpha's genuine ticket on its own connection.
    let provider = MockProvider::new(MockConfig::default())?;
    let collateral = provider.collateral()?;
    let issuer = TdxTicketIssuer::new(Box::new(provider), collateral, NETWORK.into(), 300);
    let stolen = issuer.issue(
        *cluster.members[0].endpoint.id().as_bytes(),
        None,
        cluster.clock()(),
    )?;
    let (ep, _) = loopback_endpoint(random_secret()?).await?;
    let replayer_id = node_id_of(&ep.id());
    let (tx, _rx) = std::sync::mpsc::sync_channel::<InboxItem<()>>(1024);
    let replayer = Bonds::start(
        ep,
        BondConfig {
            group_id: cluster.members[0].group.id(),
            group_key: cluster.options.key.clone(),
            network_id: NETWORK.into(),
            tickets: watch::channel(vec![stolen]).1,
            admission: Arc::new(Admission::new(vec![mock_validator()?])),
            clock: cluster.clock(),
            snapshots: Default::default(),
        },
        Inbox::new(tx),
        cluster.members.iter().map(|m| m.addr.clone()).collect(),
        Dial::All,
    );
    let r = refusal_of(&cluster, replayer_id).await?;
    if replayer.stats().borrow().bonded != 0 {
        bail!("the replayer bonded, but must be refused");
    }
    refused += 1;
    println!(
        "  REFUSED   {:<24} {:?}: {}",
        "replayer (alpha's quote)", r.reason, r.detail
    );
    drop(candidates);
    println!();

    // 5. Stop the leader; a new one takes over.
    let stop = Instant::now();
    group(leader_ix).shutdown().await;
    cluster.members[leader_ix].endpoint.close().await;
    let survivor = group(follower_ix);
    let new_leader = tokio::time::timeout(WAIT, survivor.when().leader_changed_from(Some(leader)))
        .await
        .context("no new leader in time")??;
    survivor.execute(put(2 * WRITES_PER_PHASE)).await?;
    println!(
        "  leader {} stopped; {} took over and accepted writes {:.0?} later",
        NAMES[leader_ix],
        name_of(new_leader),
        stop.elapsed()
    );
    for i in 2 * WRITES_PER_PHASE + 1..3 * WRITES_PER_PHASE {
        survivor.execute(put(i)).await?;
    }

    // 6. Every acknowledged write is there, read linearizably from each survivor.
    let total = 3 * WRITES_PER_PHASE;
    for i in (0..3).filter(|i| *i != leader_ix) {
        for w in 0..total {
            let query = KvQuery::Get {
                key: format!("key-{w:03}").into_bytes(),
            };
            match group(i).query(query, Consistency::Strong).await? {
                KvQueryResult::Get { value: Some(v) } if v == format!("value-{w}").into_bytes() => {
                }
                other => bail!(
                    "acknowledged write {w} missing on {} after failover: {other:?}",
                    NAMES[i]
                ),
            }
        }
    }
    println!("  all {total} acknowledged writes read back (strong reads) on both survivors");
    for m in &cluster.members {
        m.group.shutdown().await;
    }
    println!();
    println!(
        "tessera demo: 3 peers attested and bonded over iroh, {refused} refused (wrong measurement, forged signature, replayed quote); \
         {total} writes, leader failover, no acknowledged write lost; {:.1?}",
        started.elapsed()
    );
    Ok(())
}

pub fn demo() -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("tessera demo: cannot start the async runtime: {e}");
            return ExitCode::from(2);
        }
    };
    match runtime.block_on(run()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tessera demo FAILED: {e:#}");
            ExitCode::FAILURE
        }
    }
}
