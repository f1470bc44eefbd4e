//! Hand-made histories (each positive case with its negative twin), limits, and property
//! tests against a reference store and a brute-force checker.

use std::collections::BTreeMap;

use proptest::prelude::*;

use super::kv::{KvInput, KvModel, KvOutput};
use super::register::{RegisterInput, RegisterModel, RegisterOutput};
use super::*;

type KvOp = Operation<KvInput, KvOutput>;

fn op<I, O>(client_id: u64, call: u64, return_time: u64, input: I, output: O) -> Operation<I, O> {
    Operation {
        client_id,
        input,
        call,
        output,
        return_time,
    }
}

fn bytes(text: &str) -> Vec<u8> {
    text.as_bytes().to_vec()
}

fn get(client: u64, call: u64, ret: u64, key: &str, read: Option<&str>) -> KvOp {
    let input = KvInput::Get { key: bytes(key) };
    op(client, call, ret, input, KvOutput::Get(read.map(bytes)))
}

fn put(client: u64, call: u64, ret: u64, key: &str, value: &str) -> KvOp {
    let input = KvInput::Put {
        key: bytes(key),
        value: bytes(value),
    };
    op(client, call, ret, input, KvOutput::Put)
}

fn put_unknown(client: u64, call: u64, key: &str, value: &str) -> KvOp {
    let input = KvInput::Put {
        key: bytes(key),
        value: bytes(value),
    };
    op(client, call, RETURN_TIME_UNKNOWN, input, KvOutput::Unknown)
}

fn cas(client: u64, call: u64, ret: u64, expected: Option<&str>, new: &str, swapped: bool) -> KvOp {
    let input = KvInput::Cas {
        key: bytes("k"),
        expected: expected.map(bytes),
        new: bytes(new),
    };
    op(client, call, ret, input, KvOutput::Cas(swapped))
}

fn check_kv(history: &[KvOp]) -> CheckOutcome {
    check(&KvModel::new(), history, CheckLimits::default())
}

#[track_caller]
fn assert_linearizable(history: &[KvOp]) {
    let outcome = check_kv(history);
    assert_eq!(outcome, CheckOutcome::Linearizable, "{history:#?}");
}

#[track_caller]
fn assert_not_linearizable(history: &[KvOp]) -> (usize, Vec<usize>, Vec<usize>, String) {
    match check_kv(history) {
        CheckOutcome::NotLinearizable {
            partition,
            longest_prefix,
            next_candidates,
            explanation,
        } => (partition, longest_prefix, next_candidates, explanation),
        other => panic!("expected a violation, got {other:?} for {history:#?}"),
    }
}

#[test]
fn empty_history_is_linearizable() {
    assert_linearizable(&[]);
}

#[test]
fn stale_read_after_completed_write_is_rejected() {
    let history = [
        put(1, 0, 10, "k", "a"),
        put(1, 20, 30, "k", "b"),
        get(2, 40, 50, "k", Some("a")),
    ];
    let (partition, prefix, candidates, explanation) = assert_not_linearizable(&history);
    assert_eq!(partition, 0);
    assert_eq!(prefix, vec![0, 1]);
    assert_eq!(candidates, vec![2]);
    assert!(
        explanation.contains(
            r#"#2 client 2 [40, 50] Get { key: "k" } -> Get(Some("a")): impossible from this state"#
        ),
        "{explanation}"
    );
    assert!(
        explanation.contains(r#"state after it: "b""#),
        "{explanation}"
    );
}

#[test]
fn read_concurrent_with_a_write_may_see_the_old_value() {
    assert_linearizable(&[
        put(1, 0, 10, "k", "a"),
        put(1, 20, 30, "k", "b"),
        get(2, 25, 50, "k", Some("a")),
    ]);
}

#[test]
fn concurrent_writes_are_accepted_in_either_order() {
    for last in ["a", "b"] {
        assert_linearizable(&[
            put(1, 0, 10, "k", "a"),
            put(2, 5, 15, "k", "b"),
            get(3, 20, 30, "k", Some(last)),
            get(3, 40, 50, "k", Some(last)),
        ]);
    }
}

#[test]
fn concurrent_writes_cannot_be_seen_in_both_orders() {
    assert_not_linearizable(&[
        put(1, 0, 10, "k", "a"),
        put(2, 5, 15, "k", "b"),
        get(3, 20, 30, "k", Some("a")),
        get(3, 40, 50, "k", Some("b")),
    ]);
}

#[test]
fn unknown_write_that_took_effect_is_accepted() {
    assert_linearizable(&[
        put(1, 0, 10, "k", "a"),
        put_unknown(2, 20, "k", "b"),
        get(3, 100, 110, "k", Some("b")),
        get(3, 120, 130, "k", Some("b")),
    ]);
}

#[test]
fn unknown_write_that_did_not_take_effect_is_accepted() {
    assert_linearizable(&[
        put(1, 0, 10, "k", "a"),
        put_unknown(2, 20, "k", "b"),
        get(3, 100, 110, "k", Some("a")),
    ]);
}

#[test]
fn unknown_write_cannot_take_effect_and_then_be_undone() {
    assert_not_linearizable(&[
        put(1, 0, 10, "k", "a"),
        put_unknown(2, 20, "k", "b"),
        get(3, 100, 110, "k", Some("b")),
        get(3, 120, 130, "k", Some("a")),
    ]);
}

#[test]
fn unknown_write_cannot_take_effect_before_its_call() {
    assert_not_linearizable(&[get(3, 0, 10, "k", Some("b")), put_unknown(2, 20, "k", "b")]);
}

#[test]
fn unknown_outcome_ignores_the_recorded_return_time() {
    // The client gave up at 30, but the write may still be applied later.
    let mut late = put_unknown(2, 20, "k", "b");
    late.return_time = 30;
    assert_linearizable(&[
        late,
        get(3, 100, 110, "k", None),
        get(3, 200, 210, "k", Some("b")),
    ]);
}

#[test]
fn lost_acknowledged_write_is_rejected() {
    assert_not_linearizable(&[put(1, 0, 10, "k", "a"), get(2, 20, 30, "k", None)]);
}

#[test]
fn lost_unacknowledged_write_is_accepted() {
    assert_linearizable(&[put_unknown(1, 0, "k", "a"), get(2, 20, 30, "k", None)]);
}

#[test]
fn cas_that_succeeded_twice_on_the_same_expected_value_is_rejected() {
    assert_not_linearizable(&[
        put(1, 0, 10, "k", "0"),
        cas(2, 20, 40, Some("0"), "1", true),
        cas(3, 25, 45, Some("0"), "2", true),
    ]);
}

#[test]
fn cas_pair_where_only_one_succeeded_is_accepted() {
    assert_linearizable(&[
        put(1, 0, 10, "k", "0"),
        cas(2, 20, 40, Some("0"), "1", true),
        cas(3, 25, 45, Some("0"), "2", false),
        get(1, 50, 60, "k", Some("1")),
    ]);
}

#[test]
fn touching_intervals_count_as_concurrent() {
    // The read is called at the write's return time: either order is allowed.
    assert_linearizable(&[put(1, 0, 10, "k", "a"), get(2, 10, 20, "k", None)]);
    assert_not_linearizable(&[put(1, 0, 10, "k", "a"), get(2, 11, 20, "k", None)]);
}

#[test]
fn keys_are_checked_separately_and_the_failing_key_is_named() {
    let history = [
        put(1, 0, 10, "a", "x"),
        put(2, 0, 10, "b", "y"),
        get(1, 20, 30, "a", Some("x")),
        get(2, 20, 30, "b", Some("x")),
    ];
    let (partition, prefix, candidates, explanation) = assert_not_linearizable(&history);
    assert_eq!((partition, prefix, candidates), (1, vec![1], vec![3]));
    assert!(
        explanation.starts_with("partition 1 (2 operations)"),
        "{explanation}"
    );
}

#[test]
fn step_budget_gives_unknown_never_a_verdict() {
    let history = [put(1, 0, 10, "k", "a"), get(2, 20, 30, "k", Some("a"))];
    let limits = CheckLimits {
        steps_max: 1,
        ..CheckLimits::default()
    };
    assert_eq!(
        check(&KvModel::new(), &history, limits),
        CheckOutcome::Unknown {
            reason: UnknownReason::StepsExhausted {
                steps_max: 1,
                partition: 0,
                cache_was_full: false,
            }
        }
    );
    // Two steps: linearize the put, then the get; the list is then empty.
    let enough = CheckLimits {
        steps_max: 2,
        ..limits
    };
    assert_eq!(
        check(&KvModel::new(), &history, enough),
        CheckOutcome::Linearizable
    );
}

#[test]
fn a_full_cache_slows_the_search_but_keeps_it_exact() {
    let history = [
        put(1, 0, 100, "k", "a"),
        put(2, 0, 100, "k", "b"),
        put(3, 0, 100, "k", "c"),
        get(4, 0, 100, "k", Some("b")),
        get(5, 200, 300, "k", Some("a")),
    ];
    let mut rejected = history.clone();
    rejected[4].output = KvOutput::Get(Some(bytes("z")));
    for cache_entries_max in [0, 1, 5, CheckLimits::CACHE_ENTRIES_MAX_DEFAULT] {
        let limits = CheckLimits {
            cache_entries_max,
            ..CheckLimits::default()
        };
        assert_eq!(
            check(&KvModel::new(), &history, limits),
            CheckOutcome::Linearizable
        );
        let outcome = check(&KvModel::new(), &rejected, limits);
        assert!(
            matches!(outcome, CheckOutcome::NotLinearizable { .. }),
            "{outcome:?}"
        );
    }
    let starved = CheckLimits {
        steps_max: 3,
        cache_entries_max: 0,
    };
    assert_eq!(
        check(&KvModel::new(), &rejected, starved).to_string(),
        "undecided: search step budget of 3 exhausted in partition 0 \
         (the search cache had reached its maximum)"
    );
}

#[test]
fn a_fast_failing_partition_is_found_behind_a_slow_one() {
    // Key "a": many concurrent writes and a final read nobody wrote, so proving it
    // non-linearizable means trying every order. Key "b": an immediate violation.
    let mut history: Vec<KvOp> = (0..12)
        .map(|i| put(i, 0, 100, "a", &i.to_string()))
        .collect();
    history.push(get(99, 200, 300, "a", Some("none")));
    history.push(put(100, 0, 10, "b", "x"));
    history.push(get(100, 20, 30, "b", None));
    let limits = CheckLimits {
        steps_max: 100_000,
        cache_entries_max: 0,
    };
    match check(&KvModel::new(), &history, limits) {
        CheckOutcome::NotLinearizable { partition, .. } => assert_eq!(partition, 1),
        other => panic!("{other:?}"),
    }
    // Alone, key "a" does not fit in that budget.
    let outcome = check(&KvModel::new(), &history[..13], limits);
    assert!(
        matches!(outcome, CheckOutcome::Unknown { .. }),
        "{outcome:?}"
    );
}

#[test]
fn return_before_call_is_malformed() {
    let history = [put(1, 0, 10, "k", "a"), get(2, 30, 20, "k", Some("a"))];
    let outcome = check_kv(&history);
    assert_eq!(
        outcome,
        CheckOutcome::Unknown {
            reason: UnknownReason::ReturnBeforeCall {
                index: 1,
                call: 30,
                return_time: 20
            }
        }
    );
    assert_eq!(
        outcome.to_string(),
        "undecided: operation #1 returns at 20, before its call at 30"
    );
}

#[test]
#[should_panic(expected = "Model::partition left out operation 1")]
fn a_partition_that_drops_operations_is_a_model_bug() {
    struct Dropping;
    impl Model for Dropping {
        type State = ();
        type Input = ();
        type Output = ();
        fn init(&self) {}
        fn step(&self, _: &(), _: &(), _: &()) -> Option<()> {
            Some(())
        }
        fn partition(&self, _: &[Operation<(), ()>]) -> Vec<Vec<usize>> {
            vec![vec![0]]
        }
    }
    let history = [op(0, 0, 1, (), ()), op(0, 2, 3, (), ())];
    let _ = check(&Dropping, &history, CheckLimits::default());
}

// ---------------------------------------------------------------------------------------
// Property tests.

/// The store as a client would see it, written independently of [`KvModel`].
#[derive(Default)]
struct ReferenceStore {
    values: BTreeMap<Vec<u8>, Vec<u8>>,
}

impl ReferenceStore {
    fn apply(&mut self, input: &KvInput) -> KvOutput {
        match input {
            KvInput::Get { key } => KvOutput::Get(self.values.get(key).cloned()),
            KvInput::Put { key, value } => {
                self.values.insert(key.clone(), value.clone());
                KvOutput::Put
            }
            KvInput::Append { key, value } => {
                self.values
                    .entry(key.clone())
                    .or_default()
                    .extend_from_slice(value);
                KvOutput::Append
            }
            KvInput::Delete { key } => {
                self.values.remove(key);
                KvOutput::Delete
            }
            KvInput::Cas { key, expected, new } => {
                let swapped = self.values.get(key) == expected.as_ref();
                if swapped {
                    self.values.insert(key.clone(), new.clone());
                }
                KvOutput::Cas(swapped)
            }
        }
    }
}

fn key_strategy() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![Just(bytes("a")), Just(bytes("b")), Just(bytes("c"))]
}

fn value_strategy() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        Just(bytes("")),
        Just(bytes("x")),
        Just(bytes("y")),
        Just(bytes("xy"))
    ]
}

fn input_strategy() -> impl Strategy<Value = KvInput> {
    prop_oneof![
        3 => key_strategy().prop_map(|key| KvInput::Get { key }),
        2 => (key_strategy(), value_strategy()).prop_map(|(key, value)| KvInput::Put { key, value }),
        2 => (key_strategy(), value_strategy()).prop_map(|(key, value)| KvInput::Append { key, value }),
        1 => key_strategy().prop_map(|key| KvInput::Delete { key }),
        2 => (key_strategy(), proptest::option::of(value_strategy()), value_strategy())
            .prop_map(|(key, expected, new)| KvInput::Cas { key, expected, new }),
    ]
}

/// What happens to one generated operation.
#[derive(Debug, Clone, Copy)]
enum Fate {
    /// Completed, with its output recorded.
    Known,
    /// Applied, but the client never learned the outcome.
    UnknownApplied,
    /// Never applied, and the client never learned that either.
    UnknownLost,
}

fn fate_strategy() -> impl Strategy<Value = Fate> {
    prop_oneof![
        8 => Just(Fate::Known),
        1 => Just(Fate::UnknownApplied),
        1 => Just(Fate::UnknownLost),
    ]
}

/// Runs `inputs` through the reference store one at a time; operation `k` takes effect
/// at time `100 k + 50`. Each interval is widened around that point by the given
/// amounts, so the sequential order stays a valid linearization.
fn overlapping_history(steps: &[(KvInput, Fate, u64, u64)]) -> Vec<KvOp> {
    let mut store = ReferenceStore::default();
    let mut history = Vec::new();
    for (k, (input, fate, before, after)) in steps.iter().enumerate() {
        let point = 100 * k as u64 + 50;
        let (output, return_time) = match fate {
            Fate::Known => (store.apply(input), point + after),
            Fate::UnknownApplied => {
                let _ = store.apply(input);
                (KvOutput::Unknown, RETURN_TIME_UNKNOWN)
            }
            Fate::UnknownLost => (KvOutput::Unknown, RETURN_TIME_UNKNOWN),
        };
        history.push(op(
            k as u64,
            point - before,
            return_time,
            input.clone(),
            output,
        ));
    }
    history
}

/// A strictly sequential history without unknown outcomes: exactly one linearization.
fn sequential_history(inputs: &[KvInput]) -> Vec<KvOp> {
    let steps: Vec<_> = inputs
        .iter()
        .map(|i| (i.clone(), Fate::Known, 0, 0))
        .collect();
    overlapping_history(&steps)
}

proptest! {
    #[test]
    fn histories_of_the_reference_store_are_accepted(
        steps in proptest::collection::vec(
            (input_strategy(), fate_strategy(), 0u64..=50, 0u64..=250),
            0..40,
        )
    ) {
        let history = overlapping_history(&steps);
        let outcome = check(&KvModel::new(), &history, CheckLimits::default());
        prop_assert_eq!(outcome, CheckOutcome::Linearizable);
    }

    #[test]
    fn a_mutated_read_in_a_sequential_history_is_rejected(
        inputs in proptest::collection::vec(input_strategy(), 1..30),
        pick in any::<proptest::sample::Index>(),
        extra in value_strategy(),
    ) {
        let mut history = sequential_history(&inputs);
        let reads: Vec<usize> = (0..history.len())
            .filter(|&i| matches!(history[i].input, KvInput::Get { .. }))
            .collect();
        prop_assume!(!reads.is_empty());
        let target = reads[pick.index(reads.len())];
        let KvOutput::Get(read) = &history[target].output else {
            unreachable!("a get returns a get output");
        };
        let mutated = match read {
            None => Some(extra),
            Some(value) => {
                let mut longer = value.clone();
                longer.extend_from_slice(b"!");
                Some(longer)
            }
        };
        history[target].output = KvOutput::Get(mutated);
        let outcome = check(&KvModel::new(), &history, CheckLimits::default());
        let rejected = matches!(outcome, CheckOutcome::NotLinearizable { .. });
        prop_assert!(rejected, "{:?}", outcome);
    }

    #[test]
    fn a_flipped_cas_result_in_a_sequential_history_is_rejected(
        inputs in proptest::collection::vec(input_strategy(), 1..30),
        pick in any::<proptest::sample::Index>(),
    ) {
        let mut history = sequential_history(&inputs);
        let swaps: Vec<usize> = (0..history.len())
            .filter(|&i| matches!(history[i].input, KvInput::Cas { .. }))
            .collect();
        prop_assume!(!swaps.is_empty());
        let target = swaps[pick.index(swaps.len())];
        let KvOutput::Cas(swapped) = history[target].output else {
            unreachable!("a cas returns a cas output");
        };
        history[target].output = KvOutput::Cas(!swapped);
        let outcome = check(&KvModel::new(), &history, CheckLimits::default());
        prop_assert!(matches!(outcome, CheckOutcome::NotLinearizable { .. }), "{:?}", outcome);
    }

    #[test]
    fn agrees_with_brute_force_on_small_register_histories(
        raw in proptest::collection::vec(register_op_strategy(), 0..7)
    ) {
        let history: Vec<_> = raw.into_iter().map(|(client, call, len, input, output)| {
            let return_time = if output == RegisterOutput::Unknown {
                RETURN_TIME_UNKNOWN
            } else {
                call + len
            };
            op(client, call, return_time, input, output)
        }).collect();
        let expected = brute_force_linearizable(&history);
        let outcome = check(&RegisterModel, &history, CheckLimits::default());
        match outcome {
            CheckOutcome::Linearizable => prop_assert!(expected, "accepted a non-linearizable history"),
            CheckOutcome::NotLinearizable { .. } => prop_assert!(!expected, "rejected a linearizable history"),
            CheckOutcome::Unknown { reason } => prop_assert!(false, "undecided: {}", reason),
        }
    }
}

fn register_op_strategy() -> impl Strategy<Value = (u64, u64, u64, RegisterInput, RegisterOutput)> {
    let value = 0i64..3;
    let input = prop_oneof![
        Just(RegisterInput::Read),
        value.clone().prop_map(RegisterInput::Write),
        (value.clone(), value.clone())
            .prop_map(|(expected, new)| RegisterInput::Cas { expected, new }),
    ];
    (
        0u64..4,
        0u64..20,
        0u64..8,
        input,
        0u8..10,
        proptest::option::of(value),
    )
        .prop_map(|(client, call, len, input, roll, read)| {
            let output = match (input, roll) {
                (_, 0) => RegisterOutput::Unknown,
                (RegisterInput::Read, _) => RegisterOutput::Read(read),
                (RegisterInput::Write(_), _) => RegisterOutput::Write,
                (RegisterInput::Cas { .. }, roll) => RegisterOutput::Cas(roll % 2 == 0),
            };
            (client, call, len, input, output)
        })
}

/// Linearizability by definition: some total order in which no operation comes after
/// one that was called after it returned, and which the register accepts step by step.
/// Unknown outcomes return at +∞. Exponential; for a handful of operations only.
fn brute_force_linearizable(history: &[Operation<RegisterInput, RegisterOutput>]) -> bool {
    fn returns(op: &Operation<RegisterInput, RegisterOutput>) -> u64 {
        if op.output == RegisterOutput::Unknown {
            u64::MAX
        } else {
            op.return_time
        }
    }
    fn apply(
        state: Option<i64>,
        op: &Operation<RegisterInput, RegisterOutput>,
    ) -> Option<Option<i64>> {
        let unknown = op.output == RegisterOutput::Unknown;
        match (op.input, op.output) {
            (RegisterInput::Read, RegisterOutput::Read(read)) => (read == state).then_some(state),
            (RegisterInput::Read, _) => unknown.then_some(state),
            (RegisterInput::Write(v), RegisterOutput::Write) => Some(Some(v)),
            (RegisterInput::Write(v), _) => unknown.then_some(Some(v)),
            (RegisterInput::Cas { expected, new }, output) => {
                let matches = state == Some(expected);
                let ok = unknown || output == RegisterOutput::Cas(matches);
                ok.then_some(if matches { Some(new) } else { state })
            }
        }
    }
    fn search(
        history: &[Operation<RegisterInput, RegisterOutput>],
        done: &mut Vec<bool>,
        state: Option<i64>,
    ) -> bool {
        if done.iter().all(|&d| d) {
            return true;
        }
        for i in 0..history.len() {
            if done[i] {
                continue;
            }
            let blocked = (0..history.len())
                .any(|j| !done[j] && j != i && returns(&history[j]) < history[i].call);
            if blocked {
                continue;
            }
            if let Some(next) = apply(state, &history[i]) {
                done[i] = true;
                let found = search(history, done, next);
                done[i] = false;
                if found {
                    return true;
                }
            }
        }
        false
    }
    search(history, &mut vec![false; history.len()], None)
}
