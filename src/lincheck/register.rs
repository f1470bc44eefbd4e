//! A single integer register, initially nil: the model of Jepsen's etcd register test.

use super::model::Model;

/// What a client asks the register.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RegisterInput {
    /// Read the value.
    Read,
    /// Set the value.
    Write(i64),
    /// Set the value to `new` if it is `expected` (a nil register never matches).
    Cas {
        /// The value required for the swap.
        expected: i64,
        /// The value after a successful swap.
        new: i64,
    },
}

/// What the client got back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RegisterOutput {
    /// The value read; `None` for nil.
    Read(Option<i64>),
    /// The write was applied.
    Write,
    /// The compare-and-swap completed; `true` if it swapped (Jepsen `:ok`), `false` if
    /// the value did not match (Jepsen `:fail`).
    Cas(bool),
    /// The outcome is unknown (Jepsen `:info`, or still pending at the end of the log).
    Unknown,
}

/// The register specification; state `None` is nil. One partition.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RegisterModel;

impl Model for RegisterModel {
    type State = Option<i64>;
    type Input = RegisterInput;
    type Output = RegisterOutput;

    fn init(&self) -> Option<i64> {
        None
    }

    fn step(
        &self,
        state: &Option<i64>,
        input: &RegisterInput,
        output: &RegisterOutput,
    ) -> Option<Option<i64>> {
        let unknown = *output == RegisterOutput::Unknown;
        match *input {
            RegisterInput::Read => match *output {
                RegisterOutput::Read(read) if read == *state => Some(*state),
                _ if unknown => Some(*state),
                _ => None,
            },
            RegisterInput::Write(value) => {
                (unknown || *output == RegisterOutput::Write).then_some(Some(value))
            }
            RegisterInput::Cas { expected, new } => {
                let matches = *state == Some(expected);
                let consistent = match *output {
                    RegisterOutput::Cas(swapped) => swapped == matches,
                    _ => unknown,
                };
                consistent.then_some(if matches { Some(new) } else { *state })
            }
        }
    }

    fn output_is_unknown(&self, output: &RegisterOutput) -> bool {
        *output == RegisterOutput::Unknown
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps() {
        let m = RegisterModel;
        let cas = RegisterInput::Cas {
            expected: 1,
            new: 2,
        };
        assert_eq!(
            m.step(&None, &RegisterInput::Read, &RegisterOutput::Read(None)),
            Some(None)
        );
        assert_eq!(
            m.step(&None, &RegisterInput::Read, &RegisterOutput::Read(Some(0))),
            None
        );
        assert_eq!(
            m.step(&None, &RegisterInput::Write(1), &RegisterOutput::Write),
            Some(Some(1))
        );
        assert_eq!(
            m.step(&None, &RegisterInput::Write(1), &RegisterOutput::Cas(true)),
            None
        );
        assert_eq!(
            m.step(&Some(1), &cas, &RegisterOutput::Cas(true)),
            Some(Some(2))
        );
        assert_eq!(m.step(&Some(1), &cas, &RegisterOutput::Cas(false)), None);
        assert_eq!(m.step(&None, &cas, &RegisterOutput::Cas(false)), Some(None));
        assert_eq!(m.step(&None, &cas, &RegisterOutput::Cas(true)), None);
        assert_eq!(
            m.step(&Some(1), &cas, &RegisterOutput::Unknown),
            Some(Some(2))
        );
        assert_eq!(
            m.step(&Some(3), &cas, &RegisterOutput::Unknown),
            Some(Some(3))
        );
        assert_eq!(
            m.step(&Some(3), &RegisterInput::Read, &RegisterOutput::Unknown),
            Some(Some(3))
        );
    }
}
