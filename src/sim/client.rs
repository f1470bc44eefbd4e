//! Simulated clients: they issue key-value operations one at a time, retry through leader
//! changes and lost messages with the same sequence number, and record what they saw. In
//! some runs a client gives up on an operation after a while: its outcome stays unknown in
//! the history (it may or may not have taken effect) and the client goes on with its next
//! sequence number, never reusing the one it gave up on.
use crate::lincheck::kv::{KvInput, KvOutput as LinOutput};
use crate::lincheck::Operation;
use crate::machine::{ClientId, KvCommand, KvOutput, SessionOutput};
use crate::raft::{NodeId, SplitMix64};

use super::node::{Reply, Request};

/// The operation a client is working on.
#[derive(Clone, Debug)]
pub(super) struct InFlight {
    /// Index into the history.
    pub op: usize,
    pub request: Request,
    pub attempt: u64,
    /// Virtual time of the call, for giving up.
    pub started_ms: u64,
}

pub(super) struct SimClient {
    pub id: ClientId,
    pub seq: u64,
    pub current: Option<InFlight>,
    pub leader_guess: Option<NodeId>,
    pub next_target: usize,
}

/// What a reply means for the client's current operation.
pub(super) enum Outcome {
    Done(LinOutput),
    RetryAt(Option<NodeId>),
    /// A reply that the protocol never sends to a correct client.
    Bug(String),
}

impl SimClient {
    pub(super) fn new(id: ClientId) -> Self {
        Self {
            id,
            seq: 0,
            current: None,
            leader_guess: None,
            next_target: id.0 as usize,
        }
    }

    /// Picks the node for the next attempt: the known leader, else round robin.
    pub(super) fn target(&mut self, nodes: &[NodeId]) -> NodeId {
        if let Some(leader) = self.leader_guess.take() {
            return leader;
        }
        self.next_target = (self.next_target + 1) % nodes.len();
        nodes[self.next_target]
    }

    /// A fresh random operation over a few keys, with values unique to this client and
    /// sequence number so that the checker can tell every write apart.
    pub(super) fn next_operation(&mut self, rng: &mut SplitMix64, keys: u64) -> (Request, KvInput) {
        self.seq += 1;
        let key = format!("k{}", rng.range(0, keys)).into_bytes();
        let value = format!("c{}s{};", self.id.0, self.seq).into_bytes();
        let command = match rng.range(0, 10) {
            0..=1 => KvCommand::Put { key, value },
            2..=3 => KvCommand::Append { key, value },
            4 => KvCommand::Delete { key },
            5 => KvCommand::CompareAndSwap {
                key,
                expected: None,
                new: Some(value),
            },
            6 => KvCommand::Get { key },
            _ => {
                let input = KvInput::Get { key: key.clone() };
                return (Request::Read { key }, input);
            }
        };
        let input = lin_input(&command);
        let request = Request::Command(crate::machine::SessionCommand {
            client: self.id,
            seq: self.seq,
            command,
        });
        (request, input)
    }

    /// Interprets a reply to the current operation.
    pub(super) fn on_reply(&mut self, reply: Reply) -> Outcome {
        match reply {
            Reply::NotLeader(hint) => Outcome::RetryAt(hint),
            Reply::Retry => Outcome::RetryAt(None),
            Reply::Read(value) => Outcome::Done(LinOutput::Get(value)),
            Reply::Output(SessionOutput::Applied(out) | SessionOutput::Duplicate(out)) => {
                match lin_output(out) {
                    Ok(o) => Outcome::Done(o),
                    Err(e) => Outcome::Bug(e),
                }
            }
            Reply::Output(SessionOutput::Stale { last_seq }) => Outcome::Bug(format!(
                "{:?} got Stale (last seq {last_seq}) for its only outstanding command",
                self.id
            )),
        }
    }
}

fn lin_input(command: &KvCommand) -> KvInput {
    match command.clone() {
        KvCommand::Put { key, value } => KvInput::Put { key, value },
        KvCommand::Append { key, value } => KvInput::Append { key, value },
        KvCommand::Delete { key } => KvInput::Delete { key },
        KvCommand::CompareAndSwap { key, expected, new } => KvInput::Cas {
            key,
            expected,
            new: new.unwrap_or_default(),
        },
        KvCommand::Get { key } => KvInput::Get { key },
    }
}

fn lin_output(out: KvOutput) -> Result<LinOutput, String> {
    Ok(match out {
        KvOutput::Put => LinOutput::Put,
        KvOutput::Append { .. } => LinOutput::Append,
        KvOutput::Delete { .. } => LinOutput::Delete,
        KvOutput::Swapped => LinOutput::Cas(true),
        KvOutput::SwapFailed { .. } => LinOutput::Cas(false),
        KvOutput::Get { value } => LinOutput::Get(value),
        other => return Err(format!("unexpected machine output {other:?}")),
    })
}

/// The client history, in the checker's terms.
pub(super) type History = Vec<Operation<KvInput, LinOutput>>;
