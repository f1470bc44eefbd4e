//! tessera's own history format: what `tessera workload` records and `tessera lincheck`
//! checks, documented in `docs/history-format.md` so that users can check their own.
//!
//! One JSON object per line ([`HistoryEvent`]): a client's invocation of an operation on
//! the key-value store, then its completion (`ok`, `fail`: it did not happen, `info`: the
//! client does not know). Times are the recorder's monotonic clock, in any unit shared by
//! all clients (nanoseconds from `tessera workload`); the checker only compares them.
use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::{excerpt, ParseError};
use crate::lincheck::kv::{KvInput, KvOutput};
use crate::lincheck::model::{Operation, RETURN_TIME_UNKNOWN};

/// What happened at one point of a client's operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EventType {
    /// The client sent the operation.
    Invoke,
    /// It took effect, with the recorded result.
    Ok,
    /// It certainly did not take effect (refused before it could).
    Fail,
    /// The client does not know whether it took effect (timeout, lost connection).
    Info,
}

/// The operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Function {
    /// Read `key`: the completion's `value` is what was read (`null`: missing).
    Get,
    /// Set `key` to `value`.
    Put,
    /// Append `value` to `key` (a missing key counts as empty).
    Append,
    /// Remove `key`.
    Delete,
    /// Set `key` to `value` if it holds `expected` (`null`: if it is missing); the
    /// completion's `swapped` says whether it did.
    Cas,
}

/// One line of a history.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryEvent {
    /// The client (one operation at a time per process).
    pub process: u64,
    /// Invocation or which kind of completion (JSON field `type`).
    #[serde(rename = "type")]
    pub kind: EventType,
    /// The operation; a completion repeats its invocation's.
    pub f: Function,
    /// The key operated on; a completion repeats its invocation's.
    pub key: String,
    /// Put/append/cas: the value written; a get's completion: the value read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    /// Cas: the value required (absent or `null`: the key must be missing).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expected: Option<String>,
    /// A cas's `ok` completion: whether it swapped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub swapped: Option<bool>,
    /// The recorder's monotonic clock when it happened.
    pub time: u64,
}

/// A parsed history, and where each operation came from.
#[derive(Debug, Clone, Default)]
pub struct ParsedHistory {
    /// The operations to check: completed ones in completion order (`fail`ed ones
    /// dropped), then those never completed, with an unknown outcome.
    pub operations: Vec<Operation<KvInput, KvOutput>>,
    /// For each operation, at the same position: the line (from 1) of its invocation, and
    /// of its completion (`None` when it never completed).
    pub lines: Vec<(usize, Option<usize>)>,
}

impl HistoryEvent {
    /// The operation this invocation asks for.
    fn input(&self, line: usize, text: &str) -> Result<KvInput, ParseError> {
        let key = self.key.as_bytes().to_vec();
        let value = |what: &'static str| {
            self.value
                .as_ref()
                .map(|v| v.as_bytes().to_vec())
                .ok_or_else(|| ParseError::Syntax {
                    line,
                    expected: what,
                    found: excerpt(text),
                })
        };
        Ok(match self.f {
            Function::Get => KvInput::Get { key },
            Function::Delete => KvInput::Delete { key },
            Function::Put => KvInput::Put {
                key,
                value: value("a \"value\" for a put")?,
            },
            Function::Append => KvInput::Append {
                key,
                value: value("a \"value\" for an append")?,
            },
            Function::Cas => KvInput::Cas {
                key,
                expected: self.expected.as_ref().map(|v| v.as_bytes().to_vec()),
                new: value("a \"value\" for a cas")?,
            },
        })
    }
}

/// Parses a history in tessera's format (see the module docs) into operations for
/// [`KvModel::new`](crate::lincheck::kv::KvModel::new), which tells a missing key from an
/// empty value. Blank lines are skipped. An invocation still pending at the end, and an
/// `info` completion, give an unknown outcome; `fail` drops the operation.
pub fn parse_history_jsonl(text: &str) -> Result<ParsedHistory, ParseError> {
    let mut out = ParsedHistory::default();
    let mut pending: BTreeMap<u64, (usize, HistoryEvent, KvInput)> = BTreeMap::new();
    for (number, line_text) in text.lines().enumerate() {
        let line = number + 1;
        if line_text.trim().is_empty() {
            continue;
        }
        let event: HistoryEvent =
            serde_json::from_str(line_text).map_err(|e| ParseError::Syntax {
                line,
                expected: "a history event (see docs/history-format.md)",
                found: excerpt(&e.to_string()),
            })?;
        if event.kind == EventType::Invoke {
            if let Some((pending_line, ..)) = pending.get(&event.process) {
                return Err(ParseError::InvocationWhilePending {
                    line,
                    process: event.process,
                    pending_line: *pending_line,
                });
            }
            let input = event.input(line, line_text)?;
            pending.insert(event.process, (line, event, input));
            continue;
        }
        let Some((call_line, invoked, input)) = pending.remove(&event.process) else {
            return Err(ParseError::CompletionWithoutInvocation {
                line,
                process: event.process,
            });
        };
        if event.f != invoked.f || event.key != invoked.key {
            return Err(ParseError::CompletionMismatch {
                line,
                process: event.process,
                pending_line: call_line,
                expected: format!("{:?} of key {:?}", invoked.f, invoked.key),
                found: format!("{:?} of key {:?}", event.f, event.key),
            });
        }
        let (output, return_time) = match event.kind {
            EventType::Fail => continue,
            EventType::Info => (KvOutput::Unknown, RETURN_TIME_UNKNOWN),
            EventType::Invoke => unreachable!("handled above"),
            EventType::Ok => {
                let output = match event.f {
                    Function::Get => {
                        KvOutput::Get(event.value.as_ref().map(|v| v.as_bytes().to_vec()))
                    }
                    Function::Put => KvOutput::Put,
                    Function::Append => KvOutput::Append,
                    Function::Delete => KvOutput::Delete,
                    Function::Cas => {
                        KvOutput::Cas(event.swapped.ok_or_else(|| ParseError::Syntax {
                            line,
                            expected: "\"swapped\": true or false in a cas's ok",
                            found: excerpt(line_text),
                        })?)
                    }
                };
                (output, event.time)
            }
        };
        out.operations.push(Operation {
            client_id: event.process,
            input,
            call: invoked.time,
            output,
            return_time,
        });
        out.lines.push((
            call_line,
            (event.kind == EventType::Ok || event.kind == EventType::Info).then_some(line),
        ));
    }
    for (process, (call_line, invoked, input)) in pending {
        out.operations.push(Operation {
            client_id: process,
            input,
            call: invoked.time,
            output: KvOutput::Unknown,
            return_time: RETURN_TIME_UNKNOWN,
        });
        out.lines.push((call_line, None));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lincheck::kv::KvModel;
    use crate::lincheck::{check, CheckLimits, CheckOutcome};

    fn verdict(text: &str) -> CheckOutcome {
        let history = parse_history_jsonl(text).expect("parses");
        check(&KvModel::new(), &history.operations, CheckLimits::default())
    }

    #[test]
    fn a_history_of_every_operation_round_trips_and_checks() {
        let text = r#"
{"process":0,"type":"invoke","f":"put","key":"k","value":"a","time":1}
{"process":0,"type":"ok","f":"put","key":"k","value":"a","time":2}
{"process":1,"type":"invoke","f":"cas","key":"k","expected":"a","value":"b","time":3}
{"process":2,"type":"invoke","f":"get","key":"k","time":4}
{"process":1,"type":"ok","f":"cas","key":"k","expected":"a","value":"b","swapped":true,"time":5}
{"process":2,"type":"ok","f":"get","key":"k","value":"a","time":6}
{"process":0,"type":"invoke","f":"append","key":"k","value":"c","time":7}
{"process":0,"type":"info","f":"append","key":"k","time":8}
{"process":1,"type":"invoke","f":"delete","key":"k","time":9}
{"process":1,"type":"fail","f":"delete","key":"k","time":10}
{"process":2,"type":"invoke","f":"get","key":"missing","time":11}
{"process":2,"type":"ok","f":"get","key":"missing","value":null,"time":12}
{"process":3,"type":"invoke","f":"put","key":"k","value":"never answered","time":13}
"#;
        let history = parse_history_jsonl(text).expect("parses");
        // The failed delete is dropped; the pending put and the append are unknown.
        assert_eq!(history.operations.len(), 6);
        assert_eq!(history.lines[0], (2, Some(3)));
        assert_eq!(history.lines.last(), Some(&(14, None)));
        assert!(verdict(text).is_linearizable(), "{}", verdict(text));
        // Every event written back parses to the same history.
        let rewritten: String = text
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| {
                let event: HistoryEvent = serde_json::from_str(l).expect("event");
                serde_json::to_string(&event).expect("json") + "\n"
            })
            .collect();
        assert_eq!(
            parse_history_jsonl(&rewritten).expect("parses").operations,
            history.operations
        );
    }

    #[test]
    fn a_stale_read_after_an_acknowledged_write_is_not_linearizable() {
        let text = r#"
{"process":0,"type":"invoke","f":"put","key":"k","value":"new","time":1}
{"process":0,"type":"ok","f":"put","key":"k","value":"new","time":2}
{"process":1,"type":"invoke","f":"get","key":"k","time":3}
{"process":1,"type":"ok","f":"get","key":"k","value":null,"time":4}
"#;
        assert!(matches!(
            verdict(text),
            CheckOutcome::NotLinearizable { .. }
        ));
    }

    #[test]
    fn malformed_histories_are_refused_with_the_line() {
        let cases = [
            ("{\"process\":0,\"type\":\"ok\",\"f\":\"get\",\"key\":\"k\",\"time\":1}", "never invoked"),
            ("not json", "line 1"),
            (
                "{\"process\":0,\"type\":\"invoke\",\"f\":\"put\",\"key\":\"k\",\"time\":1}",
                "a \"value\" for a put",
            ),
            (
                "{\"process\":0,\"type\":\"invoke\",\"f\":\"get\",\"key\":\"k\",\"time\":1}\n\
                 {\"process\":0,\"type\":\"invoke\",\"f\":\"get\",\"key\":\"k\",\"time\":2}",
                "line 2",
            ),
            (
                "{\"process\":0,\"type\":\"invoke\",\"f\":\"get\",\"key\":\"k\",\"time\":1}\n\
                 {\"process\":0,\"type\":\"ok\",\"f\":\"put\",\"key\":\"k\",\"time\":2}",
                "completes",
            ),
            (
                "{\"process\":0,\"type\":\"invoke\",\"f\":\"cas\",\"key\":\"k\",\"value\":\"v\",\"time\":1}\n\
                 {\"process\":0,\"type\":\"ok\",\"f\":\"cas\",\"key\":\"k\",\"time\":2}",
                "swapped",
            ),
        ];
        for (text, needle) in cases {
            let err = parse_history_jsonl(text).expect_err(text).to_string();
            assert!(err.contains(needle), "{text}: {err}");
        }
    }
}
