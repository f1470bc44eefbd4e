//! Linearizability checker for client histories.
//!
//! # What this module owns
//!
//! Deciding whether a recorded history of concurrent client operations could have been
//! produced by some sequential execution of a [`Model`] that respects real time: every
//! operation must appear to take effect at one instant between its call and its return.
//! The simulator records what its clients saw and hands the history here; the verdict
//! does not depend on anything the Raft core says about itself.
//!
//! It also owns the two models tessera needs ([`kv`] for the replicated key-value store,
//! [`register`] for the Jepsen etcd logs) and the parsers for the test-vector formats
//! under `tests/vectors/linearizability/` (`parse`).
//!
//! # IO contract
//!
//! Pure code: no IO (the parsers take `&str`), no clock, no randomness, no threads. Work
//! is bounded by the caller through [`CheckLimits`]: a deadline is expressed as a step
//! budget, so the same history with the same limits always gets the same verdict.
//!
//! # Algorithm
//!
//! Wing & Gong's search with Lowe's memoization, in the shape of Porcupine:
//!
//! 1. The model splits the history into independent partitions ([`Model::partition`],
//!    e.g. one per key: P-compositionality), each checked on its own.
//! 2. A partition's calls and returns are sorted by time into a doubly linked list. An
//!    operation whose outcome is unknown ([`Model::output_is_unknown`]) returns at +∞,
//!    after every other event.
//! 3. The search walks the list from its head. At a call it tries to linearize that
//!    operation now: if the model accepts the output from the current state, the call
//!    and its return are unlinked from the list, the previous state is pushed on a stack
//!    and the walk restarts at the head. Reaching a return means that operation had to
//!    be linearized already, so the search backtracks: pop, relink, try the next call.
//! 4. Every (set of linearized operations, model state) pair reached is cached; reaching
//!    one again is a dead end, because the rest of the search depends on nothing else.
//!    The cache key is a Zobrist hash of the set, updated in O(1), combined with a fast
//!    hash of the state.
//!
//! The history is linearizable when the list empties; it is not when the search must
//! backtrack past its first choice. The search is exact: a verdict is either proven or
//! [`CheckOutcome::Unknown`], never a guess.
//!
//! Conventions: intervals are closed, so two operations whose return and call carry the
//! same time are treated as concurrent (ties can only make the checker more lenient,
//! never reject a linearizable history). An operation with an unknown outcome may or may
//! not have taken effect: it is linearized somewhere after its call, and "it never took
//! effect" is the linearization that puts it after everything else.
//!
//! # Limits
//!
//! The problem is NP-complete in general. The search is exponential in the number of
//! operations that are concurrent with each other inside one partition; a few dozen
//! overlapping operations per key is fine, thousands of operations that all overlap
//! (e.g. many unknown outcomes early in a long history) may exhaust
//! [`CheckLimits::steps_max`] or [`CheckLimits::cache_entries_max`], and the outcome is
//! then [`CheckOutcome::Unknown`]. The explanation of a violation shows the longest
//! linearizable prefix the search found and the operations that could not extend it;
//! it is one witness, not a minimal one.
//!
//! # Recording a history
//!
//! Give each client a `client_id` and stamp every call and return with a logical time
//! from one counter that only grows (a step counter of the simulator is fine). When a
//! client gives up on an operation (timeout, crash, lost connection) record it with the
//! model's unknown output ([`kv::KvOutput::Unknown`]); its `return_time` is then ignored.
//! An operation that definitely did not happen (rejected before it was proposed) is
//! simply left out.

mod bitset;
mod check;
mod hash;
pub mod kv;
mod model;
pub(crate) mod parse;
pub mod register;
mod search;

#[cfg(test)]
mod tests;

pub use check::{check, CheckLimits, CheckOutcome, UnknownReason};
pub use kv::KvModel;
pub use model::{Model, Operation, RETURN_TIME_UNKNOWN};
pub use parse::{
    parse_history_jsonl, parse_jepsen_etcd_log, parse_porcupine_kv, EventType, Function,
    HistoryEvent, ParseError, ParsedHistory,
};
pub use register::RegisterModel;
