//! What a leader knows about one follower's log, and its flow control (raft-rs' Progress).
use std::collections::VecDeque;

use super::types::Index;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum ProgressState {
    /// Unknown match point: one append at a time until a response tells where logs agree.
    Probe,
    /// Logs agree up to `match_index`: stream appends optimistically, up to the window.
    Replicate,
    /// The follower needs a snapshot at `pending_index`; wait for it to be installed.
    Snapshot { pending_index: Index },
}

#[derive(Clone, Debug)]
pub(super) struct Progress {
    pub match_index: Index,
    pub next_index: Index,
    pub state: ProgressState,
    /// In Probe state: an append is out and unanswered.
    pub probe_sent: bool,
    /// In Replicate state: last index of each unacknowledged append, oldest first.
    pub inflight: VecDeque<Index>,
    /// Heard from since the last check-quorum round.
    pub recent_active: bool,
    /// Check-quorum rounds in a row (election timeouts) without a word from this follower.
    pub silent_rounds: u64,
    /// Highest read-index round this follower has acknowledged.
    pub read_ack: u64,
    /// Ticks spent waiting for a snapshot to be installed.
    pub snapshot_ticks: u64,
}

impl Progress {
    pub(super) fn new(next_index: Index) -> Self {
        Self {
            match_index: 0,
            next_index,
            state: ProgressState::Probe,
            probe_sent: false,
            inflight: VecDeque::new(),
            recent_active: false,
            silent_rounds: 0,
            read_ack: 0,
            snapshot_ticks: 0,
        }
    }

    pub(super) fn become_probe(&mut self) {
        if let ProgressState::Snapshot { pending_index } = self.state {
            self.next_index = (self.match_index + 1).max(pending_index + 1);
        } else {
            self.next_index = self.match_index + 1;
        }
        self.state = ProgressState::Probe;
        self.probe_sent = false;
        self.inflight.clear();
    }

    pub(super) fn become_replicate(&mut self) {
        self.state = ProgressState::Replicate;
        self.next_index = self.match_index + 1;
        self.probe_sent = false;
        self.inflight.clear();
    }

    pub(super) fn become_snapshot(&mut self, pending_index: Index) {
        self.state = ProgressState::Snapshot { pending_index };
        self.probe_sent = false;
        self.inflight.clear();
        self.snapshot_ticks = 0;
    }

    /// Records a successful response up to `index`; true when it taught us something new.
    pub(super) fn update(&mut self, index: Index) -> bool {
        let updated = index > self.match_index;
        if updated {
            self.match_index = index;
            self.probe_sent = false;
        }
        self.next_index = self.next_index.max(index + 1);
        while self.inflight.front().is_some_and(|last| *last <= index) {
            self.inflight.pop_front();
        }
        updated
    }
}
