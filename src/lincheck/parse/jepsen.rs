//! Jepsen etcd register logs (`jepsen/etcd_NNN.log`).

use std::collections::BTreeMap;

use super::{syntax, ParseError};
use crate::lincheck::model::{Operation, RETURN_TIME_UNKNOWN};
use crate::lincheck::register::{RegisterInput, RegisterOutput};

/// Parses a Jepsen etcd log into a history for [`RegisterModel`].
///
/// Event lines read `INFO  jepsen.util - <process> :<type> :<f> <value>` (tabs or spaces),
/// with type `invoke`, `ok`, `fail` or `info` and f `read`, `write` or `cas`. Other lines,
/// including the nemesis's (`:nemesis` process), are ignored. Mapping:
///
/// - `ok` completes the process's pending operation; a read's value (`nil` or an integer)
///   is what it read, a write's or cas's value must repeat the invocation's.
/// - `fail` on a cas: it completed without swapping. `fail` on a read or write: it did
///   not happen, so it is left out of the history.
/// - `info`, and an invocation still pending at the end: the outcome is unknown
///   ([`RegisterOutput::Unknown`](crate::lincheck::register::RegisterOutput::Unknown)); the value on an `info` line is not checked.
///
/// Call and return times are line numbers.
///
/// [`RegisterModel`]: crate::lincheck::register::RegisterModel
pub fn parse_jepsen_etcd_log(
    text: &str,
) -> Result<Vec<Operation<RegisterInput, RegisterOutput>>, ParseError> {
    let mut history = Vec::new();
    let mut pending: BTreeMap<u64, Pending> = BTreeMap::new();
    for (number, line_text) in text.lines().enumerate() {
        let line = number + 1;
        let Some(event) = parse_event(line_text, line)? else {
            continue;
        };
        let time = line as u64;
        if event.kind == Kind::Invoke {
            let input = invocation_input(&event, line)?;
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
        if event.f != function_of(&invoked.input) {
            return Err(mismatch(format!("{:?} {}", event.f, event.value)));
        }
        let output = match event.kind {
            Kind::Invoke => unreachable!("handled above"),
            Kind::Info => RegisterOutput::Unknown,
            Kind::Fail if event.f != Function::Cas => continue,
            Kind::Ok | Kind::Fail => {
                let swapped = event.kind == Kind::Ok;
                match invoked.input {
                    RegisterInput::Read => RegisterOutput::Read(parse_read_value(&event, line)?),
                    input => {
                        let repeated = invocation_input(&event, line)?;
                        if repeated != input {
                            return Err(mismatch(format!("{repeated:?}")));
                        }
                        match input {
                            RegisterInput::Cas { .. } => RegisterOutput::Cas(swapped),
                            _ => RegisterOutput::Write,
                        }
                    }
                }
            }
        };
        let return_time = match output {
            RegisterOutput::Unknown => RETURN_TIME_UNKNOWN,
            _ => time,
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
            output: RegisterOutput::Unknown,
            return_time: RETURN_TIME_UNKNOWN,
        });
    }
    Ok(history)
}

struct Pending {
    line: usize,
    input: RegisterInput,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Invoke,
    Ok,
    Fail,
    Info,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Function {
    Read,
    Write,
    Cas,
}

struct Event<'a> {
    process: u64,
    kind: Kind,
    f: Function,
    /// Everything after the function, whitespace-normalized.
    value: String,
    /// The raw first value token, for error messages.
    raw: &'a str,
}

fn function_of(input: &RegisterInput) -> Function {
    match input {
        RegisterInput::Read => Function::Read,
        RegisterInput::Write(_) => Function::Write,
        RegisterInput::Cas { .. } => Function::Cas,
    }
}

/// `None` for lines that are not client events.
fn parse_event(text: &str, line: usize) -> Result<Option<Event<'_>>, ParseError> {
    let mut tokens = text.split_whitespace();
    let is_util_line = tokens.next() == Some("INFO")
        && tokens.next() == Some("jepsen.util")
        && tokens.next() == Some("-");
    if !is_util_line {
        return Ok(None);
    }
    let Some(process) = tokens.next() else {
        return Ok(None);
    };
    // Client processes are numbers; `:nemesis` and free-form messages are not events.
    if process.is_empty() || !process.bytes().all(|b| b.is_ascii_digit()) {
        return Ok(None);
    }
    let process = process
        .parse::<u64>()
        .map_err(|_| syntax(line, "a process number that fits in 64 bits", process))?;
    let kind_token = tokens.next().unwrap_or_default();
    let kind = match kind_token {
        ":invoke" => Kind::Invoke,
        ":ok" => Kind::Ok,
        ":fail" => Kind::Fail,
        ":info" => Kind::Info,
        other => return Err(syntax(line, "`:invoke`, `:ok`, `:fail` or `:info`", other)),
    };
    let f_token = tokens.next().unwrap_or_default();
    let f = match f_token {
        ":read" => Function::Read,
        ":write" => Function::Write,
        ":cas" => Function::Cas,
        other => return Err(syntax(line, "`:read`, `:write` or `:cas`", other)),
    };
    let rest: Vec<&str> = tokens.collect();
    Ok(Some(Event {
        process,
        kind,
        f,
        value: rest.join(" "),
        raw: rest.first().copied().unwrap_or_default(),
    }))
}

/// The input an invocation line (or an `ok`/`fail` repeating it) describes.
fn invocation_input(event: &Event<'_>, line: usize) -> Result<RegisterInput, ParseError> {
    match event.f {
        Function::Read => {
            if event.value == "nil" || event.kind != Kind::Invoke {
                Ok(RegisterInput::Read)
            } else {
                Err(syntax(
                    line,
                    "`nil` as the value of a read invocation",
                    &event.value,
                ))
            }
        }
        Function::Write => Ok(RegisterInput::Write(parse_int(&event.value, line)?)),
        Function::Cas => {
            let inner = event
                .value
                .strip_prefix('[')
                .and_then(|v| v.strip_suffix(']'))
                .ok_or_else(|| syntax(line, "`[old new]`", event.raw))?;
            let mut parts = inner.split_whitespace();
            let (Some(expected), Some(new), None) = (parts.next(), parts.next(), parts.next())
            else {
                return Err(syntax(
                    line,
                    "exactly two integers in `[old new]`",
                    &event.value,
                ));
            };
            Ok(RegisterInput::Cas {
                expected: parse_int(expected, line)?,
                new: parse_int(new, line)?,
            })
        }
    }
}

fn parse_read_value(event: &Event<'_>, line: usize) -> Result<Option<i64>, ParseError> {
    if event.value == "nil" {
        Ok(None)
    } else {
        parse_int(&event.value, line).map(Some)
    }
}

fn parse_int(token: &str, line: usize) -> Result<i64, ParseError> {
    token
        .parse::<i64>()
        .map_err(|_| syntax(line, "an integer that fits in 64 bits", token))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(
        client_id: u64,
        input: RegisterInput,
        call: u64,
        output: RegisterOutput,
        return_time: u64,
    ) -> Operation<RegisterInput, RegisterOutput> {
        Operation {
            client_id,
            input,
            call,
            output,
            return_time,
        }
    }

    #[test]
    fn maps_every_kind_of_line() {
        let log = "\
INFO  jepsen.util - 0\t:invoke\t:read\tnil
INFO  jepsen.util - 1\t:invoke\t:cas\t[3 0]
INFO  jepsen.util - 0\t:ok\t:read\t4
INFO  jepsen.util - :nemesis\t:info\t:start\tnil
INFO  jepsen.core - something else
INFO  jepsen.util - 1   :fail   :cas    [3 0]
INFO  jepsen.util - 2\t:invoke\t:write\t7
INFO  jepsen.util - 3\t:invoke\t:read\tnil
INFO  jepsen.util - 3\t:fail\t:read\t:timed-out
INFO  jepsen.util - 2\t:info\t:write\t:timed-out
INFO  jepsen.util - 4\t:invoke\t:cas\t[1 2]
";
        let history = parse_jepsen_etcd_log(log);
        let unknown = u64::MAX;
        assert_eq!(
            history,
            Ok(vec![
                op(0, RegisterInput::Read, 1, RegisterOutput::Read(Some(4)), 3),
                op(
                    1,
                    RegisterInput::Cas {
                        expected: 3,
                        new: 0
                    },
                    2,
                    RegisterOutput::Cas(false),
                    6
                ),
                op(
                    2,
                    RegisterInput::Write(7),
                    7,
                    RegisterOutput::Unknown,
                    unknown
                ),
                op(
                    4,
                    RegisterInput::Cas {
                        expected: 1,
                        new: 2
                    },
                    11,
                    RegisterOutput::Unknown,
                    unknown
                ),
            ])
        );
    }

    #[test]
    fn errors_name_the_line() {
        let cases: [(&str, ParseError); 5] = [
            (
                "INFO jepsen.util - 0 :invoke :write x",
                syntax(1, "an integer that fits in 64 bits", "x"),
            ),
            (
                "\nINFO jepsen.util - 0 :ok :write 1",
                ParseError::CompletionWithoutInvocation {
                    line: 2,
                    process: 0,
                },
            ),
            (
                "INFO jepsen.util - 0 :invoke :read nil\nINFO jepsen.util - 0 :invoke :read nil",
                ParseError::InvocationWhilePending {
                    line: 2,
                    process: 0,
                    pending_line: 1,
                },
            ),
            (
                "INFO jepsen.util - 0 :invoke :write 1\nINFO jepsen.util - 0 :ok :write 2",
                ParseError::CompletionMismatch {
                    line: 2,
                    process: 0,
                    pending_line: 1,
                    expected: "Write(1)".into(),
                    found: "Write(2)".into(),
                },
            ),
            (
                "INFO jepsen.util - 0 :invoke :cas [1 2 3]",
                syntax(1, "exactly two integers in `[old new]`", "[1 2 3]"),
            ),
        ];
        for (log, expected) in cases {
            assert_eq!(parse_jepsen_etcd_log(log), Err(expected), "{log}");
        }
        let err = parse_jepsen_etcd_log("INFO jepsen.util - 0 :invoke :frob nil");
        assert!(err.is_err_and(|e| e.to_string().starts_with("line 1: expected")));
    }
}
