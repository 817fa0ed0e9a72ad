//! Reading the messages of a Chat Completions request: roles, content
//! parts (text, images with their detail), an assistant's tool calls and
//! refusal, the call a tool message answers. Every field is carried or
//! refused with a 400 naming it as the client sent it.

use serde_json::Value;

use super::openai_request::{Invalid, invalid};
use crate::provider::{Image, ImageDetail, Message, Part, Role, ToolCall};

/// Text, or an array of parts. `images` says whether image parts may be
/// among them (only in user messages, as in OpenAI's API).
fn content(v: &Value, at: &str, images: bool) -> Result<Vec<Part>, Invalid> {
    let field = format!("{at}.content");
    match v {
        Value::Null => Ok(Vec::new()),
        Value::String(s) if s.is_empty() => Ok(Vec::new()),
        Value::String(s) => Ok(vec![Part::Text(s.clone())]),
        Value::Array(parts) => parts
            .iter()
            .enumerate()
            .map(|(j, p)| {
                let here = format!("{field}[{j}]");
                match p["type"].as_str() {
                    Some("text") => p["text"]
                        .as_str()
                        .map(|t| Part::Text(t.to_string()))
                        .ok_or_else(|| invalid("a text part needs \"text\"", Some(&here))),
                    Some("image_url") if images => {
                        let url = p["image_url"]["url"].as_str().ok_or_else(|| {
                            invalid("an image_url part needs image_url.url", Some(&here))
                        })?;
                        if !(url.starts_with("https://")
                            || url.starts_with("http://")
                            || url.starts_with("data:image/"))
                        {
                            return Err(invalid(
                                "image_url.url must be an http(s) URL or a data:image/... URL",
                                Some(&here),
                            ));
                        }
                        if url.starts_with("data:") && !url.contains(";base64,") {
                            return Err(invalid(
                                "a data URL image must be base64 (data:image/png;base64,...)",
                                Some(&here),
                            ));
                        }
                        let detail = match &p["image_url"]["detail"] {
                            Value::Null => None,
                            d => {
                                Some(d.as_str().and_then(ImageDetail::parse).ok_or_else(|| {
                                    invalid(
                                        "image_url.detail must be \"auto\", \"low\" or \"high\"",
                                        Some(&format!("{here}.image_url.detail")),
                                    )
                                })?)
                            }
                        };
                        Ok(Part::Image {
                            image: Image::from_url(url),
                            detail,
                        })
                    }
                    Some(other) => Err(invalid(
                        format!(
                            "content parts of type \"{other}\" are not supported here (text{})",
                            if images { ", image_url" } else { "" }
                        ),
                        Some(&here),
                    )),
                    None => Err(invalid("each content part needs a type", Some(&here))),
                }
            })
            .collect(),
        _ => Err(invalid(
            "content must be a string or an array of content parts",
            Some(&field),
        )),
    }
}

pub(super) fn message(m: &Value, i: usize) -> Result<Message, Invalid> {
    let at = format!("messages[{i}]");
    let Some(obj) = m.as_object() else {
        return Err(invalid("each message must be an object", Some(&at)));
    };
    let role = match obj.get("role").and_then(Value::as_str) {
        Some("system" | "developer") => Role::System,
        Some("user") => Role::User,
        Some("assistant") => Role::Assistant,
        Some("tool") => Role::Tool,
        Some(other) => {
            return Err(invalid(
                format!(
                    "unsupported role \"{other}\", expected system, developer, user, assistant or tool"
                ),
                Some(&format!("{at}.role")),
            ));
        }
        None => {
            return Err(invalid(
                "each message needs a role",
                Some(&format!("{at}.role")),
            ));
        }
    };
    let allowed: &[&str] = match role {
        Role::Assistant => &["role", "content", "tool_calls", "refusal"],
        Role::Tool => &["role", "content", "tool_call_id"],
        _ => &["role", "content"],
    };
    for (key, value) in obj {
        // `name` (a participant's name) has no equivalent on every
        // provider; a null one is what some frameworks always send.
        if !allowed.contains(&key.as_str()) && !value.is_null() {
            return Err(invalid(
                format!(
                    "\"{key}\" is not supported on a {} message",
                    role_name(role)
                ),
                Some(&format!("{at}.{key}")),
            ));
        }
    }
    let mut out = Message::new(role, "");
    out.content = content(&m["content"], &at, role == Role::User)?;
    match role {
        Role::Assistant => {
            // A refusal the model gave earlier is what it said.
            match &m["refusal"] {
                Value::Null => {}
                Value::String(r) => {
                    if !r.is_empty() && out.content.is_empty() {
                        out.content.push(Part::Text(r.to_string()));
                    }
                }
                _ => {
                    return Err(invalid(
                        "refusal must be a string",
                        Some(&format!("{at}.refusal")),
                    ));
                }
            }
            let calls = match &m["tool_calls"] {
                Value::Null => &[][..],
                Value::Array(calls) => calls.as_slice(),
                _ => {
                    return Err(invalid(
                        "tool_calls must be an array of tool calls",
                        Some(&format!("{at}.tool_calls")),
                    ));
                }
            };
            for (j, c) in calls.iter().enumerate() {
                let here = format!("{at}.tool_calls[{j}]");
                if !matches!(&c["type"], Value::Null) && c["type"] != "function" {
                    return Err(invalid(
                        "only function tool calls are supported (type: \"function\")",
                        Some(&format!("{here}.type")),
                    ));
                }
                let (Some(id), Some(name)) = (c["id"].as_str(), c["function"]["name"].as_str())
                else {
                    return Err(invalid(
                        "a tool call needs id and function.name",
                        Some(&here),
                    ));
                };
                let arguments = match &c["function"]["arguments"] {
                    Value::String(s) => s.clone(),
                    Value::Null => String::new(),
                    other => other.to_string(),
                };
                out.tool_calls.push(ToolCall {
                    id: id.to_string(),
                    name: name.to_string(),
                    arguments,
                });
            }
        }
        Role::Tool => {
            let id = m["tool_call_id"].as_str().filter(|s| !s.is_empty());
            out.tool_call_id = Some(
                id.ok_or_else(|| {
                    invalid(
                        "a tool message needs the tool_call_id it answers",
                        Some(&format!("{at}.tool_call_id")),
                    )
                })?
                .to_string(),
            );
        }
        _ => {}
    }
    Ok(out)
}

fn role_name(role: Role) -> &'static str {
    match role {
        Role::System => "system",
        Role::User => "user",
        Role::Assistant => "assistant",
        Role::Tool => "tool",
    }
}
