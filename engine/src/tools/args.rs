//! The model's arguments: size and depth checks before parsing, schema
//! validation with messages the model can act on, and conversion of the
//! validated values into SQLite values for binding.
//!
//! Everything here runs before SQLite is touched; an `Err` from any function
//! means nothing was executed.

use jsonschema::Validator;
use rusqlite::types::Value as SqlValue;
use serde_json::Value;

use super::{MAX_ARGUMENT_BYTES, MAX_ARGUMENT_DEPTH, Param};

/// At most this many validation messages go back to the model: enough to fix
/// a call, not so many that a huge invalid array floods its context.
const MAX_MESSAGES: usize = 10;

/// The offending value is quoted in a message up to this many characters:
/// enough to recognise it, while a 60 KiB string costs no more.
const MAX_VALUE_CHARS: usize = 60;

/// A whole message is cut to this many characters (a schema's `enum` or
/// `const` may be long too).
const MAX_MESSAGE_CHARS: usize = 300;

/// Parses the argument text of a tool call.
///
/// Size and nesting are checked on the raw text first, so that neither a
/// huge string nor `[[[[...` ten thousand deep costs more than one linear
/// scan. An empty text counts as `{}`: some models send nothing for a call
/// without parameters, and the schema still decides whether that is valid.
pub(crate) fn parse(text: &str) -> Result<Value, String> {
    if text.len() > MAX_ARGUMENT_BYTES {
        return Err(format!(
            "arguments are {} bytes, more than the {MAX_ARGUMENT_BYTES} allowed",
            text.len()
        ));
    }
    if text.trim().is_empty() {
        return Ok(Value::Object(serde_json::Map::new()));
    }
    if nesting_exceeds(text, MAX_ARGUMENT_DEPTH) {
        return Err(format!(
            "arguments are nested more than {MAX_ARGUMENT_DEPTH} levels deep"
        ));
    }
    serde_json::from_str(text).map_err(|e| format!("arguments are not valid JSON: {e}"))
}

/// Whether `text` opens more than `max` arrays or objects inside each other.
/// Brackets inside strings do not count; the text need not be valid JSON
/// (the parser reports that afterwards).
pub(crate) fn nesting_exceeds(text: &str, max: usize) -> bool {
    let mut depth = 0usize;
    let mut in_string = false;
    let mut escaped = false;
    for &b in text.as_bytes() {
        if in_string {
            match b {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                if depth > max {
                    return true;
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    false
}

/// Every validation error, each with the path of the value at fault, joined
/// into one message; `None` when the arguments are valid.
pub(crate) fn validate(validator: &Validator, args: &Value) -> Option<String> {
    let mut messages = Vec::new();
    let mut total = 0usize;
    for error in validator.iter_errors(args) {
        total += 1;
        if messages.len() < MAX_MESSAGES {
            let path = error.instance_path().to_string();
            let path = if path.is_empty() {
                "/".to_string()
            } else {
                path
            };
            // The validator writes the value at fault into its message;
            // masking puts a shortened copy in its place.
            let value = clip(&error.instance().to_string(), MAX_VALUE_CHARS);
            let message = error.masked_with(value).to_string();
            messages.push(format!("{path}: {}", clip(&message, MAX_MESSAGE_CHARS)));
        }
    }
    if total == 0 {
        return None;
    }
    let mut text = format!(
        "arguments do not match the parameters schema: {}",
        messages.join("; ")
    );
    if total > messages.len() {
        text.push_str(&format!(" (and {} more)", total - messages.len()));
    }
    Some(text)
}

/// `s` cut to `max` characters, with `...` when cut.
fn clip(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        Some((i, _)) => format!("{}...", &s[..i]),
        None => s.to_string(),
    }
}

/// The values to bind, one per named parameter of the query, taken from the
/// validated argument object. A property the model left out binds as NULL
/// (the schema has already decided that leaving it out is allowed).
pub(crate) fn bindings(params: &[Param], args: &Value) -> Vec<(usize, SqlValue)> {
    params
        .iter()
        .map(|p| {
            let value = args.get(&p.property).map_or(SqlValue::Null, to_sql_value);
            (p.index, value)
        })
        .collect()
}

/// One JSON value as an SQLite value. Arrays and objects bind as their JSON
/// text, which SQLite's JSON functions can read; nothing is ever spliced
/// into SQL text.
pub(crate) fn to_sql_value(v: &Value) -> SqlValue {
    match v {
        Value::Null => SqlValue::Null,
        Value::Bool(b) => SqlValue::Integer(i64::from(*b)),
        Value::Number(n) => match n.as_i64() {
            Some(i) => SqlValue::Integer(i),
            // Integers beyond i64 (u64 above i64::MAX) and fractions: SQLite
            // has no wider integer, so they become REAL.
            None => SqlValue::Real(n.as_f64().unwrap_or(f64::NAN)),
        },
        Value::String(s) => SqlValue::Text(s.clone()),
        Value::Array(_) | Value::Object(_) => SqlValue::Text(v.to_string()),
    }
}

#[cfg(test)]
#[path = "args_tests.rs"]
mod tests;
