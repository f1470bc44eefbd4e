//! Just enough EDN for one flat map per line: `{:k v, :k "s", :k nil}`.
//!
//! Supported values: `nil`, `true`, `false`, integers, keywords and strings with the
//! escapes `\" \\ \n \t \r`. Nested collections are rejected, not skipped.

use super::{syntax, ParseError};

/// A value of a flat EDN map.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Value<'a> {
    Nil,
    Bool(bool),
    Int(i64),
    /// Without the leading colon.
    Keyword(&'a str),
    Str(String),
}

/// The entries of the map on `text`, in order, keys without their colon.
pub(super) fn parse_flat_map(
    text: &str,
    line: usize,
) -> Result<Vec<(&str, Value<'_>)>, ParseError> {
    let mut rest = skip_space(text);
    rest = rest
        .strip_prefix('{')
        .ok_or_else(|| syntax(line, "`{` opening a map", rest))?;
    let mut entries = Vec::new();
    loop {
        rest = skip_space(rest);
        if let Some(after) = rest.strip_prefix('}') {
            rest = after;
            break;
        }
        let key_text = rest
            .strip_prefix(':')
            .ok_or_else(|| syntax(line, "a keyword key or `}`", rest))?;
        let (key, after_key) = split_token(key_text);
        if key.is_empty() {
            return Err(syntax(line, "a keyword name after `:`", rest));
        }
        let (value, after_value) = parse_value(skip_space(after_key), line)?;
        entries.push((key, value));
        rest = after_value;
    }
    let trailing = skip_space(rest);
    if !trailing.is_empty() {
        return Err(syntax(line, "end of line after the map", trailing));
    }
    Ok(entries)
}

/// Whitespace and commas (which EDN treats as whitespace).
fn skip_space(text: &str) -> &str {
    text.trim_start_matches(|c: char| c.is_whitespace() || c == ',')
}

/// Splits a bare token (keyword name, number, symbol) off the front of `text`.
fn split_token(text: &str) -> (&str, &str) {
    let end = text
        .find(|c: char| c.is_whitespace() || ",{}[]()\"".contains(c))
        .unwrap_or(text.len());
    text.split_at(end)
}

fn parse_value(text: &str, line: usize) -> Result<(Value<'_>, &str), ParseError> {
    if let Some(body) = text.strip_prefix('"') {
        return parse_string(body, line);
    }
    if let Some(name) = text.strip_prefix(':') {
        let (name, rest) = split_token(name);
        if name.is_empty() {
            return Err(syntax(line, "a keyword name after `:`", text));
        }
        return Ok((Value::Keyword(name), rest));
    }
    let (token, rest) = split_token(text);
    let value = match token {
        "nil" => Value::Nil,
        "true" => Value::Bool(true),
        "false" => Value::Bool(false),
        _ => match token.parse::<i64>() {
            Ok(n) => Value::Int(n),
            Err(_) => {
                return Err(syntax(
                    line,
                    "nil, a boolean, an integer, a keyword or a string",
                    text,
                ))
            }
        },
    };
    Ok((value, rest))
}

/// Parses a string body (after the opening quote) up to its closing quote.
fn parse_string(body: &str, line: usize) -> Result<(Value<'_>, &str), ParseError> {
    let mut out = String::new();
    let mut chars = body.char_indices();
    while let Some((at, c)) = chars.next() {
        match c {
            '"' => return Ok((Value::Str(out), &body[at + 1..])),
            '\\' => {
                let escaped = match chars.next() {
                    Some((_, '"')) => '"',
                    Some((_, '\\')) => '\\',
                    Some((_, 'n')) => '\n',
                    Some((_, 't')) => '\t',
                    Some((_, 'r')) => '\r',
                    _ => {
                        return Err(syntax(
                            line,
                            "one of the escapes \\\" \\\\ \\n \\t \\r",
                            &body[at..],
                        ))
                    }
                };
                out.push(escaped);
            }
            other => out.push(other),
        }
    }
    Err(syntax(line, "a closing `\"`", body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_flat_map() {
        let entries = parse_flat_map(
            r#" {:process 12, :type :ok, :value "a \"b\"\n", :x nil :y -3 :z true} "#,
            1,
        );
        assert_eq!(
            entries,
            Ok(vec![
                ("process", Value::Int(12)),
                ("type", Value::Keyword("ok")),
                ("value", Value::Str("a \"b\"\n".into())),
                ("x", Value::Nil),
                ("y", Value::Int(-3)),
                ("z", Value::Bool(true)),
            ])
        );
        assert_eq!(parse_flat_map("{}", 1), Ok(vec![]));
    }

    #[test]
    fn rejects_what_it_does_not_know() {
        for bad in [
            "",
            "{",
            "{:a}",
            "{:a 1",
            "{a 1}",
            "{: 1}",
            "{:a [1 2]}",
            "{:a \"open}",
            "{:a \"\\u0041\"}",
            "{:a 1} x",
            "{:a 99999999999999999999}",
            "{:a :}",
        ] {
            let result = parse_flat_map(bad, 7);
            assert!(
                matches!(result, Err(ParseError::Syntax { line: 7, .. })),
                "{bad:?} gave {result:?}"
            );
        }
    }
}
