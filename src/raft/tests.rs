//! Handler tests: each feeds the core exact inputs and asserts the exact outputs (which
//! messages, which of them wait for persistence, what is written), in the manner of
//! raft-rs' paper tests and openraft's engine tests.
use bytes::Bytes;

use super::*;

fn n(i: u64) -> NodeId {
    NodeId(i)
}

fn voters(ids: &[u64]) -> Membership {
    Membership::with_voters(ids.iter().map(|i| n(*i)))
}

fn config() -> RaftConfig {
    RaftConfig {
        election_ticks: 10,
        heartbeat_ticks: 2,
        ..RaftConfig::default()
    }
}

fn fresh(id: u64) -> Raft {
    Raft::new(n(id), config(), id, InitialState::default()).unwrap()
}

fn bootstrapped(id: u64, members: &[u64]) -> Raft {
    let mut r = fresh(id);
    r.bootstrap(voters(members)).unwrap();
    let ready = r.ready();
    persist(&mut r, &ready);
    r
}

/// Completes a Ready's writes at once, as a driver with an instant disk would.
/// Node `id` restarted with nothing on disk but `snapshot` and a hard state of `term`
/// and `commit`.
fn restarted_from_snapshot(id: u64, snapshot: Snapshot, term: Term, commit: Index) -> Raft {
    Raft::new(
        n(id),
        config(),
        1,
        InitialState {
            hard_state: HardState {
                term,
                vote: None,
                commit,
            },
            snapshot: Some(snapshot),
            entries: Vec::new(),
        },
    )
    .unwrap()
}

fn persist(r: &mut Raft, ready: &Ready) {
    if let Some((index, term)) = ready.persisted_position() {
        r.step(Input::Persisted { index, term }).unwrap();
    }
}

fn cmd(s: &str) -> Bytes {
    Bytes::from(s.to_owned())
}

/// A synchronous cluster: messages are delivered in order, disks are instant, and
/// `isolated` nodes neither send nor receive.
struct Cluster {
    nodes: Vec<Raft>,
    isolated: Vec<bool>,
    applied: Vec<Vec<Entry>>,
    /// Kind of every delivered message, in order.
    delivered: Vec<(NodeId, &'static str)>,
}

impl Cluster {
    fn new(size: u64) -> Self {
        let ids: Vec<u64> = (1..=size).collect();
        let nodes: Vec<Raft> = ids.iter().map(|i| bootstrapped(*i, &ids)).collect();
        Self {
            isolated: vec![false; nodes.len()],
            applied: vec![Vec::new(); nodes.len()],
            delivered: Vec::new(),
            nodes,
        }
    }

    fn node(&mut self, id: u64) -> &mut Raft {
        &mut self.nodes[(id - 1) as usize]
    }

    /// Delivers messages until the cluster is quiet.
    fn settle(&mut self) {
        for _ in 0..1000 {
            let mut inflight = Vec::new();
            for (i, r) in self.nodes.iter_mut().enumerate() {
                let ready = r.ready();
                persist(r, &ready);
                let after = r.ready();
                self.applied[i].extend(ready.committed_entries.iter().cloned());
                self.applied[i].extend(after.committed_entries.iter().cloned());
                if !self.isolated[i] {
                    inflight.extend(ready.messages);
                    inflight.extend(ready.persisted_messages);
                    inflight.extend(after.messages);
                    inflight.extend(after.persisted_messages);
                }
            }
            if inflight.is_empty() {
                return;
            }
            for m in inflight {
                let to = (m.to.0 - 1) as usize;
                // Messages to nodes that do not exist (yet) are lost.
                if to < self.nodes.len() && !self.isolated[to] {
                    self.delivered.push((m.to, m.body.kind()));
                    self.nodes[to].step(Input::Message(m)).unwrap();
                }
            }
        }
        panic!("cluster did not settle");
    }

    /// Adds `node` (one more, numbered after the others) and has `leader` add it as a
    /// learner.
    fn add_learner(&mut self, leader: u64, mut node: Raft) {
        node.step(Input::Tick).unwrap();
        let id = node.id();
        self.nodes.push(node);
        self.isolated.push(false);
        self.applied.push(Vec::new());
        self.node(leader)
            .step(Input::ChangeMembership(MembershipChange::AddLearner(id)))
            .unwrap();
    }

    /// Leader `leader` proposes `count` commands one at a time, each settled, then
    /// compacts its log to what it applied; returns that index.
    fn write_and_compact(&mut self, leader: u64, count: usize) -> Index {
        for i in 0..count {
            self.node(leader)
                .step(Input::Propose {
                    commands: vec![cmd(&format!("{i}"))],
                    timestamp_ms: 0,
                })
                .unwrap();
            self.settle();
        }
        let applied = self.node(leader).applied_index();
        self.node(leader)
            .step(Input::Compact {
                index: applied,
                data: cmd("state"),
            })
            .unwrap();
        applied
    }

    fn tick_until_leader(&mut self, id: u64) {
        for _ in 0..100 {
            self.node(id).step(Input::Tick).unwrap();
            self.settle();
            if self.node(id).role() == Role::Leader {
                return;
            }
        }
        panic!("n{id} did not become leader");
    }
}

// ----- elections (Raft §5.2, thesis §9.6) -----

#[test]
fn a_candidate_persists_term_and_vote_before_its_vote_requests_leave() {
    let mut r = bootstrapped(1, &[1, 2, 3]);
    let mut c = config();
    c.pre_vote = false;
    r.config = c;
    let mut ready = Ready::default();
    for _ in 0..30 {
        ready = r.handle(Input::Tick).unwrap();
        if r.role() == Role::Candidate {
            break;
        }
    }
    assert_eq!(r.role(), Role::Candidate);
    assert_eq!(
        ready.hard_state,
        Some(HardState {
            term: 2,
            vote: Some(n(1)),
            commit: 1
        })
    );
    assert!(
        ready.messages.is_empty(),
        "vote requests must wait for the hard state"
    );
    let targets: Vec<NodeId> = ready.persisted_messages.iter().map(|m| m.to).collect();
    assert_eq!(targets, vec![n(2), n(3)]);
    assert!(ready.persisted_messages.iter().all(|m| matches!(
        m.body,
        MessageBody::Vote {
            last_index: 1,
            last_term: 1,
            transfer: false
        }
    )));
}

#[test]
fn a_granted_vote_is_durable_before_the_reply_leaves() {
    let mut r = bootstrapped(2, &[1, 2, 3]);
    let ready = r
        .handle(Input::Message(Message {
            from: n(1),
            to: n(2),
            term: 2,
            body: MessageBody::Vote {
                last_index: 1,
                last_term: 1,
                transfer: false,
            },
        }))
        .unwrap();
    assert_eq!(
        ready.hard_state.map(|h| (h.term, h.vote)),
        Some((2, Some(n(1))))
    );
    assert!(ready.messages.is_empty());
    assert_eq!(ready.persisted_messages.len(), 1);
    assert_eq!(
        ready.persisted_messages[0].body,
        MessageBody::VoteResponse { granted: true }
    );
}

#[test]
fn votes_go_only_to_logs_at_least_as_up_to_date() {
    let mut c = Cluster::new(3);
    c.tick_until_leader(1);
    c.node(1)
        .step(Input::Propose {
            commands: vec![cmd("x")],
            timestamp_ms: 0,
        })
        .unwrap();
    c.settle();
    let last = c.node(2).last_index();
    // A candidate whose log is behind is refused (§5.4.1).
    let ready = c
        .node(2)
        .handle(Input::Message(Message {
            from: n(3),
            to: n(2),
            term: 9,
            body: MessageBody::Vote {
                last_index: last - 1,
                last_term: 2,
                transfer: true,
            },
        }))
        .unwrap();
    assert_eq!(
        ready.persisted_messages[0].body,
        MessageBody::VoteResponse { granted: false }
    );
}

#[test]
fn one_vote_per_term() {
    let mut r = bootstrapped(2, &[1, 2, 3]);
    let vote = |from| {
        Input::Message(Message {
            from: n(from),
            to: n(2),
            term: 2,
            body: MessageBody::Vote {
                last_index: 1,
                last_term: 1,
                transfer: false,
            },
        })
    };
    let first = r.handle(vote(1)).unwrap();
    assert_eq!(
        first.persisted_messages[0].body,
        MessageBody::VoteResponse { granted: true }
    );
    let second = r.handle(vote(3)).unwrap();
    assert_eq!(
        second.persisted_messages[0].body,
        MessageBody::VoteResponse { granted: false }
    );
    let again = r.handle(vote(1)).unwrap();
    assert_eq!(
        again.persisted_messages[0].body,
        MessageBody::VoteResponse { granted: true }
    );
}

#[test]
fn pre_vote_keeps_an_isolated_node_from_inflating_terms() {
    let mut c = Cluster::new(3);
    c.tick_until_leader(1);
    let term = c.node(1).term();
    c.isolated[2] = true;
    for _ in 0..200 {
        c.node(3).step(Input::Tick).unwrap();
        c.settle();
    }
    assert_eq!(c.node(3).term(), term, "pre-vote must not move the term");
    assert_eq!(c.node(3).role(), Role::PreCandidate);
    c.isolated[2] = false;
    for _ in 0..5 {
        for id in 1..=3 {
            c.node(id).step(Input::Tick).unwrap();
        }
        c.settle();
    }
    assert_eq!(
        c.node(1).role(),
        Role::Leader,
        "the returning node does not depose the leader"
    );
    assert_eq!(c.node(1).term(), term);
}

#[test]
fn without_pre_vote_the_same_isolation_does_inflate_terms() {
    // The negative twin of the test above: proves that test can fail.
    let mut r = bootstrapped(3, &[1, 2, 3]);
    let mut c = config();
    c.pre_vote = false;
    r.config = c;
    for _ in 0..200 {
        r.step(Input::Tick).unwrap();
    }
    assert!(r.term() > 2);
}

#[test]
fn a_follower_in_its_leader_lease_ignores_disruptive_vote_requests() {
    let mut c = Cluster::new(3);
    c.tick_until_leader(1);
    let ready = c
        .node(2)
        .handle(Input::Message(Message {
            from: n(3),
            to: n(2),
            term: 50,
            body: MessageBody::Vote {
                last_index: 100,
                last_term: 40,
                transfer: false,
            },
        }))
        .unwrap();
    assert!(ready.persisted_messages.is_empty() && ready.messages.is_empty());
    assert_eq!(c.node(2).term(), 2, "the term did not move");
    assert_eq!(c.node(2).leader(), Some(n(1)));
}

#[test]
fn check_quorum_makes_a_cut_off_leader_step_down() {
    let mut c = Cluster::new(3);
    c.tick_until_leader(1);
    c.isolated[0] = true;
    for _ in 0..25 {
        c.node(1).step(Input::Tick).unwrap();
        c.settle();
    }
    assert_eq!(c.node(1).role(), Role::Follower);
}

#[test]
fn learners_and_observers_never_campaign() {
    let mut m = voters(&[1]);
    m.learners.insert(n(2));
    m.observers.insert(n(3));
    for id in [2, 3] {
        let mut r = fresh(id);
        r.bootstrap(m.clone()).unwrap();
        for _ in 0..100 {
            let ready = r.handle(Input::Tick).unwrap();
            assert!(ready.messages.is_empty() && ready.persisted_messages.is_empty());
        }
        assert_eq!(r.role(), Role::Follower);
    }
}

// ----- replication and commit (§5.3, §5.4.2) -----

#[test]
fn proposals_batch_into_one_write_and_one_append_per_follower() {
    let mut c = Cluster::new(3);
    c.tick_until_leader(1);
    let commands: Vec<Bytes> = (0..100).map(|i| cmd(&format!("c{i}"))).collect();
    let ready = c
        .node(1)
        .handle(Input::Propose {
            commands,
            timestamp_ms: 7,
        })
        .unwrap();
    assert_eq!(ready.entries.len(), 100, "one write for the whole batch");
    let appends: Vec<_> = ready
        .messages
        .iter()
        .filter_map(|m| match &m.body {
            MessageBody::Append { entries, .. } => Some((m.to, entries.len())),
            _ => None,
        })
        .collect();
    assert_eq!(appends, vec![(n(2), 100), (n(3), 100)]);
    assert!(ready.events.contains(&Event::Proposed {
        first_index: 3,
        count: 100,
        term: 2
    }));
}

#[test]
fn a_leader_counts_its_own_log_only_once_durable() {
    let mut r = bootstrapped(1, &[1]);
    for _ in 0..30 {
        r.step(Input::Tick).unwrap();
    }
    assert_eq!(r.role(), Role::Leader);
    let ready = r.ready();
    assert_eq!(
        r.commit_index(),
        1,
        "the no-op is not committed before it is durable"
    );
    persist(&mut r, &ready);
    assert_eq!(r.commit_index(), 2);
    r.step(Input::Propose {
        commands: vec![cmd("a")],
        timestamp_ms: 0,
    })
    .unwrap();
    let ready = r.ready();
    assert!(ready.committed_entries.iter().all(|e| e.index <= 2));
    persist(&mut r, &ready);
    let ready = r.ready();
    assert_eq!(ready.committed_entries.last().map(|e| e.index), Some(3));
}

#[test]
fn entries_of_an_older_term_are_not_committed_by_counting() {
    // Raft Figure 8: a leader of term 4 finds an entry of term 2 on a majority; it may
    // commit it only by committing an entry of its own term after it.
    let log = vec![
        Entry {
            term: 1,
            index: 1,
            timestamp_ms: 0,
            payload: EntryPayload::Membership(voters(&[1, 2, 3])),
        },
        Entry {
            term: 2,
            index: 2,
            timestamp_ms: 0,
            payload: EntryPayload::Command(cmd("old")),
        },
    ];
    let state = |vote| InitialState {
        hard_state: HardState {
            term: 3,
            vote,
            commit: 1,
        },
        snapshot: None,
        entries: log.clone(),
    };
    let mut leader = Raft::new(n(1), config(), 1, state(None)).unwrap();
    for _ in 0..40 {
        let r = leader.handle(Input::Tick).unwrap();
        persist(&mut leader, &r);
        if leader.role() == Role::Candidate || leader.role() == Role::PreCandidate {
            break;
        }
    }
    // Grant the pre-vote and the vote from n2 by hand.
    if leader.role() == Role::PreCandidate {
        leader
            .step(Input::Message(Message {
                from: n(2),
                to: n(1),
                term: 4,
                body: MessageBody::PreVoteResponse { granted: true },
            }))
            .unwrap();
    }
    leader
        .step(Input::Message(Message {
            from: n(2),
            to: n(1),
            term: 4,
            body: MessageBody::VoteResponse { granted: true },
        }))
        .unwrap();
    assert_eq!(leader.role(), Role::Leader);
    assert_eq!(leader.term(), 4);
    let ready = leader.ready();
    persist(&mut leader, &ready);
    // n2 acknowledges index 2 only (the old entry), not the new no-op at 3.
    leader
        .step(Input::Message(Message {
            from: n(2),
            to: n(1),
            term: 4,
            body: MessageBody::AppendResponse {
                success: true,
                index: 2,
                hint_index: 0,
                hint_term: 0,
            },
        }))
        .unwrap();
    assert_eq!(
        leader.commit_index(),
        1,
        "term-2 entry must not commit by counting"
    );
    leader
        .step(Input::Message(Message {
            from: n(2),
            to: n(1),
            term: 4,
            body: MessageBody::AppendResponse {
                success: true,
                index: 3,
                hint_index: 0,
                hint_term: 0,
            },
        }))
        .unwrap();
    assert_eq!(
        leader.commit_index(),
        3,
        "committing the no-op commits the old entry too"
    );
}

#[test]
fn followers_acknowledge_appends_only_after_persisting_them() {
    let mut r = bootstrapped(2, &[1, 2, 3]);
    let ready = r
        .handle(Input::Message(Message {
            from: n(1),
            to: n(2),
            term: 2,
            body: MessageBody::Append {
                prev_index: 1,
                prev_term: 1,
                entries: vec![Entry {
                    term: 2,
                    index: 2,
                    timestamp_ms: 0,
                    payload: EntryPayload::Noop,
                }],
                commit: 1,
            },
        }))
        .unwrap();
    assert_eq!(ready.entries.len(), 1);
    assert!(ready.messages.is_empty());
    assert_eq!(
        ready.persisted_messages[0].body,
        MessageBody::AppendResponse {
            success: true,
            index: 2,
            hint_index: 0,
            hint_term: 0
        }
    );
}

#[test]
fn a_follower_replaces_a_conflicting_suffix_and_hints_on_mismatch() {
    let mut c = Cluster::new(3);
    c.tick_until_leader(1);
    // n3 misses two proposals, then n2 takes over in a new term with its own entries.
    c.isolated[2] = true;
    c.node(1)
        .step(Input::Propose {
            commands: vec![cmd("a"), cmd("b")],
            timestamp_ms: 0,
        })
        .unwrap();
    c.settle();
    c.isolated[2] = false;
    c.settle();
    for _ in 0..5 {
        c.node(1).step(Input::Tick).unwrap();
        c.settle();
    }
    assert_eq!(
        c.node(3).last_index(),
        c.node(1).last_index(),
        "n3 caught up"
    );
    assert_eq!(c.node(3).commit_index(), c.node(1).commit_index());
    // Mismatch: an append whose previous entry n3 lacks is refused with a hint.
    let last = c.node(3).last_index();
    let ready = c
        .node(3)
        .handle(Input::Message(Message {
            from: n(1),
            to: n(3),
            term: 2,
            body: MessageBody::Append {
                prev_index: last + 5,
                prev_term: 2,
                entries: vec![],
                commit: 0,
            },
        }))
        .unwrap();
    match &ready.persisted_messages[0].body {
        MessageBody::AppendResponse {
            success: false,
            index,
            hint_index,
            ..
        } => {
            assert_eq!(*index, last + 5);
            assert_eq!(*hint_index, last);
        }
        other => panic!("expected a rejection, got {other:?}"),
    }
}

#[test]
fn malformed_appends_are_errors_and_change_nothing() {
    let mut r = bootstrapped(2, &[1, 2, 3]);
    let gap = Message {
        from: n(1),
        to: n(2),
        term: 2,
        body: MessageBody::Append {
            prev_index: 1,
            prev_term: 1,
            entries: vec![Entry {
                term: 2,
                index: 5,
                timestamp_ms: 0,
                payload: EntryPayload::Noop,
            }],
            commit: 1,
        },
    };
    assert!(matches!(
        r.step(Input::Message(gap)),
        Err(StepError::Peer(PeerError::Malformed { .. }))
    ));
    assert_eq!(r.last_index(), 1);
    let misrouted = Message {
        from: n(1),
        to: n(3),
        term: 2,
        body: MessageBody::TimeoutNow,
    };
    assert!(matches!(
        r.step(Input::Message(misrouted)),
        Err(StepError::Peer(PeerError::Misrouted { .. }))
    ));
}

/// A second leader of this leader's own term is evidence of another group sharing the id:
/// a safety violation, not a bad frame to drop.
#[test]
fn a_second_leader_of_the_same_term_is_a_safety_violation() {
    let mut c = Cluster::new(3);
    c.tick_until_leader(1);
    let term = c.node(1).term();
    let heartbeat = |from| Message {
        from: n(from),
        to: n(1),
        term,
        body: MessageBody::Heartbeat {
            commit: 0,
            read_seq: 0,
        },
    };
    let refused = c.node(1).step(Input::Message(heartbeat(2)));
    assert_eq!(
        refused,
        Err(StepError::Safety(SafetyViolation::SecondLeader {
            from: n(2),
            term
        }))
    );
    assert_eq!(c.node(1).role(), Role::Leader, "the core is unchanged");
    // Its negative twin: a follower takes the same heartbeat as its leader's.
    assert_eq!(
        c.node(3).step(Input::Message(Message {
            to: n(3),
            ..heartbeat(1)
        })),
        Ok(())
    );
}

#[test]
fn an_append_rewriting_a_committed_entry_is_refused() {
    let mut r = bootstrapped(2, &[1, 2, 3]);
    let bad = Message {
        from: n(1),
        to: n(2),
        term: 5,
        body: MessageBody::Append {
            prev_index: 0,
            prev_term: 0,
            entries: vec![Entry {
                term: 5,
                index: 1,
                timestamp_ms: 0,
                payload: EntryPayload::Noop,
            }],
            commit: 0,
        },
    };
    // prev_index 0 < commit 1: answered with the commit index, nothing rewritten.
    let ready = r.handle(Input::Message(bad)).unwrap();
    assert!(ready.entries.is_empty());
    assert!(matches!(
        ready.persisted_messages[0].body,
        MessageBody::AppendResponse {
            success: true,
            index: 1,
            ..
        }
    ));
}

#[test]
fn proposals_to_a_follower_are_rejected_with_a_leader_hint() {
    let mut c = Cluster::new(3);
    c.tick_until_leader(1);
    let ready = c
        .node(2)
        .handle(Input::Propose {
            commands: vec![cmd("x")],
            timestamp_ms: 0,
        })
        .unwrap();
    assert_eq!(
        ready.events,
        vec![Event::ProposalRejected {
            count: 1,
            reason: Rejection::NotLeader { leader: Some(n(1)) }
        }]
    );
    assert!(ready.entries.is_empty());
}

#[test]
fn an_empty_proposal_is_accepted_only_by_the_leader() {
    let mut c = Cluster::new(3);
    c.tick_until_leader(1);
    // A follower must not answer "accepted" for a batch it could never append.
    assert_eq!(
        c.node(2).propose(Vec::new(), 0),
        Err(Rejection::NotLeader { leader: Some(n(1)) })
    );
    let at = c
        .node(1)
        .propose(Vec::new(), 0)
        .expect("the leader takes it");
    assert_eq!(at.0, c.node(1).log.last_index() + 1, "nothing appended");
}

#[test]
fn oversized_proposals_are_rejected() {
    let mut c = Cluster::new(1);
    c.tick_until_leader(1);
    let big = Bytes::from(vec![0u8; config().max_proposal_bytes + 1]);
    let ready = c
        .node(1)
        .handle(Input::Propose {
            commands: vec![big],
            timestamp_ms: 0,
        })
        .unwrap();
    assert!(matches!(
        ready.events.as_slice(),
        [Event::ProposalRejected {
            reason: Rejection::TooLarge { .. },
            ..
        }]
    ));
}

// ----- reads (thesis §6.4) -----

#[test]
fn read_index_waits_for_a_quorum_heartbeat_round() {
    let mut c = Cluster::new(3);
    c.tick_until_leader(1);
    c.isolated[1] = true;
    c.isolated[2] = true;
    let ready = c.node(1).handle(Input::ReadIndex { id: 7 }).unwrap();
    assert!(
        ready.read_states.is_empty(),
        "no read point without confirmation"
    );
    let heartbeats = ready
        .messages
        .iter()
        .filter(|m| matches!(m.body, MessageBody::Heartbeat { read_seq: 1, .. }))
        .count();
    assert_eq!(heartbeats, 2);
    // One follower's acknowledgement makes a quorum of 3 with the leader.
    let ready = c
        .node(1)
        .handle(Input::Message(Message {
            from: n(2),
            to: n(1),
            term: 2,
            body: MessageBody::HeartbeatResponse { read_seq: 1 },
        }))
        .unwrap();
    let commit = c.node(1).commit_index();
    assert_eq!(
        ready.read_states,
        vec![ReadState {
            id: 7,
            index: commit
        }]
    );
}

#[test]
fn read_index_on_a_follower_is_rejected_with_a_hint() {
    let mut c = Cluster::new(3);
    c.tick_until_leader(1);
    let ready = c.node(3).handle(Input::ReadIndex { id: 1 }).unwrap();
    assert_eq!(
        ready.events,
        vec![Event::ReadRejected {
            id: 1,
            reason: Rejection::NotLeader { leader: Some(n(1)) }
        }]
    );
}

// ----- membership (thesis §4.1, §4.2.2) -----

#[test]
fn one_membership_change_at_a_time() {
    let mut c = Cluster::new(3);
    c.tick_until_leader(1);
    c.isolated[1] = true;
    c.isolated[2] = true;
    let ready = c
        .node(1)
        .handle(Input::ChangeMembership(MembershipChange::AddLearner(n(4))))
        .unwrap();
    assert!(ready
        .events
        .iter()
        .any(|e| matches!(e, Event::MembershipChangeProposed { .. })));
    let ready = c
        .node(1)
        .handle(Input::ChangeMembership(MembershipChange::AddLearner(n(5))))
        .unwrap();
    assert!(ready.events.contains(&Event::MembershipChangeRejected {
        change: MembershipChange::AddLearner(n(5)),
        reason: Rejection::MembershipChangePending
    }));
}

#[test]
fn a_new_leader_changes_membership_only_after_committing_in_its_term() {
    let mut r = bootstrapped(1, &[1, 2, 3]);
    for _ in 0..30 {
        r.step(Input::Tick).unwrap();
        if r.role() == Role::PreCandidate {
            break;
        }
    }
    r.step(Input::Message(Message {
        from: n(2),
        to: n(1),
        term: 2,
        body: MessageBody::PreVoteResponse { granted: true },
    }))
    .unwrap();
    r.step(Input::Message(Message {
        from: n(2),
        to: n(1),
        term: 2,
        body: MessageBody::VoteResponse { granted: true },
    }))
    .unwrap();
    assert_eq!(r.role(), Role::Leader);
    let ready = r
        .handle(Input::ChangeMembership(MembershipChange::Remove(n(3))))
        .unwrap();
    assert!(ready.events.contains(&Event::MembershipChangeRejected {
        change: MembershipChange::Remove(n(3)),
        reason: Rejection::LeaderNotReady
    }));
}

#[test]
fn quorum_counts_the_latest_configuration_even_uncommitted() {
    let mut c = Cluster::new(3);
    c.tick_until_leader(1);
    c.node(1)
        .step(Input::ChangeMembership(MembershipChange::AddLearner(n(4))))
        .unwrap();
    c.settle();
    c.node(1)
        .step(Input::ChangeMembership(MembershipChange::Promote(n(4))))
        .unwrap();
    // n4 does not exist: with 4 voters a quorum is 3, so the leader plus one follower
    // cannot commit new entries.
    c.isolated[2] = true;
    c.settle();
    let before = c.node(1).commit_index();
    c.node(1)
        .step(Input::Propose {
            commands: vec![cmd("x")],
            timestamp_ms: 0,
        })
        .unwrap();
    c.settle();
    assert_eq!(c.node(1).membership().voters.len(), 4);
    assert_eq!(
        c.node(1).commit_index(),
        before,
        "2 of 4 voters is not a quorum"
    );
    c.isolated[2] = false;
    c.settle();
    for _ in 0..3 {
        c.node(1).step(Input::Tick).unwrap();
        c.settle();
    }
    assert!(c.node(1).commit_index() > before, "3 of 4 voters is");
}

#[test]
fn caught_up_learners_are_promoted_automatically() {
    let mut c = Cluster::new(3);
    c.tick_until_leader(1);
    c.add_learner(1, fresh(4));
    for _ in 0..10 {
        c.node(1).step(Input::Tick).unwrap();
        c.settle();
    }
    assert!(c.node(1).membership().is_voter(n(4)), "learner promoted");
    assert!(c.node(4).membership().is_voter(n(4)));
}

/// A learner that never acknowledged an append is not promoted, however short the log:
/// it may be dead, and a dead voter is one the group waits for (in a group of one, for
/// good).
#[test]
fn a_learner_that_never_answered_is_not_promoted() {
    let mut c = Cluster::new(3);
    c.tick_until_leader(1);
    // n9 does not exist: nothing it is sent arrives, nothing comes back.
    c.node(1)
        .step(Input::ChangeMembership(MembershipChange::AddLearner(n(9))))
        .unwrap();
    for _ in 0..30 {
        c.node(1).step(Input::Tick).unwrap();
        c.settle();
    }
    let membership = c.node(1).membership().clone();
    assert!(membership.learners.contains(&n(9)), "{membership:?}");
    assert_eq!(membership.voters.len(), 3, "{membership:?}");
}

/// A restarted TD comes back as a new identity: its replacement waits as a learner until
/// the dead voter has been silent for `replace_after_rounds` election timeouts, the dead
/// voter is removed, and only then the replacement is promoted. The voter count never
/// grows while the dead voter counts (four voters with one dead and a second death
/// would leave two of four: no quorum, for good).
#[test]
fn a_dead_voter_is_removed_before_its_replacement_is_promoted() {
    let mut c = Cluster::new(3);
    c.tick_until_leader(1);
    c.isolated[2] = true; // n3 dies; its new identity boots, which takes a while
    for _ in 0..config().election_ticks {
        c.node(1).step(Input::Tick).unwrap();
        c.settle();
    }
    c.add_learner(1, fresh(4));
    c.settle();
    let rounds = config().replace_after_rounds;
    let mut removed_at_round = None;
    for round in 1..=rounds + 3 {
        for _ in 0..config().election_ticks {
            c.node(1).step(Input::Tick).unwrap();
            c.settle();
            let m = c.node(1).membership().clone();
            assert!(
                m.voters.len() <= 3,
                "round {round}: the voter count grew while n3 is dead: {m:?}"
            );
            assert!(
                !(m.is_voter(n(4)) && m.is_voter(n(3))),
                "round {round}: n4 promoted before n3 was removed: {m:?}"
            );
            if removed_at_round.is_none() && !m.contains(n(3)) {
                removed_at_round = Some(round);
            }
        }
    }
    let round = removed_at_round.expect("the dead voter was never removed");
    assert!(
        round + 1 >= rounds,
        "n3 removed after {} silent rounds, before {rounds}",
        round + 1
    );
    assert_eq!(c.node(1).membership().voters, voters(&[1, 2, 4]).voters);
    assert_eq!(c.node(4).membership().voters, voters(&[1, 2, 4]).voters);
}

/// Removing a silent voter must leave a quorum that answers: with two of three voters
/// silent, neither is removed even though a caught-up learner waits.
#[test]
fn a_silent_voter_is_not_removed_when_the_rest_would_not_answer_as_a_quorum() {
    let mut cfg = config();
    cfg.check_quorum = false; // keep the leader, to see what it would remove
    cfg.max_voters = 3; // the learner waits as a learner while every voter answers
    let ids = [1, 2, 3];
    let mut c = Cluster::new(3);
    for (i, node) in c.nodes.iter_mut().enumerate() {
        let id = i as u64 + 1;
        let mut r = Raft::new(n(id), cfg.clone(), id, InitialState::default()).unwrap();
        r.bootstrap(voters(&ids)).unwrap();
        let ready = r.ready();
        persist(&mut r, &ready);
        *node = r;
    }
    c.tick_until_leader(1);
    c.add_learner(
        1,
        Raft::new(n(4), cfg.clone(), 4, InitialState::default()).unwrap(),
    );
    for _ in 0..cfg.election_ticks {
        c.node(1).step(Input::Tick).unwrap();
        c.settle();
    }
    assert!(c.node(1).membership().learners.contains(&n(4)));
    c.isolated[1] = true;
    c.isolated[2] = true;
    for _ in 0..(cfg.replace_after_rounds + 3) * cfg.election_ticks {
        c.node(1).step(Input::Tick).unwrap();
        c.settle();
    }
    let m = c.node(1).membership().clone();
    assert_eq!(m.voters, voters(&ids).voters, "{m:?}");
}

/// A lone voter wins its election in the Ready that writes its new term: its first
/// messages as leader (to a learner) must wait for that write, or a crash before it would
/// let it lead the same term twice with different entries.
#[test]
fn a_lone_voters_first_messages_as_leader_wait_for_its_term_to_be_durable() {
    let mut r = fresh(1);
    let mut members = voters(&[1]);
    members.learners.insert(n(2));
    r.bootstrap(members).unwrap();
    let ready = r.ready();
    persist(&mut r, &ready);
    // Not yet leader (bootstrapped followers campaign on their timer).
    let mut won = None;
    for _ in 0..100 {
        r.step(Input::Tick).unwrap();
        let ready = r.ready();
        if r.role() == Role::Leader {
            won = Some(ready);
            break;
        }
        persist(&mut r, &ready);
    }
    let ready = won.expect("a lone voter wins");
    assert!(
        ready.hard_state.is_some(),
        "the new term is written in this Ready"
    );
    assert!(
        ready.messages.iter().all(|m| m.term < r.term()),
        "a message of the new term leaves before the term is durable: {:?}",
        ready.messages
    );
    assert!(
        ready.persisted_messages.iter().any(|m| m.to == n(2)),
        "the learner's append waits for the write: {:?}",
        ready.persisted_messages
    );
    persist(&mut r, &ready);
    // Once durable, its messages leave at once again (the next heartbeat, here).
    let mut sent_now = false;
    for _ in 0..config().heartbeat_ticks {
        r.step(Input::Tick).unwrap();
        let ready = r.ready();
        assert!(ready.persisted_messages.is_empty(), "{ready:?}");
        sent_now |= ready.messages.iter().any(|m| m.to == n(2));
        persist(&mut r, &ready);
    }
    assert!(
        sent_now,
        "no message to the learner after the term was durable"
    );
}

/// A node whose own preference is `Observer` never stands for election, even when a
/// configuration names it a voter (and a transfer asks it to).
#[test]
fn a_node_that_prefers_to_observe_never_campaigns() {
    let mut cfg = config();
    cfg.observer = true;
    let mut r = Raft::new(n(1), cfg, 1, InitialState::default()).unwrap();
    r.bootstrap(voters(&[1])).unwrap();
    let ready = r.ready();
    persist(&mut r, &ready);
    for _ in 0..100 {
        r.step(Input::Tick).unwrap();
        let ready = r.ready();
        persist(&mut r, &ready);
        assert!(
            ready.messages.is_empty() && ready.persisted_messages.is_empty(),
            "it asked for votes"
        );
    }
    assert_eq!(r.role(), Role::Follower);
    assert_eq!(r.term(), 1, "no election was started");
}

#[test]
fn a_removed_leader_steps_down_once_the_change_commits() {
    let mut c = Cluster::new(3);
    c.tick_until_leader(1);
    c.node(1)
        .step(Input::ChangeMembership(MembershipChange::Remove(n(1))))
        .unwrap();
    c.settle();
    assert_ne!(c.node(1).role(), Role::Leader);
    assert!(!c.node(2).membership().contains(n(1)));
}

// ----- leadership transfer (thesis §3.10) -----

#[test]
fn leadership_transfer_hands_over_to_the_target() {
    let mut c = Cluster::new(3);
    c.tick_until_leader(1);
    c.node(1)
        .step(Input::TransferLeadership { to: n(3) })
        .unwrap();
    c.settle();
    assert_eq!(c.node(3).role(), Role::Leader);
    assert_eq!(c.node(1).leader(), Some(n(3)));
    assert_eq!(c.node(3).term(), 3);
}

#[test]
fn proposals_during_a_transfer_are_refused() {
    let mut c = Cluster::new(3);
    c.tick_until_leader(1);
    c.isolated[2] = true;
    c.node(1)
        .step(Input::TransferLeadership { to: n(3) })
        .unwrap();
    let ready = c
        .node(1)
        .handle(Input::Propose {
            commands: vec![cmd("x")],
            timestamp_ms: 0,
        })
        .unwrap();
    assert!(ready.events.contains(&Event::ProposalRejected {
        count: 1,
        reason: Rejection::TransferInProgress
    }));
}

// ----- snapshots and restart -----

#[test]
fn a_follower_too_far_behind_gets_a_snapshot() {
    let mut c = Cluster::new(3);
    c.tick_until_leader(1);
    c.isolated[2] = true;
    let applied = c.write_and_compact(1, 20);
    assert_eq!(c.node(1).snapshot_index(), applied);
    c.isolated[2] = false;
    for _ in 0..5 {
        c.node(1).step(Input::Tick).unwrap();
        c.settle();
    }
    let snapshot_seen = c.delivered.contains(&(n(3), "install_snapshot"));
    assert!(snapshot_seen, "the leader sent a snapshot");
    assert_eq!(c.node(3).snapshot_index(), applied);
    assert_eq!(c.node(3).commit_index(), c.node(1).commit_index());
}

#[test]
fn compaction_beyond_applied_is_refused() {
    let mut r = bootstrapped(1, &[1]);
    assert!(matches!(
        r.step(Input::Compact {
            index: 50,
            data: cmd("s")
        }),
        Err(StepError::Misuse(DriverMisuse::CompactBeyondApplied { .. }))
    ));
}

#[test]
fn a_restart_recovers_term_vote_and_log_and_never_bootstraps_again() {
    let state = InitialState {
        hard_state: HardState {
            term: 4,
            vote: Some(n(2)),
            commit: 1,
        },
        snapshot: None,
        entries: vec![Entry {
            term: 1,
            index: 1,
            timestamp_ms: 0,
            payload: EntryPayload::Membership(voters(&[1, 2, 3])),
        }],
    };
    let mut r = Raft::new(n(1), config(), 1, state).unwrap();
    assert_eq!((r.term(), r.last_index(), r.commit_index()), (4, 1, 1));
    assert!(matches!(
        r.bootstrap(voters(&[1])),
        Err(BootstrapError::NotFresh { .. })
    ));
    let bad = InitialState {
        hard_state: HardState::default(),
        snapshot: None,
        entries: vec![Entry {
            term: 3,
            index: 2,
            timestamp_ms: 0,
            payload: EntryPayload::Noop,
        }],
    };
    assert_eq!(
        Raft::new(n(1), config(), 1, bad).err(),
        Some(NewRaftError::State(RecoveryError::NotContiguous {
            expected: 1,
            got: 2
        })),
        "a gap in recovered entries"
    );
}

/// Recovered state no correct node writes is refused, naming what is wrong.
#[test]
fn inconsistent_recovered_state_is_refused() {
    let entry = |index, term| Entry {
        term,
        index,
        timestamp_ms: 0,
        payload: EntryPayload::Noop,
    };
    let state = |term, entries| InitialState {
        hard_state: HardState {
            term,
            vote: None,
            commit: 0,
        },
        snapshot: None,
        entries,
    };
    let decreasing = state(3, vec![entry(1, 3), entry(2, 2)]);
    assert_eq!(
        Raft::new(n(1), config(), 1, decreasing).err(),
        Some(NewRaftError::State(RecoveryError::TermsDecrease {
            index: 2,
            term: 2,
            previous: 3
        }))
    );
    let ahead = state(2, vec![entry(1, 3)]);
    let err = Raft::new(n(1), config(), 1, ahead).err();
    assert_eq!(
        err,
        Some(NewRaftError::State(RecoveryError::TermAboveHardState {
            log_term: 3,
            hard_state_term: 2
        }))
    );
    let message = err.map(|e| e.to_string()).unwrap_or_default();
    assert!(
        message.starts_with("recovered state is inconsistent: "),
        "{message}"
    );
    // Its negative twin: the same entries under a hard state of their term start.
    assert!(Raft::new(n(1), config(), 1, state(3, vec![entry(1, 3)])).is_ok());
}

#[test]
fn bootstrap_without_voters_is_refused() {
    let mut r = fresh(1);
    assert_eq!(
        r.bootstrap(Membership::default()),
        Err(BootstrapError::NoVoters)
    );
    assert!(r.is_fresh(), "nothing was written");
}

#[test]
fn invalid_configurations_are_refused() {
    let c = RaftConfig {
        heartbeat_ticks: 10,
        election_ticks: 10,
        ..RaftConfig::default()
    };
    assert!(matches!(
        Raft::new(n(1), c, 1, InitialState::default()),
        Err(NewRaftError::Config(ConfigError::Timers { .. }))
    ));
    let c = RaftConfig {
        max_inflight_messages: 0,
        ..config()
    };
    assert_eq!(
        c.validate(),
        Err(ConfigError::Zero {
            field: "max_inflight_messages"
        })
    );
}

#[test]
fn a_three_node_cluster_applies_the_same_entries_everywhere() {
    let mut c = Cluster::new(3);
    c.tick_until_leader(2);
    for i in 0..10 {
        c.node(2)
            .step(Input::Propose {
                commands: vec![cmd(&format!("v{i}"))],
                timestamp_ms: i,
            })
            .unwrap();
    }
    c.settle();
    for _ in 0..3 {
        c.node(2).step(Input::Tick).unwrap();
        c.settle();
    }
    assert_eq!(c.applied[0], c.applied[1]);
    assert_eq!(c.applied[1], c.applied[2]);
    let commands = c.applied[0]
        .iter()
        .filter(|e| matches!(e.payload, EntryPayload::Command(_)))
        .count();
    assert_eq!(commands, 10);
}

/// The incarnation names the founding: founders of one set agree on it, another set has
/// another; it survives compaction past entry 1 (in the snapshot), a restart from that
/// snapshot, and reaches a member that only ever saw the snapshot.
#[test]
fn the_incarnation_is_the_first_entry_and_outlives_it() {
    assert_eq!(fresh(1).incarnation(), None, "a fresh node has none");
    let ours = bootstrapped(1, &[1, 2, 3]).incarnation().expect("founded");
    assert_eq!(bootstrapped(2, &[1, 2, 3]).incarnation(), Some(ours));
    assert_ne!(bootstrapped(1, &[1, 2, 4]).incarnation(), Some(ours));

    let mut c = Cluster::new(3);
    c.tick_until_leader(1);
    let applied = c.write_and_compact(1, 5);
    let snapshot = c.node(1).snapshot().cloned().expect("a snapshot");
    assert_eq!(
        snapshot.meta.incarnation,
        Some(ours),
        "carried past entry 1"
    );
    assert_eq!(c.node(1).incarnation(), Some(ours));

    let restarted = restarted_from_snapshot(1, snapshot.clone(), c.node(1).term(), applied);
    assert_eq!(
        restarted.incarnation(),
        Some(ours),
        "recovered from the snapshot"
    );

    let mut joiner = fresh(9);
    joiner.restore_snapshot(snapshot);
    assert_eq!(
        joiner.incarnation(),
        Some(ours),
        "installed with the snapshot"
    );
}

/// Entry stamps never go back, even once the entries that carried them are compacted: the
/// snapshot keeps the stamp of its last entry, and a core restarted from it, or a member
/// that installs it, stamps later entries no lower.
#[test]
fn the_entry_stamp_floor_outlives_compaction_restart_and_install() {
    let mut c = Cluster::new(3);
    c.tick_until_leader(1);
    for (i, stamp) in [1_000u64, 2_000, 3_000].into_iter().enumerate() {
        c.node(1)
            .step(Input::Propose {
                commands: vec![cmd(&format!("{i}"))],
                timestamp_ms: stamp,
            })
            .unwrap();
        c.settle();
    }
    let applied = c.node(1).applied_index();
    c.node(1)
        .step(Input::Compact {
            index: applied,
            data: cmd("state"),
        })
        .unwrap();
    let snapshot = c.node(1).snapshot().cloned().expect("a snapshot");
    assert_eq!(
        snapshot.meta.timestamp_ms, 3_000,
        "the stamp of the entry at the index"
    );

    let restarted = restarted_from_snapshot(1, snapshot.clone(), c.node(1).term(), applied);
    assert_eq!(
        restarted.last_timestamp_ms(),
        3_000,
        "recovered from the snapshot"
    );
    let mut joiner = fresh(9);
    joiner.restore_snapshot(snapshot);
    assert_eq!(
        joiner.last_timestamp_ms(),
        3_000,
        "installed with the snapshot"
    );
}

/// A new leader starts every follower's progress as "recently active" (so that check-quorum
/// does not depose it at once); that must not count as an answer from a voter that is in
/// fact dead: right after a leadership change, a caught-up learner is not promoted while
/// a voter has not been heard from in the new term.
#[test]
fn a_new_leader_does_not_promote_while_a_voter_it_has_not_heard_from_may_be_dead() {
    let mut c = Cluster::new(3);
    c.tick_until_leader(1);
    // n3 dies; n1 sees it silent for a round, so it holds n4 back as a learner; then it
    // hands leadership to n2 before n3 has been silent long enough to be replaced.
    c.isolated[2] = true;
    for _ in 0..config().election_ticks {
        c.node(1).step(Input::Tick).unwrap();
        c.settle();
    }
    c.add_learner(1, fresh(4));
    c.settle();
    let m = c.node(1).membership().clone();
    assert!(!m.is_voter(n(4)), "n4 still a learner: {m:?}");
    c.node(1)
        .step(Input::TransferLeadership { to: n(2) })
        .unwrap();
    c.settle();
    assert_eq!(c.node(2).role(), Role::Leader, "the transfer took");
    for _ in 0..config().election_ticks {
        c.node(2).step(Input::Tick).unwrap();
        c.settle();
        let m = c.node(2).membership().clone();
        assert!(
            !(m.is_voter(n(4)) && m.is_voter(n(3))),
            "n4 promoted while dead n3 still votes: {m:?}"
        );
    }
}

/// A voter that dies in the same round as its replacement catches up still looks alive
/// for that round, so the replacement is promoted beside it; the dead voter is removed
/// after `replace_after_rounds` all the same (more than three voters remain), not left
/// voting until the removal timeout.
#[test]
fn a_dead_voter_promoted_around_is_still_removed() {
    let mut c = Cluster::new(3);
    c.tick_until_leader(1);
    c.isolated[2] = true; // n3 dies; n1 heard from it in this round
    c.add_learner(1, fresh(4));
    c.settle();
    c.node(1).step(Input::Tick).unwrap();
    c.settle();
    let m = c.node(1).membership().clone();
    assert!(m.is_voter(n(4)) && m.is_voter(n(3)), "the race: {m:?}");
    for _ in 0..(config().replace_after_rounds + 3) * config().election_ticks {
        c.node(1).step(Input::Tick).unwrap();
        c.settle();
    }
    assert_eq!(c.node(1).membership().voters, voters(&[1, 2, 4]).voters);
}
