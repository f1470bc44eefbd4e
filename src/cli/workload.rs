//! `tessera workload`: concurrent clients doing get / put / compare-and-swap on a small key
//! space through every given node (leaders and followers), recording every operation's
//! invocation and completion with client-side times in a history file
//! (`docs/history-format.md`) that `tessera lincheck` checks.
//!
//! An operation's completion says what the client knows: `ok` with the result, `fail` when
//! it certainly did not happen (a read that got no answer, a command the node refused as
//! such), `info` when it may have (a write whose retries ran out of `--patience`, a lost
//! connection). Writes are exactly-once: a retried write keeps its session and sequence
//! ([`Client::execute`]), so a history never shows one write applied twice.
//!
//! What it must not do: judge the cluster. It records; `--check` runs the checker on the
//! recorded file afterwards, as `tessera lincheck` would.
//!
//! SIGINT or SIGTERM ends the run early as the end of `--duration` does: no new operation
//! starts, and those in flight finish (or run out of `--patience`) and are recorded.
//!
//! Exit status: 0 done (and linearizable with `--check`), 1 not linearizable, 2 the
//! workload could not run (no node reachable, a bad argument, the history not written).
use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Args;
use tessera::client::{Client, ClientError, ClientRequest, ClientResponse};
use tessera::lincheck::KvModel;
use tessera::lincheck::{check, CheckLimits, CheckOutcome};
use tessera::lincheck::{parse_history_jsonl, EventType, Function, HistoryEvent};
use tessera::machine::{KvCommand, KvOutput, KvQuery, KvQueryResult};

use super::kv::TrustArgs;

#[derive(Args, Debug)]
pub struct WorkloadArgs {
    /// A node to send operations to (repeat; clients are spread over them in turn):
    /// <node id>@<ip:port> or <ip:port>.
    #[arg(long = "node", required = true)]
    pub nodes: Vec<String>,
    /// Concurrent clients.
    #[arg(long, default_value_t = 4)]
    pub clients: usize,
    /// How long the clients keep starting operations, in seconds.
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,
    /// Keys in the key space (`k0`, `k1`, …): few keys, many conflicts.
    #[arg(long, default_value_t = 4)]
    pub keys: u32,
    /// How long a write is retried (same session and sequence) before its outcome is
    /// recorded as unknown, in seconds.
    #[arg(long, default_value_t = 5.0)]
    pub patience: f64,
    /// Where the history is written (JSON lines).
    #[arg(long)]
    pub history: PathBuf,
    /// The clients' key (hex, mode 0600), for nodes whose `[client] allow` lists keys.
    #[arg(long)]
    pub key_file: Option<PathBuf>,
    /// Seed of the operation mix (printed; the same seed gives the same choices, not the
    /// same history: the cluster's timing decides that).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Check the recorded history for linearizability at the end.
    #[arg(long)]
    pub check: bool,
    #[command(flatten)]
    pub trust: TrustArgs,
}

/// SplitMix64: a small seeded generator for the operation mix.
struct Mix(u64);

impl Mix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

/// What the run did, by completion type.
#[derive(Debug, Default, Clone, Copy)]
struct Counts {
    ok: u64,
    fail: u64,
    info: u64,
}

impl Counts {
    fn add(&mut self, kind: EventType) {
        match kind {
            EventType::Ok => self.ok += 1,
            EventType::Fail => self.fail += 1,
            EventType::Info => self.info += 1,
            EventType::Invoke => {}
        }
    }
}

pub fn run(args: WorkloadArgs) -> ExitCode {
    let runtime = match super::kv::runtime() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("tessera workload: {e:#}");
            return ExitCode::from(2);
        }
    };
    match runtime.block_on(workload(args)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("tessera workload: {e:#}");
            ExitCode::from(2)
        }
    }
}

async fn workload(args: WorkloadArgs) -> Result<ExitCode> {
    if args.clients == 0 || args.keys == 0 {
        bail!("--clients and --keys must be at least 1");
    }
    if !(args.duration.is_finite() && args.duration > 0.0) {
        bail!("--duration must be a positive number of seconds");
    }
    if !(args.patience.is_finite() && args.patience > 0.0) {
        bail!("--patience must be a positive number of seconds");
    }
    let trust = args.trust.node_trust()?;
    let seed = args.seed.unwrap_or_else(|| {
        let mut b = [0u8; 8];
        // A fixed seed is as good as a random one here; randomness only varies the mix.
        let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut b);
        u64::from_le_bytes(b)
    });
    println!(
        "tessera workload: seed {seed}, {} clients over {} nodes, {} keys, {} s",
        args.clients,
        args.nodes.len(),
        args.keys,
        args.duration
    );
    let file = std::fs::File::create(&args.history)
        .with_context(|| format!("--history {}", args.history.display()))?;
    let (events, mut recorded) = tokio::sync::mpsc::unbounded_channel::<HistoryEvent>();
    let history_path = args.history.clone();
    let writer = tokio::task::spawn_blocking(move || -> Result<[Counts; 3]> {
        let mut out = std::io::BufWriter::new(file);
        let mut counts = [Counts::default(); 3];
        while let Some(event) = recorded.blocking_recv() {
            let line = serde_json::to_string(&event).context("encode a history event")?;
            writeln!(out, "{line}").with_context(|| format!("write {}", history_path.display()))?;
            let slot = match event.f {
                Function::Get => 0,
                Function::Put | Function::Append | Function::Delete => 1,
                Function::Cas => 2,
            };
            counts[slot].add(event.kind);
        }
        out.flush()
            .with_context(|| format!("write {}", history_path.display()))?;
        Ok(counts)
    });

    let started = Instant::now();
    let stop_at = started + Duration::from_secs_f64(args.duration);
    // A signal ends the run early: the clients stop starting operations, and the history
    // is written to the end as after --duration.
    let (stop_tx, stop) = tokio::sync::watch::channel(false);
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("cannot watch SIGTERM")?;
    tokio::spawn(async move {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = terminate.recv() => {}
        }
        let _ = stop_tx.send(true);
    });
    let patience = Duration::from_secs_f64(args.patience);
    let mut clients = tokio::task::JoinSet::new();
    for process in 0..args.clients {
        let node = args.nodes[process % args.nodes.len()].clone();
        let client = ClientRun {
            process: process as u64,
            node,
            key_file: args.key_file.clone(),
            trust: trust.clone(),
            keys: args.keys,
            patience,
            started,
            stop_at,
            stop: stop.clone(),
            events: events.clone(),
            mix: Mix(seed ^ (process as u64).wrapping_mul(0xA24B_AED4_963E_E407)),
        };
        clients.spawn(client.run());
    }
    drop(events);
    let mut connect_failures = Vec::new();
    while let Some(done) = clients.join_next().await {
        match done {
            Ok(Ok(())) => {}
            Ok(Err(e)) => connect_failures.push(format!("{e:#}")),
            Err(e) => connect_failures.push(format!("a client task failed: {e}")),
        }
    }
    let counts = writer.await.context("history writer")??;
    let took = started.elapsed();
    for (name, c) in ["get", "put", "cas"].iter().zip(counts) {
        println!(
            "  {name}: {} ok, {} failed, {} unknown",
            c.ok, c.fail, c.info
        );
    }
    let total: u64 = counts.iter().map(|c| c.ok + c.fail + c.info).sum();
    println!(
        "tessera workload: {total} operations in {:.1} s, history in {}",
        took.as_secs_f64(),
        args.history.display()
    );
    if !connect_failures.is_empty() {
        for e in &connect_failures {
            eprintln!("tessera workload: {e}");
        }
        if total == 0 {
            bail!("no client could reach a node");
        }
    }
    if !args.check {
        return Ok(ExitCode::SUCCESS);
    }
    let text = std::fs::read_to_string(&args.history)
        .with_context(|| format!("read back {}", args.history.display()))?;
    let history = parse_history_jsonl(&text).context("the recorded history")?;
    let verdict = check(&KvModel::new(), &history.operations, CheckLimits::default());
    match verdict {
        CheckOutcome::Linearizable => {
            println!("tessera workload: the history is linearizable");
            Ok(ExitCode::SUCCESS)
        }
        CheckOutcome::NotLinearizable { .. } => {
            println!("tessera workload: the history is NOT linearizable: {verdict}");
            Ok(ExitCode::from(1))
        }
        CheckOutcome::Unknown { .. } => bail!("the checker gave no verdict: {verdict}"),
    }
}

/// One client: its node, its connection, and the choices it makes.
struct ClientRun {
    process: u64,
    node: String,
    key_file: Option<PathBuf>,
    trust: tessera::client::NodeTrust,
    keys: u32,
    patience: Duration,
    started: Instant,
    stop_at: Instant,
    /// Turns true on SIGINT or SIGTERM.
    stop: tokio::sync::watch::Receiver<bool>,
    events: tokio::sync::mpsc::UnboundedSender<HistoryEvent>,
    mix: Mix,
}

/// What one operation asks, as the history and the client protocol say it.
struct Op {
    f: Function,
    key: String,
    value: Option<String>,
    expected: Option<String>,
}

impl ClientRun {
    fn now(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    fn record(&self, kind: EventType, op: &Op, value: Option<String>, swapped: Option<bool>) {
        let event = HistoryEvent {
            process: self.process,
            kind,
            f: op.f,
            key: op.key.clone(),
            value,
            expected: if op.f == Function::Cas {
                op.expected.clone()
            } else {
                None
            },
            swapped,
            time: self.now(),
        };
        // The writer outlives every client: a send fails only if it stopped on an error,
        // which the run reports.
        let _ = self.events.send(event);
    }

    async fn connect(&self) -> Result<Client> {
        super::kv::connect(&self.node, self.key_file.as_deref(), self.trust.clone())
            .await
            .with_context(|| format!("client {} to {}", self.process, self.node))
    }

    async fn run(mut self) -> Result<()> {
        let mut client = Some(self.connect().await?);
        let mut sequence = 0u64;
        // The last value this client saw per key: what its compare-and-swaps expect.
        let mut seen: Vec<Option<String>> = vec![None; self.keys as usize];
        while Instant::now() < self.stop_at && !*self.stop.borrow() {
            let Some(c) = client.as_mut() else {
                // Lost: dial again (a new session; the old one's commands are settled).
                match self.connect().await {
                    Ok(c) => client = Some(c),
                    Err(e) => {
                        tracing::debug!(error = %e, "reconnect failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
                continue;
            };
            let k = self.mix.below(u64::from(self.keys)) as usize;
            sequence += 1;
            let key = format!("k{k}");
            let fresh = format!("c{}-{sequence}", self.process);
            let op = match self.mix.below(10) {
                0..=3 => Op {
                    f: Function::Get,
                    key,
                    value: None,
                    expected: None,
                },
                4..=6 => Op {
                    f: Function::Put,
                    key,
                    value: Some(fresh),
                    expected: None,
                },
                _ => Op {
                    f: Function::Cas,
                    key,
                    value: Some(fresh),
                    expected: seen[k].clone(),
                },
            };
            self.record(EventType::Invoke, &op, op.value.clone(), None);
            let keep = match op.f {
                Function::Get => {
                    let request = ClientRequest::Query {
                        query: KvQuery::Get {
                            key: op.key.as_bytes().to_vec(),
                        },
                        strong: true,
                    };
                    match c.request(&request).await {
                        Ok(ClientResponse::Queried(KvQueryResult::Get { value })) => {
                            let value = value.map(|v| String::from_utf8_lossy(&v).into_owned());
                            seen[k] = value.clone();
                            self.record(EventType::Ok, &op, value, None);
                            true
                        }
                        // A read has no effect: an unanswered one did not happen.
                        Ok(_) => {
                            self.record(EventType::Fail, &op, None, None);
                            true
                        }
                        Err(e) => {
                            self.record(EventType::Fail, &op, None, None);
                            !is_connection_lost(&e)
                        }
                    }
                }
                Function::Put | Function::Cas => {
                    let key = op.key.as_bytes().to_vec();
                    let value = op.value.clone().unwrap_or_default().into_bytes();
                    let command = if op.f == Function::Put {
                        KvCommand::Put { key, value }
                    } else {
                        KvCommand::CompareAndSwap {
                            key,
                            expected: op.expected.as_ref().map(|v| v.as_bytes().to_vec()),
                            new: Some(value),
                        }
                    };
                    match c.execute(command, self.patience).await {
                        Ok(KvOutput::Put) => {
                            seen[k] = op.value.clone();
                            self.record(EventType::Ok, &op, op.value.clone(), None);
                            true
                        }
                        Ok(KvOutput::Swapped) => {
                            seen[k] = op.value.clone();
                            self.record(EventType::Ok, &op, op.value.clone(), Some(true));
                            true
                        }
                        Ok(KvOutput::SwapFailed { current }) => {
                            seen[k] = current.map(|v| String::from_utf8_lossy(&v).into_owned());
                            self.record(EventType::Ok, &op, op.value.clone(), Some(false));
                            true
                        }
                        // Refused by the store or the node as such: it did not apply.
                        Ok(KvOutput::Rejected(_)) | Err(ClientError::Refused(_)) => {
                            self.record(EventType::Fail, &op, None, None);
                            true
                        }
                        Ok(_) => {
                            self.record(EventType::Info, &op, None, None);
                            true
                        }
                        Err(e) => {
                            // Retried until its patience ran out, or the client cannot go
                            // on: it may have applied.
                            self.record(EventType::Info, &op, None, None);
                            !is_connection_lost(&e)
                        }
                    }
                }
                Function::Append | Function::Delete => true,
            };
            if !keep {
                if let Some(c) = client.take() {
                    c.close().await;
                }
            }
        }
        if let Some(c) = client {
            c.close().await;
        }
        Ok(())
    }
}

/// Whether the client must dial again before its next operation: after anything but a
/// definite refusal. Its retries may have run out because the node it dialled is gone or
/// came back as another identity (a TD reboots with a new key), which only a new dial,
/// to whoever listens at the address now, gets past.
fn is_connection_lost(e: &ClientError) -> bool {
    !matches!(e, ClientError::Refused(_))
}
