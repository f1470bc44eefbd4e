//! The client workload: clients issue operations one at a time to any node, retry through
//! lost messages and leader changes, give up or leave under faults, and every call and
//! return goes into the history the linearizability checker reads.
use bytes::Bytes;

use super::checks::Violation;
use super::client::{InFlight, Outcome, SimClient};
use super::events::EventKind;
use super::faults::{CLIENT_RETIRE_PROBABILITY, CLIENT_TIMEOUT_MS};
use super::node::{Pending, Reply, Request, Waiter};
use super::world::World;
use crate::groups::member::Request as MemberRequest;
use crate::lincheck::kv::KvOutput as LinOutput;
use crate::lincheck::Operation;
use crate::machine::ClientId;
use crate::raft::NodeId;

const CLIENT_THINK_MS_MAX: u64 = 20;
const KEYS: u64 = 3;

impl World {
    pub(super) fn reply(&mut self, waiter: Waiter, reply: Reply) {
        if self.rng.chance(self.plan.drop_probability) {
            return;
        }
        // A client that left gets no answer: its process is gone.
        let Some(client) = self.clients.iter().position(|c| c.id == waiter.client) else {
            return;
        };
        let delay = self.delay();
        self.schedule(
            delay,
            EventKind::ToClient {
                client,
                op: waiter.op,
                reply,
            },
        );
    }

    /// A client's timer for attempt `attempt` of operation `op` fires: unless that
    /// attempt was answered meanwhile, the client sends it again, or gives up on it.
    pub(super) fn on_client_timeout(&mut self, client: usize, op: usize, attempt: u64) {
        let current = self.clients[client].current.as_ref();
        if current.is_some_and(|c| c.op == op && c.attempt == attempt) {
            let started_ms = current.map_or(self.now_ms, |c| c.started_ms);
            // Clients give up only under faults: after healing every operation
            // must complete, which is what the liveness phase checks.
            let give_up = self.faults_enabled
                && self
                    .plan
                    .client_give_up_ms
                    .is_some_and(|after_ms| self.now_ms - started_ms >= after_ms);
            if give_up {
                self.give_up(client);
            } else {
                self.send_attempt(client, None);
            }
        }
    }

    pub(super) fn client_next(&mut self, client: usize) {
        if self.clients[client].current.is_some() || !self.clients_issue_new {
            return;
        }
        let (request, input) = self.clients[client].next_operation(&mut self.rng, KEYS);
        let op = self.history.len();
        self.history.push(Operation {
            client_id: self.clients[client].id.0,
            input,
            call: self.step,
            output: LinOutput::Unknown,
            return_time: crate::lincheck::RETURN_TIME_UNKNOWN,
        });
        self.clients[client].current = Some(InFlight {
            op,
            request,
            attempt: 0,
            started_ms: self.now_ms,
        });
        self.send_attempt(client, None);
    }

    /// The client stops retrying its operation: the history keeps it with an unknown
    /// output (lincheck's convention for an operation that may or may not have taken
    /// effect, at any time after its call), and the next operation takes the next
    /// sequence number. A retry still in the network is answered `Stale` once the next
    /// sequence is applied, or applies the command once before it, both of which the
    /// unknown outcome allows.
    fn give_up(&mut self, client: usize) {
        let Some(current) = self.clients[client].current.take() else {
            return;
        };
        self.stats.give_ups += 1;
        if self.options.verbose {
            let id = self.clients[client].id;
            self.note(format!(
                "{id:?} gives up on operation {} (outcome unknown)",
                current.op
            ));
        }
        self.maybe_retire(client);
        let think = self.rng.range(0, CLIENT_THINK_MS_MAX);
        self.schedule(think, EventKind::ClientNext { client });
    }

    /// Between operations, a client may leave and a new one (new id, new session, the
    /// sequence from 1) take its place, so that more clients than the session table holds
    /// pass through the run. Departures are spaced (`FaultPlan::client_retire_spacing_ms`)
    /// so that eviction never drops a session whose client may still have a command in
    /// flight.
    fn maybe_retire(&mut self, client: usize) {
        let Some(spacing_ms) = self.plan.client_retire_spacing_ms() else {
            return;
        };
        if !self.faults_enabled
            || self
                .last_retirement_ms
                .is_some_and(|at_ms| self.now_ms - at_ms < spacing_ms)
            || !self.rng.chance(CLIENT_RETIRE_PROBABILITY)
        {
            return;
        }
        let id = ClientId(self.client_ids.len() as u64 + 1);
        self.client_ids.push(id);
        self.last_retirement_ms = Some(self.now_ms);
        self.stats.client_departures += 1;
        let old = std::mem::replace(&mut self.clients[client], SimClient::new(id));
        self.note(format!("{:?} leaves; {id:?} takes its place", old.id));
    }

    fn send_attempt(&mut self, client: usize, target: Option<NodeId>) {
        let ids = self.ids.clone();
        let c = &mut self.clients[client];
        let Some(current) = c.current.as_mut() else {
            return;
        };
        current.attempt += 1;
        let (op, attempt, request) = (current.op, current.attempt, current.request.clone());
        if let Some(t) = target {
            c.leader_guess = Some(t);
        }
        let node_id = c.target(&ids);
        // A guess may name an identity that is gone: then the next node in turn.
        let node = match self.slot(node_id) {
            Some(node) => node,
            None => {
                let next = self.clients[client].target(&ids);
                self.slot(next).unwrap_or(0)
            }
        };
        if !self.rng.chance(self.plan.drop_probability) {
            let delay = self.delay();
            self.schedule(
                delay,
                EventKind::ToNode {
                    node,
                    client,
                    op,
                    request,
                },
            );
        }
        self.schedule(
            CLIENT_TIMEOUT_MS,
            EventKind::ClientTimeout {
                client,
                op,
                attempt,
            },
        );
    }

    /// A client's request reaches node `node`: its member takes it (a follower forwards
    /// commands and asks the leader for read points, as the worker does).
    pub(super) fn on_request(
        &mut self,
        node: usize,
        client: usize,
        op: usize,
        request: Request,
    ) -> Result<(), Violation> {
        if !self.nodes[node].is_up() || self.paused.contains_key(&node) {
            return Ok(());
        }
        let waiter = Waiter {
            client: self.clients[client].id,
            op,
        };
        let id = self.nodes[node].next_request_id();
        let (request, read_key) = match request {
            Request::Command(command) => {
                let data = Bytes::from(postcard::to_allocvec(&command).expect("commands encode"));
                (MemberRequest::Execute(data), None)
            }
            Request::Read { key } => (MemberRequest::StrongRead, Some(key)),
        };
        self.nodes[node]
            .requests
            .insert(id, Pending { waiter, read_key });
        self.drive(node, |m, now| m.handle_request(now, id, request))
    }

    pub(super) fn on_reply(
        &mut self,
        client: usize,
        op: usize,
        reply: Reply,
    ) -> Result<(), Violation> {
        let c = &mut self.clients[client];
        if c.current.as_ref().is_none_or(|cur| cur.op != op) {
            return Ok(()); // an answer to an operation already finished
        }
        if matches!(
            reply,
            Reply::Output(crate::machine::SessionOutput::Duplicate(_))
        ) {
            self.stats.duplicates += 1;
        }
        let c = &mut self.clients[client];
        match c.on_reply(reply) {
            Outcome::Done(output) => {
                c.current = None;
                let record = &mut self.history[op];
                record.output = output;
                record.return_time = self.step;
                self.stats.ops_completed += 1;
                self.maybe_retire(client);
                let think = self.rng.range(0, CLIENT_THINK_MS_MAX);
                self.schedule(think, EventKind::ClientNext { client });
            }
            Outcome::RetryAt(hint) => {
                let backoff = self.rng.range(1, 15);
                if let Some(h) = hint {
                    self.clients[client].leader_guess = Some(h);
                }
                let attempt = self.clients[client]
                    .current
                    .as_ref()
                    .map_or(0, |c| c.attempt);
                // Retry through the timeout path so that only one retry is ever pending.
                self.schedule(
                    backoff,
                    EventKind::ClientTimeout {
                        client,
                        op,
                        attempt,
                    },
                );
            }
            Outcome::Bug(detail) => {
                return Err(Violation {
                    property: "exactly-once client sessions",
                    detail,
                });
            }
        }
        Ok(())
    }
}
