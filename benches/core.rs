//! Core throughput: committed entries per CPU-second of a 3-node cluster of real cores with
//! zero network delay and an instant disk, for proposal batches of 1, 16 and 256.
//!
//! What is measured is the consensus core alone (the cost of `step`/`ready`, log, message
//! construction and commit bookkeeping on all three nodes), driven in one thread; the
//! transport and storage costs are not in it. Prints one JSON object per batch size.
//!
//! Run: `make bench-core` (or `cargo bench --bench core`).
use std::collections::VecDeque;
use std::time::Instant;

use bytes::Bytes;
use tessera::raft::{
    InitialState, Input, Membership, Message, NodeId, Raft, RaftConfig, Ready, Role,
};

const ENTRIES_PER_RUN: u64 = 1_000_000;
const COMMAND_BYTES: usize = 16;

/// CPU seconds used by this process so far (user + system), from /proc.
fn cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name (which is in parentheses and may contain spaces).
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    const CLOCK_TICKS_PER_SECOND: f64 = 100.0;
    Some((utime + stime) / CLOCK_TICKS_PER_SECOND)
}

struct Cluster {
    nodes: Vec<Raft>,
    queue: VecDeque<Message>,
}

impl Cluster {
    fn new() -> Self {
        let ids = [NodeId(1), NodeId(2), NodeId(3)];
        let config = RaftConfig {
            max_entries_per_message: 4096,
            max_inflight_messages: 256,
            ..RaftConfig::default()
        };
        let mut nodes: Vec<Raft> = ids
            .iter()
            .map(|id| {
                let mut r =
                    Raft::new(*id, config.clone(), id.0, InitialState::default()).expect("config");
                r.bootstrap(Membership::with_voters(ids)).expect("fresh");
                r
            })
            .collect();
        let mut cluster = Self {
            nodes: Vec::new(),
            queue: VecDeque::new(),
        };
        for r in &mut nodes {
            let ready = r.ready();
            Self::persist(r, &ready);
        }
        cluster.nodes = nodes;
        while cluster.nodes[0].role() != Role::Leader {
            cluster.nodes[0].step(Input::Tick).expect("tick");
            cluster.pump();
        }
        cluster
    }

    fn persist(r: &mut Raft, ready: &Ready) {
        if let Some((index, term)) = ready.persisted_position() {
            r.step(Input::Persisted { index, term }).expect("persisted");
        }
    }

    fn drain(&mut self, i: usize) {
        loop {
            let ready = self.nodes[i].ready();
            if ready.is_empty() {
                return;
            }
            Self::persist(&mut self.nodes[i], &ready);
            self.queue.extend(ready.messages);
            self.queue.extend(ready.persisted_messages);
        }
    }

    fn pump(&mut self) {
        loop {
            for i in 0..self.nodes.len() {
                self.drain(i);
            }
            if self.queue.is_empty() {
                return;
            }
            while let Some(m) = self.queue.pop_front() {
                let to = (m.to.0 - 1) as usize;
                self.nodes[to]
                    .step(Input::Message(m))
                    .expect("valid message");
            }
        }
    }
}

fn run(batch: usize) -> (f64, f64, u64) {
    let mut cluster = Cluster::new();
    let start_commit = cluster.nodes[0].commit_index();
    let payload = Bytes::from(vec![7u8; COMMAND_BYTES]);
    let wall = Instant::now();
    let cpu = cpu_seconds();
    let rounds = ENTRIES_PER_RUN / batch as u64;
    for _ in 0..rounds {
        let commands = vec![payload.clone(); batch];
        cluster.nodes[0]
            .step(Input::Propose {
                commands,
                timestamp_ms: 0,
            })
            .expect("propose");
        cluster.pump();
        // Keep memory flat: compact the log behind the commit point now and then.
        let applied = cluster.nodes[0].applied_index();
        if applied % 65_536 < batch as u64 {
            for r in &mut cluster.nodes {
                let applied = r.applied_index();
                r.step(Input::Compact {
                    index: applied,
                    data: Bytes::new(),
                })
                .expect("compact");
            }
        }
    }
    let wall_s = wall.elapsed().as_secs_f64();
    let cpu_s = match (cpu, cpu_seconds()) {
        (Some(a), Some(b)) if b > a => b - a,
        _ => wall_s,
    };
    let committed = cluster.nodes[0].commit_index() - start_commit;
    assert!(
        committed >= rounds * batch as u64,
        "every proposal committed"
    );
    (cpu_s, wall_s, committed)
}

fn main() {
    // `cargo bench` passes --bench; a filter argument selects batch sizes.
    let filter: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    for batch in [1usize, 16, 256] {
        if !filter.is_empty() && !filter.iter().any(|f| f == &batch.to_string()) {
            continue;
        }
        let (cpu_s, wall_s, committed) = run(batch);
        println!(
            "{{\"bench\":\"raft_core_3_nodes\",\"batch\":{batch},\"entries\":{committed},\"cpu_s\":{cpu_s:.3},\"wall_s\":{wall_s:.3},\"entries_per_cpu_s\":{:.0}}}",
            committed as f64 / cpu_s
        );
    }
}
