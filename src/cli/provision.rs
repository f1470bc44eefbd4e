//! `tessera provision --node <node> --group-key-file K --key-file P --policy F`: sends the
//! group key to a node started with `[provision]` (in a TD, the only way a node gets it).
//!
//! The node must first prove, over this very connection, that it runs an image `--policy`
//! approves: its tickets are checked for the key the connection authenticated before the
//! key is written to it. There is no `--insecure` here: the key admits members, so it is
//! never sent to a node that was not checked. The node serves only the provisioner keys in
//! its `[provision] allow`, so `--key-file` must hold one of them.
//!
//! Exit status: 0 the node holds the key (sent now, or it already had this one), 2 it was
//! not sent or not accepted (the reason is printed).
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::Args;
use tessera::client::GroupKeyBytes;
use tessera::client::{ClientRequest, ClientResponse};
use tessera::groups::GroupKey;

use super::kv::{connect, runtime, TrustArgs};

#[derive(Args, Debug)]
pub struct ProvisionArgs {
    /// The node to provision: <node id>@<ip:port>, or <ip:port> (whoever listens there now;
    /// it must still prove what it runs before the key is sent).
    #[arg(long)]
    pub node: String,
    /// The group key to send (64 hex, mode 0600; `tessera keygen --group`).
    #[arg(long, value_name = "FILE")]
    pub group_key_file: PathBuf,
    /// This provisioner's secret key (`tessera keygen`); its public key must be in the
    /// node's `[provision] allow`.
    #[arg(long, value_name = "FILE")]
    pub key_file: PathBuf,
    #[command(flatten)]
    pub trust: TrustArgs,
}

pub fn run(args: ProvisionArgs) -> ExitCode {
    let outcome = runtime().and_then(|rt| rt.block_on(provision(&args)));
    match outcome {
        Ok(message) => {
            println!("{message}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("tessera provision: {e:#}");
            ExitCode::from(2)
        }
    }
}

async fn provision(args: &ProvisionArgs) -> Result<String> {
    if args.trust.insecure {
        bail!(
            "--insecure refused: the group key is only sent to a node whose attestation \
             passes --policy"
        );
    }
    let trust = args.trust.node_trust()?;
    let key = GroupKey::from_file(&args.group_key_file).context("--group-key-file")?;
    let client = connect(&args.node, Some(&args.key_file), trust).await?;
    let node = client.node().to_string();
    let answer = client
        .request(&ClientRequest::ProvisionGroupKey {
            key: GroupKeyBytes::from(&key),
        })
        .await;
    client.close().await;
    match answer.with_context(|| format!("sending the group key to {node}"))? {
        ClientResponse::Provisioned { key_id } if key_id == key.public_id() => Ok(format!(
            "provisioned {node} with group key {}",
            hex::encode(&key_id[..8])
        )),
        ClientResponse::Provisioned { key_id } => bail!(
            "{node} acknowledged another key (id {}), not this one",
            hex::encode(&key_id[..8])
        ),
        ClientResponse::Error(reason) => bail!("{node} refused the key: {reason}"),
        other => bail!("{node} answered the key with {other:?}"),
    }
}
