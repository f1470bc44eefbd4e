//! The member: every decision a group member makes around its consensus core, as a
//! sans-IO state machine in the shape of `quinn-proto`'s `Connection`.
//!
//! It owns the core ([`Raft`]) and what the runtime decides beside it: the tables of
//! proposals, forwarded commands and reads (and who may answer them), how the core's
//! rejections reach a caller, formation ([`super::formation`]), automatic membership
//! (joiners, departures, dead members), leadership preferences, leaving the group, and when
//! to take a snapshot.
//!
//! **What it must not do.** No IO and no clock of its own: it never touches storage, the
//! state machine, a socket, a thread or `Instant::now()`. Inputs come in through `handle_*`
//! methods that take the time as the driver sees it ([`Now`]); what to do comes out of
//! [`Member::poll_action`], in the order it must be done. The worker
//! ([`super::worker`]) drives it on a thread against real storage and a real state
//! machine; the simulator drives the same decisions under faults. One seed, one history.
//!
//! **The driver's contract**, on top of the core's (`crate::raft::ready`):
//! - [`Action::Send`]: hand the frame to the peer's bond (it may be lost).
//! - [`Action::Write`]: make the batch durable, then send its `then` messages and report
//!   [`Member::handle_persisted`] with the batch's position. Writes complete in order; a
//!   driver may carry on with the actions after a write before it completes.
//! - [`Action::Install`] and [`Action::Apply`]: restore the snapshot into the state machine,
//!   apply the entry, in order; every `Apply` is answered with [`Member::handle_applied`]
//!   before the next `poll_action`.
//! - [`Action::Serve`]: run the local caller's strong query now (its read point is applied).
//! - [`Action::TakeSnapshot`]: snapshot the state machine (at the index given, which is
//!   the applied index) and report [`Member::handle_snapshot_taken`] once it is durable.
//! - [`Action::Answer`]: deliver the answer to the local caller of that request.
//! - [`Action::DisconnectForeign`]: end the bonds with that peer and refuse it from now on
//!   (its log descends from another founding of the group id).
//! - [`Action::Observe`]: the core's events, for observers (metrics, the simulator's
//!   checkers); nothing to do.
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::error::{Rejection as GroupRejection, StopReason};
use super::formation::{Decision, Formation};
use super::transport::{ForwardRefusal, PeerFrame};
use super::worker::{RequestError, WorkerConfig};
use crate::machine::LeadershipPreference;
use crate::raft::{
    Entry, EntryPayload, Event, Incarnation, Index, Input, Membership, MembershipChange, Message,
    NodeId, Raft, ReadState, Ready, Rejection, Role, Snapshot, StepError, Term,
};
use crate::storage::WriteBatch;

/// How much faster than the monotonic clock entry stamps may advance, in hundredths: enough
/// for stamps that lag (a leader elected after a quiet spell starts from the last stamp)
/// to catch up slowly, and a bound on how much earlier than their TTL says a jump of a
/// leader's wall clock can expire sessions.
const STAMP_CATCH_UP_PERCENT: u64 = 1;

/// How long a peer the group removed is not added back automatically while its bond stays
/// up: longer than a dead peer's bond takes to idle out ([`super::bond::IDLE_TIMEOUT`]), so
/// a crashed member replaced by its new identity is not re-added as a learner that no one
/// answers for. A peer that bonds anew is added again at once; one whose bond stayed up
/// (alive after all, e.g. paused) is added again after this.
pub(crate) const READMIT_AFTER: Duration = Duration::from_secs(30);

/// A peer the group removed automatically whose bond stayed up is added back at once, not
/// after [`READMIT_AFTER`], when a frame of it arrives this long after the removal: a dead
/// peer's last frames arrive within a round trip, so a later one shows it alive (it was
/// paused, or cut off and back, while the core replaced it as a dead voter).
pub(crate) const ALIVE_AGAIN_AFTER: Duration = Duration::from_secs(1);

/// Longest a leader that shuts down waits for its successor's election before it stops
/// anyway: a successor that is alive and caught up is elected within a round trip or two;
/// without this bound a leader whose chosen successor is dead would wait out a whole
/// election timeout, however long that is configured.
pub(crate) const HANDOVER_WAIT_MAX: Duration = Duration::from_secs(1);

/// Most requests (commands and read points) one member keeps forwarded to its leader and
/// unanswered. A follower cut off from a leader it still believes in would otherwise hold
/// every caller's request for the forward timeout, however many arrive; past this bound a
/// caller is told at once to retry later ([`RequestError::Busy`]).
pub(crate) const FORWARDED_MAX: usize = 16 * 1024;

/// A local caller's request, named by the driver (unique among its requests in flight).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct RequestId(pub u64);

/// The time, as the driver sees it.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Now {
    /// Monotonic time: deadlines and how long a peer has been away.
    pub instant: Instant,
    /// Wall-clock milliseconds since the Unix epoch: the timestamp a proposed entry carries
    /// (the core keeps them monotonic).
    pub unix_ms: u64,
}

/// What a local caller asks of the group.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Request {
    /// Commit and apply an encoded `SessionCommand`: answered with its encoded output.
    Execute(Bytes),
    /// Append an encoded `SessionCommand`: answered with its index, once appended.
    Feed(Bytes),
    /// A linearizable read point: answered with [`Action::Serve`] once applied locally.
    StrongRead,
    /// Hand leadership to another voter (no answer).
    TransferLeadership(NodeId),
    /// A membership change (leader only): answered with the index the configuration was
    /// appended at, or why not.
    ChangeMembership(MembershipChange),
    /// Leave the group for good: answered once a configuration without this member is
    /// committed.
    Leave,
}

/// A successful answer to a [`Request`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Reply {
    /// The encoded output of an executed command.
    Output(Bytes),
    /// The index a fed command was appended at.
    Index(Index),
    /// The member left the group.
    Left,
}

/// What the driver must do, in order (see the module's contract).
#[derive(Debug)]
pub(crate) enum Action {
    Send {
        to: NodeId,
        frame: PeerFrame,
    },
    /// Make `batch` durable; then send `then` and report [`Member::handle_persisted`].
    Write {
        batch: WriteBatch,
        then: Vec<Message>,
    },
    /// Restore the state machine from this snapshot (the log store now refers to it).
    Install(Snapshot),
    /// Apply this committed entry; report [`Member::handle_applied`].
    Apply(Entry),
    /// The read point of local strong read `id` is applied: run its query now.
    Serve(RequestId),
    /// Snapshot the state machine, which has applied exactly `index`.
    TakeSnapshot {
        index: Index,
    },
    Answer {
        id: RequestId,
        result: Result<Reply, RequestError>,
    },
    Observe(Event),
    /// End every bond with this peer and refuse it from now on: its log descends from
    /// another founding of the group id ([`PeerFrame::Incarnation`]).
    DisconnectForeign(NodeId),
}

/// Who waits for a proposed entry.
#[derive(Clone, Copy, Debug)]
enum Waiter {
    Local(RequestId),
    Remote { peer: NodeId, request_id: u64 },
}

/// Who waits for a read point of the core.
#[derive(Clone, Copy, Debug)]
enum ReadWaiter {
    Local(RequestId),
    Remote { peer: NodeId, request_id: u64 },
}

/// What a local caller of a forwarded command wants back.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Wants {
    /// `execute`: the output once applied.
    Output,
    /// `feed`: the index the leader appended it at.
    Index,
}

/// A command of ours forwarded to the leader.
#[derive(Clone, Copy, Debug)]
struct Forwarded {
    caller: RequestId,
    wants: Wants,
    deadline: Instant,
    /// The member it went to: the only one whose answer counts.
    to: NodeId,
}

/// A strong read of ours whose read point was asked of the leader.
#[derive(Clone, Copy, Debug)]
struct ForwardedRead {
    caller: RequestId,
    deadline: Instant,
    to: NodeId,
}

/// How a refusal of the core reaches a caller: as "not the leader" (retry elsewhere) when
/// it is one of leadership, as a rejection otherwise.
fn refusal_of(rejection: Rejection) -> ForwardRefusal {
    match rejection {
        Rejection::NotLeader { leader } => ForwardRefusal::NotLeader(leader),
        // Passing states of a leader (handing over, just elected, busy): nothing was
        // appended; the caller retries, here or with the next leader.
        Rejection::TransferInProgress
        | Rejection::LeadershipLost
        | Rejection::LeaderNotReady
        | Rejection::MembershipChangePending
        | Rejection::TooManyReads { .. } => ForwardRefusal::NotLeader(None),
        // What no retry changes.
        Rejection::TooLarge { bytes, max_bytes } => {
            ForwardRefusal::Rejected(GroupRejection::TooLarge {
                bytes: bytes as u64,
                max_bytes: max_bytes as u64,
            })
        }
        Rejection::TooManyProposals { count, max } => {
            ForwardRefusal::Rejected(GroupRejection::TooManyProposals {
                count: count as u64,
                max: max as u64,
            })
        }
        Rejection::Membership(e) => ForwardRefusal::Rejected(GroupRejection::Membership(e)),
        Rejection::NotAVoter(node) => ForwardRefusal::Rejected(GroupRejection::NotAVoter(node)),
    }
}

/// What a local caller learns from a refusal of the leader (the handle retries the first two).
pub(crate) fn request_error(refusal: ForwardRefusal) -> RequestError {
    match refusal {
        ForwardRefusal::NotLeader(None) => RequestError::NoLeader,
        ForwardRefusal::NotLeader(Some(_)) | ForwardRefusal::Unknown => RequestError::Unknown,
        ForwardRefusal::Rejected(rejection) => RequestError::Refused(rejection),
    }
}

/// Removes request `request_id` from `table` if `from` is the member it went to
/// (`asked` reads that from an entry). A bonded member's answer to a request sent to
/// another is dropped: only the member asked may say what became of a command or where a
/// read may be served (request ids are this member's own counter, easy to guess).
fn take_from_asked<T>(
    me: NodeId,
    table: &mut BTreeMap<u64, T>,
    request_id: u64,
    from: NodeId,
    asked: impl Fn(&T) -> NodeId,
) -> Option<T> {
    let to = asked(table.get(&request_id)?);
    if to != from {
        tracing::warn!(node = %me, %from, asked = %to, request_id, "an answer from a member the request did not go to; dropped");
        return None;
    }
    table.remove(&request_id)
}

pub(crate) struct Member {
    id: NodeId,
    config: WorkerConfig,
    raft: Raft,
    actions: VecDeque<Action>,
    proposals: BTreeMap<Index, (Term, Waiter)>,
    next_request_id: u64,
    forwarded: BTreeMap<u64, Forwarded>,
    forwarded_reads: BTreeMap<u64, ForwardedRead>,
    /// Read points asked of the core, by the core's read id.
    reads: BTreeMap<u64, ReadWaiter>,
    /// Local reads whose read point is known, waiting for the driver to apply it.
    waiting_reads: Vec<(Index, RequestId)>,
    /// What the driver has applied (the core's own applied index runs ahead of it, by the
    /// `Apply` actions not yet carried out).
    applied: Index,
    last_snapshot_index: Index,
    /// Bytes of commands applied since the last snapshot (taken or installed).
    bytes_since_snapshot: u64,
    /// A `TakeSnapshot` is out and not yet reported back.
    snapshot_pending: bool,
    stopped: Option<StopReason>,
    /// Peers with a live bond (admitted by the transport).
    bonded: BTreeSet<NodeId>,
    /// Since when each peer has been unreachable.
    unreachable_since: BTreeMap<NodeId, Instant>,
    /// Whether to found, join or wait while the core holds no state.
    formation: Formation,
    /// A [`Request::Leave`] in progress.
    leaving: Option<RequestId>,
    /// When a hand-over before a shutdown ([`Member::hand_over`]) is given up.
    handover_deadline: Option<Instant>,
    /// A [`Request::ChangeMembership`] waiting for the core's verdict.
    changing: Option<(RequestId, MembershipChange)>,
    /// Members that asked to leave (as leader): never added back automatically while
    /// their bond stays up.
    departed: BTreeSet<NodeId>,
    /// The configuration's members when this member last looked, and when each member
    /// that dropped out of it since did (see [`READMIT_AFTER`]).
    last_members: BTreeSet<NodeId>,
    dropped_out: BTreeMap<NodeId, Instant>,
    /// The founding each bonded peer said its log descends from ([`PeerFrame::Incarnation`]).
    peer_incarnations: BTreeMap<NodeId, Incarnation>,
    /// Peers whose log descends from another founding than ours: never counted as bonded,
    /// none of their frames taken, until their bond goes down.
    foreign: BTreeSet<NodeId>,
    /// What each bonded peer said of its leadership preference on its bond.
    preferences: BTreeMap<NodeId, LeadershipPreference>,
    /// This member's own preference, said on every new bond.
    preference: LeadershipPreference,
    /// Whether this member wrote the group's first configuration.
    founded: bool,
    /// Inputs the core refused (bad frames from peers): correct peers never cause one.
    inputs_refused: u64,
    /// Inputs the core refused as misuse: a correct member never gives one.
    core_misuses: u64,
    /// The incarnation last told to the bonded peers ([`Member::note_incarnation`]).
    announced_incarnation: Option<Incarnation>,
    /// The newest stamp known when this member began proposing in a term, and when
    /// (monotonic): the stamps it proposes run from there with the monotonic clock.
    stamp_anchor: Option<StampAnchor>,
    /// The state machine's clock when the member started (the highest stamp applied, kept
    /// in snapshots where the core's log may no longer hold an entry).
    clock_floor_ms: u64,
}

#[derive(Clone, Copy, Debug)]
struct StampAnchor {
    term: Term,
    at: Instant,
    stamp_ms: u64,
}

impl Member {
    /// A member around `raft` (recovered from storage, perhaps bootstrapped). The state
    /// machine the driver holds has applied everything up to the core's snapshot.
    ///
    /// `request_ids_from` starts the ids of the requests this member sends its peers
    /// (forwarded commands, read points): the driver draws it at random, so that ids of a
    /// restarted member do not repeat its earlier life's. A leader may still answer a
    /// request of that earlier life once the bond is back, and the answer must not reach
    /// a new caller that happens to have the same id.
    ///
    /// `clock_ms` is the state machine's session clock (the highest entry stamp it has
    /// applied): where the stamps of this member's proposals start when its log holds no
    /// newer one.
    pub(crate) fn new(
        config: WorkerConfig,
        raft: Raft,
        preference: LeadershipPreference,
        request_ids_from: u64,
        clock_ms: u64,
    ) -> Self {
        let id = raft.id();
        let formation = Formation::new(id, config.founders.clone(), raft.is_fresh());
        let snapshot_index = raft.snapshot_index();
        let raft_incarnation = raft.incarnation();
        let mut member = Self {
            id,
            config,
            raft,
            actions: VecDeque::new(),
            proposals: BTreeMap::new(),
            next_request_id: request_ids_from,
            forwarded: BTreeMap::new(),
            forwarded_reads: BTreeMap::new(),
            reads: BTreeMap::new(),
            waiting_reads: Vec::new(),
            applied: snapshot_index,
            last_snapshot_index: snapshot_index,
            bytes_since_snapshot: 0,
            snapshot_pending: false,
            stopped: None,
            bonded: BTreeSet::new(),
            unreachable_since: BTreeMap::new(),
            formation,
            leaving: None,
            handover_deadline: None,
            changing: None,
            departed: BTreeSet::new(),
            last_members: BTreeSet::new(),
            dropped_out: BTreeMap::new(),
            peer_incarnations: BTreeMap::new(),
            foreign: BTreeSet::new(),
            preferences: BTreeMap::new(),
            preference,
            founded: false,
            inputs_refused: 0,
            core_misuses: 0,
            // Said on every new bond from here on.
            announced_incarnation: raft_incarnation,
            stamp_anchor: None,
            clock_floor_ms: clock_ms,
        };
        // A founding set of this member alone founds at once.
        let decision = member.formation.poll_initial();
        member.act_on(decision);
        member
    }

    // ----- what the driver reads -----

    /// The core, to read (status, the simulator's checks).
    pub(crate) fn raft(&self) -> &Raft {
        &self.raft
    }

    /// Why the member stopped taking part, once it has.
    pub(crate) fn stopped(&self) -> Option<&StopReason> {
        self.stopped.as_ref()
    }

    /// Whether this member wrote the group's first configuration (founded it).
    pub(crate) fn founded(&self) -> bool {
        self.founded
    }

    /// How many inputs the core refused (frames that break the protocol).
    pub(crate) fn inputs_refused(&self) -> u64 {
        self.inputs_refused
    }

    /// How many inputs the core refused as misuse (bugs in this member, not in peers).
    pub(crate) fn core_misuses(&self) -> u64 {
        self.core_misuses
    }

    /// Replaces the formation rule: the unsafe one, to show that the simulator catches
    /// the fork it allows.
    #[cfg(test)]
    pub(crate) fn with_formation(mut self, formation: Formation) -> Self {
        self.formation = formation;
        self
    }

    // ----- inputs -----

    /// One tick of the driver's timer: the core's logical clock, forwarded requests'
    /// deadlines, automatic membership and a leave in progress.
    pub(crate) fn handle_tick(&mut self, now: Now) {
        self.step(Input::Tick);
        self.note_incarnation(now);
        self.fail_forwarded_where(|deadline, _| deadline <= now.instant);
        self.manage_membership(now.instant);
        self.drive_leave();
    }

    /// A bond to `peer` came up or went down.
    pub(crate) fn handle_reachable(&mut self, now: Now, peer: NodeId, reachable: bool) {
        if !reachable {
            self.peer_incarnations.remove(&peer);
            if self.foreign.remove(&peer) {
                // Counted as gone when it was found foreign.
                return;
            }
            self.count_away(now, peer);
            return;
        }
        if self.foreign.contains(&peer) {
            // Another bond of a peer found foreign: it stays away.
            self.actions.push_back(Action::DisconnectForeign(peer));
            return;
        }
        self.bonded.insert(peer);
        self.unreachable_since.remove(&peer);
        // A new bond: a member that left and came back may be added again.
        self.departed.remove(&peer);
        self.dropped_out.remove(&peer);
        // Said before any consensus traffic on this bond, so that the peer knows our
        // founding before it sees our log.
        if let Some(ours) = self.raft.incarnation() {
            self.send(peer, PeerFrame::Incarnation(ours));
        }
        let status = self.formation.status();
        self.send(peer, PeerFrame::Formation(status));
        self.send(peer, PeerFrame::Preference(self.preference));
        self.step(Input::PeerReachable {
            peer,
            reachable: true,
        });
    }

    /// `peer` no longer counts as bonded: its bond went down, or it was found foreign.
    fn count_away(&mut self, now: Now, peer: NodeId) {
        self.bonded.remove(&peer);
        self.unreachable_since.entry(peer).or_insert(now.instant);
        // Whatever we forwarded to it will not be answered.
        self.fail_forwarded_where(|_, to| to == peer);
        self.step(Input::PeerReachable {
            peer,
            reachable: false,
        });
        self.formation.handle_bond_down(peer);
        self.preferences.remove(&peer);
    }

    /// Whether `peer` is (now) known to hold a log of another founding than ours. A peer
    /// found so is counted as gone, none of its frames is taken from then on, and the
    /// driver is told to drop its bonds ([`Action::DisconnectForeign`]). A member that
    /// was fresh when it bonded with members of two separately founded groups joins the
    /// one whose log it takes first, and no longer hears the other.
    fn is_foreign(&mut self, now: Now, peer: NodeId) -> bool {
        if self.foreign.contains(&peer) {
            return true;
        }
        let (Some(ours), Some(theirs)) = (
            self.raft.incarnation(),
            self.peer_incarnations.get(&peer).copied(),
        ) else {
            return false;
        };
        if ours == theirs {
            return false;
        }
        tracing::warn!(node = %self.id, %peer, %theirs, %ours, "the peer's log descends from another founding of this group id; its bond is dropped");
        self.count_away(now, peer);
        self.foreign.insert(peer);
        self.actions.push_back(Action::DisconnectForeign(peer));
        true
    }

    /// A local caller's request. Once stopped, every request is refused with the reason.
    pub(crate) fn handle_request(&mut self, now: Now, id: RequestId, request: Request) {
        if let Some(reason) = &self.stopped {
            if !matches!(request, Request::TransferLeadership(_)) {
                let result = Err(RequestError::Stopped(reason.clone()));
                self.actions.push_back(Action::Answer { id, result });
            }
            return;
        }
        match request {
            Request::Execute(command) => {
                if self.raft.role() == Role::Leader {
                    self.propose(now, command, Waiter::Local(id));
                } else {
                    self.forward(now, id, Wants::Output, command);
                }
            }
            Request::Feed(command) => {
                if self.raft.role() == Role::Leader {
                    let result = self
                        .append(now, command)
                        .map(|(index, _)| Reply::Index(index))
                        .map_err(request_error);
                    self.actions.push_back(Action::Answer { id, result });
                } else {
                    self.forward(now, id, Wants::Index, command);
                }
            }
            Request::StrongRead => {
                if self.raft.role() == Role::Leader {
                    let read = self.next_id();
                    self.reads.insert(read, ReadWaiter::Local(id));
                    self.step(Input::ReadIndex { id: read });
                } else if self.forwarded_full() && self.raft.leader().is_some() {
                    let result = Err(RequestError::Busy);
                    self.actions.push_back(Action::Answer { id, result });
                } else if let Some(leader) = self.raft.leader() {
                    let request_id = self.next_id();
                    let read = ForwardedRead {
                        caller: id,
                        deadline: now.instant + self.config.forward_timeout,
                        to: leader,
                    };
                    self.forwarded_reads.insert(request_id, read);
                    self.send(leader, PeerFrame::ReadIndex { request_id });
                } else {
                    let result = Err(RequestError::NoLeader);
                    self.actions.push_back(Action::Answer { id, result });
                }
            }
            Request::TransferLeadership(to) => self.step(Input::TransferLeadership { to }),
            Request::ChangeMembership(change) => {
                if !self.leads() {
                    let leader = self.raft.leader();
                    let result = Err(RequestError::Refused(GroupRejection::NotLeader { leader }));
                    self.actions.push_back(Action::Answer { id, result });
                    return;
                }
                // An operator's word on a member holds against automatic membership: a
                // removed member stays out while its bond stays up, an added one is in.
                match change {
                    MembershipChange::Remove(node) => {
                        self.departed.insert(node);
                    }
                    MembershipChange::AddLearner(node) | MembershipChange::AddObserver(node) => {
                        self.departed.remove(&node);
                    }
                    _ => {}
                }
                if let Some((earlier, _)) = self.changing.replace((id, change)) {
                    let result = Err(RequestError::Refused(GroupRejection::Superseded));
                    self.actions.push_back(Action::Answer {
                        id: earlier,
                        result,
                    });
                }
                self.step(Input::ChangeMembership(change));
            }
            Request::Leave => {
                let membership = self.raft.membership();
                if membership.contains(self.id) && membership.members().all(|m| m == self.id) {
                    let result = Err(RequestError::Refused(GroupRejection::OnlyMember));
                    self.actions.push_back(Action::Answer { id, result });
                    return;
                }
                if let Some(earlier) = self.leaving.replace(id) {
                    let result = Err(RequestError::Refused(GroupRejection::Superseded));
                    self.actions.push_back(Action::Answer {
                        id: earlier,
                        result,
                    });
                }
                self.drive_leave();
            }
        }
    }

    /// The caller of request `id` went away: a leave in progress is abandoned.
    pub(crate) fn handle_cancel(&mut self, id: RequestId) {
        if self.leaving == Some(id) {
            self.leaving = None;
        }
    }

    /// A frame from `from`, whose identity the bond authenticated.
    pub(crate) fn handle_frame(&mut self, now: Now, from: NodeId, frame: PeerFrame) {
        if let PeerFrame::Incarnation(theirs) = frame {
            self.peer_incarnations.insert(from, theirs);
        }
        if self.is_foreign(now, from) {
            tracing::debug!(node = %self.id, %from, "frame from a member of another founding; dropped");
            return;
        }
        self.note_alive(now, from);
        self.take_frame(now, from, frame);
        // The frame may have given the core its first entry or a snapshot.
        self.note_incarnation(now);
    }

    /// `peer` spoke: if the group removed it automatically at least [`ALIVE_AGAIN_AFTER`]
    /// ago while its bond stayed up, it is alive after all and may be added back now.
    fn note_alive(&mut self, now: Now, peer: NodeId) {
        let Some(removed_at) = self.dropped_out.get(&peer) else {
            return;
        };
        if now.instant.saturating_duration_since(*removed_at) >= ALIVE_AGAIN_AFTER {
            self.dropped_out.remove(&peer);
            tracing::info!(node = %self.id, %peer, "a removed member speaks again: it may be added back");
        }
    }

    fn take_frame(&mut self, now: Now, from: NodeId, frame: PeerFrame) {
        match frame {
            // Recorded above.
            PeerFrame::Incarnation(_) => {}
            PeerFrame::Raft(m) => {
                if m.from != from {
                    tracing::warn!(node = %self.id, %from, claimed = %m.from, "frame claims another sender; dropped");
                    return;
                }
                if !self.formation.accepts_raft_from(from) {
                    // A founder waiting for its founders takes no other group's log.
                    tracing::debug!(node = %self.id, %from, "consensus traffic from a non-founder while founding; dropped");
                    return;
                }
                self.step(Input::Message(m));
            }
            PeerFrame::Forward {
                request_id,
                command,
            } => {
                if self.leads() {
                    let waiter = Waiter::Remote {
                        peer: from,
                        request_id,
                    };
                    self.propose(now, command, waiter);
                } else {
                    let result = Err(ForwardRefusal::NotLeader(self.raft.leader()));
                    self.send(from, PeerFrame::ForwardReply { request_id, result });
                }
            }
            PeerFrame::ForwardFeed {
                request_id,
                command,
            } => {
                let result = if self.leads() {
                    self.append(now, command).map(|(index, _)| index)
                } else {
                    Err(ForwardRefusal::NotLeader(self.raft.leader()))
                };
                self.send(from, PeerFrame::ForwardFeedReply { request_id, result });
            }
            PeerFrame::ForwardReply { request_id, result } => {
                self.on_forward_reply(from, request_id, Wants::Output, result.map(Reply::Output));
            }
            PeerFrame::ForwardFeedReply { request_id, result } => {
                self.on_forward_reply(from, request_id, Wants::Index, result.map(Reply::Index));
            }
            PeerFrame::ReadIndex { request_id } => {
                if self.leads() {
                    let read = self.next_id();
                    self.reads.insert(
                        read,
                        ReadWaiter::Remote {
                            peer: from,
                            request_id,
                        },
                    );
                    self.step(Input::ReadIndex { id: read });
                } else {
                    let result = Err(ForwardRefusal::NotLeader(self.raft.leader()));
                    self.send(from, PeerFrame::ReadIndexReply { request_id, result });
                }
            }
            PeerFrame::ReadIndexReply { request_id, result } => {
                let asked =
                    take_from_asked(self.id, &mut self.forwarded_reads, request_id, from, |r| {
                        r.to
                    });
                if let Some(read) = asked {
                    match result {
                        Ok(index) => self.waiting_reads.push((index, read.caller)),
                        Err(refusal) => self.answer_local(read.caller, Err(refusal)),
                    }
                }
            }
            PeerFrame::Leave => self.on_leave_asked(from),
            PeerFrame::Preference(preference) => {
                if self.bonded.contains(&from) {
                    self.preferences.insert(from, preference);
                }
            }
            PeerFrame::Left => {
                // Believed only from the leader this member asked, while it is leaving.
                if self.leaving.is_some() && self.raft.leader() == Some(from) {
                    if let Some(id) = self.leaving.take() {
                        tracing::info!(node = %self.id, leader = %from, "left the group");
                        self.actions.push_back(Action::Answer {
                            id,
                            result: Ok(Reply::Left),
                        });
                    }
                } else {
                    tracing::warn!(node = %self.id, %from, "a 'left' from a member this one did not ask; ignored");
                }
            }
            PeerFrame::Formation(status) => {
                // Only before formation, and only from a peer whose bond is up.
                if self.formation.is_formed() || !self.bonded.contains(&from) {
                    tracing::debug!(node = %self.id, %from, "formation frame after formation or from an unbonded peer; ignored");
                    return;
                }
                let decision = self.formation.handle_status(from, status);
                self.act_on(decision);
            }
        }
    }

    /// A [`Action::Write`] is durable up to (`index`, `term`).
    pub(crate) fn handle_persisted(&mut self, index: Index, term: Term) {
        self.step(Input::Persisted { index, term });
        self.note_formed();
    }

    /// The driver applied entry (`index`, `term`) of an [`Action::Apply`]; `output` is the
    /// encoded output of its command (`None`: not a command, or one that did not decode).
    pub(crate) fn handle_applied(&mut self, index: Index, term: Term, output: Option<Bytes>) {
        self.applied = index;
        if let Some((proposed_in, waiter)) = self.proposals.remove(&index) {
            let result = match output {
                Some(out) if proposed_in == term => Ok(out),
                _ => Err(ForwardRefusal::Unknown),
            };
            self.answer(waiter, result);
        }
    }

    /// The snapshot asked for at `index` is durable (`Some(data)`: the handle the core
    /// sends to followers) or failed (`None`). Returns whether the core took it: not when
    /// it has moved past it meanwhile (a snapshot installed from the leader) or stopped.
    pub(crate) fn handle_snapshot_taken(&mut self, index: Index, data: Option<Bytes>) -> bool {
        self.snapshot_pending = false;
        let Some(data) = data else {
            return false;
        };
        self.step(Input::Compact {
            index,
            data: data.clone(),
        });
        self.stopped.is_none() && self.raft.snapshot().is_some_and(|s| s.data == data)
    }

    /// The driver is about to stop this member (a graceful shutdown, not a leave: it stays
    /// in the configuration). As leader it first hands leadership to the voter that is
    /// furthest along, preferring bonded voters and those that did not say they are
    /// reluctant, so the group elects its next leader within a round trip instead of after
    /// an election timeout.
    /// Returns whether a hand-over is under way: the driver then keeps driving the member
    /// until [`Member::handing_over`] turns false, and stops it after that. Proposals are
    /// refused meanwhile (callers retry with the next leader).
    pub(crate) fn hand_over(&mut self, now: Now) -> bool {
        if self.stopped.is_some() || self.raft.role() != Role::Leader {
            return false;
        }
        self.handover_deadline = Some(now.instant + HANDOVER_WAIT_MAX);
        if self.raft.transfer_target().is_none() {
            let membership = self.raft.membership();
            let successor = membership
                .voters
                .iter()
                .copied()
                .filter(|v| *v != self.id)
                .filter_map(|v| Some((v, self.raft.match_index(v)?)))
                .max_by_key(|(v, matched)| {
                    let willing = self.preferences.get(v) != Some(&LeadershipPreference::Reluctant);
                    (self.bonded.contains(v), willing, *matched)
                })
                .map(|(v, _)| v);
            let Some(to) = successor else {
                return false;
            };
            tracing::info!(node = %self.id, successor = %to, "handing leadership over before stopping");
            self.step(Input::TransferLeadership { to });
        }
        self.handing_over(now)
    }

    /// Whether a hand-over started by [`Member::hand_over`] is still under way: this member
    /// still leads, its core still waits for the successor's election (it gives up after
    /// an election timeout) and [`HANDOVER_WAIT_MAX`] has not passed.
    pub(crate) fn handing_over(&self, now: Now) -> bool {
        self.stopped.is_none()
            && self.raft.role() == Role::Leader
            && self.raft.transfer_target().is_some()
            && self
                .handover_deadline
                .is_some_and(|deadline| now.instant < deadline)
    }

    /// The driver cannot go on (a storage write or a snapshot failed): nothing more is
    /// applied or acknowledged. Callers whose command may have been appended learn that
    /// its outcome is unknown; the others that the member stopped.
    pub(crate) fn stop(&mut self, reason: StopReason) {
        if self.stopped.is_some() {
            return;
        }
        self.stopped = Some(reason.clone());
        // Answers already decided still go out; nothing else is carried out.
        self.actions
            .retain(|action| matches!(action, Action::Answer { .. }));
        self.fail_everything(&RequestError::Stopped(reason));
    }

    // ----- outputs -----

    /// The next thing to do, `None` once there is nothing.
    pub(crate) fn poll_action(&mut self) -> Option<Action> {
        if self.actions.is_empty() && self.stopped.is_none() {
            self.serve_waiting_reads();
            self.maybe_snapshot();
            if self.actions.is_empty() {
                let ready = self.raft.ready();
                if !ready.is_empty() {
                    self.take_ready(ready);
                }
            }
        }
        self.actions.pop_front()
    }

    /// The next action if it is an [`Action::Apply`], without asking the core for more:
    /// lets the driver take the run of entries it is applying as one batch.
    pub(crate) fn poll_apply(&mut self) -> Option<Entry> {
        match self.actions.front() {
            Some(Action::Apply(_)) => match self.actions.pop_front() {
                Some(Action::Apply(entry)) => Some(entry),
                _ => None,
            },
            _ => None,
        }
    }

    // ----- the core -----

    fn leads(&self) -> bool {
        self.raft.role() == Role::Leader && self.stopped.is_none()
    }

    fn next_id(&mut self) -> u64 {
        self.next_request_id = self.next_request_id.wrapping_add(1);
        self.next_request_id
    }

    fn send(&mut self, to: NodeId, frame: PeerFrame) {
        self.actions.push_back(Action::Send { to, frame });
    }

    fn step(&mut self, input: Input) {
        if self.stopped.is_some() {
            return;
        }
        match self.raft.step(input) {
            Ok(()) => {}
            // Two leaders in one term, or a committed entry overwritten: two groups share
            // this id (or a member is not what it claims). Nothing more may be applied or
            // acknowledged here: stop, loudly, with the evidence.
            Err(StepError::Safety(e)) => {
                tracing::error!(node = %self.id, error = %e, "consensus safety violated: node stops");
                self.stop(StopReason::SafetyViolated(e));
            }
            // A bad frame from a peer: drop it, the core is unchanged.
            Err(StepError::Peer(e)) => {
                self.inputs_refused += 1;
                tracing::warn!(node = %self.id, error = %e, "peer frame refused by the core");
            }
            // This member gave its core an input the contract forbids: a bug here, not a
            // peer's doing. The core is unchanged; the input is lost.
            Err(StepError::Misuse(e)) => {
                self.core_misuses += 1;
                tracing::error!(node = %self.id, error = %e, "input refused by the core: a bug in the member");
            }
        }
    }

    /// Turns one Ready of the core into actions, in the core's order.
    fn take_ready(&mut self, ready: Ready) {
        let Ready {
            hard_state,
            snapshot,
            entries,
            messages,
            persisted_messages,
            committed_entries,
            read_states,
            events,
        } = ready;
        // Appends from a leader may leave before its own write (thesis §10.2.1).
        for m in messages {
            self.send(m.to, PeerFrame::Raft(m));
        }
        let batch = WriteBatch {
            snapshot: snapshot.clone(),
            entries,
            hard_state,
        };
        // With nothing to write, `then` still waits for the writes in flight.
        if !batch.is_empty() || !persisted_messages.is_empty() {
            self.actions.push_back(Action::Write {
                batch,
                then: persisted_messages,
            });
        }
        if let Some(s) = snapshot {
            self.applied = s.meta.index;
            self.last_snapshot_index = s.meta.index;
            self.bytes_since_snapshot = 0;
            // Proposals at or below the snapshot point have an unknown fate here.
            let keep = self.proposals.split_off(&(s.meta.index + 1));
            for (_, (_, waiter)) in std::mem::replace(&mut self.proposals, keep) {
                self.answer(waiter, Err(ForwardRefusal::Unknown));
            }
            self.actions.push_back(Action::Install(s));
        }
        self.on_events(events);
        for entry in committed_entries {
            if let EntryPayload::Command(data) = &entry.payload {
                self.bytes_since_snapshot += data.len() as u64;
            }
            self.actions.push_back(Action::Apply(entry));
        }
        self.on_read_states(read_states);
    }

    fn on_events(&mut self, events: Vec<Event>) {
        for event in events {
            match &event {
                Event::StateChanged { role, leader, .. } => {
                    // Requests forwarded to a former leader will not be answered by it.
                    let leader = *leader;
                    self.fail_forwarded_where(|_, to| Some(to) != leader);
                    if *role != Role::Leader {
                        // Proposals made as leader may or may not commit: the handle
                        // retries with the same session sequence, safe either way.
                        for (_, (_, waiter)) in std::mem::take(&mut self.proposals) {
                            self.answer(waiter, Err(ForwardRefusal::Unknown));
                        }
                    }
                }
                Event::MembershipChangeProposed { change, index } => {
                    if let Some((id, _)) = self.changing.take_if(|(_, c)| c == change) {
                        self.answer_local(id, Ok(Reply::Index(*index)));
                    }
                }
                Event::MembershipChangeRejected { change, reason } => {
                    if let Some((id, _)) = self.changing.take_if(|(_, c)| c == change) {
                        self.answer_local(id, Err(refusal_of(reason.clone())));
                    }
                }
                Event::ReadRejected { id, reason } => {
                    if let Some(waiter) = self.reads.remove(id) {
                        let refusal = refusal_of(reason.clone());
                        match waiter {
                            ReadWaiter::Local(caller) => self.answer_local(caller, Err(refusal)),
                            ReadWaiter::Remote { peer, request_id } => {
                                let result = Err(refusal);
                                self.send(peer, PeerFrame::ReadIndexReply { request_id, result });
                            }
                        }
                    }
                }
                _ => {}
            }
            self.actions.push_back(Action::Observe(event));
        }
    }

    fn on_read_states(&mut self, read_states: Vec<ReadState>) {
        for rs in read_states {
            match self.reads.remove(&rs.id) {
                Some(ReadWaiter::Local(caller)) => self.waiting_reads.push((rs.index, caller)),
                Some(ReadWaiter::Remote { peer, request_id }) => {
                    let result = Ok(rs.index);
                    self.send(peer, PeerFrame::ReadIndexReply { request_id, result });
                }
                None => {}
            }
        }
    }

    fn serve_waiting_reads(&mut self) {
        let applied = self.applied;
        let (ready, waiting): (Vec<_>, Vec<_>) = std::mem::take(&mut self.waiting_reads)
            .into_iter()
            .partition(|(index, _)| *index <= applied);
        self.waiting_reads = waiting;
        for (_, caller) in ready {
            self.actions.push_back(Action::Serve(caller));
        }
    }

    fn maybe_snapshot(&mut self) {
        let applied = self.applied;
        let by_entries = self
            .config
            .snapshot_every
            .is_some_and(|every| applied >= self.last_snapshot_index + every);
        let by_bytes = self
            .config
            .snapshot_bytes
            .is_some_and(|bytes| self.bytes_since_snapshot >= bytes);
        if !(by_entries || by_bytes) || applied <= self.last_snapshot_index || self.snapshot_pending
        {
            return;
        }
        self.last_snapshot_index = applied;
        self.bytes_since_snapshot = 0;
        self.snapshot_pending = true;
        self.actions
            .push_back(Action::TakeSnapshot { index: applied });
    }

    // ----- formation -----

    /// Founds the group when formation says so.
    fn act_on(&mut self, decision: Decision) {
        let Decision::Found(founders) = decision else {
            return;
        };
        match self.raft.bootstrap(founders.clone()) {
            Ok(()) => {
                self.founded = true;
                tracing::info!(node = %self.id, voters = ?founders.voters, "every founder confirmed: founded the group")
            }
            // Took a founder's log first: it founded the same group.
            Err(e) => tracing::info!(node = %self.id, reason = %e, "did not found"),
        }
    }

    /// Once the core holds durable state, formation is over: tells every bonded peer, so
    /// founders still waiting for this one learn that it is in a group (never before the
    /// state is durable: a founder that said "formed" and then lost an unsynced first
    /// entry would leave the others waiting for a group nobody holds).
    fn note_formed(&mut self) {
        if self.raft.is_fresh() || !self.formation.handle_formed() {
            return;
        }
        let peers: Vec<NodeId> = self.bonded.iter().copied().collect();
        for peer in peers {
            self.send(
                peer,
                PeerFrame::Formation(super::formation::FormationStatus::Formed),
            );
        }
    }

    /// Once the core's log names its founding (its first entry, or a snapshot installed),
    /// tells every bonded peer, and drops those known to hold another.
    fn note_incarnation(&mut self, now: Now) {
        let ours = self.raft.incarnation();
        if ours.is_none() || ours == self.announced_incarnation {
            return;
        }
        self.announced_incarnation = ours;
        let peers: Vec<NodeId> = self.bonded.iter().copied().collect();
        for peer in peers {
            if !self.is_foreign(now, peer) {
                self.send(peer, PeerFrame::Incarnation(ours.expect("checked above")));
            }
        }
    }

    // ----- commands -----

    /// Appends one command to the log (leader only).
    fn append(&mut self, now: Now, command: Bytes) -> Result<(Index, Term), ForwardRefusal> {
        let stamp = self.stamp(now);
        self.raft.propose(vec![command], stamp).map_err(refusal_of)
    }

    /// The wall-clock stamp of an entry proposed now. Sessions expire by these stamps, and
    /// the host owns the TD's clock: a leader whose clock jumped hours ahead would expire
    /// every session, and a retried command would then apply twice. So the wall clock
    /// counts only up to the newest stamp known when this member began proposing in its
    /// term plus the monotonic time since (and [`STAMP_CATCH_UP_PERCENT`]); a clock that
    /// jumped back is held at the last stamp by the core.
    fn stamp(&mut self, now: Now) -> u64 {
        let term = self.raft.term();
        let anchor = match self.stamp_anchor {
            Some(anchor) if anchor.term == term => anchor,
            _ => {
                let anchor = StampAnchor {
                    term,
                    at: now.instant,
                    stamp_ms: self.raft.last_timestamp_ms().max(self.clock_floor_ms),
                };
                self.stamp_anchor = Some(anchor);
                anchor
            }
        };
        let elapsed_ms =
            u64::try_from(now.instant.saturating_duration_since(anchor.at).as_millis())
                .unwrap_or(u64::MAX);
        let ceiling = anchor
            .stamp_ms
            .saturating_add(elapsed_ms)
            .saturating_add(elapsed_ms / 100 * STAMP_CATCH_UP_PERCENT);
        now.unix_ms.min(ceiling)
    }

    fn propose(&mut self, now: Now, command: Bytes, waiter: Waiter) {
        match self.append(now, command) {
            Ok((index, term)) => {
                self.proposals.insert(index, (term, waiter));
            }
            Err(refusal) => self.answer(waiter, Err(refusal)),
        }
    }

    fn answer(&mut self, waiter: Waiter, result: Result<Bytes, ForwardRefusal>) {
        match waiter {
            Waiter::Local(id) => self.answer_local(id, result.map(Reply::Output)),
            Waiter::Remote { peer, request_id } => {
                self.send(peer, PeerFrame::ForwardReply { request_id, result })
            }
        }
    }

    fn answer_local(&mut self, id: RequestId, result: Result<Reply, ForwardRefusal>) {
        let result = result.map_err(request_error);
        self.actions.push_back(Action::Answer { id, result });
    }

    /// Sends a command to the leader for local caller `id`, or fails it if none is known.
    fn forward(&mut self, now: Now, id: RequestId, wants: Wants, command: Bytes) {
        let Some(leader) = self.raft.leader() else {
            let result = Err(RequestError::NoLeader);
            self.actions.push_back(Action::Answer { id, result });
            return;
        };
        if self.forwarded_full() {
            let result = Err(RequestError::Busy);
            self.actions.push_back(Action::Answer { id, result });
            return;
        }
        let request_id = self.next_id();
        let frame = match wants {
            Wants::Output => PeerFrame::Forward {
                request_id,
                command,
            },
            Wants::Index => PeerFrame::ForwardFeed {
                request_id,
                command,
            },
        };
        let forwarded = Forwarded {
            caller: id,
            wants,
            deadline: now.instant + self.config.forward_timeout,
            to: leader,
        };
        self.forwarded.insert(request_id, forwarded);
        self.send(leader, frame);
    }

    /// The leader's answer to a forwarded command, if `from` is the member it went to. A
    /// reply of the wrong kind means the leader is confused: the caller retries.
    fn on_forward_reply(
        &mut self,
        from: NodeId,
        request_id: u64,
        kind: Wants,
        result: Result<Reply, ForwardRefusal>,
    ) {
        let asked = take_from_asked(self.id, &mut self.forwarded, request_id, from, |f| f.to);
        let Some(forwarded) = asked else {
            return;
        };
        if forwarded.wants == kind {
            self.answer_local(forwarded.caller, result);
        } else {
            self.answer_local(forwarded.caller, Err(ForwardRefusal::Unknown));
        }
    }

    /// Whether [`FORWARDED_MAX`] requests wait for the leader's answer already.
    fn forwarded_full(&self) -> bool {
        self.forwarded.len() + self.forwarded_reads.len() >= FORWARDED_MAX
    }

    /// Fails forwarded requests whose deadline or target matches `doomed`: the handle
    /// retries them (with the same session sequence, so a write that did commit is not
    /// applied twice).
    fn fail_forwarded_where(&mut self, doomed: impl Fn(Instant, NodeId) -> bool) {
        let mut callers = Vec::new();
        self.forwarded.retain(|_, f| {
            let keep = !doomed(f.deadline, f.to);
            if !keep {
                callers.push(f.caller);
            }
            keep
        });
        self.forwarded_reads.retain(|_, r| {
            let keep = !doomed(r.deadline, r.to);
            if !keep {
                callers.push(r.caller);
            }
            keep
        });
        for caller in callers {
            self.answer_local(caller, Err(ForwardRefusal::Unknown));
        }
    }

    /// Answers every local caller: a command that may have been appended (proposed here
    /// or forwarded) with an unknown outcome, everything else with `err`. Remote callers
    /// learn nothing: their own deadlines answer them.
    fn fail_everything(&mut self, err: &RequestError) {
        for (_, (_, waiter)) in std::mem::take(&mut self.proposals) {
            if let Waiter::Local(id) = waiter {
                let result = Err(RequestError::Unknown);
                self.actions.push_back(Action::Answer { id, result });
            }
        }
        for (_, f) in std::mem::take(&mut self.forwarded) {
            let result = Err(RequestError::Unknown);
            self.actions.push_back(Action::Answer {
                id: f.caller,
                result,
            });
        }
        let mut callers: Vec<RequestId> = std::mem::take(&mut self.forwarded_reads)
            .into_values()
            .map(|r| r.caller)
            .collect();
        callers.extend(
            std::mem::take(&mut self.reads)
                .into_values()
                .filter_map(|w| match w {
                    ReadWaiter::Local(id) => Some(id),
                    ReadWaiter::Remote { .. } => None,
                }),
        );
        callers.extend(
            std::mem::take(&mut self.waiting_reads)
                .into_iter()
                .map(|(_, id)| id),
        );
        callers.extend(self.leaving.take());
        callers.extend(self.changing.take().map(|(id, _)| id));
        for id in callers {
            let result = Err(err.clone());
            self.actions.push_back(Action::Answer { id, result });
        }
    }

    // ----- membership -----

    /// One step of a [`Request::Leave`]: done once a configuration without this member is
    /// committed; as leader, hands leadership to another voter first; as follower, asks
    /// the leader to remove it (again on every tick until it does).
    fn drive_leave(&mut self) {
        let Some(id) = self.leaving else {
            return;
        };
        let membership = self.raft.membership();
        if !membership.contains(self.id) && self.raft.commit_index() >= self.raft.membership_index()
        {
            tracing::info!(node = %self.id, "left the group");
            self.leaving = None;
            self.actions.push_back(Action::Answer {
                id,
                result: Ok(Reply::Left),
            });
            return;
        }
        match (self.raft.role(), self.raft.leader()) {
            (Role::Leader, _) => {
                let successor = membership
                    .voters
                    .iter()
                    .copied()
                    .find(|v| *v != self.id && self.bonded.contains(v));
                match successor {
                    Some(to) => self.step(Input::TransferLeadership { to }),
                    // No voter to hand over to (only learners): remove itself as leader.
                    None => self.step(Input::ChangeMembership(MembershipChange::Remove(self.id))),
                }
            }
            (_, Some(leader)) => self.send(leader, PeerFrame::Leave),
            (_, None) => {}
        }
    }

    /// `from` (authenticated by its bond) asks this member, as leader, to remove it.
    fn on_leave_asked(&mut self, from: NodeId) {
        // `from` is the peer the bond authenticated: a member can remove only itself.
        if self.raft.role() != Role::Leader {
            return;
        }
        let committed = self.raft.membership_index() <= self.raft.commit_index();
        if !self.raft.membership().contains(from) {
            // Gone from the latest configuration; once that is committed, say so (and
            // keep it out: it asked).
            if committed {
                self.departed.insert(from);
                self.send(from, PeerFrame::Left);
            }
            return;
        }
        if self.departed.insert(from) {
            tracing::info!(node = %self.id, member = %from, "member asked to leave; removing it");
        }
        if committed {
            self.remove_departed(from);
        }
    }

    /// Removes a member that asked to leave, unless that would leave the group unable to
    /// commit (another voter is silent): then it waits, the leaving member asks again, and
    /// the silent voter is replaced or comes back first.
    fn remove_departed(&mut self, member: NodeId) {
        if self.raft.can_remove_safely(member) {
            self.step(Input::ChangeMembership(MembershipChange::Remove(member)));
        } else {
            tracing::debug!(node = %self.id, %member, "not removing a leaving member yet: the voters left that answer would not make a quorum");
        }
    }

    /// The leader's automatic membership: bonded non-members join as learners, members
    /// unreachable for `removal_timeout` are removed. One change at a time, each only once
    /// the previous one is committed.
    fn manage_membership(&mut self, now: Instant) {
        // Members the group removed (a dead voter replaced, a timeout, an operator): a dead
        // peer's bond stays up until it idles out, and must not get it added back.
        let members: BTreeSet<NodeId> = self.raft.membership().members().collect();
        if members != self.last_members {
            for gone in self.last_members.difference(&members) {
                self.dropped_out.insert(*gone, now);
            }
            self.last_members = members;
        }
        self.dropped_out
            .retain(|_, at| now.duration_since(*at) < READMIT_AFTER);
        if !self.config.auto_membership || self.raft.role() != Role::Leader {
            return;
        }
        if self.raft.membership_index() > self.raft.commit_index() {
            return;
        }
        let membership: Membership = self.raft.membership().clone();
        // A member this leader has no bond with counts as away from now on, whether or
        // not its bond was ever seen to go down (a new leader never saw a dead member's).
        for member in membership.members() {
            if member != self.id && !self.bonded.contains(&member) {
                self.unreachable_since.entry(member).or_insert(now);
            }
        }
        // A departed member is removed once that is safe (see `remove_departed`).
        let departed = self.departed.iter().find(|p| {
            membership.contains(**p) && **p != self.id && self.raft.can_remove_safely(**p)
        });
        // A joiner is added once it has said how it takes part: an observer never votes.
        let joiner = self.bonded.iter().find_map(|p| {
            let preference = self.preferences.get(p)?;
            let away = self.departed.contains(p) || self.dropped_out.contains_key(p);
            (!membership.contains(*p) && !away).then_some((*p, *preference))
        });
        let change = if let Some(peer) = departed {
            // Asked to leave while another change was in flight: remove it now.
            Some(MembershipChange::Remove(*peer))
        } else if let Some((peer, preference)) = joiner {
            Some(match preference {
                LeadershipPreference::Observer => MembershipChange::AddObserver(peer),
                LeadershipPreference::Normal | LeadershipPreference::Reluctant => {
                    MembershipChange::AddLearner(peer)
                }
            })
        } else if let Some(timeout) = self.config.removal_timeout {
            self.unreachable_since
                .iter()
                .find(|(peer, since)| {
                    **peer != self.id
                        && membership.contains(**peer)
                        && now.duration_since(**since) >= timeout
                })
                .map(|(peer, _)| MembershipChange::Remove(*peer))
        } else {
            None
        };
        if let Some(change) = change {
            tracing::info!(node = %self.id, ?change, "automatic membership change");
            self.step(Input::ChangeMembership(change));
        }
    }
}

#[cfg(test)]
mod tests;
