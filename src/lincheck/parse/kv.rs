//! Porcupine's key-value histories (`kv/cNN-ok.txt`, `kv/cNN-bad.txt`).

use std::collections::BTreeMap;

use super::edn::{parse_flat_map, Value};
use super::{syntax, ParseError};
use crate::lincheck::kv::{KvInput, KvOutput};
use crate::lincheck::model::{Operation, RETURN_TIME_UNKNOWN};

/// Parses a Porcupine key-value history into a history for [`KvModel`].
///
/// One EDN map per line, `{:process P, :type T, :f F, :key "K", :value V}`, with T one of
/// `:invoke`, `:ok`, `:fail`, `:info` and F one of `:get`, `:put`, `:append`; blank lines
/// are skipped, other fields ignored. A get's invocation carries `nil`, its `ok` the
/// value read; a put's or append's `ok` repeats the invoked value.
///
/// That format has no missing keys: a missing key reads as `""`. A get that returned
/// `""` (or `nil`) becomes `KvOutput::Get(None)`; check the history with
/// [`KvModel::absent_equals_empty`], which also treats a put of `""` as a delete.
/// `fail` means the operation did not happen and drops it; `info` and an invocation
/// still pending at the end give [`KvOutput::Unknown`](crate::lincheck::kv::KvOutput::Unknown). Times are line numbers.
///
/// [`KvModel`]: crate::lincheck::kv::KvModel
/// [`KvModel::absent_equals_empty`]: crate::lincheck::kv::KvModel::absent_equals_empty
pub fn parse_porcupine_kv(text: &str) -> Result<Vec<Operation<KvInput, KvOutput>>, ParseError> {
    let mut history = Vec::new();
    let mut pending: BTreeMap<u64, Pending> = BTreeMap::new();
    for (number, line_text) in text.lines().enumerate() {
        let line = number + 1;
        if line_text.trim().is_empty() {
            continue;
        }
        let event = Event::parse(line_text, line)?;
        if event.kind == "invoke" {
            let input = event.input(line)?;
            if let Some(previous) = pending.get(&event.process) {
                return Err(ParseError::InvocationWhilePending {
                    line,
                    process: event.process,
                    pending_line: previous.line,
                });
            }
            pending.insert(event.process, Pending { line, input });
            continue;
        }
        let Some(invoked) = pending.remove(&event.process) else {
            return Err(ParseError::CompletionWithoutInvocation {
                line,
                process: event.process,
            });
        };
        let mismatch = |found: String| ParseError::CompletionMismatch {
            line,
            process: event.process,
            pending_line: invoked.line,
            expected: format!("{:?}", invoked.input),
            found,
        };
        let same_operation =
            event.f == function_of(&invoked.input) && event.key.as_slice() == invoked.input.key();
        if !same_operation {
            return Err(mismatch(format!(
                "{} of key {:?}",
                event.f,
                event.key.escape_ascii().to_string()
            )));
        }
        let (output, return_time) = match event.kind {
            "fail" => continue,
            "info" => (KvOutput::Unknown, RETURN_TIME_UNKNOWN),
            _ => {
                let output = match &invoked.input {
                    KvInput::Get { .. } => match &event.value {
                        Value::Nil => KvOutput::Get(None),
                        Value::Str(read) if read.is_empty() => KvOutput::Get(None),
                        Value::Str(read) => KvOutput::Get(Some(read.as_bytes().to_vec())),
                        _ => {
                            return Err(syntax(
                                line,
                                "a string or nil as the value read",
                                line_text,
                            ))
                        }
                    },
                    invoked_input => {
                        let repeated = event.input(line)?;
                        if repeated != *invoked_input {
                            return Err(mismatch(format!("{repeated:?}")));
                        }
                        match repeated {
                            KvInput::Append { .. } => KvOutput::Append,
                            _ => KvOutput::Put,
                        }
                    }
                };
                (output, line as u64)
            }
        };
        history.push(Operation {
            client_id: event.process,
            input: invoked.input,
            call: invoked.line as u64,
            output,
            return_time,
        });
    }
    for (process, invoked) in pending {
        history.push(Operation {
            client_id: process,
            input: invoked.input,
            call: invoked.line as u64,
            output: KvOutput::Unknown,
            return_time: RETURN_TIME_UNKNOWN,
        });
    }
    Ok(history)
}

struct Pending {
    line: usize,
    input: KvInput,
}

/// One line, fields checked for presence and type but not yet for meaning.
struct Event<'a> {
    process: u64,
    /// `invoke`, `ok`, `fail` or `info`.
    kind: &'a str,
    /// `get`, `put` or `append`.
    f: &'a str,
    key: Vec<u8>,
    value: Value<'a>,
}

impl<'a> Event<'a> {
    fn parse(text: &'a str, line: usize) -> Result<Self, ParseError> {
        let entries = parse_flat_map(text, line)?;
        let mut fields: BTreeMap<&str, Value<'_>> = BTreeMap::new();
        for (name, value) in entries {
            if fields.insert(name, value).is_some() {
                return Err(syntax(line, "each field at most once", name));
            }
        }
        let mut take = |name: &'static str, expected: &'static str| {
            fields
                .remove(name)
                .ok_or_else(|| syntax(line, expected, text))
        };
        let process = match take("process", "a `:process` field")? {
            Value::Int(n) => u64::try_from(n).ok(),
            _ => None,
        }
        .ok_or_else(|| syntax(line, "a non-negative integer `:process`", text))?;
        let kind = match take("type", "a `:type` field")? {
            Value::Keyword(k @ ("invoke" | "ok" | "fail" | "info")) => k,
            _ => {
                return Err(syntax(
                    line,
                    "`:type` `:invoke`, `:ok`, `:fail` or `:info`",
                    text,
                ))
            }
        };
        let f = match take("f", "an `:f` field")? {
            Value::Keyword(f @ ("get" | "put" | "append")) => f,
            _ => return Err(syntax(line, "`:f` `:get`, `:put` or `:append`", text)),
        };
        let key = match take("key", "a `:key` field")? {
            Value::Str(key) => key.into_bytes(),
            _ => return Err(syntax(line, "a string `:key`", text)),
        };
        let value = take("value", "a `:value` field")?;
        Ok(Self {
            process,
            kind,
            f,
            key,
            value,
        })
    }

    /// The input an invocation (or an `ok` repeating it) describes.
    fn input(&self, line: usize) -> Result<KvInput, ParseError> {
        let key = self.key.clone();
        let value = match &self.value {
            Value::Str(value) => Some(value.as_bytes().to_vec()),
            Value::Nil => None,
            _ => return Err(syntax(line, "a string or nil `:value`", self.f)),
        };
        match (self.f, value) {
            ("get", None) => Ok(KvInput::Get { key }),
            ("put", Some(value)) => Ok(KvInput::Put { key, value }),
            ("append", Some(value)) => Ok(KvInput::Append { key, value }),
            ("get", Some(_)) => Err(syntax(line, "nil as the value of a get invocation", self.f)),
            _ => Err(syntax(line, "a string value for a put or append", self.f)),
        }
    }
}

fn function_of(input: &KvInput) -> &'static str {
    match input {
        KvInput::Get { .. } => "get",
        KvInput::Put { .. } => "put",
        KvInput::Append { .. } => "append",
        KvInput::Delete { .. } => "delete",
        KvInput::Cas { .. } => "cas",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_every_kind_of_line() {
        let text = r#"{:process 0, :type :invoke, :f :append, :key "0", :value "x 0 0 y"}
{:process 1, :type :invoke, :f :get, :key "0", :value nil}

{:process 0, :type :ok, :f :append, :key "0", :value "x 0 0 y"}
{:process 1, :type :ok, :f :get, :key "0", :value ""}
{:process 1, :type :invoke, :f :get, :key "1", :value nil}
{:process 1, :type :ok, :f :get, :key "1", :value "ab"}
{:process 2, :type :invoke, :f :put, :key "2", :value "p"}
{:process 2, :type :info, :f :put, :key "2", :value "p"}
{:process 3, :type :invoke, :f :put, :key "3", :value "q"}
{:process 3, :type :fail, :f :put, :key "3", :value "q"}
{:process 4, :type :invoke, :f :get, :key "4", :value nil}
"#;
        let op = |client_id, input, call, output, return_time| Operation {
            client_id,
            input,
            call,
            output,
            return_time,
        };
        let key = |k: &str| k.as_bytes().to_vec();
        assert_eq!(
            parse_porcupine_kv(text),
            Ok(vec![
                op(
                    0,
                    KvInput::Append {
                        key: key("0"),
                        value: key("x 0 0 y")
                    },
                    1,
                    KvOutput::Append,
                    4
                ),
                op(1, KvInput::Get { key: key("0") }, 2, KvOutput::Get(None), 5),
                op(
                    1,
                    KvInput::Get { key: key("1") },
                    6,
                    KvOutput::Get(Some(key("ab"))),
                    7
                ),
                op(
                    2,
                    KvInput::Put {
                        key: key("2"),
                        value: key("p")
                    },
                    8,
                    KvOutput::Unknown,
                    u64::MAX
                ),
                op(
                    4,
                    KvInput::Get { key: key("4") },
                    12,
                    KvOutput::Unknown,
                    u64::MAX
                ),
            ])
        );
    }

    #[test]
    fn errors_name_the_line() {
        let invoke = r#"{:process 0, :type :invoke, :f :put, :key "k", :value "v"}"#;
        let cases = [
            (format!("{invoke}\n{invoke}"), "line 2: process 0 invokes"),
            (
                r#"{:process 0, :type :ok, :f :get, :key "k", :value ""}"#.to_owned(),
                "line 1: process 0 completes an operation it never invoked",
            ),
            (
                format!(
                    "{invoke}\n{}",
                    r#"{:process 0, :type :ok, :f :put, :key "j", :value "v"}"#
                ),
                "line 2: process 0 completes `put of key",
            ),
            (
                format!(
                    "{invoke}\n{}",
                    r#"{:process 0, :type :ok, :f :put, :key "k", :value "w"}"#
                ),
                "line 2: process 0 completes `Put { key: \"k\", value: \"w\" }`",
            ),
            (
                r#"{:process -1, :type :invoke, :f :put, :key "k", :value "v"}"#.to_owned(),
                "line 1: expected a non-negative integer `:process`",
            ),
            (
                r#"{:process 0, :type :invoke, :f :cas, :key "k", :value "v"}"#.to_owned(),
                "line 1: expected `:f` `:get`",
            ),
            (
                r#"{:process 0, :process 0, :type :invoke, :f :get, :key "k", :value nil}"#
                    .to_owned(),
                "line 1: expected each field at most once",
            ),
            (
                r#"{:process 0, :type :invoke, :f :get, :key "k"}"#.to_owned(),
                "line 1: expected a `:value` field",
            ),
            (
                r#"{:process 0, :type :invoke, :f :get, :key "k", :value "v"}"#.to_owned(),
                "line 1: expected nil as the value of a get",
            ),
            ("\n\nnot edn".to_owned(), "line 3: expected `{`"),
        ];
        for (text, prefix) in cases {
            match parse_porcupine_kv(&text) {
                Err(e) => assert!(e.to_string().starts_with(prefix), "{text:?}: {e}"),
                Ok(h) => panic!("{text:?} parsed as {h:?}"),
            }
        }
    }
}
