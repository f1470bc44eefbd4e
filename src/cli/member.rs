//! `tessera member list|remove --node <node id>@<ip:port> [--node …]`: the group's members,
//! and an operator's removal of one.
//!
//! `list` asks every node given and prints the configuration as the leader among them sees
//! it (else the first that answered). `remove MEMBER` finds the leader among the nodes
//! given and asks it to remove MEMBER (named as `list` and `tessera status` name it: the
//! short key, the full 64-hex key, or the consensus id `n…`). The node serves a removal
//! only to keys in its `[client] operators` (`--key-file`), and only as leader.
//!
//! Exit status: 0 done, 1 refused (not an operator, not a member), 2 the request could
//! not be made or failed.
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{anyhow, bail, Result};
use clap::{Args, Subcommand};
use tessera::client::{ClientRequest, ClientResponse, NodeStatus};
use tessera::groups::node_id_of;
use tessera::raft::NodeId;

use super::kv::{connect, runtime, TrustArgs};
use super::status::{ask, kind_name, name_of};

#[derive(Args, Debug)]
pub struct MemberArgs {
    /// A node to ask: <node id>@<ip:port>. Repeat to give several (`remove` needs the
    /// leader among them).
    #[arg(long, global = true)]
    pub node: Vec<String>,
    /// This client's secret key; for `remove`, a key in the nodes' `[client] operators`.
    #[arg(long, global = true)]
    pub key_file: Option<PathBuf>,
    #[command(flatten)]
    pub trust: TrustArgs,
    #[command(subcommand)]
    pub op: MemberOp,
}

#[derive(Subcommand, Debug)]
pub enum MemberOp {
    /// Print the members: name, consensus id, kind, and whether each leads.
    List,
    /// Remove MEMBER from the group (the leader commits it; it is not added back while
    /// its bond stays up).
    Remove { member: String },
}

/// The answers of the nodes given, with the leader's first when one answered.
async fn statuses(args: &MemberArgs) -> Result<Vec<(String, NodeStatus)>> {
    if args.node.is_empty() {
        bail!("--node <node id>@<ip:port> is required");
    }
    let trust = args.trust.node_trust()?;
    let mut answers = Vec::new();
    let mut errors = Vec::new();
    for node in &args.node {
        match ask(node, args.key_file.as_deref(), trust.clone()).await {
            Ok(status) => answers.push((node.clone(), status)),
            Err(e) => errors.push(format!("{node}: {e:#}")),
        }
    }
    if answers.is_empty() {
        bail!("no node answered: {}", errors.join("; "));
    }
    for e in &errors {
        eprintln!("tessera member: {e}");
    }
    answers.sort_by_key(|(_, s)| s.role != "leader");
    Ok(answers)
}

/// The member `name` designates among those `statuses` know: `n<id>`, a full key, or a
/// prefix of a known key (unique, at least 4 hex digits).
fn resolve(statuses: &[NodeStatus], name: &str) -> Result<NodeId> {
    let known: Vec<(NodeId, Option<[u8; 32]>)> = statuses
        .iter()
        .flat_map(|s| s.members.iter().map(|m| (m.node, m.key)))
        .collect();
    if let Some(id) = name.strip_prefix('n').and_then(|d| d.parse::<u64>().ok()) {
        return Ok(NodeId(id));
    }
    if let Ok(key) = name.parse::<iroh::PublicKey>() {
        return Ok(node_id_of(&key));
    }
    let prefix = name.to_ascii_lowercase();
    if prefix.len() < 4 || !prefix.bytes().all(|b| b.is_ascii_hexdigit()) {
        bail!("{name:?}: expected a member's short key (4+ hex digits), its full key, or n<id>");
    }
    let mut matches: Vec<NodeId> = known
        .iter()
        .filter(|(_, key)| key.is_some_and(|k| hex::encode(k).starts_with(&prefix)))
        .map(|(node, _)| *node)
        .collect();
    matches.sort();
    matches.dedup();
    match matches.as_slice() {
        [one] => Ok(*one),
        [] => bail!(
            "no member whose key starts with {name:?} is known to the nodes asked \
             (members without a known key are named n<id>; see `tessera member list`)"
        ),
        _ => bail!("{name:?} names several members; give more digits"),
    }
}

fn print_members(status: &NodeStatus, all: &[NodeStatus]) {
    println!("MEMBER      ID                     KIND      LEADER");
    for m in &status.members {
        println!(
            "{:<10}  {:<21}  {:<8}  {}",
            name_of(all, m.node),
            m.node.to_string(),
            kind_name(m.kind),
            if m.leader { "yes" } else { "" }
        );
    }
}

async fn member(args: MemberArgs) -> Result<bool> {
    let answers = statuses(&args).await?;
    let all: Vec<NodeStatus> = answers.iter().map(|(_, s)| s.clone()).collect();
    match &args.op {
        MemberOp::List => {
            print_members(&all[0], &all);
            Ok(true)
        }
        MemberOp::Remove { member } => {
            let node = resolve(&all, member)?;
            let Some((leader_addr, _)) = answers.iter().find(|(_, s)| s.role == "leader") else {
                let leader = all
                    .iter()
                    .find_map(|s| s.leader)
                    .map_or("none is known".to_string(), |l| {
                        format!("it is {}", name_of(&all, l))
                    });
                bail!("none of the nodes given leads ({leader}): give the leader with --node");
            };
            let trust = args.trust.node_trust()?;
            let client = connect(leader_addr, args.key_file.as_deref(), trust).await?;
            let answer = client.request(&ClientRequest::RemoveMember { node }).await;
            client.close().await;
            match answer.map_err(|e| anyhow!(e))? {
                ClientResponse::Status(after) => {
                    eprintln!("removed {}", name_of(&all, node));
                    print_members(&after, &all);
                    Ok(true)
                }
                ClientResponse::Error(why) => {
                    eprintln!("refused: {why}");
                    Ok(false)
                }
                ClientResponse::Retry(why) => {
                    bail!("the outcome is unknown ({why}); run the removal again")
                }
                other => bail!("unexpected answer: {other:?}"),
            }
        }
    }
}

pub fn run(args: MemberArgs) -> ExitCode {
    match runtime().and_then(|rt| rt.block_on(member(args))) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("tessera member: {e:#}");
            ExitCode::from(2)
        }
    }
}

#[cfg(test)]
mod tests {
    use tessera::client::{MemberKind, MemberStatus};

    use super::*;

    fn status_with(members: &[(u64, Option<[u8; 32]>)]) -> NodeStatus {
        NodeStatus {
            node_key: [0; 32],
            node: NodeId(0),
            role: "leader".into(),
            term: 1,
            leader: Some(NodeId(0)),
            commit_index: 0,
            applied_index: 0,
            members: members
                .iter()
                .map(|(id, key)| MemberStatus {
                    node: NodeId(*id),
                    key: *key,
                    kind: MemberKind::Voter,
                    leader: false,
                    this_node: false,
                    bonded: true,
                })
                .collect(),
            bonds_live: 0,
            bonds_refused: Vec::new(),
            ticket_expires_at: None,
            now: 0,
            stopped: None,
        }
    }

    #[test]
    fn members_are_named_by_id_full_key_or_unique_key_prefix_and_nothing_else() {
        let a = [0xab; 32];
        let b = [0xac; 32];
        let all = [status_with(&[(1, Some(a)), (2, Some(b)), (3, None)])];
        assert_eq!(resolve(&all, "n3").expect("by id"), NodeId(3));
        let full = iroh::SecretKey::from_bytes(&[5; 32]).public();
        assert_eq!(
            resolve(&all, &full.to_string()).expect("a full key"),
            node_id_of(&full)
        );
        assert_eq!(resolve(&all, "abab").expect("a prefix"), NodeId(1));
        assert_eq!(resolve(&all, "ACAC").expect("any case"), NodeId(2));
        for (bad, why) in [
            ("a", "4+ hex digits"),
            ("xyz1", "4+ hex digits"),
            ("ffff", "no member whose key starts with"),
            ("", "4+ hex digits"),
        ] {
            let e = resolve(&all, bad).expect_err(bad).to_string();
            assert!(e.contains(why), "{bad:?}: {e}");
        }
        let twins = [status_with(&[(1, Some([0xab; 32])), (2, Some([0xab; 32]))])];
        let e = resolve(&twins, "abab").expect_err("ambiguous").to_string();
        assert!(e.contains("several members"), "{e}");
    }
}
