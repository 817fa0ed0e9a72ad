//! Reading a Chat Completions request as the OpenAI SDKs send it. Every
//! field is either carried to the provider (through `Params`, the
//! messages and the tools) or refused with a 400 that names it: nothing
//! is accepted and silently dropped.

use serde_json::{Map, Value};

use crate::provider::{
    Image, ImageDetail, Message, Params, Part, ResponseFormat, Role, ToolCall, ToolChoice, ToolSpec,
};

/// A validated chat-completions request.
pub(super) struct ChatRequest {
    pub model: String,
    pub messages: Vec<Message>,
    pub max_tokens: Option<u32>,
    pub stream: bool,
    pub include_usage: bool,
    pub params: Params,
    pub tools: Vec<ToolSpec>,
}

/// A request OpenAI would answer with 400 `invalid_request_error`.
pub(super) struct Invalid {
    pub message: String,
    pub param: Option<String>,
}

pub(super) fn invalid(message: impl Into<String>, param: Option<&str>) -> Invalid {
    Invalid {
        message: message.into(),
        param: param.map(str::to_string),
    }
}

/// Most tools a request may bring (OpenAI's own limit).
const MAX_TOOLS: usize = 128;
/// Most stop sequences (OpenAI's own limit).
const MAX_STOP: usize = 4;

/// Fields read below; anything else is refused by name.
const FIELDS: &[&str] = &[
    "model",
    "messages",
    "max_tokens",
    "max_completion_tokens",
    "stream",
    "stream_options",
    "temperature",
    "top_p",
    "stop",
    "seed",
    "presence_penalty",
    "frequency_penalty",
    "logit_bias",
    "user",
    "logprobs",
    "top_logprobs",
    "n",
    "response_format",
    "tools",
    "tool_choice",
    "parallel_tool_calls",
    "store",
];

fn number(obj: &Map<String, Value>, key: &str, lo: f64, hi: f64) -> Result<Option<f64>, Invalid> {
    number_field(obj, key, lo, hi, " ")
}

fn uint(obj: &Map<String, Value>, key: &str, lo: u64, hi: u64) -> Result<Option<u64>, Invalid> {
    uint_field(obj, key, lo, hi, " ")
}

/// A number in `lo..=hi`, or absent. `sep` goes between the field's name
/// and what is wrong with it: OpenAI's " ", Anthropic's ": ".
pub(super) fn number_field(
    obj: &Map<String, Value>,
    key: &str,
    lo: f64,
    hi: f64,
    sep: &str,
) -> Result<Option<f64>, Invalid> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => match v.as_f64() {
            Some(x) if (lo..=hi).contains(&x) => Ok(Some(x)),
            _ => Err(invalid(
                format!("{key}{sep}must be a number from {lo} to {hi}"),
                Some(key),
            )),
        },
    }
}

/// An integer in `lo..=hi`, or absent (see [`number_field`]).
pub(super) fn uint_field(
    obj: &Map<String, Value>,
    key: &str,
    lo: u64,
    hi: u64,
    sep: &str,
) -> Result<Option<u64>, Invalid> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => match v.as_u64() {
            Some(x) if (lo..=hi).contains(&x) => Ok(Some(x)),
            _ => Err(invalid(
                format!("{key}{sep}must be an integer from {lo} to {hi}"),
                Some(key),
            )),
        },
    }
}

fn boolean(obj: &Map<String, Value>, key: &str) -> Result<Option<bool>, Invalid> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(_) => Err(invalid(format!("{key} must be a boolean"), Some(key))),
    }
}

pub(super) fn parse(body: &[u8]) -> Result<ChatRequest, Invalid> {
    let v: Value = serde_json::from_slice(body)
        .map_err(|e| invalid(format!("request body is not valid JSON: {e}"), None))?;
    let Some(obj) = v.as_object() else {
        return Err(invalid("request body must be a JSON object", None));
    };
    for key in obj.keys() {
        if FIELDS.contains(&key.as_str()) {
            continue;
        }
        let hint = match key.as_str() {
            "functions" | "function_call" => {
                ": the deprecated functions API is not supported; send \"tools\" and \"tool_choice\""
            }
            _ => "",
        };
        return Err(invalid(
            format!("\"{key}\" is not supported by Sluice{hint}"),
            Some(key),
        ));
    }
    let model = obj
        .get("model")
        .and_then(Value::as_str)
        .ok_or_else(|| {
            invalid(
                "you must provide a model parameter (the pipeline's name)",
                Some("model"),
            )
        })?
        .to_string();
    // Several choices: checked against the pipeline (its provider must
    // have `n`, and it must not involve tools).
    let n = uint(obj, "n", 1, 128)?.map(|n| n as u32);
    if boolean(obj, "store")? == Some(true) {
        return Err(invalid(
            "store: true is not supported: Sluice keeps its own ledger and does not store completions with the provider",
            Some("store"),
        ));
    }
    let Some(items) = obj.get("messages").and_then(Value::as_array) else {
        return Err(invalid("messages must be an array", Some("messages")));
    };
    if items.is_empty() {
        return Err(invalid("messages must not be empty", Some("messages")));
    }
    let messages = items
        .iter()
        .enumerate()
        .map(|(i, m)| message(m, i))
        .collect::<Result<Vec<_>, _>>()?;
    // A tool result answers a call the conversation made.
    let mut called: std::collections::HashSet<&str> = std::collections::HashSet::new();
    for (i, m) in messages.iter().enumerate() {
        if let Some(id) = &m.tool_call_id
            && !called.contains(id.as_str())
        {
            return Err(invalid(
                format!(
                    "tool_call_id \"{id}\" answers no tool call of an earlier assistant message"
                ),
                Some(&format!("messages[{i}].tool_call_id")),
            ));
        }
        called.extend(m.tool_calls.iter().map(|c| c.id.as_str()));
    }
    // max_completion_tokens is the current name; max_tokens the old one.
    let max_tokens = match uint(obj, "max_completion_tokens", 1, u64::from(u32::MAX))? {
        Some(n) => Some(n),
        None => uint(obj, "max_tokens", 1, u64::from(u32::MAX))?,
    }
    .map(|n| n as u32);
    let stream = boolean(obj, "stream")?.unwrap_or(false);
    let include_usage = match obj.get("stream_options") {
        None | Some(Value::Null) => false,
        Some(Value::Object(o)) => {
            for key in o.keys() {
                if key != "include_usage" {
                    return Err(invalid(
                        format!("stream_options.{key} is not supported"),
                        Some("stream_options"),
                    ));
                }
            }
            boolean(o, "include_usage")?.unwrap_or(false)
        }
        Some(_) => {
            return Err(invalid(
                "stream_options must be an object",
                Some("stream_options"),
            ));
        }
    };
    let tools = tools(obj)?;
    let mut params = Params {
        temperature: number(obj, "temperature", 0.0, 2.0)?,
        top_p: number(obj, "top_p", 0.0, 1.0)?,
        presence_penalty: number(obj, "presence_penalty", -2.0, 2.0)?,
        frequency_penalty: number(obj, "frequency_penalty", -2.0, 2.0)?,
        stop: stop(obj)?,
        logprobs: boolean(obj, "logprobs")?.unwrap_or(false),
        top_logprobs: uint(obj, "top_logprobs", 0, 20)?.map(|n| n as u32),
        parallel_tool_calls: boolean(obj, "parallel_tool_calls")?,
        // n = 1 is what every request gets: not sent.
        n: n.filter(|&n| n > 1),
        ..Params::default()
    };
    if params.top_logprobs.is_some() && !params.logprobs {
        // OpenAI's own rule.
        return Err(invalid(
            "top_logprobs requires logprobs: true",
            Some("top_logprobs"),
        ));
    }
    params.seed = match obj.get("seed") {
        None | Some(Value::Null) => None,
        Some(v) => Some(
            v.as_i64()
                .ok_or_else(|| invalid("seed must be an integer", Some("seed")))?,
        ),
    };
    params.user = match obj.get("user") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) if s.len() <= 256 => Some(s.clone()),
        Some(_) => {
            return Err(invalid(
                "user must be a string of at most 256 bytes",
                Some("user"),
            ));
        }
    };
    params.logit_bias = match obj.get("logit_bias") {
        None | Some(Value::Null) => None,
        Some(Value::Object(m)) => {
            let ok = m.len() <= 1024
                && m.iter().all(|(k, v)| {
                    k.parse::<u32>().is_ok()
                        && v.as_f64().is_some_and(|b| (-100.0..=100.0).contains(&b))
                });
            if !ok {
                return Err(invalid(
                    "logit_bias must map token ids to numbers from -100 to 100",
                    Some("logit_bias"),
                ));
            }
            Some(m.clone())
        }
        Some(_) => {
            return Err(invalid("logit_bias must be an object", Some("logit_bias")));
        }
    };
    params.response_format = response_format(obj)?;
    params.tool_choice = tool_choice(obj)?;
    if let Some(ToolChoice::Tool(name)) = &params.tool_choice
        && !tools.is_empty()
        && !tools.iter().any(|t| &t.name == name)
    {
        // A pipeline's own tool may be named too: checked with the pipeline.
        return Err(invalid(
            format!("tool_choice names \"{name}\", which is not among the request's tools"),
            Some("tool_choice"),
        ));
    }
    Ok(ChatRequest {
        model,
        messages,
        max_tokens,
        stream,
        include_usage,
        params,
        tools,
    })
}

fn stop(obj: &Map<String, Value>) -> Result<Vec<String>, Invalid> {
    let bad = || {
        invalid(
            format!("stop must be a string or an array of at most {MAX_STOP} strings"),
            Some("stop"),
        )
    };
    match obj.get("stop") {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::String(s)) => Ok(vec![s.clone()]),
        Some(Value::Array(items)) if items.len() <= MAX_STOP => items
            .iter()
            .map(|s| s.as_str().map(str::to_string).ok_or_else(bad))
            .collect(),
        Some(_) => Err(bad()),
    }
}

/// A tool or function name as both APIs allow it.
pub(super) fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

fn tools(obj: &Map<String, Value>) -> Result<Vec<ToolSpec>, Invalid> {
    let items = match obj.get("tools") {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(Value::Array(items)) if items.len() <= MAX_TOOLS => items,
        Some(_) => {
            return Err(invalid(
                format!("tools must be an array of at most {MAX_TOOLS} tools"),
                Some("tools"),
            ));
        }
    };
    let mut out: Vec<ToolSpec> = Vec::with_capacity(items.len());
    for (i, t) in items.iter().enumerate() {
        let at = format!("tools[{i}]");
        if t["type"] != "function" {
            return Err(invalid(
                "only function tools are supported (type: \"function\")",
                Some(&format!("{at}.type")),
            ));
        }
        let f = &t["function"];
        let name = f["name"].as_str().unwrap_or_default();
        if !valid_name(name) {
            return Err(invalid(
                "a function name is 1 to 64 characters of a-z, A-Z, 0-9, _ and -",
                Some(&format!("{at}.function.name")),
            ));
        }
        if out.iter().any(|o| o.name == name) {
            return Err(invalid(
                format!("two tools are named \"{name}\""),
                Some(&format!("{at}.function.name")),
            ));
        }
        let description = match &f["description"] {
            Value::Null => String::new(),
            Value::String(s) => s.clone(),
            _ => {
                return Err(invalid(
                    "description must be a string",
                    Some(&format!("{at}.function.description")),
                ));
            }
        };
        let parameters = match &f["parameters"] {
            // OpenAI's default: a function that takes no arguments.
            Value::Null => serde_json::json!({"type": "object", "properties": {}}),
            p @ Value::Object(_) => p.clone(),
            _ => {
                return Err(invalid(
                    "parameters must be a JSON Schema object",
                    Some(&format!("{at}.function.parameters")),
                ));
            }
        };
        let strict = match &f["strict"] {
            Value::Null => None,
            Value::Bool(b) => Some(*b),
            _ => {
                return Err(invalid(
                    "strict must be a boolean",
                    Some(&format!("{at}.function.strict")),
                ));
            }
        };
        out.push(ToolSpec {
            name: name.to_string(),
            description,
            parameters,
            strict,
            cache_control: None,
        });
    }
    Ok(out)
}

fn tool_choice(obj: &Map<String, Value>) -> Result<Option<ToolChoice>, Invalid> {
    let bad = || {
        invalid(
            "tool_choice must be \"none\", \"auto\", \"required\" or {\"type\": \"function\", \"function\": {\"name\": ...}}",
            Some("tool_choice"),
        )
    };
    Ok(match obj.get("tool_choice") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(match s.as_str() {
            "none" => ToolChoice::None,
            "auto" => ToolChoice::Auto,
            "required" => ToolChoice::Required,
            _ => return Err(bad()),
        }),
        Some(v @ Value::Object(_)) if v["type"] == "function" => {
            let name = v["function"]["name"].as_str().ok_or_else(bad)?;
            Some(ToolChoice::Tool(name.to_string()))
        }
        Some(_) => return Err(bad()),
    })
}

fn response_format(obj: &Map<String, Value>) -> Result<Option<ResponseFormat>, Invalid> {
    let Some(v) = obj.get("response_format").filter(|v| !v.is_null()) else {
        return Ok(None);
    };
    let field = Some("response_format");
    Ok(Some(match v["type"].as_str() {
        Some("text") => ResponseFormat::Text,
        Some("json_object") => ResponseFormat::JsonObject,
        Some("json_schema") => {
            let s = &v["json_schema"];
            let name = s["name"].as_str().filter(|n| valid_name(n)).ok_or_else(|| {
                invalid(
                    "json_schema.name is required: 1 to 64 characters of a-z, A-Z, 0-9, _ and -",
                    field,
                )
            })?;
            let schema = match &s["schema"] {
                Value::Null => serde_json::json!({}),
                o @ Value::Object(_) => o.clone(),
                _ => return Err(invalid("json_schema.schema must be an object", field)),
            };
            ResponseFormat::JsonSchema {
                name: name.to_string(),
                description: s["description"].as_str().map(str::to_string),
                schema,
                strict: s["strict"].as_bool(),
            }
        }
        _ => {
            return Err(invalid(
                "response_format.type must be \"text\", \"json_object\" or \"json_schema\"",
                field,
            ));
        }
    }))
}

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

fn message(m: &Value, i: usize) -> Result<Message, Invalid> {
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
            if let Some(r) = m["refusal"].as_str().filter(|r| !r.is_empty())
                && out.content.is_empty()
            {
                out.content.push(Part::Text(r.to_string()));
            }
            if let Some(calls) = m["tool_calls"].as_array() {
                for (j, c) in calls.iter().enumerate() {
                    let here = format!("{at}.tool_calls[{j}]");
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

#[cfg(test)]
#[path = "openai_request_tests.rs"]
mod tests;
