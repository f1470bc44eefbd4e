//! The core state and its step function. Election, replication and the leader's extra
//! duties live in sibling files as further `impl Raft` blocks.
use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet, VecDeque};

use bytes::Bytes;

use super::config::RaftConfig;
use super::error::{
    BootstrapError, DriverMisuse, NewRaftError, PeerError, RecoveryError, SafetyViolation,
    StepError,
};
use super::log::RaftLog;
use super::membership::Membership;
use super::message::{Message, MessageBody};
use super::progress::Progress;
use super::ready::{Event, Input, Ready, Rejection, Role};
use super::rng::SplitMix64;
use super::types::{
    Entry, EntryPayload, HardState, Incarnation, Index, NodeId, Snapshot, SnapshotMeta, Term,
};

/// What storage handed back at start-up: the durable state of this node.
#[derive(Clone, Debug, Default)]
pub struct InitialState {
    /// The last durable term, vote and commit index (all zero for a fresh node).
    pub hard_state: HardState,
    /// The latest durable snapshot, if any; the log continues right after it.
    pub snapshot: Option<Snapshot>,
    /// Durable entries after the snapshot, contiguous.
    pub entries: Vec<Entry>,
}

/// A read waiting for a quorum to confirm leadership.
#[derive(Clone, Copy, Debug)]
pub(super) struct PendingRead {
    pub id: u64,
    pub index: Index,
    pub seq: u64,
}

/// The sans-IO Raft core. See the [module docs](super) for the contract.
pub struct Raft {
    pub(super) id: NodeId,
    pub(super) config: RaftConfig,
    pub(super) rng: SplitMix64,

    pub(super) term: Term,
    pub(super) vote: Option<NodeId>,
    pub(super) role: Role,
    pub(super) leader: Option<NodeId>,

    pub(super) log: RaftLog,
    pub(super) commit: Index,
    pub(super) applied: Index,
    /// Highest index of the current log known durable here.
    pub(super) persisted: Index,
    pub(super) last_timestamp_ms: u64,

    /// Latest configuration in the log and where it came from.
    pub(super) membership: Membership,
    pub(super) membership_index: Index,
    /// Configurations after the snapshot point, oldest first, to fall back on truncation.
    pub(super) membership_history: Vec<(Index, Membership)>,
    /// The configuration in force at the snapshot point.
    pub(super) snapshot_membership: (Index, Membership),
    /// The latest local snapshot (sent to followers that are too far behind).
    pub(super) snapshot: Option<Snapshot>,
    /// Which founding this log descends from: from entry 1, or the snapshot past it.
    pub(super) incarnation: Option<Incarnation>,

    pub(super) election_elapsed: u64,
    pub(super) heartbeat_elapsed: u64,
    pub(super) randomized_election_ticks: u64,
    pub(super) votes: BTreeMap<NodeId, bool>,

    // Leader-only state.
    pub(super) progress: BTreeMap<NodeId, Progress>,
    pub(super) term_start_index: Index,
    pub(super) read_seq: u64,
    pub(super) pending_reads: VecDeque<PendingRead>,
    pub(super) reads_before_commit: Vec<u64>,
    pub(super) transfer_target: Option<NodeId>,

    pub(super) unreachable: BTreeSet<NodeId>,

    pub(super) ready: Ready,
    pub(super) last_hard_state: HardState,
    pub(super) last_reported: (Role, Term, Option<NodeId>),
}

impl Raft {
    /// Builds a core from what storage recovered. `seed` feeds the election-timeout RNG.
    pub fn new(
        id: NodeId,
        config: RaftConfig,
        seed: u64,
        state: InitialState,
    ) -> Result<Self, NewRaftError> {
        config.validate()?;
        let (log, snapshot_membership, snapshot) = match state.snapshot {
            Some(snapshot) => {
                let meta = &snapshot.meta;
                (
                    RaftLog::new(meta.index, meta.term),
                    (meta.membership_index, meta.membership.clone()),
                    Some(snapshot),
                )
            }
            None => (RaftLog::new(0, 0), (0, Membership::default()), None),
        };
        let mut raft = Self {
            id,
            config,
            rng: SplitMix64::new(seed),
            term: state.hard_state.term,
            vote: state.hard_state.vote,
            role: Role::Follower,
            leader: None,
            log,
            commit: 0,
            applied: 0,
            persisted: 0,
            last_timestamp_ms: snapshot.as_ref().map_or(0, |s| s.meta.timestamp_ms),
            membership: snapshot_membership.1.clone(),
            membership_index: snapshot_membership.0,
            membership_history: Vec::new(),
            snapshot_membership,
            incarnation: snapshot.as_ref().and_then(|s| s.meta.incarnation),
            snapshot,
            election_elapsed: 0,
            heartbeat_elapsed: 0,
            randomized_election_ticks: 0,
            votes: BTreeMap::new(),
            progress: BTreeMap::new(),
            term_start_index: 0,
            read_seq: 0,
            pending_reads: VecDeque::new(),
            reads_before_commit: Vec::new(),
            transfer_target: None,
            unreachable: BTreeSet::new(),
            ready: Ready::default(),
            last_hard_state: state.hard_state,
            last_reported: (Role::Follower, state.hard_state.term, None),
        };
        for entry in state.entries {
            let expected = raft.log.last_index() + 1;
            if entry.index != expected {
                return Err(RecoveryError::NotContiguous {
                    expected,
                    got: entry.index,
                }
                .into());
            }
            let previous = raft.log.last_term();
            if entry.term < previous {
                return Err(RecoveryError::TermsDecrease {
                    index: entry.index,
                    term: entry.term,
                    previous,
                }
                .into());
            }
            raft.note_appended(&entry);
            raft.log.push(entry);
        }
        if raft.log.last_term() > raft.term {
            return Err(RecoveryError::TermAboveHardState {
                log_term: raft.log.last_term(),
                hard_state_term: raft.term,
            }
            .into());
        }
        let snapshot_index = raft.log.snapshot_index();
        raft.applied = snapshot_index;
        raft.persisted = raft.log.last_index();
        raft.commit = state
            .hard_state
            .commit
            .clamp(snapshot_index, raft.log.last_index());
        raft.reset_election_timer();
        Ok(raft)
    }

    /// Which founding this node's log descends from (`None` while it has no entry 1 and
    /// no snapshot past it: a fresh node).
    pub fn incarnation(&self) -> Option<Incarnation> {
        self.incarnation
    }

    /// Whether this node has no state at all: term 0, no entry, no snapshot. Only such a
    /// node may [`bootstrap`](Self::bootstrap); any other has been part of a group.
    pub fn is_fresh(&self) -> bool {
        self.term == 0 && self.log.last_index() == 0 && self.log.snapshot_index() == 0
    }

    /// Writes the initial configuration of a brand-new group as its first log entry.
    ///
    /// Every initial voter must bootstrap with the same membership (architecture.md §7.2:
    /// the runtime founds only once every founder has confirmed the same founding set), so
    /// the entry is identical everywhere and committed by construction. A node that has
    /// any state never bootstraps again.
    pub fn bootstrap(&mut self, membership: Membership) -> Result<(), BootstrapError> {
        if !self.is_fresh() {
            return Err(BootstrapError::NotFresh {
                term: self.term,
                last_index: self.log.last_index(),
            });
        }
        if membership.voters.is_empty() {
            return Err(BootstrapError::NoVoters);
        }
        self.term = 1;
        let entry = Entry {
            term: 1,
            index: 1,
            timestamp_ms: 0,
            payload: EntryPayload::Membership(membership),
        };
        self.append_local(vec![entry]);
        self.commit = 1;
        Ok(())
    }

    /// Feeds one input. Outputs accumulate until [`ready`](Self::ready).
    pub fn step(&mut self, input: Input) -> Result<(), StepError> {
        match input {
            Input::Tick => self.tick(),
            Input::Message(m) => self.handle_message(m)?,
            Input::Propose {
                commands,
                timestamp_ms,
            } => {
                // The outcome is reported as an event as well.
                let _ = self.propose(commands, timestamp_ms);
            }
            Input::ChangeMembership(change) => self.change_membership(change),
            Input::ReadIndex { id } => self.read_index(id),
            Input::TransferLeadership { to } => self.transfer_leadership(to),
            Input::Persisted { index, term } => self.on_persisted(index, term),
            Input::Compact { index, data } => self.compact(index, data)?,
            Input::PeerReachable { peer, reachable } => {
                if reachable {
                    self.unreachable.remove(&peer);
                } else {
                    self.unreachable.insert(peer);
                }
            }
        }
        Ok(())
    }

    /// Steps one input and returns what to do about it: `step` followed by `ready`.
    pub fn handle(&mut self, input: Input) -> Result<Ready, StepError> {
        self.step(input)?;
        Ok(self.ready())
    }

    /// Takes everything accumulated since the last call. Applied index advances here: the
    /// driver must apply `committed_entries` it receives.
    pub fn ready(&mut self) -> Ready {
        let hs = self.hard_state();
        if hs != self.last_hard_state {
            self.ready.hard_state = Some(hs);
            self.last_hard_state = hs;
        }
        let reported = (self.role, self.term, self.leader);
        if reported != self.last_reported {
            self.last_reported = reported;
            self.ready.events.push(Event::StateChanged {
                role: self.role,
                term: self.term,
                leader: self.leader,
            });
        }
        let apply_to = self.commit.min(self.persisted);
        if apply_to > self.applied {
            self.ready.committed_entries =
                self.log
                    .slice(self.applied + 1, apply_to + 1, usize::MAX, usize::MAX);
            debug_assert_eq!(
                self.ready.committed_entries.len() as Index,
                apply_to - self.applied,
                "committed entries missing from the log"
            );
            self.applied = apply_to;
        }
        std::mem::take(&mut self.ready)
    }

    // ----- getters -----

    /// This node's id, as given to [`new`](Self::new).
    pub fn id(&self) -> NodeId {
        self.id
    }
    /// The current term (0 before the node has seen any).
    pub fn term(&self) -> Term {
        self.term
    }
    /// The role in the current term.
    pub fn role(&self) -> Role {
        self.role
    }
    /// The leader of the current term, if known (this node's own id when it leads).
    pub fn leader(&self) -> Option<NodeId> {
        self.leader
    }
    /// The highest index known committed. May be ahead of what is durable here, so
    /// entries are applied only up to the lower of the two.
    pub fn commit_index(&self) -> Index {
        self.commit
    }
    /// The highest index the driver has been given to apply, through `committed_entries`
    /// of a [`Ready`] or a snapshot.
    pub fn applied_index(&self) -> Index {
        self.applied
    }
    /// Index of the last entry in the log (the snapshot point when no entry follows it).
    pub fn last_index(&self) -> Index {
        self.log.last_index()
    }
    /// Term of the last entry in the log (the snapshot's term when no entry follows it).
    pub fn last_term(&self) -> Term {
        self.log.last_term()
    }
    /// The highest wall-clock stamp of an entry this core has seen (0: none since start).
    pub fn last_timestamp_ms(&self) -> u64 {
        self.last_timestamp_ms
    }

    /// The index the latest snapshot covers up to (0 without one); the in-memory log
    /// starts right after it.
    pub fn snapshot_index(&self) -> Index {
        self.log.snapshot_index()
    }
    /// The term of the entry at `index`, if it is in the log (or is the snapshot point).
    pub fn term_at(&self, index: Index) -> Option<Term> {
        self.log.term(index)
    }
    /// The entry at `index`, if it is still in the in-memory log.
    pub fn entry(&self, index: Index) -> Option<&Entry> {
        self.log.get(index)
    }
    /// The latest local snapshot (taken here with `Compact`, or installed from a leader).
    pub fn snapshot(&self) -> Option<&Snapshot> {
        self.snapshot.as_ref()
    }
    /// The configuration in force: the latest one in the log.
    pub fn membership(&self) -> &Membership {
        &self.membership
    }
    /// Index of the configuration entry [`membership`](Self::membership) came from (0 for
    /// none, or the snapshot's `membership_index` when it came with a snapshot).
    pub fn membership_index(&self) -> Index {
        self.membership_index
    }
    /// The current term, vote and commit index, whether or not they are durable yet.
    pub fn hard_state(&self) -> HardState {
        HardState {
            term: self.term,
            vote: self.vote,
            commit: self.commit,
        }
    }
    /// The voter this leader is handing leadership to, while a transfer is under way (it
    /// ends when that voter's election reaches this node, or after an election timeout).
    pub fn transfer_target(&self) -> Option<NodeId> {
        self.transfer_target
    }

    /// Match index of a follower, as the leader sees it.
    pub fn match_index(&self, peer: NodeId) -> Option<Index> {
        self.progress.get(&peer).map(|p| p.match_index)
    }

    // ----- shared helpers -----

    pub(super) fn send(&mut self, to: NodeId, body: MessageBody) {
        self.send_with_term(to, self.term, body);
    }

    pub(super) fn send_with_term(&mut self, to: NodeId, term: Term, body: MessageBody) {
        let message = Message {
            from: self.id,
            to,
            term,
            body,
        };
        // A leader whose own no-op is not yet durable may not have its term and vote on
        // disk either: a group of one voter wins without asking anyone, in the very Ready
        // that writes the new term. Were it to crash before that write, it would come back
        // in the old term, win the same term again and write other entries at indexes a
        // learner already holds for that term. Until then its messages wait for the write.
        if self.role == Role::Leader && term == self.term && self.persisted < self.term_start_index
        {
            self.ready.persisted_messages.push(message);
        } else {
            self.ready.messages.push(message);
        }
    }

    /// A message that must wait until this Ready is durable (votes, acknowledgements).
    pub(super) fn send_after_persist(&mut self, to: NodeId, term: Term, body: MessageBody) {
        self.ready.persisted_messages.push(Message {
            from: self.id,
            to,
            term,
            body,
        });
    }

    pub(super) fn reset_election_timer(&mut self) {
        self.election_elapsed = 0;
        let mut base = self.config.election_ticks;
        if self.config.reluctant {
            base *= self.config.reluctant_factor;
        }
        self.randomized_election_ticks = self.rng.range(base, 2 * base);
    }

    /// Whether this node may stand for election: a voter of the latest configuration, or
    /// a voter of the previous one while the latest (which demoted or removed it) is not
    /// committed. Thesis §4.2.2: such a server may still be needed to elect a leader
    /// until the new configuration commits; it just does not count its own vote, because
    /// quorums are counted over the latest configuration only. Without this, a group in
    /// which the only up-to-date node is being removed can never elect a leader again.
    pub(super) fn promotable(&self) -> bool {
        if self.config.observer {
            return false;
        }
        if self.membership.is_voter(self.id) {
            return true;
        }
        self.membership_index > self.commit
            && self
                .membership_at(self.membership_index - 1)
                .1
                .is_voter(self.id)
    }

    /// The voter set quorums are counted over. Always the configuration, except under the
    /// test-only reference rule, which shrinks it to the reachable voters.
    pub(super) fn quorum_view(&self) -> Cow<'_, Membership> {
        #[cfg(any(test, feature = "dangerous-reference-quorum"))]
        if self.config.dangerous_reference_quorum {
            let mut view = self.membership.clone();
            view.voters
                .retain(|v| *v == self.id || !self.unreachable.contains(v));
            return Cow::Owned(view);
        }
        Cow::Borrowed(&self.membership)
    }

    /// Appends entries to the local log and schedules them for persistence, truncating any
    /// conflicting suffix first. `entries` must start at or before `last_index + 1`.
    pub(super) fn append_local(&mut self, entries: Vec<Entry>) {
        let Some(first) = entries.first().map(|e| e.index) else {
            return;
        };
        if first <= self.log.last_index() {
            self.truncate_from(first);
        }
        // Keep the pending write contiguous: drop pending entries that are being replaced.
        if let Some(pos) = self.ready.entries.iter().position(|e| e.index >= first) {
            self.ready.entries.truncate(pos);
        }
        for entry in entries {
            self.note_appended(&entry);
            self.ready.entries.push(entry.clone());
            self.log.push(entry);
        }
    }

    fn truncate_from(&mut self, index: Index) {
        self.log.truncate_from(index);
        if index <= 1 {
            self.incarnation = self.snapshot.as_ref().and_then(|s| s.meta.incarnation);
        }
        self.persisted = self.persisted.min(index - 1);
        if self.membership_history.iter().any(|(i, _)| *i >= index) {
            self.membership_history.retain(|(i, _)| *i < index);
            let (mi, m) = self
                .membership_history
                .last()
                .cloned()
                .unwrap_or_else(|| self.snapshot_membership.clone());
            self.set_membership(mi, m);
        }
    }

    /// Bookkeeping for an entry entering the log: timestamps and configurations.
    fn note_appended(&mut self, entry: &Entry) {
        self.last_timestamp_ms = self.last_timestamp_ms.max(entry.timestamp_ms);
        if entry.index == 1 {
            self.incarnation = Some(Incarnation::of_first_entry(entry));
        }
        if let EntryPayload::Membership(m) = &entry.payload {
            self.membership_history.push((entry.index, m.clone()));
            self.set_membership(entry.index, m.clone());
        }
    }

    pub(super) fn set_membership(&mut self, index: Index, membership: Membership) {
        self.membership = membership;
        self.membership_index = index;
        if self.role == Role::Leader {
            self.sync_progress_with_membership();
        }
        self.ready.events.push(Event::MembershipChanged {
            membership: self.membership.clone(),
            index,
        });
    }

    /// The configuration in force at `index` (which must be at or after the snapshot point).
    fn membership_at(&self, index: Index) -> (Index, Membership) {
        self.membership_history
            .iter()
            .rev()
            .find(|(i, _)| *i <= index)
            .cloned()
            .unwrap_or_else(|| self.snapshot_membership.clone())
    }

    pub(super) fn commit_to(&mut self, index: Index) {
        if index > self.commit {
            debug_assert!(index <= self.log.last_index(), "commit beyond the log");
            self.commit = index.min(self.log.last_index());
        }
    }

    fn on_persisted(&mut self, index: Index, term: Term) {
        if index > self.persisted && self.log.matches(index, term) {
            self.persisted = index;
            if self.role == Role::Leader {
                self.maybe_commit();
            }
        }
    }

    fn compact(&mut self, index: Index, data: Bytes) -> Result<(), StepError> {
        if index > self.applied {
            return Err(DriverMisuse::CompactBeyondApplied {
                index,
                applied: self.applied,
            }
            .into());
        }
        if index <= self.log.snapshot_index() {
            return Ok(());
        }
        let Some((term, timestamp_ms)) = self.log.get(index).map(|e| (e.term, e.timestamp_ms))
        else {
            return Ok(());
        };
        let (membership_index, membership) = self.membership_at(index);
        self.log.compact_to(index);
        self.membership_history.retain(|(i, _)| *i > index);
        self.snapshot_membership = (membership_index, membership.clone());
        self.snapshot = Some(Snapshot {
            meta: SnapshotMeta {
                index,
                term,
                membership,
                membership_index,
                incarnation: self.incarnation,
                timestamp_ms,
            },
            data,
        });
        Ok(())
    }

    /// Installs a snapshot from the leader, replacing the log (follower side).
    pub(super) fn restore_snapshot(&mut self, snapshot: Snapshot) {
        let meta = snapshot.meta.clone();
        self.log = RaftLog::new(meta.index, meta.term);
        self.persisted = self.persisted.min(meta.index);
        self.commit = meta.index;
        self.applied = meta.index;
        self.membership_history.clear();
        self.snapshot_membership = (meta.membership_index, meta.membership.clone());
        self.set_membership(meta.membership_index, meta.membership);
        if meta.incarnation.is_some() {
            self.incarnation = meta.incarnation;
        }
        self.last_timestamp_ms = self.last_timestamp_ms.max(meta.timestamp_ms);
        // Entries pending persistence are superseded by the snapshot.
        self.ready.entries.clear();
        self.ready.committed_entries.clear();
        self.snapshot = Some(snapshot.clone());
        self.ready.snapshot = Some(snapshot);
    }

    pub(super) fn reject_reads(&mut self, reason: Rejection) {
        let ids: Vec<u64> = self
            .pending_reads
            .drain(..)
            .map(|r| r.id)
            .chain(self.reads_before_commit.drain(..))
            .collect();
        for id in ids {
            self.ready.events.push(Event::ReadRejected {
                id,
                reason: reason.clone(),
            });
        }
    }

    fn handle_message(&mut self, m: Message) -> Result<(), StepError> {
        if m.to != self.id {
            return Err(PeerError::Misrouted {
                to: m.to,
                me: self.id,
            }
            .into());
        }
        let from = m.from;
        if m.term > self.term {
            match &m.body {
                MessageBody::PreVote { .. } => {
                    if self.in_leader_lease() {
                        return Ok(());
                    }
                }
                MessageBody::PreVoteResponse { granted: true } => {}
                MessageBody::Vote { transfer, .. } => {
                    // Thesis §4.2.3: while we hear from a leader, ignore disruptive servers.
                    if !*transfer && self.in_leader_lease() {
                        return Ok(());
                    }
                    self.become_follower(m.term, None);
                }
                MessageBody::Append { .. }
                | MessageBody::Heartbeat { .. }
                | MessageBody::InstallSnapshot { .. }
                | MessageBody::TimeoutNow => self.become_follower(m.term, Some(from)),
                _ => self.become_follower(m.term, None),
            }
        } else if m.term < self.term {
            match &m.body {
                // Tell a stale leader about the newer term so it steps down; otherwise a
                // leader partitioned away would never learn (it ignores lower terms).
                MessageBody::Append { .. } | MessageBody::Heartbeat { .. } => {
                    self.send_after_persist(
                        from,
                        self.term,
                        MessageBody::AppendResponse {
                            success: false,
                            index: 0,
                            hint_index: 0,
                            hint_term: 0,
                        },
                    );
                }
                MessageBody::PreVote { .. } => {
                    self.send_after_persist(
                        from,
                        self.term,
                        MessageBody::PreVoteResponse { granted: false },
                    );
                }
                _ => {}
            }
            return Ok(());
        }

        match m.body {
            MessageBody::PreVote {
                last_index,
                last_term,
            } => self.handle_vote_request(from, m.term, true, last_index, last_term),
            MessageBody::Vote {
                last_index,
                last_term,
                ..
            } => self.handle_vote_request(from, m.term, false, last_index, last_term),
            MessageBody::PreVoteResponse { granted } => {
                if self.role == Role::PreCandidate {
                    self.poll(from, granted);
                }
            }
            MessageBody::VoteResponse { granted } => {
                if self.role == Role::Candidate {
                    self.poll(from, granted);
                }
            }
            MessageBody::Append {
                prev_index,
                prev_term,
                entries,
                commit,
            } => {
                self.accept_leader(from, m.term)?;
                self.handle_append(from, prev_index, prev_term, entries, commit)?;
            }
            MessageBody::Heartbeat { commit, read_seq } => {
                self.accept_leader(from, m.term)?;
                self.commit_to(commit.min(self.log.last_index()));
                self.send_after_persist(
                    from,
                    self.term,
                    MessageBody::HeartbeatResponse { read_seq },
                );
            }
            MessageBody::InstallSnapshot { snapshot } => {
                self.accept_leader(from, m.term)?;
                self.handle_snapshot(from, snapshot);
            }
            MessageBody::AppendResponse {
                success,
                index,
                hint_index,
                hint_term,
            } => {
                if self.role == Role::Leader {
                    self.handle_append_response(from, success, index, hint_index, hint_term);
                }
            }
            MessageBody::HeartbeatResponse { read_seq } => {
                if self.role == Role::Leader {
                    self.handle_heartbeat_response(from, read_seq);
                }
            }
            MessageBody::TimeoutNow => {
                if self.role != Role::Leader && self.promotable() {
                    self.campaign(super::election::Campaign::Transfer);
                }
            }
        }
        Ok(())
    }

    /// A message only a leader of `term` sends arrived: follow its sender.
    fn accept_leader(&mut self, from: NodeId, term: Term) -> Result<(), StepError> {
        if self.role == Role::Leader {
            return Err(SafetyViolation::SecondLeader { from, term }.into());
        }
        if self.role != Role::Follower || self.leader != Some(from) {
            self.become_follower(term, Some(from));
        }
        self.election_elapsed = 0;
        Ok(())
    }

    /// Whether a leader was heard from within the minimum election timeout.
    pub(super) fn in_leader_lease(&self) -> bool {
        self.config.check_quorum
            && self.leader.is_some()
            && self.election_elapsed < self.config.election_ticks
    }

    fn handle_snapshot(&mut self, from: NodeId, snapshot: Snapshot) {
        let meta_index = snapshot.meta.index;
        let meta_term = snapshot.meta.term;
        let index = if meta_index <= self.commit {
            self.commit
        } else if self.log.matches(meta_index, meta_term) {
            // We already hold the snapshot's prefix: just learn it is committed.
            self.commit_to(meta_index);
            meta_index
        } else {
            self.restore_snapshot(snapshot);
            meta_index
        };
        self.send_after_persist(
            from,
            self.term,
            MessageBody::AppendResponse {
                success: true,
                index,
                hint_index: 0,
                hint_term: 0,
            },
        );
    }

    /// Consistency checks of the core's own state (openraft's `validate`). Cheap enough
    /// for the simulator to call after every step.
    pub fn validate(&self) -> Result<(), String> {
        let snap = self.log.snapshot_index();
        if !(snap <= self.applied && self.applied <= self.commit.max(snap)) {
            return Err(format!(
                "snapshot {snap} <= applied {} <= commit {} violated",
                self.applied, self.commit
            ));
        }
        if self.commit > self.log.last_index() {
            return Err(format!(
                "commit {} beyond last index {}",
                self.commit,
                self.log.last_index()
            ));
        }
        if self.persisted > self.log.last_index() {
            return Err(format!(
                "persisted {} beyond last index {}",
                self.persisted,
                self.log.last_index()
            ));
        }
        if self.role == Role::Leader && self.leader != Some(self.id) {
            return Err("leader does not know itself as leader".into());
        }
        if self.role == Role::Leader && self.vote != Some(self.id) {
            return Err("leader did not vote for itself".into());
        }
        if self.log.last_term() > self.term {
            return Err(format!(
                "log term {} above current term {}",
                self.log.last_term(),
                self.term
            ));
        }
        Ok(())
    }
}
