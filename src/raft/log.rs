//! The core's view of the log: a snapshot point followed by the entries after it.
//!
//! This is the in-memory mirror the core reasons about; durability is the driver's job
//! (it writes what [`Ready`](super::Ready) lists). Entries up to the snapshot point are gone
//! from here; only their last index and term remain.
use super::types::{Entry, Index, Term};

#[derive(Clone, Debug, Default)]
pub(super) struct RaftLog {
    snapshot_index: Index,
    snapshot_term: Term,
    /// `entries[i].index == snapshot_index + 1 + i`.
    entries: Vec<Entry>,
}

impl RaftLog {
    /// A log that starts right after the given snapshot point.
    pub(super) fn new(snapshot_index: Index, snapshot_term: Term) -> Self {
        Self {
            snapshot_index,
            snapshot_term,
            entries: Vec::new(),
        }
    }

    pub(super) fn snapshot_index(&self) -> Index {
        self.snapshot_index
    }

    pub(super) fn first_index(&self) -> Index {
        self.snapshot_index + 1
    }

    pub(super) fn last_index(&self) -> Index {
        self.snapshot_index + self.entries.len() as Index
    }

    pub(super) fn last_term(&self) -> Term {
        self.entries.last().map_or(self.snapshot_term, |e| e.term)
    }

    /// Term of the entry at `index`: known for the snapshot point and every entry after it.
    pub(super) fn term(&self, index: Index) -> Option<Term> {
        if index == self.snapshot_index {
            return Some(self.snapshot_term);
        }
        self.get(index).map(|e| e.term)
    }

    pub(super) fn get(&self, index: Index) -> Option<&Entry> {
        if index <= self.snapshot_index {
            return None;
        }
        self.entries.get((index - self.snapshot_index - 1) as usize)
    }

    pub(super) fn matches(&self, index: Index, term: Term) -> bool {
        self.term(index) == Some(term)
    }

    /// Election restriction (Raft §5.4.1): is a log ending at (`last_index`, `last_term`) at
    /// least as up to date as ours?
    pub(super) fn is_up_to_date(&self, last_index: Index, last_term: Term) -> bool {
        last_term > self.last_term()
            || (last_term == self.last_term() && last_index >= self.last_index())
    }

    /// Appends entries that continue the log exactly (the caller checked continuity).
    pub(super) fn push(&mut self, entry: Entry) {
        debug_assert_eq!(entry.index, self.last_index() + 1, "log gap");
        self.entries.push(entry);
    }

    /// Drops every entry at `index` and after.
    pub(super) fn truncate_from(&mut self, index: Index) {
        debug_assert!(index > self.snapshot_index, "truncating into the snapshot");
        let keep = index.saturating_sub(self.snapshot_index + 1) as usize;
        self.entries.truncate(keep);
    }

    /// Entries in `[lo, hi)`, at most `max_entries` of them and at most `max_bytes` of
    /// payload (but always at least one entry when the range is not empty).
    pub(super) fn slice(
        &self,
        lo: Index,
        hi: Index,
        max_entries: usize,
        max_bytes: usize,
    ) -> Vec<Entry> {
        let mut out = Vec::new();
        let mut bytes = 0usize;
        let mut index = lo.max(self.first_index());
        while index < hi.min(self.last_index() + 1) && out.len() < max_entries {
            let Some(entry) = self.get(index) else { break };
            bytes += entry.size_bytes();
            if !out.is_empty() && bytes > max_bytes {
                break;
            }
            out.push(entry.clone());
            index += 1;
        }
        out
    }

    /// The largest index `<= index` whose term is `<= term` (the snapshot point at least):
    /// used to skip a conflicting term in one round trip (etcd's fast backtracking).
    pub(super) fn find_conflict_by_term(&self, index: Index, term: Term) -> (Index, Term) {
        let mut i = index.min(self.last_index());
        while i > self.snapshot_index {
            match self.term(i) {
                Some(t) if t <= term => return (i, t),
                _ => i -= 1,
            }
        }
        (self.snapshot_index, self.snapshot_term)
    }

    /// Forgets everything up to and including `index`, which must be in the log.
    pub(super) fn compact_to(&mut self, index: Index) {
        let Some(term) = self.term(index) else {
            return;
        };
        let drop = (index - self.snapshot_index) as usize;
        self.entries.drain(..drop.min(self.entries.len()));
        self.snapshot_index = index;
        self.snapshot_term = term;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::raft::types::EntryPayload;

    fn log_with_terms(terms: &[Term]) -> RaftLog {
        let mut log = RaftLog::new(0, 0);
        for (i, t) in terms.iter().enumerate() {
            log.push(Entry {
                term: *t,
                index: i as Index + 1,
                timestamp_ms: 0,
                payload: EntryPayload::Noop,
            });
        }
        log
    }

    #[test]
    fn terms_and_bounds() {
        let log = log_with_terms(&[1, 1, 2, 3]);
        assert_eq!(log.last_index(), 4);
        assert_eq!(log.last_term(), 3);
        assert_eq!(log.term(0), Some(0));
        assert_eq!(log.term(3), Some(2));
        assert_eq!(log.term(5), None);
    }

    #[test]
    fn up_to_date_compares_term_then_index() {
        let log = log_with_terms(&[1, 1, 2]);
        assert!(log.is_up_to_date(3, 2));
        assert!(log.is_up_to_date(1, 3));
        assert!(!log.is_up_to_date(2, 2));
        assert!(!log.is_up_to_date(10, 1));
    }

    #[test]
    fn conflict_search_skips_whole_terms() {
        let log = log_with_terms(&[1, 1, 2, 2, 2, 4]);
        assert_eq!(log.find_conflict_by_term(6, 3), (5, 2));
        assert_eq!(log.find_conflict_by_term(6, 1), (2, 1));
        assert_eq!(log.find_conflict_by_term(9, 4), (6, 4));
        assert_eq!(log.find_conflict_by_term(6, 0), (0, 0));
    }

    #[test]
    fn compaction_keeps_the_suffix_and_the_snapshot_term() {
        let mut log = log_with_terms(&[1, 1, 2, 3]);
        log.compact_to(2);
        assert_eq!(log.first_index(), 3);
        assert_eq!(log.term(2), Some(1));
        assert_eq!(log.term(1), None);
        assert_eq!(log.last_index(), 4);
        assert_eq!(log.slice(1, 10, 10, 1 << 20).len(), 2);
        log.truncate_from(4);
        assert_eq!(log.last_index(), 3);
    }

    #[test]
    fn slice_respects_limits_but_sends_at_least_one() {
        let log = log_with_terms(&[1, 1, 1, 1]);
        assert_eq!(log.slice(1, 5, 2, 1 << 20).len(), 2);
        assert_eq!(log.slice(1, 5, 10, 1).len(), 1);
        assert!(log.slice(5, 9, 10, 100).is_empty());
    }
}
