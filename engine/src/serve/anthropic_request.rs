//! Reading a Messages request (`POST /v1/messages`, and its
//! `count_tokens`) as the Anthropic SDKs send it. Every field and content
//! block is carried to the provider (through the messages, `Params` and
//! the tools) or refused with a 400 that names it: nothing is accepted and
//! silently dropped.

use serde_json::{Map, Value};

use super::openai_request::{Invalid, invalid, number_field, uint_field, valid_name};
use crate::provider::{Image, Message, Params, Part, Role, ToolCall, ToolChoice, ToolSpec};

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

/// Why `cache_control` is refused where it is.
const NO_CACHE_CONTROL: &str = "cache_control is not supported on this block (Anthropic takes it on system text blocks, message text, image, tool_use and tool_result blocks, and tools)";

fn number(obj: &Map<String, Value>, key: &str, lo: f64, hi: f64) -> Result<Option<f64>, Invalid> {
    number_field(obj, key, lo, hi, ": ")
}

fn uint(obj: &Map<String, Value>, key: &str, lo: u64, hi: u64) -> Result<Option<u64>, Invalid> {
    uint_field(obj, key, lo, hi, ": ")
}

/// Refuses any key of `obj` outside `allowed` (a null value is taken as
/// absent: SDKs serialize unset optional fields that way).
fn only(obj: &Map<String, Value>, allowed: &[&str], at: &str) -> Result<(), Invalid> {
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
fn cache_control(obj: &Map<String, Value>, at: &str) -> Result<Option<Value>, Invalid> {
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
fn one_hour(cc: &Value) -> bool {
    cc.get("ttl").and_then(Value::as_str) == Some("1h")
}

fn string<'a>(obj: &'a Map<String, Value>, key: &str, at: &str) -> Result<&'a str, Invalid> {
    obj.get(key).and_then(Value::as_str).ok_or_else(|| {
        let here = format!("{at}.{key}");
        invalid(format!("{here}: field required (a string)"), Some(&here))
    })
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
            strict: None,
            cache_control: cache_control(o, &at)?,
        });
    }
    Ok(out)
}

/// One conversation message. A user turn's `tool_result` blocks become
/// `tool` messages (first, as Anthropic requires them), the rest of the
/// turn a user message after them.
fn message(m: &Value, i: usize, out: &mut Vec<Message>) -> Result<(), Invalid> {
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
                turn.content
                    .push(Part::Image(image(o.get("source"), &here)?));
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

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_ok(v: Value) -> MessagesRequest {
        match parse(v.to_string().as_bytes(), Endpoint::Messages) {
            Ok(r) => r,
            Err(e) => panic!("refused: {}", e.message),
        }
    }

    fn refused(v: Value) -> (String, Option<String>) {
        match parse(v.to_string().as_bytes(), Endpoint::Messages) {
            Ok(_) => panic!("accepted {v}"),
            Err(e) => (e.message, e.param),
        }
    }

    #[test]
    fn a_full_request_maps_to_the_seam() {
        let r = parse_ok(serde_json::json!({
            "model": "p", "max_tokens": 100, "stream": true,
            "system": [{"type": "text", "text": "be brief"}],
            "messages": [
                {"role": "user", "content": "weather?"},
                {"role": "assistant", "content": [
                    {"type": "thinking", "thinking": "hm", "signature": "sig"},
                    {"type": "text", "text": "checking", "citations": null},
                    {"type": "tool_use", "id": "tu_1", "name": "weather", "input": {"city": "Oslo"}}
                ]},
                {"role": "user", "content": [
                    {"type": "tool_result", "tool_use_id": "tu_1", "content": [{"type": "text", "text": "cold"}], "is_error": true},
                    {"type": "text", "text": "and?"},
                    {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "AAA="}}
                ]}
            ],
            "tools": [{"name": "weather", "description": "d", "input_schema": {"type": "object"}}],
            "tool_choice": {"type": "any", "disable_parallel_tool_use": true},
            "stop_sequences": ["END"], "temperature": 0.5, "top_p": 0.9, "top_k": 40,
            "metadata": {"user_id": "u1"},
            "thinking": {"type": "enabled", "budget_tokens": 1024}
        }));
        assert_eq!(r.max_tokens, Some(100));
        assert!(r.stream);
        let roles: Vec<Role> = r.messages.iter().map(|m| m.role).collect();
        assert_eq!(
            roles,
            [
                Role::System,
                Role::User,
                Role::Assistant,
                Role::Tool,
                Role::User
            ]
        );
        assert_eq!(
            r.messages[2].content[0],
            Part::Thinking {
                text: "hm".into(),
                signature: "sig".into()
            }
        );
        assert_eq!(r.messages[2].tool_calls[0].arguments, r#"{"city":"Oslo"}"#);
        assert!(r.messages[3].is_error);
        assert_eq!(r.messages[3].text(), "cold");
        assert!(r.messages[4].has_images());
        assert_eq!(r.params.tool_choice, Some(ToolChoice::Required));
        assert_eq!(r.params.parallel_tool_calls, Some(false));
        assert_eq!(r.params.top_k, Some(40));
        assert_eq!(r.params.user.as_deref(), Some("u1"));
        assert_eq!(r.params.stop, ["END"]);
        assert!(r.params.thinking.is_some());
        assert_eq!(r.tools[0].name, "weather");
    }

    #[test]
    fn refusals_name_the_field() {
        let base = |extra: Value| {
            let mut v = serde_json::json!({"model": "p", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]});
            for (k, x) in extra.as_object().unwrap() {
                v[k] = x.clone();
            }
            v
        };
        let cases = [
            (serde_json::json!({"max_tokens": null}), "max_tokens"),
            (serde_json::json!({"service_tier": "auto"}), "service_tier"),
            (serde_json::json!({"temperature": 1.5}), "temperature"),
            (
                serde_json::json!({"messages": [{"role": "user", "content": [{"type": "document", "source": {}}]}]}),
                "messages[0].content[0].type",
            ),
            (
                serde_json::json!({"messages": [{"role": "user", "content": [{"type": "text", "text": "x", "cache_control": {"type": "forever"}}]}]}),
                "messages[0].content[0].cache_control",
            ),
            (
                serde_json::json!({"messages": [{"role": "assistant", "content": [{"type": "thinking", "thinking": "x", "signature": "s", "cache_control": {"type": "ephemeral"}}]}]}),
                "messages[0].content[0].cache_control",
            ),
            (
                serde_json::json!({"messages": [{"role": "user", "content": [{"type": "tool_result", "tool_use_id": "nope", "content": "x"}]}]}),
                "messages",
            ),
            (
                serde_json::json!({"tools": [{"type": "web_search_20250305", "name": "web_search"}]}),
                "tools[0].type",
            ),
            (
                serde_json::json!({"tools": [{"name": "a"}]}),
                "tools[0].input_schema",
            ),
            (
                serde_json::json!({"tool_choice": {"type": "tool"}}),
                "tool_choice.name",
            ),
            (
                serde_json::json!({"metadata": {"user_id": "x", "tier": 1}}),
                "metadata.tier",
            ),
            (
                serde_json::json!({"messages": [{"role": "system", "content": "x"}]}),
                "messages[0].role",
            ),
        ];
        for (extra, field) in cases {
            let (message, param) = refused(base(extra.clone()));
            assert_eq!(param.as_deref(), Some(field), "{extra}: {message}");
            assert!(
                message.contains(field.split('[').next().unwrap()),
                "{message}"
            );
        }
    }

    #[test]
    fn cache_breakpoints_are_kept_by_block() {
        let r = parse_ok(serde_json::json!({
            "model": "p", "max_tokens": 5,
            "messages": [
                {"role": "user", "content": "q"},
                {"role": "assistant", "content": [
                    {"type": "tool_use", "id": "t1", "name": "a", "input": {}, "cache_control": {"type": "ephemeral"}},
                    {"type": "text", "text": "x", "cache_control": {"type": "ephemeral"}}]}]
        }));
        // Parts first (the text is block 0), then the call (block 1).
        let marks: Vec<u32> = r.messages[1]
            .cache_control
            .iter()
            .map(|(i, _)| *i)
            .collect();
        assert_eq!(marks, [0, 1]);
        assert!(r.params.cache_control);
        let plain = parse_ok(
            serde_json::json!({"model": "p", "max_tokens": 5, "messages": [{"role": "user", "content": "q"}]}),
        );
        assert!(!plain.params.cache_control);
    }

    #[test]
    fn count_tokens_needs_no_max_tokens_and_takes_no_sampling() {
        let body =
            serde_json::json!({"model": "p", "messages": [{"role": "user", "content": "hi"}]});
        assert!(parse(body.to_string().as_bytes(), Endpoint::CountTokens).is_ok());
        let body = serde_json::json!({"model": "p", "temperature": 0.1, "messages": [{"role": "user", "content": "hi"}]});
        let e = parse(body.to_string().as_bytes(), Endpoint::CountTokens)
            .err()
            .unwrap();
        assert_eq!(e.param.as_deref(), Some("temperature"));
    }
}
