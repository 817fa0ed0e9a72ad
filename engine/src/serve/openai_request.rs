//! Reading a Chat Completions request as the OpenAI SDKs send it. Every
//! field is either carried to the provider (through `Params`, the
//! messages and the tools) or refused with a 400 that names it: nothing
//! is accepted and silently dropped.

use serde_json::{Map, Value};

use crate::provider::{Message, Params, ResponseFormat, ToolChoice, ToolSpec};

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
        .map(|(i, m)| super::openai_messages::message(m, i))
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
        // OpenAI's own rule, in its words.
        Some(_) if !stream => {
            return Err(invalid(
                "The 'stream_options' parameter is only allowed when 'stream' is enabled.",
                Some("stream_options"),
            ));
        }
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
        if let Some(o) = t.as_object() {
            only(o, &["type", "function"], &at)?;
        }
        let f = &t["function"];
        if let Some(o) = f.as_object() {
            only(
                o,
                &["name", "description", "parameters", "strict"],
                &format!("{at}.function"),
            )?;
        }
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

/// The keys of `obj` (at `at`) that are not among `known`: the first is
/// refused by name, as OpenAI refuses an unknown argument.
fn only(obj: &Map<String, Value>, known: &[&str], at: &str) -> Result<(), Invalid> {
    match obj.keys().find(|k| !known.contains(&k.as_str())) {
        None => Ok(()),
        Some(key) => Err(invalid(
            format!("{at}.{key} is not supported"),
            Some(&format!("{at}.{key}")),
        )),
    }
}

fn response_format(obj: &Map<String, Value>) -> Result<Option<ResponseFormat>, Invalid> {
    let Some(v) = obj.get("response_format").filter(|v| !v.is_null()) else {
        return Ok(None);
    };
    let field = Some("response_format");
    let Some(o) = v.as_object() else {
        return Err(invalid("response_format must be an object", field));
    };
    Ok(Some(match v["type"].as_str() {
        Some("text") => {
            only(o, &["type"], "response_format")?;
            ResponseFormat::Text
        }
        Some("json_object") => {
            only(o, &["type"], "response_format")?;
            ResponseFormat::JsonObject
        }
        Some("json_schema") => {
            only(o, &["type", "json_schema"], "response_format")?;
            let at = "response_format.json_schema";
            let Some(s) = v["json_schema"].as_object() else {
                return Err(invalid(
                    "response_format.json_schema must be an object (name, schema, description, strict)",
                    Some(at),
                ));
            };
            only(s, &["name", "description", "schema", "strict"], at)?;
            let name = s
                .get("name")
                .and_then(Value::as_str)
                .filter(|n| valid_name(n))
                .ok_or_else(|| {
                    invalid(
                        "json_schema.name is required: 1 to 64 characters of a-z, A-Z, 0-9, _ and -",
                        Some("response_format.json_schema.name"),
                    )
                })?;
            let schema = match s.get("schema") {
                None | Some(Value::Null) => serde_json::json!({}),
                Some(o @ Value::Object(_)) => o.clone(),
                Some(_) => {
                    return Err(invalid(
                        "json_schema.schema must be an object",
                        Some("response_format.json_schema.schema"),
                    ));
                }
            };
            let description = match s.get("description") {
                None | Some(Value::Null) => None,
                Some(Value::String(d)) => Some(d.clone()),
                Some(_) => {
                    return Err(invalid(
                        "json_schema.description must be a string",
                        Some("response_format.json_schema.description"),
                    ));
                }
            };
            let strict = match s.get("strict") {
                None | Some(Value::Null) => None,
                Some(Value::Bool(b)) => Some(*b),
                Some(_) => {
                    return Err(invalid(
                        "json_schema.strict must be a boolean",
                        Some("response_format.json_schema.strict"),
                    ));
                }
            };
            ResponseFormat::JsonSchema {
                name: name.to_string(),
                description,
                schema,
                strict,
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

#[cfg(test)]
#[path = "openai_request_tests.rs"]
mod tests;
