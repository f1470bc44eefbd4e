//! The entry point: limits, outcome, and the per-partition driver.

use std::fmt;

use super::model::{Model, Operation};
use super::search::{CacheBudget, PartitionSearch, Progress};

/// How much work one [`check`] may do. Both limits are deterministic, so the verdict
/// for a history never depends on the machine or its load.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CheckLimits {
    /// Search steps for the whole history, summed over its partitions. One step is one
    /// attempt to linearize an operation or one backtrack; a release build does a few
    /// million per second. This is how a caller expresses a deadline.
    pub steps_max: u64,
    /// Entries of the (linearized set, state) cache, summed over the partitions being
    /// searched. Each entry costs a clone of the state, one bit per operation of its
    /// partition and a hash-table slot. When it is full the search goes on without
    /// caching: still exact, possibly much slower.
    pub cache_entries_max: usize,
}

impl CheckLimits {
    /// Default for [`CheckLimits::steps_max`]: tens of seconds in a release build.
    pub const STEPS_MAX_DEFAULT: u64 = 100_000_000;
    /// Default for [`CheckLimits::cache_entries_max`].
    pub const CACHE_ENTRIES_MAX_DEFAULT: usize = 4_000_000;
}

impl Default for CheckLimits {
    fn default() -> Self {
        Self {
            steps_max: Self::STEPS_MAX_DEFAULT,
            cache_entries_max: Self::CACHE_ENTRIES_MAX_DEFAULT,
        }
    }
}

/// The verdict on a history.
#[derive(Debug, Clone, PartialEq, Eq)]
#[must_use]
pub enum CheckOutcome {
    /// Some order of the operations respects real time and the model.
    Linearizable,
    /// No order of one partition's operations respects real time and the model.
    NotLinearizable {
        /// Index of the partition, in the order [`Model::partition`] returned them.
        partition: usize,
        /// History indices of the longest linearizable prefix the search found, in
        /// linearization order.
        longest_prefix: Vec<usize>,
        /// History indices of the operations that could come right after that prefix
        /// in real time; none of them leads to a full linearization.
        next_candidates: Vec<usize>,
        /// A few lines for a failure message: the end of the prefix, the state after
        /// it, and why each candidate does not fit.
        explanation: String,
    },
    /// A limit ran out or the history is malformed: no verdict.
    Unknown {
        /// Which limit, or what is wrong with the history.
        reason: UnknownReason,
    },
}

impl CheckOutcome {
    /// Whether the verdict is [`CheckOutcome::Linearizable`].
    pub fn is_linearizable(&self) -> bool {
        matches!(self, Self::Linearizable)
    }
}

impl fmt::Display for CheckOutcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Linearizable => f.write_str("linearizable"),
            Self::NotLinearizable { explanation, .. } => {
                write!(f, "not linearizable: {explanation}")
            }
            Self::Unknown { reason } => write!(f, "undecided: {reason}"),
        }
    }
}

/// Why [`check`] gave no verdict.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum UnknownReason {
    /// [`CheckLimits::steps_max`] ran out before every partition was decided.
    StepsExhausted {
        /// The limit that ran out.
        steps_max: u64,
        /// The partition being searched when it ran out.
        partition: usize,
        /// Whether [`CheckLimits::cache_entries_max`] was reached on the way: raising it
        /// may save steps.
        cache_was_full: bool,
    },
    /// A completed operation returns before it is called (caller misuse).
    ReturnBeforeCall {
        /// History index of the operation.
        index: usize,
        /// Its call time.
        call: u64,
        /// Its return time, smaller than `call`.
        return_time: u64,
    },
}

impl fmt::Display for UnknownReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::StepsExhausted {
                steps_max,
                partition,
                cache_was_full,
            } => {
                write!(
                    f,
                    "search step budget of {steps_max} exhausted in partition {partition}"
                )?;
                if *cache_was_full {
                    f.write_str(" (the search cache had reached its maximum)")?;
                }
                Ok(())
            }
            Self::ReturnBeforeCall {
                index,
                call,
                return_time,
            } => write!(
                f,
                "operation #{index} returns at {return_time}, before its call at {call}"
            ),
        }
    }
}

/// Decides whether `history` is linearizable with respect to `model`.
///
/// Never returns [`CheckOutcome::Linearizable`] for a history that is not (given a model
/// that keeps the [`Model`] contract); returns [`CheckOutcome::Unknown`] when
/// [`CheckLimits::steps_max`] runs out first. Partitions take turns, a fixed number of
/// steps each, and the first violation found is reported: which partition that is
/// depends only on the history and the limits.
///
/// # Panics
///
/// If `model.partition` breaks its contract (an index missing, repeated or out of range):
/// that is a bug in the model, not in the history.
pub fn check<M: Model>(
    model: &M,
    history: &[Operation<M::Input, M::Output>],
    limits: CheckLimits,
) -> CheckOutcome {
    let mut returns = Vec::with_capacity(history.len());
    for (index, op) in history.iter().enumerate() {
        if model.output_is_unknown(&op.output) {
            returns.push(u64::MAX);
        } else if op.return_time < op.call {
            return CheckOutcome::Unknown {
                reason: UnknownReason::ReturnBeforeCall {
                    index,
                    call: op.call,
                    return_time: op.return_time,
                },
            };
        } else {
            returns.push(op.return_time);
        }
    }

    let partitions = model.partition(history);
    assert_covers_once(&partitions, history.len());

    let mut searches: Vec<(usize, PartitionSearch<'_, M>)> = partitions
        .iter()
        .enumerate()
        .filter(|(_, indices)| !indices.is_empty())
        .map(|(partition, indices)| {
            let ops = indices.iter().map(|&i| &history[i]).collect();
            let op_returns = indices.iter().map(|&i| returns[i]).collect();
            (partition, PartitionSearch::new(model, ops, op_returns))
        })
        .collect();
    let mut steps_left = limits.steps_max;
    let mut cache = CacheBudget {
        room: limits.cache_entries_max,
        was_full: false,
    };
    // Round robin in fixed slices: a partition that fails fast is found even when an
    // earlier one needs a long search, and the schedule stays deterministic.
    let mut at = 0;
    while !searches.is_empty() {
        at %= searches.len();
        let (partition, search) = &mut searches[at];
        if steps_left == 0 {
            return CheckOutcome::Unknown {
                reason: UnknownReason::StepsExhausted {
                    steps_max: limits.steps_max,
                    partition: *partition,
                    cache_was_full: cache.was_full,
                },
            };
        }
        let (progress, used) = search.run(steps_left.min(SLICE_STEPS), &mut cache);
        steps_left -= used;
        match progress {
            Progress::Running => at += 1,
            Progress::Linearizable => {
                cache.room += search.cache_len();
                searches.remove(at);
            }
            Progress::Violation => {
                let (ops, op_returns) = search.operations();
                let (prefix, state) = search.violation();
                let violation = Violation {
                    model,
                    ops,
                    returns: op_returns,
                    indices: &partitions[*partition],
                    prefix,
                    state,
                };
                return violation.into_outcome(*partition);
            }
        }
    }
    CheckOutcome::Linearizable
}

/// Steps a partition may take before the next one gets its turn.
const SLICE_STEPS: u64 = 10_000;

/// Asserts the [`Model::partition`] contract: every index in `0..len` exactly once.
fn assert_covers_once(partitions: &[Vec<usize>], len: usize) {
    let mut seen = vec![false; len];
    for &index in partitions.iter().flatten() {
        assert!(
            index < len,
            "Model::partition returned index {index} for a history of {len} operations"
        );
        assert!(
            !seen[index],
            "Model::partition returned index {index} twice"
        );
        seen[index] = true;
    }
    if let Some(missing) = seen.iter().position(|&s| !s) {
        panic!("Model::partition left out operation {missing}");
    }
}

/// How many operations of the prefix, and how many candidates, an explanation shows.
const EXPLAIN_PREFIX_TAIL_MAX: usize = 5;
const EXPLAIN_CANDIDATES_MAX: usize = 4;

/// A failed partition, in partition-local indices, ready to be explained.
struct Violation<'a, M: Model> {
    model: &'a M,
    ops: &'a [&'a Operation<M::Input, M::Output>],
    returns: &'a [u64],
    /// Partition-local index to history index.
    indices: &'a [usize],
    prefix: &'a [usize],
    state: &'a M::State,
}

impl<M: Model> Violation<'_, M> {
    fn into_outcome(self, partition: usize) -> CheckOutcome {
        use fmt::Write as _;

        let candidates = self.next_candidates();
        let mut text = format!(
            "partition {partition} ({} operations): the longest linearizable prefix has {} operations",
            self.ops.len(),
            self.prefix.len()
        );
        let tail_start = self.prefix.len().saturating_sub(EXPLAIN_PREFIX_TAIL_MAX);
        if tail_start > 0 {
            let _ = write!(text, ", ending with");
        }
        for &local in &self.prefix[tail_start..] {
            let _ = write!(text, "\n  {}", self.describe(local));
        }
        let _ = write!(
            text,
            "\nstate after it: {:?}\nnone of the {} operations that could come next fits:",
            self.state,
            candidates.len()
        );
        for &local in candidates.iter().take(EXPLAIN_CANDIDATES_MAX) {
            let op = self.ops[local];
            let why = match self.model.step(self.state, &op.input, &op.output) {
                None => "impossible from this state",
                Some(_) => "possible here, but no order of the rest fits after it",
            };
            let _ = write!(text, "\n  {}: {why}", self.describe(local));
        }
        if candidates.len() > EXPLAIN_CANDIDATES_MAX {
            let _ = write!(
                text,
                "\n  ... and {} more",
                candidates.len() - EXPLAIN_CANDIDATES_MAX
            );
        }
        CheckOutcome::NotLinearizable {
            partition,
            longest_prefix: self.prefix.iter().map(|&l| self.indices[l]).collect(),
            next_candidates: candidates.iter().map(|&l| self.indices[l]).collect(),
            explanation: text,
        }
    }

    /// Operations outside the prefix called no later than the earliest return outside
    /// it: exactly the calls the search could try first after the prefix.
    fn next_candidates(&self) -> Vec<usize> {
        let mut in_prefix = vec![false; self.ops.len()];
        for &local in self.prefix {
            in_prefix[local] = true;
        }
        let rest = (0..self.ops.len()).filter(|&l| !in_prefix[l]);
        let Some(first_return) = rest.clone().map(|l| self.returns[l]).min() else {
            return Vec::new();
        };
        rest.filter(|&l| self.ops[l].call <= first_return).collect()
    }

    fn describe(&self, local: usize) -> String {
        let op = self.ops[local];
        let returned = match self.returns[local] {
            u64::MAX => "?".to_owned(),
            time => time.to_string(),
        };
        format!(
            "#{} client {} [{}, {returned}] {:?} -> {:?}",
            self.indices[local], op.client_id, op.call, op.input, op.output
        )
    }
}
