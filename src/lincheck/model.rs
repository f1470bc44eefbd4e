//! The sequential specification a history is checked against, and the operations of a
//! history.

use std::fmt::Debug;
use std::hash::Hash;

/// Conventional `return_time` for an operation whose outcome is unknown. The checker
/// treats an unknown outcome as returning at +∞ whatever the recorded time, so this is
/// only a marker for readers of the history.
pub const RETURN_TIME_UNKNOWN: u64 = u64::MAX;

/// One completed (or abandoned) client operation of a history.
///
/// Times are logical: any counter shared by all clients that only grows. The checker
/// only compares them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Operation<I, O> {
    /// Which client issued the operation; used in explanations only.
    pub client_id: u64,
    /// What the client asked for.
    pub input: I,
    /// When the client issued the operation.
    pub call: u64,
    /// What the client got back, or the model's unknown output
    /// ([`Model::output_is_unknown`]) when it never learned.
    pub output: O,
    /// When the client got the answer. Must be `>= call` unless the output is unknown, in
    /// which case it is ignored and treated as +∞.
    pub return_time: u64,
}

/// A sequential specification: the state machine every linearization must follow.
///
/// # Contract
///
/// - `step` is a pure function of its arguments: same arguments, same answer.
/// - `step` returns `None` exactly when `output` cannot be produced by `input` from
///   `state`, and otherwise the state after the operation.
/// - For an unknown output (`output_is_unknown` is true), `step` must return `Some` from
///   every state: it applies the operation's effect, whatever it would have returned. The
///   checker models "the operation never took effect" by linearizing it after everything
///   else, where its effect cannot be observed.
/// - `partition` returns groups of indices into the history that together contain every
///   index exactly once, and operations in different groups must never influence each
///   other's outputs (e.g. different keys of a store). The checker asserts the first
///   part; the second is what makes per-partition checking sound.
/// - `State` equality must mean "no future operation can tell them apart": the search
///   caches states and prunes on equality.
pub trait Model {
    /// The state of the specification; compared and hashed by the search cache, so keep
    /// it small and its hash cheap.
    type State: Clone + Eq + Hash + Debug;
    /// What a client asks for.
    type Input: Debug;
    /// What a client gets back.
    type Output: Debug;

    /// The state before any operation.
    fn init(&self) -> Self::State;

    /// Applies `input` to `state` if it can return `output`; `None` if it cannot.
    fn step(
        &self,
        state: &Self::State,
        input: &Self::Input,
        output: &Self::Output,
    ) -> Option<Self::State>;

    /// Whether `output` records that the client never learned the outcome. Such an
    /// operation returns at +∞ and may or may not have taken effect.
    fn output_is_unknown(&self, output: &Self::Output) -> bool {
        let _ = output;
        false
    }

    /// Splits the history into independently checkable groups of indices. Default: one
    /// group with every operation.
    fn partition(&self, history: &[Operation<Self::Input, Self::Output>]) -> Vec<Vec<usize>> {
        vec![(0..history.len()).collect()]
    }
}
