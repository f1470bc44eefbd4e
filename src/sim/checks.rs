//! One checker per safety property (Raft §5.2, §5.3, §5.4, Figure 3; thesis §4.1), fed by
//! the simulator after every step. They look only at what the nodes did (entries appended,
//! commit indexes, entries applied, durable storage), never at the core's own claims.
use std::collections::{BTreeMap, HashMap};
use std::hash::{Hash, Hasher};

use crate::raft::{Entry, EntryPayload, Index, Membership, NodeId, SnapshotMeta, Term};

/// A violated property: which one and what was seen.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Violation {
    pub property: &'static str,
    pub detail: String,
}

fn violation(property: &'static str, detail: String) -> Violation {
    Violation { property, detail }
}

/// A stable 64-bit digest of an entry's content (FNV-1a over its fields).
pub(crate) fn entry_digest(entry: &Entry) -> u64 {
    let mut h = Fnv::default();
    entry.term.hash(&mut h);
    entry.index.hash(&mut h);
    entry.timestamp_ms.hash(&mut h);
    match &entry.payload {
        EntryPayload::Noop => 0u8.hash(&mut h),
        EntryPayload::Command(data) => {
            1u8.hash(&mut h);
            data.as_ref().hash(&mut h);
        }
        EntryPayload::Membership(m) => {
            2u8.hash(&mut h);
            m.hash(&mut h);
        }
    }
    h.finish()
}

/// Digest of a log prefix ending at an entry: chain(prev) ⊕ entry. Two logs with the same
/// chain digest at an index hold the same prefix.
fn chain(prev: u64, entry: &Entry) -> u64 {
    let mut h = Fnv::default();
    prev.hash(&mut h);
    entry_digest(entry).hash(&mut h);
    h.finish()
}

#[derive(Default)]
struct Fnv(u64);

impl Hasher for Fnv {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        let mut h = if self.0 == 0 {
            0xcbf2_9ce4_8422_2325
        } else {
            self.0
        };
        for b in bytes {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        self.0 = h;
    }
}

/// The checker's copy of one node's in-memory log: prefix digests by index.
#[derive(Clone, Debug, Default)]
pub(crate) struct LogMirror {
    base_index: Index,
    base_chain: u64,
    /// `(term, chain digest)` of entries `base_index + 1 ..`.
    chains: Vec<(Term, u64)>,
    /// The configurations this node has seen take effect, for the one-at-a-time check.
    last_config: Option<(Index, Membership)>,
}

impl LogMirror {
    fn chain_at(&self, index: Index) -> Option<u64> {
        if index == self.base_index {
            return Some(self.base_chain);
        }
        if index < self.base_index {
            return None;
        }
        self.chains
            .get((index - self.base_index - 1) as usize)
            .map(|(_, c)| *c)
    }

    fn last_index(&self) -> Index {
        self.base_index + self.chains.len() as Index
    }
}

/// All safety checkers of one run.
/// Log positions an append took: (index, term) and the digest of the prefix ending there.
pub(crate) type Positions = Vec<((Index, Term), u64)>;

#[derive(Default)]
pub(crate) struct Checkers {
    /// Election safety (§5.2): at most one leader per term, ever.
    leaders: BTreeMap<Term, NodeId>,
    /// Log matching (§5.3): (index, term) → prefix digest, over every node and all time,
    /// for entries that reached some node's disk ([`Checkers::on_durable`]). An entry that
    /// only ever lived in the memory of a node that crashed before writing it (and was
    /// never sent) is not anyone's log: the node may write another at that position.
    positions: HashMap<(Index, Term), u64>,
    /// Committed prefix digests by index (index 0 = empty prefix), the same for everyone.
    committed: Vec<u64>,
    /// For each committed index, a term by which it was known committed: the lowest term
    /// of a node that reported it committed (a node learns of a commit in its own term or
    /// later, so the leader that committed it led this term or an earlier one). Kept
    /// non-decreasing: committing an index commits every index below it.
    committed_by_term: Vec<Term>,
    /// State-machine safety (§5.4.3): digest of the entry applied at each index; `None`
    /// where no node has applied the index itself yet (another node skipped it through a
    /// snapshot). A gap is never a digest, so it cannot be mistaken for one.
    applied: Vec<Option<u64>>,
    pub mirrors: BTreeMap<NodeId, LogMirror>,
    /// Exactly-once (architecture.md §7.3): the index at which each (client, sequence) was applied.
    commands_applied: HashMap<(u64, u64), Index>,
}

impl Checkers {
    pub(crate) fn new() -> Self {
        Self {
            committed: vec![0],
            committed_by_term: vec![0],
            applied: vec![None],
            ..Self::default()
        }
    }

    /// Election safety: `node` became leader of `term`.
    pub(crate) fn on_leader(&mut self, node: NodeId, term: Term) -> Result<(), Violation> {
        if let Some(other) = self.leaders.insert(term, node) {
            if other != node {
                return Err(violation(
                    "election safety (Raft §5.2)",
                    format!("{other} and {node} both led term {term}"),
                ));
            }
        }
        Ok(())
    }

    /// Log matching: `node` appended `entries` (replacing its log from the first index on),
    /// checked against every position that is durable somewhere. Returns the positions
    /// the entries take, to pass to [`Checkers::on_durable`] once they are on disk.
    pub(crate) fn on_append(
        &mut self,
        node: NodeId,
        entries: &[Entry],
    ) -> Result<Positions, Violation> {
        let mirror = self.mirrors.entry(node).or_default();
        let Some(first) = entries.first() else {
            return Ok(Vec::new());
        };
        if first.index <= mirror.base_index {
            return Err(violation(
                "log matching (Raft §5.3)",
                format!(
                    "{node} appended at {} inside its snapshot at {}",
                    first.index, mirror.base_index
                ),
            ));
        }
        let keep = (first.index - mirror.base_index - 1) as usize;
        if keep > mirror.chains.len() {
            return Err(violation(
                "log matching (Raft §5.3)",
                format!(
                    "{node} appended at {} leaving a gap after {}",
                    first.index,
                    mirror.last_index()
                ),
            ));
        }
        mirror.chains.truncate(keep);
        let mut taken = Vec::with_capacity(entries.len());
        for e in entries {
            let prev = mirror.chain_at(e.index - 1).unwrap_or(0);
            let c = chain(prev, e);
            mirror.chains.push((e.term, c));
            taken.push(((e.index, e.term), c));
        }
        self.check_positions(node, &taken)?;
        Ok(taken)
    }

    /// `positions` (from [`Checkers::on_append`]) are now on `node`'s disk.
    pub(crate) fn on_durable(
        &mut self,
        node: NodeId,
        positions: &Positions,
    ) -> Result<(), Violation> {
        self.check_positions(node, positions)?;
        for (position, c) in positions {
            self.positions.entry(*position).or_insert(*c);
        }
        Ok(())
    }

    fn check_positions(&self, node: NodeId, positions: &Positions) -> Result<(), Violation> {
        for ((index, term), c) in positions {
            if self
                .positions
                .get(&(*index, *term))
                .is_some_and(|known| known != c)
            {
                return Err(violation(
                    "log matching (Raft §5.3)",
                    format!(
                        "{node} holds entry {index} of term {term} after a different prefix than another node"
                    ),
                ));
            }
        }
        Ok(())
    }

    /// `node` replaced its log with a snapshot. Its configuration is the snapshot's: a
    /// snapshot may skip any number of configuration entries, so it is not compared.
    pub(crate) fn on_snapshot_installed(
        &mut self,
        node: NodeId,
        meta: &SnapshotMeta,
    ) -> Result<(), Violation> {
        self.reset_to(node, meta.index, meta.term)?;
        let mirror = self.mirrors.entry(node).or_default();
        mirror.last_config = Some((meta.membership_index, meta.membership.clone()));
        Ok(())
    }

    fn reset_to(&mut self, node: NodeId, index: Index, term: Term) -> Result<(), Violation> {
        let base_chain = if index == 0 {
            0
        } else {
            *self.positions.get(&(index, term)).ok_or_else(|| {
                violation(
                    "log matching (Raft §5.3)",
                    format!("{node} installed a snapshot at ({index}, {term}) that no node ever had in its log"),
                )
            })?
        };
        let mirror = self.mirrors.entry(node).or_default();
        mirror.base_index = index;
        mirror.base_chain = base_chain;
        mirror.chains.clear();
        Ok(())
    }

    /// A node restarted from storage: rebuild its mirror from what storage returned.
    pub(crate) fn on_restart(
        &mut self,
        node: NodeId,
        snapshot: Option<&SnapshotMeta>,
        entries: &[Entry],
    ) -> Result<(), Violation> {
        match snapshot {
            Some(meta) => self.on_snapshot_installed(node, meta)?,
            None => {
                self.reset_to(node, 0, 0)?;
                self.mirrors.entry(node).or_default().last_config = None;
            }
        }
        // What storage returned is on disk.
        let positions = self.on_append(node, entries)?;
        self.on_durable(node, &positions)
    }

    /// Committed entries never change (leader completeness, §5.4, seen from outside):
    /// `node`, in `term`, has its commit index at `commit`.
    pub(crate) fn on_commit(
        &mut self,
        node: NodeId,
        term: Term,
        commit: Index,
    ) -> Result<(), Violation> {
        let Some(mirror) = self.mirrors.get(&node) else {
            return Ok(());
        };
        let known = self.committed.len() as Index - 1;
        let probe = commit.min(known);
        if let Some(c) = mirror.chain_at(probe) {
            if c != self.committed[probe as usize] {
                return Err(violation(
                    "state-machine safety (Raft §5.4.3)",
                    format!("{node} committed index {probe} with a prefix different from an earlier commit"),
                ));
            }
        }
        // Everything up to `commit` was committed by `term` at the latest.
        for by in self.committed_by_term[..=probe as usize].iter_mut().rev() {
            if *by <= term {
                break;
            }
            *by = term;
        }
        for index in known + 1..=commit {
            match mirror.chain_at(index) {
                Some(c) => {
                    self.committed.push(c);
                    self.committed_by_term.push(term);
                }
                None => {
                    return Err(violation(
                        "commit bound",
                        format!(
                            "{node} claims commit {commit} beyond its log end {}",
                            mirror.last_index()
                        ),
                    ))
                }
            }
        }
        Ok(())
    }

    /// Leader completeness (§5.4): the leader of `term` holds every entry committed in an
    /// earlier term. Not every entry committed so far: a candidate of an old term may win
    /// with votes that were delayed (or queued while it was paused) after later terms
    /// committed more, which Raft allows; it steps down at the first newer message.
    pub(crate) fn on_leader_log(&self, node: NodeId, term: Term) -> Result<(), Violation> {
        let Some(mirror) = self.mirrors.get(&node) else {
            return Ok(());
        };
        let earlier = self.committed_by_term.partition_point(|by| *by < term);
        let Some(known) = (earlier as Index).checked_sub(1) else {
            return Ok(());
        };
        if mirror.last_index() < known {
            return Err(violation(
                "leader completeness (Raft §5.4)",
                format!(
                    "{node} leads term {term} with log end {} below committed {known}",
                    mirror.last_index()
                ),
            ));
        }
        if let Some(c) = mirror.chain_at(known) {
            if c != self.committed[known as usize] {
                return Err(violation(
                    "leader completeness (Raft §5.4)",
                    format!("{node} leads term {term} without committed entry {known}"),
                ));
            }
        }
        Ok(())
    }

    /// State-machine safety (§5.4.3): no two nodes apply different entries at one index.
    pub(crate) fn on_apply(&mut self, node: NodeId, entry: &Entry) -> Result<(), Violation> {
        let d = entry_digest(entry);
        let i = entry.index as usize;
        if i >= self.applied.len() {
            // Indexes in between were applied through a snapshot: no digest seen yet.
            self.applied.resize(i + 1, None);
        }
        match self.applied[i] {
            Some(known) if known != d => {
                return Err(violation(
                    "state-machine safety (Raft §5.4.3)",
                    format!(
                        "{node} applied a different entry at index {} (term {})",
                        entry.index, entry.term
                    ),
                ));
            }
            Some(_) => {}
            None => self.applied[i] = Some(d),
        }
        Ok(())
    }

    /// Exactly-once client commands (architecture.md §7.3): the session table applied `client`'s
    /// command `seq` at `index` (a new sequence, not a duplicate); it must never apply it
    /// at another index. `session_known`: whether the table held the client's session
    /// just before, which tells a table bug from its documented bound.
    pub(crate) fn on_command_applied(
        &mut self,
        node: NodeId,
        client: u64,
        seq: u64,
        index: Index,
        session_known: bool,
    ) -> Result<(), Violation> {
        let first = *self.commands_applied.entry((client, seq)).or_insert(index);
        if first == index {
            return Ok(());
        }
        let why = if session_known {
            "although the table held its session: the session table is wrong"
        } else {
            "after its session was evicted or expired, the bound session.rs documents: \
             the simulator's sessions_max or TTL leaves too little room"
        };
        Err(violation(
            "exactly-once client commands (architecture.md §7.3)",
            format!("{node} applied client {client}'s command {seq} at {index}, already applied at {first}, {why}"),
        ))
    }

    /// Configuration changes one at a time (thesis §4.1): a new configuration differs from
    /// the previous one by at most one voter, and a leader only appends one once the
    /// previous one is committed.
    pub(crate) fn on_membership(
        &mut self,
        node: NodeId,
        index: Index,
        membership: &Membership,
        leader_commit: Option<Index>,
    ) -> Result<(), Violation> {
        let mirror = self.mirrors.entry(node).or_default();
        if let Some((prev_index, prev)) = &mirror.last_config {
            if index > *prev_index && *prev_index > 0 {
                let moved = prev.voters.symmetric_difference(&membership.voters).count();
                if moved > 1 {
                    return Err(violation(
                        "one configuration change at a time (thesis §4.1)",
                        format!(
                            "{node}: configuration at {index} (voters {:?}) moves {moved} voters at once from the one at {prev_index} (voters {:?})",
                            membership.voters, prev.voters
                        ),
                    ));
                }
                if let Some(commit) = leader_commit {
                    if commit < *prev_index {
                        return Err(violation(
                            "one configuration change at a time (thesis §4.1)",
                            format!("leader {node} appended configuration {index} while {prev_index} was uncommitted (commit {commit})"),
                        ));
                    }
                }
            }
        }
        mirror.last_config = Some((index, membership.clone()));
        Ok(())
    }

    /// The highest index known committed anywhere.
    pub(crate) fn committed_index(&self) -> Index {
        self.committed.len() as Index - 1
    }

    /// Leaders seen, by term (for reports).
    pub(crate) fn leader_count(&self) -> usize {
        self.leaders.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn e(index: Index, term: Term, data: &str) -> Entry {
        Entry {
            term,
            index,
            timestamp_ms: 0,
            payload: EntryPayload::Command(Bytes::from(data.to_owned())),
        }
    }

    #[test]
    fn a_command_applied_at_two_indexes_is_caught() {
        let mut c = Checkers::new();
        c.on_command_applied(NodeId(1), 7, 3, 10, false).unwrap();
        // Every replica applies it at the same index.
        c.on_command_applied(NodeId(2), 7, 3, 10, false).unwrap();
        c.on_command_applied(NodeId(1), 7, 4, 11, true).unwrap();
        assert!(c.on_command_applied(NodeId(1), 7, 3, 12, true).is_err());
        assert!(c.on_command_applied(NodeId(1), 7, 4, 13, false).is_err());
    }

    #[test]
    fn two_leaders_in_one_term_are_caught() {
        let mut c = Checkers::new();
        c.on_leader(NodeId(1), 3).unwrap();
        c.on_leader(NodeId(1), 3).unwrap();
        assert!(c.on_leader(NodeId(2), 3).is_err());
    }

    #[test]
    fn same_position_after_different_prefixes_is_caught() {
        let mut c = Checkers::new();
        let p = c
            .on_append(NodeId(1), &[e(1, 1, "a"), e(2, 1, "b")])
            .unwrap();
        c.on_durable(NodeId(1), &p).unwrap();
        c.on_append(NodeId(2), &[e(1, 1, "a")]).unwrap();
        // Same (index 2, term 1) but after a different entry 1 is impossible in Raft.
        assert!(c
            .on_append(NodeId(3), &[e(1, 1, "x"), e(2, 1, "b")])
            .is_err());
        // Also when both were only in memory until now: caught when the second is written.
        let mut c = Checkers::new();
        let first = c.on_append(NodeId(1), &[e(1, 1, "a")]).unwrap();
        let second = c.on_append(NodeId(2), &[e(1, 1, "x")]).unwrap();
        c.on_durable(NodeId(1), &first).unwrap();
        assert!(c.on_durable(NodeId(2), &second).is_err());
    }

    /// A node that crashed before writing entries it never sent may write others at those
    /// positions: nobody holds the first ones.
    #[test]
    fn entries_lost_before_reaching_any_disk_are_nobodys_log() {
        let mut c = Checkers::new();
        let lost = c.on_append(NodeId(1), &[e(1, 1, "a")]).unwrap();
        drop(lost);
        c.on_restart(NodeId(1), None, &[]).unwrap();
        let again = c.on_append(NodeId(1), &[e(1, 1, "b")]).unwrap();
        c.on_durable(NodeId(1), &again).unwrap();
    }

    #[test]
    fn diverging_commits_and_applies_are_caught() {
        let mut c = Checkers::new();
        c.on_append(NodeId(1), &[e(1, 1, "a")]).unwrap();
        c.on_append(NodeId(2), &[e(1, 2, "b")]).unwrap();
        c.on_commit(NodeId(1), 1, 1).unwrap();
        assert!(c.on_commit(NodeId(2), 2, 1).is_err());
        c.on_apply(NodeId(1), &e(1, 1, "a")).unwrap();
        assert!(c.on_apply(NodeId(2), &e(1, 2, "b")).is_err());
    }

    #[test]
    fn a_gap_in_applied_indexes_is_filled_by_the_first_apply() {
        let mut c = Checkers::new();
        // Node 1 applied 3 after a snapshot at 2: indexes 1 and 2 are gaps, not digests.
        c.on_apply(NodeId(1), &e(3, 1, "c")).unwrap();
        c.on_apply(NodeId(2), &e(1, 1, "a")).unwrap();
        c.on_apply(NodeId(2), &e(2, 1, "b")).unwrap();
        c.on_apply(NodeId(2), &e(3, 1, "c")).unwrap();
        assert!(c.on_apply(NodeId(3), &e(2, 2, "x")).is_err());
    }

    #[test]
    fn a_leader_missing_a_committed_entry_is_caught() {
        let mut c = Checkers::new();
        c.on_append(NodeId(1), &[e(1, 1, "a"), e(2, 1, "b")])
            .unwrap();
        c.on_commit(NodeId(1), 1, 2).unwrap();
        c.on_append(NodeId(2), &[e(1, 1, "a")]).unwrap();
        assert!(c.on_leader_log(NodeId(2), 2).is_err());
        assert!(c.on_leader_log(NodeId(1), 2).is_ok());
        // A leader of the term of the commit (elected late with delayed votes) need not
        // hold it.
        assert!(c.on_leader_log(NodeId(2), 1).is_ok());
    }

    #[test]
    fn a_commit_binds_leaders_of_later_terms_only() {
        let mut c = Checkers::new();
        c.on_append(NodeId(1), &[e(1, 3, "a")]).unwrap();
        c.on_commit(NodeId(1), 3, 1).unwrap();
        c.on_append(NodeId(2), &[e(1, 1, "x")]).unwrap();
        assert!(c.on_leader_log(NodeId(2), 3).is_ok());
        assert!(c.on_leader_log(NodeId(2), 4).is_err());
        // A node still in term 2 knows it committed: term 3's leader must hold it too.
        c.on_append(NodeId(3), &[e(1, 3, "a")]).unwrap();
        c.on_commit(NodeId(3), 2, 1).unwrap();
        assert!(c.on_leader_log(NodeId(2), 3).is_err());
    }

    #[test]
    fn two_voters_moving_at_once_is_caught() {
        let mut c = Checkers::new();
        let m3 = Membership::with_voters([NodeId(1), NodeId(2), NodeId(3)]);
        let m1 = Membership::with_voters([NodeId(1)]);
        c.on_membership(NodeId(1), 1, &m3, None).unwrap();
        assert!(c.on_membership(NodeId(1), 5, &m1, None).is_err());
        let m2 = Membership::with_voters([NodeId(1), NodeId(2)]);
        let mut c = Checkers::new();
        c.on_membership(NodeId(1), 1, &m3, None).unwrap();
        assert!(
            c.on_membership(NodeId(1), 5, &m2, Some(0)).is_err(),
            "previous uncommitted"
        );
    }
}
