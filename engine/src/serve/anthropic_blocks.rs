//! The content of a Messages request: its messages' blocks (text,
//! images, tool calls and results, earlier reasoning) read into the
//! seam's messages and parts, and the field readers the request's other
//! parts share (`only`, `string`, `cache_control`). Every block is
//! carried or refused with a 400 naming its path.

use serde_json::{Map, Value};

use super::openai_request::{Invalid, invalid};
use crate::provider::{Image, Message, Part, Role, ToolCall};

/// Why `cache_control` is refused where it is.
const NO_CACHE_CONTROL: &str = "cache_control is not supported on this block (Anthropic takes it on system text blocks, message text, image, tool_use and tool_result blocks, and tools)";

/// Refuses any key of `obj` outside `allowed` (a null value is taken as
/// absent: SDKs serialize unset optional fields that way).
pub(super) fn only(obj: &Map<String, Value>, allowed: &[&str], at: &str) -> Result<(), Invalid> {
    for (key, value) in obj {
        if allowed.contains(&key.as_str()) || value.is_null() {
            continue;
        }
        let here = format!("{at}.{key}");
        if key == "cache_control" {
            return Err(invalid(format!("{here}: {NO_CACHE_CONTROL}"), Some(&here)));
        }
        return Err(invalid(
            format!(
                "{here}: extra inputs are not permitted (Sluice does not support \"{key}\" here)"
            ),
            Some(&here),
        ));
    }
    Ok(())
}

/// A block's `cache_control`, checked (`{"type": "ephemeral"}`, with an
/// optional `ttl` of `5m` or `1h`, the lifetimes Anthropic prices) and
/// kept as sent.
pub(super) fn cache_control(obj: &Map<String, Value>, at: &str) -> Result<Option<Value>, Invalid> {
    let Some(v) = obj.get("cache_control").filter(|v| !v.is_null()) else {
        return Ok(None);
    };
    let here = format!("{at}.cache_control");
    let ok = v.as_object().is_some_and(|o| {
        o.get("type").and_then(Value::as_str) == Some("ephemeral")
            && o.keys().all(|k| k == "type" || k == "ttl")
    });
    if !ok {
        return Err(invalid(
            format!("{here}: must be {{\"type\": \"ephemeral\"}}, with an optional ttl"),
            Some(&here),
        ));
    }
    match v.get("ttl") {
        None | Some(Value::Null) => {}
        Some(Value::String(t)) if t == "5m" || t == "1h" => {}
        Some(_) => {
            let field = format!("{here}.ttl");
            return Err(invalid(
                format!("{field}: must be \"5m\" or \"1h\""),
                Some(&field),
            ));
        }
    }
    Ok(Some(v.clone()))
}

/// Whether a kept `cache_control` asks for the one-hour cache.
pub(super) fn one_hour(cc: &Value) -> bool {
    cc.get("ttl").and_then(Value::as_str) == Some("1h")
}

pub(super) fn string<'a>(
    obj: &'a Map<String, Value>,
    key: &str,
    at: &str,
) -> Result<&'a str, Invalid> {
    obj.get(key).and_then(Value::as_str).ok_or_else(|| {
        let here = format!("{at}.{key}");
        invalid(format!("{here}: field required (a string)"), Some(&here))
    })
}

/// One conversation message. A user turn's `tool_result` blocks become
/// `tool` messages (first, as Anthropic requires them), the rest of the
/// turn a user message after them.
pub(super) fn message(m: &Value, i: usize, out: &mut Vec<Message>) -> Result<(), Invalid> {
    let at = format!("messages[{i}]");
    let Some(obj) = m.as_object() else {
        return Err(invalid(format!("{at}: must be an object"), Some(&at)));
    };
    only(obj, &["role", "content"], &at)?;
    let role = match obj.get("role").and_then(Value::as_str) {
        Some("user") => Role::User,
        Some("assistant") => Role::Assistant,
        _ => {
            return Err(invalid(
                format!("{at}.role: must be \"user\" or \"assistant\""),
                Some(&format!("{at}.role")),
            ));
        }
    };
    let field = format!("{at}.content");
    let blocks: &[Value] = match obj.get("content") {
        Some(Value::String(s)) => {
            out.push(Message::new(role, s.as_str()));
            return Ok(());
        }
        Some(Value::Array(blocks)) => blocks,
        _ => {
            return Err(invalid(
                format!("{field}: field required (a string or an array of content blocks)"),
                Some(&field),
            ));
        }
    };
    let mut turn = Message::new(role, "");
    // Breakpoints on tool_use blocks, by call: numbered after the parts
    // once they are all known.
    let mut call_marks = Vec::new();
    for (j, b) in blocks.iter().enumerate() {
        let here = format!("{field}[{j}]");
        let Some(o) = b.as_object() else {
            return Err(invalid(
                format!("{here}: must be a content block"),
                Some(&here),
            ));
        };
        let kind = o.get("type").and_then(Value::as_str).unwrap_or_default();
        match (role, kind) {
            (_, "text") => {
                // Citations in a turn handed back are not relayed.
                only(o, &["type", "text", "cache_control"], &here)?;
                if let Some(cc) = cache_control(o, &here)? {
                    turn.cache_control.push((turn.content.len() as u32, cc));
                }
                turn.content
                    .push(Part::Text(string(o, "text", &here)?.to_string()));
            }
            (Role::User, "image") => {
                only(o, &["type", "source", "cache_control"], &here)?;
                if let Some(cc) = cache_control(o, &here)? {
                    turn.cache_control.push((turn.content.len() as u32, cc));
                }
                turn.content.push(Part::Image {
                    image: image(o.get("source"), &here)?,
                    detail: None,
                });
            }
            (Role::User, "tool_result") => {
                only(
                    o,
                    &[
                        "type",
                        "tool_use_id",
                        "content",
                        "is_error",
                        "cache_control",
                    ],
                    &here,
                )?;
                let id = string(o, "tool_use_id", &here)?;
                let mut result = Message::new(Role::Tool, "");
                result.tool_call_id = Some(id.to_string());
                result.content = tool_result_content(o.get("content"), &here)?;
                result.is_error = match o.get("is_error") {
                    None | Some(Value::Null) => false,
                    Some(Value::Bool(b)) => *b,
                    Some(_) => {
                        return Err(invalid(
                            format!("{here}.is_error: must be a boolean"),
                            Some(&format!("{here}.is_error")),
                        ));
                    }
                };
                result
                    .cache_control
                    .extend(cache_control(o, &here)?.map(|cc| (0, cc)));
                out.push(result);
            }
            (Role::Assistant, "tool_use") => {
                only(o, &["type", "id", "name", "input", "cache_control"], &here)?;
                if let Some(cc) = cache_control(o, &here)? {
                    call_marks.push((turn.tool_calls.len(), cc));
                }
                let input = match o.get("input") {
                    Some(v @ Value::Object(_)) => v.to_string(),
                    _ => {
                        return Err(invalid(
                            format!("{here}.input: field required (an object)"),
                            Some(&format!("{here}.input")),
                        ));
                    }
                };
                turn.tool_calls.push(ToolCall {
                    id: string(o, "id", &here)?.to_string(),
                    name: string(o, "name", &here)?.to_string(),
                    arguments: input,
                });
            }
            (Role::Assistant, "thinking") => {
                only(o, &["type", "thinking", "signature"], &here)?;
                turn.content.push(Part::Thinking {
                    text: string(o, "thinking", &here)?.to_string(),
                    signature: string(o, "signature", &here)?.to_string(),
                });
            }
            (Role::Assistant, "redacted_thinking") => {
                only(o, &["type", "data"], &here)?;
                turn.content.push(Part::RedactedThinking(
                    string(o, "data", &here)?.to_string(),
                ));
            }
            (_, "") => {
                return Err(invalid(
                    format!("{here}.type: field required"),
                    Some(&format!("{here}.type")),
                ));
            }
            (_, other) => {
                let which = if role == Role::User {
                    "text, image and tool_result"
                } else {
                    "text, tool_use, thinking and redacted_thinking"
                };
                return Err(invalid(
                    format!(
                        "{here}.type: \"{other}\" blocks are not supported in a {} message (Sluice takes {which})",
                        if role == Role::User {
                            "user"
                        } else {
                            "assistant"
                        }
                    ),
                    Some(&format!("{here}.type")),
                ));
            }
        }
    }
    let parts = turn.content.len();
    turn.cache_control.extend(
        call_marks
            .into_iter()
            .map(|(k, cc)| ((parts + k) as u32, cc)),
    );
    // A user turn of tool results only adds no user message; an empty
    // turn of any other kind is kept (the provider says what it thinks).
    let results_only = role == Role::User
        && turn.content.is_empty()
        && blocks
            .iter()
            .any(|b| b.get("type").and_then(Value::as_str) == Some("tool_result"));
    if !results_only {
        out.push(turn);
    }
    Ok(())
}

fn image(source: Option<&Value>, at: &str) -> Result<Image, Invalid> {
    let here = format!("{at}.source");
    let Some(s) = source.and_then(Value::as_object) else {
        return Err(invalid(
            format!("{here}: field required (an object)"),
            Some(&here),
        ));
    };
    match s.get("type").and_then(Value::as_str) {
        Some("base64") => {
            only(s, &["type", "media_type", "data"], &here)?;
            let media_type = string(s, "media_type", &here)?;
            if !media_type.starts_with("image/") {
                return Err(invalid(
                    format!(
                        "{here}.media_type: must be an image type (image/png, image/jpeg, image/gif or image/webp)"
                    ),
                    Some(&format!("{here}.media_type")),
                ));
            }
            Ok(Image::Base64 {
                media_type: media_type.to_string(),
                data: string(s, "data", &here)?.to_string(),
            })
        }
        Some("url") => {
            only(s, &["type", "url"], &here)?;
            let url = string(s, "url", &here)?;
            if !(url.starts_with("https://") || url.starts_with("http://")) {
                return Err(invalid(
                    format!("{here}.url: must be an http(s) URL"),
                    Some(&format!("{here}.url")),
                ));
            }
            Ok(Image::Url(url.to_string()))
        }
        _ => Err(invalid(
            format!("{here}.type: must be \"base64\" or \"url\""),
            Some(&format!("{here}.type")),
        )),
    }
}

/// A tool result's content: a string or text blocks.
fn tool_result_content(v: Option<&Value>, at: &str) -> Result<Vec<Part>, Invalid> {
    let field = format!("{at}.content");
    match v {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::String(s)) if s.is_empty() => Ok(Vec::new()),
        Some(Value::String(s)) => Ok(vec![Part::Text(s.clone())]),
        Some(Value::Array(blocks)) => blocks
            .iter()
            .enumerate()
            .map(|(j, b)| {
                let here = format!("{field}[{j}]");
                let o = b
                    .as_object()
                    .filter(|o| o.get("type").and_then(Value::as_str) == Some("text"))
                    .ok_or_else(|| {
                        invalid(
                            format!("{here}.type: Sluice takes only text blocks in a tool result"),
                            Some(&format!("{here}.type")),
                        )
                    })?;
                only(o, &["type", "text"], &here)?;
                Ok(Part::Text(string(o, "text", &here)?.to_string()))
            })
            .collect(),
        Some(_) => Err(invalid(
            format!("{field}: must be a string or an array of text blocks"),
            Some(&field),
        )),
    }
}
