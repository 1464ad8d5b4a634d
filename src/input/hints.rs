//! What a line was probably meant to be: misspelled keys of a known shape ("inptu" for
//! "input"), and, when the start of a file holds no usable sample at all, one message with
//! the keys found and the nearest known shape instead of a bad record per line.

use super::{parse_line, LineReader};
use anyhow::{bail, Result};
use serde_json::{Map, Value};
use std::collections::BTreeMap;
use std::path::Path;

/// The shapes of spec section 1 that `parse_line` reads, by their keys.
pub const SHAPES: &[(&str, &[&str])] = &[
    ("LongAlign", &["messages"]),
    ("Alpaca", &["instruction", "input", "output"]),
    ("explicit", &["context", "instruction", "response"]),
    ("ShareGPT", &["conversations"]),
];

/// Keys a sample may carry besides its shape's.
pub const META: &[&str] = &["id", "source", "dataset"];

/// Lines looked at before deciding that a file is not a dataset gateau can read.
pub const FIRST_LINES: usize = 100;

/// Optimal string alignment distance (edits, with a swap of neighbours counted as one).
pub fn distance(a: &str, b: &str) -> usize {
    let (a, b): (Vec<char>, Vec<char>) = (a.chars().collect(), b.chars().collect());
    let mut d = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for (i, row) in d.iter_mut().enumerate() {
        row[0] = i;
    }
    for (j, cell) in d[0].iter_mut().enumerate() {
        *cell = j;
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut v = (d[i - 1][j] + 1)
                .min(d[i][j - 1] + 1)
                .min(d[i - 1][j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                v = v.min(d[i - 2][j - 2] + 1);
            }
            d[i][j] = v;
        }
    }
    d[a.len()][b.len()]
}

/// The candidate `key` is most likely a misspelling of (case ignored), if any is close.
pub fn nearest<'a>(key: &str, candidates: &[&'a str]) -> Option<&'a str> {
    let k = key.to_lowercase();
    candidates
        .iter()
        .map(|c| (distance(&k, c), *c))
        .filter(|(d, c)| key != *c && *d <= 2 && (*d).max(1) * 3 <= c.len())
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

/// Warnings for keys that look like a misspelled field of the shape being read and are
/// ignored because of it ("inptu": the sample is read without its context).
pub fn typo_warnings(obj: &Map<String, Value>, fields: &[&str]) -> Vec<String> {
    let absent: Vec<&str> = fields
        .iter()
        .copied()
        .filter(|f| !obj.contains_key(*f))
        .collect();
    obj.keys()
        .filter(|k| !fields.contains(&k.as_str()) && !META.contains(&k.as_str()))
        .filter_map(|k| {
            nearest(k, &absent).map(|f| format!("unknown key {k:?} ignored (did you mean {f:?}?)"))
        })
        .collect()
}

/// For a missing field: the key present that is probably it, as " (found \"outptu\")".
pub fn found_instead(obj: &Map<String, Value>, field: &str) -> String {
    obj.keys()
        .find(|k| nearest(k, &[field]).is_some())
        .map(|k| format!(" (found {k:?}: a misspelling?)"))
        .unwrap_or_default()
}

/// Refuses a file whose first lines (all of them, if fewer than [`FIRST_LINES`]) are all
/// bad: one message with the keys found and the nearest shape, not a record per line.
pub fn refuse_unreadable(path: &Path) -> Result<()> {
    let mut keys: BTreeMap<String, usize> = BTreeMap::new();
    let mut first_reason = None;
    let mut n = 0usize;
    for raw in LineReader::open(path)?.take(FIRST_LINES) {
        let raw = raw?;
        n += 1;
        match parse_line(&raw) {
            Ok(_) => return Ok(()),
            Err(e) => {
                first_reason.get_or_insert((e.line, e.reason));
                let obj = serde_json::from_slice::<Value>(raw.content());
                if let Ok(Value::Object(o)) = obj {
                    for k in o.keys() {
                        *keys.entry(k.clone()).or_default() += 1;
                    }
                }
            }
        }
    }
    let Some((line, reason)) = first_reason else {
        return Ok(());
    };
    let which = if n < FIRST_LINES {
        format!("all {n} lines")
    } else {
        format!("the first {n} lines")
    };
    let found = if keys.is_empty() {
        "none of them is a JSON object".to_string()
    } else {
        let list: Vec<String> = keys.iter().map(|(k, c)| format!("{k:?} ({c})")).collect();
        format!("keys found (lines): {}", list.join(", "))
    };
    let known: Vec<&str> = SHAPES.iter().flat_map(|(_, f)| f.iter().copied()).collect();
    let guess: Vec<String> = keys
        .keys()
        .filter(|k| !known.contains(&k.as_str()))
        .filter_map(|k| nearest(k, &known).map(|f| format!("`{f}` (for {k:?})")))
        .collect();
    let hint = if guess.is_empty() {
        String::new()
    } else {
        format!(" Did you mean {}?", guess.join(", "))
    };
    // With keys to show, "no usable shape" would only repeat the list below.
    let first = if keys.is_empty() || !reason.starts_with("no usable shape") {
        format!(" (line {line}: {reason})")
    } else {
        String::new()
    };
    let shapes: Vec<String> = SHAPES
        .iter()
        .map(|(name, f)| format!("{name} {}", f.join("/")))
        .collect();
    bail!(
        "--data {}: {which} are bad, so it is not a dataset gateau can read{first}; \
         {found}.{hint} gateau reads one JSON object per line with the keys of one of: {}",
        path.display(),
        shapes.join("; ")
    )
}

pub(super) fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn distances_and_guesses() {
        assert_eq!(distance("inptu", "input"), 1);
        assert_eq!(distance("message", "messages"), 1);
        assert_eq!(distance("kitten", "sitting"), 3);
        assert_eq!(nearest("inptu", &["input", "output"]), Some("input"));
        assert_eq!(nearest("Messages", &["messages"]), Some("messages"));
        assert_eq!(nearest("messages", &["messages"]), None, "the key itself");
        assert_eq!(
            nearest("category", &["input", "output", "instruction"]),
            None
        );
        assert_eq!(nearest("id", &["io"]), None, "too short to guess");
    }

    #[test]
    fn only_keys_near_an_absent_field_warn() {
        let obj: Map<String, Value> =
            serde_json::from_str(r#"{"instruction":"q","inptu":"c","output":"y","lang":"en"}"#)
                .unwrap();
        let fields = ["instruction", "input", "output"];
        assert_eq!(
            typo_warnings(&obj, &fields),
            ["unknown key \"inptu\" ignored (did you mean \"input\"?)"]
        );
    }
}
