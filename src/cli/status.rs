//! `tessera status --node <node id>@<ip:port> [--node …]`: the group as a table.
//!
//! Each node asked contributes its own row (role, term, commit and applied index, live
//! bonds, its ticket's expiry); members nobody asked appear with what the asked nodes know
//! of them (leader or voter/learner, bonded or not). Ask every member for a full table.
//!
//! Exit status: 0 when every node answered, 1 when some did not (the table shows the
//! others), 2 when none did.
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Result};
use clap::Args;
use tessera::client::{ClientRequest, ClientResponse, MemberKind, NodeStatus, NodeTrust};
use tessera::raft::NodeId;

use super::kv::{connect, runtime, TrustArgs};

#[derive(Args, Debug)]
pub struct StatusArgs {
    /// A node to ask: <node id>@<ip:port>. Repeat to ask several.
    #[arg(long, required = true)]
    pub node: Vec<String>,
    /// This client's secret key (see `tessera kv --key-file`).
    #[arg(long)]
    pub key_file: Option<PathBuf>,
    #[command(flatten)]
    pub trust: TrustArgs,
}

pub(crate) async fn ask(
    node: &str,
    key_file: Option<&std::path::Path>,
    trust: NodeTrust,
) -> Result<NodeStatus> {
    let client = connect(node, key_file, trust).await?;
    let response = client.request(&ClientRequest::Status).await;
    client.close().await;
    match response? {
        ClientResponse::Status(s) => Ok(s),
        ClientResponse::Error(e) => bail!("the node answered: {e}"),
        other => bail!("unexpected answer: {other:?}"),
    }
}

pub(crate) fn kind_name(kind: MemberKind) -> &'static str {
    match kind {
        MemberKind::Voter => "voter",
        MemberKind::Learner => "learner",
        MemberKind::Observer => "observer",
    }
}

fn expiry(s: &NodeStatus) -> String {
    match s.ticket_expires_at {
        None => "-".into(),
        Some(at) if at <= s.now => "EXPIRED".into(),
        Some(at) => {
            let left = at - s.now;
            format!("in {}m{:02}s", left / 60, left % 60)
        }
    }
}

/// How the table names a member: the short form of its iroh key (as in the logs and the
/// first characters of its node id) when any answer knows it, else its consensus id.
pub(crate) fn name_of(statuses: &[NodeStatus], node: NodeId) -> String {
    let key = statuses.iter().find_map(|s| {
        if s.node == node {
            return Some(s.node_key);
        }
        s.members
            .iter()
            .find(|m| m.node == node)
            .and_then(|m| m.key)
    });
    match key {
        Some(key) => hex::encode(&key[..5]),
        None => node.to_string(),
    }
}

/// The table for the statuses that came back.
pub fn table(statuses: &[NodeStatus]) -> String {
    let asked: BTreeMap<NodeId, &NodeStatus> = statuses.iter().map(|s| (s.node, s)).collect();
    // Every member any asked node knows, in the order the first view lists them.
    let mut order: Vec<NodeId> = Vec::new();
    for s in statuses {
        for m in &s.members {
            if !order.contains(&m.node) {
                order.push(m.node);
            }
        }
        if !order.contains(&s.node) {
            order.push(s.node);
        }
    }
    let header = [
        "MEMBER",
        "ROLE",
        "TERM",
        "COMMIT",
        "APPLIED",
        "BONDS",
        "TICKET EXPIRY",
    ];
    let mut rows: Vec<[String; 7]> = Vec::new();
    for node in order {
        let known = statuses
            .iter()
            .find_map(|s| s.members.iter().find(|m| m.node == node));
        let row = match asked.get(&node) {
            Some(s) => {
                let role = match (s.role.as_str(), known.map(|m| m.kind)) {
                    ("follower", Some(kind)) if kind != MemberKind::Voter => kind_name(kind),
                    (role, _) => role,
                };
                let role = if known.is_none() {
                    format!("{role} (not a member)")
                } else {
                    role.to_string()
                };
                [
                    name_of(statuses, node),
                    role,
                    s.term.to_string(),
                    s.commit_index.to_string(),
                    s.applied_index.to_string(),
                    s.bonds_live.to_string(),
                    expiry(s),
                ]
            }
            None => {
                let leader = statuses.iter().any(|s| s.leader == Some(node));
                let role = match known {
                    _ if leader => "leader",
                    Some(m) => kind_name(m.kind),
                    None => "?",
                };
                let bonded = statuses
                    .iter()
                    .any(|s| s.members.iter().any(|m| m.node == node && m.bonded));
                let dash = || "-".to_string();
                [
                    name_of(statuses, node),
                    role.to_string(),
                    dash(),
                    dash(),
                    dash(),
                    if bonded { "bonded" } else { "unbonded" }.to_string(),
                    dash(),
                ]
            }
        };
        rows.push(row);
    }
    let mut widths = header.map(str::len);
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.len());
        }
    }
    let line = |cells: &[String]| {
        let mut text = String::new();
        for (i, (cell, w)) in cells.iter().zip(widths).enumerate() {
            if i + 1 == cells.len() {
                text.push_str(cell);
            } else {
                text.push_str(&format!("{cell:<w$}  "));
            }
        }
        text.push('\n');
        text
    };
    let mut out = line(&header.map(String::from));
    for row in &rows {
        out.push_str(&line(row));
    }
    out
}

fn summary(statuses: &[NodeStatus]) -> String {
    let term = statuses.iter().map(|s| s.term).max().unwrap_or(0);
    let leader = statuses
        .iter()
        .filter(|s| s.term == term)
        .find_map(|s| s.leader)
        .map_or("none known".to_string(), |l| name_of(statuses, l));
    let members = statuses.first().map_or(0, |s| s.members.len());
    format!("group: {members} members, term {term}, leader {leader}\n")
}

pub fn run(args: StatusArgs) -> ExitCode {
    let rt = match runtime() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("tessera status: {e:#}");
            return ExitCode::from(2);
        }
    };
    let trust = match args.trust.node_trust() {
        Ok(trust) => trust,
        Err(e) => {
            eprintln!("tessera status: {e:#}");
            return ExitCode::from(2);
        }
    };
    let mut statuses = Vec::new();
    let mut failed = 0;
    for node in &args.node {
        match rt.block_on(ask(node, args.key_file.as_deref(), trust.clone())) {
            Ok(s) => statuses.push(s),
            Err(e) => {
                failed += 1;
                eprintln!("tessera status: {node}: {e:#}");
            }
        }
    }
    if statuses.is_empty() {
        return ExitCode::from(2);
    }
    print!("{}{}", summary(&statuses), table(&statuses));
    for s in &statuses {
        if let Some(why) = &s.stopped {
            println!("{} STOPPED: {why}", s.node);
        }
    }
    if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tessera::client::MemberStatus;

    fn status(node: u64, role: &str, leader: u64) -> NodeStatus {
        NodeStatus {
            node_key: [node as u8; 32],
            node: NodeId(node),
            role: role.into(),
            term: 4,
            leader: Some(NodeId(leader)),
            commit_index: 17,
            applied_index: 16,
            members: (1..=3)
                .map(|n| MemberStatus {
                    node: NodeId(n),
                    key: (n != 3).then_some([n as u8; 32]),
                    kind: MemberKind::Voter,
                    leader: n == leader,
                    this_node: n == node,
                    bonded: n != node,
                })
                .collect(),
            bonds_live: 2,
            bonds_refused: Vec::new(),
            ticket_expires_at: Some(1300),
            now: 1000,
            stopped: None,
        }
    }

    #[test]
    fn the_table_has_a_full_row_per_asked_node_and_what_is_known_of_the_others() {
        let text = table(&[status(1, "follower", 2)]);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 4, "{text}");
        assert!(lines[0].starts_with("MEMBER"), "{text}");
        let cells = |l: &str| l.split_whitespace().map(String::from).collect::<Vec<_>>();
        assert_eq!(
            cells(lines[1]),
            [
                "0101010101",
                "follower",
                "4",
                "17",
                "16",
                "2",
                "in",
                "5m00s"
            ]
        );
        assert_eq!(
            cells(lines[2]),
            ["0202020202", "leader", "-", "-", "-", "bonded", "-"]
        );
        assert_eq!(
            cells(lines[3]),
            ["n3", "voter", "-", "-", "-", "bonded", "-"]
        );
        assert_eq!(
            summary(&[status(1, "follower", 2)]),
            "group: 3 members, term 4, leader 0202020202\n"
        );

        let text = table(&[status(1, "follower", 2), status(2, "leader", 2)]);
        assert_eq!(
            cells(text.lines().nth(2).expect("row")),
            ["0202020202", "leader", "4", "17", "16", "2", "in", "5m00s"]
        );
    }
}
