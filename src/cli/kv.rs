//! `tessera kv put|get|del|cas|scan --node <node id>@<ip:port>`: the key-value client.
//!
//! Dials one node over the client protocol with a fresh key (or `--key-file`, for nodes
//! whose `[client] allow` lists keys). Writes go through the log from any member, exactly
//! once: a write whose answer is lost or late is sent again in the same session with the
//! same sequence number (see [`Client::execute`]) for up to `--patience` seconds, and only
//! then reported as unknown. `get` and `scan` are linearizable reads unless `--weak`.
//!
//! Before anything is sent the node must prove it runs an approved image: its tickets must
//! pass `--policy` for the key the connection authenticated (a host could otherwise run an
//! impostor outside any TD on the node's address and receive every write). `--insecure`
//! skips that check, for nodes that are not attested.
//!
//! Exit status: 0 done, 1 a negative answer (`get` of an absent key, a `cas` that did not
//! match, a command the store rejected), 2 the request could not be made or failed, 3 the
//! outcome of a write is unknown (it applied once or not at all).
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use iroh::EndpointAddr;
use tessera::client::{
    Client, ClientError, ClientRequest, ClientResponse, NodeTrust, EXECUTE_PATIENCE,
};
use tessera::config::{parse_node, read_secret_key, NodeName};
use tessera::machine::{KvCommand, KvOutput, KvQuery, KvQueryResult};
use tessera::net::announce;
use tessera::net::random_secret;
use tessera::tickets::{system_clock, AnyOf, TdxValidator, TicketValidator};
use tessera_attestation::TrustRoot;

/// Bound on asking a bare `--node <ip:port>` who listens there.
const RESOLVE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// How a client checks the node it asks (`tessera kv`, `tessera status`).
#[derive(Args, Debug, Clone)]
pub struct TrustArgs {
    /// A policy the node's tickets must pass (its quote, bound to the key the connection
    /// authenticated). Repeat for several (any one may pass). Required unless --insecure.
    #[arg(long, global = true, value_name = "FILE")]
    pub policy: Vec<PathBuf>,
    /// The network id the node's tickets must be issued for (default: any).
    #[arg(long, global = true, value_name = "ID")]
    pub network: Option<String>,
    /// Do not check the node's attestation: anyone holding its key, in a TD or not, gets
    /// what this client sends. For nodes that are not attested.
    #[arg(long, global = true, conflicts_with_all = ["policy", "network"])]
    pub insecure: bool,
}

impl TrustArgs {
    /// The check these flags ask for; neither `--policy` nor `--insecure` is an error.
    pub fn node_trust(&self) -> Result<NodeTrust> {
        if self.insecure {
            return Ok(NodeTrust::Insecure);
        }
        if self.policy.is_empty() {
            bail!(
                "give --policy <file> (the node's tickets must pass it before anything is \
                 sent), or --insecure to talk to a node without checking its attestation"
            );
        }
        let mut validators: Vec<Arc<dyn TicketValidator>> = Vec::new();
        let mut mock = Vec::new();
        for path in &self.policy {
            let policy = super::attest::load_policy(path)
                .with_context(|| format!("--policy {}", path.display()))?;
            mock.push(policy.trust_root == TrustRoot::Mock);
            validators.push(validator_for(policy, path)?);
        }
        if mock.iter().any(|m| *m) && !mock.iter().all(|m| *m) {
            bail!("--policy: the policies mix the mock root and Intel's root; give one kind");
        }
        let validator: Arc<dyn TicketValidator> = if validators.len() == 1 {
            validators.remove(0)
        } else {
            Arc::new(AnyOf::new(validators).context("--policy")?)
        };
        Ok(NodeTrust::Verify {
            validator,
            network_id: self.network.clone(),
            // Mock nodes run their clocks inside the mock collateral's window: take the
            // node's. A real node is judged by this machine's clock.
            clock: if mock.first() == Some(&true) {
                None
            } else {
                Some(system_clock())
            },
        })
    }
}

fn validator_for(
    policy: tessera_attestation::Policy,
    path: &Path,
) -> Result<Arc<dyn TicketValidator>> {
    let at = || format!("--policy {}", path.display());
    match policy.trust_root {
        #[cfg(feature = "mock-attestation")]
        TrustRoot::Mock => Ok(Arc::new(
            tessera::tickets::MockTdxValidator::new(policy).with_context(at)?,
        )),
        #[cfg(not(feature = "mock-attestation"))]
        TrustRoot::Mock => bail!(
            "{}: trust_root = \"mock\" refused: this build has no mock attestation",
            at()
        ),
        _ => Ok(Arc::new(TdxValidator::new(policy).with_context(at)?)),
    }
}

#[derive(Args, Debug)]
pub struct KvArgs {
    /// The node to ask: <node id>@<ip:port>, or <ip:port> (whoever listens there now:
    /// with --policy, it must still prove what it runs).
    #[arg(long, global = true)]
    pub node: Option<String>,
    /// This client's secret key (hex, mode 0600; see `tessera keygen`). Default: a fresh
    /// key for this call, which only nodes with `[client] allow = "any"` serve.
    #[arg(long, global = true)]
    pub key_file: Option<PathBuf>,
    /// How long a write is retried (same session, same sequence: it applies at most once)
    /// before its outcome is reported as unknown, in seconds.
    #[arg(long, global = true, default_value_t = EXECUTE_PATIENCE.as_secs())]
    pub patience: u64,
    #[command(flatten)]
    pub trust: TrustArgs,
    #[command(subcommand)]
    pub op: KvOp,
}

#[derive(Subcommand, Debug)]
pub enum KvOp {
    /// Set KEY to VALUE.
    Put { key: String, value: String },
    /// Print the value of KEY (exit 1 if absent).
    Get {
        key: String,
        /// Read this node's local state (fast, possibly stale) instead of a linearizable read.
        #[arg(long)]
        weak: bool,
    },
    /// Remove KEY.
    Del { key: String },
    /// Compare and swap: set KEY to --new (or delete it with --delete) only if it holds
    /// --expect (or is absent, with --expect-absent). Exit 1 if it did not match.
    Cas {
        key: String,
        #[arg(long, conflicts_with = "expect_absent")]
        expect: Option<String>,
        #[arg(long)]
        expect_absent: bool,
        #[arg(long, conflicts_with = "delete")]
        new: Option<String>,
        #[arg(long)]
        delete: bool,
    },
    /// Print keys and values (tab-separated) whose key starts with PREFIX, in key order.
    Scan {
        #[arg(default_value = "")]
        prefix: String,
        /// The most entries printed (the node caps it).
        #[arg(long, default_value_t = 100)]
        limit: u32,
        #[arg(long)]
        weak: bool,
    },
}

/// Dials `node` (`<node id>@<ip:port>`, or a bare `<ip:port>`: whoever listens there now)
/// with the key in `key_file` or a fresh one, and checks it as `trust` says.
pub async fn connect(node: &str, key_file: Option<&Path>, trust: NodeTrust) -> Result<Client> {
    let addr = match parse_node(node).map_err(|e| anyhow::anyhow!("--node: {e}"))? {
        NodeName::Id(addr) => addr,
        NodeName::Address(at) => {
            let answer = announce::resolve(at, RESOLVE_TIMEOUT)
                .await
                .with_context(|| format!("--node {at}: who listens there"))?;
            EndpointAddr::new(answer.id).with_ip_addr(at)
        }
    };
    let secret = match key_file {
        Some(path) => read_secret_key(path).map_err(|e| anyhow::anyhow!("--key-file: {e}"))?,
        None => random_secret()?,
    };
    Ok(Client::connect(addr, secret, trust).await?)
}

/// A runtime for one client call.
pub fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

/// What one `tessera kv` call sends: a command through the log, or a request.
enum Call {
    Execute(KvCommand),
    Request(ClientRequest),
}

fn request_of(op: &KvOp) -> Result<Call> {
    let bytes = |s: &str| s.as_bytes().to_vec();
    Ok(match op {
        KvOp::Put { key, value } => Call::Execute(KvCommand::Put {
            key: bytes(key),
            value: bytes(value),
        }),
        KvOp::Get { key, weak } => Call::Request(ClientRequest::Query {
            query: KvQuery::Get { key: bytes(key) },
            strong: !weak,
        }),
        KvOp::Del { key } => Call::Execute(KvCommand::Delete { key: bytes(key) }),
        KvOp::Cas {
            key,
            expect,
            expect_absent,
            new,
            delete,
        } => {
            if expect.is_none() && !expect_absent {
                bail!("cas needs --expect VALUE or --expect-absent");
            }
            if new.is_none() && !delete {
                bail!("cas needs --new VALUE or --delete");
            }
            Call::Execute(KvCommand::CompareAndSwap {
                key: bytes(key),
                expected: expect.as_deref().map(bytes),
                new: new.as_deref().map(bytes),
            })
        }
        KvOp::Scan {
            prefix,
            limit,
            weak,
        } => Call::Request(ClientRequest::Query {
            query: KvQuery::Range {
                prefix: bytes(prefix),
                limit: *limit,
            },
            strong: !weak,
        }),
    })
}

/// Prints the answer; returns whether it was positive.
fn print_answer(response: ClientResponse) -> Result<bool> {
    let mut out = std::io::stdout().lock();
    match response {
        ClientResponse::Error(e) | ClientResponse::Retry(e) => bail!("the node answered: {e}"),
        ClientResponse::Executed(KvOutput::Rejected(why)) => {
            eprintln!("rejected: {why}");
            Ok(false)
        }
        ClientResponse::Executed(KvOutput::Put) => {
            writeln!(out, "OK")?;
            Ok(true)
        }
        ClientResponse::Executed(KvOutput::Delete { removed }) => {
            writeln!(out, "{}", if removed { "deleted" } else { "absent" })?;
            Ok(true)
        }
        ClientResponse::Executed(KvOutput::Swapped) => {
            writeln!(out, "swapped")?;
            Ok(true)
        }
        ClientResponse::Executed(KvOutput::SwapFailed { current }) => {
            match current {
                Some(v) => eprintln!(
                    "not swapped: the key holds {:?}",
                    String::from_utf8_lossy(&v)
                ),
                None => eprintln!("not swapped: the key is absent"),
            }
            Ok(false)
        }
        ClientResponse::Queried(KvQueryResult::Get { value: Some(v) }) => {
            out.write_all(&v)?;
            writeln!(out)?;
            Ok(true)
        }
        ClientResponse::Queried(KvQueryResult::Get { value: None }) => {
            eprintln!("not found");
            Ok(false)
        }
        ClientResponse::Queried(KvQueryResult::Range { entries, more }) => {
            for (k, v) in entries {
                out.write_all(&k)?;
                out.write_all(b"\t")?;
                out.write_all(&v)?;
                writeln!(out)?;
            }
            if more {
                eprintln!("(more entries; raise --limit or narrow the prefix)");
            }
            Ok(true)
        }
        other => bail!("unexpected answer: {other:?}"),
    }
}

/// What a call came to.
enum Outcome {
    Answered(bool),
    /// A write was retried until `--patience` ran out.
    Unknown(ClientError),
}

async fn kv(args: KvArgs) -> Result<Outcome> {
    let node = args
        .node
        .as_deref()
        .context("--node <node id>@<ip:port> is required")?;
    let call = request_of(&args.op)?;
    let trust = args.trust.node_trust()?;
    let mut client = connect(node, args.key_file.as_deref(), trust).await?;
    let response = match call {
        Call::Request(request) => client.request(&request).await,
        Call::Execute(command) => {
            let patience = std::time::Duration::from_secs(args.patience);
            match client.execute(command, patience).await {
                Ok(output) => Ok(ClientResponse::Executed(output)),
                Err(e @ ClientError::OutcomeUnknown { .. }) => {
                    client.close().await;
                    return Ok(Outcome::Unknown(e));
                }
                Err(e) => Err(e),
            }
        }
    };
    client.close().await;
    print_answer(response?).map(Outcome::Answered)
}

pub fn run(args: KvArgs) -> ExitCode {
    let result = runtime().and_then(|rt| rt.block_on(kv(args)));
    match result {
        Ok(Outcome::Answered(true)) => ExitCode::SUCCESS,
        Ok(Outcome::Answered(false)) => ExitCode::FAILURE,
        Ok(Outcome::Unknown(e)) => {
            eprintln!("tessera kv: {e}");
            ExitCode::from(3)
        }
        Err(e) => {
            eprintln!("tessera kv: {e:#}");
            ExitCode::from(2)
        }
    }
}
