//! The OpenAI chat-completions wire format: request bodies, streamed
//! `chat.completion.chunk` events and HTTP error bodies.

use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{Value, json};

use super::sse::SseEvent;
use super::{
    Chunk, FinishReason, Message, Params, Part, ProviderError, ProviderRequest, ResponseFormat,
    Role, ToolChoice, Usage,
};

/// Longest error summary, in characters: these end up in logs and in client
/// errors, so a provider's body must never come through whole.
const SUMMARY_MAX: usize = 200;
/// Most characters of offending upstream data quoted in a `Malformed` error.
const SNIPPET_MAX: usize = 80;
/// Error bodies larger than this are not parsed as JSON, only quoted.
const ERROR_JSON_MAX: usize = 64 << 10;

pub fn request_body(req: &ProviderRequest, stream: bool) -> Value {
    let messages: Vec<Value> = req.messages.iter().map(message).collect();
    let mut body = json!({
        "model": req.model,
        "messages": messages,
        "max_tokens": req.max_tokens,
        "stream": stream,
    });
    params(&req.params, &mut body);
    if !req.tools.is_empty() {
        let tools: Vec<Value> = req
            .tools
            .iter()
            .map(|t| {
                let mut f = json!({"name": t.name, "description": t.description, "parameters": t.parameters});
                if let Some(strict) = t.strict {
                    f["strict"] = json!(strict);
                }
                json!({"type": "function", "function": f})
            })
            .collect();
        body["tools"] = Value::Array(tools);
    }
    if stream {
        // Without this OpenAI sends no usage at all in streaming mode.
        body["stream_options"] = json!({ "include_usage": true });
    }
    body
}

/// The sampling and answer controls OpenAI's API has (see
/// `Params::unsupported_by` for the ones it lacks, refused earlier).
fn params(p: &Params, body: &mut Value) {
    let numbers = [
        ("temperature", p.temperature),
        ("top_p", p.top_p),
        ("presence_penalty", p.presence_penalty),
        ("frequency_penalty", p.frequency_penalty),
    ];
    for (name, v) in numbers {
        if let Some(v) = v {
            body[name] = json!(v);
        }
    }
    if !p.stop.is_empty() {
        body["stop"] = json!(p.stop);
    }
    if let Some(seed) = p.seed {
        body["seed"] = json!(seed);
    }
    if let Some(bias) = &p.logit_bias {
        body["logit_bias"] = Value::Object(bias.clone());
    }
    if let Some(user) = &p.user {
        body["user"] = json!(user);
    }
    if p.logprobs {
        body["logprobs"] = json!(true);
    }
    if let Some(n) = p.top_logprobs {
        body["top_logprobs"] = json!(n);
    }
    if let Some(n) = p.n {
        body["n"] = json!(n);
    }
    match &p.response_format {
        None => {}
        Some(ResponseFormat::Text) => body["response_format"] = json!({"type": "text"}),
        Some(ResponseFormat::JsonObject) => {
            body["response_format"] = json!({"type": "json_object"});
        }
        Some(ResponseFormat::JsonSchema {
            name,
            description,
            schema,
            strict,
        }) => {
            let mut s = json!({"name": name, "schema": schema});
            if let Some(d) = description {
                s["description"] = json!(d);
            }
            if let Some(strict) = strict {
                s["strict"] = json!(strict);
            }
            body["response_format"] = json!({"type": "json_schema", "json_schema": s});
        }
    }
    match &p.tool_choice {
        None => {}
        Some(ToolChoice::Auto) => body["tool_choice"] = json!("auto"),
        Some(ToolChoice::None) => body["tool_choice"] = json!("none"),
        Some(ToolChoice::Required) => body["tool_choice"] = json!("required"),
        Some(ToolChoice::Tool(name)) => {
            body["tool_choice"] = json!({"type": "function", "function": {"name": name}});
        }
    }
    if let Some(parallel) = p.parallel_tool_calls {
        body["parallel_tool_calls"] = json!(parallel);
    }
}

/// A message's content: a plain string when it is text only (what every
/// compatible server takes), else an array of text and image parts.
/// Reasoning handed back is Anthropic's and has no place here.
fn content(m: &Message) -> Value {
    if !m.has_images() {
        return json!(m.text());
    }
    let parts: Vec<Value> = m
        .content
        .iter()
        .filter_map(|p| match p {
            Part::Text(t) => Some(json!({"type": "text", "text": t})),
            Part::Image { image, detail } => {
                let mut url = json!({ "url": image.to_url() });
                if let Some(d) = detail {
                    url["detail"] = json!(d.as_str());
                }
                Some(json!({"type": "image_url", "image_url": url}))
            }
            Part::Thinking { .. } | Part::RedactedThinking(_) => None,
        })
        .collect();
    Value::Array(parts)
}

/// One message in OpenAI's shape: assistant tool calls as `tool_calls`,
/// tool results as `role: tool` with their `tool_call_id`.
fn message(m: &Message) -> Value {
    match m.role {
        Role::Assistant if !m.tool_calls.is_empty() => {
            let calls: Vec<Value> = m
                .tool_calls
                .iter()
                .map(|c| json!({"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}))
                .collect();
            let text = m.text();
            let content = if text.is_empty() {
                Value::Null
            } else {
                json!(text)
            };
            json!({"role": "assistant", "content": content, "tool_calls": calls})
        }
        Role::Tool => json!({
            "role": "tool",
            "tool_call_id": m.tool_call_id.as_deref().unwrap_or_default(),
            // OpenAI has no is_error: a failed result says so in its text.
            "content": if m.is_error { json!(format!("error: {}", m.text())) } else { content(m) },
        }),
        role => json!({ "role": role, "content": content(m) }),
    }
}

// Only the fields we use are declared: serde skips the rest (id,
// system_fingerprint...) without allocating. Text fields are owned
// because they move straight into a `Chunk`.
#[derive(Deserialize)]
struct WireChunk {
    model: Option<String>,
    choices: Option<Vec<WireChoice>>,
    usage: Option<WireUsage>,
    // Free-form in practice (object or string, varying keys), and only ever
    // present once, on failure. Raw, so that a number serde_json cannot hold
    // (`1e400`) still lets the error through.
    error: Option<Box<RawValue>>,
}

#[derive(Deserialize)]
struct WireChoice {
    index: Option<u32>,
    delta: Option<WireDelta>,
    finish_reason: Option<String>,
    /// `{"content": [...], "refusal": [...]}` when the request asked for
    /// logprobs; absent or null otherwise. Raw, so that a value serde_json
    /// cannot hold (`-1e400`) costs the logprobs of that chunk, not its text.
    logprobs: Option<Box<RawValue>>,
}

#[derive(Deserialize)]
struct WireDelta {
    content: Option<String>,
    tool_calls: Option<Vec<WireToolCall>>,
    refusal: Option<String>,
    /// Visible reasoning, as DeepSeek, vLLM and llama.cpp stream it.
    reasoning_content: Option<String>,
    /// The same under the name some other compatible servers use.
    reasoning: Option<String>,
}

#[derive(Deserialize)]
struct WireToolCall {
    index: Option<u32>,
    id: Option<String>,
    function: Option<WireFunction>,
}

#[derive(Deserialize)]
struct WireFunction {
    name: Option<String>,
    arguments: Option<String>,
}

// Both counts are required: a usage object without them would otherwise be
// reported as zero tokens, which is worse for accounting than an error.
#[derive(Deserialize)]
struct WireUsage {
    prompt_tokens: i128,
    completion_tokens: i128,
    prompt_tokens_details: Option<WirePromptDetails>,
}

#[derive(Deserialize)]
struct WirePromptDetails {
    cached_tokens: Option<i128>,
}

#[derive(Debug, Clone)]
pub struct OpenAiDecoder {
    /// The stream named its model already (it is reported once).
    model_seen: bool,
    /// How many choices the request asked for (`n`): a choice index past
    /// them cannot be one of ours and is ignored.
    choices: u32,
    /// The choice the last per-choice chunk belonged to.
    current: u32,
}

impl Default for OpenAiDecoder {
    fn default() -> Self {
        Self::new()
    }
}

impl OpenAiDecoder {
    /// A decoder for a one-choice request.
    pub fn new() -> Self {
        Self::with_choices(1)
    }

    /// A decoder for a request of `n` choices.
    pub fn with_choices(n: u32) -> Self {
        OpenAiDecoder {
            model_seen: false,
            choices: n.max(1),
            current: 0,
        }
    }

    /// Turns one upstream event into chunks. On error nothing is appended.
    pub fn decode(&mut self, ev: &SseEvent, out: &mut Vec<Chunk>) -> Result<(), ProviderError> {
        let data = ev.data.trim_ascii();
        if data == "[DONE]" {
            out.push(Chunk::End);
            return Ok(());
        }
        // Checked first because serde would also accept a JSON array as a
        // struct, positionally.
        if !data.starts_with('{') {
            return Err(malformed("chunk is not a json object", data));
        }
        let chunk: WireChunk = serde_json::from_str(data).map_err(|e| {
            malformed(
                &format!(
                    "invalid chunk ({})",
                    one_line(&e.to_string(), SNIPPET_MAX, false)
                ),
                data,
            )
        })?;
        if let Some(err) = chunk.error {
            let summary = match serde_json::from_str::<Value>(err.get()) {
                Ok(v) => error_summary(&v),
                Err(_) => one_line(
                    &format!("unrecognized error {}", err.get()),
                    SUMMARY_MAX,
                    false,
                ),
            };
            return Err(ProviderError::InStream {
                message: summary,
                kind: None,
            });
        }
        if chunk.choices.is_none() && chunk.usage.is_none() {
            return Err(malformed("chunk has neither choices nor usage", data));
        }
        if !self.model_seen
            && let Some(model) = chunk.model.filter(|m| !m.is_empty())
        {
            self.model_seen = true;
            out.push(Chunk::Model(model));
        }
        // Choice indices past what was asked cannot occur in our requests,
        // and are ignored should a server send them anyway.
        for choice in chunk.choices.into_iter().flatten() {
            let index = choice.index.unwrap_or(0);
            if index >= self.choices {
                continue;
            }
            // Named only when it changes: a one-choice stream never is.
            if index != self.current {
                self.current = index;
                out.push(Chunk::Choice(index));
            }
            // Before the text it describes, so that a client API can send
            // both in one piece. Null and empty ones say nothing.
            if let Some(lp) = choice.logprobs.and_then(|raw| logprobs_of(&raw)) {
                out.push(Chunk::Logprobs(lp));
            }
            if let Some(delta) = choice.delta {
                for thought in [delta.reasoning_content, delta.reasoning]
                    .into_iter()
                    .flatten()
                    .filter(|t| !t.is_empty())
                {
                    out.push(Chunk::Reasoning(thought));
                }
                if let Some(text) = delta.refusal
                    && !text.is_empty()
                {
                    out.push(Chunk::Refusal(text));
                }
                if let Some(text) = delta.content
                    && !text.is_empty()
                {
                    out.push(Chunk::Delta(text));
                }
                for (pos, call) in delta.tool_calls.into_iter().flatten().enumerate() {
                    let (name, arguments) = match call.function {
                        Some(f) => (f.name, f.arguments.unwrap_or_default()),
                        None => (None, String::new()),
                    };
                    out.push(Chunk::ToolCallDelta {
                        // Some compatible servers omit the index; the
                        // position keeps parallel calls apart.
                        index: call.index.unwrap_or(pos as u32),
                        id: call.id,
                        name,
                        arguments,
                    });
                }
            }
            if let Some(reason) = choice.finish_reason {
                out.push(Chunk::Finish(FinishReason::from_openai(&reason)));
            }
        }
        if let Some(u) = chunk.usage {
            out.push(Chunk::Usage(Usage {
                prompt_tokens: u.prompt_tokens,
                completion_tokens: u.completion_tokens,
                cache_read_tokens: u
                    .prompt_tokens_details
                    .and_then(|d| d.cached_tokens)
                    .unwrap_or(0),
                cache_write_tokens: 0,
                cache_write_1h_tokens: None,
            }));
        }
        Ok(())
    }
}

/// A choice's logprobs when they hold any token. Values serde_json cannot
/// hold make the chunk's logprobs unreadable: they are dropped (logged), the
/// rest of the chunk still counts.
fn logprobs_of(raw: &RawValue) -> Option<Value> {
    match serde_json::from_str::<Value>(raw.get()) {
        Ok(v) => has_logprobs(&v).then_some(v),
        Err(e) => {
            tracing::debug!(error = %e, "provider sent logprobs that cannot be read; dropped");
            None
        }
    }
}

/// Whether a choice's `logprobs` object holds any token: `content` or
/// `refusal` a non-empty array (OpenAI sends `{"content": null,
/// "refusal": []}` on chunks that carry no text).
fn has_logprobs(v: &Value) -> bool {
    ["content", "refusal"].iter().any(|k| {
        v.get(k)
            .and_then(Value::as_array)
            .is_some_and(|a| !a.is_empty())
    })
}

/// A one-line summary of an HTTP error body, at most 200 characters.
pub fn summarize_error_body(status: u16, body: &[u8]) -> String {
    let body = body.trim_ascii();
    if body.is_empty() {
        return format!("empty error body (HTTP {status})");
    }
    if body.len() <= ERROR_JSON_MAX
        && body[0] == b'{'
        && let Ok(v) = serde_json::from_slice::<Value>(body)
    {
        let found = match &v {
            Value::Object(map) => map
                .get("error")
                .filter(|e| !e.is_null())
                .map(error_summary)
                .or_else(|| {
                    // FastAPI-style and other compatible servers.
                    ["message", "detail"]
                        .iter()
                        .find_map(|k| map.get(*k)?.as_str())
                        .map(|s| one_line(s, SUMMARY_MAX, false))
                }),
            _ => None,
        };
        if let Some(summary) = found {
            return summary;
        }
    }
    if body[0] == b'<' {
        // Usually a proxy's HTML page: its title says it all, the markup nothing.
        return match html_title(body) {
            Some(title) => one_line(&format!("html error page: {title}"), SUMMARY_MAX, false),
            None => format!("html error page (HTTP {status})"),
        };
    }
    // 4 bytes per character at most, plus slack for a cut character.
    let cut = body.len().min(SUMMARY_MAX * 4 + 4);
    let mut text = String::from_utf8_lossy(&body[..cut]).into_owned();
    let truncated = cut < body.len();
    if truncated && text.ends_with('\u{FFFD}') {
        text.pop();
    }
    one_line(&text, SUMMARY_MAX, truncated)
}

/// "type: message" from an OpenAI error object, or whatever it carries.
fn error_summary(err: &Value) -> String {
    let text = match err {
        Value::String(s) => s.clone(),
        Value::Object(map) => {
            let message = map.get("message").and_then(Value::as_str);
            let kind = map
                .get("type")
                .and_then(Value::as_str)
                .or_else(|| map.get("code").and_then(Value::as_str));
            match (kind, message) {
                (Some(k), Some(m)) => format!("{k}: {m}"),
                (Some(k), None) => k.to_string(),
                (None, Some(m)) => m.to_string(),
                (None, None) => format!("unrecognized error object {err}"),
            }
        }
        other => format!("unrecognized error {other}"),
    };
    one_line(&text, SUMMARY_MAX, false)
}

fn malformed(what: &str, data: &str) -> ProviderError {
    ProviderError::Malformed(format!("{what}: {}", one_line(data, SNIPPET_MAX, false)))
}

/// Collapses whitespace and control characters to single spaces and keeps at
/// most `max` characters, ending with "..." when anything was cut.
pub(super) fn one_line(s: &str, max: usize, truncated: bool) -> String {
    let mut out = String::with_capacity(s.len().min(max * 4));
    let mut count = 0;
    let mut cut = truncated;
    let mut pending_space = false;
    for c in s.trim().chars() {
        if c.is_whitespace() || c.is_control() {
            pending_space = true;
            continue;
        }
        let needed = if pending_space { 2 } else { 1 };
        if count + needed > max {
            cut = true;
            break;
        }
        if pending_space {
            out.push(' ');
            pending_space = false;
        }
        out.push(c);
        count += needed;
    }
    if cut {
        while count + 3 > max {
            match out.pop() {
                Some(_) => count -= 1,
                None => break,
            }
        }
        out.truncate(out.trim_end().len());
        out.push_str("...");
    }
    out
}

fn html_title(body: &[u8]) -> Option<String> {
    let head = &body[..body.len().min(8 << 10)];
    let open = find_ascii_ci(head, b"<title")?;
    let start = open + head[open..].iter().position(|&b| b == b'>')? + 1;
    // An unclosed title is still better than nothing; `one_line` bounds it.
    let len = find_ascii_ci(&head[start..], b"</title").unwrap_or(head.len() - start);
    let title = String::from_utf8_lossy(&head[start..start + len]);
    let title = one_line(&title, SUMMARY_MAX, false);
    (!title.is_empty()).then_some(title)
}

fn find_ascii_ci(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len())
        .position(|w| w.eq_ignore_ascii_case(needle))
}

#[cfg(test)]
#[path = "openai_wire_tests.rs"]
mod tests;
