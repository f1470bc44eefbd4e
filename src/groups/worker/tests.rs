//! The worker driven by hand, one inbox item at a time, with a transport that records what
//! it sends: which frames it believes, and from whom.
use std::collections::BTreeSet;
use std::sync::Mutex;

use super::*;
use crate::groups::formation::{founders_digest, FormationStatus};
use crate::machine::{KvQuery, KvStore, LeadershipPreference};
use crate::raft::{Entry, Incarnation, Message, MessageBody, RaftConfig, SafetyViolation};
use crate::storage::MemoryStorage;

/// Remembers every frame the worker hands it, and every peer it disconnects.
#[derive(Default)]
struct Recorder(Mutex<Vec<(NodeId, PeerFrame)>>, Mutex<Vec<NodeId>>);

impl Transport for Recorder {
    fn send(&self, to: NodeId, frame: PeerFrame) {
        self.0.lock().expect("recorder").push((to, frame));
    }

    fn disconnect_foreign(&self, peer: NodeId) {
        self.1.lock().expect("recorder").push(peer);
    }
}

impl Recorder {
    fn take(&self) -> Vec<(NodeId, PeerFrame)> {
        std::mem::take(&mut *self.0.lock().expect("recorder"))
    }

    fn disconnected(&self) -> Vec<NodeId> {
        self.1.lock().expect("recorder").clone()
    }
}

struct Harness {
    worker: Worker<KvStore, MemoryStorage>,
    sent: Arc<Recorder>,
    status: watch::Receiver<GroupStatus>,
    /// Keeps the inbox open (the worker is driven by hand, not through it).
    _inbox: std::sync::mpsc::SyncSender<InboxItem<ClientRequest>>,
}

const ME: NodeId = NodeId(2);
const LEADER: NodeId = NodeId(1);
const OTHER: NodeId = NodeId(3);

fn ids(v: &[u64]) -> BTreeSet<NodeId> {
    v.iter().copied().map(NodeId).collect()
}

/// Member `ME`; `voters`: bootstrap with them, `None`: fresh.
fn harness(voters: Option<&[u64]>, config: WorkerConfig) -> Harness {
    let storage = MemoryStorage::new();
    let state = storage.initial_state().expect("state");
    let mut raft = Raft::new(ME, RaftConfig::default(), 7, state).expect("core");
    if let Some(voters) = voters {
        raft.bootstrap(Membership::with_voters(ids(voters)))
            .expect("bootstrap");
    }
    let sent = Arc::new(Recorder::default());
    let (tx, rx) = std::sync::mpsc::sync_channel(16);
    let (status_tx, status) = watch::channel(GroupStatus::default());
    let worker = Worker::new(
        ME,
        config,
        raft,
        Sessions::new(KvStore::new()),
        storage,
        Arc::new(WriteTiming::default()),
        sent.clone(),
        rx,
        status_tx,
    );
    let mut h = Harness {
        worker,
        sent,
        status,
        _inbox: tx,
    };
    h.worker.process_ready();
    h
}

impl Harness {
    fn item(&mut self, item: InboxItem<ClientRequest>) {
        self.worker.handle_item(item);
        self.worker.process_ready();
    }

    fn bond(&mut self, peer: NodeId) {
        self.item(InboxItem::PeerReachable {
            peer,
            reachable: true,
        });
    }

    /// A new bond whose peer says it takes part as an ordinary member.
    fn bond_member(&mut self, peer: NodeId) {
        self.bond(peer);
        self.frame(peer, PeerFrame::Preference(LeadershipPreference::Normal));
    }

    fn frame(&mut self, from: NodeId, frame: PeerFrame) {
        self.item(InboxItem::Frame { from, frame });
    }

    fn raft(&mut self, from: NodeId, term: Term, body: MessageBody) {
        let m = Message {
            from,
            to: ME,
            term,
            body,
        };
        self.frame(from, PeerFrame::Raft(m));
    }

    fn status(&self) -> GroupStatus {
        self.status.borrow().clone()
    }

    /// A follower of `LEADER` in term 2 of the group {1, 2, 3}, bonded with both others.
    fn follower() -> Self {
        let mut h = harness(Some(&[1, 2, 3]), WorkerConfig::default());
        h.bond(LEADER);
        h.bond(OTHER);
        h.raft(
            LEADER,
            2,
            MessageBody::Heartbeat {
                commit: 1,
                read_seq: 0,
            },
        );
        assert_eq!(h.status().leader, Some(LEADER), "{:?}", h.status());
        h.sent.take();
        h
    }

    /// The request id of the one frame the worker sent to the leader.
    fn forwarded_id(&self) -> u64 {
        let sent = self.sent.take();
        let ids: Vec<u64> = sent
            .iter()
            .filter(|(to, _)| *to == LEADER)
            .filter_map(|(_, f)| match f {
                PeerFrame::Forward { request_id, .. }
                | PeerFrame::ForwardFeed { request_id, .. }
                | PeerFrame::ReadIndex { request_id } => Some(*request_id),
                _ => None,
            })
            .collect();
        assert_eq!(ids.len(), 1, "one request to the leader: {sent:?}");
        ids[0]
    }
}

fn command() -> Bytes {
    Bytes::from_static(b"any command bytes")
}

#[test]
fn a_forward_reply_is_taken_only_from_the_member_it_went_to() {
    let mut h = Harness::follower();
    let (reply, mut answer) = oneshot::channel();
    h.item(InboxItem::Client(ClientRequest::Execute {
        command: command(),
        reply,
    }));
    let request_id = h.forwarded_id();
    // Another bonded member answers for the leader: not believed.
    let forged = Bytes::from_static(b"forged output");
    h.frame(
        OTHER,
        PeerFrame::ForwardReply {
            request_id,
            result: Ok(forged.clone()),
        },
    );
    assert!(answer.try_recv().is_err(), "a reply from {OTHER} was taken");
    let genuine = Bytes::from_static(b"leader's output");
    h.frame(
        LEADER,
        PeerFrame::ForwardReply {
            request_id,
            result: Ok(genuine.clone()),
        },
    );
    assert_eq!(answer.try_recv().expect("answered"), Ok(genuine));
}

#[test]
fn a_forward_feed_reply_is_taken_only_from_the_member_it_went_to() {
    let mut h = Harness::follower();
    let (reply, mut answer) = oneshot::channel();
    h.item(InboxItem::Client(ClientRequest::Feed {
        command: command(),
        reply,
    }));
    let request_id = h.forwarded_id();
    h.frame(
        OTHER,
        PeerFrame::ForwardFeedReply {
            request_id,
            result: Ok(999),
        },
    );
    assert!(
        answer.try_recv().is_err(),
        "a feed reply from {OTHER} was taken"
    );
    h.frame(
        LEADER,
        PeerFrame::ForwardFeedReply {
            request_id,
            result: Ok(5),
        },
    );
    assert_eq!(answer.try_recv().expect("answered"), Ok(5));
}

#[test]
fn a_read_point_is_taken_only_from_the_member_it_went_to() {
    let mut h = Harness::follower();
    let (reply, mut answer) = oneshot::channel();
    let query = KvQuery::Get { key: b"k".to_vec() };
    let query = Bytes::from(postcard::to_allocvec(&query).expect("query encodes"));
    h.item(InboxItem::Client(ClientRequest::StrongQuery {
        query,
        reply,
    }));
    let request_id = h.forwarded_id();
    // A read point from someone else (here one already applied: it would answer at once).
    h.frame(
        OTHER,
        PeerFrame::ReadIndexReply {
            request_id,
            result: Ok(1),
        },
    );
    assert!(
        answer.try_recv().is_err(),
        "a read point from {OTHER} was taken"
    );
    h.frame(
        LEADER,
        PeerFrame::ReadIndexReply {
            request_id,
            result: Ok(1),
        },
    );
    assert!(
        answer.try_recv().expect("answered").is_ok(),
        "served once the leader's read point is applied"
    );
}

#[test]
fn a_fresh_founder_takes_no_strangers_log_and_founds_once_every_founder_confirmed() {
    let founders = ids(&[1, 2, 3]);
    let config = WorkerConfig {
        founders: Some(founders.clone()),
        ..WorkerConfig::default()
    };
    let mut h = harness(None, config);
    let stranger = NodeId(9);
    for peer in [LEADER, OTHER, stranger] {
        h.bond(peer);
    }
    let said: Vec<(NodeId, PeerFrame)> = h.sent.take();
    let digest = founders_digest(&founders);
    let fresh = PeerFrame::Formation(FormationStatus::Fresh {
        founders: Some(digest),
    });
    assert!(
        said.iter().filter(|(_, f)| *f == fresh).count() == 3,
        "it told every new bond it is fresh, with its founding set: {said:?}"
    );
    // A leader of another group with this id hands it a log: dropped, it stays fresh.
    let foreign = Entry {
        term: 1,
        index: 1,
        timestamp_ms: 0,
        payload: EntryPayload::Membership(Membership::with_voters(ids(&[2, 9]))),
    };
    h.raft(
        stranger,
        3,
        MessageBody::Append {
            prev_index: 0,
            prev_term: 0,
            entries: vec![foreign],
            commit: 1,
        },
    );
    assert!(
        h.worker.member.raft().is_fresh(),
        "took a stranger's log: {:?}",
        h.status()
    );
    // A stranger's confirmation does not count; the founders' do.
    h.frame(stranger, fresh.clone());
    h.frame(LEADER, fresh.clone());
    assert!(
        h.worker.member.raft().is_fresh(),
        "founded before every founder confirmed"
    );
    h.sent.take();
    h.frame(OTHER, fresh);
    assert_eq!(h.status().membership.voters, founders, "{:?}", h.status());
    let told: BTreeSet<NodeId> = h
        .sent
        .take()
        .into_iter()
        .filter(|(_, f)| *f == PeerFrame::Formation(FormationStatus::Formed))
        .map(|(to, _)| to)
        .collect();
    assert_eq!(
        told,
        ids(&[1, 3, 9]),
        "every bonded peer learns it is formed"
    );
}

/// The first entry of a group founded with `voters`, and the incarnation it names.
fn first_entry(voters: &[u64]) -> (Entry, Incarnation) {
    let entry = Entry {
        term: 1,
        index: 1,
        timestamp_ms: 0,
        payload: EntryPayload::Membership(Membership::with_voters(ids(voters))),
    };
    let incarnation = Incarnation::of_first_entry(&entry);
    (entry, incarnation)
}

fn append_first(h: &mut Harness, leader: NodeId, term: Term, entry: Entry) {
    h.raft(
        leader,
        term,
        MessageBody::Append {
            prev_index: 0,
            prev_term: 0,
            entries: vec![entry],
            commit: 1,
        },
    );
}

/// Two groups were founded separately under one id (the operator started two clusters
/// with one key, say). A fresh joiner bonded with a member of each while it held no log,
/// so no handshake could refuse either: it joins the one whose log it takes first and
/// drops the other, instead of stopping on the conflict between the two logs.
#[test]
fn a_fresh_joiner_bonded_to_two_foundings_joins_one_and_drops_the_other() {
    let mut h = harness(None, WorkerConfig::default());
    let (ours, a) = first_entry(&[1, 2]);
    let (theirs, b) = first_entry(&[3, 2]);
    h.bond(LEADER);
    h.bond(OTHER);
    h.frame(LEADER, PeerFrame::Incarnation(a));
    h.frame(OTHER, PeerFrame::Incarnation(b));
    assert!(h.sent.disconnected().is_empty(), "nothing to compare yet");
    append_first(&mut h, LEADER, 1, ours);
    assert_eq!(h.status().incarnation, Some(a), "{:?}", h.status());
    assert_eq!(
        h.sent.disconnected(),
        vec![OTHER],
        "the other founding is dropped"
    );
    // The other group's leader, in a later term: not heard at all.
    append_first(&mut h, OTHER, 5, theirs);
    let status = h.status();
    assert_eq!(status.stopped, None, "{status:?}");
    assert_eq!(status.term, 1, "took the other founding's term: {status:?}");
    assert_eq!(status.incarnation, Some(a));
    assert_eq!(status.leader, Some(LEADER));
    // Its bond closing and another opening change nothing: it is dropped again.
    h.item(InboxItem::PeerReachable {
        peer: OTHER,
        reachable: false,
    });
    h.bond(OTHER);
    h.frame(OTHER, PeerFrame::Incarnation(b));
    assert_eq!(h.sent.disconnected(), vec![OTHER, OTHER]);
    // A peer of our own founding is kept, and told ours on its new bond.
    h.sent.take();
    h.bond(NodeId(4));
    h.frame(NodeId(4), PeerFrame::Incarnation(a));
    assert_eq!(h.sent.disconnected(), vec![OTHER, OTHER]);
    assert!(
        h.sent
            .take()
            .contains(&(NodeId(4), PeerFrame::Incarnation(a))),
        "a new bond is told our founding"
    );
}

/// A member that holds a log and bonded, while it was still fresh, with a peer that
/// founded another group learns that peer's founding when it comes: the peer is dropped.
#[test]
fn a_peer_that_founds_another_group_later_is_dropped() {
    let mut h = Harness::follower();
    let ours = h.status().incarnation.expect("founded");
    let (_, other) = first_entry(&[3, 7]);
    h.frame(OTHER, PeerFrame::Incarnation(ours));
    assert!(h.sent.disconnected().is_empty(), "same founding kept");
    h.frame(OTHER, PeerFrame::Incarnation(other));
    assert_eq!(h.sent.disconnected(), vec![OTHER]);
    assert_eq!(h.status().stopped, None);
}

/// A follower whose leader stopped answering (cut off, but the bond not yet timed out)
/// holds at most `FORWARDED_MAX` requests for it; the rest are told at once to retry
/// later, and once the held ones time out it forwards again.
#[test]
fn a_follower_holds_a_bounded_number_of_unanswered_forwards() {
    let mut h = Harness::follower();
    let mut held = Vec::new();
    for _ in 0..crate::groups::member::FORWARDED_MAX {
        let (reply, answer) = oneshot::channel();
        h.item(InboxItem::Client(ClientRequest::Execute {
            command: command(),
            reply,
        }));
        held.push(answer);
    }
    let (reply, mut refused) = oneshot::channel();
    h.item(InboxItem::Client(ClientRequest::StrongQuery {
        query: Bytes::new(),
        reply,
    }));
    assert_eq!(
        refused.try_recv().expect("answered at once"),
        Err(RequestError::Busy)
    );
    assert!(
        held.iter_mut().all(|a| a.try_recv().is_err()),
        "held ones wait"
    );
    let forwarded = h
        .sent
        .take()
        .iter()
        .filter(|(to, f)| *to == LEADER && matches!(f, PeerFrame::Forward { .. }))
        .count();
    assert_eq!(forwarded, crate::groups::member::FORWARDED_MAX);
    // The forward timeout passes: every held request is failed for its handle to retry.
    let later = Instant::now() + WorkerConfig::default().forward_timeout;
    h.worker.member.handle_tick(Now {
        instant: later,
        unix_ms: 0,
    });
    h.worker.process_ready();
    assert!(held
        .iter_mut()
        .all(|a| a.try_recv() == Ok(Err(RequestError::Unknown))));
    let (reply, _answer) = oneshot::channel();
    h.item(InboxItem::Client(ClientRequest::Execute {
        command: command(),
        reply,
    }));
    h.forwarded_id();
}

#[test]
fn a_second_leader_in_this_leaders_term_stops_the_node() {
    let mut h = leader_alone();
    let status = h.status();
    h.raft(
        LEADER,
        status.term,
        MessageBody::Heartbeat {
            commit: 0,
            read_seq: 0,
        },
    );
    let stopped = h.status().stopped;
    assert!(
        matches!(
            &stopped,
            Some(StopReason::SafetyViolated(
                SafetyViolation::SecondLeader { .. }
            ))
        ),
        "{:?}",
        h.status()
    );
}

/// A single-voter leader (`ME`), ticked until it leads.
fn leader_alone() -> Harness {
    let mut h = harness(Some(&[2]), WorkerConfig::default());
    for _ in 0..100 {
        if h.status().role == Some(Role::Leader) {
            return h;
        }
        h.worker
            .member
            .handle_tick(Worker::<KvStore, MemoryStorage>::now());
        h.worker.process_ready();
    }
    panic!("did not lead: {:?}", h.status());
}

impl Harness {
    /// One tick of the worker's loop: the core, then the leader's membership decisions.
    fn tick(&mut self) {
        self.worker
            .member
            .handle_tick(Worker::<KvStore, MemoryStorage>::now());
        self.worker.process_ready();
    }
}

#[test]
fn a_member_that_asked_to_leave_is_removed_and_not_added_back_while_bonded() {
    let mut h = leader_alone();
    h.bond_member(OTHER);
    h.tick();
    assert!(
        h.status().membership.learners.contains(&OTHER),
        "a bonded peer joins as a learner: {:?}",
        h.status()
    );
    // A member that is not the sender cannot be removed by it: `Leave` names no one.
    h.frame(OTHER, PeerFrame::Leave);
    h.tick();
    assert!(!h.status().membership.contains(OTHER), "{:?}", h.status());
    for _ in 0..5 {
        h.tick();
        assert!(
            !h.status().membership.contains(OTHER),
            "added back while still bonded: {:?}",
            h.status()
        );
    }
    // A new bond (it came back) makes it welcome again.
    h.item(InboxItem::PeerReachable {
        peer: OTHER,
        reachable: false,
    });
    h.bond_member(OTHER);
    h.tick();
    assert!(h.status().membership.contains(OTHER), "{:?}", h.status());
}

#[test]
fn a_leave_frame_from_a_non_member_or_to_a_follower_changes_nothing() {
    let mut h = Harness::follower();
    let before = h.status().membership;
    h.frame(OTHER, PeerFrame::Leave);
    assert_eq!(h.status().membership, before, "a follower removed someone");
    let mut h = leader_alone();
    let stranger = NodeId(9);
    h.bond_member(stranger);
    h.frame(NodeId(10), PeerFrame::Leave);
    h.tick();
    assert!(
        h.status().membership.contains(stranger),
        "a stranger's leave removed a member: {:?}",
        h.status()
    );
}

#[test]
fn the_only_member_cannot_leave() {
    let mut h = leader_alone();
    let (reply, mut answer) = oneshot::channel();
    h.item(InboxItem::Client(ClientRequest::Leave { reply }));
    match answer.try_recv().expect("answered at once") {
        Err(RequestError::Refused(Rejection::OnlyMember)) => {}
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_member_leaves_once_the_leader_it_asked_says_it_is_out() {
    let mut h = Harness::follower();
    let (reply, mut answer) = oneshot::channel();
    h.item(InboxItem::Client(ClientRequest::Leave { reply }));
    let asked: Vec<NodeId> = h
        .sent
        .take()
        .into_iter()
        .filter(|(_, f)| *f == PeerFrame::Leave)
        .map(|(to, _)| to)
        .collect();
    assert_eq!(asked, vec![LEADER], "a follower asks its leader");
    h.frame(OTHER, PeerFrame::Left);
    assert!(answer.try_recv().is_err(), "believed a 'left' from {OTHER}");
    h.frame(LEADER, PeerFrame::Left);
    assert_eq!(answer.try_recv().expect("answered"), Ok(()));
}

#[test]
fn the_leader_tells_a_removed_member_it_is_out_once_that_is_committed() {
    let mut h = leader_alone();
    h.bond_member(OTHER);
    h.tick();
    h.sent.take();
    h.frame(OTHER, PeerFrame::Leave);
    h.tick();
    assert!(!h.status().membership.contains(OTHER));
    h.sent.take();
    // It asks again (it heard nothing of the commit): now it is told.
    h.frame(OTHER, PeerFrame::Leave);
    let told: Vec<NodeId> = h
        .sent
        .take()
        .into_iter()
        .filter(|(_, f)| *f == PeerFrame::Left)
        .map(|(to, _)| to)
        .collect();
    assert_eq!(told, vec![OTHER]);
}

#[test]
fn a_bonded_peer_joins_as_it_said_it_takes_part() {
    let mut h = leader_alone();
    let (observer, reluctant, silent) = (NodeId(7), NodeId(8), NodeId(9));
    for peer in [observer, reluctant, silent] {
        h.bond(peer);
    }
    h.frame(
        observer,
        PeerFrame::Preference(LeadershipPreference::Observer),
    );
    h.frame(
        reluctant,
        PeerFrame::Preference(LeadershipPreference::Reluctant),
    );
    // A preference from a peer without a bond is not taken.
    h.frame(
        NodeId(10),
        PeerFrame::Preference(LeadershipPreference::Normal),
    );
    for _ in 0..6 {
        h.tick();
    }
    let m = h.status().membership;
    assert!(
        m.observers.contains(&observer),
        "an observer never votes: {m:?}"
    );
    assert!(
        m.learners.contains(&reluctant) || m.voters.contains(&reluctant),
        "{m:?}"
    );
    assert!(
        !m.contains(silent),
        "added before it said how it takes part: {m:?}"
    );
    assert!(!m.contains(NodeId(10)), "{m:?}");
}

#[test]
fn every_new_bond_hears_this_members_preference() {
    let mut h = leader_alone();
    h.bond(OTHER);
    let said: Vec<PeerFrame> = h
        .sent
        .take()
        .into_iter()
        .filter(|(to, _)| *to == OTHER)
        .map(|(_, f)| f)
        .collect();
    assert!(
        said.contains(&PeerFrame::Preference(LeadershipPreference::Normal)),
        "{said:?}"
    );
}
