//! The backtracking search over one partition (Wing & Gong, Lowe, Porcupine).

use std::collections::HashMap;

use super::bitset::Bitset;
use super::hash::{hash_of, mix64, PassThroughBuild};
use super::model::{Model, Operation};

/// How far a [`PartitionSearch`] got in the steps it was given.
pub(crate) enum Progress {
    /// Out of steps; call [`PartitionSearch::run`] again to continue.
    Running,
    Linearizable,
    /// No linearization exists; see [`PartitionSearch::violation`].
    Violation,
}

/// One operation of the history being searched.
type OpRef<'a, M> = &'a Operation<<M as Model>::Input, <M as Model>::Output>;

/// The cache budget shared by all partitions searched at the same time.
pub(crate) struct CacheBudget {
    /// Entries that may still be added.
    pub(crate) room: usize,
    /// Whether an entry was ever refused for lack of room.
    pub(crate) was_full: bool,
}

/// End of list, and "no entry" in cache chains.
const NIL: usize = usize::MAX;

/// A resumable search for a linearization of one partition, so the driver can share
/// steps between partitions and stop at the first violation found.
pub(crate) struct PartitionSearch<'a, M: Model> {
    model: &'a M,
    ops: Vec<&'a Operation<M::Input, M::Output>>,
    /// Effective return times: `u64::MAX` (+∞) for unknown outcomes.
    returns: Vec<u64>,
    list: EventList,
    linearized: Bitset,
    cache: Cache<M::State>,
    /// Operations linearized so far, each with the state before it.
    stack: Vec<(usize, M::State)>,
    state: M::State,
    /// Where the walk is: a node of `list`.
    node: usize,
    best_prefix: Vec<usize>,
    best_state: M::State,
}

impl<'a, M: Model> PartitionSearch<'a, M> {
    pub(crate) fn new(
        model: &'a M,
        ops: Vec<&'a Operation<M::Input, M::Output>>,
        returns: Vec<u64>,
    ) -> Self {
        assert_eq!(ops.len(), returns.len());
        let list = EventList::new(&ops, &returns);
        let linearized = Bitset::new(ops.len());
        let cache = Cache::new(linearized.words().len());
        let state = model.init();
        Self {
            model,
            node: list.first(),
            list,
            linearized,
            cache,
            stack: Vec::new(),
            best_prefix: Vec::new(),
            best_state: state.clone(),
            state,
            ops,
            returns,
        }
    }

    /// Searches for at most `steps_max` steps; returns how far it got and the steps
    /// used. One step is one attempt to linearize an operation or one backtrack.
    pub(crate) fn run(&mut self, steps_max: u64, budget: &mut CacheBudget) -> (Progress, u64) {
        let mut steps = 0;
        while !self.list.is_empty() {
            if steps == steps_max {
                return (Progress::Running, steps);
            }
            steps += 1;
            if !self.step(budget) {
                return (Progress::Violation, steps);
            }
        }
        debug_assert_eq!(self.stack.len(), self.ops.len());
        (Progress::Linearizable, steps)
    }

    /// One step of the walk; `false` when the search space is exhausted.
    fn step(&mut self, budget: &mut CacheBudget) -> bool {
        let node = self.node;
        // The list always ends with a return, so a walk from the head meets one before
        // it can run off the end.
        assert_ne!(node, NIL, "walked off a non-empty event list");
        let op_index = node / 2;
        if !EventList::is_call(node) {
            // A return of an operation not linearized yet: whatever was linearized last
            // must make room for it.
            let Some((last, before)) = self.stack.pop() else {
                return false;
            };
            self.state = before;
            self.linearized.remove(last);
            self.list.unlift(last);
            self.node = self.list.next(EventList::call_node(last));
            return true;
        }
        let op = self.ops[op_index];
        let Some(next_state) = self.model.step(&self.state, &op.input, &op.output) else {
            self.node = self.list.next(node);
            return true;
        };
        self.linearized.insert(op_index);
        let key = mix64(self.linearized.hash() ^ hash_of(&next_state));
        if self.cache.contains(key, &self.linearized, &next_state) {
            // Reached before: everything after it was explored from there.
            self.linearized.remove(op_index);
            self.node = self.list.next(node);
            return true;
        }
        if budget.room > 0 {
            budget.room -= 1;
            self.cache.insert(key, &self.linearized, &next_state);
        } else {
            // Without the entry the search stays exact, it may only repeat work.
            budget.was_full = true;
        }
        let before = std::mem::replace(&mut self.state, next_state);
        self.stack.push((op_index, before));
        self.list.lift(op_index);
        if self.stack.len() > self.best_prefix.len() {
            self.best_prefix = self.stack.iter().map(|&(i, _)| i).collect();
            self.best_state = self.state.clone();
        }
        self.node = self.list.first();
        true
    }

    /// Entries this search holds in the cache, to give back to the budget when done.
    pub(crate) fn cache_len(&self) -> usize {
        self.cache.len()
    }

    /// The partition's operations and effective return times.
    pub(crate) fn operations(&self) -> (&[OpRef<'a, M>], &[u64]) {
        (&self.ops, &self.returns)
    }

    /// After [`Progress::Violation`]: the longest linearizable prefix seen (partition
    /// indices, in order) and the state after it.
    pub(crate) fn violation(&self) -> (&[usize], &M::State) {
        (&self.best_prefix, &self.best_state)
    }
}

/// The calls and returns of a partition in time order, as a doubly linked list that
/// supports removing an operation's two events and putting them back in LIFO order
/// (dancing links). Node `2i` is the call of operation `i`, `2i + 1` its return, and
/// node `2n` the head sentinel.
struct EventList {
    next: Vec<usize>,
    prev: Vec<usize>,
    head: usize,
}

impl EventList {
    fn new<I, O>(ops: &[&Operation<I, O>], returns: &[u64]) -> Self {
        assert_eq!(ops.len(), returns.len());
        // (time, 0 = call / 1 = return, operation): at equal times calls come first, so
        // touching intervals count as concurrent.
        let mut events: Vec<(u64, u8, usize)> = Vec::with_capacity(2 * ops.len());
        for (i, op) in ops.iter().enumerate() {
            events.push((op.call, 0, i));
            events.push((returns[i], 1, i));
        }
        events.sort_unstable();
        let head = 2 * ops.len();
        let mut next = vec![NIL; head + 1];
        let mut prev = vec![NIL; head + 1];
        let mut last = head;
        for (_, kind, i) in events {
            let node = 2 * i + usize::from(kind);
            next[last] = node;
            prev[node] = last;
            last = node;
        }
        Self { next, prev, head }
    }

    fn is_call(node: usize) -> bool {
        node % 2 == 0
    }

    fn call_node(op: usize) -> usize {
        2 * op
    }

    fn first(&self) -> usize {
        self.next[self.head]
    }

    fn next(&self, node: usize) -> usize {
        self.next[node]
    }

    fn is_empty(&self) -> bool {
        self.next[self.head] == NIL
    }

    /// Unlinks operation `op`'s call and return.
    fn lift(&mut self, op: usize) {
        self.unlink(2 * op);
        self.unlink(2 * op + 1);
    }

    /// Relinks operation `op`; it must be the operation lifted last.
    fn unlift(&mut self, op: usize) {
        self.relink(2 * op + 1);
        self.relink(2 * op);
    }

    fn unlink(&mut self, node: usize) {
        let (prev, next) = (self.prev[node], self.next[node]);
        self.next[prev] = next;
        if next != NIL {
            self.prev[next] = prev;
        }
    }

    fn relink(&mut self, node: usize) {
        let (prev, next) = (self.prev[node], self.next[node]);
        self.next[prev] = node;
        if next != NIL {
            self.prev[next] = node;
        }
    }
}

/// The set of (linearized set, state) pairs already reached, keyed by our own hash so a
/// lookup needs no clone. Colliding entries are chained through `next`; the sets live in
/// one flat array, `words_per_set` words each, to spare an allocation per entry.
struct Cache<S> {
    index: HashMap<u64, usize, PassThroughBuild>,
    entries: Vec<CacheEntry<S>>,
    sets: Vec<u64>,
    words_per_set: usize,
}

struct CacheEntry<S> {
    state: S,
    next: usize,
}

impl<S: Clone + Eq> Cache<S> {
    fn new(words_per_set: usize) -> Self {
        Self {
            index: HashMap::default(),
            entries: Vec::new(),
            sets: Vec::new(),
            words_per_set,
        }
    }

    fn len(&self) -> usize {
        self.entries.len()
    }

    fn contains(&self, key: u64, linearized: &Bitset, state: &S) -> bool {
        let words = linearized.words();
        let mut at = self.index.get(&key).copied().unwrap_or(NIL);
        while at != NIL {
            let entry = &self.entries[at];
            let set = &self.sets[at * self.words_per_set..(at + 1) * self.words_per_set];
            if entry.state == *state && set == words {
                return true;
            }
            at = entry.next;
        }
        false
    }

    /// Adds a pair that [`Cache::contains`] just said is absent.
    fn insert(&mut self, key: u64, linearized: &Bitset, state: &S) {
        let words = linearized.words();
        assert_eq!(words.len(), self.words_per_set);
        let head = self.index.get(&key).copied().unwrap_or(NIL);
        self.entries.push(CacheEntry {
            state: state.clone(),
            next: head,
        });
        self.sets.extend_from_slice(words);
        self.index.insert(key, self.entries.len() - 1);
    }
}
