//! Reading a Messages request (`POST /v1/messages`, and its
//! `count_tokens`) as the Anthropic SDKs send it. Every field and content
//! block is carried to the provider (through the messages, `Params` and
//! the tools) or refused with a 400 that names it: nothing is accepted and
//! silently dropped.

use serde_json::{Map, Value};

use super::anthropic_blocks::{cache_control, message, one_hour, only, string};
use super::openai_request::{Invalid, invalid, number_field, uint_field, valid_name};
use crate::provider::{Message, Params, Role, ToolChoice, ToolSpec};

/// A validated Messages request.
pub(super) struct MessagesRequest {
    pub model: String,
    /// System text first (as a system message), then the conversation.
    pub messages: Vec<Message>,
    /// Required on `/v1/messages`, absent on `count_tokens`.
    pub max_tokens: Option<u32>,
    pub stream: bool,
    pub params: Params,
    pub tools: Vec<ToolSpec>,
    /// Where the first prompt-cache breakpoint is, as the client sent it
    /// (`tools[0].cache_control`), for a 400 about breakpoints.
    pub cache_control_at: Option<String>,
}

/// Which endpoint the body was sent to.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Endpoint {
    Messages,
    CountTokens,
}

/// Most tools a request may bring.
const MAX_TOOLS: usize = 128;
/// Most stop sequences.
const MAX_STOP: usize = 16;

const FIELDS: &[&str] = &[
    "model",
    "messages",
    "max_tokens",
    "system",
    "stream",
    "temperature",
    "top_p",
    "top_k",
    "stop_sequences",
    "metadata",
    "tools",
    "tool_choice",
    "thinking",
];

/// What `count_tokens` takes (Anthropic's own list): the prompt only.
const COUNT_FIELDS: &[&str] = &[
    "model",
    "messages",
    "system",
    "tools",
    "tool_choice",
    "thinking",
];

fn number(obj: &Map<String, Value>, key: &str, lo: f64, hi: f64) -> Result<Option<f64>, Invalid> {
    number_field(obj, key, lo, hi, ": ")
}

fn uint(obj: &Map<String, Value>, key: &str, lo: u64, hi: u64) -> Result<Option<u64>, Invalid> {
    uint_field(obj, key, lo, hi, ": ")
}

pub(super) fn parse(body: &[u8], endpoint: Endpoint) -> Result<MessagesRequest, Invalid> {
    let v: Value = serde_json::from_slice(body)
        .map_err(|e| invalid(format!("request body is not valid JSON: {e}"), None))?;
    let Some(obj) = v.as_object() else {
        return Err(invalid("request body must be a JSON object", None));
    };
    let fields = match endpoint {
        Endpoint::Messages => FIELDS,
        Endpoint::CountTokens => COUNT_FIELDS,
    };
    for key in obj.keys() {
        if !fields.contains(&key.as_str()) {
            return Err(invalid(
                format!(
                    "{key}: extra inputs are not permitted (Sluice does not support \"{key}\")"
                ),
                Some(key),
            ));
        }
    }
    let model = obj
        .get("model")
        .and_then(Value::as_str)
        .filter(|m| !m.is_empty())
        .ok_or_else(|| invalid("model: field required (the pipeline's name)", Some("model")))?
        .to_string();
    let max_tokens = uint(obj, "max_tokens", 1, u64::from(u32::MAX))?.map(|n| n as u32);
    if endpoint == Endpoint::Messages && max_tokens.is_none() {
        return Err(invalid("max_tokens: field required", Some("max_tokens")));
    }
    let stream = match obj.get("stream") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => return Err(invalid("stream: must be a boolean", Some("stream"))),
    };
    let mut messages = system(obj)?;
    let Some(items) = obj.get("messages").and_then(Value::as_array) else {
        return Err(invalid(
            "messages: field required (an array)",
            Some("messages"),
        ));
    };
    if items.is_empty() {
        return Err(invalid(
            "messages: at least one message is required",
            Some("messages"),
        ));
    }
    for (i, m) in items.iter().enumerate() {
        message(m, i, &mut messages)?;
    }
    // A tool result answers a tool_use of an earlier assistant turn.
    let mut called: std::collections::HashSet<&str> = std::collections::HashSet::new();
    for m in &messages {
        if let Some(id) = &m.tool_call_id
            && !called.contains(id.as_str())
        {
            return Err(invalid(
                format!(
                    "messages: tool_result block for \"{id}\" answers no tool_use block of an earlier assistant message"
                ),
                Some("messages"),
            ));
        }
        called.extend(m.tool_calls.iter().map(|c| c.id.as_str()));
    }
    let tools = tools(obj)?;
    let mut params = Params {
        temperature: number(obj, "temperature", 0.0, 1.0)?,
        top_p: number(obj, "top_p", 0.0, 1.0)?,
        top_k: uint(obj, "top_k", 0, u64::from(u32::MAX))?.map(|k| k as u32),
        stop: stop_sequences(obj)?,
        ..Params::default()
    };
    params.user = metadata(obj)?;
    params.cache_control = messages.iter().any(|m| !m.cache_control.is_empty())
        || tools.iter().any(|t| t.cache_control.is_some());
    params.cache_control_1h = messages
        .iter()
        .flat_map(|m| m.cache_control.iter().map(|(_, cc)| cc))
        .chain(tools.iter().filter_map(|t| t.cache_control.as_ref()))
        .any(one_hour);
    params.thinking = thinking(obj)?;
    (params.tool_choice, params.parallel_tool_calls) = tool_choice(obj)?;
    if let Some(ToolChoice::Tool(name)) = &params.tool_choice
        && !tools.is_empty()
        && !tools.iter().any(|t| &t.name == name)
    {
        // A pipeline's own tool may be named too: checked with the pipeline.
        return Err(invalid(
            format!("tool_choice.name: \"{name}\" is not among the request's tools"),
            Some("tool_choice.name"),
        ));
    }
    let cache_control_at = params.cache_control.then(|| first_mark(obj)).flatten();
    Ok(MessagesRequest {
        model,
        messages,
        max_tokens,
        stream,
        params,
        tools,
        cache_control_at,
    })
}

/// The path of the first `cache_control` of a request (tools, then
/// system, then messages: the order Anthropic reads a prompt in).
fn first_mark(obj: &Map<String, Value>) -> Option<String> {
    let marked = |v: &Value| v.get("cache_control").is_some_and(|c| !c.is_null());
    let blocks = |key: &str| {
        obj.get(key)
            .and_then(Value::as_array)
            .and_then(|items| items.iter().position(marked))
            .map(|i| format!("{key}[{i}].cache_control"))
    };
    blocks("tools").or_else(|| blocks("system")).or_else(|| {
        let items = obj.get("messages")?.as_array()?;
        items.iter().enumerate().find_map(|(i, m)| {
            let j = m.get("content")?.as_array()?.iter().position(marked)?;
            Some(format!("messages[{i}].content[{j}].cache_control"))
        })
    })
}

/// `system`: a string or text blocks, as one system message.
/// With a cache breakpoint among the blocks, each block is a system
/// message of its own, so that the breakpoint stays where it was put.
fn system(obj: &Map<String, Value>) -> Result<Vec<Message>, Invalid> {
    let text = match obj.get("system") {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(blocks)) => {
            let mut parts = Vec::with_capacity(blocks.len());
            let mut marked = Vec::with_capacity(blocks.len());
            for (j, b) in blocks.iter().enumerate() {
                let at = format!("system[{j}]");
                let Some(o) = b.as_object() else {
                    return Err(invalid(format!("{at}: must be a text block"), Some(&at)));
                };
                if o.get("type").and_then(Value::as_str) != Some("text") {
                    return Err(invalid(
                        format!("{at}.type: system blocks must be of type \"text\""),
                        Some(&format!("{at}.type")),
                    ));
                }
                only(o, &["type", "text", "cache_control"], &at)?;
                parts.push(string(o, "text", &at)?);
                marked.push(cache_control(o, &at)?);
            }
            if marked.iter().any(Option::is_some) {
                return Ok(parts
                    .into_iter()
                    .zip(marked)
                    .map(|(text, cc)| {
                        let mut m = Message::new(Role::System, text);
                        m.cache_control.extend(cc.map(|cc| (0, cc)));
                        m
                    })
                    .collect());
            }
            parts.join("\n\n")
        }
        Some(_) => {
            return Err(invalid(
                "system: must be a string or an array of text blocks",
                Some("system"),
            ));
        }
    };
    Ok(if text.is_empty() {
        Vec::new()
    } else {
        vec![Message::new(Role::System, text)]
    })
}

fn stop_sequences(obj: &Map<String, Value>) -> Result<Vec<String>, Invalid> {
    let bad = || {
        invalid(
            format!("stop_sequences: must be an array of at most {MAX_STOP} non-empty strings"),
            Some("stop_sequences"),
        )
    };
    match obj.get("stop_sequences") {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Array(items)) if items.len() <= MAX_STOP => items
            .iter()
            .map(|s| {
                s.as_str()
                    .filter(|s| !s.is_empty())
                    .map(str::to_string)
                    .ok_or_else(bad)
            })
            .collect(),
        Some(_) => Err(bad()),
    }
}

fn metadata(obj: &Map<String, Value>) -> Result<Option<String>, Invalid> {
    match obj.get("metadata") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Object(m)) => {
            only(m, &["user_id"], "metadata")?;
            match m.get("user_id") {
                None | Some(Value::Null) => Ok(None),
                Some(Value::String(s)) if s.len() <= 256 => Ok(Some(s.clone())),
                Some(_) => Err(invalid(
                    "metadata.user_id: must be a string of at most 256 bytes",
                    Some("metadata.user_id"),
                )),
            }
        }
        Some(_) => Err(invalid("metadata: must be an object", Some("metadata"))),
    }
}

/// Extended thinking, passed through as sent (`disabled` is the default,
/// and is sent as nothing so that any provider can take it).
fn thinking(obj: &Map<String, Value>) -> Result<Option<Value>, Invalid> {
    let Some(v) = obj.get("thinking").filter(|v| !v.is_null()) else {
        return Ok(None);
    };
    let kind = v.get("type").and_then(Value::as_str);
    match kind {
        Some("disabled") => Ok(None),
        Some("enabled") => {
            let min = crate::run::THINKING_MIN_BUDGET;
            if v["budget_tokens"].as_u64().is_none_or(|b| b < min) {
                return Err(invalid(
                    format!(
                        "thinking.budget_tokens: field required when thinking is enabled (an integer of at least {min}, below max_tokens)"
                    ),
                    Some("thinking.budget_tokens"),
                ));
            }
            Ok(Some(v.clone()))
        }
        Some(_) if v.is_object() => Ok(Some(v.clone())),
        _ => Err(invalid(
            "thinking: must be an object with a type (\"enabled\" with budget_tokens, or \"disabled\")",
            Some("thinking"),
        )),
    }
}

/// `tool_choice`: the choice, and `Some(false)` for parallel calls when
/// `disable_parallel_tool_use` is set.
fn tool_choice(obj: &Map<String, Value>) -> Result<(Option<ToolChoice>, Option<bool>), Invalid> {
    let Some(v) = obj.get("tool_choice").filter(|v| !v.is_null()) else {
        return Ok((None, None));
    };
    let Some(o) = v.as_object() else {
        return Err(invalid(
            "tool_choice: must be an object with type auto, any, tool or none",
            Some("tool_choice"),
        ));
    };
    let choice = match o.get("type").and_then(Value::as_str) {
        Some("auto") => ToolChoice::Auto,
        Some("any") => ToolChoice::Required,
        Some("none") => ToolChoice::None,
        Some("tool") => ToolChoice::Tool(string(o, "name", "tool_choice")?.to_string()),
        _ => {
            return Err(invalid(
                "tool_choice.type: must be \"auto\", \"any\", \"tool\" or \"none\"",
                Some("tool_choice.type"),
            ));
        }
    };
    let allowed: &[&str] = match choice {
        ToolChoice::Tool(_) => &["type", "name", "disable_parallel_tool_use"],
        ToolChoice::None => &["type"],
        _ => &["type", "disable_parallel_tool_use"],
    };
    only(o, allowed, "tool_choice")?;
    let parallel = match o.get("disable_parallel_tool_use") {
        None | Some(Value::Null) | Some(Value::Bool(false)) => None,
        Some(Value::Bool(true)) => Some(false),
        Some(_) => {
            return Err(invalid(
                "tool_choice.disable_parallel_tool_use: must be a boolean",
                Some("tool_choice.disable_parallel_tool_use"),
            ));
        }
    };
    Ok((Some(choice), parallel))
}

fn tools(obj: &Map<String, Value>) -> Result<Vec<ToolSpec>, Invalid> {
    let items = match obj.get("tools") {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(Value::Array(items)) if items.len() <= MAX_TOOLS => items,
        Some(_) => {
            return Err(invalid(
                format!("tools: must be an array of at most {MAX_TOOLS} tools"),
                Some("tools"),
            ));
        }
    };
    let mut out: Vec<ToolSpec> = Vec::with_capacity(items.len());
    for (i, t) in items.iter().enumerate() {
        let at = format!("tools[{i}]");
        let Some(o) = t.as_object() else {
            return Err(invalid(format!("{at}: must be an object"), Some(&at)));
        };
        match o.get("type") {
            None | Some(Value::Null) => {}
            Some(Value::String(s)) if s == "custom" => {}
            Some(other) => {
                return Err(invalid(
                    format!(
                        "{at}.type: {other} is a server tool, which Sluice does not support; only client tools (name, description, input_schema)"
                    ),
                    Some(&format!("{at}.type")),
                ));
            }
        }
        only(
            o,
            &[
                "type",
                "name",
                "description",
                "input_schema",
                "strict",
                "cache_control",
            ],
            &at,
        )?;
        let name = o.get("name").and_then(Value::as_str).unwrap_or_default();
        if !valid_name(name) {
            return Err(invalid(
                format!("{at}.name: 1 to 64 characters of a-z, A-Z, 0-9, _ and -"),
                Some(&format!("{at}.name")),
            ));
        }
        if out.iter().any(|o| o.name == name) {
            return Err(invalid(
                format!("{at}.name: two tools are named \"{name}\""),
                Some(&format!("{at}.name")),
            ));
        }
        let description = match o.get("description") {
            None | Some(Value::Null) => String::new(),
            Some(Value::String(s)) => s.clone(),
            Some(_) => {
                return Err(invalid(
                    format!("{at}.description: must be a string"),
                    Some(&format!("{at}.description")),
                ));
            }
        };
        let parameters = match o.get("input_schema") {
            Some(s @ Value::Object(_)) => s.clone(),
            _ => {
                return Err(invalid(
                    format!("{at}.input_schema: field required (a JSON Schema object)"),
                    Some(&format!("{at}.input_schema")),
                ));
            }
        };
        out.push(ToolSpec {
            name: name.to_string(),
            description,
            parameters,
            strict: match o.get("strict") {
                None | Some(Value::Null) => None,
                Some(Value::Bool(b)) => Some(*b),
                Some(_) => {
                    return Err(invalid(
                        format!("{at}.strict: must be a boolean"),
                        Some(&format!("{at}.strict")),
                    ));
                }
            },
            cache_control: cache_control(o, &at)?,
        });
    }
    Ok(out)
}

#[cfg(test)]
#[path = "anthropic_request_tests.rs"]
mod tests;
