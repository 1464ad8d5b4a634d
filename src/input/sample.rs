//! One sample of the spec's section 1: LongAlign messages, Alpaca, explicit fields, or
//! ShareGPT conversations (the conversation shapes in [`super::turns`]).

use super::hints::{self, kind};
use super::{turns, RawLine};
use serde_json::{Map, Value};

/// A well-formed sample.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub id: Value,
    /// Whether `id` came from the line's "id" field (else it is the line number, which
    /// never makes the sample a duplicate: spec section 8).
    pub id_given: bool,
    pub line: u64,
    pub context: String,
    pub instruction: String,
    pub response: String,
    /// A "source" or "dataset" string field, kept for per-source reports.
    pub source: Option<String>,
    /// Read, but probably not as meant (a misspelled key that was ignored).
    pub warnings: Vec<String>,
    /// [`RawLine::hash`] of the line.
    pub line_hash: String,
    /// The user turn as written (conversation shapes), for chat templates; `None` for the
    /// Alpaca and explicit shapes, whose turn is `context + "\n\n" + instruction`.
    pub user: Option<String>,
    /// The system turn of a conversation, for chat templates.
    pub system: Option<String>,
    /// Turns after the scored pair (reported, not scored).
    pub later_turns: usize,
}

/// Why a line is not a sample, with the id when one could be read.
#[derive(Debug, Clone, PartialEq)]
pub struct SampleError {
    pub id: Value,
    pub line: u64,
    pub reason: String,
}

fn text_field(obj: &Map<String, Value>, key: &str, required: bool) -> Result<String, String> {
    match obj.get(key) {
        Some(Value::String(s)) => Ok(s.clone()),
        Some(other) => Err(format!(
            "field {key:?} must be a string, found {}",
            kind(other)
        )),
        None if required => Err(format!(
            "missing field {key:?}{}",
            hints::found_instead(obj, key)
        )),
        None => Ok(String::new()),
    }
}

/// Splits a LongAlign user turn at its last "\n\n": (context, instruction).
pub fn split_user_turn(u: &str) -> (String, String) {
    match u.rfind("\n\n") {
        Some(p) => (u[..p + 2].to_string(), u[p + 2..].to_string()),
        None => (String::new(), u.to_string()),
    }
}

/// Parses one raw line (spec section 1).
pub fn parse_line(raw: &RawLine) -> Result<Sample, SampleError> {
    let line = raw.number;
    let fallback = Value::from(line);
    let bad = |id: Value, reason: String| SampleError { id, line, reason };
    let text = std::str::from_utf8(raw.content()).map_err(|e| {
        bad(
            fallback.clone(),
            format!("invalid UTF-8 at byte {}", e.valid_up_to()),
        )
    })?;
    if text.trim().is_empty() {
        return Err(bad(fallback, "empty line".into()));
    }
    let value: Value = serde_json::from_str(text)
        .map_err(|e| bad(fallback.clone(), format!("malformed JSON: {e}")))?;
    let Value::Object(obj) = value else {
        return Err(bad(
            fallback,
            format!("expected a JSON object, found {}", kind(&value)),
        ));
    };
    let (id, id_given) = match obj.get("id") {
        Some(v @ (Value::String(_) | Value::Number(_) | Value::Bool(_) | Value::Null)) => {
            (v.clone(), true)
        }
        _ => (fallback, false),
    };
    let mut warnings = Vec::new();
    let conversation = if obj.contains_key("messages") {
        Some(turns::messages(&obj))
    } else if obj.contains_key("conversations") {
        Some(turns::sharegpt(&obj))
    } else {
        None
    };
    let mut conv = None;
    let shape = if let Some(c) = conversation {
        c.map(|c| {
            let (ctx, x) = split_user_turn(&c.user);
            let y = c.assistant.clone();
            conv = Some(c);
            (ctx, x, y)
        })
    } else if obj.contains_key("output") || obj.contains_key("input") {
        warnings = hints::typo_warnings(&obj, hints::SHAPES[1].1);
        (|| {
            Ok((
                text_field(&obj, "input", false)?,
                text_field(&obj, "instruction", true)?,
                text_field(&obj, "output", true)?,
            ))
        })()
    } else if obj.contains_key("response") || obj.contains_key("context") {
        warnings = hints::typo_warnings(&obj, hints::SHAPES[2].1);
        (|| {
            Ok((
                text_field(&obj, "context", true)?,
                text_field(&obj, "instruction", true)?,
                text_field(&obj, "response", true)?,
            ))
        })()
    } else {
        let known: Vec<&str> = hints::SHAPES
            .iter()
            .flat_map(|s| s.1.iter().copied())
            .collect();
        let guess: String = obj
            .keys()
            .find_map(|k| {
                hints::nearest(k, &known).map(|f| format!(" (did you mean {f:?} for {k:?}?)"))
            })
            .unwrap_or_default();
        let found: Vec<String> = obj.keys().map(|k| format!("{k:?}")).collect();
        let found = match found.is_empty() {
            true => "none".to_string(),
            false => found.join(", "),
        };
        Err(format!(
            "no usable shape: expected \"messages\" (LongAlign), \"instruction\"/\"input\"/\
             \"output\" (Alpaca), \"context\"/\"instruction\"/\"response\" or \
             \"conversations\" (ShareGPT); keys found: {found}{guess}"
        ))
    };
    let (context, instruction, response) = shape.map_err(|r| bad(id.clone(), r))?;
    if response.is_empty() {
        return Err(bad(id, "empty response".into()));
    }
    let source = ["source", "dataset"]
        .iter()
        .find_map(|k| obj.get(*k).and_then(|v| v.as_str()).map(str::to_string));
    let (user, system, later_turns) = match conv {
        Some(c) => (Some(c.user), c.system, c.later_turns),
        None => (None, None, 0),
    };
    Ok(Sample {
        id,
        id_given,
        line,
        context,
        instruction,
        response,
        source,
        warnings,
        line_hash: raw.hash(),
        user,
        system,
        later_turns,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(s: &str) -> RawLine {
        RawLine {
            number: 7,
            bytes: s.as_bytes().to_vec(),
            offset: 0,
        }
    }

    #[test]
    fn longalign_splits_at_last_blank_line() {
        let s = parse_line(&raw(
            r#"{"id":"a","messages":[{"role":"system","content":"s"},{"role":"user","content":"doc\n\nmore\n\nWhat?"},{"role":"assistant","content":"This."}]}"#,
        ))
        .unwrap();
        assert_eq!(s.context, "doc\n\nmore\n\n");
        assert_eq!(s.instruction, "What?");
        assert_eq!(s.response, "This.");
        assert_eq!(s.id, Value::from("a"));
    }

    #[test]
    fn sharegpt_is_the_fourth_shape() {
        let s = parse_line(&raw(
            r#"{"conversations":[{"from":"system","value":"sys"},{"from":"human","value":"doc\n\nWhat?"},{"from":"gpt","value":"This."},{"from":"human","value":"And?"}]}"#,
        ))
        .unwrap();
        assert_eq!(
            (
                s.context.as_str(),
                s.instruction.as_str(),
                s.response.as_str()
            ),
            ("doc\n\n", "What?", "This.")
        );
        assert_eq!((s.system.as_deref(), s.later_turns), (Some("sys"), 1));
        assert_eq!(s.user.as_deref(), Some("doc\n\nWhat?"));
        let bad = parse_line(&raw(
            r#"{"conversations":[{"from":"bot","value":"x"},{"from":"human","value":"q"}]}"#,
        ))
        .unwrap_err();
        assert_eq!(bad.reason, "unknown role bot (conversations[0].from)");
    }

    #[test]
    fn longalign_without_blank_line_has_no_context() {
        assert_eq!(
            split_user_turn("just ask"),
            (String::new(), "just ask".to_string())
        );
    }

    #[test]
    fn alpaca_without_input_and_explicit_shape() {
        let s = parse_line(&raw(r#"{"instruction":"i","output":"o"}"#)).unwrap();
        assert_eq!((s.context.as_str(), s.id.clone()), ("", Value::from(7u64)));
        let s = parse_line(&raw(
            r#"{"id":[1],"context":"c","instruction":"i","response":"r"}"#,
        ))
        .unwrap();
        assert_eq!(s.context, "c");
        assert_eq!(
            s.id,
            Value::from(7u64),
            "non-scalar id falls back to the line"
        );
    }

    #[test]
    fn bad_lines_say_why() {
        let reason = |s: &str| parse_line(&raw(s)).unwrap_err().reason;
        assert!(reason("{not json").starts_with("malformed JSON"));
        assert_eq!(
            reason(r#"{"instruction":"i","output":""}"#),
            "empty response"
        );
        assert_eq!(
            reason(r#"{"instruction":"i","input":"c"}"#),
            "missing field \"output\""
        );
        assert!(reason(r#"{"foo":1}"#).starts_with("no usable shape"));
        assert!(
            reason(r#"{"foo":1,"prompt":"p"}"#).ends_with("keys found: \"foo\", \"prompt\""),
            "{}",
            reason(r#"{"foo":1,"prompt":"p"}"#)
        );
        assert_eq!(
            reason(r#"{"messages":[{"role":"user","content":"q"}]}"#),
            "no assistant turn after the first user turn"
        );
        let r = parse_line(&RawLine {
            number: 0,
            bytes: b"{\"a\":\"\xff\"}".to_vec(),
            offset: 0,
        });
        assert_eq!(r.unwrap_err().reason, "invalid UTF-8 at byte 6");
    }
}
