//! Parsers for the history formats of the test vectors (`tests/vectors/linearizability/`)
//! and for tessera's own (`jsonl`: what `tessera workload` records).
//!
//! Both take untrusted text: every problem is a [`ParseError`] naming the line, never a
//! panic. Times of the operations they produce are line numbers, so an explanation from
//! [`check`](super::check) points straight into the file.

mod edn;
mod jepsen;
mod jsonl;
mod kv;

pub use jepsen::parse_jepsen_etcd_log;
pub use jsonl::{parse_history_jsonl, EventType, Function, HistoryEvent, ParsedHistory};
pub use kv::parse_porcupine_kv;

/// Why a history text was rejected. Lines are numbered from 1.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ParseError {
    /// The line is not in the format.
    #[error("line {line}: expected {expected}, found `{found}`")]
    Syntax {
        /// The line.
        line: usize,
        /// What the format requires at that point.
        expected: &'static str,
        /// What is there instead (shortened).
        found: String,
    },
    /// A completion (`ok`, `fail`, `info`) for a process with no pending operation.
    #[error("line {line}: process {process} completes an operation it never invoked")]
    CompletionWithoutInvocation {
        /// The line of the completion.
        line: usize,
        /// The process.
        process: u64,
    },
    /// An invocation by a process whose previous operation has not completed.
    #[error(
        "line {line}: process {process} invokes an operation while its operation from line {pending_line} is pending"
    )]
    InvocationWhilePending {
        /// The line of the new invocation.
        line: usize,
        /// The process.
        process: u64,
        /// The line of the pending invocation.
        pending_line: usize,
    },
    /// A completion that does not match the process's pending invocation.
    #[error(
        "line {line}: process {process} completes `{found}` but its pending operation (line {pending_line}) is `{expected}`"
    )]
    CompletionMismatch {
        /// The line of the completion.
        line: usize,
        /// The process.
        process: u64,
        /// The line of the pending invocation.
        pending_line: usize,
        /// The pending operation.
        expected: String,
        /// The completed operation.
        found: String,
    },
}

/// Longest excerpt of the input an error carries.
const FOUND_CHARS_MAX: usize = 40;

/// An excerpt of untrusted text for an error message, at most [`FOUND_CHARS_MAX`] chars.
fn excerpt(text: &str) -> String {
    let mut chars = text.chars();
    let mut out: String = chars.by_ref().take(FOUND_CHARS_MAX).collect();
    if chars.next().is_some() {
        out.push('…');
    }
    if out.is_empty() {
        out.push_str("end of line");
    }
    out
}

fn syntax(line: usize, expected: &'static str, found: &str) -> ParseError {
    ParseError::Syntax {
        line,
        expected,
        found: excerpt(found),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn excerpt_is_bounded_and_char_safe() {
        let long = "é".repeat(100);
        let e = excerpt(&long);
        assert_eq!(e.chars().count(), FOUND_CHARS_MAX + 1);
        assert!(e.ends_with('…'));
        assert_eq!(excerpt(""), "end of line");
        assert_eq!(excerpt("abc"), "abc");
    }
}
