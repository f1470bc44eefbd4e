//! The member driven by hand: a driver that writes at once and applies every command as
//! its own output, recording the actions in the order the member gave them.
use std::time::{Duration, Instant};

use super::*;
use crate::raft::RaftConfig;
use crate::storage::{MemoryStorage, Storage};

const ME: NodeId = NodeId(1);

struct Driver {
    member: Member,
    start: Instant,
    ticks: u64,
    /// How far the wall clock has jumped from the monotonic one.
    wall_jump_ms: i64,
    /// Every action carried out, in order (writes and applies reported back at once).
    log: Vec<Action>,
}

fn config() -> WorkerConfig {
    WorkerConfig {
        snapshot_every: None,
        snapshot_bytes: None,
        ..WorkerConfig::default()
    }
}

/// A single-voter group of `ME`, ticked until it leads and its first entries are applied.
fn leader(config: WorkerConfig) -> Driver {
    leader_of(config, Membership::with_voters([ME]))
}

/// A group founded with `membership` (`ME` its only voter), ticked until `ME` leads.
fn leader_of(config: WorkerConfig, membership: Membership) -> Driver {
    let state = MemoryStorage::new().initial_state().expect("state");
    let mut raft = Raft::new(ME, RaftConfig::default(), 3, state).expect("core");
    raft.bootstrap(membership).expect("bootstrap");
    let mut d = Driver {
        member: Member::new(config, raft, LeadershipPreference::Normal, 0, 1_000),
        start: Instant::now(),
        ticks: 0,
        wall_jump_ms: 0,
        log: Vec::new(),
    };
    for _ in 0..200 {
        d.run();
        if d.member.raft().role() == Role::Leader
            && d.member.applied == d.member.raft().commit_index()
            && d.member.raft().commit_index() > 0
        {
            d.log.clear();
            return d;
        }
        d.tick();
    }
    panic!("did not lead");
}

impl Driver {
    fn now(&self) -> Now {
        Now {
            instant: self.start + Duration::from_millis(self.ticks * 50),
            unix_ms: (1_000 + self.ticks * 50).saturating_add_signed(self.wall_jump_ms),
        }
    }

    fn tick(&mut self) {
        self.ticks += 1;
        let now = self.now();
        self.member.handle_tick(now);
    }

    /// Ticks `ticks` times, carrying out every action after each.
    fn settle(&mut self, ticks: u64) {
        for _ in 0..ticks {
            self.tick();
            self.run();
        }
    }

    /// A new bond with `peer`, which says it takes part as an ordinary member.
    fn bond_member(&mut self, peer: NodeId) {
        let now = self.now();
        self.member.handle_reachable(now, peer, true);
        self.member.handle_frame(
            now,
            peer,
            PeerFrame::Preference(LeadershipPreference::Normal),
        );
    }

    fn request(&mut self, id: u64, request: Request) {
        let now = self.now();
        self.member.handle_request(now, RequestId(id), request);
    }

    /// Carries out every action: writes durable at once, each command's output its input.
    fn run(&mut self) {
        while let Some(action) = self.member.poll_action() {
            self.carry_out(action);
        }
    }

    /// Carries out actions up to and including the next write.
    fn run_through_write(&mut self) {
        while let Some(action) = self.member.poll_action() {
            let write = matches!(action, Action::Write { .. });
            self.carry_out(action);
            if write {
                return;
            }
        }
        panic!("no write: {:?}", self.log);
    }

    fn carry_out(&mut self, action: Action) {
        match &action {
            Action::Write { batch, .. } => {
                if let Some((index, term)) = batch.persisted_position() {
                    self.member.handle_persisted(index, term);
                }
            }
            Action::Apply(entry) => {
                let output = match &entry.payload {
                    EntryPayload::Command(data) => Some(data.clone()),
                    _ => None,
                };
                self.member.handle_applied(entry.index, entry.term, output);
            }
            _ => {}
        }
        self.log.push(action);
    }

    fn position(&self, what: impl Fn(&Action) -> bool) -> usize {
        self.log
            .iter()
            .position(what)
            .unwrap_or_else(|| panic!("not carried out: {:?}", self.log))
    }

    fn answers(&self) -> Vec<(RequestId, Result<Reply, RequestError>)> {
        self.log
            .iter()
            .filter_map(|a| match a {
                Action::Answer { id, result } => Some((*id, result.clone())),
                _ => None,
            })
            .collect()
    }
}

#[test]
fn a_command_is_answered_with_its_output_once_applied() {
    let mut d = leader(config());
    d.request(1, Request::Execute(Bytes::from_static(b"put")));
    d.run();
    let applied = d
        .log
        .iter()
        .position(|a| matches!(a, Action::Apply(e) if matches!(&e.payload, EntryPayload::Command(c) if c == "put")))
        .expect("applied");
    let answered = d
        .log
        .iter()
        .position(|a| {
            matches!(
                a,
                Action::Answer {
                    id: RequestId(1),
                    ..
                }
            )
        })
        .expect("answered");
    assert!(applied < answered, "{:?}", d.log);
    assert_eq!(
        d.answers(),
        vec![(RequestId(1), Ok(Reply::Output(Bytes::from_static(b"put"))))]
    );
}

/// The core's applied index runs ahead of the driver's (it advances when the Ready is
/// taken): a read point is served only once the driver has applied it.
#[test]
fn a_strong_read_is_served_only_after_the_driver_applied_its_read_point() {
    let mut d = leader(config());
    d.request(1, Request::Execute(Bytes::from_static(b"a")));
    // "a" is durable, so committed (one voter), and not applied yet: the read point.
    d.run_through_write();
    let committed = d.member.raft().commit_index();
    assert!(committed > d.member.applied, "{:?}", d.log);
    d.request(2, Request::StrongRead);
    d.run();
    let applied = d.position(|a| matches!(a, Action::Apply(e) if e.index == committed));
    let served = d.position(|a| matches!(a, Action::Serve(RequestId(2))));
    assert!(applied < served, "{:?}", d.log);
}

fn disk_gone() -> crate::storage::StorageError {
    crate::storage::FatalStorageError::Io {
        op: "write",
        reason: "disk gone".into(),
    }
    .into()
}

#[test]
fn a_stop_answers_commands_in_flight_as_unknown_and_later_requests_as_stopped() {
    let mut d = leader(config());
    // Proposed but not yet written: the driver stops before carrying anything out.
    d.request(1, Request::Execute(Bytes::from_static(b"x")));
    d.member.stop(StopReason::Storage(disk_gone()));
    d.request(2, Request::Execute(Bytes::from_static(b"y")));
    d.request(3, Request::StrongRead);
    d.run();
    let stopped = RequestError::Stopped(StopReason::Storage(disk_gone()));
    assert_eq!(
        d.answers(),
        vec![
            (RequestId(1), Err(RequestError::Unknown)),
            (RequestId(2), Err(stopped.clone())),
            (RequestId(3), Err(stopped)),
        ]
    );
    assert!(
        !d.log
            .iter()
            .any(|a| matches!(a, Action::Write { .. } | Action::Apply(_))),
        "a stopped member writes or applies nothing: {:?}",
        d.log
    );
}

#[test]
fn a_snapshot_is_asked_for_at_the_applied_index_and_once_at_a_time() {
    let mut d = leader(WorkerConfig {
        snapshot_every: Some(4),
        ..config()
    });
    let snapshots = |d: &Driver| -> Vec<Index> {
        d.log
            .iter()
            .filter_map(|a| match a {
                Action::TakeSnapshot { index } => Some(*index),
                _ => None,
            })
            .collect()
    };
    assert!(
        d.member.applied < 4,
        "the set-up applied {}",
        d.member.applied
    );
    for id in 1..=3 {
        d.request(id, Request::Execute(Bytes::from_static(b"c")));
    }
    d.run();
    // Asked once everything applied so far was applied: the machine is at that index.
    let applied = d.member.applied;
    assert!(applied >= 4);
    assert_eq!(snapshots(&d), vec![applied], "{:?}", d.log);
    let asked = d.position(|a| matches!(a, Action::TakeSnapshot { .. }));
    let last_apply = d.log.iter().rposition(|a| matches!(a, Action::Apply(_)));
    assert!(last_apply < Some(asked), "{:?}", d.log);
    // Not another while that one is out, however much is applied.
    d.log.clear();
    for id in 4..=12 {
        d.request(id, Request::Execute(Bytes::from_static(b"c")));
    }
    d.run();
    assert_eq!(snapshots(&d), Vec::<Index>::new());
    // Reported failed: asked again, being due, at what the machine has applied.
    assert!(!d.member.handle_snapshot_taken(applied, None));
    let due_at = d.member.applied;
    d.request(13, Request::Execute(Bytes::from_static(b"c")));
    d.run();
    assert_eq!(snapshots(&d), vec![due_at]);
}

/// A leader handing over leadership appends nothing: its callers retry with the next one
/// instead of being told their command was refused.
#[test]
fn refusals_of_leadership_are_retried_and_others_are_not() {
    for rejection in [
        Rejection::TransferInProgress,
        Rejection::LeadershipLost,
        Rejection::NotLeader { leader: None },
    ] {
        assert_eq!(
            request_error(refusal_of(rejection.clone())),
            RequestError::NoLeader,
            "{rejection:?}"
        );
    }
    assert!(matches!(
        request_error(refusal_of(Rejection::TooLarge {
            bytes: 2,
            max_bytes: 1
        })),
        RequestError::Refused(_)
    ));
}

#[test]
fn a_leave_of_the_only_member_is_refused() {
    let mut d = leader(config());
    d.request(1, Request::Leave);
    d.run();
    assert!(matches!(
        d.answers().as_slice(),
        [(RequestId(1), Err(RequestError::Refused(_)))]
    ));
}

fn stamps(d: &Driver) -> Vec<u64> {
    d.log
        .iter()
        .filter_map(|a| match a {
            Action::Apply(e) if matches!(e.payload, EntryPayload::Command(_)) => {
                Some(e.timestamp_ms)
            }
            _ => None,
        })
        .collect()
}

/// Sessions expire by entry stamps and the host owns the clock: a leader's wall clock that
/// jumps hours ahead moves the stamps only as fast as the monotonic clock.
#[test]
fn a_wall_clock_jump_moves_entry_stamps_only_as_fast_as_monotonic_time() {
    let mut d = leader(config());
    d.request(1, Request::Execute(Bytes::from_static(b"before")));
    d.run();
    d.wall_jump_ms = 5 * 3_600_000;
    for _ in 0..20 {
        d.tick();
    }
    d.request(2, Request::Execute(Bytes::from_static(b"after")));
    d.run();
    let seen = stamps(&d);
    let [before, after] = seen[..] else {
        panic!("two commands applied: {seen:?}");
    };
    // 20 ticks of 50 ms passed: the stamp moved about that much, not five hours.
    assert!(after >= before, "{seen:?}");
    assert!(after - before <= 20 * 50 * 2, "{seen:?}");
    // A clock that jumps back holds the stamps where they were.
    d.wall_jump_ms = -3_600_000;
    d.log.clear();
    d.tick();
    d.request(3, Request::Execute(Bytes::from_static(b"back")));
    d.run();
    assert_eq!(stamps(&d), vec![after]);
}

/// A leader removes a member it has had no bond with for `removal_timeout`, also one
/// whose bond it never saw go down (a leader elected after that member died).
#[test]
fn a_member_never_bonded_is_removed_after_the_removal_timeout() {
    const GHOST: NodeId = NodeId(9);
    let mut founding = Membership::with_voters([ME]);
    founding.learners.insert(GHOST);
    let mut d = leader_of(
        WorkerConfig {
            removal_timeout: Some(Duration::from_millis(500)),
            ..config()
        },
        founding,
    );
    let mut ticks = 0;
    while d.member.raft().membership().contains(GHOST) {
        assert!(
            ticks < 40,
            "still a member after {ticks} ticks of 50 ms: {:?}",
            d.log
        );
        d.tick();
        d.run();
        ticks += 1;
    }
    assert!(
        ticks >= 500 / 50,
        "removed after {ticks} ticks, before the timeout"
    );
}

/// A leader that added `peer` on its bond and then removed it, as the core removes a dead
/// voter (not an operator's removal); the removal is not yet carried out.
fn leader_that_removed(peer: NodeId) -> Driver {
    let mut d = leader(config());
    d.bond_member(peer);
    d.settle(3);
    assert!(
        d.member.raft().membership().contains(peer),
        "added on its bond"
    );
    d.member
        .step(Input::ChangeMembership(MembershipChange::Remove(peer)));
    d
}

/// A peer the group removed (here as the core removes a dead voter) is not added back
/// while its old bond stays up (a crashed peer's bond lingers until it idles out), only
/// once it bonds anew, or after `READMIT_AFTER` if its bond stayed up all along.
#[test]
fn a_removed_peer_whose_bond_lingers_is_not_added_back_at_once() {
    const PEER: NodeId = NodeId(5);
    let mut d = leader_that_removed(PEER);
    d.settle(10);
    assert!(
        !d.member.raft().membership().contains(PEER),
        "re-added while its old bond lingers: {:?}",
        d.member.raft().membership()
    );
    // A new bond proves it alive: added again.
    let now = d.now();
    d.member.handle_reachable(now, PEER, false);
    d.bond_member(PEER);
    d.settle(3);
    assert!(
        d.member.raft().membership().contains(PEER),
        "added on a new bond"
    );

    // Removed again, its bond never drops: added back only after READMIT_AFTER.
    d.member
        .step(Input::ChangeMembership(MembershipChange::Remove(PEER)));
    let removed_at = d.ticks;
    while !d.member.raft().membership().contains(PEER) {
        assert!(d.ticks - removed_at < 2_000, "never added back");
        d.settle(1);
    }
    assert!(
        Duration::from_millis((d.ticks - removed_at) * 50) >= READMIT_AFTER,
        "added back after {} ticks",
        d.ticks - removed_at
    );
}

/// A member the group removed while its bond stayed up (the core replaced it as a dead
/// voter while it was paused) that speaks again is added back at once, not after
/// `READMIT_AFTER`; a frame right after the removal (one a dead peer could have sent
/// before it died) does not count.
#[test]
fn a_removed_peer_that_speaks_again_is_added_back_at_once() {
    const PEER: NodeId = NodeId(5);
    let mut d = leader_that_removed(PEER);
    d.settle(2);
    assert!(!d.member.raft().membership().contains(PEER), "removed");
    // Its (pre-)vote request right after: maybe sent before it died. Not enough.
    let pre_vote = |d: &Driver| {
        PeerFrame::Raft(Message {
            from: PEER,
            to: ME,
            term: d.member.raft().term(),
            body: crate::raft::MessageBody::PreVote {
                last_index: 1,
                last_term: 1,
            },
        })
    };
    let frame = pre_vote(&d);
    let now = d.now();
    d.member.handle_frame(now, PEER, frame);
    d.settle(10);
    assert!(
        !d.member.raft().membership().contains(PEER),
        "added back on a frame right after its removal"
    );
    // Well after the removal (ALIVE_AGAIN_AFTER, far short of READMIT_AFTER): alive.
    let ticks = (ALIVE_AGAIN_AFTER.as_millis() / 50) as u64;
    d.settle(ticks);
    let frame = pre_vote(&d);
    let now = d.now();
    d.member.handle_frame(now, PEER, frame);
    d.settle(5);
    assert!(
        d.member.raft().membership().contains(PEER),
        "not added back though it speaks: {:?}",
        d.member.raft().membership()
    );
    assert!(Duration::from_millis(d.ticks * 50) < READMIT_AFTER);
}
