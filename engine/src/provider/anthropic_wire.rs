//! The Anthropic Messages API wire format: request bodies, the streamed
//! `message_start` ... `message_stop` events and HTTP error bodies.
//!
//! Unlike OpenAI's, this stream is typed by the SSE `event:` name, so the
//! decoder dispatches on it (falling back to the data's `type` when a proxy
//! drops the name) and parses only the fields each event needs.

use std::borrow::Cow;

use serde::Deserialize;
use serde_json::{Value, json};

use super::sse::SseEvent;
use super::{
    Chunk, ErrorKind, FinishReason, Image, Message, Params, Part, ProviderError, ProviderRequest,
    Role, ToolChoice, Usage,
};

/// Longest summary of an in-stream error, in characters.
const SUMMARY_MAX: usize = 200;
/// Most characters of offending upstream data quoted in a `Malformed` error.
const SNIPPET_MAX: usize = 80;

/// The body of `POST {base_url}/messages`. Anthropic has no system role in
/// `messages`: system messages are joined into the top-level `system`.
pub fn request_body(req: &ProviderRequest) -> Value {
    let system: Vec<&Message> = req
        .messages
        .iter()
        .filter(|m| m.role == Role::System)
        .collect();
    let messages = messages(&req.messages);
    let mut body = json!({
        "model": req.model,
        "max_tokens": req.max_tokens,
        "messages": messages,
        "stream": true,
    });
    if system.iter().any(|m| !m.cache_control.is_empty()) {
        // Breakpoints need blocks: one text block per system message.
        let blocks: Vec<Value> = system
            .iter()
            .filter(|m| !m.text().is_empty())
            .map(|m| {
                let mut block = json!({"type": "text", "text": m.text()});
                if let Some((_, cc)) = m.cache_control.first() {
                    block["cache_control"] = cc.clone();
                }
                block
            })
            .collect();
        body["system"] = Value::Array(blocks);
    } else if !system.is_empty() {
        let texts: Vec<String> = system.iter().map(|m| m.text().into_owned()).collect();
        body["system"] = json!(texts.join("\n\n"));
    }
    params(&req.params, &mut body);
    if !req.tools.is_empty() {
        let tools: Vec<Value> = req
            .tools
            .iter()
            .map(|t| {
                let mut tool = json!({"name": t.name, "description": t.description, "input_schema": t.parameters});
                // Anthropic's strict tool use (structured outputs): the
                // same promise as OpenAI's `strict`, under the same name.
                if let Some(strict) = t.strict {
                    tool["strict"] = json!(strict);
                }
                if let Some(cc) = &t.cache_control {
                    tool["cache_control"] = cc.clone();
                }
                tool
            })
            .collect();
        body["tools"] = Value::Array(tools);
    }
    body
}

/// The client's cache breakpoint on block `index` of `m`, if any.
fn mark(m: &Message, index: usize, block: &mut Value) {
    if let Some((_, cc)) = m.cache_control.iter().find(|(i, _)| *i as usize == index) {
        block["cache_control"] = cc.clone();
    }
}

/// The sampling and answer controls Anthropic's API has (see
/// `Params::unsupported_by` for the ones it lacks, refused earlier).
fn params(p: &Params, body: &mut Value) {
    if let Some(t) = p.temperature {
        body["temperature"] = json!(t);
    }
    if let Some(t) = p.top_p {
        body["top_p"] = json!(t);
    }
    if let Some(k) = p.top_k {
        body["top_k"] = json!(k);
    }
    if !p.stop.is_empty() {
        body["stop_sequences"] = json!(p.stop);
    }
    if let Some(user) = &p.user {
        body["metadata"] = json!({ "user_id": user });
    }
    if let Some(thinking) = &p.thinking {
        body["thinking"] = thinking.clone();
    }
    let choice = match &p.tool_choice {
        None if p.parallel_tool_calls == Some(false) => Some(json!({"type": "auto"})),
        None => None,
        Some(ToolChoice::Auto) => Some(json!({"type": "auto"})),
        Some(ToolChoice::None) => Some(json!({"type": "none"})),
        Some(ToolChoice::Required) => Some(json!({"type": "any"})),
        Some(ToolChoice::Tool(name)) => Some(json!({"type": "tool", "name": name})),
    };
    if let Some(mut choice) = choice {
        if p.parallel_tool_calls == Some(false) && choice["type"] != "none" {
            choice["disable_parallel_tool_use"] = json!(true);
        }
        body["tool_choice"] = choice;
    }
}

/// A message's content blocks: text, images, and (for an assistant turn)
/// earlier reasoning, which Anthropic wants first and unchanged.
fn blocks(m: &Message) -> Vec<Value> {
    m.content
        .iter()
        .enumerate()
        .filter_map(|(i, p)| Some((i, part_block(p)?)))
        .map(|(i, mut block)| {
            mark(m, i, &mut block);
            block
        })
        .collect()
}

fn part_block(p: &Part) -> Option<Value> {
    match p {
        Part::Text(t) if t.is_empty() => None,
        Part::Text(t) => Some(json!({"type": "text", "text": t})),
        // OpenAI's `detail` is a hint Anthropic has no field for: left out.
        Part::Image {
            image: Image::Url(url),
            ..
        } => Some(json!({"type": "image", "source": {"type": "url", "url": url}})),
        Part::Image {
            image: Image::Base64 { media_type, data },
            ..
        } => Some(json!({
            "type": "image",
            "source": {"type": "base64", "media_type": media_type, "data": data},
        })),
        // Reasoning without a signature (another provider's) cannot be
        // handed to Anthropic, which checks signatures.
        Part::Thinking { signature, .. } if signature.is_empty() => None,
        Part::Thinking { text, signature } => {
            Some(json!({"type": "thinking", "thinking": text, "signature": signature}))
        }
        Part::RedactedThinking(data) => Some(json!({"type": "redacted_thinking", "data": data})),
    }
}

/// Plain text as a string (the shortest form), anything else as blocks.
fn content(m: &Message) -> Value {
    match m.content.as_slice() {
        // A breakpoint needs a block to sit on.
        _ if m.role != Role::Tool && !m.cache_control.is_empty() => Value::Array(blocks(m)),
        [Part::Text(t)] => json!(t),
        [] => json!(""),
        _ => Value::Array(blocks(m)),
    }
}

fn messages(all: &[Message]) -> Vec<Value> {
    let mut out: Vec<Value> = Vec::new();
    for m in all.iter().filter(|m| m.role != Role::System) {
        match m.role {
            Role::Assistant if !m.tool_calls.is_empty() => {
                let mut blocks = blocks(m);
                for (k, c) in m.tool_calls.iter().enumerate() {
                    let input = serde_json::from_str::<Value>(&c.arguments)
                        .ok()
                        .filter(Value::is_object)
                        .unwrap_or_else(|| json!({}));
                    let mut block =
                        json!({"type": "tool_use", "id": c.id, "name": c.name, "input": input});
                    mark(m, m.content.len() + k, &mut block);
                    blocks.push(block);
                }
                out.push(json!({"role": "assistant", "content": blocks}));
            }
            Role::Tool => {
                let mut block = json!({
                    "type": "tool_result",
                    "tool_use_id": m.tool_call_id.as_deref().unwrap_or_default(),
                    "content": content(m),
                });
                if m.is_error {
                    block["is_error"] = json!(true);
                }
                mark(m, 0, &mut block);
                let joined = out.last_mut().and_then(|last| {
                    let is_results = last["role"] == "user"
                        && last["content"]
                            .as_array()
                            .is_some_and(|b| b.iter().all(|b| b["type"] == "tool_result"));
                    if is_results {
                        last["content"].as_array_mut()
                    } else {
                        None
                    }
                });
                match joined {
                    Some(blocks) => blocks.push(block),
                    None => out.push(json!({"role": "user", "content": [block]})),
                }
            }
            role => out.push(json!({ "role": role, "content": content(m) })),
        }
    }
    out
}

/// Anthropic's `stop_reason` (with the `stop_sequence` that matched, when
/// it says) as a finish reason.
pub fn finish_reason(stop_reason: &str, stop_sequence: Option<&str>) -> FinishReason {
    match stop_reason {
        "end_turn" => FinishReason::Stop,
        "stop_sequence" => FinishReason::StopSequence(stop_sequence.map(str::to_string)),
        // The context window ran out before max_tokens: cut all the same.
        "max_tokens" | "model_context_window_exceeded" => FinishReason::Length,
        "tool_use" => FinishReason::ToolCalls,
        "refusal" => FinishReason::ContentFilter,
        other => FinishReason::Other(other.to_string()),
    }
}

// Only the fields we use are declared; serde skips the rest. Strings are
// `Cow` so that they borrow from the event unless JSON escapes force a copy.
#[derive(Deserialize)]
struct TypeOnly<'a> {
    #[serde(rename = "type", borrow)]
    kind: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct MessageStart {
    message: StartMessage,
}

#[derive(Deserialize)]
struct StartMessage {
    model: Option<String>,
    usage: Option<WireUsage>,
}

// Counts may be absent or null (cache fields on older models, input_tokens
// in most `message_delta`s).
#[derive(Deserialize, Default)]
struct WireUsage {
    input_tokens: Option<i128>,
    output_tokens: Option<i128>,
    cache_creation_input_tokens: Option<i128>,
    cache_read_input_tokens: Option<i128>,
    /// How the cache writes split by lifetime (5 minutes, an hour).
    cache_creation: Option<CacheCreation>,
}

#[derive(Deserialize, Default)]
struct CacheCreation {
    ephemeral_5m_input_tokens: Option<i128>,
    ephemeral_1h_input_tokens: Option<i128>,
}

#[derive(Deserialize)]
struct BlockStart<'a> {
    index: u32,
    #[serde(borrow)]
    content_block: ContentBlock<'a>,
}

#[derive(Deserialize)]
struct ContentBlock<'a> {
    #[serde(rename = "type", borrow)]
    kind: Cow<'a, str>,
    #[serde(borrow)]
    text: Option<Cow<'a, str>>,
    #[serde(borrow)]
    id: Option<Cow<'a, str>>,
    #[serde(borrow)]
    name: Option<Cow<'a, str>>,
    /// A `redacted_thinking` block's encrypted reasoning.
    #[serde(borrow)]
    data: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct BlockStop {
    index: u32,
}

#[derive(Deserialize)]
struct BlockDelta<'a> {
    index: u32,
    #[serde(borrow)]
    delta: DeltaBody<'a>,
}

#[derive(Deserialize)]
struct DeltaBody<'a> {
    #[serde(rename = "type", borrow)]
    kind: Cow<'a, str>,
    #[serde(borrow)]
    text: Option<Cow<'a, str>>,
    #[serde(borrow)]
    partial_json: Option<Cow<'a, str>>,
    #[serde(borrow)]
    thinking: Option<Cow<'a, str>>,
    #[serde(borrow)]
    signature: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct MessageDelta<'a> {
    #[serde(borrow)]
    delta: Option<StopDelta<'a>>,
    usage: Option<WireUsage>,
}

#[derive(Deserialize)]
struct StopDelta<'a> {
    #[serde(borrow)]
    stop_reason: Option<Cow<'a, str>>,
    #[serde(borrow)]
    stop_sequence: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct ErrorEvent<'a> {
    #[serde(borrow)]
    error: Option<ErrorBody<'a>>,
}

#[derive(Deserialize)]
struct ErrorBody<'a> {
    #[serde(rename = "type", borrow)]
    kind: Option<Cow<'a, str>>,
    #[serde(borrow)]
    message: Option<Cow<'a, str>>,
}

/// Decodes one Anthropic stream. Keeps the prompt-side token counts of
/// `message_start` so that the `message_delta` usage can be reported whole.
#[derive(Debug, Default, Clone)]
pub struct AnthropicDecoder {
    /// The `tool_use` block being streamed, whose stop ends its call.
    tool_block: Option<u32>,
    input_tokens: Option<i128>,
    cache_creation_tokens: Option<i128>,
    cache_read_tokens: Option<i128>,
    /// The writes' split: (5 minutes, an hour), when reported.
    cache_creation_split: Option<(i128, i128)>,
}

impl AnthropicDecoder {
    pub fn new() -> Self {
        Self::default()
    }

    /// Turns one upstream event into chunks. On error nothing is appended.
    pub fn decode(&mut self, ev: &SseEvent, out: &mut Vec<Chunk>) -> Result<(), ProviderError> {
        let data = ev.data.trim_ascii();
        let named;
        let kind: &str = match ev.event.as_deref() {
            Some(name) => name,
            None => {
                named = parse::<TypeOnly>(data, "event")?.kind.unwrap_or_default();
                named.as_ref()
            }
        };
        match kind {
            // Nothing to say, and its data is not worth parsing.
            "ping" => {}
            // Only a tool call's block says something by ending: its
            // arguments are whole. Any other stop (or one that does not
            // parse, as none needed to before) says nothing.
            "content_block_stop" => {
                if let Some(block) = self.tool_block
                    && let Ok(stop) = serde_json::from_str::<BlockStop>(data)
                    && stop.index == block
                {
                    self.tool_block = None;
                    out.push(Chunk::ToolCallEnd(block));
                }
            }
            "message_start" => {
                let start: MessageStart = parse(data, "message_start")?;
                self.remember(&start.message.usage.unwrap_or_default());
                if let Some(model) = start.message.model.filter(|m| !m.is_empty()) {
                    out.push(Chunk::Model(model));
                }
            }
            "content_block_start" => {
                let start: BlockStart = parse(data, "content_block_start")?;
                let block = start.content_block;
                match block.kind.as_ref() {
                    "text" => {
                        // Always empty in practice; kept if it is not.
                        if let Some(text) = block.text.filter(|t| !t.is_empty()) {
                            out.push(Chunk::Delta(text.into_owned()));
                        }
                    }
                    "tool_use" => {
                        self.tool_block = Some(start.index);
                        out.push(Chunk::ToolCallDelta {
                            index: start.index,
                            id: block.id.map(Cow::into_owned),
                            name: block.name.map(Cow::into_owned),
                            arguments: String::new(),
                        });
                    }
                    "redacted_thinking" => {
                        if let Some(data) = block.data.filter(|d| !d.is_empty()) {
                            out.push(Chunk::RedactedReasoning(data.into_owned()));
                        }
                    }
                    // thinking (its text comes as deltas), server tools...
                    _ => {}
                }
            }
            "content_block_delta" => {
                let d: BlockDelta = parse(data, "content_block_delta")?;
                match d.delta.kind.as_ref() {
                    "text_delta" => {
                        if let Some(text) = d.delta.text.filter(|t| !t.is_empty()) {
                            out.push(Chunk::Delta(text.into_owned()));
                        }
                    }
                    "input_json_delta" => out.push(Chunk::ToolCallDelta {
                        index: d.index,
                        id: None,
                        name: None,
                        arguments: d
                            .delta
                            .partial_json
                            .map(Cow::into_owned)
                            .unwrap_or_default(),
                    }),
                    "thinking_delta" => {
                        if let Some(t) = d.delta.thinking.filter(|t| !t.is_empty()) {
                            out.push(Chunk::Reasoning(t.into_owned()));
                        }
                    }
                    "signature_delta" => {
                        if let Some(s) = d.delta.signature.filter(|s| !s.is_empty()) {
                            out.push(Chunk::ReasoningSignature(s.into_owned()));
                        }
                    }
                    // citations_delta...
                    _ => {}
                }
            }
            "message_delta" => {
                let d: MessageDelta = parse(data, "message_delta")?;
                if let Some(delta) = d.delta
                    && let Some(reason) = &delta.stop_reason
                {
                    let matched = delta.stop_sequence.as_deref();
                    out.push(Chunk::Finish(finish_reason(reason, matched)));
                }
                if let Some(usage) = d.usage {
                    // Cumulative counts: they replace, not add to, what
                    // `message_start` said.
                    self.remember(&usage);
                    // Without both counts the usage is left to Sluice's
                    // estimate rather than reported as zero tokens.
                    if let (Some(input), Some(output)) = (self.input_tokens, usage.output_tokens) {
                        // The writes: their total, or the sum of their
                        // split when only that came.
                        let split = self.cache_creation_split;
                        let write = self
                            .cache_creation_tokens
                            .or(split.map(|(m5, h1)| m5.saturating_add(h1)));
                        let cache = [write, self.cache_read_tokens];
                        out.push(Chunk::Usage(Usage {
                            prompt_tokens: cache
                                .into_iter()
                                .flatten()
                                .fold(input, i128::saturating_add),
                            completion_tokens: output,
                            cache_read_tokens: self.cache_read_tokens.unwrap_or(0),
                            cache_write_tokens: write.unwrap_or(0),
                            cache_write_1h_tokens: split.map(|(_, h1)| h1),
                        }));
                    }
                }
            }
            "message_stop" => out.push(Chunk::End),
            "error" => {
                let e: ErrorEvent =
                    serde_json::from_str(data).map_err(|_| ProviderError::InStream {
                        message: one_line(data, SUMMARY_MAX),
                        kind: None,
                    })?;
                let kind = e
                    .error
                    .as_ref()
                    .and_then(|b| b.kind.as_deref())
                    .and_then(ErrorKind::from_anthropic);
                let summary = match e.error {
                    Some(ErrorBody {
                        kind: Some(k),
                        message: Some(m),
                    }) => format!("{k}: {m}"),
                    Some(ErrorBody { kind: Some(s), .. })
                    | Some(ErrorBody {
                        message: Some(s), ..
                    }) => s.into_owned(),
                    _ => format!("unrecognized error event {data}"),
                };
                return Err(ProviderError::InStream {
                    message: one_line(&summary, SUMMARY_MAX),
                    kind,
                });
            }
            // Anthropic documents that new event types may appear.
            _ => {}
        }
        Ok(())
    }

    /// Keeps the prompt-side counts. Output counts are reported only from
    /// `message_delta`, whose count is the final one.
    fn remember(&mut self, u: &WireUsage) {
        let fields = [
            (&mut self.input_tokens, u.input_tokens),
            (
                &mut self.cache_creation_tokens,
                u.cache_creation_input_tokens,
            ),
            (&mut self.cache_read_tokens, u.cache_read_input_tokens),
        ];
        for (slot, value) in fields {
            if value.is_some() {
                *slot = value;
            }
        }
        if let Some(c) = &u.cache_creation
            && (c.ephemeral_5m_input_tokens.is_some() || c.ephemeral_1h_input_tokens.is_some())
        {
            self.cache_creation_split = Some((
                c.ephemeral_5m_input_tokens.unwrap_or(0),
                c.ephemeral_1h_input_tokens.unwrap_or(0),
            ));
        }
    }
}

fn parse<'a, T: Deserialize<'a>>(data: &'a str, what: &str) -> Result<T, ProviderError> {
    // Checked first because serde would also accept a JSON array as a
    // struct, positionally.
    if !data.starts_with('{') {
        return Err(malformed(
            &format!("{what} data is not a json object"),
            data,
        ));
    }
    serde_json::from_str(data).map_err(|e| {
        malformed(
            &format!("invalid {what} ({})", one_line(&e.to_string(), SNIPPET_MAX)),
            data,
        )
    })
}

fn malformed(what: &str, data: &str) -> ProviderError {
    ProviderError::Malformed(format!("{what}: {}", one_line(data, SNIPPET_MAX)))
}

/// A one-line summary of an HTTP error body, at most 200 characters:
/// `"type: message"` for Anthropic's `{"type":"error","error":{...}}`.
pub fn summarize_error_body(status: u16, body: &[u8]) -> String {
    // The OpenAI summarizer reads `error.type` and `error.message` of a
    // top-level `error` object, which is exactly Anthropic's shape, and
    // handles the non-JSON bodies of proxies the same way.
    super::openai_wire::summarize_error_body(status, body)
}

/// One line of at most `max` characters: the same summarizer as OpenAI's.
fn one_line(s: &str, max: usize) -> String {
    super::openai_wire::one_line(s, max, false)
}

#[cfg(test)]
#[path = "anthropic_wire_tests.rs"]
mod tests;
